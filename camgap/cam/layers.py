"""Where a CAM looks: the target layer of each model family, and which families end in global
average pooling + one linear layer (where Grad-CAM's gradient has a closed form).

Both tables live here alone: `default_target_layer` reads `TARGET_LAYERS`, and
`camgap.cam.base.detect_linear_head` reads `GAP_LINEAR_FAMILIES`. A family defined elsewhere
(camgap's SmallResNet in `camgap.models`) joins them with `add_family` where its class is
defined, so this module imports no model code and nothing imports in a circle.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn
from torchvision import models as tvm

from camgap.errors import InputError


class GapLinear(NamedTuple):
    """A family whose standard forward is `stage -> global average pool -> flatten -> head`."""

    cls: type[nn.Module]
    stage: str  # the nn.Sequential whose output is pooled
    pool: str | None  # an AdaptiveAvgPool2d(1) attribute; None: the forward pools with F.adaptive_avg_pool2d
    head: str  # an nn.Linear, or nn.Sequential(nn.Dropout, nn.Linear) (dropout is the identity in eval mode)


# Where Grad-CAM looks in each torchvision family: the last block whose output feeds the global
# pooling, as pytorch-grad-cam's README ("Chosing the Target Layer") documents per family.
# ResNet keeps the whole `layer4` stage (same output as `layer4[-1]`). "features.-1" is the
# container's last child.
TARGET_LAYERS: list[tuple[type[nn.Module], str]] = [
    (tvm.ResNet, "layer4"),
    (tvm.VGG, "features.-1"),
    (tvm.DenseNet, "features.-1"),
    (tvm.MobileNetV2, "features.-1"),
    (tvm.MobileNetV3, "features.-1"),
    (tvm.EfficientNet, "features.-1"),
    (tvm.ConvNeXt, "features.-1"),
    (tvm.RegNet, "trunk_output.-1"),
]

# What `detect_linear_head` accepts (its docstring says why the other families are not here).
GAP_LINEAR_FAMILIES: list[GapLinear] = [
    GapLinear(tvm.ResNet, "layer4", "avgpool", "fc"),
    GapLinear(tvm.RegNet, "trunk_output", "avgpool", "fc"),
    GapLinear(tvm.MobileNetV2, "features", None, "classifier"),
    GapLinear(tvm.EfficientNet, "features", "avgpool", "classifier"),
]

FAMILY_NAMES = (
    "ResNet/ResNeXt/Wide-ResNet, camgap's small_resnet and other models with a ResNet `layer4` stage (layer4), "
    "VGG, DenseNet, MobileNet v2/v3, EfficientNet, ConvNeXt (features[-1]), RegNet (trunk_output[-1])"
)


def add_family(cls: type[nn.Module], target: str, gap_linear: tuple[str, str | None, str] | None = None) -> None:
    """Add a family to the tables: its `target` layer (a dotted name, "container.-1" for a
    container's last child) and, when its forward is stage -> pool -> head, the
    `(stage, pool, head)` attribute names. Adding the same class again changes nothing."""
    if any(c is cls for c, _ in TARGET_LAYERS):
        return
    TARGET_LAYERS.append((cls, target))
    if gap_linear is not None:
        GAP_LINEAR_FAMILIES.append(GapLinear(cls, *gap_linear))


def _family_layer(model: nn.Module) -> str | None:
    """The dotted name of the family's target layer inside `model` itself, or None. A model of
    another class with a `layer4` stage has the ResNet layout (timm, CIFAR ResNets): `layer4`."""
    for cls, where in TARGET_LAYERS:
        if isinstance(model, cls):
            container, _, last = where.partition(".")
            if not last:
                return container
            children = list(getattr(model, container).named_children())
            return f"{container}.{children[int(last)][0]}"
    if isinstance(getattr(model, "layer4", None), nn.Module):
        return "layer4"
    return None


def default_target_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """(dotted name, module) of the layer Grad-CAM uses when none is given.

    Known families (`TARGET_LAYERS`) are found directly, inside a DataParallel-style wrapper
    (`model.module`) or inside an `nn.Sequential` (e.g. `nn.Sequential(normalize, resnet)`:
    the last child of a known family). Any other model is an error: a wrong layer gives a
    plausible-looking but meaningless score, so camgap never guesses (e.g. the last Conv2d)."""
    name = _find_family_layer(model, "")
    if name is None:
        tops = [n for n, _ in model.named_children()]
        raise InputError(
            f"cannot choose a target layer for a {type(model).__name__}: camgap knows {FAMILY_NAMES}; "
            f"pass the last convolutional block feeding the global pooling with --layer (target_layer= in Python), "
            f"top-level layers: {', '.join(tops) or '(none)'}{_feature_hint(model)}"
        )
    return name, get_layer(model, name)


def _feature_hint(model: nn.Module) -> str:
    """timm models name their last feature stage (`feature_info`): a candidate worth naming, not
    a guess camgap makes (for a vision transformer it outputs tokens, not a [B, C, h, w] map)."""
    info = getattr(model, "feature_info", None)
    try:
        last = info[-1]["module"] if info else None
    except (TypeError, KeyError, IndexError):
        return ""
    return f"; the model's own last feature stage is {last!r} (a candidate if it outputs [B, C, h, w])" if last else ""


def _find_family_layer(model: nn.Module, prefix: str) -> str | None:
    own = _family_layer(model)
    if own is not None:
        return prefix + own
    inner = getattr(model, "module", None)
    if isinstance(inner, nn.Module):
        return _find_family_layer(inner, f"{prefix}module.")
    if isinstance(model, nn.Sequential):
        for child_name, child in reversed(list(model.named_children())):
            found = _find_family_layer(child, f"{prefix}{child_name}.")
            if found is not None:
                return found
    return None


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """Resolve a dotted module path such as `layer4` or `layer4.1.conv2`."""
    modules = dict(model.named_modules())
    if name not in modules:
        candidates = [n for n in modules if n and "." not in n]
        raise InputError(f"model has no layer {name!r}; top-level layers: {', '.join(candidates)}")
    return modules[name]
