"""Model registry, strict checkpoint loading, target layers."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from camgap.cam.layers import default_target_layer, get_layer
from camgap.checkpoints import CheckpointError, extract_state_dict, load_weights
from camgap.errors import InputError, UnknownNameError
from camgap.models import (
    MODELS,
    SmallResNet,
    create_model,
    describe_model,
    list_models,
    list_timm_models,
    load_checkpoint,
    model_group,
    register_model,
    timm_available,
)


def test_list_models():
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "small_resnet"} <= set(list_models())
    assert list_models() == sorted(list_models())


def test_resnet18_any_number_of_classes():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=7).eval()
    assert model.fc.out_features == 7
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7)
    # random weights (nothing downloaded): two builds differ
    other = create_model("resnet18", num_classes=7)
    assert not torch.equal(model.conv1.weight, other.conv1.weight)


@pytest.mark.parametrize(
    "name,block,depths,features",
    [
        ("resnet34", BasicBlock, (3, 4, 6, 3), 512),
        ("resnet50", Bottleneck, (3, 4, 6, 3), 2048),
        ("resnet101", Bottleneck, (3, 4, 23, 3), 2048),
    ],
)
def test_torchvision_resnets(name, block, depths, features):
    model = create_model(name, num_classes=5)
    assert model.fc.in_features == features and model.fc.out_features == 5
    assert tuple(len(getattr(model, f"layer{i}")) for i in range(1, 5)) == depths
    assert isinstance(model.layer4[0], block)


def test_torchvision_resnet_rejects_options():
    with pytest.raises(ValueError, match="no options"):
        create_model("resnet18", num_classes=3, width=8)


@pytest.mark.parametrize("width,blocks", [(8, (1, 1, 1, 1)), (4, (2, 1, 3, 1)), (16, [1, 2, 1, 2])])
def test_small_resnet_shapes(width, blocks):
    torch.manual_seed(0)
    model = create_model("small_resnet", num_classes=5, width=width, blocks=blocks).eval()
    assert isinstance(model, SmallResNet)
    assert tuple(len(getattr(model, f"layer{i}")) for i in range(1, 5)) == tuple(blocks)
    assert model.conv1.out_channels == width
    assert [getattr(model, f"layer{i}")[-1].conv2.out_channels for i in range(1, 5)] == [
        width,
        2 * width,
        4 * width,
        8 * width,
    ]
    assert model.fc.in_features == 8 * width and model.fc.out_features == 5
    model.double()  # the two sides sum in other orders: compared in float64, they agree on any CPU
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    acts = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: acts.setdefault("layer4", o))
    with torch.no_grad():
        out = model(x)
    handle.remove()
    assert out.shape == (2, 5)
    assert acts["layer4"].shape == (2, 8 * width, 4, 4)  # stride 8 overall
    # the head is global average pooling + one linear layer (what the closed-form CAM relies on)
    expected = model.fc(acts["layer4"].mean((2, 3)))
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    "size,strides,stem,side", [(32, (1, 2, 2, 2), 1, 4), (28, (1, 2, 2, 1), 1, 7), (56, (1, 2, 2, 1), 2, 7)]
)
def test_small_resnet_strides_set_the_layer4_map(size, strides, stem, side):
    model = create_model("small_resnet", num_classes=3, width=4, strides=strides, stem_stride=stem).eval()
    acts = {}
    model.layer4.register_forward_hook(lambda m, i, o: acts.update(layer4=o))
    model(torch.zeros(1, 3, size, size))
    assert acts["layer4"].shape == (1, 32, side, side)
    for bad in ({"strides": (1, 2, 2)}, {"strides": (1, 3, 2, 2)}, {"stem_stride": 3}):
        with pytest.raises(ValueError, match="strides"):
            create_model("small_resnet", num_classes=3, **bad)


def test_small_resnet_defaults_and_bad_blocks():
    model = create_model("small_resnet", num_classes=3)
    assert model.conv1.out_channels == 16 and all(len(getattr(model, f"layer{i}")) == 1 for i in range(1, 5))
    with pytest.raises(ValueError, match="4 stage depths"):
        create_model("small_resnet", num_classes=3, blocks=(1, 1, 1))


def test_unknown_arch():
    with pytest.raises(UnknownNameError, match="unknown architecture 'resnet9'; known: .*resnet18.*small_resnet"):
        create_model("resnet9", num_classes=3)


def test_every_torchvision_classifier_by_name():
    """Every torchvision classification model is an architecture, untrained (weights=None: nothing is
    downloaded) with the requested number of outputs; camgap's own names stay."""
    import torchvision

    names = set(list_models())
    assert set(torchvision.models.list_models(module=torchvision.models)) <= names
    assert {"small_resnet", "small_resnet10", "small_resnet18", "resnet18", "convnext_tiny", "vit_b_16"} <= names
    assert "fcn_resnet50" not in names  # segmentation models are not classifiers
    model = create_model("mobilenet_v3_small", num_classes=6).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 6)
    assert model_group("mobilenet_v3_small") == "torchvision" and model_group("small_resnet") == "camgap"
    with pytest.raises(InputError, match="mobilenet_v3_small takes no options"):
        create_model("mobilenet_v3_small", num_classes=6, width=3)


