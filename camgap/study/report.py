"""The whole study in one call: every table (CSV + Markdown), the figures (PNG) and one
self-contained `report.html` (tables as HTML, figures inline as base64 PNG data URIs, inline
CSS, no scripts, no external references: it opens offline).

    write_study(runs, measurements, out_dir) -> out_dir / "report.html"

Layout of `out_dir`:

    report.html
    tables/   table3.{csv,md} (Pearson, the paper's layout) + table3_{spearman,kendall,
              ci_low,ci_high,n,long}; ranking (granulated Kendall Psi and CMI score);
              table4 (selection accuracy) + table4_long (pair and tie counts); table5 (+ same
              companions as table3); table6 / table7 when their variants were measured;
              failures; models (the wide per-model table)
    figures/  figure4_gap_boxplot.png, figure5_gap_histogram.png, scatter_<measure>.png,
              figure2_overlays.png (when overlays are given)
"""
from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from camgap.errors import InputError, UnknownNameError

from . import figures, tables
from .stats import MIN_N
from .tables import DEFAULT_PRIMARY, DEFAULT_THRESHOLDS, TOTAL, CorrelationTable, MeasureSpec, SelectionTable


@dataclass
class Study:
    """Everything `write_study` renders. Tables that need measurements the set lacks are None."""

    specs: list[MeasureSpec]
    hparams: list[str]
    table3: CorrelationTable
    ranking: pd.DataFrame
    table4: SelectionTable | None
    table5: CorrelationTable | None
    table6: CorrelationTable | None
    table7: CorrelationTable | None
    failures: pd.DataFrame
    models: pd.DataFrame
    thresholds: tuple[float, ...]
    settings: dict = field(default_factory=dict)


