"""Packed training throughput: K runs as one computation (``camgap.zoo.packed``) against one run at
a time, through camgap's own loops (``train_pack_epoch`` / ``train_one_epoch``) on resident tensors.

Part 1, the demo's setting: the demo grid's architectures, their options and batch sizes
(``camgap/grids/demo.toml``) on as many random images as the demo trains on, at its input size.
Training images per second summed over all runs, for one run at a time in fp32 (what camgap did
before packing) and for one run and packs of K runs in fp32 and bf16 autocast, each with and
without channels_last. Each row is one training epoch of every run after a warm-up epoch.

Part 2: the paper's ResNets (``--archs``, default resnet18) at 224x224, batch 16, packs of
K = 1, 4, 8, 16 (``--r18-k``): training images per second over ``--r18-steps`` steps after one
warm-up step, in fp32 and in bf16 + channels_last.

Part 3: the projected cost of ``camgap/grids/paper.toml`` on this device, one fp32 run at a time
and with each architecture's best measured setting.

Part 4 (``--parts 4``): the alternative to packing, P solo runs at once as separate processes on
the same device (``--procs``).

    python bench/bench_pack.py                              # ~5 min on a 2-core CPU
    python bench/bench_pack.py --parts 1 --train-images 600 # the demo setting only
    bash bench/gpu_check.sh                                 # on a GPU: parts 2-4, ResNet18/34/50/101
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time

import torch

from camgap.models import create_model
from camgap.zoo.loop import RunInputs, resolve_precision, train_one_epoch
from camgap.zoo.packed import PackedResNet, train_pack_epoch

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SOLO_PAPER_CPU_HOURS = {"resnet18": 28_425}  # bench/bench_train.py's projection (BENCHMARKS.md)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _runs(arch: str, k: int, options: dict, device: torch.device, channels_last: bool):
    models, opts = [], []
    for i in range(k):
        torch.manual_seed(i)
        m = create_model(arch, 6, **options).to(device)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        models.append(m)
        opts.append(torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9))
    inputs = [RunInputs(i, True, 0.5, 0.4, *IMAGENET) for i in range(k)]
    return models, opts, inputs


def epoch_ips(arch, options, k, bs, precision, channels_last, images, labels, device) -> float:
    """Training images per second over all runs: one timed epoch after one warm-up epoch."""
    models, opts, inputs = _runs(arch, k, options, device, channels_last)
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
    from camgap.demo import PRESETS
    from camgap.zoo.grid import load_grid

    demo = load_grid("demo")
    size, n = demo.train.input_size, 6 * PRESETS["full"]["data"]["train_per_class"]
    n = args.train_images or n
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 6, (n,), generator=g)
    images, labels = images.to(device), labels.to(device)
    bf16 = resolve_precision("auto", device)
    print(f"\n## The demo's setting: {n} images at {size}x{size}, training img/s over all runs\n")
    print("| arch | batch | runs | precision | channels_last | img/s | vs one run at a time |")
    print("|---|---:|---:|---|---|---:|---:|")
    for arch in demo.axes["arch"]:
        options = demo.arch_options.get(arch, {})
        for bs in demo.axes["batch_size"]:
            base = epoch_ips(arch, options, 1, bs, "fp32", False, images, labels, device)
            print(f"| {arch} | {bs} | 1 | fp32 | no | {base:.0f} | 1.00x |", flush=True)
            for k in [1, *args.k]:
                for precision, cl in (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)):
                    if (k, precision, cl) == (1, "fp32", False):
                        continue
                    if precision == "bf16" and bf16 != "bf16" and not args.force_bf16:
                        continue
                    ips = epoch_ips(arch, options, k, bs, precision, cl, images, labels, device)
                    print(
                        f"| {arch} | {bs} | {k} | {precision} | {'yes' if cl else 'no'} | {ips:.0f} | "
                        f"{ips / base:.2f}x |",
                        flush=True,
                    )


def step_ips(arch: str, k: int, precision: str, channels_last: bool, args, device: torch.device) -> float:
    """One of the paper's ResNets at 224, batch 16: training images per second over all K runs."""
    from camgap.zoo.packed import pack_train_step

    models, opts, _ = _runs(arch, k, {}, device, channels_last)
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


def part2(args, device: torch.device) -> dict[str, tuple[float, str, float]]:
    """Per architecture: (one run in fp32, the best setting, its img/s)."""
    bf16 = resolve_precision("auto", device) == "bf16" or args.force_bf16
    best: dict[str, tuple[float, str, float]] = {}
    for arch in args.archs:
        print(f"\n## {arch}, 224x224, batch 16: training img/s over all runs of a pack\n")
        print("| K | fp32 img/s | fp32 vs K=1 | bf16 + channels_last img/s | bf16 + cl vs K=1 fp32 |")
        print("|---:|---:|---:|---:|---:|")
        base = None
        for k in args.r18_k:
            fp = step_ips(arch, k, "fp32", False, args, device)
            base = base or fp
            bf = step_ips(arch, k, "bf16", True, args, device) if bf16 else None
            print(
                f"| {k} | {fp:.1f} | {fp / base:.2f}x | {'n/a' if bf is None else f'{bf:.1f}'} | "
                f"{'n/a' if bf is None else f'{bf / base:.2f}x'} |",
                flush=True,
            )
            for name, ips in ((f"K={k} fp32", fp), (f"K={k} bf16 + channels_last", bf)):
                if ips is not None and ips > best.get(arch, (0.0, "", 0.0))[2]:
                    best[arch] = (base, name, ips)
    return best


