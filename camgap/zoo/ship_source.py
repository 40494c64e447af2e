"""``python -m camgap.zoo.ship_source --grid demo``: train a packaged grid's source models and
store them in the package (``camgap/grids/source/``), as shipped. A module of its own because it
needs the executors, which import the training code that imports `camgap.zoo.pretrained`.

Like `camgap`, it answers bad input with one line and exit 2, Ctrl-C with exit 130, and checks
the grid before it trains anything."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import tomllib

from camgap.cliutil import run_command, worker_count
from camgap.zoo.config import GridError
from camgap.zoo.executors import make_executor
from camgap.zoo.grid import Grid, load_grid, resolve_grid_path
from camgap.zoo.pretrained import PACKAGED_SOURCE_DIR, ensure_source_models, source_task_archs

PROG = "python -m camgap.zoo.ship_source"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=main.__doc__)
    ap.add_argument("--grid", default="demo", help="a packaged grid's name or a grid file (default: demo)")
    ap.add_argument(
        "--workers",
        type=worker_count,
        default=None,
        help="training processes, at most one per CPU (default: one per core)",
    )
    return ap


def _checked_grid(name: str) -> Grid:
    """The grid, refused before any training when it has no source model to train; a grid
    without ``[pretrain]`` trains the source task's defaults, and says so."""
    grid = load_grid(name)
    archs = source_task_archs(grid)
    if not archs:
        raise GridError(
            f"{grid.source}: no source model to ship: no small_resnet run has pretrained = true "
            "without a weights file in [train] pretrained_weights"
        )
    path = resolve_grid_path(name)
    if "pretrain" not in tomllib.loads(path.read_text(encoding="utf-8")):
        print(f"{path} has no [pretrain] table: the source task's defaults {grid.pretrain.to_dict()}")
    return grid


def _ship(args: argparse.Namespace) -> int:
    grid = _checked_grid(args.grid)
    executor = make_executor("local", workers=args.workers, device="cpu")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for path in ensure_source_models(grid, tmp, executor, packaged=False):
                PACKAGED_SOURCE_DIR.mkdir(exist_ok=True)
                shutil.copyfile(path, PACKAGED_SOURCE_DIR / path.name)  # the whole record: config, history, result
                print(f"packaged {PACKAGED_SOURCE_DIR / path.name}")
    finally:
        executor.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Train the source models of a packaged grid and store them in the package, as shipped."""
    args = _parser().parse_args(argv)
    # the source models copied into the package so far stay; the one in training is lost
    return run_command(lambda: _ship(args), prog=PROG, interrupted="the source models packaged so far are kept")


if __name__ == "__main__":
    sys.exit(main())
