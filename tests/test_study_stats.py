"""Statistics of the study against scipy and against direct implementations of the definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from camgap.errors import InputError
from camgap.study import bootstrap, cmi, stats


# ------------------------------------------------------------------------- correlations
def test_correlations_equal_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    y = 0.5 * x + rng.normal(size=40)
    assert stats.pearson(x, y) == pytest.approx(st.pearsonr(x, y)[0], abs=1e-15)
    assert stats.spearman(x, y) == pytest.approx(st.spearmanr(x, y)[0], abs=1e-15)
    assert stats.kendall(x, y) == pytest.approx(st.kendalltau(x, y)[0], abs=1e-15)
    c = stats.correlations(x, y)
    assert c["n"] == 40
    assert c["pearson_p"] == pytest.approx(st.pearsonr(x, y)[1])


def test_correlations_drop_nonfinite_and_refuse_small_or_constant():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0, np.inf])
    y = np.array([2.0, 1.0, 3.0, 5.0, 4.0, 1.0])
    keep = [0, 1, 3, 4]
    assert stats.pearson(x, y) == pytest.approx(st.pearsonr(x[keep], y[keep])[0])
    assert stats.correlations(x, y)["n"] == 4
    assert math.isnan(stats.pearson([1, 2], [2, 1]))  # n < 3
    assert math.isnan(stats.spearman([1, 1, 1, 1], [1, 2, 3, 4]))  # constant
    assert math.isnan(stats.kendall([1, 2, 3], [5, 5, 5]))
    assert all(math.isnan(v) for k, v in stats.correlations([1, 2], [1, 2]).items() if k != "n")


# ---------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_contains_estimate_is_seeded_and_matches_a_loop():
    rng = np.random.default_rng(2)
    x = rng.normal(size=30)
    y = -0.7 * x + rng.normal(scale=0.6, size=30)
    r = stats.pearson(x, y)
    lo, hi = bootstrap.bootstrap_ci(x, y, n_resamples=500, seed=7)
    assert lo < r < hi and -1 <= lo < hi <= 1
    assert bootstrap.bootstrap_ci(x, y, n_resamples=500, seed=7) == (lo, hi)
    assert bootstrap.bootstrap_ci(x, y, n_resamples=500, seed=8) != (lo, hi)
    # the same resamples, computed one by one with numpy
    idx = np.random.default_rng(7).integers(0, 30, size=(500, 30))
    rs = np.array([np.corrcoef(x[i], y[i])[0, 1] for i in idx])
    assert (lo, hi) == pytest.approx(tuple(np.percentile(rs, [2.5, 97.5])), abs=1e-12)
    # wider confidence, wider interval; spearman and kendall variants run
    lo99, hi99 = bootstrap.bootstrap_ci(x, y, n_resamples=500, seed=7, confidence=0.99)
    assert lo99 <= lo and hi99 >= hi
    for s in ("spearman", "kendall"):
        a, b = bootstrap.bootstrap_ci(x, y, s, n_resamples=100, seed=0)
        assert a < getattr(stats, s)(x, y) < b
    assert all(math.isnan(v) for v in bootstrap.bootstrap_ci([1, 2], [3, 4]))


def _scipy_pearson(a, b, axis=-1):
    return st.pearsonr(a, b, axis=axis).statistic


def _scipy_bootstrap(x: np.ndarray, y: np.ndarray, n_resamples: int, seed: int, **kw):
    """scipy's paired percentile bootstrap of Pearson r: the oracle of `bootstrap.bootstrap_ci`."""
    return st.bootstrap(
        (x, y),
        _scipy_pearson,
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
        **kw,
    )


def test_bootstrap_ci_is_scipys_paired_percentile_interval():
    rng = np.random.default_rng(3)
    x = rng.normal(size=25)
    y = 0.4 * x + rng.normal(size=25)
    ref = _scipy_bootstrap(x, y, n_resamples=400, seed=11, confidence_level=0.9)
    got = bootstrap.bootstrap_ci(x, y, n_resamples=400, confidence=0.9, seed=11)
    assert got == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), abs=1e-12)
    assert bootstrap.bootstrap_ci(x, y, n_resamples=400, confidence=0.9, seed=11) == got  # rerun: same numbers


