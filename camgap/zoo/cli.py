"""`camgap zoo build|status|export|repair|measure`.

``add_zoo_commands(subparsers)`` registers ``zoo`` (with ``build``, ``status``, ``export``,
``repair``, ``measure``) on an argparse subparsers object; each leaf sets
``func(args) -> exit code``. ``python -m camgap.zoo.cli build|status|...`` runs the same
commands directly.
"""

from __future__ import annotations

import argparse
import sys

from camgap.cliutil import (
    add_input_checks,
    add_location,
    add_progress_flag,
    add_threshold_flag,
    cam_names,
    finish_args,
    one_line,
    one_line_warnings,
    process_count,
    wants_progress,
)
from camgap.errors import CamgapError

__all__ = ["add_zoo_commands", "add_subcommands", "main", "BUILD_EPILOG"]


def _build(args: argparse.Namespace) -> int:
    from camgap.zoo.build import build

    summary = build(
        args.grid,
        args.data,
        args.zoo,
        executor=args.executor,
        workers=args.workers,
        ray_address=args.ray_address,
        device=args.device,
        layout=args.layout,
        max_attempts=args.max_attempts,
        retry_failed=args.retry_failed,
        keep_last=args.keep_last,
        verify=args.verify,
        cpus_per_run=args.cpus_per_run,
        progress=wants_progress(args),
        max_runs=args.max_runs,
        box_units=args.box_units,
        max_pixels=args.max_pixels,
    )
    return 0 if summary.failed == 0 else 3


def _status(args: argparse.Namespace) -> int:
    import json

    from camgap.zoo.build import format_status, status

    info = status(args.zoo, verify=args.verify)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
    else:
        print(format_status(info))
    return 1 if info["integrity_problems"] else 0


def _repair(args: argparse.Namespace) -> int:
    from camgap.zoo.build import repair

    repair(args.zoo)
    return 0


def _export(args: argparse.Namespace) -> int:
    from camgap.zoo.build import export

    path = export(args.zoo, args.format, args.out, measures=args.measures)
    if path is not None:  # with `--out -` standard output holds the table alone
        print(path)
    return 0


def _measure(args: argparse.Namespace) -> int:
    from camgap.measures.iou import validate_thresholds
    from camgap.zoo.executors import resolve_device
    from camgap.zoo.measure import DEFAULT_MEASURES, measure_zoo

    measures = args.measures.split(",") if args.measures else list(DEFAULT_MEASURES)
    validate_thresholds(args.threshold)  # before the device is touched or anything is computed
    summary = measure_zoo(
        args.zoo,
        measures=measures,
        cams=args.cam.split(","),
        thresholds=args.threshold,
        masks=args.masks.split(","),
        device=resolve_device(args.device),
        batch_size=args.batch_size,
        progress=wants_progress(args),
        executor=args.executor,
        workers=args.workers,
        ray_address=args.ray_address,
    )
    return summary.exit_code


MEASURE_EPILOG = """\
states: each measurement is recorded as done (a value), undefined (no value by the
measure's own definition, e.g. a margin-normalised norm when the 10th-percentile margin
is <= 0; expected for poorly fitting models) or failed (something broke: non-finite
weights or logits, an unreadable or unsafe final.pt, an error). Failed and undefined
measurements are not retried on a rerun. Each run's rows are also written to
ZOO/runs/<run_id>/measurements.json.

exit codes:
  0    every recorded measurement of the requested measures is done or undefined
  2    bad input, nothing computed or stored: unknown measure, a threshold outside
       [0, 1) or not a number, no model set in ZOO
  3    some measurement of the requested measures failed, in this call or an
       earlier one (the summary and `zoo status` list them by measure and reason);
       an identical rerun exits 3 again
  130  interrupted; rerun the same command to resume
"""


ZOO_HELP = "model-set directory (from `camgap zoo build`)"
MAX_RUNS_HELP = "100,000"  # camgap.zoo.grid.MAX_RUNS, written out: the grid module imports torch


def _packaged_grids() -> str:
    from camgap.zoo.grid import packaged_grids

    return ", ".join(sorted(packaged_grids())) or "(none installed)"


