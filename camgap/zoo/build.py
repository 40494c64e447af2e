"""The driver: ``build`` a model set from a grid (``status`` and ``export``: ``zoo.status``).

``build(grid, data, out)`` validates everything first (grid keys and values, the data
directory's train and test splits, that ``out`` holds no model set of another grid or
dataset, that every pretrained weights file exists), then decodes the data once into
tensor stores (``out/cache``), pretrains the synthetic source-task models it needs, and
runs every run that is not done through an executor, writing the registry
(``out/registry.sqlite``) as results come back. Run directories are
``out/runs/<run_id>/`` (config.json, history.json, init.pt, last.pt while training,
final.pt).

Rerunning the same command resumes: done runs are kept, runs left 'running' by a dead
driver go back to pending and continue from their last epoch checkpoint, failed runs are
retried until they have failed ``max_attempts`` times (``retry_failed`` grants a fresh
set). One driver per model-set directory at a time (an exclusive lock on ``out/.lock``).

Recovery. An attempt is used only by a failure of the run itself (its training raised, or
its worker process died twice in a row). A run stopped by something else goes back to
pending: an interrupted driver, a sibling's dead worker, its own worker's first death. A
full or failing disk (ENOSPC, EIO, ... while writing a checkpoint or the registry) stops
the sweep with one line naming the path (``StorageError``); the same command resumes once
it is fixed. A missing ``registry.sqlite`` is rebuilt from ``runs/`` (``repair``). Every build
first checks the ``final.pt`` of each done run (size and sha256, ``camgap.zoo.digest``) and trains
a missing or corrupt one again, and removes temporary files that killed processes left.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from camgap.errors import CamgapError
from camgap.zoo.config import Pack, RunConfig, RunResult, Task
from camgap.zoo.errors import StorageError, ZooError, storage_stop
from camgap.zoo.grid import MAX_RUNS, Grid, GridError, RunSpec, canonical_json, load_grid
from camgap.zoo.packing import pack_plan
from camgap.zoo.recovery import (
    driver_lock,
    rebuild_for,
    recoverable,
    remove_temp_files,
    repair,
    retrain_unsound_finals,
    write_meta_backup,
)
from camgap.zoo.registry import META_BACKUP, RegistryError, ZooDB

# the Python API (camgap.zoo's doc) and `zoo repair|status|export` name these here, beside build
from camgap.zoo.status import EXPORT_COLUMNS, export, format_status, status
from camgap.zoo.sweep import OWN_DEATHS, SweepJob, sweep

__all__ = [
    "ZooError",
    "StorageError",
    "BuildSummary",
    "build",
    "repair",
    "status",
    "format_status",
    "export",
    "EXPORT_COLUMNS",
]


@dataclass
class BuildSummary:
    zoo_dir: Path
    total: int
    counts: dict[str, int]
    trained_now: int = 0
    failed_now: int = 0
    resumed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return self.counts.get("done", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    def __str__(self) -> str:
        c = self.counts
        return (
            f"{self.zoo_dir}: {c.get('done', 0)}/{self.total} done, {c.get('failed', 0)} failed, "
            f"{c.get('pending', 0)} pending; this build finished {self.trained_now} run(s), "
            f"{self.failed_now} failure(s) in {self.seconds:.1f}s"
        )


def _read_splits(data: Path, layout: str, box_units: str | None = None) -> tuple[list, list, list[str]]:
    from camgap.data.layouts import read_layout

    if not data.is_dir():
        raise ZooError(f"--data {data}: no such directory")
    try:
        train, classes = read_layout(data, layout, "train", missing_ok=True, box_units=box_units)
    except Exception as exc:  # noqa: BLE001
        raise ZooError(f"--data {data}: cannot read the train split: {exc}") from None
    try:
        test, _ = read_layout(data, layout, "test", missing_ok=True, box_units=box_units)
    except FileNotFoundError as exc:
        raise ZooError(f"--data {data}: no test split ({exc}); the model set needs a held-out test split") from None
    except Exception as exc:  # noqa: BLE001
        raise ZooError(f"--data {data}: cannot read the test split: {exc}") from None
    if len(classes) < 2:
        raise ZooError(f"--data {data}: {len(classes)} class(es) in the train split; need at least 2")
    return train, test, classes


def _describe(cfg: RunConfig, repeat: int) -> str:
    if not cfg.trained:
        return f"{cfg.arch} untrained #{repeat}"
    return (
        f"{cfg.arch} bs={cfg.batch_size} lr={cfg.lr:g} {cfg.optimizer} wd={cfg.weight_decay:g} "
        f"aug={int(cfg.augment)} pre={int(cfg.pretrained)} r{repeat}"
    )


def _result_line(res: RunResult) -> str:
    return (
        f"{res.epochs:>3d} ep {res.stop_reason or '-':<9} train {res.train_acc:.3f} "
        f"test {res.test_acc:.3f} gap {res.gap:6.2f}pp {res.wall_time or 0.0:7.1f}s"
    )


def build(
    grid: str | Path | Grid,
    data: str | Path,
    out: str | Path,
    *,
    executor: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    device: str = "auto",
    layout: str = "auto",
    max_attempts: int = 2,
    retry_failed: bool = False,
    keep_last: bool = False,
    cpus_per_run: int | None = None,
    progress: bool = True,
    log=None,
    max_runs: int | None = None,
    box_units: str | None = None,
    max_pixels: int | None = None,
    verify: bool = False,
) -> BuildSummary:
    """Build (or resume) the model set of ``grid`` on ``data`` in ``out``; see the module doc.
    ``max_runs``: refuse a grid of more runs, before anything is expanded or written (default:
    a Grid's own limit, a grid file's ``MAX_RUNS``). ``box_units`` and ``max_pixels`` are
    read_layout's and decode_rgb's (None: pixels, checked; 100 MP). ``verify``: hash every done
    run's final.pt (`zoo.digest.check_final`), not only those whose size, mtime or inode changed."""
    from camgap.zoo.files import cache_path, prepare_split, storage_error
    from camgap.zoo.pretrained import ensure_source_models

    t_start = time.perf_counter()
    log = log or _print_line
    g = _checked_grid(grid, executor, max_attempts, max_runs)
    _check_local_workers(executor, workers)
    data = Path(data).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    train_records, test_records, classes = _read_splits(data, layout, box_units)
    device = _local_device(device) if executor == "local" else device
    rebuild = _check_out(out)
    pretrained = _pretrained(g, out)

    with driver_lock(out):
        remove_temp_files(out, log)
        g = _resolve_precision(g, out, device if executor == "local" else None, log)
        if rebuild and not (out / ZooDB.FILENAME).exists():
            rebuild_for(g, out, log)
        reg = ZooDB.in_dir(out)
        try:
            data_info = {"classes": classes, "n_train": len(train_records), "n_test": len(test_records)}
            _bind(reg, g, out, data, data_info)
            specs = g.runs()
            todo, resumed = _register(reg, specs, out, retry_failed, max_attempts, log, verify)
            total = len(specs)
            if not todo:
                return _summary(reg, out, total, resumed, t_start, log)

            # decode the data once; pretrain source-task models; then the sweep
            size, resize = g.train.input_size, g.train.resize
            try:
                caches = {
                    split: prepare_split(
                        records, classes, cache_path(out, split, size, resize), size, resize, progress, max_pixels
                    )
                    for split, records in (("train", train_records), ("test", test_records))
                }
            except Exception as exc:
                disk = storage_error(exc)
                if disk is not None:
                    raise storage_stop(f"{disk.filename or out / 'cache'}: {disk.strerror or disk}") from exc
                raise ZooError(f"--data {data}: cannot decode the dataset: {exc}") from exc
            ex = _executor(executor, workers, device, ray_address, cpus_per_run, g.train.threads)
            try:
                ensure_source_models(g, out, ex, log=log)
                setup = _Setup(out, g, caches, classes, pretrained, max_attempts, keep_last)
                trained_now, failed_now = _sweep(reg, ex, todo, setup, total, progress, log)
            finally:
                ex.close()
            return _summary(reg, out, total, resumed, t_start, log, trained_now, failed_now)
        finally:
            reg.close()


