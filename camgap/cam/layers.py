"""Where a CAM looks: the target layer of each model family, which families end in global
average pooling + one linear layer (where Grad-CAM's gradient has a closed form), and which
output tokens that the CAM reshapes to a [C, h, w] map (vision transformers).

The tables live here alone: `default_target_layer` reads `TARGET_LAYERS` (and `BLOCK_VARIANTS`),
`camgap.cam.base.detect_linear_head` reads `GAP_LINEAR_FAMILIES` and `family_reshape` reads
`TOKEN_LAYOUTS`. A family defined elsewhere (camgap's SmallResNet in `camgap.models`) joins them
with `add_family` where its class is defined, so this module imports no model code and nothing
imports in a circle. timm's transformers join once timm is imported (`_add_timm_families`): a
timm model cannot exist before, and timm stays optional.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

from torch import nn
from torchvision import models as tvm
from torchvision.models.swin_transformer import SwinTransformerBlockV2

from camgap.errors import InputError


class GapLinear(NamedTuple):
    """A family whose standard forward is `stage -> global average pool -> flatten -> head`."""

    cls: type[nn.Module]
    stage: str  # the nn.Sequential whose output is pooled
    pool: str | None  # an AdaptiveAvgPool2d(1) attribute; None: the forward pools (adaptive_avg_pool2d, mean)
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
    (tvm.MNASNet, "layers.-1"),
    # MaxViT's blocks output [B, C, h, w] maps (each attention layer partitions the grid and puts
    # it back): the last stage feeds the pooling like a convolutional family's
    (tvm.MaxVit, "blocks.-1"),
    # transformers: the last block's first norm (pytorch-grad-cam's tutorial "vision transformers":
    # the class token is computed in the last block, so its tokens after that block get no gradient)
    (tvm.VisionTransformer, "encoder.layers.-1.ln_1"),
    (tvm.SwinTransformer, "features.-1.-1.norm1"),
]

# Variants that share their family's class but not its block, so not its target layer: (family
# class, block class, the variant's target layer, or None where camgap asks for --layer).
# Swin v2 (torchvision's swin_v2_*, timm's swinv2_*) normalises after attention (post-norm:
# `x = x + norm1(attn(x))`), so its `norm1` outputs the attention branch alone, not the token map:
# a Grad-CAM there would miss everything the skip connection carries. Swin pools every token (no
# class token, the ViT reason for looking inside the last block), so a v2 map is the last block's
# output, the tokens the final norm and the average pooling read: the rule of the convolutional
# families above. A post-norm EVA (timm's EvaBlockPostNorm) may read its class token alone, so
# its last block's output tokens can get no gradient: no default there.
BLOCK_VARIANTS: list[tuple[type[nn.Module], type[nn.Module], str | None]] = [
    (tvm.SwinTransformer, SwinTransformerBlockV2, "features.-1.-1"),
]

# How a family's target layer lays out its map (anything not listed: [B, C, h, w]):
# "tokens": [B, prefix + h*w, C] (class/distillation/register tokens first, dropped);
# "nhwc": [B, h, w, C] (Swin's stages), permuted to [B, C, h, w].
RESHAPES = ("none", "tokens", "nhwc")
TOKEN_LAYOUTS: list[tuple[type[nn.Module], str]] = [
    (tvm.VisionTransformer, "tokens"),
    (tvm.SwinTransformer, "nhwc"),
]

# What `detect_linear_head` accepts (its docstring says why the other families are not here).
GAP_LINEAR_FAMILIES: list[GapLinear] = [
    GapLinear(tvm.ResNet, "layer4", "avgpool", "fc"),
    GapLinear(tvm.RegNet, "trunk_output", "avgpool", "fc"),
    GapLinear(tvm.MobileNetV2, "features", None, "classifier"),
    GapLinear(tvm.EfficientNet, "features", "avgpool", "classifier"),
    GapLinear(tvm.MNASNet, "layers", None, "classifier"),  # its forward pools with x.mean([2, 3])
]

FAMILY_NAMES = (
    "ResNet/ResNeXt/Wide-ResNet, camgap's small_resnet and other models with a ResNet `layer4` stage (layer4), "
    "VGG, DenseNet, MobileNet v2/v3, EfficientNet, ConvNeXt (features[-1]), RegNet (trunk_output[-1]), "
    "MNASNet (layers[-1]), MaxViT (blocks[-1]), "
    "vision transformers: torchvision ViT (encoder.layers[-1].ln_1), Swin (features[-1][-1].norm1), "
    "Swin v2 (features[-1][-1]), timm vit_*/deit_*/beit*/pre-norm eva* (blocks[-1].norm1), "
    "swin_* (layers[-1].blocks[-1].norm1), swinv2_* (layers[-1].blocks[-1])"
)


def add_family(
    cls: type[nn.Module],
    target: str,
    gap_linear: tuple[str, str | None, str] | None = None,
    reshape: str = "none",
    variant: tuple[type[nn.Module], str | None] | None = None,
) -> None:
    """Add a family to the tables: its `target` layer (a dotted name, "-1" for a container's last
    child, e.g. "blocks.-1.norm1"), when its forward is stage -> pool -> head the
    `(stage, pool, head)` attribute names, how its target layer lays out the map (`RESHAPES`) and
    a `(block class, target or None)` variant (`BLOCK_VARIANTS`). Adding the same class again
    changes nothing."""
    if reshape not in RESHAPES:
        raise InputError(f"reshape must be one of {', '.join(RESHAPES)}, got {reshape!r}")
    if any(c is cls for c, _ in TARGET_LAYERS):
        return
    TARGET_LAYERS.append((cls, target))
    if gap_linear is not None:
        GAP_LINEAR_FAMILIES.append(GapLinear(cls, *gap_linear))
    if reshape != "none":
        TOKEN_LAYOUTS.append((cls, reshape))
    if variant is not None:
        BLOCK_VARIANTS.append((cls, *variant))


# timm's transformers, in timm's names: (timm.models module, class, target layer, reshape, a block
# class whose models get no default: `BLOCK_VARIANTS`). ViT (a distilled DeiT and a ViT with
# register tokens are VisionTransformers), BEiT and EVA are pre-norm with prefix tokens, like
# torchvision's ViT; Swin v2 is post-norm, and so is EVA built of EvaBlockPostNorm.
TIMM_FAMILIES = (
    ("vision_transformer", "VisionTransformer", "blocks.-1.norm1", "tokens", None),
    ("beit", "Beit", "blocks.-1.norm1", "tokens", None),
    ("eva", "Eva", "blocks.-1.norm1", "tokens", "EvaBlockPostNorm"),
    ("swin_transformer", "SwinTransformer", "layers.-1.blocks.-1.norm1", "nhwc", None),
    ("swin_transformer_v2", "SwinTransformerV2", "layers.-1.blocks.-1", "nhwc", None),
)


def _add_timm_families() -> None:
    """timm's transformers (`TIMM_FAMILIES`) once timm is imported: a timm model cannot exist
    before, and timm stays optional."""
    for module_name, class_name, target, reshape, refused_block in TIMM_FAMILIES:
        module = sys.modules.get(f"timm.models.{module_name}")
        if module is not None:
            variant = (getattr(module, refused_block), None) if refused_block else None
            add_family(getattr(module, class_name), target, reshape=reshape, variant=variant)


def _resolve_path(model: nn.Module, where: str) -> str | None:
    """`where` with each "-1" replaced by the name of that container's last child; None when the
    model lacks a step of it (a variant with another layout)."""
    module, names = model, []
    for step in where.split("."):
        children = dict(module.named_children())
        if step == "-1":
            step = next(reversed(children), None) if children else None
        if step is None or step not in children:
            return None
        module = children[step]
        names.append(step)
    return ".".join(names)


def _variant_target(model: nn.Module, cls: type[nn.Module], where: str) -> str | None:
    """The family's `where`, or its variant's (`BLOCK_VARIANTS`) when the model is built of the
    variant's blocks."""
    for family, block, target in BLOCK_VARIANTS:
        if family is cls and any(isinstance(m, block) for m in model.modules()):
            return target
    return where


