"""Weight-norm generalization measures (paper eq. A1 and Jiang et al. 2020).

Which layers count
------------------
Every ``nn.Conv2d`` (the stem, the block convolutions AND the 1x1 downsample convolutions of
the shortcuts) and every ``nn.Linear`` (the classifier), in ``model.named_modules()`` order.
Biases are not counted. BatchNorm layers are not counted by the spectral / Frobenius /
distance measures: this is Jiang et al.'s convention (their networks' norm measures use the
reshaped convolution kernels only), so these measures are not invariant to the scale that
BatchNorm removes; :func:`path_norm` instead folds BatchNorm into the convolutions (see there).

Convolutions
------------
``conv="reshape"`` (default, Jiang et al.): the kernel ``[out, in, kh, kw]`` is reshaped to an
``out x (in*kh*kw)`` matrix. ``conv="operator"``: the exact operator norm of the convolution as
a linear map at the input size the layer really sees (with its stride, padding, dilation),
found by Lanczos iteration (ARPACK) on A^T A with ``conv2d`` and its adjoint
``conv_transpose2d`` (or exactly, by SVD of the explicit matrix, for small inputs); the input
sizes are captured with forward hooks on one example image. The Frobenius norms in the ratio term
are always those of the kernel.

Everything is computed in float64 and in log space: the product over the ~50-100 layers of a
ResNet overflows otherwise. All functions return log values unless their names say otherwise.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from camgap.errors import InputError
from camgap.measures.predictions import margin_percentile
from camgap.measures.registry import MeasureError

LAYER_TYPES = (nn.Conv2d, nn.Linear)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers the norm measures count: every Conv2d and Linear, in module order."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)]
    if not layers:
        raise MeasureError("the model has no Conv2d or Linear layer")
    return layers


def check_finite(model: nn.Module) -> None:
    """Raise :class:`MeasureError` naming the first parameter/buffer holding NaN or inf."""
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise MeasureError(f"non-finite values in {kind} {name!r}")


def _matrix(m: nn.Module) -> torch.Tensor:
    w = m.weight.detach().double()
    return w.reshape(w.shape[0], -1)


# ----------------------------------------------------------------------------- spectral


def _conv_adjoint(conv: nn.Conv2d, w: torch.Tensor, in_hw: tuple[int, int]):
    """Function y -> A^T y for the convolution x -> conv(x) (no bias) at input size in_hw."""
    if conv.padding_mode == "zeros" and not isinstance(conv.padding, str):

        def adj(y: torch.Tensor) -> torch.Tensor:
            out_pad = []
            for d in range(2):
                full = (
                    (y.shape[2 + d] - 1) * conv.stride[d]
                    - 2 * conv.padding[d]
                    + conv.dilation[d] * (w.shape[2 + d] - 1)
                    + 1
                )
                out_pad.append(in_hw[d] - full)
            return F.conv_transpose2d(y, w, None, conv.stride, conv.padding, tuple(out_pad), conv.groups, conv.dilation)

        return adj

    def adj_autograd(y: torch.Tensor) -> torch.Tensor:  # padding modes without a closed form
        with torch.enable_grad():
            x = torch.zeros(y.shape[0], conv.in_channels, *in_hw, dtype=y.dtype, device=y.device, requires_grad=True)
            (g,) = torch.autograd.grad(conv._conv_forward(x, w, None), x, y)
        return g

    return adj_autograd


@torch.no_grad()
def conv_operator_norm(
    conv: nn.Conv2d,
    input_hw: tuple[int, int],
    method: str = "auto",
    tol: float = 1e-8,
    iters: int = 1000,
    seed: int = 0,
) -> float:
    """Largest singular value of the convolution (without bias) as a linear map on inputs of
    spatial size ``input_hw`` (float64).

    ``method``: ``"dense"`` builds the matrix by convolving the basis vectors and takes its SVD
    (exact; for small inputs); ``"lanczos"`` runs ARPACK's Lanczos (``scipy.sparse.linalg.eigsh``)
    on A^T A with matrix-vector products by ``conv2d`` then its adjoint ``conv_transpose2d``
    (~100 products for 1e-8); ``"power"`` is plain power iteration on A^T A (slow when the top
    singular values are close: a per-step change below ``tol`` can still be far from the
    limit); ``"auto"``: dense up to 512 input entries, else lanczos. Deterministic for a seed."""
    w = conv.weight.detach().double()
    hw = tuple(int(v) for v in input_hw)
    shape = (1, conv.in_channels, *hw)
    n = conv.in_channels * hw[0] * hw[1]
    if method == "auto":
        method = "dense" if n <= 512 else "lanczos"
    if method == "dense":
        basis = torch.eye(n, dtype=torch.float64, device=w.device).reshape(n, *shape[1:])
        cols = conv._conv_forward(basis, w, None).reshape(n, -1)
        return float(torch.linalg.matrix_norm(cols, ord=2))
    adj = _conv_adjoint(conv, w, hw)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    if method == "lanczos":
        from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

        def matvec(v: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(shape)).to(w.device)
            return adj(conv._conv_forward(t, w, None)).reshape(-1).cpu().numpy()

        op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
        try:
            ev = eigsh(
                op, k=1, which="LA", v0=x0.reshape(-1).numpy(), tol=tol, maxiter=iters, return_eigenvectors=False
            )
        except ArpackNoConvergence as err:
            if len(err.eigenvalues) == 0:
                raise MeasureError(f"Lanczos did not converge for a conv at input {hw}") from err
            ev = err.eigenvalues
        return math.sqrt(max(float(np.max(ev)), 0.0))
    if method != "power":
        raise InputError(f"method must be 'auto', 'dense', 'lanczos' or 'power', got {method!r}")
    x = x0.to(w.device)
    x /= x.norm()
    s_prev = 0.0
    for _ in range(iters):
        y = conv._conv_forward(x, w, None)
        s = float(y.norm())  # ||A x|| with ||x|| = 1: increases to sigma_max
        x = adj(y)
        nx = float(x.norm())
        if nx == 0.0:
            return 0.0
        x /= nx
        if abs(s - s_prev) <= tol * s:
            break
        s_prev = s
    return float(conv._conv_forward(x, w, None).norm())


@torch.no_grad()
def conv_input_sizes(model: nn.Module, example_input: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Spatial input size of every Conv2d, from one forward pass of ``example_input[:1]``."""
    sizes: dict[str, tuple[int, int]] = {}
    hooks = []

    def record(name: str, inp: tuple) -> None:  # a hook must return None (else it replaces)
        sizes.setdefault(name, tuple(inp[0].shape[-2:]))

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_pre_hook(lambda mod, inp, name=name: record(name, inp)))
    was_training = model.training
    try:
        model.eval()
        dev = next(model.parameters()).device
        model(example_input[:1].to(dev))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return sizes


