"""One training run: an explicit loop in the style of torchvision's references/classification.

Data path. The driver decodes and resizes each split once into a ``TensorStore``
(``prepare_split``); a worker opens it and keeps the whole split resident as uint8
``[N, 3, S, S]`` on its device (on the CPU: the shared memory map; on a GPU: one copy per
worker, kept across runs). Per batch, augmentation runs as batched tensor ops on the
device (``augment_batch``: random horizontal flip and colour jitter, the paper's "random
flipping and colour enhancement"), then ``normalize`` with the run's mean/std.

Epoch. Shuffle with a generator seeded by (run seed, epoch); train one pass; then a clean
evaluation pass over the training set (eval mode, no augmentation) gives the train loss
and accuracy used by the stopping rules and by the final record, and a pass over the test
split gives the test loss/accuracy. The rules (``camgap.zoo.stopping``) decide whether to
stop. A non-finite parameter (NaN/inf: a diverged run, e.g. Adam at lr 0.125) is an
absorbing state, so the run stops there with ``stop_reason = "diverged"`` instead of
spinning to the epoch budget; its non-finite losses are recorded as ``inf``.

Files in the run directory (all written atomically: temporary file + ``os.replace``):
``init.pt`` (initial weights), ``last.pt`` (after every epoch: model and optimizer state,
epoch, history, RNG states, elapsed time; removed after ``final.pt`` unless ``keep_last``),
``final.pt`` (final weights + the result; its size and sha256 in ``final.pt.sha256.json``),
``history.json``. Checkpoints are plain dicts
readable by ``camgap.models.load_checkpoint(path, arch, num_classes)``.

Resume. A run directory with ``last.pt`` continues after the saved epoch and produces
the same result as an uninterrupted run (per-epoch generators; on the CPU bit-identical).
A run directory with ``final.pt`` returns the stored result without training. An
unreadable ``last.pt`` or ``final.pt`` (truncated, corrupt) is set aside as
``<name>.corrupt-<UTC time>`` with a ``CheckpointSetAsideWarning`` (also listed in the
result's ``warnings``) and the run restarts from scratch: the same seed gives the same
``init.pt``. Unreadable is any failure to read it but a full or failing disk
(``storage_error``): torch's EINVAL on a short file, zip and unpickling errors.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import re
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from camgap.errors import STORAGE_ERRNOS, InputError, StateError
from camgap.models import CheckpointError
from camgap.zoo.config import Pack, RunConfig, RunResult, Task, check_pack
from camgap.zoo.stopping import StoppingRules

__all__ = [
    "augment_batch",
    "evaluate",
    "train_run",
    "execute_task",
    "prepare_split",
    "load_split",
    "release_data_cache",
    "atomic_save",
    "save_final",
    "atomic_write_json",
    "read_run_checkpoint",
    "stored_result",
    "storage_error",
    "read_or_problem",
    "resume_problem",
    "set_aside",
    "remove_stale_temp_files",
    "CheckpointUnreadableError",
    "CheckpointSetAsideWarning",
]

_GRAY = (0.299, 0.587, 0.114)


class CheckpointUnreadableError(CheckpointError):
    """A checkpoint file that torch cannot read back (truncated, corrupt)."""


class CheckpointSetAsideWarning(RuntimeWarning):
    """An unreadable checkpoint was renamed and the run restarted without it."""


# --- files ------------------------------------------------------------------------------


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


# a temporary file of an atomic write: ``.<name>.tmp-<pid>`` (the tensor store adds ``-<hex>``)
_TMP_NAME = re.compile(r"^\..+\.tmp-(\d+)(-[0-9a-f]+)?$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Remove the temporary files of atomic writes in ``directory`` whose writer is dead (a
    ``kill -9`` between writing and renaming leaves them for good); return them. A file of a
    live process (a straggler still writing) is kept."""
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(directory):
            m = _TMP_NAME.match(entry.name)
            if m is None or not entry.is_file(follow_symlinks=False):
                continue
            pid = int(m.group(1))
            if pid == os.getpid() or _pid_alive(pid):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _atomic_write(path: str | Path, mode: str, write: Callable[[IO], None]) -> None:
    """Write through a temporary file in the same directory, fsync, then os.replace."""
    path = Path(path)
    tmp = _tmp(path)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None:  # a failed write/flush/fsync: name the file it was for
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save, atomically: a reader sees the old file or the new one, never half of one."""
    _atomic_write(path, "wb", lambda f: torch.save(obj, f))


def save_final(obj: Any, path: str | Path) -> None:
    """``atomic_save`` of a run's ``final.pt``, its size and sha256 recorded beside it
    (``camgap.zoo.digest``: what `zoo build` and `zoo status` check it against)."""
    from camgap.zoo.digest import forget_digest, record_digest

    forget_digest(path)
    atomic_save(obj, path)
    record_digest(path)


def _finite_or_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite_or_none(v) for v in x]
    return x


def atomic_write_json(obj: Any, path: str | Path) -> None:
    def write(f) -> None:
        json.dump(_finite_or_none(obj), f, indent=1, sort_keys=True)
        f.write("\n")

    _atomic_write(path, "w", write)


def storage_error(exc: BaseException) -> OSError | None:
    """The OSError of a full or failing disk behind ``exc`` (itself, or its cause/context), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def read_run_checkpoint(path: str | Path) -> dict:
    """One of a run's checkpoint files, read with ``weights_only=True`` (``models.read_checkpoint``);
    ``CheckpointUnreadableError`` when it cannot be read that way (truncated, corrupt, or holding
    pickled objects, which are never run). An OSError (the disk, not the file) is raised as it is."""

    from camgap.models import read_checkpoint

    try:
        ck = read_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointUnreadableError(str(exc)) from exc
    if not isinstance(ck, dict):
        raise CheckpointUnreadableError(f"{path}: unreadable checkpoint (a {type(ck).__name__}, not a dict)")
    return ck


