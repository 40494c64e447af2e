"""Files that readers never see half-written, and advisory locks: the one home of both.

An atomic write goes to ``.<name>.tmp-<pid>`` in the target's directory, is fsynced, then moved
over the target with ``os.replace``: a reader (another process, or this one after a crash) sees
the old file or the new one, never part of one. The pid in the name lets a later process tell a
dead writer's leftover (``remove_stale_temp_files``) from a live writer's file.

A lock is POSIX ``flock`` on a lock file, held for a ``with`` block; where ``fcntl`` does not
exist (non-POSIX) it is a no-op that reports itself held.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None

__all__ = [
    "temp_path",
    "replacing",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "file_lock",
    "remove_stale_temp_files",
]

# a temporary file of an atomic write: ``.<name>.tmp-<pid>``; a ``-<hex>`` suffix is matched too, so the
# leftovers of writers that added one (tensor stores did) are cleaned up as well
_TMP_NAME = re.compile(r"^\..+\.tmp-(\d+)(-[0-9a-f]+)?$")


def temp_path(path: str | Path) -> Path:
    """Where an atomic write of ``path`` by this process goes first."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def replacing(*paths: str | Path) -> Iterator[tuple[Path, ...]]:
    """Temporary paths for ``paths``, for the block to write. When it ends without an error each is
    fsynced and moved over its path, in the order given (a caller that writes an index file
    last, such as a store's ``meta.json``, names it last); on any error the temporary files are
    removed and the old files stay as they were."""
    targets = [Path(p) for p in paths]
    tmps = tuple(temp_path(p) for p in targets)
    try:
        yield tmps
        for tmp in tmps:
            _fsync(tmp)
        for tmp, target in zip(tmps, targets, strict=True):
            os.replace(tmp, target)
    finally:
        for tmp in tmps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def atomic_write(path: str | Path, write: Callable[[IO], None], mode: str = "wb") -> None:
    """``write(f)`` into a file opened with ``mode`` ("wb" or "w", UTF-8), then moved over ``path``
    atomically. An OSError of the write itself (a full disk) names ``path``."""
    path = Path(path)
    try:
        with replacing(path) as (tmp,), open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
    except OSError as exc:
        if exc.filename is None:  # a failed write/flush/fsync: name the file it was for
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), "w")


def atomic_write_json(obj: Any, path: str | Path, **dump: Any) -> None:
    """``json.dump(obj, **dump)`` and a final newline, atomically."""

    def write(f) -> None:
        json.dump(obj, f, **dump)
        f.write("\n")

    atomic_write(path, write, "w")


@contextlib.contextmanager
def file_lock(path: str | Path, shared: bool = False, wait: bool = True, create: bool = True) -> Iterator[bool]:
    """An advisory ``flock`` on ``path`` for the block: exclusive, or ``shared``; yields whether it
    is held. ``wait=False`` does not block: the block runs with False when another process holds
    the lock. ``create=False`` opens the file read-only (a probe on read-only storage) and raises
    the OSError of a file that cannot be opened."""
    with open(path, "a+b" if create else "rb") as f:
        if fcntl is None:  # pragma: no cover - non-POSIX: nothing to lock with
            yield True
            return
        try:
            fcntl.flock(f.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Remove the temporary files of atomic writes in ``directory`` whose writer is dead (a
    ``kill -9`` between writing and renaming leaves them for good); return them. A file of a
    live process (a straggler still writing) is kept."""
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(directory):
            m = _TMP_NAME.match(entry.name)
            if m is None or not entry.is_file(follow_symlinks=False):
                continue
            pid = int(m.group(1))
            if pid == os.getpid() or _pid_alive(pid):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed
