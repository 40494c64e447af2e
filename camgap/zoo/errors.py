"""The errors of the zoo commands (build, repair, status, export): one line each, exit 2."""

from __future__ import annotations

from camgap.errors import CamgapError

__all__ = ["ZooError", "StorageError"]


class ZooError(CamgapError, RuntimeError):
    """Bad input to a zoo command, reported before anything trains."""


class StorageError(ZooError):
    """The disk is full or failing: the sweep stopped; nothing is wrong with the runs."""
