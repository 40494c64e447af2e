"""What this machine offers the process: its CPUs. No torch here: the command-line parsers
read it (`camgap --help` stays fast), as do the executors."""

from __future__ import annotations

import os


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def max_workers() -> int:
    """The most worker processes a local command starts: one per CPU. Each decodes or trains on a
    core of its own, more only queue for the same cores, and a mistyped count (--workers 100000)
    would fork until memory runs out."""
    return cpu_count()


def too_many_workers(n: int) -> str | None:
    """Why `n` local worker processes are too many on this machine, or None."""
    if n <= max_workers():
        return None
    return f"{n} processes is more than one per CPU ({cpu_count()} CPUs this process may use)"