def test_bootstrap_ci_leaves_out_undefined_resamples_of_a_tiny_set():
    """With 4 models some resamples repeat one model (constant x): scipy's own interval is NaN;
    camgap takes the quantiles of the defined resamples of the same scipy draw."""
    x = np.array([0.1, 0.4, 0.2, 0.9])
    y = np.array([3.0, 1.0, 2.5, 0.5])
    with pytest.warns(st.DegenerateDataWarning):
        ref = _scipy_bootstrap(x, y, n_resamples=300, seed=5)
    assert math.isnan(ref.confidence_interval.low)
    dist = ref.bootstrap_distribution
    assert np.isnan(dist).sum() > 0
    fin = dist[np.isfinite(dist)]
    lo, hi = bootstrap.bootstrap_ci(x, y, n_resamples=300, seed=5)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(fin, [2.5, 97.5])), abs=1e-9)
    with pytest.raises(InputError, match="n_resamples must be >= 1, got 0"):
        bootstrap.bootstrap_ci(x, y, n_resamples=0)


def test_resample_indices_are_scipys_draws_batch_by_batch():
    """The one-sample bootstrap of 0..n-1 resamples the indices themselves; n = 5000 makes
    scipy draw 1000 resamples in batches of 400 (the batch `bootstrap_ci` sets)."""
    n, b = 5000, 1000
    seen = []

    def record(i, axis=-1):
        seen.append(np.array(i))
        return i.mean(axis=axis)

    st.bootstrap(
        (np.arange(n),), record, n_resamples=b, batch=2_000_000 // n, method="percentile", rng=np.random.default_rng(9)
    )
    assert [s.shape[0] for s in seen] == [400, 400, 200]
    np.testing.assert_array_equal(bootstrap.resample_indices(n, b, seed=9), np.concatenate(seen))


def test_pearson_intervals_of_several_columns_are_each_columns_interval():
    rng = np.random.default_rng(5)
    y = rng.normal(size=40)
    far = 1e3 + 1e-2 * y + 1e-2 * rng.normal(size=40)  # far from 0: the moments are taken about the mean
    xs = np.column_stack([0.5 * y + rng.normal(size=40), rng.normal(size=40), far])
    got = bootstrap.pearson_intervals(xs, y, n_resamples=300, confidence=0.9, seed=2)
    for j in range(3):
        one = bootstrap.bootstrap_ci(xs[:, j], y, n_resamples=300, confidence=0.9, seed=2)
        ref = _scipy_bootstrap(xs[:, j], y, n_resamples=300, seed=2, confidence_level=0.9).confidence_interval
        assert got[j] == pytest.approx(one, abs=1e-12)
        assert got[j] == pytest.approx((ref.low, ref.high), abs=1e-12)


# -------------------------------------------------------------- granulated Kendall (Psi)
def brute_granulated(df, m, g, hparams):
    """Jiang et al. 2020 eq. (1), (3), (4) written out over the full value grid."""
    values = {h: list(pd.unique(df[h])) for h in hparams}
    psis = {}
    for h in hparams:
        others = [o for o in hparams if o != h]
        taus = []
        for combo in itertools.product(*(values[o] for o in others)):
            sel = np.ones(len(df), bool)
            for o, v in zip(others, combo):
                sel &= (df[o] == v).to_numpy()
            cell = df[sel]
            if len(cell) < 2 or cell[h].nunique() < 2:
                continue
            mu, gap = cell[m].to_numpy(), cell[g].to_numpy()
            s = 0
            for i in range(len(cell)):
                for j in range(len(cell)):
                    if i != j:
                        s += np.sign(mu[i] - mu[j]) * np.sign(gap[i] - gap[j])
            taus.append(s / (len(cell) * (len(cell) - 1)))
        psis[h] = float(np.mean(taus)) if taus else math.nan
    return float(np.nanmean(list(psis.values()))), psis


