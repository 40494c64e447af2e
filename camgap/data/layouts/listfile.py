"""The ``listfile`` layout (the reference release): ``root/image/``, ``root/annotations/<stem>.xml``
and ``root/<split>.txt`` with ``filename label`` lines."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath

from ..errors import DataError
from ._common import (
    UNLABELED,
    Record,
    _Bad,
    _inside_root,
    _read_text_lines,
    _require_file,
    _train_classes,
    parse_voc_xml,
)


def _parse_listfile(path: Path, unlabeled_ok: bool = False) -> list[tuple[str, int, int]]:
    """``[(filename, label, line_number)]`` from a ``filename label`` file. With ``unlabeled_ok``
    (a held-out split) a line of a filename alone, or with a negative label, is an image without
    a known label (UNLABELED); a label that is not an integer stays an error either way (the
    filename may hold spaces, so a stray word there is no label to guess around)."""
    out = []
    for n, line in enumerate(_read_text_lines(path), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            if unlabeled_ok:
                out.append((line, UNLABELED, n))
                continue
            raise DataError(path, f"line {n}: expected 'filename label', got {line!r}")
        try:
            label = int(parts[1])
        except ValueError:
            raise DataError(path, f"line {n}: label {parts[1]!r} is not an integer") from None
        if label < 0 and not unlabeled_ok:
            raise DataError(path, f"line {n}: negative label {label}")
        out.append((parts[0].strip(), max(label, UNLABELED), n))
    return out


def _listfile_image(root: Path, name: str) -> Path:
    p = root / "image" / name
    if not p.exists() and (root / name).is_file():
        return root / name
    return p


def _read_listfile(root: Path, split: str, missing_ok: bool, bad: _Bad):
    split_file = _require_file(root / f"{split}.txt", "split file")
    train_file = root / "train.txt"
    entries = _parse_listfile(split_file, bad.unlabeled_ok)
    train_entries = _train_classes(split, split_file, train_file, _parse_listfile, "classes follow the labels", entries)
    if not train_entries:
        raise DataError(train_file if split != "train" else split_file, "no images")
    n_classes = max(lab for _, lab, _ in train_entries) + 1
    classes = [str(i) for i in range(n_classes)]

    def annotation(name: str):
        xml = root / "annotations" / f"{PurePosixPath(name).stem}.xml"
        if not xml.is_file():
            return xml, None
        return xml, parse_voc_xml(xml)

    # object name -> class index: an integer name is the index; any other name maps to the
    # image label of a strict majority of the train images containing it (else -1)
    seen: dict[str, Counter] = defaultdict(Counter)
    parsed: dict[str, tuple] = {}
    for name, lab, _ in train_entries:
        try:
            xml, ann = annotation(name)
        except DataError:
            continue
        if split == "train":
            parsed[name] = (xml, ann)
        if ann is not None:
            for obj_name in {o for o, _ in ann[1]}:
                seen[obj_name][lab] += 1
    name_map = {}
    for obj_name, labs in seen.items():
        top, count = labs.most_common(1)[0]
        if 2 * count > sum(labs.values()):
            name_map[obj_name] = top

    def box_label(obj_name: str) -> int:
        if re.fullmatch(r"\d+", obj_name):
            i = int(obj_name)
            return i if i < n_classes else -1
        return name_map.get(obj_name, -1)

    records = []
    for name, lab, n in entries:
        img = _listfile_image(root, name)
        if not _inside_root(root, img, name, split_file, f"line {n}", bad):
            continue
        if lab >= n_classes:
            problem = f"label {lab} ({split_file} line {n}) is outside the {n_classes} classes of the train split"
            if not bad.unlabeled(img, f"{problem} (0..{n_classes - 1})"):
                continue
            lab = UNLABELED
        try:
            xml, ann = parsed[name] if name in parsed else annotation(name)
        except DataError as e:
            bad(e.path, e.problem)
            continue
        if ann is None:
            if missing_ok:
                records.append(Record(img, lab, (), (), None, PurePosixPath(name).stem))
            else:
                bad(img, f"missing annotation: expected {xml}")
            continue
        size, objects = ann
        records.append(
            Record(
                img,
                lab,
                tuple(b for _, b in objects),
                tuple(box_label(o) for o, _ in objects),
                size,
                PurePosixPath(name).stem,
            )
        )
    return records, classes, split_file
