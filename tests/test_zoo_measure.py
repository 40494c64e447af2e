"""`measure_zoo` on a tiny model set: values against independent computations, one shared
forward pass per model, resumability, failures, several CAMs / thresholds / mask sources."""

import json
import math
from pathlib import Path

import pytest
import torch

import camgap.zoo.measure as zm
from camgap.data.dataset import normalize
from camgap.data.masks import compute_masks
from camgap.data.store import TensorStore
from camgap.measures.predictions import nuclear_norm
from camgap.measures.score import score_model
from camgap.params import to_json
from camgap.zoo.measure import load_run_model, measure_zoo, score_params
from tests.helpers.zoo import N_TRAIN, frames, quiet


@pytest.fixture
def zoo(tiny_zoo_copy) -> Path:
    """A private copy of the session's built (not measured) tiny model set."""
    return tiny_zoo_copy


def store_of(zoo: Path) -> TensorStore:
    return TensorStore.open(zoo / "cache" / "train-32-resize")


def value(meas, run_id, measure, params: dict) -> tuple[str, float]:
    rows = meas[(meas.run_id == run_id) & (meas.measure == measure) & (meas.params == to_json(params))]
    assert len(rows) == 1, (run_id, measure, params, meas[meas.run_id == run_id])
    row = rows.iloc[0]
    return row.status, row.value


def test_scores_and_nuclear_norm_match_independent_computations(zoo):
    summary = measure_zoo(zoo, measures=("iou", "iou_b", "nuclear_norm"), batch_size=32, progress=False, log=quiet)
    runs, meas = frames(zoo)
    assert summary.models == 4 and summary.measured == 4 and summary.failed == 0
    assert summary.recorded == len(meas) == 4 * (2 + 2)
    # long form: params of the score rows are exactly {cam, masks, threshold}
    score_rows = meas[meas.measure.isin(["iou", "iou_b"])]
    assert len(score_rows) == 8
    for p in score_rows.params:
        assert json.loads(p) == {"cam": "gradcam", "masks": "boxes", "threshold": "0.1"}
    assert set(meas[meas.measure == "nuclear_norm"].params) == {'{"norm":"paper"}', '{"norm":"deng"}'}

    store = store_of(zoo)
    for run_id in runs.run_id:
        model, ckpt = load_run_model(zoo / "runs" / run_id)
        res = score_model(
            model,
            store,
            cam="gradcam",
            thresholds=(0.1,),
            batch_size=32,
            device="cpu",
            mean=ckpt["mean"],
            std=ckpt["std"],
        )
        params = score_params("gradcam", 0.1, "boxes")
        st, iou = value(meas, run_id, "iou", params)
        assert st == "done" and iou == pytest.approx(res.iou(0.1), abs=1e-9)
        st, iou_b = value(meas, run_id, "iou_b", params)
        assert st == "done" and iou_b == pytest.approx(res.iou_b(0.1), abs=1e-9)
        assert 0.0 <= iou <= 1.0 and 0.0 <= iou_b <= 1.0

        # nuclear norm from logits of a plain forward pass over the store's images, in float64: the
        # measure's float32 logits differ from them by float32 rounding alone, on any CPU
        with torch.no_grad():
            x = normalize(torch.as_tensor(store.images[:]), ckpt["mean"], ckpt["std"])
            logits = model.eval().double()(x.double())
        want = nuclear_norm(logits)
        for norm in ("paper", "deng"):
            st, v = value(meas, run_id, "nuclear_norm", {"norm": norm})
            assert st == "done" and v == pytest.approx(want[norm], rel=1e-5)
        # hand check of the normalisation: deng = ||P||_* / sqrt(N * min(N, K)), paper = deng / N
        p = torch.softmax(logits.double(), 1)
        nuc = float(torch.linalg.svdvals(p).sum())
        assert value(meas, run_id, "nuclear_norm", {"norm": "deng"})[1] == pytest.approx(
            nuc / math.sqrt(N_TRAIN * 4), rel=1e-5
        )
        assert value(meas, run_id, "nuclear_norm", {"norm": "paper"})[1] == pytest.approx(
            nuc / math.sqrt(N_TRAIN * 4) / N_TRAIN, rel=1e-5
        )


