"""Packed training throughput: K runs as one computation (``camgap.zoo.packed``) against one run at
a time, through camgap's own loops (``train_pack_epoch`` / ``train_one_epoch``) on resident tensors.

Part 1, the demo's setting: the demo grid's architectures and batch sizes (``camgap/grids/demo.toml``)
on synthetic images at ``--size``; training images per second summed over all runs, for one run at a
time in fp32 (what camgap did before packing) and for packs of K runs in fp32, bf16 autocast, and
bf16 + channels_last. Each row is one training epoch of every run after a warm-up epoch.

Part 2: ResNet18 at 224x224, batch 16, packs of K = 1, 4, 8, 16 (``--r18-k``): training images per
second over ``--r18-steps`` steps after one warm-up step, in fp32 and bf16.

Part 3: the projected cost of ``camgap/grids/paper.toml`` with packing: the measured ResNet18 speed-up of
the best K applied to the solo projection of ``bench/bench_train.py`` (BENCHMARKS.md).

    python bench/bench_pack.py                              # ~5 min on a 2-core CPU
    python bench/bench_pack.py --parts 1 --train-images 600 # the demo setting only
    python bench/bench_pack.py --device cuda --r18-k 1 4 8 16 32   # on a GPU
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time

import torch

from camgap.models import create_model
from camgap.zoo.packed import PackedResNet, train_pack_epoch
from camgap.zoo.train import RunInputs, resolve_precision, train_one_epoch

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SOLO_PAPER_CPU_HOURS = {"resnet18": 28_425}  # bench/bench_train.py's projection (BENCHMARKS.md)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _runs(arch: str, k: int, width: int | None, device: torch.device, channels_last: bool):
    models, opts = [], []
    for i in range(k):
        torch.manual_seed(i)
        m = create_model(arch, 6, **({"width": width} if width else {})).to(device)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        models.append(m)
        opts.append(torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9))
    inputs = [RunInputs(i, True, 0.5, 0.4, *IMAGENET) for i in range(k)]
    return models, opts, inputs


def epoch_ips(arch, width, k, bs, precision, channels_last, images, labels, device) -> float:
    """Training images per second over all runs: one timed epoch after one warm-up epoch."""
    models, opts, inputs = _runs(arch, k, width, device, channels_last)
    n = int(labels.shape[0])

    def epoch(e: int) -> None:
        if k == 1:  # the solo loop
            train_one_epoch(models[0], opts[0], inputs[0], images, labels, bs, e, precision)
        else:
            train_pack_epoch(PackedResNet(models), opts, inputs, images, labels, bs, [e] * k, precision=precision)

    epoch(1)
    _sync(device)
    t0 = time.perf_counter()
    epoch(2)
    _sync(device)
    return k * n / (time.perf_counter() - t0)


def part1(args, device: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.train_images, 3, args.size, args.size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 6, (args.train_images,), generator=g)
    images, labels = images.to(device), labels.to(device)
    bf16 = resolve_precision("auto", device)
    print(f"\n## Demo setting: {args.train_images} images at {args.size}x{args.size}, training img/s over all runs\n")
    print("| arch | batch | runs | precision | channels_last | img/s | vs one run at a time |")
    print("|---|---:|---:|---|---|---:|---:|")
    for arch in ("small_resnet10", "small_resnet18"):
        for bs in (32, 64):
            base = epoch_ips(arch, 8, 1, bs, "fp32", False, images, labels, device)
            print(f"| {arch} w8 | {bs} | 1 | fp32 | no | {base:.0f} | 1.00x |", flush=True)
            for k in [1, *args.k]:
                for precision, cl in (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)):
                    if (k, precision, cl) == (1, "fp32", False):
                        continue
                    if precision == "bf16" and bf16 != "bf16" and not args.force_bf16:
                        continue
                    ips = epoch_ips(arch, 8, k, bs, precision, cl, images, labels, device)
                    print(
                        f"| {arch} w8 | {bs} | {k} | {precision} | {'yes' if cl else 'no'} | {ips:.0f} | "
                        f"{ips / base:.2f}x |",
                        flush=True,
                    )


def step_ips(k: int, precision: str, args, device: torch.device) -> float:
    """ResNet18 at 224, batch 16: training images per second over all K runs."""
    from camgap.zoo.packed import pack_train_step

    models, opts, _ = _runs("resnet18", k, None, device, False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(k, 16, 3, 224, 224, generator=g).to(device)
    y = torch.randint(0, 6, (k, 16), generator=g).to(device)
    pack = PackedResNet(models).train()

    def step() -> None:
        pack_train_step(pack, opts, x, y, precision=precision)

    step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.r18_steps):
        step()
    _sync(device)
    return k * 16 * args.r18_steps / (time.perf_counter() - t0)


def part2(args, device: torch.device) -> dict[str, float]:
    print("\n## ResNet18, 224x224, batch 16: training img/s over all runs of a pack\n")
    print("| K | fp32 img/s | fp32 vs K=1 | bf16 img/s | bf16 vs K=1 fp32 |")
    print("|---:|---:|---:|---:|---:|")
    best = {}
    base = None
    for k in args.r18_k:
        fp = step_ips(k, "fp32", args, device)
        base = base or fp
        bf = (
            step_ips(k, "bf16", args, device)
            if resolve_precision("auto", device) == "bf16" or args.force_bf16
            else None
        )
        print(
            f"| {k} | {fp:.1f} | {fp / base:.2f}x | {'n/a' if bf is None else f'{bf:.1f}'} | "
            f"{'n/a' if bf is None else f'{bf / base:.2f}x'} |",
            flush=True,
        )
        best[f"K={k} fp32"] = fp / base
        if bf is not None:
            best[f"K={k} bf16"] = bf / base
    return best


def part3(speedups: dict[str, float], device: torch.device) -> None:
    name, factor = max(speedups.items(), key=lambda kv: kv[1])
    print(f"\n## Projection of camgap/grids/paper.toml with packing ({device.type})\n")
    if device.type != "cpu":
        print(
            f"best ResNet18 setting: {name}, {factor:.2f}x one run at a time; run bench/bench_train.py on this "
            "device for the solo hours and divide by this factor"
        )
        return
    total = 294_883  # bench/bench_train.py's CPU projection of all four architectures (BENCHMARKS.md)
    print(
        f"best ResNet18 setting: {name}, {factor:.2f}x one run at a time. Applied to every architecture (an "
        f"assumption: only ResNet18 was measured packed), the grid's {total:,} CPU-hours become "
        f"{total / factor:,.0f} CPU-hours."
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=32, help="demo input size")
    ap.add_argument("--train-images", type=int, default=900)
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8], help="pack sizes of part 1")
    ap.add_argument("--r18-k", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--r18-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--force-bf16", action="store_true", help="measure bf16 also where it is not native")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cpu = platform.processor() or platform.machine()
    print(
        f"# bench_pack: {device.type}, {args.threads} threads, {cpu}, torch {torch.__version__}, native bf16: "
        f"{resolve_precision('auto', device) == 'bf16'}"
    )
    t0 = time.perf_counter()
    if 1 in args.parts:
        part1(args, device)
    speedups = part2(args, device) if 2 in args.parts else {}
    if 3 in args.parts and speedups:
        part3(speedups, device)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s. Rerun: python bench/bench_pack.py {shlex.join(sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
