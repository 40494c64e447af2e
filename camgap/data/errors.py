"""The one error type of the data layer."""

from __future__ import annotations

from pathlib import Path

from camgap.errors import CamgapError


class DataError(CamgapError, ValueError):
    """A bad input file: ``str(err) == f"{path}: {problem}"``.

    ``path`` is the file at fault (an image, an annotation, a split file, or a dataset root)
    and ``problem`` says what is wrong with it.  Subclasses ``ValueError`` so callers that
    only know about built-in exceptions still catch it.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = str(problem)
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self):  # keep (path, problem) through pickling (DataLoader workers)
        return (type(self), (self.path, self.problem))
