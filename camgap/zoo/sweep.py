"""The sweep driver of `zoo build` and `zoo measure`: submit runs to an executor, collect what
comes back, send runs again, record each outcome; only this process writes the registry.

What a sweep does with its runs is a ``SweepJob`` (train them: ``zoo.build``; measure them:
``zoo.measure``); the driver owns the queue, what is in flight, packs and lost workers:

* ``submit``: while the executor has room (a pack is one task), the next run goes, with the runs
  of its pack still queued (``SweepJob.pack_of``) as one ``Pack``;
* ``collect``: each result of a pack is given to its run (one outcome of the whole pack, to each);
* lost workers (``LostRule``): a run stopped by a dead worker goes back to the queue
  (``SweepJob.requeued``) until its counted losses in a row reach the limit, then it fails with
  the rule's reason; which losses count is the job's rule (a build's run is not to blame for an
  idle worker's death, a measured run is sent again once whatever died);
* every other result goes to ``SweepJob.record``, which says whether the run goes again (a retry);
  a job stops the sweep by raising (a full disk: ``build.StorageError``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # types only: the driver never builds an executor (its callers do)
    from camgap.zoo.executors import Executor, Outcome, Work

__all__ = ["LostRule", "SweepJob", "sweep"]


def _twice(error: str) -> str:
    return f"its worker process died twice in a row while running it ({error})"


@dataclass(frozen=True)
class LostRule:
    """When a run that a dead worker stopped fails: after ``limit`` losses in a row that ``counts``
    (the ``lost`` result in, whether it is held against the run), with ``reason(error)``."""

    counts: Callable[[Outcome], bool]
    reason: Callable[[str], str]
    limit: int = 2


# a build's run: only its own worker's death counts; a sibling's or an idle worker's uses nothing
OWN_DEATHS = LostRule(counts=lambda res: bool(res.worker_died), reason=_twice)
# a measured run: measured again once whoever died, then its measurements fail with the last error
ANY_DEATH = LostRule(counts=lambda res: True, reason=lambda error: error)


class SweepJob:
    """What a sweep does with its runs (items with a ``run_id``: a ``RunSpec``, a ``RunPlan``)."""

    lost: LostRule = OWN_DEATHS

    def pack_of(self, item: Any) -> str | None:
        """The id of the pack ``item`` trains in, or None (alone)."""
        return None

    def start(self, item: Any) -> Work:
        """The executor's task for ``item`` (called just before it is submitted)."""
        raise NotImplementedError

    def pack(self, pack_id: str, tasks: list[Work]) -> Work:
        """One executor task for the ``tasks`` of one pack."""
        raise NotImplementedError

    def requeued(self, item: Any, result: Outcome) -> None:
        """``item`` was stopped by a dead worker and goes again (no attempt used)."""

    def record(self, item: Any, result: Outcome) -> bool:
        """Record ``item``'s result (status ``done`` or ``failed``, or the job's own); True: run it again."""
        raise NotImplementedError


class _Flight:
    """The sweep's state: runs queued, runs in flight (by id), packs in flight, losses in a row."""

    def __init__(self, ex: Executor, items: Iterable[Any], job: SweepJob):
        self.ex, self.job = ex, job
        self.queue = deque(items)
        self.inflight: dict[str, Any] = {}
        self.packs: dict[str, list[str]] = {}  # pack task id -> its runs in flight
        self.losses: dict[str, int] = {}

    def units(self) -> int:
        """Tasks the executor holds: each pack is one, each run outside a pack one."""
        packed = sum(len(members) for members in self.packs.values())
        return len(self.packs) + len(self.inflight) - packed

    def submit(self) -> None:
        while self.queue and self.units() < self.ex.capacity:
            item = self.queue.popleft()
            pack_id = self.job.pack_of(item)
            mates = [i for i in self.queue if pack_id is not None and self.job.pack_of(i) == pack_id]
            for i in mates:
                self.queue.remove(i)
            tasks = []
            for i in (item, *mates):
                tasks.append(self.job.start(i))
                self.inflight[i.run_id] = i
            if len(tasks) == 1:
                self.ex.submit(tasks[0])
            else:
                self.packs[pack_id] = [i.run_id for i in (item, *mates)]
                self.ex.submit(self.job.pack(pack_id, tasks))

    def results(self, unit: Outcome) -> list[Outcome]:
        """One result per run: a pack's results, or its one outcome given to each of its runs."""
        members = self.packs.pop(unit.run_id, None)
        if members is None:
            return [unit]
        if unit.status == "pack":
            return list(unit.results)
        return [replace(unit, run_id=rid) for rid in members]

    def settle(self, res: Outcome) -> None:
        """One run's result: lost (again, or failed by the rule), else recorded (and maybe retried)."""
        rid = res.run_id
        item = self.inflight.pop(rid)
        if res.status == "lost":
            rule = self.job.lost
            self.losses[rid] = self.losses.get(rid, 0) + int(rule.counts(res))
            if self.losses[rid] < rule.limit:
                self.job.requeued(item, res)
                self.queue.append(item)
                return
            res = replace(res, status="failed", error=rule.reason(str(res.error or "unknown error")))
        self.losses.pop(rid, None)
        if self.job.record(item, res):
            self.queue.append(item)


def sweep(ex: Executor, items: Iterable[Any], job: SweepJob) -> None:
    """Run every item through ``ex`` until each is recorded for good (see the module doc). The
    runs of one pack that are queued together are submitted together; the caller closes ``ex``."""
    flight = _Flight(ex, items, job)
    while flight.queue or flight.inflight:
        flight.submit()
        for res in (r for unit in ex.wait() for r in flight.results(unit)):
            flight.settle(res)