def grid_frame(seed=0, repeats=2, drop=0):
    rng = np.random.default_rng(seed)
    rows = [
        dict(a=a, b=b, c=c, rep=r)
        for a, b, c, r in itertools.product([16, 32, 64], ["sgd", "adam"], [0.0, 5e-4], range(repeats))
    ]
    df = pd.DataFrame(rows)
    df["gap"] = rng.normal(size=len(df)).round(2)
    df["m"] = 0.6 * df["gap"] + rng.normal(size=len(df))
    if drop:
        df = df.drop(rng.choice(len(df), drop, replace=False)).reset_index(drop=True)
    return df


@pytest.mark.parametrize("repeats,drop", [(1, 0), (2, 0), (2, 7)])
def test_granulated_kendall_matches_brute_force(repeats, drop):
    df = grid_frame(repeats=repeats, drop=drop)
    psi, per = stats.granulated_kendall(df, "m", "gap", ["a", "b", "c"])
    bpsi, bper = brute_granulated(df, "m", "gap", ["a", "b", "c"])
    assert psi == pytest.approx(bpsi, abs=1e-12)
    assert per == pytest.approx(bper, abs=1e-12)


def test_granulated_kendalls_of_several_measures_are_each_measures_psi(monkeypatch):
    df = grid_frame(repeats=3)
    rng = np.random.default_rng(1)
    df["m2"] = (-0.3 * df["gap"] + rng.normal(size=len(df))).round(1)  # ties
    df["m3"] = df["m"].where(rng.random(len(df)) > 0.2)  # missing values: other cells
    hp = ["a", "b", "c"]
    got = stats.granulated_kendalls(df, ["m", "m2", "m3"], "gap", hp)
    for c in ("m", "m2", "m3"):
        psi, per = brute_granulated(df[df[c].notna()], c, "gap", hp)
        assert got[c][0] == pytest.approx(psi, abs=1e-12) and got[c][1] == pytest.approx(per, abs=1e-12)
    monkeypatch.setattr(stats, "_SIGN_CHUNK", 1)  # one measure of a cell at a time: the same numbers
    assert stats.granulated_kendalls(df, ["m", "m2", "m3"], "gap", hp) == got


def test_granulated_kendall_hand_cases():
    df = grid_frame(repeats=2)
    assert stats.granulated_kendall(df.assign(m=2 * df.gap + 1), "m", "gap", ["a", "b", "c"])[0] == 1.0
    assert stats.granulated_kendall(df.assign(m=-df.gap), "m", "gap", ["a", "b", "c"])[0] == -1.0
    # 2 x 2 grid, one model per configuration, worked by hand:
    #   (h1, h2): gap, measure = (0,0): 1, 10 | (1,0): 2, 20 | (0,1): 3, 40 | (1,1): 4, 30
    # psi_h1: cell h2=0 -> concordant (+1), cell h2=1 -> discordant (-1): mean 0
    # psi_h2: cell h1=0 -> (1,10) vs (3,40) +1, cell h1=1 -> (2,20) vs (4,30) +1: mean 1
    hand = pd.DataFrame({"h1": [0, 1, 0, 1], "h2": [0, 0, 1, 1], "gap": [1, 2, 3, 4], "m": [10, 20, 40, 30]})
    psi, per = stats.granulated_kendall(hand, "m", "gap", ["h1", "h2"])
    assert per == {"h1": 0.0, "h2": 1.0} and psi == 0.5
    # tau-b variant agrees on a tie-free cell; a failed (NaN) measurement is dropped
    assert stats.granulated_kendall(hand, "m", "gap", ["h1", "h2"], tau="b")[1] == per
    hand.loc[3, "m"] = np.nan
    psi, per = stats.granulated_kendall(hand, "m", "gap", ["h1", "h2"])
    assert per == {"h1": 1.0, "h2": 1.0}  # only the complete cells remain


