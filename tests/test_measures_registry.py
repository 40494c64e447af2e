"""IoU and IoU-B as entries of the measure registry: one list of measures, values read from the
shared CAM pass, which runs once per (cam, masks) whatever the measures and thresholds."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from camgap.errors import UnknownNameError
from camgap.measures.registry import (
    MeasureContext,
    MeasureError,
    compute_measure,
    from_score_pass,
    list_measures,
    score_params,
    score_pass_measures,
)
from camgap.measures.score import ScoreResult
from camgap.params import label, to_json

THRESHOLDS = (0.1, 0.3)


def fake_result(cam: str, masks: str, thresholds) -> ScoreResult:
    """A hand-made pass of 3 images: image 2 has no object region (NaN), which the means skip."""
    per_image = pd.DataFrame({"image_id": ["a", "b", "c"], "correct": [True, False, True]})
    for i, t in enumerate(thresholds):
        per_image[f"iou@{t:g}"] = [0.2 + i / 10, 0.4 + i / 10, math.nan]
        per_image[f"iou_b@{t:g}"] = [0.5 + i / 10, 0.7 + i / 10, math.nan]
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    return ScoreResult(cam, tuple(thresholds), per_image, logits, torch.tensor([0, 0, 0]))


class Spy:
    """A ``score_pass`` that counts its calls."""

    def __init__(self):
        self.calls: list[tuple] = []

    def __call__(self, cam, masks, thresholds):
        self.calls.append((cam, masks, thresholds))
        return fake_result(cam, masks, thresholds)


def test_list_measures_holds_iou_and_iou_b_beside_the_others():
    names = list_measures()
    assert {"iou", "iou_b", "nuclear_norm", "spectral_norm", "effective_invariance"} <= set(names)
    assert names == sorted(names)
    assert score_pass_measures() == ("energy_pg", "iou", "iou_b", "maxboxacc_v2", "pointing_game", "pxap")
    assert from_score_pass("iou") and from_score_pass("IoU_B") and not from_score_pass("nuclear_norm")
    with pytest.raises(UnknownNameError, match=r"unknown measure 'bogus'; known: .*\biou, iou_b, "):
        compute_measure("bogus", MeasureContext(model=torch.nn.Linear(1, 1)))


def test_iou_and_iou_b_at_two_thresholds_share_one_pass():
    spy = Spy()
    ctx = MeasureContext(model=torch.nn.Linear(1, 1), score_pass=spy)
    iou = compute_measure("iou", ctx, cam="gradcam", thresholds=THRESHOLDS, masks="boxes")
    iou_b = compute_measure("iou_b", ctx, cam="gradcam", thresholds=THRESHOLDS, masks="boxes")
    assert spy.calls == [("gradcam", "boxes", THRESHOLDS)]
    # {params label: value}, the registry's one contract; the mean skips the image without A_G
    assert iou == {
        "cam=gradcam,masks=boxes,threshold=0.1": pytest.approx(0.3),
        "cam=gradcam,masks=boxes,threshold=0.3": pytest.approx(0.4),
    }
    assert iou_b == {
        "cam=gradcam,masks=boxes,threshold=0.1": pytest.approx(0.6),
        "cam=gradcam,masks=boxes,threshold=0.3": pytest.approx(0.7),
    }
    # the pass also gave the logits the other measures read
    assert torch.equal(ctx.need_logits()[0], fake_result("gradcam", "boxes", THRESHOLDS).logits)
    assert set(compute_measure("nuclear_norm", ctx)) == {"norm=paper", "norm=deng"}
    assert len(spy.calls) == 1
    # another A_G source or CAM is another pass, once
    compute_measure("iou", ctx, cam="gradcam", thresholds=THRESHOLDS, masks="saliency")
    compute_measure("iou_b", ctx, cam="gradcam", thresholds=THRESHOLDS, masks="saliency")
    compute_measure("iou", ctx, cam="gradcam++", thresholds=THRESHOLDS, masks="boxes")
    assert spy.calls[1:] == [("gradcam", "saliency", THRESHOLDS), ("gradcam++", "boxes", THRESHOLDS)]


def test_defaults_are_the_papers_variant_and_bad_thresholds_raise_before_a_pass():
    spy = Spy()
    ctx = MeasureContext(model=torch.nn.Linear(1, 1), score_pass=spy)
    assert compute_measure("iou", ctx) == {"cam=gradcam,masks=boxes,threshold=0.1": pytest.approx(0.3)}
    with pytest.raises(ValueError, match=r"threshold 1\.5 is outside \[0, 1\): the CAM threshold rho"):
        compute_measure("iou_b", ctx, thresholds=(0.1, 1.5))
    assert len(spy.calls) == 1


def test_without_a_score_pass_the_measure_says_what_it_needs():
    with pytest.raises(MeasureError, match="needs the shared CAM pass"):
        compute_measure("iou", MeasureContext(model=torch.nn.Linear(1, 1)))


def test_score_params_are_the_stored_identity():
    p = score_params("gradcam", 0.10, "boxes")
    assert p == {"cam": "gradcam", "masks": "boxes", "threshold": "0.1"}
    assert to_json(p) == '{"cam":"gradcam","masks":"boxes","threshold":"0.1"}'
    assert label(p) == "cam=gradcam,masks=boxes,threshold=0.1"
    assert to_json(label(p)) == to_json(p)  # the measure's label key stores as the same bytes
