"""Table 3 within groups: the correlation of each measure with the gap inside each level of each
hyperparameter, and the sentences that name a cluster effect (Simpson's paradox)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .correlation import CorrelationTable, _build, _Cells
from .options import StudyOptions, at_subset, infer_hparams, primary_subset, study_frame, study_specs
from .variants import MeasureSpec, _join_notes, missing_note, natural_key, prepare_measurements

#: Bootstrap resamples of a within-group cell at most: that table has a cell per measure and
#: per hyperparameter level, so its intervals use fewer resamples than Table 3's (rougher tails).
GROUP_N_BOOT = 400
#: The first row of the within-group table: every model of the primary subset.
ALL_MODELS = ("all models", "")


def group_table(
    runs: pd.DataFrame,
    measurements: pd.DataFrame,
    specs: Sequence[MeasureSpec] | None = None,
    hparams: Sequence[str] | None = None,
    options: StudyOptions | None = None,
    **settings,
) -> CorrelationTable:
    """Table 3 within groups: Pearson r of each measure (columns) with the gap over the trained
    models of the primary subset (`primary_subset`), first over all of them (`ALL_MODELS`),
    then within each level of each hyperparameter (rows (hyperparameter, level)). A correlation
    over all models can come from differences between the groups alone (Simpson's paradox);
    `cluster_effects` names where. Intervals: `min(n_boot, GROUP_N_BOOT)` resamples."""
    o = StudyOptions.of(options, **settings)
    m = prepare_measurements(measurements)
    specs = study_specs(m, specs, o)
    if hparams is None:
        hparams = o.hparams
    hparams = infer_hparams(runs) if hparams is None else list(hparams)
    t = primary_subset(o)
    w = at_subset(study_frame(runs, m, specs), t)
    groups = {ALL_MODELS: w}
    for h in hparams:
        values = w[h].astype(object)
        for level in sorted(values.dropna().unique(), key=natural_key):
            groups[(h, _level(level))] = w[(values == level).to_numpy()]
    n_boot = min(o.n_boot, GROUP_N_BOOT)

    columns = [s.column for s in specs]
    cells = _Cells(groups, columns, min_n=o.min_n, n_boot=n_boot, seed=o.seed, confidence=o.confidence)

    subset = "every trained model" if t is None else f"trained models with train_acc >= {t:g}"
    note = (
        f"Pearson r between each measure and the gap within each level of each hyperparameter, {subset}; "
        f"bootstrap intervals from {n_boot} resamples."
    )
    index = pd.MultiIndex.from_tuples(list(groups), names=["hyperparameter", "level"])
    return _build(index, columns, cells, o.confidence, _join_notes(note, missing_note(m, specs)))


def _level(v: object) -> str:
    """A hyperparameter value as a row label (16.0 -> "16": a column with missing values is float)."""
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


def group_cells(t: CorrelationTable, min_n: int) -> pd.DataFrame:
    """The within-group table as text: "r [low, high] (n=...)" per cell, or "undefined (n=... <
    min_n)" / "undefined (constant, n=...)" where r is not defined."""
    out = pd.DataFrame(index=t.pearson.index, columns=t.pearson.columns, dtype=object)
    for c in out.columns:
        cells = []
        for r, lo, hi, n in zip(t.pearson[c], t.ci_low[c], t.ci_high[c], t.n[c]):
            if not np.isfinite(r):
                cells.append(f"undefined (n={n} < {min_n})" if n < min_n else f"undefined (constant, n={n})")
                continue
            ci = f" [{lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) and np.isfinite(hi) else ""
            cells.append(f"{r:+.3f}{ci} (n={n})".replace("-", "\u2212"))
        out[c] = cells
    return out


def cluster_effects(t: CorrelationTable) -> list[str]:
    """One sentence per (measure, hyperparameter) where the r over all models exceeds in
    absolute value the r within every level of the hyperparameter that has one (at least two
    levels with a defined r): the correlation owes part of its strength to differences between
    the groups (a cluster effect; Simpson's paradox when the signs differ too)."""
    out = []
    hparams = list(dict.fromkeys(h for h, _ in t.pearson.index if h != ALL_MODELS[0]))
    for col in t.pearson.columns:
        overall = float(t.pearson.loc[ALL_MODELS, col])
        if not np.isfinite(overall):
            continue
        for h in hparams:
            within = t.pearson.loc[h, col].dropna()
            if len(within) < 2 or not (within.abs() < abs(overall)).all():
                continue
            levels = ", ".join(f"{lvl}: {r:+.3f}" for lvl, r in within.items())
            flip = " and some have the opposite sign" if (np.sign(within) != np.sign(overall)).any() else ""
            out.append(
                f"{col}: the r over all models ({overall:+.3f}) exceeds in absolute value every r within the "
                f"levels of {h} ({levels}){flip}: part of the correlation comes from differences between "
                f"the groups (a cluster effect, Simpson's paradox)."
            )
    return out
