"""End-to-end study on a tiny synthetic model set: files exist, CSVs hold the computed numbers,
report.html is self-contained."""

from __future__ import annotations

import base64
import importlib.metadata
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image
from scipy import stats as st

import camgap
from camgap.study import bootstrap_ci, cmi_score, figures, headline, stats, tables, wide_table, write_study
from camgap.study.report import demo_frames
from camgap.zoo.registry import ZooDB

IOU = "cam=gradcam,threshold=0.1,masks=boxes"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    runs, ms = demo_frames(seed=1)
    out = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    overlays = [
        (1.5, [rng.uniform(size=(24, 24, 3)) for _ in range(3)]),
        (25.0, [(rng.uniform(size=(24, 24, 3)) * 255).astype(np.uint8)] * 2),
        ("no image", []),
    ]
    report = write_study(runs, ms, out, overlays=overlays, n_boot=100, seed=5)
    return runs, ms, out, report


def test_all_files_written(study):
    _, _, out, report = study
    assert report == out / "report.html" and report.is_file()
    for name in (
        "table3",
        "table3_spearman",
        "table3_kendall",
        "table3_ci_low",
        "table3_ci_high",
        "table3_n",
        "table3_long",
        "ranking",
        "table4",
        "table4_long",
        "table5",
        "table6",
        "table7",
        "failures",
        "models",
    ):
        for ext in ("csv", "md"):
            assert (out / "tables" / f"{name}.{ext}").is_file(), f"{name}.{ext}"
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figs == [
        "figure2_overlays.png",
        "figure4_gap_boxplot.png",
        "figure5_gap_histogram.png",
        "scatter_iou.png",
        "scatter_iou_b.png",
        "scatter_nuclear_norm.png",
        "scatter_spectral_norm.png",
    ]
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
        bootstrap_ci(c.value, c.gap, n_resamples=100, seed=5)[0], abs=1e-12
    )
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
    assert rk.loc["IoU", "cmi"] == pytest.approx(cmi_score(tr, "value", "gap", hp)[0])
    t5 = pd.read_csv(out / "tables" / "table5.csv", index_col=0)
    rnd = d[~d.trained]
    assert t5.loc["Random Model", "Total"] == pytest.approx(st.pearsonr(rnd.value, rnd.gap)[0])
    assert math.isnan(t5.loc["Random Model", "resnet18"])  # 2 random models -> n/a
    t7 = pd.read_csv(out / "tables" / "table7.csv", index_col=[0, 1])
    assert t7.loc["Total"].index.tolist() == ["IoU (using saliency map)", "IoU (using bounding box)"]
    fails = pd.read_csv(out / "tables" / "failures.csv")
    assert fails.measure.tolist() == ["spectral_norm"] and fails.n_failed.tolist() == [1]


class _Page(HTMLParser):
    """The report's <img> attributes, <dt>/<dd> pairs of the provenance block, and its text."""

    def __init__(self):
        super().__init__()
        self.imgs, self.prov, self.text, self._tag, self._in_prov = [], {}, [], None, False
        self._dt = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.imgs.append(attrs)
        if tag == "section" and attrs.get("id") == "provenance":
            self._in_prov = True
        self._tag = tag

    def handle_endtag(self, tag):
        if tag == "section":
            self._in_prov = False
        self._tag = None

    def handle_data(self, data):
        self.text.append(data)
        if self._in_prov and self._tag == "dt":
            self._dt = data
        elif self._in_prov and self._tag == "dd":
            self.prov[self._dt] = data


def _page(report):
    p = _Page()
    p.feed(report.read_text(encoding="utf-8"))
    return p


def test_report_is_self_contained(study):
    _, _, out, report = study
    html = report.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert "@import" not in html
    page = _page(report)
    assert len(page.imgs) == len(list((out / "figures").glob("*.png"))) == 7
    for title in (
        "Table 3",
        "Table 4",
        "Table 5",
        "Table 6",
        "Table 7",
        "Figure 4",
        "Figure 5",
        "Figure 2",
        "granulated Kendall",
    ):
        assert title in html
    assert "n/a" in html  # the random-model cells