def test_tau_a_counts_ties_as_zero():
    # pairs: (0,1) concordant, (0,2) tie in measure, (1,2) discordant -> (1 + 0 - 1) * 2 / 6
    assert stats.tau_a([1, 2, 1], [1, 2, 3]) == 0.0
    assert stats.tau_a([1, 2, 3], [1, 2, 2]) == pytest.approx(2 * 2 / 6)


# ---------------------------------------------------------------------------- CMI score
def brute_cmi(df, m, g, hparams, max_set=2):
    """Jiang et al. 2020 sec. 2.3 by counting, over ordered pairs of distinct models."""
    rows = df.to_dict("records")
    out = {}
    for k in range(max_set + 1):
        for s in itertools.combinations(hparams, k):
            counts = {}
            for i, ri in enumerate(rows):
                for j, rj in enumerate(rows):
                    if i == j:
                        continue
                    u = tuple((ri[h], rj[h]) for h in s)
                    vm = int(np.sign(ri[m] - rj[m]))
                    vg = int(np.sign(ri[g] - rj[g]))
                    counts.setdefault(u, {}).setdefault((vm, vg), 0)
                    counts[u][(vm, vg)] += 1
            total = sum(sum(c.values()) for c in counts.values())
            mi = h = 0.0
            for c in counts.values():
                nu = sum(c.values())
                pu = nu / total
                pm, pg = {}, {}
                for (a, b), v in c.items():
                    pm[a] = pm.get(a, 0) + v / nu
                    pg[b] = pg.get(b, 0) + v / nu
                for (a, b), v in c.items():
                    pab = v / nu
                    mi += pu * pab * math.log2(pab / (pm[a] * pg[b]))
                h -= pu * sum(p * math.log2(p) for p in pg.values())
            out[s] = mi / h if h > 1e-12 else math.nan
    finite = [v for v in out.values() if not math.isnan(v)]
    return (min(finite) if finite else math.nan), out


@pytest.mark.parametrize("drop,dense_max", [(0, None), (5, None), (5, 40), (5, 0)])
def test_cmi_matches_brute_force(drop, dense_max, monkeypatch):
    # None: one joint code of all hyperparameters; 40: one code per conditioning set (the joint
    # one is too large); 0: ordered pairs coded explicitly (hyperparameters with very many values)
    if dense_max is not None:
        monkeypatch.setattr(cmi, "_DENSE_MAX", dense_max)
    df = grid_frame(seed=3, repeats=2, drop=drop)
    score, per = cmi.cmi_score(df, "m", "gap", ["a", "b", "c"])
    bscore, bper = brute_cmi(df, "m", "gap", ["a", "b", "c"])
    assert set(per) == set(bper) and len(per) == 1 + 3 + 3
    for s in per:
        assert per[s] == pytest.approx(bper[s], abs=1e-10), s
    assert score == pytest.approx(bscore, abs=1e-10)


def test_cmi_scores_of_several_measures_equal_one_at_a_time():
    df = grid_frame(seed=5, repeats=2)
    rng = np.random.default_rng(1)
    df = df.assign(m2=df["m"] + rng.normal(size=len(df)), m3=-df["gap"] + rng.normal(size=len(df)))
    df.loc[[1, 4, 7], "m2"] = np.nan
    df.loc[[2], "gap"] = np.nan
    together = cmi.cmi_scores(df, ["m", "m2", "m3"], "gap", ["a", "b", "c"])
    for col in ("m", "m2", "m3"):
        score, per = cmi.cmi_score(df, col, "gap", ["a", "b", "c"])
        bscore, bper = brute_cmi(df.dropna(subset=[col, "gap"]), col, "gap", ["a", "b", "c"])
        assert together[col][0] == pytest.approx(score, abs=1e-12) == pytest.approx(bscore, abs=1e-10)
        assert together[col][1] == pytest.approx(per, abs=1e-12)