def _summary(
    reg: ZooDB, out: Path, total: int, resumed: list[str], t_start: float, log, trained_now=0, failed_now=0
) -> BuildSummary:
    """The build's summary, logged (``trained_now``, ``failed_now``: runs finished, failures of this build)."""
    summary = BuildSummary(out, total, reg.counts(), trained_now, failed_now, resumed, time.perf_counter() - t_start)
    log(str(summary))
    return summary


def _print_line(msg: str) -> None:
    print(msg, flush=True)


def _check_local_workers(executor: str, workers: int | None) -> None:
    """A local executor's worker count, before the registry is written or the data decoded."""
    from camgap.zoo.executors import check_local_workers

    if executor == "local" and workers is not None:
        check_local_workers(workers)


def _checked_grid(grid: str | Path | Grid, executor: str, max_attempts: int, max_runs: int | None) -> Grid:
    """The grid to build, after the options that need no data: ZooError naming the bad one."""
    if max_attempts < 1:
        raise ZooError(f"--max-attempts must be >= 1, got {max_attempts}")
    if executor not in ("local", "ray"):
        raise ZooError(f"--executor must be local or ray, got {executor!r}")
    if max_runs is not None and (not isinstance(max_runs, int) or max_runs < 1):
        raise ZooError(f"--max-runs must be an integer >= 1, got {max_runs!r}")
    try:
        if isinstance(grid, Grid):
            g = grid if max_runs is None else replace(grid, max_runs=max_runs)
            g.check_size()
            return g
        return load_grid(grid, MAX_RUNS if max_runs is None else max_runs)
    except GridError as exc:
        raise ZooError(str(exc)) from None