def test_model_registry_refuses_a_duplicate():
    with pytest.raises(InputError, match="architecture 'resnet18' is registered already"):
        register_model("resnet18")(lambda num_classes: nn.Linear(1, num_classes))


def test_timm_models_by_prefix():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = create_model("timm:resnet18", num_classes=5).eval()
    assert type(model).__module__.startswith("timm.")
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 5)
    assert "timm:resnet18" in MODELS and MODELS.resolve("timm:resnet18") == "timm:resnet18"
    assert model_group("timm:resnet18") == "timm"
    assert "timm:resnet18" in list_timm_models() and "timm:resnet18" not in list_models()
    name, layer = default_target_layer(model)  # a timm ResNet has the ResNet layout: its layer4
    assert name == "layer4" and layer is model.layer4
    with pytest.raises(UnknownNameError, match="unknown timm architecture 'resnet9000'"):
        create_model("timm:resnet9000", num_classes=5)


def test_timm_model_without_a_known_layer_says_so():
    pytest.importorskip("timm")
    model = create_model("timm:convnext_atto", num_classes=3)
    with pytest.raises(
        InputError,
        match=r"cannot choose a target layer for a ConvNeXt: .*--layer.*top-level "
        r"layers: stem, stages.*last feature stage is 'stages.3'",
    ):
        default_target_layer(model)


def test_timm_missing_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm":
            raise ImportError("no timm")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(InputError, match=r"need timm: pip install 'camgap\[timm\]'"):
        create_model("timm:resnet18", num_classes=3)
    assert list_timm_models() == [] and not timm_available()


@pytest.mark.parametrize(
    "name,layer,closed,reshape",
    [
        ("resnet50", "layer4", True, "none"),
        ("small_resnet10", "layer4", True, "none"),
        ("regnet_y_128gf", "trunk_output.block4", True, "none"),
        ("convnext_tiny", "features.7", False, "none"),
        ("vit_b_16", "encoder.layers.encoder_layer_11.ln_1", False, "tokens"),
        ("squeezenet1_0", None, None, None),
    ],
)
def test_describe_model(name, layer, closed, reshape):
    """The default target layer and whether the closed form applies, found by building the model with
    its parameters on the meta device (a 644M-parameter RegNet costs no memory)."""
    d = describe_model(name)
    assert d == {
        "name": name,
        "group": model_group(name),
        "target_layer": layer,
        "closed_form": closed,
        "reshape": reshape,
    }
    assert nn.Module.register_parameter.__name__ == "register_parameter"  # the patches are undone
    assert nn.Module.register_buffer.__name__ == "register_buffer"


# --- checkpoints ----------------------------------------------------------------------------


@pytest.fixture
def small():
    torch.manual_seed(0)
    return create_model("small_resnet", num_classes=4, width=4).eval()


def _same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("fmt", ["plain", "model_state_dict", "module_prefix", "state_dict_key", "module"])
def test_load_checkpoint_formats(tmp_path, small, fmt):
    with torch.no_grad():  # non-default buffers so running stats are checked too
        small.bn1.running_mean.uniform_()
    state = small.state_dict()
    obj = {
        "plain": state,
        "model_state_dict": {"model_state_dict": state, "optimizer": {"lr": 0.1}, "epoch": 3},
        "module_prefix": {"model_state_dict": {f"module.{k}": v for k, v in state.items()}},
        "state_dict_key": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
        "module": small,
    }[fmt]
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    unsafe = fmt == "module"  # a pickled module is only read when the caller vouches for the file
    if unsafe:
        with pytest.raises(CheckpointError, match="refused to load.*camgap.models.SmallResNet.*--unsafe-load"):
            load_checkpoint(path)
        with pytest.warns(UserWarning, match="weights_only=False"):
            loaded = load_checkpoint(path, unsafe=True)
        assert isinstance(loaded, SmallResNet)
        _same_weights(loaded, small)
    with pytest.warns(UserWarning) if unsafe else contextlib.nullcontext():
        loaded = load_checkpoint(path, "small_resnet", 4, width=4, unsafe=unsafe)
    assert isinstance(loaded, SmallResNet) and loaded is not small
    _same_weights(loaded, small)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), small(x), atol=0, rtol=0)


def test_checkpoint_arch_kwargs(tmp_path, small):
    path = tmp_path / "ckpt.pt"
    torch.save({"model_state_dict": small.state_dict(), "arch_kwargs": {"width": 4}}, path)
    _same_weights(load_checkpoint(path, "small_resnet", 4), small)