def stored_result(run_dir: str | Path, run_id: str) -> RunResult | None:
    """The result stored in ``run_dir/final.pt`` when it is readable and belongs to ``run_id``."""
    path = Path(run_dir) / "final.pt"
    if not path.is_file():
        return None
    try:
        done = read_run_checkpoint(path)
    except CheckpointUnreadableError:
        return None
    if done.get("run_id") != run_id or "result" not in done:
        return None
    return RunResult.from_dict(done["result"], f"{path}: result")


def set_aside(path: str | Path, problem: str, then: str) -> str:
    """Rename an unreadable file to ``<name>.corrupt-<UTC time>`` (kept for a human to look at);
    return the one line that says so: the problem (naming the file), the new name, what follows."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, aside)
    return f"{problem}; set aside as {aside.name}; {then}"


def _set_aside(path: Path, problem: str, then: str, notes: list[str]) -> None:
    """``set_aside``, with a ``CheckpointSetAsideWarning`` and the line in ``notes``."""
    msg = set_aside(path, problem, then)
    notes.append(msg)
    warnings.warn(msg, CheckpointSetAsideWarning, stacklevel=3)


def read_or_problem(path: str | Path, need: tuple[str, ...] = ()) -> tuple[dict | None, str | None]:
    """(the checkpoint at ``path``, None), or (None, the problem in one line naming the file) when it
    cannot be read or lacks one of the keys in ``need``. A full or failing disk raises."""
    try:
        ck = read_run_checkpoint(path)
    except CheckpointUnreadableError as exc:
        return None, str(exc)
    missing = [k for k in need if k not in ck]
    if missing:
        return None, f"{path}: unreadable checkpoint (no {', '.join(missing)})"
    return ck, None


def resume_problem(path: str | Path) -> str | None:
    """Why a ``last.pt`` cannot be resumed from (None: it can)."""
    return read_or_problem(path, _RESUME_KEYS)[1]


def _readable_or_set_aside(path: Path, then: str, notes: list[str], need: tuple[str, ...] = ()) -> dict | None:
    """The checkpoint at ``path``; None (after setting it aside) when it cannot be read or
    lacks one of the keys in ``need``; None when there is no file."""
    if not path.is_file():
        return None
    ck, problem = read_or_problem(path, need)
    if problem is not None:
        _set_aside(path, problem, then, notes)
    return ck


@contextlib.contextmanager
def _run_lock(run_dir: Path):
    """Exclusive flock on run_dir/.lock: a straggler process still training this run (an
    orphan of a killed driver) finishes before another one touches the directory."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(run_dir / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# --- data -------------------------------------------------------------------------------


