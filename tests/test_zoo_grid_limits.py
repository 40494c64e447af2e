"""Grid limits: the run count is computed from the number of values alone and checked before
anything is expanded; `sample` decodes the indices it draws instead of listing the product; every
arch option is checked when the grid is read."""

import itertools
import math
import random
import sys

import pytest

import camgap.zoo.grid as grid_mod
from camgap.models import SMALL_RESNET_MAX_BLOCKS, SMALL_RESNET_MAX_WIDTH, check_model_options
from camgap.zoo.cli import MAX_RUNS_HELP, main
from camgap.zoo.grid import MAX_RUNS, GridError, balanced_sample, combo_digits, load_grid, parse_grid
from tests.helpers.zoo import build_args


def doc(**grid) -> dict:
    return {"grid": {"arch": ["small_resnet"], **grid}, "arch_options": {"small_resnet": {"width": 4}}}


def write_grid(path, lines: str):
    path.write_text('[grid]\narch = ["small_resnet"]\n' + lines)
    return path


def values(n: int, scale: float) -> str:
    return "[" + ", ".join(repr((i + 1) * scale) for i in range(n)) + "]"


@pytest.fixture
def no_expansion(monkeypatch):
    """Fail the test if any run is built: the size check must come first."""

    def expanded(*args, **kwargs):
        raise AssertionError("the grid was expanded")

    monkeypatch.setattr(grid_mod.Grid, "run_config", expanded)
    monkeypatch.setattr(grid_mod.Grid, "untrained_config", expanded)
    monkeypatch.setattr(grid_mod, "balanced_sample", expanded)


