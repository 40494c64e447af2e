"""The training loop: what a run draws its batches from, one epoch, one clean evaluation pass.

Data. A worker keeps each split resident as uint8 ``[N, 3, S, S]`` on its device
(``load_split``: on the CPU the store's shared memory map; on a GPU one copy per worker, kept
across runs). Per batch, augmentation runs as batched tensor ops on the device
(``augment_batch``: random horizontal flip and colour jitter, the paper's "random flipping and
colour enhancement"), then ``normalize`` with the run's mean/std.

Order. A run's epoch draws from one generator seeded by (run seed, epoch): first its shuffle,
then its augmentation, batch by batch (``epoch_generator``, ``training_batch``). A pack
(``camgap.zoo.packed``) draws each run's batches from these same functions, so a run computes
on the same batches alone and in a pack.

Precision. bf16 autocast wraps each forward pass alone (``autocast``); "auto" is bf16 where the
device computes it natively (``bf16_support``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from camgap.data.dataset import normalize
from camgap.zoo.config import RunConfig

__all__ = [
    "RunInputs",
    "augment_batch",
    "autocast",
    "bf16_support",
    "choose_precision",
    "epoch_generator",
    "evaluate",
    "load_split",
    "native_bf16",
    "release_data_cache",
    "resolve_precision",
    "train_one_epoch",
    "training_batch",
]

_GRAY = (0.299, 0.587, 0.114)


# --- data -------------------------------------------------------------------------------


_DATA_CACHE: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}


def load_split(cache_dir: str | Path, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N,3,S,S], labels int64 [N]) resident on ``device``; cached per process."""
    from camgap.data.store import TensorStore

    key = (str(cache_dir), str(device))
    if key not in _DATA_CACHE:
        store = TensorStore.open(cache_dir)
        if device.type == "cpu":
            images, labels = store.images, store.labels  # memory map, shared page cache
        else:
            images, labels = store.images.to(device), store.labels.to(device)
        if len(_DATA_CACHE) >= 4:  # a worker rarely needs more than target + source splits
            _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
        _DATA_CACHE[key] = (images, labels)
    return _DATA_CACHE[key]


def release_data_cache() -> None:
    """Drop the splits this process keeps resident (and their GPU memory)."""
    _DATA_CACHE.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- augmentation and evaluation --------------------------------------------------------


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def augment_batch(
    images: torch.Tensor, generator: torch.Generator | None, flip_prob: float = 0.5, jitter: float = 0.4
) -> torch.Tensor:
    """Random horizontal flip and colour jitter on a uint8 batch ``[B,3,H,W]`` -> float in [0,1]
    (torch's default dtype, as ``normalize``).

    Per image: flip with probability ``flip_prob``; brightness, contrast and saturation
    factors drawn uniformly from ``[max(0, 1 - jitter), 1 + jitter]`` and applied in that
    order with torchvision's blend formulas (brightness: blend with black; contrast: with
    the image's mean grey level; saturation: with its greyscale image), clamping to [0,1]
    after each. All on the batch's device, as tensor ops over the whole batch.
    """
    x = images.to(torch.get_default_dtype()).div_(255.0)
    b = x.shape[0]
    dev = x.device
    if flip_prob > 0:
        flip = torch.rand(b, generator=generator, device=dev) < flip_prob
        x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    if jitter > 0:
        f = torch.empty(3, b, device=dev).uniform_(max(0.0, 1.0 - jitter), 1.0 + jitter, generator=generator)
        bright, contrast, sat = (f[i].view(b, 1, 1, 1) for i in range(3))
        x = (x * bright).clamp_(0.0, 1.0)
        m = _gray(x).mean(dim=(-1, -2), keepdim=True)
        x = ((x - m) * contrast + m).clamp_(0.0, 1.0)
        g = _gray(x)
        x = ((x - g) * sat + g).clamp_(0.0, 1.0)
    return x


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean,
    std,
    device: torch.device,
    batch_size: int = 256,
    precision: str = "fp32",
) -> tuple[float, float]:
    """Clean pass (eval mode, no augmentation): (mean cross-entropy, accuracy)."""
    model.eval()
    n = int(labels.shape[0])
    total = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for s in range(0, n, batch_size):
        x = images[s : s + batch_size].to(device, non_blocking=True)
        y = labels[s : s + batch_size].to(device, non_blocking=True)
        with autocast(precision, device):
            out = model(normalize(x, mean, std)).float()
        total += F.cross_entropy(out, y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum()
    return float(total) / n, int(correct) / n


@dataclass(frozen=True)
class RunInputs:
    """What a run draws its training batches from, besides the data: its seed (shuffle and
    augmentation, one generator per epoch), its augmentation and its normalisation."""

    seed: int
    augment: bool
    flip_prob: float
    jitter: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, config: RunConfig, seed: int) -> RunInputs:
        return cls(
            int(seed),
            bool(config.augment),
            float(config.flip_prob or 0.0),
            float(config.jitter or 0.0),
            tuple(config.mean),
            tuple(config.std),
        )


