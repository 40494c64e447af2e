import copy
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from camgap.measures.norms import (
    ChannelAffine,
    conv_operator_norm,
    distance_from_init,
    fold_batchnorm,
    frobenius_measure,
    layer_spectral_norms,
    path_norm,
    spectral_norm_measure,
    weight_layers,
)
from camgap.measures.registry import MeasureContext, MeasureError, compute_measure
from camgap.models import create_model


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def _convnet(seed=0, **conv_kw):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, **conv_kw), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))


def _logits(n=60, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g)
    return logits, logits.argmax(1)


def _np(w):
    w = w.detach().double().numpy()
    return w.reshape(w.shape[0], -1)


def _gamma(logits, labels):
    z = logits.double().numpy()
    lab = labels.numpy()
    correct = z[np.arange(len(z)), lab]
    other = z.copy()
    other[np.arange(len(z)), lab] = -np.inf
    return np.percentile(correct - other.max(1), 10)


def _hand_spectral(mats, gamma, spec=None):
    spec = spec or [scipy.linalg.svdvals(w)[0] for w in mats]
    fro2 = [float((w**2).sum()) for w in mats]
    return (
        sum(2 * math.log(s) for s in spec) + math.log(sum(f / s**2 for f, s in zip(fro2, spec))) - 2 * math.log(gamma)
    )


def _explicit_conv_matrix(conv, hw):
    """The convolution (no bias) as a matrix, by convolving the basis vectors."""
    n = conv.in_channels * hw[0] * hw[1]
    basis = torch.eye(n, dtype=torch.float64).reshape(n, conv.in_channels, *hw)
    with torch.no_grad():
        cols = conv._conv_forward(basis, conv.weight.double(), None)
    return cols.reshape(n, -1).T.numpy()


def test_spectral_norm_linear_model_by_hand():
    model = _mlp()
    logits, labels = _logits()
    mats = [_np(model[0].weight), _np(model[2].weight)]
    expected = _hand_spectral(mats, _gamma(logits, labels))
    assert spectral_norm_measure(model, logits, labels) == pytest.approx(expected, rel=1e-10)
    out = compute_measure("spectral_norm", MeasureContext(model=model, logits=logits, labels=labels))
    assert out["conv=reshape,scale=log"] == pytest.approx(expected, rel=1e-10)
    assert out["conv=reshape,scale=raw"] == pytest.approx(math.exp(expected), rel=1e-9)


def test_spectral_norm_conv_reshaped_by_hand():
    model = _convnet(stride=2, padding=1)
    model(torch.zeros(1, 2, 5, 5))  # materialise the lazy linear: 3 x 3 x 3 = 27 inputs
    logits, labels = _logits(k=4)
    mats = [_np(model[0].weight), _np(model[3].weight)]
    assert mats[0].shape == (3, 18)
    expected = _hand_spectral(mats, _gamma(logits, labels))
    assert spectral_norm_measure(model, logits, labels) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(
    "hw,kw",
    [
        ((5, 5), dict(stride=2, padding=1)),
        ((6, 6), dict(stride=2, padding=1)),  # needs output_padding
        ((5, 4), dict(stride=1, padding=2, dilation=2)),
        ((5, 5), dict(stride=1, padding=1, padding_mode="circular")),
    ],
)
def test_conv_operator_norm_matches_explicit_matrix(hw, kw):
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 3, 3, **kw)
    expected = scipy.linalg.svdvals(_explicit_conv_matrix(conv, hw))[0]
    assert conv_operator_norm(conv, hw, method="dense") == pytest.approx(expected, rel=1e-12)
    assert conv_operator_norm(conv, hw, method="lanczos", tol=1e-12) == pytest.approx(expected, rel=1e-8)
    assert conv_operator_norm(conv, hw, method="power", iters=5000, tol=1e-14) == pytest.approx(expected, rel=1e-6)


def test_conv_operator_norm_lanczos_on_a_larger_input():
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    hw = (12, 10)  # 360 inputs: explicit matrix still cheap for the check
    expected = scipy.linalg.svdvals(_explicit_conv_matrix(conv, hw))[0]
    a = conv_operator_norm(conv, hw, method="lanczos", seed=1)
    assert a == pytest.approx(expected, rel=1e-7)
    assert conv_operator_norm(conv, hw, method="lanczos", seed=1) == a  # deterministic


