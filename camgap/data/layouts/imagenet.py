"""The ``imagenet`` layout: ``root/<split>/<wnid>/*.JPEG``, VOC XML boxes under ``Annotation/``."""

from __future__ import annotations

import os
from pathlib import Path

from camgap.errors import MissingFileError

from ..errors import DataError
from ._common import (
    IMAGE_EXTENSIONS,
    Record,
    _Bad,
    _box_label,
    _list_images,
    _train_classes,
    _xml_stems,
    parse_voc_xml,
)


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and p.name != "Annotation")


def _has_image(d: Path) -> bool:
    with os.scandir(d) as it:
        return any(e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS for e in it)


def _imagenet_classes(split_dir: Path, bad: _Bad) -> list[str]:
    """The class folders' names, sorted; a folder without images would be a class no image has
    (every later index shifted by one): a bad entry, left out of the classes when skipped."""
    classes = []
    for d in _class_dirs(split_dir):
        if _has_image(d):
            classes.append(d.name)
        else:
            bad(d, "empty class folder (no image files in it): remove it, or --skip-bad leaves it out of the classes")
    return classes


def _read_imagenet(root: Path, split: str, missing_ok: bool, bad: _Bad):
    split_dir = root / split
    if not split_dir.is_dir():
        raise MissingFileError(f"{split_dir}: split directory not found")
    train_dir = root / "train"
    classes = _train_classes(
        split, split_dir, train_dir, lambda d: _imagenet_classes(d, bad), "class indices follow the folders"
    )
    if not classes:
        raise DataError(
            train_dir if train_dir.is_dir() else split_dir, "no class folders (expected <split>/<class>/<image>)"
        )
    index = {c: i for i, c in enumerate(classes)}
    ann_dirs = [root / "Annotation", split_dir / "Annotation"]
    cache: dict = {}

    records = []
    for cdir in _class_dirs(split_dir):
        images = _list_images(cdir)
        if not images:  # a train folder was reported by _imagenet_classes; a test one names no class
            continue
        if cdir.name not in index:
            for img in images:
                bad(
                    img,
                    f"class folder {cdir.name!r} is not a class of the train split "
                    f"({len(classes)} classes from {train_dir})",
                )
            continue
        label = index[cdir.name]
        # where to look, in order: <ann>/<wnid>/<stem>.xml, then a flat <ann>/<stem>.xml
        lookups = [_xml_stems(d / cdir.name, cache) for d in ann_dirs] + [_xml_stems(d, cache) for d in ann_dirs]
        for img in images:
            xml = next((m[img.stem] for m in lookups if img.stem in m), None)
            if xml is None:
                if missing_ok:
                    records.append(Record(img, label, (), (), None, img.stem))
                else:
                    bad(img, f"missing annotation: expected {ann_dirs[0] / cdir.name / (img.stem + '.xml')}")
                continue
            try:
                size, objects = parse_voc_xml(xml)
            except DataError as e:
                bad(e.path, e.problem)
                continue
            records.append(
                Record(
                    img,
                    label,
                    tuple(b for _, b in objects),
                    tuple(_box_label(n, index) for n, _ in objects),
                    size,
                    img.stem,
                )
            )
    return records, classes, split_dir
