"""Test hooks for worker processes (and CLI subprocesses) of a model-set build.

A test puts this directory first on a subprocess's PYTHONPATH (``zoo_hooks.worker_env``); Python
imports ``sitecustomize`` at start-up, which then slows every epoch down by
``CAMGAP_TEST_EPOCH_DELAY`` seconds (so that a test can kill a process mid-run). Nothing here is
part of camgap: production code has no test switches.
"""

import os

EPOCH_DELAY_ENV = "CAMGAP_TEST_EPOCH_DELAY"


def slow_epochs(seconds: float) -> None:
    """Sleep ``seconds`` after each epoch's checkpoint of every run in this process."""
    import time

    from camgap.zoo import train

    end_epoch = train._Run.end_epoch

    def delayed(self, *args, **kwargs):
        end_epoch(self, *args, **kwargs)
        time.sleep(seconds)

    train._Run.end_epoch = delayed


if float(os.environ.get(EPOCH_DELAY_ENV) or 0):
    slow_epochs(float(os.environ[EPOCH_DELAY_ENV]))
