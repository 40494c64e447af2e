"""Vision transformers: token maps reshaped to [C, h, w] in the CAM's hook agree with
pytorch-grad-cam's `GradCAM` and its `reshape_transform` (timm and torchvision ViT, DeiT with a
distillation token, ViT with register tokens, BEiT, EVA, Swin v1 and v2), at the layer
pytorch-grad-cam's tutorial documents (Swin v2: the last block, see camgap.cam.layers), and
MaxViT's [C, h, w] stages; small randomly initialised models, nothing downloaded."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

from camgap.cam import create_cam, upsample_normalize
from camgap.cam.base import MapReshape, resolve_reshape
from camgap.cam.layers import default_target_layer, family_reshape, prefix_tokens
from camgap.errors import InputError
from camgap.measures.mapsize import MapTooSmallError, check_map_size
from camgap.models import create_model, fixed_input_size

pgc = pytest.importorskip("pytorch_grad_cam")
timm = pytest.importorskip("timm")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from timm.models.beit import Beit  # noqa: E402
from timm.models.deit import VisionTransformerDistilled  # noqa: E402
from timm.models.eva import Eva  # noqa: E402
from timm.models.swin_transformer import SwinTransformer  # noqa: E402
from timm.models.swin_transformer_v2 import SwinTransformerV2  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

TOL = 1e-4
K = 5
METHODS = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "layercam": pgc.LayerCAM}


SMALL_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": K}
SMALL_SWIN = {"img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": (1, 1), "num_heads": (1, 2), "window_size": 4}


def _vit(**kw) -> nn.Module:
    return VisionTransformer(**SMALL_VIT, **kw)


def _deit() -> nn.Module:
    return VisionTransformerDistilled(**SMALL_VIT)


def _swin(cls=SwinTransformer) -> nn.Module:
    return cls(**SMALL_SWIN, num_classes=K)


def _random_head(model: nn.Module) -> nn.Module:
    """torchvision initialises a ViT's head to zeros: constant logits, zero gradients, empty maps."""
    nn.init.normal_(model.heads.head.weight)
    return model


def _tv_vit() -> nn.Module:  # vit_b_16's class at a small size
    return _random_head(
        tvm.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=K
        )
    )


def _tv_swin(**v2) -> nn.Module:  # swin_t's class (v1 blocks; swin_v2_t's with `_tv_swin_v2`) at a small size
    return tvm.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[4, 4], num_classes=K, **v2
    )


def _tv_swin_v2() -> nn.Module:
    return _tv_swin(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2)


def _tv_maxvit() -> nn.Module:  # maxvit_t's class at a small size: 32 px -> a 4x4 map after two stages
    return tvm.MaxVit(
        input_size=(32, 32),
        stem_channels=8,
        partition_size=2,
        block_channels=[8, 16],
        block_layers=[1, 1],
        head_dim=4,
        stochastic_depth_prob=0.0,
        num_classes=K,
    )


