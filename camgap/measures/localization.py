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
#: pixels swept for MaxBoxAccV2 at once: a demo pass (300 images of 28x28) in one sweep, its
#: union-find and edge arrays (~200 bytes a pixel) ~50 MB
_SWEEP_PIXELS = 2**18


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
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).cpu().numpy()
    ext, covers = np.zeros((len(b), 4), np.int64), np.ones(len(b), bool)
    for lo, hi, n in ((0, 2, width), (1, 3, height)):
        centres = np.arange(n, dtype=np.float32) + np.float32(0.5)
        inside = (centres >= b[:, lo : lo + 1]) & (centres <= b[:, hi : hi + 1])  # [n_boxes, n]
        ext[:, lo] = inside.argmax(1)
        ext[:, hi] = n - 1 - inside[:, ::-1].argmax(1)
        covers &= inside.any(1)
    return ext[covers]


def component_boxes(mask: np.ndarray) -> np.ndarray:
    """Inclusive ``[x0, y0, x1, y1]`` of each 8-connected component of a 2-D bool mask."""
    labels, _ = ndimage.label(mask, structure=_EIGHT)
    return _slices_to_boxes(ndimage.find_objects(labels))


def _slices_to_boxes(slices: Sequence) -> np.ndarray:
    if not slices:
        return np.zeros((0, 4), dtype=np.int64)
    return np.array([(s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1) for s in slices], dtype=np.int64)


def best_box_ious(maps: Tensor, gt_boxes: Sequence[np.ndarray], thresholds: Sequence[float] = CAM_THRESHOLDS):
    """Per image and CAM threshold, the best IoU of a component box of ``maps > tau`` with a
    ground-truth box: float64 ``[B, T]``, -1 where the region is empty or the image has no box.

    The regions are nested (a higher threshold selects fewer pixels), so their components form
    a tree: one union-find, grown from the highest threshold down, adds each threshold's new
    pixels and joins the components they connect, instead of labelling 101 regions per image."""
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    order = np.argsort(thr, kind="stable")
    best = np.full((maps.shape[0], len(thr)), -1.0)
    if not best.size:
        return best
    levels = _levels(maps, thr[order])
    gt = _PaddedBoxes(gt_boxes)
    for i, roots, boxes in _components_by_threshold(levels, len(thr)):
        image = roots // (levels.shape[1] * levels.shape[2])
        column = best[:, order[i]]  # a copy: maximum.at needs a contiguous target
        np.maximum.at(column, image, gt.best_iou(boxes, image))
        best[:, order[i]] = column
    return best


def _signed(boxes: np.ndarray) -> np.ndarray:
    """Inclusive [x0, y0, x1, y1] boxes as [-x0, -y0, x1, y1]: the corners of an intersection
    (or of a union's bounding box) are then one elementwise minimum (maximum) of all four."""
    return boxes * np.array([-1, -1, 1, 1], dtype=boxes.dtype)


