"""Gap prediction: OLS fit and the t prediction interval against a hand-worked case."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from camgap.study.predict import DataInfo, ReferenceSet, fit_from_wide, fit_gap, predict_gap

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
    assert not p.outside_range
    # 4 models and a positive slope: both said; the interval (+-5.6 pp) is narrow enough
    assert p.warnings == (
        "the fit rests on 4 reference models (fewer than 10): its slope and interval are rough",
        "the fit's slope is +1.1 pp per unit of iou, not negative: the paper's relation (a higher iou, "
        "a smaller gap) does not hold in this reference set",
    )
    assert p.coverage == pytest.approx(2 * T_975_2 * se / 100)
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
    assert p.outside_range and p.warnings == (
        f"iou = 0.9 lies outside the reference set's range [{x.min():.4g}, {x.max():.4g}] (50 models): "
        "the prediction extrapolates the linear fit and may be unreliable",
    )
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


N_WARNING = "the fit rests on {n} reference models (fewer than 10): its slope and interval are rough"


def _line(n: int, intercept: float, slope: float, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """n points on a line over x in [0, 1], with residuals +-noise alternating (no randomness)."""
    x = np.linspace(0.0, 1.0, n)
    return x, intercept + slope * x + noise * np.where(np.arange(n) % 2, 1.0, -1.0)


def test_a_sound_fit_has_no_warnings_and_nine_models_are_too_few():
    x, y = _line(10, 50.0, -40.0, 1.0)
    f = fit_gap(x, y)
    assert f.slope < 0 and abs(np.corrcoef(x, y)[0, 1]) > 0.9
    p = predict_gap(f, 0.5, train_acc=0.9)
    assert f.warnings() == [] and p.warnings == () and p.coverage < 0.1
    f9 = fit_gap(x[:9], y[:9])
    assert f9.warnings() == [N_WARNING.format(n=9)] and predict_gap(f9, 0.5).warnings == (N_WARNING.format(n=9),)


@pytest.mark.parametrize("slope", [30.0, 0.0])
def test_a_slope_that_is_not_negative(slope):
    x = np.linspace(0.0, 1.0, 12)
    y = 20.0 + slope * x  # exact: r = +1 (or undefined for a constant gap)
    f = fit_gap(x, y)
    assert f.slope == pytest.approx(slope, abs=1e-9)
    notes = f.warnings()
    assert notes[0] == (
        f"the fit's slope is {f.slope:+.4g} pp per unit of iou, not negative: the paper's relation "
        "(a higher iou, a smaller gap) does not hold in this reference set"
    )
    if slope:
        assert len(notes) == 1
    else:  # a constant gap: no correlation to speak of either
        assert notes[1:] == [
            "r = undefined (the gap is constant) over the reference set (|r| < 0.3): iou explains little of the gap"
        ]


def test_a_weak_correlation():
    x, y = _line(12, 30.0, -6.0, 5.0)
    r = np.corrcoef(x, y)[0, 1]
    assert -0.3 < r < 0  # the oracle: numpy's Pearson r
    f = fit_gap(x, y)
    assert f.slope < 0 and f.r == pytest.approx(r)
    assert f.warnings() == [f"r = {r:+.3f} over the reference set (|r| < 0.3): iou explains little of the gap"]


def test_an_interval_that_covers_nearly_every_possible_gap():
    x, y = _line(12, 200.0, -400.0, 40.0)
    f = fit_gap(x, y)
    assert f.warnings() == [] and f.r < -0.9
    p = predict_gap(f, 0.5, train_acc=0.9)  # possible gaps [-10, 90]; raw interval about 0 +- 98
    raw = predict_gap(f, 0.5)
    assert raw.low < -10 and raw.high > 90 and (p.low, p.high) == (pytest.approx(-10.0), 90.0)
    assert p.coverage == 1.0
    assert p.warnings == (
        "the 95% prediction interval covers 100% of the gaps this model can have [-10.00, 90.00] pp: "
        "the prediction says next to nothing",
    )
    # without the training accuracy: the width against the 100 pp any one model's gaps span
    assert raw.coverage == 1.0 and "a span of 100 pp" in raw.warnings[0]
    # a narrower interval: its share of the possible range, no warning below 90%
    tight = predict_gap(fit_gap(*_line(12, 200.0, -400.0, 10.0)), 0.5, train_acc=0.9)
    assert tight.coverage == pytest.approx((tight.high - tight.low) / 100) and tight.coverage < 0.9
    assert tight.warnings == ()


def test_the_issue_fit_four_models_and_a_positive_slope():
    """The issue's report: 4 reference models, a positive slope, an interval over every possible
    gap, and no warning. Each is now said, in this order."""
    x = [0.26, 0.27, 0.28, 0.30]
    y = [0.0, 40.0, 35.0, 95.0]
    f = fit_gap(x, y)
    assert f.slope > 0
    p = predict_gap(f, 0.28, train_acc=0.95)
    assert [w.split(" ")[:3] for w in p.warnings] == [
        ["the", "fit", "rests"],
        ["the", "fit's", "slope"],
        ["the", "95%", "prediction"],
    ]
    assert "WARNING: the fit rests on 4 reference models" in p.text()
    assert p.text().count("WARNING: ") == 3


def test_what_differs_from_the_reference_set():
    ref = ReferenceSet(
        fit_gap([0, 1, 2], [2, 1, 0]), ("small_resnet10",), (32,), ("layer4",), DataInfo("/d", ("a", "b"), 80)
    )
    assert ref.mismatches("small_resnet10", 32, "layer4", DataInfo("/d", ("a", "b"), 80)) == []
    # the same classes and images in another folder: the same data
    assert ref.mismatches("small_resnet10", 32, "layer4", DataInfo("/copy", ("a", "b"), 80)) == []
    notes = ref.mismatches("resnet18", 224, "layer3", DataInfo("/d", ("a", "b"), 79))
    assert notes == [
        "the model's architecture resnet18 is not the reference set's (small_resnet10): the relation of IoU and "
        "gap may differ between architectures, so the fit may not apply",
        "the model's input size 224 is not the reference set's (32): its CAM maps have another resolution, so "
        "the fit may not apply",
        "the model's target layer layer3 is not the reference set's (layer4): its CAM is taken elsewhere, so the "
        "fit may not apply",
        "the model is scored on /d, 2 classes, 79 training images, the reference set was trained on /d, 2 "
        "classes, 80 training images: the fit may not apply to other data",
    ]
    # a set that records only its folder: compared by folder; one that records nothing: said
    old = ReferenceSet(ref.fit, ("small_resnet10",), (32,), ("layer4",), DataInfo("/d", None, None))
    assert old.mismatches("small_resnet10", 32, "layer4", DataInfo("/d", ("x",), 3)) == []
    unknown = ReferenceSet(ref.fit, ("small_resnet10",), (32,), ("layer4",), DataInfo(None, None, None))
    assert unknown.mismatches("small_resnet10", 32, "layer4", DataInfo("/d", ("x",), 3)) == [
        "the model is scored on /d, 1 class, 3 training images, the reference set was trained on an "
        "unrecorded folder: the fit may not apply to other data"
    ]


# ------------------------------------------------------------------ leave-one-out calibration
def brute_loo(x, y, confidence=0.95):
    """Refit without each model (scipy.stats.linregress), predict it, check the t interval."""
    from scipy import stats as st

    x, y = np.asarray(x, float), np.asarray(y, float)
    covered, resid = [], []
    for i in range(x.size):
        keep = np.arange(x.size) != i
        xs, ys = x[keep], y[keep]
        lr = st.linregress(xs, ys)
        m = xs.size
        pred = lr.intercept + lr.slope * x[i]
        s = math.sqrt(((ys - lr.intercept - lr.slope * xs) ** 2).sum() / (m - 2))
        se = s * math.sqrt(1 + 1 / m + (x[i] - xs.mean()) ** 2 / ((xs - xs.mean()) ** 2).sum())
        t = st.t.ppf(0.5 + confidence / 2, m - 2)
        covered.append(abs(y[i] - pred) <= t * se)
        resid.append(abs(y[i] - pred))
    return float(np.mean(covered)), resid


@pytest.mark.parametrize("seed,heavy", [(0, False), (1, True), (2, True)])
def test_loo_coverage_matches_a_refit_loop(seed, heavy):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 0.6, 40)
    noise = rng.standard_t(1.5, 40) if heavy else rng.normal(0, 2, 40)
    y = 40 - 50 * x + noise
    f = fit_gap(x, y)
    for conf in (0.95, 0.8):
        cov, resid = brute_loo(x, y, conf)
        assert f.loo_coverage(conf) == cov
        assert np.allclose(sorted(f.loo_abs_resid), sorted(resid), rtol=1e-9, atol=1e-9)


def test_conformal_quantile_on_hand_made_residuals():
    from camgap.study.predict import GapFit

    base = fit_gap([0, 1, 2, 3], [1, 3, 2, 5])
    resid = (0.5, 3.0, 1.0, 2.0, 4.0, 0.1, 0.2, 0.3, 0.4, 0.6)  # m = 10
    f = GapFit(**{**base.__dict__, "loo_abs_resid": resid, "loo_t": (9.0,) * 10})
    # (m + 1) * 0.8 = 8.8 -> the 9th smallest: 0.1 0.2 0.3 0.4 0.5 0.6 1.0 2.0 [3.0] 4.0
    assert f.conformal_halfwidth(0.8) == 3.0
    # (m + 1) * 0.5 = 5.5 -> the 6th smallest: 0.6; 6 of 10 residuals within it
    assert f.conformal_halfwidth(0.5) == 0.6 and f.conformal_coverage(0.5) == 0.6
    # (m + 1) * 0.95 = 10.45 -> 11 > m: no finite interval from 10 models
    assert f.conformal_halfwidth(0.95) == math.inf
    # every t statistic is 9 > t(0.975, 1 dof) = 12.7? no: 9 < 12.7, all covered -> "t"
    assert f.loo_coverage(0.95) == 1.0 and f.interval_kind(0.95) == "t"


def test_predict_uses_the_conformal_interval_when_the_t_interval_undercovers():
    # 20 % of the models are off the line by +-10 pp, the others by ~0.1: s ~ sqrt(0.2) * 10 ~ 4.5,
    # so the t interval (+-1.97 s ~ 8.9) misses every one of the 20 %: coverage ~ 0.8
    rng = np.random.default_rng(7)
    x = rng.uniform(0.2, 0.6, 200)
    off = np.arange(200) % 5 == 0
    y = 40 - 50 * x + np.where(off, 10.0 * rng.choice([-1, 1], 200), rng.normal(0, 0.1, 200))
    f = fit_gap(x, y)
    assert f.loo_coverage() < 0.9 and f.interval_kind() == "conformal"
    q = f.conformal_halfwidth()
    p = predict_gap(f, 0.4)
    assert p.interval_kind == "conformal" and p.loo_coverage == f.loo_coverage()
    assert (p.low, p.high) == (pytest.approx(p.gap - q), pytest.approx(p.gap + q))
    assert f.conformal_coverage() >= 0.95
    assert "split-conformal: the t interval covered" in p.headline()
    # a well-behaved set keeps the t interval
    g = fit_gap(x, 40 - 50 * x + rng.normal(0, 1, 200))
    assert g.interval_kind() == "t" and predict_gap(g, 0.4).interval_kind == "t"