# model, the layer pytorch-grad-cam documents, its dotted name, the map layout, prefix tokens
FAMILIES = {
    "timm_vit": (_vit, lambda m: m.blocks[-1].norm1, "blocks.1.norm1", "tokens", 1),
    "timm_vit_reg": (lambda: _vit(reg_tokens=2), lambda m: m.blocks[-1].norm1, "blocks.1.norm1", "tokens", 3),
    "timm_deit_distilled": (_deit, lambda m: m.blocks[-1].norm1, "blocks.1.norm1", "tokens", 2),
    "timm_swin": (_swin, lambda m: m.layers[-1].blocks[-1].norm1, "layers.1.blocks.0.norm1", "nhwc", 0),
    "tv_vit": (_tv_vit, lambda m: m.encoder.layers[-1].ln_1, "encoder.layers.encoder_layer_1.ln_1", "tokens", 1),
    "tv_swin": (_tv_swin, lambda m: m.features[-1][-1].norm1, "features.3.0.norm1", "nhwc", 0),
    # Swin v2 is post-norm: the last block's output, not its norm1 (camgap.cam.layers.BLOCK_VARIANTS)
    "tv_swin_v2": (_tv_swin_v2, lambda m: m.features[-1][-1], "features.3.0", "nhwc", 0),
    "timm_swinv2": (
        lambda: _swin(SwinTransformerV2),
        lambda m: m.layers[-1].blocks[-1],
        "layers.1.blocks.0",
        "nhwc",
        0,
    ),
    # head_init_scale: timm shrinks these heads by 1e-3, and gradients ~1e-4 would meet pytorch-grad-cam's
    # 1e-7 in Grad-CAM++'s denominator (a difference of the oracle's, not of the layer)
    "timm_beit": (
        lambda: Beit(**SMALL_VIT, head_init_scale=1.0),
        lambda m: m.blocks[-1].norm1,
        "blocks.1.norm1",
        "tokens",
        1,
    ),
    "timm_eva": (
        lambda: Eva(**SMALL_VIT, head_init_scale=1.0),
        lambda m: m.blocks[-1].norm1,
        "blocks.1.norm1",
        "tokens",
        1,
    ),
    "tv_maxvit": (_tv_maxvit, lambda m: m.blocks[-1], "blocks.1", "none", 0),
}


def _pgc_reshape(kind: str, prefix: int):
    """pytorch-grad-cam's tutorial transforms, written for these grids: drop the prefix tokens and
    lay the rest out as h x w (vit_reshape_transform), or bring NHWC channels first."""

    def tokens(t):
        side = int((t.shape[1] - prefix) ** 0.5)
        return t[:, prefix:, :].reshape(t.size(0), side, side, t.size(2)).transpose(2, 3).transpose(1, 2)

    def nhwc(t):
        return t.transpose(2, 3).transpose(1, 2)

    return {"tokens": tokens, "nhwc": nhwc, "none": None}[kind]


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return FAMILIES[name][0]().eval()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_documented_layer_and_layout(name):
    model = _model(name)
    _, layer_of, dotted, kind, prefix = FAMILIES[name]
    assert default_target_layer(model) == (dotted, layer_of(model))
    assert family_reshape(model) == kind
    if kind == "tokens":
        assert prefix_tokens(model) == prefix
    wrapped = nn.Sequential(nn.Identity(), model)  # a normalising wrapper finds the same layer and layout
    assert default_target_layer(wrapped) == (f"1.{dotted}", layer_of(model))
    assert family_reshape(wrapped) == kind


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", list(FAMILIES))
def test_matches_pytorch_grad_cam_with_its_reshape_transform(name, method):
    model = _model(name)
    _, layer_of, _, kind, prefix = FAMILIES[name]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with create_cam(method, model) as cam:
        assert not cam.closed_form and cam.reshape == MapReshape(
            kind, prefix if kind == "tokens" else 0, cam.reshape.layer
        )
        out = cam(x)
    assert out.maps.shape == (3, 4, 4)
    targets = [ClassifierOutputTarget(int(t)) for t in out.logits.argmax(1)]
    with METHODS[method](
        model=model, target_layers=[layer_of(model)], reshape_transform=_pgc_reshape(kind, prefix)
    ) as ref:
        want = torch.from_numpy(ref(input_tensor=x, targets=targets))
    heat = upsample_normalize(out.maps, 32)
    flat = heat.flatten(1)
    assert bool(((flat.amax(1) - flat.amin(1)) > 0.5).all()), "maps too flat to compare"
    assert (heat - want).abs().max().item() < TOL


