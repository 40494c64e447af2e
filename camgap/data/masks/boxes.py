"""The ``boxes`` mask source: the union of each image's annotated boxes, rasterised."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ._common import MaskError
from .sources import MASK_SOURCES, FoundMasks, MaskRequest, MaskSource


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


def _boxes_check(request: MaskRequest) -> None:
    if request.boxes is None:
        raise MaskError("mask source 'boxes' needs the images' boxes; this dataset has none: use --masks saliency")


def _boxes(request: MaskRequest) -> FoundMasks:
    masks = boxes_to_masks(request.boxes, request.size, torch.device("cpu"))
    return FoundMasks(masks, torch.arange(len(request.image_ids)), [], 0, "boxes")


MASK_SOURCES.add("boxes", MaskSource(_boxes, _boxes_check, cached=False))
