"""Davies-Bouldin index of early-layer features x label-wise mixup error (the PGDL 2020
competition's 1st place: Natekar & Sharma 2020, "Representation Based Complexity Measures for
Predicting Generalization in Deep Learning").

On a seeded subset of ``images`` training images (the first ``images`` of a random permutation
of the training set, drawn from a ``torch.Generator`` seeded with ``seed``, or all of them when
there are fewer):

* **DB**: the Davies-Bouldin index (as ``sklearn.metrics.davies_bouldin_score``) of the features
  of the model's first ``Conv2d`` (its output, in module order: the "initial" layer of the
  reference code), max-pooled with a ``pool`` x ``pool`` window and stride (``pool`` = 4 as in
  the reference; the window shrinks to the map when the map is smaller) and flattened, with the
  labels as the clusters. Large = the classes' early features overlap.
* **mixup accuracy**: every subset image x_i is mixed with a partner x_j of the same label drawn
  uniformly among the subset's other images of that label, m_i = lam x_i + (1 - lam) x_j
  (lam = 0.5 as in the reference; mixing normalised images equals mixing the raw ones, since the
  normalisation is affine); per label, the share of its mixed images the model classifies as
  that label; the mean over the labels that have at least two images.
* **product** (the measure): DB x (1 - mixup accuracy), as in the reference's scoring function.
  Large = a larger generalization gap is predicted.

Differences from the reference code, which used TensorFlow batches: it averages DB over ten
groups of 120 images and mixes every pair of same-label images within batches of 10 images per
class; here DB is one index over the whole subset and each image gets one random partner, which
costs one forward pass over the subset.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from camgap.errors import InputError
from camgap.measures.registry import MeasureError, MeasureUndefined


class _Stop(Exception):
    """Raised by the feature hook: the rest of the forward pass is not needed."""


def first_conv(model: nn.Module) -> tuple[str, nn.Module]:
    """The model's first ``Conv2d`` in module order, with its name."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise MeasureUndefined("the model has no Conv2d layer for the early-layer features")


@torch.no_grad()
def layer_features(model: nn.Module, layer: nn.Module, images: torch.Tensor, pool: int = 4) -> np.ndarray:
    """``[B, D]`` float64: ``layer``'s output on ``images``, max-pooled ``pool`` x ``pool``
    (stride ``pool``), flattened. The forward pass stops at ``layer``."""
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output)
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        model(images)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise MeasureUndefined("the early layer did not run in the forward pass")
    out = captured[0]
    k = min(pool, out.shape[-2], out.shape[-1])
    return F.max_pool2d(out, kernel_size=k, stride=k).flatten(1).double().cpu().numpy()


def davies_bouldin(features: np.ndarray, labels: np.ndarray) -> float:
    """Davies-Bouldin index of ``features`` clustered by ``labels``, as scikit-learn's
    ``davies_bouldin_score`` computes it (the reference code's copy of it): S_i the mean Euclidean
    distance of cluster i to its centroid, M_ij the distance between centroids, the mean over i of
    max over j != i of (S_i + S_j) / M_ij; 0 when every S_i or every M_ij is ~0, and a pair with
    equal centroids left out of the max. Undefined with fewer than 2 labels or no image more than
    labels. In numpy and scipy: scikit-learn is not a camgap dependency."""
    from scipy.spatial.distance import cdist

    x = np.asarray(features, dtype=np.float64)
    keys, which = np.unique(labels, return_inverse=True)
    k = len(keys)
    if not 1 < k < len(x):
        n = len(x)
        raise MeasureUndefined(f"Davies-Bouldin needs 2 to n-1 labels among n images: {k} label(s), {n} image(s)")
    centroids = np.stack([x[which == i].mean(axis=0) for i in range(k)])
    spread = np.array([np.linalg.norm(x[which == i] - centroids[i], axis=1).mean() for i in range(k)])
    between = cdist(centroids, centroids)
    if np.allclose(spread, 0) or np.allclose(between, 0):
        return 0.0
    between[between == 0] = np.inf
    return float(np.max((spread[:, None] + spread[None, :]) / between, axis=1).mean())


def mixup_partners(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per image, the index of a uniformly drawn other image of the same label; -1 when its label
    has one image only. Labels in ascending order, each drawing for its images in order."""
    partners = torch.full_like(labels, -1)
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        n = idx.numel()
        if n < 2:
            continue
        shift = torch.randint(1, n, (n,), generator=generator)
        partners[idx] = idx[(torch.arange(n) + shift) % n]
    return partners


@torch.no_grad()
def label_mixup_accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, partners: torch.Tensor, lam: float = 0.5
) -> float:
    """Mean over labels of the accuracy on the mixed images lam x_i + (1 - lam) x_partner(i)."""
    keep = partners >= 0
    if not bool(keep.any()):
        raise MeasureUndefined("no label has two images to mix")
    i = torch.nonzero(keep).flatten()
    mixed = lam * images[i] + (1.0 - lam) * images[partners[i]]
    pred = model(mixed).argmax(dim=1).cpu()
    y = labels[i]
    return float(np.mean([float((pred[y == c] == c).double().mean()) for c in torch.unique(y).tolist()]))


def select_subset(batches: Iterable, n: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of the seeded subset: the first ``n`` of a random permutation of the
    ``count`` training images (all when fewer), in training order."""
    gen = torch.Generator().manual_seed(int(seed))
    chosen = torch.zeros(count, dtype=torch.bool)
    chosen[torch.randperm(count, generator=gen)[:n]] = True
    xs, ys, start = [], [], 0
    for batch in batches:
        x, y = batch[0], batch[1]
        keep = chosen[start : start + x.shape[0]]
        xs.append(x[keep.to(x.device)])
        ys.append(y[keep.to(y.device)].cpu())
        start += x.shape[0]
    if start != count:
        raise InputError(f"{start} training images, expected {count}")
    return torch.cat(xs), torch.cat(ys).long()


@torch.no_grad()
def db_mixup(
    model: nn.Module,
    batches: Iterable,
    count: int,
    images: int = 300,
    pool: int = 4,
    lam: float = 0.5,
    seed: int = 0,
) -> dict[str, float]:
    """``{"db", "mixup_accuracy", "product", "images"}`` on the seeded subset (module docstring)."""
    if images < 2 or pool < 1 or not 0.0 <= lam <= 1.0:
        raise InputError(f"need images >= 2, pool >= 1 and lam in [0, 1]; got {images}, {pool}, {lam}")
    dev = next(model.parameters()).device
    x, y = select_subset(batches, images, count, seed)
    x = x.to(dev)
    was_training = model.training
    model.eval()
    try:
        _, layer = first_conv(model)
        features = layer_features(model, layer, x, pool)
        if not np.isfinite(features).all():
            raise MeasureError("non-finite early-layer features")
        db = davies_bouldin(features, y.numpy())
        partners = mixup_partners(y, torch.Generator().manual_seed(int(seed) + 1))
        acc = label_mixup_accuracy(model, x, y, partners, lam)
    finally:
        model.train(was_training)
    return {"db": db, "mixup_accuracy": acc, "product": db * (1.0 - acc), "images": float(len(y))}
