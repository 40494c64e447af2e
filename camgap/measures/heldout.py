"""IoU on held-out images: the paper's IoU^Model (eq. 4) on the model set's test split, and how
far it falls from the IoU on the training images.

The paper scores training images by design. The CAM is that of the predicted class, so scoring
needs no label, only the boxes of the object: the same score on images the model never saw asks
whether its CAM still finds the object there. Both measures use one variant, the study's
primary IoU (Grad-CAM, rho = 0.1, A_G from the boxes; other CAMs and thresholds through the
options): A_G from a saliency source or a mask folder would need masks of the test images,
which a model set does not make.

- ``iou_heldout``: the mean IoU over the test images with a box (one CAM pass over them,
  ``MeasureContext.need_test_score``).
- ``iou_drop``: train IoU - held-out IoU; the train IoU is the shared pass's (no second pass).

Either is undefined (``MeasureUndefined``) when its split has no image with a box.
"""

from __future__ import annotations

import math

from camgap.measures.iou import validate_thresholds
from camgap.measures.registry import MeasureContext, MeasureUndefined

#: The variant both measures report by default: `camgap.study.tables.PRIMARY_IOU`'s.
HELDOUT_CAM, HELDOUT_THRESHOLD, HELDOUT_MASKS = "gradcam", 0.1, "boxes"


def heldout_iou(ctx: MeasureContext, cam: str = HELDOUT_CAM, threshold: float = HELDOUT_THRESHOLD) -> float:
    """IoU^Model of the test split's images (A_G: their boxes) at CAM threshold ``threshold``."""
    (rho,) = validate_thresholds([threshold])
    return _defined(ctx.need_test_score(cam, rho).iou(rho), "test")


def train_iou(ctx: MeasureContext, cam: str = HELDOUT_CAM, threshold: float = HELDOUT_THRESHOLD) -> float:
    """IoU^Model of the training images (A_G: their boxes), read from the shared CAM pass."""
    (rho,) = validate_thresholds([threshold])
    return _defined(ctx.score_with(cam, HELDOUT_MASKS, rho).iou(rho), "training")


def iou_drop(ctx: MeasureContext, cam: str = HELDOUT_CAM, threshold: float = HELDOUT_THRESHOLD) -> float:
    """Train IoU - held-out IoU, both at ``threshold`` with ``cam`` (positive: the CAM finds the
    object less often on images the model never saw)."""
    return train_iou(ctx, cam, threshold) - heldout_iou(ctx, cam, threshold)


def _defined(value: float, split: str) -> float:
    if math.isnan(value):
        raise MeasureUndefined(f"no {split} image has a box: the IoU on the {split} images has no value")
    return float(value)
