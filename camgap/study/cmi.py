"""The conditional-mutual-information score of a measure (Jiang et al. 2020, sec. 2.3; the PGDL
competition's metric), from the counts of every ordered pair of models by (U_S, V_mu, V_g)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from camgap.errors import InputError

from .stats import GAP_TOL, _clean, _codes, _sign

#: Largest number of U_S values counted in a dense table by `cmi_score` (else sparse path).
_DENSE_MAX = 2_000_000
#: The definitions `cmi_score` computes (see its docstring): "jiang" (Jiang et al. 2020, sec.
#: 2.3, the default) and "pgdl" (the PGDL competition's scoring program, comparable with its
#: published scores).
CMI_MODES: tuple[str, ...] = ("jiang", "pgdl")


def _entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Entropy (bits) of each row of a count matrix."""
    tot = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = counts / tot
        h = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=-1)
    return h


def conditional_mi(v_measure: np.ndarray, v_gap: np.ndarray, cond: np.ndarray) -> tuple[float, float]:
    """Plug-in I(V_mu; V_g | U) and H(V_g | U) in bits from per-pair discrete samples.

    I(V_mu; V_g | U) = sum_u p(u) sum_{a,b} p(a,b|u) log2 [ p(a,b|u) / (p(a|u) p(b|u)) ]
    H(V_g | U)       = -sum_u p(u) sum_b p(b|u) log2 p(b|u)
    with every probability the empirical frequency over the given pairs.
    """
    cond = np.asarray(cond, dtype=np.int64)
    _, cond_idx = np.unique(cond, return_inverse=True)
    ab = (np.asarray(v_measure, dtype=np.int64) + 1) * 3 + np.asarray(v_gap, dtype=np.int64) + 1
    n_u = int(cond_idx.max()) + 1 if cond_idx.size else 0
    counts = np.bincount(cond_idx.ravel() * 9 + ab, minlength=n_u * 9).reshape(n_u, 3, 3)
    return _cmi_from_counts(counts)


def _cmi_from_counts(counts: np.ndarray) -> tuple[float, float]:
    """(I(V_mu; V_g | U), H(V_g | U)) in bits from counts[u, v_mu + 1, v_g + 1]."""
    counts = counts[counts.sum(axis=(1, 2)) > 0].astype(float)
    if counts.shape[0] == 0:
        return math.nan, math.nan
    n_u = counts.sum(axis=(1, 2))
    p_u = n_u / n_u.sum()
    mi, h_b = _cell_terms(counts)
    return float((p_u * mi).sum()), float((p_u * h_b).sum())


