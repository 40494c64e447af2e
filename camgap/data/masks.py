"""Object regions A_G for the score: boxes, external PNG masks, or built-in saliency.

The score compares the thresholded CAM region A_L with an object region A_G. A_G comes
from one of three *mask sources*, all giving a boolean mask per image at the model's input
size ``S``:

``"boxes"``
    The union of the image's annotated boxes (``boxes_to_masks``). Cheap, never cached.
``"saliency"`` / ``"saliency:fine_grained"`` / ``"saliency:spectral_residual"``
    An unsupervised static saliency map from OpenCV's contrib module (``cv2.saliency``),
    binarised with Otsu's threshold (or a fixed threshold). Needs no download and no GPU;
    install with ``pip install camgap[saliency]``. ``"saliency"`` means
    ``"saliency:fine_grained"``, which finds the object on the synthetic dataset more often
    than spectral residual (BENCHMARKS.md has the numbers; tests/test_masks.py asserts a bound).
a directory
    One mask image per image, from any detector (e.g. the MCCL co-salient detector of the
    paper), matched by file stem == ``image_id`` (see ``read_mask_folder`` for the rules).

Each kind is a :class:`MaskSource` in the ``MASK_SOURCES`` registry (``camgap.registry``);
``parse_source`` turns a source string into ``(kind, option)`` and ``compute_masks`` asks that
source, caches what it found and counts it in a :class:`MaskStats`.

Masks depend only on the data, never on the model, so ``compute_masks`` caches them in
``cache_dir`` (a packed-bit ``.npz`` keyed by the source, the threshold, the input size and
a fingerprint of the image ids; see ``cache_key``): scoring a model set with saliency masks
costs one mask computation, then no more than scoring with boxes.

Pixel convention (shared with the boxes of ``BoxDataset`` and the synthetic dataset): pixel
``(y, x)`` covers ``[x, x+1) x [y, y+1)`` in input pixels, and lies inside a box
``(xmin, ymin, xmax, ymax)`` when its centre lies inside the closed box:
``xmin <= x + 0.5 <= xmax`` and ``ymin <= y + 0.5 <= ymax``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camgap.errors import CamgapError, InputError, StateError
from camgap.io import atomic_write
from camgap.registry import Registry

__all__ = [
    "MaskError",
    "MaskResult",
    "MaskStats",
    "MaskSource",
    "MASK_SOURCES",
    "SALIENCY_METHODS",
    "DEFAULT_SALIENCY",
    "box_mask",
    "boxes_to_masks",
    "otsu_threshold",
    "binarize",
    "saliency_maps",
    "saliency_masks",
    "read_mask_folder",
    "compute_masks",
    "mask_quality",
    "export_masks",
    "parse_source",
    "cache_key",
]

SALIENCY_METHODS = ("fine_grained", "spectral_residual")
DEFAULT_SALIENCY = "fine_grained"
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".webp", ".gif")
CACHE_VERSION = 1
_SHOW = 5  # names shown in error messages


class MaskError(CamgapError, ValueError):
    """Bad mask input (missing masks, unreadable files, unknown source)."""


# --- boxes -------------------------------------------------------------------------------


def box_mask(boxes: Tensor | np.ndarray | Sequence, size: int, device=None) -> Tensor:
    """Union of one image's boxes ``[n,4]`` (xyxy, input pixels) as a bool ``[S,S]`` mask.

    A pixel is inside when its centre ``(x+0.5, y+0.5)`` lies in the closed box (module
    docstring). No boxes (``n == 0``) gives an all-False mask."""
    return boxes_to_masks([boxes], size, device)[0]


def boxes_to_masks(boxes_list: Sequence, size: int, device=None) -> Tensor:
    """Union of each image's boxes rasterised at the input size: bool ``[N,S,S]``.

    ``boxes_list[i]`` is a float ``[n_i,4]`` tensor/array of xyxy boxes in input pixels
    (``n_i`` may be 0). Pixel ``(y, x)`` is foreground when its centre ``(x+0.5, y+0.5)``
    lies inside one of the boxes, boundaries included; a box with integer edges
    ``(x0, y0, x1, y1)`` therefore covers exactly ``x0 <= x < x1``, ``y0 <= y < y1``.
    Boxes reaching outside the image are clipped by construction. Vectorised: one set of
    comparisons over all boxes of all images."""
    if device is None:
        device = next((b.device for b in boxes_list if isinstance(b, Tensor)), torch.device("cpu"))
    n_img = len(boxes_list)
    tensors = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4).to(device) for b in boxes_list]
    n_max = max((len(b) for b in tensors), default=0)
    if n_img == 0 or n_max == 0:
        return torch.zeros(n_img, size, size, dtype=torch.bool, device=device)
    # pad to [N, n_max, 4] with empty boxes (xmin > xmax): they cover no pixel
    padded = torch.full((n_img, n_max, 4), -1.0, device=device)
    padded[..., 0] = padded[..., 1] = 1.0
    for i, b in enumerate(tensors):
        padded[i, : len(b)] = b
    centres = torch.arange(size, dtype=torch.float32, device=device) + 0.5
    in_x = (centres >= padded[..., 0:1]) & (centres <= padded[..., 2:3])  # [N,n,S]
    in_y = (centres >= padded[..., 1:2]) & (centres <= padded[..., 3:4])  # [N,n,S]
    # union over boxes: pixel (y,x) is covered when some box k has in_y[k,y] and in_x[k,x]
    covered = torch.bmm(in_y.transpose(1, 2).float(), in_x.float())  # [N,S,S] box counts
    return covered > 0


# --- binarisation ------------------------------------------------------------------------


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _to_bins(values: np.ndarray) -> np.ndarray:
    """Map values in [0,1] to 256 bins: bin k = round(255 * v) (so v = k/255 lands in bin k)."""
    return np.clip(np.floor(values.astype(np.float64) * 255.0 + 0.5), 0, 255).astype(np.int64)


def otsu_threshold(map) -> float:
    """Otsu's threshold of a map with values in [0,1], on a 256-bin histogram.

    Bin ``k`` holds the values that round to ``k/255``. Otsu picks the last bin ``t`` of the
    background class maximising the between-class variance ``q0 q1 (mu0 - mu1)^2`` (the
    first such ``t`` on ties, as ``cv2.threshold(..., THRESH_OTSU)``). The returned threshold
    is the edge between bins ``t`` and ``t+1``, ``(t + 0.5) / 255``, and the foreground is
    ``map >= threshold``: on a uint8 map ``u/255`` this equals cv2's ``u > t``. A constant
    map has no split; like cv2 it gets ``t = 0`` (foreground = values above 0.5/255)."""
    values = _as_numpy(map).ravel()
    if values.size == 0:
        raise InputError("otsu_threshold of an empty map")
    values = np.nan_to_num(values.astype(np.float64), nan=0.0)
    hist = np.bincount(_to_bins(values), minlength=256).astype(np.float64)
    p = hist / hist.sum()
    levels = np.arange(256, dtype=np.float64)
    q0 = np.cumsum(p)  # weight of bins <= t
    q1 = 1.0 - q0
    s0 = np.cumsum(p * levels)
    mu = s0[-1]
    eps = np.finfo(np.float32).eps
    valid = (np.minimum(q0, q1) >= eps) & (np.maximum(q0, q1) <= 1.0 - eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = s0 / q0
        mu1 = (mu - s0) / q1
        sigma = q0 * q1 * (mu0 - mu1) ** 2
    sigma = np.where(valid, sigma, -1.0)
    t = int(np.argmax(sigma)) if sigma.max() > 0 else 0
    return (t + 0.5) / 255.0


def binarize(map, method: str | float = "otsu") -> Tensor:
    """Binarise a map (or a batch ``[...,H,W]``, each ``[H,W]`` separately) with values in [0,1].

    ``method="otsu"``: foreground = ``map >= otsu_threshold(map)`` per map; a float ``rho``:
    foreground = ``map >= rho`` (the CAM convention of the score). Returns a bool tensor."""
    t = torch.as_tensor(_as_numpy(map)) if not isinstance(map, Tensor) else map
    if isinstance(method, str):
        if method != "otsu":
            raise InputError(f"binarize method must be 'otsu' or a float, got {method!r}")
        flat = t.reshape(-1, *t.shape[-2:])
        thr = torch.tensor([otsu_threshold(m) for m in flat], dtype=torch.float64, device=t.device)
        out = flat.to(torch.float64) >= thr[:, None, None]
        return out.reshape(t.shape)
    return t >= float(method)


# --- saliency ----------------------------------------------------------------------------


def _cv2():
    try:
        import cv2  # optional dependency, imported lazily

        cv2.saliency  # noqa: B018  (the contrib module, absent from plain opencv-python)
    except (ImportError, AttributeError):
        raise ImportError(
            "saliency masks need OpenCV's contrib saliency module: pip install camgap[saliency] "
            "(opencv-contrib-python-headless; a plain opencv-python without contrib does not have cv2.saliency)"
        ) from None
    return cv2


def _minmax(m: np.ndarray) -> np.ndarray:
    lo, hi = float(m.min()), float(m.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 1e-12:
        return np.zeros_like(m, dtype=np.float32)
    return ((m - lo) / (hi - lo)).astype(np.float32)


def saliency_maps(
    images_uint8,
    method: str = DEFAULT_SALIENCY,
    smooth: float = 1 / 16,
    work_size: int | None = 128,
    batch_size: int = 256,
) -> Tensor:
    """Static saliency maps from ``cv2.saliency``: uint8 RGB ``[N,3,S,S]`` -> float32 ``[N,S,S]`` in [0,1].

    ``method``: ``"fine_grained"`` (``StaticSaliencyFineGrained``, centre-surround
    differences, Montabone & Soto 2010) or ``"spectral_residual"``
    (``StaticSaliencySpectralResidual``, Hou & Zhang 2007; works on a 64x64 copy internally).
    Both OpenCV detectors see one intensity channel, so each of the R, G, B channels is
    scored on its own and the min-max normalised maps are averaged (an object differing from
    the background in colour only is found too). Images larger than ``work_size`` are shrunk
    to it first (area interpolation; ``None`` = never): the maps are smooth, and fine-grained
    costs grow with the pixel count. The mean map is
    resized to ``S`` (bilinear), smoothed with a Gaussian of sigma ``smooth * S`` (0 = off)
    and min-max normalised per image (a constant map becomes all zeros). The defaults (RGB
    channels averaged, sigma S/16) were chosen on the synthetic dataset, where they find the
    object more often than a grey image without smoothing."""
    if method not in SALIENCY_METHODS:
        raise InputError(f"saliency method must be one of {SALIENCY_METHODS}, got {method!r}")
    cv2 = _cv2()
    detector = (
        cv2.saliency.StaticSaliencyFineGrained_create()
        if method == "fine_grained"
        else cv2.saliency.StaticSaliencySpectralResidual_create()
    )
    n = len(images_uint8)
    if n == 0:
        return torch.zeros(0, 0, 0)
    first = _as_numpy(images_uint8[0])
    if first.ndim != 3 or first.shape[0] != 3:
        raise InputError(f"saliency_maps expects uint8 RGB images [N,3,H,W], got an image of shape {first.shape}")
    h, w = first.shape[1:]
    out = np.empty((n, h, w), dtype=np.float32)
    sigma = float(smooth) * max(h, w)
    shrink = work_size is not None and max(h, w) > work_size
    if shrink:
        scale = work_size / max(h, w)
        work_hw = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 order: (w, h)
    for start in range(0, n, batch_size):
        chunk = _as_numpy(images_uint8[start : start + batch_size])
        if chunk.dtype != np.uint8:
            raise InputError(f"saliency_maps expects uint8 images, got {chunk.dtype}")
        for j, img in enumerate(chunk):
            maps = []
            for c in range(3):
                channel = np.ascontiguousarray(img[c])
                if shrink:
                    channel = cv2.resize(channel, work_hw, interpolation=cv2.INTER_AREA)
                # cv2 expects HxWx3 (BGR) uint8; a grey copy of one channel
                ok, sal = detector.computeSaliency(cv2.merge([channel, channel, channel]))
                if not ok:
                    raise StateError(f"cv2.saliency {method} failed on image {start + j}")
                sal = np.asarray(sal, dtype=np.float32)
                if sal.shape != (h, w):
                    sal = cv2.resize(sal, (w, h), interpolation=cv2.INTER_LINEAR)
                maps.append(_minmax(sal))
            m = np.mean(maps, axis=0)
            if sigma > 0:
                m = cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
            out[start + j] = _minmax(m)
    return torch.from_numpy(out)


def saliency_masks(
    images_uint8,
    method: str = DEFAULT_SALIENCY,
    threshold: str | float = "otsu",
    batch_size: int = 256,
    **saliency_kw,
) -> Tensor:
    """``binarize(saliency_maps(images, method, **saliency_kw), threshold)`` chunk by chunk:
    bool ``[N,S,S]``."""
    n = len(images_uint8)
    parts = []
    for start in range(0, n, batch_size):
        maps = saliency_maps(images_uint8[start : start + batch_size], method, batch_size=batch_size, **saliency_kw)
        parts.append(binarize(maps, threshold))
    if not parts:
        return torch.zeros(0, 0, 0, dtype=torch.bool)
    return torch.cat(parts)


# --- external mask folders ---------------------------------------------------------------


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
    from .errors import DataError
    from .images import open_checked

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


# --- the mask source API -----------------------------------------------------------------


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InputError(f"mask stats: {name} must be a count >= 0, got {value!r}")
    return int(value)


def _share(name: str, value: object) -> float:
    v = float(value)  # type: ignore[arg-type]
    if not (np.isnan(v) or 0.0 <= v <= 1.0):
        raise InputError(f"mask stats: {name} must be a share in [0, 1] (or NaN), got {value!r}")
    return v


def _ids(name: str, value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value)  # type: ignore[union-attr]


def _as_is(name: str, value: object) -> object:
    return value


def _stat(check: Callable[[str, object], object], default: object = dataclasses.MISSING) -> Any:
    return dataclasses.field(default=default, metadata={"check": check})


@dataclass(frozen=True)
class MaskStats(Mapping):
    """Counts of a mask set for the report; each field declares its check beside it.

    ``source`` (``"boxes"``, ``"saliency:<method>"`` or the folder), ``n`` (input images),
    ``n_masks``, ``n_missing``, ``missing`` (the first few ids without a mask), ``n_empty``
    (all-False masks: IoU with them is undefined, the scorer reports and excludes those
    images), ``n_full`` (all-True masks), ``n_resized`` (external masks not at the input
    size), ``mean_area`` (mean foreground share), ``threshold`` (of the saliency maps),
    ``size``, ``cached`` (loaded from the cache). Read-only mapping access
    (``stats["n_empty"]``, ``stats.get(...)``) works too."""

    source: str = _stat(lambda n, v: str(v))
    n: int = _stat(_count)
    n_masks: int = _stat(_count)
    n_missing: int = _stat(_count, 0)
    missing: tuple[str, ...] = _stat(_ids, ())
    n_empty: int = _stat(_count, 0)
    n_full: int = _stat(_count, 0)
    n_resized: int = _stat(_count, 0)
    mean_area: float = _stat(_share, float("nan"))
    threshold: str | float | None = _stat(_as_is, None)
    size: int = _stat(_count, 0)
    cached: bool = _stat(lambda n, v: bool(v), False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, f.metadata["check"](f.name, getattr(self, f.name)))

    def __getitem__(self, key: str) -> object:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)

    def to_json(self) -> str:
        """The cache's copy (without ``cached``)."""
        return json.dumps({k: list(v) if k == "missing" else v for k, v in self.items() if k != "cached"})