def _add_build(sub) -> None:
    b = sub.add_parser(
        "build",
        help="train (or resume) the model set of a grid",
        description="Train every run of GRID on DIR into ZOO, resumably: rerunning the same "
        "command keeps finished runs and resumes interrupted ones.",
        epilog=BUILD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("grid", metavar="GRID", help=f"grid TOML file, or a packaged grid's name: {_packaged_grids()}")
    b.add_argument("--data", required=True, metavar="DIR", help="dataset directory with train and test splits")
    add_location(
        b, "zoo", "--zoo", "ZOO", "model-set directory (registry, runs, caches)", positional=False, old_flag="--out"
    )
    b.add_argument("--layout", default="auto", help="dataset layout (default: auto-detect)")
    add_input_checks(b)
    b.add_argument("--executor", choices=("local", "ray"), default="local", help="where runs execute")
    b.add_argument(
        "--workers",
        type=process_count,
        default=None,
        help="local: worker processes (default: one per GPU, else one per [train] threads CPUs; "
        "0 = in-process); ray: runs in flight at most. A run's weights never depend on it",
    )
    _add_ray_address(b)
    b.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    b.add_argument("--cpus-per-run", type=int, default=None, help="ray: CPUs each run requests")
    b.add_argument(
        "--max-attempts",
        type=int,
        default=2,
        help="give up on a run after it failed this often (default 2); an interrupted build, a "
        "sibling's dead worker or a full disk use no attempt",
    )
    b.add_argument("--retry-failed", action="store_true", help="give runs that failed for good a fresh set of attempts")
    b.add_argument(
        "--keep-last",
        action="store_true",
        help="keep last.pt (with optimizer state) next to final.pt after a run finishes",
    )
    b.add_argument(
        "--verify",
        action="store_true",
        help="hash every done run's final.pt and train again those that do not match their recorded sha256 "
        "(default: only files whose size, mtime or inode changed are hashed; bit rot changes none of them)",
    )
    add_progress_flag(b)
    b.add_argument(
        "--max-runs",
        type=int,
        default=None,
        metavar="N",
        help=f"refuse a grid of more than N runs, counted before anything is expanded (default {MAX_RUNS_HELP})",
    )
    b.set_defaults(func=_guard(_build, RESUMES))


def _add_ray_address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="connect to this Ray cluster (default: start a local instance)",
    )


def _add_status(sub) -> None:
    s = sub.add_parser(
        "status",
        help="counts by status and architecture, failures with their errors",
        epilog=STATUS_JSON_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_location(s, "zoo", "--zoo", "ZOO", ZOO_HELP)
    s.add_argument("--json", action="store_true", help="machine-readable output (schema below)")
    s.add_argument(
        "--verify",
        action="store_true",
        help="hash every done run's final.pt (default: only those whose mtime or inode is not the "
        "one recorded with its sha256), reporting mismatches as integrity problems",
    )
    s.set_defaults(func=_guard(_status))


def _add_repair(sub) -> None:
    r = sub.add_parser(
        "repair",
        help="rebuild ZOO/registry.sqlite from the run directories",
        description="Rebuild ZOO/registry.sqlite from ZOO/runs/: a run whose final.pt holds its "
        "result is done (nothing is retrained), every other run is pending (failed "
        "runs get a fresh set of attempts), measurements come from each run's "
        "measurements.json. An existing registry is kept as "
        "registry.sqlite.replaced-<time>. `zoo build` does this by itself when "
        "registry.sqlite is missing.",
    )
    add_location(r, "zoo", "--zoo", "ZOO", ZOO_HELP)
    r.set_defaults(func=_guard(_repair))


def _add_export(sub) -> None:
    e = sub.add_parser("export", help="one row per run (or per measurement) as CSV or Parquet")
    add_location(e, "zoo", "--zoo", "ZOO", ZOO_HELP)
    e.add_argument("--format", choices=("csv", "parquet"), default="csv")
    e.add_argument(
        "--measures",
        action="store_true",
        help="the measurement table instead, long form: run_id, measure, params, value, state, reason",
    )
    e.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="output file, or - for standard output (default: ZOO/runs.<format>, with --measures "
        "ZOO/measurements.<format>)",
    )
    e.set_defaults(func=_guard(_export))


