"""Grid files: parsing, validation, the paper's Table 2, run ids."""

import tomllib
from pathlib import Path

import pytest

from camgap.zoo.grid import (
    GRID_KEYS,
    GridError,
    load_grid,
    make_run_id,
    packaged_grids,
    parse_grid,
    seed_from_run_id,
)
from tests.helpers.zoo import RELEASED_GRIDS

ROOT = Path(__file__).resolve().parents[1]


def g(text: str):
    return parse_grid(tomllib.loads(text), "test.toml")


BASE = """
[grid]
arch = ["small_resnet"]
batch_size = [16, 32]
lr = [0.1, 0.001]
"""


def test_paper_grid_is_table_2():
    grid = load_grid("paper")
    assert grid.axes == {
        "arch": ("resnet18", "resnet34", "resnet50", "resnet101"),
        "batch_size": (16, 32, 64),
        "lr": (1.25e-1, 1.25e-3, 1.25e-5),
        "optimizer": ("adam", "sgd"),
        "weight_decay": (0.0, 2e-4, 5e-4),
        "augment": (True, False),
        "pretrained": (True, False),
    }
    # |Theta| = 864 configurations; the paper's |Theta| x 2 x 2 = 3456 models (see paper.toml)
    assert grid.repeats == 4
    assert grid.n_trained == 3456 == 3 * 3 * 2 * 3 * 4 * 2 * 2 * 4
    assert grid.n_untrained == 200  # 50 random models per architecture (section 5.3)
    runs = grid.runs()
    assert len(runs) == 3656 and len({r.run_id for r in runs}) == 3656
    assert len({r.seed for r in runs}) == 3656
    t = grid.train.to_dict()
    assert (t["max_epochs"], t["loss_threshold"], t["acc_threshold"], t["input_size"]) == (150, 0.1, 0.95, 224)
    assert t["momentum"] == 0.9


def test_the_grids_live_in_the_package_only():
    shipped = packaged_grids()
    assert set(shipped) == {"paper", "cpu-small", "demo", "demo-quick"}
    assert all(p.parent.name == "grids" and p.parent.parent.name == "camgap" for p in shipped.values())
    assert not (ROOT / "grids").exists()
    assert load_grid("cpu-small").archs == ("small_resnet",)


def test_cpu_small_grid():
    grid = load_grid("cpu-small")
    assert grid.n_trained == 32 and grid.n_untrained == 8
    assert grid.arch_options == {"small_resnet": {"width": 8, "blocks": [1, 1, 1, 1]}}


def test_defaults_and_expansion_order():
    grid = g(BASE + "repeats = 2\n")
    assert grid.axes["optimizer"] == ("sgd",) and grid.axes["pretrained"] == (False,)
    runs = grid.runs()
    assert len(runs) == 8
    combos = [(r.config.batch_size, r.config.lr, r.repeat) for r in runs]
    assert combos[:4] == [(16, 0.1, 0), (16, 0.1, 1), (16, 0.001, 0), (16, 0.001, 1)]
    assert all(set(GRID_KEYS) <= set(r.config.to_dict()) for r in runs)


def test_numbers_are_canonical_floats_and_names_lowercase():
    a = g('[grid]\narch = ["small_resnet"]\nweight_decay = [0]\nlr = [1]\noptimizer = ["SGD"]')
    b = g('[grid]\narch = ["small_resnet"]\nweight_decay = [0.0]\nlr = [1.0]\noptimizer = ["sgd"]')
    assert [r.run_id for r in a.runs()] == [r.run_id for r in b.runs()]
    assert isinstance(a.runs()[0].config.weight_decay, float)


