"""Measures computed from the training-set logits of the shared forward pass only.

* :func:`margins` - correct-class logit minus the largest other logit, per image.
* :func:`margin_percentile` - gamma, the 10th percentile of the margins (the normaliser of the
  margin-based norm measures); raises :class:`MeasureUndefined` when gamma <= 0.
* :func:`nuclear_norm` - paper eq. A2 and Deng et al. 2023's normalisation of the nuclear norm
  of the prediction matrix P = softmax(logits) (N x K).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from camgap.errors import InputError
from camgap.measures.registry import MeasureError, MeasureUndefined


def _check_logits(logits: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if logits.dim() != 2:
        raise InputError(f"logits must be [N, K], got shape {tuple(logits.shape)}")
    if logits.shape[0] == 0:
        raise MeasureError("no training images (empty logits)")
    if not torch.isfinite(logits).all():
        raise MeasureError("non-finite logits (NaN/inf in the model's outputs)")
    if labels is not None:
        if labels.shape != (logits.shape[0],):
            raise InputError(f"labels must be [{logits.shape[0]}], got {tuple(labels.shape)}")
        if logits.shape[1] < 2:
            raise InputError("margins need at least 2 classes")


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[N]`` margins: logit of the true class minus the largest logit of the other classes
    (negative for a misclassified image). Computed in float64."""
    _check_logits(logits, labels)
    z = logits.detach().double()
    idx = labels.to(z.device, torch.long).view(-1, 1)
    correct = z.gather(1, idx).squeeze(1)
    others = z.scatter(1, idx, -math.inf)
    return correct - others.max(dim=1).values


def margin_percentile(logits: torch.Tensor, labels: torch.Tensor, percentile: float = 10.0) -> float:
    """gamma = the ``percentile``-th percentile of the margins (numpy's linear interpolation).

    Raises :class:`MeasureUndefined` when gamma <= 0 (more than ``percentile`` % of the training
    images misclassified or on the boundary): the margin-normalised measures are undefined."""
    m = margins(logits, labels).cpu().numpy()
    gamma = float(np.percentile(m, percentile))
    if not gamma > 0:
        raise MeasureUndefined(
            f"{percentile:g}th-percentile margin gamma = {gamma:.4g} <= 0 (too many training images misclassified)"
        )
    return gamma


def nuclear_norm_of(p: torch.Tensor, method: str = "auto") -> float:
    """||P||_* (sum of singular values) in float64.

    ``method="svd"``: ``torch.linalg.svdvals``; ``"gram"``: square roots of the eigenvalues of
    the K x K Gram matrix P^T P (memory O(K^2), for a large training set);
    ``"auto"``: svd when N*K <= 2e7, else gram."""
    p = p.detach().double()
    if method == "auto":
        method = "svd" if p.numel() <= 20_000_000 else "gram"
    if method == "svd":
        return float(torch.linalg.svdvals(p).sum())
    if method == "gram":
        small = p.T @ p if p.shape[0] >= p.shape[1] else p @ p.T
        ev = torch.linalg.eigvalsh(small).clamp_min(0)
        return float(ev.sqrt().sum())
    raise InputError(f"method must be 'auto', 'svd' or 'gram', got {method!r}")


def nuclear_norm(logits: torch.Tensor, method: str = "auto") -> dict[str, float]:
    """Nuclear-norm measures of the prediction matrix P = softmax(logits), N x K.

    Returns ``{"paper": (1/N) * ||P||_* / sqrt(min(N,K) * N),   # paper eq. A2
               "deng":  ||P||_* / sqrt(N * min(N,K))}`` (Deng et al. 2023, in [0, 1]).
    The paper's extra 1/N only rescales the measure within one training-set size."""
    _check_logits(logits)
    n, k = logits.shape
    p = torch.softmax(logits.detach().double(), dim=1)
    nuc = nuclear_norm_of(p, method=method)
    deng = nuc / math.sqrt(n * min(n, k))
    return {"paper": deng / n, "deng": deng}
