"""The study commands end to end on a tiny measured model set: `camgap zoo measure`,
`camgap study`, `camgap predict`, `camgap masks` (camgap.cli:main)."""

import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from PIL import Image

from camgap.cli import main
from camgap.data import BoxDataset, read_layout
from camgap.data.masks import boxes_to_masks, compute_masks, mask_quality
from camgap.data.store import TensorStore
from camgap.measures.score import score_model
from camgap.models import load_checkpoint
from camgap.study.predict import fit_gap, predict_gap
from camgap.zoo.grid import canonical_json
from camgap.zoo.measure import score_params
from camgap.zoo.registry import ZooDB
from tests.helpers.zoo import frames

IOU = canonical_json(score_params("gradcam", 0.1, "boxes"))
MEASURES = "iou,iou_b,nuclear_norm,effective_invariance"
COLUMNS = {">=95": 0.95, ">=90": 0.90, ">=85": 0.85, ">=80": 0.80}


def measure(zoo: Path) -> int:
    """`camgap zoo measure` of the measures the study tests read."""
    return main(["zoo", "measure", "--zoo", str(zoo), "--measures", MEASURES, "--device", "cpu", "--no-progress"])


@pytest.fixture(scope="module")
def measured(tiny_zoo, tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the session's tiny model set (3 trained + 1 untrained models), measured with
    `camgap zoo measure`; the dataset is the shared one."""
    zoo = Path(shutil.copytree(tiny_zoo.zoo, tmp_path_factory.mktemp("study") / "zoo"))
    assert measure(zoo) == 0
    return zoo, tiny_zoo.data


def trained_iou_gap(zoo: Path) -> pd.DataFrame:
    runs, meas = frames(zoo)
    runs = runs[(runs.status == "done") & runs.trained]
    iou = meas[(meas.measure == "iou") & (meas.params == IOU) & (meas.status == "done")].set_index("run_id").value
    return runs.assign(iou=runs.run_id.map(iou))[["run_id", "train_acc", "gap", "iou"]]


def median_model(zoo: Path) -> tuple[pd.DataFrame, Path]:
    """The trained models sorted by IoU and the final checkpoint of the median one (of 3)."""
    d = trained_iou_gap(zoo).sort_values("iou", kind="stable").reset_index(drop=True)
    return d, zoo / "runs" / d.run_id.iloc[1] / "final.pt"


def predict(zoo: Path, ckpt: Path, data: Path, *extra: str) -> int:
    """`camgap predict` of a tiny-set checkpoint (small_resnet10 of width 4 at 32 px) against `zoo`."""
    argv = ["--zoo", str(zoo), "--checkpoint", str(ckpt), "--arch", "small_resnet10", "--width", "4"]
    return main(["predict", *argv, "--data", str(data), "--input-size", "32", *extra])


def study(zoo: Path, out: Path, *extra: str) -> int:
    """`camgap study --zoo ZOO --out OUT ...`."""
    return main(["study", "--zoo", str(zoo), "--out", str(out), *extra])


def copy_zoo(zoo: Path, dst: Path, sql: str = "") -> Path:
    shutil.copytree(zoo, dst)
    if sql:
        con = sqlite3.connect(dst / ZooDB.FILENAME)
        con.executescript(sql)
        con.commit()
        con.close()
    return dst


def read_table3(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    t = out / "tables"
    pearson = pd.read_csv(t / "table3.csv", index_col=[0, 1])
    n = pd.read_csv(t / "table3_n.csv", index_col=[0, 1])
    return pearson, n, (t / "table3.csv").read_text()


def check_report(out: Path) -> None:
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") >= 3
    for name in ("table3", "table3_spearman", "table3_kendall", "table3_n", "table3_long", "ranking", "models"):
        assert (out / "tables" / f"{name}.csv").is_file() and (out / "tables" / f"{name}.md").is_file()
    assert (out / "figures" / "figure4_gap_boxplot.png").is_file()


def test_measure_records_every_model(measured):
    zoo, _ = measured
    runs, meas = frames(zoo)
    assert len(runs) == 4
    assert set(meas.measure) == {"iou", "iou_b", "nuclear_norm", "effective_invariance"}
    assert (meas.status == "done").all() and len(meas) == 4 * (1 + 1 + 2 + 1)


def test_measure_rerun_and_unknown_measure(measured, capsys):
    zoo, _ = measured
    before = frames(zoo)[1]
    assert measure(zoo) == 0
    assert frames(zoo)[1].equals(before)
    assert "0 measured now, 0 values recorded" in capsys.readouterr().out
    assert main(["zoo", "measure", "--zoo", str(zoo), "--measures", "iou,bogus", "--no-progress"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert frames(zoo)[1].equals(before)


def test_study_report_and_table3_match_scipy(measured, tmp_path, capsys):
    zoo, _ = measured
    out = tmp_path / "study"
    assert study(zoo, out, "--bootstrap", "50", "--device", "cpu") == 0
    text = capsys.readouterr().out
    assert "Pearson r with the generalization gap" in text and f"report: {out / 'report.html'}" in text
    check_report(out)
    assert (out / "figures" / "figure2_overlays.png").is_file()

    pearson, n, _ = read_table3(out)
    d = trained_iou_gap(zoo)
    for col, t in COLUMNS.items():
        sub = d[d.train_acc >= t - 1e-12]
        assert n.loc[("Total", "IoU"), col] == len(sub)
        got = pearson.loc[("Total", "IoU"), col]
        if len(sub) >= 3:
            assert got == pytest.approx(scipy.stats.pearsonr(sub.iou, sub.gap)[0], abs=1e-9)
        else:
            assert np.isnan(got)


def test_table3_total_block_equals_scipy_over_the_trained_models(measured, tmp_path):
    """Every trained model above the 95% column (training accuracies raised, gaps kept), so the
    Total-block cell is a real number to check."""
    zoo = copy_zoo(
        measured[0],
        tmp_path / "zoo",
        "UPDATE runs SET train_acc = 0.99, test_acc = 0.99 - gap / 100.0 WHERE trained = 1;",
    )
    out = tmp_path / "study"
    assert study(zoo, out, "--bootstrap", "50", "--no-overlays") == 0
    check_report(out)
    pearson, n, raw = read_table3(out)
    d = trained_iou_gap(zoo)
    assert len(d) == 3 and d.iou.notna().all()
    want = scipy.stats.pearsonr(d.iou, d.gap)[0]
    for col in COLUMNS:
        assert n.loc[("Total", "IoU"), col] == 3
        assert pearson.loc[("Total", "IoU"), col] == pytest.approx(want, abs=1e-9)
    # the per-architecture block (one arch) equals the Total block
    assert pearson.loc[("small_resnet10", "IoU"), ">=95"] == pytest.approx(want, abs=1e-9)
    assert "n/a" not in raw.splitlines()[-1]  # the Total IoU row is all numbers


def test_study_with_fewer_than_three_models_prints_na(measured, tmp_path, capsys):
    zoo = copy_zoo(
        measured[0],
        tmp_path / "zoo",
        "UPDATE runs SET train_acc = 0.99, test_acc = 0.99 - gap / 100.0 WHERE trained = 1;"
        "UPDATE runs SET status = 'failed' WHERE run_id = "
        "(SELECT run_id FROM runs WHERE trained = 1 ORDER BY rowid LIMIT 1);",
    )
    out = tmp_path / "study"
    assert study(zoo, out, "--bootstrap", "50", "--no-overlays") == 0
    text = capsys.readouterr().out
    iou_line = [ln for ln in text.splitlines() if ln.startswith("IoU ")]
    assert len(iou_line) == 1 and iou_line[0].count("n/a (n=2)") == 4, text
    pearson, n, raw = read_table3(out)
    assert pearson.loc["Total"].isna().all().all()
    assert (n.loc[("Total", "IoU")] == 2).all()
    assert "n/a" in raw
    assert (out / "report.html").is_file()


def _iou_at(threshold: str, value: str) -> str:
    """SQL: copy every IoU/IoU-B row of rho 0.1 to another threshold, with value `value`."""
    return (
        "INSERT INTO measurements (run_id, measure, params, value, status, error, updated) "
        f'SELECT run_id, measure, replace(params, \'"threshold":"0.1"\', \'"threshold":"{threshold}"\'), '
        f"{value}, status, error, updated FROM measurements WHERE measure IN ('iou', 'iou_b') "
        'AND params LIKE \'%"threshold":"0.1"%\';'
    )


def test_study_uses_rho_0_1_among_several_thresholds(measured, tmp_path, capsys):
    """With rho 0.05, 0.1 and 0.3 measured (0.05 sorts first), every table reports rho 0.1."""
    base = copy_zoo(
        measured[0],
        tmp_path / "base",
        "UPDATE runs SET train_acc = 0.99, test_acc = 0.99 - gap / 100.0 WHERE trained = 1;",
    )
    zoo = copy_zoo(base, tmp_path / "zoo", _iou_at("0.05", "-value") + _iou_at("0.3", "value * value"))
    assert len(frames(zoo)[1]) == len(frames(base)[1]) + 2 * 2 * 4
    outs = {}
    for name, z in (("base", base), ("zoo", zoo)):
        outs[name] = tmp_path / f"study_{name}"
        assert study(z, outs[name], "--bootstrap", "0", "--no-overlays") == 0
    headlines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("IoU")]
    assert len(headlines) == 4 and headlines[:2] == headlines[2:]
    for table in ("table3", "table4", "table5"):
        assert (outs["zoo"] / "tables" / f"{table}.csv").read_text() == (
            outs["base"] / "tables" / f"{table}.csv"
        ).read_text()
    pearson, _, _ = read_table3(outs["zoo"])
    d = trained_iou_gap(zoo)
    assert pearson.loc[("Total", "IoU"), ">=95"] == pytest.approx(scipy.stats.pearsonr(d.iou, d.gap)[0], abs=1e-9)


def test_study_says_when_rho_0_1_was_not_measured(measured, tmp_path, capsys):
    zoo = copy_zoo(
        measured[0],
        tmp_path / "zoo",
        _iou_at("0.05", "value") + 'DELETE FROM measurements WHERE params LIKE \'%"threshold":"0.1"%\';',
    )
    assert set(frames(zoo)[1].measure) == {"iou", "iou_b", "nuclear_norm", "effective_invariance"}
    out = tmp_path / "study"
    assert study(zoo, out, "--bootstrap", "0", "--no-overlays") == 0
    text = capsys.readouterr().out
    iou_line = [ln for ln in text.splitlines() if ln.startswith("IoU:")]
    assert len(iou_line) == 1 and iou_line[0].startswith("IoU: not measured") and iou_line[0].count("n/a (n=0)") == 4
    pearson, n, _ = read_table3(out)
    row = ("Total", "IoU: not measured")
    assert pearson.loc[row].isna().all() and (n.loc[row] == 0).all()
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "IoU (gradcam, rho 0.1, boxes) was not measured." in html


def test_study_without_registry_or_measurements(measured, tmp_path, capsys):
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert study(empty, tmp_path / "o1") == 2
    err = capsys.readouterr().err
    assert "no model set" in err and str(empty) in err
    assert not (tmp_path / "o1" / "report.html").exists()

    zoo = copy_zoo(measured[0], tmp_path / "zoo", "DELETE FROM measurements;")
    assert study(zoo, tmp_path / "o2") == 2
    assert "zoo measure" in capsys.readouterr().err


def test_predict_on_a_zoo_checkpoint(measured, capsys):
    """Exact by construction: the CLI scores with the zoo's batch size (one batch of all 80
    images), so its IoU is bit for bit the one the zoo recorded, whatever the CPU's kernels; and
    the checkpoint is the reference model with the median IoU, so it lies inside the range."""
    zoo, data = measured
    d, ckpt = median_model(zoo)
    # 2-epoch models: all below the paper's 80%
    assert predict(zoo, ckpt, data, "--device", "cpu", "--batch-size", "128", "--min-train-acc", "0") == 0
    text = capsys.readouterr().out

    # by hand, as the CLI does: the IoU of the checkpoint on the training images, the OLS fit over the zoo
    records, _ = read_layout(data, "auto", "train")
    model = load_checkpoint(ckpt, "small_resnet10", 4, width=4)
    res = score_model(
        model, BoxDataset(records, input_size=32), cam="gradcam", thresholds=(0.1,), batch_size=128, device="cpu"
    )
    x0 = res.iou(0.1)
    assert x0 == d.iou.iloc[1]  # the zoo measured the same thing, on the same pixels
    fit = fit_gap(d.iou, d.gap, name="iou")
    pred = predict_gap(fit, x0, confidence=0.95, train_acc=res.train_acc)  # kept within the possible gaps
    assert not pred.outside_range  # the median of the reference IoUs
    m = re.search(r"IoU\^Model = ([-\d.]+) on (\d+) training images", text)
    assert m and float(m.group(1)) == pytest.approx(x0, abs=5e-5 + 1e-12) and int(m.group(2)) == 80
    assert f"reference: 3 trained models of {zoo} with train acc >= 0" in text
    m = re.search(r"predicted gap ([-\d.]+) pp, 95% prediction interval \[([-\d.]+), ([-\d.]+)\] pp", text)
    assert m, text
    gap, lo, hi = map(float, m.groups())
    assert gap == pytest.approx(pred.gap, abs=0.005 + 1e-9)  # printed with 2 decimals
    assert lo == pytest.approx(pred.low, abs=0.005 + 1e-9) and hi == pytest.approx(pred.high, abs=0.005 + 1e-9)
    assert pred.low < pred.gap < pred.high
    # the same data, architecture, input size and layer as the reference set: only the fit's own
    # warnings (3 models, at least that one), as the fit computed by hand gives them
    warned = [ln.removeprefix("WARNING: ") for ln in text.splitlines() if ln.startswith("WARNING: ")]
    assert warned == list(pred.warnings) and warned[0].startswith("the fit rests on 3 reference models")


def test_predict_fits_only_models_that_fitted_their_training_set(measured, tmp_path, capsys):
    # every trained model below the paper's 80% by construction, whatever its training gave
    zoo = copy_zoo(
        measured[0],
        tmp_path / "zoo",
        "UPDATE runs SET train_acc = 0.79, test_acc = 0.79 - gap / 100.0 WHERE trained = 1;",
    )
    data = measured[1]
    ckpt = next((zoo / "runs").glob("*/final.pt"))
    assert predict(zoo, ckpt, data) == 2
    assert capsys.readouterr().err == (
        f"camgap: error: {zoo}: no trained model with train accuracy >= 0.8 is done (the best of its 3 trained "
        "models reaches 0.790); --min-train-acc 0.79 fits on models below the paper's 0.8, which have not fitted "
        "their training set\n"
    )


def test_predict_without_a_reference_set(tmp_path, measured, capsys):
    _, data = measured
    assert (
        main(
            [
                "predict",
                "--zoo",
                str(tmp_path),
                "--checkpoint",
                str(tmp_path / "x.pt"),
                "--arch",
                "small_resnet10",
                "--data",
                str(data),
                "--input-size",
                "32",
            ]
        )
        == 2
    )
    assert "registry" in capsys.readouterr().err


def test_masks_command(measured, tmp_path, capsys):
    _, data = measured
    out = tmp_path / "masks"
    assert (
        main(
            ["masks", "--data", str(data), "--out", str(out), "--input-size", "32", "--cache", str(tmp_path / "cache")]
        )
        == 0
    )
    text = capsys.readouterr().out
    records, _ = read_layout(data, "auto", "train")
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == len(records) == 80
    assert {p.relative_to(out).with_suffix("").as_posix() for p in pngs} == {r.image_id for r in records}
    assert f"80 masks written to {out} (saliency)" in text

    # independently: saliency masks on the decoded images, and their agreement with the boxes
    store = TensorStore.cached(records, tmp_path / "cache2", 32, "resize")
    ref = compute_masks("saliency", store.images, store.boxes, list(store.image_ids), 32)
    first = np.array(Image.open(out / f"{ref.image_ids[0]}.png"))
    assert first.shape == (32, 32) and set(np.unique(first)) <= {0, 255}
    assert np.array_equal(first == 255, ref.masks[0].numpy())
    q = mask_quality(ref.masks, boxes_to_masks(list(store.boxes), 32))
    m = re.search(
        r"agreement with the boxes: mean IoU ([\d.]+), "
        r"masks missing the object entirely ([\d.]+)% \(n=(\d+)\)",
        text,
    )
    assert m, text
    assert float(m.group(1)) == pytest.approx(q["mean_iou"], abs=6e-4)
    assert float(m.group(2)) == pytest.approx(100 * q["miss_share"], abs=0.06)
    assert int(m.group(3)) == q["n"] == 80


def _stdout_json(capsys) -> dict:
    import json

    out = capsys.readouterr().out
    return json.loads(out)  # the whole of stdout is one JSON object


def test_study_json_is_the_table3_total_block(measured, tmp_path, capsys):
    """`--json`: the headline as JSON alone on stdout, each cell r, its interval and n, equal to the
    written Table 3's Total block; `--subsets` sets the columns, `--seed` the bootstrap."""
    zoo = copy_zoo(
        measured[0],
        tmp_path / "zoo",
        "UPDATE runs SET train_acc = 0.99, test_acc = 0.99 - gap / 100.0 WHERE trained = 1;",
    )
    out = tmp_path / "study"
    assert study(zoo, out, "--bootstrap", "40", "--no-overlays", "--subsets", "0.95,0", "--seed", "3", "--json") == 0
    got = _stdout_json(capsys)
    assert got["report"] == str(out / "report.html") and got["confidence"] == 0.95
    t = out / "tables"
    pearson, n = (pd.read_csv(t / f"{name}.csv", index_col=[0, 1]) for name in ("table3", "table3_n"))
    lo, hi = (pd.read_csv(t / f"table3_ci_{side}.csv", index_col=[0, 1]) for side in ("low", "high"))
    assert list(pearson.columns) == [">=95", ">=0"]
    assert set(got["cells"]) == set(pearson.loc["Total"].index)
    for measure, by_col in got["cells"].items():
        assert list(by_col) == [">=95", ">=0"]
        for col, cell in by_col.items():
            assert cell["n"] == n.loc[("Total", measure), col]
            assert cell["r"] == pytest.approx(pearson.loc[("Total", measure), col], abs=1e-12)
            assert cell["ci"] == pytest.approx(
                [lo.loc[("Total", measure), col], hi.loc[("Total", measure), col]], abs=1e-12
            )
    d = trained_iou_gap(zoo)
    assert got["cells"]["IoU"][">=0"]["n"] == 3
    assert got["cells"]["IoU"][">=0"]["r"] == pytest.approx(scipy.stats.pearsonr(d.iou, d.gap)[0], abs=1e-9)
    assert got["cells"]["IoU"][">=0"]["ci"][0] <= got["cells"]["IoU"][">=0"]["ci"][1]
    # the report records the command line and the model set
    html = (out / "report.html").read_text(encoding="utf-8")
    assert str(zoo) in html