def _cell_terms(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cell u of counts[u, a, b] (none empty): I(A; B | u) and H(B | u) in bits."""
    k = counts.shape[0]
    h_ab = _entropy_bits(counts.reshape(k, -1))
    h_a = _entropy_bits(counts.sum(axis=2))
    h_b = _entropy_bits(counts.sum(axis=1))
    return np.maximum(h_a + h_b - h_ab, 0.0), h_b  # I = H(A) + H(B) - H(A,B), per slice


def _swap_perm(radices: Sequence[int]) -> np.ndarray:
    """For U_S coded as mixed-radix digits d_h = c_h(theta) * k_h + c_h(theta') (radix k_h^2),
    the code of the same pair in the other order, for every code value."""
    size = int(np.prod([k * k for k in radices])) if radices else 1
    u = np.arange(size, dtype=np.int64)
    out = np.zeros(size, dtype=np.int64)
    rest = u.copy()
    digits = []
    for k in reversed(radices):
        digits.append(rest % (k * k))
        rest //= k * k
    for k, d in zip(radices, reversed(digits)):
        out = out * (k * k) + (d % k) * k + d // k
    return out


def _with_mirror(half: np.ndarray, radices: Sequence[int]) -> np.ndarray:
    """Ordered-pair counts [U_S digits..., 3, 3] from the unordered ones: each pair (i, j) also
    counted as (j, i), its U_S digits swapped and both signs flipped. Applied after summing
    the other hyperparameters out (sums and the swap commute), on the small array of one S."""
    mirrored = half
    for axis, k in enumerate(radices):
        mirrored = np.take(mirrored, _swap_perm([k]), axis=axis)
    return half + mirrored[..., ::-1, ::-1]


def cmi_score(
    df: pd.DataFrame,
    measure_col: str,
    gap_col: str,
    hparams: Sequence[str],
    *,
    max_set_size: int = 2,
    measure_tol: float = 0.0,
    gap_tol: float = GAP_TOL,
    mode: str = "jiang",
) -> tuple[float, dict[tuple[str, ...], float]]:
    """Conditional-mutual-information score, Jiang et al. 2020 sec. 2.3 (the PGDL metric).

    Probability space: every ordered pair (theta, theta') of two distinct models of the set,
    uniformly. On a pair,

        V_mu = sgn(mu(theta) - mu(theta')),   V_g = sgn(g(theta) - g(theta')),
        U_S  = (theta_S, theta'_S)   (the values of the hyperparameters in S for both models).

    Signs take three values {-1, 0, +1} (a tie is its own value; gap differences within
    `gap_tol` percentage points are ties). For each conditioning set S the normalised
    conditional mutual information is

        I~(V_mu, V_g | U_S) = I(V_mu; V_g | U_S) / H(V_g | U_S)

        I(V_mu; V_g | U_S) = sum_{U_S} p(U_S) sum_{V_mu, V_g} p(V_mu, V_g | U_S)
                              log [ p(V_mu, V_g | U_S) / (p(V_mu | U_S) p(V_g | U_S)) ]
        H(V_g | U_S)       = - sum_{U_S} p(U_S) sum_{V_g} p(V_g | U_S) log p(V_g | U_S)

    (empirical plug-in probabilities, log base 2 - the base cancels in the ratio), and the
    score is K(mu) = min over S of I~(V_mu, V_g | U_S).

    Conditioning sets: S = {} (plain normalised mutual information), every single
    hyperparameter, and every unordered pair of distinct hyperparameters, i.e. all S with
    |S| <= `max_set_size` (2), as in Jiang et al. (who take the minimum over |S| <= 2).
    A set where H(V_g | U_S) = 0 (the hyperparameters in S alone fix the sign of the gap
    difference of every pair) has an undefined ratio 0/0: it is reported as NaN and left out
    of the minimum; the score is NaN when every set is undefined. 1 means the measure's sign
    determines the gap's sign even after conditioning; 0 means no information beyond S.

    `mode="pgdl"` is the PGDL scoring program's definition instead (its `mutual_information.py`,
    NeurIPS 2020), so that scores compare with the competition's published numbers:
    - the probability space is every ordered pair of models, a model paired with itself included;
    - signs take two values: "+" when the difference is > 0 (> `gap_tol` for the gap), else "-"
      (a tie, the self-pairs included, counts as "-");
    - S ranges over the ordered pairs of distinct hyperparameters only (|S| = 2; (h1, h2) and
      (h2, h1) give the same cells, so the unordered pairs suffice);
    - per S, I(V_mu; V_g | U_S = u) and H(V_g | U_S = u) are computed inside each cell u and
      averaged over the cells without weighting by their size; the set's value is
      mean_u I / mean_u H (a ratio of averages, not an average of ratios);
    - the score is 100 * the minimum over S.
    Cells without any pair are left out of the averages (the program requires a complete grid,
    where none is empty; it would give NaN there). The program adds 1e-12 inside its entropy's
    logarithm; here 0 log 0 = 0 exactly (the two differ by < 1e-10). A set whose averaged
    entropy is 0 is NaN and left out; with fewer than two hyperparameters the pgdl score is NaN.

    Cost: O(n^2) pairs in memory (n models -> n(n-1)/2 unordered pairs).
    Rows with a non-finite measure or gap are dropped first. `cmi_scores` scores several
    measures of one model table and builds the pair codes once for all of them. `hparams` should list the real
    hyperparameters only (not a repeat/seed column).

    Returns (score, {S: I~ for every conditioning set S, S a tuple of hyperparameter names}).
    """
    return cmi_scores(
        df,
        [measure_col],
        gap_col,
        hparams,
        max_set_size=max_set_size,
        measure_tol=measure_tol,
        gap_tol=gap_tol,
        mode=mode,
    )[measure_col]


def cmi_scores(
    df: pd.DataFrame,
    measure_cols: Sequence[str],
    gap_col: str,
    hparams: Sequence[str],
    *,
    max_set_size: int = 2,
    measure_tol: float = 0.0,
    gap_tol: float = GAP_TOL,
    mode: str = "jiang",
) -> dict[str, tuple[float, dict[tuple[str, ...], float]]]:
    """`cmi_score` of every measure in `measure_cols`: {measure: (score, {S: I~})}.

    The pairs, the gap signs and the conditioning codes depend on the models only, so they are
    built once; a measure's pairs are those whose two models both have a finite value, which
    gives the same counts as `cmi_score` on the table without its non-finite rows (the codes of
    a hyperparameter value do not matter, only which models share one). In `mode="pgdl"` the
    self-pairs enter the unordered pairs with weight 1/2 (mirroring them counts them twice)."""
    if mode not in CMI_MODES:
        raise InputError(f"unknown CMI mode {mode!r}: {', '.join(CMI_MODES)}")
    pgdl = mode == "pgdl"
    hparams = list(hparams)
    sets: list[tuple[str, ...]] = []
    for k in (2,) if pgdl else range(0, max_set_size + 1):
        sets.extend(itertools.combinations(hparams, k))
    d = _clean(df, measure_cols[0], gap_col, hparams, require_measure=False, extra=measure_cols[1:])
    g = d[gap_col].to_numpy(float)
    values = {c: d[c].to_numpy(float) for c in measure_cols}
    if len(d) < 2:
        return {c: (math.nan, {s: math.nan for s in sets}) for c in measure_cols}
    i, j = np.triu_indices(len(d), k=0 if pgdl else 1)
    weights = np.where(i == j, 0.5, 1.0) if pgdl else None
    v_gap = _sign(g[i] - g[j], gap_tol).astype(np.int64) + 1
    codes = {h: _codes(d[h]) for h in hparams}
    radix = {h: int(codes[h].max()) + 1 for h in hparams}
    keys = _ConditioningKeys(codes, radix, i, j)
    pair_codes = _PairCodes(i, j, v_gap)
    out = {}
    for col in measure_cols:
        m = values[col]
        finite = np.isfinite(m)
        if int(finite.sum()) < 2:
            out[col] = (math.nan, {s: math.nan for s in sets})
            continue
        ab, ok = pair_codes(m, finite, measure_tol)
        per: dict[tuple[str, ...], float] = {}
        for s, counts in keys.counts(sets, ab, ok, weights):
            mi, h_g = _pgdl_from_counts(counts) if pgdl else _cmi_from_counts(counts)
            per[s] = mi / h_g if h_g > 1e-12 else math.nan
        defined = [v for v in per.values() if np.isfinite(v)]
        score = float(min(defined)) if defined else math.nan
        out[col] = (100.0 * score, {k: 100.0 * v for k, v in per.items()}) if pgdl else (score, per)
    return out


class _PairCodes:
    """(V_mu + 1) * 3 + V_g + 1 of every pair for one measure after another, V_mu =
    `_sign(mu_i - mu_j, tol)`. The pair arrays are the study's largest: they are written into
    buffers allocated once, since a fresh array of that size costs its page faults again."""

    def __init__(self, i: np.ndarray, j: np.ndarray, v_gap: np.ndarray):
        self.i, self.j, self.v_gap3 = i, j, v_gap + 3
        self.first, self.second = np.empty(i.size), np.empty(i.size)
        self.up, self.down = np.empty(i.size, dtype=bool), np.empty(i.size, dtype=bool)
        self.ab = np.empty(i.size, dtype=np.int64)

    def __call__(self, m: np.ndarray, finite: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray | None]:
        """(codes, ok): the codes of the pairs whose two models both have a finite value (ok;
        None: every pair). The codes are overwritten by the next call."""
        if not finite.all():  # rare: fresh arrays of the pairs kept
            ok = finite[self.i] & finite[self.j]
            d = m[self.i[ok]] - m[self.j[ok]]
            v = (d > tol).view(np.int8) - (d < -tol).view(np.int8)
            return self.v_gap3[ok] + 3 * v, ok
        # mode="clip": the indices are valid, and the default mode copies `out` through a buffer
        first = np.take(m, self.i, out=self.first, mode="clip")
        d = np.subtract(first, np.take(m, self.j, out=self.second, mode="clip"), out=self.first)
        np.greater(d, tol, out=self.up)
        np.less(d, -tol, out=self.down)
        v = np.subtract(self.up.view(np.int8), self.down.view(np.int8), out=self.up.view(np.int8))
        np.multiply(v, 3, out=v)
        return np.add(self.v_gap3, v, out=self.ab), None


def _pgdl_from_counts(counts: np.ndarray) -> tuple[float, float]:
    """(mean_u I(V_mu; V_g | u), mean_u H(V_g | u)) in bits over the non-empty cells u, each cell
    counted once whatever its size (the PGDL program), from three-valued ordered-pair
    counts[u, v_mu + 1, v_g + 1] with a tie folded into "-"."""
    counts = counts[counts.sum(axis=(1, 2)) > 0].astype(float)
    if counts.shape[0] == 0:
        return math.nan, math.nan
    two = np.stack([counts[:, :2].sum(axis=1), counts[:, 2]], axis=1)  # V_mu: {-1, 0} -> "-", +1 -> "+"
    two = np.stack([two[..., :2].sum(axis=-1), two[..., 2]], axis=-1)  # V_g likewise
    mi, h_b = _cell_terms(two)
    return float(mi.mean()), float(h_b.mean())


class _ConditioningKeys:
    """Ordered-pair counts [U_S, V_mu + 1, V_g + 1] of every conditioning set S from the unordered
    pairs (i < j): the mirrored pair (j, i) has both signs flipped and the digits of U_S swapped,
    so the ordered-pair counts are counts + mirror(counts). When the joint code of all
    hyperparameters is small, one bincount per measure gives every S by summing axes out;
    otherwise each S's code is built once and kept for the next measure."""

    def __init__(self, codes: dict[str, np.ndarray], radix: dict[str, int], i: np.ndarray, j: np.ndarray):
        self.hparams = list(codes)
        self.radix = radix
        self.codes, self.i, self.j = codes, i, j
        self.joint_size = int(np.prod([radix[h] ** 2 for h in self.hparams])) if self.hparams else 1
        # the joint code of a pair times 9, the room for its (V_mu, V_g) code
        self.joint9 = self._key(self.hparams) * 9 if self.joint_size <= _DENSE_MAX else None
        self._per_set: dict[tuple[str, ...], np.ndarray] = {}
        self._scratch: np.ndarray | None = None

    def _key(self, s: Sequence[str], swapped: bool = False) -> np.ndarray:
        """Mixed-radix code of (theta_S, theta'_S) of every pair (of (theta'_S, theta_S) when
        `swapped`): the digit of h is c_h(theta) * k_h + c_h(theta'), so the code is a sum of a
        per-model term of the first model and one of the second, gathered once each."""
        first, second = (self.j, self.i) if swapped else (self.i, self.j)
        n = len(next(iter(self.codes.values()))) if self.codes else 0
        lead, trail = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        for h in s:
            k = self.radix[h]
            lead *= k * k
            lead += self.codes[h] * k
            trail *= k * k
            trail += self.codes[h]
        return lead[first] + trail[second]

    def counts(
        self,
        sets: Sequence[tuple[str, ...]],
        ab: np.ndarray,
        ok: np.ndarray | None = None,
        weights: np.ndarray | None = None,
    ):
        """(S, counts[U_S, V_mu + 1, V_g + 1]) for each S; `weights` (per pair, default 1) weigh
        the pairs."""
        every = ok is None  # ok: which pairs `ab` codes (None: every pair)
        w = weights if weights is None or every else weights[ok]
        if self.joint9 is not None:
            shape = [self.radix[h] ** 2 for h in self.hparams]
            if every:
                if self._scratch is None:
                    self._scratch = np.empty(self.joint9.size, dtype=np.int64)
                key = np.add(self.joint9, ab, out=self._scratch)
            else:
                key = self.joint9[ok] + ab
            half = np.bincount(key, weights=w, minlength=self.joint_size * 9).reshape(*shape, 3, 3)
            margins = _Marginals(half, len(self.hparams))
            for s in sets:
                axes = tuple(sorted(self.hparams.index(h) for h in s))
                part = margins.keep(axes)
                yield s, _with_mirror(part, [self.radix[self.hparams[a]] for a in axes]).reshape(-1, 3, 3)
            return
        for s in sets:
            if s not in self._per_set:
                self._per_set[s] = self._key(s)
            key = self._per_set[s] if every else self._per_set[s][ok]
            size = int(np.prod([self.radix[h] ** 2 for h in s])) if s else 1
            if size <= _DENSE_MAX:
                half = np.bincount(key * 9 + ab, weights=w, minlength=size * 9).reshape(size, 3, 3)
                yield s, half + half[_swap_perm([self.radix[h] for h in s])][:, ::-1, ::-1]
            else:  # hyperparameters with very many values: code the ordered pairs explicitly
                swapped = self._key(s, swapped=True)
                swapped = swapped if every else swapped[ok]
                _, inv = np.unique(np.concatenate([key, swapped]), return_inverse=True)
                both = np.concatenate([ab, 8 - ab])
                ww = None if w is None else np.concatenate([w, w])
                counts = np.bincount(inv.ravel() * 9 + both, weights=ww, minlength=(int(inv.max()) + 1) * 9)
                yield s, counts.reshape(-1, 3, 3)


class _Marginals:
    """Sums of a count array over all but a few of its first `n` axes (the trailing [3, 3] axes
    stay), each from the smallest partial sum that still holds the kept axes: a pair (a, b)
    with a >= 1 from the prefix sum over axes 0..a-1, a pair (0, b) from the suffix sum over
    axes b+1..n-1, a single axis and the empty set from a pair. The full array is then read a
    few times per measure rather than once per conditioning set."""

    def __init__(self, full: np.ndarray, n: int):
        self.full, self.n = full, n
        self._prefix = {0: full}
        self._suffix = {n - 1: full}
        self._done: dict[tuple[int, ...], np.ndarray] = {}

    def prefix(self, a: int) -> np.ndarray:
        """Summed over axes 0..a-1: axes a..n-1 remain."""
        if a not in self._prefix:
            self._prefix[a] = self.prefix(a - 1).sum(axis=0)
        return self._prefix[a]

    def suffix(self, b: int) -> np.ndarray:
        """Summed over axes b+1..n-1: axes 0..b remain."""
        if b not in self._suffix:
            self._suffix[b] = self.suffix(b + 1).sum(axis=b + 1)
        return self._suffix[b]

    def keep(self, axes: tuple[int, ...]) -> np.ndarray:
        axes = tuple(sorted(axes))
        if axes not in self._done:
            self._done[axes] = self._compute(axes)
        return self._done[axes]

    def _compute(self, axes: tuple[int, ...]) -> np.ndarray:
        n = self.n
        if len(axes) == n:
            return self.full
        if len(axes) > 2:
            return self.full.sum(axis=tuple(k for k in range(n) if k not in axes))
        if len(axes) < 2:  # from a pair holding these axes (or the full array when n is 1)
            if n == 1:
                return self.full.sum(axis=0) if not axes else self.full
            a = axes[0] if axes else 0
            other = 1 if a == 0 else 0
            pair = self.keep(tuple(sorted((a, other))))
            pos = 1 if other > a else 0
            kept = pair.sum(axis=pos)
            return kept if axes else kept.sum(axis=0)
        a, b = axes
        if a >= 1:
            return self.prefix(a).sum(axis=tuple(k - a for k in range(a, n) if k not in axes))
        return self.suffix(b).sum(axis=tuple(range(1, b)))
