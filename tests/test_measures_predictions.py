import math

import numpy as np
import pytest
import scipy.linalg
import torch

from camgap.measures.predictions import margin_percentile, margins, nuclear_norm, nuclear_norm_of
from camgap.measures.registry import (
    MeasureContext,
    MeasureError,
    MeasureUndefined,
    compute_measure,
    list_measures,
    measure_outcome,
)


def test_margins_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [1.0, 1.0, 4.0], [2.0, 2.0, 0.0]])
    labels = torch.tensor([0, 2, 2, 1])
    # 3-2 ; 1-5 ; 4-1 ; 2-2
    assert margins(logits, labels).tolist() == [1.0, -4.0, 3.0, 0.0]


def test_margin_percentile_matches_numpy_and_raises_when_not_positive():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 5, generator=g)
    labels = logits.argmax(1)  # all correct: margins > 0
    m = margins(logits, labels).numpy()
    assert margin_percentile(logits, labels) == pytest.approx(np.percentile(m, 10), rel=1e-12)
    assert margin_percentile(logits, labels, 50) == pytest.approx(np.median(m), rel=1e-12)
    wrong = (labels + 1) % 5  # every image misclassified: gamma < 0
    with pytest.raises(MeasureUndefined, match=r"10th-percentile margin gamma = -\S+ <= 0"):
        margin_percentile(logits, wrong)
    bad = logits.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(MeasureError, match="non-finite") as err:  # a failure, not "undefined"
        margin_percentile(bad, labels)
    assert not isinstance(err.value, MeasureUndefined)


def test_measure_outcome_sorts_undefined_from_failed():
    assert measure_outcome(MeasureUndefined("gamma <= 0")) == ("undefined", "gamma <= 0")
    assert measure_outcome(MeasureError("non-finite logits")) == ("failed", "non-finite logits")

    def broken():
        raise ZeroDivisionError("division by zero")

    try:
        broken()
    except ZeroDivisionError as exc:
        assert measure_outcome(exc) == ("failed", "ZeroDivisionError: division by zero (broken)")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 3, generator=g)
    ctx = MeasureContext(model=torch.nn.Linear(2, 3), logits=logits, labels=(logits.argmax(1) + 1) % 3)
    with pytest.raises(MeasureUndefined):  # every margin-normalised measure: undefined when gamma <= 0
        compute_measure("inverse_margin", ctx)


def test_nuclear_norm_identity_closed_form():
    # softmax rows that are one-hot in the limit: P -> I_n, ||P||_* = n
    n = 6
    logits = torch.eye(n, dtype=torch.float64) * 1e3
    out = nuclear_norm(logits)
    assert out["deng"] == pytest.approx(1.0, abs=1e-12)  # n / sqrt(n * n)
    assert out["paper"] == pytest.approx(1.0 / n, abs=1e-12)


def test_nuclear_norm_rank_one_closed_form():
    # all rows equal to q: P = 1 q^T, ||P||_* = sqrt(N) ||q||_2
    n, k = 40, 4
    row = torch.tensor([2.0, 0.5, -1.0, 0.0], dtype=torch.float64)
    q = torch.softmax(row, 0)
    out = nuclear_norm(row.expand(n, k))
    nuc = math.sqrt(n) * float(q.norm())
    assert out["deng"] == pytest.approx(nuc / math.sqrt(n * min(n, k)), rel=1e-10)
    assert out["paper"] == pytest.approx(nuc / math.sqrt(n * min(n, k)) / n, rel=1e-10)


def test_nuclear_norm_against_scipy_and_gram_path():
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(50, 7, generator=g)
    p = torch.softmax(logits.double(), 1).numpy()
    nuc = scipy.linalg.svdvals(p).sum()
    out = nuclear_norm(logits)
    assert out["deng"] == pytest.approx(nuc / math.sqrt(50 * 7), rel=1e-6)
    assert out["paper"] == pytest.approx(nuc / math.sqrt(50 * 7) / 50, rel=1e-6)
    pt = torch.from_numpy(p)
    assert nuclear_norm_of(pt, "gram") == pytest.approx(nuclear_norm_of(pt, "svd"), rel=1e-9)
    # N < K uses the N x N Gram matrix
    assert nuclear_norm_of(pt.T, "gram") == pytest.approx(nuc, rel=1e-9)


def test_nuclear_norm_nan_raises():
    with pytest.raises(MeasureError):
        nuclear_norm(torch.tensor([[1.0, float("nan")]]))


def test_registry_interface_long_form():
    assert {
        "spectral_norm",
        "nuclear_norm",
        "effective_invariance",
        "path_norm",
        "frobenius_norm",
        "distance_from_init",
        "pacbayes_flatness",
        "pacbayes_mag_flatness",
        "inverse_margin",
        "effective_invariance_gray",
    } <= set(list_measures())
    logits = torch.eye(4) * 1e3
    ctx = MeasureContext(model=torch.nn.Linear(1, 1), logits=logits, labels=torch.arange(4))
    out = compute_measure("nuclear_norm", ctx)
    assert set(out) == {"norm=paper", "norm=deng"}
    assert out["norm=deng"] == pytest.approx(1.0)
    inv = compute_measure("inverse_margin", ctx)
    assert inv == {"": pytest.approx(1e-6)}
    with pytest.raises(KeyError):
        compute_measure("nope", ctx)
    with pytest.raises(MeasureError, match="logits"):
        compute_measure("nuclear_norm", MeasureContext(model=torch.nn.Linear(1, 1)))
