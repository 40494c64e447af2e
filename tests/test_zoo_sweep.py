"""The sweep driver (``camgap.zoo.sweep``) with a scripted executor: what goes again, what fails
by the lost-worker rule, what a pack's result gives each of its runs, what is in flight at once."""

from __future__ import annotations

from dataclasses import dataclass, field

from camgap.zoo.sweep import ANY_DEATH, OWN_DEATHS, SweepJob, sweep


@dataclass(frozen=True)
class Item:
    run_id: str
    pack: str | None = None


@dataclass(frozen=True)
class Result:
    run_id: str
    status: str
    error: str | None = None
    worker_died: bool = False
    results: tuple = ()


@dataclass(frozen=True)
class PackTask:
    run_id: str
    tasks: tuple


class Scripted:
    """An executor whose runs end as ``script[run_id]`` says, one outcome per submission (a pack's
    id gets the pack's); ``wait`` ends every task in flight at once."""

    def __init__(self, script: dict[str, list], capacity: int = 2):
        self.script = {k: list(v) for k, v in script.items()}
        self.capacity = capacity
        self.flight: list = []
        self.submitted: list[str] = []
        self.most_in_flight = 0

    def submit(self, task) -> None:
        self.flight.append(task)
        self.submitted.append(task.run_id)
        self.most_in_flight = max(self.most_in_flight, len(self.flight))

    def wait(self) -> list:
        done, self.flight = self.flight, []
        return [self.script[t.run_id].pop(0) for t in done]


@dataclass
class Job(SweepJob):
    lost: object = OWN_DEATHS
    retries: int = 0  # failed results that go again
    log: list = field(default_factory=list)

    def pack_of(self, item):
        return item.pack

    def start(self, item):
        return item

    def pack(self, pack_id, tasks):
        return PackTask(pack_id, tuple(tasks))

    def requeued(self, item, result):
        self.log.append(("again", item.run_id, result.error))

    def record(self, item, result):
        self.log.append((result.status, item.run_id, result.error))
        again = result.status == "failed" and self.retries > 0
        self.retries -= int(again)
        return again


def lost(rid: str, own: bool, error: str = "died") -> Result:
    return Result(rid, "lost", error, worker_died=own)


def test_a_build_run_fails_only_when_its_own_worker_dies_twice_in_a_row():
    ex = Scripted(
        {
            "idle": [lost("idle", False), lost("idle", False), lost("idle", False), Result("idle", "done")],
            "own": [lost("own", True, "oom"), lost("own", True, "oom")],
        }
    )
    job = Job(lost=OWN_DEATHS)
    sweep(ex, [Item("idle"), Item("own")], job)
    assert [e for e in job.log if e[1] == "idle"] == [("again", "idle", "died")] * 3 + [("done", "idle", None)]
    assert [e for e in job.log if e[1] == "own"] == [
        ("again", "own", "oom"),
        ("failed", "own", "its worker process died twice in a row while running it (oom)"),
    ]


def test_losses_count_in_a_row_only():
    ex = Scripted({"a": [lost("a", True), Result("a", "failed", "raised"), lost("a", True), Result("a", "done")]})
    job = Job(lost=OWN_DEATHS, retries=1)
    sweep(ex, [Item("a")], job)
    assert [e[0] for e in job.log] == ["again", "failed", "again", "done"]


def test_a_measured_run_goes_again_once_whoever_died():
    ex = Scripted(
        {"m": [lost("m", False, "first"), lost("m", False, "second")], "n": [lost("n", False), Result("n", "done")]}
    )
    job = Job(lost=ANY_DEATH)
    sweep(ex, [Item("m"), Item("n")], job)
    assert [e for e in job.log if e[1] == "m"] == [("again", "m", "first"), ("failed", "m", "second")]
    assert [e for e in job.log if e[1] == "n"] == [("again", "n", "died"), ("done", "n", None)]


def test_a_pack_is_one_task_and_its_outcome_reaches_each_run():
    members = (Result("p1", "done"), Result("p2", "failed", "nan"))
    ex = Scripted(
        {
            "P": [lost("P", False, "sibling"), Result("P", "pack", results=members)],
            "solo": [Result("solo", "done")],
            "q": [Result("q", "done")],
        },
        capacity=2,
    )
    job = Job(lost=OWN_DEATHS)
    items = [Item("p1", "P"), Item("solo"), Item("p2", "P"), Item("q")]
    sweep(ex, items, job)
    # the pack's mates leave the queue with its first run; the pack counts as one task in flight
    assert ex.submitted == ["P", "solo", "q", "P"] and ex.most_in_flight == 2
    assert job.log == [
        ("again", "p1", "sibling"),
        ("again", "p2", "sibling"),
        ("done", "solo", None),
        ("done", "q", None),
        ("done", "p1", None),
        ("failed", "p2", "nan"),
    ]