def _local_device(device: str) -> str:
    from camgap.zoo.executors import resolve_device

    try:
        return resolve_device(device)
    except ValueError as exc:
        raise ZooError(str(exc)) from None


def _check_out(out: Path) -> bool:
    """Refuse an ``out`` that is no directory or holds something else than a model set; True when it
    is a model set whose registry is gone (rebuilt from its runs under the driver lock)."""
    if out.exists() and not out.is_dir():
        raise ZooError(f"--out {out} exists and is not a directory")
    rebuild = out.is_dir() and not (out / ZooDB.FILENAME).exists() and recoverable(out)
    if (
        out.is_dir()
        and not (out / ZooDB.FILENAME).exists()
        and not rebuild
        and any(p for p in out.iterdir() if not p.name.startswith("."))
    ):
        raise ZooError(f"--out {out} is not empty and holds no model set; use a new or empty directory")
    return rebuild


def _pretrained(g: Grid, out: Path) -> dict:
    from camgap.zoo.pretrained import PretrainedWeightsError, pretrained_paths

    try:
        return pretrained_paths(g, out)
    except PretrainedWeightsError as exc:
        raise ZooError(str(exc)) from None


def _bind(reg: ZooDB, g: Grid, out: Path, data: Path, data_info: dict) -> None:
    """Tie the registry to this grid and dataset (ZooError when it holds another's), and back its meta up."""
    try:
        reg.bind_grid(g.fingerprint(), canonical_json(g.canonical()), "grid")
        reg.bind_grid(_sha(canonical_json(data_info)), canonical_json(data_info), "data")
    except RegistryError as exc:
        raise ZooError(str(exc)) from None
    reg.set_meta("data_root", str(data))
    write_meta_backup(reg, out)


def _register(
    reg: ZooDB, specs: list[RunSpec], out: Path, retry_failed: bool, max_attempts: int, log, verify: bool = False
) -> tuple[list[RunSpec], list[str]]:
    """Register the grid's runs, send unsound and interrupted ones back to pending; returns the runs
    to train and the interrupted ones that resume."""
    new = reg.add_runs(specs)
    retrain_unsound_finals(reg, out, log, verify=verify)
    resumed = reg.reset_interrupted()
    if retry_failed:
        reg.reset_failed()
    todo = reg.todo(max_attempts)
    _refuse_unresolved(todo, out)
    if new:
        log(f"{out}: registered {new} new run(s); {len(specs)} in the grid")
    if resumed:
        log(f"resuming {len(resumed)} interrupted run(s) from their last checkpoint")
    return todo, resumed