@dataclass
class MaskResult:
    """Masks for the images that have one, and counts for the report.

    ``masks[j]`` belongs to image ``image_ids[j]`` = input image ``keep[j]``; ``valid`` is a
    bool ``[N]`` over the input images; ``stats`` a :class:`MaskStats`."""

    masks: Tensor
    image_ids: list[str]
    keep: Tensor
    valid: Tensor
    stats: MaskStats

    def summary(self) -> str:
        s = self.stats
        parts = [f"masks from {s.source}: {s.n_masks} of {s.n} images"]
        if s.n_missing:
            parts.append(f"{s.n_missing} without a mask skipped (e.g. {', '.join(s.missing[:3])})")
        parts.append(f"{s.n_empty} empty (excluded from IoU), {s.n_full} all-foreground")
        if s.n_resized:
            parts.append(f"{s.n_resized} resized to {s.size}px")
        parts.append(f"mean area {s.mean_area:.1%}")
        if s.cached:
            parts.append("from cache")
        return "; ".join(parts)


@dataclass(frozen=True)
class MaskRequest:
    """What a mask source is asked for: ``option`` (the saliency method, the folder), the
    images' uint8 pixels, boxes and ids, the input size and how the images were resized."""

    option: str | None
    images: Any
    boxes: Sequence | None
    image_ids: list[str]
    size: int
    skip_bad: bool
    threshold: str | float
    resize: str