def _signed_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU in pixels of signed boxes ``a`` [..., 4] and ``b`` [..., 4] (see `_signed`),
    broadcast against each other: float64 of the broadcast shape without the last axis."""
    corner = np.minimum(a, b)
    inter = np.maximum(corner[..., 0] + corner[..., 2] + 1, 0) * np.maximum(corner[..., 1] + corner[..., 3] + 1, 0)
    area_a = (a[..., 0] + a[..., 2] + 1) * (a[..., 1] + a[..., 3] + 1)
    area_b = (b[..., 0] + b[..., 2] + 1) * (b[..., 1] + b[..., 3] + 1)
    return inter / (area_a + area_b - inter).astype(np.float64)


def _levels(maps: Tensor, sorted_thresholds: np.ndarray) -> np.ndarray:
    """How many of the sorted thresholds lie below each pixel's value, int [B,H,W]: the pixel is
    in the region of the i-th threshold (``value > threshold``) exactly when its level is above i.
    A NaN pixel has level 0: in no region, as ``NaN > tau`` is false."""
    values = maps.detach().cpu().double().numpy()
    levels = np.searchsorted(sorted_thresholds, values, side="left")
    levels[np.isnan(values)] = 0
    return levels


class _PaddedBoxes:
    """Each image's ground-truth boxes padded to the most any image has, to score component
    boxes of many images in one broadcast."""

    def __init__(self, gt_boxes: Sequence[np.ndarray]):
        width = max([len(g) for g in gt_boxes] + [1])
        self.boxes = np.zeros((len(gt_boxes), width, 4), np.int64)
        self.valid = np.zeros((len(gt_boxes), width), bool)
        for i, g in enumerate(gt_boxes):
            self.boxes[i, : len(g)] = _signed(np.asarray(g, np.int64).reshape(-1, 4))
            self.valid[i, : len(g)] = True

    def best_iou(self, boxes: np.ndarray, image: np.ndarray) -> np.ndarray:
        """The best IoU of each signed box [n, 4] with a ground-truth box of its image; -1
        without one."""
        iou = _signed_iou(boxes[:, None, :], self.boxes[image])
        return np.where(self.valid[image], iou, -1.0).max(1)


def _components_by_threshold(levels: np.ndarray, n_thresholds: int):
    """For each threshold index i from the highest down: (i, the root pixel of each component of
    the region ``levels > i``, their signed boxes [n, 4]), pixels flat over the stack."""
    union = _UnionFind(levels.shape)
    u, v, edge_levels = _forest_edges(levels)
    pixels, pixel_starts = _by_level(levels.reshape(-1), n_thresholds)
    edges, edge_starts = _by_level(edge_levels, n_thresholds)
    for i in range(n_thresholds - 1, -1, -1):
        k = n_thresholds - 1 - i  # the rank of level i + 1, first joined at threshold i
        union.add(pixels[pixel_starts[k] : pixel_starts[k + 1]])
        joining = edges[edge_starts[k] : edge_starts[k + 1]]
        union.join(u[joining], v[joining])
        if len(union.roots):
            yield i, union.roots, union.box[union.roots]


def _by_level(levels: np.ndarray, n_thresholds: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``levels`` from the highest level down and where each level's run starts: the
    items of level ``n_thresholds - k`` are ``order[starts[k]:starts[k + 1]]``."""
    rank = n_thresholds - levels
    rank = rank.astype(np.int16) if n_thresholds < 2**15 else rank  # 16-bit keys sort by radix
    order = np.argsort(rank, kind="stable")
    return order, np.concatenate([[0], np.cumsum(np.bincount(rank, minlength=n_thresholds + 1))])


