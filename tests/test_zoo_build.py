"""End to end on a tiny synthetic dataset: build, rebuild, resume, crash (SIGKILL) and
resume, failures, pretrained weights, bad input, status/export, the CLI."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from camgap.data.synthetic import write_synthetic
from camgap.models import create_model, load_checkpoint
from camgap.zoo.build import EXPORT_COLUMNS, ZooError, build, export, format_status, status
from camgap.zoo.cli import main as zoo_main
from camgap.zoo.grid import load_grid
from camgap.zoo.loop import augment_batch
from camgap.zoo.pretrained import PretrainedWeightsError, load_pretrained_backbone, pretrained_paths
from camgap.zoo.registry import ZooDB
from camgap.zoo.train import train_run
from tests.helpers.zoo import build_args, run_task
from tests.zoo_hooks import as_task, fail_runs, worker_env

ROOT = Path(__file__).resolve().parents[1]

TINY = """
[grid]
arch = ["small_resnet"]
batch_size = [16]
lr = [{lrs}]
optimizer = ["sgd"]
augment = [{augs}]
pretrained = [{pre}]
untrained = {untrained}

[train]
max_epochs = {epochs}
acc_threshold = 1.0  # only the epoch budget (C4) stops a run: no test hinges on a model's float details
input_size = 16
eval_batch_size = 64

[arch_options.small_resnet]
width = 4

