"""Comparisons of weights that the packed-training and reproducibility tests share."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to `b`'s largest magnitude (0 when `b` is all zeros and so is `a`)."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def assert_states_close(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor], rel: float = 1e-5) -> None:
    """Same entries in the same order; floating tensors within `rel` (`rel_diff`), the others
    (BatchNorm's step counters) equal."""
    assert list(got) == list(want)
    for name, a in got.items():
        b = want[name]
        if a.is_floating_point():
            assert rel_diff(a, b) <= rel, name
        else:
            assert torch.equal(a, b), name
