"""The SQLite registry: round trip, resume bookkeeping, measurements, integrity check."""

import sqlite3
import tomllib

import pytest

from camgap.zoo.config import RunResult
from camgap.zoo.digest import save_final
from camgap.zoo.grid import GRID_KEYS, parse_grid
from camgap.zoo.registry import GridMismatchError, RegistryError, ZooDB

GRID = parse_grid(
    tomllib.loads("""
[grid]
arch = ["small_resnet"]
batch_size = [16, 32]
lr = [0.1]
untrained = 1
""")
)


def result(run_id, train_acc=0.9, test_acc=0.6, epochs=3):
    return RunResult(
        run_id,
        "done",
        epochs=epochs,
        stop_reason="C4",
        train_acc=train_acc,
        train_loss=0.3,
        test_acc=test_acc,
        test_loss=1.2,
        gap=100 * (train_acc - test_acc),
        wall_time=1.5,
    )


def test_round_trip(tmp_path):
    specs = GRID.runs()
    with ZooDB.in_dir(tmp_path) as reg:
        assert reg.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert reg.add_runs(specs) == 3
        assert reg.add_runs(specs) == 0  # idempotent
        assert reg.counts() == {"pending": 3, "running": 0, "done": 0, "failed": 0}
        a, b, u = (s.run_id for s in specs)
        assert reg.mark_running(a) == 1
        reg.mark_done(a, result(a))
        reg.mark_running(b)
        assert reg.mark_failed(b, "RuntimeError: boom") == 1  # a failure of the run uses an attempt
        assert reg.counts() == {"pending": 1, "running": 0, "done": 1, "failed": 1}
        row = reg.get_run(a)
        assert row["status"] == "done" and row["attempts"] == 0 and row["config"] == specs[0].config
        assert row["gap"] == pytest.approx(30.0) and row["started"] and row["finished"]
        assert reg.get_run(b)["error"] == "RuntimeError: boom"

    with ZooDB.in_dir(tmp_path, create=False) as reg:  # reopened: persisted
        frame = reg.runs_frame()
        assert list(frame["run_id"]) == [a, b, u]
        assert set(GRID_KEYS) <= set(frame.columns)
        assert list(frame["batch_size"].iloc[:2]) == [16, 32]
        assert list(frame["trained"]) == [True, True, False]
        assert frame.loc[frame.run_id == a, "train_acc"].item() == pytest.approx(0.9)
        assert reg.integrity_check() == []


def test_todo_retries_and_interrupted(tmp_path):
    specs = GRID.runs()
    a, b, u = (s.run_id for s in specs)
    with ZooDB.in_dir(tmp_path) as reg:
        reg.add_runs(specs)
        reg.mark_running(a)
        reg.mark_running(b)
        reg.mark_failed(b, "x")
        # a dead driver left `a` running
        assert reg.reset_interrupted() == [a]
        assert [r.run_id for r in reg.todo(max_attempts=2)] == [a, b, u]  # failed b: 1 < 2 attempts
        reg.mark_running(b)
        reg.mark_failed(b, "y")
        assert [r.run_id for r in reg.todo(max_attempts=2)] == [a, u]  # b out of attempts
        assert reg.reset_failed() == 1
        assert reg.get_run(b)["attempts"] == 0 and reg.get_run(b)["status"] == "pending"


def test_grid_binding(tmp_path):
    with ZooDB.in_dir(tmp_path) as reg:
        reg.bind_grid("abc", '{"g": 1}')
        reg.bind_grid("abc", '{"g": 1}')  # same grid: fine
        with pytest.raises(GridMismatchError, match="different grid"):
            reg.bind_grid("xyz", '{"g": 2}')
        reg.bind_grid("d1", "{}", "data")
        with pytest.raises(GridMismatchError, match="different data"):
            reg.bind_grid("d2", "{}", "data")


def test_missing_registry(tmp_path):
    with pytest.raises(RegistryError, match="no registry"):
        ZooDB.in_dir(tmp_path / "nothing", create=False)


def test_measurements(tmp_path):
    specs = GRID.runs()
    a = specs[0].run_id
    with ZooDB.in_dir(tmp_path) as reg:
        reg.add_runs(specs)
        assert not reg.measurement_done(a, "iou", {"threshold": 0.1, "cam": "gradcam"})
        reg.record_measurement(a, "iou", {"threshold": 0.1, "cam": "gradcam"}, 0.42)
        # params are canonicalised: key order does not matter
        assert reg.measurement_done(a, "iou", {"cam": "gradcam", "threshold": 0.1})
        assert not reg.measurement_done(a, "iou", {"cam": "gradcam", "threshold": 0.2})
        # one identity: the number 0.1, the text "0.10" and the label name one variant
        assert reg.measurement_done(a, "iou", {"cam": "gradcam", "threshold": "0.10"})
        assert reg.measurement_done(a, "iou", "threshold=0.1,cam=gradcam")
        reg.record_measurement(a, "ei", None, None, status="failed", error="boom")
        assert not reg.measurement_done(a, "ei")
        reg.record_measurement(a, "iou", {"threshold": 0.1, "cam": "gradcam"}, 0.5)  # replace
        m = reg.measurements_frame()
        assert len(m) == 2
        iou = m[m.measure == "iou"].iloc[0]
        assert iou.value == 0.5 and iou.params == '{"cam":"gradcam","threshold":"0.1"}'
        with pytest.raises(RegistryError, match="no run"):
            reg.record_measurement("nope", "iou", None, 1.0)
        with pytest.raises(ValueError):
            reg.record_measurement(a, "iou", None, 1.0, status="weird")