def test_run_id_is_stable_and_config_sensitive():
    cfg = {"arch": "resnet18", "lr": 0.1, "batch_size": 16}
    rid = make_run_id(cfg, 0)
    assert rid == make_run_id(dict(reversed(list(cfg.items()))), 0)  # key order does not matter
    assert len(rid) == 16 and int(rid, 16) >= 0
    assert make_run_id(cfg, 1) != rid
    assert make_run_id(cfg | {"lr": 0.01}, 0) != rid
    assert seed_from_run_id(rid) == seed_from_run_id(rid) and 0 <= seed_from_run_id(rid) < 2**31
    # ids do not depend on the file: same grid parsed twice, same ids
    assert [r.run_id for r in g(BASE).runs()] == [r.run_id for r in g(BASE).runs()]
    # a training setting changes every id; an execution-only one changes none
    base = {r.run_id for r in g(BASE).runs()}
    assert base.isdisjoint({r.run_id for r in g(BASE + "[train]\nmax_epochs = 10\n").runs()})
    assert base == {r.run_id for r in g(BASE + "[train]\neval_batch_size = 7\n").runs()}
    assert g(BASE).fingerprint() == g(BASE + "[train]\neval_batch_size = 7\n").fingerprint()
    assert g(BASE).fingerprint() != g(BASE + "repeats = 2\n").fingerprint()


def test_untrained_runs():
    grid = g(BASE + "untrained = 3\n")
    un = [r for r in grid.runs() if not r.trained]
    assert len(un) == 3 and {r.repeat for r in un} == {0, 1, 2}
    assert all(r.config.arch == "small_resnet" and r.config.lr is None for r in un)


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty grid"),
        ("[grid]\n", "empty grid"),
        ("[grid]\nbatch_size = [16]", "needs `arch"),
        ("[grid]\narch = []", "empty list"),
        ('[grid]\narch = ["small_resnet"]\nlr = []', "lr: empty list"),
        ('[grid]\narch = ["resnet9000"]', "unknown architecture 'resnet9000'"),
        ('[grid]\narch = ["small_resnet"]\nlearning_rate = [0.1]', "unknown key.*learning_rate"),
        ('[grid]\narch = ["small_resnet"]\noptimizer = ["rmsprop"]', "'rmsprop' is not one of sgd, adam"),
        ('[grid]\narch = ["small_resnet"]\nbatch_size = [0]', r"batch_size\[0\]: expected an integer >= 1"),
        ('[grid]\narch = ["small_resnet"]\nbatch_size = [16.5]', "expected an integer"),
        ('[grid]\narch = ["small_resnet"]\nlr = [-0.1]', "outside"),
        ('[grid]\narch = ["small_resnet"]\naugment = ["yes"]', "expected true or false"),
        ('[grid]\narch = ["small_resnet"]\nbatch_size = 16', "expected a list"),
        ('[grid]\narch = ["small_resnet"]\nbatch_size = [16, 16]', "duplicate"),
        ('[grid]\narch = ["small_resnet"]\nrepeats = 0', "repeats: expected an integer >= 1"),
        ('[grid]\narch = ["small_resnet"]\n[train]\nmax_epoch = 3', r"\[train\]: unknown key.*max_epoch"),
        ('[grid]\narch = ["small_resnet"]\n[train]\nacc_threshold = 1.5', "outside"),
        ('[grid]\narch = ["small_resnet"]\n[train]\nresize = "crop"', "not one of resize, resize_crop"),
        ('[grid]\narch = ["small_resnet"]\n[train]\nmean = [0.5, 0.5]', "list of 3 numbers"),
        ('[grid]\narch = ["small_resnet"]\n[arch_options.small_resnet]\ndepth = 3', "unknown option.*depth; it takes"),
        ('[grid]\narch = ["small_resnet"]\n[arch_options.resnet18]\nwidth = 3', "not in \\[grid\\] arch"),
        ('[grid]\narch = ["small_resnet"]\n[pretrain]\nepochs = 0', "epochs: expected an integer >= 1"),
        ('[grid]\narch = ["small_resnet"]\n[something]\nx = 1', "unknown key.*something"),
        ('[grid]\narch = ["small_resnet"]\n[train]\npretrained_weights = { resnet9 = "x" }', "unknown architecture"),
    ],
)
def test_validation_errors(text, match):
    with pytest.raises(GridError, match=match):
        g(text)