@dataclass(frozen=True)
class FoundMasks:
    """A source's answer: masks of the images ``keep``, the ids it had none for, how many it
    resized, and its name and threshold for the stats."""

    masks: Tensor
    keep: Tensor
    missing: list[str]
    n_resized: int
    name: str
    threshold: str | float | None = None


def _no_check(request: MaskRequest) -> None:
    return None


@dataclass(frozen=True)
class MaskSource:
    """One kind of A_G. ``compute`` makes the masks; ``check`` refuses a request before any
    cache lookup; ``options`` are the names it accepts after a colon (``saliency:<method>``;
    the first is the default); ``cached``: ``compute_masks`` keeps its masks in ``cache_dir``,
    their key covering the threshold and a sample of the images when ``uses_images``."""

    compute: Callable[[MaskRequest], FoundMasks]
    check: Callable[[MaskRequest], None] = _no_check
    options: tuple[str, ...] = ()
    cached: bool = True
    uses_images: bool = False


#: kind -> MaskSource: "boxes", "saliency" and "folder" (any other source string is a folder).
MASK_SOURCES: Registry[MaskSource] = Registry("mask source", normalize=str)
FOLDER = "folder"


def _boxes_check(request: MaskRequest) -> None:
    if request.boxes is None:
        raise MaskError("mask source 'boxes' needs the images' boxes; this dataset has none: use --masks saliency")


