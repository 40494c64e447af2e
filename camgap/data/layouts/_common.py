"""What every layout parser shares: the :class:`Record`, the bad-entry policy, path checks,
the readers of XML/CSV/text files, and `_train_classes` (classes come from the train split)."""

from __future__ import annotations

import csv
import math
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import TypeVar

from camgap.errors import InputError, MissingFileError

from ..errors import DataError

T = TypeVar("T")

Box = tuple[float, float, float, float]

LAYOUTS = ("imagenet", "listfile", "kaggle", "coco", "csv")
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
UNLABELED = -1  # Record.label of a held-out image without a known label (`read_layout(unlabeled_ok=True)`)


@dataclass(frozen=True)
class Record:
    """One image of a split.

    ``label`` is the class index, UNLABELED (-1) for a held-out image whose label is missing or
    outside ``classes`` (only with ``unlabeled_ok``).  ``boxes`` are (xmin, ymin, xmax, ymax)
    in the annotation's pixel frame, whose (width, height) is ``ann_size`` (None = the decoded
    image's own size).  ``box_labels[i]`` is the class index of ``boxes[i]``, -1 when its class
    is outside ``classes``.
    """

    path: Path
    label: int
    boxes: tuple[Box, ...] = ()
    box_labels: tuple[int, ...] = ()
    ann_size: tuple[int, int] | None = None
    image_id: str = ""


# --------------------------------------------------------------------------- helpers


class _Bad:
    """Collects bad entries: raise, or record and skip when a list was given. An image without a
    known label is one too, unless the split may be unlabelled (`unlabeled_ok`, a held-out split)."""

    def __init__(self, skipped: list | None, unlabeled_ok: bool = False):
        self.skipped = skipped
        self.unlabeled_ok = unlabeled_ok

    def __call__(self, path, problem: str) -> None:
        if self.skipped is None:
            raise DataError(path, problem)
        self.skipped.append((str(path), problem))

    def unlabeled(self, path, problem: str) -> bool:
        """True: keep the image, labelled UNLABELED; False: it was a bad entry (raised or skipped)."""
        if self.unlabeled_ok:
            return True
        self(path, problem)
        return False


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
        box = tuple(_num(bb.findtext(k), path, f"<bndbox><{k}>") for k in ("xmin", "ymin", "xmax", "ymax"))
        objects.append((name, box))
    return size, objects


def _list_images(d: Path) -> list[Path]:
    """Sorted image files directly in ``d`` (one ``scandir``, no per-file ``stat``)."""
    with os.scandir(d) as it:
        return sorted(
            Path(e.path) for e in it if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        )


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
                raise DataError(
                    path,
                    f"missing column(s) {', '.join(missing)}; header must "
                    f"contain {','.join(required)} (found {','.join(fields)})",
                )
            reader.fieldnames = fields
            return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except UnicodeDecodeError as e:
        raise DataError(path, f"not a UTF-8 text file ({e})") from None
    except csv.Error as e:
        raise DataError(path, f"malformed CSV ({e})") from None


def _box_label(name: str, index: dict[str, int]) -> int:
    return index.get(name, -1)


def _train_classes(
    split: str,
    split_source: Path,
    train_source: Path,
    read: Callable[[Path], T],
    follows: str,
    current: T | None = None,
) -> T:
    """Where the classes come from: the train split (``read(train_source)``, or ``current``
    when ``split`` is the train split and was read already). A dataset without a train split
    takes them from the split being read (``current`` or ``read(split_source)``), with a
    warning that ``follows`` (e.g. "classes follow the labels") of that split."""
    if split == "train" and current is not None:
        return current
    if train_source.exists():
        return read(train_source)
    warnings.warn(f"{train_source} not found: {follows} of {split_source}", stacklevel=4)
    return current if current is not None else read(split_source)