def test_no_parameter_gradients_and_the_model_computes_as_before():
    """The hook gives the network the leaf map in its own layout (prefix tokens untouched): the
    logits equal a plain forward pass, and no parameter collects a gradient."""
    model = _model("timm_deit_distilled")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
    with create_cam("gradcam", model) as cam:
        out = cam(x)
    assert torch.allclose(out.logits, plain, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_reshape_flag_for_an_unknown_model_and_a_non_square_grid():
    class Tokens(nn.Module):  # camgap does not know it: 1 class token in `cls_token`, 16 patches
        def __init__(self, n: int):
            super().__init__()
            self.embed = nn.Linear(3, 8)
            self.mix = nn.Identity()
            self.head = nn.Linear(8, K)
            self.n = n

        def forward(self, x):
            t = self.mix(self.embed(x.flatten(2).transpose(1, 2)[:, : self.n]))
            return self.head(t.mean(1))

    model = Tokens(16).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(InputError, match="cannot choose a target layer for a Tokens.*--reshape tokens or nhwc"):
        default_target_layer(model)
    assert family_reshape(model) is None and resolve_reshape(model, "mix").kind == "none"
    with create_cam("gradcam", model, "mix", reshape="tokens") as cam:
        assert cam.reshape == MapReshape("tokens", 0, "mix")
        assert cam(x).maps.shape == (2, 4, 4)
    with pytest.raises(InputError, match=r"the target layer mix must output a \[B, C, h, w\] tensor, got \(2, 16, 8\)"):
        create_cam("gradcam", model, "mix")(x)
    with pytest.raises(
        InputError, match="the target layer mix outputs 15 tokens: after 0 prefix token.s. 15 do not form"
    ):
        create_cam("gradcam", Tokens(15).eval(), "mix", reshape="tokens")(x)
    with pytest.raises(InputError, match="reshape must be one of none, tokens, nhwc, got 'chw'"):
        create_cam("gradcam", model, "mix", reshape="chw")


def test_map_size_of_token_maps():
    """The map is the tokens' grid (Swin: h x w of [B, h, w, C], never (w, C)); under 3x3 it
    stays a MapTooSmallError."""
    swin = _model("timm_swin")
    name, layer = default_target_layer(swin)
    assert check_map_size(swin, layer, name, 32, reshape=resolve_reshape(swin, name)) == (4, 4)
    vit = _model("timm_deit_distilled")
    name, layer = default_target_layer(vit)
    assert check_map_size(vit, layer, name, 32, reshape=resolve_reshape(vit, name)) == (4, 4)
    small = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=K).eval()
    name, layer = default_target_layer(small)
    with pytest.raises(MapTooSmallError, match="the target layer blocks.0.norm1 gives a 2x2 map at input size 16"):
        check_map_size(small, layer, name, 16, reshape=resolve_reshape(small, name))


def test_torchvision_vit_b_16_and_swin_t_layers():
    """The real constructors, structure only (parameters on the meta device)."""
    from camgap.models import create_model_skeleton

    vit = create_model_skeleton("vit_b_16", 3)
    assert default_target_layer(vit) == ("encoder.layers.encoder_layer_11.ln_1", vit.encoder.layers[-1].ln_1)
    swin = create_model_skeleton("swin_t", 3)
    assert default_target_layer(swin) == ("features.7.1.norm1", swin.features[-1][-1].norm1)
    assert family_reshape(vit) == "tokens" and family_reshape(swin) == "nhwc"
    # Swin v2 shares the class but normalises after attention: its last block's output
    for name in ("swin_v2_t", "swin_v2_s", "swin_v2_b"):
        v2 = create_model_skeleton(name, 3)
        assert default_target_layer(v2) == ("features.7.1", v2.features[-1][-1]) and family_reshape(v2) == "nhwc"
    maxvit = create_model_skeleton("maxvit_t", 3)
    assert default_target_layer(maxvit) == ("blocks.3", maxvit.blocks[-1]) and family_reshape(maxvit) == "none"


def test_timm_transformers_described_from_their_skeleton():
    """`camgap models timm:<name>` builds the model on the meta device: timm's Swin v2 fills its
    window buffers from its parameters' device there (so the buffers are on it too)."""
    from camgap.models import describe_model

    got = {n: describe_model(f"timm:{n}") for n in ("swinv2_tiny_window8_256", "beit_base_patch16_224")}
    assert got["swinv2_tiny_window8_256"]["target_layer"] == "layers.3.blocks.1"
    assert got["beit_base_patch16_224"]["target_layer"] == "blocks.11.norm1"
    assert [d["reshape"] for d in got.values()] == ["nhwc", "tokens"]