def test_cmi_hand_cases():
    df = grid_frame(seed=4, repeats=2)
    # a measure that ranks the gap perfectly: V_mu = V_g on every pair -> I = H -> score 1
    score, per = cmi.cmi_score(df.assign(m=3 * df.gap - 1), "m", "gap", ["a", "b", "c"])
    assert score == pytest.approx(1.0) and all(v == pytest.approx(1.0) for v in per.values())
    # a measure that only knows hyperparameter `a`: the gap depends on `a` plus noise, the
    # measure is a function of `a` alone -> given a, V_mu is 0 on every pair -> score 0
    rng = np.random.default_rng(0)
    effect = df["a"].map({16: 0.0, 32: 5.0, 64: 10.0})
    d2 = df.assign(gap=effect + rng.normal(size=len(df)), m=effect)
    score, per = cmi.cmi_score(d2, "m", "gap", ["a", "b", "c"])
    assert score == pytest.approx(0.0, abs=1e-12)
    assert per[()] > 0.3  # unconditionally the measure does look informative
    assert per[("a",)] == pytest.approx(0.0, abs=1e-12)


def test_cmi_worked_example_empty_set():
    # three models, gap (1, 2, 3), measure (1, 3, 2). Ordered pairs (V_mu, V_g):
    # (-,-) x2, (+,-) x1, (+,+) x2, (-,+) x1 -> H(V_g) = 1 bit,
    # I = H(V_mu) + H(V_g) - H(V_mu, V_g) = 2 - (2/3 log2 3 + 1/3 log2 6)
    df = pd.DataFrame({"gap": [1.0, 2.0, 3.0], "m": [1.0, 3.0, 2.0], "h": [0, 0, 1]})
    score, per = cmi.cmi_score(df, "m", "gap", ["h"], max_set_size=0)
    want = 2 - (2 / 3 * math.log2(3) + 1 / 3 * math.log2(6))
    assert per == {(): pytest.approx(want)} and score == pytest.approx(want)


def test_cmi_undefined_sets_are_left_out():
    # gap fixed by h1 alone: conditioning on h1 leaves H(V_g | U) = 0 -> NaN, excluded from the min
    df = pd.DataFrame({"h1": [0, 0, 1, 1], "h2": [0, 1, 0, 1], "gap": [1.0, 1.0, 5.0, 5.0], "m": [0.1, 0.2, 0.3, 0.4]})
    score, per = cmi.cmi_score(df, "m", "gap", ["h1", "h2"])
    assert math.isnan(per[("h1",)]) and math.isnan(per[("h1", "h2")])
    assert score == pytest.approx(min(per[()], per[("h2",)]))
    assert math.isnan(cmi.cmi_score(df.iloc[:1], "m", "gap", ["h1"])[0])


# --------------------------------------------------------------------- selection accuracy
def test_selection_accuracy_by_hand():
    m = [0.9, 0.8, 0.8, 0.5, 0.5]
    g = [1.0, 5.0, 3.0, 3.0, 3.0]
    # compared: (0,1) ok, (0,2) ok, (0,3) ok, (0,4) ok, (1,3) wrong, (1,4) wrong
    # ties: (1,2) measure; (2,3), (2,4) gap; (3,4) both
    s = stats.selection_accuracy(m, g)
    assert (s.n_pairs, s.n_compared, s.n_correct) == (10, 6, 4)
    assert (s.n_ties, s.n_ties_measure, s.n_ties_gap) == (4, 2, 3)
    assert s.accuracy == pytest.approx(4 / 6)
    s2 = stats.selection_accuracy(m, g, higher_is_better=False)
    assert s2.n_correct == 2 and s2.accuracy == pytest.approx(2 / 6)
    # float noise in the gap (100 * accuracy differences) counts as a tie
    gaps = [100 * (0.95 - 0.90), 100 * (0.93 - 0.88), 100 * (0.9 - 0.8)]
    assert gaps[0] != gaps[1]
    assert stats.selection_accuracy([1, 2, 3], gaps).n_ties_gap == 1
    # all tied -> NaN accuracy, counts still reported
    s3 = stats.selection_accuracy([1, 1, 1], [1, 2, 3])
    assert math.isnan(s3.accuracy) and s3.n_ties == 3


