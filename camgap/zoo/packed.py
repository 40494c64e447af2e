"""Packed training: K runs of one ResNet architecture as one computation.

The K models sit side by side in the channel dimension: every convolution becomes one grouped
convolution over K groups, every BatchNorm one BatchNorm over K*C channels (so each run keeps
its own batch statistics and running averages), the residual adds and ReLUs are elementwise,
and the head is one batched matrix product. Small models leave a GPU (and, less so, a CPU)
bound by per-operator overhead; a pack pays that overhead once for K runs.

Why weights are concatenated at every forward instead of stored packed: each run keeps its
own ``nn.Module``, with the parameters and buffers of a solo model, so each run keeps its own
optimizer (type, lr, momentum, weight decay and state: ``torch.optim`` needs leaf tensors, which
slices of a packed tensor are not), its checkpoints are those of a run trained alone, and a run that
stops simply leaves the pack. The concatenation copies the weights once per step, which is small next
to the convolutions; its backward is a slice.

``torch.func.stack_module_state`` + ``vmap`` was the alternative: it keeps solo modules too,
but BatchNorm's in-place running-statistics update is not supported under ``vmap``.

Which runs share a pack: ``camgap.zoo.packing``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from camgap.errors import InputError
from camgap.zoo.loop import RunInputs, autocast, epoch_generator, training_batch

__all__ = ["PackedResNet", "pack_train_step", "packable", "train_pack_epoch", "evaluate_pack"]


def packable(model: nn.Module) -> bool:
    """A ResNet of the torchvision layout (stem conv1/bn1/relu[/maxpool], layer1-4 of BasicBlock or
    Bottleneck, global average pooling, one Linear): what ``PackedResNet`` knows how to pack."""
    needed = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")
    if not all(hasattr(model, n) for n in needed) or not isinstance(model.fc, nn.Linear):
        return False
    blocks = [b for n in needed[2:6] for b in getattr(model, n)]
    return all(isinstance(b, (BasicBlock, Bottleneck)) for b in blocks)


def _signature(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


class PackedResNet(nn.Module):
    """Runs K ResNets of the same architecture as one grouped computation.

    ``forward(x)`` takes one input per run, ``x`` of shape ``[K, B, 3, H, W]``, and returns the
    logits ``[K, B, num_classes]``; run k's logits equal ``models[k](x[k])`` up to float rounding.
    Train/eval mode, parameters, gradients and running statistics are those of the K models."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        if not models:
            raise InputError("a pack needs at least one model")
        if not all(packable(m) for m in models):
            raise InputError("only ResNets of the torchvision layout (BasicBlock/Bottleneck stages) can be packed")
        first = _signature(models[0])
        if any(_signature(m) != first for m in models[1:]):
            raise InputError("a pack holds models of one architecture: their state_dict keys or shapes differ")
        self.runs = nn.ModuleList(models)

    @property
    def k(self) -> int:
        return len(self.runs)

    def forward(self, x: Tensor) -> Tensor:
        k, b = x.shape[:2]
        if k != self.k:
            raise InputError(f"the pack holds {self.k} runs but got inputs for {k}")
        x = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])  # run k's channels at [3k, 3k+3)
        x = F.relu(self._bn([m.bn1 for m in self.runs], self._conv([m.conv1 for m in self.runs], x)))
        first = self.runs[0]
        if isinstance(getattr(first, "maxpool", None), nn.MaxPool2d):
            p = first.maxpool
            x = F.max_pool2d(x, p.kernel_size, p.stride, p.padding, p.dilation, p.ceil_mode)
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for i in range(len(getattr(first, stage))):
                x = self._block([getattr(m, stage)[i] for m in self.runs], x)
        feats = F.adaptive_avg_pool2d(x, 1).reshape(b, k, -1)  # [B, K, C]
        return torch.stack([m.fc(feats[:, i]) for i, m in enumerate(self.runs)])  # each run's own head

    def _block(self, blocks: list[nn.Module], x: Tensor) -> Tensor:
        identity = x
        out = F.relu(self._bn([b.bn1 for b in blocks], self._conv([b.conv1 for b in blocks], x)))
        out = self._bn([b.bn2 for b in blocks], self._conv([b.conv2 for b in blocks], out))
        if isinstance(blocks[0], Bottleneck):
            out = F.relu(out)
            out = self._bn([b.bn3 for b in blocks], self._conv([b.conv3 for b in blocks], out))
        if blocks[0].downsample is not None:
            convs = [b.downsample[0] for b in blocks]
            identity = self._bn([b.downsample[1] for b in blocks], self._conv(convs, x))
        return F.relu(out + identity)

    @staticmethod
    def _conv(convs: list[nn.Conv2d], x: Tensor) -> Tensor:
        c = convs[0]
        weight = torch.cat([m.weight for m in convs])
        bias = torch.cat([m.bias for m in convs]) if c.bias is not None else None
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups * len(convs))

    @staticmethod
    def _bn(bns: list[nn.BatchNorm2d], x: Tensor) -> Tensor:
        """One BatchNorm over the K*C channels; the running statistics each run's BatchNorm would
        have updated alone are written back into it."""
        b = bns[0]
        if b.momentum is None:
            raise InputError("packing needs BatchNorm with a momentum (cumulative averaging is not supported)")
        update = b.training and b.track_running_stats
        mean = torch.cat([m.running_mean for m in bns]) if b.track_running_stats else None
        var = torch.cat([m.running_var for m in bns]) if b.track_running_stats else None
        out = F.batch_norm(
            x,
            mean,
            var,
            torch.cat([m.weight for m in bns]) if b.affine else None,
            torch.cat([m.bias for m in bns]) if b.affine else None,
            b.training or not b.track_running_stats,
            b.momentum,
            b.eps,
        )
        if update:
            with torch.no_grad():
                for m, mu, v in zip(bns, mean.chunk(len(bns)), var.chunk(len(bns)), strict=True):
                    m.running_mean.copy_(mu)
                    m.running_var.copy_(v)
                    m.num_batches_tracked.add_(1)
        return out


