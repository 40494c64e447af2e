"""The threshold-free localization measures against brute force written here from the papers'
definitions (pure Python loops over pixels and thresholds, a flood fill for the connected
regions, scikit-learn for average precision): hand-made maps with several boxes per image and
the edge cases (a zero map, a constant map, a box covering the whole image, a box covering no
pixel, an image without boxes); then the same measures from score_model's one pass and the
registry, which reads them all from that one pass."""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from camgap.data import BoxDataset, read_layout
from camgap.data.masks import boxes_to_masks
from camgap.data.synthetic import write_synthetic
from camgap.measures.localization import (
    CAM_THRESHOLDS,
    IOU_LEVELS,
    LocalizationTotals,
    best_box_ious,
    box_extents,
    component_boxes,
    energy_share,
    pointing_hits,
    threshold_bins,
)
from camgap.measures.registry import MeasureContext, MeasureError, MeasureUndefined, compute_measure
from camgap.measures.score import ScoreResult, score_model
from camgap.models import create_model

S = 10
LOCALIZATION = ("energy_pg", "pointing_game", "maxboxacc_v2", "pxap")


# --- brute force from the definitions (no camgap code) ---------------------------------------


def o_covered(boxes, y: int, x: int) -> bool:
    """Pixel (y, x) is in A_G when its centre lies in one of the boxes, boundaries included."""
    return any(x0 <= x + 0.5 <= x1 and y0 <= y + 0.5 <= y1 for x0, y0, x1, y1 in boxes)


def o_energy(cam, boxes) -> float:
    total = math.fsum(float(v) for row in cam for v in row)
    inside = math.fsum(float(cam[y][x]) for y in range(len(cam)) for x in range(len(cam[0])) if o_covered(boxes, y, x))
    return inside / total if total > 0 else 0.0


