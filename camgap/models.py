"""Architecture registry: string names -> classifiers, and the model a checkpoint holds.

`create_model("resnet18", num_classes=20)` builds a torchvision ResNet;
`create_model("small_resnet", num_classes=10, width=16, blocks=(1, 1, 1, 1))`
builds a CIFAR-style ResNet that trains in seconds on a CPU. `describe_model` is what
`camgap models` shows; where Grad-CAM looks in each family is `camgap.cam.layers`.

`load_checkpoint` reads a file with `camgap.checkpoints.read_checkpoint` (weights only unless
`unsafe=True`) and loads its state_dict strictly into the architecture it names.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.resnet import BasicBlock

from camgap.cam.base import detect_linear_head
from camgap.cam.layers import add_family, default_target_layer, family_reshape
from camgap.checkpoints import CheckpointError, checkpoint_record, extract_state_dict, load_weights, read_checkpoint
from camgap.errors import CamgapError, InputError, UnknownNameError
from camgap.options import integer, is_integer
from camgap.registry import Registry

TIMM_PREFIX = "timm:"


class _ModelRegistry(Registry[Callable[..., nn.Module]]):
    """camgap's and torchvision's architectures by name, plus timm's as ``timm:<name>`` (resolved
    on demand when timm is installed: it has over a thousand, so they are not registered one by one)."""

    def resolve(self, name: str) -> str:
        if str(name).startswith(TIMM_PREFIX):
            timm = _timm()
            inner = str(name)[len(TIMM_PREFIX) :]
            if not timm.is_model(inner):
                raise UnknownNameError(
                    f"unknown timm architecture {inner!r} (see `camgap models` or timm.list_models())"
                )
            return TIMM_PREFIX + inner
        return super().resolve(name)

    def get(self, name: str) -> Callable[..., nn.Module]:
        key = self.resolve(name)
        return _timm_builder(key[len(TIMM_PREFIX) :]) if key.startswith(TIMM_PREFIX) else super().get(key)


MODELS = _ModelRegistry("architecture")


def register_model(name: str, *aliases: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder ``fn(num_classes, **options) -> nn.Module`` under `name`."""
    return MODELS.register(name, *aliases)


