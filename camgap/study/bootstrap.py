"""Seeded percentile bootstrap intervals of a correlation over models (pairs resampled together).

The resamples are drawn exactly as `scipy.stats.bootstrap(paired=True, vectorized=True)` draws
them (`numpy.random.default_rng(seed).integers(0, n, (batch, n))` per batch of
`2_000_000 // n` resamples), so an interval is scipy's percentile interval for the same seed.
The Pearson r of every resample comes from the multiplicity matrix of the draws (how often each
model is in each resample) times a few per-model columns: one matrix product for many measures
over the same models (`pearson_intervals`), instead of gathering n values per resample and
measure. Resamples that are (nearly) constant fall back to the gathered two-pass computation, so
they are undefined (NaN) or valued exactly as there; every other r agrees with the two-pass
value to about 1e-15.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import stats as _st

from camgap.errors import InputError

from .stats import MIN_N, _call, _degenerate, _finite_pairs

#: Elements of one batch of resampled indices (scipy's `batch` as `bootstrap_ci` sets it).
_BATCH_ELEMENTS = 2_000_000
#: A resample whose centred sum of squares is below this fraction of its raw one loses too many
#: digits to cancellation in the moment form; it is computed from the gathered values instead.
_CANCEL = 1e-3


def resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """[n_resamples, n] model indices, the draws of `scipy.stats.bootstrap(paired=True)` with
    `batch=max(1, 2_000_000 // n)` and `rng=numpy.random.default_rng(seed)`."""
    rng = np.random.default_rng(seed)
    batch = max(1, _BATCH_ELEMENTS // n)
    parts = [rng.integers(0, n, (min(batch, n_resamples - k), n)) for k in range(0, n_resamples, batch)]
    return np.concatenate(parts)


def _multiplicity(idx: np.ndarray) -> np.ndarray:
    """[B, n] how often each model is drawn in each resample (float, for the matrix product)."""
    b, n = idx.shape
    flat = (np.arange(b, dtype=np.int64)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(float)


def _rowwise_pearson(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    xm = xs - xs.mean(axis=1, keepdims=True)
    ym = ys - ys.mean(axis=1, keepdims=True)
    den = np.sqrt((xm * xm).sum(axis=1) * (ym * ym).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xm * ym).sum(axis=1) / den
    r[~(den > 0)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _rowwise(stat: str | Callable) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    if stat == "pearson":
        return _rowwise_pearson
    if stat == "spearman":
        return lambda xs, ys: _rowwise_pearson(_st.rankdata(xs, axis=1), _st.rankdata(ys, axis=1))
    fn = {"kendall": lambda a, b: _call(_st.kendalltau, a, b)[0]}.get(stat, stat)  # type: ignore[arg-type]
    if not callable(fn):
        raise InputError(f"unknown statistic {stat!r}: pearson, spearman, kendall or a callable")

    def loop(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        out = np.empty(xs.shape[0])
        for k in range(xs.shape[0]):
            a, b = xs[k], ys[k]
            out[k] = np.nan if np.ptp(a) == 0 or np.ptp(b) == 0 else fn(a, b)
        return out

    return loop


def _resampled_pearson(xs: np.ndarray, y: np.ndarray, idx: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[k, B] Pearson r of each column of `xs` [n, k] with `y` in each resample. Moments about
    the full sample's means (so the moment form keeps its digits), from one matrix product."""
    n, k = xs.shape
    xc = xs - xs.mean(axis=0)
    yc = y - y.mean()
    s = counts @ np.column_stack([xc, xc * xc, xc * yc[:, None], yc, yc * yc])
    sx, sxx, sxy = s[:, :k], s[:, k : 2 * k], s[:, 2 * k : 3 * k]
    sy, syy = s[:, 3 * k : 3 * k + 1], s[:, 3 * k + 1 :]
    vx, vy = sxx - sx * sx / n, syy - sy * sy / n
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip((sxy - sx * sy / n) / np.sqrt(vx * vy), -1.0, 1.0)
    close = (vx <= _CANCEL * sxx) | (vy <= _CANCEL * syy)
    for b, j in zip(*np.nonzero(close)):
        r[b, j] = _rowwise_pearson(xs[idx[b], j][None], y[idx[b]][None])[0]
    return r.T


def _interval(vals: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile interval of one bootstrap distribution, its undefined resamples left out."""
    if not np.isfinite(vals).any():
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2
    lo, hi = _st.quantile(vals, [alpha, 1.0 - alpha], nan_policy="omit")
    return float(lo), float(hi)


def _check(confidence: float, n_resamples: int) -> None:
    if not 0 < confidence < 1:
        raise InputError(f"confidence must lie in (0, 1), got {confidence}")
    if int(n_resamples) < 1:
        raise InputError(f"n_resamples must be >= 1, got {n_resamples}")


def bootstrap_ci(
    x,
    y,
    stat: str | Callable = "pearson",
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    min_n: int = MIN_N,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a correlation over models (`scipy.stats.bootstrap`'s).

    Models are resampled as (x_i, y_i) pairs `n_resamples` times with
    `numpy.random.default_rng(seed)` (`resample_indices`); the interval is the (1-c)/2 and
    (1+c)/2 quantiles of the resampled statistic. Resamples where the statistic is undefined (a
    resample with a constant x or y, likely with a handful of models) are left out of the
    quantiles rather than making the whole interval NaN; without such resamples this is scipy's
    percentile interval. Returns (NaN, NaN) below `min_n` pairs or for constant input. Same data
    + same seed -> the same interval.
    """
    x, y = _finite_pairs(x, y)
    if _degenerate(x, y, min_n):
        return math.nan, math.nan
    _check(confidence, n_resamples)
    if stat == "pearson":
        return pearson_intervals(x[:, None], y, n_resamples=n_resamples, confidence=confidence, seed=seed)[0]
    fn = _rowwise(stat)
    idx = resample_indices(x.size, int(n_resamples), seed)
    return _interval(fn(x[idx], y[idx]), confidence)


def pearson_intervals(
    xs: np.ndarray, y: np.ndarray, *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> list[tuple[float, float]]:
    """`bootstrap_ci(xs[:, j], y, "pearson")` of every column j of `xs` [n, k] over the same n
    models, all finite and each column non-degenerate (the caller checks): one set of draws and
    one matrix product for all columns."""
    _check(confidence, n_resamples)
    xs = np.asarray(xs, dtype=float)
    y = np.asarray(y, dtype=float)
    idx = resample_indices(y.size, int(n_resamples), seed)
    r = _resampled_pearson(xs, y, idx, _multiplicity(idx))
    return [_interval(row, confidence) for row in r]