def test_study_measures_and_primary(measured, tmp_path, capsys):
    """`--measures` picks the rows; `--primary` the variant (an IoU at a threshold that was not measured
    is a "not measured" row); an unknown measure is refused with the measured ones listed."""
    zoo = measured[0]
    out = tmp_path / "study"
    assert study(zoo, out, "--bootstrap", "0", "--no-overlays", "--measures", "iou,nuclear_norm", "--json") == 0
    cells = _stdout_json(capsys)["cells"]
    assert [m.split(" (")[0] for m in cells] == ["IoU", "Nuclear Norm", "Nuclear Norm"]  # in the order given
    assert (
        study(
            zoo,
            tmp_path / "s2",
            "--bootstrap",
            "0",
            "--no-overlays",
            "--measures",
            "iou",
            "--primary",
            "cam=gradcam,threshold=0.3,masks=boxes",
            "--json",
        )
        == 0
    )
    assert list(_stdout_json(capsys)["cells"]) == ["IoU: not measured"]
    assert study(zoo, tmp_path / "s3", "--measures", "iou,bogus") == 2
    err = capsys.readouterr().err
    assert "no measurement of bogus; measured: effective_invariance, iou, iou_b, nuclear_norm" in err
    assert study(zoo, tmp_path / "s4", "--primary", "cam") == 2
    assert "'cam' is not of the form key=value" in capsys.readouterr().err


