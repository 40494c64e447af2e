"""Statistics of the study: how well does a measure track the generalization gap over a model set?

Everything here works on plain arrays / DataFrames (no torch) and never invents a number:
too few models, a constant input or an undefined ratio gives NaN, which the tables render
as "n/a".

- `pearson`, `spearman`, `kendall`: thin wrappers of `scipy.stats` that drop non-finite
  pairs first and return NaN below `min_n` models (3 by default) or for constant input.
  `kendall` is scipy's tau-b.
- `bootstrap_ci` (module `bootstrap`): seeded percentile bootstrap over models (pairs
  resampled together, scipy's draws).
- `granulated_kendall`: Jiang et al. 2020, "Fantastic generalization measures and where to
  find them", sec. 2.2 (granulated Kendall's coefficient Psi).
- `cmi_score` (module `cmi`): Jiang et al. 2020 sec. 2.3 (conditional independence test), the score the
  PGDL competition (NeurIPS 2020) ranked submissions by.
- `selection_accuracy`: the paper's model-selection experiment (Du, Zhou, Dai 2024, Table 4).

Signs: the gap is "larger is worse". A complexity measure (norms) is expected to correlate
positively with the gap, the paper's IoU negatively. Psi and the correlations keep the raw
sign; the CMI score is sign-free (mutual information); `selection_accuracy` takes
`higher_is_better`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as _st

from camgap.errors import InputError, UnknownNameError

MIN_N = 3
#: Differences in the gap (percentage points) at most this large count as ties. The gap is
#: usually computed as 100 * (train_acc - test_acc) in floating point, so two models with the
#: same accuracies can differ by ~1e-14; a fixed tiny tolerance makes those ties.
GAP_TOL = 1e-9


# ----------------------------------------------------------------------------- correlations
def _finite_pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise InputError(f"x and y differ in length: {x.size} vs {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _degenerate(x: np.ndarray, y: np.ndarray, min_n: int) -> bool:
    return x.size < max(min_n, 2) or np.ptp(x) == 0 or np.ptp(y) == 0


def _call(fn: Callable, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fn(x, y)
    return float(res[0]), float(res[1])


def pearson(x, y, *, min_n: int = MIN_N) -> float:
    """Pearson r (the paper's eq. 7) of the finite pairs; NaN below `min_n` or for constant input."""
    x, y = _finite_pairs(x, y)
    return math.nan if _degenerate(x, y, min_n) else _call(_st.pearsonr, x, y)[0]


def spearman(x, y, *, min_n: int = MIN_N) -> float:
    """Spearman rho of the finite pairs; NaN below `min_n` or for constant input."""
    x, y = _finite_pairs(x, y)
    return math.nan if _degenerate(x, y, min_n) else _call(_st.spearmanr, x, y)[0]


def kendall(x, y, *, min_n: int = MIN_N) -> float:
    """Kendall tau-b (scipy's default) of the finite pairs; NaN below `min_n` or constant input."""
    x, y = _finite_pairs(x, y)
    return math.nan if _degenerate(x, y, min_n) else _call(_st.kendalltau, x, y)[0]


def correlations(x, y, *, min_n: int = MIN_N) -> dict[str, float]:
    """n (finite pairs), Pearson r and its two-sided p-value, Spearman rho, Kendall tau-b."""
    xf, yf = _finite_pairs(x, y)
    out = {"n": int(xf.size), "pearson": math.nan, "pearson_p": math.nan, "spearman": math.nan, "kendall": math.nan}
    if not _degenerate(xf, yf, min_n):
        out["pearson"], out["pearson_p"] = _call(_st.pearsonr, xf, yf)
        out["spearman"] = _call(_st.spearmanr, xf, yf)[0]
        out["kendall"] = _call(_st.kendalltau, xf, yf)[0]
    return out


# ----------------------------------------------------------------------- pairwise sign utils
def _sign(d: np.ndarray, tol: float) -> np.ndarray:
    s = np.sign(d).astype(np.int8)
    if tol > 0:
        s[np.abs(d) <= tol] = 0
    return s


def _clean(
    df: pd.DataFrame,
    measure_col: str,
    gap_col: str,
    hparams: Sequence[str],
    *,
    require_measure: bool = True,
    extra: Sequence[str] = (),
) -> pd.DataFrame:
    """The hyperparameter, measure and gap columns of the rows with a finite gap (and, with
    `require_measure`, a finite measure); measures as floats."""
    measures = list(dict.fromkeys([measure_col, *extra]))
    missing = [c for c in (*measures, gap_col, *hparams) if c not in df.columns]
    if missing:
        raise UnknownNameError(f"columns missing from the model table: {missing}")
    out = df[[*hparams, *measures, gap_col]].copy()
    for c in (*measures, gap_col):
        out[c] = pd.to_numeric(out[c], errors="coerce")
    fin = np.isfinite(out[gap_col].to_numpy(float))
    if require_measure:
        fin &= np.isfinite(out[measure_col].to_numpy(float))
    return out[fin].reset_index(drop=True)


def _codes(col: pd.Series) -> np.ndarray:
    """Integer code of each hyperparameter value (missing values form their own value)."""
    return pd.factorize(col.astype(object), use_na_sentinel=False)[0].astype(np.int64)


# ------------------------------------------------------------------------- granulated Kendall
def tau_a(measure, gap, *, measure_tol: float = 0.0, gap_tol: float = GAP_TOL) -> float:
    """Jiang et al. 2020 eq. (1): tau(T) = 1/(|T|(|T|-1)) sum_{i != j} sgn(mu_i - mu_j) sgn(g_i - g_j).

    (Kendall's tau-a: tied pairs count as 0 and stay in the denominator.) NaN for |T| < 2.
    """
    m = np.asarray(measure, dtype=float)
    g = np.asarray(gap, dtype=float)
    n = m.size
    if n < 2:
        return math.nan
    sm = _sign(m[:, None] - m[None, :], measure_tol)
    sg = _sign(g[:, None] - g[None, :], gap_tol)
    return float((sm.astype(np.int64) * sg).sum() / (n * (n - 1)))


def granulated_kendall(
    df: pd.DataFrame,
    measure_col: str,
    gap_col: str,
    hparams: Sequence[str],
    *,
    tau: str = "a",
    min_models: int = 2,
    measure_tol: float = 0.0,
    gap_tol: float = GAP_TOL,
) -> tuple[float, dict[str, float]]:
    """Granulated Kendall's coefficient, Jiang et al. 2020 sec. 2.2, eq. (3)-(4).

    For hyperparameter i with value set Theta_i,

        psi_i = 1/m_i * sum_{theta_1..theta_{i-1}, theta_{i+1}..theta_n}
                            tau( U_{theta_i in Theta_i} {(mu(theta), g(theta))} )
        Psi   = 1/n * sum_i psi_i

    i.e. the models are grouped into cells that agree on every hyperparameter but i (so that
    only hyperparameter i varies inside a cell, plus repeats/seeds when the set has them), the
    Kendall coefficient of measure vs gap is computed inside each cell, and psi_i averages it
    over the cells. Psi is the mean of psi_i over the hyperparameters.

    Details (stated because real model sets are not complete grids):
    - tau = "a" (default) is the paper's eq. (1) (`tau_a`: ties count 0); tau = "b" uses
      scipy's tau-b (a cell where it is undefined, i.e. constant measure or gap, is skipped).
    - A cell is used when it holds >= `min_models` models (2) and hyperparameter i takes at
      least two distinct values in it; m_i is the number of cells used. On a complete grid
      every cell qualifies and this is exactly the paper's m_i = prod_{j != i} |Theta_j|.
    - psi_i is NaN when no cell qualifies; Psi is the mean of the defined psi_i (NaN if none).
    - Rows with a non-finite measure or gap (failed measurements) are dropped first.
    - `hparams` should list the real hyperparameters only: a repeat/seed column passed here
      would split every cell into single runs.

    Returns (Psi, {hparam: psi_i}).
    """
    if tau not in ("a", "b"):
        raise InputError(f"tau must be 'a' or 'b', got {tau!r}")
    hparams = list(hparams)
    if not hparams:
        raise InputError("granulated_kendall needs at least one hyperparameter")
    if tau == "a":
        return granulated_kendalls(
            df, [measure_col], gap_col, hparams, min_models=min_models, measure_tol=measure_tol, gap_tol=gap_tol
        )[measure_col]
    d = _clean(df, measure_col, gap_col, hparams)
    if len(d) < 2:
        return math.nan, {h: math.nan for h in hparams}
    m = d[measure_col].to_numpy(float)
    g = d[gap_col].to_numpy(float)
    codes = {h: _codes(d[h]) for h in hparams}
    per: dict[str, float] = {}
    for h in hparams:
        taus = [kendall(m[idx], g[idx], min_n=2) for idx in _varying_cells(codes, h, min_models)]
        taus = [t for t in taus if np.isfinite(t)]
        per[h] = float(np.mean(taus)) if taus else math.nan
    return _psi(per), per


def _psi(per: dict[str, float]) -> float:
    defined = [v for v in per.values() if np.isfinite(v)]
    return float(np.mean(defined)) if defined else math.nan


def _varying_cells(codes: dict[str, np.ndarray], h: str, min_models: int) -> list[np.ndarray]:
    """The row indices of each cell of models that agree on every hyperparameter but `h`, with at
    least `min_models` models and two values of `h`, in the order of their codes."""
    key = np.zeros(len(codes[h]), dtype=np.int64)
    for o in codes:
        if o != h:
            key = key * (int(codes[o].max()) + 1) + codes[o]
    _, cell_of = np.unique(key, return_inverse=True)
    order = np.argsort(cell_of, kind="stable")
    cells = np.split(order, np.flatnonzero(np.diff(cell_of[order])) + 1)
    return [idx for idx in cells if idx.size >= min_models and np.unique(codes[h][idx]).size >= 2]


def granulated_kendalls(
    df: pd.DataFrame,
    measure_cols: Sequence[str],
    gap_col: str,
    hparams: Sequence[str],
    *,
    min_models: int = 2,
    measure_tol: float = 0.0,
    gap_tol: float = GAP_TOL,
) -> dict[str, tuple[float, dict[str, float]]]:
    """`granulated_kendall` (tau "a") of every measure in `measure_cols`: {measure: (Psi, {h:
    psi_h})}. Measures finite on the same models share their cells and the gap signs, and the
    tau of a cell is one array operation for all of them (integer sums: the same numbers)."""
    hparams = list(hparams)
    if not hparams:
        raise InputError("granulated_kendall needs at least one hyperparameter")
    d = _clean(df, measure_cols[0], gap_col, hparams, require_measure=False, extra=measure_cols[1:])
    shared: dict[bytes, list[str]] = {}
    for c in measure_cols:
        shared.setdefault(np.isfinite(d[c].to_numpy(float)).tobytes(), []).append(c)
    out = {}
    for key, cols in shared.items():
        rows = d[np.frombuffer(key, dtype=bool)].reset_index(drop=True)
        if len(rows) < 2:
            out.update({c: (math.nan, {h: math.nan for h in hparams}) for c in cols})
            continue
        per = _psi_per_hparam(rows, cols, gap_col, hparams, min_models, measure_tol, gap_tol)
        out.update({c: (_psi(per[c]), per[c]) for c in cols})
    return out


#: Sign-matrix elements computed at once by `_cell_taus` (a few measures of a large cell at a time).
_SIGN_CHUNK = 4_000_000


def _cell_taus(m: np.ndarray, g: np.ndarray, measure_tol: float, gap_tol: float) -> np.ndarray:
    """`tau_a` of each column of `m` [c, k] with `g` over one cell of c models."""
    c = g.size
    sg = _sign(g[:, None] - g[None, :], gap_tol)[:, :, None]
    step = max(1, _SIGN_CHUNK // (c * c))
    sums = [
        (_sign(m[:, None, a : a + step] - m[None, :, a : a + step], measure_tol).astype(np.int64) * sg).sum(axis=(0, 1))
        for a in range(0, m.shape[1], step)
    ]
    return np.concatenate(sums) / (c * (c - 1))


def _psi_per_hparam(
    d: pd.DataFrame,
    cols: list[str],
    gap_col: str,
    hparams: list[str],
    min_models: int,
    measure_tol: float,
    gap_tol: float,
) -> dict[str, dict[str, float]]:
    """{measure: {h: psi_h}} over the rows of `d` (all finite)."""
    m = d[cols].to_numpy(float)
    g = d[gap_col].to_numpy(float)
    codes = {h: _codes(d[h]) for h in hparams}
    per: dict[str, dict[str, float]] = {c: {} for c in cols}
    for h in hparams:
        taus = []
        for idx in _varying_cells(codes, h, min_models):
            taus.append(_cell_taus(m[idx], g[idx], measure_tol, gap_tol))
        # [measure, cell]: each row contiguous, summed as a list would be; no cell varies h: no column
        per_h = np.array(taus).T.copy() if taus else np.empty((len(cols), 0))
        for c, t in zip(cols, per_h, strict=True):
            t = t[np.isfinite(t)]
            per[c][h] = float(np.mean(t)) if t.size else math.nan
    return per


# ------------------------------------------------------------------------ model selection
@dataclass(frozen=True)
class Selection:
    """Pairwise model-selection outcome (the paper's Table 4).

    accuracy = n_correct / n_compared over the pairs not tied in the measure nor in the gap.
    n_ties = pairs tied in the measure or in the gap (excluded); n_ties_measure and
    n_ties_gap count each kind (a pair tied in both counts in both). n_pairs = n(n-1)/2.
    """

    accuracy: float
    n_correct: int
    n_compared: int
    n_ties: int
    n_ties_measure: int
    n_ties_gap: int
    n_pairs: int
    n_models: int


def selection_accuracy(
    measure, gap, higher_is_better: bool = True, *, measure_tol: float = 0.0, gap_tol: float = GAP_TOL
) -> Selection:
    """Over all unordered pairs of models, the fraction where the model the measure prefers has
    the smaller gap (the preferred model has the higher measure when `higher_is_better`).

    Pairs tied in the measure (|diff| <= measure_tol) or in the gap (|diff| <= gap_tol) are
    counted separately and excluded from the fraction. Non-finite rows are dropped. The
    accuracy is NaN when no pair is left.
    """
    m, g = _finite_pairs(measure, gap)
    n = m.size
    correct = compared = tie_any = tie_m = tie_g = 0
    sgn = 1 if higher_is_better else -1
    block = max(1, 4_000_000 // max(n, 1))
    for s in range(0, n, block):
        rows = np.arange(s, min(n, s + block))
        dm = m[rows, None] - m[None, :]
        dg = g[rows, None] - g[None, :]
        upper = np.arange(n)[None, :] > rows[:, None]
        tm = (np.abs(dm) <= measure_tol) & upper
        tg = (np.abs(dg) <= gap_tol) & upper
        tie_m += int(tm.sum())
        tie_g += int(tg.sum())
        tie = tm | tg
        tie_any += int(tie.sum())
        ok = upper & ~tie
        compared += int(ok.sum())
        correct += int((ok & (sgn * np.sign(dm) * np.sign(dg) < 0)).sum())
    pairs = n * (n - 1) // 2
    acc = correct / compared if compared else math.nan
    return Selection(acc, correct, compared, tie_any, tie_m, tie_g, pairs, n)
