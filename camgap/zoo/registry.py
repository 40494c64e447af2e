"""The model-set registry: one SQLite file (WAL mode), the single source of truth.

Only the driver process writes it (workers return result dicts). Readers open it read-only
(``Registry(path, read_only=True)``; ``create=False`` falls back to read-only when the
storage is not writable), so status, export and the study work on read-only storage.
Every ``sqlite3.Error`` becomes a ``RegistryError`` naming the file. The registry can be
rebuilt from the run directories (``rebuild_registry``): each holds ``config.json``, and
``final.pt`` (with the run's result) once it is done. Tables:

* ``meta(key, value)``: ``grid_fingerprint``, ``grid`` (canonical JSON), ``data`` (the
  data directory's fingerprint: classes and split sizes), ``schema``.
* ``runs``: one row per run: ``run_id`` (primary key), ``config`` (canonical JSON),
  ``repeat``, ``seed``, ``trained`` (0 for the randomly initialised models of the validity
  test), ``status`` (pending/running/done/failed), ``attempts`` (failures of the run
  itself: its training raised, or its worker died twice in a row; an interrupted driver,
  a sibling's dead worker or a full disk use none), ``error``, and the metrics ``epochs,
  stop_reason, train_acc, train_loss, test_acc, test_loss, gap`` (percentage points:
  100 * (train_acc - test_acc)), ``wall_time`` (the run's seconds of training, summed over
  resumes: in a pack, its share of the pack's time), ``pack_wall_time`` (its pack's seconds while
  it trained in it; ``wall_time`` alone), ``precision`` (fp32 or bf16, as it computed), ``pack_size``
  (runs in its pack, 1 alone), ``resumed_from`` (epoch the last attempt resumed from), ``started``,
  ``finished`` (ISO timestamps, UTC). A registry of an earlier camgap gains the three columns when
  a build opens it; until then readers show them from the run configs.
* ``measurements(run_id, measure, params, value, status, error, updated)`` with primary key
  ``(run_id, measure, params)``; ``params`` is ``camgap.params.to_json`` of the measure's
  parameters (sorted keys, string values: one variant, one key);
  ``status`` is the measurement's state: ``done`` (a value), ``failed`` (something broke,
  ``error`` says what) or ``undefined`` (no value by the measure's own definition, ``error``
  says why). Every change to a run's measurements is mirrored, atomically, to
  ``runs/<run_id>/measurements.json`` (see ``measurement_rows``), from which a lost registry
  can be rebuilt.

Accuracies are fractions in [0, 1]; the gap is in percentage points.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path

from camgap.errors import CamgapError, InputError
from camgap.params import to_json as params_json
from camgap.zoo.config import RunConfig, RunResult
from camgap.zoo.grid import GRID_KEYS, RunSpec, canonical_json

__all__ = [
    "Registry",
    "RegistryError",
    "GridMismatchError",
    "STATUSES",
    "METRICS",
    "MEASUREMENT_STATES",
    "MEASUREMENTS_FILE",
    "META_BACKUP",
    "rebuild_registry",
    "set_aside_registry",
]

SCHEMA_VERSION = "1"
STATUSES = ("pending", "running", "done", "failed")
MEASUREMENT_STATES = ("done", "failed", "undefined")
MEASUREMENTS_FILE = "measurements.json"  # per run directory: that run's measurement rows
META_BACKUP = "registry-meta.json"  # a copy of the meta table, for rebuilding the registry from runs/
METRICS = ("epochs", "stop_reason", "train_acc", "train_loss", "test_acc", "test_loss", "gap", "wall_time")
# how a done run computed (from its result); added to registries written before they existed
COMPUTE_COLUMNS = {"pack_wall_time": "REAL", "precision": "TEXT", "pack_size": "INTEGER"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    repeat INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    trained INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    epochs INTEGER,
    stop_reason TEXT,
    train_acc REAL,
    train_loss REAL,
    test_acc REAL,
    test_loss REAL,
    gap REAL,
    wall_time REAL,
    resumed_from INTEGER,
    pack_wall_time REAL,
    precision TEXT,
    pack_size INTEGER,
    started TEXT,
    finished TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE TABLE IF NOT EXISTS measurements (
    run_id TEXT NOT NULL,
    measure TEXT NOT NULL,
    params TEXT NOT NULL,
    value REAL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed', 'undefined')),
    error TEXT,
    updated TEXT NOT NULL,
    PRIMARY KEY (run_id, measure, params)
);
"""