def test_rerun_records_nothing_new(zoo, monkeypatch):
    measures = ("iou", "iou_b", "nuclear_norm", "spectral_norm", "inverse_margin")
    first = measure_zoo(zoo, measures=measures, progress=False, log=quiet)
    assert first.measured == 4
    _, before = frames(zoo)
    assert len(before) > 0

    def boom(*a, **k):
        raise AssertionError("nothing should be recomputed")

    monkeypatch.setattr(zm, "score_model", boom)
    monkeypatch.setattr(zm, "compute_measure", boom)
    monkeypatch.setattr(zm, "load_run_model", boom)
    again = measure_zoo(zoo, measures=measures, progress=False, log=quiet)
    assert (again.measured, again.recorded, again.failed) == (0, 0, 0)
    _, after = frames(zoo)
    assert after.equals(before)  # same rows, values, statuses, errors and timestamps


def _count_forwards(monkeypatch) -> dict:
    """Patch load_run_model so every model measure_zoo loads counts its forward calls."""
    counts: dict[str, dict] = {}
    real = zm.load_run_model

    def counting(run_dir, which="final"):
        model, ckpt = real(run_dir, which)
        c = counts.setdefault(Path(run_dir).name, {"calls": 0, "images": 0})

        def hook(module, inputs, output):
            c["calls"] += 1
            c["images"] += inputs[0].shape[0]

        model.register_forward_hook(hook)
        return model, ckpt

    monkeypatch.setattr(zm, "load_run_model", counting)
    return counts


def test_one_forward_pass_per_model_for_score_and_prediction_measures(zoo, monkeypatch):
    counts = _count_forwards(monkeypatch)
    bs = 16
    s = measure_zoo(
        zoo, measures=("iou", "iou_b", "nuclear_norm", "spectral_norm"), batch_size=bs, progress=False, log=quiet
    )
    assert s.measured == 4 and len(counts) == 4
    for run_id, c in counts.items():
        assert c == {"calls": math.ceil(N_TRAIN / bs), "images": N_TRAIN}, run_id


def test_effective_invariance_adds_exactly_three_rotated_passes(zoo, monkeypatch):
    counts = _count_forwards(monkeypatch)
    bs = 16
    measure_zoo(
        zoo,
        measures=("iou", "iou_b", "nuclear_norm", "spectral_norm", "effective_invariance"),
        batch_size=bs,
        progress=False,
        log=quiet,
    )
    _, meas = frames(zoo)
    assert len(counts) == 4
    for run_id, c in counts.items():
        assert c == {"calls": 4 * math.ceil(N_TRAIN / bs), "images": 4 * N_TRAIN}, run_id
        st, v = value(meas, run_id, "effective_invariance", {"transform": "rotation"})
        assert st == "done" and 0.0 <= v <= 1.0


def test_nan_weights_fail_that_model_only(zoo):
    runs, _ = frames(zoo)
    bad = runs[runs.trained].run_id.iloc[0]
    path = zoo / "runs" / bad / "final.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt["model_state_dict"] = {
        k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v)
        for k, v in ckpt["model_state_dict"].items()
    }
    torch.save(ckpt, path)

    measures = ("iou", "iou_b", "nuclear_norm", "spectral_norm")
    s = measure_zoo(zoo, measures=measures, progress=False, log=quiet)
    _, meas = frames(zoo)
    assert s.models == 4 and s.failed >= len(measures)
    mine = meas[meas.run_id == bad]
    assert set(mine.measure) == set(measures)
    assert (mine.status == "failed").all(), mine
    assert mine.value.isna().all()
    assert all(isinstance(e, str) and e.strip() for e in mine.error), mine.error.tolist()
    assert any("finite" in e or "nan" in e.lower() for e in mine.error), mine.error.tolist()
    others = meas[(meas.run_id != bad) & meas.measure.isin(["iou", "iou_b", "nuclear_norm"])]
    assert len(others) == 3 * 4
    assert (others.status == "done").all() and others.value.notna().all()


