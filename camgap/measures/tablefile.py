"""The per-image table of a scoring pass written to disk as its batches finish
(`camgap score --per-image`): CSV, or Parquet when the name ends in .parquet or .pq.

Rows go to ``<name>.partial`` and the file takes its own name when the pass ends, so a file
under the asked name always holds the whole table; a pass stopped by an error leaves the rows
it had scored in the .partial file (a CSV one also when the process is killed outright: each
batch is flushed; a Parquet file gets its footer only when closed). The CSV is byte for byte
what ``DataFrame.to_csv(path, index=False)`` of the whole table writes; the Parquet file reads
back as the same frame."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from camgap.errors import InputError

PARQUET_SUFFIXES = (".parquet", ".pq")


def table_format(path: str | os.PathLike) -> str:
    """``parquet`` for a name ending in one of PARQUET_SUFFIXES, else ``csv``."""
    return "parquet" if Path(path).suffix.lower() in PARQUET_SUFFIXES else "csv"


def check_table_path(name: str, value: object) -> Path | None:
    """A per-image table's path (None: none is written): not a folder, and a Parquet name only
    where pyarrow is installed, so that a bad name fails before any image is read."""
    if value is None:
        return None
    path = Path(value)  # type: ignore[arg-type]
    if path.is_dir():
        raise InputError(f"{name} {path}: is a folder; give the name of the table file to write")
    if table_format(path) == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise InputError(
                f"{name} {path}: a Parquet table needs pyarrow (pip install 'camgap[parquet]'); or give a .csv name"
            ) from None
    return path


class TableFile:
    """Appends per-batch frames to a table file (see the module docstring); a context manager
    that names the file at a clean exit and leaves the .partial file after an error."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.format = table_format(self.path)
        self._handle = None  # the open CSV file or pyarrow ParquetWriter, from the first frame on

    def write(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        if self.format == "csv":
            first = self._handle is None
            if first:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = open(self.partial, "w", newline="", encoding="utf-8")  # as to_csv opens a path
            # one write per batch, flushed: a process killed outright (kill -9) leaves whole batches
            # on disk, at most the last one torn if the kill lands inside that write
            self._handle.write(frame.to_csv(header=first, index=False))
            self._handle.flush()
        else:
            self._write_parquet(frame)

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = pq.ParquetWriter(self.partial, table.schema)
        self._handle.write_table(table.cast(self._handle.schema))

    def _close_handle(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def __enter__(self) -> TableFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close_handle()
        if exc_type is None and self._handle is not None:
            # not camgap.io's atomic write: the rows must outlive an error, so the file grows under
            # its .partial name and is renamed when whole
            Path(self.partial).replace(self.path)