def layer_spectral_norms(
    model: nn.Module,
    conv: str = "reshape",
    example_input: torch.Tensor | None = None,
    seed: int = 0,
    method: str = "auto",
) -> dict[str, float]:
    """``{layer name: ||W||_2}`` for the counted layers (see the module docstring)."""
    if conv not in ("reshape", "operator"):
        raise InputError(f"conv must be 'reshape' or 'operator', got {conv!r}")
    sizes: dict[str, tuple[int, int]] = {}
    if conv == "operator":
        if example_input is None:
            raise InputError("conv='operator' needs an example_input to find the layers' input sizes")
        sizes = conv_input_sizes(model, example_input)
    out = {}
    for name, m in weight_layers(model):
        if isinstance(m, nn.Conv2d) and conv == "operator":
            if name not in sizes:
                raise MeasureError(f"conv layer {name!r} is not used in the forward pass")
            out[name] = conv_operator_norm(m, sizes[name], method=method, seed=seed)
        else:
            out[name] = float(torch.linalg.matrix_norm(_matrix(m), ord=2))
    return out


def spectral_norm_measure(
    model: nn.Module,
    logits: torch.Tensor,
    labels: torch.Tensor,
    conv: str = "reshape",
    example_input: torch.Tensor | None = None,
    percentile: float = 10.0,
    seed: int = 0,
) -> float:
    """log of paper eq. A1 / Jiang et al.'s "spec.norm":

        prod_i ||W_i||_2^2 * sum_j (||W_j||_F^2 / ||W_j||_2^2) / gamma^2,

    gamma = ``percentile``-th percentile of the training margins. (The paper's typeset A1 shows
    ||W_i||_2 unsquared in the product; its text and Jiang et al. square it, as here.)
    Raises :class:`MeasureError` on non-finite weights/logits, gamma <= 0 or a zero layer."""
    check_finite(model)
    gamma = margin_percentile(logits, labels, percentile)
    spec = layer_spectral_norms(model, conv=conv, example_input=example_input, seed=seed)
    log_prod, ratio = 0.0, 0.0
    for name, m in weight_layers(model):
        s = spec[name]
        if not s > 0:
            raise MeasureError(f"layer {name!r} has zero weights")
        fro2 = float(_matrix(m).square().sum())
        log_prod += 2.0 * math.log(s)
        ratio += fro2 / s**2
    return log_prod + math.log(ratio) - 2.0 * math.log(gamma)