class RegistryError(CamgapError, RuntimeError):
    """The registry is missing, from another grid, or inconsistent."""


class GridMismatchError(RegistryError):
    pass


def _registry_error(exc: sqlite3.Error, path: Path) -> RegistryError:
    """One line naming the registry file; a full or failing disk says how to go on."""
    msg = " ".join(str(exc).split())
    if "disk is full" in msg or "disk I/O error" in msg:
        msg += "; free space (or fix the storage) and rerun the same command to resume"
    elif "not a database" in msg or "malformed" in msg:
        msg += f"; `camgap zoo repair --zoo {path.parent}` rebuilds it from the run directories"
    return RegistryError(f"{path}: {msg}")


class _Connection(sqlite3.Connection):
    """A connection whose statements raise ``RegistryError`` (naming the file) for any sqlite3.Error."""

    registry_path = Path("?")

    def execute(self, *args):
        try:
            return super().execute(*args)
        except sqlite3.Error as exc:
            raise _registry_error(exc, self.registry_path) from exc

    def executemany(self, *args):
        try:
            return super().executemany(*args)
        except sqlite3.Error as exc:
            raise _registry_error(exc, self.registry_path) from exc

    def executescript(self, *args):
        try:
            return super().executescript(*args)
        except sqlite3.Error as exc:
            raise _registry_error(exc, self.registry_path) from exc


def _writable(path: Path) -> bool:
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def _read_only_uri(path: Path) -> str:
    """``mode=ro``; on storage we cannot write, also ``immutable=1`` unless the WAL files
    exist (SQLite then reads them; without them it would need to create them)."""
    path = path.resolve()
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
    wal_files = all(Path(f"{path}{suffix}").exists() for suffix in ("-wal", "-shm"))
    if not os.access(path.parent, os.W_OK) and not wal_files:
        uri += "&immutable=1"
    return uri


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _measurement_row(
    run_id: str,
    measure: str,
    params: Mapping | str | None,
    value: float | None,
    state: str = "done",
    reason: str | None = None,
) -> tuple:
    if state not in MEASUREMENT_STATES:
        raise InputError(f"measurement state must be one of {', '.join(MEASUREMENT_STATES)}, got {state!r}")
    if state == "done":
        if value is None or not math.isfinite(float(value)):
            raise InputError(f"{run_id} {measure}: a done measurement needs a finite value, got {value!r}")
        value = float(value)
    elif value is not None or not reason:
        raise InputError(f"{run_id} {measure}: a {state} measurement has no value and needs a reason")
    return run_id, measure, params_json(params), value, state, reason, _now()


def reason_kind(reason: str | None) -> str:
    """A reason without its numbers, to count alike ones together:
    '10th-percentile margin gamma = -0.31 <= 0 (too many ...)' -> '10th-percentile margin gamma <= 0'."""
    text = (reason or "").strip().splitlines()[0] if (reason or "").strip() else "no reason given"
    text = text.split(" (", 1)[0]
    return re.sub(r"\s*(?<![<>!=])=\s*([-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|-?inf|nan)\b", "", text).strip()


def state_line(counts: dict, state: str) -> str:
    """One line from ``Registry.measurement_counts()``: 'undefined in the set: 10th-percentile
    margin gamma <= 0: inverse_margin 2 run(s), spectral_norm 2 run(s); ...' ('' when none)."""
    by_reason: dict[str, list[str]] = {}
    for row in counts.get("not_done", []):
        if row["state"] == state:
            by_reason.setdefault(row["reason"], []).append(f"{row['measure']} {row['runs']} run(s)")
    if not by_reason:
        return ""
    return f"{state} in the set: " + "; ".join(f"{why}: {', '.join(items)}" for why, items in by_reason.items())


