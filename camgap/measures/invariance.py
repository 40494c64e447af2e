"""Effective invariance (paper eq. A3; Deng et al. 2023 "On the Strong Correlation Between
Model Invariance and Generalization").

For an image x and a transform T, with y_hat / p_hat the predicted class / its softmax
probability on x and y_hat_t / p_hat_t those on T(x):

    EI(x, T(x)) = sqrt(p_hat_t * p_hat) if y_hat_t == y_hat else 0.

The measure is the mean over the training images and the transforms. Transforms:

* ``"rotation"``: rotations by 90, 180 and 270 degrees of the image tensor's H, W plane
  (``torch.rot90`` on dims (-2, -1): a real rotation of every channel; the reference release's
  rotation code is broken and not reproduced).
* ``"grayscale"``: the batch is un-normalised with ``mean``/``std``, converted to luminance
  Y = 0.299 R + 0.587 G + 0.114 B (ITU-R 601, as ``torchvision``'s ``rgb_to_grayscale``)
  replicated to the 3 channels, and re-normalised.

The clean pass is not repeated: the caller passes the logits of its one forward pass over
the training set; only the transformed passes run here, over ``images`` - an iterable of
normalised image batches (or tuples whose first element is the batch) in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from camgap.errors import InputError
from camgap.measures.registry import MeasureError

LUMA = (0.299, 0.587, 0.114)


def rotate(images: torch.Tensor, angle: int) -> torch.Tensor:
    """Rotate ``[..., H, W]`` images counter-clockwise by a multiple of 90 degrees."""
    if angle % 90:
        raise InputError(f"only multiples of 90 degrees are supported, got {angle}")
    return torch.rot90(images, k=(angle // 90) % 4, dims=(-2, -1))


def grayscale(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Grayscale a normalised ``[B, 3, H, W]`` batch in unnormalised space, then re-normalise."""
    if images.shape[-3] != 3:
        raise InputError(f"grayscale needs 3-channel images, got {images.shape[-3]} channels")
    shape = (3, 1, 1)
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(shape)
    w = torch.as_tensor(LUMA, dtype=images.dtype, device=images.device).view(shape)
    raw = images * s + m
    y = (raw * w).sum(dim=-3, keepdim=True)
    return (y - m) / s


def ei_scores(clean_logits: torch.Tensor, transformed_logits: torch.Tensor) -> torch.Tensor:
    """Per-image EI values ``[B]`` from the clean and transformed logits."""
    p = torch.softmax(clean_logits.double(), dim=1)
    pt = torch.softmax(transformed_logits.double(), dim=1)
    conf, pred = p.max(dim=1)
    conf_t, pred_t = pt.max(dim=1)
    return torch.where(pred == pred_t, torch.sqrt(conf * conf_t), torch.zeros_like(conf))


@torch.no_grad()
def effective_invariance(
    model: nn.Module,
    logits: torch.Tensor,
    images: Iterable,
    transform: str = "rotation",
    angles: Sequence[int] = (90, 180, 270),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    per_image: bool = False,
) -> float | torch.Tensor:
    """Mean effective invariance over the images (and the angles for ``"rotation"``).

    ``logits``: ``[N, K]`` clean-pass logits; ``images``: iterable of normalised batches in the
    same order (N images in all). ``per_image=True`` returns the ``[N]`` per-image means
    instead. The model runs in eval mode (its mode is restored)."""
    if not torch.isfinite(logits).all():
        raise MeasureError("non-finite logits (NaN/inf in the model's outputs)")
    if transform == "rotation":
        transforms = [lambda x, a=a: rotate(x, a) for a in angles]
    elif transform == "grayscale":
        if mean is None or std is None:
            raise InputError("grayscale effective invariance needs mean and std")
        transforms = [lambda x: grayscale(x, mean, std)]
    else:
        raise InputError(f"transform must be 'rotation' or 'grayscale', got {transform!r}")
    if not transforms:
        raise InputError("no transform (empty angles)")
    per = per_transform_means(model, logits, images, transforms, ei_scores)
    return per if per_image else float(per.mean())


@torch.no_grad()
def per_transform_means(
    model: nn.Module,
    logits: torch.Tensor,
    images: Iterable,
    transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``[N]`` per-image means over ``transforms`` of ``score(clean logits, logits on t(x))``.

    ``logits``: ``[N, K]`` clean-pass logits; ``images``: iterable of normalised batches (or
    tuples whose first element is the batch) in the same order, N images in all; each transform
    is applied to each batch in order. The model runs in eval mode (its mode is restored)."""
    if not torch.isfinite(logits).all():
        raise MeasureError("non-finite logits (NaN/inf in the model's outputs)")
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = []
    start = 0
    try:
        for batch in images:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x.to(dev)
            b = x.shape[0]
            clean = logits[start : start + b].to(dev)
            if clean.shape[0] != b:
                raise InputError(f"more images than logits ({logits.shape[0]})")
            per_t = []
            for t in transforms:
                out = model(t(x))
                if not torch.isfinite(out).all():
                    raise MeasureError("non-finite logits on transformed images")
                per_t.append(score(clean, out))
            scores.append(torch.stack(per_t).mean(dim=0).cpu())
            start += b
    finally:
        model.train(was_training)
    if start != logits.shape[0]:
        raise InputError(f"{start} images for {logits.shape[0]} logits")
    return torch.cat(scores)
