"""What crosses `zoo measure`: the ``MeasureRequest`` of a call, each run's ``RunPlan`` (what it
still needs), the ``MeasurementRow`` each measurement gives, the ``MeasureTask`` an executor runs
and the ``MeasureOutcome`` it hands back, and the ``MeasureSummary`` of the call. Frozen dataclasses
pickle, so tasks and outcomes travel to worker processes and Ray as they are."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from camgap import params
from camgap.errors import InputError
from camgap.measures.iou import validate_thresholds
from camgap.measures.registry import MEASURES, from_score_pass, list_measures, pass_params, unavailable_reason
from camgap.zoo.registry import state_line

__all__ = [
    "MeasureRequest",
    "make_request",
    "RunPlan",
    "plan_run",
    "MeasurementRow",
    "plan_rows",
    "score_rows",
    "score_measurements",
    "MeasureTask",
    "MeasureOutcome",
    "MeasureSummary",
    "SHARED_PASS",
    "LOGITS_PASS",
]


@dataclass
class MeasureSummary:
    """What one ``measure_zoo`` call did (``measured`` models, rows ``recorded`` done, ``failed``
    and ``undefined`` now), the compute ``seconds`` per step (the shared pass, each other measure,
    loading) summed over the ``timed`` models that ran it, the ``wall`` seconds of the call, and,
    over the whole set for the requested measures, the counts by state and the not-done rows
    grouped by reason (``ZooDB.measurement_counts``)."""

    models: int
    measured: int
    recorded: int
    failed: int
    undefined: int = 0
    counts: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    timed: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0

    @property
    def failed_in_set(self) -> int:
        return int(self.counts.get("states", {}).get("failed", 0))

    @property
    def exit_code(self) -> int:
        """0 when every requested measurement of the set is done or undefined, 3 when some
        failed (the same on an identical rerun: failed rows are not retried)."""
        return 3 if self.failed_in_set else 0

    def add_seconds(self, seconds: dict[str, float]) -> None:
        for step, s in seconds.items():
            self.seconds[step] = self.seconds.get(step, 0.0) + s
            self.timed[step] = self.timed.get(step, 0) + 1

    def time_line(self) -> str:
        """'time per step (s total, s per model): iou/iou_b 1.20 (0.30), ...' ('' when nothing ran)."""
        if not self.seconds:
            return ""
        items = [f"{step} {s:.2f} ({s / self.timed[step]:.2f})" for step, s in self.seconds.items()]
        total = sum(self.seconds.values())
        return (
            f"time per step (s total, s per model): {', '.join(items)}; compute {total:.2f} s "
            f"({total / max(1, self.measured):.2f} s per measured model)"
        )

    def __str__(self) -> str:
        first = (
            f"{self.models} model(s): {self.measured} measured now, {self.recorded} values recorded, "
            f"{self.failed} failed measurements, {self.undefined} undefined in {self.wall:.1f} s"
        )
        rest = (self.time_line(), *(state_line(self.counts, s) for s in ("undefined", "failed")))
        lines = [first, *(line for line in rest if line)]
        return "\n".join(lines)


SHARED_PASS = "iou/iou_b"  # timing key of the shared CAM pass (IoU, IoU-B and the logits)
LOGITS_PASS = "shared pass"  # the same pass when no score measure is asked for (the logits only)


@dataclass(frozen=True)
class MeasureRequest:
    """What a `zoo measure` call asks for; it travels to the workers with each run."""

    measures: tuple[str, ...]
    cams: tuple[str, ...] = ("gradcam",)
    thresholds: tuple[float, ...] = (0.1,)
    masks: tuple[str, ...] = ("boxes",)
    batch_size: int = 128

    @property
    def score_measures(self) -> tuple[str, ...]:
        return tuple(k for k in self.measures if from_score_pass(k))

    @property
    def combos(self) -> list[tuple[str, float, str]]:
        """(cam, threshold, masks) of every score measurement asked for (none without iou / iou_b)."""
        if not self.score_measures:
            return []
        return [(c, t, m) for c in self.cams for t in self.thresholds for m in self.masks]

    @property
    def pass_name(self) -> str:
        return SHARED_PASS if self.score_measures else LOGITS_PASS


def make_request(
    measures: Sequence[str], cams: Sequence[str], thresholds: Sequence[float], masks: Sequence[str], batch_size: int
) -> MeasureRequest:
    """A validated request: unknown measures and thresholds outside [0, 1) raise before anything runs.
    Measure names are the registry's (``camgap.measures.registry.MEASURES``), as rows store them."""
    unknown = [m for m in measures if m not in MEASURES]
    if unknown:
        raise InputError(f"unknown measure(s) {unknown}; known: {', '.join(list_measures())}")
    measures = [MEASURES.resolve(m) for m in measures]
    for name in measures:
        reason = unavailable_reason(name)
        if reason:
            raise InputError(f"measure {name} {reason}")
    if not cams or not masks:
        raise InputError("need at least one CAM method and one mask source")
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    return MeasureRequest(
        tuple(measures), tuple(cams), tuple(validate_thresholds(thresholds)), tuple(masks), int(batch_size)
    )


