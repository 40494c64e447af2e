"""The study at the paper's scale: `run_study` on a fake model set of `camgap/grids/paper.toml`'s size.

Builds, in memory, the runs table of every run of the packaged paper grid (3456 trained +
200 untrained) with synthetic accuracies, and a measurement table with one row per run and
per (measure, params) variant that `camgap zoo measure` records for the default measures and
`--cam gradcam,gradcam++,smoothgradcam++ --masks boxes,saliency` (the variants are taken from a
real measurement of one tiny model, so the table has the registry's exact form). Then times
`camgap.study.report.run_study` (every table, no figures), with a profile of where the time
goes.

    PYTHONPATH=. python bench/bench_study.py       # the paper's size; prints seconds and the top functions
    PYTHONPATH=. python bench/bench_study.py --runs 500 --bootstrap 200    # a quick look

(`PYTHONPATH=.` from the repository root times this checkout's camgap, not an installed one.)
"""

from __future__ import annotations

import argparse
import cProfile
import platform
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def measured_variants(tmp: Path) -> list[tuple[str, str]]:
    """(measure, params JSON) of every row `zoo measure` writes for one tiny model."""
    from camgap.data.synthetic import write_synthetic
    from camgap.zoo.build import build
    from camgap.zoo.measure import measure_zoo
    from camgap.zoo.registry import ZooDB

    data = write_synthetic(tmp / "data", seed=0, classes=3, train_per_class=6, test_per_class=2, size=32)
    grid = tmp / "grid.toml"
    grid.write_text(
        '[grid]\narch = ["small_resnet10"]\nbatch_size = [8]\nlr = [0.01]\noptimizer = ["sgd"]\n'
        "[train]\nmax_epochs = 1\ninput_size = 32\n[arch_options.small_resnet10]\nwidth = 4\n"
    )
    build(grid, data, tmp / "zoo", workers=0, device="cpu", progress=False, log=lambda *a, **k: None)
    measure_zoo(
        tmp / "zoo",
        cams=("gradcam", "gradcam++", "smoothgradcam++"),
        masks=("boxes", "saliency"),
        progress=False,
        log=lambda *a, **k: None,
    )
    with ZooDB.in_dir(tmp / "zoo", create=False) as reg:
        m = reg.measurements_frame()
    return sorted(set(zip(m["measure"], m["params"], strict=True)))


def fake_model_set(variants: list[tuple[str, str]], n_runs: int | None, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from camgap.zoo.grid import GRID_KEYS, load_grid

    rng = np.random.default_rng(seed)
    specs = load_grid("paper").runs()
    if n_runs is not None:
        specs = specs[:n_runs]
    rows = []
    for spec in specs:
        cfg = spec.config.to_dict()  # the stored form: grid keys of an untrained run are None
        train_acc = float(rng.uniform(0.5, 1.0)) if cfg["trained"] else float(rng.uniform(0.0, 0.1))
        test_acc = float(np.clip(train_acc - rng.uniform(0.0, 0.4), 0.0, 1.0))
        rows.append(
            {
                "run_id": spec.run_id,
                **{k: cfg.get(k) for k in GRID_KEYS},
                "trained": bool(cfg["trained"]),
                "status": "done",
                "train_acc": train_acc,
                "test_acc": test_acc,
                "gap": 100.0 * (train_acc - test_acc),
            }
        )
    runs = pd.DataFrame(rows)
    n_var = len(variants)
    noise = rng.normal(size=(len(runs), n_var))
    values = -0.01 * runs["gap"].to_numpy()[:, None] + 0.1 * noise
    measurements = pd.DataFrame(
        {
            "run_id": np.repeat(runs["run_id"].to_numpy(), n_var),
            "measure": [m for _ in range(len(runs)) for m, _ in variants],
            "params": [p for _ in range(len(runs)) for _, p in variants],
            "value": values.ravel(),
            "status": "done",
            "error": None,
        }
    )
    return runs, measurements


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, help="first N runs of the paper grid (default: all)")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (the CLI's default)")
    ap.add_argument("--top", type=int, default=12, help="functions to list from the profile")
    args = ap.parse_args(argv)

    from camgap.study.report import run_study

    with tempfile.TemporaryDirectory() as tmp:
        variants = measured_variants(Path(tmp))
    runs, measurements = fake_model_set(variants, args.runs, seed=0)
    print(
        f"{len(runs)} runs, {len(measurements)} measurement rows ({len(variants)} variants per run); "
        f"python {platform.python_version()}, {platform.processor() or platform.machine()}",
        flush=True,
    )
    profile = cProfile.Profile()
    t0, c0 = time.perf_counter(), time.process_time()
    profile.enable()
    run_study(runs, measurements, n_boot=args.bootstrap)
    profile.disable()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"run_study: {seconds:.1f} s wall, {cpu:.1f} s CPU (wall time grows when other jobs share the cores)")
    pstats.Stats(profile, stream=sys.stdout).sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
