"""PackedResNet against the solo models it packs: forward, running statistics, gradients and
several optimizer steps with a different optimizer per run. The solo computation is the oracle,
compared in float64 (the `float64` fixture), where a pack equals its runs alone (`EXACT`)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.resnet import Bottleneck, ResNet

from camgap.errors import InputError
from camgap.models import create_model
from camgap.zoo.packed import PackedResNet, pack_train_step, packable
from tests.helpers.tensors import EXACT, assert_states_equal, rel_diff

# Both sides compute each image's loss from the same logits in float32 and sum them in another
# order: the means differ by at most 2 (n - 1) float32 epsilons (2^-24) relative, for n >= 0 terms.
F32_SUM = 2 * 2.0**-24


def _models(k: int, seed: int = 0, **kw):
    out = []
    for i in range(k):
        torch.manual_seed(seed + i)
        out.append(create_model("small_resnet", num_classes=5, width=8, **kw))
    return out


@pytest.mark.parametrize(
    "train,strides", [(False, {}), (True, {}), (True, {"strides": (1, 2, 2, 1), "stem_stride": 2})]
)
def test_forward_equals_each_solo_model(train, strides, float64):
    models = _models(3, **strides)
    solo = copy.deepcopy(models)
    pack = PackedResNet(models).train(train)
    for m in solo:
        m.train(train)
    torch.manual_seed(9)
    x = torch.randn(3, 4, 3, 16, 16)
    out = pack(x)
    assert out.shape == (3, 4, 5)
    for k, m in enumerate(solo):
        expected = m(x[k])
        assert out.dtype == torch.float64 and rel_diff(out[k], expected) <= EXACT
        for (name, a), b in zip(models[k].named_buffers(), m.buffers(), strict=True):  # running stats updated alike
            if a.is_floating_point():
                assert rel_diff(a, b) <= EXACT, name
            else:
                assert torch.equal(a, b), name


def test_bottleneck_resnet_packs_too(float64):
    """A torchvision Bottleneck ResNet (narrow, one shortcut block and one identity block in its
    first stage: resnet50's structure, at a fraction of its float64 cost)."""
    torch.manual_seed(0)
    models = [ResNet(Bottleneck, [2, 1, 1, 1], num_classes=3, width_per_group=16) for _ in range(2)]
    solo = copy.deepcopy(models)
    pack = PackedResNet(models).eval()
    x = torch.randn(2, 1, 3, 32, 32)
    out = pack(x)
    for k, m in enumerate(solo):
        assert rel_diff(out[k], m.eval()(x[k])) <= EXACT


def test_training_steps_equal_solo_training_with_a_different_optimizer_per_run(float64):
    models = _models(3, seed=4)
    solo = copy.deepcopy(models)

    def optimizers(ms):
        return [
            torch.optim.SGD(ms[0].parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4),
            torch.optim.Adam(ms[1].parameters(), lr=1e-3, weight_decay=0.0),
            torch.optim.SGD(ms[2].parameters(), lr=0.05, momentum=0.0, weight_decay=1e-3),
        ]

    pack, opts, solo_opts = PackedResNet(models).train(), optimizers(models), optimizers(solo)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(3, 8, 3, 16, 16, generator=gen)
        y = torch.randint(0, 5, (3, 8), generator=gen)
        losses = pack_train_step(pack, opts, x, y)
        for k, (m, opt) in enumerate(zip(solo, solo_opts, strict=True)):
            m.train()
            loss = F.cross_entropy(m(x[k]).float(), y[k])  # the loss in float32, as train_one_epoch
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            assert float(losses[k]) == pytest.approx(loss.item(), rel=F32_SUM * 8)
    for packed_model, solo_model in zip(models, solo, strict=True):
        assert_states_equal(packed_model.state_dict(), solo_model.state_dict())


def test_what_cannot_be_packed_is_refused():
    with pytest.raises(InputError, match="one architecture"):
        PackedResNet([create_model("small_resnet", 5, width=8), create_model("small_resnet", 5, width=16)])
    with pytest.raises(InputError, match="torchvision layout"):
        PackedResNet([torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))])
    assert not packable(torch.nn.Linear(2, 2))
    with pytest.raises(InputError, match="holds 2 runs"):
        PackedResNet(_models(2))(torch.zeros(3, 1, 3, 8, 8))


def test_a_packed_epoch_is_each_runs_solo_epoch(float64):
    from camgap.zoo.loop import RunInputs, evaluate, train_one_epoch
    from camgap.zoo.packed import evaluate_pack, train_pack_epoch

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 5, (40,), generator=gen)
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    runs = [
        RunInputs(1, True, 0.5, 0.4, *imagenet),
        RunInputs(2, False, 0.5, 0.4, *imagenet),
        RunInputs(3, True, 0.5, 0.2, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    ]
    models = _models(3, seed=7)
    solo = copy.deepcopy(models)
    lrs = (0.05, 0.01, 0.1)
    opts = [torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9) for m, lr in zip(models, lrs, strict=True)]
    solo_opts = [torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9) for m, lr in zip(solo, lrs, strict=True)]
    pack = PackedResNet(models)
    train_pack_epoch(pack, opts, runs, images, labels, batch_size=16, epochs=[1, 1, 1])  # 3 steps, the last one partial
    for m, opt, run in zip(solo, solo_opts, runs, strict=True):
        train_one_epoch(m, opt, run, images, labels, 16, 1)
    for a, b in zip(models, solo, strict=True):
        assert_states_equal(a.state_dict(), b.state_dict())
    packed_eval = evaluate_pack(pack, runs, images, labels, batch_size=32)
    for (loss, acc), m, run in zip(packed_eval, solo, runs, strict=True):
        solo_loss, solo_acc = evaluate(m, images, labels, run.mean, run.std, torch.device("cpu"), 32)
        assert loss == pytest.approx(solo_loss, rel=F32_SUM * len(labels))
        assert acc == solo_acc