def test_every_image_is_a_written_png_with_data(study):
    """Each <img> inlines the PNG file it names, and a scatter is drawn only for a measure with
    finite values among the models it shows (no empty plots)."""
    runs, ms, out, report = study
    page = _page(report)
    wide = wide_table(runs, ms)
    for img in page.imgs:
        assert img["src"].startswith("data:image/png;base64,")
        f = out / img["data-file"]
        data = f.read_bytes()
        assert data[:8] == PNG and len(data) > 1000
        assert base64.b64decode(img["src"].split(",", 1)[1]) == data
    files = sorted(img["data-file"] for img in page.imgs)
    assert files == sorted(f"figures/{p.name}" for p in (out / "figures").glob("*.png"))
    captions = [img["alt"] for img in page.imgs]
    fit = wide[wide.trained & (wide.train_acc >= 0.8)]
    for measure, label in (("iou", "IoU"), ("spectral_norm", "Spectral Norm")):
        vals = ms[(ms.measure == measure) & (ms.status == "done")]
        if measure == "iou":
            vals = vals[vals.params == IOU]
        n = int(fit.run_id.isin(vals.run_id).sum())
        assert n > 0
        assert f"{label} vs gap: {n} trained models with train acc ≥ 80 % with a finite {label}" in captions


def test_provenance_block_opens_the_report(study, tmp_path):
    runs, _, _, report = study
    prov = _page(report).prov
    assert prov["camgap"] == camgap.__version__
    assert prov["torch"] == importlib.metadata.version("torch") and prov["torch"].startswith(torch.__version__[:4])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", prov["date"])
    assert prov["command"] == "not given (write_study called from Python)"
    assert prov["models by status"] == f"{len(runs)} models (no status column: all counted as done)"
    html = report.read_text(encoding="utf-8")
    assert html.index('id="provenance"') < html.index("Table 3")
    # with a command line, a model set whose registry records a grid, and run statuses
    runs, ms = demo_frames(seed=1)
    runs = runs.assign(status=["done"] * (len(runs) - 2) + ["failed", "pending"])
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    with ZooDB.in_dir(zoo) as reg:
        reg.bind_grid("ab" * 32, "{}", "grid")
    rep = write_study(runs, ms, tmp_path / "s", n_boot=0, command="camgap study zoo --out s <x>", model_set=zoo)
    prov = _page(rep).prov
    assert prov["command"] == "camgap study zoo --out s <x>"  # escaped in the HTML, intact as text
    assert "&lt;x&gt;" in rep.read_text(encoding="utf-8")
    assert prov["model set"] == str(zoo) and prov["grid SHA-256"] == "ab" * 32
    assert prov["models by status"] == f"done: {len(runs) - 2}, failed: 1, pending: 1 (total {len(runs)})"
    rep = write_study(runs, ms, tmp_path / "s2", n_boot=0, model_set=tmp_path)
    assert _page(rep).prov["grid SHA-256"] == f"n/a (no registry.sqlite in {tmp_path})"


def test_a_measure_without_data_gets_a_line_not_an_empty_plot(tmp_path):
    runs, ms = demo_frames(seed=1)
    ms = ms.copy()
    norm = ms.measure == "spectral_norm"
    ms.loc[norm, ["value", "status", "error"]] = [np.nan, "failed", "margin <= 0"]
    report = write_study(runs, ms, tmp_path, n_boot=0, title="study <b>not bold</b>")
    page = _page(report)
    assert "no data: Spectral Norm was not measured / undefined for all models." in page.text
    assert not (tmp_path / "figures" / "scatter_spectral_norm.png").exists()
    assert not any("Spectral Norm" in img["alt"] for img in page.imgs)
    assert "study &lt;b&gt;not bold&lt;/b&gt;" in report.read_text(encoding="utf-8")  # autoescape
    # nothing finite among the shown models, though finite elsewhere: said so
    ms.loc[norm & ms.run_id.str.startswith("u"), ["value", "status"]] = [1.0, "done"]
    report = write_study(runs, ms, tmp_path / "b", n_boot=0)
    assert (
        "no data: Spectral Norm has no finite value among the trained models with train acc ≥ 80 %; no scatter drawn."
    ) in _page(report).text


