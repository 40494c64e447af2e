"""Dataset layouts on disk -> a list of :class:`Record` and the class names.

``read_layout(root, layout="auto", split="train")`` is the single entry point; there is one
parser per layout:

``imagenet``
    ``root/<split>/<wnid>/*.JPEG`` (any image extension), PASCAL-VOC XML boxes in
    ``root/Annotation/<wnid>/<stem>.xml`` or ``root/<split>/Annotation/<wnid>/<stem>.xml``
    (a flat ``.../Annotation/<stem>.xml`` is accepted too).  Classes = sorted folder names of
    the *train* split (torchvision ``ImageFolder`` convention).  Boxes stay in the
    coordinates of the XML ``<size>`` (``Record.ann_size``); the dataset rescales them.
``listfile`` (the reference release)
    ``root/image/<file>``, ``root/annotations/<stem>.xml``, ``root/<split>.txt`` with
    ``filename label`` lines, ``label`` an int.  Classes = ``[str(i) for i in
    range(max_train_label + 1)]``.  An XML object ``<name>`` that is an integer is that class
    index; any other name (e.g. a wnid) maps to the image label of a strict majority of the
    train images whose annotation contains it, and to -1 when there is none or it is unseen.
``kaggle``
    ``root/LOC_<split>_solution.csv`` (``test`` reads ``LOC_val_solution.csv``) with
    ``ImageId,PredictionString`` rows, ``PredictionString`` = repeated ``wnid xmin ymin xmax
    ymax``; train images at ``root/ILSVRC/Data/CLS-LOC/train/<wnid>/<ImageId>.JPEG`` (label =
    the ``<wnid>`` prefix of the id), val images at ``.../val/<ImageId>.JPEG`` (label = wnid of
    the first box).  Classes = ``LOC_synset_mapping.txt`` order when present, else the sorted
    wnids of ``LOC_train_solution.csv``.  Boxes are in the image's own pixel frame.
``coco``
    ``root/<split>.json`` (COCO instances format), images at ``root/<split>/<file_name>`` or
    ``root/<file_name>``.  Label = category of the largest box (by ``w*h``; first wins ties);
    classes = category names of the train json sorted by category id.
``csv``
    ``root/<split>.csv`` with header ``path,label,xmin,ymin,xmax,ymax`` (extra columns are
    ignored, except optional ``box_label`` = class name of that row's box, default ``label``,
    and optional ``width,height`` = the annotation frame).  One row per box, rows of one image
    share ``path`` and ``label``; a row with all four box fields empty is an image without
    boxes.  ``path`` is relative to ``root``.  Classes = sorted unique labels of ``train.csv``.

Rules common to all layouts: classes always come from the train split (reading ``test`` uses
them, and an image whose class is not among them raises :class:`DataError`); an image path
read from a split file must stay inside ``root`` (an absolute path elsewhere or a ``..`` escape
is a bad entry naming the split file, the line/row/COCO image id and the path); box labels are
indices into the classes, -1 for a class outside them; a missing split raises
``FileNotFoundError`` naming the path; a split without images raises ``DataError("no
images")``; errors always name the file at fault.

Bad entries (missing annotation, unknown label, malformed row) raise :class:`DataError`,
unless a list is passed as ``skipped=``: then the entry is left out and ``(path, problem)`` is
appended to that list (the CLI's ``--skip-bad``).  ``missing_ok=True`` instead keeps an image
whose XML annotation is missing, with no boxes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings
import xml.etree.ElementTree as ET
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Callable

from camgap.errors import InputError, MissingFileError

from .errors import DataError

__all__ = ["Record", "DataError", "read_layout", "detect_layout", "LAYOUTS", "SPLITS",
           "parse_voc_xml"]

Box = tuple[float, float, float, float]

LAYOUTS = ("imagenet", "listfile", "kaggle", "coco", "csv")
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm")


@dataclass(frozen=True)
class Record:
    """One image of a split.

    ``boxes`` are (xmin, ymin, xmax, ymax) in the annotation's pixel frame, whose (width,
    height) is ``ann_size`` (None = the decoded image's own size).  ``box_labels[i]`` is the
    class index of ``boxes[i]``, -1 when its class is outside ``classes``.
    """

    path: Path
    label: int
    boxes: tuple[Box, ...] = ()
    box_labels: tuple[int, ...] = ()
    ann_size: tuple[int, int] | None = None
    image_id: str = ""


# --------------------------------------------------------------------------- helpers

class _Bad:
    """Collects bad entries: raise, or record and skip when a list was given."""

    def __init__(self, skipped: list | None):
        self.skipped = skipped

    def __call__(self, path, problem: str) -> None:
        if self.skipped is None:
            raise DataError(path, problem)
        self.skipped.append((str(path), problem))


def _leaves_root(root: Path, path: Path, name: str) -> bool:
    """True when ``path``, built from the split file's entry ``name``, points outside ``root``.

    Lexically first: an absolute path elsewhere, or ``..`` climbing above ``root``. An entry
    with ``..`` is then also resolved, since ``..`` after a symlinked folder climbs from the
    link's target. Symlinks the dataset owner put inside ``root`` (e.g. ``train`` on another
    disk) are otherwise trusted: only the split file's text is checked, not the disk layout.
    """
    base = os.path.normpath(root.absolute())
    if not Path(os.path.normpath(path.absolute())).is_relative_to(base):
        return True
    return ".." in PurePath(name).parts and not path.resolve().is_relative_to(root.resolve())


def _inside_root(root: Path, path: Path, name: str, split_file: Path, where: str, bad: _Bad) -> bool:
    """Check an image path read from ``split_file`` (entry ``where``: "line 3", "row 2", "image
    id 7"); a path outside ``root`` is a bad entry (raised, or skipped with ``skipped=``)."""
    if _leaves_root(root, path, name):
        bad(split_file, f"{where}: image path {name!r} leaves the dataset root {root}")
        return False
    return True


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise MissingFileError(f"{path}: {what} not found")
    return path


def _check_split(split: str) -> str:
    if split not in SPLITS and split != "val":
        raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


def _no_images(path: Path, records: list) -> None:
    if not records:
        raise DataError(path, "no images")


def _unique_ids(records: list[Record], root: Path) -> list[Record]:
    """Make ``image_id`` unique: stems where they are unique, else the root-relative path."""
    ids = [r.image_id for r in records]
    if len(set(ids)) == len(ids):
        return records
    out = []
    for r in records:
        try:
            rel = r.path.relative_to(root)
        except ValueError:
            rel = r.path
        out.append(_replace_id(r, PurePosixPath(*rel.parts).with_suffix("").as_posix()))
    ids = [r.image_id for r in out]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(root, f"image listed twice in the split: {dup}")
    return out


def _replace_id(r: Record, image_id: str) -> Record:
    return Record(r.path, r.label, r.boxes, r.box_labels, r.ann_size, image_id)


def _num(text: str | None, path: Path, field: str) -> float:
    try:
        v = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(path, f"{field} is not a number: {text!r}") from None
    if not math.isfinite(v):
        raise DataError(path, f"{field} is not finite: {text!r}")
    return v


def parse_voc_xml(path: str | Path) -> tuple[tuple[int, int] | None, list[tuple[str, Box]]]:
    """Read a PASCAL-VOC XML file: ``(size, [(name, (xmin, ymin, xmax, ymax)), ...])``.

    ``size`` is (width, height) from ``<size>``, None when absent or zero.  Objects without a
    ``<bndbox>`` are ignored; a malformed file or coordinate raises :class:`DataError`.
    """
    path = Path(path)
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise DataError(path, f"malformed XML annotation ({e})") from None
    except OSError as e:
        raise DataError(path, f"cannot read annotation ({e.strerror or e})") from None
    root = tree.getroot()
    size = None
    s = root.find("size")
    if s is not None and s.findtext("width") and s.findtext("height"):
        w = _num(s.findtext("width"), path, "<size><width>")
        h = _num(s.findtext("height"), path, "<size><height>")
        if w > 0 and h > 0:
            size = (int(round(w)), int(round(h)))
    objects = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            continue
        name = (obj.findtext("name") or "").strip()
        box = tuple(_num(bb.findtext(k), path, f"<bndbox><{k}>")
                    for k in ("xmin", "ymin", "xmax", "ymax"))
        objects.append((name, box))
    return size, objects


def _list_images(d: Path) -> list[Path]:
    """Sorted image files directly in ``d`` (one ``scandir``, no per-file ``stat``)."""
    with os.scandir(d) as it:
        return sorted(Path(e.path) for e in it
                      if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)


def _xml_stems(d: Path, cache: dict) -> dict[str, Path]:
    """``{stem: path}`` of the ``.xml`` files directly in ``d`` (cached per directory)."""
    if d not in cache:
        found = {}
        if d.is_dir():
            with os.scandir(d) as it:
                for e in it:
                    if e.name.endswith(".xml") and e.is_file():
                        found[e.name[:-4]] = Path(e.path)
        cache[d] = found
    return cache[d]


def _read_text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(path, f"not a UTF-8 text file ({e})") from None


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in fields]
            if missing:
                raise DataError(path, f"missing column(s) {', '.join(missing)}; header must "
                                      f"contain {','.join(required)} (found {','.join(fields)})")
            reader.fieldnames = fields
            return [{k: (v or "").strip() for k, v in row.items() if k is not None}
                    for row in reader]
    except UnicodeDecodeError as e:
        raise DataError(path, f"not a UTF-8 text file ({e})") from None
    except csv.Error as e:
        raise DataError(path, f"malformed CSV ({e})") from None


