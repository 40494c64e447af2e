"""Threshold-free localization measures of a CAM, accumulated batch by batch in the one CAM pass.

All four read the upsampled, per-image min-max normalised CAM in [0, 1] that IoU reads, and
the same object region A_G (the union of the image's boxes, or a mask source's mask). Images
without an object region (no box, empty mask) are left out of every measure, as from IoU.

* Energy-based pointing game (Wang et al., Score-CAM, CVPRW 2020): per image, the CAM mass
  inside A_G over the total CAM mass; the mean over images. A constant CAM normalises to all
  zeros and has no mass: its share is 0 (as IoU's empty A_L: the model points at nothing).
* Pointing game (Zhang et al. 2016, without their 15 px tolerance, which is more than a demo
  image): 1 when the CAM's maximum lies in A_G. Ties: the first maximal pixel in row-major
  order (``torch.argmax``) is the point. A constant CAM points nowhere: 0.
* MaxBoxAccV2 (Choe et al., CVPR 2020, "Evaluating WSOL Right"; their `wsolevaluation`
  code): at each CAM threshold tau in 0, 0.01, ..., 1 the region ``cam > tau`` (strict, as
  their cv2.THRESH_BINARY) gives one box per 8-connected component (the outer contours
  cv2.findContours returns); an image is correct at IoU level delta when one of those boxes
  has box IoU >= delta with one ground-truth box. BoxAcc(tau, delta) is the share of correct
  images, MaxBoxAcc(delta) its maximum over tau, MaxBoxAccV2 the mean over delta in
  (0.3, 0.5, 0.7). A fraction in [0, 1], not a percentage. Differences from `wsolevaluation`,
  each because camgap's maps and boxes are exact where theirs are quantised: the float map is
  thresholded (they round it to 8 bits first); a box is the pixels it covers, its IoU counted
  in pixels (their box from cv2.boundingRect reaches one pixel past the region); the bounding
  boxes of hole contours are not candidates (they enclose pixels the CAM did not select); a
  threshold with an empty region gives no box (theirs gives [0, 0, 0, 0]). The ground-truth
  boxes are the pixels each box covers in A_G (the same rasterisation, see
  `camgap.data.masks.boxes_to_masks`; a box covering no pixel is no box); with a mask source
  the 8-connected components of the mask stand in for boxes.
* PxAP (Choe et al. 2020): average precision of the CAM as a pixel classifier of A_G, every
  pixel of every image pooled, the CAM binned at the same 101 thresholds (a pixel is positive
  at tau when ``cam >= tau``, as their histogram). Equal to scikit-learn's
  ``average_precision_score`` whenever no two distinct CAM values share a bin.

Comparisons with the thresholds are made in float64 (exact for the float32 CAM), so the
regions do not depend on how the thresholds k/100 round in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from camgap.errors import StateError

#: CAM thresholds of MaxBoxAccV2 and the bins of PxAP: 0, 0.01, ..., 1.
CAM_THRESHOLDS: tuple[float, ...] = tuple(k / 100 for k in range(101))
#: IoU levels of MaxBoxAccV2.
IOU_LEVELS: tuple[float, ...] = (0.3, 0.5, 0.7)
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity, as findContours' foreground
_TILES_PER_LABEL = 4096  # (image, threshold) tiles labelled per scipy call: ~3 MB at 28 px


def energy_share(maps: Tensor, ref: Tensor) -> Tensor:
    """CAM mass inside ``ref`` over the total mass per image, float64 ``[B]`` (0 for a zero map)."""
    cams = maps.double().flatten(1)
    total = cams.sum(1)
    inside = (cams * ref.flatten(1)).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(total))


def pointing_hits(maps: Tensor, ref: Tensor) -> Tensor:
    """Whether the first maximal pixel (row-major) of each map lies in ``ref``: bool ``[B]``;
    False for a constant (all-zero) map."""
    flat = maps.flatten(1)
    point = flat.argmax(1, keepdim=True)
    return ref.flatten(1).gather(1, point)[:, 0] & (flat.amax(1) > flat.amin(1))


def box_extents(boxes: Tensor, height: int, width: int) -> np.ndarray:
    """The pixels each xyxy box covers, as inclusive ``[x0, y0, x1, y1]`` int64 rows: pixel
    (y, x) is covered when its centre (x+0.5, y+0.5) lies in the box (the rule of
    `boxes_to_masks`, compared the same way in float32). Boxes covering no pixel are dropped."""
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).cpu()
    out = []
    for lo, hi, n in ((0, 2, width), (1, 3, height)):
        centres = torch.arange(n, dtype=torch.float32) + 0.5
        inside = (centres >= b[:, lo : lo + 1]) & (centres <= b[:, hi : hi + 1])  # [n_boxes, n]
        first = inside.to(torch.uint8).argmax(1)
        last = n - 1 - inside.flip(1).to(torch.uint8).argmax(1)
        out.append((first, last, inside.any(1)))
    (x0, x1, okx), (y0, y1, oky) = out
    ext = torch.stack([x0, y0, x1, y1], 1).numpy().astype(np.int64)
    return ext[(okx & oky).numpy()]


def component_boxes(mask: np.ndarray) -> np.ndarray:
    """Inclusive ``[x0, y0, x1, y1]`` of each 8-connected component of a 2-D bool mask."""
    labels, _ = ndimage.label(mask, structure=_EIGHT)
    return _slices_to_boxes(ndimage.find_objects(labels))


def _slices_to_boxes(slices: Sequence) -> np.ndarray:
    if not slices:
        return np.zeros((0, 4), dtype=np.int64)
    return np.array([(s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1) for s in slices], dtype=np.int64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU in pixels of inclusive int boxes: ``a`` [n,4] x ``b`` [m,4] -> float64 [n,m]."""
    a, b = a[:, None, :], b[None, :, :]
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return inter / (area_a + area_b - inter).astype(np.float64)