def test_scatter_caption_says_when_it_shows_models_below_the_threshold(tmp_path):
    runs, ms = demo_frames(seed=1)
    runs = runs.copy()
    low = runs.trained & (runs.run_id != "m000") & (runs.run_id != "m001")
    runs.loc[low, "train_acc"] = 0.5  # only 2 trained models reach 80 %
    runs["gap"] = 100 * (runs.train_acc - runs.test_acc)
    report = write_study(runs, ms, tmp_path, n_boot=0)
    captions = [img["alt"] for img in _page(report).imgs]
    n = int(runs.trained.sum())
    assert (
        f"IoU vs gap: {n} trained models of any train acc (only 2 reach train acc ≥ 80 %, fewer than 3) "
        "with a finite IoU"
    ) in captions


def test_histogram_counts_have_integer_ticks(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(figures, "_save", lambda fig, path, dpi=100: saved.append(fig) or Path(path))
    runs = pd.DataFrame(dict(gap=[3.0, 12.0], trained=True))
    figures.gap_histogram(runs, tmp_path / "h.png")
    fig = saved[0]
    FigureCanvasAgg(fig).draw()
    ticks = fig.axes[0].get_yticks()
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)


def test_missing_variants_are_reported_not_faked(tmp_path):
    runs, ms = demo_frames(seed=2)
    ms = ms[ms.params == IOU]  # no other CAM, no saliency
    report = write_study(runs, ms, tmp_path, n_boot=0)
    html = report.read_text(encoding="utf-8")
    assert "fewer than two CAM methods" in html and "fewer than two mask sources" in html
    assert not (tmp_path / "tables" / "table6.csv").exists()
    assert (tmp_path / "tables" / "table4.csv").exists() and (tmp_path / "tables" / "table5.csv").exists()


def test_table4_note_is_in_the_report(tmp_path):
    runs, ms = demo_frames(seed=2)
    ms = ms[~((ms.measure == "iou") & (ms.params == IOU))]  # the primary IoU variant is absent
    report = write_study(runs, ms, tmp_path, n_boot=0)
    html = report.read_text(encoding="utf-8")
    table4 = html[html.index("<h2>Table 4.") : html.index("<h2>", html.index("<h2>Table 4.") + 1)]
    assert "IoU (gradcam, rho 0.1, boxes) was not measured." in table4


def test_table6_says_why_gradcampp_and_smoothgradcampp_rows_are_identical(tmp_path):
    """On GAP + linear models SmoothGrad-CAM++ measures exactly Grad-CAM++'s IoU: Table 6 then
    shows two identical rows, and says why under the table (Markdown and the page); rows that
    differ, or that are n/a throughout, get no such note."""
    runs, ms = demo_frames(seed=2)
    smooth = ms.params.str.startswith("cam=smoothgradcam++,")
    twin = ms[ms.params.str.startswith("cam=gradcam++,")]
    same = pd.concat([ms[~smooth], twin.assign(params=twin.params.str.replace("cam=gradcam++", "cam=smoothgradcam++"))])
    report = write_study(runs, same, tmp_path, n_boot=0)
    t6 = pd.read_csv(tmp_path / "tables" / "table6.csv", index_col=[0, 1])
    rows = [t6.xs(f"IoU (Using {m})", level=1) for m in ("GradCAM++", "SmoothGradCAM++")]
    pd.testing.assert_frame_equal(rows[0], rows[1])
    assert rows[0].notna().any().any()
    assert (tmp_path / "tables" / "table6.md").read_text(encoding="utf-8").endswith(f"{tables.SMOOTH_SAME_NOTE}\n")
    assert any(tables.SMOOTH_SAME_NOTE in text for text in _page(report).text)

    differ = write_study(runs, ms, tmp_path / "b", n_boot=0)  # the demo's SmoothGrad-CAM++ IoUs differ
    assert "SmoothGradCAM++ rows are identical" not in differ.read_text(encoding="utf-8")
    assert "SmoothGradCAM++ rows are identical" not in (tmp_path / "b" / "tables" / "table6.md").read_text()
    assert tables.SMOOTH_SAME_NOTE not in tables.table6(runs, same, n_boot=0, min_n=1000).note  # all n/a