[pretrain]
classes = 3
train_per_class = 8
test_per_class = 4
epochs = 1
batch_size = 16
"""


def write_grid(path: Path, lrs="0.05", augs="true", pre="false", untrained=0, epochs=2) -> Path:
    path.write_text(TINY.format(lrs=lrs, augs=augs, pre=pre, untrained=untrained, epochs=epochs))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synthetic(
        tmp_path_factory.mktemp("synth") / "data", seed=1, classes=3, train_per_class=12, test_per_class=6, size=16
    )


def quiet(*a, **k):
    pass


def test_build_end_to_end_and_rebuild(tmp_path, data):
    grid = write_grid(tmp_path / "g.toml", lrs="0.05, 0.005", untrained=1)
    zoo = tmp_path / "zoo"
    s = build(grid, data, zoo, workers=0, device="cpu", progress=False, log=quiet)
    assert s.total == 3 and s.done == 3 and s.failed == 0 and s.trained_now == 3

    with ZooDB.in_dir(zoo, create=False) as reg:
        assert reg.integrity_check(zoo) == []
        frame = reg.runs_frame()
    assert (frame["status"] == "done").all()
    trained = frame[frame.trained]
    assert len(trained) == 2 and set(trained["lr"]) == {0.05, 0.005}
    assert (trained["epochs"] >= 1).all() and (trained["epochs"] <= 2).all()
    for r in frame.itertuples():
        assert r.gap == pytest.approx(100 * (r.train_acc - r.test_acc))
        assert 0.0 <= r.train_acc <= 1.0 and 0.0 <= r.test_acc <= 1.0
        d = zoo / "runs" / r.run_id
        assert {"config.json", "history.json", "init.pt", "final.pt"} <= {p.name for p in d.iterdir()}
        assert not (d / "last.pt").exists()  # removed after final.pt (no --keep-last)
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["run_id"] == r.run_id and cfg["seed"] == r.seed
        hist = json.loads((d / "history.json").read_text())
        assert [h["epoch"] for h in hist] == list(range(1, r.epochs + 1))
        final = torch.load(d / "final.pt", weights_only=False)
        assert final["result"]["train_acc"] == pytest.approx(r.train_acc)
        model = load_checkpoint(d / "final.pt", "small_resnet", 3)  # arch_kwargs from the file
        init = torch.load(d / "init.pt", weights_only=False)["model_state_dict"]
        same = all(torch.equal(init[k], v) for k, v in model.state_dict().items())
        assert same == (not r.trained)
    untrained = frame[~frame.trained].iloc[0]
    assert untrained.epochs == 0 and untrained.stop_reason == "untrained"
    if len(trained):
        assert set(trained["stop_reason"]) <= {
            "C4",
            "C1+C2",
            "C1+C2+C4",
            "C1+C3",
            "C2+C3",
            "C1+C3+C4",
            "C2+C3+C4",
            "C1+C2+C3",
            "C1+C2+C3+C4",
            "diverged",
        }

    # building the same grid again trains nothing
    mtimes = {p: p.stat().st_mtime_ns for p in zoo.glob("runs/*/final.pt")}
    s2 = build(grid, data, zoo, workers=0, device="cpu", progress=False, log=quiet)
    assert s2.trained_now == 0 and s2.done == 3
    assert {p: p.stat().st_mtime_ns for p in zoo.glob("runs/*/final.pt")} == mtimes

    # status and export
    info = status(zoo)
    assert info["counts"]["done"] == 3 and info["integrity_problems"] == []
    assert info["by_arch"]["small_resnet"]["done"] == 2 and info["by_arch"]["small_resnet (untrained)"]["done"] == 1
    assert "3 runs" in format_status(info)
    csv = export(zoo, "csv")
    table = pd.read_csv(csv)
    assert list(table.columns) == EXPORT_COLUMNS and len(table) == 3
    pq = export(zoo, "parquet", tmp_path / "out" / "runs.parquet")
    assert pd.read_parquet(pq)["run_id"].tolist() == table["run_id"].tolist()

    # the CLI entry points
    assert zoo_main(["status", str(zoo)]) == 0
    assert zoo_main(["export", str(zoo), "--format", "csv", "--out", str(tmp_path / "x.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "x.csv")) == 3


def _task(tmp_path, data, run_dir, epochs=2, augment=True):
    grid = load_grid(write_grid(tmp_path / "g.toml", epochs=epochs, augs=str(augment).lower()))
    return as_task(run_task(grid.runs()[0], data, tmp_path, run_dir, threads=1))


def test_resume_reproduces_an_uninterrupted_run(tmp_path, data):
    full = train_run(_task(tmp_path, data, tmp_path / "a"))
    assert full.epochs == 2 and full.stop_reason == "C4" and full.resumed_from is None

    class Interrupt(Exception):
        pass

    def stop_after_first(epoch, record):
        if epoch == 1:
            raise Interrupt

    task = _task(tmp_path, data, tmp_path / "b")
    with pytest.raises(Interrupt):
        train_run(task, epoch_callback=stop_after_first)
    assert (tmp_path / "b" / "last.pt").is_file() and not (tmp_path / "b" / "final.pt").exists()
    resumed = train_run(task)
    assert resumed.resumed_from == 1
    for k in ("epochs", "stop_reason", "train_acc", "train_loss", "test_acc", "test_loss", "gap"):
        assert getattr(resumed, k) == getattr(full, k), k
    a = torch.load(tmp_path / "a" / "final.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "final.pt", weights_only=False)
    for k, v in a["model_state_dict"].items():
        assert torch.equal(v, b["model_state_dict"][k]), k
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    # a finished run directory returns its stored result without training
    assert train_run(task) == resumed


def test_failed_run_is_recorded_and_the_sweep_continues(tmp_path, data, monkeypatch):
    grid = write_grid(tmp_path / "g.toml", lrs="0.05, 0.005")
    bad = load_grid(grid).runs()[0].run_id
    fail_runs(monkeypatch, {bad})
    zoo = tmp_path / "zoo"
    s = build(grid, data, zoo, workers=0, device="cpu", progress=False, log=quiet, max_attempts=2)
    assert s.done == 1 and s.failed == 1 and s.failed_now == 2  # tried twice
    with ZooDB.in_dir(zoo, create=False) as reg:
        row = reg.get_run(bad)
        assert row["status"] == "failed" and row["attempts"] == 2
        assert "injected failure" in row["error"]
        assert reg.integrity_check(zoo) == []
    info = status(zoo)
    assert info["failures"][0]["run_id"] == bad and "injected failure" in format_status(info)
    assert zoo_main(["status", str(zoo)]) == 0
    # out of attempts: a plain rebuild leaves it; --retry-failed trains it
    monkeypatch.undo()
    assert build(grid, data, zoo, workers=0, device="cpu", progress=False, log=quiet).failed == 1
    s = build(grid, data, zoo, workers=0, device="cpu", progress=False, log=quiet, retry_failed=True)
    assert s.done == 2 and s.failed == 0 and s.trained_now == 1


def _lock_free(path: Path) -> bool:
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return True


@pytest.mark.slow
def test_sigkill_driver_and_resume(tmp_path, data):
    """kill -9 the driver (and with it its worker processes) mid-run; rerun; no run lost,
    none duplicated, finished runs not retrained, the interrupted ones resumed."""
    grid = write_grid(tmp_path / "g.toml", lrs="0.05, 0.005", augs="true, false", epochs=3)
    zoo = tmp_path / "zoo"
    cmd = [sys.executable, "-m", "camgap.zoo.cli", *build_args(grid, data, zoo, 2)]
    held = load_grid(grid).runs()[1].run_id  # held after its first epoch (the gate never opens)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd,
        env=env | worker_env(hold=tmp_path / "gate", runs=(held,)),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        # kill once another run has finished while the held one is mid-run
        deadline = time.monotonic() + 300  # a limit against a hang, not a timing
        while not (list(zoo.glob("runs/*/final.pt")) and (zoo / "runs" / held / "last.pt").exists()):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no finished run and epoch checkpoint appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    # the workers died with the driver: every run directory's lock comes free
    deadline = time.monotonic() + 120
    locks = list(zoo.glob("runs/*/.lock"))
    while not all(_lock_free(p) for p in locks):
        assert time.monotonic() < deadline, "a worker outlived the killed driver"
        time.sleep(0.1)

    with ZooDB.in_dir(zoo, create=False) as reg:
        before = reg.runs_frame()
    interrupted = set(before.loc[before.status == "running", "run_id"])
    assert interrupted, before[["run_id", "status"]]
    finished = {p: p.stat().st_mtime_ns for p in zoo.glob("runs/*/final.pt")}
    assert finished

    # resume in-process (--workers 0): checkpoints do not depend on the executor
    cmd[cmd.index("--workers") + 1] = "0"
    out = subprocess.run(cmd, env=env | worker_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resuming" in out.stdout

    with ZooDB.in_dir(zoo, create=False) as reg:
        assert reg.integrity_check(zoo) == []
        after = reg.runs_frame()
        n_rows = reg.conn.execute("SELECT COUNT(*), COUNT(DISTINCT run_id) FROM runs").fetchone()
    assert tuple(n_rows) == (4, 4)
    assert (after.status == "done").all()
    assert sorted(after.run_id) == sorted(r.run_id for r in load_grid(grid).runs())
    for p, mtime in finished.items():  # finished before the kill: not retrained
        assert p.stat().st_mtime_ns == mtime
    resumed = after[after.run_id.isin(interrupted)]
    # an interrupted run with an epoch checkpoint continued from it
    with_ckpt = [r for r in resumed.itertuples() if r.resumed_from is not None and r.resumed_from >= 1]
    assert with_ckpt
    for r in after.itertuples():
        hist = json.loads((zoo / "runs" / r.run_id / "history.json").read_text())
        assert [h["epoch"] for h in hist] == list(range(1, r.epochs + 1))  # no epoch trained twice


def test_pretrained_source_task(tmp_path, data):
    grid = write_grid(tmp_path / "g.toml", pre="true", epochs=1)
    zoo = tmp_path / "zoo"
    s = build(grid, data, zoo, workers=0, device="cpu", progress=False, log=quiet)
    assert s.done == 1
    src = list((zoo / "pretrained").glob("small_resnet-*.pt"))
    assert len(src) == 1
    source = torch.load(src[0], weights_only=False)
    assert source["num_classes"] == 3 and source["source_task"]["classes"][0] == "00_pentagon"
    with ZooDB.in_dir(zoo, create=False) as reg:
        run = reg.runs_frame().iloc[0]
    assert json.loads(run.config)["pretrained_source"].startswith("synthetic-source:")
    init = torch.load(zoo / "runs" / run.run_id / "init.pt", weights_only=False)["model_state_dict"]
    for k, v in source["model_state_dict"].items():
        if not k.startswith("fc."):
            assert torch.equal(init[k], v), k


def test_load_pretrained_backbone_replaces_the_head_only(tmp_path):
    torch.manual_seed(0)
    src = create_model("small_resnet", 7, width=4)
    torch.save({"model_state_dict": src.state_dict()}, tmp_path / "w.pt")
    dst = create_model("small_resnet", 3, width=4)
    fc_before = dst.fc.weight.clone()
    load_pretrained_backbone(dst, tmp_path / "w.pt")
    assert torch.equal(dst.conv1.weight, src.conv1.weight) and torch.equal(dst.fc.weight, fc_before)
    wrong = create_model("small_resnet", 3, width=8)
    with pytest.raises(ValueError, match="do not match"):
        load_pretrained_backbone(wrong, tmp_path / "w.pt")


def test_missing_imagenet_weights_fail_before_the_sweep(tmp_path, data, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    grid = tmp_path / "g.toml"
    grid.write_text('[grid]\narch = ["resnet18"]\npretrained = [true, false]\n[train]\ninput_size = 32\n')
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(PretrainedWeightsError, match=str(expected)):
        pretrained_paths(load_grid(grid), tmp_path / "zoo")
    with pytest.raises(ZooError, match="resnet18-f37072fd.pth"):
        build(grid, data, tmp_path / "zoo", workers=0, device="cpu", progress=False, log=quiet)
    assert not (tmp_path / "zoo").exists()  # checked before the model-set directory is made
    # an explicit path in the grid is used instead of the cache
    weights = tmp_path / "r18.pth"
    torch.save(create_model("resnet18", 1000).state_dict(), weights)
    grid.write_text(grid.read_text() + f'pretrained_weights = {{ resnet18 = "{weights}" }}\n')
    assert pretrained_paths(load_grid(grid), tmp_path / "zoo") == {"resnet18": str(weights.resolve())}


def test_bad_input_is_reported_before_training(tmp_path, data):
    grid = write_grid(tmp_path / "g.toml")
    # data directory without a test split
    no_test = tmp_path / "no_test"
    no_test.mkdir()
    (no_test / "train.csv").write_text((data / "train.csv").read_text())
    (no_test / "images").symlink_to(data / "images")
    with pytest.raises(ZooError, match="no test split"):
        build(grid, no_test, tmp_path / "z1", workers=0, device="cpu", progress=False, log=quiet)
    assert not (tmp_path / "z1").exists()
    with pytest.raises(ZooError, match="no such directory"):
        build(grid, tmp_path / "nowhere", tmp_path / "z1", workers=0, progress=False, log=quiet)
    # unknown grid key
    bad = tmp_path / "bad.toml"
    bad.write_text('[grid]\narch = ["small_resnet"]\nbatchsize = [16]\n')
    with pytest.raises(ZooError, match="unknown key.*batchsize"):
        build(bad, data, tmp_path / "z2", workers=0, progress=False, log=quiet)
    assert zoo_main(["build", str(bad), "--data", str(data), "--out", str(tmp_path / "z2")]) == 2
    # an output directory that holds another grid's model set
    zoo = tmp_path / "z3"
    build(grid, data, zoo, workers=0, device="cpu", progress=False, log=quiet)
    other = write_grid(tmp_path / "other.toml", lrs="0.01")
    with pytest.raises(ZooError, match="different grid"):
        build(other, data, zoo, workers=0, device="cpu", progress=False, log=quiet)
    # a non-empty directory that is not a model set
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "file.txt").write_text("x")
    with pytest.raises(ZooError, match="not empty"):
        build(grid, data, junk, workers=0, progress=False, log=quiet)
    with pytest.raises(ZooError, match="no registry"):
        status(tmp_path / "nothing")


def test_diverged_run_stops_early(tmp_path, data):
    grid = write_grid(tmp_path / "g.toml", lrs="1e30", augs="false", epochs=5)
    zoo = tmp_path / "zoo"
    s = build(grid, data, zoo, workers=0, device="cpu", progress=False, log=quiet)
    assert s.done == 1
    with ZooDB.in_dir(zoo, create=False) as reg:
        assert reg.integrity_check(zoo) == []
        run = reg.runs_frame().iloc[0]
    assert run.stop_reason == "diverged" and run.epochs == 1 and run.train_loss == float("inf")


def test_augment_batch():
    x = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = augment_batch(x, g1), augment_batch(x, g2)
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, x.float() / 255)
    flipped = augment_batch(x, torch.Generator().manual_seed(0), flip_prob=1.0, jitter=0.0)
    assert torch.allclose(flipped, x.flip(-1).float() / 255)
    same = augment_batch(x, torch.Generator().manual_seed(0), flip_prob=0.0, jitter=0.0)
    assert torch.allclose(same, x.float() / 255)


def test_a_local_executor_starts_at_most_one_worker_per_cpu(monkeypatch):
    from camgap import machine
    from camgap.errors import InputError
    from camgap.zoo.executors import InProcessExecutor, make_executor

    monkeypatch.setattr(machine, "cpu_count", lambda: 2)
    with pytest.raises(InputError) as caught:
        make_executor("local", workers=1_000_000, device="cpu")  # it would fork until memory ran out
    assert str(caught.value) == (
        "--workers 1000000 processes is more than one per CPU (2 CPUs this process may use) "
        "(a local executor starts one process per worker; --executor ray runs more)"
    )
    with pytest.raises(InputError, match="--workers -1 processes: give 0 or more"):
        make_executor("local", workers=-1, device="cpu")
    assert isinstance(make_executor("local", workers=0, device="cpu"), InProcessExecutor)


@pytest.mark.parametrize("command", ["build", "measure"])
def test_zoo_workers_below_zero_is_a_usage_error(tmp_path, capsys, command):
    args = ["--data", str(tmp_path)] if command == "build" else []
    with pytest.raises(SystemExit) as exc:
        zoo_main([command, *args, "--zoo", str(tmp_path / "z"), "--workers", "-1"])
    assert exc.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.endswith("argument --workers: must be 0 (this process) or more, got -1")


def test_the_default_local_workers_stay_within_the_cpus(monkeypatch):
    """OMP_NUM_THREADS (thread_budget) may name more threads than the CPUs this process may use."""
    from camgap import machine
    from camgap.errors import InputError
    from camgap.zoo import executors

    monkeypatch.setattr(machine, "cpu_count", lambda: 2)
    monkeypatch.setattr(executors, "thread_budget", lambda: 64)
    ex = executors.make_executor("local", workers=None, device="cpu")
    try:
        assert isinstance(ex, executors.LocalExecutor) and ex.workers == 2
    finally:
        ex.close()
    with pytest.raises(InputError, match="--workers 3 processes is more than one per CPU"):
        executors.LocalExecutor(3)


def test_too_many_local_workers_stop_a_build_before_anything_is_written(tmp_path, monkeypatch):
    from camgap import machine
    from camgap.errors import InputError

    monkeypatch.setattr(machine, "cpu_count", lambda: 2)
    with pytest.raises(InputError, match="--workers 5 processes is more than one per CPU"):
        build("demo-quick", tmp_path / "no-data", tmp_path / "zoo", workers=5)
    assert not (tmp_path / "zoo").exists()