def _forest_edges(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 8-connectivity edges of the stacked level maps ``levels`` [B,H,W] that the union needs:
    flat pixel indices u, v and the edge's level min(level_u, level_v) (it joins u and v in the
    regions of the thresholds below it). In each 2x2 block the lightest edge of every triangle and
    of the square is dropped: a lightest edge on a cycle is in no maximum spanning forest, and that
    forest alone joins the same pixels at every threshold. Ties are broken by a fixed edge order
    with the diagonals first (lightest), so a diagonal beside a corner at its level goes. Edges of
    level 0 join pixels in no region and are dropped too."""
    index = np.arange(levels.size).reshape(levels.shape)
    flat = levels.reshape(-1)
    ends = {  # edge kind -> its end pixels; the order is the tie-break, lightest first
        "d1": (index[:, :-1, :-1], index[:, 1:, 1:]),  # top-left to bottom-right
        "d2": (index[:, :-1, 1:], index[:, 1:, :-1]),  # top-right to bottom-left
        "h": (index[:, :, :-1], index[:, :, 1:]),
        "v": (index[:, :-1, :], index[:, 1:, :]),
    }
    edge_levels = {kind: np.minimum(flat[a], flat[b]) for kind, (a, b) in ends.items()}
    dropped = _cycle_lightest(edge_levels, levels.size)
    kept = [(kind, ~dropped[kind] & (edge_levels[kind] > 0)) for kind in ends]
    return (
        np.concatenate([ends[kind][0][keep] for kind, keep in kept]),
        np.concatenate([ends[kind][1][keep] for kind, keep in kept]),
        np.concatenate([edge_levels[kind][keep] for kind, keep in kept]),
    )


#: The six edges of every 2x2 block: side -> (edge kind, the slice of that kind's edges that is
#: this side of each block, blocks in the order of the diagonals).
_BLOCK = {
    "top": ("h", np.s_[:, :-1, :]),
    "bottom": ("h", np.s_[:, 1:, :]),
    "left": ("v", np.s_[:, :, :-1]),
    "right": ("v", np.s_[:, :, 1:]),
    "d1": ("d1", np.s_[:]),
    "d2": ("d2", np.s_[:]),
}
_CYCLES = (
    ("top", "left", "d2"),
    ("right", "bottom", "d2"),
    ("top", "right", "d1"),
    ("left", "bottom", "d1"),
    ("top", "right", "bottom", "left"),
)


def _cycle_lightest(edge_levels: dict[str, np.ndarray], n_pixels: int) -> dict[str, np.ndarray]:
    """Per edge kind, whether the edge is the lightest of a cycle of a 2x2 block; edges are
    ordered by level, then by kind (in ``edge_levels``' order), then by position, a strict order."""
    keys, offset = {}, 0
    for kind, lv in edge_levels.items():
        keys[kind] = lv.astype(np.int64) * (4 * n_pixels) + offset + np.arange(lv.size).reshape(lv.shape)
        offset += lv.size
    dropped = {kind: np.zeros(lv.shape, bool) for kind, lv in edge_levels.items()}
    for cycle in _CYCLES:
        cycle_keys = [keys[_BLOCK[side][0]][_BLOCK[side][1]] for side in cycle]
        lightest = np.minimum.reduce(cycle_keys)
        for side, key in zip(cycle, cycle_keys):
            dropped[_BLOCK[side][0]][_BLOCK[side][1]] |= key == lightest
    return dropped


class _UnionFind:
    """Components of a growing set of pixels of stacked [B,H,W] maps: each pixel points towards
    its component's root, the component's smallest flat index, which points at itself; a root
    keeps its component's signed box (`_signed`), so one elementwise maximum merges boxes."""

    def __init__(self, shape: tuple[int, ...]):
        _, h, w = shape
        pixel = np.arange(int(np.prod(shape)))
        self.parent = pixel.copy()
        x, y = pixel % w, pixel // w % h
        self.box = np.stack([-x, -y, x, y], 1)
        self.roots = np.zeros(0, np.int64)

    def add(self, pixels: np.ndarray) -> None:
        """New pixels, each a component of its own until joined."""
        self.roots = np.concatenate([self.roots, pixels])

    def join(self, u: np.ndarray, v: np.ndarray) -> None:
        """Joins the components of u[j] and v[j] for every j, then merges the boxes of the roots
        that stopped being roots into their new roots."""
        hooked = []
        while len(u):
            r = self.find(np.concatenate([u, v]))
            apart = r[: len(u)] != r[len(u) :]
            u, v = r[: len(u)][apart], r[len(u) :][apart]
            # hooks each larger root under the smallest root it meets this round; roots hooked
            # elsewhere or met twice are joined in the next round
            high = np.maximum(u, v)
            np.minimum.at(self.parent, high, np.minimum(u, v))
            hooked.append(high)
        if hooked:  # their boxes are still those of their components before this join
            gone = np.concatenate(hooked)
            np.maximum.at(self.box, self.find(gone), self.box[gone])
        self.roots = self.roots[self.parent[self.roots] == self.roots]

    def find(self, x: np.ndarray) -> np.ndarray:
        """The roots of the pixels x; the pointers on the way are halved and x's point at them."""
        r = self.parent[x]
        while True:
            up = self.parent[r]
            if (up == r).all():
                self.parent[x] = r
                return r
            grand = self.parent[up]
            self.parent[r] = grand
            r = grand


def threshold_bins(values: Tensor, edges: Tensor) -> Tensor:
    """The bin of each value: the last k with edges[k] <= value (-1 below edges[0]), as
    `torch.bucketize(values, edges, right=True) - 1` gives it. For edges k / (n - 1), k = 0..n-1
    (CAM_THRESHOLDS), and values in [0, 1], floor(value * (n - 1)) is that bin or a neighbour, and
    one comparison with the edge on each side settles it: 3x faster than the binary search, and
    the same bins (the comparisons are the same float64 ones)."""
    n = len(edges)
    uniform = n > 1 and torch.equal(edges, torch.arange(n, dtype=edges.dtype, device=edges.device) / (n - 1))
    if not uniform or not bool(((values >= 0) & (values <= 1)).all()):  # NaN fails the test too
        return torch.bucketize(values, edges, right=True) - 1
    above = torch.cat([edges, edges.new_tensor([math.inf])])  # edges[k + 1] of the last bin
    bins = (values * (n - 1)).floor_().long().clamp_(0, n - 1)
    bins += (values >= above[bins + 1]).long()
    bins -= (values < above[bins]).long()
    return bins


@dataclass
class LocalizationTotals:
    """The streaming part of the localization measures, flat in the number of images: the
    per-threshold count of correct images at each IoU level (MaxBoxAccV2), the images with a
    ground-truth box, and the PxAP histograms of positive and negative pixels per CAM bin."""

    thresholds: tuple[float, ...] = CAM_THRESHOLDS
    levels: tuple[float, ...] = IOU_LEVELS
    #: whether MaxBoxAccV2 is accumulated (the pass computes it when asked)
    boxes: bool = True
    box_correct: np.ndarray = field(default=None)  # type: ignore[assignment]  # int64 [T, D]
    n_box_images: int = 0
    pixel_pos: np.ndarray = field(default=None)  # type: ignore[assignment]  # int64 [T]
    pixel_neg: np.ndarray = field(default=None)  # type: ignore[assignment]
    #: MaxBoxAccV2's images not yet swept, (maps, their boxes) per batch: a sweep costs per call
    #: about what it costs per pixel at demo size, so batches are pooled up to _SWEEP_PIXELS
    waiting: list = field(default_factory=list, repr=False, compare=False)

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
        self.n_box_images += len(boxed)
        if self.waiting and self.waiting[0][0].shape[1:] != maps.shape[1:]:
            self.sweep()  # pooled maps share their size
        self.waiting.append((maps[boxed].detach().cpu(), [gt_boxes[i] for i in boxed]))
        if sum(m.numel() for m, _ in self.waiting) >= _SWEEP_PIXELS:
            self.sweep()

    def sweep(self) -> None:
        """Counts the correct images of the waiting batches at every threshold and IoU level, at
        most _SWEEP_PIXELS pixels (or one image) per `best_box_ious` call."""
        if not self.waiting:
            return
        maps = torch.cat([m for m, _ in self.waiting])
        gt = [g for _, batch in self.waiting for g in batch]
        self.waiting = []
        step = max(1, _SWEEP_PIXELS // max(1, maps.shape[1] * maps.shape[2]))
        levels = np.asarray(self.levels)
        for start in range(0, len(maps), step):
            best = best_box_ious(maps[start : start + step], gt[start : start + step], self.thresholds)
            self.box_correct += (best[:, :, None] >= levels[None, None, :]).sum(0)

    def _add_pixels(self, maps: Tensor, ref: Tensor) -> None:
        edges = torch.as_tensor(self.thresholds, dtype=torch.float64, device=maps.device)
        bins = threshold_bins(maps.double().flatten(), edges)
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
        self.sweep()
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