def _executor(kind: str, workers: int | None, device: str, ray_address: str | None, cpus_per_run, threads: int):
    from camgap.zoo.executors import make_executor

    try:
        return make_executor(kind, workers, device, ray_address, cpus_per_run=cpus_per_run, run_threads=threads)
    except (ValueError, ImportError) as exc:
        raise ZooError(f"--executor {kind}: {exc}") from None


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


# --- precision ---------------------------------------------------------------------------


def _recorded_grid(out: Path) -> dict | None:
    """The canonical grid a model set recorded at its first build (registry, else its meta backup)."""
    text = None
    if (out / ZooDB.FILENAME).is_file():
        with contextlib.suppress(RegistryError), ZooDB.in_dir(out, read_only=True) as reg:
            text = reg.get_meta("grid")
    if text is None and (out / META_BACKUP).is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            text = json.loads((out / META_BACKUP).read_text(encoding="utf-8")).get("grid")
    with contextlib.suppress(TypeError, ValueError):
        recorded = json.loads(text) if text else None
        return recorded if isinstance(recorded, dict) else None
    return None


def _resolve_precision(g: Grid, out: Path, device: str | None, log) -> Grid:
    """The grid with ``precision = "auto"`` resolved once per model set, before its first run
    starts: as the model set at ``out`` recorded it (a resume keeps it, on any machine: bf16
    computes everywhere, only slower), else for ``device`` (``loop.choose_precision``); the log
    says which and why. A model set recorded with "auto" itself (by an earlier camgap) keeps its
    run ids; ``_refuse_unresolved`` stops before any of them would train."""
    if g.train.precision != "auto":
        return g
    recorded = _recorded_grid(out)
    if recorded is not None:
        stored = (recorded.get("train") or {}).get("precision", "fp32")
        if stored == "auto":
            log('precision auto: this model set was built before camgap resolved it; its run ids keep "auto"')
            return g
        choice, why = stored, "as this model set recorded at its first build"
    elif device is None:
        raise ZooError(
            f'{g.source}: [train] precision = "auto" is resolved before the first run starts, on the driver, '
            'which does not know the devices of --executor ray workers; set precision = "fp32" or "bf16"'
        )
    else:
        import torch

        from camgap.zoo.loop import choose_precision

        choice, why = choose_precision("auto", torch.device(device))
    log(f"precision auto -> {choice} ({why})")
    return g.with_precision(choice)


def _refuse_unresolved(todo: list[RunSpec], out: Path) -> None:
    """Runs whose config still says precision "auto" (a model set of an earlier camgap, which chose
    at every start) cannot train: their ids do not name what they would compute in."""
    unresolved = [s.run_id for s in todo if s.config.precision == "auto"]
    if unresolved:
        raise ZooError(
            f'{out}: {len(unresolved)} run(s) to train (e.g. {unresolved[0]}) have precision = "auto" in their '
            "ids, from an earlier camgap that chose bf16 or fp32 at each start; camgap now resolves it before "
            "a run starts and names it in the id, so build into a new --out (zoo status, export, measure and "
            "study still read this model set and its finished runs)"
        )


@dataclass(frozen=True)
class _Setup:
    """What a build's runs are started with: the model set, its grid, the decoded data and settings."""

    out: Path
    grid: Grid
    caches: dict
    classes: list[str]
    pretrained: dict
    max_attempts: int
    keep_last: bool


