"""Paper Table 4: pairwise model-selection accuracy of the IoU, per architecture and in total."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import stats
from .options import DEFAULT_SUBSETS, StudyOptions, archs_of, at_subset, study_frame, subset_label
from .variants import TOTAL, MeasureSpec, missing_note, prepare_measurements, primary_iou


@dataclass
class SelectionTable:
    """Paper Table 4. Rows: architectures then "Total" (all pairs, across architectures);
    columns: training-accuracy subsets. `accuracy` is a fraction (NaN below `min_n` models or when every
    pair is tied); the other frames are pair/model counts."""

    accuracy: pd.DataFrame
    n_compared: pd.DataFrame
    n_ties: pd.DataFrame
    n_ties_measure: pd.DataFrame
    n_ties_gap: pd.DataFrame
    n_models: pd.DataFrame
    measure: str = "IoU"
    note: str = ""

    def long(self) -> pd.DataFrame:
        names = ("accuracy", "n_compared", "n_ties", "n_ties_measure", "n_ties_gap", "n_models")
        out = pd.DataFrame({k: getattr(self, k).stack(future_stack=True) for k in names})
        out.index = out.index.set_names([self.accuracy.index.name or "arch", "column"])
        return out.reset_index()


def selection_table(
    wide: pd.DataFrame,
    measure_col: str,
    *,
    higher_is_better: bool = True,
    gap_col: str = "gap",
    arch_col: str = "arch",
    acc_col: str = "train_acc",
    subsets: Sequence[float] = DEFAULT_SUBSETS,
    min_n: int = stats.MIN_N,
) -> SelectionTable:
    groups = [*archs_of(wide, arch_col), TOTAL]
    cols = {subset_label(t): t for t in subsets}
    idx = pd.Index(groups, name=arch_col)
    fr = {
        k: pd.DataFrame(np.nan, index=idx, columns=list(cols), dtype=float)
        for k in ("accuracy", "n_compared", "n_ties", "n_ties_measure", "n_ties_gap", "n_models")
    }
    for a in groups:
        d0 = wide if a == TOTAL else wide[wide[arch_col] == a]
        for lab, t in cols.items():
            d = at_subset(d0, t, acc_col)
            s = stats.selection_accuracy(d[measure_col], d[gap_col], higher_is_better)
            fr["accuracy"].loc[a, lab] = s.accuracy if s.n_models >= min_n else math.nan
            fr["n_compared"].loc[a, lab] = s.n_compared
            fr["n_ties"].loc[a, lab] = s.n_ties
            fr["n_ties_measure"].loc[a, lab] = s.n_ties_measure
            fr["n_ties_gap"].loc[a, lab] = s.n_ties_gap
            fr["n_models"].loc[a, lab] = s.n_models
    for k in fr:
        if k != "accuracy":
            fr[k] = fr[k].astype(int)
    return SelectionTable(**fr, measure=measure_col)


def table4(
    runs: pd.DataFrame,
    measurements: pd.DataFrame,
    spec: MeasureSpec | None = None,
    options: StudyOptions | None = None,
    *,
    higher_is_better: bool = True,
    **settings,
) -> SelectionTable | None:
    """Paper Table 4: pairwise selection accuracy of IoU (higher IoU -> smaller gap), trained
    models, within each architecture and across all; the IoU is `primary_iou` (an n/a table
    with a note when that variant was not measured). None when no IoU was measured at all."""
    o = StudyOptions.of(options, **settings)
    m = prepare_measurements(measurements)
    spec = spec or primary_iou(m, o.primary)
    if spec is None:
        return None
    w = study_frame(runs, m, [spec])
    t = selection_table(w, spec.column, higher_is_better=higher_is_better, subsets=o.subsets, min_n=o.min_n)
    t.note = missing_note(m, [spec])
    return t
