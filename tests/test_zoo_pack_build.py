"""Packed training through the model-set builder: packs are a function of the grid, a packed run
equals the same run trained alone (exactly, in float64), packs give the same weights at any worker
count, and a pack resumes after an interrupt (also one that left its runs at different epochs)
to exactly the weights of an uninterrupted build."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from camgap.data.synthetic import write_synthetic
from camgap.zoo.build import build, pack_plan
from camgap.zoo.config import RunResult, Task
from camgap.zoo.grid import GridError, load_grid
from camgap.zoo.registry import ZooDB
from camgap.zoo.train import train_pack
from tests.helpers.tensors import assert_states_equal
from tests.helpers.zoo import run_task
from tests.zoo_hooks import as_task

GRID = """
[grid]
arch = ["small_resnet"]
batch_size = [16]
lr = [0.01, 0.001]
optimizer = ["sgd", "adam"]
augment = [true]
untrained = 1

[train]
max_epochs = {epochs}
input_size = 16
eval_batch_size = 64
pack = {pack}

[arch_options.small_resnet]
width = 4
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synthetic(
        tmp_path_factory.mktemp("synth") / "data", seed=2, classes=3, train_per_class=12, test_per_class=6, size=16
    )


def quiet(*a, **k):
    pass


def grid(path: Path, pack, epochs: int = 3) -> Path:
    path.write_text(GRID.format(pack=pack if isinstance(pack, int) else f'"{pack}"', epochs=epochs))
    return path


def finals(zoo: Path) -> dict[str, dict]:
    return {p.parent.name: torch.load(p, weights_only=True) for p in sorted((zoo / "runs").glob("*/final.pt"))}


def by_seed(zoo: Path) -> dict[int, dict]:
    """Final checkpoints keyed by the run's seed and config without `pack` (the same run under
    another pack size has another run id)."""
    return {(ck["seed"] if ck["config"]["trained"] else -1): ck for ck in finals(zoo).values()}


def test_packs_are_a_function_of_the_grid(tmp_path):
    g = load_grid(grid(tmp_path / "g.toml", 3))
    plan = pack_plan(g)
    trained = [s.run_id for s in g.runs() if s.trained]
    assert set(plan) == set(trained)  # the untrained model is never packed
    packs = {}
    for rid in trained:
        packs.setdefault(plan[rid], []).append(rid)
    assert sorted(map(len, packs.values())) == [1, 3]  # 4 runs in grid order: a pack of 3, then 1
    assert pack_plan(load_grid(grid(tmp_path / "g.toml", 3))) == plan
    assert all(s.config.pack == 3 for s in g.runs() if s.trained)
    assert pack_plan(load_grid(grid(tmp_path / "g1.toml", 1))) == {}
    assert (
        "pack" not in load_grid(grid(tmp_path / "g1.toml", 1)).runs()[0].config.to_dict()
    )  # run ids of pack = 1 unchanged
    assert load_grid(grid(tmp_path / "ga.toml", "auto")).pack_size("small_resnet") == 8
    with pytest.raises(GridError, match="pack"):
        load_grid(grid(tmp_path / "gb.toml", 0))


def test_a_packed_run_equals_the_same_run_alone(tmp_path, data, float64):
    """Trained in float64 (where a pack does its runs' arithmetic exactly, on every CPU), each
    packed run's weights after 3 epochs equal its weights trained alone, and so do its accuracies,
    epochs and stop reason."""
    for name, pack in (("solo", 1), ("pack", 4)):
        summary = build(
            grid(tmp_path / f"{name}.toml", pack),
            data,
            tmp_path / name,
            workers=0,
            device="cpu",
            progress=False,
            log=quiet,
        )
        assert summary.done == 5
    solo, packed = by_seed(tmp_path / "solo"), by_seed(tmp_path / "pack")
    assert solo.keys() == packed.keys()
    for seed, ck in packed.items():
        a, b = ck["result"], solo[seed]["result"]
        assert (a["pack_size"], b["pack_size"]) == ((1, 1) if seed == -1 else (4, 1))
        assert_states_equal(ck["model_state_dict"], solo[seed]["model_state_dict"])
        for key in ("train_acc", "test_acc", "epochs", "stop_reason"):
            assert a[key] == b[key], (seed, key)


@pytest.mark.slow
def test_packs_give_the_same_weights_at_any_worker_count(tmp_path, data):
    g = grid(tmp_path / "g.toml", 2)
    build(g, data, tmp_path / "w0", workers=0, device="cpu", progress=False, log=quiet)
    build(g, data, tmp_path / "w2", workers=2, device="cpu", progress=False, log=quiet)
    a, b = finals(tmp_path / "w0"), finals(tmp_path / "w2")
    assert a.keys() == b.keys() and len(a) == 5
    for rid in a:
        assert a[rid]["result"]["pack_size"] == (1 if not a[rid]["config"]["trained"] else 2)
        for name, t in a[rid]["model_state_dict"].items():
            assert torch.equal(t, b[rid]["model_state_dict"][name]), (rid, name)


