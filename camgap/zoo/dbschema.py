"""The model-set registry's SQLite file: its tables, how it is opened, and how a file written by
an earlier camgap is brought up to the current tables.

One file in WAL mode (``registry.sqlite``). Only the driver process writes it; readers open it
read-only (``mode=ro``, and ``immutable=1`` on storage that cannot be written unless the WAL files
exist), so status, export and the study work on read-only storage. Every ``sqlite3.Error``
becomes a ``RegistryError`` naming the file. Tables:

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
  ``finished`` (ISO timestamps, UTC). A registry without the three compute columns gains them when
  a build opens it; until then readers show them from the run configs.
* ``measurements(run_id, measure, params, value, status, error, updated)`` with primary key
  ``(run_id, measure, params)``; ``params`` is ``camgap.params.to_json`` of the measure's
  parameters (sorted keys, string values: one variant, one key);
  ``status`` is the measurement's state (``MEASUREMENT_STATES``): ``done`` (a value), ``failed``
  (something broke, ``error`` says what) or ``undefined`` (no value by the measure's own
  definition, ``error`` says why).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from pathlib import Path

from camgap.errors import CamgapError

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "MEASUREMENT_STATES",
    "METRICS",
    "COMPUTE_COLUMNS",
    "RegistryError",
    "GridMismatchError",
    "registry_error",
    "connect",
    "writable",
    "transaction",
    "migrate",
]

SCHEMA_VERSION = "1"
STATUSES = ("pending", "running", "done", "failed")
#: The states of a recorded measurement: a value, a broken computation, no value by definition.
MEASUREMENT_STATES = ("done", "failed", "undefined")
METRICS = ("epochs", "stop_reason", "train_acc", "train_loss", "test_acc", "test_loss", "gap", "wall_time")
# how a done run computed (from its result); a registry that lacks them gains them (``migrate``)
COMPUTE_COLUMNS = {"pack_wall_time": "REAL", "precision": "TEXT", "pack_size": "INTEGER"}

SCHEMA = """
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


def registry_error(exc: sqlite3.Error, path: Path) -> RegistryError:
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
            raise registry_error(exc, self.registry_path) from exc

    def executemany(self, *args):
        try:
            return super().executemany(*args)
        except sqlite3.Error as exc:
            raise registry_error(exc, self.registry_path) from exc

    def executescript(self, *args):
        try:
            return super().executescript(*args)
        except sqlite3.Error as exc:
            raise registry_error(exc, self.registry_path) from exc


def writable(path: Path) -> bool:
    """Whether this process may write the registry file at ``path`` (and its directory)."""
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


def connect(path: Path, read_only: bool) -> sqlite3.Connection:
    """A connection to the registry file at ``path`` whose statements raise ``RegistryError``
    (rows as ``sqlite3.Row``, autocommit: writes go through ``transaction``)."""
    try:
        if read_only:
            conn = sqlite3.connect(
                _read_only_uri(path), uri=True, timeout=60.0, isolation_level=None, factory=_Connection
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=60.0, isolation_level=None, factory=_Connection)
    except sqlite3.Error as exc:
        raise registry_error(exc, path) from exc
    conn.registry_path = path
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=60000")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection):
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; a failure rolls back and is raised."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        with contextlib.suppress(RegistryError):  # SQLite may have rolled back already (disk full)
            conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection) -> None:
    """Create the tables a new file lacks and bring an existing one to them: the 'undefined'
    measurement state and the compute columns (``COMPUTE_COLUMNS``)."""
    conn.executescript(SCHEMA)
    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
    allow_undefined_state(conn)
    add_compute_columns(conn)


def allow_undefined_state(conn: sqlite3.Connection) -> None:
    """A measurements table whose CHECK constraint refuses the 'undefined' state: copy its rows
    into a table with the current one (SQLite cannot alter a CHECK)."""
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'measurements'").fetchone()
    if row is None or "'undefined'" in row[0]:
        return
    table = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS measurements") :]
    with transaction(conn) as c:
        c.execute("ALTER TABLE measurements RENAME TO measurements_old")
        c.execute(table.replace(" IF NOT EXISTS", ""))
        c.execute("INSERT INTO measurements SELECT * FROM measurements_old")
        c.execute("DROP TABLE measurements_old")


def _run_columns(conn: sqlite3.Connection) -> set[str]:
    return {row[1] for row in conn.execute("PRAGMA table_info(runs)")}


def add_compute_columns(conn: sqlite3.Connection) -> None:
    """Add ``COMPUTE_COLUMNS`` to a runs table that lacks them (empty: readers fill them from the
    configs until a run is done again or the registry is rebuilt)."""
    if COMPUTE_COLUMNS.keys() <= _run_columns(conn):
        return
    with transaction(conn) as c:  # checked again inside: another process may have added them
        for name, kind in COMPUTE_COLUMNS.items():
            if name not in _run_columns(conn):
                c.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