def test_spectral_norm_operator_mode_by_hand():
    model = _convnet(stride=2, padding=1)
    x = torch.randn(1, 2, 6, 6)
    model(x)
    logits, labels = _logits(k=4)
    op = scipy.linalg.svdvals(_explicit_conv_matrix(model[0], (6, 6)))[0]
    mats = [_np(model[0].weight), _np(model[3].weight)]
    expected = _hand_spectral(mats, _gamma(logits, labels), spec=[op, scipy.linalg.svdvals(mats[1])[0]])
    got = spectral_norm_measure(model, logits, labels, conv="operator", example_input=x)
    assert got == pytest.approx(expected, rel=1e-6)


def test_pointwise_conv_operator_norm_equals_reshaped():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(2, 3, 7, 7)
    a = layer_spectral_norms(model, conv="reshape")
    b = layer_spectral_norms(model, conv="operator", example_input=x)
    assert b["0"] == pytest.approx(a["0"], rel=1e-7)
    assert b["3"] == a["3"]


def test_frobenius_measures_by_hand():
    model = _mlp()
    logits, labels = _logits()
    gamma = _gamma(logits, labels)
    fro2 = [float((_np(m.weight) ** 2).sum()) for m in (model[0], model[2])]
    assert frobenius_measure(model, logits, labels) == pytest.approx(math.log(fro2[0] * fro2[1] / gamma**2), rel=1e-10)
    assert frobenius_measure(model, logits, labels, form="sum") == pytest.approx(
        math.log(2 * math.sqrt(fro2[0] * fro2[1]) / gamma**2), rel=1e-10
    )


def test_distance_from_init_by_hand():
    model = _mlp()
    init = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        model[0].weight += 0.5  # 20 entries
        model[2].weight -= 2.0  # 12 entries
        model[2].bias += 100.0  # biases do not count
    assert distance_from_init(model, init) == pytest.approx(20 * 0.25 + 12 * 4.0, rel=1e-6)  # float32 weights
    out = compute_measure("distance_from_init", MeasureContext(model=model, init_state=init))
    assert out == {"form=squared": pytest.approx(53.0), "form=sqrt": pytest.approx(math.sqrt(53.0))}
    del init["2.weight"]
    with pytest.raises(MeasureError, match="2.weight"):
        distance_from_init(model, init)
    with pytest.raises(MeasureError, match="init"):
        compute_measure("distance_from_init", MeasureContext(model=model))


def test_nan_weights_and_negative_margin_raise():
    model = _mlp()
    logits, labels = _logits()
    init = copy.deepcopy(model.state_dict())
    with pytest.raises(MeasureError, match="gamma"):
        spectral_norm_measure(model, logits, (labels + 1) % 3)
    with pytest.raises(MeasureError, match="gamma"):
        frobenius_measure(model, logits, (labels + 1) % 3)
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    for fn in (
        lambda: spectral_norm_measure(model, logits, labels),
        lambda: frobenius_measure(model, logits, labels),
        lambda: path_norm(model, (5,)),
        lambda: distance_from_init(model, init),
    ):
        with pytest.raises(MeasureError, match="non-finite.*2.weight"):
            fn()


def test_path_norm_mlp_by_hand():
    model = _mlp()
    w1, b1 = model[0].weight.detach().double(), model[0].bias.detach().double()
    w2, b2 = model[2].weight.detach().double(), model[2].bias.detach().double()
    ones = torch.ones(5, dtype=torch.float64)
    expected = float((w2**2 @ (w1**2 @ ones + b1**2) + b2**2).sum())
    assert path_norm(model, (5,)) == pytest.approx(expected, rel=1e-12)
    assert path_norm(model, (5,), bias=False) == pytest.approx(float((w2**2 @ w1**2 @ ones).sum()), rel=1e-12)
    # the model itself is untouched
    assert torch.equal(model[0].weight.detach().double(), w1)


def _set_bn(bn, seed):
    g = torch.Generator().manual_seed(seed)
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(c, generator=g))
        bn.bias.copy_(torch.randn(c, generator=g))


def test_path_norm_folds_batchnorm_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 1, bias=False),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 3),
    )
    _set_bn(model[1], 1)
    bn = model[1]
    s = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w = model[0].weight.detach().double().view(2) * s
    b = bn.bias.detach().double() - s * bn.running_mean.double()
    lin_w, lin_b = model[5].weight.detach().double(), model[5].bias.detach().double()
    hidden = w**2 + b**2  # per channel, constant over space; average pooling keeps it
    expected = float((lin_w**2 @ hidden + lin_b**2).sum())
    assert path_norm(model, (1, 4, 4)) == pytest.approx(expected, rel=1e-10)
    folded = fold_batchnorm(model, torch.randn(1, 1, 4, 4))
    assert not any(isinstance(m, (nn.BatchNorm2d, ChannelAffine)) for m in folded.modules())


