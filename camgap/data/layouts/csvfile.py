"""The ``csv`` layout: ``root/<split>.csv`` with header ``path,label,xmin,ymin,xmax,ymax``, one
row per box.

Class order (label -> output index): ``root/classes.txt`` when present (one name a line, line
i = index i); else the train labels sorted numerically when all are integers (``2`` before
``10``), as strings otherwise.  ``camgap -v`` logs the mapping.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path, PurePosixPath

from ..errors import DataError
from ._common import (
    UNLABELED,
    Record,
    _Bad,
    _inside_root,
    _num,
    _read_csv,
    _read_text_lines,
    _require_file,
    _train_classes,
)

_CSV_COLUMNS = ("path", "label", "xmin", "ymin", "xmax", "ymax")
CLASSES_FILE = "classes.txt"

log = logging.getLogger("camgap.data")


def _read_classes_file(path: Path) -> list[str]:
    """One class name a line (line i = index i); trailing blank lines are allowed, others not."""
    lines = _read_text_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    for n, name in enumerate(names, 1):
        if not name:
            raise DataError(path, f"line {n} is blank: one class name a line, line i = class index i - 1")
        if name in names[: n - 1]:
            raise DataError(path, f"line {n}: class {name!r} is listed twice (first on line {names.index(name) + 1})")
    if not names:
        raise DataError(path, "no class names")
    return names


def _as_int(label: str) -> int | None:
    try:
        return int(label)
    except ValueError:
        return None


def _label_order(labels: set[str]) -> tuple[list[str], str]:
    """The labels in index order, and how that order was chosen."""
    if labels and all(_as_int(x) is not None for x in labels):
        return sorted(labels, key=lambda x: (int(x), x)), "integer labels in numeric order"
    return sorted(labels), "labels sorted as strings"


def _csv_classes(root: Path, train_rows: list[dict], train_file: Path) -> tuple[list[str], str]:
    """``(classes, where they come from)``: ``classes.txt`` when present, else the train labels in order."""
    listed = root / CLASSES_FILE
    if listed.is_file():
        return _read_classes_file(listed), str(listed)
    classes, how = _label_order({r["label"] for r in train_rows if r["label"]})
    return classes, f"{train_file.name}, {how}"


def _log_mapping(classes: list[str], source: str) -> None:
    # at DEBUG (`camgap -v`): the default stderr stays one line per error or warning
    pairs = ", ".join(f"{c!r} -> {i}" for i, c in enumerate(classes))
    log.debug("csv layout: %d classes from %s: %s", len(classes), source, pairs)


def _read_csv_layout(root: Path, split: str, missing_ok: bool, bad: _Bad):
    split_file = _require_file(root / f"{split}.csv", "split file")
    rows = _read_csv(split_file, _CSV_COLUMNS)
    train_file = root / "train.csv"
    train_rows = _train_classes(
        split, split_file, train_file, lambda p: _read_csv(p, _CSV_COLUMNS), "classes follow the labels", rows
    )
    classes, source = _csv_classes(root, train_rows, train_file)
    _log_mapping(classes, source)
    index = {c: i for i, c in enumerate(classes)}

    groups: OrderedDict[str, list[tuple[int, dict]]] = OrderedDict()
    for n, r in enumerate(rows, 2):
        groups.setdefault(r["path"], []).append((n, r))

    records = []
    for rel, grp in groups.items():
        img = root / rel
        if not rel:
            bad(split_file, f"row {grp[0][0]}: empty path")
            continue
        if not _inside_root(root, img, rel, split_file, f"row {grp[0][0]}", bad):
            continue
        labels = {r["label"] for _, r in grp}
        if len(labels) != 1:
            bad(
                img,
                f"rows {', '.join(str(n) for n, _ in grp)} of {split_file.name} give different labels {sorted(labels)}",
            )
            continue
        label = labels.pop()
        where = f"{split_file.name} row {grp[0][0]}"
        problem = f"label {label!r} ({where}) is not among the {len(classes)} classes of {source}" if label else ""
        if label not in index and not bad.unlabeled(img, problem or f"no label ({where})"):
            continue
        boxes, box_labels, size, ok = [], [], None, True
        for n, r in grp:
            vals = [r[k] for k in ("xmin", "ymin", "xmax", "ymax")]
            if r.get("width") and r.get("height"):
                size = (
                    int(_num(r["width"], split_file, f"row {n} width")),
                    int(_num(r["height"], split_file, f"row {n} height")),
                )
            if not any(vals):
                continue
            if not all(vals):
                bad(split_file, f"row {n} ({rel}): box fields must be all set or all empty")
                ok = False
                break
            try:
                box = tuple(_num(v, split_file, f"row {n} {k}") for v, k in zip(vals, ("xmin", "ymin", "xmax", "ymax")))
            except DataError as e:
                bad(e.path, e.problem)
                ok = False
                break
            boxes.append(box)
            box_labels.append(index.get(r.get("box_label") or label, -1))
        if ok:
            label_index = index.get(label, UNLABELED)
            records.append(Record(img, label_index, tuple(boxes), tuple(box_labels), size, PurePosixPath(rel).stem))
    return records, classes, split_file
