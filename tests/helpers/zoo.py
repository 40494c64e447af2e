"""A tiny model set for the tests that measure and study one: 3 trained small_resnet10 runs
(width 4, 2 epochs) + 1 untrained model on 4 synthetic classes x 20 training images.

The session builds it once (the `tiny_zoo` fixture in conftest.py); these are the builder and
the small readers the tests share."""

from __future__ import annotations

import hashlib
from pathlib import Path

from camgap.data.synthetic import write_synthetic
from camgap.zoo.build import build
from camgap.zoo.registry import ZooDB

TINY_GRID = """
[grid]
arch = ["small_resnet10"]
batch_size = [16]
lr = {lrs}
optimizer = ["sgd"]
untrained = 1

[train]
max_epochs = 2
input_size = 32
eval_batch_size = 256

[arch_options.small_resnet10]
width = 4
"""
N_TRAIN = 4 * 20


def build_tiny_zoo(root: Path, seed: int, lrs: tuple[float, float, float]) -> tuple[Path, Path]:
    """Write the data and build the set under `root`; returns (zoo, data)."""
    data = write_synthetic(root / "data", seed=seed, classes=4, train_per_class=20, test_per_class=10, size=32)
    (root / "grid.toml").write_text(TINY_GRID.format(lrs=list(lrs)))
    summary = build(root / "grid.toml", data, root / "zoo", workers=0, device="cpu", progress=False, log=quiet)
    assert summary.done == 4 and summary.failed == 0
    return root / "zoo", data


def frames(zoo: Path):
    """(runs, measurements) frames of the registry in `zoo`."""
    with ZooDB.in_dir(zoo, create=False) as reg:
        return reg.runs_frame(), reg.measurements_frame()


def tree_digest(*roots: Path) -> str:
    """A hash of every file's relative path and bytes under `roots`: equal digests mean nothing
    was written, added or removed (a check that a shared fixture stayed read-only)."""
    h = hashlib.sha256()
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def build_args(grid: Path, data: Path, zoo: Path, workers: int = 0, *extra: str) -> list[str]:
    """`camgap zoo build` arguments of the tests: on the CPU, no progress bar, plus `extra`."""
    location = ["--data", str(data), "--zoo", str(zoo)]
    return ["build", str(grid), *location, "--workers", str(workers), "--device", "cpu", *extra, "--no-progress"]


def quiet(*args, **kwargs) -> None:
    """A `log` that prints nothing."""


def run_task(spec, data: Path, cache_root: Path, run_dir: Path, size: int = 16, **extra) -> dict:
    """The task dict the builder hands a worker for one run of a grid (`RunSpec`), on `data`
    decoded at `size` into `cache_root`."""
    from camgap.data.layouts import read_layout
    from camgap.zoo.files import prepare_split

    caches = {}
    for split in ("train", "test"):
        records, classes = read_layout(data, "csv", split)
        caches[split] = prepare_split(records, classes, cache_root / f"cache-{split}", size, "resize")
    return {
        "run_id": spec.run_id,
        "config": spec.config,
        "seed": spec.seed,
        "repeat": spec.repeat,
        "run_dir": str(run_dir),
        "data": caches,
        "num_classes": len(classes),
        "classes": classes,
        "device": "cpu",
        "eval_batch_size": 64,
        "keep_last": True,
    } | extra


# The packaged grids as a release shipped them: tests that pin run ids and stored configs read these,
# so that the demo grid can be re-tuned without moving them ("paper" is the packaged file itself).
RELEASED_GRIDS = {"demo": Path(__file__).parent.parent / "data" / "demo-grid-release-0.toml", "paper": "paper"}
