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
gap and its interval are clipped to what that accuracy allows.

Calibration: `fit_gap` also leaves each reference model out in turn (closed form: the fit
without model i predicts it with residual e_i / (1 - h_i), h_i its leverage, and its interval's
standard error is s_(i) / sqrt(1 - h_i)), so `GapFit.loo_coverage` is the share of reference
models the t interval of the fit without them covers. Where it falls short of the nominal
confidence by more than CALIBRATION_SLACK (95 % -> below 90 %), over at least MIN_N models,
`predict_gap` uses the split-conformal interval yhat0 +- q instead, q the
ceil((m + 1)(1 - alpha))-th smallest of the m absolute leave-one-out residuals (infinite when
that exceeds m), and says so (`GapPrediction.interval_kind`: "t" or "conformal").

A fit can be computed from any 3 points and still mean nothing; each prediction carries a
warning when the fit rests on fewer than MIN_N models, when its slope is not negative (the
paper's relation: a higher IoU, a smaller gap), when |r| < MIN_ABS_R, and when the interval
covers at least MAX_COVERAGE of the gaps the model can have. `ReferenceSet.mismatches` names
what differs between the new model and the reference set (architecture, input size, target
layer, dataset). Pure functions; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as _st

from camgap.errors import InputError

MIN_N = 10  # fewer reference models: slope and interval are rough
MIN_ABS_R = 0.3  # a weaker correlation: the measure explains little of the gap
MAX_COVERAGE = 0.9  # an interval covering this share of the possible gaps says next to nothing
GAP_SPAN = 100.0  # the possible gaps of any one model span 100 pp (test accuracy 0..1)
CALIBRATION_SLACK = 0.05  # LOO coverage below confidence - this: the t interval is replaced
INTERVAL_KINDS = ("t", "conformal")


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
    #: per reference model whose leave-one-out fit is defined: |e_(i)|, the absolute residual of
    #: the fit without it, and |e_(i)| sqrt(1 - h_i) / s_(i), what its t interval must reach
    loo_abs_resid: tuple[float, ...] = ()
    loo_t: tuple[float, ...] = ()

    @property
    def dof(self) -> int:
        return self.n - 2

    def loo_coverage(self, confidence: float = 0.95) -> float:
        """Share of the reference models that the `confidence` t prediction interval of the fit
        without them covers (NaN when no leave-one-out fit is defined: fewer than 4 models)."""
        if not self.loo_t:
            return math.nan
        t = float(_st.t.ppf(0.5 + confidence / 2, self.n - 3))
        return float(np.mean(np.asarray(self.loo_t) <= t))

    def conformal_halfwidth(self, confidence: float = 0.95) -> float:
        """The split-conformal half-width: the ceil((m + 1) * confidence)-th smallest of the m
        absolute leave-one-out residuals (inf when that exceeds m: too few models)."""
        m = len(self.loo_abs_resid)
        k = math.ceil((m + 1) * confidence - 1e-12)  # the guard keeps (m + 1) * c = integer exact
        return math.inf if m == 0 or k > m else float(sorted(self.loo_abs_resid)[k - 1])

    def conformal_coverage(self, confidence: float = 0.95) -> float:
        """Share of the absolute leave-one-out residuals within `conformal_halfwidth`."""
        if not self.loo_abs_resid:
            return math.nan
        return float(np.mean(np.asarray(self.loo_abs_resid) <= self.conformal_halfwidth(confidence)))

    def interval_kind(self, confidence: float = 0.95) -> str:
        """ "conformal" when the t interval's leave-one-out coverage falls short of `confidence`
        by more than CALIBRATION_SLACK, else "t". Below MIN_N models the coverage is too coarse
        to decide on (one miss in 4 is 75 %) and the t interval stays, with the fit's warning
        that it is rough."""
        if len(self.loo_t) < MIN_N:
            return "t"
        return "conformal" if self.loo_coverage(confidence) < confidence - CALIBRATION_SLACK else "t"

    def warnings(self) -> list[str]:
        """What makes this fit a weak basis for a prediction, one sentence each ([] if nothing)."""
        notes = []
        if self.n < MIN_N:
            notes.append(
                f"the fit rests on {self.n} reference models (fewer than {MIN_N}): its slope and interval are rough"
            )
        if not self.slope < 0:
            notes.append(
                f"the fit's slope is {self.slope:+.4g} pp per unit of {self.measure}, not negative: the paper's "
                f"relation (a higher {self.measure}, a smaller gap) does not hold in this reference set"
            )
        if not abs(self.r) >= MIN_ABS_R:  # NaN too: a constant gap
            r = "undefined (the gap is constant)" if math.isnan(self.r) else f"{self.r:+.3f}"
            notes.append(
                f"r = {r} over the reference set (|r| < {MIN_ABS_R:g}): {self.measure} explains little of the gap"
            )
        return notes


@dataclass(frozen=True)
class GapPrediction:
    measure_value: float
    gap: float  # predicted gap (percentage points)
    low: float
    high: float
    confidence: float
    se: float  # s * sqrt(1 + 1/n + (x0 - xbar)^2 / Sxx)
    outside_range: bool
    warnings: tuple[str, ...] = ()  # the fit's, then this prediction's (see the module's docstring)
    clipped: bool = False  # gap or interval moved into `possible`
    possible: tuple[float, float] | None = None  # the gaps the model's training accuracy allows
    coverage: float = math.nan  # share of the possible gaps (GAP_SPAN pp) the interval covers
    interval_kind: str = "t"  # "t" or "conformal" (see the module's docstring)
    loo_coverage: float = math.nan  # the t interval's leave-one-out coverage over the reference set

    def headline(self) -> str:
        """The prediction and its interval in one line."""
        s = (
            f"predicted gap {self.gap:.2f} pp, {round(100 * self.confidence)}% prediction interval "
            f"[{self.low:.2f}, {self.high:.2f}] pp"
        )
        if self.interval_kind == "conformal":
            s += (
                f" (split-conformal: the t interval covered {100 * self.loo_coverage:.0f}% of the reference "
                "models left out)"
            )
        if self.clipped and self.possible is not None:
            s += f" (clipped to the possible range [{self.possible[0]:.2f}, {self.possible[1]:.2f}] pp)"
        return s

    def text(self) -> str:
        """The headline, then one WARNING line each."""
        return "\n".join([self.headline(), *(f"WARNING: {w}" for w in self.warnings)])


@dataclass(frozen=True)
class DataInfo:
    """What identifies a dataset: its folder, class names and number of training images
    (None: not known)."""

    root: str | None
    classes: tuple[str, ...] | None
    n_train: int | None

    def describe(self) -> str:
        parts = [self.root or "an unrecorded folder"]
        if self.classes is not None:
            parts.append(f"{len(self.classes)} class{'' if len(self.classes) == 1 else 'es'}")
        if self.n_train is not None:
            parts.append(f"{self.n_train} training images")
        return ", ".join(parts)


@dataclass(frozen=True)
class ReferenceSet:
    """The reference models a fit was made on: their fit and what the new model should share
    with them for the fit to apply (each a tuple of the values its models have)."""

    fit: GapFit
    archs: tuple[str, ...]
    input_sizes: tuple[int, ...]
    target_layers: tuple[str, ...]
    data: DataInfo

    def mismatches(self, arch: str, input_size: int, target_layer: str, data: DataInfo) -> list[str]:
        """One sentence for each of architecture, input size, target layer and dataset in which
        the new model differs from the reference set's models."""
        notes = []
        for what, mine, theirs, why in (
            ("architecture", arch, self.archs, "the relation of IoU and gap may differ between architectures"),
            ("input size", input_size, self.input_sizes, "its CAM maps have another resolution"),
            ("target layer", target_layer, self.target_layers, "its CAM is taken elsewhere"),
        ):
            if theirs and mine not in theirs:
                notes.append(
                    f"the model's {what} {mine} is not the reference set's ({', '.join(map(str, theirs))}): "
                    f"{why}, so the fit may not apply"
                )
        if not _same_data(self.data, data):
            notes.append(
                f"the model is scored on {data.describe()}, the reference set was trained on "
                f"{self.data.describe()}: the fit may not apply to other data"
            )
        return notes


def _same_data(a: DataInfo, b: DataInfo) -> bool:
    """Same classes and number of training images where both are known (the same data in
    another folder is the same), else the same folder."""
    if a.classes is not None and b.classes is not None and a.n_train is not None and b.n_train is not None:
        return tuple(a.classes) == tuple(b.classes) and a.n_train == b.n_train
    return a.root is not None and a.root == b.root


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
    loo_abs, loo_t = _leave_one_out(x, resid, xm, sxx)
    return GapFit(
        float(a), float(b), int(n), s, float(xm), sxx, float(x.min()), float(x.max()), float(r), name, loo_abs, loo_t
    )


def _leave_one_out(
    x: np.ndarray, resid: np.ndarray, xm: float, sxx: float
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(|e_(i)|, |e_(i)| sqrt(1 - h_i) / s_(i)) of every model whose leave-one-out fit is defined
    (n >= 4 and the other models' measure not constant). With leverage h_i = 1/n + (x_i -
    xbar)^2 / Sxx, the fit without i has residual e_(i) = e_i / (1 - h_i) at x_i, residual
    variance s_(i)^2 = (SSE - e_i^2 / (1 - h_i)) / (n - 3), and prediction standard error
    s_(i) / sqrt(1 - h_i) there (1 + 1/(n-1) + (x_i - xbar_(i))^2 / Sxx_(i) = 1 / (1 - h_i))."""
    n = x.size
    if n < 4:
        return (), ()
    h = 1.0 / n + (x - xm) ** 2 / sxx
    ok = h < 1.0 - 1e-12
    h, e = h[ok], resid[ok]
    e_loo = e / (1.0 - h)
    s_loo = np.sqrt(np.maximum(float((resid**2).sum()) - e**2 / (1.0 - h), 0.0) / (n - 3))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(e_loo) * np.sqrt(1.0 - h) / s_loo
    z[s_loo == 0] = np.where(e_loo[s_loo == 0] == 0, 0.0, np.inf)  # a perfect fit of the others
    return tuple(map(float, np.abs(e_loo))), tuple(map(float, z))


def predict_gap(
    fit: GapFit, value: float, *, confidence: float = 0.95, train_acc: float | None = None
) -> GapPrediction:
    """Predicted gap for a model whose measure is `value`, with the t prediction interval, or
    the split-conformal one where the fit's leave-one-out coverage says so (`GapFit.interval_kind`);
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
    kind = fit.interval_kind(confidence)
    half = fit.conformal_halfwidth(confidence) if kind == "conformal" else se * _st.t.ppf(0.5 + confidence / 2, fit.dof)
    outside = not (fit.x_min <= x0 <= fit.x_max)
    notes = fit.warnings()
    if outside:
        notes.append(
            f"{fit.measure} = {x0:.4g} lies outside the reference set's range "
            f"[{fit.x_min:.4g}, {fit.x_max:.4g}] ({fit.n} models): the prediction "
            f"extrapolates the linear fit and may be unreliable"
        )
    raw = (yhat, yhat - half, yhat + half)
    possible = possible_gap_range(train_acc) if train_acc is not None else None
    gap, low, high = tuple(min(max(v, possible[0]), possible[1]) for v in raw) if possible else raw
    coverage = min(high - low, GAP_SPAN) / GAP_SPAN  # clipped: the share of `possible` it covers
    if coverage >= MAX_COVERAGE:
        where = f" [{possible[0]:.2f}, {possible[1]:.2f}] pp" if possible else f" (a span of {GAP_SPAN:g} pp)"
        notes.append(
            f"the {round(100 * confidence)}% prediction interval covers {100 * coverage:.0f}% of the gaps "
            f"this model can have{where}: the prediction says next to nothing"
        )
    return GapPrediction(
        x0,
        gap,
        low,
        high,
        confidence,
        se,
        outside,
        tuple(notes),
        (gap, low, high) != raw,
        possible,
        coverage,
        kind,
        fit.loo_coverage(confidence),
    )


def fit_from_wide(wide: pd.DataFrame, measure_col: str, *, gap_col: str = "gap", trained_only: bool = True) -> GapFit:
    """`fit_gap` on the columns of a wide study table (see `tables.wide_table`), by default
    over the trained models only."""
    from .options import trained_mask

    d = wide[trained_mask(wide)] if trained_only else wide
    return fit_gap(d[measure_col], d[gap_col], name=measure_col)
