"""Reproducible model sets and safe loading: a run's weights depend only on its config and
seed (not on --workers or the executor), its thread count is part of its config, every
checkpoint camgap writes loads with weights_only=True, and files that do not are refused
with an error naming them, never executed."""

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import camgap.zoo.train as zt
from camgap.models import CheckpointError, create_model, read_checkpoint
from camgap.zoo.build import build
from camgap.zoo.grid import GridError, load_grid
from camgap.zoo.pretrained import load_pretrained_backbone
from camgap.zoo.registry import ZooDB
from camgap.zoo.train import train_run
from tests.helpers.zoo import quiet, run_task
from tests.zoo_hooks import as_task

GRID = """
[grid]
arch = ["small_resnet"]
batch_size = [8]
lr = [0.05, 0.01]
optimizer = ["sgd", "adam"]
augment = [true]
{extra_grid}

[train]
max_epochs = 2
input_size = 16
eval_batch_size = 64
{extra_train}

[arch_options.small_resnet]
width = 4
"""


def write_grid(path: Path, extra_grid: str = "", extra_train: str = "") -> Path:
    path.write_text(GRID.format(extra_grid=extra_grid, extra_train=extra_train))
    return path


class Payload:
    """Unpickling this object would create `marker` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _states(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model_state_dict"]


@pytest.mark.slow
def test_weights_do_not_depend_on_workers(tmp_path, synthetic_data):
    """The same grid built in-process and by 2 worker processes gives bit-identical weights."""
    grid = write_grid(tmp_path / "g.toml")
    a = build(grid, synthetic_data, tmp_path / "a", workers=0, device="cpu", progress=False, log=quiet)
    b = build(grid, synthetic_data, tmp_path / "b", workers=2, device="cpu", progress=False, log=quiet)
    assert a.done == b.done == 4 and a.failed == b.failed == 0
    with ZooDB.in_dir(tmp_path / "b", create=False) as reg:  # the thread count is recorded with the run
        assert [json.loads(c)["threads"] for c in reg.runs_frame().config] == [1] * 4
    ids = sorted(p.name for p in (tmp_path / "a" / "runs").iterdir())
    assert ids == sorted(p.name for p in (tmp_path / "b" / "runs").iterdir()) and len(ids) == 4
    for rid in ids:
        sa, sb = (
            _states(tmp_path / "a" / "runs" / rid / "final.pt"),
            _states(tmp_path / "b" / "runs" / rid / "final.pt"),
        )
        assert json.loads((tmp_path / "b" / "runs" / rid / "config.json").read_text())["config"]["threads"] == 1
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (rid, k)


def test_threads_is_part_of_the_run_config_and_id(tmp_path):
    one = load_grid(write_grid(tmp_path / "one.toml", extra_grid="untrained = 1"))
    two = load_grid(write_grid(tmp_path / "two.toml", extra_grid="untrained = 1", extra_train="threads = 2"))
    assert one.train.threads == 1 and two.train.threads == 2
    r1, r2 = one.runs(), two.runs()
    assert [r.config.threads for r in r1 if r.trained] == [1] * 4
    assert [r.config.threads for r in r2 if r.trained] == [2] * 4
    assert {r.run_id for r in r1 if r.trained}.isdisjoint({r.run_id for r in r2 if r.trained})
    # an untrained model is its seeded initialisation: the thread count does not change it or its id
    assert [r.run_id for r in r1 if not r.trained] == [r.run_id for r in r2 if not r.trained]
    assert "threads" not in next(r for r in r1 if not r.trained).config.to_dict()
    assert one.fingerprint() != two.fingerprint()


@pytest.mark.parametrize("value", ["0", "-1", "1.5", '"two"', "true"])
def test_threads_is_validated(tmp_path, value):
    with pytest.raises(GridError, match=r"\[train\] threads: expected an integer >= 1"):
        load_grid(write_grid(tmp_path / "g.toml", extra_train=f"threads = {value}"))


def test_run_sets_its_threads_and_restores_the_callers(tmp_path, synthetic_data, monkeypatch):
    """A run trains with its config's thread count, whatever the executor passes, and an
    in-process caller keeps its own count afterwards."""
    seen = []
    real = zt.evaluate

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(zt, "evaluate", spy)
    task = _task(tmp_path, synthetic_data, tmp_path / "run")
    task = replace(task, config=replace(task.config, threads=2, max_epochs=1))
    task = replace(task, threads=1)  # what an executor passes: ignored for a config with its own count
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_run(task).epochs == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert seen == [2, 2]  # the clean train and test passes of the one epoch


def _task(tmp_path: Path, data: Path, run_dir: Path):
    return as_task(run_task(load_grid(write_grid(tmp_path / "g.toml")).runs()[0], data, tmp_path, run_dir))


def test_last_pt_loads_with_weights_only_and_resumes(tmp_path, synthetic_data):
    class Interrupt(Exception):
        pass

    def stop_after_first(epoch, record):
        if epoch == 1:
            raise Interrupt

    task = _task(tmp_path, synthetic_data, tmp_path / "run")
    with pytest.raises(Interrupt):
        train_run(task, epoch_callback=stop_after_first)
    last = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    rng = last["rng_states"]
    assert isinstance(rng["torch"], torch.Tensor) and isinstance(rng["numpy"]["key"], torch.Tensor)
    assert rng["numpy"]["key"].shape == (624,) and isinstance(rng["numpy"]["pos"], int)
    assert isinstance(rng["python"], list) and len(rng["python"][1]) == 625
    resumed = train_run(task)
    assert resumed.resumed_from == 1 and resumed.epochs == 2
    assert read_checkpoint(tmp_path / "run" / "final.pt")["result"]["resumed_from"] == 1
    assert read_checkpoint(tmp_path / "run" / "init.pt")["epoch"] == 0


def test_rng_states_round_trip():
    np.random.seed(7)
    random.seed(7)
    np.random.rand(3)
    random.random()
    states = zt._rng_states(torch.device("cpu"))
    want_np, want_py, want_t = np.random.rand(5), [random.random() for _ in range(5)], torch.rand(5)
    np.random.rand(11)
    random.random()
    torch.rand(3)
    zt._set_rng_states(states, torch.device("cpu"))
    assert np.array_equal(np.random.rand(5), want_np)
    assert [random.random() for _ in range(5)] == want_py
    assert torch.equal(torch.rand(5), want_t)


def test_safe_load_refuses_pickled_objects(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": Payload(marker)}, path)
    with pytest.raises(
        CheckpointError, match=r"evil\.pt: refused to load: it holds a pickled object \(\S*open\)"
    ) as err:
        read_checkpoint(path)
    assert "weights_only` set to `False`" not in str(err.value)  # no advice to load it unsafely
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"nothere\.pt: no such checkpoint file"):
        read_checkpoint(tmp_path / "nothere.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt: cannot read checkpoint \("):
        read_checkpoint(tmp_path / "junk.pt")


def test_pretrained_weights_with_pickled_objects_are_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "weights.pt"
    torch.save(Payload(marker), path)
    model = create_model("small_resnet", 3, width=4)
    with pytest.raises(CheckpointError, match=r"pretrained weights: .*weights\.pt: refused to load"):
        load_pretrained_backbone(model, path)
    assert not marker.exists()
    # a plain state_dict loads
    torch.save(create_model("small_resnet", 5, width=4).state_dict(), path)
    load_pretrained_backbone(model, path)