@dataclass(frozen=True)
class RunPlan:
    """What one run still needs: the score combinations and the other measures with no row yet
    (finished rows, done, failed or undefined, are never recomputed)."""

    run_id: str
    scores: tuple[tuple[str, float, str], ...]
    others: tuple[str, ...]
    diverged: bool = False

    @property
    def empty(self) -> bool:
        return not self.scores and not self.others

    def steps(self, request: MeasureRequest) -> list[str]:
        """Its timed steps (the progress bar's units): the shared pass, then each other measure."""
        return [request.pass_name, *self.others]


def plan_run(run_id: str, recorded: set[tuple[str, str]], request: MeasureRequest, diverged: bool = False) -> RunPlan:
    """The plan of one run from its recorded ``(measure, params JSON)`` keys: a score combination
    is finished when all its score measures have a row, another measure when any of its rows exists."""
    scores = tuple(
        combo
        for combo in request.combos
        if not all((k, params.to_json(pass_params(k, *combo))) in recorded for k in request.score_measures)
    )
    have = {measure for measure, _ in recorded}
    others = tuple(m for m in request.measures if not from_score_pass(m) and m not in have)
    return RunPlan(run_id, scores, others, diverged)


@dataclass(frozen=True)
class MeasurementRow:
    """One measurement of one run, as a worker hands it to the driver: the ``measure``, its variant
    (``params``, a dict), the ``value`` (None unless ``state`` is done) and why not (``reason``)."""

    measure: str
    params: dict
    value: float | None
    state: str
    reason: str | None = None

    def stored(self) -> tuple:
        """The row as the registry stores it (``ZooDB.record_measurements``): params as JSON."""
        return self.measure, params.to_json(self.params), self.value, self.state, self.reason


def plan_rows(plan: RunPlan, request: MeasureRequest, state: str, reason: str) -> list[MeasurementRow]:
    """One row per measurement the plan still needs, all in ``state`` (failed or undefined) for ``reason``."""
    others = [MeasurementRow(name, {}, None, state, reason) for name in plan.others]
    return score_rows(request, plan.scores, state, reason) + others


def score_rows(request: MeasureRequest, combos: Sequence[tuple], state: str, reason: str) -> list[MeasurementRow]:
    return [MeasurementRow(k, p, None, state, reason) for k, p in score_measurements(request, combos)]


def score_measurements(request: MeasureRequest, combos: Sequence[tuple]) -> list[tuple[str, dict]]:
    """(measure, params) of each score measurement of ``combos``, once: a threshold-free
    measure has one measurement per (cam, masks), however many thresholds were asked for."""
    out: dict[tuple[str, str], tuple[str, dict]] = {}
    for combo in combos:
        for k in request.score_measures:
            p = pass_params(k, *combo)
            out.setdefault((k, params.to_json(p)), (k, p))
    return list(out.values())


@dataclass(frozen=True)
class MeasureOutcome:
    """What a measuring task returns to the driver: ``status`` ``done`` (with the run's ``rows``,
    ``seconds`` per step and whether it was ``measured``), ``failed`` or ``lost`` (a dead worker;
    ``worker_died``: its own) with the ``error``."""

    run_id: str
    status: str
    rows: tuple[MeasurementRow, ...] = ()
    seconds: dict = field(default_factory=dict)
    measured: bool = False
    error: str | None = None
    worker_died: bool = False


@dataclass(frozen=True)
class MeasureTask:
    """One run's measuring, as an executor runs it (``measure.run_measure_task``); ``device`` and
    ``threads`` are filled in by the executor."""

    run_id: str
    zoo: str
    plan: RunPlan
    request: MeasureRequest
    device: str = "cpu"
    threads: int = 1

    def failure(self, status: str, error: str, worker_died: bool = False) -> MeasureOutcome:
        return MeasureOutcome(self.run_id, status, error=error, worker_died=worker_died)