def list_models() -> list[str]:
    """camgap's and torchvision's architecture names (timm's: `list_timm_models`)."""
    return MODELS.names()


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a model by registry name (untrained: nothing is downloaded). Extra keyword
    arguments go to the builder; ``timm:<name>`` builds a timm model."""
    return MODELS.get(name)(num_classes=num_classes, **kwargs)


def _timm():
    try:
        import timm
    except ImportError:
        raise InputError("timm architectures (timm:<name>) need timm: pip install 'camgap[timm]'") from None
    return timm


def timm_available() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def list_timm_models() -> list[str]:
    """Every timm architecture as ``timm:<name>``; [] when timm is not installed."""
    return [TIMM_PREFIX + n for n in _timm().list_models()] if timm_available() else []


def _timm_builder(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, **kwargs) -> nn.Module:
        return _timm().create_model(name, pretrained=False, num_classes=num_classes, **kwargs)

    return build


def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    """A torchvision classification model, untrained (``weights=None``) with `num_classes` outputs."""

    def build(num_classes: int, **kwargs) -> nn.Module:
        if kwargs:
            raise InputError(f"{name} takes no options, got {sorted(kwargs)}")
        return tvm.get_model(name, weights=None, num_classes=num_classes)

    return build


TORCHVISION_MODELS: tuple[str, ...] = tuple(tvm.list_models(module=tvm))
for _name in TORCHVISION_MODELS:
    register_model(_name)(_torchvision_builder(_name))


SMALL_RESNET_MAX_WIDTH = 4096  # stage widths w..8w: 4096 already means 32768 channels in layer4
SMALL_RESNET_MAX_BLOCKS = 64  # BasicBlocks per stage (the deepest ImageNet ResNet has 36 in one)


def check_small_resnet_options(width: object, blocks: object, strides: object, stem_stride: object) -> None:
    """InputError naming the option and what is allowed, before any layer is built."""
    integer("width", width, 1, SMALL_RESNET_MAX_WIDTH)
    if (
        not isinstance(blocks, Sequence)
        or len(blocks) != 4
        or not all(is_integer(b) and 1 <= b <= SMALL_RESNET_MAX_BLOCKS for b in blocks)
    ):
        raise InputError(
            f"blocks must list 4 stage depths, each an integer from 1 to {SMALL_RESNET_MAX_BLOCKS}, got {blocks!r}"
        )
    if (
        not isinstance(strides, Sequence)
        or len(strides) != 4
        or not all(is_integer(s) and s in (1, 2) for s in strides)
        or not is_integer(stem_stride)
        or stem_stride not in (1, 2, 4)
    ):
        raise InputError(
            f"strides must list 4 stage strides of 1 or 2 and stem_stride be 1, 2 or 4, got "
            f"strides={strides!r}, stem_stride={stem_stride!r}"
        )


class SmallResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, four BasicBlock stages (width, 2w, 4w, 8w),
    global average pooling and one linear layer, like torchvision's ResNet head,
    so Grad-CAM at `layer4` has the closed form of the paper's models.

    `strides` are the four stages' strides and `stem_stride` the stem's: their product is the
    `layer4` map's downsampling, e.g. 4 (strides 1, 2, 2, 1) gives a 28 px input the 7x7 map
    of the paper's ResNets at 224 px."""

    def __init__(
        self,
        num_classes: int,
        width: int = 16,
        blocks: Sequence[int] = (1, 1, 1, 1),
        strides: Sequence[int] = (1, 2, 2, 2),
        stem_stride: int = 1,
    ):
        super().__init__()
        check_small_resnet_options(width, blocks, strides, stem_stride)
        self.conv1 = nn.Conv2d(3, width, 3, stride=int(stem_stride), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = width
        self.layer1 = self._stage(width, blocks[0], stride=int(strides[0]))
        self.layer2 = self._stage(width * 2, blocks[1], stride=int(strides[1]))
        self.layer3 = self._stage(width * 4, blocks[2], stride=int(strides[2]))
        self.layer4 = self._stage(width * 8, blocks[3], stride=int(strides[3]))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 8, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _stage(self, planes: int, n: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(n - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# Grad-CAM looks at layer4, which feeds avgpool and fc alone: the closed form applies. Declared
# here, beside the class, because camgap.cam.layers holds the tables but imports no model code.
add_family(SmallResNet, "layer4", gap_linear=("layer4", "avgpool", "fc"))


@register_model("small_resnet")
@register_model("small_resnet10")
def small_resnet(
    num_classes: int,
    width: int = 16,
    blocks: Sequence[int] = (1, 1, 1, 1),
    strides: Sequence[int] = (1, 2, 2, 2),
    stem_stride: int = 1,
) -> nn.Module:
    """10 weight layers by default; `blocks` sets the BasicBlocks per stage (`strides`, `stem_stride`:
    see SmallResNet)."""
    return SmallResNet(num_classes, width, blocks, strides, stem_stride)


@register_model("small_resnet18")
def small_resnet18(
    num_classes: int,
    width: int = 16,
    blocks: Sequence[int] = (2, 2, 2, 2),
    strides: Sequence[int] = (1, 2, 2, 2),
    stem_stride: int = 1,
) -> nn.Module:
    """The ResNet18 layout (two BasicBlocks per stage) at CIFAR scale."""
    return SmallResNet(num_classes, width, blocks, strides, stem_stride)


def model_options(name: str) -> tuple[str, ...] | None:
    """The keyword options an architecture's builder takes, or None when it passes any on (timm's,
    whose constructors are the judge)."""
    params = inspect.signature(MODELS.get(name)).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.name != "num_classes")


def check_model_options(name: str, options: dict) -> None:
    """InputError (one line) when ``create_model(name, ..., **options)`` would refuse ``options``:
    an option the builder does not take (naming those it takes), or one its constructor rejects.
    The model is built once with its parameters on the meta device, so a huge one costs nothing."""
    allowed = model_options(name)
    unknown = sorted(set(options) - set(allowed)) if allowed is not None else []
    if unknown:
        takes = f"takes {', '.join(allowed)}" if allowed else "takes no options"
        raise InputError(f"{name}: unknown option(s) {', '.join(unknown)}; it {takes}")
    try:
        create_model_skeleton(name, 2, **options)
    except CamgapError:
        raise
    except Exception as exc:  # noqa: BLE001 - a third-party constructor refuses the user's options in any form
        raise InputError(f"{name} rejects options {options!r}: {type(exc).__name__}: {exc}") from None


def model_group(name: str) -> str:
    """Where an architecture comes from: camgap, torchvision or timm."""
    key = MODELS.resolve(name)
    return "timm" if key.startswith(TIMM_PREFIX) else "torchvision" if key in TORCHVISION_MODELS else "camgap"


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Build modules with their parameters and buffers on the meta device: no memory and no
    initialisation, so even a 600M-parameter RegNet builds in milliseconds. (A `torch.device("meta")`
    context would also move the plain tensors some builders compute their layer widths with.)
    Buffers go too: a module that fills a buffer from its parameters' device (timm's Swin v2
    windows) could not copy meta values into a CPU buffer."""
    register, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    def buffer_on_meta(module: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
        register_buffer(module, name, None if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = on_meta, buffer_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register, register_buffer


def create_model_skeleton(name: str, num_classes: int, **kwargs) -> nn.Module:
    """``create_model`` with every parameter on the meta device: the model's structure (layers,
    shapes) without memory or initialisation, for checks that look at the structure alone. camgap's
    own builders compute no plain tensors, so they run wholly on the meta device (no parameter is
    allocated even for a moment: a width-4096 small_resnet has 38 GB convolutions)."""
    own = model_group(name) == "camgap"
    try:
        with torch.device("meta") if own else contextlib.nullcontext(), _parameters_on_meta(), _quiet():
            return create_model(name, num_classes=num_classes, **kwargs)
    except CamgapError:
        raise
    except Exception:
        # a third-party builder that computes with its own weights while it builds (timm's MCi and
        # ViTamin) cannot run on the meta device: built for real, it has the same structure
        if own:
            raise
    with _quiet():
        return create_model(name, num_classes=num_classes, **kwargs)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's notes on its default initialisation
        yield


def fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The (height, width) a model takes and no other, or None when any size goes: a patch
    embedding with a fixed image size (timm's `PatchEmbed` with `strict_img_size`, as ViT,
    DeiT and Swin are built by default; their position embeddings or windows are for that
    grid). Built with `dynamic_img_size=True`, a timm model takes other sizes."""
    for module in model.modules():
        size = getattr(module, "img_size", None)
        if getattr(module, "strict_img_size", False) and isinstance(size, (tuple, list)) and len(size) == 2:
            return int(size[0]), int(size[1])
    return None


