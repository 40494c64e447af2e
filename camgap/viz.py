"""Overlays like the paper's Figures 1-2: the image in grey, the CAM heat map in a perceptual colour
map (inferno: brightness grows with the CAM, readable in greyscale and by colour-blind readers,
unlike jet), the thresholded region (white outline) and the object region (green boxes, or the
mask's outline when masks are used). The grey base keeps the image's own colours from being read
as CAM values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

GREEN = np.array([0, 230, 0], dtype=np.float32)
WHITE = np.array([255, 255, 255], dtype=np.float32)
#: Colour map of the CAM heat map in every overlay (and of Figure 2's colour bar).
CAM_CMAP = "inferno"
#: Colours of the outlines, as matplotlib colours (for legends drawn next to the overlays).
REGION_COLOUR = tuple(WHITE / 255)
BOX_COLOUR = tuple(GREEN / 255)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask that touch a background pixel (4-neighbourhood)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def desaturate(rgb: np.ndarray) -> np.ndarray:
    """Luma (ITU-R BT.601) of an HxWx3 float image, repeated on 3 channels."""
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(grey[..., None], 3, axis=2)


def render_overlay(
    image: torch.Tensor,
    cam: torch.Tensor,
    threshold: float = 0.1,
    boxes: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    scale: int | None = None,
    alpha: float = 0.5,
    cmap: str = CAM_CMAP,
) -> np.ndarray:
    """RGB uint8 [H*scale, W*scale, 3]: (1 - alpha) * grey image + alpha * cmap(cam), the outline
    of cam >= threshold in white, the boxes (or the outline of `reference`) in green.
    `image` uint8 [3,H,W]; `cam` [H,W] in [0,1]; boxes [n,4] xyxy in image pixels, or a bool
    `reference` mask when boxes are None."""
    h, w = image.shape[-2:]
    scale = scale or max(1, 224 // max(h, w))
    grey = desaturate(image.permute(1, 2, 0).numpy().astype(np.float32))
    heat = colormaps[cmap](cam.numpy())[..., :3].astype(np.float32) * 255
    out = (1 - alpha) * grey + alpha * heat
    out = np.kron(out, np.ones((scale, scale, 1), dtype=np.float32))
    region = np.kron((cam.numpy() >= threshold), np.ones((scale, scale), dtype=bool))
    out[_outline(region)] = WHITE
    if boxes is not None:
        ref = np.zeros((h * scale, w * scale), dtype=bool)
        for x0, y0, x1, y1 in (boxes.numpy() * scale).round().astype(int):
            ref[max(y0, 0) : y1, max(x0, 0) : x1] = True
            ref[max(y0, 0) + 1 : y1 - 1, max(x0, 0) + 1 : x1 - 1] = False
        out[ref] = GREEN
    elif reference is not None:
        ref = np.kron(reference.numpy().astype(bool), np.ones((scale, scale), dtype=bool))
        out[_outline(ref)] = GREEN
    return out.clip(0, 255).astype(np.uint8)


def save_overlays(
    overlays: list[dict], out_dir: Path | str, threshold: float, classes: list[str] | None = None
) -> list[Path]:
    """Write one PNG per kept image of a ScoreResult; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for item in overlays:
        picture = render_overlay(item["image"], item["cam"], threshold, item["boxes"], item["reference"])
        p = item["pred"]  # a model may have more outputs than the data has classes
        pred = classes[p] if classes and 0 <= p < len(classes) else p
        name = f"{item['image_id']}_pred-{pred}_iou-{item['iou']:.3f}.png".replace("/", "_")
        path = out_dir / name
        Image.fromarray(picture).save(path)
        paths.append(path)
    return paths