def test_batchnorm_not_fed_by_a_conv_becomes_affine():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 2, 1), nn.Flatten())
    _set_bn(model[0], 2)
    bn = model[0]
    s = float(bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps))
    t = float(bn.bias.detach()) - s * float(bn.running_mean)
    w, b = model[1].weight.detach().double().view(2), model[1].bias.detach().double()
    expected = float((w**2 * (s**2 + t**2) + b**2).sum())  # one pixel
    assert path_norm(model, (1, 1, 1)) == pytest.approx(expected, rel=1e-6)


def test_fold_batchnorm_preserves_resnet_function_and_counts_layers():
    model = create_model("small_resnet", num_classes=3, width=4)
    for i, m in enumerate(model.modules()):
        if isinstance(m, nn.BatchNorm2d):
            _set_bn(m, 10 + i)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    folded = fold_batchnorm(model, x[:1])
    assert not any(isinstance(m, (nn.BatchNorm2d, ChannelAffine)) for m in folded.modules())
    with torch.no_grad():
        # folding reassociates the arithmetic: compared with the model in float64, not float32
        torch.testing.assert_close(
            folded(x.double()), copy.deepcopy(model).double()(x.double()), rtol=1e-10, atol=1e-12
        )
    # stem + 4 blocks x 2 convs + 3 downsample convs + fc
    assert len(weight_layers(model)) == 13
    assert path_norm(model, (3, 16, 16)) > 0
    logits = model(x).detach()
    ctx = MeasureContext(
        model=model,
        logits=logits,
        labels=logits.argmax(1),
        batches=lambda: iter([(x, torch.zeros(2, dtype=torch.long))]),
    )
    assert "scale=log" in compute_measure("path_norm", ctx)
    a = compute_measure("spectral_norm", ctx)["conv=reshape,scale=log"]
    b = compute_measure("spectral_norm", ctx, conv="operator")["conv=operator,scale=log"]
    assert math.isfinite(a) and math.isfinite(b)


class _SharedOutput(nn.Module):
    """The conv output feeds the BN AND a skip connection: folding would change the skip."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        h = self.conv(x)
        return (self.bn(h) + h).flatten(1)


def test_fold_falls_back_to_affine_when_the_conv_output_is_shared():
    torch.manual_seed(0)
    model = _SharedOutput()
    _set_bn(model.bn, 4)
    model.eval()
    x = torch.randn(3, 1, 2, 2)
    folded = fold_batchnorm(model, x[:1])
    assert isinstance(folded.bn, ChannelAffine)
    with torch.no_grad():
        torch.testing.assert_close(
            folded(x.double()), copy.deepcopy(model).double()(x.double()), rtol=1e-10, atol=1e-12
        )
    bn = model.bn
    s = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    t = bn.bias.detach().double() - s * bn.running_mean.double()
    h2 = model.conv.weight.detach().double().view(2) ** 2 + model.conv.bias.detach().double() ** 2
    expected = float((s**2 * h2 + t**2 + h2).sum()) * 4  # 2 x 2 pixels
    assert path_norm(model, (1, 2, 2)) == pytest.approx(expected, rel=1e-10)


def test_raw_value_omitted_when_it_overflows():
    layers = []
    for _ in range(6):
        lin = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.eye(2) * 1e30)
        layers.append(lin)
    model = nn.Sequential(*layers)
    logits, labels = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    out = compute_measure("spectral_norm", MeasureContext(model=model, logits=logits, labels=labels))
    # log(prod (1e30)^2 * sum 2/1) with gamma = 1
    assert out == {"conv=reshape,scale=log": pytest.approx(6 * 2 * math.log(1e30) + math.log(12), rel=1e-6)}
    out = compute_measure("frobenius_norm", MeasureContext(model=model, logits=logits, labels=labels), percentile=50)
    assert "form=prod,percentile=50,scale=raw" not in out  # log ~ 833
    assert out["form=prod,percentile=50,scale=log"] == pytest.approx(6 * math.log(2e60), rel=1e-6)
    assert out["form=sum,percentile=50,scale=raw"] == pytest.approx(6 * 2e60, rel=1e-6)
