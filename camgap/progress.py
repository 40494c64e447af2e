"""Progress bars: the one place that decides how a long step shows how far it is.

A caller says whether it wants progress shown (a command: no `--no-progress` and no `-q`, see
`camgap.cliutil.wants_progress`); this module decides how:

- stderr is a terminal (or a notebook kernel runs us): a tqdm bar, redrawn in place;
- otherwise (a log file, a pipe, CI): no bar and no `\\r`; a plain line through logging
  (logger ``camgap.progress``, INFO) every LOG_INTERVAL seconds and one when the step ends,
  e.g. ``zoo: 12/64 run (19%), 10:05 elapsed, 43:20 left``.

Not wanted: a disabled bar, which draws nothing and costs nothing."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from tqdm.auto import tqdm

__all__ = ["progress_bar", "LOG_INTERVAL"]

LOG_INTERVAL = 30.0  # seconds between two progress lines in a log file
_LINE = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {elapsed} elapsed, {remaining} left"
_LINE_NO_TOTAL = "{desc}: {n_fmt} {unit}, {elapsed} elapsed"


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str,
    enabled: bool = True,
    initial: int = 0,
    rate: bool = False,
) -> tqdm:
    """A tqdm object over `iterable` (or updated by hand), shown as this module's docstring says;
    `rate`: a log line also says how many units a second (a bar on a terminal always does)."""
    common = dict(total=total, desc=desc, unit=unit, initial=initial)
    if not enabled:
        return tqdm(iterable, disable=True, **common)
    if _interactive():
        return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **common)
    return _LogLines(
        iterable,
        file=_Discard(),
        mininterval=LOG_INTERVAL,
        maxinterval=LOG_INTERVAL,
        bar_format=(_LINE if total is not None else _LINE_NO_TOTAL) + (", {rate_fmt}" if rate else ""),
        **common,
    )


def _interactive() -> bool:
    """A terminal on stderr, or a Jupyter kernel (where tqdm.auto draws a widget)."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


class _LogLines(tqdm):
    """tqdm's timing and counting, written as whole lines through logging instead of redrawn."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        # tqdm calls this when a bar starts (nothing done yet: no line), every mininterval, to
        # clear (msg "") and once more from close() (with disable already set: the last line)
        if msg != "" and (self.n > self.initial or self.disable):
            logging.getLogger("camgap.progress").info(msg or str(self))
        return True

    def __del__(self) -> None:
        # dropped without close(): its step failed, and the error says so; no last line after it
        self.disable = True
        super().__del__()


class _Discard:
    """The stream of a log-line bar: tqdm's own writes (newlines, clears) go nowhere."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
