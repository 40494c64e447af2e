"""`camgap demo --experiment context`: where IoU could fail.

In the demo's data the class is visible only inside the box, so a model can open a
generalization gap only by memorising its backgrounds, and a low IoU can only mean that.
The context experiment puts a cue of the class in the background of a share P of the images
(`camgap.data.synthetic`, ``context=P``), in train and test alike: a model that looks outside
the box can then generalise. The demo is run at each P (each a full, resumable demo in a
subfolder ``context<100 P>``) and one table compares, per P, how IoU, IoU-B, EI and the best
threshold-free localization measure track the gap.

The statistics are the study's: Table 3's Total cell at training accuracy >= 80 % (`table3`,
`report.total_block`), on the variants Table 3 shows (`paper_specs`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from camgap.data.synthetic import check_context
from camgap.errors import InputError
from camgap.params import canonical
from camgap.study import render
from camgap.study.report import prepare_runs, total_block
from camgap.study.tables import (
    MeasureSpec,
    at_threshold,
    display_name,
    paper_specs,
    params_match,
    prepare_measurements,
    table3,
    threshold_label,
    trained_mask,
    wide_table,
)

#: the shares P of images with a class cue in their background
CONTEXT_LEVELS: tuple[float, ...] = (0.0, 0.5, 0.9)
#: the training-accuracy threshold of the table (the paper's lowest)
THRESHOLD = 0.80
#: the threshold of a quick (smoke) run: every trained model
QUICK_THRESHOLD = 0.0
#: the table's fixed rows: (column key, measure), in Table 3's variants
FIXED = (("iou", "iou"), ("iou_b", "iou_b"), ("ei", "effective_invariance"))
#: the threshold-free localization measures the table looks for (those measured take part)
THRESHOLD_FREE: tuple[str, ...] = ("energy_pg", "pointing_game", "maxboxacc_v2", "pxap")
#: the variant of a threshold-free measure: the primary IoU's CAM and masks, where it has those keys
CAM_KEYS = {"cam": "gradcam", "masks": "boxes"}
CONFIDENCE = 0.95
#: the statistics of each correlation column group in the numeric table
STATS = ("r", "ci_low", "ci_high", "n")
EXPERIMENTS = ("context",)


def context_folder(context: float) -> str:
    """The subfolder of one P: ``context0``, ``context50``, ``context90``."""
    return f"context{100 * check_context(context):g}"


def default_out(context: float | None = None, experiment: str | None = None) -> Path:
    """The demo's output folder when the user gives none: ``camgap-demo``, ``camgap-demo-context50``
    for ``--context 0.5``, ``camgap-demo-context`` for ``--experiment context``."""
    if experiment is not None:
        return Path(f"camgap-demo-{experiment}")
    if context is not None:
        return Path(f"camgap-demo-{context_folder(context)}")
    return Path("camgap-demo")


# ----------------------------------------------------------------------------------- table
def _threshold_free_specs(m: pd.DataFrame, candidates: Sequence[str]) -> list[MeasureSpec]:
    """One spec per usable variant of each candidate measure that has the primary IoU's CAM and
    masks (where its params have those keys), labelled with its params when it has several."""
    specs = []
    for name in candidates:
        usable = m[(m["measure"] == name) & m["_usable"]]
        variants = []
        for p in sorted(set(usable["params"])):
            have = canonical(p)
            if params_match(p, {k: v for k, v in CAM_KEYS.items() if k in have}):
                variants.append(p)
        for p in variants:
            label = display_name(name) if len(variants) == 1 else f"{display_name(name)} ({p})"
            specs.append(MeasureSpec(name, p, label))
    return specs


def _fixed_specs(m: pd.DataFrame) -> dict[str, MeasureSpec]:
    """{column key: Table 3's spec} for IoU, IoU-B and EI; a measure not measured is left out."""
    by_measure: dict[str, list] = {}
    for spec in paper_specs(m):
        by_measure.setdefault(spec.measure, []).append(spec)
    out = {}
    for key, measure in FIXED:
        specs = by_measure.get(measure, [])
        if len(specs) > 1:
            raise InputError(f"{measure}: {len(specs)} variants in Table 3 ({[s.column for s in specs]}); expected one")
        if specs:
            out[key] = specs[0]
    return out


def context_row(
    runs: pd.DataFrame,
    measurements: pd.DataFrame,
    *,
    threshold: float = THRESHOLD,
    candidates: Sequence[str] = THRESHOLD_FREE,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, object]:
    """One P's row: models at the threshold, their mean gap and mean IoU, and for IoU, IoU-B, EI
    and the best threshold-free measure (``tf``: the largest |r| among the candidates measured,
    named in ``tf_measure``) Table 3's Total cell: r, its bootstrap interval, n."""
    runs = prepare_runs(runs)
    m = prepare_measurements(measurements)
    fixed = _fixed_specs(m)
    free = _threshold_free_specs(m, candidates)
    specs = [*fixed.values(), *free]
    col = threshold_label(threshold)
    cells = {}
    if specs:
        t = table3(runs, m, specs, subsets=(threshold,), n_boot=n_boot, seed=seed, confidence=confidence)
        cells = {measure: by[col] for measure, by in total_block(t.long()).items()}
    none = {"r": math.nan, "ci": [math.nan, math.nan], "n": 0}

    trained = runs[trained_mask(runs)]
    top = at_threshold(trained, threshold)
    row: dict[str, object] = {"models": len(top), "mean_gap": float(top["gap"].mean()) if len(top) else math.nan}
    row["mean_iou"] = math.nan
    if "iou" in fixed:
        iou = wide_table(top, m, [fixed["iou"]])[fixed["iou"].column]
        row["mean_iou"] = float(iou.mean()) if iou.notna().any() else math.nan
    for key, _ in FIXED:
        _put(row, key, cells.get(fixed[key].column, none) if key in fixed else none)
    best = max(
        (s.column for s in free if math.isfinite(cells[s.column]["r"])),
        key=lambda c: abs(cells[c]["r"]),
        default=None,
    )
    row["tf_measure"] = best or ""
    _put(row, "tf", cells[best] if best else none)
    return row


def _put(row: dict, key: str, cell: Mapping) -> None:
    row.update({f"{key}_r": cell["r"], f"{key}_ci_low": cell["ci"][0], f"{key}_ci_high": cell["ci"][1]})
    row[f"{key}_n"] = int(cell["n"])


def context_table(
    frames: Mapping[float, tuple[pd.DataFrame, pd.DataFrame]],
    *,
    threshold: float = THRESHOLD,
    candidates: Sequence[str] = THRESHOLD_FREE,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """{P: (runs, measurements)} -> one row per P (`context_row`), indexed by ``context``."""
    rows = [
        {
            "context": check_context(p),
            **context_row(
                runs, meas, threshold=threshold, candidates=candidates, n_boot=n_boot, seed=seed, confidence=confidence
            ),
        }
        for p, (runs, meas) in frames.items()
    ]
    return pd.DataFrame(rows).set_index("context")


# -------------------------------------------------------------------------------- display
def _cell(row: pd.Series, key: str) -> str:
    r, lo, hi, n = (row[f"{key}_{s}"] for s in STATS)
    if not math.isfinite(r):
        return f"n/a (n={int(n)})"
    ci = f" [{lo:+.2f}, {hi:+.2f}]" if math.isfinite(lo) and math.isfinite(hi) else ""
    return f"{r:+.2f}{ci} (n={int(n)})".replace("-", "\u2212")


def display_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The table as text cells: r [interval] (n) per measure, the best threshold-free measure
    named, the mean IoU and gap of the models at the threshold."""
    out = pd.DataFrame(index=pd.Index([f"{p:g}" for p in table.index], name="P"))
    for key, label in (("iou", "IoU"), ("iou_b", "IoU-B"), ("ei", "EI"), ("tf", "best threshold-free")):
        out[label] = [_cell(row, key) for _, row in table.iterrows()]
    out["threshold-free measure"] = [m or "none measured" for m in table["tf_measure"]]
    out["mean IoU"] = [f"{v:.3f}" if math.isfinite(v) else "n/a" for v in table["mean_iou"]]
    out["mean gap (pp)"] = [f"{v:.1f}" if math.isfinite(v) else "n/a" for v in table["mean_gap"]]
    out["models"] = [str(int(v)) for v in table["models"]]
    return out


def table_note(
    threshold: float, candidates: Sequence[str], measured: Sequence[str], n_boot: int, confidence: float
) -> str:
    missing = [c for c in candidates if c not in measured]
    return " ".join(
        [
            f"Pearson r with the generalization gap over the trained models with training accuracy "
            f">= {100 * threshold:g} % (Table 3's Total cell), its {100 * confidence:g} % bootstrap interval "
            f"({n_boot} resamples) and n; P: the share of images whose background carries a cue of their class.",
            f"Best threshold-free: of {', '.join(candidates)}, the variant with the largest |r| at each P "
            "(chosen after seeing r, so its |r| is optimistic).",
            f"Not measured: {', '.join(missing)}." if missing else "",
        ]
    ).strip()


def write_context_table(
    table: pd.DataFrame, out_dir: str | Path, note: str, name: str = "context_experiment"
) -> tuple[Path, Path]:
    """``name.csv`` (the numbers, NaN as n/a) and ``name.md`` (the text cells and the note)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    table.to_csv(csv_path, na_rep="n/a")
    md_path.write_text(
        "**The context experiment**\n\n" + render.to_markdown(display_frame(table)) + f"\n{note}\n", encoding="utf-8"
    )
    return csv_path, md_path


# ------------------------------------------------------------------------------------ run
@dataclass
class ExperimentResult:
    out: Path
    table: pd.DataFrame
    csv: Path
    md: Path
    text: str


def run_context_experiment(
    out: str | Path = "camgap-demo-context",
    levels: Sequence[float] = CONTEXT_LEVELS,
    quick: bool = False,
    device: str = "auto",
    workers: int | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    precision: str | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    candidates: Sequence[str] = THRESHOLD_FREE,
    threshold: float | None = None,
) -> ExperimentResult:
    """The demo at each P of `levels` (each in ``out/context<100 P>``, resumable like the demo),
    then the table of `context_table`, printed and written to ``out/context_experiment.csv|md``.
    `threshold`: the training accuracy of the models compared, `THRESHOLD` (None) or, for
    `quick`, 0 (every trained model: the quick grid's models stay far below 80 %)."""
    if threshold is None:
        threshold = QUICK_THRESHOLD if quick else THRESHOLD
    from camgap.demo import run_demo
    from camgap.zoo.registry import Registry

    levels = [check_context(p) for p in levels]
    out = Path(out)
    frames = {}
    for i, p in enumerate(levels, 1):
        sub = out / context_folder(p)
        log(f"[experiment] {i}/{len(levels)} context P = {p:g} -> {sub}")
        run_demo(
            sub,
            quick=quick,
            device=device,
            workers=workers,
            bootstrap=bootstrap,
            seed=seed,
            log=log,
            progress=progress,
            precision=precision,
            context=p,
        )
        with Registry.in_dir(sub / "zoo", create=False) as reg:
            frames[p] = (reg.runs_frame(), reg.measurements_frame())
    table = context_table(
        frames, threshold=threshold, candidates=candidates, n_boot=bootstrap, seed=seed, confidence=CONFIDENCE
    )
    measured = {name for _, meas in frames.values() for name in set(meas["measure"])}
    note = table_note(threshold, candidates, sorted(measured), bootstrap, CONFIDENCE)
    csv_path, md_path = write_context_table(table, out, note)
    text = "\n".join(
        [
            f"The context experiment: Pearson r with the gap at training accuracy >= {100 * threshold:g} %"
            + (" (--quick: every trained model)" if quick and threshold == QUICK_THRESHOLD else ""),
            render.to_markdown(display_frame(table)),
            note,
            f"table: {csv_path}, {md_path}",
        ]
    )
    log("")
    log(text)
    return ExperimentResult(out, table, csv_path, md_path, text)