def test_load_errors(tmp_path):
    with pytest.raises(GridError, match="no such grid file"):
        load_grid(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid\narch = 1")
    with pytest.raises(GridError, match="not valid TOML"):
        load_grid(bad)


def test_grid_seed_draws_another_sample_and_other_run_seeds():
    import dataclasses

    g0 = load_grid("demo")
    g1 = dataclasses.replace(g0, seed=1)
    assert g0.seed == 0 and "grid_seed" not in g0.runs()[0].config.to_dict()  # seed 0: the ids of before
    r0, r1 = g0.runs(), g1.runs()
    assert len(r0) == len(r1)
    assert {r.run_id for r in r0}.isdisjoint(r.run_id for r in r1)
    assert {r.seed for r in r0}.isdisjoint(r.seed for r in r1)

    def key(runs):
        return sorted(
            tuple(getattr(r.config, k) for k in ("arch", "batch_size", "lr", "optimizer")) for r in runs if r.trained
        )

    assert key(r0) != key(r1)  # another balanced sample of the configurations
    assert g1.canonical()["seed"] == 1 and "seed" not in g0.canonical()
    assert dataclasses.replace(g0, seed=1).fingerprint() == g1.fingerprint() != g0.fingerprint()


# Run ids and seeds of the packaged grids as computed before run configs became typed: stored model
# sets are keyed by them, so no change to how a config is built or serialised may move one. "demo"
# is the demo grid as an earlier release shipped it (tests/data), so that the demo can be re-tuned.
KNOWN_RUNS = {
    "demo": (
        72,
        "36f3cd3efdaab714b0406f1bb04ce62e9696f11a2a69bcba202e7523adc25d95",
        {
            0: ("7702db5cddfa7886", 1159706274, 0),
            36: ("e44c4db30422821d", 1958998554, 0),
            71: ("c062dc2145ee7692", 347408818, 3),
        },
    ),
    "paper": (
        3656,
        "7adef1097e78079c13f2652329ef4d4c9e06043643c9f1e5d6369717863aad77",
        {
            0: ("d68c9fc7a0c11541", 4093062, 0),
            1828: ("d9d85242624ce4e2", 207139189, 0),
            3655: ("5cec5e200de31a51", 968477926, 49),
        },
    ),
}


@pytest.mark.parametrize("name", sorted(KNOWN_RUNS))
def test_packaged_grids_keep_their_run_ids(name):
    import hashlib

    n, digest, samples = KNOWN_RUNS[name]
    specs = load_grid(RELEASED_GRIDS[name]).runs()
    assert len(specs) == n
    for i, (run_id, seed, repeat) in samples.items():
        assert (specs[i].run_id, specs[i].seed, specs[i].repeat) == (run_id, seed, repeat)
        assert make_run_id(specs[i].config.to_dict(), repeat) == run_id
    assert hashlib.sha256(",".join(s.run_id for s in specs).encode()).hexdigest() == digest


# The released demo grid with its precision written out: bf16 runs are other runs than fp32 ones
# (fp32, the default, keeps the ids above); the untrained models compute in fp32 whatever the grid says.
KNOWN_BF16_DEMO = (
    "8c0c5749a3e4e6f509bd680f9d7ac60831f0334da4bd4aeedd229372b8e99a94",
    {0: ("66f5d8a2b8b77663", 1159706274, 0), 36: ("608e42ff475d22e8", 1958998554, 0)},
)


def _released_demo(precision: str):
    text = Path(RELEASED_GRIDS["demo"]).read_text(encoding="utf-8")
    return g(text.replace("channels_last = true", f'channels_last = true\nprecision = "{precision}"'))


@pytest.mark.parametrize(("native", "explicit"), [(True, "bf16"), (False, "fp32")])
def test_auto_takes_the_run_ids_of_the_precision_it_resolves_to(monkeypatch, native, explicit):
    import hashlib

    import torch

    from camgap.zoo import loop

    monkeypatch.setattr(loop, "bf16_support", lambda device: (native, "a device of that kind"))
    resolved = _released_demo("auto").with_precision(loop.resolve_precision("auto", torch.device("cpu")))
    specs = _released_demo(explicit).runs()
    assert [(s.run_id, s.seed) for s in resolved.runs()] == [(s.run_id, s.seed) for s in specs]
    digest, samples = KNOWN_BF16_DEMO if explicit == "bf16" else KNOWN_RUNS["demo"][1:]
    assert hashlib.sha256(",".join(s.run_id for s in specs).encode()).hexdigest() == digest
    for i, (run_id, seed, repeat) in samples.items():
        assert (specs[i].run_id, specs[i].seed, specs[i].repeat) == (run_id, seed, repeat)
    assert specs[71].run_id == KNOWN_RUNS["demo"][2][71][0]  # an untrained model: the same in both
