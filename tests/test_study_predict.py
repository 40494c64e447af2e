"""Gap prediction: OLS fit and the t prediction interval against a hand-worked case."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from camgap.study.predict import fit_from_wide, fit_gap, predict_gap

T_975_2 = 4.302652729911275  # t quantile, 2 degrees of freedom, 0.975 (tables)


def test_fit_and_interval_by_hand():
    # x = 0..3, y = 1, 3, 2, 5: xbar 1.5, Sxx 5, Sxy 5.5 -> slope 1.1, intercept 1.1;
    # residuals -0.1, 0.8, -1.3, 0.6 -> SSE 2.7, s^2 = 1.35 (2 dof)
    f = fit_gap([0, 1, 2, 3], [1, 3, 2, 5])
    assert (f.slope, f.intercept) == (pytest.approx(1.1), pytest.approx(1.1))
    assert f.resid_std == pytest.approx(math.sqrt(1.35)) and f.dof == 2 and f.sxx == pytest.approx(5)
    # at xbar: se = s * sqrt(1 + 1/4)
    p = predict_gap(f, 1.5)
    se = math.sqrt(1.35 * 1.25)
    assert p.gap == pytest.approx(2.75) and p.se == pytest.approx(se)
    assert (p.low, p.high) == (pytest.approx(2.75 - T_975_2 * se), pytest.approx(2.75 + T_975_2 * se))
    assert not p.outside_range and p.warning is None
    # at x0 = 3: se = s * sqrt(1 + 1/4 + 1.5^2 / 5)
    p = predict_gap(f, 3.0)
    se = math.sqrt(1.35 * (1.25 + 2.25 / 5))
    assert p.gap == pytest.approx(4.4) and p.high - p.gap == pytest.approx(T_975_2 * se)


def test_matches_polyfit_and_warns_outside_range():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 0.6, 50)
    y = 60 - 90 * x + rng.normal(0, 3, 50)
    f = fit_gap(x, y)
    b, a = np.polyfit(x, y, 1)
    assert (f.slope, f.intercept) == (pytest.approx(b), pytest.approx(a))
    assert f.r == pytest.approx(np.corrcoef(x, y)[0, 1])
    p = predict_gap(f, 0.9)
    assert p.outside_range and "outside the reference set's range" in p.warning
    assert "WARNING" in p.text()
    # extrapolation widens the interval
    assert p.se > predict_gap(f, float(x.mean())).se
    p90 = predict_gap(f, 0.3, confidence=0.9)
    p95 = predict_gap(f, 0.3)
    assert p90.high - p90.low < p95.high - p95.low


def test_interval_coverage_by_simulation():
    rng = np.random.default_rng(1)
    x = np.linspace(0, 1, 12)
    hits = 0
    trials = 1000
    for _ in range(trials):
        f = fit_gap(x, 5 + 10 * x + rng.normal(0, 2, x.size))
        p = predict_gap(f, 0.3)
        new = 5 + 10 * 0.3 + rng.normal(0, 2)
        hits += p.low <= new <= p.high
    assert 0.93 <= hits / trials <= 0.97


def test_bad_input():
    with pytest.raises(ValueError, match="at least 3"):
        fit_gap([1, 2, np.nan], [1, 2, 3])
    with pytest.raises(ValueError, match="constant"):
        fit_gap([1, 1, 1], [1, 2, 3])
    f = fit_gap([0, 1, 2], [0, 1, 3])
    with pytest.raises(ValueError, match="not finite"):
        predict_gap(f, float("nan"))
    with pytest.raises(ValueError, match="confidence"):
        predict_gap(f, 1.0, confidence=1.5)


def test_fit_from_wide_uses_trained_models():
    wide = pd.DataFrame(
        {"IoU": [0.1, 0.2, 0.3, 0.4, 0.9], "gap": [40, 30, 20, 10, 99.0], "trained": [True, True, True, True, False]}
    )
    f = fit_from_wide(wide, "IoU")
    assert f.n == 4 and f.slope == pytest.approx(-100) and f.measure == "IoU"


def test_prediction_clipped_to_the_possible_gaps():
    """gap = 100 * (train_acc - test_acc), test_acc in [0, 1]: with train acc 0.6 the gap lies in
    [-40, 60]. A fit gap = 200 - 100 * IoU (+-1) predicts ~180 at IoU 0.2: above anything possible."""
    f = fit_gap([0.1, 0.2, 0.3, 0.4], [191, 179, 171, 159])
    raw = predict_gap(f, 0.2)
    assert raw.gap > 60 and raw.low > 60 and not raw.clipped and raw.possible is None
    p = predict_gap(f, 0.2, train_acc=0.6)
    assert (p.gap, p.low, p.high) == (60.0, 60.0, 60.0)
    assert p.clipped and p.possible == (-40.0, 60.0) and p.se == raw.se
    assert (
        "predicted gap 60.00 pp, 95% prediction interval [60.00, 60.00] pp "
        "(clipped to the possible range [-40.00, 60.00] pp)" in p.text()
    )
    # below: a fit that predicts a test accuracy above 100% for a model with train acc 0.95
    g = fit_gap([0.1, 0.2, 0.3, 0.4], [10.0, 0.0, -8.0, -20.0])
    low = predict_gap(g, 0.25, train_acc=0.95)
    raw = predict_gap(g, 0.25)
    assert raw.low < -5 < raw.high
    assert low.clipped and low.low == pytest.approx(-5.0) and low.high == raw.high and low.gap == max(raw.gap, -5.0)
    # inside: nothing moves, no note
    inside = predict_gap(g, 0.2, train_acc=0.9)
    assert not inside.clipped and inside.possible == (pytest.approx(-10.0), 90.0)
    assert "clipped" not in inside.text()
    with pytest.raises(ValueError, match=r"training accuracy must lie in \[0, 1\], got 1.5"):
        predict_gap(g, 0.2, train_acc=1.5)