def prepare_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Check the run table; keep finished runs (status "done" when a status column is
    present: the registry also lists pending and failed runs); fill `gap` = 100 * (train_acc -
    test_acc) where it is missing."""
    need = {"run_id", "arch", "train_acc"}
    missing = need - set(runs.columns)
    if missing:
        raise UnknownNameError(f"runs lacks columns {sorted(missing)}")
    r = runs.copy()
    if "status" in r.columns:
        r = r[r["status"].astype(str) == "done"].reset_index(drop=True)
    if "gap" not in r.columns:
        if "test_acc" not in r.columns:
            raise UnknownNameError("runs needs a gap column or test_acc to compute it")
        r["gap"] = np.nan
    r["gap"] = pd.to_numeric(r["gap"], errors="coerce")
    if "test_acc" in r.columns:
        fill = r["gap"].isna()
        r.loc[fill, "gap"] = 100.0 * (pd.to_numeric(r.loc[fill, "train_acc"], errors="coerce")
                                      - pd.to_numeric(r.loc[fill, "test_acc"], errors="coerce"))
    if r["run_id"].duplicated().any():
        dup = r.loc[r["run_id"].duplicated(), "run_id"].head(3).tolist()
        raise InputError(f"duplicate run_id in runs, e.g. {dup}")
    return r


def run_study(runs: pd.DataFrame, measurements: pd.DataFrame, *, hparams: Sequence[str] | None = None,
              thresholds: Sequence[float] = DEFAULT_THRESHOLDS, primary: Mapping[str, str] | None = None,
              specs: Sequence[MeasureSpec] | None = None, n_boot: int = 2000, seed: int = 0,
              confidence: float = 0.95, min_n: int = MIN_N) -> Study:
    """Compute every table (no files). `specs` defaults to every measure present, its primary
    variant (`DEFAULT_PRIMARY`: cam=gradcam, masks=boxes); `hparams` to the paper's seven
    hyperparameters present in `runs` that vary (see `tables.infer_hparams`)."""
    runs = prepare_runs(runs)
    primary = dict(DEFAULT_PRIMARY if primary is None else primary)
    specs = list(specs) if specs is not None else tables.discover_specs(measurements, primary)
    hp = tables.infer_hparams(runs) if hparams is None else list(hparams)
    kw = dict(thresholds=tuple(thresholds), n_boot=n_boot, seed=seed, confidence=confidence,
              min_n=min_n)
    t3 = tables.table3(runs, measurements, specs, primary=primary, **kw)
    rank = tables.ranking_table(runs, measurements, specs, hp, primary=primary, min_n=min_n)
    t4 = tables.table4(runs, measurements, thresholds=tuple(thresholds), primary=primary, min_n=min_n)
    t5 = tables.table5(runs, measurements, trained_threshold=min(thresholds) if len(thresholds) else None,
                       primary=primary, n_boot=n_boot, seed=seed, confidence=confidence, min_n=min_n)
    t6 = tables.table6(runs, measurements, primary=primary, **kw)
    t7 = tables.table7(runs, measurements, primary=primary, **kw)
    models = tables.wide_table(runs, measurements)
    return Study(specs, hp, t3, rank, t4, t5, t6, t7, tables.failures_table(measurements), models,
                 tuple(thresholds), dict(primary=primary, **kw))


# ---------------------------------------------------------------------------- headline
def headline(runs: pd.DataFrame | None = None, measurements: pd.DataFrame | None = None, *,
             thresholds: Sequence[float] = DEFAULT_THRESHOLDS, primary: Mapping[str, str] | None = None,
             specs: Sequence[MeasureSpec] | None = None, table: CorrelationTable | None = None) -> str:
    """The Table 3 Total block as plain text: Pearson r of each measure with the gap over all
    trained models at each threshold, with n. Pass `table` (a computed Table 3) or the frames."""
    if table is None:
        if runs is None or measurements is None:
            raise InputError("headline needs runs and measurements, or a computed table")
        table = tables.table3(prepare_runs(runs), measurements, specs, thresholds=thresholds,
                              primary=primary, n_boot=0)
    if TOTAL not in table.pearson.index.get_level_values(0):
        return "(no measurements to correlate with the gap)"
    r = table.pearson.loc[TOTAL]
    n = table.n.loc[TOTAL]
    cells = [[("n/a" if not np.isfinite(r.loc[m, c]) else f"{r.loc[m, c]:+.4f}") + f" (n={n.loc[m, c]})"
              for c in r.columns] for m in r.index]
    head = ["measure", *(tables._label(c) for c in r.columns)]
    rows = [[str(m), *cs] for m, cs in zip(r.index, cells)]
    w = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    fmt = lambda row: "  ".join(s.ljust(w[0]) if i == 0 else s.rjust(w[i]) for i, s in enumerate(row))
    lines = ["Pearson r with the generalization gap, all trained models (Table 3, Total)",
             fmt(head), fmt(["-" * x for x in w]), *map(fmt, rows)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- files
def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_") or "measure"


def write_study(runs: pd.DataFrame, measurements: pd.DataFrame, out_dir: str | Path,
                overlays: Sequence[tuple[object, Sequence[np.ndarray]]] | str | Path | None = None, *,
                hparams: Sequence[str] | None = None, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                primary: Mapping[str, str] | None = None, specs: Sequence[MeasureSpec] | None = None,
                n_boot: int = 2000, seed: int = 0, confidence: float = 0.95, min_n: int = MIN_N,
                title: str = "camgap study: generalization measures vs the generalization gap") -> Path:
    """Compute the study (`run_study`) and write tables, figures and `report.html` under
    `out_dir`; returns the report's path. `overlays`: rows for `figures.overlay_grid`
    ([(gap or label, [HxWx3 image, ...]), ...]) or the path of an already rendered PNG."""
    out = Path(out_dir)
    tdir, fdir = out / "tables", out / "figures"
    tdir.mkdir(parents=True, exist_ok=True)
    fdir.mkdir(parents=True, exist_ok=True)
    st = run_study(runs, measurements, hparams=hparams, thresholds=thresholds, primary=primary,
                   specs=specs, n_boot=n_boot, seed=seed, confidence=confidence, min_n=min_n)
    runs = prepare_runs(runs)

    tables.write_correlation_table(st.table3, tdir, "table3", "Table 3. Pearson r, measure vs gap")
    tables.write_table(st.ranking, tdir, "ranking",
                       fmt="{:.4f}",
                       title="Granulated Kendall Psi and CMI score")
    if st.table4 is not None:
        tables.write_selection_table(st.table4, tdir, "table4", "Table 4. Selection accuracy")
    for name, t in (("table5", st.table5), ("table6", st.table6), ("table7", st.table7)):
        if t is not None:
            tables.write_correlation_table(t, tdir, name)
    tables.write_table(st.failures, tdir, "failures")
    tables.write_table(st.models, tdir, "models", fmt="{:.6g}")

    figs: list[tuple[str, Path]] = []
    figs.append(("Figure 4. Generalization gap per architecture (trained models)",
                 figures.gap_boxplot(runs, fdir / "figure4_gap_boxplot.png")))
    figs.append(("Figure 5. Number of models per gap range (trained models)",
                 figures.gap_histogram(runs, fdir / "figure5_gap_histogram.png")))
    trained = tables.wide_table(runs, measurements, st.specs)
    trained = trained[tables.trained_mask(trained)]
    # the scatters show the paper's model set: trained models above the lowest accuracy threshold
    floor = min((t for t in thresholds if t > 0), default=0.0)
    if (trained["train_acc"] >= floor).sum() >= min_n:
        trained = trained[trained["train_acc"] >= floor]
    subset = f"trained models, train acc ≥ {100 * floor:g}%" if floor else "trained models"
    used: set[str] = set()
    for s in st.specs:
        slug = _slug(s.column)
        while slug in used:
            slug += "_"
        used.add(slug)
        figs.append((f"{s.column} vs gap ({subset})",
                     figures.measure_scatter(trained, s.column, fdir / f"scatter_{slug}.png")))
    if overlays is not None:
        if isinstance(overlays, (str, Path)):
            figs.append(("Figure 2. CAM overlays", Path(overlays)))
        else:
            figs.append(("Figure 2. CAM overlays for models with small, medium and large gaps",
                         figures.overlay_grid(overlays, fdir / "figure2_overlays.png")))

    report = out / "report.html"
    report.write_text(render_html(st, figs, title), encoding="utf-8")
    return report


# -------------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #bbb;padding:.2em .6em;text-align:right}
th{background:#f0f0f0;text-align:left}
.note{color:#555;font-size:.9em}figure{margin:1em 0}img{max-width:100%}
figcaption{font-size:.9em;color:#444}details{margin:.4em 0}
"""


