"""Test hooks of the zoo tests: an injected failure (in-process) and slow epochs (also in worker
processes and CLI subprocesses, through ``sitecustomize``)."""

import os
from pathlib import Path

from zoo_hooks.sitecustomize import EPOCH_DELAY_ENV

ROOT = Path(__file__).resolve().parents[2]
HOOKS = Path(__file__).resolve().parent


def worker_env(epoch_delay: float = 0.0) -> dict[str, str]:
    """Environment variables that make subprocesses import this checkout's camgap and, with
    ``epoch_delay``, sleep that long after each epoch (``sitecustomize``)."""
    return {"PYTHONPATH": os.pathsep.join((str(HOOKS), str(ROOT))), EPOCH_DELAY_ENV: str(epoch_delay)}


def fail_runs(monkeypatch, run_ids: set[str]) -> None:
    """Make training of ``run_ids`` raise in this process, as a run's own failure does."""
    from camgap.zoo import train

    train_run = train.train_run

    def failing(task, *args, **kwargs):
        if task["run_id"] in run_ids:
            raise RuntimeError("injected failure")
        return train_run(task, *args, **kwargs)

    monkeypatch.setattr(train, "train_run", failing)
