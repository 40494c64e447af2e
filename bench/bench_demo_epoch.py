"""Where one epoch of a demo pack spends its CPU time: the packed training pass against the
clean evaluation passes (train + test split) done packed (one grouped computation) or run by run.

Process CPU time (``time.process_time``) of a fixed piece of work with one torch thread, as a demo
worker runs, so the numbers hold on a shared machine; A/B rows alternate, ``--repeats`` times. The
demo's setting: K = 8 width-8 ResNets with stage strides 1, 2, 2, 1 at 28x28 (a 7x7 ``layer4``),
channels_last, ``--train-images`` and ``--test-images`` random images. To see a CPU without
native bf16 on one that has it, set ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2:

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/bench_demo_epoch.py --precision fp32
"""

from __future__ import annotations

import argparse
import time

import torch

from camgap.models import create_model
from camgap.zoo.loop import RunInputs, evaluate
from camgap.zoo.packed import PackedResNet, evaluate_pack, train_pack_epoch

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def cpu_seconds(work) -> float:
    t = time.process_time()
    work()
    return time.process_time() - t


def bench_arch(arch: str, args: argparse.Namespace, tr: tuple, te: tuple) -> None:
    cpu = torch.device("cpu")
    models = [
        create_model(arch, 6, width=8, strides=[1, 2, 2, 1]).to(memory_format=torch.channels_last)
        for _ in range(args.k)
    ]
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in models]
    inputs = [RunInputs(i, True, 0.5, 0.4, *IMAGENET) for i in range(args.k)]
    pack = PackedResNet(models)

    def train(epoch: int) -> None:
        train_pack_epoch(pack, opts, inputs, *tr, args.batch_size, [epoch] * args.k, precision=args.precision)

    def packed_eval() -> None:
        for x, y in (tr, te):
            evaluate_pack(pack, inputs, x, y, args.eval_batch_size, args.precision)

    def per_run_eval() -> None:
        for m in models:
            for x, y in (tr, te):
                evaluate(m, x, y, *IMAGENET, cpu, args.eval_batch_size, args.precision)

    train(1)  # warm-up
    rows: dict[str, list[float]] = {"train (packed)": [], "eval packed": [], "eval run by run": []}
    for r in range(args.repeats):
        rows["train (packed)"].append(cpu_seconds(lambda r=r: train(r + 2)))
        rows["eval packed"].append(cpu_seconds(packed_eval))
        rows["eval run by run"].append(cpu_seconds(per_run_eval))
    for name, xs in rows.items():
        print(f"{arch} K={args.k} {args.precision} {name}: {min(xs):.2f} CPU-s per epoch (best of {len(xs)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=["small_resnet10", "small_resnet18"])
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval-batch-size", type=int, default=1000)
    ap.add_argument("--train-images", type=int, default=300)
    ap.add_argument("--test-images", type=int, default=300)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    n = args.train_images + args.test_images
    images = torch.randint(0, 256, (n, 3, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 6, (n,), generator=g)
    tr, te = (
        (images[: args.train_images], labels[: args.train_images]),
        (images[args.train_images :], labels[args.train_images :]),
    )
    for arch in args.archs:
        bench_arch(arch, args, tr, te)


if __name__ == "__main__":
    main()
