"""Augmentation consistency: how much the model's output moves under its training augmentation
(the idea of the PGDL 2020 competition's 2nd place, "augmentation consistency"; Jiang et al. 2020,
"NeurIPS 2020 Competition: Predicting Generalization in Deep Learning").

For a training image x with softmax output p(x) on the clean image and A_k(x) the k-th random
augmentation of x:

    AC = mean over the N training images and k = 1..K of  1/2 * || p(x) - p(A_k(x)) ||_1,

the total-variation distance between the two output distributions: 0 when the augmentation never
changes the output, 1 when the outputs put their mass on disjoint classes. Larger = less consistent.

The augmentation is camgap's training augmentation (``camgap.zoo.loop.augment_batch``: random
horizontal flip, then brightness / contrast / saturation jitter), with the flip probability and
jitter strength the run trained with, or camgap's training defaults (``TrainConfig``) for a run
that trained without augmentation; the values used are in the measurement's params. The batches
are normalised: each is un-normalised with ``mean`` / ``std`` to [0, 1], augmented and
re-normalised. Draws come from one ``torch.Generator`` seeded with ``seed`` on the batches'
device, consumed batch by batch and, within a batch, draw by draw: the same seed, batch size and
image order give the same draws.

The clean outputs are not recomputed: the caller passes the logits of its one forward pass over
the training set, in the order of ``images``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from camgap.data.dataset import normalize
from camgap.errors import InputError


def default_augmentation() -> tuple[float, float]:
    """(flip_prob, jitter) of camgap's training defaults, for runs that trained without one."""
    from camgap.zoo.config import TrainConfig

    defaults = TrainConfig()
    return float(defaults.flip_prob), float(defaults.jitter)


def total_variation(clean_logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """Per-image ``[B]`` total-variation distance 1/2 ||softmax(a) - softmax(b)||_1, in float64."""
    p = torch.softmax(clean_logits.double(), dim=1)
    q = torch.softmax(other_logits.double(), dim=1)
    return 0.5 * (p - q).abs().sum(dim=1)


def unnormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised ``[B, 3, H, W]`` -> the [0, 1] images they came from."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return images * s + m


def augment_normalized(
    images: torch.Tensor,
    generator: torch.Generator,
    flip_prob: float,
    jitter: float,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """One draw of the training augmentation on a normalised batch, normalised again."""
    from camgap.zoo.loop import augment_batch

    # augment_batch takes 0..255 images (a uint8 batch in training) and divides by 255.
    raw = unnormalize(images.float(), mean, std).clamp_(0.0, 1.0).mul_(255.0)
    return normalize(augment_batch(raw, generator, flip_prob, jitter), mean, std)


@torch.no_grad()
def augmentation_consistency(
    model: nn.Module,
    logits: torch.Tensor,
    images: Iterable,
    mean: Sequence[float],
    std: Sequence[float],
    flip_prob: float,
    jitter: float,
    draws: int = 1,
    seed: int = 0,
    per_image: bool = False,
) -> float | torch.Tensor:
    """Mean total variation between the clean and the augmented softmax outputs.

    ``logits``: ``[N, K]`` clean-pass logits; ``images``: iterable of normalised batches (or
    tuples whose first element is the batch) in the same order, N images in all. ``draws``
    augmented copies per image. ``per_image=True`` returns the ``[N]`` per-image means over the
    draws. The model runs in eval mode (its mode is restored)."""
    if draws < 1:
        raise InputError(f"draws must be >= 1, got {draws}")
    from camgap.measures.invariance import per_transform_means

    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(int(seed))

    def augment(x: torch.Tensor) -> torch.Tensor:
        return augment_normalized(x, generator, flip_prob, jitter, mean, std)

    per = per_transform_means(model, logits, images, [augment] * draws, total_variation)
    return per if per_image else float(per.mean())