def test_several_cams_and_thresholds_one_row_each(zoo):
    cams, thresholds = ("gradcam", "gradcam++"), (0.1, 0.3, 0.5)
    measure_zoo(zoo, measures=("iou", "iou_b"), cams=cams, thresholds=thresholds, progress=False, log=quiet)
    runs, meas = frames(zoo)
    assert len(meas) == 4 * 2 * 3 * 2
    assert not meas.duplicated(["run_id", "measure", "params"]).any()
    assert (meas.status == "done").all()
    store = store_of(zoo)
    run_id = runs[runs.trained].run_id.iloc[0]
    model, ckpt = load_run_model(zoo / "runs" / run_id)
    for cam in cams:
        res = score_model(
            model,
            store,
            cam=cam,
            thresholds=thresholds,
            batch_size=128,
            device="cpu",
            mean=ckpt["mean"],
            std=ckpt["std"],
        )
        for t in thresholds:
            assert value(meas, run_id, "iou", score_params(cam, t, "boxes"))[1] == pytest.approx(res.iou(t), abs=1e-9)
            assert value(meas, run_id, "iou_b", score_params(cam, t, "boxes"))[1] == pytest.approx(
                res.iou_b(t), abs=1e-9
            )
    # a higher threshold keeps a smaller CAM region: the rows are really per threshold
    ious = [value(meas, run_id, "iou", score_params("gradcam", t, "boxes"))[1] for t in thresholds]
    assert len(set(ious)) > 1


def test_saliency_masks(zoo):
    measure_zoo(zoo, measures=("iou",), masks=("boxes", "saliency"), progress=False, log=quiet)
    runs, meas = frames(zoo)
    assert len(meas) == 4 * 2
    assert (meas.status == "done").all()
    assert (zoo / "cache" / "masks").is_dir()
    store = store_of(zoo)
    ref = compute_masks("saliency", store.images, store.boxes, list(store.image_ids), 32)
    run_id = runs.run_id.iloc[0]
    model, ckpt = load_run_model(zoo / "runs" / run_id)
    res = score_model(
        model,
        store,
        cam="gradcam",
        thresholds=(0.1,),
        batch_size=128,
        device="cpu",
        mean=ckpt["mean"],
        std=ckpt["std"],
        masks=ref.masks,
        mask_ids=list(ref.image_ids),
    )
    sal = value(meas, run_id, "iou", score_params("gradcam", 0.1, "saliency"))[1]
    box = value(meas, run_id, "iou", score_params("gradcam", 0.1, "boxes"))[1]
    assert sal == pytest.approx(res.iou(0.1), abs=1e-9)
    assert sal != box


