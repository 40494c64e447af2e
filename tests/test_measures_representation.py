"""Davies-Bouldin x label-wise mixup against brute force from the definitions and hand-made models."""

import numpy as np
import pytest
import torch
from torch import nn

from camgap.measures.registry import MeasureContext, MeasureUndefined, compute_measure
from camgap.measures.representation import (
    davies_bouldin,
    first_conv,
    label_mixup_accuracy,
    layer_features,
    mixup_partners,
    select_subset,
)


def _db_brute_force(x: np.ndarray, labels: np.ndarray) -> float:
    """Davies & Bouldin 1979 with S_i the mean Euclidean distance of cluster i to its centroid,
    M_ij the distance between centroids, DB = mean_i max_{j != i} (S_i + S_j) / M_ij."""
    ks = sorted(set(labels.tolist()))
    cent = {k: [sum(r[d] for r in x[labels == k]) / (labels == k).sum() for d in range(x.shape[1])] for k in ks}
    spread = {
        k: sum(sum((r[d] - cent[k][d]) ** 2 for d in range(x.shape[1])) ** 0.5 for r in x[labels == k])
        / (labels == k).sum()
        for k in ks
    }
    total = 0.0
    for i in ks:
        worst = 0.0
        for j in ks:
            if j != i:
                m = sum((cent[i][d] - cent[j][d]) ** 2 for d in range(x.shape[1])) ** 0.5
                worst = max(worst, (spread[i] + spread[j]) / m)
        total += worst
    return total / len(ks)


def test_davies_bouldin_by_hand_and_brute_force():
    # {0, 2} and {10, 12}: centroids 1 and 11, spreads 1 and 1: DB = (1 + 1) / 10
    assert davies_bouldin(np.array([[0.0], [2.0], [10.0], [12.0]]), np.array([0, 0, 1, 1])) == pytest.approx(0.2)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, s, size=(n, 5)) for c, s, n in ((0, 1, 7), (3, 0.5, 4), (-2, 2, 9))])
    labels = np.repeat([2, 0, 5], [7, 4, 9])  # labels need not be 0..k-1
    assert davies_bouldin(x, labels) == pytest.approx(_db_brute_force(x, labels), rel=1e-12)


def test_davies_bouldin_is_scikit_learns():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 7))
    labels = rng.integers(0, 4, size=30)
    assert davies_bouldin(x, labels) == pytest.approx(sklearn_metrics.davies_bouldin_score(x, labels), rel=1e-12)
    # its conventions: equal centroids leave the pair out, all spreads 0 give 0
    same = np.array([[0.0], [2.0], [1.0], [1.0], [5.0], [7.0]])
    lab = np.array([0, 0, 1, 1, 2, 2])
    assert davies_bouldin(same, lab) == pytest.approx(sklearn_metrics.davies_bouldin_score(same, lab), rel=1e-12)
    points = np.array([[0.0], [0.0], [3.0], [3.0]])
    assert davies_bouldin(points, np.array([0, 0, 1, 1])) == 0.0


def test_davies_bouldin_needs_two_labels_and_more_images():
    with pytest.raises(MeasureUndefined, match="1 label"):
        davies_bouldin(np.zeros((3, 2)), np.zeros(3, dtype=int))
    with pytest.raises(MeasureUndefined, match="2 label"):
        davies_bouldin(np.zeros((2, 2)), np.array([0, 1]))


class _Boom(nn.Module):
    def forward(self, x):
        raise AssertionError("the forward pass should have stopped at the early layer")


def test_layer_features_are_block_maxima_and_stop_the_forward():
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(2.0)
    model = nn.Sequential(nn.Identity(), conv, _Boom())
    assert first_conv(model) == ("1", conv)
    x = torch.randn(3, 1, 8, 9)
    got = layer_features(model, conv, x, pool=4)
    # 2x each pixel, max over non-overlapping 4x4 blocks (the ninth column is dropped)
    blocks = (2 * x[:, 0, :8, :8]).reshape(3, 2, 4, 2, 4).amax(dim=(2, 4)).reshape(3, 4)
    np.testing.assert_allclose(got, blocks.double().numpy(), rtol=1e-6)
    small = layer_features(model, conv, x[:, :, :2, :3], pool=4)  # map smaller than the window
    np.testing.assert_allclose(small, (2 * x[:, 0, :2, :2]).amax(dim=(1, 2)).double().numpy()[:, None], rtol=1e-6)


def test_no_conv_is_undefined():
    with pytest.raises(MeasureUndefined, match="no Conv2d"):
        first_conv(nn.Linear(2, 2))


