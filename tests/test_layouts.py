"""read_layout / detect_layout: every layout, class order, box labels, and the error cases."""

import json
import logging
import warnings

import pytest

from camgap.data import DataError, Record, detect_layout, read_layout
from camgap.errors import InputError
from tests.helpers.data import (
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


def _by_id(records):
    return {r.image_id: r for r in records}


# ------------------------------------------------------------------------ imagenet


@pytest.mark.parametrize("ann_in_split", [False, True])
def test_imagenet_train(tmp_path, ann_in_split):
    root = make_imagenet(tmp_path, ann_in_split=ann_in_split)
    assert detect_layout(root) == "imagenet"
    records, classes = read_layout(root)
    assert classes == ["n01", "n02"]  # sorted folder names; Annotation folder excluded
    assert [r.image_id for r in records] == ["n01_1", "n02_1", "n02_2"]
    r = _by_id(records)
    assert r["n01_1"] == Record(
        root / "train" / "n01" / "n01_1.JPEG",
        0,
        ((1.0, 1.0, 5.0, 5.0), (6.0, 6.0, 12.0, 12.0)),
        (0, -1),
        (W, H),
        "n01_1",
    )
    assert r["n02_1"].label == 1 and r["n02_1"].box_labels == (1,)
    # boxes stay in the <size> frame; the dataset rescales
    assert r["n02_2"].boxes == ((4.0, 6.0, 20.0, 24.0),) and r["n02_2"].ann_size == (2 * W, 2 * H)


def test_imagenet_test_split_uses_train_classes(tmp_path):
    root = make_imagenet(tmp_path)
    records, classes = read_layout(root, "imagenet", "test")
    assert classes == ["n01", "n02"]
    assert [(r.image_id, r.label, r.boxes) for r in records] == [("n01_9", 0, ((0.0, 0.0, 20.0, 16.0),))]
    # a test class that the train split does not have
    save_image(root / "test" / "n77" / "n77_1.JPEG")
    write_voc(root / "Annotation" / "n77" / "n77_1.xml", (W, H), [("n77", (0, 0, 4, 4))])
    with pytest.raises(DataError, match=r"n77_1\.JPEG: class folder 'n77' is not a class"):
        read_layout(root, "imagenet", "test")
    skipped = []
    records, _ = read_layout(root, "imagenet", "test", skipped=skipped)
    assert [r.image_id for r in records] == ["n01_9"]
    assert len(skipped) == 1 and skipped[0][0].endswith("n77_1.JPEG")


def test_imagenet_missing_annotation(tmp_path):
    root = make_imagenet(tmp_path)
    img = save_image(root / "train" / "n02" / "n02_3.JPEG")
    expected_xml = root / "Annotation" / "n02" / "n02_3.xml"
    with pytest.raises(DataError) as ei:
        read_layout(root)
    assert ei.value.path == str(img)
    assert "missing annotation" in ei.value.problem and str(expected_xml) in ei.value.problem
    records, _ = read_layout(root, missing_ok=True)
    r = _by_id(records)["n02_3"]
    assert r.boxes == () and r.box_labels == () and r.label == 1
    skipped = []
    records, _ = read_layout(root, skipped=skipped)
    assert "n02_3" not in _by_id(records) and len(records) == 3
    assert skipped == [(str(img), ei.value.problem)]


def test_malformed_xml_names_the_xml(tmp_path):
    root = make_imagenet(tmp_path)
    xml = root / "Annotation" / "n02" / "n02_1.xml"
    xml.write_text("<annotation><size><width>20</width>")
    with pytest.raises(DataError, match=r"n02_1\.xml: malformed XML"):
        read_layout(root)
    write_voc(xml, (W, H), [("n02", ("abc", 1, 2, 3))])
    with pytest.raises(DataError, match=r"n02_1\.xml: <bndbox><xmin> is not a number"):
        read_layout(root)


def test_missing_split_is_filenotfound(tmp_path):
    root = make_imagenet(tmp_path)
    import shutil

    shutil.rmtree(root / "test")
    with pytest.raises(FileNotFoundError, match=str(root / "test")):
        read_layout(root, "imagenet", "test")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_layout(tmp_path / "nowhere")


def test_empty_split_is_dataerror(tmp_path):
    (tmp_path / "train" / "n01").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train/n01: empty class folder"):
        read_layout(tmp_path, "imagenet")
    with pytest.raises(DataError, match=r"train: no class folders"):
        read_layout(tmp_path, "imagenet", skipped=[])


EMPTY_FOLDER = "empty class folder (no image files in it): remove it, or --skip-bad leaves it out of the classes"


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = make_imagenet(tmp_path)
    (root / "train" / "n00").mkdir()
    (root / "train" / "n00" / "notes.txt").write_text("not an image")
    for split in ("train", "test"):  # the test split takes its classes from train: the same error
        with pytest.raises(DataError) as ei:
            read_layout(root, "imagenet", split)
        assert str(ei.value) == f"{root / 'train' / 'n00'}: {EMPTY_FOLDER}"


def test_empty_class_folder_is_skipped_and_counted(tmp_path):
    root = make_imagenet(tmp_path)
    (root / "train" / "n00").mkdir()
    skipped: list = []
    records, classes = read_layout(root, "imagenet", skipped=skipped)
    assert classes == ["n01", "n02"]  # not a class: n01 stays index 0
    assert skipped == [(str(root / "train" / "n00"), EMPTY_FOLDER)]
    assert sorted((r.image_id, r.label) for r in records) == [("n01_1", 0), ("n02_1", 1), ("n02_2", 1)]
    (root / "test" / "n02").mkdir()  # an empty test folder names no class: nothing to report
    skipped = []
    test, _ = read_layout(root, "imagenet", "test", skipped=skipped)
    assert [r.image_id for r in test] == ["n01_9"] and skipped == [(str(root / "train" / "n00"), EMPTY_FOLDER)]


# ------------------------------------------------------------------------ listfile


def test_listfile(tmp_path):
    root = make_listfile(tmp_path)
    assert detect_layout(root) == "listfile"
    records, classes = read_layout(root)
    assert classes == ["0", "1", "2"]  # range(max train label + 1)
    assert [(r.image_id, r.label) for r in records] == [("a", 0), ("b", 2), ("d", 0)]
    a, b, _ = records
    assert a.path == root / "image" / "a.jpg"
    assert a.boxes == ((1.0, 2.0, 3.0, 4.0),) and a.ann_size == (W, H)
    # object names map to the image label of a strict majority of train images containing
    # them: n02 -> 2 (1 of 1), n01 -> 0 (2 of 3)
    assert b.box_labels == (2, 0)
    test, test_classes = read_layout(root, "auto", "test")
    assert test_classes == classes
    assert [(r.image_id, r.label, r.box_labels) for r in test] == [("c", 1, (1,))]


def test_listfile_label_outside_train_classes(tmp_path):
    root = make_listfile(tmp_path)
    (root / "test.txt").write_text("c.jpg 3\n")
    with pytest.raises(DataError, match=r"c\.jpg: label 3 .*outside the 3 classes"):
        read_layout(root, "listfile", "test")


def test_listfile_missing_annotation_and_bad_line(tmp_path):
    root = make_listfile(tmp_path)
    (root / "annotations" / "b.xml").unlink()
    with pytest.raises(DataError) as ei:
        read_layout(root)
    assert ei.value.path == str(root / "image" / "b.jpg")
    assert str(root / "annotations" / "b.xml") in ei.value.problem
    (root / "train.txt").write_text("a.jpg zero\n")
    with pytest.raises(DataError, match=r"train\.txt: line 1: label 'zero' is not an integer"):
        read_layout(root)


def test_listfile_missing_split(tmp_path):
    root = make_listfile(tmp_path)
    (root / "test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"test\.txt"):
        read_layout(root, "listfile", "test")


# ------------------------------------------------------------------------ kaggle


def test_kaggle(tmp_path):
    root = make_kaggle(tmp_path)
    assert detect_layout(root) == "kaggle"
    records, classes = read_layout(root)
    assert classes == ["n01", "n02"]
    r = _by_id(records)
    assert r["n02_5"].path == root / "ILSVRC/Data/CLS-LOC/train/n02/n02_5.JPEG"
    assert r["n02_5"].label == 1
    assert r["n02_5"].boxes == ((1.0, 2.0, 11.0, 12.0), (3.0, 3.0, 6.0, 6.0))
    assert r["n02_5"].box_labels == (1, 1) and r["n02_5"].ann_size is None
    val, _ = read_layout(root, split="test")
    assert len(val) == 1 and val[0].path == root / "ILSVRC/Data/CLS-LOC/val/VAL_0001.JPEG"
    assert val[0].label == 0  # wnid of the first box
    assert val[0].box_labels == (0, 1)


def test_kaggle_synset_mapping_order(tmp_path):
    root = make_kaggle(tmp_path, synset_mapping=True)
    records, classes = read_layout(root)
    assert classes == ["n02", "n01"]
    assert _by_id(records)["n01_7"].label == 1


def test_kaggle_bad_prediction_string(tmp_path):
    root = make_kaggle(tmp_path)
    (root / "LOC_train_solution.csv").write_text("ImageId,PredictionString\nn01_7,n01 0 0 19\n")
    with pytest.raises(DataError, match=r"LOC_train_solution\.csv: row 2: PredictionString"):
        read_layout(root)


def test_kaggle_val_class_outside_train(tmp_path):
    root = make_kaggle(tmp_path)
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\nVAL_0001,n09 1 1 4 4\n")
    with pytest.raises(DataError, match=r"VAL_0001\.JPEG: class 'n09' is not among"):
        read_layout(root, split="test")


# ------------------------------------------------------------------------ coco


def test_coco(tmp_path):
    root = make_coco(tmp_path)
    assert detect_layout(root) == "coco"
    records, classes = read_layout(root)
    assert classes == ["cat", "apple", "zebra"]  # sorted by category id 3, 5, 7
    x, y = records
    assert x.path == root / "train" / "x.png" and x.image_id == "x"
    assert x.boxes == ((0.0, 0.0, 4.0, 4.0), (2.0, 2.0, 12.0, 7.0))  # xywh -> xyxy
    assert x.box_labels == (0, 2)
    assert x.label == 2  # zebra: the largest box (area 50 > 16)
    assert y.label == 1 and y.ann_size == (2 * W, 2 * H)
    test, test_classes = read_layout(root, "coco", "test")
    assert test_classes == classes
    assert test[0].path == root / "z.png" and test[0].label == 1


def test_coco_image_without_boxes_and_unknown_class(tmp_path):
    root = make_coco(tmp_path)
    data = json.loads((root / "train.json").read_text())
    data["images"].append({"id": 3, "file_name": "w.png", "width": W, "height": H})
    (root / "train.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"w\.png: no boxes"):
        read_layout(root)
    test = json.loads((root / "test.json").read_text())
    test["categories"].append({"id": 9, "name": "okapi"})
    test["annotations"][0]["category_id"] = 9
    (root / "test.json").write_text(json.dumps(test))
    with pytest.raises(DataError, match=r"z\.png: class 'okapi'"):
        read_layout(root, "coco", "test")


# ------------------------------------------------------------------------ csv


def test_csv(tmp_path):
    root = make_csv(tmp_path)
    assert detect_layout(root) == "csv"
    records, classes = read_layout(root)
    assert classes == ["cat", "zebra"]
    p, q = records  # first-occurrence order, rows of one path grouped
    assert p.path == root / "images" / "p.png" and p.label == 1
    assert p.boxes == ((1.0, 2.0, 5.0, 6.0), (7.0, 8.0, 9.0, 10.0)) and p.box_labels == (1, 1)
    assert q.label == 0 and q.boxes == () and q.box_labels == ()  # empty box fields
    test, _ = read_layout(root, "csv", "test")
    assert test[0].boxes == ((0.5, 1.5, 10.0, 12.0),) and test[0].label == 0


def test_csv_errors(tmp_path):
    root = make_csv(tmp_path)
    write_csv(root / "test.csv", [["images/r.png", "dog", 1, 1, 2, 2]])
    with pytest.raises(DataError, match=r"r\.png: label 'dog' .*not among the 2 classes"):
        read_layout(root, "csv", "test")
    write_csv(root / "test.csv", [["images/r.png", "cat", 1, "", 2, 2]])
    with pytest.raises(DataError, match=r"test\.csv: row 2 .*all set or all empty"):
        read_layout(root, "csv", "test")
    (root / "test.csv").write_text("path,label\nimages/r.png,cat\n")
    with pytest.raises(DataError, match=r"test\.csv: missing column\(s\) xmin"):
        read_layout(root, "csv", "test")
    write_csv(root / "test.csv", [])
    with pytest.raises(DataError, match=r"test\.csv: no images"):
        read_layout(root, "csv", "test")


def test_csv_duplicate_stems_get_path_ids(tmp_path):
    save_image(tmp_path / "a" / "1.png")
    save_image(tmp_path / "b" / "1.png")
    write_csv(tmp_path / "train.csv", [["a/1.png", "x", "", "", "", ""], ["b/1.png", "y", "", "", "", ""]])
    records, _ = read_layout(tmp_path)
    assert [r.image_id for r in records] == ["a/1", "b/1"]


def _csv_labels(root, labels) -> None:
    """One tiny image per label in train.csv, each with one box."""
    rows = []
    for i, label in enumerate(labels):
        save_image(root / "images" / f"{i}.png")
        rows.append([f"images/{i}.png", label, 1, 1, 5, 5])
    write_csv(root / "train.csv", rows)


def test_csv_integer_labels_sort_numerically_and_the_mapping_is_logged(tmp_path, caplog):
    _csv_labels(tmp_path, [str(i) for i in (3, 10, 0, 2, 1, 9, 4, 5, 6, 7, 8)])
    with caplog.at_level(logging.DEBUG, logger="camgap.data"):
        records, classes = read_layout(tmp_path, "csv")
    assert classes == [str(i) for i in range(11)]  # not '0', '1', '10', '2', ...
    assert {int(classes[r.label]) for r in records} == set(range(11))
    assert all(classes[r.label] == str(r.label) for r in records)  # label "2" is output 2
    assert [r.getMessage() for r in caplog.records] == [
        "csv layout: 11 classes from train.csv, integer labels in numeric order: "
        "'0' -> 0, '1' -> 1, '2' -> 2, '3' -> 3, '4' -> 4, '5' -> 5, '6' -> 6, '7' -> 7, '8' -> 8, '9' -> 9, '10' -> 10"
    ]


def test_csv_other_labels_sort_as_strings(tmp_path):
    _csv_labels(tmp_path, ["c2", "c10", "b", "1"])
    _, classes = read_layout(tmp_path, "csv")
    assert classes == ["1", "b", "c10", "c2"]


def test_csv_classes_txt_fixes_the_order(tmp_path, caplog):
    _csv_labels(tmp_path, [str(i) for i in range(11)])
    order = ["10", "2", "0", "1", "3", "4", "5", "6", "7", "8", "9"]
    (tmp_path / "classes.txt").write_text("\n".join(order) + "\n\n")
    with caplog.at_level(logging.DEBUG, logger="camgap.data"):
        records, classes = read_layout(tmp_path, "csv")
    assert classes == order
    by_file = {r.path.name: r.label for r in records}
    assert by_file["2.png"] == 1 and by_file["10.png"] == 0 and by_file["0.png"] == 2
    assert (
        caplog.records[0]
        .getMessage()
        .startswith(f"csv layout: 11 classes from {tmp_path / 'classes.txt'}: '10' -> 0, '2' -> 1, '0' -> 2,")
    )


@pytest.mark.parametrize(
    "text,problem",
    [
        ("a\n\nb\n", "line 2 is blank: one class name a line, line i = class index i - 1"),
        ("a\nb\na\n", "line 3: class 'a' is listed twice (first on line 1)"),
        ("\n", "no class names"),
    ],
)
def test_csv_bad_classes_txt(tmp_path, text, problem):
    _csv_labels(tmp_path, ["a", "b"])
    (tmp_path / "classes.txt").write_text(text)
    with pytest.raises(DataError) as ei:
        read_layout(tmp_path, "csv")
    assert str(ei.value) == f"{tmp_path / 'classes.txt'}: {problem}"


def test_csv_label_missing_from_classes_txt(tmp_path):
    _csv_labels(tmp_path, ["a", "b"])
    (tmp_path / "classes.txt").write_text("a\n")
    with pytest.raises(DataError) as ei:
        read_layout(tmp_path, "csv")
    assert str(ei.value) == (
        f"{tmp_path / 'images' / '1.png'}: label 'b' (train.csv row 3) is not among the 1 classes of "
        f"{tmp_path / 'classes.txt'}"
    )


def test_box_units(tmp_path):
    root = make_imagenet(tmp_path)  # VOC boxes in pixels: read as they are
    assert read_layout(root, box_units="pixels")[0] == read_layout(root)[0]
    for xml, size, objects in [
        ("n02/n02_1.xml", (W, H), [("n02", (0.1, 0.2, 0.5, 0.75))]),
        ("n02/n02_2.xml", None, [("n02", (0, 0, 1, 1))]),
        ("n01/n01_1.xml", (W, H), [("n01", (0.25, 0.25, 0.5, 0.5))]),
    ]:
        write_voc(root / "Annotation" / xml, size, objects)
    with pytest.raises(DataError) as ei:
        read_layout(root)
    assert str(ei.value) == (
        f"{root / 'train'}: all 3 boxes lie within [0, 1]: fractions of the image size? pass --box-units "
        "relative (or --box-units pixels if they are pixel coordinates)"
    )
    assert [r.ann_size for r in read_layout(root, box_units="pixels")[0]] == [(W, H), (W, H), None]
    records, _ = read_layout(root, box_units="relative")
    assert [(r.boxes, r.ann_size) for r in records] == [
        (((0.25, 0.25, 0.5, 0.5),), (1, 1)),
        (((0.1, 0.2, 0.5, 0.75),), (1, 1)),
        (((0.0, 0.0, 1.0, 1.0),), (1, 1)),
    ]
    with pytest.raises(InputError, match="unknown box units 'percent'"):
        read_layout(root, box_units="percent")


# ------------------------------------------------------------------------ missing splits


@pytest.mark.parametrize(
    "make,layout,test_file",
    [
        (make_kaggle, "kaggle", "LOC_val_solution.csv"),
        (make_coco, "coco", "test.json"),
        (make_csv, "csv", "test.csv"),
    ],
)
def test_missing_test_split_names_the_file(tmp_path, make, layout, test_file):
    root = make(tmp_path)
    (root / test_file).unlink()
    assert detect_layout(root) == layout
    with pytest.raises(FileNotFoundError, match=str(root / test_file)):
        read_layout(root, "auto", "test")


# ------------------------------------------------------------------------ detection


def test_detect_layout_nothing_matches(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError) as ei:
        detect_layout(tmp_path)
    msg = str(ei.value)
    assert msg.startswith(str(tmp_path))
    for expected in ("LOC_train_solution.csv", "train.txt", "train.json", "train.csv", "train/<wnid>/*.JPEG"):
        assert expected in msg


def test_unknown_layout_and_split(tmp_path):
    root = make_csv(tmp_path)
    with pytest.raises(ValueError, match="unknown layout"):
        read_layout(root, "voc")
    with pytest.raises(ValueError, match="unknown split"):
        read_layout(root, "csv", "holdout")


def test_record_is_frozen():
    import dataclasses

    r = Record(path=__import__("pathlib").Path("x.jpg"), label=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.label = 1  # type: ignore[misc]
    assert r.boxes == () and r.ann_size is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hash(r)


# ------------------------------------------------------------------------ paths outside the root


def _escape_csv(root, name):
    rows = [
        ["images/p.png", "zebra", 1, 2, 5, 6],
        ["images/q.png", "cat", "", "", "", ""],
        ["images/p.png", "zebra", 7, 8, 9, 10],
        [name, "cat", "", "", "", ""],
    ]
    write_csv(root / "train.csv", rows)
    return root / "train.csv", "row 5"


def _escape_listfile(root, name):
    with open(root / "train.txt", "a") as f:
        f.write(f"{name} 0\n")  # lines 1, 2, (3 blank), 4, then 5
    return root / "train.txt", "line 5"


def _escape_coco(root, name):
    data = json.loads((root / "train.json").read_text())
    data["images"].append({"id": 9, "file_name": name, "width": W, "height": H})
    data["annotations"].append({"id": 90, "image_id": 9, "category_id": 3, "bbox": [0, 0, 4, 4]})
    (root / "train.json").write_text(json.dumps(data))
    return root / "train.json", "image id 9"


def _escape_kaggle(root, name):
    with open(root / "LOC_train_solution.csv", "a") as f:
        f.write(f"{name},n01 0 0 4 4\n")  # header is row 1, then rows 2, 3, 4
    return root / "LOC_train_solution.csv", "row 4"


def _make_kaggle_with_synsets(root):
    # with the synset file the class list does not depend on the image ids of the rows
    return make_kaggle(root, synset_mapping=True)


ESCAPES = {
    "csv": (make_csv, _escape_csv),
    "listfile": (make_listfile, _escape_listfile),
    "coco": (make_coco, _escape_coco),
    "kaggle": (_make_kaggle_with_synsets, _escape_kaggle),
}


@pytest.mark.parametrize("layout", list(ESCAPES))
@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_image_path_outside_the_root_is_a_bad_entry(tmp_path, layout, kind):
    make, escape = ESCAPES[layout]
    root = make(tmp_path / "ds")
    secret = save_image(tmp_path / "secret.png")  # exists: only the path decides
    clean, _ = read_layout(root, layout)
    name = "../../../secret" if kind == "dotdot" else str(secret)
    if layout != "kaggle":
        name += ".png"
    split_file, where = escape(root, name)
    with pytest.raises(DataError) as ei:
        read_layout(root, layout)
    assert ei.value.path == str(split_file)
    assert ei.value.problem == f"{where}: image path {name!r} leaves the dataset root {root}"
    skipped = []
    records, _ = read_layout(root, layout, skipped=skipped)
    assert records == clean
    assert skipped == [(str(split_file), ei.value.problem)]


def test_dotdot_inside_the_root_and_owner_symlinks_are_kept(tmp_path):
    root = make_csv(tmp_path / "ds")
    elsewhere = save_image(tmp_path / "disk2" / "s.png")
    (root / "link").symlink_to(elsewhere.parent, target_is_directory=True)
    save_image(tmp_path / "secret.png")
    write_csv(
        root / "train.csv",
        [
            ["images/../images/p.png", "zebra", "", "", "", ""],
            ["link/s.png", "cat", "", "", "", ""],
            ["link/../secret.png", "cat", "", "", "", ""],
        ],
    )
    skipped = []
    records, _ = read_layout(root, "csv", skipped=skipped)
    # a symlink the dataset owner put inside the root is trusted; `..` after it leaves the root
    assert [r.path for r in records] == [root / "images/../images/p.png", root / "link" / "s.png"]
    assert skipped == [
        (str(root / "train.csv"), f"row 4: image path 'link/../secret.png' leaves the dataset root {root}")
    ]


@pytest.mark.parametrize(
    "make,layout,train,follows",
    [
        (make_imagenet, "imagenet", "train", "class indices follow the folders"),
        (make_listfile, "listfile", "train.txt", "classes follow the labels"),
        (make_coco, "coco", "train.json", "classes follow the categories"),
        (make_csv, "csv", "train.csv", "classes follow the labels"),
    ],
)
def test_without_a_train_split_classes_follow_the_split_read_with_a_warning(tmp_path, make, layout, train, follows):
    import shutil

    root = make(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with the train split: no warning
        read_layout(root, layout, "test")
    path = root / train
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.warns(UserWarning, match=f"{train} not found: {follows} of .*test") as caught:
        records, classes = read_layout(root, layout, "test")
    assert caught[0].filename == __file__  # the warning points at the caller of read_layout
    assert records and all(0 <= r.label < len(classes) for r in records)


@pytest.mark.parametrize("maker", [make_csv, make_imagenet, make_listfile, make_coco])
def test_split_val_of_a_layout_without_one_reads_test_and_says_so(tmp_path, maker):
    """Only kaggle's held-out split is named val; the others read their test split, never silently."""
    root = maker(tmp_path / "d")
    layout = detect_layout(root)
    with pytest.warns(
        UserWarning, match=rf"the {layout} layout has a train and a test split: split 'val' reads the test"
    ):
        got = read_layout(root, split="val")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert got == read_layout(root, split="test")
