"""The ``coco`` layout: ``root/<split>.json`` (COCO instances); label = category of the largest box."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path, PurePosixPath

from ..errors import DataError
from ._common import UNLABELED, Record, _Bad, _inside_root, _require_file, _train_classes


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"malformed JSON ({e})") from None
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise DataError(path, "not a COCO instances file (needs 'images', 'annotations', 'categories')")
    return data


def _coco_classes(data: dict, path: Path) -> tuple[list[str], dict[int, str]]:
    try:
        cats = sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(path, f"malformed 'categories' entry ({e!r})") from None
    return [name for _, name in cats], dict(cats)


def _largest_box_class(objs: list, cat_name: dict[int, str]) -> str | None:
    """The category of the largest box (by ``w*h``; the first wins ties): the image's label; None without a box."""
    if not objs:
        return None
    big = max(range(len(objs)), key=lambda i: (objs[i][2], -i))
    return cat_name[objs[big][0]]


def _read_coco(root: Path, split: str, missing_ok: bool, bad: _Bad):
    split_file = _require_file(root / f"{split}.json", "split file")
    data = _load_json(split_file)
    train_file = root / "train.json"
    own = _coco_classes(data, split_file)
    classes, _ = _train_classes(
        split, split_file, train_file, lambda p: _coco_classes(_load_json(p), p), "classes follow the categories", own
    )
    cat_name = own[1]
    index = {c: i for i, c in enumerate(classes)}

    anns: dict = defaultdict(list)
    for a in data.get("annotations") or []:
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
            anns[a["image_id"]].append((int(a["category_id"]), (x, y, x + w, y + h), w * h))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(split_file, f"malformed annotation {a.get('id', '?')} ({e!r})") from None

    records = []
    for im in data["images"]:
        try:
            fname, im_id = str(im["file_name"]), im["id"]
        except (KeyError, TypeError):
            raise DataError(split_file, f"image entry without file_name/id: {im!r}") from None
        img = root / split / fname
        if not img.exists() and (root / fname).exists():
            img = root / fname
        if not _inside_root(root, img, fname, split_file, f"image id {im_id}", bad):
            continue
        objs = anns.get(im_id, [])
        unknown = [c for c, _, _ in objs if c not in cat_name]
        if unknown:
            bad(split_file, f"image {fname}: category id {unknown[0]} not in 'categories'")
            continue
        name, problem = _largest_box_class(objs, cat_name), ""  # problem: why the image has no known label
        if name is None:
            problem = (
                f"no boxes in {split_file.name}, so no label (a COCO image's label is the category of its largest box)"
            )
        elif name not in index:
            problem = f"class {name!r} (its largest box) is not among the {len(classes)} train classes"
        if problem and not bad.unlabeled(img, problem):
            continue
        w, h = im.get("width"), im.get("height")
        size = (int(w), int(h)) if w and h else None
        records.append(
            Record(
                img,
                index.get(name, UNLABELED),
                tuple(b for _, b, _ in objs),
                tuple(index.get(cat_name[c], -1) for c, _, _ in objs),
                size,
                PurePosixPath(fname).stem,
            )
        )
    return records, classes, split_file
