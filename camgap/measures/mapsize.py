"""The target layer's map at an input size, measured by one forward pass of zeros (a probe):
`check_map_size` refuses a map under MIN_MAP_CELLS a side, naming the input size to use, and
turns a model that fails on the probe's input into one line naming the checkpoint, the size
and the model's message."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from camgap.cam.base import MapReshape
from camgap.errors import InputError

MIN_MAP_CELLS = 3  # a target-layer map of fewer cells a side cannot locate an object
_PROBE_SIZE = 224  # the input size every ImageNet architecture accepts: where downsampling is measured


class MapTooSmallError(InputError):
    """The target layer's map is smaller than MIN_MAP_CELLS x MIN_MAP_CELLS at the chosen input
    size: the CAM is (nearly) constant, so its IoU says nothing about where the model looks."""

    def __init__(self, message: str, input_size: int):
        super().__init__(message)
        self.input_size = input_size  # the smallest input size found to give a large enough map


class ModelRefusedInputError(InputError):
    """The model's own forward pass raised on the probe's input (a model built for other sizes
    asserts on its input, or fails on it in any other way); the message names the size and
    the model's message, after `where` (the checkpoint)."""

    def __init__(self, input_size: int, exc: Exception, where: str = ""):
        said = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        prefix = f"{where}: " if where else ""
        super().__init__(
            f"{prefix}the model fails on a {input_size}x{input_size} input of zeros ({said}); if it takes "
            "images of another size only, give --input-size that size"
        )
        self.input_size = input_size


@torch.no_grad()
def target_map_shape(
    model: nn.Module, layer: nn.Module, input_size: int, reshape: MapReshape | None = None, *, where: str = ""
) -> tuple[int, int] | None:
    """(h, w) of `layer`'s map for one square image of `input_size` px (a forward pass of
    zeros in eval mode; the model's mode is restored): the output's grid as `reshape` reads it
    (an InputError when the output does not have that layout), or without `reshape` the last two
    sides of a [B, C, h, w] output and None for any other output. The model raising on the
    input is a ModelRefusedInputError naming `where`, the size and its message."""
    shapes: list[tuple[int, ...]] = []
    handle = layer.register_forward_hook(lambda m, i, out: shapes.append(tuple(getattr(out, "shape", ()))))
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()(torch.zeros(1, 3, input_size, input_size, device=device))
    except torch.OutOfMemoryError:  # the machine's limit, not the model's refusal: as it is
        raise
    except Exception as exc:  # a model refuses an input size in any form of its own: one line, not a traceback
        raise ModelRefusedInputError(input_size, exc, where) from exc
    finally:
        handle.remove()
        model.train(was_training)
    if reshape is not None and shapes:
        return reshape.grid(shapes[0])
    return shapes[0][-2:] if shapes and len(shapes[0]) == 4 else None


def _probe(model: nn.Module, layer: nn.Module, input_size: int, reshape: MapReshape | None) -> tuple[int, int] | None:
    """The map shape at another input size; None where the model takes only its own (a ViT built
    for one image size refuses others in any form)."""
    try:
        return target_map_shape(model, layer, input_size, reshape)
    except Exception:  # noqa: BLE001 - a third-party model refuses an input size in any form
        return None


def _size_for(
    model: nn.Module, layer: nn.Module, input_size: int, shape: tuple[int, int], reshape: MapReshape | None = None
) -> tuple[int, str]:
    """The smallest input size (in steps of the model's downsampling) whose map has at least
    MIN_MAP_CELLS a side, and a note on the downsampling, measured at _PROBE_SIZE px."""
    probe = _probe(model, layer, _PROBE_SIZE, reshape) if input_size < _PROBE_SIZE else None
    side = min(probe or shape)
    step = (_PROBE_SIZE if probe else input_size) / max(side, 1)
    note = f"the model downsamples by {step:g}" + (f"; {_PROBE_SIZE} px gives {probe[0]}x{probe[1]}" if probe else "")
    size = math.ceil(MIN_MAP_CELLS * step)
    for _ in range(8):  # padding can leave a map one cell short of size / step
        got = _probe(model, layer, size, reshape)
        if got is None or min(got) >= MIN_MAP_CELLS:
            break
        size += math.ceil(step)
    return size, note


def check_map_size(
    model: nn.Module,
    layer: nn.Module,
    layer_name: str,
    input_size: int,
    *,
    force: bool = False,
    where: str = "",
    reshape: MapReshape | None = None,
) -> tuple[int, int] | None:
    """The target layer's map shape at `input_size` (its tokens' grid with `reshape`); a map
    under MIN_MAP_CELLS a side is a MapTooSmallError that names the input size to use (with
    `force`: a warning, and scoring goes on); a model that raises on the input is a
    ModelRefusedInputError naming `where`, the size and the model's message."""
    shape = target_map_shape(model, layer, input_size, reshape, where=where)
    if shape is None or min(shape) >= MIN_MAP_CELLS:
        return shape
    size, note = _size_for(model, layer, input_size, shape, reshape)
    prefix = f"{where}: " if where else ""
    problem = (
        f"{prefix}the target layer {layer_name} gives a {shape[0]}x{shape[1]} map at input size {input_size} "
        f"({note}): a CAM of fewer than {MIN_MAP_CELLS}x{MIN_MAP_CELLS} cells cannot show where the model looks"
    )
    if not force:
        raise MapTooSmallError(f"{problem}; use --input-size {size} or more, or --force to score anyway", size)
    warnings.warn(f"{problem}; scoring anyway (--force)", UserWarning, stacklevel=2)
    return shape