def test_unknown_measure_is_rejected_before_anything_runs(zoo, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("must not run")

    monkeypatch.setattr(zm, "load_run_model", boom)
    with pytest.raises(ValueError, match="bogus"):
        measure_zoo(zoo, measures=("iou", "bogus"), progress=False, log=quiet)
    assert frames(zoo)[1].empty


def test_missing_registry(tmp_path):
    with pytest.raises(FileNotFoundError, match="zoo build"):
        measure_zoo(tmp_path, measures=("iou",), progress=False, log=quiet)


# --- states, exit codes, measurements.json, safe loading ------------------------------------


class Payload:
    """Unpickling this object would create `marker` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _json_rows(zoo: Path, run_id: str) -> list[dict]:
    return json.loads((zoo / "runs" / run_id / "measurements.json").read_text())


def _assert_files_match_registry(zoo: Path) -> None:
    """Every run's measurements.json holds exactly its registry rows (the contract B1 rebuilds from)."""
    runs, meas = frames(zoo)
    for run_id in runs.run_id:
        mine = meas[meas.run_id == run_id].sort_values(["measure", "params"])
        want = [
            {
                "measure": r.measure,
                "params": r.params,
                "value": None if math.isnan(r.value) else r.value,
                "state": r.status,
                "reason": r.error if isinstance(r.error, str) else None,
            }
            for r in mine.itertuples()
        ]
        path = zoo / "runs" / run_id / "measurements.json"
        assert (_json_rows(zoo, run_id) if path.exists() else []) == want, run_id


def state_lines(summary) -> list[str]:
    """The summary's lines about the whole set's undefined / failed measurements."""
    return [line for line in str(summary).splitlines() if line.startswith(("undefined in", "failed in"))]


def _zero_head(path: Path) -> None:
    """Hand-set weights: a zero classifier gives equal logits, margins 0, gamma = 0 <= 0 (saved
    with the digest a final.pt carries, so `zoo status` sees no corrupt file)."""
    from camgap.zoo.digest import save_final

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for k in ("fc.weight", "fc.bias"):
        ckpt["model_state_dict"][k] = torch.zeros_like(ckpt["model_state_dict"][k])
    save_final(ckpt, path)


def test_undefined_by_definition_is_not_a_failure(zoo):
    from camgap.measures.predictions import margin_percentile
    from camgap.measures.registry import MeasureUndefined

    runs, _ = frames(zoo)
    zeroed = runs[runs.trained].run_id.iloc[0]
    _zero_head(zoo / "runs" / zeroed / "final.pt")
    measures = ("nuclear_norm", "spectral_norm", "inverse_margin")
    s = measure_zoo(zoo, measures=measures, progress=False, log=quiet)
    _, meas = frames(zoo)
    store = store_of(zoo)
    undefined_runs = set()
    for run_id in runs.run_id:  # oracle: gamma from the same model's logits
        model, ckpt = load_run_model(zoo / "runs" / run_id)
        with torch.no_grad():
            logits = model.eval()(normalize(torch.as_tensor(store.images[:]), ckpt["mean"], ckpt["std"]))
        try:
            margin_percentile(logits, torch.as_tensor(store.labels[:]))
        except MeasureUndefined:
            undefined_runs.add(run_id)
    assert zeroed in undefined_runs
    for run_id in runs.run_id:
        mine = meas[meas.run_id == run_id].set_index("measure")
        assert (meas[(meas.run_id == run_id) & (meas.measure == "nuclear_norm")].status == "done").all()
        for name in ("spectral_norm", "inverse_margin"):
            if run_id in undefined_runs:
                assert mine.loc[name, "status"] == "undefined" and math.isnan(mine.loc[name, "value"])
                assert mine.loc[name, "error"].startswith("10th-percentile margin gamma = ")
                assert "<= 0" in mine.loc[name, "error"]
            else:
                assert (meas[(meas.run_id == run_id) & (meas.measure == name)].status == "done").all()
    n = len(undefined_runs)
    assert s.failed == 0 and s.undefined == 2 * n and s.exit_code == 0
    want = (
        f"undefined in the set: 10th-percentile margin gamma <= 0: inverse_margin {n} run(s), spectral_norm {n} run(s)"
    )
    assert state_lines(s) == [want]
    _assert_files_match_registry(zoo)
    again = measure_zoo(zoo, measures=measures, progress=False, log=quiet)  # identical rerun
    assert (again.measured, again.undefined, again.exit_code) == (0, 0, 0)
    assert state_lines(again) == state_lines(s)


def test_failures_set_exit_code_3_and_a_rerun_keeps_it(zoo):
    runs, _ = frames(zoo)
    bad = runs[runs.trained].run_id.iloc[1]
    path = zoo / "runs" / bad / "final.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["model_state_dict"] = {
        k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v)
        for k, v in ckpt["model_state_dict"].items()
    }
    torch.save(ckpt, path)
    s = measure_zoo(zoo, measures=("iou", "nuclear_norm"), progress=False, log=quiet)
    assert s.failed == 2 and s.exit_code == 3
    assert str(s).splitlines()[-1] == (
        "failed in the set: non-finite values in parameter 'conv1.weight': the model's "
        "weights hold NaN/inf: iou 1 run(s), nuclear_norm 1 run(s)"
    )
    again = measure_zoo(zoo, measures=("iou", "nuclear_norm"), progress=False, log=quiet)
    assert (again.measured, again.failed, again.exit_code) == (0, 0, 3)
    # a measure not asked for does not decide the exit code
    assert measure_zoo(zoo, measures=("iou_b",), progress=False, log=quiet).exit_code == 3  # iou_b failed too
    _assert_files_match_registry(zoo)