def _boxes(request: MaskRequest) -> FoundMasks:
    masks = boxes_to_masks(request.boxes, request.size, torch.device("cpu"))
    return FoundMasks(masks, torch.arange(len(request.image_ids)), [], 0, "boxes")


def _saliency_check(request: MaskRequest) -> None:
    if request.images is None:
        raise InputError("saliency masks need the images")


def _saliency(request: MaskRequest) -> FoundMasks:
    images, size, n = request.images, request.size, len(request.image_ids)
    if int(images.shape[-1]) != size or int(images.shape[-2]) != size:
        raise InputError(f"images are {tuple(images.shape[-2:])}, masks asked at {size}px")
    masks = (
        saliency_masks(images, request.option, request.threshold) if n else torch.zeros(0, size, size, dtype=torch.bool)
    )
    return FoundMasks(masks, torch.arange(n), [], 0, f"saliency:{request.option}", request.threshold)


def _folder(request: MaskRequest) -> FoundMasks:
    found = read_mask_folder(
        request.option, request.image_ids, request.size, skip_bad=request.skip_bad, resize=request.resize
    )
    return FoundMasks(found.masks, found.keep, found.missing, found.n_resized, str(request.option))


MASK_SOURCES.add("boxes", MaskSource(_boxes, _boxes_check, cached=False))
MASK_SOURCES.add("saliency", MaskSource(_saliency, _saliency_check, SALIENCY_METHODS, uses_images=True))
MASK_SOURCES.add(FOLDER, MaskSource(_folder))


