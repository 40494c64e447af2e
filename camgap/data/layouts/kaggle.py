"""The ``kaggle`` layout: ``LOC_<split>_solution.csv`` with ``PredictionString`` boxes and the
images under ``ILSVRC/Data/CLS-LOC/``; classes from ``LOC_synset_mapping.txt``."""

from __future__ import annotations

from pathlib import Path

from camgap.errors import MissingFileError

from ._common import UNLABELED, Record, _Bad, _inside_root, _read_csv, _read_text_lines, _require_file


def _parse_prediction_string(s: str, path: Path, n: int, bad: _Bad):
    toks = s.split()
    if len(toks) % 5:
        bad(path, f"row {n}: PredictionString must be groups of 'wnid xmin ymin xmax ymax', got {len(toks)} fields")
        return None
    out = []
    for i in range(0, len(toks), 5):
        try:
            box = tuple(float(t) for t in toks[i + 1 : i + 5])
        except ValueError:
            bad(path, f"row {n}: non-numeric box coordinate in {' '.join(toks[i : i + 5])!r}")
            return None
        out.append((toks[i], box))
    return out


def _read_kaggle(root: Path, split: str, missing_ok: bool, bad: _Bad):
    ksplit = "val" if split in ("test", "val") else "train"
    split_file = _require_file(root / f"LOC_{ksplit}_solution.csv", "split file")
    synsets = root / "LOC_synset_mapping.txt"
    train_file = root / "LOC_train_solution.csv"
    if synsets.is_file():
        classes = [ln.split()[0] for ln in _read_text_lines(synsets) if ln.strip()]
    else:
        src = split_file if ksplit == "train" else train_file
        if not src.is_file():
            raise MissingFileError(f"{train_file}: needed for the class list (or {synsets.name}) but not found")
        wnids = set()
        for row in _read_csv(src, ("ImageId", "PredictionString")):
            wnids.add(row["ImageId"].split("_")[0] if "_" in row["ImageId"] else "")
            wnids.update(row["PredictionString"].split()[0::5])
        wnids.discard("")
        classes = sorted(wnids)
    index = {c: i for i, c in enumerate(classes)}
    img_dir = root / "ILSVRC" / "Data" / "CLS-LOC" / ksplit

    records = []
    for n, row in enumerate(_read_csv(split_file, ("ImageId", "PredictionString")), 2):
        image_id = row["ImageId"]
        if not image_id:
            bad(split_file, f"row {n}: empty ImageId")
            continue
        objects = _parse_prediction_string(row["PredictionString"], split_file, n, bad)
        if objects is None:
            continue
        if ksplit == "train":
            wnid = image_id.split("_")[0]
            img = img_dir / wnid / f"{image_id}.JPEG"
        else:
            wnid = objects[0][0] if objects else ""
            img = img_dir / f"{image_id}.JPEG"
        if not _inside_root(root, img, image_id, split_file, f"row {n}", bad):
            continue
        problem = ""  # why the image has no known label
        if ksplit != "train" and not objects:
            problem = (
                f"no boxes in {split_file.name} row {n}, so no label (a val image's label is the wnid of its first box)"
            )
        elif wnid not in index:
            problem = f"class {wnid!r} is not among the {len(classes)} train classes"
        if problem and not bad.unlabeled(img, problem):
            continue
        records.append(
            Record(
                img,
                index.get(wnid, UNLABELED),
                tuple(b for _, b in objects),
                tuple(index.get(w, -1) for w, _ in objects),
                None,
                image_id,
            )
        )
    return records, classes, split_file