def o_pointing(cam, boxes) -> float:
    values = [float(v) for row in cam for v in row]
    top = max(values)
    if top == min(values):
        return 0.0  # a constant map points nowhere
    first = values.index(top)  # the first maximal pixel, row-major
    return float(o_covered(boxes, first // len(cam[0]), first % len(cam[0])))


def o_components(region) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (inclusive x0, y0, x1, y1) of the 8-connected regions: a flood fill."""
    h, w = len(region), len(region[0])
    seen = [[False] * w for _ in range(h)]
    out = []
    for y in range(h):
        for x in range(w):
            if not region[y][x] or seen[y][x]:
                continue
            stack, xs, ys = [(y, x)], [], []
            seen[y][x] = True
            while stack:
                cy, cx = stack.pop()
                ys.append(cy)
                xs.append(cx)
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and region[ny][nx] and not seen[ny][nx]:
                            seen[ny][nx] = True
                            stack.append((ny, nx))
            out.append((min(xs), min(ys), max(xs), max(ys)))
    return out


def o_gt_boxes(boxes, h: int, w: int) -> list[tuple[int, int, int, int]]:
    """Each box as the pixels it covers (inclusive extents); a box covering none is no box."""
    out = []
    for box in boxes:
        pix = [(y, x) for y in range(h) for x in range(w) if o_covered([box], y, x)]
        if pix:
            out.append((min(x for _, x in pix), min(y for y, _ in pix), max(x for _, x in pix), max(y for y, _ in pix)))
    return out


@functools.cache  # the same boxes recur at many thresholds
def o_box_iou(a, b) -> float:
    pa = {(y, x) for y in range(a[1], a[3] + 1) for x in range(a[0], a[2] + 1)}
    pb = {(y, x) for y in range(b[1], b[3] + 1) for x in range(b[0], b[2] + 1)}
    return len(pa & pb) / len(pa | pb)


def o_maxboxacc(cams, boxes_list) -> dict[float, float]:
    """Choe et al.: BoxAcc(tau, delta) over the images with a box; max over tau per delta."""
    images = [(cam, o_gt_boxes(b, len(cam), len(cam[0]))) for cam, b in zip(cams, boxes_list)]
    images = [(cam, gt) for cam, gt in images if gt]
    best = []  # per image, per tau: the best IoU of a region's box with a ground-truth box
    for cam, gt in images:
        row = []
        for k in range(101):
            region = [[float(v) > k / 100 for v in r] for r in cam]
            row.append(max((o_box_iou(p, g) for p in o_components(region) for g in gt), default=-1.0))
        best.append(row)
    return {delta: max(sum(b[k] >= delta for b in best) / len(images) for k in range(101)) for delta in IOU_LEVELS}


@functools.cache
def o_binned(v: float) -> float:
    """The largest threshold k/100 that the value reaches."""
    return max(k / 100 for k in range(101) if v >= k / 100)


def o_pxap(cams, boxes_list, binned: bool = True) -> float:
    from sklearn.metrics import average_precision_score

    y, score = [], []
    for cam, boxes in zip(cams, boxes_list):
        h, w = len(cam), len(cam[0])
        if not any(o_covered(boxes, yy, xx) for yy in range(h) for xx in range(w)):
            continue  # no object region: left out, as from IoU
        for yy in range(h):
            for xx in range(w):
                y.append(o_covered(boxes, yy, xx))
                score.append(o_binned(float(cam[yy][xx])) if binned else float(cam[yy][xx]))
    return float(average_precision_score(y, score))


# --- hand-made maps -------------------------------------------------------------------------


def blob(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:S, 0:S]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))


def normalised(m: np.ndarray) -> np.ndarray:
    m = m - m.min()
    return (m / m.max() if m.max() > 0 else m).astype(np.float32)


def hand_made() -> tuple[list[np.ndarray], list[list[tuple]]]:
    rng = np.random.default_rng(5)
    ring = np.zeros((S, S))
    ring[2:8, 2:8] = 1.0
    ring[4:6, 4:6] = 0.0  # a hole: only the outer region gives a box
    cams = [
        normalised(blob(2, 2, 1.2) + 0.6 * blob(7, 7, 1.5)),  # two blobs, two boxes
        normalised(ring + 0.1 * rng.random((S, S))),  # a ring around a small box
        np.zeros((S, S), np.float32),  # a constant CAM normalises to zeros
        np.full((S, S), 0.5, np.float32),  # flat, not zero: mass everywhere, no point
        normalised(rng.random((S, S))),  # no box: left out
        normalised(blob(5, 1, 2.0)),  # one box covers no pixel (dropped), one covers the image
        normalised(rng.random((S, S))),  # noise, three overlapping boxes
        np.where(np.arange(S * S).reshape(S, S) % 7 == 0, 1.0, 0.0).astype(np.float32),  # tied maxima
        (rng.integers(0, 9, (S, S)) / 8).astype(np.float32),  # values on k/8: ties in every bin
    ]
    boxes = [
        [(0.0, 0.0, 4.5, 4.0), (5.0, 5.0, 10.0, 10.0)],
        [(4.0, 4.0, 6.0, 6.0)],
        [(2.0, 2.0, 6.0, 6.0)],
        [(0.0, 0.0, 10.0, 10.0)],
        [],
        [(3.2, 3.2, 3.4, 3.4), (0.0, 0.0, 10.0, 10.0)],
        [(1.0, 1.0, 6.0, 5.0), (3.0, 2.0, 9.5, 8.0), (0.0, 6.0, 4.0, 10.0)],
        [(0.0, 0.0, 3.0, 1.0), (6.0, 6.0, 9.0, 9.0)],
        [(2.5, 1.5, 7.5, 8.5)],
    ]
    return cams, boxes


def totals_of(cams, boxes, batches=(slice(0, 4), slice(4, None))) -> LocalizationTotals:
    totals = LocalizationTotals()
    for part in batches:
        maps = torch.from_numpy(np.stack(cams[part]))
        b = [torch.tensor(x, dtype=torch.float32).reshape(-1, 4) for x in boxes[part]]
        totals.add(maps, boxes_to_masks(b, S), [box_extents(x, S, S) for x in b])
    return totals


# --- tests ----------------------------------------------------------------------------------


def test_energy_and_pointing_per_image_equal_the_brute_force():
    cams, boxes = hand_made()
    maps = torch.from_numpy(np.stack(cams))
    ref = boxes_to_masks([torch.tensor(b).reshape(-1, 4) for b in boxes], S)
    energy, hits = energy_share(maps, ref), pointing_hits(maps, ref)
    for i, (cam, b) in enumerate(zip(cams, boxes)):
        assert float(energy[i]) == pytest.approx(o_energy(cam, b), rel=1e-12, abs=0), i
        assert float(hits[i]) == o_pointing(cam, b), i
    # by hand: the zero map has no mass and points nowhere; the flat map's mass inside a box
    # covering the whole image is all of it, yet it points nowhere
    assert float(energy[2]) == 0.0 and not hits[2]
    assert float(energy[3]) == 1.0 and not hits[3]
    # tied maxima: the first one (row-major), pixel (0, 0), is the point, inside box 1
    assert bool(hits[7])


def test_the_first_of_tied_maxima_is_the_point():
    cam = torch.zeros(1, S, S)
    cam[0, 1, 8] = cam[0, 6, 2] = 1.0  # (1, 8) comes first in row-major order
    inside_second = boxes_to_masks([torch.tensor([[0.0, 5.0, 4.0, 8.0]])], S)
    inside_first = boxes_to_masks([torch.tensor([[7.0, 0.0, 10.0, 3.0]])], S)
    assert not pointing_hits(cam, inside_second)[0]
    assert pointing_hits(cam, inside_first)[0]


def test_maxboxacc_equals_the_brute_force_streamed_in_batches():
    cams, boxes = hand_made()
    want = o_maxboxacc(cams, boxes)
    for batches in ((slice(0, 4), slice(4, None)), (slice(None),)):
        totals = totals_of(cams, boxes, batches)
        assert totals.n_box_images == 8  # image 4 has no box
        assert totals.max_box_acc() == want
        assert totals.max_box_acc_v2() == pytest.approx(sum(want.values()) / 3, rel=1e-15)
    assert 0 < totals.max_box_acc_v2() < 1


def test_maxboxacc_on_random_maps_and_boxes():
    rng = np.random.default_rng(11)
    cams = [normalised(rng.random((S, S)) + blob(*rng.uniform(0, S, 2), 2.0)) for _ in range(5)]
    boxes = []
    for _ in cams:
        xy = rng.uniform(0, S, (int(rng.integers(1, 4)), 2, 2))
        boxes.append([(*xy[j].min(0), *xy[j].max(0)) for j in range(len(xy))])
    totals = totals_of(cams, boxes, (slice(0, 2), slice(2, None)))
    assert totals.max_box_acc() == o_maxboxacc(cams, boxes)


def test_a_box_over_the_whole_image_is_found_at_a_low_threshold():
    """A constant 0.5 map selects every pixel below tau = 0.5: one box, the image, IoU 1."""
    totals = totals_of([np.full((S, S), 0.5, np.float32)], [[(0.0, 0.0, 10.0, 10.0)]], (slice(None),))
    assert totals.max_box_acc() == {0.3: 1.0, 0.5: 1.0, 0.7: 1.0}
    assert totals.box_correct[50].sum() == 0  # 0.5 > 0.5 is false: no region, no box
    zero = totals_of([np.zeros((S, S), np.float32)], [[(0.0, 0.0, 10.0, 10.0)]], (slice(None),))
    assert zero.max_box_acc_v2() == 0.0  # a zero map selects nothing at any threshold


def test_component_boxes_are_the_flood_fill_and_the_outer_contours():
    rng = np.random.default_rng(2)
    for _ in range(5):
        mask = rng.random((12, 15)) > 0.6
        got = sorted(map(tuple, component_boxes(mask).tolist()))
        assert got == sorted(o_components(mask.tolist()))
    cv2 = pytest.importorskip("cv2")
    # the outer contours of cv2.findContours (top level of RETR_CCOMP; holes are the second)
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    outer = [cv2.boundingRect(c) for c, h in zip(contours, hierarchy[0]) if h[3] == -1]
    assert got == sorted((x, y, x + w - 1, y + h - 1) for x, y, w, h in outer)


def test_box_extents_are_the_rasterised_boxes():
    boxes = torch.tensor([[0.0, 0.0, 4.5, 4.0], [3.2, 3.2, 3.4, 3.4], [-2.0, 8.6, 30.0, 9.4], [2.5, 1.5, 7.5, 8.5]])
    assert box_extents(boxes, S, S).tolist() == [list(b) for b in o_gt_boxes(boxes.tolist(), S, S)]
    # by hand: centres x+0.5 in [x0, x1], boundaries included; the third box covers no centre row
    assert box_extents(boxes, S, S).tolist() == [[0, 0, 4, 3], [2, 1, 7, 8]]


def test_box_extents_of_random_boxes_on_and_off_the_pixel_centres():
    rng = np.random.default_rng(8)
    xy = rng.integers(-4, 2 * S + 4, (40, 4)) / 2  # on the centres (x + 0.5), on the edges, outside
    boxes = torch.tensor(np.concatenate([np.minimum(xy[:, :2], xy[:, 2:]), np.maximum(xy[:, :2], xy[:, 2:])], 1))
    boxes = torch.cat([boxes, torch.rand(20, 4) * S, torch.tensor([[3.0, 1.0, 2.0, 5.0]])])  # any, and x1 < x0
    for h, w in ((S, S), (7, 12)):
        assert box_extents(boxes, h, w).tolist() == [list(b) for b in o_gt_boxes(boxes.float().tolist(), h, w)]


def test_maxboxacc_sweeps_pooled_batches_in_pieces(monkeypatch):
    """The sweep pools batches up to a pixel budget and splits them above it; the counts are
    those of one sweep over all images, whatever the budget, and a batch of another size first
    sweeps the waiting ones."""
    cams, boxes = hand_made()
    whole = totals_of(cams, boxes, (slice(None),))
    whole.sweep()
    for budget in (1, 2 * S * S + 1, 10**6):
        monkeypatch.setattr("camgap.measures.localization._SWEEP_PIXELS", budget)
        parts = totals_of(cams, boxes, (slice(0, 3), slice(3, 4), slice(4, None)))
        assert parts.max_box_acc() == whole.max_box_acc() and np.array_equal(parts.box_correct, whole.box_correct)
        assert not parts.waiting
    mixed = LocalizationTotals()
    mixed.add(
        torch.from_numpy(np.stack(cams[:2])),
        boxes_to_masks([torch.tensor(b) for b in boxes[:2]], S),
        [box_extents(torch.tensor(b), S, S) for b in boxes[:2]],
    )
    small = torch.zeros(1, 4, 4)
    small[0, 1:3, 1:3] = 1.0
    mixed.add(small, small > 0, [np.array([[1, 1, 2, 2]])])
    assert [m.shape[1:] for m, _ in mixed.waiting] == [(4, 4)]  # the 10x10 maps were swept
    first = totals_of(cams[:2], boxes[:2], (slice(None),))
    first.sweep()
    assert mixed.box_correct.tolist() == first.box_correct.tolist()
    mixed.sweep()
    assert (mixed.box_correct - first.box_correct)[:100].tolist() == [[1, 1, 1]] * 100  # IoU 1 below tau = 1


def test_pxap_equals_scikit_learn():
    cams, boxes = hand_made()
    totals = totals_of(cams, boxes)
    assert totals.pxap() == pytest.approx(o_pxap(cams, boxes), rel=1e-12)
    # values on k/8 never share a bin: the binned AP is the AP of the raw scores
    on_grid = totals_of(cams[8:], boxes[8:], (slice(None),))
    assert on_grid.pxap() == pytest.approx(o_pxap(cams[8:], boxes[8:], binned=False), rel=1e-12)
    # by hand: 4 pixels, positives scored 1 and 0.5, negatives 0.75 and 0: AP = (1 + 2/3) / 2
    tiny = LocalizationTotals()
    tiny.add(torch.tensor([[[1.0, 0.75], [0.5, 0.0]]]), torch.tensor([[[True, False], [True, False]]]), [[]])
    assert tiny.pxap() == pytest.approx((1 + 2 / 3) / 2, rel=1e-15)
    assert math.isnan(LocalizationTotals().pxap()) and math.isnan(LocalizationTotals().max_box_acc_v2())


def test_memory_is_flat_in_the_number_of_images():
    totals = totals_of(*hand_made())
    assert totals.box_correct.shape == (len(CAM_THRESHOLDS), len(IOU_LEVELS))
    assert totals.pixel_pos.shape == totals.pixel_neg.shape == (101,)
    assert int(totals.pixel_pos.sum() + totals.pixel_neg.sum()) == 8 * S * S  # image 4 left out


def labelled_best_box_ious(maps: torch.Tensor, gt_boxes, thresholds) -> np.ndarray:
    """The labelling definition of `best_box_ious`: scipy labels each (image, threshold) region
    on its own; the boxes are its components' slices, their IoU counted in pixels. -1 where no
    box or no ground truth."""
    best = np.full((len(maps), len(thresholds)), -1.0)
    for b, cam in enumerate(maps.double().numpy()):
        for t, tau in enumerate(thresholds):
            labels, _ = ndimage.label(cam > tau, structure=np.ones((3, 3)))
            for s in ndimage.find_objects(labels):
                box = (s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1)
                for g in gt_boxes[b]:
                    best[b, t] = max(best[b, t], o_box_iou(box, tuple(int(x) for x in g)))
    return best


def random_maps(rng, n: int, h: int, w: int) -> torch.Tensor:
    """Smooth maps (a coarse grid upsampled, as a CAM), noise, values on the thresholds and on
    k/8 (ties within and across bins), all-zero and constant maps, a NaN pixel."""
    coarse = torch.from_numpy(rng.random((n, 1, 3, 4)))
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    kinds = [
        smooth,
        torch.from_numpy(rng.random((n, h, w))),
        torch.from_numpy(rng.integers(0, 101, (n, h, w)) / 100),
        torch.from_numpy(rng.integers(0, 9, (n, h, w)) / 8),
    ]
    maps = torch.cat([k / k.amax((1, 2), keepdim=True) for k in kinds]).float()
    maps[0], maps[1], maps[2, h // 2, w // 2] = 0.0, 0.5, math.nan
    return maps


def random_gt(rng, n: int, h: int, w: int) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        xy = np.sort(rng.integers(0, [w, h], (int(rng.integers(0, 4)), 2, 2)), axis=1)  # 0 to 3 boxes
        out.append(np.stack([xy[:, 0, 0], xy[:, 0, 1], xy[:, 1, 0], xy[:, 1, 1]], 1).astype(np.int64))
    return out


@pytest.mark.parametrize("h, w", [(9, 13), (6, 1), (1, 7)])
def test_best_box_ious_equal_labelling_each_region(h, w):
    """The union-find over the thresholds against scipy labelling every region separately, in
    float64 and exactly: several boxes per image, images without one, ties, zero and constant
    maps; the demo's thresholds and unsorted ones with a repeat."""
    rng = np.random.default_rng(h * 100 + w)
    maps = random_maps(rng, 6, h, w)
    gt = random_gt(rng, len(maps), h, w)
    for thresholds in (CAM_THRESHOLDS, (0.5, 0.0, 0.25, 0.5, 1.0, 0.125)):
        want = labelled_best_box_ious(maps, gt, thresholds)
        assert np.array_equal(best_box_ious(maps, gt, thresholds), want)
        assert np.array_equal(best_box_ious(maps[7:], gt[7:], thresholds), want[7:])  # batches apart
    assert (want[0] == -1).all() and (best_box_ious(maps[:0], [], CAM_THRESHOLDS).shape == (0, 101))


def test_best_box_ious_by_hand():
    """A ring is one component (8-connected around its hole); two diagonal pixels are one; a
    region that splits as the threshold rises gives two boxes."""
    cam = torch.zeros(1, 5, 6)
    cam[0, 0, 0] = cam[0, 1, 1] = 0.9  # one component through the diagonal, box (0,0)-(1,1)
    cam[0, 2:5, 2:5] = 0.4
    cam[0, 3, 3] = 0.0  # a ring, box (2,2)-(4,4)
    cam[0, 4, 4] = 0.5
    gt = [np.array([[0, 0, 1, 1], [2, 2, 4, 4]])]
    best = best_box_ious(cam, gt, (0.0, 0.3, 0.45, 0.95))[0]
    # tau 0 and 0.3: the ring and the diagonal pair touch at (1,1)-(2,2): one box (0,0)-(4,4),
    # IoU 9/25 with the ring's box; tau 0.45: the pair (IoU 1) and the pixel (4,4) apart
    assert best.tolist() == [9 / 25, 9 / 25, 1.0, -1.0]


# --- the one pass ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored_inputs(tmp_path_factory):
    root = write_synthetic(tmp_path_factory.mktemp("loc"), seed=4, classes=3, train_per_class=4, size=24)
    records, _ = read_layout(root, "csv", "train")
    torch.manual_seed(0)
    return create_model("small_resnet", num_classes=3, width=8).eval(), BoxDataset(records, input_size=24)


@pytest.fixture(scope="module")
def scored(scored_inputs):
    model, data = scored_inputs
    return score_model(model, data, thresholds=(0.1, 0.5), batch_size=5, keep_overlays=len(data), box_accuracy=True)


def test_score_model_gives_the_brute_force_values_of_its_own_maps(scored):
    cams = [o["cam"].numpy() for o in scored.overlays]
    boxes = [o["boxes"].tolist() for o in scored.overlays]
    energy = [o_energy(c, b) for c, b in zip(cams, boxes)]
    assert scored.per_image["energy_pg"].tolist() == pytest.approx(energy, rel=1e-9)
    assert scored.per_image["pointing_game"].tolist() == [o_pointing(c, b) for c, b in zip(cams, boxes)]
    assert scored.energy_pg() == pytest.approx(np.mean(energy), rel=1e-9)
    assert scored.localization.max_box_acc() == o_maxboxacc(cams, boxes)
    assert scored.pxap() == pytest.approx(o_pxap(cams, boxes), rel=1e-12)


class Spy:
    def __init__(self, result: ScoreResult):
        self.calls: list[tuple] = []
        self.result = result

    def __call__(self, cam, masks, thresholds):
        self.calls.append((cam, masks, thresholds))
        return self.result


def test_the_registry_reads_every_localization_measure_from_the_one_pass(scored):
    spy = Spy(scored)
    ctx = MeasureContext(model=torch.nn.Linear(1, 1), score_pass=spy)
    compute_measure("iou", ctx, cam="gradcam", thresholds=(0.1, 0.5), masks="boxes")
    got = {name: compute_measure(name, ctx, cam="gradcam", masks="boxes") for name in LOCALIZATION}
    assert spy.calls == [("gradcam", "boxes", (0.1, 0.5))]  # default thresholds reuse that pass
    key = "cam=gradcam,masks=boxes"
    assert got == {
        "energy_pg": {key: scored.energy_pg()},
        "pointing_game": {key: scored.pointing_game()},
        "maxboxacc_v2": {key: scored.max_box_acc_v2()},
        "pxap": {key: scored.pxap()},
    }
    # alone, a localization measure runs the pass once at the default threshold
    alone = Spy(scored)
    ctx = MeasureContext(model=torch.nn.Linear(1, 1), score_pass=alone)
    for name in LOCALIZATION:
        compute_measure(name, ctx)
    assert alone.calls == [("gradcam", "boxes", (0.1,))]


def test_maxboxacc_is_computed_on_request_only(scored, scored_inputs):
    """Its labelling costs more than the pass: without box_accuracy the pass leaves it out and
    the measure fails saying so; the other measures of that pass are the same."""
    cheap = score_model(*scored_inputs, thresholds=(0.1, 0.5), batch_size=5)
    assert cheap.localization.box_correct.sum() == 0 and cheap.pxap() == scored.pxap()
    ctx = MeasureContext(model=torch.nn.Linear(1, 1), score_pass=Spy(cheap))
    assert compute_measure("energy_pg", ctx) == {"cam=gradcam,masks=boxes": scored.energy_pg()}
    with pytest.raises(MeasureError, match=r"MaxBoxAccV2 was not computed in this CAM pass \(score with box_accuracy"):
        compute_measure("maxboxacc_v2", ctx)


def test_no_object_region_anywhere_is_undefined():
    nan = [math.nan]
    per_image = pd.DataFrame({"image_id": ["a"], "correct": [True], "energy_pg": nan, "pointing_game": nan})
    empty = ScoreResult("gradcam", (0.1,), per_image, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    ctx = MeasureContext(model=torch.nn.Linear(1, 1), score_pass=Spy(empty))
    for name in LOCALIZATION:
        with pytest.raises(MeasureUndefined, match="no training image has an object region"):
            compute_measure(name, ctx)


@pytest.mark.parametrize(
    "edges",
    [CAM_THRESHOLDS, tuple(k / 10 for k in range(11)), (0.0, 0.1, 0.5, 0.55, 0.9)],
    ids=["default", "tenths", "uneven"],
)
def test_threshold_bins_are_bucketize_s_bins(edges):
    e = torch.tensor(edges, dtype=torch.float64)
    near = torch.cat([e, torch.nextafter(e, e + 1), torch.nextafter(e, e - 1)])
    values = torch.cat([near.clamp(0, 1), torch.rand(100_000, generator=torch.Generator().manual_seed(0)).double()])
    assert torch.equal(threshold_bins(values, e), torch.bucketize(values, e, right=True) - 1)
    odd = torch.tensor([-0.5, 1.5, float("nan"), 0.3], dtype=torch.float64)  # the binary search's bins
    assert torch.equal(threshold_bins(odd, e), torch.bucketize(odd, e, right=True) - 1)