def best_box_ious(maps: Tensor, gt_boxes: Sequence[np.ndarray], thresholds: Sequence[float] = CAM_THRESHOLDS):
    """Per image and CAM threshold, the best IoU of a component box of ``maps > tau`` with a
    ground-truth box: float64 ``[B, T]``, -1 where the region is empty or the image has no box.

    Every (image, threshold) region is a tile of one tall image, the tiles separated by a zero
    row so no component crosses them; one labelling per chunk of tiles finds all components."""
    b_n, h, w = maps.shape
    thr = torch.as_tensor(list(thresholds), dtype=torch.float64)
    best = np.full((b_n, len(thr)), -1.0)
    if b_n == 0:
        return best
    regions = maps.detach().cpu().double()[:, None] > thr[None, :, None, None]  # [B,T,H,W]
    tiles = torch.nn.functional.pad(regions.reshape(-1, h, w), (0, 0, 0, 1)).numpy()  # [B*T, H+1, W]
    for start in range(0, len(tiles), _TILES_PER_LABEL):
        chunk = tiles[start : start + _TILES_PER_LABEL]
        labels, _ = ndimage.label(chunk.reshape(-1, w), structure=_EIGHT)
        slices = ndimage.find_objects(labels)
        if not slices:
            continue
        boxes = _slices_to_boxes(slices)
        tile = boxes[:, 1] // (h + 1)
        boxes[:, [1, 3]] -= (tile * (h + 1))[:, None]
        tile += start
        image, t_i = tile // len(thr), tile % len(thr)
        for b in np.unique(image):
            if len(gt_boxes[b]) == 0:
                continue
            sel = image == b
            ious = box_iou(boxes[sel], gt_boxes[b]).max(1)
            np.maximum.at(best[b], t_i[sel], ious)
    return best