def test_selection_accuracy_matches_pair_loop_on_random_data():
    rng = np.random.default_rng(5)
    m = rng.integers(0, 20, 60).astype(float)
    g = rng.integers(0, 20, 60).astype(float)
    ok = tot = 0
    for i, j in itertools.combinations(range(60), 2):
        if m[i] != m[j] and g[i] != g[j]:
            tot += 1
            ok += (m[i] > m[j]) == (g[i] < g[j])
    s = stats.selection_accuracy(m, g)
    assert (s.n_correct, s.n_compared) == (ok, tot)


@pytest.mark.parametrize(
    "hparams,max_set", [(["a"], 2), (["a", "b"], 2), (["a", "b", "c", "rep"], 2), (["a", "b", "c", "rep"], 3)]
)
def test_cmi_marginals_match_brute_force_for_any_number_of_hyperparameters(hparams, max_set):
    # the joint counts are summed down to each conditioning set through prefix / suffix sums
    df = grid_frame(seed=7, repeats=2)
    score, per = cmi.cmi_score(df, "m", "gap", hparams, max_set_size=max_set)
    bscore, bper = brute_cmi(df, "m", "gap", hparams, max_set=max_set)
    assert set(per) == set(bper)
    for s in per:
        assert per[s] == pytest.approx(bper[s], abs=1e-10, nan_ok=True), s
    assert score == pytest.approx(bscore, abs=1e-10)


# ------------------------------------------------------------------- CMI score, PGDL mode
def brute_pgdl(df, m, g, hparams):
    """The PGDL scoring program's definition, by counting: every ordered pair of models (a model
    with itself included), signs "+" when the difference is > 0 else "-", per ordered pair of
    distinct hyperparameters the per-cell I and H(V_g) averaged over the cells unweighted, their
    ratio, the minimum over the pairs, x 100."""
    rows = df.to_dict("records")

    def entropy(counts):
        tot = sum(counts)
        return -sum(c / tot * math.log2(c / tot) for c in counts if c)

    out = {}
    for h1, h2 in itertools.permutations(hparams, 2):
        cells = {}
        for ri in rows:
            for rj in rows:
                u = (ri[h1], rj[h1], ri[h2], rj[h2])
                key = (ri[m] > rj[m], ri[g] > rj[g])
                cells.setdefault(u, {}).setdefault(key, 0)
                cells[u][key] += 1
        mis, hs = [], []
        for c in cells.values():
            pm = [sum(v for (a, _), v in c.items() if a == s) for s in (False, True)]
            pg = [sum(v for (_, b), v in c.items() if b == s) for s in (False, True)]
            mis.append(entropy(pm) + entropy(pg) - entropy(list(c.values())))
            hs.append(entropy(pg))
        h = sum(hs) / len(hs)
        out[(h1, h2)] = 100 * (sum(mis) / len(mis)) / h if h > 1e-12 else math.nan
    finite = [v for v in out.values() if not math.isnan(v)]
    return (min(finite) if finite else math.nan), out


def six_models():
    """6 models on a 2 x 2 grid (h1, h2): A, B at (0, 0), C, D at (1, 1), E at (0, 1), F at (1, 0).
    The measure orders A < B as the gap does, and C, D against it."""
    return pd.DataFrame(
        {
            "h1": [0, 0, 1, 1, 0, 1],
            "h2": [0, 0, 1, 1, 1, 0],
            "gap": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "m": [1.0, 2.0, 4.0, 3.0, 5.0, 0.0],
        },
        index=list("ABCDEF"),
    )