def format_measurement_status(counts: dict) -> list[str]:
    """The measurements section of `zoo status`: counts by state, then one line per state
    that is not done (by reason and measure)."""
    states = counts.get("states") or {}
    if not sum(states.values()):
        return ["  measurements: none yet (run `camgap zoo measure`)"]
    lines = ["  measurements: " + ", ".join(f"{n} {s}" for s, n in states.items())]
    lines += [f"    {line}" for line in (state_line(counts, s) for s in ("undefined", "failed")) if line]
    return lines


class Registry:
    """``Registry(path)`` opens (creating if needed) the SQLite registry at ``path``.

    ``create=False``: the file must exist; opened read-write where the storage allows it,
    else read-only. ``read_only=True``: opened read-only (``mode=ro``), for commands that
    only read; writes raise ``RegistryError``."""

    FILENAME = "registry.sqlite"

    def __init__(self, path: str | Path, create: bool = True, read_only: bool = False):
        self.path = Path(path)
        if (read_only or not create) and not self.path.is_file():
            raise RegistryError(f"{self.path}: no registry here (build a model set with `camgap zoo build`)")
        self.read_only = read_only or (not create and not _writable(self.path))
        try:
            if self.read_only:
                self.conn = sqlite3.connect(
                    _read_only_uri(self.path), uri=True, timeout=60.0, isolation_level=None, factory=_Connection
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, factory=_Connection)
        except sqlite3.Error as exc:
            raise _registry_error(exc, self.path) from exc
        self.conn.registry_path = self.path
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA busy_timeout=60000")
        if self.read_only:
            return
        if create:
            self.conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
        self.conn.execute("PRAGMA synchronous=FULL")
        if create:  # readers (status, export, measures) never write
            self.conn.executescript(_SCHEMA)
            self.conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
            self.allow_undefined_state()
            self.add_compute_columns()

    @classmethod
    def in_dir(cls, zoo_dir: str | Path, create: bool = True, read_only: bool = False) -> Registry:
        return cls(Path(zoo_dir) / cls.FILENAME, create=create, read_only=read_only)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self):
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            with contextlib.suppress(RegistryError):  # SQLite may have rolled back already (disk full)
                self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    # --- meta -------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key, value FROM meta").fetchall())

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def bind_grid(self, fingerprint: str, grid_json: str, what: str = "grid") -> None:
        """Record the grid (or data) fingerprint on first use; a different one is an error."""
        old = self.get_meta(f"{what}_fingerprint")
        if old is None:
            with self.transaction() as c:
                c.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (f"{what}_fingerprint", fingerprint))
                c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (what, grid_json))
        elif old != fingerprint:
            raise GridMismatchError(
                f"{self.path.parent} holds a model set built from a different {what} "
                f"(fingerprint {old[:12]}, this one {fingerprint[:12]}); "
                f"use another --out directory, or the {what} it was built with:\n{self.get_meta(what)}"
            )

    # --- runs -------------------------------------------------------------------------

    def add_runs(self, specs: Iterable[RunSpec]) -> int:
        """Insert runs that are not registered yet; return how many were new."""
        rows = [(s.run_id, canonical_json(s.config.to_dict()), s.repeat, s.seed, int(s.trained)) for s in specs]
        with self.transaction() as c:
            before = c.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            c.executemany(
                "INSERT OR IGNORE INTO runs(run_id, config, repeat, seed, trained) VALUES (?, ?, ?, ?, ?)", rows
            )
            after = c.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        return after - before

    def reset_interrupted(self) -> list[str]:
        """Runs left 'running' by a dead driver go back to 'pending' (they resume from last.pt)."""
        with self.transaction() as c:
            ids = [r[0] for r in c.execute("SELECT run_id FROM runs WHERE status = 'running'")]
            c.execute("UPDATE runs SET status = 'pending' WHERE status = 'running'")
        return ids

    def reset_failed(self) -> int:
        """Give failed runs a fresh set of attempts (``zoo build --retry-failed``)."""
        with self.transaction() as c:
            return c.execute("UPDATE runs SET status = 'pending', attempts = 0 WHERE status = 'failed'").rowcount

    def todo(self, max_attempts: int) -> list[RunSpec]:
        """Runs to start: pending ones, and failed ones with attempts < max_attempts.
        Trained runs first (in insertion order), then the untrained models."""
        rows = self.conn.execute(
            "SELECT run_id, config, repeat, seed FROM runs "
            "WHERE status = 'pending' OR (status = 'failed' AND attempts < ?) ORDER BY trained DESC, rowid",
            (max_attempts,),
        ).fetchall()
        return [
            RunSpec(r["run_id"], RunConfig.from_dict(json.loads(r["config"])), r["repeat"], r["seed"]) for r in rows
        ]

    def exhausted(self, max_attempts: int) -> int:
        """Failed runs out of attempts (``todo`` leaves them out)."""
        query = "SELECT COUNT(*) FROM runs WHERE status = 'failed' AND attempts >= ?"
        return int(self.conn.execute(query, (max_attempts,)).fetchone()[0])

    def mark_running(self, run_id: str) -> int:
        """Mark a run started; return the attempt it is on (failures so far + 1). Starting uses
        no attempt: only a failure of the run itself does (``mark_failed``)."""
        with self.transaction() as c:
            c.execute(
                "UPDATE runs SET status = 'running', started = ?, error = NULL WHERE run_id = ?", (_now(), run_id)
            )
            return c.execute("SELECT attempts FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0] + 1

    def requeue(self, run_id: str) -> None:
        """Back to 'pending' without using an attempt: the run was stopped by something else
        (a sibling's dead worker, its own worker's first death, a full disk)."""
        with self.transaction() as c:
            c.execute("UPDATE runs SET status = 'pending' WHERE run_id = ?", (run_id,))

    def mark_done(self, run_id: str, result: RunResult) -> None:
        with self.transaction() as c:
            cur = c.execute(
                "UPDATE runs SET status = 'done', error = NULL, epochs = ?, stop_reason = ?, train_acc = ?, "
                "train_loss = ?, test_acc = ?, test_loss = ?, gap = ?, wall_time = ?, resumed_from = ?, "
                "pack_wall_time = ?, precision = ?, pack_size = ?, finished = ? WHERE run_id = ?",
                (
                    int(result.epochs),
                    result.stop_reason,
                    float(result.train_acc),
                    float(result.train_loss),
                    float(result.test_acc),
                    float(result.test_loss),
                    float(result.gap),
                    float(result.wall_time or 0.0),
                    result.resumed_from,
                    result.pack_wall_time,
                    result.precision,
                    result.pack_size,
                    _now(),
                    run_id,
                ),
            )
            if cur.rowcount != 1:
                raise RegistryError(f"mark_done: no run {run_id!r} in {self.path}")

    def mark_failed(self, run_id: str, error: str) -> int:
        """A failure of the run itself: record it and use one attempt; return the attempts used."""
        with self.transaction() as c:
            c.execute(
                "UPDATE runs SET status = 'failed', attempts = attempts + 1, error = ?, finished = ? WHERE run_id = ?",
                (str(error)[-20000:], _now(), run_id),
            )
            row = c.execute("SELECT attempts FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def get_run(self, run_id: str) -> dict | None:
        """The run's row, its config read into a ``RunConfig``."""
        row = self.conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        return dict(row) | {"config": RunConfig.from_dict(json.loads(row["config"]))}

    def counts(self) -> dict[str, int]:
        got = dict(self.conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
        return {s: int(got.get(s, 0)) for s in STATUSES}

    def runs_frame(self):
        """One row per run: run_id, one column per grid key, repeat, seed, trained, status,
        attempts, error, the metrics, pack_wall_time, precision, pack_size, resumed_from, started,
        finished, config (JSON). ``precision`` is what a done run computed in (its result), else
        what its config says (fp32 where it says nothing: the default, and all there was before
        precision was recorded); ``pack_size`` is a done run's (1 before packs were recorded)."""
        import pandas as pd

        rows = [dict(r) for r in self.conn.execute("SELECT * FROM runs ORDER BY rowid")]
        cols = [
            "run_id",
            *GRID_KEYS,
            "repeat",
            "seed",
            "trained",
            "status",
            "attempts",
            "error",
            *METRICS,
            *COMPUTE_COLUMNS,
            "resumed_from",
            "started",
            "finished",
            "config",
        ]
        out = []
        for r in rows:
            cfg = json.loads(r["config"])
            rec = {k: cfg.get(k) for k in GRID_KEYS}
            rec.update({k: r[k] for k in r})
            rec["trained"] = bool(r["trained"])
            if rec.get("precision") is None:
                rec["precision"] = cfg.get("precision") or "fp32"
            if rec.get("pack_size") is None and r["status"] == "done":
                rec["pack_size"] = int(cfg.get("pack") or 1)
            out.append(rec)
        frame = pd.DataFrame(out, columns=cols)
        return frame

    def add_compute_columns(self) -> None:
        """Add ``COMPUTE_COLUMNS`` to a runs table written before they existed (empty: readers fill
        them from the configs until a run is done again or the registry is rebuilt)."""
        if COMPUTE_COLUMNS.keys() <= self._run_columns():
            return
        with self.transaction() as c:  # checked again inside: another process may have added them
            for name, kind in COMPUTE_COLUMNS.items():
                if name not in self._run_columns():
                    c.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")

    def _run_columns(self) -> set[str]:
        return {row[1] for row in self.conn.execute("PRAGMA table_info(runs)")}

    # --- measurements -----------------------------------------------------------------

    def allow_undefined_state(self) -> None:
        """A registry written before the 'undefined' state existed has a CHECK constraint that
        refuses it; copy its measurements into a table with the current one (SQLite cannot
        alter a CHECK)."""
        row = self.conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'measurements'"
        ).fetchone()
        if row is None or "'undefined'" in row[0]:
            return
        table = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS measurements") :]
        with self.transaction() as c:
            c.execute("ALTER TABLE measurements RENAME TO measurements_old")
            c.execute(table.replace(" IF NOT EXISTS", ""))
            c.execute("INSERT INTO measurements SELECT * FROM measurements_old")
            c.execute("DROP TABLE measurements_old")

    def record_measurement(
        self,
        run_id: str,
        measure: str,
        params: Mapping | str | None,
        value: float | None,
        status: str = "done",
        error: str | None = None,
    ) -> None:
        """Insert or replace one measurement of one run (state 'done', 'failed' or 'undefined')."""
        self.record_measurements(run_id, [(measure, params, value, status, error)])

    def record_measurements(self, run_id: str, rows: Iterable[tuple]) -> None:
        """Insert or replace measurements of one run in one transaction, then rewrite the run's
        measurements.json. ``rows``: ``(measure, params, value, state, reason)`` tuples; a 'done'
        row needs a finite value, the others no value and a reason."""
        checked = [_measurement_row(run_id, *r) for r in rows]
        if not checked:
            return
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise RegistryError(f"record_measurement: no run {run_id!r} in {self.path}")
            c.executemany(
                "INSERT OR REPLACE INTO measurements(run_id, measure, params, value, status, error, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                checked,
            )
        self.write_measurements_file(run_id)

    def measurement_rows(self, run_id: str) -> list[dict]:
        """One run's measurements as measurements.json holds them: ``measure``, ``params``
        (canonical JSON, exactly as stored), ``value``, ``state``, ``reason``; sorted."""
        rows = self.conn.execute(
            "SELECT measure, params, value, status, error FROM measurements WHERE run_id = ? ORDER BY measure, params",
            (run_id,),
        )
        return [{"measure": m, "params": p, "value": v, "state": st, "reason": e} for m, p, v, st, e in rows]

    def write_measurements_file(self, run_id: str) -> Path | None:
        """Mirror a run's measurement rows to ``runs/<run_id>/measurements.json`` (atomically);
        nothing when the run has no directory next to the registry."""
        from camgap.zoo.files import atomic_write_json

        run_dir = self.path.parent / "runs" / run_id
        if not run_dir.is_dir():
            return None
        atomic_write_json(self.measurement_rows(run_id), run_dir / MEASUREMENTS_FILE)
        return run_dir / MEASUREMENTS_FILE

    def measurement_done(self, run_id: str, measure: str, params: Mapping | str | None = None) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM measurements WHERE run_id = ? AND measure = ? AND params = ? AND status = 'done'",
            (run_id, measure, params_json(params)),
        ).fetchone()
        return row is not None

    def measurements_frame(self):
        """Columns run_id, measure, params (canonical JSON), value, status (the state: done,
        failed, undefined), error (the reason), updated."""
        import pandas as pd

        rows = [dict(r) for r in self.conn.execute("SELECT * FROM measurements ORDER BY rowid")]
        return pd.DataFrame(rows, columns=["run_id", "measure", "params", "value", "status", "error", "updated"])

    def measurements_export_frame(self):
        """The measurement table for `zoo export --measures`, long form: run_id, measure,
        params (canonical JSON), value, state (done, failed, undefined), reason."""
        frame = self.measurements_frame().rename(columns={"status": "state", "error": "reason"})
        return frame[["run_id", "measure", "params", "value", "state", "reason"]]

    def measurement_counts(self, measures: Iterable[str] | None = None) -> dict:
        """Measurements by state: ``{"states": {state: n}, "by_measure": {measure: {state: n}},
        "not_done": [{"state", "measure", "reason", "runs"}]}``; ``reason`` is the reason with
        its numbers left out (``reason_kind``), ``runs`` counts distinct runs. ``measures``:
        only these measures (default: all)."""
        rows = self.conn.execute("SELECT run_id, measure, status, error FROM measurements").fetchall()
        if measures is not None:
            keep = set(measures)
            rows = [r for r in rows if r["measure"] in keep]
        states = {s: 0 for s in MEASUREMENT_STATES}
        by_measure: dict[str, dict[str, int]] = {}
        groups: dict[tuple[str, str, str], set[str]] = {}
        for r in rows:
            states[r["status"]] += 1
            by_measure.setdefault(r["measure"], {s: 0 for s in MEASUREMENT_STATES})[r["status"]] += 1
            if r["status"] != "done":
                groups.setdefault((r["status"], reason_kind(r["error"]), r["measure"]), set()).add(r["run_id"])
        not_done = [
            {"state": st, "reason": why, "measure": m, "runs": len(ids)} for (st, why, m), ids in sorted(groups.items())
        ]
        return {"states": states, "by_measure": dict(sorted(by_measure.items())), "not_done": not_done}

    # --- checks -----------------------------------------------------------------------

    def integrity_check(self, zoo_dir: str | Path | None = None) -> list[str]:
        """Problems found (an empty list means the registry is sound): SQLite's own
        integrity check, unique run ids, valid statuses, done runs with complete metrics
        (gap = 100 * (train_acc - test_acc)) and, given the model-set directory, a sound final.pt
        for every done run (``zoo.digest.check_final``); measurements that name unknown runs."""
        problems: list[str] = []
        res = [r[0] for r in self.conn.execute("PRAGMA integrity_check")]
        if res != ["ok"]:
            problems += [f"sqlite: {r}" for r in res]
        for rid, n in self.conn.execute("SELECT run_id, COUNT(*) FROM runs GROUP BY run_id HAVING COUNT(*) > 1"):
            problems.append(f"run {rid}: {n} rows")
        for rid, st in self.conn.execute(
            f"SELECT run_id, status FROM runs WHERE status NOT IN ({','.join('?' * len(STATUSES))})", STATUSES
        ):
            problems.append(f"run {rid}: unknown status {st!r}")
        need = ("epochs", "train_acc", "train_loss", "test_acc", "test_loss", "gap")
        for r in self.conn.execute("SELECT * FROM runs WHERE status = 'done'"):
            missing = [k for k in need if r[k] is None]
            if missing:
                problems.append(f"run {r['run_id']}: done but missing {', '.join(missing)}")
                continue
            if abs(r["gap"] - 100.0 * (r["train_acc"] - r["test_acc"])) > 1e-6:
                problems.append(f"run {r['run_id']}: gap {r['gap']} != 100 * (train_acc - test_acc)")
            if not r["trained"] and r["epochs"] != 0:
                problems.append(f"run {r['run_id']}: untrained model with epochs = {r['epochs']}")
            if zoo_dir is not None:
                problems += _final_problem(Path(zoo_dir), r["run_id"])
        for (rid,) in self.conn.execute(
            "SELECT DISTINCT run_id FROM measurements WHERE run_id NOT IN (SELECT run_id FROM runs)"
        ):
            problems.append(f"measurements: unknown run {rid}")
        return problems

    # --- measuring (zoo measure) ------------------------------------------------------

    def done_runs(self) -> list[dict]:
        """The done runs in registry order: ``run_id`` and ``stop_reason`` (what measuring needs)."""
        rows = self.conn.execute("SELECT run_id, stop_reason FROM runs WHERE status = 'done' ORDER BY rowid")
        return [{"run_id": r[0], "stop_reason": r[1]} for r in rows]

    def measurement_keys(self, run_id: str) -> set[tuple[str, str]]:
        """``(measure, params JSON)`` of every row recorded for a run, in any state (finished rows)."""
        rows = self.conn.execute("SELECT measure, params FROM measurements WHERE run_id = ?", (run_id,))
        return {(r[0], r[1]) for r in rows}


def _final_problem(zoo_dir: Path, run_id: str) -> list[str]:
    """A done run's final.pt that is missing or corrupt, as an integrity problem saying what follows."""
    from camgap.zoo.digest import check_final

    if not (zoo_dir / "runs" / run_id / "final.pt").is_file():
        return [f"run {run_id}: done but runs/{run_id}/final.pt is missing"]
    problem = check_final(zoo_dir / "runs" / run_id, run_id)
    if problem is None:
        return []
    return [f"run {run_id}: done, but {problem}; `camgap zoo build` trains it again"]


# --- rebuilding from the run directories --------------------------------------------------


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
            os.replace(f, dest)
            moved = moved or dest
    return moved


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _mtime_iso(path: Path) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime))