# --- the run count ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lines, count, parts",
    [
        (f"lr = {values(1000, 1e-4)}\nweight_decay = {values(1000, 1e-6)}\n", "1,000,000", "1,000,000 configurations"),
        ("repeats = 1000000\n", "1,000,000", "x 1,000,000 repeats"),
        ("untrained = 1000000\n", "1,000,001", "+ 1,000,000 untrained x 1 architectures"),
    ],
)
def test_a_million_run_grid_is_refused_by_the_cli_before_anything_is_written(
    tmp_path, capsys, no_expansion, lines, count, parts
):
    grid = write_grid(tmp_path / "big.toml", lines)
    zoo = tmp_path / "zoo"
    assert main(build_args(grid, tmp_path / "data", zoo)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{grid}: {count} runs (" in err and parts in err
    assert f"more than the limit of {MAX_RUNS:,}" in err and "--max-runs" in err
    assert not zoo.exists()  # no registry, no directory


def test_the_count_is_arithmetic_over_value_counts(no_expansion):
    g = parse_grid(doc(lr=[0.1, 0.01, 0.001], batch_size=[8, 16], repeats=3, untrained=5), "g.toml")
    assert (g.n_product, g.n_configs, g.n_trained, g.n_untrained, len(g)) == (6, 6, 18, 5, 23)
    g = parse_grid(doc(lr=[0.1, 0.01, 0.001], batch_size=[8, 16], sample=4, repeats=3), "g.toml")
    assert (g.n_product, g.n_configs, len(g)) == (6, 4, 12)


def test_max_runs_is_the_limit_at_both_ends():
    d = doc(lr=[0.1, 0.01], batch_size=[8, 16], repeats=2, untrained=1)  # 2 x 2 x 2 + 1 = 9 runs
    assert len(parse_grid(d, "g.toml", max_runs=9).runs()) == 9
    with pytest.raises(GridError, match=r"^g\.toml: 9 runs \(4 configurations x 2 repeats .*limit of 8;"):
        parse_grid(d, "g.toml", max_runs=8)
    g = parse_grid(d, "g.toml", max_runs=9)
    with pytest.raises(GridError, match="9 runs"):  # a grid made by hand is checked when expanded
        grid_mod.Grid(g.axes, 2, 1, max_runs=8).runs()


def test_max_runs_flag_lets_a_bigger_grid_through_the_size_check(tmp_path, capsys):
    grid = write_grid(tmp_path / "g.toml", "lr = [0.1, 0.01, 0.001]\n")
    assert main(build_args(grid, tmp_path / "data", tmp_path / "zoo", 0, "--max-runs", "2")) == 2
    assert "3 runs" in capsys.readouterr().err
    # allowed: the build goes on to the next check (the missing data directory)
    assert main(build_args(grid, tmp_path / "data", tmp_path / "zoo", 0, "--max-runs", "3")) == 2
    err = capsys.readouterr().err
    assert "limit" not in err and err.endswith(f"{tmp_path / 'data'}: no such directory\n")
    assert main(build_args(grid, tmp_path / "data", tmp_path / "zoo", 0, "--max-runs", "0")) == 2
    assert "--max-runs must be an integer >= 1, got 0" in capsys.readouterr().err


def test_build_help_names_the_default_limit():
    assert MAX_RUNS_HELP == f"{MAX_RUNS:,}"


def test_the_packaged_grids_are_under_the_limit():
    for name in ("paper", "cpu-small", "demo", "demo-quick"):
        assert len(load_grid(name)) <= MAX_RUNS


# --- sampling without expanding ----------------------------------------------------------


def expanded_balanced_sample(combos: list[tuple], k: int, seed: int = 0) -> list[int]:
    """The sampler as it was, over the listed product: the oracle the run ids were pinned with."""

    def imbalance(idx):
        total = 0
        for axis in range(len(combos[0])):
            counts: dict = {}
            for i in idx:
                counts[combos[i][axis]] = counts.get(combos[i][axis], 0) + 1
            vals = {c[axis] for c in combos}
            total += max(counts.values()) - (min(counts.values()) if len(counts) == len(vals) else 0)
        return total

    tries = range(seed * 200, (seed + 1) * 200)
    return min((sorted(random.Random(t).sample(range(len(combos)), k)) for t in tries), key=imbalance)


@pytest.mark.parametrize("sizes", [(4, 4), (2, 2, 2, 2), (3, 1, 2, 4), (5,), (2, 3, 3, 2, 2), (1, 3, 3, 2, 2, 2, 2)])
def test_the_sample_is_the_one_of_the_expanded_product(sizes):
    combos = list(itertools.product(*(range(s) for s in sizes)))
    for k in sorted({1, 2, 3, len(combos) // 2, len(combos) - 1} - {0}):
        for seed in (0, 1):
            assert balanced_sample(sizes, k, seed) == expanded_balanced_sample(combos, k, seed), (sizes, k, seed)


def test_combo_digits_is_product_order():
    sizes = (3, 1, 2, 4)
    assert [combo_digits(i, sizes) for i in range(math.prod(sizes))] == list(
        itertools.product(*(range(s) for s in sizes))
    )


def test_sample_of_a_million_configurations_draws_without_listing_them(monkeypatch):
    lr, wd = [(i + 1) * 1e-4 for i in range(1000)], [(i + 1) * 1e-6 for i in range(1000)]
    g = parse_grid(doc(lr=lr, weight_decay=wd, sample=4), "g.toml")
    assert g.n_product == 10**6 and len(g) == 4
    product = itertools.product

    def no_product(*args):
        raise AssertionError("the product was listed")

    monkeypatch.setattr(grid_mod.itertools, "product", no_product)
    runs = g.runs()
    monkeypatch.undo()
    picked = balanced_sample([1, 1, 1000, 1, 1000, 1, 1], 4, 0)
    assert len(runs) == 4 and len({r.run_id for r in runs}) == 4
    for run, i in zip(runs, picked):  # configuration i of the product, found by walking it
        combo = next(itertools.islice(product(*g.axes.values()), i, None))
        assert (run.config.lr, run.config.weight_decay) == (combo[2], combo[4])


def test_a_product_too_large_to_sample_is_a_grid_error():
    # only the value counts matter to the check: ranges stand for 10**7 values per key
    axes = {"arch": ("small_resnet",), "batch_size": range(10**7), "lr": range(10**7), "weight_decay": range(10**7)}
    assert grid_mod.Grid(axes, sample=10**5).n_product == 10**21 > sys.maxsize
    with pytest.raises(GridError, match=f"more than can be sampled from \\(at most {sys.maxsize:,}\\)"):
        grid_mod.Grid(axes, sample=2, source="g.toml").check_size()


# --- arch options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"width": -4}, f"width must be an integer from 1 to {SMALL_RESNET_MAX_WIDTH}, got -4"),
        ({"width": 1e8}, "width must be an integer from 1 to 4096, got 100000000.0"),
        ({"width": 100_000_000}, "width must be an integer from 1 to 4096, got 100000000"),
        ({"width": 0}, "got 0"),
        ({"width": True}, "got True"),
        ({"width": 8.0}, "got 8.0"),
        ({"blocks": [1, 1, 1]}, "blocks must list 4 stage depths"),
        ({"blocks": [1, 1, 1, SMALL_RESNET_MAX_BLOCKS + 1]}, f"each an integer from 1 to {SMALL_RESNET_MAX_BLOCKS}"),
        ({"blocks": [1, 0, 1, 1]}, "got [1, 0, 1, 1]"),
        ({"strides": [1, 2, 3, 1]}, "strides must list 4 stage strides of 1 or 2"),
        ({"stem_stride": 3}, "stem_stride be 1, 2 or 4, got strides=(1, 2, 2, 2), stem_stride=3"),
        ({"depth": 3}, "unknown option(s) depth; it takes width, blocks, strides, stem_stride"),
    ],
)
def test_every_small_resnet_option_is_checked_when_the_grid_is_read(options, message):
    with pytest.raises(GridError) as err:
        parse_grid({"grid": {"arch": ["small_resnet"]}, "arch_options": {"small_resnet": options}}, "g.toml")
    assert str(err.value).startswith("g.toml: [arch_options.small_resnet]: ")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_largest_allowed_small_resnet_is_checked_without_allocating_it():
    # width 4096: 38 GB per layer4 convolution, built on the meta device by the check
    check_model_options("small_resnet", {"width": SMALL_RESNET_MAX_WIDTH, "blocks": [1, 1, 1, 1]})


def test_a_bad_arch_option_exits_2_with_one_line(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text('[grid]\narch = ["small_resnet"]\n[arch_options.small_resnet]\nwidth = -4\n')
    assert main(build_args(grid, tmp_path / "data", tmp_path / "zoo")) == 2
    err = capsys.readouterr().err.strip()
    width = "width must be an integer from 1 to 4096, got -4"
    assert err == f"camgap zoo: error: {grid}: [arch_options.small_resnet]: {width}"


def test_torchvision_archs_take_no_options():
    with pytest.raises(GridError, match=r"\[arch_options.resnet18\]: resnet18 takes no options, got \['width'\]"):
        parse_grid({"grid": {"arch": ["resnet18"]}, "arch_options": {"resnet18": {"width": 3}}}, "g.toml")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"bogus": 1}, "timm:resnet18 rejects options {'bogus': 1}: TypeError: "),
        ({"layers": [1]}, "timm:resnet18 rejects options {'layers': [1]}: "),
    ],
)
def test_a_timm_constructors_refusal_is_one_line(options, message):
    pytest.importorskip("timm")
    with pytest.raises(GridError) as err:
        parse_grid({"grid": {"arch": ["timm:resnet18"]}, "arch_options": {"timm:resnet18": options}}, "g.toml")
    assert str(err.value).startswith("g.toml: [arch_options.timm:resnet18]: " + message)
    assert "\n" not in str(err.value)
