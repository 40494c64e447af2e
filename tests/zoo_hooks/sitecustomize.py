"""Test hooks for worker processes (and CLI subprocesses) of a model-set build.

A test puts this directory first on a subprocess's PYTHONPATH (``zoo_hooks.worker_env``); Python
imports ``sitecustomize`` at start-up, which then holds runs at the end of each epoch, after its
checkpoint, until a gate file exists: a test can kill a process while its runs are mid-run, on
an event rather than a timing, however loaded the machine is. Nothing here is part of camgap:
production code has no test switches.
"""

import os

HOLD_GATE_ENV = "CAMGAP_TEST_HOLD_GATE"
HOLD_RUNS_ENV = "CAMGAP_TEST_HOLD_RUNS"
# a held run goes on after this long, so that a failed test never leaves a process waiting for good
HOLD_LIMIT_S = 600.0


def hold_epochs(gate: str, runs: frozenset[str]) -> None:
    """After each epoch's checkpoint of a run in ``runs`` (of every run when empty), wait until the
    file ``gate`` exists."""
    import time

    from camgap.zoo import train

    end_epoch = train._Run.end_epoch

    def held(self, *args, **kwargs):
        end_epoch(self, *args, **kwargs)
        if runs and self.task.run_id not in runs:
            return
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.02)

    train._Run.end_epoch = held


if os.environ.get(HOLD_GATE_ENV):
    hold_epochs(os.environ[HOLD_GATE_ENV], frozenset(filter(None, os.environ.get(HOLD_RUNS_ENV, "").split(","))))