def test_integrity_check_finds_problems(tmp_path):
    specs = GRID.runs()
    a, b, _ = (s.run_id for s in specs)
    with ZooDB.in_dir(tmp_path) as reg:
        reg.add_runs(specs)
        reg.mark_running(a)
        reg.mark_done(a, result(a))
        assert reg.integrity_check() == []
        # done run without final.pt in the model-set directory
        assert reg.integrity_check(tmp_path) == [f"run {a}: done but runs/{a}/final.pt is missing"]
        final = tmp_path / "runs" / a / "final.pt"
        final.parent.mkdir(parents=True)
        final.write_bytes(b"x")  # no recorded digest: read back, and unreadable
        assert reg.integrity_check(tmp_path) == [
            f"run {a}: done, but {final}: cannot read checkpoint (Unsupported operand 120); "
            "`camgap zoo build --verify` trains it again"
        ]
        save_final({"run_id": a, "result": result(a).to_dict()}, final)
        assert reg.integrity_check(tmp_path) == []
        # tamper: inconsistent gap, done run without metrics
        reg.conn.execute("UPDATE runs SET gap = 1.0 WHERE run_id = ?", (a,))
        reg.conn.execute("UPDATE runs SET status = 'done' WHERE run_id = ?", (b,))
        problems = reg.integrity_check()
        assert any("gap" in p and a in p for p in problems)
        assert any(b in p and "missing epochs" in p for p in problems)
        # status values outside the allowed set are refused by the schema
        with pytest.raises(RegistryError, match=r"registry\.sqlite: CHECK constraint failed") as err:
            reg.conn.execute("UPDATE runs SET status = 'weird' WHERE run_id = ?", (a,))
        assert isinstance(err.value.__cause__, sqlite3.IntegrityError)


def test_only_a_failure_of_the_run_uses_an_attempt(tmp_path):
    """Two driver kills (runs left 'running'), a worker death (requeue) and a start use no
    attempt: with max_attempts=1 the run is still to do; one failure of its own uses it."""
    specs = GRID.runs()
    a = specs[0].run_id
    with ZooDB.in_dir(tmp_path) as reg:
        reg.add_runs(specs)
        for _ in range(2):  # driver killed mid-run, twice
            assert reg.mark_running(a) == 1
            assert reg.reset_interrupted() == [a]
        assert reg.mark_running(a) == 1
        reg.requeue(a)  # its worker (or a sibling's) died
        assert reg.get_run(a)["attempts"] == 0 and reg.get_run(a)["status"] == "pending"
        assert a in [r.run_id for r in reg.todo(max_attempts=1)]
        assert reg.mark_running(a) == 1
        assert reg.mark_failed(a, "RuntimeError: boom") == 1
        assert a not in [r.run_id for r in reg.todo(max_attempts=1)]
        assert a in [r.run_id for r in reg.todo(max_attempts=2)]
        assert reg.mark_running(a) == 2  # the attempt it is on


def test_read_only_open(tmp_path):
    specs = GRID.runs()
    with ZooDB.in_dir(tmp_path) as reg:
        reg.add_runs(specs)
    with ZooDB.in_dir(tmp_path, read_only=True) as reg:
        assert reg.read_only and reg.counts()["pending"] == 3
        with pytest.raises(RegistryError, match=r"registry\.sqlite: attempt to write a readonly database"):
            reg.mark_running(specs[0].run_id)
    with pytest.raises(RegistryError, match="no registry"):
        ZooDB.in_dir(tmp_path / "nothing", read_only=True)


def test_read_only_open_on_storage_that_cannot_be_written(tmp_path, monkeypatch):
    """Where the directory is not writable (tests run as root, so os.access is patched here;
    test_zoo_recovery mounts a real read-only folder) the registry opens with immutable=1 and
    creates no -wal/-shm file; create=False falls back to read-only there too."""
    import camgap.zoo.dbschema as dbschema

    specs = GRID.runs()
    with ZooDB.in_dir(tmp_path) as reg:
        reg.add_runs(specs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry.sqlite"]  # WAL checkpointed on close
    monkeypatch.setattr(dbschema.os, "access", lambda path, mode: False)
    assert "immutable=1" in dbschema._read_only_uri(tmp_path / "registry.sqlite")
    for kwargs in ({"read_only": True}, {"create": False}):
        with ZooDB.in_dir(tmp_path, **kwargs) as reg:
            assert reg.read_only and len(reg.runs_frame()) == 3
        assert sorted(p.name for p in tmp_path.iterdir()) == ["registry.sqlite"]


def test_sqlite_errors_become_registry_errors(tmp_path):
    bad = tmp_path / "registry.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RegistryError, match=r"registry\.sqlite: file is not a database; `camgap zoo repair "):
        ZooDB(bad)