def _add_measure(sub) -> None:
    m = sub.add_parser(
        "measure",
        help="every generalization measure for every finished model (resumable)",
        description="Measure every done run of ZOO: IoU / IoU-B (one shared pass per model "
        "with the margins, prediction matrix and effective invariance) and the "
        "baseline measures. Finished measurements are never recomputed.",
        epilog=MEASURE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_location(m, "zoo", "--zoo", "ZOO", ZOO_HELP)
    m.add_argument(
        "--measures",
        default=None,
        help="comma-separated (default: iou, iou_b, iou_heldout, iou_drop, energy_pg, pointing_game, pxap, "
        "maxboxacc_v2, spectral_norm, nuclear_norm, effective_invariance, inverse_margin, frobenius_norm, path_norm, "
        "distance_from_init, augmentation_consistency, db_mixup, and weightwatcher where its package is installed; "
        "also: pacbayes_flatness, pacbayes_mag_flatness, effective_invariance_gray)",
    )
    m.add_argument(
        "--cam",
        default="gradcam",
        type=cam_names,
        help="comma-separated CAM methods, e.g. gradcam,gradcam++,smoothgradcam++ (or the reference "
        "release's gradcampp, smoothgradcampp)",
    )
    add_threshold_flag(m, " (default 0.1)")
    m.add_argument("--masks", default="boxes", help="comma-separated A_G sources: boxes, saliency, or a mask folder")
    m.add_argument("--device", default="auto")
    m.add_argument("--batch-size", type=int, default=128)
    m.add_argument("--executor", choices=("local", "ray"), default="local", help="where runs are measured")
    m.add_argument(
        "--workers",
        type=process_count,
        default=None,
        help="local: worker processes (default: none, in this process); ray: runs in flight at most. "
        "Only this process writes the registry; the values never depend on it",
    )
    _add_ray_address(m)
    add_progress_flag(m)
    m.set_defaults(func=_guard(_measure, RESUMES))


def add_subcommands(sub) -> None:
    """Add build/status/export/repair/measure to a subparsers object."""
    for add in (_add_build, _add_status, _add_repair, _add_export, _add_measure):
        add(sub)


def add_zoo_commands(subparsers):
    """Register ``zoo build|status|export`` on the top-level CLI's subparsers object; return
    the ``zoo`` command's own subparsers object (to add more, e.g. ``zoo measure``)."""
    zoo = subparsers.add_parser(
        "zoo",
        help="model sets: train a hyperparameter grid of classifiers",
        description="Model sets: train a hyperparameter grid with the paper's "
        "stopping rules, resumably, locally or on Ray.",
    )
    sub = zoo.add_subparsers(dest="zoo_command", required=True)
    add_subcommands(sub)
    return sub


STATUS_JSON_HELP = """\
--json prints one object; every count is an integer:
  zoo                 the model-set directory
  total               runs in the registry
  counts              runs by state: {"pending", "running", "interrupted", "done", "failed"}
  driver_running      true while a `zoo build` holds ZOO/.lock
  by_arch             {"<arch>" or "<arch> (untrained)": counts as above}
  failures            [{"run_id", "arch", "attempts", "error"}]
  stop_reasons        {"<rule(s)>": runs} over the done runs
  train_acc_pp, test_acc_pp, gap_pp
                      over the done trained runs, in percentage points:
                      {"n": runs, "min", "median", "mean", "max"} (null when n is 0)
  integrity_problems  [one line each]; any makes the exit status 1
  final_checks        the done runs' final.pt by how they were checked: {"by_stat": not read
                      (size, mtime, inode as recorded; or a size that differs: a problem),
                      "hashed": sha256 computed (changed, or --verify), "read_back": no
                      recorded digest, read as a checkpoint}
  grid                the grid the model set was built from (canonical form)
  measurements        {"states": {state: n}, "by_measure": {measure: {state: n}},
                       "not_done": [{"state", "measure", "reason", "runs"}]}
"""


BUILD_EPILOG = """\
exit status:
  0    every run of the grid is done
  2    bad input, or a one-line error: grid, data, another build running on ZOO, a full or
       failing disk (nothing is lost and no attempt is used: free space, rerun the same command)
  3    some runs failed for good (`camgap zoo status --zoo ZOO` lists them; --retry-failed retries)
  130  interrupted (Ctrl-C): rerun the same command to resume
"""


RESUMES = "finished work is kept, rerun the same command to resume"
READS = "rerun the same command (it has nothing to resume)"


def _guard(func, interrupted: str = READS):
    """camgap's errors and OSErrors -> one line on stderr, exit 2 (an sqlite3.Error that got
    past the registry is named after ZOO's registry file); Ctrl-C -> exit 130 and one line,
    `interrupted`: what the command keeps."""

    def run(args: argparse.Namespace) -> int:
        import sqlite3
        from pathlib import Path

        try:
            return int(func(args))
        except (CamgapError, OSError) as exc:
            print(f"camgap zoo: error: {one_line(exc)}", file=sys.stderr)
            return 2
        except sqlite3.Error as exc:
            from camgap.zoo.dbschema import registry_error
            from camgap.zoo.registry import ZooDB

            zoo = args.zoo
            print(f"camgap zoo: error: {registry_error(exc, Path(zoo) / ZooDB.FILENAME)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"camgap zoo: interrupted; {interrupted}", file=sys.stderr)
            return 130

    run.__name__ = func.__name__
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m camgap.zoo.cli", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="zoo_command", required=True)
    add_subcommands(sub)
    with one_line_warnings():  # an old spelling's warning: one line, as in `camgap`
        args = parser.parse_args(argv)
        try:
            finish_args(parser, args)
        except CamgapError as exc:
            print(f"camgap zoo: error: {exc}", file=sys.stderr)
            return 2
        return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