def test_masks_json(measured, tmp_path, capsys):
    _, data = measured
    out = tmp_path / "masks"
    assert (
        main(
            [
                "masks",
                "--data",
                str(data),
                "--out",
                str(out),
                "--input-size",
                "32",
                "--cache",
                str(tmp_path / "cache"),
                "--json",
            ]
        )
        == 0
    )
    got = _stdout_json(capsys)
    records, _ = read_layout(data, "auto", "train")
    assert got["n_written"] == len(list(out.rglob("*.png"))) == len(records) == 80
    assert got["out"] == str(out) and got["source"] == "saliency" and got["n_missing"] == 0
    store = TensorStore.cached(records, tmp_path / "cache2", 32, "resize")
    ref = compute_masks("saliency", store.images, store.boxes, list(store.image_ids), 32)
    q = mask_quality(ref.masks, boxes_to_masks(list(store.boxes), 32))
    assert got["agreement_with_boxes"] == {
        "mean_iou": pytest.approx(q["mean_iou"], abs=1e-9),
        "miss_share": pytest.approx(q["miss_share"], abs=1e-12),
        "n": 80,
    }


def test_study_passes_its_options_to_write_study(measured, tmp_path, monkeypatch, capsys):
    """The wiring: subsets, primary (over the default variant), seed, the command line and the model set."""
    import camgap.study.report as report

    seen, real = {}, report.write_study

    def fake_write_study(runs, measurements, out_dir, **kwargs):
        seen.update(kwargs)
        return real(runs, measurements, out_dir, **kwargs)

    monkeypatch.setattr(report, "write_study", fake_write_study)
    monkeypatch.setattr("sys.argv", ["camgap", "study", "--zoo", "Z"])
    assert (
        study(
            measured[0],
            tmp_path / "s",
            "--bootstrap",
            "0",
            "--no-overlays",
            "--subsets",
            "0.9,0",
            "--seed",
            "7",
            "--primary",
            "threshold=0.1,cam=gradcam",
        )
        == 0
    )
    assert seen["subsets"] == [0.9, 0] and seen["seed"] == 7 and seen["n_boot"] == 0
    assert seen["cmi"] == "jiang" and seen["color_by"] is None  # the defaults
    assert seen["primary"] == {"cam": "gradcam", "masks": "boxes", "threshold": "0.1"}
    assert seen["command"] == "camgap study --zoo Z" and seen["model_set"] == measured[0]
    text = capsys.readouterr().out
    assert "Pearson r with the generalization gap" in text and "\u2265 90" in text and "\u2265 0" in text


