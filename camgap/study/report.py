"""The whole study in one call: every table (CSV + Markdown), the figures (PNG) and one
self-contained `report.html` (rendered from the Jinja2 template `report.html.j2`, autoescaped:
tables as HTML, figures inline as base64 PNG data URIs, inline CSS, no scripts, no external
references: it opens offline). The report opens with its provenance (versions, date, command
line, model set and its grid's SHA-256, models by status); a measure without any finite value
gets a "no data" line instead of an empty scatter.

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

import datetime
import importlib.metadata
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from camgap.errors import InputError, MissingFileError, UnknownNameError

from . import figures, render, tables
from .correlation import CorrelationTable
from .groups import cluster_effects, group_cells, group_table
from .options import (
    DEFAULT_HPARAMS,
    DEFAULT_SUBSETS,
    StudyOptions,
    at_subset,
    infer_hparams,
    primary_subset,
    subsets_keyword,
    trained_mask,
)
from .page import FigureFile, render_html
from .page import how_computed as how_computed  # its callers import it from the report
from .ranking import ranking_table
from .selection import SelectionTable, table4
from .variants import IOU_MEASURES, TOTAL, MeasureSpec, discover_specs, prepare_measurements, primary_iou, wide_table


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
    subsets: tuple[float, ...]
    settings: dict = field(default_factory=dict)
    measurements: pd.DataFrame | None = None  #: as the tables read them (`prepare_measurements`)
    options: StudyOptions = field(default_factory=StudyOptions)
    groups: CorrelationTable | None = None  #: Table 3 within hyperparameter levels (`group_table`)
    clusters: list[str] = field(default_factory=list)  #: `cluster_effects` of `groups`
    calibration: pd.DataFrame | None = None  #: `predict_calibration`
    calibration_note: str = ""


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
        r.loc[fill, "gap"] = 100.0 * (
            pd.to_numeric(r.loc[fill, "train_acc"], errors="coerce")
            - pd.to_numeric(r.loc[fill, "test_acc"], errors="coerce")
        )
    if r["run_id"].duplicated().any():
        dup = r.loc[r["run_id"].duplicated(), "run_id"].head(3).tolist()
        raise InputError(f"duplicate run_id in runs, e.g. {dup}")
    return r


def run_study(runs: pd.DataFrame, measurements: pd.DataFrame, options: StudyOptions | None = None, **settings) -> Study:
    """Compute every table (no files). `options` (or their fields as keywords: subsets=,
    primary=, specs=/measures=, hparams=, n_boot=, seed=, confidence=, min_n=): the measures
    default to every measure present, its primary variant (`DEFAULT_PRIMARY`: cam=gradcam,
    masks=boxes); the hyperparameters to the paper's seven present in `runs` that vary (see
    `infer_hparams`). The measurements are prepared (params parsed) once for all tables."""
    o = StudyOptions.of(options, **settings)
    runs = prepare_runs(runs)
    m = prepare_measurements(measurements)
    specs = list(o.measures) if o.measures is not None else discover_specs(m, o.primary)
    hp = infer_hparams(runs) if o.hparams is None else list(o.hparams)
    t3 = tables.table3(runs, m, specs, o)
    rank = ranking_table(runs, m, specs, hp, o)
    t4 = table4(runs, m, options=o)
    t5 = tables.table5(runs, m, options=o)
    t6 = tables.table6(runs, m, o)
    t7 = tables.table7(runs, m, o)
    models = wide_table(runs, m)
    within = group_table(runs, m, specs, hp, o)
    calibration, cal_note = predict_calibration(runs, m, o)
    settings_out = dict(primary=dict(o.primary), cmi=o.cmi, **o.bootstrap())
    return Study(
        specs,
        hp,
        t3,
        rank,
        t4,
        t5,
        t6,
        t7,
        tables.failures_table(m),
        models,
        o.subsets,
        settings_out,
        m,
        o,
        within,
        cluster_effects(within),
        calibration,
        cal_note,
    )


def predict_calibration(
    runs: pd.DataFrame, measurements: pd.DataFrame, options: StudyOptions, confidence: float = 0.95
) -> tuple[pd.DataFrame | None, str]:
    """How well `camgap predict`'s interval covers held-out models: the fit gap ~ IoU (the
    primary variant) over the trained models of the primary subset, as `predict` fits it, each
    model left out in turn (`predict.GapFit.loo_coverage`), and the split-conformal interval
    `predict` switches to when that coverage is too low. (None, why) when no fit is possible."""
    from .predict import CALIBRATION_SLACK, MIN_N, fit_from_wide

    spec = primary_iou(measurements, options.primary)
    if spec is None:
        return None, "not available: no IoU measurements."
    t = primary_subset(options)
    wide = at_subset(wide_table(runs, measurements, [spec]), t)
    try:
        fit = fit_from_wide(wide, spec.column)
    except InputError as e:
        return None, f"not available: {e}."
    kind = fit.interval_kind(confidence)
    c = round(100 * confidence)
    rows = [
        ("reference models (trained" + ("" if t is None else f", train_acc >= {t:g}") + ")", fit.n),
        (f"leave-one-out coverage of the {c}% t interval", fit.loo_coverage(confidence)),
        (f"split-conformal half-width at {c}% (pp)", fit.conformal_halfwidth(confidence)),
        ("leave-one-out coverage of the split-conformal interval", fit.conformal_coverage(confidence)),
    ]
    index = pd.Index([k for k, _ in rows], name="quantity")
    frame = pd.DataFrame({"value": pd.Series([v for _, v in rows], index=index, dtype=object)})
    used = (
        f"below {100 * (confidence - CALIBRATION_SLACK):g}%: `camgap predict` uses the split-conformal interval"
        if kind == "conformal"
        else "`camgap predict` uses the t interval"
        + (f" (fewer than {MIN_N} models: too few to calibrate on)" if len(fit.loo_t) < MIN_N else "")
    )
    note = f"Fit gap ~ {spec.column} as `camgap predict` makes it, each model left out in turn; {used}."
    return frame, note


# ---------------------------------------------------------------------------- headline
def headline(
    runs: pd.DataFrame | None = None,
    measurements: pd.DataFrame | None = None,
    *,
    subsets: Sequence[float] = DEFAULT_SUBSETS,
    primary: Mapping[str, str] | None = None,
    specs: Sequence[MeasureSpec] | None = None,
    table: CorrelationTable | None = None,
    n_boot: int = 0,
    seed: int = 0,
    thresholds: Sequence[float] | None = None,
) -> str:
    """The Table 3 Total block as plain text: Pearson r of each measure with the gap over the
    trained models of each subset, its bootstrap interval (with `n_boot` resamples, or from
    `table`), and n. Pass `table` (a computed Table 3) or the frames. `thresholds`: the
    deprecated name of `subsets`."""
    if thresholds is not None:
        subsets = subsets_keyword({"thresholds": thresholds}, "headline")["subsets"]
    if table is None:
        if runs is None or measurements is None:
            raise InputError("headline needs runs and measurements, or a computed table")
        table = tables.table3(
            prepare_runs(runs), measurements, specs, subsets=subsets, primary=primary, n_boot=n_boot, seed=seed
        )
    return headline_text(total_block(table.long()))


def total_block(long: pd.DataFrame) -> dict[str, dict[str, dict]]:
    """The Total block of a Table 3 in its long form (``CorrelationTable.long()``, or the
    ``table3_long.csv`` the report writes): {measure: {subset: {"r", "ci", "n"}}}."""
    block = long[long.iloc[:, 0].astype(str) == TOTAL]
    cells: dict[str, dict[str, dict]] = {}
    for row in block.itertuples(index=False):
        cells.setdefault(str(row.measure), {})[str(row.column)] = {
            "r": float(row.pearson),
            "ci": [float(row.ci_low), float(row.ci_high)],
            "n": int(row.n),
        }
    return cells


def read_total_block(long_csv: str | Path) -> dict[str, dict[str, dict]]:
    """`total_block` of the ``tables/table3_long.csv`` a written study holds."""
    return total_block(pd.read_csv(long_csv, keep_default_na=False, na_values=["n/a"]))


def headline_text(cells: dict[str, dict[str, dict]]) -> str:
    """The Total block as a plain-text table: r [interval] (n) per measure and subset."""
    if not cells:
        return "(no measurements to correlate with the gap)"

    def cell(c: dict) -> str:
        if not math.isfinite(c["r"]):
            return f"n/a (n={c['n']})"
        ci = f" [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]" if all(map(math.isfinite, c["ci"])) else ""
        return f"{c['r']:+.4f}{ci} (n={c['n']})"

    columns = list(next(iter(cells.values())))
    head = ["measure", *(render.column_label(c) for c in columns)]
    rows = [[m, *(cell(by[c]) for c in columns)] for m, by in cells.items()]
    w = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]

    def fmt(row: list[str]) -> str:
        return "  ".join(v.ljust(w[0]) if i == 0 else v.rjust(w[i]) for i, v in enumerate(row))

    return "\n".join(
        [
            "Pearson r with the generalization gap, all trained models (Table 3, Total)",
            fmt(head),
            fmt(["-" * x for x in w]),
            *map(fmt, rows),
        ]
    )


# ------------------------------------------------------------------------------- files
def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_") or "measure"


def _grid_sha256(model_set: Path) -> str:
    """SHA-256 of the model set's grid (of its canonical JSON, as `zoo build` stores it in the
    registry's meta table), or a note saying why there is none."""
    from camgap.zoo.registry import ZooDB

    if not (model_set / ZooDB.FILENAME).is_file():
        return f"n/a (no {ZooDB.FILENAME} in {model_set})"
    with ZooDB.in_dir(model_set, create=False) as reg:
        return reg.get_meta("grid_fingerprint") or "n/a (the registry records no grid)"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def provenance(
    runs: pd.DataFrame, *, command: str | None = None, model_set: str | Path | None = None
) -> list[tuple[str, str]]:
    """What the report was made from and with: versions, date (UTC), command line, model set,
    its grid's SHA-256 and the number of models by status (of `runs` as given, before the
    study keeps the finished ones)."""
    from camgap import __version__

    if "status" in runs.columns:
        counts = runs["status"].astype(str).value_counts()
        status = ", ".join(f"{k}: {int(v)}" for k, v in sorted(counts.items())) + f" (total {len(runs)})"
    else:
        status = f"{len(runs)} models (no status column: all counted as done)"
    rows = [
        ("camgap", __version__),
        ("torch", _version("torch")),
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("command", command or "not given (write_study called from Python)"),
        ("model set", str(model_set) if model_set is not None else "not given"),
    ]
    if model_set is not None:
        rows.append(("grid SHA-256", _grid_sha256(Path(model_set))))
    rows.append(("models by status", status))
    return rows


