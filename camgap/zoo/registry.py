"""The model-set registry (``ZooDB``): one SQLite file, the single source of truth about a model
set's runs and their measurements (tables: ``camgap.zoo.dbschema``).

Only the driver process writes it (workers return result dicts). Readers open it read-only
(``ZooDB(path, read_only=True)``; ``create=False`` falls back to read-only when the storage is not
writable). Every change to a run's measurements is mirrored, atomically, to
``runs/<run_id>/measurements.json`` (see ``measurement_rows``), from which a lost registry can be
rebuilt (``camgap.zoo.rebuild``).

Accuracies are fractions in [0, 1]; the gap is in percentage points.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from camgap.errors import InputError
from camgap.params import to_json as params_json
from camgap.zoo import dbschema
from camgap.zoo.config import RunConfig, RunResult
from camgap.zoo.dbschema import (
    COMPUTE_COLUMNS,
    MEASUREMENT_STATES,
    METRICS,
    STATUSES,
    GridMismatchError,
    RegistryError,
)
from camgap.zoo.grid import GRID_KEYS, RunSpec, canonical_json

__all__ = [
    "ZooDB",
    "RegistryError",
    "GridMismatchError",
    "STATUSES",
    "METRICS",
    "MEASUREMENT_STATES",
    "MEASUREMENTS_FILE",
    "META_BACKUP",
]

MEASUREMENTS_FILE = "measurements.json"  # per run directory: that run's measurement rows
META_BACKUP = "registry-meta.json"  # a copy of the meta table, for rebuilding the registry from runs/


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
    """One line from ``ZooDB.measurement_counts()``: 'undefined in the set: 10th-percentile
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


class ZooDB:
    """``ZooDB(path)`` opens (creating if needed) the SQLite registry at ``path``.

    ``create=False``: the file must exist; opened read-write where the storage allows it,
    else read-only. ``read_only=True``: opened read-only (``mode=ro``), for commands that
    only read; writes raise ``RegistryError``."""

    FILENAME = "registry.sqlite"

    def __init__(self, path: str | Path, create: bool = True, read_only: bool = False):
        self.path = Path(path)
        if (read_only or not create) and not self.path.is_file():
            raise RegistryError(f"{self.path}: no registry here (build a model set with `camgap zoo build`)")
        self.read_only = read_only or (not create and not dbschema.writable(self.path))
        self.conn = dbschema.connect(self.path, self.read_only)
        if self.read_only:
            return
        if create:
            self.conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
        self.conn.execute("PRAGMA synchronous=FULL")
        if create:  # readers (status, export, measures) never write
            dbschema.migrate(self.conn)

    @classmethod
    def in_dir(cls, zoo_dir: str | Path, create: bool = True, read_only: bool = False) -> ZooDB:
        return cls(Path(zoo_dir) / cls.FILENAME, create=create, read_only=read_only)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ZooDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def transaction(self):
        """A write transaction (``dbschema.transaction``): committed at the end, rolled back on error."""
        return dbschema.transaction(self.conn)

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
        what its config says (fp32 where it says nothing: the default, which configs that predate
        the precision key computed in); ``pack_size`` is a done run's (1 where none is recorded:
        such runs trained alone)."""
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
        dbschema.add_compute_columns(self.conn)

    # --- measurements -----------------------------------------------------------------

    def allow_undefined_state(self) -> None:
        dbschema.allow_undefined_state(self.conn)

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
        from camgap.zoo.files import atomic_write_json, run_dir  # torch: files reads checkpoints

        directory = run_dir(self.path.parent, run_id)
        if not directory.is_dir():
            return None
        atomic_write_json(self.measurement_rows(run_id), directory / MEASUREMENTS_FILE)
        return directory / MEASUREMENTS_FILE

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

    def integrity_check(
        self, zoo_dir: str | Path | None = None, verify: bool = False, tally: dict | None = None
    ) -> list[str]:
        """Problems found (an empty list means the registry is sound): SQLite's own
        integrity check, unique run ids, valid statuses, done runs with complete metrics
        (gap = 100 * (train_acc - test_acc)) and, given the model-set directory, a sound final.pt
        for every done run (``zoo.digest.check_final``, hashing every one with ``verify``, counting
        them in ``tally`` by how they were checked); measurements that name unknown runs."""
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
                problems += _final_problem(Path(zoo_dir), r["run_id"], verify, tally)
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


def _final_problem(zoo_dir: Path, run_id: str, verify: bool, tally: dict | None) -> list[str]:
    """A done run's final.pt that is missing or corrupt, as an integrity problem saying what follows."""
    from camgap.zoo.digest import check_final

    if not (zoo_dir / "runs" / run_id / "final.pt").is_file():
        return [f"run {run_id}: done but runs/{run_id}/final.pt is missing"]
    problem = check_final(zoo_dir / "runs" / run_id, run_id, verify=verify, tally=tally)
    if problem is None:
        return []
    return [f"run {run_id}: done, but {problem}; `camgap zoo build --verify` trains it again"]
