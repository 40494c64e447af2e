"""Typed run configuration: the stored forms stay byte for byte what they were, the grid tables'
checks sit beside their fields, tasks travel to worker processes."""

import hashlib
import json
import pickle
from dataclasses import fields, replace

import pytest

import camgap.zoo.train as train
from camgap.zoo.config import (
    RESULT_KEYS,
    GridError,
    InvalidStoredError,
    Pack,
    PretrainConfig,
    RunConfig,
    RunResult,
    Task,
    TrainConfig,
)
from camgap.zoo.executors import InProcessExecutor, _lost
from camgap.zoo.grid import PRETRAIN_DEFAULTS, TRAIN_DEFAULTS, canonical_json, load_grid, make_run_id
from tests.helpers.zoo import RELEASED_GRIDS

# sha256 over the canonical JSON of every run config of the packaged grids (demo: as an earlier
# release shipped it), as stored before run configs became typed (config.json, checkpoints and the
# registry hold these bytes)
CONFIG_DIGESTS = {
    "demo": "8ddee1a3e2f291a77a497228c5ed60820c1cd52c24c4285a3a5cc6e5f17eb3aa",
    "paper": "0f94bdc4f9cae626f8bb91b7ed1273335fa84eb74a1d70dbdb2ce2b89774f5df",
}
TRAINED_KEYS = [
    "arch",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "augment",
    "pretrained",
    "arch_options",
    "input_size",
    "resize",
    "mean",
    "std",
    "trained",
    "max_epochs",
    "threads",
    "loss_threshold",
    "acc_threshold",
    "momentum",
    "flip_prob",
    "jitter",
    "pretrained_source",
]
UNTRAINED_KEYS = [*TRAINED_KEYS[:7], "trained", "arch_options", "input_size", "resize", "mean", "std"]


@pytest.mark.parametrize("name", sorted(CONFIG_DIGESTS))
def test_stored_configs_of_the_packaged_grids_are_unchanged(name):
    specs = load_grid(RELEASED_GRIDS[name]).runs()
    text = "\n".join(canonical_json(s.config.to_dict()) for s in specs)
    assert hashlib.sha256(text.encode()).hexdigest() == CONFIG_DIGESTS[name]
    # insertion order too: checkpoints pickle the dict as it is
    extra = ["pack", "channels_last"] if name == "demo" else []
    assert list(specs[0].config.to_dict()) == TRAINED_KEYS + extra
    assert list(specs[-1].config.to_dict()) == UNTRAINED_KEYS


def test_a_config_of_an_older_model_set_keeps_its_bytes_and_run_id():
    old = {"arch": "resnet18", "trained": False, "pretrained": False, "mean": [0.5, 0.5, 0.5], "input_size": 32}
    cfg = RunConfig.from_dict(old)
    assert cfg.threads is None and cfg.batch_size is None and cfg.input_size == 32
    assert list(cfg.to_dict()) == list(old)
    assert json.dumps(cfg.to_dict()) == json.dumps(old)
    assert make_run_id(cfg.to_dict(), 3) == make_run_id(old, 3)
    assert pickle.dumps(cfg.to_dict()) == pickle.dumps(old)
    # a field set later is stored after the others; a config made directly stores what is set
    assert list(replace(cfg, threads=2).to_dict()) == [*old, "threads"]
    assert RunConfig(arch="resnet18", lr=0.1, trained=False).to_dict() == {
        "arch": "resnet18",
        "lr": 0.1,
        "trained": False,
    }


def test_a_stored_config_or_result_with_an_unknown_key_is_refused():
    with pytest.raises(InvalidStoredError, match=r"runs/x/config.json: unknown key\(s\) 'colour'"):
        RunConfig.from_dict({"arch": "resnet18", "colour": "red"}, "runs/x/config.json")
    with pytest.raises(InvalidStoredError, match=r"final.pt: result: unknown key\(s\) 'loss'"):
        RunResult.from_dict({"run_id": "a", "status": "done", "loss": 1.0}, "final.pt: result")


def test_the_stored_result_holds_its_keys_in_their_order():
    res = RunResult(
        "a", "done", trained=True, epochs=3, gap=1.5, pack_size=1, precision="fp32", pack_wall_time=2.0, warnings=("w",)
    )
    stored = res.to_dict()
    assert list(stored) == list(RESULT_KEYS)  # no error, worker_died, warnings nor results on disk
    assert RESULT_KEYS[-3:] == ("pack_size", "precision", "pack_wall_time")
    assert stored["epochs"] == 3 and stored["precision"] == "fp32" and stored["test_acc"] is None
    assert stored["pack_wall_time"] == 2.0
    for newer in (1, 3):  # written before pack_wall_time existed; before pack_size and precision too
        older = {k: stored[k] for k in RESULT_KEYS[:-newer]}
        back = RunResult.from_dict(older)
        assert back.to_dict() == older and list(back.to_dict()) == list(older) and back.pack_wall_time is None
    assert back.pack_size is None
    assert RunResult.from_dict(stored) == RunResult(
        "a", "done", trained=True, epochs=3, gap=1.5, pack_size=1, precision="fp32", pack_wall_time=2.0
    )


