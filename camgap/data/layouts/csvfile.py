"""The ``csv`` layout: ``root/<split>.csv`` with header ``path,label,xmin,ymin,xmax,ymax``, one
row per box."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path, PurePosixPath

from ..errors import DataError
from ._common import Record, _Bad, _inside_root, _num, _read_csv, _require_file, _train_classes

_CSV_COLUMNS = ("path", "label", "xmin", "ymin", "xmax", "ymax")


def _read_csv_layout(root: Path, split: str, missing_ok: bool, bad: _Bad):
    split_file = _require_file(root / f"{split}.csv", "split file")
    rows = _read_csv(split_file, _CSV_COLUMNS)
    train_file = root / "train.csv"
    train_rows = _train_classes(
        split, split_file, train_file, lambda p: _read_csv(p, _CSV_COLUMNS), "classes follow the labels", rows
    )
    classes = sorted({r["label"] for r in train_rows if r["label"]})
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
        if label not in index:
            bad(
                img,
                f"label {label!r} ({split_file.name} row {grp[0][0]}) is not among the "
                f"{len(classes)} classes of {train_file.name}",
            )
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
            records.append(Record(img, index[label], tuple(boxes), tuple(box_labels), size, PurePosixPath(rel).stem))
    return records, classes, split_file