def _html_table(df: pd.DataFrame, fmt: tables.Fmt = "{:.4f}") -> str:
    if df is None or not len(df.columns):
        return "<p class='note'>(empty)</p>"
    return tables.to_html_table(df, fmt)


def _ci_frame(t: CorrelationTable) -> pd.DataFrame:
    out = pd.DataFrame(index=t.ci_low.index, columns=t.ci_low.columns, dtype=object)
    for c in out.columns:
        out[c] = [("n/a" if not (np.isfinite(lo) and np.isfinite(hi)) else
                   tables._fmt_value(lo, "{:.4f}", "n/a") + ", " + tables._fmt_value(hi, "{:.4f}", "n/a"))
                  for lo, hi in zip(t.ci_low[c], t.ci_high[c])]
    return out


def _corr_section(title: str, t: CorrelationTable | None, missing: str) -> str:
    h = f"<h2>{html.escape(title)}</h2>"
    if t is None:
        return h + f"<p class='note'>{html.escape(missing)}</p>"
    parts = [h, f"<p class='note'>{html.escape(t.note)} Cells with fewer than {MIN_N} models: n/a.</p>",
             _html_table(t.pearson),
             "<details><summary>Spearman rho</summary>" + _html_table(t.spearman) + "</details>",
             "<details><summary>Kendall tau-b</summary>" + _html_table(t.kendall) + "</details>",
             f"<details><summary>Bootstrap {int(round(100 * t.confidence))}% interval of Pearson r"
             "</summary>" + _html_table(_ci_frame(t)) + "</details>",
             "<details open><summary>Number of models</summary>" + _html_table(t.n) + "</details>"]
    return "\n".join(parts)


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<img alt='{html.escape(Path(path).name)}' src='data:image/png;base64,{data}'>"


def render_html(st: Study, figs: Sequence[tuple[str, Path]], title: str) -> str:
    runs = st.models
    tm = tables.trained_mask(runs)
    archs = ", ".join(map(str, tables.archs_of(runs[tm]))) or "none"
    summary = (f"{int(tm.sum())} trained models ({archs}), "
               f"{int((~tm).sum())} untrained random models; thresholds on training accuracy: "
               f"{', '.join(tables._label(tables.threshold_label(t)) for t in st.thresholds)}; "
               f"hyperparameters for Psi / CMI: {', '.join(st.hparams) or 'none'}; "
               f"bootstrap resamples: {st.settings.get('n_boot')}, seed {st.settings.get('seed')}.")
    s: list[str] = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
                    f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
                    f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(summary)}</p>",
                    "<p class='note'>The gap is train accuracy minus test accuracy in percentage "
                    "points. A good measure correlates with it strongly; IoU is expected to correlate "
                    "negatively (higher IoU, smaller gap). n/a marks a cell with fewer than "
                    f"{MIN_N} models or an undefined statistic, never an estimate.</p>"]
    s.append(_corr_section("Table 3. Correlation of each measure with the generalization gap",
                           st.table3, ""))
    s.append("<h2>Rank-based measures over all trained models</h2>"
             "<p class='note'>psi: granulated Kendall coefficient (Jiang et al. 2020, sec. 2.2), "
             "Psi = mean of psi[h]. cmi: conditional mutual information score (Jiang et al. 2020, "
             "sec. 2.3; PGDL), minimum over conditioning sets of at most two hyperparameters; "
             "cmi_set is the set that attains it.</p>")
    s.append(_html_table(st.ranking))
    s.append("<h2>Table 4. Accuracy of selecting the better-generalizing model with IoU</h2>")
    if st.table4 is None:
        s.append("<p class='note'>not available: no IoU measurements.</p>")
    else:
        t4 = st.table4
        s.append("<p class='note'>Over all pairs of trained models (within each architecture; Total: "
                 "all pairs across architectures), the share where the model with the higher IoU has "
                 "the smaller gap. Pairs tied in IoU or in the gap are excluded and counted below.</p>")
        s.append(_html_table(t4.accuracy, tables.percent))
        s.append("<details open><summary>Pairs compared / tied (IoU tie, gap tie)</summary>"
                 + _html_table(_counts_frame(t4)) + "</details>")
    s.append(_corr_section("Table 5. Validity: IoU vs gap for untrained random and trained models",
                           st.table5, "not available: no IoU measurements."))
    s.append(_corr_section("Table 6. Robustness to the CAM method", st.table6,
                           "not available: IoU was measured with fewer than two CAM methods."))
    s.append(_corr_section("Table 7. IoU from boxes vs from saliency masks", st.table7,
                           "not available: IoU was measured with fewer than two mask sources."))
    s.append("<h2>Failed measurements</h2>")
    if st.failures.empty:
        s.append("<p class='note'>none.</p>")
    else:
        s.append(_html_table(st.failures))
    s.append("<h2>Figures</h2>")
    for cap, path in figs:
        s.append(f"<figure>{_img(path)}<figcaption>{html.escape(cap)}</figcaption></figure>")
    s.append("</body></html>")
    return "\n".join(s)