def parse_source(source: str | os.PathLike) -> tuple[str, str | None]:
    """``"boxes"`` -> ``("boxes", None)``; ``"saliency[:method]"`` -> ``("saliency", method)``;
    anything else is a mask folder -> ``("folder", str(path))`` (it must exist)."""
    s = str(source)
    name, sep, option = s.partition(":")
    if name != FOLDER and name in MASK_SOURCES:
        src = MASK_SOURCES.get(name)
        if src.options:
            option = option or src.options[0]
            if option not in src.options:
                raise MaskError(f"unknown {name} method {option!r}; choose one of {', '.join(src.options)}")
            return name, option
        if not sep:
            return name, None
    path = Path(s).expanduser()
    if not path.is_dir():
        named = [
            f"'{n}[:{'|'.join(MASK_SOURCES.get(n).options)}]'" if MASK_SOURCES.get(n).options else f"'{n}'"
            for n in MASK_SOURCES.names()
            if n != FOLDER
        ]
        raise MaskError(f"mask source {s!r} is neither {', '.join(named)} nor an existing folder")
    return FOLDER, str(path.resolve())


def _sample_images_digest(images, h) -> None:
    """Hash a few whole images (first, evenly spaced, last): a regenerated dataset that
    kept its ids still gets new masks, without reading every image."""
    n = len(images)
    for k in sorted({int(round(x)) for x in np.linspace(0, n - 1, num=min(n, 8))}):
        h.update(np.ascontiguousarray(_as_numpy(images[k])).tobytes())