def _sweep(reg: ZooDB, ex, todo: list[RunSpec], setup: _Setup, total: int, progress: bool, log) -> tuple[int, int]:
    """Train ``todo`` on ``ex`` (``zoo.sweep``), recording each result as it comes back; returns the
    runs finished and the failures of this build. Runs in flight when it stops go back to pending."""
    from camgap.progress import progress_bar
    from camgap.zoo.files import storage_error

    finished = reg.counts()["done"] + reg.exhausted(setup.max_attempts)
    bar = progress_bar(total=total, initial=finished, unit="run", desc="zoo", enabled=progress)
    job = _Training(reg, setup, bar, progress, log)
    try:
        sweep(ex, todo, job)
    except BaseException as exc:
        with contextlib.suppress(RegistryError):  # a failed registry write: the next build resets them
            reg.reset_interrupted()  # in-flight runs resume from last.pt next time, no attempt used
        disk = storage_error(exc) if not isinstance(exc, CamgapError) else None
        if disk is not None:  # the driver's own writes (config.json, run directories)
            raise storage_stop(f"{disk.filename or setup.out}: {disk.strerror or disk}") from exc
        raise
    finally:
        bar.close()
    return job.trained, job.failed


class _Training(SweepJob):
    """A build's sweep: each run's directory, config.json and ``Task`` as it starts; each result in
    the registry and the log. Only the run's own worker dying twice in a row uses an attempt."""

    lost = OWN_DEATHS

    def __init__(self, reg: ZooDB, setup: _Setup, bar, progress: bool, log):
        self.reg, self.setup, self.bar, self.progress, self.log = reg, setup, bar, progress, log
        self.packs = pack_plan(setup.grid)
        self.trained = self.failed = 0

    def emit(self, msg: str) -> None:
        """A line of the build's log, above the progress bar when there is one."""
        if self.progress:
            self.bar.write(msg, file=sys.stdout)
            sys.stdout.flush()
        else:
            self.log(msg)

    def pack_of(self, run: RunSpec) -> str | None:
        return self.packs.get(run.run_id)

    def pack(self, pack_id: str, tasks: list[Task]) -> Pack:
        return Pack(pack_id, tuple(tasks))

    def start(self, run: RunSpec) -> Task:
        from camgap.zoo.files import atomic_write_json

        rid, s, cfg = run.run_id, self.setup, run.config
        self.reg.mark_running(rid)
        run_dir = s.out / "runs" / rid
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            {
                "run_id": rid,
                "repeat": run.repeat,
                "seed": run.seed,
                "config": cfg.to_dict(),
                "grid_fingerprint": s.grid.fingerprint(),
            },
            run_dir / "config.json",
        )
        return Task(
            rid,
            cfg,
            run.seed,
            run.repeat,
            str(run_dir),
            s.caches["train"],
            s.caches["test"],
            len(s.classes),
            tuple(s.classes),
            pretrained_path=s.pretrained.get(cfg.arch) if cfg.pretrained else None,
            eval_batch_size=s.grid.train.eval_batch_size,
            keep_last=s.keep_last,
        )

    def requeued(self, run: RunSpec, res: RunResult) -> None:
        self.reg.requeue(run.run_id)
        err = str(res.error or "unknown error")
        self.emit(f"LOST   {run.run_id} {_describe(run.config, run.repeat)}: {err}; re-queued (no attempt used)")

    def record(self, run: RunSpec, res: RunResult) -> bool:
        rid, desc, err = run.run_id, _describe(run.config, run.repeat), str(res.error or "unknown error")
        for note in res.warnings:
            self.emit(f"WARNING {rid}: {note}")
        if res.status == "storage":
            self.reg.requeue(rid)
            raise storage_stop(err)
        retry = False
        if res.status == "done":
            self.reg.mark_done(rid, res)
            self.trained += 1
            self.bar.update(1)
            self.emit(f"done   {rid} {desc} | {_result_line(res)}")
        else:
            attempts = self.reg.mark_failed(rid, err)
            self.failed += 1
            retry = attempts < self.setup.max_attempts
            first = err.strip().splitlines()[0] if err.strip() else err
            self.emit(
                f"FAILED {rid} {desc} (attempt {attempts}/{self.setup.max_attempts}"
                f"{', will retry' if retry else ''}): {first}"
            )
            if not retry:
                self.bar.update(1)
        self.bar.set_postfix(failed=self.reg.counts()["failed"], refresh=False)
        return retry