def test_post_norm_eva_has_no_default_layer():
    """A post-norm EVA's norm1 outputs the attention branch alone and its class token may be all
    the head reads: camgap asks for the layer (and the layout) instead of choosing one."""
    model = Eva(**SMALL_VIT, use_post_norm=True, global_pool="token")
    with pytest.raises(InputError, match=r"cannot choose a target layer for a Eva: .*--layer.*--reshape tokens"):
        default_target_layer(model)
    assert family_reshape(model) is None
    assert default_target_layer(Eva(**SMALL_VIT))[0] == "blocks.1.norm1"  # the pre-norm class is still known


@pytest.mark.slow
def test_torchvision_vit_b_16_matches_pytorch_grad_cam():
    """vit_b_16 itself (86M parameters, 224 px: its only input size), one image."""
    from camgap.models import create_model

    torch.manual_seed(0)
    model = _random_head(create_model("vit_b_16", num_classes=3)).eval()
    x = torch.randn(1, 3, 224, 224)
    with create_cam("gradcam", model) as cam:
        out = cam(x)
    assert out.maps.shape == (1, 14, 14)
    targets = [ClassifierOutputTarget(int(out.logits.argmax()))]
    layer = model.encoder.layers[-1].ln_1
    with pgc.GradCAM(model=model, target_layers=[layer], reshape_transform=_pgc_reshape("tokens", 1)) as ref:
        want = torch.from_numpy(ref(input_tensor=x, targets=targets))
    heat = upsample_normalize(out.maps, 224)
    assert heat.max() - heat.min() > 0.5, "map too flat to compare"
    assert (heat - want).abs().max().item() < TOL


def test_no_closed_form_on_tokens():
    with pytest.raises(InputError, match=r"closed_form=True needs a \[B, C, h, w\] layer; tokens need a backward pass"):
        create_cam("gradcam", _model("timm_vit"), closed_form=True)


@pytest.mark.parametrize("method", list(METHODS))
def test_a_cnn_read_as_nhwc_has_no_closed_form_and_matches_pytorch_grad_cam(method):
    """`--reshape nhwc` on a GAP + linear CNN: the head's weights are the gradient of the map as
    the network pools it, not of the permuted one, so the CAM takes the backward pass (the closed
    form used to be chosen, and failed on the channel count or, where it matched, was wrong)."""
    torch.manual_seed(1)  # a seed whose Grad-CAM maps are not all zero
    model = create_model("small_resnet", num_classes=K, width=4).eval()  # layer4: [B, 32, 4, 4]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with create_cam(method, model) as cam:
        assert cam.closed_form  # the family's own layout keeps it
    with create_cam(method, model, reshape="nhwc") as cam:
        assert not cam.closed_form and cam.reshape.kind == "nhwc"
        out = cam(x)
    assert out.maps.shape == (3, 32, 4)  # [B, C, h, w] = [B, 32, 4, 4] read as [B, h, w, C]
    targets = [ClassifierOutputTarget(int(t)) for t in out.logits.argmax(1)]
    with METHODS[method](model=model, target_layers=[model.layer4], reshape_transform=_pgc_reshape("nhwc", 0)) as ref:
        want = torch.from_numpy(ref(input_tensor=x, targets=targets))
    heat = upsample_normalize(out.maps, 32)
    assert bool(((heat.flatten(1).amax(1) - heat.flatten(1).amin(1)) > 0.5).all()), "maps too flat to compare"
    assert (heat - want).abs().max().item() < TOL


def test_fixed_input_size_is_the_patch_embeddings_strict_size():
    assert fixed_input_size(_vit()) == (32, 32) and fixed_input_size(_swin()) == (32, 32)
    assert fixed_input_size(_vit(dynamic_img_size=True)) is None  # timm resamples its position embeddings
    assert fixed_input_size(create_model("small_resnet", num_classes=K)) is None