def cache_key(
    kind: str,
    arg: str | None,
    image_ids: Sequence[str],
    size: int,
    threshold,
    skip_bad: bool,
    resize: str = "resize",
    images=None,
) -> str:
    """Cache file name for a mask set: the source, its options and a fingerprint of the ids
    and the size (for folders also every matched file's name, size and mtime; for saliency a
    few of the images' bytes)."""
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, kind, arg, int(size), str(threshold), bool(skip_bad), resize]).encode())
    h.update("\n".join(map(str, image_ids)).encode())
    if kind == "folder":
        for p in sorted(Path(arg).rglob("*")):
            if p.suffix.lower() in MASK_EXTENSIONS and p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(arg).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    if kind == "saliency" and images is not None and len(images):
        _sample_images_digest(images, h)
    label = {"saliency": f"saliency-{arg}", "folder": f"dir-{Path(arg or '').name}"}.get(kind, kind)
    label = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)[:40]
    return f"masks-{label}-{size}px-{h.hexdigest()[:20]}.npz"


def _save_cache(path: Path, res: MaskResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = res.masks.cpu().numpy()
    atomic_write(
        path,
        lambda f: np.savez(
            f,
            packed=np.packbits(m.reshape(len(m), -1), axis=1),
            shape=np.asarray(m.shape, dtype=np.int64),
            keep=res.keep.numpy(),
            valid=res.valid.numpy(),
            image_ids=np.asarray(res.image_ids, dtype=str),
            stats=np.asarray(res.stats.to_json()),
        ),
    )


def _load_cache(path: Path, image_ids: Sequence[str]) -> MaskResult | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            shape = tuple(int(x) for x in z["shape"])
            n_bits = shape[1] * shape[2] if len(shape) == 3 else 0
            masks = np.unpackbits(z["packed"], axis=1, count=n_bits).astype(bool).reshape(shape)
            keep = torch.from_numpy(z["keep"].astype(np.int64))
            valid = torch.from_numpy(z["valid"].astype(bool))
            ids = [str(x) for x in z["image_ids"]]
            stats = MaskStats(**{**json.loads(str(z["stats"])), "cached": True})
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a corrupt or foreign file: recompute and overwrite
    if len(valid) != len(image_ids) or ids != [str(image_ids[k]) for k in keep.tolist()]:
        return None
    return MaskResult(torch.from_numpy(masks), ids, keep, valid, stats)


def _area_counts(masks: Tensor) -> dict[str, int | float]:
    """The MaskStats fields that come from the masks themselves."""
    flat = masks.reshape(len(masks), masks[0].numel() if len(masks) else 0)
    any_ = flat.any(1)
    all_ = flat.all(1) if flat.shape[1] else torch.zeros(len(masks), dtype=torch.bool)
    area = flat.float().mean(1) if flat.shape[1] else torch.zeros(len(masks))
    return {
        "n_masks": len(masks),
        "n_empty": int((~any_).sum()),
        "n_full": int(all_.sum()),
        "mean_area": float(area.mean()) if len(masks) else float("nan"),
    }


def compute_masks(
    source: str | os.PathLike,
    images=None,
    boxes: Sequence | None = None,
    image_ids: Sequence[str] | None = None,
    size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    skip_bad: bool = False,
    threshold: str | float = "otsu",
    resize: str = "resize",
) -> MaskResult:
    """A_G for every image from one mask source (module docstring): bool ``[M,S,S]`` + stats.

    ``images``: uint8 ``[N,3,S,S]`` (tensor, array or memmap; needed for saliency, and gives
    ``size`` when it is None). ``boxes``: list of ``[n,4]`` xyxy input-pixel boxes (needed for
    ``"boxes"``). ``image_ids``: ``N`` ids (needed for folders and for the cache; default
    ``"0".."N-1"``). ``threshold``: ``"otsu"`` or a float for saliency maps. ``resize``: how
    the images were resized (``BoxDataset``'s ``resize``), applied to external masks of
    another size. Saliency and folder masks are cached in ``cache_dir`` when given; a second
    call with the same data loads the packed file and computes nothing.
    Missing external masks raise ``MaskError`` unless ``skip_bad`` (then ``keep``/``valid``
    say which images have one)."""
    kind, option = parse_source(source)
    src = MASK_SOURCES.get(kind)
    n = len(images) if images is not None else (len(boxes) if boxes is not None else len(image_ids or []))
    if image_ids is None:
        image_ids = [str(i) for i in range(n)]
    image_ids = [str(i) for i in image_ids]
    if len(image_ids) != n:
        raise InputError(f"{len(image_ids)} image ids for {n} images")
    if size is None:
        if images is None:
            raise InputError("compute_masks needs size= when no images are given")
        size = int(images.shape[-1])
    request = MaskRequest(option, images, boxes, image_ids, size, skip_bad, threshold, resize)
    src.check(request)
    path = None
    if src.cached and cache_dir is not None:
        key = cache_key(
            kind,
            option,
            image_ids,
            size,
            threshold if src.uses_images else None,
            skip_bad,
            resize,
            images if src.uses_images else None,
        )
        path = Path(cache_dir) / key
        hit = _load_cache(path, image_ids) if path.is_file() else None
        if hit is not None:
            return hit
    found = src.compute(request)
    valid = torch.zeros(n, dtype=torch.bool)
    valid[found.keep] = True
    stats = MaskStats(
        source=found.name,
        n=n,
        n_missing=len(found.missing),
        missing=found.missing[:_SHOW],
        n_resized=found.n_resized,
        threshold=found.threshold,
        size=size,
        **_area_counts(found.masks),
    )
    res = MaskResult(found.masks, [image_ids[k] for k in found.keep.tolist()], found.keep, valid, stats)
    if path is not None:
        _save_cache(path, res)
    return res


# --- quality and export ------------------------------------------------------------------


def mask_quality(masks: Tensor, box_masks: Tensor) -> dict:
    """Agreement of (saliency) masks with the true boxes, over images that have a box.

    ``mean_iou``: mean of |mask ∩ box| / |mask ∪ box| (an empty mask scores 0, never NaN);
    ``miss_share``: share of images whose mask does not touch the box at all (paper Fig. 6);
    ``full_image_iou``: the mean IoU an all-foreground mask would get (= box area share), the
    baseline a detector should beat; ``n``: images with a box; ``n_no_box``: left out."""
    masks = torch.as_tensor(masks, dtype=torch.bool).cpu()
    box_masks = torch.as_tensor(box_masks, dtype=torch.bool).cpu()
    if masks.shape != box_masks.shape:
        raise InputError(f"masks {tuple(masks.shape)} and box masks {tuple(box_masks.shape)} differ in shape")
    has_box = box_masks.flatten(1).any(1) if len(box_masks) else torch.zeros(0, dtype=torch.bool)
    m, b = masks[has_box].flatten(1), box_masks[has_box].flatten(1)
    inter = (m & b).sum(1).float()
    union = (m | b).sum(1).float()
    n = int(has_box.sum())
    if n == 0:
        return {
            "mean_iou": float("nan"),
            "miss_share": float("nan"),
            "full_image_iou": float("nan"),
            "n": 0,
            "n_no_box": len(masks),
        }
    return {
        "mean_iou": float((inter / union).mean()),
        "miss_share": float((inter == 0).float().mean()),
        "full_image_iou": float(b.float().mean(1).mean()),
        "n": n,
        "n_no_box": int(len(masks) - n),
    }


def export_masks(masks: Tensor, image_ids: Sequence[str], out_dir: str | os.PathLike) -> list[Path]:
    """Write one 8-bit greyscale PNG per image, ``<out_dir>/<image_id>.png``, 255 = foreground,
    0 = background (ids with ``/`` get subfolders). ``read_mask_folder`` reads them back."""
    from PIL import Image

    masks = torch.as_tensor(masks, dtype=torch.bool).cpu().numpy()
    if len(masks) != len(image_ids):
        raise InputError(f"{len(masks)} masks for {len(image_ids)} image ids")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for m, image_id in zip(masks, image_ids):
        p = out / f"{image_id}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(m.astype(np.uint8) * 255).save(p, format="PNG")
        paths.append(p)
    return paths
