import copy

import pytest
import torch
from torch import nn

from camgap.errors import InputError
from camgap.measures.flatness import pacbayes_bounds, pacbayes_sigma
from camgap.measures.registry import MeasureContext, MeasureError, MeasureUndefined, compute_measure


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    x0 = sign * (0.2 + 0.8 * torch.rand(n, generator=g))
    x = torch.stack([x0, torch.randn(n, generator=g)], dim=1)
    y = (x0 > 0).long()
    return x, y


def _batches(x, y, bs=64):
    return lambda: iter([(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)])


def _linear(scale, w=((-1.0, 0.0), (1.0, 0.0)), b=(0.0, 0.0)):
    m = nn.Linear(2, 2)
    with torch.no_grad():
        m.weight.copy_(torch.tensor(w) * scale)
        m.bias.copy_(torch.tensor(b) * scale)
    return m


def test_larger_sigma_for_the_flatter_model_and_exact_scaling():
    # (4W) + (4 sigma) z == 4 (W + sigma z) exactly in floating point: same predictions, so the
    # model with 4x the weights tolerates exactly 4x the noise - it is flatter.
    x, _ = _data()
    w, b = ((-1.0, 0.5), (1.0, -0.25)), (0.125, -0.125)
    with torch.no_grad():
        y = _linear(1.0, w, b)(x).argmax(1)  # labels of the model itself: accuracy 1
    sharp = pacbayes_sigma(_linear(1.0, w, b), _batches(x, y), draws=3)
    flat = pacbayes_sigma(_linear(4.0, w, b), _batches(x, y), draws=3)
    assert sharp.clean == flat.clean == 1.0
    assert flat.sigma == pytest.approx(4 * sharp.sigma, rel=1e-12)
    assert flat.flatness < sharp.flatness
    assert abs(sharp.displacement - 0.1) <= 0.01 or len(sharp.evaluations) > 15
    assert 0.05 < sharp.sigma < 5
    # the magnitude-aware variant removes the scale (up to eps = 1e-3)
    mag_a = pacbayes_sigma(_linear(1.0, w, b), _batches(x, y), draws=3, magnitude_eps=1e-3)
    mag_b = pacbayes_sigma(_linear(4.0, w, b), _batches(x, y), draws=3, magnitude_eps=1e-3)
    assert mag_b.sigma == pytest.approx(mag_a.sigma, rel=0.05)


def test_deterministic_for_a_seed_and_weights_restored_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)
    )
    model.train()
    imgs = torch.randn(96, 1, 6, 6)
    model(imgs)  # update the running statistics once
    with torch.no_grad():
        model.eval()
        y = model(imgs).argmax(1)
        model.train()
    before = copy.deepcopy(model.state_dict())
    a = pacbayes_sigma(model, _batches(imgs, y, 32), draws=2, n_images=64, seed=5)
    b = pacbayes_sigma(model, _batches(imgs, y, 32), draws=2, n_images=64, seed=5)
    assert a.sigma == b.sigma and a.evaluations == b.evaluations
    assert a.n_images == 64
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training
    c = pacbayes_sigma(model, _batches(imgs, y, 32), draws=2, n_images=64, seed=6)
    assert c.evaluations != a.evaluations  # another seed, other noise


def test_loss_criterion_and_registry_long_form():
    x, y = _data()
    model = _linear(1.0)
    res = pacbayes_sigma(model, _batches(x, y), criterion="loss", draws=2)
    assert res.sigma > 0
    init = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    ctx = MeasureContext(
        model=model, logits=model(x).detach(), labels=y, batches=_batches(x, y), init_state=init, seed=0
    )
    out = compute_measure("pacbayes_flatness", ctx, draws=2)
    sigma = out["criterion=accuracy,form=sigma,target=0.1"]
    assert out["criterion=accuracy,form=flatness,target=0.1"] == pytest.approx(1 / sigma**2)
    # ||w||^2 = 2 and w0 = 0: orig and init bounds coincide
    assert out["criterion=accuracy,form=orig,target=0.1"] == pytest.approx(
        2 / (4 * sigma**2) + torch.log(torch.tensor(256 / sigma)).item() + 10, rel=1e-6
    )
    assert out["criterion=accuracy,form=init,target=0.1"] == pytest.approx(
        out["criterion=accuracy,form=orig,target=0.1"]
    )
    mag = compute_measure("pacbayes_mag_flatness", ctx, draws=2)
    assert {"criterion=accuracy,form=mag_init,target=0.1", "criterion=accuracy,form=mag_orig,target=0.1"} <= set(mag)
    assert set(pacbayes_bounds(model, 0.5, 100)) == {"orig"}