def _gap_figures(runs: pd.DataFrame, fdir: Path) -> tuple[list[FigureFile], list[str]]:
    """Figures 4 and 5, or a no-data line when no trained model has a finite gap."""
    gaps = pd.to_numeric(runs.loc[trained_mask(runs), "gap"], errors="coerce")
    if not np.isfinite(gaps.to_numpy(float)).any():
        return [], ["no data: no trained model has a finite gap; Figures 4 and 5 are not drawn."]
    return [
        FigureFile(
            "Figure 4. Generalization gap per architecture (trained models)",
            figures.gap_boxplot(runs, fdir / "figure4_gap_boxplot.png"),
        ),
        FigureFile(
            f"Figure 5. Number of models per gap range ({int(np.isfinite(gaps).sum())} trained models)",
            figures.gap_histogram(runs, fdir / "figure5_gap_histogram.png"),
        ),
    ], []


def color_by_choices(runs: pd.DataFrame) -> list[str]:
    """The hyperparameter columns `--color-by` accepts: those of `DEFAULT_HPARAMS` in `runs`."""
    return [h for h in DEFAULT_HPARAMS if h in runs.columns]


def check_color_by(runs: pd.DataFrame, color_by: str | None) -> None:
    """An UnknownNameError naming the known hyperparameters when `color_by` is not one of them."""
    known = color_by_choices(runs)
    if color_by is not None and color_by not in known:
        raise UnknownNameError(
            f"--color-by {color_by!r} is not a hyperparameter of the model set; known: {', '.join(known) or 'none'}"
        )