def test_predict_json(measured, capsys):
    """JSON alone on stdout; the same numbers as the text output's computation."""
    zoo, data = measured
    d, ckpt = median_model(zoo)
    capsys.readouterr()
    assert predict(zoo, ckpt, data, "--device", "cpu", "--batch-size", "128", "--min-train-acc", "0", "--json") == 0
    got = _stdout_json(capsys)
    fit = fit_gap(d.iou, d.gap, name="iou")
    pred = predict_gap(fit, got["iou"], confidence=0.95, train_acc=got["train_acc"])
    assert got["iou"] == d.iou.iloc[1] and got["n_images"] == 80 and got["fit"]["n"] == 3
    assert got["prediction"] == pytest.approx(pred.gap, abs=1e-12)
    assert got["interval"] == pytest.approx([pred.low, pred.high], abs=1e-12)


def test_zoo_status_json(measured, capsys):
    zoo, _ = measured
    capsys.readouterr()
    assert main(["zoo", "status", "--zoo", str(zoo), "--json"]) == 0
    got = _stdout_json(capsys)
    assert isinstance(got, dict) and not got["integrity_problems"]


def test_study_cmi_pgdl_and_color_by(measured, tmp_path, capsys):
    """--cmi pgdl reaches the ranking and the report names the definition; --color-by colours the
    IoU scatter; an unknown --color-by is one line listing the known hyperparameters, before any work."""
    out = tmp_path / "s"
    rc = study(measured[0], out, "--bootstrap", "0", "--no-overlays", "--cmi", "pgdl", "--color-by", "lr")
    assert rc == 0, capsys.readouterr().err
    html = (out / "report.html").read_text()
    assert "CMI definition: pgdl (the PGDL competition" in html and "coloured by lr" in html
    assert (out / "tables" / "table3_groups_cells.csv").is_file()
    capsys.readouterr()
    assert study(measured[0], tmp_path / "t", "--no-overlays", "--color-by", "colour") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--color-by 'colour' is not a hyperparameter of the model set; known: arch," in err[0]
    assert not (tmp_path / "t").exists()
