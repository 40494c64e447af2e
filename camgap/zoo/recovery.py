"""A model set's recovery, under its driver lock (one `zoo build` or `zoo repair` at a time):
``repair`` rebuilds ``registry.sqlite`` from ``runs/`` (and ``build`` does when the registry is
gone: ``rebuild_for``), the meta backup it rebuilds from, temporary files that killed processes
left, and done runs whose ``final.pt`` is missing or corrupt going back to pending."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from camgap.io import file_lock
from camgap.zoo.errors import ZooError, storage_stop
from camgap.zoo.grid import Grid, GridError, parse_grid
from camgap.zoo.rebuild import rebuild_registry
from camgap.zoo.registry import META_BACKUP, ZooDB

__all__ = [
    "driver_lock",
    "recoverable",
    "write_meta_backup",
    "rebuild_for",
    "remove_temp_files",
    "retrain_unsound_finals",
    "repair",
]


@contextlib.contextmanager
def driver_lock(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    with file_lock(out / ".lock", wait=False) as held:
        if not held:
            raise ZooError(f"{out}: another `camgap zoo build` (or repair) is running on this model set")
        yield


def recoverable(out: Path) -> bool:
    """A model-set directory whose registry is gone: a meta backup, or run directories."""
    return (out / META_BACKUP).is_file() or any((out / "runs").glob("*/config.json"))


def write_meta_backup(reg: ZooDB, out: Path) -> None:
    """A copy of the registry's meta table (grid, data, fingerprints), for ``repair``."""
    from camgap.zoo.files import atomic_write_json

    meta = {k: v for k, v in reg.meta().items() if k != "schema"}
    path = out / META_BACKUP
    try:
        if path.is_file() and json.loads(path.read_text()) == meta:
            return
    except (OSError, ValueError):
        pass
    atomic_write_json(meta, path)


def _grid_from_meta(meta: dict) -> Grid | None:
    """The grid recorded in a meta backup, when it parses back to the same fingerprint."""
    try:
        canon = json.loads(meta["grid"])
        table = dict(canon["grid"], repeats=canon["repeats"], untrained=canon["untrained"])
        if canon.get("sample") is not None:
            table["sample"] = canon["sample"]
        doc = {"grid": table, "train": canon["train"], "arch_options": canon["arch_options"]}
        if canon.get("pretrain") is not None:
            doc["pretrain"] = canon["pretrain"]
        g = parse_grid(doc, META_BACKUP)
    except (KeyError, TypeError, ValueError, GridError):
        return None
    return g if g.fingerprint() == meta.get("grid_fingerprint") else None


def rebuild_for(g: Grid, out: Path, log) -> None:
    """``build`` found run directories but no registry: rebuild it (refusing another grid's runs)."""
    for cfg_path in sorted((out / "runs").glob("*/config.json")):
        try:
            fp = json.loads(cfg_path.read_text()).get("grid_fingerprint")
        except (OSError, ValueError):
            continue
        if fp is not None and fp != g.fingerprint():
            raise ZooError(
                f"--out {out}: {cfg_path} is a run of a different grid (fingerprint {fp[:12]}, "
                f"this one {g.fingerprint()[:12]}); use another --out directory, or that grid"
            )
    report = rebuild_registry(out, g.runs())
    log(f"{out}: {ZooDB.FILENAME} missing; rebuilt it from runs/: {report}")


def remove_temp_files(out: Path, log) -> None:
    """Temporary files that a killed driver or worker left in the model set (``train.
    remove_stale_temp_files``: only those of dead processes), with the driver lock held."""
    from camgap.io import remove_stale_temp_files

    dirs = [out, *(d for top in ("runs", "cache") for d in sorted((out / top).glob("*")) if d.is_dir())]
    removed = [f for d in dirs for f in remove_stale_temp_files(d)]
    if removed:
        names = ", ".join(str(f.relative_to(out)) for f in removed)
        log(f"{out}: removed {len(removed)} temporary file(s) left by a killed process: {names}")


def retrain_unsound_finals(reg: ZooDB, out: Path, log, verify: bool = False) -> None:
    """Done runs whose final.pt is missing or corrupt (``digest.check_final``; ``verify``: every
    file hashed) go back to pending, a corrupt file set aside; a final.pt without a recorded
    digest that reads back gets one."""
    from camgap.zoo.digest import check_final
    from camgap.zoo.files import set_aside, storage_error

    tally: dict[str, int] = {}
    for run in reg.done_runs():
        rid = run["run_id"]
        final = out / "runs" / rid / "final.pt"
        try:
            problem = check_final(final.parent, rid, record=True, verify=verify, tally=tally)
            if problem is None:
                continue
            then = "the run is trained again"
            msg = set_aside(final, problem, then) if final.is_file() else f"{problem}; {then}"
        except OSError as exc:
            if storage_error(exc) is None:
                raise
            raise storage_stop(f"{exc.filename or final}: {exc.strerror or exc}") from exc
        reg.requeue(rid)
        log(f"WARNING {rid}: {msg}")
    read = {k: n for k, n in tally.items() if k != "by_stat" and n}
    if read:  # a copied or touched set costs a read of every file once: say why this build took long
        said = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in read.items())
        log(f"{out}: checked the done runs' final.pt: {said} (new or changed on disk since recorded), "
            f"{tally.get('by_stat', 0)} by size, mtime and inode")  # fmt: skip


def repair(zoo_dir: str | Path, log=print):
    """Rebuild ``ZOO/registry.sqlite`` from ``ZOO/runs/`` (``camgap zoo repair``): done runs
    from their final.pt, every other run pending, measurements from measurements.json; an
    existing registry is kept as ``registry.sqlite.replaced-<time>``. Holds the driver lock."""
    zoo = Path(zoo_dir).expanduser().resolve()
    if not zoo.is_dir():
        raise ZooError(f"{zoo}: no such directory")
    if not recoverable(zoo):
        raise ZooError(f"{zoo}: no run directories (runs/*/config.json) nor {META_BACKUP} to rebuild from")
    with driver_lock(zoo):
        remove_temp_files(zoo, log)
        meta = {}
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads((zoo / META_BACKUP).read_text())
        g = _grid_from_meta(meta) if meta else None
        report = rebuild_registry(zoo, g.runs() if g is not None else None)
    log(f"{zoo}: rebuilt {ZooDB.FILENAME} from runs/: {report}")
    return report