def _scatter_models(wide: pd.DataFrame, subsets: Sequence[float], min_n: int) -> tuple[pd.DataFrame, str]:
    """The models the scatters show and their description: the trained models at the lowest
    accuracy threshold (the paper's model set); when fewer than `min_n` reach it, all trained
    models, and the description says so."""
    trained = wide[trained_mask(wide)]
    floor = min((t for t in subsets if t > 0), default=0.0)
    if not floor:
        return trained, "trained models"
    fit = trained[trained["train_acc"] >= floor]
    if len(fit) >= min_n:
        return fit, f"trained models with train acc ≥ {100 * floor:g} %"
    return trained, (
        f"trained models of any train acc (only {len(fit)} reach train acc ≥ {100 * floor:g} %, fewer than {min_n})"
    )


def _scatter_figures(
    runs: pd.DataFrame,
    measurements: pd.DataFrame,
    specs: Sequence[MeasureSpec],
    subsets: Sequence[float],
    min_n: int,
    fdir: Path,
    color_by: str | None = None,
) -> tuple[list[FigureFile], list[str]]:
    """One scatter per measure with at least one finite value among the shown models (caption:
    which models and how many); a no-data line for every other measure. With `color_by`, the
    IoU scatters (`IOU_MEASURES`) are coloured by that hyperparameter."""
    wide = wide_table(runs, measurements, specs)
    shown, subset = _scatter_models(wide, subsets, min_n)
    gap_ok = np.isfinite(pd.to_numeric(shown["gap"], errors="coerce").to_numpy(float))
    figs, no_data, used = [], [], set()
    for s in specs:
        col = s.column
        ok = gap_ok & np.isfinite(pd.to_numeric(shown[col], errors="coerce").to_numpy(float))
        if not ok.any():
            anywhere = np.isfinite(pd.to_numeric(wide[col], errors="coerce").to_numpy(float)).any()
            no_data.append(
                f"no data: {col} has no finite value among the {subset}; no scatter drawn."
                if anywhere
                else f"no data: {col} was not measured / undefined for all models."
            )
            continue
        slug = _slug(col)
        while slug in used:
            slug += "_"
        used.add(slug)
        by = color_by if s.measure in IOU_MEASURES else None
        figs.append(
            FigureFile(
                f"{col} vs gap: {int(ok.sum())} {subset} with a finite {col}" + (f", coloured by {by}" if by else ""),
                figures.measure_scatter(shown, col, fdir / f"scatter_{slug}.png", color_by=by),
            )
        )
    return figs, no_data


