"""Binarising a map in [0, 1]: Otsu's threshold (as cv2 computes it) or a fixed threshold."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from camgap.errors import InputError

from ._common import _as_numpy


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
