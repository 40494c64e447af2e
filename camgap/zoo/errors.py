"""The errors of the zoo commands (build, repair, status, export): one line each, exit 2."""

from __future__ import annotations

from camgap.errors import CamgapError

__all__ = ["ZooError", "StorageError", "storage_stop"]


class ZooError(CamgapError, RuntimeError):
    """Bad input to a zoo command, reported before anything trains."""


class StorageError(ZooError):
    """The disk is full or failing: the sweep stopped; nothing is wrong with the runs."""


def storage_stop(where: str) -> StorageError:
    """The error that stops a sweep on a full or failing disk; ``where``: the path and its error."""
    return StorageError(
        f"disk full or failing: {where}; free space (or fix the storage) and rerun the same "
        f"command to resume (no attempt was used)"
    )