def pack_train_step(
    pack: PackedResNet,
    optimizers: Sequence[torch.optim.Optimizer],
    x: Tensor,
    y: Tensor,
    stepping: Sequence[torch.optim.Optimizer] | None = None,
    precision: str = "fp32",
) -> Tensor:
    """One optimisation step of every run: ``x`` ``[K, B, 3, H, W]`` (normalised), ``y`` ``[K, B]``.

    The summed loss has, for each run's parameters, exactly the gradient of that run's own mean
    cross-entropy, so each optimizer steps as it would alone (only those in ``stepping``, when
    given). Returns the K losses."""
    with autocast(precision, x.device):
        logits = pack(x).float()
    k, b, c = logits.shape
    losses = F.cross_entropy(logits.reshape(k * b, c), y.reshape(k * b), reduction="none").view(k, b).mean(1)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    losses.sum().backward()
    for opt in optimizers if stepping is None else stepping:
        opt.step()
    return losses.detach()


def train_pack_epoch(
    pack: PackedResNet,
    optimizers: Sequence[torch.optim.Optimizer],
    runs: Sequence[RunInputs],
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    epochs: Sequence[int],
    frozen: Sequence[bool] | None = None,
    precision: str = "fp32",
) -> list[float]:
    """One epoch of every run of the pack (``epochs[k]``: run k's epoch number); each run draws its
    shuffle and augmentation from its own generator in the order it would alone
    (``camgap.zoo.loop.train_one_epoch``). A ``frozen`` run computes in the pack but is not
    updated: no optimizer step, its BatchNorm statistics restored. Returns each run's mean loss."""
    device = images.device
    n = int(labels.shape[0])
    frozen = list(frozen) if frozen is not None else [False] * len(runs)
    gens = [epoch_generator(r.seed, e, device) for r, e in zip(runs, epochs, strict=True)]
    perms = [torch.randperm(n, generator=g, device=device) for g in gens]
    kept = {k: {n_: b.clone() for n_, b in pack.runs[k].named_buffers()} for k, f in enumerate(frozen) if f}
    stepping = [opt for opt, f in zip(optimizers, frozen, strict=True) if not f]
    pack.train()
    running = torch.zeros(len(runs), device=device)
    for s in range(0, n, batch_size):
        batches = [
            training_batch(r, g, images, labels, perm[s : s + batch_size])
            for r, g, perm in zip(runs, gens, perms, strict=True)
        ]
        y = torch.stack([b[1] for b in batches])
        running += (
            pack_train_step(pack, optimizers, torch.stack([b[0] for b in batches]), y, stepping, precision) * y.shape[1]
        )
    with torch.no_grad():
        for k, buffers in kept.items():
            for name, b in pack.runs[k].named_buffers():
                b.copy_(buffers[name])
    return (running / n).tolist()


@torch.inference_mode()
def evaluate_pack(
    pack: PackedResNet,
    runs: Sequence[RunInputs],
    images: Tensor,
    labels: Tensor,
    batch_size: int = 256,
    precision: str = "fp32",
) -> list[tuple[float, float]]:
    """Clean pass of every run (eval mode, no augmentation): [(mean cross-entropy, accuracy)]."""
    from camgap.data.dataset import normalize

    pack.eval()
    n = int(labels.shape[0])
    total = torch.zeros(len(runs), dtype=torch.float64, device=images.device)
    correct = torch.zeros(len(runs), dtype=torch.int64, device=images.device)
    for s in range(0, n, batch_size):
        x, y = images[s : s + batch_size], labels[s : s + batch_size]
        with autocast(precision, images.device):
            out = pack(torch.stack([normalize(x, r.mean, r.std) for r in runs])).float()  # [K, B, C]
        k, b, c = out.shape
        ce = F.cross_entropy(out.reshape(k * b, c), y.repeat(k), reduction="none").view(k, b)
        total += ce.sum(1).double()
        correct += (out.argmax(2) == y).sum(1)
    return [(float(t) / n, int(c) / n) for t, c in zip(total, correct, strict=True)]