def write_study(
    runs: pd.DataFrame,
    measurements: pd.DataFrame,
    out_dir: str | Path,
    overlays: Sequence[tuple[object, Sequence[np.ndarray]]] | str | Path | None = None,
    *,
    options: StudyOptions | None = None,
    title: str = "camgap study: generalization measures vs the generalization gap",
    command: str | None = None,
    model_set: str | Path | None = None,
    overlay_cam: str | None = "gradcam",
    overlay_threshold: float | None = 0.1,
    color_by: str | None = None,
    **settings,
) -> Path:
    """Compute the study (`run_study`) and write tables, figures and `report.html` under
    `out_dir`; returns the report's path. `overlays`: rows for `figures.overlay_grid`
    ([(gap or label, [HxWx3 image, ...]), ...]) rendered with `overlay_cam` at
    `overlay_threshold` (the defaults of `camgap.zoo.measure.overlay_rows`), or the path of an
    already rendered PNG. `command` (the command line) and `model_set` (the model-set
    directory) go into the report's provenance block. `options`, or their fields as keywords
    (n_boot=, subsets=, ...): see `run_study`; they are checked before anything is written.
    `color_by`: a hyperparameter column of `runs`; the IoU scatter is then coloured by its
    values (an UnknownNameError lists the known ones)."""
    o = StudyOptions.of(options, **settings)
    check_color_by(runs, color_by)
    out = Path(out_dir)
    tdir, fdir = out / "tables", out / "figures"
    tdir.mkdir(parents=True, exist_ok=True)
    fdir.mkdir(parents=True, exist_ok=True)
    prov = provenance(runs, command=command, model_set=model_set)
    st = run_study(runs, measurements, o)
    runs = prepare_runs(runs)

    render.write_correlation_table(st.table3, tdir, "table3", "Table 3. Pearson r, measure vs gap")
    render.write_table(st.ranking, tdir, "ranking", fmt="{:.4f}", title="Granulated Kendall Psi and CMI score")
    if st.table4 is not None:
        render.write_selection_table(st.table4, tdir, "table4", "Table 4. Selection accuracy")
    for name, t in (("table5", st.table5), ("table6", st.table6), ("table7", st.table7)):
        if t is not None:
            render.write_correlation_table(t, tdir, name)
    if st.groups is not None:
        group_title = "Table 3 within groups. Pearson r [interval] (n), measure vs gap, per hyperparameter level"
        render.write_correlation_table(st.groups, tdir, "table3_groups")
        render.write_table(
            group_cells(st.groups, o.min_n), tdir, "table3_groups_cells", title=group_title, note=st.groups.note
        )
    if st.calibration is not None:
        render.write_table(st.calibration, tdir, "predict_calibration", note=st.calibration_note)
    render.write_table(st.failures, tdir, "failures")
    render.write_table(st.models, tdir, "models", fmt="{:.6g}")

    figs, no_data = _gap_figures(runs, fdir)
    more, lines = _scatter_figures(runs, st.measurements, st.specs, o.subsets, o.min_n, fdir, color_by)
    figs += more
    no_data += lines
    if overlays is not None:
        if isinstance(overlays, (str, Path)):
            if not Path(overlays).is_file() or Path(overlays).stat().st_size == 0:
                raise MissingFileError(f"{overlays}: overlay figure missing or empty")
            figs.append(FigureFile("Figure 2. CAM overlays", Path(overlays)))
        elif len(overlays):
            figs.append(
                FigureFile(
                    "Figure 2. CAM overlays for models with small, medium and large gaps",
                    figures.overlay_grid(
                        overlays, fdir / "figure2_overlays.png", cam=overlay_cam, threshold=overlay_threshold
                    ),
                )
            )

    report = out / "report.html"
    report.write_text(render_html(st, figs, title, provenance=prov, no_data=no_data, base=out), encoding="utf-8")
    return report


# ----------------------------------------------------------------------- demo frames
def demo_frames(
    seed: int = 0, archs: Sequence[str] = ("resnet18", "resnet34"), n_random: int = 4
) -> tuple[pd.DataFrame, pd.DataFrame]:
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
                        gap = float(
                            np.clip(5 + (30 if lr == 0.1 else 0) + (10 if bs == 16 else 0) + rng.normal(0, 6), 0.5, 70)
                        )
                        rows.append(
                            dict(
                                run_id=f"m{k:03d}",
                                arch=arch,
                                batch_size=bs,
                                lr=lr,
                                optimizer=opt,
                                repeat=rep,
                                trained=True,
                                train_acc=train,
                                test_acc=train - gap / 100,
                            )
                        )
                        k += 1
    for i in range(n_random):
        test = float(rng.uniform(0.03, 0.07))
        rows.append(
            dict(
                run_id=f"u{i:03d}",
                arch=archs[i % len(archs)],
                batch_size=np.nan,
                lr=np.nan,
                optimizer="",
                repeat=i,
                trained=False,
                train_acc=float(rng.uniform(0.03, 0.07)),
                test_acc=test,
            )
        )
    runs = pd.DataFrame(rows)
    runs["gap"] = 100 * (runs["train_acc"] - runs["test_acc"])
    ms = []

    def add(rid, measure, params, value, status="done", error=""):
        ms.append(dict(run_id=rid, measure=measure, params=params, value=value, status=status, error=error))

    for i, r in enumerate(runs.itertuples()):
        base = 0.55 - r.gap / 120 + rng.normal(0, 0.03) if r.trained else rng.uniform(0.1, 0.3)
        for cam, noise in (("gradcam", 0.0), ("gradcam++", 0.02), ("smoothgradcam++", 0.04)):
            for masks, mn in (("boxes", 0.0), ("saliency", 0.03)):
                add(r.run_id, "iou", f"cam={cam},threshold=0.1,masks={masks}", base + rng.normal(0, noise + mn + 1e-9))
        add(r.run_id, "iou_b", "cam=gradcam,threshold=0.1,masks=boxes", base + rng.normal(0, 0.05))
        if i == 3:
            add(r.run_id, "spectral_norm", "", math.nan, "failed", "non-finite weights in layer1.0.conv1")
        else:
            add(r.run_id, "spectral_norm", "", float(rng.lognormal(10, 1)))
        add(r.run_id, "nuclear_norm", "", 0.5 - r.gap / 400 + rng.normal(0, 0.05))
    return runs, pd.DataFrame(ms)