def _pack_tasks(tmp_path: Path, data: Path, out: str, epochs: int = 3) -> list[Task]:
    g = load_grid(grid(tmp_path / "g.toml", 3, epochs=epochs))
    plan = pack_plan(g)
    specs = [s for s in g.runs() if s.run_id in plan]
    first = plan[specs[0].run_id]
    cache = tmp_path / "cache"
    return [as_task(run_task(s, data, cache, tmp_path / out / s.run_id)) for s in specs if plan[s.run_id] == first]


def _assert_same_weights(a: list[RunResult], b: list[RunResult], tmp_path: Path, out_a: str, out_b: str) -> None:
    assert [r.epochs for r in a] == [r.epochs for r in b]
    for res_a, res_b in zip(a, b, strict=True):
        ka = torch.load(tmp_path / out_a / res_a.run_id / "final.pt", weights_only=True)
        kb = torch.load(tmp_path / out_b / res_b.run_id / "final.pt", weights_only=True)
        for name, t in ka["model_state_dict"].items():
            assert torch.equal(t, kb["model_state_dict"][name]), name
        assert ka["history"][-1]["train_acc"] == kb["history"][-1]["train_acc"]


class Interrupt(Exception):
    pass


def test_an_interrupted_pack_resumes_to_the_same_weights(tmp_path, data):
    full_tasks = _pack_tasks(tmp_path, data, "full")
    assert len(full_tasks) == 3
    full = train_pack(full_tasks)
    tasks = _pack_tasks(tmp_path, data, "cut")
    seen = []

    def stop(epoch, record):
        seen.append(epoch)
        if len(seen) == 3 * 2:  # after every run's second epoch
            raise Interrupt

    with pytest.raises(Interrupt):
        train_pack(tasks, epoch_callback=stop)
    resumed = train_pack(tasks)
    assert all(r.resumed_from == 2 for r in resumed)
    _assert_same_weights(
        full,
        resumed,
        tmp_path,
        "full",
        "cut",
    )


def test_runs_left_at_different_epochs_are_brought_level_in_their_pack(tmp_path, data):
    """A kill between two runs' checkpoint writes of one epoch: the run behind trains its missing
    epoch in the pack it had (the others frozen in it), so every weight equals the uninterrupted build's."""
    full_tasks = _pack_tasks(tmp_path, data, "full")
    full = train_pack(full_tasks)
    tasks = _pack_tasks(tmp_path, data, "cut")
    behind = Path(tasks[1].run_dir)
    seen = []

    def stop(epoch, record):
        seen.append(epoch)
        if len(seen) == 3:  # every run has written last.pt of epoch 1: keep run 1's
            shutil.copy(behind / "last.pt", behind.parent / "kept-last.pt")
        if len(seen) == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_pack(tasks, epoch_callback=stop)
    shutil.copy(behind.parent / "kept-last.pt", behind / "last.pt")  # run 1 is back at epoch 1
    resumed = train_pack(tasks)
    assert [r.resumed_from for r in resumed] == [2, 1, 2]
    _assert_same_weights(
        full,
        resumed,
        tmp_path,
        "full",
        "cut",
    )


def test_registry_rows_of_a_packed_build(tmp_path, data):
    zoo = tmp_path / "zoo"
    s = build(grid(tmp_path / "g.toml", 3), data, zoo, workers=0, device="cpu", progress=False, log=quiet)
    assert s.done == 5 and s.failed == 0
    with ZooDB.in_dir(zoo, create=False) as reg:
        frame = reg.runs_frame()
        assert reg.integrity_check(zoo) == []
    assert (frame.status == "done").all() and (frame.attempts == 0).all()
    for rid in frame.run_id:  # every run has the files of today
        assert {p.name for p in (zoo / "runs" / rid).iterdir()} >= {
            "init.pt",
            "final.pt",
            "history.json",
            "config.json",
        }


def test_precision_and_memory_layout_are_recorded_and_keep_the_seed(tmp_path, data):
    from camgap.zoo.loop import resolve_precision

    text = GRID.format(pack=3, epochs=1).replace(
        "[arch_options", 'precision = "bf16"\nchannels_last = true\n\n[arch_options'
    )
    (tmp_path / "g.toml").write_text(text)
    g, plain = load_grid(tmp_path / "g.toml"), load_grid(grid(tmp_path / "p.toml", 1, epochs=1))
    fast = [s for s in g.runs() if s.trained]
    slow = [s for s in plain.runs() if s.trained]
    assert all(s.config.precision == "bf16" and s.config.channels_last is True for s in fast)
    assert all("precision" not in s.config.to_dict() and "channels_last" not in s.config.to_dict() for s in slow)
    assert [s.seed for s in fast] == [s.seed for s in slow]  # the same runs, computed otherwise
    assert {s.run_id for s in fast}.isdisjoint(s.run_id for s in slow)
    s = build(tmp_path / "g.toml", data, tmp_path / "zoo", workers=0, device="cpu", progress=False, log=quiet)
    assert s.done == 5
    results = [ck["result"] for ck in finals(tmp_path / "zoo").values()]
    assert sorted((r["precision"], r["pack_size"]) for r in results) == [
        ("bf16", 1),
        ("bf16", 3),
        ("bf16", 3),
        ("bf16", 3),
        ("fp32", 1),
    ]
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(GridError, match="precision"):
        (tmp_path / "b.toml").write_text(text.replace('"bf16"', '"fp16"'))
        load_grid(tmp_path / "b.toml")