class _Brightness(nn.Module):
    """Predicts class 1 when the image's mean exceeds 0.5, else class 0."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        m = self.w * x.mean(dim=(1, 2, 3))
        return torch.stack([0.5 - m, m - 0.5], dim=1)


def _const(values):
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()


def test_mixup_accuracy_by_hand():
    """Two images per label: each is mixed with the other. Label 0: {0.0, 0.8} -> 0.4, class 0
    (right); label 1: {0.6, 0.2} -> 0.4, class 0 (wrong); label 2 has one image (no pair)."""
    x = _const([0.0, 0.6, 0.8, 0.2, 0.9])
    y = torch.tensor([0, 1, 0, 1, 2])
    partners = mixup_partners(y, torch.Generator().manual_seed(0))
    assert partners.tolist() == [2, 3, 0, 1, -1]
    assert label_mixup_accuracy(_Brightness(), x, y, partners) == pytest.approx(0.5)
    # lam = 1 keeps the images themselves: 0.0 and 0.6 right, 0.8 and 0.2 wrong: 1/2 per label
    assert label_mixup_accuracy(_Brightness(), x, y, partners, lam=1.0) == pytest.approx(0.5)
    assert label_mixup_accuracy(_Brightness(), x, y, torch.tensor([2, -1, 0, -1, -1]), lam=1.0) == 0.5
    with pytest.raises(MeasureUndefined, match="no label has two images"):
        label_mixup_accuracy(_Brightness(), x[:2], y[:2], torch.tensor([-1, -1]))


def test_mixup_accuracy_against_brute_force():
    rng = np.random.default_rng(3)
    values = rng.uniform(0, 1, size=23)
    y = torch.tensor(rng.integers(0, 4, size=23))
    partners = mixup_partners(y, torch.Generator().manual_seed(5))
    for i, j in enumerate(partners.tolist()):  # a partner is another image of the same label
        assert j != i and y[j] == y[i]
    correct: dict[int, list[bool]] = {}
    for i, j in enumerate(partners.tolist()):
        mixed = 0.3 * values[i] + 0.7 * values[j]
        correct.setdefault(int(y[i]), []).append(int(mixed > 0.5) == int(y[i]))  # classes 2, 3: never
    expected = np.mean([np.mean(v) for _, v in sorted(correct.items())])
    got = label_mixup_accuracy(_Brightness(), _const(values), y, partners, lam=0.3)
    assert got == pytest.approx(expected)


def test_partners_are_uniform_over_the_other_images_of_the_label():
    y = torch.zeros(4, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    counts = np.zeros((4, 4))
    for _ in range(2000):
        for i, j in enumerate(mixup_partners(y, gen).tolist()):
            counts[i, j] += 1
    assert np.all(np.diag(counts) == 0)
    off = counts[~np.eye(4, dtype=bool)] / 2000
    assert np.all(np.abs(off - 1 / 3) < 0.05)


def test_subset_is_seeded_and_independent_of_the_batching():
    x = torch.arange(50.0).view(50, 1, 1, 1)
    y = torch.arange(50) % 3

    def batches(size):
        return [(x[s : s + size], y[s : s + size]) for s in range(0, 50, size)]

    a_x, a_y = select_subset(batches(7), 20, 50, seed=4)
    b_x, b_y = select_subset(batches(64), 20, 50, seed=4)
    assert torch.equal(a_x, b_x) and torch.equal(a_y, b_y)
    ids = a_x.flatten().long()
    assert len(ids) == 20 and torch.equal(ids, ids.sort().values) and torch.equal(a_y, ids % 3)
    assert not torch.equal(select_subset(batches(7), 20, 50, seed=5)[0], a_x)
    assert len(select_subset(batches(7), 500, 50, seed=4)[0]) == 50  # all when fewer


def test_registered_measure_is_db_times_mixup_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.randn(40, 3, 8, 8)
    y = torch.arange(40) % 4
    ctx = MeasureContext(model=model, labels=y, batches=lambda: iter([(x[:25], y[:25]), (x[25:], y[25:])]), seed=2)
    out = compute_measure("db_mixup", ctx, images=30)
    base = "images=30,lambda=0.5,layer=first_conv,pool=4"
    db, acc = out[f"form=db,{base}"], out[f"form=mixup_accuracy,{base}"]
    assert set(out) == {f"form={f},{base}" for f in ("product", "db", "mixup_accuracy")}
    assert out[f"form=product,{base}"] == pytest.approx(db * (1 - acc))

    # the same numbers from the definitions: the seeded subset, features, DB, partners (seed + 1)
    sx, sy = select_subset(ctx.batches(), 30, 40, seed=2)
    with torch.no_grad():
        feats = nn.functional.max_pool2d(model[0](sx), 4).flatten(1).double().numpy()
    assert db == pytest.approx(_db_brute_force(feats, sy.numpy()), rel=1e-9)
    partners = mixup_partners(sy, torch.Generator().manual_seed(3))
    with torch.no_grad():
        pred = model(0.5 * sx + 0.5 * sx[partners]).argmax(1)
    per_label = [float((pred[sy == c] == c).float().mean()) for c in range(4)]
    assert acc == pytest.approx(np.mean(per_label))
    # the counted fallback (no ctx.labels) gives the same
    ctx2 = MeasureContext(model=model, batches=ctx.batches, seed=2)
    assert compute_measure("db_mixup", ctx2, images=30) == out
