"""Augmentation consistency against a hand-computed case and a brute-force loop."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from camgap.data.dataset import normalize
from camgap.measures.consistency import augment_normalized, augmentation_consistency, total_variation
from camgap.measures.registry import MeasureContext, MeasureError, compute_measure
from camgap.zoo.loop import augment_batch

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


class _LeftMinusRight(nn.Module):
    """logits = [0, k * (mean of the left half - mean of the right half)] of the normalised images:
    a horizontal flip negates the second logit."""

    def __init__(self, k=3.0):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k))

    def forward(self, x):
        w = x.shape[-1] // 2
        d = self.k * (x[..., :w].mean(dim=(1, 2, 3)) - x[..., w:].mean(dim=(1, 2, 3)))
        return torch.stack([torch.zeros_like(d), d], dim=1)


def _half_images(lefts, rights, size=4):
    """uint8 images whose left half is `left` and right half `right` (every channel)."""
    x = torch.empty(len(lefts), 3, size, size, dtype=torch.uint8)
    for i, (a, b) in enumerate(zip(lefts, rights)):
        x[i, ..., : size // 2] = a
        x[i, ..., size // 2 :] = b
    return x


def test_always_flipped_by_hand():
    """flip_prob 1, no jitter: the second logit d becomes -d, so the total variation between
    [1 - s(d), s(d)] and [1 - s(-d), s(-d)] is |s(d) - s(-d)| = |tanh(d / 2)|."""
    raw = _half_images([0, 255, 100, 30, 200], [255, 0, 100, 90, 10])
    x = normalize(raw, MEAN, STD)
    model = _LeftMinusRight()
    with torch.no_grad():
        logits = model(x)
    d = logits[:, 1].double()
    expected = torch.tanh(d / 2).abs()
    per = augmentation_consistency(model, logits, [x[:2], (x[2:], None)], MEAN, STD, 1.0, 0.0, per_image=True)
    torch.testing.assert_close(per, expected, rtol=1e-5, atol=1e-6)
    assert per[2] == pytest.approx(0.0, abs=1e-6)  # a symmetric image does not change
    mean = augmentation_consistency(model, logits, [x], MEAN, STD, 1.0, 0.0, draws=3)
    assert mean == pytest.approx(float(expected.mean()), rel=1e-5)


def test_identity_augmentation_changes_nothing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = normalize((torch.rand(6, 3, 8, 8) * 255).to(torch.uint8), MEAN, STD)
    with torch.no_grad():
        logits = model(x)
    assert augmentation_consistency(model, logits, [x], MEAN, STD, 0.0, 0.0) == pytest.approx(0.0, abs=1e-6)


def test_matches_a_brute_force_loop_over_images_and_draws():
    """The same seeded draws (one generator, batch by batch, draw by draw through augment_batch on
    the uint8 images), then the total variation by a loop over images and classes in float64."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    raw = (torch.rand(7, 3, 8, 8) * 255).to(torch.uint8)
    x = normalize(raw, MEAN, STD)
    with torch.no_grad():
        logits = model(x)
    sizes, draws, seed = (3, 4), 2, 11
    got = augmentation_consistency(
        model, logits, [x[:3], x[3:]], MEAN, STD, 0.5, 0.4, draws=draws, seed=seed, per_image=True
    )

    gen = torch.Generator().manual_seed(seed)
    expected = np.zeros(7)
    start = 0
    for b in sizes:
        for _ in range(draws):
            aug = normalize(augment_batch(raw[start : start + b], gen, 0.5, 0.4), MEAN, STD)
            with torch.no_grad():
                out = model(aug).double().numpy()
            for i in range(b):
                p = np.exp(logits[start + i].double().numpy())
                p /= p.sum()
                q = np.exp(out[i])
                q /= q.sum()
                expected[start + i] += 0.5 * sum(abs(p[c] - q[c]) for c in range(len(p))) / draws
        start += b
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)
    assert float(got.mean()) > 0.0


def test_augment_normalized_is_augment_batch_on_the_uint8_images():
    raw = (torch.rand(4, 3, 6, 6) * 255).to(torch.uint8)
    got = augment_normalized(normalize(raw, MEAN, STD), torch.Generator().manual_seed(3), 0.5, 0.4, MEAN, STD)
    want = normalize(augment_batch(raw, torch.Generator().manual_seed(3), 0.5, 0.4), MEAN, STD)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_total_variation_formula():
    a = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    b = torch.log(torch.tensor([[0.1, 0.2, 0.7]]))
    assert float(total_variation(a, b)[0]) == pytest.approx(0.6)
    assert float(total_variation(a, a)[0]) == 0.0


def test_registered_measure_uses_the_runs_augmentation_or_the_training_defaults():
    raw = _half_images([0, 255, 60], [255, 0, 200])
    x = normalize(raw, MEAN, STD)
    model = _LeftMinusRight()
    with torch.no_grad():
        logits = model(x)

    def ctx(augmentation):
        return MeasureContext(
            model=model,
            logits=logits,
            labels=torch.zeros(3, dtype=torch.long),
            batches=lambda: iter([(x, None)]),
            mean=MEAN,
            std=STD,
            augmentation=augmentation,
        )

    flipped = compute_measure("augmentation_consistency", ctx((1.0, 0.0)))
    expected = float(torch.tanh(logits[:, 1].double() / 2).abs().mean())
    assert list(flipped) == ["draws=1,flip_prob=1,jitter=0"]
    assert flipped["draws=1,flip_prob=1,jitter=0"] == pytest.approx(expected, rel=1e-5)
    trained_without = compute_measure("augmentation_consistency", ctx(None))
    assert list(trained_without) == ["draws=1,flip_prob=0.5,jitter=0.4"]  # TrainConfig's defaults
    again = compute_measure("augmentation_consistency", ctx(None))
    assert again == trained_without  # seeded
    assert math.isfinite(next(iter(again.values())))


def test_needs_mean_std_and_finite_logits():
    model = _LeftMinusRight()
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(MeasureError, match="needs ctx.mean and ctx.std"):
        compute_measure(
            "augmentation_consistency", MeasureContext(model=model, logits=torch.zeros(2, 2), batches=lambda: iter([x]))
        )
    with pytest.raises(MeasureError, match="non-finite logits"):
        augmentation_consistency(model, torch.full((2, 2), math.nan), [x], MEAN, STD, 0.5, 0.4)