@dataclass
class LocalizationTotals:
    """The streaming part of the localization measures, flat in the number of images: the
    per-threshold count of correct images at each IoU level (MaxBoxAccV2), the images with a
    ground-truth box, and the PxAP histograms of positive and negative pixels per CAM bin."""

    thresholds: tuple[float, ...] = CAM_THRESHOLDS
    levels: tuple[float, ...] = IOU_LEVELS
    #: whether MaxBoxAccV2 is accumulated: its component labelling (101 regions per image) costs
    #: several times the CAM pass on a demo model, so the pass computes it only when asked
    boxes: bool = True
    box_correct: np.ndarray = field(default=None)  # type: ignore[assignment]  # int64 [T, D]
    n_box_images: int = 0
    pixel_pos: np.ndarray = field(default=None)  # type: ignore[assignment]  # int64 [T]
    pixel_neg: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        t, d = len(self.thresholds), len(self.levels)
        self.box_correct = np.zeros((t, d), np.int64) if self.box_correct is None else self.box_correct
        self.pixel_pos = np.zeros(t, np.int64) if self.pixel_pos is None else self.pixel_pos
        self.pixel_neg = np.zeros(t, np.int64) if self.pixel_neg is None else self.pixel_neg

    def add(self, maps: Tensor, ref: Tensor, gt_boxes: Sequence[np.ndarray]) -> None:
        """One batch: maps [B,H,W] in [0,1], ref bool [B,H,W], the images' ground-truth boxes
        (inclusive pixel extents). Images whose ``ref`` is empty are skipped."""
        has_ref = ref.flatten(1).any(1)
        if not bool(has_ref.any()):
            return
        maps, ref = maps[has_ref], ref[has_ref]
        gt_boxes = [g for g, k in zip(gt_boxes, has_ref.tolist()) if k]
        self._add_pixels(maps, ref)
        if not self.boxes:
            return
        boxed = [i for i, g in enumerate(gt_boxes) if len(g)]
        best = best_box_ious(maps[boxed], [gt_boxes[i] for i in boxed], self.thresholds)
        levels = np.asarray(self.levels)
        self.box_correct += (best[:, :, None] >= levels[None, None, :]).sum(0)
        self.n_box_images += len(boxed)

    def _add_pixels(self, maps: Tensor, ref: Tensor) -> None:
        edges = torch.as_tensor(self.thresholds, dtype=torch.float64, device=maps.device)
        bins = torch.bucketize(maps.double().flatten(), edges, right=True) - 1  # cam >= edge[bin]
        pos = ref.flatten()
        n = len(edges)
        counts = torch.bincount(bins + n * pos.long(), minlength=2 * n).cpu().numpy()
        self.pixel_neg += counts[:n]
        self.pixel_pos += counts[n:]

    def max_box_acc(self) -> dict[float, float]:
        """MaxBoxAcc at each IoU level (NaN without an image with a box); a StateError when
        the pass did not accumulate it."""
        if not self.boxes:
            raise StateError("MaxBoxAccV2 was not computed in this CAM pass (score with box_accuracy=True)")
        if not self.n_box_images:
            return {d: math.nan for d in self.levels}
        acc = self.box_correct / self.n_box_images
        return {d: float(acc[:, i].max()) for i, d in enumerate(self.levels)}

    def max_box_acc_v2(self) -> float:
        return float(np.mean(list(self.max_box_acc().values())))

    def pxap(self) -> float:
        """Average precision over the thresholds from high to low: sum of precision x the
        recall gained at each (NaN without a positive pixel)."""
        n_pos = int(self.pixel_pos.sum())
        if not n_pos:
            return math.nan
        tp = np.cumsum(self.pixel_pos[::-1])
        fp = np.cumsum(self.pixel_neg[::-1])
        gained = np.diff(tp, prepend=0)
        hit = gained > 0
        return float(np.sum(tp[hit] / (tp[hit] + fp[hit]) * gained[hit]) / n_pos)