# ----------------------------------------------------------------------------- Frobenius


def frobenius_measure(
    model: nn.Module, logits: torch.Tensor, labels: torch.Tensor, form: str = "prod", percentile: float = 10.0
) -> float:
    """Margin-normalised Frobenius norm, as a log:

    ``form="prod"``: log( prod_i ||W_i||_F^2 / gamma^2 )   (Jiang et al. "prod.of.fro")
    ``form="sum"``:  log( d * (prod_i ||W_i||_F^2)^(1/d) / gamma^2 )   ("sum.of.fro", the
    product's scale-balanced form, d = number of counted layers)."""
    check_finite(model)
    gamma = margin_percentile(logits, labels, percentile)
    logs = []
    for name, m in weight_layers(model):
        fro2 = float(_matrix(m).square().sum())
        if not fro2 > 0:
            raise MeasureError(f"layer {name!r} has zero weights")
        logs.append(math.log(fro2))
    d = len(logs)
    if form == "prod":
        return sum(logs) - 2.0 * math.log(gamma)
    if form == "sum":
        return math.log(d) + sum(logs) / d - 2.0 * math.log(gamma)
    raise InputError(f"form must be 'prod' or 'sum', got {form!r}")


def distance_from_init(model: nn.Module, init_state: Mapping[str, torch.Tensor]) -> float:
    """sum_i ||W_i - W_i^0||_F^2 over the counted layers' weights (Jiang et al. "dist.init"
    is its square root). ``init_state`` is the model's ``state_dict`` at initialisation."""
    check_finite(model)
    total = 0.0
    for name, m in weight_layers(model):
        key = f"{name}.weight" if name else "weight"
        if key not in init_state:
            raise MeasureError(f"initial weights lack {key!r}")
        w0 = init_state[key]
        if tuple(w0.shape) != tuple(m.weight.shape):
            raise MeasureError(f"initial {key!r} has shape {tuple(w0.shape)}, model has {tuple(m.weight.shape)}")
        if not torch.isfinite(w0).all():
            raise MeasureError(f"non-finite initial weights in {key!r}")
        diff = m.weight.detach().double() - w0.detach().to(m.weight.device).double()
        total += float(diff.square().sum())
    return total


# ----------------------------------------------------------------------------- path norm


