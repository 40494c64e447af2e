"""Dataset layouts on disk -> a list of :class:`Record` and the class names.

``read_layout(root, layout="auto", split="train")`` is the single entry point; there is one
parser per layout, each in its own module (``imagenet``, ``listfile``, ``kaggle``, ``coco``,
``csvfile``), sharing ``_common`` (``Record``, path checks, file readers, and
``_train_classes``: classes come from the train split):

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
them, and an image whose class is not among them raises :class:`DataError`, unless
``unlabeled_ok=True`` keeps it with label ``UNLABELED`` (-1): a held-out split whose images
have no label or one outside the classes, as in a csv row with an empty ``label``, a listfile
line of a filename alone or with a label outside the classes, an imagenet test folder that is
no train class or an image directly in ``root/test/``, a kaggle or coco image without boxes or
whose class is not a train class; the train split stays strict); an image path
read from a split file must stay inside ``root`` (an absolute path elsewhere or a ``..`` escape
is a bad entry naming the split file, the line/row/COCO image id and the path); box labels are
indices into the classes, -1 for a class outside them; a missing split raises
``FileNotFoundError`` naming the path; a split without images raises ``DataError("no
images")``; errors always name the file at fault.

Box units: boxes are pixel coordinates of the annotation frame.  Boxes that all lie within
[0, 1] look like fractions of the image size and raise :class:`DataError` suggesting
``box_units="relative"`` (``--box-units relative``), which reads every box as fractions of
the image's width and height (an annotation frame of 1 x 1); ``box_units="pixels"`` says they
are pixels and skips that check.

Bad entries (missing annotation, unknown label, malformed row) raise :class:`DataError`,
unless a list is passed as ``skipped=``: then the entry is left out and ``(path, problem)`` is
appended to that list (the CLI's ``--skip-bad``).  ``missing_ok=True`` instead keeps an image
whose XML annotation is missing, with no boxes.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path

from camgap.errors import InputError, MissingFileError

from ..errors import DataError
from ._common import (
    IMAGE_EXTENSIONS,
    LAYOUTS,
    SPLITS,
    UNLABELED,
    Box,
    Record,
    _Bad,
    _check_split,
    _no_images,
    _unique_ids,
    parse_voc_xml,
)
from .coco import _read_coco
from .csvfile import _read_csv_layout
from .imagenet import _read_imagenet
from .kaggle import _read_kaggle
from .listfile import _read_listfile

__all__ = [
    "Record",
    "DataError",
    "read_layout",
    "detect_layout",
    "LAYOUTS",
    "SPLITS",
    "parse_voc_xml",
    "Box",
    "IMAGE_EXTENSIONS",
    "BOX_UNITS",
    "UNLABELED",
]

BOX_UNITS = ("pixels", "relative")


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


_PARSERS: dict[str, Callable] = {
    "imagenet": _read_imagenet,
    "listfile": _read_listfile,
    "kaggle": _read_kaggle,
    "coco": _read_coco,
    "csv": _read_csv_layout,
}


def read_layout(
    root: str | Path,
    layout: str = "auto",
    split: str = "train",
    *,
    missing_ok: bool = False,
    skipped: list | None = None,
    box_units: str | None = None,
    unlabeled_ok: bool = False,
) -> tuple[list[Record], list[str]]:
    """Read one split of a dataset: ``(records, classes)``.

    ``layout`` is one of ``"auto"`` (see :func:`detect_layout`), ``"imagenet"``,
    ``"listfile"``, ``"kaggle"``, ``"coco"``, ``"csv"``; ``split`` is ``"train"`` or
    ``"test"`` (``"val"``: kaggle's val split, the test split of the others, with a warning).
    ``missing_ok=True`` keeps images whose XML annotation is missing (with no boxes) instead of
    raising.  With a list as ``skipped``, bad entries are left out and
    ``(path, problem)`` pairs are appended to it instead of raising :class:`DataError`
    (structural problems of the split file itself, and an empty result, still raise).
    ``box_units``: None (pixels, refused when every box lies within [0, 1]), ``"pixels"`` or
    ``"relative"`` (fractions of the image's width and height).
    ``unlabeled_ok=True`` (a held-out split only: scoring it needs boxes, not labels) keeps an
    image whose label is missing or not among the classes, with label UNLABELED (-1).
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: dataset directory not found")
    split = _check_split(split)
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in _PARSERS:
        raise InputError(f"unknown layout {layout!r}; expected 'auto' or one of {LAYOUTS}")
    if box_units is not None and box_units not in BOX_UNITS:
        raise InputError(f"unknown box units {box_units!r}; expected one of {BOX_UNITS}")
    if split == "val" and layout != "kaggle":  # kaggle's held-out split is named val; the others' test
        warnings.warn(
            f"{root}: the {layout} layout has a train and a test split: split 'val' reads the test split",
            UserWarning,
            stacklevel=2,
        )
        split = "test"
    if unlabeled_ok and split == "train":
        raise InputError(f"{root}: unlabeled_ok is for a held-out split; a training image needs its label")
    bad = _Bad(skipped, unlabeled_ok)
    records, classes, where = _PARSERS[layout](root, split, missing_ok, bad)
    records = _in_box_units(records, box_units, where, bad)
    _no_images(where, records)
    return _unique_ids(records, root), classes


def _in_box_units(records: list[Record], box_units: str | None, where: Path, bad: _Bad) -> list[Record]:
    """Records whose boxes are in the pixels of their annotation frame (see the module doc)."""
    if box_units == "pixels":
        return records
    if box_units is None:
        coords = [c for r in records for b in r.boxes for c in b]
        if coords and all(0.0 <= c <= 1.0 for c in coords):
            n = sum(len(r.boxes) for r in records)
            raise DataError(
                where,
                f"all {n} boxes lie within [0, 1]: fractions of the image size? pass --box-units relative "
                "(or --box-units pixels if they are pixel coordinates)",
            )
        return records
    out = []
    for r in records:
        outside = next((b for b in r.boxes if not all(0.0 <= c <= 1.0 for c in b)), None)
        if outside is not None:
            bad(r.path, f"box {outside} is not a fraction of the image size (--box-units relative: each in [0, 1])")
            continue
        out.append(dataclasses.replace(r, ann_size=(1, 1)))
    return out
