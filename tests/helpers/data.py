"""Tiny on-disk datasets for the data-layer tests (one builder per layout).

Every builder writes into a given directory and returns what the test needs to check values.
Images are small (20x16 by default) solid-colour files written with PIL.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 20, 16

COLORS = {
    "n01": (200, 30, 30),
    "n02": (30, 200, 30),
    "n03": (30, 30, 200),
}


def save_image(
    path: Path,
    size: tuple[int, int] = (W, H),
    color=(120, 60, 30),
    mode: str = "RGB",
    fmt: str | None = None,
    array: np.ndarray | None = None,
) -> Path:
    """Write a solid-colour (or given ``array``) image; ``fmt`` overrides the suffix's format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array) if array is not None else Image.new("RGB", size, color)
    if mode != im.mode:
        im = im.convert(mode)
    kw = {"quality": 95} if (fmt or path.suffix.lstrip(".")).upper() in ("JPEG", "JPG") else {}
    im.save(path, format=fmt or ("JPEG" if path.suffix.upper() in (".JPEG", ".JPG") else None), **kw)
    return path


def write_voc(path: Path, size: tuple[int, int] | None, objects) -> Path:
    """PASCAL-VOC XML; ``objects`` = [(name, (xmin, ymin, xmax, ymax)), ...]."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = ["<annotation>", f"<filename>{path.stem}</filename>"]
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, (x0, y0, x1, y1) in objects:
        parts.append(
            f"<object><name>{name}</name><pose>Unspecified</pose><bndbox>"
            f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
            "</bndbox></object>"
        )
    parts.append("</annotation>")
    path.write_text("\n".join(parts))
    return path


def make_imagenet(root: Path, ann_in_split: bool = False) -> Path:
    """train: n02 (2 images), n01 (1 image, two boxes one of class n03 -> -1 ... see below);
    test: n01 (1 image).  Class folders deliberately created out of order."""
    root = Path(root)
    ann = (root / "train" / "Annotation") if ann_in_split else (root / "Annotation")
    save_image(root / "train" / "n02" / "n02_1.JPEG", color=COLORS["n02"])
    write_voc(ann / "n02" / "n02_1.xml", (W, H), [("n02", (2, 3, 10, 12))])
    save_image(root / "train" / "n02" / "n02_2.JPEG", color=COLORS["n02"])
    # annotation frame twice the image: the dataset must halve the box
    write_voc(ann / "n02" / "n02_2.xml", (2 * W, 2 * H), [("n02", (4, 6, 20, 24))])
    save_image(root / "train" / "n01" / "n01_1.JPEG", color=COLORS["n01"])
    write_voc(ann / "n01" / "n01_1.xml", (W, H), [("n01", (1, 1, 5, 5)), ("n99", (6, 6, 12, 12))])
    save_image(root / "test" / "n01" / "n01_9.JPEG", color=COLORS["n01"])
    write_voc(root / "Annotation" / "n01" / "n01_9.xml", (W, H), [("n01", (0, 0, 20, 16))])
    return root


def make_listfile(root: Path) -> Path:
    root = Path(root)
    save_image(root / "image" / "a.jpg", color=COLORS["n01"])
    save_image(root / "image" / "b.jpg", color=COLORS["n02"])
    save_image(root / "image" / "c.jpg", color=COLORS["n03"])
    write_voc(root / "annotations" / "a.xml", (W, H), [("n01", (1, 2, 3, 4))])
    write_voc(root / "annotations" / "b.xml", (W, H), [("n02", (5, 6, 7, 8)), ("n01", (0, 0, 2, 2))])
    write_voc(root / "annotations" / "c.xml", (W, H), [("1", (2, 2, 9, 9))])
    save_image(root / "image" / "d.jpg", color=COLORS["n01"])
    write_voc(root / "annotations" / "d.xml", (W, H), [("n01", (0, 0, 20, 16))])
    (root / "train.txt").write_text("a.jpg 0\nb.jpg 2\n\nd.jpg 0\n")
    (root / "test.txt").write_text("c.jpg 1\n")
    return root


def make_kaggle(root: Path, synset_mapping: bool = False) -> Path:
    root = Path(root)
    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    save_image(data / "train" / "n02" / "n02_5.JPEG", color=COLORS["n02"])
    save_image(data / "train" / "n01" / "n01_7.JPEG", color=COLORS["n01"])
    save_image(data / "val" / "VAL_0001.JPEG", color=COLORS["n01"])
    (root / "LOC_train_solution.csv").write_text(
        "ImageId,PredictionString\nn02_5,n02 1 2 11 12 n02 3 3 6 6 \nn01_7,n01 0 0 19 15\n"
    )
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\nVAL_0001,n01 4 4 8 8 n02 1 1 2 2\n")
    if synset_mapping:
        (root / "LOC_synset_mapping.txt").write_text("n02 two things\nn01 one thing\n")
    return root


def make_coco(root: Path) -> Path:
    root = Path(root)
    save_image(root / "train" / "x.png", color=COLORS["n01"])
    save_image(root / "train" / "y.png", color=COLORS["n02"])
    save_image(root / "z.png", color=COLORS["n03"])  # test image at root/<file_name>
    cats = [{"id": 7, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 5, "name": "apple"}]
    train = {
        "images": [
            {"id": 1, "file_name": "x.png", "width": W, "height": H},
            {"id": 2, "file_name": "y.png", "width": 2 * W, "height": 2 * H},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 4]},  # area 16
            {"id": 11, "image_id": 1, "category_id": 7, "bbox": [2, 2, 10, 5]},  # area 50
            {"id": 12, "image_id": 2, "category_id": 5, "bbox": [4, 4, 8, 8]},
        ],
        "categories": cats,
    }
    test = {
        "images": [{"id": 5, "file_name": "z.png", "width": W, "height": H}],
        "annotations": [{"id": 20, "image_id": 5, "category_id": 5, "bbox": [1, 1, 3, 3]}],
        "categories": cats,
    }
    (root / "train.json").write_text(json.dumps(train))
    (root / "test.json").write_text(json.dumps(test))
    return root


def write_csv(path: Path, rows) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "xmin", "ymin", "xmax", "ymax"])
        w.writerows(rows)
    return path


def make_csv(root: Path) -> Path:
    root = Path(root)
    save_image(root / "images" / "p.png", color=COLORS["n01"])
    save_image(root / "images" / "q.png", color=COLORS["n02"])
    save_image(root / "images" / "r.png", color=COLORS["n03"])
    write_csv(
        root / "train.csv",
        [
            ["images/p.png", "zebra", 1, 2, 5, 6],
            ["images/q.png", "cat", "", "", "", ""],
            ["images/p.png", "zebra", 7, 8, 9, 10],
        ],
    )
    write_csv(root / "test.csv", [["images/r.png", "cat", 0.5, 1.5, 10, 12]])
    return root
