"""read_layout(..., unlabeled_ok=True): a held-out split keeps its images without a known label
(label -1, UNLABELED), in every layout; without it, and in the train split, they stay errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from camgap.data import DataError, read_layout
from camgap.data.layouts import UNLABELED
from camgap.errors import InputError
from tests.helpers.data import (
    COLORS,
    H,
    W,
    make_coco,
    make_csv,
    make_imagenet,
    make_kaggle,
    make_listfile,
    save_image,
    write_csv,
    write_voc,
)


def _labels(root: Path, layout: str) -> dict[str, int]:
    records, _ = read_layout(root, layout, "test", unlabeled_ok=True)
    return {r.image_id: r.label for r in records}


def test_csv_unknown_and_empty_labels(tmp_path):
    root = make_csv(tmp_path)
    save_image(root / "images" / "s.png", color=COLORS["n02"])
    save_image(root / "images" / "t.png", color=COLORS["n03"])
    rows = [
        ["images/r.png", "cat", 1, 1, 10, 12],
        ["images/s.png", "okapi", 2, 2, 8, 8],
        ["images/t.png", "", 3, 3, 9, 9],
        ["images/t.png", "", 4, 4, 6, 6],
    ]
    write_csv(root / "test.csv", rows)
    assert _labels(root, "csv") == {"r": 0, "s": UNLABELED, "t": UNLABELED}
    records, _ = read_layout(root, "csv", "test", unlabeled_ok=True)
    t = next(r for r in records if r.image_id == "t")
    assert t.boxes == ((3.0, 3.0, 9.0, 9.0), (4.0, 4.0, 6.0, 6.0)) and t.box_labels == (-1, -1)
    with pytest.raises(DataError, match=r"label 'okapi' \(test.csv row 3\) is not among the 2 classes"):
        read_layout(root, "csv", "test")
    write_csv(root / "test.csv", [rows[0], rows[2]])
    with pytest.raises(DataError, match=r"t.png: no label \(test.csv row 3\)"):
        read_layout(root, "csv", "test")


def test_listfile_a_filename_alone_and_labels_outside_the_classes(tmp_path):
    root = make_listfile(tmp_path)  # 3 classes from train.txt (labels 0 and 2)
    (root / "test.txt").write_text("c.jpg 1\na.jpg\nb.jpg 7\nd.jpg -1\n")
    assert _labels(root, "listfile") == {"c": 1, "a": UNLABELED, "b": UNLABELED, "d": UNLABELED}
    with pytest.raises(DataError, match=r"line 2: expected 'filename label', got 'a.jpg'"):
        read_layout(root, "listfile", "test")
    (root / "test.txt").write_text("c.jpg 1\nb.jpg 7\n")
    with pytest.raises(DataError, match=r"label 7 \(.*test.txt line 2\) is outside the 3 classes"):
        read_layout(root, "listfile", "test")
    (root / "test.txt").write_text("c.jpg one\n")  # not an integer: an error either way
    with pytest.raises(DataError, match="label 'one' is not an integer"):
        read_layout(root, "listfile", "test", unlabeled_ok=True)


def test_imagenet_a_folder_that_is_no_class_and_images_in_no_folder(tmp_path):
    root = make_imagenet(tmp_path)
    save_image(root / "test" / "n77" / "n77_1.JPEG", color=COLORS["n03"])
    write_voc(root / "Annotation" / "n77" / "n77_1.xml", (W, H), [("n77", (1, 1, 9, 9))])
    save_image(root / "test" / "loose.JPEG", color=COLORS["n02"])
    write_voc(root / "Annotation" / "loose.xml", (W, H), [("n02", (2, 2, 8, 8))])
    records, classes = read_layout(root, "imagenet", "test", unlabeled_ok=True)
    by_id = {r.image_id: r for r in records}
    assert {k: r.label for k, r in by_id.items()} == {"n01_9": 0, "n77_1": UNLABELED, "loose": UNLABELED}
    assert classes == ["n01", "n02"]
    assert by_id["loose"].boxes == ((2.0, 2.0, 8.0, 8.0),) and by_id["loose"].box_labels == (1,)
    assert by_id["n77_1"].box_labels == (-1,)
    with pytest.raises(DataError, match="class folder 'n77' is not a class of the train split"):
        read_layout(root, "imagenet", "test")


def test_kaggle_a_val_image_without_boxes_or_of_another_class(tmp_path):
    root = make_kaggle(tmp_path)
    data = root / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    save_image(data / "VAL_0002.JPEG")
    save_image(data / "VAL_0003.JPEG")
    with open(root / "LOC_val_solution.csv", "a") as f:
        f.write("VAL_0002,\nVAL_0003,n99 1 1 5 5\n")
    records, classes = read_layout(root, "kaggle", "test", unlabeled_ok=True)
    assert {r.image_id: r.label for r in records} == {
        "VAL_0001": classes.index("n01"),
        "VAL_0002": UNLABELED,
        "VAL_0003": UNLABELED,
    }
    with pytest.raises(DataError, match="no boxes in LOC_val_solution.csv row 3, so no label"):
        read_layout(root, "kaggle", "test")


def test_coco_an_image_without_boxes_or_of_a_category_not_in_train(tmp_path):
    root = make_coco(tmp_path)
    save_image(root / "test" / "u.png")
    save_image(root / "test" / "v.png")
    test = json.loads((root / "test.json").read_text())
    test["categories"].append({"id": 9, "name": "okapi"})
    test["images"] += [{"id": 6, "file_name": "u.png"}, {"id": 7, "file_name": "v.png"}]
    test["annotations"].append({"id": 21, "image_id": 7, "category_id": 9, "bbox": [1, 1, 4, 4]})
    (root / "test.json").write_text(json.dumps(test))
    records, classes = read_layout(root, "coco", "test", unlabeled_ok=True)
    assert {r.image_id: r.label for r in records} == {"z": classes.index("apple"), "u": UNLABELED, "v": UNLABELED}
    assert next(r for r in records if r.image_id == "v").boxes == ((1.0, 1.0, 5.0, 5.0),)
    with pytest.raises(DataError, match="no boxes in test.json, so no label"):
        read_layout(root, "coco", "test")


def test_the_train_split_is_never_unlabeled(tmp_path):
    root = make_csv(tmp_path)
    with pytest.raises(InputError, match="unlabeled_ok is for a held-out split; a training image needs its label"):
        read_layout(root, "csv", "train", unlabeled_ok=True)
    assert all(r.label != UNLABELED for r in read_layout(root, "csv", "test", unlabeled_ok=True)[0])


def test_imagenet_images_in_no_class_folder_are_said_to_be_left_out(tmp_path):
    root = make_imagenet(tmp_path)
    save_image(root / "train" / "stray.JPEG", color=COLORS["n02"])
    with pytest.warns(UserWarning) as said:
        records, _ = read_layout(root, "imagenet", "train")
    assert "stray" not in {r.image_id for r in records} and len(records) == 3
    assert [str(w.message) for w in said] == [
        f"{root / 'train'}: 1 image file(s) lie in the split folder itself, in no class folder (e.g. stray.JPEG): "
        "not read, as the train split's images need their class folder"
    ]
