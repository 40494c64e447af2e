"""Checkpoint files: read them safely, find the state_dict inside, load it strictly, and read
what a zoo checkpoint records about its model and preprocessing.

Checkpoints are read with `torch.load(weights_only=True)`: a file that holds anything but
tensors and plain containers (a saved `nn.Module`, or a pickle that would run code) is
refused unless the caller vouches for it with `unsafe=True` (CLI: `--unsafe-load`).

Building the model a checkpoint holds needs the architecture registry: that is
`camgap.models.model_from_checkpoint` / `load_checkpoint`, which use this module.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from camgap.errors import STORAGE_ERRNOS, CamgapError


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
            parts.append(f"missing keys {short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {short_list(unexpected)}")
        if shape:
            parts.append(
                "shape mismatch " + short_list([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shape])
            )
        raise CheckpointError(f"{path}: checkpoint does not match the architecture: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model


def short_list(items: list[str], n: int = 5) -> str:
    """`[a, b, ...]`, cut to n items with the total: error messages stay one readable line."""
    head = ", ".join(items[:n])
    return f"[{head}{f', ... ({len(items)} in all)' if len(items) > n else ''}]"


# What a zoo checkpoint (camgap.zoo.train) records about its model and preprocessing.
RECORDED_FIELDS = (
    "arch",
    "arch_kwargs",
    "num_classes",
    "classes",
    "input_size",
    "resize",
    "mean",
    "std",
    "channel_order",
)


def read_checkpoint(path: Path | str, unsafe: bool = False) -> object:
    """`torch.load` of a checkpoint file, with `weights_only=True` unless `unsafe`.

    Unpickling runs whatever code the file names, so only tensors and plain containers are
    read by default. A file that needs more (a saved `nn.Module`, any other pickled object)
    is a CheckpointError naming it and the way out; with `unsafe=True` it is read in full,
    with a warning, which the caller should only do for a file from a trusted source."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if unsafe:
        warnings.warn(
            f"{path}: loading with weights_only=False (--unsafe-load): unpickling can run arbitrary "
            "code; do this only for a file from a trusted source",
            UserWarning,
            stacklevel=2,
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=not unsafe)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if not unsafe and refused:
            raise CheckpointError(
                f"{path}: refused to load: it holds a pickled object ({refused.group(1)}), e.g. a saved nn.Module "
                "or code that would run on loading, and only weights are loaded; if you trust this file, "
                "`camgap score` and `predict` read it with --unsafe-load (unsafe=True in Python)"
            ) from None
        raise CheckpointError(f"{path}: cannot read checkpoint ({_first_line(exc)})") from exc
    except OSError as exc:
        if exc.errno in STORAGE_ERRNOS:  # the disk, not the file: the caller decides (a sweep stops)
            raise
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({exc.strerror or exc}; {_size(path)}: truncated or corrupt)"
        ) from exc
    except Exception as exc:  # corrupt or not a torch file
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {_first_line(exc)})") from exc


def _size(path: Path) -> str:
    try:
        return f"{path.stat().st_size} bytes"
    except OSError:
        return "size unknown"


def _first_line(exc: BaseException) -> str:
    """The cause in one short line: torch's weights-only errors run over many lines (the
    `WeightsUnpickler error: ...` part says what failed), its zip errors over many sentences."""
    text = str(exc)
    m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if m:
        return m.group(1).strip().split(". ")[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0].split(". ")[0] if lines else type(exc).__name__


def checkpoint_record(obj: object) -> dict:
    """The settings a checkpoint records about its model and preprocessing (`RECORDED_FIELDS`
    present in a dict checkpoint, such as the zoo writes); {} for a bare state_dict or module."""
    if not isinstance(obj, dict):
        return {}
    return {k: obj[k] for k in RECORDED_FIELDS if k in obj and obj[k] is not None}