def _counts_frame(t: SelectionTable) -> pd.DataFrame:
    out = pd.DataFrame(index=t.accuracy.index, columns=t.accuracy.columns, dtype=object)
    for c in out.columns:
        out[c] = [f"{a} / {b} ({m}, {g})" for a, b, m, g in
                  zip(t.n_compared[c], t.n_ties[c], t.n_ties_measure[c], t.n_ties_gap[c])]
    return out


# ----------------------------------------------------------------------- demo frames
def demo_frames(seed: int = 0, archs: Sequence[str] = ("resnet18", "resnet34"),
                n_random: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A small synthetic (runs, measurements) pair in the study's input contract, for demos
    and tests: a 2 x 2 x 2 grid (batch_size, lr, optimizer) x 2 repeats per architecture, a
    few untrained models, IoU measured with three CAM methods and two mask sources
    (IoU falls with the gap), IoU-B, a noise-only spectral norm (one failure), a nuclear norm."""
    rng = np.random.default_rng(seed)
    rows = []
    k = 0
    for arch in archs:
        for bs in (16, 32):
            for lr in (0.1, 0.001):
                for opt in ("sgd", "adam"):
                    for rep in (0, 1):
                        train = float(rng.uniform(0.8, 1.0))
                        gap = float(np.clip(5 + (30 if lr == 0.1 else 0) + (10 if bs == 16 else 0)
                                            + rng.normal(0, 6), 0.5, 70))
                        rows.append(dict(run_id=f"m{k:03d}", arch=arch, batch_size=bs, lr=lr,
                                         optimizer=opt, repeat=rep, trained=True, train_acc=train,
                                         test_acc=train - gap / 100))
                        k += 1
    for i in range(n_random):
        test = float(rng.uniform(0.03, 0.07))
        rows.append(dict(run_id=f"u{i:03d}", arch=archs[i % len(archs)], batch_size=np.nan,
                         lr=np.nan, optimizer="", repeat=i, trained=False,
                         train_acc=float(rng.uniform(0.03, 0.07)), test_acc=test))
    runs = pd.DataFrame(rows)
    runs["gap"] = 100 * (runs["train_acc"] - runs["test_acc"])
    ms = []

    def add(rid, measure, params, value, status="done", error=""):
        ms.append(dict(run_id=rid, measure=measure, params=params, value=value, status=status,
                       error=error))

    for i, r in enumerate(runs.itertuples()):
        base = 0.55 - r.gap / 120 + rng.normal(0, 0.03) if r.trained else rng.uniform(0.1, 0.3)
        for cam, noise in (("gradcam", 0.0), ("gradcam++", 0.02), ("smoothgradcam++", 0.04)):
            for masks, mn in (("boxes", 0.0), ("saliency", 0.03)):
                add(r.run_id, "iou", f"cam={cam},threshold=0.1,masks={masks}",
                    base + rng.normal(0, noise + mn + 1e-9))
        add(r.run_id, "iou_b", "cam=gradcam,threshold=0.1,masks=boxes", base + rng.normal(0, 0.05))
        if i == 3:
            add(r.run_id, "spectral_norm", "", math.nan, "failed", "non-finite weights in layer1.0.conv1")
        else:
            add(r.run_id, "spectral_norm", "", float(rng.lognormal(10, 1)))
        add(r.run_id, "nuclear_norm", "", 0.5 - r.gap / 400 + rng.normal(0, 0.05))
    return runs, pd.DataFrame(ms)
