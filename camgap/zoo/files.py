"""A model set's files: where they live, how they are written, and what happens to one that
cannot be read.

Layout: ``ZOO/runs/<run_id>/`` holds a run's files (``run_dir``); ``ZOO/cache/<split>-<size>-
<resize>`` a decoded split (``cache_path``, a ``TensorStore`` built by ``prepare_split``).
Every file is written atomically (``camgap.io``): ``atomic_save`` for checkpoints,
``atomic_write_json`` for JSON (non-finite numbers stored as null).

Reading a run's checkpoint (``read_run_checkpoint``) tells the disk's failures from the file's:
an OSError whose errno is a full or failing disk (``storage_error``) is raised as it is, so the
sweep stops and nothing is set aside; any other failure makes the file unreadable
(``CheckpointUnreadableError``), and ``set_aside`` renames it to ``<name>.corrupt-<UTC time>``
for a human to look at, never deleting it.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from pathlib import Path
from typing import Any

from camgap import io
from camgap.errors import STORAGE_ERRNOS, InputError
from camgap.models import CheckpointError
from camgap.zoo.config import RunResult

__all__ = [
    "RUNS_DIR",
    "CACHE_DIR",
    "RESUME_KEYS",
    "run_dir",
    "cache_path",
    "prepare_split",
    "atomic_save",
    "atomic_write_json",
    "storage_error",
    "read_run_checkpoint",
    "stored_result",
    "read_or_problem",
    "resume_problem",
    "readable_or_set_aside",
    "set_aside",
    "run_lock",
    "CheckpointUnreadableError",
    "CheckpointSetAsideWarning",
]

RUNS_DIR = "runs"
CACHE_DIR = "cache"
# what resuming from last.pt reads; a last.pt without one of them is unreadable
RESUME_KEYS = ("model_state_dict", "optimizer_state_dict", "history", "epoch", "rng_states")


class CheckpointUnreadableError(CheckpointError):
    """A checkpoint file that torch cannot read back (truncated, corrupt)."""


class CheckpointSetAsideWarning(RuntimeWarning):
    """An unreadable checkpoint was renamed and the run restarted without it."""


# --- paths ------------------------------------------------------------------------------


def run_dir(zoo_dir: str | Path, run_id: str) -> Path:
    """The directory of one run of the model set at ``zoo_dir``."""
    return Path(zoo_dir) / RUNS_DIR / run_id


def cache_path(zoo_dir: str | Path, split: str, input_size: int, resize: str) -> Path:
    """The tensor store of one split decoded at ``input_size`` with ``resize``: the build writes
    it, measuring reads the train split back."""
    return Path(zoo_dir) / CACHE_DIR / f"{split}-{input_size}-{resize}"


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
    ``cache_dir`` for ``loop.load_split``."""
    from camgap.data.store import TensorStore

    store = TensorStore.cached(
        records, cache_dir, input_size, resize, classes=list(classes), progress=progress, max_pixels=max_pixels
    )
    if len(store) and (int(store.labels.min()) < 0 or int(store.labels.max()) >= len(classes)):
        raise InputError(f"{cache_dir}: labels outside the {len(classes)} training classes")
    return str(cache_dir)


# --- writing ----------------------------------------------------------------------------


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save, atomically: a reader sees the old file or the new one, never half of one."""
    import torch

    io.atomic_write(path, lambda f: torch.save(obj, f))


def _finite_or_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite_or_none(v) for v in x]
    return x


def atomic_write_json(obj: Any, path: str | Path) -> None:
    """JSON with sorted keys, one space of indent, NaN and infinities as null (strict JSON)."""
    io.atomic_write_json(_finite_or_none(obj), path, indent=1, sort_keys=True)


@contextlib.contextmanager
def run_lock(directory: Path):
    """Exclusive lock on ``directory/.lock``: a straggler process still training this run (an
    orphan of a killed driver) finishes before another one touches the directory."""
    with io.file_lock(directory / ".lock"):
        yield


# --- reading, and what cannot be read --------------------------------------------------------


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


def stored_result(directory: str | Path, run_id: str) -> RunResult | None:
    """The result stored in ``directory/final.pt`` when it is readable and belongs to ``run_id``."""
    path = Path(directory) / "final.pt"
    if not path.is_file():
        return None
    try:
        done = read_run_checkpoint(path)
    except CheckpointUnreadableError:
        return None
    if done.get("run_id") != run_id or "result" not in done:
        return None
    return RunResult.from_dict(done["result"], f"{path}: result")


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
    return read_or_problem(path, RESUME_KEYS)[1]


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
    path.rename(aside)
    return f"{problem}; set aside as {aside.name}; {then}"


def readable_or_set_aside(path: Path, then: str, notes: list[str], need: tuple[str, ...] = ()) -> dict | None:
    """The checkpoint at ``path``; None when there is no file; None after setting it aside when it
    cannot be read or lacks one of the keys in ``need``, with a ``CheckpointSetAsideWarning`` and
    the line in ``notes``."""
    if not path.is_file():
        return None
    ck, problem = read_or_problem(path, need)
    if problem is not None:
        msg = set_aside(path, problem, then)
        notes.append(msg)
        warnings.warn(msg, CheckpointSetAsideWarning, stacklevel=2)
    return ck