def _solo_process(arch: str, precision: str, channels_last: bool, steps: int, device: str, barrier, out) -> None:
    torch.set_num_threads(1)
    args = argparse.Namespace(r18_steps=1)
    step_ips(arch, 1, precision, channels_last, args, torch.device(device))  # warm-up, not timed
    args.r18_steps = steps
    barrier.wait()
    out.put(step_ips(arch, 1, precision, channels_last, args, torch.device(device)))


def part4(args, device: torch.device, best: dict[str, tuple[float, str, float]]) -> None:
    """The alternative to packing: P runs at once as separate processes on the same device."""
    import multiprocessing as mp

    precision = resolve_precision("auto", device)
    ctx = mp.get_context("spawn")
    for arch in args.archs:
        print(f"\n## {arch}, 224x224, batch 16: P solo runs as separate processes ({precision}, channels_last)\n")
        print("| P processes | img/s over all runs | vs one run in fp32 | vs the best pack |")
        print("|---:|---:|---:|---:|")
        for p in args.procs:
            barrier, out = ctx.Barrier(p), ctx.Queue()
            procs = [
                ctx.Process(
                    target=_solo_process, args=(arch, precision, True, args.r18_steps, str(device), barrier, out)
                )
                for _ in range(p)
            ]
            for proc in procs:
                proc.start()
            total = sum(out.get() for _ in procs)  # concurrent runs: their rates add up
            for proc in procs:
                proc.join()
            base, _, packed = best.get(arch, (float("nan"), "", float("nan")))
            print(f"| {p} | {total:.1f} | {total / base:.2f}x | {total / packed:.2f}x |", flush=True)


def part3(best: dict[str, tuple[float, str, float]], device: torch.device) -> None:
    """The paper grid on this device: bench/bench_train.py's solo projection scaled by each
    architecture's measured best speed-up (packing and/or bf16) over one fp32 run."""
    from bench_train import PAPER_RUNS, PAPER_TRAIN_IMAGES

    unit = "GPU" if device.type == "cuda" else "CPU"
    test_images, epochs, per_arch = 1_000, 0.9 * 50 + 0.1 * 150, PAPER_RUNS // 4
    print(f"\n## Projection of camgap/grids/paper.toml on this {unit} ({per_arch} runs per architecture)\n")
    print(
        f"Assumptions (bench/bench_train.py's): {epochs:.0f} epochs per run on average; an epoch is a training "
        f"pass over {PAPER_TRAIN_IMAGES:,} images plus evaluation passes over them and {test_images:,} test "
        "images, an evaluated image costing a third of a trained one; batch 16's rate for every batch size.\n"
    )
    print(f"| arch | best setting | training img/s | {unit}-hours one fp32 run at a time | {unit}-hours packed |")
    print("|---|---|---:|---:|---:|")
    total_solo = total = 0.0
    for arch, (base, name, ips) in best.items():
        image_units = per_arch * epochs * (PAPER_TRAIN_IMAGES + (PAPER_TRAIN_IMAGES + test_images) / 3)
        solo_h, packed_h = image_units / base / 3600, image_units / ips / 3600
        total_solo, total = total_solo + solo_h, total + packed_h
        print(f"| {arch} | {name} | {ips:.1f} | {solo_h:,.0f} | {packed_h:,.0f} |")
    missing = sorted({"resnet18", "resnet34", "resnet50", "resnet101"} - set(best))
    print(
        f"| all measured | | | {total_solo:,.0f} | **{total:,.0f}** |\n"
        + (f"\nNot measured (pass --archs to include): {', '.join(missing)}." if missing else "")
        + ("\nThe paper: ~4,700 GPU-hours (README); the goal is under 470." if unit == "GPU" else "")
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3])  # 4: separate processes
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-images", type=int, default=0, help="part 1's images (default: the demo's)")
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8], help="pack sizes of part 1")
    ap.add_argument("--r18-k", type=int, nargs="+", default=[1, 4, 8, 16], help="pack sizes of part 2")
    ap.add_argument("--archs", nargs="+", default=["resnet18"], help="the paper's ResNets measured in parts 2-4")
    ap.add_argument("--procs", type=int, nargs="+", default=[2, 4, 8], help="processes per device of part 4")
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
    best = part2(args, device) if 2 in args.parts else {}
    if 3 in args.parts and best:
        part3(best, device)
    if 4 in args.parts:
        part4(args, device, best)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s. Rerun: python bench/bench_pack.py {shlex.join(sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
