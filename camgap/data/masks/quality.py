"""How well a mask set agrees with the boxes, and writing masks out as PNG files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from camgap.errors import InputError


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