def _restore_run(reg: Registry, run_dir: Path, grid_fp: str | None, problems: list[str]) -> tuple[str, int] | None:
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


def _restore_measurements(reg: Registry, run_dir: Path, run_id: str, problems: list[str]) -> int:
    """Rows of ``measurements.json`` (written by ``zoo measure`` next to final.pt): a list of
    ``{"measure", "params", "value", "state", "reason"}``."""
    from camgap.zoo.files import set_aside

    path = run_dir / "measurements.json"
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
    target = zoo / Registry.FILENAME
    tmp = zoo / f".{Registry.FILENAME}.rebuilding"
    for f in _db_files(tmp):
        f.unlink(missing_ok=True)
    meta = _read_json(zoo / META_BACKUP)
    meta = meta if isinstance(meta, dict) else {}
    run_dirs = sorted(d for d in (zoo / "runs").glob("*") if (d / "config.json").is_file())
    problems: list[str] = []
    counts = {"done": 0, "pending": 0, "measurements": 0}
    reg = Registry(tmp)
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
    os.replace(tmp, target)
    return (
        f"{counts['done']} done, {counts['pending']} pending (from run directories)"
        + (f", {not_started} not started" if not_started else "")
        + f", {counts['measurements']} measurement(s) restored"
        + (f"; {len(problems)} problem(s):" + "".join(f"\n  {p}" for p in problems) if problems else "")
    )
