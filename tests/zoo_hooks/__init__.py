"""Test hooks of the zoo tests: an injected failure (in-process) and runs held at their epochs'
end until a gate file exists (also in worker processes and CLI subprocesses, through
``sitecustomize``); ``as_task``; ``nap`` (a task that only sleeps, for executor tests)."""

import os
from dataclasses import dataclass
from pathlib import Path

from zoo_hooks.sitecustomize import HOLD_GATE_ENV, HOLD_RUNS_ENV

ROOT = Path(__file__).resolve().parents[2]
HOOKS = Path(__file__).resolve().parent


def worker_env(hold: Path | None = None, runs: tuple[str, ...] = ()) -> dict[str, str]:
    """Environment variables that make subprocesses import this checkout's camgap and, with
    ``hold`` (a gate file), hold each of ``runs`` (every run when none are named) after each
    epoch's checkpoint until ``hold`` exists (``sitecustomize``)."""
    return {
        "PYTHONPATH": os.pathsep.join((str(HOOKS), str(ROOT))),
        HOLD_GATE_ENV: str(hold or ""),
        HOLD_RUNS_ENV: ",".join(runs),
    }


def fail_runs(monkeypatch, run_ids: set[str]) -> None:
    """Make training of ``run_ids`` raise in this process, as a run's own failure does."""
    from camgap.zoo import train

    train_run = train.train_run

    def failing(task, *args, **kwargs):
        if task.run_id in run_ids:
            raise RuntimeError("injected failure")
        return train_run(task, *args, **kwargs)

    monkeypatch.setattr(train, "train_run", failing)


def as_task(task: dict):
    """The ``Task`` of a task dict as ``fixtures_zoo.run_task`` writes it (``data``: split -> cache)."""
    from camgap.zoo.config import RunConfig, Task

    fields = dict(task)
    data = fields.pop("data")
    config = fields.pop("config")
    config = RunConfig.from_dict(config) if isinstance(config, dict) else config
    classes = tuple(fields.pop("classes", ()))
    return Task(**fields, config=config, classes=classes, train_data=data["train"], test_data=data["test"])


@dataclass(frozen=True)
class NapTask:
    """A task for an executor's worker processes that trains nothing: it writes its worker's pid
    to ``started``, waits for the file ``wait_for`` (if given) and sleeps ``seconds`` (``nap``)."""

    run_id: str
    seconds: float
    started: str
    wait_for: str | None = None
    device: str = "cpu"
    threads: int = 1

    def failure(self, status: str, error: str, worker_died: bool = False):
        from camgap.zoo.config import RunResult

        return RunResult(self.run_id, status, error=error, worker_died=worker_died)


def nap(task: NapTask):
    import time

    from camgap.zoo.config import RunResult

    tmp = Path(f"{task.started}.tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(task.started)  # whole, for the sibling that waits for it
    while task.wait_for and not Path(task.wait_for).exists():
        time.sleep(0.01)
    time.sleep(task.seconds)
    return RunResult(task.run_id, "done")
