"""Comparisons of weights that the packed-training tests share."""

from __future__ import annotations

from collections.abc import Mapping

import torch

# Two float64 computations that do the same arithmetic agree bit for bit on the CPUs we know;
# the margin (four orders above float64's epsilon) allows a BLAS that blocks one of them otherwise.
EXACT = 1e-12


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to `b`'s largest magnitude (0 when `b` is all zeros and so is `a`)."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def assert_states_equal(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor]) -> None:
    """Same entries in the same order; floating tensors float64 and equal (within `EXACT`), the
    others (BatchNorm's step counters) equal."""
    assert list(got) == list(want)
    for name, a in got.items():
        b = want[name]
        if a.is_floating_point():
            assert a.dtype == b.dtype == torch.float64, name
            assert rel_diff(a, b) <= EXACT, name
        else:
            assert torch.equal(a, b), name
