"""A folder of mask images as the mask source: one file per image, matched by id."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._common import _SHOW, MaskError
from .sources import FOLDER, MASK_SOURCES, FoundMasks, MaskRequest, MaskSource

MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".webp", ".gif")


def _index_folder(folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Mask files under ``folder`` (recursive) by relative path without suffix and by stem."""
    by_rel: dict[str, Path] = {}
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in MASK_EXTENSIONS or not p.is_file() or p.name.startswith("."):
            continue
        rel = p.relative_to(folder).with_suffix("").as_posix()
        by_rel.setdefault(rel, p)
        by_stem.setdefault(p.stem, []).append(p)
    return by_rel, by_stem


def _match(image_id: str, by_rel: dict[str, Path], by_stem: dict[str, list[Path]]) -> Path | None:
    if image_id in by_rel:
        return by_rel[image_id]
    stem = Path(image_id).stem if Path(image_id).suffix.lower() in MASK_EXTENSIONS else Path(image_id).name
    hits = by_stem.get(stem, [])
    if len(hits) > 1:
        raise MaskError(f"mask for image {image_id!r} is ambiguous: {', '.join(str(h) for h in hits[:_SHOW])}")
    return hits[0] if hits else None


def _foreground(path: Path) -> np.ndarray:
    """Read one mask file as a bool array at its own size (rules in ``read_mask_folder``)."""
    from ..errors import DataError
    from ..images import open_checked

    try:
        with open_checked(path) as im:  # its header's size checked before any pixel is decoded
            im.load()
            mode = im.mode
            if mode == "P":  # palette (e.g. VOC-style label maps): index 0 = background
                return np.asarray(im) != 0
            if mode in ("LA", "RGBA", "PA", "La", "RGBa"):
                grey = np.asarray(im.convert("L"))
                alpha = np.asarray(im.getchannel("A"))
                if grey.min() == grey.max() and alpha.min() != alpha.max():
                    a, full = alpha, 255.0  # a cut-out: the object is where alpha is
                else:
                    a, full = grey, 255.0
            elif mode.startswith("I"):  # 16/32-bit integer greyscale
                a, full = np.asarray(im, dtype=np.float64), 65535.0
            elif mode == "F":
                a, full = np.asarray(im, dtype=np.float64), 1.0
            else:  # 1, L, RGB, CMYK, YCbCr, ...
                a, full = np.asarray(im.convert("L")), 255.0
    except DataError as e:
        raise MaskError(f"{path}: unreadable mask ({e.problem})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise MaskError(f"{path}: unreadable mask ({e})") from None
    if a.ndim != 2:
        raise MaskError(f"{path}: mask is not a single-channel image (shape {a.shape})")
    values = np.unique(a)
    if len(values) <= 2:  # a binary mask, whatever its two levels (0/1, 0/255, 0/65535)
        return a != 0
    return a >= full / 2.0  # a soft map: at least half of the range


def _resize_mask(fg: np.ndarray, size: int, resize: str) -> np.ndarray:
    """Resize a bool mask to ``size x size`` with the very transform ``BoxDataset`` applies to
    the image (``camgap.data.dataset.make_transform``: ``"resize"`` stretches,
    ``"resize_crop"`` scales the shorter side and centre-crops), bilinear with antialiasing
    on the 0/1 mask, then foreground = value >= 0.5."""
    from torchvision import tv_tensors

    from camgap.data.dataset import make_transform

    img = tv_tensors.Image(torch.from_numpy(fg.astype(np.float32))[None])
    out = make_transform(size, resize)(img).as_subclass(Tensor)[0]
    return (out >= 0.5).numpy()


@dataclass
class FolderMasks:
    """What ``read_mask_folder`` found: masks of the matched images and what was wrong."""

    masks: Tensor  # bool [M,S,S], M = len(keep)
    keep: Tensor  # int64 [M]: indices into the image_ids asked for
    missing: list[str]
    n_resized: int


def read_mask_folder(
    folder: str | os.PathLike,
    image_ids: Sequence[str],
    size: int,
    skip_bad: bool = False,
    resize: str = "resize",
) -> FolderMasks:
    """Load one external mask per image from ``folder``.

    Matching: the file whose path relative to ``folder`` without its suffix equals the
    ``image_id``, else the unique file whose stem equals the id's stem (``.png`` first among
    ``MASK_EXTENSIONS``; subfolders searched). Any mode and size:
    - palette images (``P``): foreground = palette index != 0;
    - otherwise the image is read as greyscale (``LA``/``RGBA`` with a constant grey and a
      varying alpha: the alpha channel); a mask with at most two grey levels is binary and
      foreground = nonzero (0/1, 0/255 and 0/65535 masks all work); a soft map with more
      levels: foreground = value >= half of the range (>= 128 for 8 bits, >= 0.5 for float);
    - a mask not ``S x S`` is resized with ``BoxDataset``'s own transform for ``resize``
      (stretch, or shorter side + centre crop: the mask must then have the image's aspect
      ratio), bilinearly, and thresholded at one half; counted in ``n_resized``, never
      rejected.
    Images without a mask: ``MaskError`` naming how many and the first few ids, or with
    ``skip_bad`` they are left out (``keep`` lists the images that have one)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MaskError(f"mask folder {folder} does not exist or is not a directory")
    by_rel, by_stem = _index_folder(folder)
    paths: list[Path | None] = [_match(str(i), by_rel, by_stem) for i in image_ids]
    missing = [str(i) for i, p in zip(image_ids, paths) if p is None]
    if missing and not skip_bad:
        raise MaskError(
            f"mask folder {folder} has no mask for {len(missing)} of {len(image_ids)} images "
            f"(first: {', '.join(missing[:_SHOW])}{', ...' if len(missing) > _SHOW else ''}); "
            f"masks are matched by file stem == image id ({len(by_stem)} mask files found); "
            "use --skip-bad to score only the images that have one"
        )
    keep = [k for k, p in enumerate(paths) if p is not None]
    out = torch.zeros(len(keep), size, size, dtype=torch.bool)
    n_resized = 0
    for row, k in enumerate(keep):
        fg = _foreground(paths[k])
        if fg.shape != (size, size):
            n_resized += 1
            fg = _resize_mask(fg, size, resize)
        out[row] = torch.from_numpy(np.ascontiguousarray(fg))
    return FolderMasks(out, torch.tensor(keep, dtype=torch.long), missing, n_resized)


def _folder(request: MaskRequest) -> FoundMasks:
    found = read_mask_folder(
        request.option, request.image_ids, request.size, skip_bad=request.skip_bad, resize=request.resize
    )
    return FoundMasks(found.masks, found.keep, found.missing, found.n_resized, str(request.option))


MASK_SOURCES.add(FOLDER, MaskSource(_folder))
