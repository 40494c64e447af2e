"""Rebuilding a model set's registry from its run directories (`camgap zoo repair`, and a build
that finds the registry unreadable).

Each run directory holds ``config.json`` and, once the run is done, ``final.pt`` with its result
and ``measurements.json`` with its measurement rows; ``registry-meta.json`` beside the registry
holds a copy of its meta table. A file that cannot be read is set aside
(``files.set_aside``), never deleted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

from camgap.params import to_json as params_json
from camgap.zoo.config import RunResult
from camgap.zoo.grid import RunSpec, canonical_json
from camgap.zoo.registry import MEASUREMENTS_FILE, META_BACKUP, RegistryError, ZooDB

__all__ = ["rebuild_registry", "set_aside_registry"]


def _db_files(path: Path) -> list[Path]:
    return [path, Path(f"{path}-wal"), Path(f"{path}-shm")]


def set_aside_registry(path: str | Path, label: str) -> Path | None:
    """Rename the registry file with its -wal/-shm files (which belong to it and must not be
    replayed into another database of that name) to ``<name>.<label>``; return the new name."""
    path = Path(path)
    moved = None
    for f in _db_files(path):
        if f.exists():
            dest = f.with_name(f.name.replace(path.name, f"{path.name}.{label}", 1))
            f.replace(dest)
            moved = moved or dest
    return moved


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _mtime_iso(path: Path) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime))


def _restore_run(reg: ZooDB, run_dir: Path, grid_fp: str | None, problems: list[str]) -> tuple[str, int] | None:
    """Register one run directory; return (status, measurements restored), None when skipped.
    Every unreadable file on the way is set aside (``files.set_aside``), named in ``problems``."""
    from camgap.zoo.files import set_aside  # torch: only when rebuilding

    cfg_path = run_dir / "config.json"
    cfg = _read_json(cfg_path)
    if not isinstance(cfg, dict) or not {"run_id", "config", "repeat", "seed"} <= set(cfg):
        then = "run skipped (a build of its grid registers it again and writes it anew)"
        problems.append(set_aside(cfg_path, f"{cfg_path}: unreadable or incomplete", then))
        return None
    rid = cfg["run_id"]
    if rid != run_dir.name:
        problems.append(f"{cfg_path}: names run {rid!r}, not {run_dir.name!r}; skipped")
        return None
    if grid_fp is not None and cfg.get("grid_fingerprint") not in (None, grid_fp):
        problems.append(f"{run_dir}: a run of another grid ({str(cfg['grid_fingerprint'])[:12]}); skipped")
        return None
    with reg.transaction() as c:
        c.execute(
            "INSERT OR IGNORE INTO runs(run_id, config, repeat, seed, trained) VALUES (?, ?, ?, ?, ?)",
            (
                rid,
                canonical_json(cfg["config"]),
                int(cfg["repeat"]),
                int(cfg["seed"]),
                int(bool(cfg["config"].get("trained", True))),
            ),
        )
    _set_aside_unreadable_checkpoints(run_dir, rid, problems)
    result = _done_result(run_dir, rid, problems)
    if result is None:
        return "pending", 0
    reg.mark_done(rid, result)
    reg.conn.execute("UPDATE runs SET finished = ? WHERE run_id = ?", (_mtime_iso(run_dir / "final.pt"), rid))
    return "done", _restore_measurements(reg, run_dir, rid, problems)


def _done_result(run_dir: Path, run_id: str, problems: list[str]) -> RunResult | None:
    """The result in a sound ``final.pt`` (``digest.check_final``, recording its digest when it had
    none); a corrupt one is set aside and the run comes back pending."""
    from camgap.zoo.digest import check_final
    from camgap.zoo.files import set_aside, stored_result

    final = run_dir / "final.pt"
    if not final.is_file():
        return None
    problem = check_final(run_dir, run_id, record=True)
    if problem is not None:
        problems.append(set_aside(final, problem, "the run is pending (trained again)"))
        return None
    return stored_result(run_dir, run_id)


def _set_aside_unreadable_checkpoints(run_dir: Path, run_id: str, problems: list[str]) -> None:
    """``init.pt`` and ``last.pt`` that cannot be read back (what measuring and resuming read)."""
    from camgap.zoo.files import read_or_problem, resume_problem, set_aside

    checks = (
        ("init.pt", lambda p: read_or_problem(p, ("model_state_dict",))[1], "a restart writes it anew"),
        ("last.pt", resume_problem, "the run restarts from init.pt"),
    )
    for name, problem_of, then in checks:
        path = run_dir / name
        problem = problem_of(path) if path.is_file() else None
        if problem is not None:
            problems.append(set_aside(path, problem, then))


def _restore_measurements(reg: ZooDB, run_dir: Path, run_id: str, problems: list[str]) -> int:
    """Rows of ``measurements.json`` (written by ``zoo measure`` next to final.pt): a list of
    ``{"measure", "params", "value", "state", "reason"}``."""
    from camgap.zoo.files import set_aside

    path = run_dir / MEASUREMENTS_FILE
    if not path.is_file():
        return 0
    rows = _read_json(path)
    if not isinstance(rows, list):
        problems.append(set_aside(path, f"{path}: unreadable", "its measurements are not restored"))
        return 0
    updated, n = _mtime_iso(path), 0
    for row in rows:
        try:
            value = row.get("value")
            reg.conn.execute(
                "INSERT OR REPLACE INTO measurements(run_id, measure, params, value, status, error, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    str(row["measure"]),
                    params_json(row.get("params")),
                    None if value is None else float(value),
                    str(row["state"]),
                    row.get("reason"),
                    updated,
                ),
            )
            n += 1
        except (AttributeError, KeyError, TypeError, ValueError, RegistryError) as exc:
            problems.append(f"{path}: row {row!r} not restored ({exc})")
    return n


def rebuild_registry(zoo_dir: str | Path, specs: Iterable[RunSpec] | None = None) -> str:
    """Write ``zoo_dir/registry.sqlite`` afresh from ``zoo_dir/runs/``; return a one-line report.

    The meta table comes from ``registry-meta.json`` (written by every build) when present;
    ``specs`` (the grid's runs, when known) are registered first, in grid order. Each run
    directory with a ``config.json`` gives a run: done, with its metrics, when ``final.pt``
    holds its result; pending otherwise (failed runs come back pending, with a fresh set of
    attempts; a ``last.pt`` is resumed). Its ``measurements.json``, when present, gives its
    measurements. A file that cannot be read (config.json, init.pt, last.pt, a corrupt final.pt,
    measurements.json) is set aside as ``<name>.corrupt-<time>`` and named, one problem a line
    after the report. The new file is written beside the old one and renamed over it; an
    existing registry is kept as ``registry.sqlite.replaced-<time>``."""
    zoo = Path(zoo_dir)
    target = zoo / ZooDB.FILENAME
    tmp = zoo / f".{ZooDB.FILENAME}.rebuilding"
    for f in _db_files(tmp):
        f.unlink(missing_ok=True)
    meta = _read_json(zoo / META_BACKUP)
    meta = meta if isinstance(meta, dict) else {}
    run_dirs = sorted(d for d in (zoo / "runs").glob("*") if (d / "config.json").is_file())
    problems: list[str] = []
    counts = {"done": 0, "pending": 0, "measurements": 0}
    reg = ZooDB(tmp)
    try:
        with reg.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                [(k, str(v)) for k, v in meta.items() if k != "schema"],
            )
        if specs is not None:
            reg.add_runs(specs)
        grid_fp = meta.get("grid_fingerprint")
        for d in run_dirs:
            got = _restore_run(reg, d, grid_fp, problems)
            if got is not None:
                counts[got[0]] += 1
                counts["measurements"] += got[1]
        not_started = sum(reg.counts().values()) - counts["done"] - counts["pending"]
        reg.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        reg.close()
    for f in _db_files(tmp)[1:]:
        f.unlink(missing_ok=True)
    set_aside_registry(target, "replaced-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    tmp.replace(target)
    return (
        f"{counts['done']} done, {counts['pending']} pending (from run directories)"
        + (f", {not_started} not started" if not_started else "")
        + f", {counts['measurements']} measurement(s) restored"
        + (f"; {len(problems)} problem(s):" + "".join(f"\n  {p}" for p in problems) if problems else "")
    )
