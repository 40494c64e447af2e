import math

import numpy as np
import pytest
import torch
from torch import nn

from camgap.measures.invariance import effective_invariance, ei_scores, grayscale, rotate
from camgap.measures.registry import MeasureContext, MeasureError, compute_measure


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_rotate_is_a_real_rotation_of_the_image_plane():
    x = torch.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
    for angle, k in ((90, 1), (180, 2), (270, 3)):
        got = rotate(x, angle)
        assert got.shape == ((2, 3, 5, 4) if k % 2 else (2, 3, 4, 5))
        assert np.array_equal(got.numpy(), np.rot90(x.numpy(), k, axes=(2, 3)))
    assert torch.equal(rotate(rotate(x, 90), 270), x)
    # every channel is rotated, channels are not mixed
    assert torch.equal(rotate(x, 180)[:, 1], torch.flip(x[:, 1], dims=(-2, -1)))


def test_rotation_invariant_model_gives_mean_confidence():
    torch.manual_seed(0)
    # pointwise conv + global average pooling: invariant to any permutation of the pixels
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.randn(10, 3, 6, 6)
    with torch.no_grad():
        logits = model(x)
    conf = torch.softmax(logits.double(), 1).max(1).values
    batches = [x[:4], (x[4:], torch.zeros(6))]  # bare batches or (images, labels) tuples
    assert effective_invariance(model, logits, batches) == pytest.approx(float(conf.mean()), rel=1e-6)
    per = effective_invariance(model, logits, batches, per_image=True)
    torch.testing.assert_close(per, conf, rtol=1e-6, atol=0)


class _Corner(nn.Module):
    """logits = [t, x[0, 0]] on 1-channel images: only the top-left pixel matters."""

    def __init__(self, t=0.5):
        super().__init__()
        self.t = nn.Parameter(torch.tensor(t))

    def forward(self, x):
        return torch.stack([self.t.expand(x.shape[0]), x[:, 0, 0, 0]], dim=1)


def test_non_invariant_model_by_hand():
    hi, lo = 2.0, 0.0
    images = torch.tensor(
        [
            [[hi, lo], [lo, lo]],  # A: corner only; every rotation moves it away -> EI 0
            [[hi, hi], [lo, lo]],  # B: top row; one of 90/270 keeps a bright corner -> p/3
            [[lo, lo], [lo, lo]],  # C: dark: class 0 under every rotation -> p
            [[hi, hi], [hi, hi]],  # D: bright: class 1 under every rotation -> p
        ]
    ).unsqueeze(1)
    model = _Corner(0.5)
    with torch.no_grad():
        logits = model(images)
    p1 = _sigmoid(hi - 0.5)  # confidence of class 1 with the bright corner
    p0 = _sigmoid(0.5 - lo)  # confidence of class 0 with a dark corner
    expected = [0.0, p1 / 3, p0, p1]
    per = effective_invariance(model, logits, [images[:3], images[3:]], per_image=True)
    torch.testing.assert_close(per, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-9)
    assert effective_invariance(model, logits, [images]) == pytest.approx(sum(expected) / 4, rel=1e-6)
    # a single angle: B keeps its class under 90 degrees or 270 degrees, not both
    b = images[1:2]
    e90 = effective_invariance(model, logits[1:2], [b], angles=(90,))
    e270 = effective_invariance(model, logits[1:2], [b], angles=(270,))
    assert sorted([e90, e270]) == [0.0, pytest.approx(p1, rel=1e-6)]


def test_ei_scores_formula():
    clean = torch.log(torch.tensor([[0.7, 0.3], [0.6, 0.4]]))
    trans = torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8]]))
    got = ei_scores(clean, trans)
    assert got[0].item() == pytest.approx(math.sqrt(0.7 * 0.9))
    assert got[1].item() == 0.0


MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _normalize(raw):
    return (raw - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


class _RedMinusGreen(nn.Module):
    """logits = [mean(R - G) in unnormalised space, 0.05]."""

    def __init__(self):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(0.05))

    def forward(self, x):
        raw = x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
        return torch.stack([(raw[:, 0] - raw[:, 1]).mean((1, 2)), self.c.expand(x.shape[0])], 1)


def test_grayscale_unnormalises_converts_and_renormalises():
    raw = torch.rand(2, 3, 4, 4)
    gray = grayscale(_normalize(raw), MEAN, STD)
    back = gray * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    y = 0.299 * raw[:, 0] + 0.587 * raw[:, 1] + 0.114 * raw[:, 2]
    for c in range(3):
        torch.testing.assert_close(back[:, c], y, rtol=1e-5, atol=1e-6)


def test_grayscale_effective_invariance_by_hand():
    red = torch.zeros(3, 4, 4)
    red[0] = 1.0  # R - G = 1 -> class 0; its grayscale has R = G -> class 1: EI 0
    grey = torch.full((3, 4, 4), 0.3)  # already gray: class 1 before and after
    images = _normalize(torch.stack([red, grey]))
    model = _RedMinusGreen()
    with torch.no_grad():
        logits = model(images)
    per = effective_invariance(model, logits, [images], transform="grayscale", mean=MEAN, std=STD, per_image=True)
    assert per[0].item() == 0.0
    assert per[1].item() == pytest.approx(_sigmoid(0.05), rel=1e-5)
    ctx = MeasureContext(
        model=model,
        logits=logits,
        labels=torch.tensor([0, 1]),
        batches=lambda: iter([(images, torch.tensor([0, 1]))]),
        mean=MEAN,
        std=STD,
    )
    out = compute_measure("effective_invariance_gray", ctx)
    assert out == {"transform=grayscale": pytest.approx(_sigmoid(0.05) / 2, rel=1e-5)}
    ctx.mean = None
    with pytest.raises(MeasureError, match="mean"):
        compute_measure("effective_invariance_gray", ctx)


def test_registry_rotation_and_errors():
    model = _Corner(0.5)
    images = torch.tensor([[[2.0, 2.0], [2.0, 2.0]]]).unsqueeze(1)
    with torch.no_grad():
        logits = model(images)
    ctx = MeasureContext(
        model=model, logits=logits, labels=torch.tensor([1]), batches=lambda: iter([(images, torch.tensor([1]))])
    )
    assert compute_measure("effective_invariance", ctx) == {
        "transform=rotation": pytest.approx(_sigmoid(1.5), rel=1e-6)
    }
    with pytest.raises(MeasureError, match="non-finite"):
        effective_invariance(model, torch.tensor([[float("nan"), 0.0]]), [images])
    with pytest.raises(ValueError, match="logits"):
        effective_invariance(model, logits, [images, images])
    assert model.training  # mode restored