def _box_label(name: str, index: dict[str, int]) -> int:
    return index.get(name, -1)


# --------------------------------------------------------------------------- detection

_EXPECTED = {
    "kaggle": "LOC_train_solution.csv / LOC_val_solution.csv (+ ILSVRC/Data/CLS-LOC/)",
    "listfile": "train.txt / test.txt + image/ (+ annotations/)",
    "coco": "train.json / test.json (COCO instances)",
    "csv": "train.csv / test.csv (path,label,xmin,ymin,xmax,ymax)",
    "imagenet": "train/<wnid>/*.JPEG (+ Annotation/<wnid>/<stem>.xml)",
}


def detect_layout(root: str | Path) -> str:
    """Name the layout of ``root`` from the files that exist there.

    Checked in this order: kaggle, listfile, coco, csv, imagenet.  Raises
    ``FileNotFoundError`` when ``root`` is not a directory and :class:`DataError` listing the
    expected files when nothing matches.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: dataset directory not found")
    if any((root / f"LOC_{s}_solution.csv").is_file() for s in ("train", "val")):
        return "kaggle"
    if (root / "image").is_dir() and any((root / f"{s}.txt").is_file() for s in SPLITS):
        return "listfile"
    if any((root / f"{s}.json").is_file() for s in SPLITS):
        return "coco"
    if any((root / f"{s}.csv").is_file() for s in SPLITS):
        return "csv"
    for s in SPLITS:
        d = root / s
        if d.is_dir() and any(p.is_dir() and p.name != "Annotation" for p in d.iterdir()):
            return "imagenet"
    expected = "; ".join(f"{k}: {v}" for k, v in _EXPECTED.items())
    raise DataError(root, f"cannot detect the dataset layout; expected one of — {expected}")


# --------------------------------------------------------------------------- imagenet

def _imagenet_classes(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name != "Annotation")


def _read_imagenet(root: Path, split: str, missing_ok: bool, bad: _Bad):
    split_dir = root / split
    if not split_dir.is_dir():
        raise MissingFileError(f"{split_dir}: split directory not found")
    train_dir = root / "train"
    if train_dir.is_dir():
        classes = _imagenet_classes(train_dir)
    else:
        warnings.warn(f"{train_dir} not found: class indices follow the folders of {split_dir}",
                      stacklevel=3)
        classes = _imagenet_classes(split_dir)
    if not classes:
        raise DataError(train_dir if train_dir.is_dir() else split_dir,
                        "no class folders (expected <split>/<class>/<image>)")
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
                bad(img, f"class folder {cdir.name!r} is not a class of the train split "
                         f"({len(classes)} classes from {train_dir})")
            continue
        label = index[cdir.name]
        # where to look, in order: <ann>/<wnid>/<stem>.xml, then a flat <ann>/<stem>.xml
        lookups = [_xml_stems(d / cdir.name, cache) for d in ann_dirs] + \
                  [_xml_stems(d, cache) for d in ann_dirs]
        for img in images:
            xml = next((m[img.stem] for m in lookups if img.stem in m), None)
            if xml is None:
                if missing_ok:
                    records.append(Record(img, label, (), (), None, img.stem))
                else:
                    bad(img, "missing annotation: expected "
                             f"{ann_dirs[0] / cdir.name / (img.stem + '.xml')}")
                continue
            try:
                size, objects = parse_voc_xml(xml)
            except DataError as e:
                bad(e.path, e.problem)
                continue
            records.append(Record(img, label, tuple(b for _, b in objects),
                                  tuple(_box_label(n, index) for n, _ in objects), size,
                                  img.stem))
    return records, classes, split_dir


# --------------------------------------------------------------------------- listfile

def _parse_listfile(path: Path) -> list[tuple[str, int, int]]:
    """``[(filename, label, line_number)]`` from a ``filename label`` file."""
    out = []
    for n, line in enumerate(_read_text_lines(path), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise DataError(path, f"line {n}: expected 'filename label', got {line!r}")
        try:
            label = int(parts[1])
        except ValueError:
            raise DataError(path, f"line {n}: label {parts[1]!r} is not an integer") from None
        if label < 0:
            raise DataError(path, f"line {n}: negative label {label}")
        out.append((parts[0].strip(), label, n))
    return out


def _listfile_image(root: Path, name: str) -> Path:
    p = root / "image" / name
    if not p.exists() and (root / name).is_file():
        return root / name
    return p


def _read_listfile(root: Path, split: str, missing_ok: bool, bad: _Bad):
    split_file = _require_file(root / f"{split}.txt", "split file")
    train_file = root / "train.txt"
    entries = _parse_listfile(split_file)
    train_entries = entries if split == "train" else (
        _parse_listfile(train_file) if train_file.is_file() else None)
    if train_entries is None:
        warnings.warn(f"{train_file} not found: classes follow the labels of {split_file}",
                      stacklevel=3)
        train_entries = entries
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
            bad(img, f"label {lab} ({split_file} line {n}) is outside the {n_classes} classes "
                     f"of the train split (0..{n_classes - 1})")
            continue
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
        records.append(Record(img, lab, tuple(b for _, b in objects),
                              tuple(box_label(o) for o, _ in objects), size,
                              PurePosixPath(name).stem))
    return records, classes, split_file


# --------------------------------------------------------------------------- kaggle

def _parse_prediction_string(s: str, path: Path, n: int, bad: _Bad):
    toks = s.split()
    if len(toks) % 5:
        bad(path, f"row {n}: PredictionString must be groups of 'wnid xmin ymin xmax ymax', "
                  f"got {len(toks)} fields")
        return None
    out = []
    for i in range(0, len(toks), 5):
        try:
            box = tuple(float(t) for t in toks[i + 1:i + 5])
        except ValueError:
            bad(path, f"row {n}: non-numeric box coordinate in {' '.join(toks[i:i + 5])!r}")
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
            raise MissingFileError(f"{train_file}: needed for the class list (or "
                                    f"{synsets.name}) but not found")
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
        if ksplit != "train" and not objects:
            bad(img, f"no boxes in {split_file.name} row {n}, so no label "
                     "(a val image's label is the wnid of its first box)")
            continue
        if wnid not in index:
            bad(img, f"class {wnid!r} is not among the {len(classes)} train classes")
            continue
        records.append(Record(img, index[wnid], tuple(b for _, b in objects),
                              tuple(index.get(w, -1) for w, _ in objects), None, image_id))
    return records, classes, split_file


# --------------------------------------------------------------------------- coco

def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"malformed JSON ({e})") from None
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise DataError(path, "not a COCO instances file (needs 'images', 'annotations', "
                              "'categories')")
    return data


def _coco_classes(data: dict, path: Path) -> tuple[list[str], dict[int, str]]:
    try:
        cats = sorted(((int(c["id"]), str(c["name"])) for c in data["categories"]))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(path, f"malformed 'categories' entry ({e!r})") from None
    return [name for _, name in cats], dict(cats)


def _read_coco(root: Path, split: str, missing_ok: bool, bad: _Bad):
    split_file = _require_file(root / f"{split}.json", "split file")
    data = _load_json(split_file)
    train_file = root / "train.json"
    if split == "train":
        classes, _ = _coco_classes(data, split_file)
    elif train_file.is_file():
        classes, _ = _coco_classes(_load_json(train_file), train_file)
    else:
        warnings.warn(f"{train_file} not found: classes follow the categories of {split_file}",
                      stacklevel=3)
        classes, _ = _coco_classes(data, split_file)
    _, cat_name = _coco_classes(data, split_file)
    index = {c: i for i, c in enumerate(classes)}

    anns: dict = defaultdict(list)
    for a in data.get("annotations") or []:
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
            anns[a["image_id"]].append((int(a["category_id"]), (x, y, x + w, y + h), w * h))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(split_file, f"malformed annotation {a.get('id', '?')} ({e!r})") \
                from None

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
        if not objs:
            bad(img, f"no boxes in {split_file.name}, so no label (a COCO image's label is "
                     "the category of its largest box)")
            continue
        unknown = [c for c, _, _ in objs if c not in cat_name]
        if unknown:
            bad(split_file, f"image {fname}: category id {unknown[0]} not in 'categories'")
            continue
        big = max(range(len(objs)), key=lambda i: (objs[i][2], -i))
        name = cat_name[objs[big][0]]
        if name not in index:
            bad(img, f"class {name!r} (its largest box) is not among the {len(classes)} "
                     "train classes")
            continue
        w, h = im.get("width"), im.get("height")
        size = (int(w), int(h)) if w and h else None
        records.append(Record(img, index[name], tuple(b for _, b, _ in objs),
                              tuple(index.get(cat_name[c], -1) for c, _, _ in objs), size,
                              PurePosixPath(fname).stem))
    return records, classes, split_file


# --------------------------------------------------------------------------- csv

_CSV_COLUMNS = ("path", "label", "xmin", "ymin", "xmax", "ymax")


def _read_csv_layout(root: Path, split: str, missing_ok: bool, bad: _Bad):
    split_file = _require_file(root / f"{split}.csv", "split file")
    rows = _read_csv(split_file, _CSV_COLUMNS)
    train_file = root / "train.csv"
    if split == "train":
        train_rows = rows
    elif train_file.is_file():
        train_rows = _read_csv(train_file, _CSV_COLUMNS)
    else:
        warnings.warn(f"{train_file} not found: classes follow the labels of {split_file}",
                      stacklevel=3)
        train_rows = rows
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
            bad(img, f"rows {', '.join(str(n) for n, _ in grp)} of {split_file.name} give "
                     f"different labels {sorted(labels)}")
            continue
        label = labels.pop()
        if label not in index:
            bad(img, f"label {label!r} ({split_file.name} row {grp[0][0]}) is not among the "
                     f"{len(classes)} classes of {train_file.name}")
            continue
        boxes, box_labels, size, ok = [], [], None, True
        for n, r in grp:
            vals = [r[k] for k in ("xmin", "ymin", "xmax", "ymax")]
            if r.get("width") and r.get("height"):
                size = (int(_num(r["width"], split_file, f"row {n} width")),
                        int(_num(r["height"], split_file, f"row {n} height")))
            if not any(vals):
                continue
            if not all(vals):
                bad(split_file, f"row {n} ({rel}): box fields must be all set or all empty")
                ok = False
                break
            try:
                box = tuple(_num(v, split_file, f"row {n} {k}")
                            for v, k in zip(vals, ("xmin", "ymin", "xmax", "ymax")))
            except DataError as e:
                bad(e.path, e.problem)
                ok = False
                break
            boxes.append(box)
            box_labels.append(index.get(r.get("box_label") or label, -1))
        if ok:
            records.append(Record(img, index[label], tuple(boxes), tuple(box_labels), size,
                                  PurePosixPath(rel).stem))
    return records, classes, split_file


# --------------------------------------------------------------------------- entry point

_PARSERS: dict[str, Callable] = {
    "imagenet": _read_imagenet,
    "listfile": _read_listfile,
    "kaggle": _read_kaggle,
    "coco": _read_coco,
    "csv": _read_csv_layout,
}


def read_layout(root: str | Path, layout: str = "auto", split: str = "train", *,
                missing_ok: bool = False,
                skipped: list | None = None) -> tuple[list[Record], list[str]]:
    """Read one split of a dataset: ``(records, classes)``.

    ``layout`` is one of ``"auto"`` (see :func:`detect_layout`), ``"imagenet"``,
    ``"listfile"``, ``"kaggle"``, ``"coco"``, ``"csv"``; ``split`` is ``"train"`` or
    ``"test"``.  ``missing_ok=True`` keeps images whose XML annotation is missing (with no
    boxes) instead of raising.  With a list as ``skipped``, bad entries are left out and
    ``(path, problem)`` pairs are appended to it instead of raising :class:`DataError`
    (structural problems of the split file itself, and an empty result, still raise).
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: dataset directory not found")
    split = _check_split(split)
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in _PARSERS:
        raise InputError(f"unknown layout {layout!r}; expected 'auto' or one of {LAYOUTS}")
    if split == "val" and layout != "kaggle":
        split = "test"
    records, classes, where = _PARSERS[layout](root, split, missing_ok, _Bad(skipped))
    _no_images(where, records)
    return _unique_ids(records, root), classes
