"""One training run, or a pack of them: the run driver and the worker entry point.

Epoch. Shuffle with a generator seeded by (run seed, epoch); train one pass
(``camgap.zoo.loop``); then a clean evaluation pass over the training set (eval mode, no
augmentation) gives the train loss and accuracy used by the stopping rules and by the final
record, and a pass over the test split gives the test loss/accuracy. The rules
(``camgap.zoo.stopping``) decide whether to stop. A non-finite parameter (NaN/inf: a diverged
run, e.g. Adam at lr 0.125) is an absorbing state, so the run stops there with
``stop_reason = "diverged"`` instead of spinning to the epoch budget; its non-finite losses are
recorded as ``inf``.

Files in the run directory (all written atomically, ``camgap.zoo.files``):
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
import math
import random
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from camgap.errors import InputError, StateError
from camgap.zoo.config import Pack, RunConfig, RunResult, Task, check_pack
from camgap.zoo.digest import save_final
from camgap.zoo.files import (
    RESUME_KEYS,
    CheckpointSetAsideWarning,
    atomic_save,
    atomic_write_json,
    readable_or_set_aside,
    run_lock,
    storage_error,
)
from camgap.zoo.loop import RunInputs, evaluate, load_split, resolve_precision, train_one_epoch
from camgap.zoo.packed import PackedResNet, train_pack_epoch
from camgap.zoo.stopping import StoppingRules

__all__ = ["train_run", "train_pack", "execute_task", "run_threads"]


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
                stack.enter_context(run_lock(Path(t.run_dir)))
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
        ck = readable_or_set_aside(last, "the run restarts from init.pt", notes, RESUME_KEYS)
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
        done = readable_or_set_aside(final, "the run is trained again", notes[i])
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
                return RunResult(work.pack_id, "pack", results=tuple(train_pack(tasks)))
            return train_run(work)
    except Exception as exc:  # noqa: BLE001 - one bad run never stops the sweep
        disk = storage_error(exc)
        if disk is not None:
            where = disk.filename or getattr(work, "run_dir", None)
            code = errno.errorcode.get(disk.errno, disk.errno)
            return RunResult(work.run_id, "storage", error=f"{where}: {disk.strerror or disk} (errno {code})")
        tb = traceback.format_exc(limit=8)
        return RunResult(work.run_id, "failed", error=f"{type(exc).__name__}: {exc}\n{tb}")
