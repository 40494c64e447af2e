"""`camgap demo --quick` end to end: every stage, the report and tables, the headline; then a
rerun with the same --out that trains nothing and records no measurement."""

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

import camgap.zoo.executors
import camgap.zoo.measure as zm
from camgap.cli import main
from camgap.demo import PRESETS, SMOKE_NOTE, SUBSETS
from camgap.zoo.grid import canonical_json, load_grid
from camgap.zoo.registry import ZooDB

pytestmark = pytest.mark.slow

STAGES = ("data", "build", "measure", "study")
# in-process training: the same runs and files as the default worker pool (whose results do not
# depend on the worker count: test_zoo_reproducible), without starting a process per core
DEMO = ["demo", "--quick", "--device", "cpu", "--workers", "0"]


def run_cli(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    return rc, buf.getvalue()


def frames(zoo: Path):
    with ZooDB.in_dir(zoo, create=False) as reg:
        return reg.runs_frame(), reg.measurements_frame()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    rc, text = run_cli([*DEMO, "--out", str(out)])
    assert rc == 0, text
    return out, text


def test_every_stage_runs_and_the_headline_is_printed(demo):
    out, text = demo
    for i, stage in enumerate(STAGES, 1):
        assert f"[demo] {i}/4 " in text
        assert re.search(rf"\[demo\] {stage}: [\d.]+ s", text), stage
    assert "Pearson r with the generalization gap, all trained models (Table 3, Total)" in text
    head = text[text.index("Pearson r with the generalization gap") :]
    for label in ("IoU", "IoU-B", "Nuclear Norm", "Spectral Norm", "EI"):
        assert re.search(rf"^{re.escape(label)}\s", head, re.M), label
    assert f"report: {out / 'study' / 'report.html'}" in text


def test_model_set_data_and_measurements(demo):
    out, _ = demo
    preset = PRESETS["quick"]
    grid = load_grid(preset["grid"])
    runs, meas = frames(out / "zoo")
    assert len(runs) == len(grid) and (runs.status == "done").all()
    assert int(runs.trained.sum()) == grid.n_trained and int((~runs.trained).sum()) == grid.n_untrained
    assert len(list((out / "data").glob("*.csv"))) >= 2
    assert set(meas.measure) == set(preset["measures"])
    # every model has every measure recorded (done, or failed with its reason)
    for run_id in runs.run_id:
        assert set(meas[meas.run_id == run_id].measure) == set(preset["measures"]), run_id
    failed = meas[meas.status == "failed"]
    assert failed.error.map(lambda e: isinstance(e, str) and bool(e.strip())).all()
    assert (meas[meas.measure.isin(["iou", "iou_b"])].status == "done").all()


def test_report_and_tables_hold_numbers_or_na(demo):
    out, _ = demo
    study = out / "study"
    html = (study / "report.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    assert "data:image/png;base64," in html
    assert (study / "figures" / "figure2_overlays.png").is_file()
    for name in ("table3", "table4", "table5", "ranking", "models"):
        assert (study / "tables" / f"{name}.csv").is_file() and (study / "tables" / f"{name}.md").is_file()
    tables = {
        "table3": [0, 1],
        "table3_spearman": [0, 1],
        "table3_kendall": [0, 1],
        "table3_ci_low": [0, 1],
        "table3_ci_high": [0, 1],
        "table5": [0],
        "table5_n": [0],
    }
    for name, index in tables.items():
        raw = pd.read_csv(study / "tables" / f"{name}.csv", index_col=index, keep_default_na=False, dtype=str)
        assert raw.size > 0, name
        for cell in raw.to_numpy().ravel():
            assert cell == "n/a" or np.isfinite(float(cell)), (name, cell)

    # the ">=0" column (every trained model) of the Total block: Pearson over the registry
    pearson = pd.read_csv(study / "tables" / "table3.csv", index_col=[0, 1])
    n = pd.read_csv(study / "tables" / "table3_n.csv", index_col=[0, 1])
    assert ">=0" in pearson.columns and len(pearson.columns) == len(SUBSETS)
    runs, meas = frames(out / "zoo")
    tr = runs[(runs.status == "done") & runs.trained]
    primary = canonical_json(zm.score_params("gradcam", 0.1, "boxes"))  # the paper's IoU, which Table 3 reports
    iou = meas[(meas.measure == "iou") & (meas.params == primary) & (meas.status == "done")].set_index("run_id").value
    x, y = tr.run_id.map(iou).to_numpy(float), tr.gap.to_numpy(float)
    assert n.loc[("Total", "IoU"), ">=0"] == len(tr) >= 3
    assert pearson.loc[("Total", "IoU"), ">=0"] == pytest.approx(scipy.stats.pearsonr(x, y)[0], abs=1e-9)


def test_rerun_trains_nothing_and_measures_nothing(demo, monkeypatch):
    out, _ = demo
    runs0, meas0 = frames(out / "zoo")

    def no_executor(*a, **k):
        raise AssertionError("the rerun must not start an executor (nothing to train)")

    def no_measure(*a, **k):
        raise AssertionError("the rerun must not recompute a measure")

    real_score = zm.score_model
    scored = []

    def score(*a, **k):  # the study's overlays score a few images; measure_zoo must score none
        if not k.get("keep_overlays"):
            scored.append(a)
        return real_score(*a, **k)

    monkeypatch.setattr(camgap.zoo.executors, "make_executor", no_executor)
    monkeypatch.setattr(zm, "compute_measure", no_measure)
    monkeypatch.setattr(zm, "score_model", score)
    rc, text = run_cli([*DEMO, "--out", str(out)])
    assert rc == 0, text
    assert not scored
    assert "this build finished 0 run(s), 0 failure(s)" in text
    assert "0 measured now, 0 values recorded, 0 failed measurements" in text
    assert "registered" not in text  # no new run
    runs1, meas1 = frames(out / "zoo")
    assert runs1.equals(runs0)  # statuses, metrics, attempts, started/finished timestamps
    assert meas1.equals(meas0)  # values, statuses, updated timestamps
    assert "Pearson r with the generalization gap" in text
    assert (out / "study" / "report.html").is_file()


def test_quick_says_it_is_a_smoke_run_in_the_terminal_and_the_report(demo):
    out, text = demo
    assert text.count(f"[demo] --quick: {SMOKE_NOTE}") == 2  # before the first stage and after the headline
    assert text.index(SMOKE_NOTE) < text.index("[demo] 1/4 ")
    html = (out / "study" / "report.html").read_text(encoding="utf-8")
    assert f"camgap demo --quick: {SMOKE_NOTE}" in html


class _Stop(Exception):
    pass


@pytest.mark.parametrize("precision", [None, "fp32", "bf16"])
def test_precision_replaces_the_grids_and_is_said(tmp_path, monkeypatch, precision):
    """--precision goes into the grid the build receives (so into every run's config and id)."""
    import camgap.zoo.build
    from camgap.demo import run_demo

    seen = {}

    def build(grid, *a, **k):
        seen["grid"] = grid
        raise _Stop

    monkeypatch.setattr(camgap.zoo.build, "build", build)
    lines: list[str] = []
    with pytest.raises(_Stop):
        run_demo(tmp_path / "out", quick=True, device="cpu", precision=precision, log=lines.append)
    want = precision or load_grid(PRESETS["quick"]["grid"]).train.precision
    assert seen["grid"].train.precision == want
    # stored where it differs from the default fp32, as every grid stores it; untrained models compute in fp32
    trained = [r.config for r in seen["grid"].runs() if r.config.trained]
    assert trained and {c.precision for c in trained} == {None if want == "fp32" else want}
    said = f"[demo] precision: {want} (--precision)" if precision else f"[demo] precision: {want} (the grid's)"
    assert said in lines
