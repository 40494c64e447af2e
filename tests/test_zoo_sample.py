"""`sample = k` in a grid's [grid] table: a seeded, balanced subset of the product's
configurations (camgap.zoo.grid.balanced_sample), with stable run ids."""

from collections import Counter

import pytest

from camgap.zoo.grid import GridError, balanced_sample, load_grid, parse_grid

AXES = {
    "batch_size": [16, 32],
    "lr": [0.1, 0.01],
    "optimizer": ["sgd", "adam"],
    "weight_decay": [0, 5e-4],
}


def grid_doc(sample=None, repeats=1, untrained=0, **extra) -> dict:
    grid = {"arch": ["small_resnet10"], **AXES, "repeats": repeats, "untrained": untrained}
    if sample is not None:
        grid["sample"] = sample
    grid.update(extra)
    return {
        "grid": grid,
        "train": {"input_size": 32, "max_epochs": 2},
        "arch_options": {"small_resnet10": {"width": 4}},
    }


def trained_configs(grid) -> list[dict]:
    return [s.config.to_dict() for s in grid.runs() if s.trained]


def test_sample_keeps_exactly_k_and_balances_every_value():
    g = parse_grid(grid_doc(sample=8))
    assert g.n_configs == 8 and g.n_trained == 8 and len(g) == 8
    configs = trained_configs(g)
    assert len(configs) == 8
    # 8 distinct configurations of the 16
    keys = {tuple(c[k] for k in AXES) for c in configs}
    assert len(keys) == 8
    for key, values in AXES.items():
        counts = Counter(c[key] for c in configs)
        assert set(counts) == {float(v) if key in ("lr", "weight_decay") else v for v in values}, key
        assert max(counts.values()) - min(counts.values()) <= 1, (key, counts)


def test_sample_is_deterministic_same_run_ids():
    a = [s.run_id for s in parse_grid(grid_doc(sample=8, untrained=2)).runs()]
    b = [s.run_id for s in parse_grid(grid_doc(sample=8, untrained=2)).runs()]
    assert a == b
    assert len(a) == len(set(a)) == 8 + 2
    # the same indices from the helper, twice
    assert balanced_sample([4, 4], 5) == balanced_sample([4, 4], 5)


def test_sampled_ids_are_a_subset_of_the_full_products_ids():
    full = {s.run_id for s in parse_grid(grid_doc()).runs()}
    sampled = {s.run_id for s in parse_grid(grid_doc(sample=8)).runs()}
    assert len(full) == 16
    assert sampled < full


def test_sample_with_repeats_and_untrained():
    g = parse_grid(grid_doc(sample=5, repeats=2, untrained=3))
    specs = g.runs()
    trained = [s for s in specs if s.trained]
    assert len(trained) == 10 and len(specs) == 13 == len(g)
    assert len({tuple(getattr(s.config, k) for k in AXES) for s in trained}) == 5
    assert Counter(s.repeat for s in trained) == {0: 5, 1: 5}


@pytest.mark.parametrize("k", [16, 17, 100])
def test_sample_at_or_above_the_product_keeps_all(k):
    full = parse_grid(grid_doc())
    g = parse_grid(grid_doc(sample=k))
    assert g.n_configs == 16
    assert [s.run_id for s in g.runs()] == [s.run_id for s in full.runs()]


@pytest.mark.parametrize("bad", [0, -1, 2.5, "4", True])
def test_bad_sample_is_a_grid_error(bad):
    with pytest.raises(GridError, match="sample"):
        parse_grid(grid_doc(sample=bad))


def test_sample_changes_the_fingerprint_not_the_ids_of_kept_runs():
    a, b = parse_grid(grid_doc(sample=8)), parse_grid(grid_doc(sample=9))
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == parse_grid(grid_doc(sample=8)).fingerprint()


@pytest.mark.parametrize("name,configs,untrained", [("demo-quick", 6, 2), ("demo", 64, 8)])
def test_packaged_demo_grids_sample_every_value(name, configs, untrained):
    g = load_grid(name)
    specs = g.runs()
    trained = [s for s in specs if s.trained]
    assert len(trained) == configs and len(specs) == configs + untrained
    for key, values in g.axes.items():
        seen = Counter(getattr(s.config, key) for s in trained)
        assert set(seen) == set(values), (name, key, seen)
