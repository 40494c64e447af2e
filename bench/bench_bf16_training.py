"""Does bf16 autocast train the demo's models on this device? Training accuracy after a few epochs
of SGD (lr 0.03, momentum 0.9) of a width-8 small_resnet10 on the demo's synthetic data, in fp32 and
bf16, alone and in a pack of 2, with and without channels_last, through camgap's own loops.

A check that autocast wraps each forward pass alone: around a whole epoch, autocast's weight
cache keeps the first step's bf16 weights for every step, and runs stay at chance accuracy.

    python bench/bench_bf16_training.py               # ~2 min on a 2-core CPU
    python bench/bench_bf16_training.py --device cuda
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from camgap.data.layouts import read_layout
from camgap.data.store import TensorStore
from camgap.data.synthetic import write_synthetic
from camgap.models import create_model
from camgap.zoo.loop import RunInputs, evaluate, train_one_epoch
from camgap.zoo.packed import PackedResNet, evaluate_pack, train_pack_epoch

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def model(channels_last: bool, device: torch.device):
    torch.manual_seed(0)
    m = create_model("small_resnet10", 6, width=8).to(device)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m, torch.optim.SGD(m.parameters(), lr=0.03, momentum=0.9)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic(Path(tmp) / "data", seed=0, classes=6, train_per_class=150, test_per_class=1, size=32)
        records, classes = read_layout(data, "csv", "train")
        store = TensorStore.build(records, Path(tmp) / "cache", 32)
        x, y = torch.as_tensor(store.images).to(device), store.labels.to(device)
    inputs = RunInputs(0, False, 0.5, 0.4, *IMAGENET)
    print(f"| precision | channels_last | runs | train acc after {args.epochs} epochs |")
    print("|---|---|---:|---|")
    for precision, cl, packed in [
        ("fp32", False, False),
        ("bf16", False, False),
        ("fp32", True, False),
        ("bf16", True, False),
        ("fp32", False, True),
        ("bf16", False, True),
    ]:
        runs = [model(cl, device) for _ in range(2 if packed else 1)]
        for epoch in range(1, args.epochs + 1):
            if packed:
                pack = PackedResNet([m for m, _ in runs])
                train_pack_epoch(pack, [o for _, o in runs], [inputs] * 2, x, y, 32, [epoch] * 2, precision=precision)
                accs = [a for _, a in evaluate_pack(pack, [inputs] * 2, x, y, 500, precision)]
            else:
                m, o = runs[0]
                train_one_epoch(m, o, inputs, x, y, 32, epoch, precision)
                accs = [evaluate(m, x, y, inputs.mean, inputs.std, device, 500, precision)[1]]
        print(
            f"| {precision} | {'yes' if cl else 'no'} | {len(runs)} | {', '.join(f'{a:.2f}' for a in accs)} |",
            flush=True,
        )
    print(f"\n(chance: {1 / len(classes):.2f}) Rerun: python bench/bench_bf16_training.py {' '.join(sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