def test_a_diverged_run_is_undefined_not_failed(zoo):
    """A run that ended `diverged` has NaN weights by how it ended: its measures have no value,
    which is no failure of the measurement (exit 0)."""
    import sqlite3

    from camgap.zoo.measure import DIVERGED

    runs, _ = frames(zoo)
    bad = runs[runs.trained].run_id.iloc[1]
    path = zoo / "runs" / bad / "final.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["model_state_dict"] = {
        k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v)
        for k, v in ckpt["model_state_dict"].items()
    }
    torch.save(ckpt, path)
    with sqlite3.connect(zoo / "registry.sqlite") as conn:
        conn.execute("UPDATE runs SET stop_reason = 'diverged' WHERE run_id = ?", (bad,))
    s = measure_zoo(zoo, measures=("iou", "nuclear_norm"), progress=False, log=quiet)
    assert (s.failed, s.exit_code) == (0, 0)
    _, meas = frames(zoo)
    mine = meas[meas.run_id == bad]
    assert sorted(mine.measure) == ["iou", "nuclear_norm"] and (mine.status == "undefined").all()
    assert (mine.error == DIVERGED).all() and mine.value.isna().all()
    _assert_files_match_registry(zoo)


def test_pickled_final_pt_fails_that_model_and_never_runs(zoo):
    runs, _ = frames(zoo)
    bad = runs[runs.trained].run_id.iloc[0]
    marker = zoo.parent / "pwned"
    torch.save(
        {"arch": "small_resnet10", "num_classes": 4, "model_state_dict": Payload(marker)},
        zoo / "runs" / bad / "final.pt",
    )
    measures = ("iou", "nuclear_norm")
    s = measure_zoo(zoo, measures=measures, progress=False, log=quiet)
    assert not marker.exists()
    _, meas = frames(zoo)
    mine = meas[meas.run_id == bad]
    assert sorted(mine.measure) == ["iou", "nuclear_norm"] and (mine.status == "failed").all()
    for e in mine.error:
        assert f"runs/{bad}/final.pt: refused to load: it holds a pickled object" in e
    assert (meas[meas.run_id != bad].status == "done").all() and len(meas) == 3 * (1 + 2) + 2
    assert s.measured == 3 and s.exit_code == 3
    assert [r["state"] for r in _json_rows(zoo, bad)] == ["failed", "failed"]
    _assert_files_match_registry(zoo)


def test_measurements_json_mirrors_the_registry(zoo):
    measure_zoo(
        zoo, measures=("iou", "iou_b", "nuclear_norm", "path_norm"), thresholds=(0.1, 0.3), progress=False, log=quiet
    )
    runs, meas = frames(zoo)
    assert len(meas) == 4 * (2 * 2 + 2 + 2)
    _assert_files_match_registry(zoo)
    rows = _json_rows(zoo, runs.run_id.iloc[0])
    assert set(rows[0]) == {"measure", "params", "value", "state", "reason"}
    assert {r["params"] for r in rows if r["measure"] == "iou"} == {
        to_json(score_params("gradcam", t, "boxes")) for t in (0.1, 0.3)
    }
    # a row changed through the registry API rewrites the file
    from camgap.zoo.registry import ZooDB

    with ZooDB.in_dir(zoo) as reg:
        reg.record_measurement(runs.run_id.iloc[0], "path_norm", {"scale": "raw"}, None, "undefined", "test")
    _assert_files_match_registry(zoo)


