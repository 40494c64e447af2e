"""End-to-end study on a tiny synthetic model set: files exist, CSVs hold the computed numbers,
report.html is self-contained."""
from __future__ import annotations

import base64
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from camgap.study import figures, headline, stats, write_study
from camgap.study.report import demo_frames

IOU = "cam=gradcam,threshold=0.1,masks=boxes"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    runs, ms = demo_frames(seed=1)
    out = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    overlays = [(1.5, [rng.uniform(size=(24, 24, 3)) for _ in range(3)]),
                (25.0, [(rng.uniform(size=(24, 24, 3)) * 255).astype(np.uint8)] * 2),
                ("no image", [])]
    report = write_study(runs, ms, out, overlays=overlays, n_boot=100, seed=5)
    return runs, ms, out, report


def test_all_files_written(study):
    _, _, out, report = study
    assert report == out / "report.html" and report.is_file()
    for name in ("table3", "table3_spearman", "table3_kendall", "table3_ci_low", "table3_ci_high",
                 "table3_n", "table3_long", "ranking", "table4", "table4_long", "table5", "table6",
                 "table7", "failures", "models"):
        for ext in ("csv", "md"):
            assert (out / "tables" / f"{name}.{ext}").is_file(), f"{name}.{ext}"
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figs == ["figure2_overlays.png", "figure4_gap_boxplot.png", "figure5_gap_histogram.png",
                    "scatter_iou.png", "scatter_iou_b.png",
                    "scatter_nuclear_norm.png", "scatter_spectral_norm.png"]
    for p in (out / "figures").glob("*.png"):
        assert p.read_bytes()[:8] == PNG


def test_csv_numbers_equal_the_computed_ones(study):
    runs, ms, out, _ = study
    sel = ms[(ms.measure == "iou") & (ms.params == IOU)]
    d = runs.merge(sel[["run_id", "value"]], on="run_id")
    tr = d[d.trained]
    t3 = pd.read_csv(out / "tables" / "table3.csv", index_col=[0, 1])
    n3 = pd.read_csv(out / "tables" / "table3_n.csv", index_col=[0, 1])
    lo3 = pd.read_csv(out / "tables" / "table3_ci_low.csv", index_col=[0, 1])
    c = tr[(tr.arch == "resnet18") & (tr.train_acc >= 0.9)]
    assert t3.loc[("resnet18", "IoU"), ">=90"] == pytest.approx(st.pearsonr(c.value, c.gap)[0], abs=1e-12)
    assert n3.loc[("resnet18", "IoU"), ">=90"] == len(c)
    assert lo3.loc[("resnet18", "IoU"), ">=90"] == pytest.approx(
        stats.bootstrap_ci(c.value, c.gap, n_resamples=100, seed=5)[0], abs=1e-12)
    c = tr[tr.train_acc >= 0.8]
    assert t3.loc[("Total", "IoU"), ">=80"] == pytest.approx(st.pearsonr(c.value, c.gap)[0], abs=1e-12)
    long = pd.read_csv(out / "tables" / "table3_long.csv")
    row = long[(long.arch == "Total") & (long.measure == "IoU") & (long.column == ">=80")].iloc[0]
    assert row.kendall == pytest.approx(st.kendalltau(c.value, c.gap)[0], abs=1e-12)
    t4 = pd.read_csv(out / "tables" / "table4.csv", index_col=0)
    assert t4.loc["Total", ">=80"] == pytest.approx(stats.selection_accuracy(c.value, c.gap).accuracy)
    rk = pd.read_csv(out / "tables" / "ranking.csv", index_col=0)
    hp = ["arch", "batch_size", "lr", "optimizer"]
    assert rk.loc["IoU", "psi"] == pytest.approx(stats.granulated_kendall(tr, "value", "gap", hp)[0])
    assert rk.loc["IoU", "cmi"] == pytest.approx(stats.cmi_score(tr, "value", "gap", hp)[0])
    t5 = pd.read_csv(out / "tables" / "table5.csv", index_col=0)
    rnd = d[~d.trained]
    assert t5.loc["Random Model", "Total"] == pytest.approx(st.pearsonr(rnd.value, rnd.gap)[0])
    assert math.isnan(t5.loc["Random Model", "resnet18"])        # 2 random models -> n/a
    t7 = pd.read_csv(out / "tables" / "table7.csv", index_col=[0, 1])
    assert t7.loc["Total"].index.tolist() == ["IoU (using saliency map)", "IoU (using bounding box)"]
    fails = pd.read_csv(out / "tables" / "failures.csv")
    assert fails.measure.tolist() == ["spectral_norm"] and fails.n_failed.tolist() == [1]


def test_report_is_self_contained(study):
    _, _, out, report = study
    html = report.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert "src='http" not in html and "@import" not in html
    imgs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(imgs) == len(list((out / "figures").glob("*.png"))) == 7
    for b in imgs:
        assert base64.b64decode(b)[:8] == PNG
    for title in ("Table 3", "Table 4", "Table 5", "Table 6", "Table 7", "Figure 4", "Figure 5",
                  "Figure 2", "granulated Kendall"):
        assert title in html
    assert "n/a" in html                                         # the random-model cells


def test_missing_variants_are_reported_not_faked(tmp_path):
    runs, ms = demo_frames(seed=2)
    ms = ms[ms.params == IOU]                                      # no other CAM, no saliency
    report = write_study(runs, ms, tmp_path, n_boot=0)
    html = report.read_text(encoding="utf-8")
    assert "fewer than two CAM methods" in html and "fewer than two mask sources" in html
    assert not (tmp_path / "tables" / "table6.csv").exists()
    assert (tmp_path / "tables" / "table4.csv").exists() and (tmp_path / "tables" / "table5.csv").exists()


def test_unfinished_runs_are_left_out():
    runs, ms = demo_frames(seed=1)
    runs = runs.assign(status="done")
    runs.loc[0, ["status", "train_acc", "test_acc", "gap"]] = ["failed", np.nan, np.nan, np.nan]
    from camgap.study.report import run_study
    st = run_study(runs, ms, n_boot=0)
    assert st.models.shape[0] == len(runs) - 1
    assert st.table3.n.loc[("Total", "IoU"), ">=80"] == int(((runs.status == "done") & runs.trained
                                                            & (runs.train_acc >= 0.8)).sum())


def test_headline_is_the_total_block():
    runs, ms = demo_frames(seed=1)
    text = headline(runs, ms)
    lines = text.splitlines()
    assert "Total" in lines[0]
    iou = [ln for ln in lines if ln.startswith("IoU ")][0]
    tr = runs[runs.trained].merge(ms[(ms.measure == "iou") & (ms.params == IOU)], on="run_id")
    c = tr[tr.train_acc >= 0.95]
    assert f"{st.pearsonr(c.value, c.gap)[0]:+.4f} (n={len(c)})" in iou


def test_overlay_grid_and_bad_images(tmp_path):
    imgs = [np.zeros((10, 12, 3), np.uint8), np.ones((10, 12)), np.full((10, 12, 3), 200.0)]
    p = figures.overlay_grid([(0.4, imgs), (33.3, imgs[:1])], tmp_path / "g.png",
                             col_titles=["a", "b", "c"], title="overlays")
    assert p.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="HxWx3"):
        figures.overlay_grid([(1.0, [np.zeros((4, 4, 2))])], tmp_path / "bad.png")
    with pytest.raises(ValueError):
        figures.overlay_grid([], tmp_path / "empty.png")
