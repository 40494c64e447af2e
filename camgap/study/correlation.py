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
from .bootstrap import pearson_intervals
from .options import DEFAULT_SUBSETS, archs_of, at_subset, subset_label
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


def correlation_cells(
    d: pd.DataFrame, cols: Sequence[str], gap_col: str = "gap", *, min_n: int, n_boot: int, seed: int, confidence: float
) -> dict[str, dict[str, float]]:
    """The statistics of one cell per column of `cols` over the models of `d`, each column's
    non-finite pairs dropped: the correlations with `gap_col`, and the bootstrap interval of every
    defined Pearson r. Columns finite on the same models share one set of resamples, which is what
    each would draw alone (same n, same seed): the intervals are those of `bootstrap_ci` (to about
    1e-15: one matrix product for all columns sums in another order)."""
    y = np.asarray(d[gap_col], dtype=float)
    out: dict[str, dict[str, float]] = {}
    shared: dict[bytes, list[str]] = {}
    for c in cols:
        x = np.asarray(d[c], dtype=float)
        r = stats.correlations(x, y, min_n=min_n)
        out[c] = {s: r[s] for s in ("pearson", "spearman", "kendall", "n")} | {"ci_low": math.nan, "ci_high": math.nan}
        if n_boot > 0 and np.isfinite(r["pearson"]):
            shared.setdefault((np.isfinite(x) & np.isfinite(y)).tobytes(), []).append(c)
    for key, group in shared.items():
        keep = np.frombuffer(key, dtype=bool)
        xs = np.column_stack([np.asarray(d[c], dtype=float)[keep] for c in group])
        cis = pearson_intervals(xs, y[keep], n_resamples=n_boot, confidence=confidence, seed=seed)
        for c, (lo, hi) in zip(group, cis):
            out[c]["ci_low"], out[c]["ci_high"] = lo, hi
    return out


class _Cells:
    """`correlation_cells` of every column over each set of models, computed once per set when
    one of its cells is first read."""

    def __init__(self, sets: dict, cols: Sequence[str], gap_col: str = "gap", **bootstrap):
        self.sets, self.cols, self.gap_col, self.bootstrap = sets, list(cols), gap_col, bootstrap
        self._done: dict = {}

    def __call__(self, key, col: str) -> dict[str, float]:
        if key not in self._done:
            self._done[key] = correlation_cells(self.sets[key], self.cols, self.gap_col, **self.bootstrap)
        return self._done[key][col]


def _build(
    index: pd.Index, columns: Sequence[str], cell: Callable[[object, str], dict], confidence: float, note: str = ""
) -> CorrelationTable:
    values = {s: np.full((len(index), len(columns)), np.nan) for s in _STATS}
    for i, r in enumerate(index):
        for j, c in enumerate(columns):
            vals = cell(r, c)
            for s in _STATS:
                values[s][i, j] = vals[s]
    frames = {s: pd.DataFrame(v, index=index, columns=list(columns)) for s, v in values.items()}
    frames["n"] = frames["n"].fillna(0).astype(int)
    return CorrelationTable(**frames, confidence=confidence, note=note)


def correlation_table(
    wide: pd.DataFrame,
    measure_cols: Sequence[str],
    *,
    gap_col: str = "gap",
    arch_col: str = "arch",
    acc_col: str = "train_acc",
    subsets: Sequence[float] = DEFAULT_SUBSETS,
    by_arch: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    min_n: int = stats.MIN_N,
    note: str = "",
) -> CorrelationTable:
    """Table 3 layout: rows (arch, measure) for each architecture then a "Total" block over all
    models of `wide`; columns ">=95" ... (train_acc >= the subset's cutoff). Cells: correlation of the
    measure column with `gap_col` over the models in the cell (non-finite values dropped)."""
    archs = archs_of(wide, arch_col) if by_arch else []
    groups = [*archs, TOTAL]
    index = pd.MultiIndex.from_tuples([(a, mc) for a in groups for mc in measure_cols], names=[arch_col, "measure"])
    cols = {subset_label(t): t for t in subsets}
    subsets = {
        (a, lab): at_subset(wide if a == TOTAL else wide[wide[arch_col] == a], t, acc_col)
        for a in groups
        for lab, t in cols.items()
    }

    cells = _Cells(subsets, measure_cols, gap_col, min_n=min_n, n_boot=n_boot, seed=seed, confidence=confidence)
    return _build(index, list(cols), lambda row, col: cells((row[0], col), row[1]), confidence, note)
