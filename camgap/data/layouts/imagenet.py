"""The ``imagenet`` layout: ``root/<split>/<wnid>/*.JPEG``, VOC XML boxes under ``Annotation/``."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from camgap.errors import MissingFileError

from ..errors import DataError
from ._common import (
    IMAGE_EXTENSIONS,
    UNLABELED,
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
    folder = _Folders(root, split_dir, classes, missing_ok, bad)
    records = []
    for cdir in _class_dirs(split_dir):
        images = _list_images(cdir)
        if not images:  # a train folder was reported by _imagenet_classes; a test one names no class
            continue
        if cdir.name not in folder.index:
            problem = f"class folder {cdir.name!r} is not a class of the train split"
            problem += f" ({len(classes)} classes from {train_dir})"
            images = [img for img in images if bad.unlabeled(img, problem)]
        records += folder.records(images, cdir.name)
    loose = _list_images(split_dir)  # in the split folder itself, in no class folder
    if bad.unlabeled_ok:  # held-out images without a label
        records += folder.records(loose, None)
    elif loose:  # a class is its folder: these have none, and reading on without them must be said
        warnings.warn(
            f"{split_dir}: {len(loose)} image file(s) lie in the split folder itself, in no class folder "
            f"(e.g. {loose[0].name}): not read, as the {split} split's images need their class folder",
            UserWarning,
            stacklevel=2,
        )
    return records, classes, split_dir


class _Folders:
    """The records of the images of one folder, with their XML boxes: <ann>/<wnid>/<stem>.xml,
    then a flat <ann>/<stem>.xml, for <ann> = root/Annotation, then <split>/Annotation."""

    def __init__(self, root: Path, split_dir: Path, classes: list[str], missing_ok: bool, bad: _Bad):
        self.index = {c: i for i, c in enumerate(classes)}
        self.ann_dirs = [root / "Annotation", split_dir / "Annotation"]
        self.missing_ok, self.bad = missing_ok, bad
        self.cache: dict = {}

    def records(self, images: list[Path], wnid: str | None) -> list[Record]:
        """``wnid``: the class folder the images are in (its class, or UNLABELED when it is not a
        class of the train split); None: the split folder itself (UNLABELED, flat annotations only)."""
        label = self.index.get(wnid, UNLABELED) if wnid is not None else UNLABELED
        nested = [_xml_stems(d / wnid, self.cache) for d in self.ann_dirs] if wnid is not None else []
        lookups = nested + [_xml_stems(d, self.cache) for d in self.ann_dirs]
        out = []
        for img in images:
            xml = next((m[img.stem] for m in lookups if img.stem in m), None)
            if xml is None:
                if self.missing_ok:
                    out.append(Record(img, label, (), (), None, img.stem))
                else:
                    expected = self.ann_dirs[0] / (wnid or "") / (img.stem + ".xml")
                    self.bad(img, f"missing annotation: expected {expected}")
                continue
            try:
                size, objects = parse_voc_xml(xml)
            except DataError as e:
                self.bad(e.path, e.problem)
                continue
            box_labels = tuple(_box_label(n, self.index) for n, _ in objects)
            out.append(Record(img, label, tuple(b for _, b in objects), box_labels, size, img.stem))
        return out
