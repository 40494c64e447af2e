"""One error hierarchy. Every error camgap raises on purpose derives from ``CamgapError``;
the CLI turns those into one line and exit code 2. Any other exception is a bug and keeps
its traceback. Each class keeps the builtin base that callers may already catch."""

from __future__ import annotations

import errno

# errno values of a full or failing disk. Any other OSError from reading a file is the file's fault
# (a truncated zip makes torch seek before its start: EINVAL), so the file is named and set aside,
# while these stop the work without blaming, or using an attempt of, whatever was being read.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS})


class CamgapError(Exception):
    """Root of every error camgap raises for bad input or a state it cannot work with."""


class InputError(CamgapError, ValueError):
    """A value camgap cannot use: an option out of its domain, data that does not fit the model."""


class StateError(CamgapError, RuntimeError):
    """A state camgap cannot work from: a run directory of another run, a failed sub-step."""


class MissingFileError(CamgapError, FileNotFoundError):
    """A file or folder camgap needs is not there."""


class PathExistsError(CamgapError, FileExistsError):
    """camgap would overwrite something it did not write."""


class UnknownNameError(CamgapError, KeyError):
    """A lookup of a name (a registered architecture, CAM, measure, column) that is not known."""

    def __str__(self) -> str:  # KeyError would print the repr of its message
        return str(self.args[0]) if self.args else ""


class NonFiniteError(CamgapError, ValueError):
    """Non-finite weights or outputs: nothing computed from them could be trusted."""
