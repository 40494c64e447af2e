"""How far a packed run drifts from the same run trained alone, as training goes on.

Builds the same small grid (4 runs: SGD and Adam at two learning rates, small_resnet width 4, 16x16
synthetic images) twice per epoch budget, once with ``pack = 1`` and once with ``pack = 4``, and
prints per run the relative difference of the final weights (``||a - b|| / ||b||`` over all
floating-point tensors, and the largest per-tensor max-abs ratio) and both training accuracies.
The runs have the same seeds in both builds (a pack does not change a run's seed).

    python bench/bench_divergence.py                  # epochs 1 2 4 8, ~1 min on a 2-core CPU
    python bench/bench_divergence.py --epochs 1 16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from camgap.data.synthetic import write_synthetic
from camgap.zoo.build import build

GRID = """
[grid]
arch = ["small_resnet"]
batch_size = [16]
lr = [{lrs}]
optimizer = ["sgd", "adam"]
augment = [true]

[train]
max_epochs = {epochs}
acc_threshold = 1.0
input_size = 16
pack = {pack}

[arch_options.small_resnet]
width = 4
"""


def finals(zoo: Path) -> dict[int, dict]:
    out = {}
    for path in (zoo / "runs").glob("*/final.pt"):
        ck = torch.load(path, weights_only=True)
        out[ck["seed"]] = ck
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--lrs", default="0.05, 0.01")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp())
    data = write_synthetic(tmp / "data", seed=2, classes=3, train_per_class=12, test_per_class=6, size=16)
    print("| epochs | optimizer | lr | weights: rel. norm diff | max per-tensor | train acc packed / alone |")
    print("|---:|---|---:|---:|---:|---|")
    for epochs in args.epochs:
        sets = {}
        for pack in (1, 4):
            grid = tmp / f"g{epochs}-{pack}.toml"
            grid.write_text(GRID.format(lrs=args.lrs, epochs=epochs, pack=pack))
            zoo = tmp / f"z{epochs}-{pack}"
            build(grid, data, zoo, workers=0, device="cpu", progress=False, log=lambda *a, **k: None)
            sets[pack] = finals(zoo)
        for seed, packed in sorted(
            sets[4].items(), key=lambda kv: (kv[1]["config"]["optimizer"], kv[1]["config"]["lr"])
        ):
            alone = sets[1][seed]
            pa, sa = packed["model_state_dict"], alone["model_state_dict"]
            keys = [k for k in sa if sa[k].is_floating_point()]
            num = sum(float((pa[k] - sa[k]).double().norm() ** 2) for k in keys)
            den = sum(float(sa[k].double().norm() ** 2) for k in keys)
            worst = max(float((pa[k] - sa[k]).abs().max() / sa[k].abs().max().clamp_min(1e-12)) for k in keys)
            cfg = packed["config"]
            print(
                f"| {epochs} | {cfg['optimizer']} | {cfg['lr']:g} | {(num / den) ** 0.5:.1e} | {worst:.1e} | "
                f"{packed['result']['train_acc']:.3f} / {alone['result']['train_acc']:.3f} |",
                flush=True,
            )
    print(f"\nRerun: python bench/bench_divergence.py {' '.join(sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
