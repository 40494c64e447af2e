import math

import pytest
import torch

from camgap.measures.iou import enclosing_box_mask, mask_iou, threshold_ious


def _mask(h, w, *rects):
    m = torch.zeros(h, w, dtype=torch.bool)
    for y0, y1, x0, x1 in rects:
        m[y0:y1, x0:x1] = True
    return m


def test_mask_iou_hand_computed():
    pred = _mask(8, 8, (0, 4, 0, 4))  # 16 px
    ref = _mask(8, 8, (2, 6, 2, 6))  # 16 px, overlap 4
    assert mask_iou(pred, ref).item() == pytest.approx(4 / 28)


def test_mask_iou_empty_cases():
    ref = _mask(4, 4, (0, 2, 0, 2))
    empty = torch.zeros(4, 4, dtype=torch.bool)
    assert mask_iou(empty, ref).item() == 0.0  # empty CAM region: no features on the object
    assert math.isnan(mask_iou(ref, empty).item())  # no reference: undefined
    assert math.isnan(mask_iou(empty, empty).item())


def test_enclosing_box_of_l_shape_and_empty():
    m = _mask(6, 7, (1, 5, 1, 2), (4, 5, 1, 6))  # an L
    box = enclosing_box_mask(m)
    assert torch.equal(box, _mask(6, 7, (1, 5, 1, 6)))
    assert not enclosing_box_mask(torch.zeros(3, 3, dtype=torch.bool)).any()
    batch = torch.stack([m, torch.zeros_like(m), _mask(6, 7, (5, 6, 6, 7))])
    boxes = enclosing_box_mask(batch)
    assert boxes.sum((1, 2)).tolist() == [20, 0, 1]


def test_threshold_ious_several_thresholds_one_cam():
    cam = torch.zeros(1, 4, 4)
    cam[0, :2, :2] = 1.0  # strong on the object
    cam[0, 3, 3] = 0.3  # a weak blob on the background, far away
    ref = _mask(4, 4, (0, 2, 0, 2))[None]
    iou, iou_b, area = threshold_ious(cam, ref, [0.1, 0.5])
    # rho=0.1: region = object (4 px) + the corner pixel -> IoU 4/5; its box is the whole image -> 4/16
    assert iou[:, 0].tolist() == pytest.approx([4 / 5, 1.0])
    assert iou_b[:, 0].tolist() == pytest.approx([4 / 16, 1.0])
    assert area[:, 0].tolist() == pytest.approx([5 / 16, 4 / 16])