def test_cmi_pgdl_six_models_by_hand():
    # PGDL: the only set is (h1, h2) (its mirror (h2, h1) has the same cells). Ordered pairs,
    # self-pairs included: 36, in 4 x 4 = 16 cells (configuration of the first, of the second).
    # Cell (00, 00): AA, AB, BA, BB -> (V_mu, V_g) = (-,-), (-,-), (+,+), (-,-): V_g is "+" once
    #   in 4 -> H = h(1/4) = 2 - 3/4 log2 3; V_mu = V_g, so I = H = h(1/4).
    # Cell (11, 11): CC (-,-), CD (+,-) (measure 4 > 3, gap 3 < 4), DC (-,+), DD (-,-):
    #   H(V_g) = h(1/4), H(V_mu) = h(1/4), H(V_mu, V_g) = H(1/2, 1/4, 1/4) = 1.5 -> I = 2 h(1/4) - 1.5.
    # Every other cell has one gap sign only (e.g. (00, 11): AC, AD, BC, BD are all "-";
    #   (01, 01): EE alone) -> I = H = 0.
    # mean I / mean H = (3 h - 1.5) / 16 / (2 h / 16) = 1.5 - 0.75 / h; the score is x 100.
    h = 2 - 0.75 * math.log2(3)
    want = 100 * (1.5 - 0.75 / h)  # 57.5533...
    score, per = cmi.cmi_score(six_models(), "m", "gap", ["h1", "h2"], mode="pgdl")
    assert per == {("h1", "h2"): pytest.approx(want, abs=1e-10)}
    assert score == pytest.approx(want, abs=1e-10)
    assert want == pytest.approx(57.5533, abs=1e-4)


def test_cmi_jiang_six_models_by_hand():
    # Jiang et al. (the default): ordered pairs of distinct models (30), three-valued signs,
    # cells weighted by their share of the pairs. S = (h1, h2):
    # cell (00, 00): AB (-,-), BA (+,+) -> I = H = 1 bit, 2 of the 30 pairs;
    # cell (11, 11): CD (+,-), DC (-,+) -> V_mu fixes V_g (sign-free) -> I = H = 1 bit, 2 pairs;
    # every other cell has one gap sign -> I = H = 0. I = H = 4/30 -> I~ = 1.
    df = six_models()
    score, per = cmi.cmi_score(df, "m", "gap", ["h1", "h2"])
    assert per[("h1", "h2")] == pytest.approx(1.0, abs=1e-12)
    bscore, bper = brute_cmi(df, "m", "gap", ["h1", "h2"])
    assert score == pytest.approx(bscore, abs=1e-12)
    assert per == pytest.approx(bper, abs=1e-12)
    # the brute force of the PGDL definition agrees with the hand-derived number above
    assert brute_pgdl(df, "m", "gap", ["h1", "h2"])[0] == pytest.approx(
        cmi.cmi_score(df, "m", "gap", ["h1", "h2"], mode="pgdl")[0], abs=1e-10
    )


@pytest.mark.parametrize("drop,dense_max", [(0, None), (5, None), (5, 40), (5, 0)])
def test_cmi_pgdl_matches_brute_force(drop, dense_max, monkeypatch):
    if dense_max is not None:
        monkeypatch.setattr(cmi, "_DENSE_MAX", dense_max)
    df = grid_frame(seed=3, repeats=2, drop=drop)
    df.loc[df.index[:3], "gap"] = df["gap"].iloc[3]  # gap ties count as "-"
    df.loc[df.index[4:6], "m"] = df["m"].iloc[6]  # measure ties too
    score, per = cmi.cmi_score(df, "m", "gap", ["a", "b", "c"], mode="pgdl")
    bscore, bper = brute_pgdl(df, "m", "gap", ["a", "b", "c"])
    assert set(per) == {("a", "b"), ("a", "c"), ("b", "c")}
    for s, v in per.items():
        assert v == pytest.approx(bper[s], abs=1e-9) == pytest.approx(bper[s[::-1]], abs=1e-9)
    assert score == pytest.approx(bscore, abs=1e-9)


def test_cmi_mode_is_checked_and_pgdl_needs_two_hyperparameters():
    with pytest.raises(InputError, match="unknown CMI mode 'x': jiang, pgdl"):
        cmi.cmi_score(six_models(), "m", "gap", ["h1"], mode="x")
    assert math.isnan(cmi.cmi_score(six_models(), "m", "gap", ["h1"], mode="pgdl")[0])
