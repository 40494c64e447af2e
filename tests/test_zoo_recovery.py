"""Crash recovery of `camgap zoo build` without a human: attempts used only by a run's own
failure, dead workers, unreadable checkpoints, a lost registry, interrupted runs in
`zoo status`, read-only storage, a full disk."""

import errno
import fcntl
import json
import multiprocessing as mp
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from test_zoo_build import _task, quiet, write_grid

import camgap.zoo.executors as executors
import camgap.zoo.files as files
import camgap.zoo.train as train
from camgap.data.synthetic import write_synthetic
from camgap.zoo.build import StorageError, ZooError, build, format_status, status
from camgap.zoo.cli import main as zoo_main
from camgap.zoo.config import Pack, RunResult, Task
from camgap.zoo.files import CheckpointSetAsideWarning
from camgap.zoo.grid import load_grid
from camgap.zoo.registry import META_BACKUP, ZooDB
from camgap.zoo.train import execute_task, train_run
from tests.helpers.zoo import build_args
from tests.zoo_hooks import NapTask, nap, worker_env

ROOT = Path(__file__).resolve().parents[1]
RESULT_COLUMNS = [
    "run_id",
    "config",
    "repeat",
    "seed",
    "trained",
    "status",
    "epochs",
    "stop_reason",
    "train_acc",
    "train_loss",
    "test_acc",
    "test_loss",
    "gap",
    "wall_time",
    "pack_wall_time",
    "precision",
    "pack_size",
    "resumed_from",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synthetic(
        tmp_path_factory.mktemp("synth") / "data", seed=2, classes=3, train_per_class=12, test_per_class=6, size=16
    )


def runs(zoo: Path):
    with ZooDB.in_dir(zoo, read_only=True) as reg:
        return reg.runs_frame()


class Scripted:
    """The in-process executor, except where the script says: ``"interrupt"`` raises
    KeyboardInterrupt in wait() (Ctrl-C of the driver), ``"died"`` reports the run's worker
    dead (as LocalExecutor does after a worker's SIGKILL), ``"idle"`` an idle worker dead (the
    run lost, not by its fault); ``None`` runs the run."""

    def __init__(self, script: list):
        self.script = script
        self.inner = executors.InProcessExecutor("cpu", 1)
        self.capacity = 1

    def submit(self, task: Task | Pack) -> None:
        self.inner.submit(task)

    def wait(self) -> list[RunResult]:
        step = self.script.pop(0) if self.script else None
        if step == "interrupt":
            raise KeyboardInterrupt
        if step == "died":
            task = self.inner._queue.pop(0)
            died = "its worker process died (killed, out of memory or crashed)"
            return [RunResult(task.run_id, "lost", error=died, worker_died=True)]
        if step == "idle":
            task = self.inner._queue.pop(0)
            return [RunResult(task.run_id, "lost", error=IDLE_DIED, worker_died=False)]
        return self.inner.wait()

    def close(self) -> None:
        self.inner.close()


def scripted(monkeypatch, script: list) -> None:
    monkeypatch.setattr(executors, "make_executor", lambda *a, **k: Scripted(script))


def test_interruptions_and_a_dead_worker_use_no_attempt(tmp_path, data, monkeypatch):
    """With --max-attempts 1: a Ctrl-C, a kill -9 of the driver (its run left 'running') and a
    worker's death later, every run still trains; none used an attempt."""
    grid = write_grid(tmp_path / "g.toml", lrs="0.05, 0.005", epochs=1)
    zoo = tmp_path / "zoo"
    cmd = build_args(grid, data, zoo, 0, "--max-attempts", "1")
    scripted(monkeypatch, ["interrupt"])
    assert zoo_main(cmd) == 130  # Ctrl-C
    frame = runs(zoo)
    assert list(frame.status) == ["pending", "pending"] and list(frame.attempts) == [0, 0]

    first = frame.run_id[0]
    with ZooDB.in_dir(zoo) as reg:  # what a kill -9 of the driver leaves: its run 'running'
        reg.mark_running(first)
    info = status(zoo)  # no driver holds the lock: shown as interrupted
    assert info["counts"]["interrupted"] == 1 and info["counts"]["running"] == 0
    assert "1 run(s) interrupted" in format_status(info)

    scripted(monkeypatch, ["died"])  # then the first run's worker dies once
    lines = []
    s = build(grid, data, zoo, workers=0, device="cpu", progress=False, log=lines.append, max_attempts=1)
    assert s.done == 2 and s.failed == 0
    assert any(line.startswith(f"LOST   {first}") and "re-queued (no attempt used)" in line for line in lines)
    assert "resuming 1 interrupted run(s) from their last checkpoint" in lines
    frame = runs(zoo)
    assert list(frame.status) == ["done", "done"] and list(frame.attempts) == [0, 0]


def test_a_run_whose_worker_dies_twice_in_a_row_fails(tmp_path, data, monkeypatch):
    grid = write_grid(tmp_path / "g.toml", lrs="0.05, 0.005", epochs=1)
    zoo = tmp_path / "zoo"
    scripted(monkeypatch, ["died", None, "died"])  # the first run kills its worker, twice (re-queued last)
    lines = []
    s = build(grid, data, zoo, workers=0, device="cpu", progress=False, log=lines.append, max_attempts=1)
    assert s.done == 1 and s.failed == 1 and s.failed_now == 1
    bad = runs(zoo).iloc[0]
    assert bad.status == "failed" and bad.attempts == 1
    assert bad.error.startswith("its worker process died twice in a row while running it")
    assert any(line.startswith(f"FAILED {bad.run_id}") and "(attempt 1/1)" in line for line in lines)


@pytest.mark.slow
def test_sigkill_of_a_worker_process(tmp_path, data, monkeypatch):
    """kill -9 one of two worker processes mid-sweep: its run is re-queued (no attempt), the
    sibling killed with the pool resumes; the sweep completes every run."""
    gate = tmp_path / "gate"
    for name, value in worker_env(hold=gate).items():  # the spawned workers start with these
        monkeypatch.setenv(name, value)
    grid = write_grid(tmp_path / "g.toml", lrs="0.05, 0.005", epochs=3)
    zoo = tmp_path / "zoo"
    killed = []
    older = {p.pid for p in mp.active_children()}  # children of earlier tests are not this sweep's workers

    def kill_a_worker() -> None:
        """Once both runs are held after their first epoch, kill one's worker; then let them go on."""
        try:
            deadline = time.monotonic() + 300  # a limit against a hang, not a timing
            while len(list(zoo.glob("runs/*/last.pt"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            workers = [p for p in mp.active_children() if p.is_alive() and p.pid not in older]
            if workers:
                os.kill(workers[0].pid, 9)
                killed.append(workers[0].pid)
        finally:
            gate.touch()

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    lines = []
    s = build(grid, data, zoo, workers=2, device="cpu", progress=False, log=lines.append)
    killer.join()
    assert killed, "no worker process was found to kill"
    assert s.done == 2 and s.failed == 0 and s.failed_now == 0
    lost = [line for line in lines if line.startswith("LOST")]
    died = [line for line in lost if "its worker process died (killed" in line]
    # the dead worker's run is told apart from its sibling by pid and exit signal when the pool
    # still lists its processes; when it no longer does (a race with the pool's own shutdown),
    # both are suspects: either way every run is re-queued without using an attempt
    assert 1 <= len(died) <= 2, lines
    if len(died) == 1:
        assert all("another run's dead worker" in line for line in lost if line not in died)
    else:
        assert all("cannot tell which" in line for line in died)
    frame = runs(zoo)
    assert (frame.status == "done").all() and (frame.attempts == 0).all()
    for r in frame.itertuples():
        hist = json.loads((zoo / "runs" / r.run_id / "history.json").read_text())
        assert [h["epoch"] for h in hist] == list(range(1, r.epochs + 1))


def _interrupt_after_first_epoch(task) -> None:
    class Stop(Exception):
        pass

    def stop(epoch, record):
        raise Stop

    with pytest.raises(Stop):
        train_run(task, epoch_callback=stop)


def test_unreadable_last_pt_is_set_aside_and_the_run_restarts(tmp_path, data):
    fresh = train_run(_task(tmp_path, data, tmp_path / "fresh"))
    task = _task(tmp_path, data, tmp_path / "run")
    _interrupt_after_first_epoch(task)
    last = tmp_path / "run" / "last.pt"
    last.write_bytes(last.read_bytes()[:200])  # truncated
    with pytest.warns(
        CheckpointSetAsideWarning,
        match=r"last\.pt: cannot read checkpoint.*set aside as "
        r"last\.pt\.corrupt-.*restarts from init\.pt",
    ):
        result = train_run(task)
    aside = list((tmp_path / "run").glob("last.pt.corrupt-*"))
    assert len(aside) == 1 and aside[0].stat().st_size == 200
    assert result.resumed_from is None and result.warnings[0].startswith(str(last))
    for k in ("epochs", "stop_reason", "train_acc", "train_loss", "test_acc", "test_loss"):
        assert getattr(result, k) == getattr(fresh, k), (
            k
        )  # restarted from scratch: the same seeded run, on this machine


def test_unreadable_final_pt_is_set_aside_and_the_run_trained_again(tmp_path, data):
    task = _task(tmp_path, data, tmp_path / "run", epochs=1)
    train_run(task)
    final = tmp_path / "run" / "final.pt"
    final.write_bytes(b"\x00garbage" * 10)
    with warnings.catch_warnings(record=True) as caught:  # the worker entry reports it in the result
        warnings.simplefilter("always")
        result = execute_task(task)
    assert not [w for w in caught if issubclass(w.category, CheckpointSetAsideWarning)]
    assert result.status == "done" and result.epochs == 1
    assert "final.pt: cannot read checkpoint" in result.warnings[0] and "trained again" in result.warnings[0]
    assert len(list((tmp_path / "run").glob("final.pt.corrupt-*"))) == 1
    assert torch.load(final, weights_only=False)["result"]["epochs"] == 1


def test_registry_rebuilt_from_the_run_directories(tmp_path, data):
    grid = write_grid(tmp_path / "g.toml", lrs="0.05, 0.005", untrained=1, epochs=1)
    zoo = tmp_path / "zoo"
    build(grid, data, zoo, workers=0, device="cpu", progress=False, log=quiet)
    a = runs(zoo).run_id[0]
    rows = [
        {
            "measure": "iou",
            "params": '{"cam":"gradcam","threshold":0.1}',
            "value": 0.25,
            "state": "done",
            "reason": None,
        },
        {"measure": "path_norm", "params": "{}", "value": None, "state": "failed", "reason": "overflow"},
    ]
    (zoo / "runs" / a / "measurements.json").write_text(json.dumps(rows))  # as `zoo measure` writes it
    with ZooDB.in_dir(zoo) as reg:
        for r in rows:
            reg.record_measurement(a, r["measure"], r["params"], r["value"], r["state"], r["reason"])
        old_meta, old_measures = reg.meta(), reg.measurements_frame()
    old = runs(zoo)
    mtimes = {p: p.stat().st_mtime_ns for p in zoo.glob("runs/*/final.pt")}

    (zoo / ZooDB.FILENAME).unlink()
    assert zoo_main(["repair", str(zoo)]) == 0
    with ZooDB.in_dir(zoo, read_only=True) as reg:
        assert reg.integrity_check(zoo) == []
        assert reg.meta() == old_meta  # grid, data fingerprint, data root: from registry-meta.json
        new_measures = reg.measurements_frame()
    cols = ["run_id", "measure", "params", "value", "status", "error"]
    assert new_measures[cols].equals(old_measures[cols])
    new = runs(zoo)
    assert new[RESULT_COLUMNS].equals(old[RESULT_COLUMNS])

    # repair over an existing registry keeps the old one aside
    assert zoo_main(["repair", str(zoo)]) == 0
    assert len(list(zoo.glob("registry.sqlite.replaced-*Z"))) == 1  # with its -wal/-shm files, if any

    # `zoo build` rebuilds a missing registry by itself, and retrains nothing
    (zoo / ZooDB.FILENAME).unlink()
    lines = []
    s = build(grid, data, zoo, workers=0, device="cpu", progress=False, log=lines.append)
    assert s.done == 3 and s.trained_now == 0
    assert any("registry.sqlite missing; rebuilt it from runs/: 3 done, 0 pending" in line for line in lines)
    assert {p: p.stat().st_mtime_ns for p in zoo.glob("runs/*/final.pt")} == mtimes
    assert runs(zoo)[RESULT_COLUMNS].equals(old[RESULT_COLUMNS])

    # ... but not with another grid's runs
    (zoo / ZooDB.FILENAME).unlink()
    other = write_grid(tmp_path / "other.toml", lrs="0.01", epochs=1)
    with pytest.raises(ZooError, match="a run of a different grid"):
        build(other, data, zoo, workers=0, device="cpu", progress=False, log=quiet)


def test_rebuild_without_meta_backup_or_final_pt(tmp_path, data):
    """Run directories alone: a run without final.pt comes back pending and is trained."""
    grid = write_grid(tmp_path / "g.toml", lrs="0.05, 0.005", epochs=1)
    zoo = tmp_path / "zoo"
    build(grid, data, zoo, workers=0, device="cpu", progress=False, log=quiet)
    a, b = runs(zoo).run_id
    (zoo / ZooDB.FILENAME).unlink()
    (zoo / META_BACKUP).unlink()
    (zoo / "runs" / b / "final.pt").unlink()
    assert zoo_main(["repair", str(zoo)]) == 0
    frame = runs(zoo).set_index("run_id")
    assert frame.loc[a, "status"] == "done" and frame.loc[b, "status"] == "pending"
    s = build(grid, data, zoo, workers=0, device="cpu", progress=False, log=quiet)
    assert s.done == 2 and s.trained_now == 1


def _hand_made_zoo(zoo: Path, grid_file: Path) -> list[str]:
    """A registry with three runs, one left 'running': no training needed."""
    specs = load_grid(grid_file).runs()
    with ZooDB.in_dir(zoo) as reg:
        reg.add_runs(specs)
        reg.mark_running(specs[0].run_id)
    return [s.run_id for s in specs]


def test_status_tells_interrupted_from_running(tmp_path):
    zoo = tmp_path / "zoo"
    _hand_made_zoo(zoo, write_grid(tmp_path / "g.toml", lrs="0.05, 0.005", untrained=1))
    info = status(zoo)
    assert not info["driver_running"]
    assert info["counts"] == {"pending": 2, "running": 0, "interrupted": 1, "done": 0, "failed": 0}
    assert info["by_arch"]["small_resnet"]["interrupted"] == 1
    text = format_status(info)
    assert "1 interrupted" in text and "rerun the build command to resume them" in text
    with open(zoo / ".lock", "a+b") as lock:  # a live driver
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        info = status(zoo)
    assert info["driver_running"] and info["counts"]["running"] == 1 and info["counts"]["interrupted"] == 0
    assert "interrupted (" not in format_status(info)


def _can_mount_read_only(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    cmd = f"mount --bind {probe} {probe} && mount -o remount,bind,ro {probe} && ! touch {probe}/x 2>/dev/null"
    return subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True).returncode == 0


@pytest.mark.slow
def test_status_and_export_on_read_only_storage(tmp_path):
    """A real read-only mount (a private mount namespace: as root, chmod would not stop writes)."""
    if not _can_mount_read_only(tmp_path):
        pytest.skip("cannot bind-mount a read-only folder here (unshare -m needs CAP_SYS_ADMIN)")
    zoo = tmp_path / "zoo"
    _hand_made_zoo(zoo, write_grid(tmp_path / "g.toml", lrs="0.05, 0.005", untrained=1))
    before = sorted(p.name for p in zoo.iterdir())
    assert before == ["registry.sqlite"]
    cli = (
        f"import sys; from camgap.zoo.cli import main; "
        f"sys.exit(main(['status', '{zoo}']) or main(['export', '{zoo}', '--out', '{tmp_path / 'runs.csv'}']))"
    )
    script = (
        f"mount --bind {zoo} {zoo} && mount -o remount,bind,ro {zoo} && ! touch {zoo}/x 2>/dev/null && "
        f'{sys.executable} -c "{cli}"'
    )
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 runs: 2 pending, 0 running, 1 interrupted, 0 done, 0 failed" in out.stdout
    assert len((tmp_path / "runs.csv").read_text().splitlines()) == 4
    assert sorted(p.name for p in zoo.iterdir()) == before


def test_full_disk_while_saving_a_checkpoint(tmp_path, data, monkeypatch, capsys):
    grid = write_grid(tmp_path / "g.toml", lrs="0.05, 0.005", epochs=1)
    zoo = tmp_path / "zoo"
    real_save = train.atomic_save

    def full_disk(obj, path):
        if Path(path).name == "last.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(obj, path)

    monkeypatch.setattr(train, "atomic_save", full_disk)
    cmd = build_args(grid, data, zoo, 0, "--max-attempts", "1")
    assert zoo_main(cmd) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("camgap zoo: error: disk full or failing: ") and "last.pt: No space left on device" in err
    assert "rerun the same command to resume (no attempt was used)" in err
    frame = runs(zoo)
    assert list(frame.status) == ["pending", "pending"] and list(frame.attempts) == [0, 0]
    monkeypatch.setattr(train, "atomic_save", real_save)
    assert zoo_main(cmd) == 0
    assert list(runs(zoo).status) == ["done", "done"]


def test_full_disk_while_the_driver_writes_a_run_directory(tmp_path, data, monkeypatch):
    grid = write_grid(tmp_path / "g.toml", lrs="0.05", epochs=1)
    zoo = tmp_path / "zoo"
    real_write = files.atomic_write_json

    def full_disk(obj, path):
        if Path(path).name == "config.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(obj, path)

    monkeypatch.setattr(files, "atomic_write_json", full_disk)
    with pytest.raises(StorageError, match=r"config\.json: No space left on device; free space"):
        build(grid, data, zoo, workers=0, device="cpu", progress=False, log=quiet)
    run = runs(zoo).iloc[0]
    assert run.status == "pending" and run.attempts == 0


def test_full_disk_while_writing_the_registry(tmp_path, data, monkeypatch, capsys):
    grid = write_grid(tmp_path / "g.toml", lrs="0.05", epochs=1)
    zoo = tmp_path / "zoo"

    def full(self, run_id, result):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(ZooDB, "mark_done", full)
    cmd = build_args(grid, data, zoo, 0, "--max-attempts", "1")
    assert zoo_main(cmd) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"camgap zoo: error: {zoo / ZooDB.FILENAME}: database or disk is full; free space "
        f"(or fix the storage) and rerun the same command to resume"
    )
    run = runs(zoo).iloc[0]
    assert run.status == "pending" and run.attempts == 0
    final = zoo / "runs" / run.run_id / "final.pt"
    mtime = final.stat().st_mtime_ns
    monkeypatch.undo()
    assert zoo_main(cmd) == 0
    assert runs(zoo).status.tolist() == ["done"] and final.stat().st_mtime_ns == mtime  # not retrained


def test_build_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        zoo_main(["build", "--help"])
    out = capsys.readouterr().out
    for code in (
        "0    every run of the grid is done",
        "2    bad input",
        "3    some runs failed for good",
        "130  interrupted",
    ):
        assert code in out


@pytest.mark.slow
def test_the_hold_hook_reaches_subprocesses():
    """The kill tests kill processes while their runs are held at an epoch's end: a subprocess
    given ``worker_env(hold=...)`` holds them (tests/zoo_hooks/sitecustomize.py), one without it
    trains straight on (camgap has no switch)."""
    probe = "import camgap.zoo.train as t; print(t.__file__, t._Run.end_epoch.__name__)"
    for env, name in ((worker_env(hold=Path("/nonexistent/gate")), "held"), (worker_env(), "end_epoch")):
        out = subprocess.run(
            [sys.executable, "-c", probe], env=os.environ | env, cwd="/", capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [str(ROOT / "camgap" / "zoo" / "train.py"), name]


# --- unreadable files of any kind, a corrupt final.pt, idle workers, leftovers ------------------


def _torch_error(path: Path) -> str:
    """What torch itself raises on reading ``path`` (the cases camgap must all treat alike)."""
    try:
        torch.load(path, weights_only=True)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    except Exception as exc:  # noqa: BLE001
        return type(exc).__name__
    return "read"


def _truncate(path: Path, fraction: float) -> int:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return int(len(data) * fraction)


@pytest.mark.parametrize(
    ("fraction", "torch_raises", "problem"),
    [
        (0.10, "EINVAL", "Invalid argument; {size} bytes: truncated or corrupt"),
        (0.25, "EINVAL", "Invalid argument; {size} bytes: truncated or corrupt"),
        (0.50, "RuntimeError", "RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central"),
    ],
)
def test_a_short_last_pt_is_set_aside_whatever_torch_raises(tmp_path, data, fraction, torch_raises, problem):
    """torch reads a last.pt cut to 10 or 25 % with an OSError(EINVAL), to 50 % with a zip error:
    both the file's problem, not the disk's; the run restarts (at the worker entry: no `storage`)."""
    task = _task(tmp_path, data, tmp_path / "run", epochs=2)
    _interrupt_after_first_epoch(task)
    last = tmp_path / "run" / "last.pt"
    size = _truncate(last, fraction)
    assert _torch_error(last) == torch_raises
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = execute_task(task)
    assert not caught
    assert result.status == "done" and result.epochs == 2 and result.resumed_from is None
    assert result.warnings[0].startswith(f"{last}: cannot read checkpoint ({problem.format(size=size)}")
    assert "); set aside as last.pt.corrupt-" in result.warnings[0]
    assert result.warnings[0].endswith("; the run restarts from init.pt")
    (aside,) = (tmp_path / "run").glob("last.pt.corrupt-*")
    assert aside.stat().st_size == size


def test_a_disk_error_on_reading_a_checkpoint_is_no_file_problem(tmp_path, data, monkeypatch):
    """EIO while reading last.pt: the run comes back `storage` (no attempt used), nothing set aside."""
    task = _task(tmp_path, data, tmp_path / "run", epochs=2)
    _interrupt_after_first_epoch(task)
    last = tmp_path / "run" / "last.pt"

    def failing_disk(path, *a, **k):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(torch, "load", failing_disk)
    result = execute_task(task)
    assert result.status == "storage" and result.error == f"{last}: Input/output error (errno EIO)"
    assert last.is_file() and not list((tmp_path / "run").glob("*.corrupt-*"))


def _build_keeping_last(tmp_path, data, zoo):
    """Two done runs, each with last.pt kept (what resuming reads) beside final.pt."""
    grid = write_grid(tmp_path / "g.toml", lrs="0.05, 0.005", epochs=1)
    build(grid, data, zoo, workers=0, device="cpu", progress=False, log=quiet, keep_last=True)
    return grid, list(runs(zoo).run_id)


def _break_run_files(zoo: Path, a: str, b: str) -> dict[str, Path]:
    """Run a: a final.pt of an older set (no recorded digest) cut to 25 %; run b: interrupted (no
    final.pt) with its last.pt cut to 25 % and init.pt garbled. Returns the broken files; torch
    raises EINVAL on both short checkpoints."""
    ra, rb = zoo / "runs" / a, zoo / "runs" / b
    (ra / "final.pt.sha256.json").unlink()
    (rb / "final.pt").unlink()
    (rb / "final.pt.sha256.json").unlink()
    broken = {
        "final": ra / "final.pt",
        "last": rb / "last.pt",
        "init": rb / "init.pt",
    }
    _truncate(broken["final"], 0.25)
    _truncate(broken["last"], 0.25)
    broken["init"].write_bytes(b"PK\x03\x04 not a zip archive")
    assert _torch_error(broken["final"]) == _torch_error(broken["last"]) == "EINVAL"
    return broken


def test_repair_names_and_sets_aside_every_unreadable_file(tmp_path, data, capsys):
    zoo = tmp_path / "zoo"
    _, (a, b) = _build_keeping_last(tmp_path, data, zoo)
    broken = _break_run_files(zoo, a, b)
    (zoo / ZooDB.FILENAME).unlink()
    capsys.readouterr()
    assert zoo_main(["repair", "--zoo", str(zoo)]) == 0
    out = capsys.readouterr().out
    head, *problems = out.strip().splitlines()
    assert head.endswith("0 done, 2 pending (from run directories), 0 measurement(s) restored; 3 problem(s):")
    expect = {
        "init": f"{broken['init']}: cannot read checkpoint (",
        "last": f"{broken['last']}: cannot read checkpoint (Invalid argument; ",
        "final": f"{broken['final']}: cannot read checkpoint (Invalid argument; ",
    }
    for name, start in expect.items():
        (line,) = [p.strip() for p in problems if p.strip().startswith(start)]
        assert f"; set aside as {broken[name].name}.corrupt-" in line, line
    assert len(problems) == 3
    for path in (broken["init"], broken["last"], broken["final"]):
        assert not path.exists() and len(list(path.parent.glob(f"{path.name}.corrupt-*"))) == 1
    assert list(runs(zoo).status) == ["pending", "pending"]


def test_build_with_a_lost_registry_sets_aside_short_checkpoints_and_completes(tmp_path, data):
    zoo = tmp_path / "zoo"
    grid, (a, b) = _build_keeping_last(tmp_path, data, zoo)
    old = runs(zoo)
    broken = _break_run_files(zoo, a, b)
    (zoo / ZooDB.FILENAME).unlink()
    lines = []
    s = build(grid, data, zoo, workers=0, device="cpu", progress=False, log=lines.append)
    assert s.done == 2 and s.failed == 0 and s.trained_now == 2
    text = "\n".join(lines)
    assert "registry.sqlite missing; rebuilt it from runs/: 0 done, 2 pending" in text
    for name in ("init", "last", "final"):
        assert f"{broken[name]}: cannot read checkpoint (" in text
        assert f"set aside as {broken[name].name}.corrupt-" in text
    new = runs(zoo)
    cols = ["run_id", "epochs", "train_acc", "test_acc", "gap"]  # trained again from scratch, same seeds
    assert new[cols].equals(old[cols]) and (new.attempts == 0).all()


def test_a_corrupt_final_pt_is_flagged_by_status_and_trained_again_by_build(tmp_path, data):
    grid = write_grid(tmp_path / "g.toml", lrs="0.05, 0.005", epochs=1)
    zoo = tmp_path / "zoo"
    build(grid, data, zoo, workers=0, device="cpu", progress=False, log=quiet)
    old = runs(zoo)
    a, b = old.run_id
    fa, fb = zoo / "runs" / a / "final.pt", zoo / "runs" / b / "final.pt"
    recorded = json.loads((zoo / "runs" / a / "final.pt.sha256.json").read_text())
    st = fa.stat()
    assert recorded == {
        "file": "final.pt",
        "size": st.st_size,
        "sha256": sha256(fa),
        "mtime_ns": st.st_mtime_ns,
        "inode": st.st_ino,
    }
    flipped = bytearray(fa.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # one bit flip inside the weights: torch would read it
    fa.write_bytes(bytes(flipped))
    full = fb.stat().st_size
    size = _truncate(fb, 0.5)
    info = status(zoo)
    assert info["counts"]["done"] == 2
    assert info["integrity_problems"] == [
        f"run {a}: done, but {fa}: its sha256 differs from the one recorded when it was written (corrupt); "
        "`camgap zoo build --verify` trains it again",
        f"run {b}: done, but {fb}: {size} bytes, {full} when it was written (truncated or overwritten); "
        "`camgap zoo build --verify` trains it again",
    ]
    assert "INTEGRITY PROBLEMS (2):" in format_status(info)

    lines = []
    s = build(grid, data, zoo, workers=0, device="cpu", progress=False, log=lines.append)
    assert s.done == 2 and s.trained_now == 2
    assert any(line.startswith(f"WARNING {a}: {fa}: its sha256 differs") for line in lines)
    assert any(
        line.startswith(f"WARNING {b}: {fb}: {size} bytes") and line.endswith("; the run is trained again")
        for line in lines
    )
    assert len(list(fa.parent.glob("final.pt.corrupt-*"))) == 1
    cols = ["run_id", "status", "epochs", "train_acc", "test_acc", "gap", "attempts"]
    assert runs(zoo)[cols].equals(old[cols])
    assert status(zoo)["integrity_problems"] == []


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


IDLE_DIED = "stopped when an idle worker process died (killed, out of memory or crashed)"


def test_lost_runs_tell_an_idle_workers_death_from_a_runs_own(monkeypatch):
    """Whose worker died, by the pids workers report: the run's own (worker_died), none of the
    runs' (an idle worker: no run's fault), a run that had not reported yet (a suspect)."""
    ex = executors.LocalExecutor(2, fn=nap)  # the pool starts no process before a submit
    monkeypatch.setattr(ex, "_drain_pids", lambda: None)
    tasks = [NapTask("a", 0, "-"), NapTask("b", 0, "-")]
    try:
        own = "its worker process died (killed, out of memory or crashed)"
        sibling = "stopped by another run's dead worker process"
        cases = [
            ({"a": 11, "b": 12}, {13}, [(False, IDLE_DIED), (False, IDLE_DIED)]),  # 13: idle
            ({"a": 11, "b": 12}, {12}, [(False, sibling), (True, own)]),
            ({"a": 11}, {13}, [(False, sibling), (True, own)]),  # b had not reported: it may be 13's
        ]
        for pids, dead, expect in cases:
            ex._pids = dict(pids)
            monkeypatch.setattr(ex, "_dead_pids", lambda dead=dead: dead)
            got = [(r.worker_died, r.error) for r in ex._lost_runs(tasks)]
            assert got == expect, (pids, dead)
            assert all(r.status == "lost" for r in ex._lost_runs(tasks))
    finally:
        ex.close()


def test_an_idle_workers_death_uses_no_attempt(tmp_path, data, monkeypatch):
    """With --max-attempts 1, a run stopped twice in a row by an idle worker's death still trains."""
    grid = write_grid(tmp_path / "g.toml", lrs="0.05", epochs=1)
    zoo = tmp_path / "zoo"
    scripted(monkeypatch, ["idle", "idle"])
    lines = []
    s = build(grid, data, zoo, workers=0, device="cpu", progress=False, log=lines.append, max_attempts=1)
    assert s.done == 1 and s.failed == 0
    rid = runs(zoo).run_id[0]
    assert [line for line in lines if line.startswith("LOST")] == [
        f"LOST   {rid} small_resnet bs=16 lr=0.05 sgd wd=0 aug=1 pre=0 r0: {IDLE_DIED}; re-queued (no attempt used)"
    ] * 2
    assert list(runs(zoo).attempts) == [0]


@pytest.mark.slow
def test_sigkill_of_an_idle_worker_process(tmp_path):
    """kill -9 a worker that has finished its run while its sibling runs: the sibling's run comes
    back lost without being its fault (no attempt, no death of its own counted)."""
    quick = NapTask("quick", 0.0, str(tmp_path / "quick.pid"), wait_for=str(tmp_path / "slow.pid"))
    slow = NapTask("slow", 120.0, str(tmp_path / "slow.pid"))
    ex = executors.LocalExecutor(2, fn=nap)
    try:
        ex.submit(quick)
        ex.submit(slow)  # quick waits for slow to start: two workers, one run each
        (first,) = ex.wait()
        assert (first.run_id, first.status) == ("quick", "done")
        idle, busy = (int((tmp_path / f"{t}.pid").read_text()) for t in ("quick", "slow"))
        assert idle != busy
        os.kill(idle, 9)
        (lost,) = ex.wait()
        assert (lost.run_id, lost.status, lost.worker_died, lost.error) == ("slow", "lost", False, IDLE_DIED)
    finally:
        ex.close()


def test_temporary_files_of_dead_processes_are_removed_at_the_next_start(tmp_path, data):
    grid = write_grid(tmp_path / "g.toml", lrs="0.05", epochs=1)
    zoo = tmp_path / "zoo"
    build(grid, data, zoo, workers=0, device="cpu", progress=False, log=quiet)
    rid = runs(zoo).run_id[0]
    dead = _dead_pid()
    (cache,) = (zoo / "cache").glob("train-*")
    leftovers = [
        zoo / "runs" / rid / f".last.pt.tmp-{dead}",
        zoo / "runs" / rid / f".final.pt.tmp-{dead}",
        zoo / f".registry-meta.json.tmp-{dead}",
        cache / f".images.npy.tmp-{dead}-0123abcd",  # the tensor store's
    ]
    live = zoo / "runs" / rid / f".history.json.tmp-{os.getppid()}"  # a live process may still write it
    for f in [*leftovers, live]:
        f.write_bytes(b"half a file")
    lines = []
    build(grid, data, zoo, workers=0, device="cpu", progress=False, log=lines.append)
    assert not any(f.exists() for f in leftovers) and live.is_file()
    (line,) = [line for line in lines if "temporary file" in line]
    head, names = line.split(": removed 4 temporary file(s) left by a killed process: ")
    assert head == str(zoo) and set(names.split(", ")) == {str(f.relative_to(zoo)) for f in leftovers}

    left = zoo / "runs" / rid / f".config.json.tmp-{dead}"
    left.write_text("{")
    assert zoo_main(["repair", "--zoo", str(zoo)]) == 0
    assert not left.exists() and live.is_file()


def _dead_pid() -> int:
    """The pid of a child that has exited and been reaped (no process has it until reused)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


class _ReapedElsewhere:
    """A worker process that has ended, whose exit code reads None for a moment: the pool's own
    thread won the race to waitpid and has not stored the code yet."""

    def __init__(self, ended: bool):
        self.reads = 0
        read, write = os.pipe()
        self.sentinel, self._write = read, write
        if ended:  # a process's sentinel is ready once it has exited
            os.close(write)
            self._write = None

    def join(self, timeout=None) -> None:
        pass

    @property
    def exitcode(self):
        self.reads += 1
        return None if self.reads < 3 else -9

    def close(self) -> None:
        os.close(self.sentinel)
        if self._write is not None:
            os.close(self._write)


def test_an_ended_worker_s_exit_code_is_asked_again_until_the_pool_stored_it():
    ended, running = _ReapedElsewhere(ended=True), _ReapedElsewhere(ended=False)
    try:
        assert executors._exit_code(ended) == -9 and ended.reads == 3
        assert executors._exit_code(running) is None and running.reads == 1  # no waiting on a live one
    finally:
        ended.close()
        running.close()
