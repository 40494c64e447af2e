"""The one CAM base class: it owns the forward hook on the target layer, runs the single
forward pass, picks the closed form or autograd for the layer gradients, and cleans up.

Each method (`camgap.cam.methods`) is a short subclass that turns (activations,
gradients) into a map. Contract (ARCHITECTURE.md):

    with create_cam("gradcam", model) as cam:        # model.eval() first
        out = cam(images, targets=None)               # CamOutput(maps [B,h,w], logits [B,K])
        heat = upsample_normalize(out.maps, images.shape[-2:])

The model must be in eval mode: a CAM object never changes the model's mode, and it
refuses a model in training mode (batch norm would update its statistics and mix the
images of a batch). `targets=None` means the class predicted by that same forward pass.

Gradients: `torch.autograd.grad(sum of the selected logits, layer activation)` only. The
forward pass runs under `torch.no_grad()` up to the target layer; the hook swaps the
layer output for a detached leaf and switches grad mode on for the rest of the network,
so the graph spans only the head, parameters' `.grad` are never touched, and the graph
is freed before the call returns. A transformer's layer outputs tokens: `MapReshape` turns them
into a [B, C, h, w] map in the hook (the family's layout from `camgap.cam.layers`, or `reshape=`),
and the leaf is that map, so every method sees a map. When the layer feeds straight into global average
pooling and one `nn.Linear` (torchvision ResNet, RegNet, MobileNet v2, EfficientNet, MNASNet,
camgap SmallResNet; see `detect_linear_head`),
d logit_c / dA_k(i, j) = W[c, k] / (h * w) exactly, and no graph is built at all.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camgap.cam.layers import (
    GAP_LINEAR_FAMILIES,
    RESHAPES,
    default_target_layer,
    family_reshape,
    get_layer,
    prefix_tokens,
)
from camgap.errors import InputError, StateError
from camgap.registry import Registry

# Layer gradients as the methods see them: a tensor [B, C, h, w], or [B, C, 1, 1] when the
# gradient is constant over space (closed form); Smooth Grad-CAM++ passes its averaged
# moments (E[g], E[g^2], E[g^3]) as a tuple.
Gradients = Tensor | tuple[Tensor, Tensor, Tensor]


class CamOutput(NamedTuple):
    maps: Tensor  # [B, h, w] raw CAM after ReLU, at the target layer's resolution (float32)
    logits: Tensor  # [B, K] of the (clean) forward pass, detached


def upsample_normalize(maps: Tensor, size: int | Sequence[int]) -> Tensor:
    """[B,h,w] -> [B,H,W] in [0,1]: bilinear (align_corners=False), then per-image min-max.

    A constant map (e.g. all zeros after the ReLU) becomes all zeros, never NaN. The
    constancy test is done on the input map: bilinear weights can turn an exactly constant
    map into one with last-bit ripples that min-max would blow up to [0, 1]."""
    if maps.dim() != 3:
        raise InputError(f"maps must be [B, h, w], got shape {tuple(maps.shape)}")
    size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(size) != 2:
        raise InputError(f"size must be an int or (H, W), got {size}")
    flat_in = maps.flatten(1)
    constant = flat_in.amax(1) == flat_in.amin(1)
    up = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    flat = up.flatten(1)
    lo = flat.amin(1)
    span = flat.amax(1) - lo
    keep = (~constant) & (span > 0)
    scale = torch.where(keep, 1.0 / torch.where(keep, span, torch.ones_like(span)), torch.zeros_like(span))
    return up.sub_(lo[:, None, None]).mul_(scale[:, None, None])


def _spatial_sum(t: Tensor, hw: int) -> Tensor:
    """Sum over (h, w) of a tensor that is [B,C,h,w] or spatially constant [B,C,1,1]."""
    return t.flatten(2).sum(-1) * (hw // (t.shape[-2] * t.shape[-1]))


def _weighted_sum(weights: Tensor, acts: Tensor) -> Tensor:
    """sum_k weights_k * A_k -> [B,h,w]; weights [B,C] (channel weights) or [B,C,h,w]."""
    if weights.dim() == 2:
        return torch.einsum("bc,bchw->bhw", weights, acts)
    return (weights * acts).sum(1)


class MapReshape(NamedTuple):
    """How the target layer's output becomes the [B, C, h, w] map a CAM weighs (`RESHAPES`):
    "none" (it is one), "tokens" ([B, prefix + h*w, C]: the `prefix` class/distillation tokens
    dropped, the rest a square h x w grid) or "nhwc" ([B, h, w, C], permuted)."""

    kind: str
    prefix: int
    layer: str  # the target layer's name, for the errors

    def describe(self) -> str:
        if self.kind == "tokens":
            return f"tokens ({self.prefix} prefix token{'s' * (self.prefix != 1)} dropped)"
        return self.kind

    def grid(self, shape: Sequence[int]) -> tuple[int, int]:
        """(h, w) of the map for a layer output of `shape`; InputError naming the layer when the
        output does not have this layout."""
        want = {"none": "[B, C, h, w]", "tokens": "[B, N, C] tokens", "nhwc": "[B, h, w, C]"}[self.kind]
        if len(shape) != (3 if self.kind == "tokens" else 4):
            raise InputError(f"the target layer {self.layer} must output a {want} tensor, got {tuple(shape)}")
        if self.kind == "none":
            return int(shape[2]), int(shape[3])
        if self.kind == "nhwc":
            return int(shape[1]), int(shape[2])
        patches = int(shape[1]) - self.prefix
        side = math.isqrt(max(patches, 0))
        if patches < 1 or side * side != patches:
            raise InputError(
                f"the target layer {self.layer} outputs {shape[1]} tokens: after {self.prefix} prefix token(s) "
                f"{patches} do not form a square grid"
            )
        return side, side

    def to_map(self, out: Tensor) -> Tensor:
        """The layer output as [B, C, h, w] (a view where the layout allows)."""
        h, w = self.grid(out.shape)
        if self.kind == "tokens":
            return out[:, self.prefix :].transpose(1, 2).reshape(out.shape[0], out.shape[2], h, w)
        return out.permute(0, 3, 1, 2) if self.kind == "nhwc" else out

    def from_map(self, leaf: Tensor, out: Tensor) -> Tensor:
        """What the network gets in place of `out`: the leaf map in the layer's layout (a new
        tensor, so in-place ops downstream cannot hit the leaf); prefix tokens as they were."""
        if self.kind == "tokens":
            return torch.cat([out[:, : self.prefix].detach(), leaf.flatten(2).transpose(1, 2)], 1)
        return (leaf.permute(0, 2, 3, 1) if self.kind == "nhwc" else leaf).clone()


def resolve_reshape(model: nn.Module, layer_name: str, reshape: str | None = None) -> MapReshape:
    """`reshape` (None: the model family's, `camgap.cam.layers.family_reshape`) as a MapReshape."""
    kind = reshape or family_reshape(model) or "none"
    if kind not in RESHAPES:
        raise InputError(f"reshape must be one of {', '.join(RESHAPES)}, got {kind!r}")
    return MapReshape(kind, prefix_tokens(model) if kind == "tokens" else 0, layer_name)


def _resolve_module(model: nn.Module, layer: nn.Module | str | None, what: str) -> nn.Module | None:
    if layer is None:
        return None
    if isinstance(layer, str):
        return get_layer(model, layer)
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise InputError(f"the {what} {type(layer).__name__} is not a submodule of the model")
        return layer
    raise TypeError(f"{what} must be an nn.Module or a dotted layer name, got {type(layer).__name__}")


def _module_name(model: nn.Module, layer: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is layer)


def _hooked(*modules: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _unwrap_plain(model: nn.Module) -> nn.Module:
    """The model inside wrappers whose forward is exactly the inner model's: an nn.Sequential
    with one child, nn.DataParallel, DistributedDataParallel (hook-free)."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while not _hooked(model):
        if type(model) is nn.Sequential and len(model) == 1:
            model = model[0]
        elif type(model) in wrappers:
            model = model.module
        else:
            break
    return model


def _linear_of(head: nn.Module) -> nn.Linear | None:
    if type(head) is nn.Linear:
        return head
    if type(head) is nn.Sequential and [type(m) for m in head] == [nn.Dropout, nn.Linear]:
        return head[1]
    return None


def detect_linear_head(model: nn.Module, layer: nn.Module) -> nn.Linear | None:
    """The `nn.Linear` head when `layer` feeds straight into global average pooling and that
    one linear layer, else None (autograd then computes the gradients).

    Conservative: only the standard forward (not overridden by a subclass) of the families in
    `camgap.cam.layers.GAP_LINEAR_FAMILIES` (torchvision ResNet/ResNeXt/Wide-ResNet, RegNet, MobileNet v2,
    EfficientNet, MNASNet; camgap's SmallResNet), possibly inside a plain wrapper (`_unwrap_plain`);
    `layer` the pooled stage or its last block; the pool an AdaptiveAvgPool2d(1); the head an
    nn.Linear, possibly after an nn.Dropout; and no hooks that could change what they compute.
    VGG (an MLP head), DenseNet (a ReLU after the features), MobileNet v3 (an MLP head) and
    ConvNeXt (a LayerNorm before the Linear) are not of this form."""
    core = _unwrap_plain(model)
    cls = type(core)
    for fam in GAP_LINEAR_FAMILIES:
        if not isinstance(core, fam.cls):
            continue
        if any(getattr(cls, m, None) is not getattr(fam.cls, m, None) for m in ("forward", "_forward_impl")):
            return None
        stage = getattr(core, fam.stage, None)
        if type(stage) is not nn.Sequential or len(stage) == 0:
            return None
        if layer is not stage and (layer is not stage[-1] or _hooked(stage)):
            return None
        pool = getattr(core, fam.pool) if fam.pool else None
        if pool is not None and (type(pool) is not nn.AdaptiveAvgPool2d or pool.output_size not in (1, (1, 1), [1, 1])):
            return None
        head = getattr(core, fam.head, None)
        fc = _linear_of(head) if isinstance(head, nn.Module) else None
        if fc is None or _hooked(*([pool] if pool is not None else []), *head.modules()):
            return None
        return fc
    return None


class BaseCAM:
    """Owns the forward hook on the target layer; subclasses implement `_map`.

    Args:
        model: a classifier returning logits [B, K]; must be in eval mode when called.
        target_layer: module or dotted name; default `camgap.cam.layers.default_target_layer`
            (its dotted name is `target_layer_name`).
        closed_form: None = detect the GAP + Linear head (see `detect_linear_head`);
            True = force it (uses `model.fc`, which must be an nn.Linear; you vouch that the
            layer feeds straight into global average pooling and that head); False = autograd.
        reshape: how the layer's output becomes a [B, C, h, w] map: "none", "tokens" or "nhwc"
            (`MapReshape`); None = the model family's (`camgap.cam.layers.family_reshape`).

    The hook is only active during a call, so the model can be used normally meanwhile.
    Release it with `close()` or a `with` block.
    """

    name: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        *,
        closed_form: bool | None = None,
        reshape: str | None = None,
    ) -> None:
        self.model = model
        layer = _resolve_module(model, target_layer, "target layer")
        if layer is None:
            self.target_layer_name, self.target_layer = default_target_layer(model)
        else:
            self.target_layer_name: str = target_layer if isinstance(target_layer, str) else _module_name(model, layer)
            self.target_layer: nn.Module = layer
        self.reshape: MapReshape = resolve_reshape(model, self.target_layer_name, reshape)
        if closed_form and self.reshape.kind != "none":
            raise InputError(f"closed_form=True needs a [B, C, h, w] layer; {self.reshape.kind} need a backward pass")
        # the head's weights are the gradient of the pooled layer output as the network lays it
        # out; a map read in another layout (--reshape nhwc on a CNN) is not what the head pools
        self._head: nn.Linear | None = (
            detect_linear_head(model, self.target_layer) if self.reshape.kind == "none" else None
        )
        if closed_form:
            if self._head is None:
                fc = getattr(model, "fc", None)
                if type(fc) is not nn.Linear:
                    raise InputError("closed_form=True needs `model.fc` to be an nn.Linear head")
                self._head = fc
        elif closed_form is not None:
            self._head = None
        self.closed_form: bool = self.uses_gradients and self._head is not None
        self._armed = False
        self._grad_after_layer = False
        self._activation: Tensor | None = None
        ref = weakref.ref(self)

        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            cam = ref()
            return None if cam is None else cam._capture(output)

        self._handle: torch.utils.hooks.RemovableHandle | None = self.target_layer.register_forward_hook(hook)

    # ---- hook and forward --------------------------------------------------------------

    def _capture(self, output: Any) -> Tensor | None:
        if not self._armed:
            return None
        if self._activation is not None:
            raise StateError("the target layer ran more than once in one forward pass; pick another layer")
        if not isinstance(output, Tensor):
            raise InputError(
                f"the target layer {self.target_layer_name} must output a tensor, got {type(output).__name__}"
            )
        acts = self.reshape.to_map(output.detach())
        if not self._grad_after_layer:
            self._activation = acts
            # an in-place op downstream (DenseNet's ReLU after `features`) would change the kept
            # activation; a known GAP + Linear head has none
            return None if self._head is not None else output.clone()
        leaf = acts.contiguous().requires_grad_(True)
        self._activation = leaf
        torch.set_grad_enabled(True)  # the rest of the network builds a graph; no_grad's exit restores
        return self.reshape.from_map(leaf, output)

    def _forward(self, images: Tensor, grad: bool) -> tuple[Tensor, Tensor]:
        """One forward pass -> (layer activation, logits). With `grad`, the activation is a
        leaf and the logits carry a graph back to it (and only to it)."""
        if grad and torch.is_inference_mode_enabled():
            raise StateError("gradient-based CAM cannot run under torch.inference_mode(); use torch.no_grad()")
        self._activation, self._grad_after_layer, self._armed = None, grad, True
        try:
            with torch.no_grad():
                logits = self.model(images)
            acts = self._activation
        finally:
            self._armed, self._activation = False, None
        if acts is None:
            raise InputError("the target layer did not run during the forward pass")
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != images.shape[0]:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise InputError(f"the model must return logits [B, K], got {got}")
        return acts, logits

    def _autograd(self, acts: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        score = logits.gather(1, targets[:, None]).sum()
        if not score.requires_grad:
            raise InputError("the logits do not depend on the target layer")
        (grads,) = torch.autograd.grad(score, acts)
        return grads

    def _closed_form_gradients(self, acts: Tensor, targets: Tensor) -> Tensor:
        assert self._head is not None
        weight = self._head.weight
        if weight.shape[1] != acts.shape[1]:
            raise InputError(f"closed form: head takes {weight.shape[1]} features, layer has {acts.shape[1]} channels")
        hw = acts.shape[-2] * acts.shape[-1]
        return (weight.detach()[targets].float() / hw)[:, :, None, None]

    # ---- what subclasses may override ------------------------------------------------------

    def _clean_pass_needs_graph(self) -> bool:
        return self.uses_gradients and not self.closed_form

    def _gradients(self, images: Tensor, acts: Tensor, logits: Tensor, targets: Tensor) -> Gradients:
        if self.closed_form:
            return self._closed_form_gradients(acts, targets)
        return self._autograd(acts, logits, targets)

    def _map(self, acts: Tensor, grads: Gradients | None, targets: Tensor) -> Tensor:
        """acts [B,C,h,w] float32, detached -> map [B,h,w] before the ReLU."""
        raise NotImplementedError

    # ---- public --------------------------------------------------------------------------

    def __call__(self, images: Tensor, targets: Tensor | Sequence[int] | None = None) -> CamOutput:
        if self._handle is None:
            raise StateError(f"{type(self).__name__} is closed")
        if any(m.training for m in self.model.modules()):
            raise StateError("the model is in training mode: call model.eval() first (a CAM never changes it)")
        if images.dim() != 4:
            raise InputError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        acts, logits = self._forward(images, grad=self._clean_pass_needs_graph())
        targets = self._resolve_targets(targets, logits)
        grads = self._gradients(images, acts, logits, targets) if self.uses_gradients else None
        logits = logits.detach()
        with torch.no_grad():
            if isinstance(grads, Tensor):
                grads = grads.float()
            maps = self._map(acts.detach().float(), grads, targets).relu_()
        return CamOutput(maps, logits)

    @staticmethod
    def _resolve_targets(targets: Tensor | Sequence[int] | None, logits: Tensor) -> Tensor:
        if targets is None:
            return logits.detach().argmax(1)
        targets = torch.as_tensor(targets, device=logits.device).long().reshape(-1)
        if targets.shape[0] != logits.shape[0]:
            raise InputError(f"{targets.shape[0]} targets for a batch of {logits.shape[0]} images")
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]):
            raise InputError(f"targets must lie in [0, {logits.shape[1] - 1}]")
        return targets

    def close(self) -> None:
        """Remove the hook (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter shutdown anything may be gone
            pass

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(layer={self.target_layer_name!r}, closed_form={self.closed_form}, "
            f"reshape={self.reshape.kind!r})"
        )


_C = TypeVar("_C", bound=type[BaseCAM])
CAMS: Registry[type[BaseCAM]] = Registry("CAM method")


def register_cam(name: str, *aliases: str) -> Callable[[_C], _C]:
    """Class decorator: register a CAM method under `name` (its canonical name, kept in
    `cls.name` and in results) and any `aliases` (other spellings that resolve to it)."""

    def wrap(cls: _C) -> _C:
        CAMS.add(name, cls, *aliases)
        cls.name = CAMS.resolve(name)
        return cls

    return wrap


def list_cams() -> list[str]:
    return CAMS.names()


def cam_name(name: str) -> str:
    """The canonical name of a CAM method or alias: ``cam_name("GradCAMpp") == "gradcam++"``."""
    return CAMS.resolve(name)


def create_cam(name: str, model: nn.Module, target_layer: nn.Module | str | None = None, **kwargs: Any) -> BaseCAM:
    """Build a CAM method by registry name or alias (see `list_cams()`); extra keywords go to its class."""
    return CAMS.get(name)(model, target_layer, **kwargs)
