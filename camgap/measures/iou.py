"""IoU between the thresholded CAM region A_L and the object region A_G (paper eq. 3-5).

Empty cases, defined rather than left to 0/0:
- A_G empty (an image without boxes, or an all-zero mask): IoU and IoU-B are undefined and
  returned as NaN; the scorer excludes such images from the model mean and reports how many.
- A_L empty (a constant CAM normalises to all zeros): the model attends to nothing
  on the object, so IoU = IoU-B = 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from camgap.errors import InputError


def mask_iou(pred: Tensor, ref: Tensor) -> Tensor:
    """|pred ∩ ref| / |pred ∪ ref| over the last two dims of boolean masks; NaN where ref is empty."""
    inter = (pred & ref).sum((-2, -1)).float()
    union = (pred | ref).sum((-2, -1)).float()
    out = inter / union.clamp_min(1)
    return torch.where(ref.any(-1).any(-1), out, torch.full_like(out, float("nan")))


def _first_true(flags: Tensor) -> Tensor:
    """Index of the first True along the last dim (0 when none)."""
    return flags.to(torch.uint8).argmax(-1)


def enclosing_box_mask(mask: Tensor) -> Tensor:
    """The minimum axis-aligned rectangle enclosing each mask (IoU-B's A_L); empty stays empty."""
    h, w = mask.shape[-2:]
    rows, cols = mask.any(-1), mask.any(-2)
    y0, x0 = _first_true(rows), _first_true(cols)
    y1 = h - 1 - _first_true(rows.flip(-1))
    x1 = w - 1 - _first_true(cols.flip(-1))
    ys = torch.arange(h, device=mask.device)
    xs = torch.arange(w, device=mask.device)
    in_rows = (ys >= y0[..., None]) & (ys <= y1[..., None])
    in_cols = (xs >= x0[..., None]) & (xs <= x1[..., None])
    box = in_rows[..., :, None] & in_cols[..., None, :]
    return box & rows.any(-1)[..., None, None]


def validate_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    """The CAM thresholds rho as floats, each finite and in [0, 1); at least one.

    The normalised CAM lies in [0, 1]: rho >= 1 selects at most the maximum pixel and rho < 0
    the whole image, so neither gives an IoU that means anything. Every entry point (score,
    zoo measure, the study, the API) checks here before it computes or stores anything."""
    values = []
    for t in thresholds if not isinstance(thresholds, (int, float, str)) else [thresholds]:
        try:
            rho = float(t)
        except (TypeError, ValueError):
            raise InputError(f"threshold {t!r} is not a number") from None
        if not (math.isfinite(rho) and 0.0 <= rho < 1.0):
            raise InputError(
                f"threshold {t!r} is outside [0, 1): the CAM threshold rho selects pixels of the normalised "
                "CAM, which lies in [0, 1]"
            )
        values.append(rho)
    if not values:
        raise InputError("give at least one threshold")
    return tuple(values)


def threshold_ious(cams: Tensor, ref: Tensor, thresholds: Sequence[float]) -> tuple[Tensor, Tensor, Tensor]:
    """IoU, IoU-B and the CAM area fraction for every threshold, from one normalised CAM.

    cams: [B,H,W] in [0,1]; ref: [B,H,W] bool. Returns three [T,B] tensors."""
    rho = torch.as_tensor(list(thresholds), dtype=cams.dtype, device=cams.device)
    regions = cams.unsqueeze(0) >= rho[:, None, None, None]  # [T,B,H,W]
    ref = ref.unsqueeze(0)
    iou = mask_iou(regions, ref)
    iou_b = mask_iou(enclosing_box_mask(regions), ref)
    area = regions.float().mean((-2, -1))
    return iou, iou_b, area
