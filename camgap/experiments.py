"""`camgap demo --experiment context|seeds`: where IoU could fail, and how much the demo's
numbers move from one draw to the next.

In the demo's data the class is visible only inside the box, so a model can open a
generalization gap only by memorising its backgrounds, and a low IoU can only mean that.
The context experiment puts a cue of the class in the background of a share P of the images
(`camgap.data.synthetic`, ``context=P``), in train and test alike: a model that looks outside
the box can then generalise. The demo is run at each P (each a full, resumable demo in a
subfolder ``context<100 P>``) and one table compares, per P, how IoU, IoU-B, EI and the best
threshold-free localization measure track the gap.

The statistics are the study's: Table 3's Total cell at training accuracy >= 80 % (`table3`,
`report.total_block`), on the variants Table 3 shows (`paper_specs`).

The seeds experiment runs the demo at three seeds (other data, another sample of the grid,
other run seeds; each in ``seed<N>``) and ranks every measured variant in one leaderboard:
per seed, Table 3's Total cell at >= 80 % (Pearson r, Kendall tau) and the study's ranking
(granulated Kendall Psi, CMI), read from each demo's written tables; the board gives their
mean over the seeds and the smallest and largest r.
"""

from __future__ import annotations

import math
import re
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
    at_subset,
    display_name,
    paper_specs,
    params_match,
    prepare_measurements,
    subset_label,
    table3,
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
EXPERIMENTS = ("context", "seeds")
#: the seeds experiment's draws: the demo's seed and the next two
N_SEEDS = 3
#: the primary IoU (Grad-CAM, boxes) as Tables 6 and 7 label it
PRIMARY_IOU_LABELS = ("IoU (Using GradCAM)", "IoU (using bounding box)")


def context_folder(context: float) -> str:
    """The subfolder of one P: ``context0``, ``context50``, ``context90``."""
    return f"context{100 * check_context(context):g}"


def default_out(context: float | None = None, experiment: str | None = None) -> Path:
    """The demo's output folder when the user gives none: ``camgap-demo``, ``camgap-demo-context50``
    for ``--context 0.5``, ``camgap-demo-<experiment>`` for ``--experiment``."""
    if experiment is not None:
        return Path(f"camgap-demo-{experiment}")
    if context is not None:
        return Path(f"camgap-demo-{context_folder(context)}")
    return Path("camgap-demo")


#: what each kind of demo output is, for the error that refuses to mix two in one --out
OUT_KINDS = {
    "demo": ("the demo", "camgap demo"),
    "context": ("the context experiment", "camgap demo --experiment context"),
    "seeds": ("the seeds experiment", "camgap demo --experiment seeds"),
}


def out_kind(out: Path) -> str | None:
    """Which kind of demo output (`OUT_KINDS`) a folder holds, by what each leaves there: the
    demo's data/, zoo/ and study/, the context experiment's context<100 P>/ and its table, the
    seeds experiment's seed<N>/ and its leaderboard; None for a missing, empty or other folder."""
    if not out.is_dir():
        return None
    names = {p.name for p in out.iterdir()}
    if names & {"data", "zoo", "study"}:
        return "demo"
    if "context_experiment.csv" in names or any(re.fullmatch(r"context\d+(\.\d+)?", n) for n in names):
        return "context"
    if "leaderboard.csv" in names or any(re.fullmatch(r"seed\d+", n) for n in names):
        return "seeds"
    return None


def check_out(out: Path, experiment: str | None) -> None:
    """`camgap demo`'s --out, before anything runs: a file is refused, and so is a folder that
    holds another kind of demo output (resuming there would mix the two, and the experiment's
    table would sit beside another's folders)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out is a file, not a folder")
    found, wanted = out_kind(out), experiment or "demo"
    if found is not None and found != wanted:
        (name, command), (wanted_name, _) = OUT_KINDS[found], OUT_KINDS[wanted]
        raise InputError(
            f"{out} holds the output of {name} (`{command}`); {wanted_name} needs a folder of its own: "
            "give another --out"
        )


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
    col = subset_label(threshold)
    cells = {}
    if specs:
        t = table3(runs, m, specs, subsets=(threshold,), n_boot=n_boot, seed=seed, confidence=confidence)
        cells = {measure: by[col] for measure, by in total_block(t.long()).items()}
    none = {"r": math.nan, "ci": [math.nan, math.nan], "n": 0}

    trained = runs[trained_mask(runs)]
    top = at_subset(trained, threshold)
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
    from camgap.zoo.registry import ZooDB

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
        with ZooDB.in_dir(sub / "zoo", create=False) as reg:
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


# ------------------------------------------------------------------------ the seeds experiment
def seed_board(study_dir: str | Path, threshold: float = THRESHOLD) -> pd.DataFrame:
    """One demo's row per measured variant, from its written study tables: Table 3's Total cell at
    `threshold` (r, its interval, n, Kendall tau) and the ranking's Psi and CMI."""
    tables = Path(study_dir) / "tables"
    # Table 3's variants, then the IoU variants of Tables 6 (CAM methods) and 7 (saliency masks)
    # without their rows of the primary IoU, which Table 3 already has
    # (a study writes Tables 6 and 7 only when it has several CAM methods or mask sources)
    found = [tables / "table3_long.csv", *(p for k in (6, 7) if (p := tables / f"table{k}_long.csv").is_file())]
    long = pd.concat([pd.read_csv(p) for p in found])
    long = long[~long["measure"].isin(PRIMARY_IOU_LABELS)]
    cell = long[(long["arch"] == "Total") & (long["column"] == subset_label(threshold))]
    cell = cell.set_index("measure")[["pearson", "ci_low", "ci_high", "n", "kendall"]]
    rank = pd.read_csv(tables / "ranking.csv").set_index("measure")[["psi", "cmi"]]
    return cell.rename(columns={"pearson": "r", "kendall": "tau"}).join(rank, how="outer")


