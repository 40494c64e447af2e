"""What a model set holds: ``status`` (counts, failures, spreads, integrity, measurements) and
``format_status`` for `zoo status`, ``export`` of its runs or measurements as CSV or Parquet for
`zoo export`. Read-only: works while a `zoo build` runs, and on read-only storage."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

from camgap.io import file_lock
from camgap.zoo.errors import ZooError
from camgap.zoo.grid import GRID_KEYS
from camgap.zoo.registry import RegistryError, ZooDB, format_measurement_status

__all__ = ["status", "format_status", "export", "driver_running", "EXPORT_COLUMNS"]

# Accuracies and the gap in one unit, percentage points (the gap's unit in the registry and the
# paper's), named by it: train_acc_pp - test_acc_pp == gap_pp.
EXPORT_COLUMNS = [
    "run_id",
    *GRID_KEYS,
    "repeat",
    "seed",
    "trained",
    "status",
    "epochs",
    "stop_reason",
    "train_acc_pp",
    "train_loss",
    "test_acc_pp",
    "test_loss",
    "gap_pp",
    "wall_time",
    "pack_wall_time",
    "precision",
    "pack_size",
    "attempts",
    "error",
]
EXPORT_INTEGERS = ("batch_size", "repeat", "seed", "epochs", "pack_size", "attempts")  # written as integers, never 32.0
EXPORT_DIGITS = 6  # significant digits of every other number


def driver_running(out: str | Path) -> bool:
    """Whether a driver holds ``out/.lock`` now (a shared, non-blocking flock fails); works on
    read-only storage."""
    try:
        with file_lock(Path(out) / ".lock", shared=True, wait=False, create=False) as held:
            return not held
    except OSError:  # no lock file: no driver ever ran here, or it cannot be read
        return False


def status(zoo_dir: str | Path, verify: bool = False) -> dict:
    """Counts by status (``total``, ``counts``), by architecture x status (``by_arch``), the
    failures with their errors, ``stop_reasons``, the spread of ``train_acc_pp``, ``test_acc_pp``
    and ``gap_pp`` over the done trained runs (``_spread``), ``integrity_problems``, how the done
    runs' final.pt were checked (``final_checks``: ``digest.CHECK_KINDS``; ``verify`` hashes every
    one), the ``grid`` and ``measurements``: the measurements by state
    (``ZooDB.measurement_counts``). Every count is an int: ``json.dumps`` of it is what
    ``zoo status --json`` prints (``STATUS_JSON_HELP``)."""
    from camgap.zoo.digest import CHECK_KINDS

    zoo_dir = Path(zoo_dir)
    try:
        reg = ZooDB.in_dir(zoo_dir, read_only=True)
    except RegistryError as exc:
        raise ZooError(str(exc)) from None
    live = driver_running(zoo_dir)
    try:
        frame = reg.runs_frame()
        counts = _with_interrupted(reg.counts(), live)
        final_checks = dict.fromkeys(CHECK_KINDS, 0)
        problems = reg.integrity_check(zoo_dir, verify=verify, tally=final_checks)
        grid = reg.get_meta("grid")
        measurements = reg.measurement_counts()
    finally:
        reg.close()
    by_arch = {}
    if len(frame):
        kind = frame["trained"].map({True: "", False: " (untrained)"})
        frame = frame.assign(group=frame["arch"].astype(str) + kind)
        table = frame.groupby(["group", "status"]).size().unstack(fill_value=0)
        by_arch = {
            g: _with_interrupted(
                {s: int(table.loc[g].get(s, 0)) for s in ("pending", "running", "done", "failed")}, live
            )
            for g in table.index
        }
    failures = (
        [
            {"run_id": r.run_id, "arch": r.arch, "attempts": int(r.attempts), "error": r.error or ""}
            for r in frame[frame["status"] == "failed"].itertuples()
        ]
        if len(frame)
        else []
    )
    done = frame[frame["status"] == "done"] if len(frame) else frame
    trained = done[done["trained"].astype(bool)] if len(done) else done
    return {
        "zoo": str(zoo_dir),
        "total": int(len(frame)),
        "driver_running": live,
        "counts": counts,
        "by_arch": by_arch,
        "failures": failures,
        "stop_reasons": {str(k): int(v) for k, v in done["stop_reason"].value_counts().items()} if len(done) else {},
        "train_acc_pp": _spread(100.0 * trained["train_acc"] if len(trained) else []),
        "test_acc_pp": _spread(100.0 * trained["test_acc"] if len(trained) else []),
        "gap_pp": _spread(trained["gap"] if len(trained) else []),
        "integrity_problems": problems,
        "final_checks": final_checks,
        "grid": json.loads(grid) if grid else None,
        "measurements": measurements,
    }


def _spread(values) -> dict:
    """``{"n", "min", "median", "mean", "max"}`` of the finite values (n an int; the others
    floats, None when n is 0)."""
    finite = sorted(float(v) for v in values if v is not None and math.isfinite(float(v)))
    if not finite:
        return {"n": 0, "min": None, "median": None, "mean": None, "max": None}
    return {
        "n": len(finite),
        "min": finite[0],
        "median": statistics.median(finite),
        "mean": statistics.fmean(finite),
        "max": finite[-1],
    }


def _with_interrupted(counts: dict[str, int], live: bool) -> dict[str, int]:
    """Split 'running' into running (a driver holds the lock) and interrupted (none does)."""
    running = counts.get("running", 0)
    return {
        "pending": counts.get("pending", 0),
        "running": running if live else 0,
        "interrupted": 0 if live else running,
        "done": counts.get("done", 0),
        "failed": counts.get("failed", 0),
    }


def format_status(info: dict) -> str:
    c = info["counts"]
    lines = [f"{info['zoo']}: {info['total']} runs: " + ", ".join(f"{c[s]} {s}" for s in c)]
    if info["by_arch"]:
        w = max(len(a) for a in info["by_arch"])
        cols = list(next(iter(info["by_arch"].values())))
        lines.append(f"  {'':<{w}}  " + " ".join(f"{s:>11}" for s in cols))
        for arch, row in sorted(info["by_arch"].items()):
            lines.append(f"  {arch:<{w}}  " + " ".join(f"{row[s]:11d}" for s in cols))
    if c.get("interrupted"):
        lines.append(
            f"  {c['interrupted']} run(s) interrupted (left running, no `camgap zoo build` holds "
            f"{Path(info['zoo']) / '.lock'}): rerun the build command to resume them"
        )
    if info["stop_reasons"]:
        lines.append("  stop reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(info["stop_reasons"].items())))
    for key, name in (("train_acc_pp", "train acc"), ("test_acc_pp", "test acc"), ("gap_pp", "gap")):
        sp = info[key]
        if sp["n"]:
            lines.append(
                f"  {name} (pp) of {sp['n']} trained runs: median {sp['median']:.2f}, mean {sp['mean']:.2f}, "
                f"min {sp['min']:.2f}, max {sp['max']:.2f}"
            )
    if info["failures"]:
        lines.append(f"  failures ({len(info['failures'])}):")
        for f in info["failures"]:
            first = f["error"].strip().splitlines()[0] if f["error"].strip() else ""
            lines.append(f"    {f['run_id']} {f['arch']} (attempts {f['attempts']}): {first}")
    lines += _final_checks_lines(info.get("final_checks") or {})
    if info["integrity_problems"]:
        lines.append(f"  INTEGRITY PROBLEMS ({len(info['integrity_problems'])}):")
        lines += [f"    {p}" for p in info["integrity_problems"][:20]]
    lines += format_measurement_status(info.get("measurements") or {})
    return "\n".join(lines)


def _final_checks_lines(checks: dict) -> list[str]:
    """How the done runs' final.pt were checked, when any was read (at the paper's scale they
    hold 90 GB): a status that reads them says which and why."""
    hashed, read_back = checks.get("hashed", 0), checks.get("read_back", 0)
    if not hashed and not read_back:
        return []
    n = sum(checks.values())
    return [
        f"  final.pt of {n} done runs: {checks.get('by_stat', 0)} not read (size, mtime, inode as recorded), "
        f"{hashed} hashed (mtime or inode changed, or --verify), {read_back} read back (no digest recorded); "
        "`zoo status` writes nothing, `camgap zoo build` records them"
    ]


STDOUT = "-"  # `--out -`: the table on standard output


def export(zoo_dir: str | Path, fmt: str = "csv", out: str | Path | None = None, measures: bool = False) -> Path | None:
    """Write one row per run (``EXPORT_COLUMNS``), or with ``measures`` one row per measurement
    (``ZooDB.measurements_export_frame``), as CSV or Parquet; return the file's path (default
    ``ZOO/runs.<fmt>`` or ``ZOO/measurements.<fmt>``), or None for ``out="-"``: standard output
    (Parquet's bytes only into a pipe or file, never a terminal). Counts are integers, every other
    number is rounded to ``EXPORT_DIGITS`` significant digits, in both formats."""
    zoo_dir = Path(zoo_dir)
    if fmt not in ("csv", "parquet"):
        raise ZooError(f"--format must be csv or parquet, got {fmt!r}")
    to_stdout = out is not None and str(out) == STDOUT
    if to_stdout and fmt == "parquet" and sys.stdout.isatty():
        raise ZooError("--format parquet --out -: Parquet is binary; redirect standard output to a file or pipe")
    try:
        reg = ZooDB.in_dir(zoo_dir, read_only=True)
    except RegistryError as exc:
        raise ZooError(str(exc)) from None
    try:
        frame = reg.measurements_export_frame() if measures else _runs_export_frame(reg.runs_frame())
    finally:
        reg.close()
    frame = _rounded(frame)
    if to_stdout:
        _write_table(frame, fmt, sys.stdout.buffer if fmt == "parquet" else sys.stdout)
        sys.stdout.flush()
        return None
    name = "measurements" if measures else "runs"
    path = Path(out) if out is not None else zoo_dir / f"{name}.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_table(frame, fmt, path)
    return path


def _write_table(frame, fmt: str, target) -> None:
    """``frame`` as CSV or Parquet into a path or an open file."""
    if fmt == "csv":
        frame.to_csv(target, index=False, float_format=f"%.{EXPORT_DIGITS}g")
        return
    try:
        frame.to_parquet(target, index=False)
    except ImportError as exc:
        raise ZooError(f"--format parquet needs pyarrow (pip install 'camgap[parquet]'): {exc}") from None


def _runs_export_frame(runs):
    """The registry's runs in ``EXPORT_COLUMNS``: accuracies (fractions there) in percentage points
    like the gap, counts as nullable integers (a pending run has no epochs)."""
    import pandas as pd

    frame = runs.assign(
        train_acc_pp=100.0 * runs["train_acc"], test_acc_pp=100.0 * runs["test_acc"], gap_pp=runs["gap"]
    )
    frame = frame[EXPORT_COLUMNS].copy()
    for col in EXPORT_INTEGERS:  # a column of pending runs only holds None (object dtype)
        frame[col] = pd.to_numeric(frame[col], errors="coerce").round().astype("Int64")
    return frame


def _rounded(frame):
    """Every float column rounded to ``EXPORT_DIGITS`` significant digits, as the CSV writes them
    (so the Parquet file holds the numbers the CSV shows)."""
    frame = frame.copy()
    for col in frame.columns:
        if frame[col].dtype.kind == "f":
            frame[col] = [float(f"{v:.{EXPORT_DIGITS}g}") for v in frame[col]]
    return frame