def prepare_split(
    records,
    classes: list[str],
    cache_dir,
    input_size: int,
    resize: str,
    progress: bool = False,
    max_pixels: int | None = None,
) -> str:
    """Decode one split's records once into a TensorStore at ``cache_dir`` (reused when its
    fingerprint matches; files over ``max_pixels`` are refused by their header); return
    ``cache_dir`` for ``load_split``."""
    from camgap.data.store import TensorStore

    store = TensorStore.cached(
        records, cache_dir, input_size, resize, classes=list(classes), progress=progress, max_pixels=max_pixels
    )
    if len(store) and (int(store.labels.min()) < 0 or int(store.labels.max()) >= len(classes)):
        raise InputError(f"{cache_dir}: labels outside the {len(classes)} training classes")
    return str(cache_dir)


_DATA_CACHE: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}


def load_split(cache_dir: str | Path, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N,3,S,S], labels int64 [N]) resident on ``device``; cached per process."""
    from camgap.data.store import TensorStore

    key = (str(cache_dir), str(device))
    if key not in _DATA_CACHE:
        store = TensorStore.open(cache_dir)
        if device.type == "cpu":
            images, labels = store.images, store.labels  # memory map, shared page cache
        else:
            images, labels = store.images.to(device), store.labels.to(device)
        if len(_DATA_CACHE) >= 4:  # a worker rarely needs more than target + source splits
            _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
        _DATA_CACHE[key] = (images, labels)
    return _DATA_CACHE[key]


def release_data_cache() -> None:
    """Drop the splits this process keeps resident (and their GPU memory)."""
    _DATA_CACHE.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- augmentation and evaluation --------------------------------------------------------


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def augment_batch(
    images: torch.Tensor, generator: torch.Generator | None, flip_prob: float = 0.5, jitter: float = 0.4
) -> torch.Tensor:
    """Random horizontal flip and colour jitter on a uint8 batch ``[B,3,H,W]`` -> float in [0,1]
    (torch's default dtype, as ``normalize``).

    Per image: flip with probability ``flip_prob``; brightness, contrast and saturation
    factors drawn uniformly from ``[max(0, 1 - jitter), 1 + jitter]`` and applied in that
    order with torchvision's blend formulas (brightness: blend with black; contrast: with
    the image's mean grey level; saturation: with its greyscale image), clamping to [0,1]
    after each. All on the batch's device, as tensor ops over the whole batch.
    """
    x = images.to(torch.get_default_dtype()).div_(255.0)
    b = x.shape[0]
    dev = x.device
    if flip_prob > 0:
        flip = torch.rand(b, generator=generator, device=dev) < flip_prob
        x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    if jitter > 0:
        f = torch.empty(3, b, device=dev).uniform_(max(0.0, 1.0 - jitter), 1.0 + jitter, generator=generator)
        bright, contrast, sat = (f[i].view(b, 1, 1, 1) for i in range(3))
        x = (x * bright).clamp_(0.0, 1.0)
        m = _gray(x).mean(dim=(-1, -2), keepdim=True)
        x = ((x - m) * contrast + m).clamp_(0.0, 1.0)
        g = _gray(x)
        x = ((x - g) * sat + g).clamp_(0.0, 1.0)
    return x


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean,
    std,
    device: torch.device,
    batch_size: int = 256,
    precision: str = "fp32",
) -> tuple[float, float]:
    """Clean pass (eval mode, no augmentation): (mean cross-entropy, accuracy)."""
    from camgap.data.dataset import normalize

    model.eval()
    n = int(labels.shape[0])
    total = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for s in range(0, n, batch_size):
        x = images[s : s + batch_size].to(device, non_blocking=True)
        y = labels[s : s + batch_size].to(device, non_blocking=True)
        with autocast(precision, device):
            out = model(normalize(x, mean, std)).float()
        total += F.cross_entropy(out, y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum()
    return float(total) / n, int(correct) / n


@dataclass(frozen=True)
class RunInputs:
    """What a run draws its training batches from, besides the data: its seed (shuffle and
    augmentation, one generator per epoch), its augmentation and its normalisation."""

    seed: int
    augment: bool
    flip_prob: float
    jitter: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, config: RunConfig, seed: int) -> RunInputs:
        return cls(
            int(seed),
            bool(config.augment),
            float(config.flip_prob or 0.0),
            float(config.jitter or 0.0),
            tuple(config.mean),
            tuple(config.std),
        )


# oneDNN instruction-set limits (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: its bf16 kernels are emulated
_ONEDNN_BELOW_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"})


def _cpu_probe(name: str) -> bool:
    """One of torch.cpu's feature probes (cpuinfo); False where this torch has none."""
    return bool(getattr(torch.cpu, name, lambda: False)())


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 in hardware, and why, in words for the build log. A GPU:
    ``torch.cuda.is_bf16_supported()``. A CPU: AVX512-BF16 or AMX in cpuinfo is not enough; the
    kernels must use them too: PyTorch's dispatched capability (``ATEN_CPU_CAPABILITY``) must be
    AVX512 and oneDNN's limit (``ONEDNN_MAX_CPU_ISA``) must not stop below AVX512_CORE_BF16,
    else bf16 is emulated, slower than fp32."""
    if device.type == "cuda":
        ok = bool(torch.cuda.is_bf16_supported())
        return ok, f"{'native' if ok else 'no native'} bf16 on this GPU: {torch.cuda.get_device_name(device)}"
    if device.type != "cpu":
        return False, f"no native bf16 known on a {device.type} device"
    capability = str(torch.backends.cpu.get_cpu_capability())
    if not capability.startswith("AVX512"):
        return False, f"no native bf16 on this CPU: capability {capability}"
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if onednn in _ONEDNN_BELOW_BF16:
        return False, f"no native bf16 on this CPU: ONEDNN_MAX_CPU_ISA={onednn}"
    probes = (("_is_avx512_bf16_supported", "AVX512-BF16"), ("_is_amx_tile_supported", "AMX"))
    units = [unit for probe, unit in probes if _cpu_probe(probe)]
    if not units:
        return False, f"no native bf16 on this CPU: no AVX512-BF16 or AMX (capability {capability})"
    return True, f"native bf16 on this CPU: {' and '.join(units)}, capability {capability}"


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware (``bf16_support``)."""
    return bf16_support(device)[0]


def choose_precision(setting: str, device: torch.device) -> tuple[str, str]:
    """("fp32" or "bf16", why) for a setting: "auto" is bf16 where the device computes it natively
    (``bf16_support``), else fp32; any other setting is taken as it is."""
    if setting != "auto":
        return setting, "as the grid sets it"
    ok, why = bf16_support(device)
    return ("bf16" if ok else "fp32"), why


def resolve_precision(setting: str, device: torch.device) -> str:
    """ "fp32" or "bf16" for ``setting`` on ``device`` (``choose_precision``). A model set resolves
    "auto" once, before its runs start, and keeps the choice in their configs and ids."""
    return choose_precision(setting, device)[0]


def autocast(precision: str, device: torch.device):
    """The context of one forward pass: bf16 autocast, or nothing for fp32. It must wrap the forward
    alone, never an optimizer step: autocast caches the bf16 copy of each weight until the context
    is left, so a context around several steps would keep computing with the first step's weights."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The generator of one run's epoch: its shuffle, then its augmentation draws, in batch order."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 1000 + epoch)
    return gen


def training_batch(
    inputs: RunInputs, gen: torch.Generator, images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch of a run: gathered on the device, augmented, normalised."""
    from camgap.data.dataset import normalize

    x = images[idx]
    if inputs.augment:
        x = augment_batch(x, gen, inputs.flip_prob, inputs.jitter)
    return normalize(x, inputs.mean, inputs.std), labels[idx]


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: RunInputs,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    epoch: int,
    precision: str = "fp32",
) -> float:
    """One pass over the training split in the run's own order; returns the mean running loss."""
    device = images.device
    gen = epoch_generator(inputs.seed, epoch, device)
    model.train()
    n = int(labels.shape[0])
    perm = torch.randperm(n, generator=gen, device=device)
    running = torch.zeros((), device=device)
    for s in range(0, n, batch_size):
        x, y = training_batch(inputs, gen, images, labels, perm[s : s + batch_size])
        with autocast(precision, device):
            logits = model(x).float()
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += loss.detach() * y.shape[0]
    return float(running) / max(n, 1)


