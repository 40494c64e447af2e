"""CAM overlays (camgap.viz) and the Figure 2 grid: colours computed from the definition, and the
figure names its CAM method and threshold, explains its outlines and has a colour bar."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import colormaps

from camgap.study import figures
from camgap.viz import CAM_CMAP, GREEN, WHITE, desaturate, render_overlay


def _image():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 8, 8), generator=g, dtype=torch.uint8)


def test_overlay_is_inferno_over_the_grey_image():
    img = _image()
    cam = torch.zeros(8, 8)
    cam[2:6, 2:6] = 0.8
    out = render_overlay(img, cam, threshold=0.5, scale=1, alpha=0.5)
    rgb = img.permute(1, 2, 0).numpy().astype(np.float32)
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    want = 0.5 * grey[..., None] + 0.5 * colormaps[CAM_CMAP](cam.numpy())[..., :3].astype(np.float32) * 255
    want = want.clip(0, 255).astype(np.uint8)
    inside = np.zeros((8, 8), bool)
    inside[3:5, 3:5] = True  # interior of the thresholded square
    outside = np.ones((8, 8), bool)
    outside[2:6, 2:6] = False
    assert np.array_equal(out[inside], want[inside]) and np.array_equal(out[outside], want[outside])
    ring = np.zeros((8, 8), bool)
    ring[2:6, 2:6] = True
    ring &= ~inside
    assert (out[ring] == WHITE.astype(np.uint8)).all()  # outline of cam >= rho
    d = desaturate(rgb)
    assert d.shape == (8, 8, 3) and np.array_equal(d[..., 0], d[..., 2]) and np.allclose(d[..., 1], grey)


def test_boxes_are_green_and_scaled():
    out = render_overlay(
        _image(), torch.zeros(8, 8), threshold=0.5, boxes=torch.tensor([[1.0, 1.0, 5.0, 6.0]]), scale=2
    )
    assert out.shape == (16, 16, 3)
    assert (out[2, 2:10] == GREEN.astype(np.uint8)).all()  # top edge of the box, x 2..9
    assert not (out[4, 4] == GREEN.astype(np.uint8)).all()  # inside stays the image


def test_figure2_names_method_and_threshold_with_legend_and_colour_bar(tmp_path):
    img = render_overlay(_image(), torch.rand(8, 8, generator=torch.Generator().manual_seed(1)), 0.1, scale=2)
    fig = figures.overlay_figure([(3.0, [img, img]), (40.0, [img])], cam="gradcam", threshold=0.1)
    assert fig._suptitle.get_text() == "GradCAM of the predicted class over the grey image, threshold ρ = 0.1"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["GradCAM ≥ ρ = 0.1 (thresholded region)", "object (bounding boxes or mask)"]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "GradCAM (normalised to [0, 1])"
    assert bars[0]._colorbar.cmap.name == CAM_CMAP
    assert [ax.get_ylabel() for ax in (fig.axes[0], fig.axes[2])] == ["gap = 3.0 pp", "gap = 40.0 pp"]
    p = figures.overlay_grid([(3.0, [img])], tmp_path / "f2.png", cam="gradcam++", threshold=0.25)
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="at least one row"):
        figures.overlay_figure([])


def test_overlays_of_a_model_with_more_outputs_than_the_data_has_classes(tmp_path):
    """A 1000-class checkpoint on a 3-class dataset: a prediction past the data's classes is named
    by its index (it was an IndexError)."""
    from camgap.viz import save_overlays

    item = {
        "image_id": "a",
        "image": _image(),
        "cam": torch.rand(8, 8, generator=torch.Generator().manual_seed(1)),
        "boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]),
        "reference": torch.zeros(8, 8, dtype=torch.bool),
        "pred": 7,
        "iou": 0.25,
    }
    paths = save_overlays([item, item | {"image_id": "b", "pred": 1}], tmp_path, 0.1, ["c0", "c1", "c2"])
    assert [p.name for p in paths] == ["a_pred-7_iou-0.250.png", "b_pred-c1_iou-0.250.png"]