def _family_layer(model: nn.Module) -> str | None:
    """The dotted name of the family's target layer inside `model` itself, or None. A model of
    another class with a `layer4` stage has the ResNet layout (timm, CIFAR ResNets): `layer4`."""
    _add_timm_families()
    for cls, where in TARGET_LAYERS:
        if isinstance(model, cls):
            target = _variant_target(model, cls, where)
            return None if target is None else _resolve_path(model, target)
    if isinstance(getattr(model, "layer4", None), nn.Module):
        return "layer4"
    return None


def default_target_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """(dotted name, module) of the layer Grad-CAM uses when none is given.

    Known families (`TARGET_LAYERS`) are found directly, inside a DataParallel-style wrapper
    (`model.module`) or inside an `nn.Sequential` (e.g. `nn.Sequential(normalize, resnet)`:
    the last child of a known family). Any other model is an error: a wrong layer gives a
    plausible-looking but meaningless score, so camgap never guesses (e.g. the last Conv2d)."""
    found = _find_family(model, "")
    if found is None:
        tops = [n for n, _ in model.named_children()]
        raise InputError(
            f"cannot choose a target layer for a {type(model).__name__}: camgap knows {FAMILY_NAMES}; "
            f"pass the last convolutional block feeding the global pooling with --layer (target_layer= in Python; "
            f"for a layer that outputs tokens also --reshape tokens or nhwc), "
            f"top-level layers: {', '.join(tops) or '(none)'}{_feature_hint(model)}"
        )
    return found[0], get_layer(model, found[0])