def test_state_dict_needs_arch(tmp_path, small):
    path = tmp_path / "ckpt.pt"
    torch.save(small.state_dict(), path)
    with pytest.raises(CheckpointError, match="architecture"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="number of classes"):
        load_checkpoint(path, "small_resnet")


def test_bad_checkpoint_files(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(missing, "small_resnet", 4)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as exc:
        load_checkpoint(garbage, "small_resnet", 4)
    assert str(garbage) in str(exc.value)
    odd = tmp_path / "odd.pt"
    torch.save([1, 2, 3], odd)
    with pytest.raises(CheckpointError, match="not a state_dict"):
        load_checkpoint(odd, "small_resnet", 4)
    assert issubclass(CheckpointError, ValueError)


def test_strict_missing_keys(tmp_path, small):
    state = small.state_dict()
    del state["fc.bias"]
    del state["layer2.0.conv1.weight"]
    path = tmp_path / "ckpt.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path, "small_resnet", 4, width=4)
    msg = str(exc.value)
    assert str(path) in msg and "missing keys [fc.bias, layer2.0.conv1.weight]" in msg
    assert "unexpected" not in msg and "shape" not in msg


def test_strict_unexpected_keys(small):
    state = small.state_dict() | {"extra.weight": torch.zeros(1), "head2.bias": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"unexpected keys \[extra.weight, head2.bias\]") as exc:
        load_weights(create_model("small_resnet", 4, width=4), state, "x.pt")
    assert "missing" not in str(exc.value)


def test_strict_shape_mismatch(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save(create_model("small_resnet", num_classes=10, width=4).state_dict(), path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path, "small_resnet", 4, width=4)
    msg = str(exc.value)
    assert "shape mismatch [fc.bias (10,) vs (4,), fc.weight (10, 32) vs (4, 32)]" in msg
    assert "missing" not in msg and "unexpected" not in msg


def test_wrong_architecture_lists_all_problems(small):
    """A wider, deeper model: unexpected keys (the extra block) and shape mismatches, each
    list cut to 5 names with the total."""
    other = create_model("small_resnet", num_classes=4, width=8, blocks=(2, 1, 1, 1)).state_dict()
    with pytest.raises(CheckpointError) as exc:
        load_weights(small, other)
    msg = str(exc.value)
    n_extra = sum(k.startswith("layer1.1.") for k in other)
    assert "unexpected keys [layer1.1." in msg and f"({n_extra} in all)" in msg
    assert "shape mismatch [" in msg and "conv1.weight (8, 3, 3, 3) vs (4, 3, 3, 3)" in msg
    # nothing was loaded
    fresh = create_model("small_resnet", num_classes=4, width=4)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError):
        load_weights(fresh, other)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_extract_state_dict_strips_only_the_prefix():
    state = {"module.a": torch.zeros(1), "b.module.c": torch.ones(1)}
    out = extract_state_dict({"model_state_dict": state})
    assert set(out) == {"a", "b.module.c"}


# --- target layers --------------------------------------------------------------------------


def test_default_target_layer(small):
    assert default_target_layer(small) == ("layer4", small.layer4)
    r18 = create_model("resnet18", num_classes=3)
    assert default_target_layer(r18) == ("layer4", r18.layer4)
    # an unknown family: an error asking for the layer, never the last Conv2d guessed
    seq = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 2),
    )
    for model in (seq, nn.Sequential(nn.Flatten(), nn.Linear(12, 2))):
        with pytest.raises(
            InputError,
            match=r"cannot choose a target layer for a Sequential.*--layer.*top-level "
            r"layers: 0, 1",
        ):
            default_target_layer(model)


def test_get_layer(small):
    assert get_layer(small, "layer4") is small.layer4
    assert get_layer(small, "layer4.0.conv2") is small.layer4[0].conv2
    assert get_layer(small, "fc") is small.fc
    with pytest.raises(ValueError, match="no layer 'layer5'.*top-level layers: conv1, bn1, relu, layer1"):
        get_layer(small, "layer5")


def test_a_builder_that_cannot_run_on_meta_is_built_for_real(monkeypatch):
    """timm's MCi and ViTamin compute with their own weights while they build: on the meta device
    that raised, and `camgap models timm:vit_base_mci_224` was a traceback."""
    import camgap.models as models

    def builder(num_classes: int) -> nn.Module:
        layer = nn.Linear(3, num_classes)
        layer.weight.data.mul_(1 + float(layer.weight.data.abs().max()))  # a meta tensor has no value: raises
        return layer

    monkeypatch.setattr(models, "model_group", lambda name: "timm")
    monkeypatch.setattr(models.MODELS, "get", lambda name: builder)
    model = models.create_model_skeleton("timm:fake", 4)
    assert model.weight.device.type == "cpu" and model.weight.shape == (4, 3)