@pytest.mark.parametrize("bad", ["2", "-0.1", "nan", "1"])
def test_cli_rejects_a_bad_threshold_before_anything(zoo, bad, capsys, monkeypatch):
    from camgap.cli import main

    def boom(*a, **k):
        raise AssertionError("must not run")

    monkeypatch.setattr(zm, "load_run_model", boom)
    assert main(["zoo", "measure", str(zoo), "--threshold", "0.1", bad, "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "outside [0, 1)" in err and bad in err
    assert frames(zoo)[1].empty and not list(zoo.glob("runs/*/measurements.json"))


def test_cli_exit_codes_status_and_export(zoo, capsys):
    from camgap.cli import main

    _zero_head(zoo / "runs" / frames(zoo)[0].query("trained").run_id.iloc[0] / "final.pt")
    args = ["zoo", "measure", str(zoo), "--measures", "nuclear_norm,inverse_margin", "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "undefined in the set: 10th-percentile margin gamma <= 0: inverse_margin" in out
    assert main(args) == 0  # identical rerun: same code
    _, meas = frames(zoo)
    counts = meas.status.value_counts().to_dict()
    assert main(["zoo", "status", str(zoo)]) == 0
    text = capsys.readouterr().out
    want = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "failed", "undefined"))
    assert f"  measurements: {want}" in text.splitlines()
    assert main(["zoo", "status", str(zoo), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["measurements"]["states"] == {s: counts.get(s, 0) for s in ("done", "failed", "undefined")}
    assert main(["zoo", "export", str(zoo), "--measures"]) == 0
    import pandas as pd

    table = pd.read_csv(zoo / "measurements.csv", keep_default_na=False, na_values=[""])
    assert list(table.columns) == ["run_id", "measure", "params", "value", "state", "reason"]
    assert len(table) == len(meas)
    assert (
        table.sort_values(["run_id", "measure", "params"]).state.tolist()
        == meas.sort_values(["run_id", "measure", "params"]).status.tolist()
    )


def test_measure_help_documents_exit_codes(capsys):
    from camgap.cli import main

    with pytest.raises(SystemExit):
        main(["zoo", "measure", "--help"])
    text = capsys.readouterr().out
    for line in (
        "exit codes:",
        "  0    every recorded measurement",
        "  2    bad input",
        "  3    some measurement",
        "  130  interrupted",
    ):
        assert line in text


def test_old_registry_accepts_the_undefined_state(tmp_path):
    """A registry created before 'undefined' existed keeps its rows and takes the new state."""
    import sqlite3

    from camgap.zoo.config import RunConfig
    from camgap.zoo.grid import RunSpec
    from camgap.zoo.registry import ZooDB

    path = tmp_path / "registry.sqlite"
    with ZooDB(path) as reg:
        reg.add_runs([RunSpec("r1", RunConfig.from_dict({"arch": "x", "trained": True}), 0, 1)])
    con = sqlite3.connect(path)
    con.executescript(
        "DROP TABLE measurements; CREATE TABLE measurements (run_id TEXT NOT NULL, measure TEXT NOT "
        "NULL, params TEXT NOT NULL, value REAL, status TEXT NOT NULL CHECK (status IN ('done', "
        "'failed')), error TEXT, updated TEXT NOT NULL, PRIMARY KEY (run_id, measure, params));"
        "INSERT INTO measurements VALUES ('r1', 'iou', '{}', 0.5, 'done', NULL, 't');"
    )
    con.close()
    with ZooDB(path) as reg:
        reg.record_measurement("r1", "spectral_norm", {}, None, "undefined", "gamma <= 0")
        m = reg.measurements_frame()
    assert m[["measure", "status"]].values.tolist() == [["iou", "done"], ["spectral_norm", "undefined"]]
    assert m.value.iloc[0] == 0.5 and math.isnan(m.value.iloc[1])


def test_study_reads_only_done_values():
    import pandas as pd

    from camgap.study.tables import wide_table

    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "gap": [1.0, 2.0, 3.0]})
    meas = pd.DataFrame(
        {
            "run_id": ["a", "b", "c"],
            "measure": ["spectral_norm"] * 3,
            "params": ["{}"] * 3,
            "value": [1.5, None, None],
            "status": ["done", "undefined", "failed"],
            "error": [None, "gamma <= 0", "non-finite"],
        }
    )
    wide = wide_table(runs, meas, [("spectral_norm", "", "sn")])
    assert wide["sn"].iloc[0] == 1.5 and wide["sn"].iloc[1:].isna().all()


# Params JSON of the iou / iou_b rows as `zoo measure` wrote them before IoU and IoU-B became
# registry measures (a run of that code: cams gradcam, gradcam++; thresholds 0.1, 0.25, 0.5;
# masks boxes). Model sets measured then must read, and resume, unchanged.
STORED_SCORE_PARAMS = {
    '{"cam":"gradcam","masks":"boxes","threshold":"0.1"}',
    '{"cam":"gradcam","masks":"boxes","threshold":"0.25"}',
    '{"cam":"gradcam","masks":"boxes","threshold":"0.5"}',
    '{"cam":"gradcam++","masks":"boxes","threshold":"0.1"}',
    '{"cam":"gradcam++","masks":"boxes","threshold":"0.25"}',
    '{"cam":"gradcam++","masks":"boxes","threshold":"0.5"}',
}


def test_score_rows_keep_the_stored_names_and_params_bytes(zoo, monkeypatch):
    import sqlite3

    kw = dict(cams=("gradcam", "gradcam++"), thresholds=(0.1, 0.25, 0.5), progress=False, log=quiet)
    measure_zoo(zoo, measures=("iou", "iou_b"), **kw)
    with sqlite3.connect(zoo / "registry.sqlite") as con:
        rows = set(con.execute("SELECT measure, params FROM measurements"))
        per_run = con.execute("SELECT run_id, COUNT(*) FROM measurements GROUP BY run_id").fetchall()
    assert rows == {(m, p) for m in ("iou", "iou_b") for p in STORED_SCORE_PARAMS}
    assert [n for _, n in per_run] == [12] * 4
    # a rerun finds every row by those bytes: nothing is computed again
    monkeypatch.setattr(zm, "load_run_model", lambda *a, **k: pytest.fail("nothing should be recomputed"))
    again = measure_zoo(zoo, measures=("iou", "iou_b"), **kw)
    assert (again.measured, again.recorded) == (0, 0)


def count_passes(monkeypatch) -> list[tuple]:
    """The (cam, thresholds) of every score_model call `zoo measure` makes from now on."""
    calls: list[tuple] = []
    real = zm.score_model

    def spy(model, data, options=None, **kw):
        calls.append((kw["cam"], kw["thresholds"]))
        return real(model, data, options, **kw)

    monkeypatch.setattr(zm, "score_model", spy)
    return calls


def test_the_shared_pass_runs_once_per_model_and_cam_for_iou_and_iou_b(zoo, monkeypatch):
    calls = count_passes(monkeypatch)
    cams = ("gradcam", "gradcam++")
    measure_zoo(
        zoo, measures=("iou", "iou_b", "nuclear_norm"), cams=cams, thresholds=(0.1, 0.3), progress=False, log=quiet
    )
    # the models are measured one after the other in this process: one pass per (model, cam), at
    # both thresholds, for IoU and IoU-B together (and the logits of nuclear_norm)
    assert calls == [("gradcam", (0.1, 0.3)), ("gradcam++", (0.1, 0.3))] * 4
    _, meas = frames(zoo)
    assert len(meas) == 4 * (2 * 2 * 2 + 2) and (meas.status == "done").all()


def test_unknown_measure_lists_one_set_of_names(zoo):
    from camgap.measures.registry import list_measures

    with pytest.raises(ValueError) as err:
        measure_zoo(zoo, measures=("iou", "bogus"), progress=False, log=quiet)
    assert str(err.value) == f"unknown measure(s) ['bogus']; known: {', '.join(list_measures())}"
    assert "iou, iou_b" in str(err.value)


def test_localization_measures_share_the_pass_one_row_per_cam_and_masks(zoo, monkeypatch):
    calls = count_passes(monkeypatch)
    measures = ("iou", "energy_pg", "pointing_game", "maxboxacc_v2", "pxap")
    measure_zoo(zoo, measures=measures, cams=("gradcam",), thresholds=(0.1, 0.3), progress=False, log=quiet)
    assert calls == [("gradcam", (0.1, 0.3))] * 4  # one pass per model, however many measures
    runs, meas = frames(zoo)
    # IoU once per threshold; each threshold-free measure once per (cam, masks)
    assert len(meas) == 4 * (2 + 4) and not meas.duplicated(["run_id", "measure", "params"]).any()
    assert (meas.status == "done").all()
    p = {"cam": "gradcam", "masks": "boxes"}
    assert set(meas[meas.measure != "iou"].params) == {to_json(p)}
    run_id = runs[runs.trained].run_id.iloc[0]
    model, ckpt = load_run_model(zoo / "runs" / run_id)
    res = score_model(
        model, store_of(zoo), batch_size=128, device="cpu", mean=ckpt["mean"], std=ckpt["std"], box_accuracy=True
    )
    want = {
        "energy_pg": res.energy_pg(),
        "pointing_game": res.pointing_game(),
        "maxboxacc_v2": res.max_box_acc_v2(),
        "pxap": res.pxap(),
    }
    assert {k: value(meas, run_id, k, p)[1] for k in want} == pytest.approx(want, abs=1e-12)
