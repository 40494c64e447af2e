"""Tables 3-7: values equal the statistics computed directly; n/a below 3 models; CSV/Markdown."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from camgap.study import bootstrap, cmi, options, render, stats, tables
from camgap.study.report import demo_frames

IOU = "cam=gradcam,threshold=0.1,masks=boxes"


@pytest.fixture(scope="module")
def frames():
    return demo_frames(seed=0)


def _trained_iou(runs, ms, params=IOU):
    sel = ms[(ms.measure == "iou") & (ms.params == params) & (ms.status == "done")]
    d = runs.merge(sel[["run_id", "value"]], on="run_id", how="left")
    return d[d.trained]


# ---------------------------------------------------------------------------- wide table
def test_params_are_one_identity_whatever_their_spelling():
    """The registry's JSON (string or number values), a label in any key order and "0.10" for 0.1
    name one variant; the study reads them all as the same label."""
    ms = pd.DataFrame(
        {
            "run_id": list("abcd"),
            "measure": "iou",
            "value": [0.1, 0.2, 0.3, 0.4],
            "params": [
                '{"cam":"gradcam","threshold":"0.1"}',
                '{"cam": "gradcam", "threshold": 0.10}',
                "threshold=0.1, cam=gradcam",
                "cam=gradcam,threshold=0.2",
            ],
        }
    )
    m = tables.prepare_measurements(ms)
    assert m["params"].tolist() == ["cam=gradcam,threshold=0.1"] * 3 + ["cam=gradcam,threshold=0.2"]
    assert tables.prepare_measurements(m) is m  # a prepared frame is not prepared again
    w = tables.wide_table(pd.DataFrame({"run_id": list("abcd")}), m, [("iou", "threshold=0.10,cam=gradcam", "x")])
    assert w["x"].tolist()[:3] == [0.1, 0.2, 0.3] and math.isnan(w["x"].iloc[3])
    assert tables.params_match("cam=gradcam,threshold=0.1", {"threshold": 0.1})
    assert not tables.params_match("cam=gradcam,threshold=0.1", {"threshold": "0.2"})


def test_json_params_and_no_params():
    ms = pd.DataFrame(
        {
            "run_id": ["a", "b"],
            "measure": "iou",
            "value": [0.1, 0.2],
            "params": ['{"cam": "gradcam", "threshold": 0.1}', "{}"],
        }
    )
    w = tables.wide_table(
        pd.DataFrame({"run_id": ["a", "b"]}), ms, [("iou", "cam=gradcam,threshold=0.1", "x"), ("iou", "", "y")]
    )
    assert w["x"].tolist()[0] == 0.1 and w["y"].tolist()[1] == 0.2


def test_wide_table_pivots_and_leaves_failures_nan():
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "arch": "r18", "gap": [1.0, 2.0, 3.0]})
    ms = pd.DataFrame(
        [
            ("a", "iou", "cam=gradcam,masks=boxes", 0.5, "done", ""),
            ("b", "iou", "cam=gradcam,masks=boxes", 0.4, "done", ""),
            ("c", "iou", "cam=gradcam,masks=boxes", np.nan, "failed", "negative margin"),
            ("a", "iou", "cam=gradcam++,masks=boxes", 0.6, "done", ""),
            ("a", "nuclear_norm", "", 1.5, "done", ""),
            ("b", "nuclear_norm", np.nan, 2.5, "done", ""),  # missing params == ""
        ],
        columns=["run_id", "measure", "params", "value", "status", "error"],
    )
    w = tables.wide_table(
        runs,
        ms,
        [("iou", "cam=gradcam,masks=boxes", "IoU"), ("iou", {"cam": "gradcam++"}, "IoU++"), ("nuclear_norm", "", "NN")],
    )
    assert w["IoU"].tolist()[:2] == [0.5, 0.4] and math.isnan(w["IoU"].iloc[2])
    assert w["IoU++"].iloc[0] == 0.6 and w["IoU++"].iloc[1:].isna().all()
    assert w["NN"].tolist()[:2] == [1.5, 2.5]
    assert list(w.columns[:3]) == ["run_id", "arch", "gap"]
    with pytest.raises(ValueError, match="several variants"):
        tables.wide_table(runs, ms, [("iou", {"masks": "boxes"}, "x")])
    with pytest.raises(ValueError, match="already in the table"):
        tables.wide_table(runs, ms, [("nuclear_norm", "", "gap")])
    auto = tables.wide_table(runs, ms)  # every (measure, params), labelled
    assert {"Nuclear Norm", "IoU (cam=gradcam)", "IoU (cam=gradcam++)"} <= set(auto.columns)
    # the IoU is exactly the paper's variant: these rows carry no threshold, so rho 0.1 was not measured
    assert [s.label for s in tables.discover_specs(ms, {"cam": "gradcam"})] == ["Nuclear Norm", "IoU: not measured"]
    assert [s.label for s in tables.discover_specs(ms, {"cam": "gradcam", "threshold": 0.3})] == [
        "Nuclear Norm",
        "IoU: not measured",
    ]


# ------------------------------------------------------------------------------ Table 3
def test_table3_cells_equal_scipy_on_the_cell_subsets(frames):
    runs, ms = frames
    t = tables.table3(runs, ms, n_boot=50, seed=3)
    assert list(t.pearson.columns) == [">=95", ">=90", ">=85", ">=80"]
    assert t.pearson.index.get_level_values(0).unique().tolist() == ["resnet18", "resnet34", "Total"]
    assert t.pearson.index.get_level_values(1).unique().tolist() == ["Spectral Norm", "Nuclear Norm", "IoU-B", "IoU"]
    d = _trained_iou(runs, ms)
    for arch in ("resnet18", "Total"):
        for thr, col in zip((0.95, 0.90, 0.85, 0.80), t.pearson.columns):
            c = d if arch == "Total" else d[d.arch == arch]
            c = c[c.train_acc >= thr]
            key = (arch, "IoU")
            assert t.n.loc[key, col] == len(c)
            if len(c) < 3:
                assert math.isnan(t.pearson.loc[key, col])
                continue
            assert t.pearson.loc[key, col] == pytest.approx(st.pearsonr(c.value, c.gap)[0], abs=1e-12)
            assert t.spearman.loc[key, col] == pytest.approx(st.spearmanr(c.value, c.gap)[0], abs=1e-12)
            assert t.kendall.loc[key, col] == pytest.approx(st.kendalltau(c.value, c.gap)[0], abs=1e-12)
            # the same resamples; one matrix product for all measures sums in another order
            lo, hi = bootstrap.bootstrap_ci(c.value, c.gap, n_resamples=50, seed=3)
            assert t.ci_low.loc[key, col] == pytest.approx(lo, abs=1e-12)
            assert t.ci_high.loc[key, col] == pytest.approx(hi, abs=1e-12)
    # the failed spectral norm measurement is one model fewer
    assert t.n.loc[("Total", "Spectral Norm"), ">=80"] == t.n.loc[("Total", "IoU"), ">=80"] - 1
    long = t.long()
    assert len(long) == t.pearson.size
    assert set(long.columns) == {
        "arch",
        "measure",
        "column",
        "pearson",
        "spearman",
        "kendall",
        "ci_low",
        "ci_high",
        "n",
    }


def _small_runs():
    rng = np.random.default_rng(0)
    rows = []
    for arch, n in (("resnet18", 6), ("resnet50", 2)):
        for i in range(n):
            rows.append(
                dict(
                    run_id=f"{arch}-{i}",
                    arch=arch,
                    trained=True,
                    train_acc=0.99 - 0.01 * i,
                    gap=float(rng.uniform(0, 30)),
                )
            )
    runs = pd.DataFrame(rows)
    ms = pd.DataFrame(
        dict(
            run_id=runs.run_id,
            measure="iou",
            params=IOU,
            value=0.5 - runs.gap / 100 + rng.normal(0, 0.01, len(runs)),
            status="done",
            error="",
        )
    )
    return runs, ms


def test_cells_with_fewer_than_three_models_are_na(tmp_path):
    runs, ms = _small_runs()
    t = tables.table3(runs, ms, n_boot=20)
    assert t.n.loc[("resnet50", "IoU")].tolist() == [2, 2, 2, 2]
    for f in (t.pearson, t.spearman, t.kendall, t.ci_low, t.ci_high):
        assert f.loc[("resnet50", "IoU")].isna().all()
    assert np.isfinite(t.pearson.loc[("resnet18", "IoU")]).all()
    csv, md = render.write_table(t.pearson, tmp_path, "t3")
    text = md.read_text()
    row = [ln for ln in text.splitlines() if ln.startswith("| resnet50")][0]
    assert row.count("n/a") == 4
    back = pd.read_csv(csv, index_col=[0, 1])
    assert back.loc[("resnet50", "IoU")].isna().all()
    pd.testing.assert_frame_equal(back, t.pearson, check_names=False, rtol=0, atol=1e-15)
    s = tables.selection_table(tables.wide_table(runs, ms, [("iou", IOU, "IoU")]), "IoU")
    assert s.accuracy.loc["resnet50"].isna().all() and (s.n_models.loc["resnet50"] == 2).all()


# ------------------------------------------------------------------- Psi / CMI per measure
def test_ranking_table_equals_stats(frames):
    runs, ms = frames
    r = tables.ranking_table(runs, ms)
    assert tables.infer_hparams(runs) == ["arch", "batch_size", "lr", "optimizer"]
    d = _trained_iou(runs, ms)
    hp = ["arch", "batch_size", "lr", "optimizer"]
    psi, per = stats.granulated_kendall(d, "value", "gap", hp)
    score, per_set = cmi.cmi_score(d, "value", "gap", hp)
    assert r.loc["IoU", "psi"] == pytest.approx(psi)
    assert r.loc["IoU", "psi[lr]"] == pytest.approx(per["lr"])
    assert r.loc["IoU", "cmi"] == pytest.approx(score)
    best = min((v, k) for k, v in per_set.items() if np.isfinite(v))[1]
    assert r.loc["IoU", "cmi_set"] == ("+".join(best) or "{}")
    assert r.loc["IoU", "n"] == len(d)


# ------------------------------------------------------------------------- Tables 4-7
def test_table4_equals_selection_accuracy(frames, tmp_path):
    runs, ms = frames
    t = tables.table4(runs, ms)
    d = _trained_iou(runs, ms)
    for arch in ("resnet34", "Total"):
        c = d if arch == "Total" else d[d.arch == arch]
        c = c[c.train_acc >= 0.85]
        s = stats.selection_accuracy(c.value, c.gap)
        assert t.accuracy.loc[arch, ">=85"] == pytest.approx(s.accuracy)
        assert t.n_compared.loc[arch, ">=85"] == s.n_compared
        assert t.n_ties.loc[arch, ">=85"] == s.n_ties
    csv, md = render.write_selection_table(t, tmp_path, "t4")[:2]
    assert "%" in md.read_text()
    back = pd.read_csv(csv, index_col=0)
    pd.testing.assert_frame_equal(back, t.accuracy, check_names=False, rtol=0, atol=1e-15)


def test_table5_random_vs_trained(frames):
    runs, ms = frames
    t = tables.table5(runs, ms, n_boot=0)
    assert t.pearson.index.tolist() == ["Random Model", "Trained Model"]
    assert t.pearson.columns.tolist() == ["resnet18", "resnet34", "Total"]
    sel = ms[(ms.measure == "iou") & (ms.params == IOU)]
    d = runs.merge(sel[["run_id", "value"]], on="run_id")
    rnd = d[~d.trained]
    assert t.n.loc["Random Model", "Total"] == len(rnd) == 4
    assert t.pearson.loc["Random Model", "Total"] == pytest.approx(st.pearsonr(rnd.value, rnd.gap)[0])
    assert math.isnan(t.pearson.loc["Random Model", "resnet18"])  # 2 random models
    tr = d[d.trained & (d.train_acc >= 0.8)]
    assert t.pearson.loc["Trained Model", "Total"] == pytest.approx(st.pearsonr(tr.value, tr.gap)[0])


def test_table5_selects_the_lowest_threshold_above_zero(frames):
    """A 0 column (every trained model, as the demo's Table 3 has) is not Table 5's selection."""
    runs, ms = frames
    sel = ms[(ms.measure == "iou") & (ms.params == IOU)]
    d = runs.merge(sel[["run_id", "value"]], on="run_id")
    tr = d[d.trained & (d.train_acc >= 0.9)]
    assert 3 <= len(tr) < int(d.trained.sum())  # the selection leaves models out
    t = tables.table5(runs, ms, subsets=(0.95, 0.9, 0.0), n_boot=0)
    assert t.n.loc["Trained Model", "Total"] == len(tr)
    assert t.pearson.loc["Trained Model", "Total"] == pytest.approx(st.pearsonr(tr.value, tr.gap)[0])
    assert "trained models with train_acc >= 0.9." in t.note
    assert tables.table5(runs, ms, subsets=(0.0,), n_boot=0).n.loc["Trained Model", "Total"] == d.trained.sum()


def test_table6_rows_by_cam_method(frames):
    runs, ms = frames
    t = tables.table6(runs, ms, n_boot=0)
    assert t.pearson.loc["Total"].index.tolist() == [
        "IoU (Using GradCAM)",
        "IoU (Using GradCAM++)",
        "IoU (Using SmoothGradCAM++)",
    ]
    d = _trained_iou(runs, ms, "cam=smoothgradcam++,threshold=0.1,masks=boxes")
    assert t.pearson.loc[("Total", "IoU (Using SmoothGradCAM++)"), ">=80"] == pytest.approx(
        st.pearsonr(d.value, d.gap)[0]
    )
    only_gradcam = ms[~ms.params.str.contains(r"\+\+")]
    assert tables.table6(runs, only_gradcam, n_boot=0) is None


def test_table7_boxes_vs_saliency(frames):
    runs, ms = frames
    t = tables.table7(runs, ms, n_boot=0)
    assert t.pearson.loc["resnet18"].index.tolist() == ["IoU (using saliency map)", "IoU (using bounding box)"]
    d = _trained_iou(runs, ms, "cam=gradcam,threshold=0.1,masks=saliency")
    d = d[(d.arch == "resnet18") & (d.train_acc >= 0.9)]
    assert t.pearson.loc[("resnet18", "IoU (using saliency map)"), ">=90"] == pytest.approx(
        st.pearsonr(d.value, d.gap)[0]
    )
    assert tables.table7(runs, ms[~ms.params.str.contains("saliency")], n_boot=0) is None


def test_thresholds_are_configurable(frames):
    runs, ms = frames
    t = tables.table3(runs, ms, subsets=(0.99, 0.5), n_boot=0)
    assert list(t.pearson.columns) == [">=99", ">=50"]
    assert t.ci_low.isna().all().all()  # n_boot=0: no interval


def test_markdown_layout():
    df = pd.DataFrame(
        {">=95": [-0.91444, np.nan], ">=90": [0.5, 1.0]},
        index=pd.MultiIndex.from_tuples([("resnet18", "IoU"), ("resnet18", "EI")], names=["arch", "measure"]),
    )
    md = render.to_markdown(df)
    lines = md.splitlines()
    assert lines[0] == "| arch | measure | \u2265 95 | \u2265 90 |"
    assert lines[2] == "| resnet18 | IoU | \u22120.9144 | 0.5000 |"
    assert lines[3] == "|  | EI | n/a | 1.0000 |"


def test_paper_specs_pick_one_variant_per_paper_measure_and_skip_failed_params():
    rows = [
        ("r1", "spectral_norm", "conv=reshape,scale=log", 1.0, "done"),
        ("r1", "spectral_norm", "conv=reshape,scale=raw", 2.0, "done"),
        ("r2", "spectral_norm", "", None, "failed"),  # a failure recorded without parameters
        ("r1", "nuclear_norm", "norm=paper", 0.1, "done"),
        ("r1", "nuclear_norm", "norm=deng", 0.2, "done"),
        ("r1", "iou", "cam=gradcam,masks=boxes,threshold=0.1", 0.3, "done"),
        ("r1", "iou", "cam=gradcam++,masks=boxes,threshold=0.1", 0.3, "done"),
        ("r1", "path_norm", "scale=log", 5.0, "done"),
    ]
    m = pd.DataFrame(rows, columns=["run_id", "measure", "params", "value", "status"])
    specs = tables.paper_specs(m)
    assert [(s.measure, s.params) for s in specs] == [
        ("spectral_norm", "conv=reshape,scale=log"),
        ("nuclear_norm", "norm=paper"),
        ("iou", "cam=gradcam,masks=boxes,threshold=0.1"),
    ]
    # the full table keeps every done variant, and the parameterless failure is no row of its own
    assert ("spectral_norm", "") not in {(s.measure, s.params) for s in tables.discover_specs(m)}


# ----------------------------------------------------------- the paper's primary IoU, exactly
def _with_thresholds(ms, thresholds, seed=1):
    """The IoU rows of `ms` (all at rho 0.1) copied to other thresholds with unrelated values."""
    rng = np.random.default_rng(seed)
    iou = ms[ms.measure.isin(["iou", "iou_b"])]
    copies = []
    for t in thresholds:
        c = iou.copy()
        c["params"] = c.params.str.replace("threshold=0.1", f"threshold={t}", regex=False)
        c["value"] = rng.uniform(0, 1, len(c))
        copies.append(c)
    return pd.concat([ms, *copies], ignore_index=True)


def _assert_same_table(a, b):
    for name, f in a.frames().items():
        pd.testing.assert_frame_equal(f, getattr(b, name))
    assert a.note == b.note


def test_tables_use_rho_0_1_although_0_05_sorts_first(frames):
    runs, ms = frames
    more = _with_thresholds(ms, ("0.05", "0.3"))
    assert tables.PRIMARY_IOU == {"cam": "gradcam", "threshold": "0.1", "masks": "boxes"}
    for make in (tables.table3, tables.table5, tables.table6, tables.table7):
        _assert_same_table(make(runs, more, n_boot=0), make(runs, ms, n_boot=0))
    assert tables.table3(runs, more, n_boot=0).pearson.loc["Total"].index.tolist() == [
        "Spectral Norm",
        "Nuclear Norm",
        "IoU-B",
        "IoU",
    ]
    t4, ref = tables.table4(runs, more), tables.table4(runs, ms)
    pd.testing.assert_frame_equal(t4.accuracy, ref.accuracy)
    assert t4.note == ""
    d = _trained_iou(runs, ms)
    d = d[d.train_acc >= 0.85]
    assert t4.accuracy.loc["Total", ">=85"] == pytest.approx(stats.selection_accuracy(d.value, d.gap).accuracy)
    # the values at 0.05 differ, so picking it would have shown
    low = _trained_iou(runs, more, "cam=gradcam,threshold=0.05,masks=boxes")
    low = low[low.train_acc >= 0.85]
    assert stats.selection_accuracy(low.value, low.gap).accuracy != t4.accuracy.loc["Total", ">=85"]
    # a threshold written "0.10" is the same variant
    ten = ms.assign(params=ms.params.str.replace("threshold=0.1", "threshold=0.10", regex=False))
    pd.testing.assert_frame_equal(tables.table4(runs, ten).accuracy, ref.accuracy)


def test_tables_say_when_rho_0_1_was_not_measured(frames, tmp_path):
    runs, ms = frames
    other = _with_thresholds(ms, ("0.05", "0.3"))
    other = other[~other.params.str.contains("threshold=0.1", regex=False)]
    missing = "IoU (gradcam, rho 0.1, boxes) was not measured."
    t3 = tables.table3(runs, other, n_boot=0)
    assert t3.pearson.loc["Total"].index.tolist() == [
        "Spectral Norm",
        "Nuclear Norm",
        "IoU-B: not measured",
        "IoU: not measured",
    ]
    assert t3.pearson.loc[("Total", "IoU: not measured")].isna().all()
    assert (t3.n.loc[("Total", "IoU: not measured")] == 0).all()
    assert missing in t3.note and "IoU-B (gradcam, rho 0.1, boxes) was not measured." in t3.note
    md = render.write_correlation_table(t3, tmp_path, "t3")[1].read_text()
    assert "| IoU: not measured | n/a | n/a | n/a | n/a |" in md and md.endswith(f"{t3.note}\n")
    t4 = tables.table4(runs, other)
    assert t4.measure == "IoU: not measured" and t4.accuracy.isna().all().all()
    assert (t4.n_models == 0).all().all() and t4.note == missing
    assert render.write_selection_table(t4, tmp_path, "t4")[1].read_text().endswith(f"\n{missing}\n")
    t5 = tables.table5(runs, other, n_boot=0)
    assert t5.pearson.isna().all().all() and t5.note.endswith(missing)
    t6 = tables.table6(runs, other, n_boot=0)
    assert t6.pearson.loc["Total"].index.tolist() == [
        "IoU (Using GradCAM): not measured",
        "IoU (Using GradCAM++): not measured",
        "IoU (Using SmoothGradCAM++): not measured",
    ]
    assert "IoU (gradcam++, rho 0.1, boxes) was not measured." in t6.note
    t7 = tables.table7(runs, other, n_boot=0)
    assert t7.pearson.loc["Total"].index.tolist() == [
        "IoU (using saliency map): not measured",
        "IoU (using bounding box): not measured",
    ]
    assert "IoU (gradcam, rho 0.1, saliency) was not measured." in t7.note
    # no IoU at all: Tables 4 and 5 do not exist (the report says so)
    norms = ms[~ms.measure.isin(["iou", "iou_b"])]
    assert tables.table4(runs, norms) is None and tables.table5(runs, norms) is None


def test_primary_threshold_is_validated_and_can_be_chosen(frames):
    runs, ms = frames
    more = _with_thresholds(ms, ("0.05",))
    for bad in (1.5, -0.1, "nan", "x"):
        with pytest.raises(ValueError, match="threshold"):
            tables.table4(runs, more, primary={"threshold": bad})
    t = tables.table4(runs, more, primary={"threshold": 0.05})
    d = _trained_iou(runs, more, "cam=gradcam,threshold=0.05,masks=boxes")
    d = d[d.train_acc >= 0.9]
    assert t.accuracy.loc["Total", ">=90"] == pytest.approx(stats.selection_accuracy(d.value, d.gap).accuracy)
    # params with a further key: two variants match, and no table chooses between them
    extra = pd.concat(
        [ms, ms[ms.measure == "iou"].assign(params=lambda f: f.params + ",resize=resize_crop")], ignore_index=True
    )
    with pytest.raises(ValueError, match="2 variants of iou match"):
        tables.table4(runs, extra)


def test_only_done_finite_rows_feed_the_tables():
    runs = pd.DataFrame(
        {
            "run_id": list("abcdef"),
            "arch": "r18",
            "trained": True,
            "train_acc": 0.99,
            "gap": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        }
    )
    ms = pd.DataFrame(
        {
            "run_id": list("abcdef"),
            "measure": "iou",
            "params": IOU,
            "value": [0.6, 0.5, 0.45, np.inf, 0.9, 0.1],
            "status": ["done"] * 5 + ["failed"],
            "state": ["done", "done", "done", "done", "undefined", "done"],
        }
    )
    w = tables.wide_table(runs, ms, [("iou", IOU, "IoU")])
    assert w["IoU"].tolist()[:3] == [0.6, 0.5, 0.45] and w["IoU"].iloc[3:].isna().all()
    t = tables.table3(runs, ms, n_boot=0)
    assert t.n.loc[("Total", "IoU"), ">=95"] == 3
    assert t.pearson.loc[("Total", "IoU"), ">=95"] == pytest.approx(st.pearsonr([0.6, 0.5, 0.45], [1.0, 2.0, 3.0])[0])
    # without a state column, status alone decides (row e counts)
    t = tables.table3(runs, ms.drop(columns="state"), n_boot=0)
    assert t.n.loc[("Total", "IoU"), ">=95"] == 4
    # a variant whose rows are all unusable is named in the note
    t = tables.table3(runs, ms.assign(state="undefined"), n_boot=0)
    assert "IoU (gradcam, rho 0.1, boxes) has no usable value" in t.note


# ------------------------------------------------------------------------- StudyOptions
def test_study_options_check_each_field():
    o = tables.StudyOptions(subsets=[0.9, "0.8"], primary={"threshold": 0.05})
    assert o.subsets == (0.9, 0.8) and dict(o.primary) == {"threshold": "0.05"}
    assert tables.StudyOptions().primary == tables.DEFAULT_PRIMARY and tables.StudyOptions().n_boot == 2000
    for kw, msg in [
        ({"subsets": (0.9, 1.5)}, r"subsets: training-accuracy cutoff 1.5 is outside \[0, 1\]"),
        ({"subsets": ("x",)}, "subsets: training-accuracy cutoff 'x' is not a number"),
        ({"n_boot": -1}, "n_boot must be an integer >= 0, got -1"),
        ({"seed": 1.5}, "seed must be an integer >= 0"),
        ({"confidence": 1.0}, r"confidence must be a number in \(0, 1\), got 1.0"),
        ({"min_n": 1}, "min_n must be an integer >= 2"),
        ({"primary": {"threshold": 2}}, "threshold 2 is outside"),
        ({"hparams": "arch"}, "hparams must be a list of column names"),
    ]:
        with pytest.raises(ValueError, match=msg):
            tables.StudyOptions(**kw)
    o = tables.StudyOptions.of(None, n_boot=0, specs=[("iou", None, "IoU")])
    assert o.n_boot == 0 and o.measures == (tables.MeasureSpec("iou", None, "IoU"),)
    assert tables.StudyOptions.of(o) is o and tables.StudyOptions.of(o, seed=3).n_boot == 0
    with pytest.raises(TypeError, match="unknown study option"):
        tables.StudyOptions.of(None, n_bootstrap=3)


def test_options_and_keywords_give_the_same_tables(frames):
    runs, ms = frames
    from camgap.study.report import run_study

    o = tables.StudyOptions(subsets=(0.9, 0.8), n_boot=20, seed=4)
    a = run_study(runs, ms, o)
    b = run_study(runs, ms, subsets=(0.9, 0.8), n_boot=20, seed=4)
    pd.testing.assert_frame_equal(a.table3.pearson, b.table3.pearson)
    pd.testing.assert_frame_equal(a.table3.ci_low, b.table3.ci_low)
    pd.testing.assert_frame_equal(a.ranking, b.ranking)
    pd.testing.assert_frame_equal(tables.table6(runs, ms, o).pearson, a.table6.pearson)
    assert a.table5.note == b.table5.note and ">= 0.8" in a.table5.note


def test_thresholds_is_the_deprecated_name_of_subsets(frames):
    runs, ms = frames
    from camgap.study.report import headline, run_study

    deprecated = "thresholds= is deprecated, pass subsets="
    with pytest.warns(DeprecationWarning, match=f"StudyOptions: {deprecated}"):
        o = tables.StudyOptions(thresholds=(0.9, 0.8), n_boot=0)
    assert o.subsets == (0.9, 0.8) and o == tables.StudyOptions(subsets=(0.9, 0.8), n_boot=0)
    with pytest.warns(DeprecationWarning, match=f"study: {deprecated}"):
        a = run_study(runs, ms, thresholds=(0.9,), n_boot=0)
    b = run_study(runs, ms, subsets=(0.9,), n_boot=0)
    assert a.subsets == b.subsets == (0.9,)
    pd.testing.assert_frame_equal(a.table3.pearson, b.table3.pearson)
    with pytest.warns(DeprecationWarning, match=f"headline: {deprecated}"):
        old = headline(runs, ms, thresholds=(0.9,))
    assert old == headline(runs, ms, subsets=(0.9,))
    with pytest.raises(TypeError, match="pass subsets= alone"):
        tables.StudyOptions.of(None, subsets=(0.9,), thresholds=(0.8,))


# ------------------------------------------------------------------------ within groups
def test_group_table_matches_scipy_per_level_and_names_cluster_effects():
    from scipy import stats as st

    from camgap.study.report import demo_frames

    runs, ms = demo_frames(seed=1)
    t = tables.group_table(runs, ms, n_boot=50)
    specs = tables.discover_specs(tables.prepare_measurements(ms), tables.DEFAULT_PRIMARY)
    w = options.at_subset(tables.wide_table(runs, ms, specs)[lambda d: d.trained], 0.8)
    iou = "IoU"
    assert list(t.pearson.columns) == [s.column for s in specs]
    assert t.pearson.loc[tables.ALL_MODELS, iou] == pytest.approx(st.pearsonr(w["IoU"], w["gap"])[0])
    for lr in (0.1, 0.001):
        d = w[w["lr"] == lr]
        assert t.pearson.loc[("lr", f"{lr:g}"), iou] == pytest.approx(st.pearsonr(d["IoU"], d["gap"])[0])
        assert t.n.loc[("lr", f"{lr:g}"), iou] == len(d)
    assert "from 50 resamples" in t.note
    # the demo's gap depends on lr by construction: the overall r beats both within-lr r's
    lines = tables.cluster_effects(t)
    assert any(line.startswith("IoU: the r over all models") and "levels of lr (0.1: " in line for line in lines)
    # undefined cells are marked with their n
    small = tables.group_table(runs, ms, n_boot=0, min_n=17)
    cells = tables.group_cells(small, 17)
    assert (cells["IoU"] == "undefined (n=16 < 17)").sum() == 8 and cells.loc[tables.ALL_MODELS, "IoU"].startswith(
        "\u2212"
    )


def test_cluster_effects_by_hand():
    idx = pd.MultiIndex.from_tuples([tables.ALL_MODELS, ("h", "a"), ("h", "b"), ("k", "x"), ("k", "y")])
    r = pd.DataFrame({"M": [-0.9, -0.3, 0.2, -0.95, -0.5]}, index=idx)
    n = pd.DataFrame({"M": [10, 5, 5, 5, 5]}, index=idx)
    t = tables.CorrelationTable(r, r, r, r * np.nan, r * np.nan, n)
    (line,) = tables.cluster_effects(t)  # h: |-0.3|, |0.2| < 0.9; k: |-0.95| > 0.9 -> not all
    assert line.startswith("M: the r over all models (-0.900) exceeds in absolute value every r within the levels of h")
    assert "(a: -0.300, b: +0.200) and some have the opposite sign" in line


# ------------------------------------------------------------ threshold-free localization
LOCALIZATION_LABELS = {"energy_pg": "Energy PG", "pointing_game": "Pointing Game", "maxboxacc_v2": "MaxBoxAccV2"}


def _with_localization(runs, ms, cams=("gradcam", "gradcam++"), seed=3):
    """The demo frames plus the four localization measures (params cam, masks: no threshold)."""
    rng = np.random.default_rng(seed)
    rows = [
        {"run_id": r, "measure": k, "params": f"cam={cam},masks=boxes", "value": float(rng.random()), "status": "done"}
        for r in runs.run_id
        for k in (*LOCALIZATION_LABELS, "pxap")
        for cam in cams
    ]
    return pd.concat([ms, pd.DataFrame(rows)], ignore_index=True)


def test_localization_measures_in_table3_and_the_ranking_with_readable_labels(frames):
    runs, ms = frames
    ms = _with_localization(runs, ms)
    specs = tables.discover_specs(ms, tables.DEFAULT_PRIMARY)
    labels = [s.column for s in specs]
    # the gradcam / boxes variant exactly (as the primary IoU), before IoU-B and IoU
    assert labels[-6:] == ["Energy PG", "Pointing Game", "MaxBoxAccV2", "PxAP", "IoU-B", "IoU"]
    assert [s.params for s in specs if s.measure == "pxap"] == ["cam=gradcam,masks=boxes"]
    t3 = tables.table3(runs, ms)
    assert {"Energy PG", "Pointing Game", "MaxBoxAccV2", "PxAP"} <= {m for _, m in t3.pearson.index}
    rank = tables.ranking_table(runs, ms)
    sel = ms[(ms.measure == "pxap") & (ms.params == "cam=gradcam,masks=boxes")]
    d = runs.merge(sel[["run_id", "value"]], on="run_id", how="left")
    psi, _ = stats.granulated_kendall(d[d.trained], "value", "gap", ["arch", "batch_size", "lr", "optimizer"])
    assert rank.loc["PxAP", "psi"] == pytest.approx(psi)
    assert tables.variant_name("pxap", {"cam": "gradcam", "masks": "boxes"}) == "PxAP (gradcam, boxes)"


def test_a_localization_measure_without_the_primary_variant_is_not_measured(frames):
    runs, ms = frames
    ms = _with_localization(runs, ms, cams=("gradcam++",))
    labels = [s.column for s in tables.discover_specs(ms, tables.DEFAULT_PRIMARY)]
    assert "PxAP: not measured" in labels and "PxAP" not in labels
    # Table 6 varies the CAM of a localization measure like the IoU's, masks fixed to boxes
    specs = tables.variant_specs(ms, "pxap", "cam", tables.cam_label, tables.CAM_ORDER, tables.DEFAULT_PRIMARY)
    assert [s.params for s in specs] == ["cam=gradcam++,masks=boxes"]
