"""The ``imagenet`` layout: ``root/<split>/<wnid>/*.JPEG``, VOC XML boxes under ``Annotation/``."""

from __future__ import annotations

from pathlib import Path

from camgap.errors import MissingFileError

from ..errors import DataError
from ._common import Record, _Bad, _box_label, _list_images, _train_classes, _xml_stems, parse_voc_xml


def _imagenet_classes(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name != "Annotation")


def _read_imagenet(root: Path, split: str, missing_ok: bool, bad: _Bad):
    split_dir = root / split
    if not split_dir.is_dir():
        raise MissingFileError(f"{split_dir}: split directory not found")
    train_dir = root / "train"
    classes = _train_classes(split, split_dir, train_dir, _imagenet_classes, "class indices follow the folders")
    if not classes:
        raise DataError(
            train_dir if train_dir.is_dir() else split_dir, "no class folders (expected <split>/<class>/<image>)"
        )
    index = {c: i for i, c in enumerate(classes)}
    ann_dirs = [root / "Annotation", split_dir / "Annotation"]
    cache: dict = {}

    records = []
    for cdir in sorted(p for p in split_dir.iterdir() if p.is_dir() and p.name != "Annotation"):
        images = _list_images(cdir)
        if not images:
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