def leaderboard(boards: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """{seed: `seed_board`} -> one row per variant: the mean over the seeds of r, tau, Psi and CMI
    (NaN where a seed has no value), the smallest and largest r, and each seed's r, its interval
    and n; sorted by |mean r|, largest first."""
    long = pd.concat({seed: b for seed, b in boards.items()}, names=["seed", "measure"]).reset_index()
    by = long.groupby("measure")
    out = pd.DataFrame(
        {
            "r": by["r"].mean(),
            "r_min": by["r"].min(),
            "r_max": by["r"].max(),
            "seeds": by["r"].count(),
            "tau": by["tau"].mean(),
            "psi": by["psi"].mean(),
            "cmi": by["cmi"].mean(),
        }
    )
    for seed, b in boards.items():
        out = out.join(b[["r", "ci_low", "ci_high", "n"]].add_suffix(f"_seed{seed}"))
    return out.reindex(out["r"].abs().sort_values(ascending=False, na_position="last").index)


def _num(v: float, fmt: str = "{:+.2f}") -> str:
    return fmt.format(v).replace("-", "\u2212") if math.isfinite(v) else "n/a"


def leaderboard_display(board: pd.DataFrame, threshold: float = THRESHOLD) -> pd.DataFrame:
    """The board as text: mean r [smallest, largest of the seeds], tau, Psi, CMI (x100), n per seed."""
    seeds = [c[len("n_seed") :] for c in board.columns if c.startswith("n_seed")]
    col = f"r at >= {100 * threshold:g} %: mean [min, max]"
    out = pd.DataFrame(index=board.index)
    out[col] = [f"{_num(r)} [{_num(lo)}, {_num(hi)}]" for r, lo, hi in zip(board.r, board.r_min, board.r_max)]
    out["Kendall tau"] = [_num(v) for v in board.tau]
    out["Psi"] = [_num(v) for v in board.psi]
    out["CMI x100"] = [_num(100 * v, "{:.2f}") for v in board.cmi]
    out["n per seed"] = [
        " / ".join(str(int(v)) if math.isfinite(v) else "-" for v in row)
        for row in board[[f"n_seed{s}" for s in seeds]].to_numpy(float)
    ]
    return out


def leaderboard_note(seeds: Sequence[int], threshold: float = THRESHOLD) -> str:
    return (
        f"Seeds {', '.join(map(str, seeds))}: each a fresh demo (other data, another sample of the grid, "
        f"other run seeds). r and tau: Table 3's Total cell over the trained models at >= {100 * threshold:g} % "
        "training accuracy; [min, max]: the smallest and largest r of the seeds (each seed's 95 % bootstrap "
        "interval is in the csv); Psi and CMI: the study's ranking over all trained models (CMI x 100, as PGDL "
        "reports it). Rows by |mean r|, largest first; the sign says the direction (a good measure of "
        "generalization has a negative r with the gap when it grows with generalization)."
    )


def run_seeds_experiment(
    out: str | Path = "camgap-demo-seeds",
    quick: bool = False,
    device: str = "auto",
    workers: int | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    precision: str | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    threshold: float | None = None,
    n_seeds: int = N_SEEDS,
) -> ExperimentResult:
    """The demo at seeds ``seed .. seed + n_seeds - 1`` (each in ``out/seed<N>``, resumable), then
    the leaderboard, printed and written to ``out/leaderboard.csv|md``."""
    if threshold is None:
        threshold = QUICK_THRESHOLD if quick else THRESHOLD
    from camgap.demo import run_demo

    out = Path(out)
    seeds = list(range(seed, seed + n_seeds))
    boards = {}
    for i, s in enumerate(seeds, 1):
        sub = out / f"seed{s}"
        log(f"[experiment] {i}/{len(seeds)} seed {s} -> {sub}")
        run_demo(
            sub,
            quick=quick,
            device=device,
            workers=workers,
            bootstrap=bootstrap,
            seed=s,
            log=log,
            progress=progress,
            precision=precision,
        )
        boards[s] = seed_board(sub / "study", threshold)
    board = leaderboard(boards)
    note = leaderboard_note(seeds, threshold)
    csv_path, md_path = out / "leaderboard.csv", out / "leaderboard.md"
    board.to_csv(csv_path, na_rep="n/a")
    shown = render.to_markdown(leaderboard_display(board, threshold).reset_index())
    md_path.write_text(f"**Leaderboard over {len(seeds)} seeds**\n\n{shown}\n{note}\n", encoding="utf-8")
    text = "\n".join(
        [f"Leaderboard over seeds {', '.join(map(str, seeds))}", shown, note, f"table: {csv_path}, {md_path}"]
    )
    log("")
    log(text)
    return ExperimentResult(out, board, csv_path, md_path, text)