# oneDNN instruction-set limits (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: its bf16 kernels are emulated
_ONEDNN_BELOW_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"})


def _cpu_probe(name: str) -> bool:
    """One of torch.cpu's feature probes (cpuinfo); False where this torch has none."""
    return bool(getattr(torch.cpu, name, lambda: False)())


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 in hardware, and why, in words for the build log. A GPU:
    ``torch.cuda.is_bf16_supported()``. A CPU: AVX512-BF16 or AMX in cpuinfo is not enough; the
    kernels must use them too: PyTorch's dispatched capability (``ATEN_CPU_CAPABILITY``) must be
    AVX512 and oneDNN's limit (``ONEDNN_MAX_CPU_ISA``) must not stop below AVX512_CORE_BF16,
    else bf16 is emulated, slower than fp32."""
    if device.type == "cuda":
        ok = bool(torch.cuda.is_bf16_supported())
        return ok, f"{'native' if ok else 'no native'} bf16 on this GPU: {torch.cuda.get_device_name(device)}"
    if device.type != "cpu":
        return False, f"no native bf16 known on a {device.type} device"
    capability = str(torch.backends.cpu.get_cpu_capability())
    if not capability.startswith("AVX512"):
        return False, f"no native bf16 on this CPU: capability {capability}"
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if onednn in _ONEDNN_BELOW_BF16:
        return False, f"no native bf16 on this CPU: ONEDNN_MAX_CPU_ISA={onednn}"
    probes = (("_is_avx512_bf16_supported", "AVX512-BF16"), ("_is_amx_tile_supported", "AMX"))
    units = [unit for probe, unit in probes if _cpu_probe(probe)]
    if not units:
        return False, f"no native bf16 on this CPU: no AVX512-BF16 or AMX (capability {capability})"
    return True, f"native bf16 on this CPU: {' and '.join(units)}, capability {capability}"


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware (``bf16_support``)."""
    return bf16_support(device)[0]


def choose_precision(setting: str, device: torch.device) -> tuple[str, str]:
    """("fp32" or "bf16", why) for a setting: "auto" is bf16 where the device computes it natively
    (``bf16_support``), else fp32; any other setting is taken as it is."""
    if setting != "auto":
        return setting, "as the grid sets it"
    ok, why = bf16_support(device)
    return ("bf16" if ok else "fp32"), why


def resolve_precision(setting: str, device: torch.device) -> str:
    """ "fp32" or "bf16" for ``setting`` on ``device`` (``choose_precision``). A model set resolves
    "auto" once, before its runs start, and keeps the choice in their configs and ids."""
    return choose_precision(setting, device)[0]


def autocast(precision: str, device: torch.device):
    """The context of one forward pass: bf16 autocast, or nothing for fp32. It must wrap the forward
    alone, never an optimizer step: autocast caches the bf16 copy of each weight until the context
    is left, so a context around several steps would keep computing with the first step's weights."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The generator of one run's epoch: its shuffle, then its augmentation draws, in batch order."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 1000 + epoch)
    return gen


def training_batch(
    inputs: RunInputs, gen: torch.Generator, images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch of a run: gathered on the device, augmented, normalised."""
    x = images[idx]
    if inputs.augment:
        x = augment_batch(x, gen, inputs.flip_prob, inputs.jitter)
    return normalize(x, inputs.mean, inputs.std), labels[idx]


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: RunInputs,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    epoch: int,
    precision: str = "fp32",
) -> float:
    """One pass over the training split in the run's own order; returns the mean running loss."""
    device = images.device
    gen = epoch_generator(inputs.seed, epoch, device)
    model.train()
    n = int(labels.shape[0])
    perm = torch.randperm(n, generator=gen, device=device)
    running = torch.zeros((), device=device)
    for s in range(0, n, batch_size):
        x, y = training_batch(inputs, gen, images, labels, perm[s : s + batch_size])
        with autocast(precision, device):
            logits = model(x).float()
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += loss.detach() * y.shape[0]
    return float(running) / max(n, 1)