def _feature_hint(model: nn.Module) -> str:
    """timm models name their last feature stage (`feature_info`): a candidate worth naming, not
    a guess camgap makes (for a vision transformer it outputs tokens, not a [B, C, h, w] map)."""
    info = getattr(model, "feature_info", None)
    try:
        last = info[-1]["module"] if info else None
    except (TypeError, KeyError, IndexError):
        return ""
    return f"; the model's own last feature stage is {last!r} (a candidate if it outputs [B, C, h, w])" if last else ""


def _find_family(model: nn.Module, prefix: str) -> tuple[str, nn.Module] | None:
    """(dotted name of the target layer, the family's model) inside `model` or its wrappers."""
    own = _family_layer(model)
    if own is not None:
        return prefix + own, model
    inner = getattr(model, "module", None)
    if isinstance(inner, nn.Module):
        return _find_family(inner, f"{prefix}module.")
    if isinstance(model, nn.Sequential):
        for child_name, child in reversed(list(model.named_children())):
            found = _find_family(child, f"{prefix}{child_name}.")
            if found is not None:
                return found
    return None


def family_reshape(model: nn.Module) -> str | None:
    """How the target layer of the model's family lays out its map (`RESHAPES`): "none" for a
    convolutional family, None for a model camgap does not know (--reshape names it there)."""
    found = _find_family(model, "")
    if found is None:
        return None
    return next((kind for cls, kind in TOKEN_LAYOUTS if isinstance(found[1], cls)), "none")


def prefix_tokens(model: nn.Module) -> int:
    """How many tokens precede the patch grid in the model's token maps: timm records it
    (`num_prefix_tokens`: class, distillation and register tokens), torchvision's ViT has one
    class token; any other model: 0 (its tokens are all patches)."""
    for m in model.modules():
        count = getattr(m, "num_prefix_tokens", None)
        if isinstance(count, int) and not isinstance(count, bool):
            return count
        if isinstance(m, tvm.VisionTransformer):
            return 1
    return 0


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """Resolve a dotted module path such as `layer4` or `layer4.1.conv2`."""
    modules = dict(model.named_modules())
    if name not in modules:
        candidates = [n for n in modules if n and "." not in n]
        raise InputError(f"model has no layer {name!r}; top-level layers: {', '.join(candidates)}")
    return modules[name]
