"""The ``saliency[:method]`` mask source: OpenCV's static saliency, binarised (Otsu by default)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from camgap.errors import InputError, StateError

from ._common import _as_numpy
from .otsu import binarize
from .sources import MASK_SOURCES, FoundMasks, MaskRequest, MaskSource

SALIENCY_METHODS = ("fine_grained", "spectral_residual")
DEFAULT_SALIENCY = "fine_grained"


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
    work_hw = None  # cv2 order: (w, h)
    if work_size is not None and max(h, w) > work_size:
        scale = work_size / max(h, w)
        work_hw = (max(1, round(w * scale)), max(1, round(h * scale)))
    for start in range(0, n, batch_size):
        chunk = _as_numpy(images_uint8[start : start + batch_size])
        if chunk.dtype != np.uint8:
            raise InputError(f"saliency_maps expects uint8 images, got {chunk.dtype}")
        for j, img in enumerate(chunk):
            m = _image_map(cv2, detector, img, work_hw, sigma)
            if m is None:
                raise StateError(f"cv2.saliency {method} failed on image {start + j}")
            out[start + j] = m
    return torch.from_numpy(out)


def _image_map(cv2, detector, img: np.ndarray, work_hw: tuple[int, int] | None, sigma: float) -> np.ndarray | None:
    """One uint8 ``[3,H,W]`` image's map (``saliency_maps``): each channel's map min-max
    normalised, their mean smoothed and normalised again; None when the detector fails."""
    h, w = img.shape[1:]
    maps = []
    for c in range(3):
        channel = np.ascontiguousarray(img[c])
        if work_hw is not None:
            channel = cv2.resize(channel, work_hw, interpolation=cv2.INTER_AREA)
        # cv2 expects HxWx3 (BGR) uint8; a grey copy of one channel
        ok, sal = detector.computeSaliency(cv2.merge([channel, channel, channel]))
        if not ok:
            return None
        sal = np.asarray(sal, dtype=np.float32)
        if sal.shape != (h, w):
            sal = cv2.resize(sal, (w, h), interpolation=cv2.INTER_LINEAR)
        maps.append(_minmax(sal))
    m = np.mean(maps, axis=0)
    if sigma > 0:
        m = cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return _minmax(m)


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


MASK_SOURCES.add("saliency", MaskSource(_saliency, _saliency_check, SALIENCY_METHODS, uses_images=True))