def test_failures_raise_measure_error():
    x, y = _data(64)
    model = _linear(1.0)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(MeasureError, match="non-finite"):
        pacbayes_sigma(model, _batches(x, y))
    # a constant classifier at chance: no noise level moves its accuracy by 0.1
    const = _linear(0.0)
    with pytest.raises(MeasureUndefined, match="never moves"):
        pacbayes_sigma(const, _batches(x, torch.arange(64) % 2), draws=1, max_steps=8)


class _Counter:
    """on_evaluate hook: records every noise level the search evaluates."""

    def __init__(self):
        self.sigmas: list[float] = []
        self.drops: list[float] = []

    def __call__(self, sigma: float, drop: float) -> None:
        self.sigmas.append(sigma)
        self.drops.append(drop)


def test_chance_level_zero_head_stops_at_the_sigma_cap():
    """A zero linear head perturbed by sigma * z predicts argmax(z x + z_b) at EVERY sigma (the
    scale cancels exactly for powers of 2), so the accuracy drop is the same at every noise level
    and never reaches the target: the search must stop at the cap and call the measure undefined."""
    x, _ = _data(64)
    y = torch.arange(64) % 2  # balanced labels: the zero head is at chance (0.5)
    hook = _Counter()
    with pytest.raises(
        MeasureUndefined,
        match=r"never moves by 0.1 for sigma up to the cap sigma_max=2 "
        r"\(clean accuracy 0.5; 4 noise levels evaluated\)",
    ):
        pacbayes_sigma(_linear(0.0), _batches(x, y), draws=1, sigma_max=2.0, on_evaluate=hook)
    # sigma0 = 1/4 for all-zero weights, doubled up to the cap and not beyond
    assert hook.sigmas == [0.25, 0.5, 1.0, 2.0]
    assert len(set(hook.drops)) == 1 and hook.drops[0] < 0.09
    # the default cap (2^12 sigma0) stops it after 13 noise levels; max_steps bounds the doublings
    hook = _Counter()
    with pytest.raises(MeasureUndefined, match="sigma_max=1.02e[+]03"):
        pacbayes_sigma(_linear(0.0), _batches(x, y), draws=1, on_evaluate=hook)
    assert len(hook.sigmas) == 13 and max(hook.sigmas) == 1024.0
    hook = _Counter()
    with pytest.raises(MeasureUndefined, match="within max_steps=3 doublings"):
        pacbayes_sigma(_linear(0.0), _batches(x, y), draws=1, max_steps=3, on_evaluate=hook)
    assert len(hook.sigmas) == 1 + 3
    # through the registry the undefined signal reaches the caller as a MeasureError subclass
    ctx = MeasureContext(model=_linear(0.0), labels=y, batches=_batches(x, y), seed=0)
    with pytest.raises(MeasureError, match="never moves"):
        compute_measure("pacbayes_flatness", ctx, draws=1, sigma_max=2.0)


def test_clean_accuracy_below_the_target_is_undefined_without_a_noisy_pass():
    x, _ = _data(64)
    y = torch.ones(64, dtype=torch.long)
    y[:3] = 0  # the zero head predicts class 0: accuracy 3/64
    hook = _Counter()
    with pytest.raises(MeasureUndefined, match="clean training accuracy 0.0469 is below the target drop 0.1"):
        pacbayes_sigma(_linear(0.0), _batches(x, y), on_evaluate=hook)
    assert hook.sigmas == []


def test_untrained_network_stops_within_the_iteration_cap():
    """An untrained (random-init) CNN on random labels: whatever its outcome, the search evaluates
    at most 1 + max_steps + depth noise levels."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    imgs = torch.randn(48, 1, 8, 8)
    labels = torch.randint(0, 3, (48,), generator=torch.Generator().manual_seed(1))
    hook = _Counter()
    try:
        res = pacbayes_sigma(model, _batches(imgs, labels, 16), draws=1, max_steps=6, depth=4, on_evaluate=hook)
        assert [s for s, _ in res.evaluations] == hook.sigmas
    except MeasureUndefined:
        pass
    assert 1 <= len(hook.sigmas) <= 1 + 6 + 4


def test_search_caps_are_validated():
    x, y = _data(32)
    with pytest.raises(InputError, match="need 0 < sigma0 <= sigma_max, got sigma0=4.0, sigma_max=2.0"):
        pacbayes_sigma(_linear(1.0), _batches(x, y), sigma0=4.0, sigma_max=2.0)
    with pytest.raises(InputError, match="max_steps >= 0"):
        pacbayes_sigma(_linear(1.0), _batches(x, y), max_steps=-1)