# --- the run ----------------------------------------------------------------------------


def _rng_states(device: torch.device) -> dict:
    """The global RNG states, as plain tensors, ints and lists so ``torch.load(weights_only=True)``
    reads them back. Training draws from per-epoch torch generators; the global torch state
    (model init) and numpy/python's (any library code) are kept so a resume continues exactly."""
    np_state = np.random.get_state(legacy=False)
    py_version, py_internal, py_gauss = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": [int(py_version), [int(x) for x in py_internal], py_gauss],
    }
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    npst = states["numpy"]
    np.random.set_state(
        ("MT19937", npst["key"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"])
    )
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _make_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise InputError(f"unknown optimizer {cfg.optimizer!r}")


def _finite_params(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _inf_if_nan(x: float) -> float:
    return x if math.isfinite(x) else math.inf


def _checkpoint_base(task: Task, model: nn.Module) -> dict:
    cfg = task.config
    return {
        "model_state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "arch": cfg.arch,
        "arch_kwargs": dict(cfg.arch_options or {}),
        "num_classes": int(task.num_classes),
        "classes": list(task.classes),
        "config": cfg.to_dict(),
        "run_id": task.run_id,
        "repeat": task.repeat,
        "seed": int(task.seed),
        "input_size": cfg.input_size,
        "resize": cfg.resize,
        "mean": cfg.mean,
        "std": cfg.std,
        "channel_order": "rgb",  # the data path decodes RGB; `camgap score` reads this back
    }


def _result(
    task: Task,
    epochs: int,
    stop_reason: str | None,
    train: tuple,
    test: tuple,
    wall: float,
    resumed_from: int | None,
    pack_size: int,
    precision: str,
    pack_wall: float | None = None,
) -> RunResult:
    """A done run's result. ``wall`` is the run's share of its pack's seconds (all of them alone),
    ``pack_wall`` the pack's seconds while the run was in it (``wall`` when None)."""
    train_loss, train_acc = train
    test_loss, test_acc = test
    return RunResult(
        task.run_id,
        "done",
        trained=bool(task.config.trained),
        epochs=int(epochs),
        stop_reason=stop_reason,
        train_loss=_inf_if_nan(train_loss),
        train_acc=float(train_acc),
        test_loss=_inf_if_nan(test_loss),
        test_acc=float(test_acc),
        gap=100.0 * (float(train_acc) - float(test_acc)),
        wall_time=float(wall),
        resumed_from=resumed_from,
        pack_size=pack_size,
        precision=precision,
        pack_wall_time=float(wall if pack_wall is None else pack_wall),
    )


def run_threads(task: Task) -> int:
    """The run's intra-op thread count: its config's ``threads`` (``[train] threads``), so the
    weights never depend on the executor or on how many runs share the machine. Configs
    without it (untrained models, older model sets) use the executor's ``task.threads``."""
    return int(task.config.threads or task.threads or 1)


def train_run(task: Task, epoch_callback: Callable[[int, dict], None] | None = None) -> RunResult:
    """Train (or, for an untrained config, only evaluate) one run; return its result.
    ``epoch_callback(epoch, record)`` is called after each epoch's checkpoint is written (tests
    use it to interrupt a run)."""
    return train_pack([task], epoch_callback, packed=False)[0]


def train_pack(
    tasks: list[Task], epoch_callback: Callable[[int, dict], None] | None = None, packed: bool = True
) -> list[RunResult]:
    """Train several runs of one architecture and batch size together (``camgap.zoo.packed``), each
    with its own seed, data order, augmentation, optimizer, stopping rules and files; return their
    results in order. A run that stops leaves the pack. With ``packed=False`` (one task) the run
    trains alone through its own module, as ``train_run``. Runs that differ in what a pack shares
    (``config.check_pack``: arch and options, batch size, precision, memory layout, threads, data)
    raise ``PackMismatchError`` naming the field, before anything trains."""
    check_pack(tasks)
    device = _prepare_device(tasks[0])
    caller_threads = torch.get_num_threads()
    try:
        with contextlib.ExitStack() as stack:
            for t in tasks:
                Path(t.run_dir).mkdir(parents=True, exist_ok=True)
                stack.enter_context(_run_lock(Path(t.run_dir)))
            torch.set_num_threads(run_threads(tasks[0]))
            return _train_locked(tasks, device, epoch_callback, packed)
    finally:
        torch.set_num_threads(caller_threads)  # an in-process run leaves the caller's thread count alone


def _prepare_device(task: Task) -> torch.device:
    device = torch.device(task.device or "cpu")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    return device


# what resuming from last.pt reads; a last.pt without one of them is unreadable
_RESUME_KEYS = ("model_state_dict", "optimizer_state_dict", "history", "epoch", "rng_states")


class _Run:
    """One trained run between epochs: its model and optimizer, its history and stopping rules,
    and its files (``init.pt``, ``last.pt`` after every epoch, ``final.pt``, ``history.json``)."""

    def __init__(self, task: Task, device: torch.device, notes: list[str]):
        from camgap.models import create_model

        self.task, self.cfg, self.notes = task, task.config, notes
        self.dir = Path(task.run_dir)
        self.inputs = RunInputs.of(self.cfg, task.seed)
        _seed_all(int(task.seed))
        self.model = create_model(self.cfg.arch, int(task.num_classes), **(self.cfg.arch_options or {}))
        if self.cfg.pretrained:
            from camgap.zoo.pretrained import load_pretrained_backbone

            if not task.pretrained_path:
                raise StateError(f"run {task.run_id}: pretrained = true but no weights file was resolved")
            load_pretrained_backbone(self.model, task.pretrained_path)
        self.model.to(device)
        self.precision = resolve_precision(self.cfg.precision or "fp32", device)
        if self.cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.device = device
        self.history: list[dict] = []
        self.wall, self.pack_wall, self.resumed_from, self.diverged = 0.0, 0.0, None, False
        if not self.cfg.trained:
            return
        self.rules = StoppingRules(self.cfg.loss_threshold, self.cfg.acc_threshold, self.cfg.max_epochs)
        self.optimizer = _make_optimizer(self.model, self.cfg)
        last = self.dir / "last.pt"
        ck = _readable_or_set_aside(last, "the run restarts from init.pt", notes, _RESUME_KEYS)
        if ck is not None:
            if ck.get("run_id") != task.run_id:
                raise StateError(f"{last} belongs to run {ck.get('run_id')!r}, not {task.run_id!r}")
            self.model.load_state_dict(ck["model_state_dict"])
            self.optimizer.load_state_dict(ck["optimizer_state_dict"])
            self.history = list(ck["history"])
            self.wall = float(ck.get("wall_time", 0.0))
            self.pack_wall = float(ck.get("pack_wall_time", self.wall))
            self.diverged = bool(ck.get("diverged", False))
            self.resumed_from = int(ck["epoch"])
            _set_rng_states(ck["rng_states"], device)
        else:
            atomic_save(self._base() | {"epoch": 0}, self.dir / "init.pt")
        self.decision = self.rules.check(self.history)

    def _base(self) -> dict:
        return _checkpoint_base(self.task, self.model)

    @property
    def stopped(self) -> bool:
        return self.decision.stop or self.diverged

    @property
    def next_epoch(self) -> int:
        return len(self.history) + 1

    def end_epoch(
        self,
        train: tuple[float, float],
        test: tuple[float, float],
        running_loss: float,
        seconds: float,
        epoch_callback=None,
        pack_seconds: float | None = None,
    ) -> None:
        """Record one epoch: history, stopping decision, ``last.pt`` and ``history.json``. ``seconds``:
        the run's share of the epoch; ``pack_seconds``: the whole pack's epoch (None: trained alone)."""
        self.diverged = not _finite_params(self.model)
        self.wall += seconds
        self.pack_wall += seconds if pack_seconds is None else pack_seconds
        record = {
            "epoch": self.next_epoch,
            "train_loss": train[0],
            "train_acc": train[1],
            "test_loss": test[0],
            "test_acc": test[1],
            "aug_train_loss": running_loss,  # running loss of the training pass
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            **({} if pack_seconds is None else {"pack_seconds": pack_seconds}),
        }
        self.history.append(record)
        self.decision = self.rules.check(self.history)
        atomic_save(
            self._base()
            | {
                "optimizer_state_dict": self.optimizer.state_dict(),
                "epoch": record["epoch"],
                "history": self.history,
                "wall_time": self.wall,
                "pack_wall_time": self.pack_wall,
                "diverged": self.diverged,
                "rng_states": _rng_states(self.device),
            },
            self.dir / "last.pt",
        )
        atomic_write_json(self.history, self.dir / "history.json")
        if epoch_callback is not None:
            epoch_callback(record["epoch"], record)

    def finish(self, pack_size: int = 1) -> RunResult:
        """Write ``final.pt`` (weights + result) and drop ``last.pt``; the run's result."""
        last = self.history[-1]
        reason = "diverged" if self.diverged and not self.decision.stop else self.decision.reason
        result = _result(
            self.task,
            len(self.history),
            reason,
            (last["train_loss"], last["train_acc"]),
            (last["test_loss"], last["test_acc"]),
            self.wall,
            self.resumed_from,
            pack_size,
            self.precision,
            self.pack_wall,
        )
        atomic_write_json(self.history, self.dir / "history.json")
        save_final(
            self._base() | {"epoch": len(self.history), "history": self.history, "result": result.to_dict()},
            self.dir / "final.pt",
        )
        if not self.task.keep_last:
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "last.pt").unlink()
        return replace(result, warnings=tuple(self.notes))


def _evaluate_untrained(run: _Run, splits, eval_bs: int) -> RunResult:
    """A randomly initialised model for the validity test: evaluated, never trained."""
    (train_x, train_y), (test_x, test_y) = splits
    t0 = time.perf_counter()
    base = run._base()
    atomic_save(base | {"epoch": 0}, run.dir / "init.pt")
    mean, std = run.inputs.mean, run.inputs.std
    train = evaluate(run.model, train_x, train_y, mean, std, run.device, eval_bs)
    test = evaluate(run.model, test_x, test_y, mean, std, run.device, eval_bs)
    result = _result(run.task, 0, "untrained", train, test, time.perf_counter() - t0, None, 1, "fp32")
    atomic_write_json([], run.dir / "history.json")
    save_final(base | {"epoch": 0, "history": [], "result": result.to_dict()}, run.dir / "final.pt")
    return replace(result, warnings=tuple(run.notes))


def _train_locked(tasks: list[Task], device: torch.device, epoch_callback, packed: bool) -> list[RunResult]:
    results: dict[int, RunResult] = {}
    runs: dict[int, _Run] = {}
    notes = {i: [] for i in range(len(tasks))}
    for i, task in enumerate(tasks):
        final = Path(task.run_dir) / "final.pt"
        done = _readable_or_set_aside(final, "the run is trained again", notes[i])
        if done is not None and done.get("run_id") == task.run_id and "result" in done:
            results[i] = RunResult.from_dict(done["result"], f"{final}: result")
        else:
            runs[i] = _Run(task, device, notes[i])
    if not runs:
        return [results[i] for i in range(len(tasks))]
    first = tasks[0]
    splits = (load_split(first.train_data, device), load_split(first.test_data, device))
    eval_bs = int(first.eval_batch_size or 256)
    for i, run in list(runs.items()):
        if not run.cfg.trained:
            results[i] = _evaluate_untrained(runs.pop(i), splits, eval_bs)
    if packed and len(runs) > 1:
        _train_packed(list(runs.values()), splits, eval_bs, epoch_callback)
    else:
        for run in runs.values():
            _train_alone(run, splits, eval_bs, epoch_callback)
    for i, run in runs.items():
        results[i] = run.finish(pack_size=len(runs) if packed else 1)
    return [results[i] for i in range(len(tasks))]


def _train_alone(run: _Run, splits, eval_bs: int, epoch_callback) -> None:
    train_x, train_y = splits[0]
    bs = int(run.cfg.batch_size)
    while not run.stopped:
        t0 = time.perf_counter()
        epoch, precision = run.next_epoch, run.precision
        loss = train_one_epoch(run.model, run.optimizer, run.inputs, train_x, train_y, bs, epoch, precision)
        run.end_epoch(*_evaluate_splits(run, splits, eval_bs), loss, time.perf_counter() - t0, epoch_callback)


def _evaluate_splits(run: _Run, splits, eval_bs: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """The clean (train, test) evaluation of one run after an epoch, through its own module also
    in a pack: in fp32 on a CPU a grouped convolution in inference is about twice as slow as the
    K models one after another (BENCHMARKS.md, "The demo on a CPU without native bf16"), and the
    history then holds the numbers the run would have alone, for the same weights."""
    (train_x, train_y), (test_x, test_y) = splits
    mean, std = run.inputs.mean, run.inputs.std
    train = evaluate(run.model, train_x, train_y, mean, std, run.device, eval_bs, run.precision)
    test = evaluate(run.model, test_x, test_y, mean, std, run.device, eval_bs, run.precision)
    return train, test


def _train_packed(runs: list[_Run], splits, eval_bs: int, epoch_callback) -> None:
    """Every epoch, the runs that have not stopped train as one pack. Runs resumed at different
    epochs (a kill between two of their checkpoint writes) are brought level first: the ones
    ahead stay in the pack, frozen, so every run computes in the pack it had uninterrupted."""
    from camgap.zoo.packed import PackedResNet, train_pack_epoch

    bs = int(runs[0].cfg.batch_size)
    train_x, train_y = splits[0]
    active = [r for r in runs if not r.stopped]
    while active:
        t0 = time.perf_counter()
        level = min(r.next_epoch for r in active)
        frozen = [r.next_epoch > level for r in active]
        pack = PackedResNet([r.model for r in active])
        inputs = [r.inputs for r in active]
        precision = active[0].precision
        losses = train_pack_epoch(
            pack,
            [r.optimizer for r in active],
            inputs,
            train_x,
            train_y,
            bs,
            [r.next_epoch for r in active],
            frozen=frozen,
            precision=precision,
        )
        level_runs = [r for r, f in zip(active, frozen, strict=True) if not f]
        evals = [_evaluate_splits(r, splits, eval_bs) for r in level_runs]
        seconds = time.perf_counter() - t0
        share = seconds / len(level_runs)  # the runs that record this epoch share its time
        for r, (train, test) in zip(level_runs, evals, strict=True):
            r.end_epoch(train, test, losses[active.index(r)], share, epoch_callback, pack_seconds=seconds)
        active = [r for r in active if not r.stopped]


def execute_task(work: Task | Pack) -> RunResult:
    """Worker entry point: never raises. A failing run comes back with status ``failed`` and the
    error; a full or failing disk (not the run's fault) with status ``storage``, the error naming
    the path. A pack's runs compute on the pack's device; its result holds one result per run.
    Checkpoints set aside are reported in the result's ``warnings``, not as warnings."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointSetAsideWarning)
            if isinstance(work, Pack):
                tasks = [replace(t, device=work.device, threads=work.threads) for t in work.runs]
                return RunResult(work.run_id, "pack", results=tuple(train_pack(tasks)))
            return train_run(work)
    except Exception as exc:  # noqa: BLE001 - one bad run never stops the sweep
        disk = storage_error(exc)
        if disk is not None:
            where = disk.filename or getattr(work, "run_dir", None)
            code = errno.errorcode.get(disk.errno, disk.errno)
            return RunResult(work.run_id, "storage", error=f"{where}: {disk.strerror or disk} (errno {code})")
        tb = traceback.format_exc(limit=8)
        return RunResult(work.run_id, "failed", error=f"{type(exc).__name__}: {exc}\n{tb}")