class ChannelAffine(nn.Module):
    """y = x * weight[c] + bias[c] along dim 1: an eval-mode BatchNorm as an explicit affine."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(scale.clone())
        self.bias = nn.Parameter(shift.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


def _bn_affine(name: str, bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        raise MeasureError(f"BatchNorm {name!r} has no running statistics: not an affine map in eval")
    scale = 1.0 / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    mean = bn.running_mean.detach().double()
    if bn.affine:
        scale = bn.weight.detach().double() * scale
        return scale, bn.bias.detach().double() - scale * mean
    return scale, -scale * mean


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example_input: torch.Tensor, fold: bool = True) -> nn.Module:
    """A float64, eval-mode copy of ``model`` computing the same function without BatchNorm.

    A BatchNorm whose input is directly the output of a Conv2d/Linear (found by tensor
    identity in hooked forward pass on ``example_input``; both modules called once) is folded
    into it: W' = s * W, b' = s * (b - mean) + beta, s = gamma / sqrt(var + eps). Any other
    BatchNorm becomes a :class:`ChannelAffine` (scale s, shift beta - s * mean). The copy is
    checked to reproduce the model's output on ``example_input``; if it does not (a convolution
    output also used elsewhere), folding is abandoned for the ChannelAffine form everywhere.
    ``fold=False`` asks for the ChannelAffine form directly."""
    m = copy.deepcopy(model).double().eval()
    dev = next(m.parameters()).device
    x = example_input.detach().to(dev, torch.float64)
    produced: list[tuple[str, torch.Tensor]] = []
    consumed: list[tuple[str, torch.Tensor]] = []
    calls: dict[str, int] = {}
    hooks = []

    def on_layer(name: str, out: torch.Tensor) -> None:  # hooks must return None
        produced.append((name, out))
        calls[name] = calls.get(name, 0) + 1

    def on_bn(name: str, inp: tuple) -> None:
        consumed.append((name, inp[0]))
        calls[name] = calls.get(name, 0) + 1

    for name, mod in m.named_modules():
        if isinstance(mod, LAYER_TYPES):
            hooks.append(mod.register_forward_hook(lambda _m, _i, out, name=name: on_layer(name, out)))
        elif isinstance(mod, _BatchNorm):
            hooks.append(mod.register_forward_hook(lambda _m, inp, _o, name=name: on_bn(name, inp)))
    try:
        reference = m(x).clone()
    finally:
        for h in hooks:
            h.remove()
    bns = {name: mod for name, mod in m.named_modules() if isinstance(mod, _BatchNorm)}
    pairs: dict[str, str] = {}
    if fold:
        for bn_name, inp in consumed:
            for conv_name, out in produced:
                if out is inp and calls[conv_name] == 1 and calls[bn_name] == 1:
                    pairs[bn_name] = conv_name
    original = copy.deepcopy(m) if pairs else None
    for bn_name, bn in bns.items():
        scale, shift = _bn_affine(bn_name, bn)
        if bn_name in pairs:
            layer = m.get_submodule(pairs[bn_name])
            w = layer.weight
            if w.shape[0] != scale.numel():
                raise MeasureError(f"cannot fold {bn_name!r} into {pairs[bn_name]!r}: channel mismatch")
            b = layer.bias if layer.bias is not None else torch.zeros_like(scale)
            layer.weight = nn.Parameter(w * scale.view([-1] + [1] * (w.dim() - 1)))
            layer.bias = nn.Parameter(scale * b + shift)
            _set_module(m, bn_name, nn.Identity())
        else:
            _set_module(m, bn_name, ChannelAffine(scale, shift))
    if pairs:
        out = m(x)
        tol = 1e-6 * max(1.0, float(reference.abs().max()))
        if out.shape != reference.shape or float((out - reference).abs().max()) > tol:
            return fold_batchnorm(original, x, fold=False)
    return m


@torch.no_grad()
def path_norm(model: nn.Module, input_shape: tuple[int, ...], bias: bool = True, seed: int = 0) -> float:
    """Jiang et al. 2020 "path.norm": sum_k f_{w^2}(1)[k], the sum of the outputs of the
    network whose parameters are all squared, on an all-ones input of ``input_shape``
    (``(C, H, W)``), in eval mode and float64.

    BatchNorm: the eval-mode network is first rewritten without BatchNorm, by folding each BN
    into the convolution that feeds it (:func:`fold_batchnorm`), so the path norm is that of the
    BN-free network computing the same function: the squared folded weights are
    (gamma/sqrt(var+eps))^2 * W^2 and the squared folded bias (beta - s*mean + s*b)^2. (A BN not
    fed directly by a conv becomes a per-channel affine whose scale and shift are squared.)
    Biases count as paths from a constant input, squared like weights; ``bias=False`` drops them.
    Parameter-free operations (ReLU, max/average pooling, residual additions) are applied as
    they are to the non-negative squared-network activations (ReLU is then the identity).
    Returns the raw value (not a log)."""
    check_finite(model)
    g = torch.Generator().manual_seed(seed)
    probe = torch.randn(1, *input_shape, generator=g, dtype=torch.float64)
    net = fold_batchnorm(model, probe)
    for name, p in net.named_parameters():
        if not bias and name.rsplit(".", 1)[-1] == "bias":
            p.zero_()
        else:
            p.square_()
    dev = next(net.parameters()).device
    value = float(net(torch.ones(1, *input_shape, dtype=torch.float64, device=dev)).sum())
    if not math.isfinite(value):
        raise MeasureError(f"path norm is not finite ({value})")
    return value
