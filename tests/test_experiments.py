"""The context experiment's table (camgap.experiments) on hand-made runs and measurements, its
numbers against scipy and numpy; the CLI's default folders and refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from camgap import cli
from camgap.demo import PRESETS
from camgap.experiments import (
    STATS,
    context_folder,
    context_table,
    default_out,
    display_frame,
    table_note,
    write_context_table,
)
from camgap.study.tables import display_name
from camgap.zoo.grid import load_grid

PRIMARY = {"cam": "gradcam", "masks": "boxes", "threshold": "0.1"}
COLUMNS = [
    "models",
    "mean_gap",
    "mean_iou",
    *(f"{k}_{s}" for k in ("iou", "iou_b", "ei") for s in STATS),
    "tf_measure",
    *(f"tf_{s}" for s in STATS),
]


def _params(**kw) -> str:
    return json.dumps(kw, sort_keys=True)


def hand_made(seed: int, n: int = 12):
    """n models, the first 9 at >= 80 % training accuracy, the last untrained; measures with a
    known relation to the gap, plus variants and measures the table must not use."""
    rng = np.random.default_rng(seed)
    train_acc = np.r_[rng.uniform(0.8, 1.0, 9), rng.uniform(0.3, 0.79, n - 10), 0.1]
    gap = rng.uniform(0, 40, n)
    runs = pd.DataFrame(
        {
            "run_id": [f"r{i}" for i in range(n)],
            "arch": "small_resnet10",
            "trained": [True] * (n - 1) + [False],
            "train_acc": train_acc,
            "test_acc": train_acc - gap / 100,
            "gap": gap,
            "status": "done",
        }
    )
    noise = lambda s: rng.normal(0, s, n)  # noqa: E731
    values = {
        ("iou", _params(**PRIMARY)): 0.6 - 0.01 * gap + noise(0.05),
        ("iou", _params(**{**PRIMARY, "threshold": "0.3"})): gap,  # not Table 3's IoU
        ("iou_b", _params(**PRIMARY)): 0.4 - 0.005 * gap + noise(0.1),
        ("effective_invariance", _params(transform="rotation")): noise(1.0),
        ("energy_pg", _params(cam="gradcam", masks="boxes")): -gap + noise(8.0),
        ("energy_pg", _params(cam="gradcam++", masks="boxes")): gap,  # another CAM: not used
        ("pointing_game", _params(cam="gradcam", masks="boxes")): noise(1.0),
        ("spectral_norm", _params(scale="log")): gap,  # not a threshold-free localization measure
    }
    rows = [
        {"run_id": f"r{i}", "measure": m, "params": p, "value": float(v[i]), "status": "done"}
        for (m, p), v in values.items()
        for i in range(n)
    ]
    return runs, pd.DataFrame(rows), values


def _oracle(runs, values, key):
    keep = runs.trained.to_numpy() & (runs.train_acc.to_numpy() >= 0.8)
    x, y = values[key][keep], runs.gap.to_numpy()[keep]
    return scipy.stats.pearsonr(x, y)[0], int(keep.sum())


def test_table_numbers_against_scipy_and_numpy():
    frames, expect = {}, {}
    for p, seed in ((0.0, 1), (0.5, 2), (0.9, 3)):
        runs, meas, values = hand_made(seed)
        frames[p] = (runs, meas)
        expect[p] = (runs, values)
    table = context_table(frames, n_boot=200)
    assert list(table.index) == [0.0, 0.5, 0.9] and table.index.name == "context"
    assert list(table.columns) == COLUMNS
    for p, (runs, values) in expect.items():
        row = table.loc[p]
        keep = runs.trained & (runs.train_acc >= 0.8)
        assert row["models"] == keep.sum() == 9
        assert row["mean_gap"] == pytest.approx(runs.gap[keep].mean(), abs=1e-12)
        assert row["mean_iou"] == pytest.approx(values[("iou", _params(**PRIMARY))][keep].mean(), abs=1e-12)
        for col, key in (
            ("iou", ("iou", _params(**PRIMARY))),
            ("iou_b", ("iou_b", _params(**PRIMARY))),
            ("ei", ("effective_invariance", _params(transform="rotation"))),
        ):
            r, n = _oracle(runs, values, key)
            assert row[f"{col}_r"] == pytest.approx(r, abs=1e-9) and row[f"{col}_n"] == n
            assert row[f"{col}_ci_low"] <= row[f"{col}_r"] <= row[f"{col}_ci_high"]
        # the best threshold-free measure: the larger |r| of energy_pg and pointing_game (gradcam, boxes)
        own = _params(cam="gradcam", masks="boxes")
        cands = {m: _oracle(runs, values, (m, own)) for m in ("energy_pg", "pointing_game")}
        best = max(cands, key=lambda m: abs(cands[m][0]))
        assert row["tf_measure"] == display_name(best)
        assert row["tf_r"] == pytest.approx(cands[best][0], abs=1e-9) and row["tf_n"] == cands[best][1]
    assert (table["tf_measure"] == display_name("energy_pg")).any()


def test_missing_measures_are_nan_rows_and_said():
    runs, meas, _ = hand_made(4)
    meas = meas[~meas.measure.isin(["energy_pg", "pointing_game", "iou_b"])]
    meas.loc[meas.measure == "effective_invariance", "status"] = "failed"
    row = context_table({0.5: (runs, meas)}, n_boot=0).loc[0.5]
    assert row["tf_measure"] == "" and math.isnan(row["tf_r"]) and row["tf_n"] == 0
    assert math.isnan(row["iou_b_r"]) and row["iou_b_n"] == 0
    assert math.isnan(row["ei_r"]) and row["ei_n"] == 0
    assert math.isfinite(row["iou_r"]) and math.isnan(row["iou_ci_low"])  # no bootstrap asked
    note = table_note(0.8, ("energy_pg", "pxap"), ["energy_pg"], 0, 0.95)
    assert "Not measured: pxap." in note and ">= 80 %" in note


def test_written_csv_and_md(tmp_path):
    runs, meas, _ = hand_made(5)
    table = context_table({0.0: (runs, meas), 0.9: (runs, meas)}, n_boot=50)
    csv_path, md_path = write_context_table(table, tmp_path, "a note")
    back = pd.read_csv(csv_path, index_col=0, keep_default_na=False, na_values=["n/a"])
    assert list(back.columns) == COLUMNS
    np.testing.assert_allclose(back["iou_r"].to_numpy(), table["iou_r"].to_numpy(), rtol=0, atol=1e-12)
    md = md_path.read_text()
    assert "| P | IoU | IoU-B | EI | best threshold-free |" in md and "a note" in md
    shown = display_frame(table)
    assert list(shown.index) == ["0", "0.9"]
    assert shown.loc["0", "IoU"].endswith(f"(n={int(table.loc[0.0, 'iou_n'])})")


def test_default_folders():
    assert context_folder(0.5) == "context50" and context_folder(0) == "context0" and context_folder(0.9) == "context90"
    assert str(default_out()) == "camgap-demo"
    assert str(default_out(0.5)) == "camgap-demo-context50"
    assert str(default_out(None, "context")) == "camgap-demo-context"


def test_demo_cli_refuses_a_bad_context_before_writing(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "--context", "1.5", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "context must be a probability between 0 and 1, got 1.5" in err
    assert not (tmp_path / "d").exists()
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--context", "0.5", "--experiment", "context"])
    assert e.value.code == 2


@pytest.fixture
def no_demo_runs(monkeypatch):
    """The demo and the experiments replaced by a stub that records its calls: what is refused
    is refused before anything runs."""
    calls: list = []
    for name in ("run_demo", "run_context_experiment", "run_seeds_experiment"):
        module = "camgap.demo" if name == "run_demo" else "camgap.experiments"
        monkeypatch.setattr(f"{module}.{name}", lambda out, *a, _n=name, **kw: calls.append((_n, out)))
    return calls


@pytest.mark.parametrize(
    ("seed", "problem"),
    [("-1", "must be 0 or more, got -1"), ("0,,1", "not a whole number: '0,,1'"), ("a", "not a whole number: 'a'")],
)
@pytest.mark.parametrize("experiment", [[], ["--experiment", "seeds"], ["--experiment", "context"]])
def test_demo_refuses_a_bad_seed_as_a_usage_error(tmp_path, capsys, no_demo_runs, experiment, seed, problem):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--quick", *experiment, "--seed", seed, "--out", str(tmp_path / "d")])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"camgap demo: error: argument --seed: {problem}"
    assert no_demo_runs == [] and not (tmp_path / "d").exists()


def test_demo_refuses_an_out_that_is_a_file(tmp_path, capsys, no_demo_runs):
    (tmp_path / "f").write_text("")
    for experiment in ([], ["--experiment", "seeds"]):
        assert cli.main(["demo", "--quick", *experiment, "--out", str(tmp_path / "f")]) == 2
        assert capsys.readouterr().err == f"camgap: error: {tmp_path / 'f'}: --out is a file, not a folder\n"
    assert no_demo_runs == []


# what each kind of run leaves in its --out; `made` the folders a resumed run finds there
MADE = {"demo": ["data", "zoo"], "context": ["context0", "context50"], "seeds": ["seed0"]}
SAID = {
    "demo": ("the demo", "camgap demo"),
    "context": ("the context experiment", "camgap demo --experiment context"),
    "seeds": ("the seeds experiment", "camgap demo --experiment seeds"),
}


@pytest.mark.parametrize("made", list(MADE))
@pytest.mark.parametrize("wanted", list(MADE))
def test_demo_resumes_only_into_an_out_of_its_own_kind(tmp_path, capsys, no_demo_runs, made, wanted):
    out = tmp_path / "out"
    for folder in MADE[made]:
        (out / folder).mkdir(parents=True)
    rc = cli.main(["demo", "--quick", *([] if wanted == "demo" else ["--experiment", wanted]), "--out", str(out)])
    if made == wanted:  # a rerun resumes
        assert rc == 0 and [out for _, out in no_demo_runs] == [out]
        return
    assert rc == 2 and no_demo_runs == []
    (name, command), (wanted_name, _) = SAID[made], SAID[wanted]
    assert capsys.readouterr().err == (
        f"camgap: error: {out} holds the output of {name} (`{command}`); {wanted_name} needs a folder of its "
        "own: give another --out\n"
    )


@pytest.mark.slow
def test_quick_context_experiment_end_to_end(tmp_path, capsys):
    out = tmp_path / "exp"
    assert cli.main(["demo", "--quick", "--experiment", "context", "--device", "cpu", "--workers", "0",
                     "--no-progress", "--out", str(out)]) == 0  # fmt: skip
    check_experiment(out, capsys.readouterr().out)


def check_experiment(out, text: str) -> None:
    """What `camgap demo --quick --experiment context --out OUT` printed (`text`) and wrote."""
    assert (
        "The context experiment: Pearson r with the gap at training accuracy >= 0 % (--quick: every trained model)"
        in text
    )
    for p, sub in ((0.0, "context0"), (0.5, "context50"), (0.9, "context90")):
        assert "[experiment] " in text and f"context P = {p:g} -> {out / sub}" in text
        manifest = json.loads((out / sub / "data" / "camgap-synth.json").read_text())
        assert manifest.get("context", 0.0) == p
        assert f"P = {p:g} of the images" in (out / sub / "study" / "report.html").read_text(encoding="utf-8")
    table = pd.read_csv(out / "context_experiment.csv", index_col=0, keep_default_na=False, na_values=["n/a"])
    assert list(table.index) == [0.0, 0.5, 0.9] and list(table.columns) == COLUMNS
    for key in ("iou", "iou_b", "ei", "tf"):
        r, lo, hi, n = (table[f"{key}_{s}"] for s in STATS)
        assert ((n >= 0) & (n <= table["models"])).all()
        ok = r.isna() | ((r.abs() <= 1) & (lo.abs() <= 1) & (hi.abs() <= 1) & (lo <= hi))
        assert ok.all(), key
        assert r[n < 3].isna().all(), key
    assert (table["models"] == load_grid(PRESETS["quick"]["grid"]).n_trained).all()  # every trained model
    assert table[["iou_r", "iou_b_r", "ei_r"]].notna().all().all()
    assert table["mean_iou"].dropna().between(0, 1).all()
    md = (out / "context_experiment.md").read_text()
    assert all(md.count(f"\n| {p} |") == 1 for p in ("0", "0.5", "0.9"))
