"""The default target layer per torchvision family is the one pytorch-grad-cam's README
documents ("Chosing the Target Layer"), found inside wrappers too, and the closed-form
gradient is used exactly where the head is global average pooling + one Linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from camgap.cam import create_cam, detect_linear_head, upsample_normalize
from camgap.cam.layers import default_target_layer
from camgap.errors import InputError

pgc = pytest.importorskip("pytorch_grad_cam")

# family -> (documented layer, dotted name, closed form applies)
DOCUMENTED = {
    "resnet18": (lambda m: m.layer4, "layer4", True),
    "resnext50_32x4d": (lambda m: m.layer4, "layer4", True),
    "wide_resnet50_2": (lambda m: m.layer4, "layer4", True),
    "vgg11": (lambda m: m.features[-1], "features.20", False),  # classifier: an MLP on 7x7 pooled features
    "densenet121": (lambda m: m.features[-1], "features.norm5", False),  # a ReLU after features
    "mobilenet_v2": (lambda m: m.features[-1], "features.18", True),  # Dropout + Linear
    "mobilenet_v3_small": (lambda m: m.features[-1], "features.12", False),  # an MLP head
    "efficientnet_b0": (lambda m: m.features[-1], "features.8", True),  # Dropout + Linear
    "convnext_tiny": (lambda m: m.features[-1], "features.7", False),  # LayerNorm before the Linear
    "regnet_y_400mf": (lambda m: m.trunk_output[-1], "trunk_output.block4", True),
    "mnasnet0_5": (lambda m: m.layers[-1], "layers.16", True),  # x.mean([2, 3]), then Dropout + Linear
}


def _build(name: str) -> nn.Module:
    """Structure only: on the meta device (no memory, no init time) where torchvision allows it."""
    if name.startswith("regnet"):  # its width schedule computes with real tensors
        return getattr(tvm, name)(weights=None, num_classes=5)
    with torch.device("meta"):
        return getattr(tvm, name)(weights=None, num_classes=5)


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_documented_layer_and_closed_form(name):
    model = _build(name)
    layer_of, dotted, closed = DOCUMENTED[name]
    got_name, got = default_target_layer(model)
    assert got is layer_of(model) and got_name == dotted
    assert (detect_linear_head(model, got) is not None) == closed
    # wrapped: nn.Sequential(model) and a DataParallel-style `module.` wrapper find the same layer
    seq = nn.Sequential(model)
    assert default_target_layer(seq) == (f"0.{dotted}", got)
    assert (detect_linear_head(seq, got) is not None) == closed
    dp = nn.DataParallel(model, device_ids=[]) if name == "resnet18" else None
    if dp is not None:
        assert default_target_layer(dp) == (f"module.{dotted}", got)
        assert detect_linear_head(dp, got) is model.fc


def test_layer_inside_a_longer_sequential_and_an_unknown_model():
    model = _build("mobilenet_v2")
    wrapped = nn.Sequential(nn.Identity(), model)  # e.g. a normalisation layer in front
    assert default_target_layer(wrapped) == ("1.features.18", model.features[-1])
    assert detect_linear_head(wrapped, model.features[-1]) is None  # not a plain wrapper: autograd

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3)
            self.head = nn.Linear(4, 2)

    with pytest.raises(InputError, match=r"a Custom: camgap knows .*pass .* --layer .*top-level layers: body, head"):
        default_target_layer(Custom())


def _oracle_gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with pgc.GradCAM(model=model, target_layers=[layer]) as cam:
        out = torch.from_numpy(cam(input_tensor=x, targets=None))
    for p in model.parameters():
        p.grad = None
    return out


@pytest.mark.parametrize("name", ["alexnet", "googlenet", "inception_v3", "shufflenet_v2_x0_5", "squeezenet1_0"])
def test_the_torchvision_families_without_a_default_say_how_to_choose(name):
    """The torchvision families camgap has no default layer for (pytorch-grad-cam documents none;
    test_cli_style checks that they are all): a refusal naming --layer and --reshape, no guess."""
    from camgap.models import create_model_skeleton

    model = create_model_skeleton(name, 3)
    with pytest.raises(InputError, match=rf"a target layer for a {type(model).__name__}: .*--layer.*--reshape"):
        default_target_layer(model)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5"])
def test_gradcam_on_the_default_layer_matches_pytorch_grad_cam(name):
    """mobilenet_v2, mnasnet0_5: closed form (GAP + Dropout + Linear); mobilenet_v3_small: autograd (MLP head)."""
    torch.manual_seed(0)
    model = getattr(tvm, name)(weights=None, num_classes=5).eval()
    with torch.no_grad():  # raw maps well above pytorch-grad-cam's 1e-7 in its min-max scaling
        [m for m in model.modules() if isinstance(m, nn.Linear)][-1].weight.mul_(1e4)
    x = torch.randn(2, 3, 64, 64)
    with create_cam("gradcam", model) as cam:
        assert cam.closed_form == DOCUMENTED[name][2]
        out = cam(x)
        layer = cam.target_layer
    heat = upsample_normalize(out.maps, x.shape[-2:])
    ref = _oracle_gradcam(model, layer, x)
    flat = heat.flatten(1)
    assert bool(((flat.amax(1) - flat.amin(1)) > 0.5).all()), "maps too flat to compare"
    assert (heat - ref).abs().max().item() < 1e-4
    if cam.closed_form:
        with create_cam("gradcam", model, closed_form=False) as auto:
            torch.testing.assert_close(auto(x).maps, out.maps, rtol=1e-4, atol=1e-6)


def test_densenet_maps_use_the_activation_before_its_relu():
    """DenseNet applies an in-place ReLU to features[-1]'s output: the CAM must still see the
    layer's own output (negative values included), for the gradient and the gradient-free path."""
    torch.manual_seed(0)
    model = tvm.densenet121(weights=None, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    acts = model.features(x).detach().requires_grad_(True)
    assert bool((acts < 0).any())
    logits = model.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(acts), 1), 1))
    pred = logits.argmax(1)
    (grads,) = torch.autograd.grad(logits.gather(1, pred[:, None]).sum(), acts)
    expected = torch.einsum("bc,bchw->bhw", grads.mean((2, 3)), acts.detach()).relu()
    with create_cam("gradcam", model) as cam:
        assert not cam.closed_form
        torch.testing.assert_close(cam(x).maps, expected, rtol=1e-4, atol=1e-6)
    with create_cam("cam", model, fc_layer="classifier") as cam:
        expected_cam = torch.einsum("bc,bchw->bhw", model.classifier.weight[pred].detach(), acts.detach()).relu()
        torch.testing.assert_close(cam(x).maps, expected_cam, rtol=1e-4, atol=1e-5)