def test_the_grid_tables_declare_a_check_beside_every_field():
    for cls in (TrainConfig, PretrainConfig):
        assert all(callable(f.metadata.get("check")) for f in fields(cls)), cls
    # the defaults are those of before
    assert TRAIN_DEFAULTS == {
        "max_epochs": 150,
        "loss_threshold": 0.1,
        "acc_threshold": 0.95,
        "input_size": 224,
        "resize": "resize",
        "momentum": 0.9,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "flip_prob": 0.5,
        "jitter": 0.4,
        "threads": 1,
        "pack": 1,
        "precision": "fp32",
        "channels_last": False,
        "eval_batch_size": 256,
        "pretrained_weights": {},
    }
    assert PRETRAIN_DEFAULTS == {
        "classes": 12,
        "train_per_class": 100,
        "test_per_class": 20,
        "seed": 0,
        "epochs": 20,
        "batch_size": 32,
        "lr": 1.25e-3,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "augment": True,
    }
    t = TrainConfig.from_dict({"precision": "BF16", "pack": "auto", "max_epochs": 3})
    assert (t.precision, t.pack, t.max_epochs, t.momentum) == ("bf16", "auto", 3, 0.9)


@pytest.mark.parametrize(
    ("cls", "raw", "match"),
    [
        (TrainConfig, {"momentum": 1.0}, r"g.toml: \[t\] momentum: 1.0 is outside \[0.0, 1.0\)"),
        (TrainConfig, {"std": [1, 0, 1]}, r"g.toml: \[t\] std\[1\]: 0.0 is outside \(0.0, inf\]"),
        (TrainConfig, {"pretrained_weights": "x"}, r'\[t\] pretrained_weights: expected a table \{arch = "path"\}'),
        (TrainConfig, {"pretrained_weights": {"resnet18": ""}}, r"pretrained_weights.resnet18: expected a file path"),
        (TrainConfig, {"epochs": 3}, r"g.toml: \[t\]: unknown key\(s\) 'epochs'; allowed: max_epochs, "),
        (PretrainConfig, {"classes": 1}, r"g.toml: \[t\] classes: expected an integer >= 2, got 1"),
    ],
)
def test_a_bad_table_value_names_the_key_and_what_is_allowed(cls, raw, match):
    with pytest.raises(GridError, match=match):
        cls.from_dict(raw, "g.toml: [t]")


def _task(run_id="r1", **kw) -> Task:
    cfg = load_grid("demo").runs()[0].config
    return Task(run_id, cfg, 7, 0, "/tmp/r1", "/c/train", "/c/test", 4, ("a", "b", "c", "d"), **kw)


def test_tasks_and_results_pickle_for_worker_processes():
    pack = Pack("pack-1", (_task("r1"), _task("r2")))
    back = pickle.loads(pickle.dumps(pack))
    assert back == pack and back.runs[1].config.to_dict() == pack.runs[1].config.to_dict()
    res = RunResult("pack-1", "pack", results=(RunResult("r1", "done", epochs=2),))
    assert pickle.loads(pickle.dumps(res)) == res


def test_a_pack_trains_on_the_device_and_threads_the_executor_gave_it(monkeypatch):
    seen = []

    def fake_train_pack(tasks):
        seen.extend((t.run_id, t.device, t.threads) for t in tasks)
        return [RunResult(t.run_id, "done") for t in tasks]

    monkeypatch.setattr(train, "train_pack", fake_train_pack)
    ex = InProcessExecutor("cuda", threads=3, fn=train.execute_task)
    ex.submit(Pack("pack-1", (_task("r1"), _task("r2"))))
    [res] = ex.wait()
    assert res.status == "pack" and [r.run_id for r in res.results] == ["r1", "r2"]
    assert seen == [("r1", "cuda:0", 3), ("r2", "cuda:0", 3)]


def test_execute_task_reports_a_failure_as_a_result(monkeypatch):
    def boom(task):
        raise RuntimeError("no")

    monkeypatch.setattr(train, "train_run", boom)
    res = train.execute_task(_task())
    assert res.run_id == "r1" and res.status == "failed" and res.error.startswith("RuntimeError: no\n")


def test_executors_place_and_fail_every_kind_of_task():
    from camgap.zoo.measure import MeasureOutcome, MeasureRequest, MeasureTask, RunPlan

    task = MeasureTask("m1", "zoo", RunPlan("m1", (), ("nuclear_norm",)), MeasureRequest(("nuclear_norm",)))
    ex = InProcessExecutor("cpu", threads=2, fn=lambda t: (t.device, t.threads, t.run_id))
    ex.submit(task)
    assert ex.wait() == [("cpu", 2, "m1")]
    assert _lost(task, True, "died") == MeasureOutcome("m1", "lost", error="died", worker_died=True)
    assert _lost(_task(), False, "sibling") == RunResult("r1", "lost", error="sibling", worker_died=False)
