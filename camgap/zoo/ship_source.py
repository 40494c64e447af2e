"""``python -m camgap.zoo.ship_source --grid demo``: train a packaged grid's source models and
store them in the package (``camgap/grids/source/``), as shipped. A module of its own because it
needs the executors, which import the training code that imports `camgap.zoo.pretrained`."""

from __future__ import annotations

import shutil

from camgap.zoo.executors import make_executor
from camgap.zoo.grid import load_grid
from camgap.zoo.pretrained import PACKAGED_SOURCE_DIR, ensure_source_models


def main(argv: list[str] | None = None) -> None:
    """Train the source models of a packaged grid and store them in the package, as shipped."""
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(prog="python -m camgap.zoo.ship_source", description=main.__doc__)
    ap.add_argument("--grid", default="demo", help="a packaged grid's name or a grid file (default: demo)")
    ap.add_argument("--workers", type=int, default=None, help="training processes (default: one per core)")
    args = ap.parse_args(argv)
    grid = load_grid(args.grid)
    executor = make_executor("local", workers=args.workers, device="cpu")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for path in ensure_source_models(grid, tmp, executor, packaged=False):
                PACKAGED_SOURCE_DIR.mkdir(exist_ok=True)
                shutil.copyfile(path, PACKAGED_SOURCE_DIR / path.name)  # the whole record: config, history, result
                print(f"packaged {PACKAGED_SOURCE_DIR / path.name}")
    finally:
        executor.close()


if __name__ == "__main__":
    main()