def describe_model(name: str) -> dict:
    """What `camgap models` shows for one architecture: its group, the default target layer
    (None when camgap cannot choose one: give --layer), whether Grad-CAM's closed form applies
    there (`camgap.cam.detect_linear_head`; never on a transformer's tokens: a backward pass is
    needed) and how that layer's output becomes a map (`camgap.cam.layers.family_reshape`: none,
    tokens or nhwc; None when camgap does not know the family). The model is built once,
    parameters on the meta device."""
    key = MODELS.resolve(name)
    model = create_model_skeleton(key, 2)
    try:
        layer_name, layer = default_target_layer(model)
    except InputError:
        layer_name, closed = None, None
    else:
        closed = detect_linear_head(model, layer) is not None
    return {
        "name": key,
        "group": model_group(key),
        "target_layer": layer_name,
        "closed_form": closed,
        "reshape": family_reshape(model) if layer_name else None,
    }


def model_from_checkpoint(
    obj: object, path: Path | str = "<checkpoint>", arch: str | None = None, num_classes: int | None = None, **kwargs
) -> nn.Module:
    """The model a read checkpoint holds. A saved `nn.Module` is returned as is unless `arch`
    is given; a state_dict is loaded strictly into `create_model(arch, num_classes, **kwargs)`,
    each of which defaults to what the checkpoint records."""
    record = checkpoint_record(obj)
    if isinstance(obj, nn.Module) and arch is None:
        return obj
    arch = arch or record.get("arch")
    num_classes = num_classes or record.get("num_classes")
    if arch is None or num_classes is None:
        raise CheckpointError(f"{path}: holds a state_dict; give the architecture and the number of classes")
    if not kwargs and record.get("arch", arch) == arch:
        kwargs = dict(record.get("arch_kwargs") or {})
    model = create_model(arch, int(num_classes), **kwargs)
    return load_weights(model, extract_state_dict(obj, path), path)


def load_checkpoint(
    path: Path | str, arch: str | None = None, num_classes: int | None = None, *, unsafe: bool = False, **kwargs
) -> nn.Module:
    """Read a checkpoint file (see `read_checkpoint`) and build its model (see `model_from_checkpoint`)."""
    return model_from_checkpoint(read_checkpoint(path, unsafe), path, arch, num_classes, **kwargs)