def test_unfinished_runs_are_left_out():
    runs, ms = demo_frames(seed=1)
    runs = runs.assign(status="done")
    runs.loc[0, ["status", "train_acc", "test_acc", "gap"]] = ["failed", np.nan, np.nan, np.nan]
    from camgap.study.report import run_study

    st = run_study(runs, ms, n_boot=0)
    assert st.models.shape[0] == len(runs) - 1
    assert st.table3.n.loc[("Total", "IoU"), ">=80"] == int(
        ((runs.status == "done") & runs.trained & (runs.train_acc >= 0.8)).sum()
    )


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
    p = figures.overlay_grid(
        [(0.4, imgs), (33.3, imgs[:1])], tmp_path / "g.png", col_titles=["a", "b", "c"], title="overlays"
    )
    assert p.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="HxWx3"):
        figures.overlay_grid([(1.0, [np.zeros((4, 4, 2))])], tmp_path / "bad.png")
    with pytest.raises(ValueError):
        figures.overlay_grid([], tmp_path / "empty.png")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no chromium on this machine")
def test_report_renders_in_a_headless_browser(study, tmp_path):
    """The page as a browser draws it: a 1280x2000 screenshot with text, tables and colour,
    not a blank or error page."""
    _, _, _, report = study
    shot = tmp_path / "shot.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        report.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape == (2000, 1280, 3)
    ink = (img < 200).any(axis=2)
    assert 0.02 < ink.mean() < 0.5  # text and table borders, mostly white page
    rows = np.flatnonzero(ink.any(axis=1))
    assert rows.min() < 100 and rows.max() > 1800  # content from the top to the bottom
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # anti-aliased text, grey headers


def test_report_has_within_groups_cluster_effects_and_predict_calibration(tmp_path):
    from camgap.study.predict import fit_gap
    from camgap.study.report import demo_frames

    runs, ms = demo_frames(seed=2)
    report = write_study(runs, ms, tmp_path, n_boot=20, seed=1)
    html = report.read_text(encoding="utf-8")
    assert "<title>camgap study" in html and "CMI definition: jiang (Jiang et al. 2020" in html
    assert "Table 3 within groups" in html and "exceeds in absolute value every r within the levels of lr" in html
    cells = pd.read_csv(tmp_path / "tables" / "table3_groups_cells.csv", index_col=[0, 1])
    assert list(cells.index.get_level_values(0).unique()) == ["all models", "arch", "batch_size", "lr", "optimizer"]
    # the calibration is predict's own fit over the trained models at >= 80 %, IoU (gradcam, 0.1, boxes)
    iou = ms[(ms.measure == "iou") & (ms.params == "cam=gradcam,threshold=0.1,masks=boxes")].set_index("run_id")
    ref = runs[runs.trained & (runs.train_acc >= 0.8)]
    fit = fit_gap(iou.loc[ref.run_id, "value"].to_numpy(), ref.gap.to_numpy())
    cal = pd.read_csv(tmp_path / "tables" / "predict_calibration.csv", index_col=0)["value"]
    assert cal.iloc[0] == fit.n == len(ref)
    assert cal.iloc[1] == pytest.approx(fit.loo_coverage()) and cal.iloc[2] == pytest.approx(fit.conformal_halfwidth())
