"""Model registry: string names -> classifiers, strict checkpoint loading.

`create_model("resnet18", num_classes=20)` builds a torchvision ResNet;
`create_model("small_resnet", num_classes=10, width=16, blocks=(1, 1, 1, 1))`
builds a CIFAR-style ResNet that trains in seconds on a CPU. Every model
exposes its last convolutional stage as `layer4`, the default CAM layer.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.resnet import BasicBlock

from camgap.errors import CamgapError, InputError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a model by registry name. Extra keyword arguments go to the builder."""
    if name not in _REGISTRY:
        raise InputError(f"unknown architecture {name!r}; known: {', '.join(list_models())}")
    return _REGISTRY[name](num_classes=num_classes, **kwargs)


def _torchvision_resnet(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(num_classes: int, **kwargs) -> nn.Module:
        if kwargs:
            raise InputError(f"{builder.__name__} takes no options, got {sorted(kwargs)}")
        return builder(weights=None, num_classes=num_classes)

    return build


for _name, _builder in {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
    "resnet101": tvm.resnet101,
}.items():
    register_model(_name)(_torchvision_resnet(_builder))


class SmallResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, four BasicBlock stages (width, 2w, 4w, 8w),
    global average pooling and one linear layer, like torchvision's ResNet head,
    so Grad-CAM at `layer4` has the closed form of the paper's models."""

    def __init__(self, num_classes: int, width: int = 16, blocks: Sequence[int] = (1, 1, 1, 1)):
        super().__init__()
        if len(blocks) != 4:
            raise InputError(f"blocks must list 4 stage depths, got {blocks}")
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = width
        self.layer1 = self._stage(width, blocks[0], stride=1)
        self.layer2 = self._stage(width * 2, blocks[1], stride=2)
        self.layer3 = self._stage(width * 4, blocks[2], stride=2)
        self.layer4 = self._stage(width * 8, blocks[3], stride=2)
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


@register_model("small_resnet")
@register_model("small_resnet10")
def small_resnet(num_classes: int, width: int = 16, blocks: Sequence[int] = (1, 1, 1, 1)) -> nn.Module:
    """10 weight layers by default; `blocks` sets the BasicBlocks per stage."""
    return SmallResNet(num_classes, width=width, blocks=tuple(blocks))


@register_model("small_resnet18")
def small_resnet18(num_classes: int, width: int = 16, blocks: Sequence[int] = (2, 2, 2, 2)) -> nn.Module:
    """The ResNet18 layout (two BasicBlocks per stage) at CIFAR scale."""
    return SmallResNet(num_classes, width=width, blocks=tuple(blocks))


def default_target_layer(model: nn.Module) -> nn.Module:
    """The last convolutional stage: `layer4` when present, else the last Conv2d's parent block."""
    if hasattr(model, "layer4"):
        return model.layer4
    last = None
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            last = module
    if last is None:
        raise InputError("model has no `layer4` and no Conv2d layer: pass the target layer explicitly")
    return last


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """Resolve a dotted module path such as `layer4` or `layer4.1.conv2`."""
    modules = dict(model.named_modules())
    if name not in modules:
        candidates = [n for n in modules if n and "." not in n]
        raise InputError(f"model has no layer {name!r}; top-level layers: {', '.join(candidates)}")
    return modules[name]


class CheckpointError(CamgapError, ValueError):
    """A checkpoint that cannot be read or does not match the architecture."""


def extract_state_dict(obj: object, path: Path | str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Accept a plain state_dict, {'model_state_dict': ...} (the reference release),
    {'state_dict': ...} or {'model': ...}; strip DataParallel's `module.` prefix."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("model_state_dict", "state_dict", "model"):
            if key in obj and isinstance(obj[key], (dict, nn.Module)):
                return extract_state_dict(obj[key], path)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state_dict, a dict with 'model_state_dict', or a saved nn.Module")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path | str = "<checkpoint>") -> nn.Module:
    """Strict load with an error that names what does not match."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if shape:
            parts.append(
                "shape mismatch " + _short([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shape])
            )
        raise CheckpointError(f"{path}: checkpoint does not match the architecture: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model


def _short(items: list[str], n: int = 5) -> str:
    head = ", ".join(items[:n])
    return f"[{head}{f', ... ({len(items)} in all)' if len(items) > n else ''}]"


def load_checkpoint(path: Path | str, arch: str | None = None, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Load a model from a checkpoint file.

    A saved `nn.Module` is returned as is. A state_dict (or a dict holding one)
    needs `arch` and `num_classes` and is loaded strictly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # corrupt or not a torch file
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, nn.Module) and arch is None:
        return obj
    if arch is None or num_classes is None:
        raise CheckpointError(f"{path}: holds a state_dict; give the architecture and the number of classes")
    if isinstance(obj, dict) and "arch_kwargs" in obj and not kwargs:
        kwargs = dict(obj["arch_kwargs"])
    model = create_model(arch, num_classes, **kwargs)
    return load_weights(model, extract_state_dict(obj, path), path)
