"""Correlation tables (Tables 3, 5, 6, 7 and the within-group table): one cell per (row, column),
each the Pearson, Spearman and Kendall correlation of a measure with the gap over the models of
the cell, with a bootstrap interval of the Pearson r."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import stats
from .bootstrap import bootstrap_ci
from .options import DEFAULT_THRESHOLDS, archs_of, at_threshold, threshold_label
from .variants import TOTAL

_STATS = ("pearson", "spearman", "kendall", "ci_low", "ci_high", "n")


@dataclass
class CorrelationTable:
    """One correlation table: each frame has the same rows and columns. `pearson` is the
    headline (the paper's statistic); `n` the number of models in the cell. Cells with
    fewer than `min_n` models are NaN in every frame but `n`."""

    pearson: pd.DataFrame
    spearman: pd.DataFrame
    kendall: pd.DataFrame
    ci_low: pd.DataFrame
    ci_high: pd.DataFrame
    n: pd.DataFrame
    confidence: float = 0.95
    note: str = ""

    def frames(self) -> dict[str, pd.DataFrame]:
        return {s: getattr(self, s) for s in _STATS}

    def long(self) -> pd.DataFrame:
        """Tidy form: one row per cell with every statistic."""
        parts = {s: f.stack(future_stack=True) for s, f in self.frames().items()}
        out = pd.DataFrame(parts)
        out.index = out.index.set_names([n or "row" for n in self.pearson.index.names] + ["column"])
        out["n"] = out["n"].astype(int)
        return out.reset_index()

    def block(self, key) -> CorrelationTable:
        """The rows of one first-level index value (e.g. the Total block of Table 3)."""
        return CorrelationTable(
            *(f.loc[[key]] for f in self.frames().values()), confidence=self.confidence, note=self.note
        )


def _cell(x, y, *, min_n: int, n_boot: int, seed: int, confidence: float) -> dict[str, float]:
    c = stats.correlations(x, y, min_n=min_n)
    lo = hi = math.nan
    if n_boot > 0 and np.isfinite(c["pearson"]):
        lo, hi = bootstrap_ci(x, y, "pearson", n_resamples=n_boot, confidence=confidence, seed=seed, min_n=min_n)
    return {
        "pearson": c["pearson"],
        "spearman": c["spearman"],
        "kendall": c["kendall"],
        "ci_low": lo,
        "ci_high": hi,
        "n": c["n"],
    }


def _build(
    index: pd.Index, columns: Sequence[str], cell: Callable[[object, str], dict], confidence: float, note: str = ""
) -> CorrelationTable:
    frames = {s: pd.DataFrame(np.nan, index=index, columns=list(columns), dtype=float) for s in _STATS}
    for r in index:
        for c in columns:
            vals = cell(r, c)
            for s in _STATS:
                frames[s].loc[r, c] = vals[s]
    frames["n"] = frames["n"].fillna(0).astype(int)
    return CorrelationTable(**frames, confidence=confidence, note=note)


def correlation_table(
    wide: pd.DataFrame,
    measure_cols: Sequence[str],
    *,
    gap_col: str = "gap",
    arch_col: str = "arch",
    acc_col: str = "train_acc",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    by_arch: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    min_n: int = stats.MIN_N,
    note: str = "",
) -> CorrelationTable:
    """Table 3 layout: rows (arch, measure) for each architecture then a "Total" block over all
    models of `wide`; columns ">=95" ... (train_acc >= threshold). Cells: correlation of the
    measure column with `gap_col` over the models in the cell (non-finite values dropped)."""
    archs = archs_of(wide, arch_col) if by_arch else []
    groups = [*archs, TOTAL]
    index = pd.MultiIndex.from_tuples([(a, mc) for a in groups for mc in measure_cols], names=[arch_col, "measure"])
    cols = {threshold_label(t): t for t in thresholds}
    subsets = {
        (a, lab): at_threshold(wide if a == TOTAL else wide[wide[arch_col] == a], t, acc_col)
        for a in groups
        for lab, t in cols.items()
    }

    def cell(row, col):
        a, mc = row
        d = subsets[(a, col)]
        return _cell(d[mc], d[gap_col], min_n=min_n, n_boot=n_boot, seed=seed, confidence=confidence)

    return _build(index, list(cols), cell, confidence, note)
