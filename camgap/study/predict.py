"""Predict the generalization gap of a new model from one measure (IoU by default), by
ordinary least squares on a reference model set.

Model: gap_i = a + b * x_i + e_i, e_i ~ N(0, sigma^2) independent. With n reference models,

    b = Sxy / Sxx,  a = ybar - b * xbar,   Sxx = sum (x_i - xbar)^2,  Sxy = sum (x_i - xbar)(y_i - ybar)
    s^2 = sum (y_i - a - b x_i)^2 / (n - 2)

and the (1 - alpha) prediction interval for a new model with measure x0 is

    yhat0 +- t_{1 - alpha/2, n - 2} * s * sqrt(1 + 1/n + (x0 - xbar)^2 / Sxx).

A value outside [min x_i, max x_i] of the reference set is an extrapolation: the result
carries `outside_range = True` and a warning message (the interval assumes the linear fit
holds there, which the reference set cannot show). Given the model's training accuracy, the
gap and its interval are clipped to what that accuracy allows. Pure functions; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as _st

from camgap.errors import InputError


@dataclass(frozen=True)
class GapFit:
    """OLS fit gap = intercept + slope * measure on a reference set."""

    intercept: float
    slope: float
    n: int
    resid_std: float  # s, with n - 2 degrees of freedom
    x_mean: float
    sxx: float
    x_min: float
    x_max: float
    r: float  # Pearson r of the reference set
    measure: str = "iou"

    @property
    def dof(self) -> int:
        return self.n - 2


@dataclass(frozen=True)
class GapPrediction:
    measure_value: float
    gap: float  # predicted gap (percentage points)
    low: float
    high: float
    confidence: float
    se: float  # s * sqrt(1 + 1/n + (x0 - xbar)^2 / Sxx)
    outside_range: bool
    warning: str | None
    clipped: bool = False  # gap or interval moved into `possible`
    possible: tuple[float, float] | None = None  # the gaps the model's training accuracy allows

    def text(self) -> str:
        s = (
            f"predicted gap {self.gap:.2f} pp, {round(100 * self.confidence)}% prediction interval "
            f"[{self.low:.2f}, {self.high:.2f}] pp"
        )
        if self.clipped and self.possible is not None:
            s += f" (clipped to the possible range [{self.possible[0]:.2f}, {self.possible[1]:.2f}] pp)"
        return s + (f"\nWARNING: {self.warning}" if self.warning else "")


def possible_gap_range(train_acc: float) -> tuple[float, float]:
    """The gaps (pp) a model with this training accuracy can have: gap = 100 * (train_acc - test_acc)
    with test_acc in [0, 1], so [100 * train_acc - 100, 100 * train_acc]."""
    acc = float(train_acc)
    if not (math.isfinite(acc) and 0.0 <= acc <= 1.0):
        raise InputError(f"training accuracy must lie in [0, 1], got {train_acc}")
    return 100.0 * acc - 100.0, 100.0 * acc


def fit_gap(measure, gap, *, name: str = "iou") -> GapFit:
    """OLS of `gap` on `measure` over the reference models (non-finite pairs dropped). Needs at
    least 3 models and a non-constant measure."""
    x = np.asarray(measure, dtype=float).ravel()
    y = np.asarray(gap, dtype=float).ravel()
    if x.shape != y.shape:
        raise InputError(f"measure and gap differ in length: {x.size} vs {y.size}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = x.size
    if n < 3:
        raise InputError(f"need at least 3 reference models with a finite {name} and gap, got {n}")
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    if sxx <= 0:
        raise InputError(f"{name} is constant over the reference set; no fit possible")
    sxy = float(((x - xm) * (y - ym)).sum())
    b = sxy / sxx
    a = ym - b * xm
    resid = y - (a + b * x)
    s = math.sqrt(float((resid**2).sum()) / (n - 2))
    syy = float(((y - ym) ** 2).sum())
    r = sxy / math.sqrt(sxx * syy) if syy > 0 else math.nan
    return GapFit(float(a), float(b), int(n), s, float(xm), sxx, float(x.min()), float(x.max()), float(r), name)


def predict_gap(
    fit: GapFit, value: float, *, confidence: float = 0.95, train_acc: float | None = None
) -> GapPrediction:
    """Predicted gap for a model whose measure is `value`, with the t prediction interval;
    flags (and explains) a value outside the reference set's range. With the model's
    `train_acc`, the gap and the interval are clipped to the gaps it can have (a linear fit
    knows no bounds and can predict a test accuracy above 100% or below 0%)."""
    if not 0 < confidence < 1:
        raise InputError(f"confidence must lie in (0, 1), got {confidence}")
    x0 = float(value)
    if not math.isfinite(x0):
        raise InputError(f"the {fit.measure} of the model is not finite ({value})")
    yhat = fit.intercept + fit.slope * x0
    se = fit.resid_std * math.sqrt(1.0 + 1.0 / fit.n + (x0 - fit.x_mean) ** 2 / fit.sxx)
    t = float(_st.t.ppf(0.5 + confidence / 2, fit.dof))
    outside = not (fit.x_min <= x0 <= fit.x_max)
    warning = None
    if outside:
        warning = (
            f"{fit.measure} = {x0:.4g} lies outside the reference set's range "
            f"[{fit.x_min:.4g}, {fit.x_max:.4g}] ({fit.n} models): the prediction "
            f"extrapolates the linear fit and may be unreliable"
        )
    low, high = yhat - t * se, yhat + t * se
    if train_acc is None:
        return GapPrediction(x0, yhat, low, high, confidence, se, outside, warning)
    lo, hi = possible_gap_range(train_acc)
    bounded = tuple(min(max(v, lo), hi) for v in (yhat, low, high))
    return GapPrediction(
        x0, *bounded, confidence, se, outside, warning, clipped=bounded != (yhat, low, high), possible=(lo, hi)
    )


def fit_from_wide(wide: pd.DataFrame, measure_col: str, *, gap_col: str = "gap", trained_only: bool = True) -> GapFit:
    """`fit_gap` on the columns of a wide study table (see `tables.wide_table`), by default
    over the trained models only."""
    from .tables import trained_mask

    d = wide[trained_mask(wide)] if trained_only else wide
    return fit_gap(d[measure_col], d[gap_col], name=measure_col)
