"""`camgap zoo measure`: every measure for every finished model of a model set.

Per model, ONE pass over the cached training tensors gives the CAM (IoU, IoU-B at every
threshold) and the logits; the margin, prediction-matrix and the clean half of effective
invariance reuse those logits. Extra CAM methods or mask sources cost one more pass each.
The data were decoded once by `zoo build` (the TensorStore under ZOO/cache); saliency masks
are computed once per model set and cached. Only this process writes the registry;
finished measurements are never recomputed, so an interrupted run resumes where it stopped.

Every measurement ends in one of three states (``camgap.measures.registry.measure_outcome``):
``done`` (a value), ``undefined`` (no value by the measure's own definition, e.g. a
margin-normalised norm when the 10th-percentile margin is <= 0: expected for poorly fitting
models) or ``failed`` (something broke: non-finite weights or logits, an unreadable or unsafe
checkpoint, an exception). Failed and undefined measurements are finished too: rerunning does
not retry them (delete their registry rows to force a retry), so an identical rerun gives the
same exit code: 0 unless some requested measurement of the set failed, then 3. A model's rows
are mirrored to ``runs/<run_id>/measurements.json``. Checkpoints are read with
``torch.load(weights_only=True)``: a final.pt holding pickled objects fails that model's
measurements with the reason and never runs its code.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from camgap import params
from camgap.data.dataset import normalize
from camgap.data.store import TensorStore
from camgap.errors import CamgapError, MissingFileError
from camgap.measures.registry import MeasureContext, compute_measure, measure_outcome
from camgap.measures.registry import score_params as score_params  # re-exported: callers import it from here
from camgap.measures.score import ScoreOptions, ScoreResult, score_model
from camgap.measures.weightwatcher import available as weightwatcher_available
from camgap.models import CheckpointError, create_model, load_weights, read_checkpoint
from camgap.zoo.files import cache_path
from camgap.zoo.measure_types import (
    MeasurementRow,
    MeasureOutcome,
    MeasureRequest,
    MeasureSummary,
    MeasureTask,
    RunPlan,
    make_request,
    plan_rows,
    plan_run,
    score_measurements,
    score_rows,
)
from camgap.zoo.registry import ZooDB
from camgap.zoo.sweep import ANY_DEATH, SweepJob, sweep

NEEDS_INIT = {"distance_from_init", "pacbayes_flatness", "pacbayes_mag_flatness"}  # read init.pt
# PAC-Bayes flatness is measured on request only (`--measures ...,pacbayes_flatness`): the paper does
# not use it, and its noise search makes tens of passes per model, more than all the others together.
# WeightWatcher's statistics are default where its optional package is installed.
DEFAULT_MEASURES = (
    "iou",
    "iou_b",
    "iou_heldout",
    "iou_drop",
    "energy_pg",
    "pointing_game",
    "pxap",
    "maxboxacc_v2",
    "spectral_norm",
    "nuclear_norm",
    "effective_invariance",
    "inverse_margin",
    "frobenius_norm",
    "path_norm",
    "distance_from_init",
    "augmentation_consistency",
    "db_mixup",
) + (("weightwatcher",) if weightwatcher_available() else ())


DIVERGED = "the run diverged in training (non-finite weights): no measure has a value"
LOAD = "load"  # timing key: reading the checkpoint, the tensor store, the masks and init.pt


def load_run_model(run_dir: Path, which: str = "final") -> tuple[torch.nn.Module, dict]:
    """A model of the set, rebuilt from its plain-dict checkpoint (read with weights_only=True:
    a file holding pickled objects raises CheckpointError naming it, and never runs)."""
    path = Path(run_dir) / f"{which}.pt"
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or not {"arch", "num_classes", "model_state_dict"} <= set(ckpt):
        raise CheckpointError(f"{path}: not a camgap run checkpoint (needs arch, num_classes, model_state_dict)")
    model = create_model(ckpt["arch"], ckpt["num_classes"], **ckpt.get("arch_kwargs", {}))
    load_weights(model, ckpt["model_state_dict"], path)
    return model, ckpt


def _store_for(zoo: Path, ckpt: dict, split: str = "train") -> TensorStore:
    return TensorStore.open(cache_path(zoo, split, ckpt["input_size"], ckpt["resize"]))


_REFERENCES: dict[tuple[str, str], tuple] = {}  # per process: (store dir, mask source) -> (masks, image ids)


def _references(zoo: Path, store_dir: Path, store: TensorStore, masks: Sequence[str]) -> dict[str, tuple]:
    """Reference masks other than boxes (they do not depend on the model): computed once per set
    (cached on disk under ZOO/cache/masks) and kept in memory by each process that measures."""
    from camgap.data.masks import compute_masks

    out = {}
    for source in masks:
        if source == "boxes":
            continue
        key = (str(store_dir), source)
        if key not in _REFERENCES:
            res = compute_masks(
                source,
                store.images,
                store.boxes,
                list(store.image_ids),
                store.input_size,
                cache_dir=zoo / "cache" / "masks",
                skip_bad=True,
                resize=store.resize,
            )
            _REFERENCES[key] = (res.masks, list(res.image_ids))
        out[source] = _REFERENCES[key]
    return out


class _Clock:
    """Seconds per step of one run; ``on_step(name, ended)`` hears when a counted step starts and ends."""

    def __init__(self, on_step: Callable[[str, bool], None] | None = None):
        self.seconds: dict[str, float] = {}
        self.on_step = on_step

    @contextmanager
    def step(self, name: str, counted: bool = True):
        if counted and self.on_step:
            self.on_step(name, False)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            if counted and self.on_step:
                self.on_step(name, True)


@dataclass
class MeasuredRun:
    """One run's rows, seconds per step, and whether its model was measured (False when it diverged
    or could not be loaded)."""

    rows: list[MeasurementRow]
    seconds: dict[str, float]
    measured: bool


def measure_run(
    zoo: Path,
    plan: RunPlan,
    request: MeasureRequest,
    device: str | torch.device = "cpu",
    on_step: Callable[[str, bool], None] | None = None,
) -> MeasuredRun:
    """Compute what ``plan`` needs for one run; records nothing (the driver does). A model that
    cannot be measured gives failed (or, diverged, undefined) rows with the reason, never an exception."""
    clock = _Clock(on_step)
    if plan.diverged:  # its weights are NaN/inf by how it ended: no value exists
        return MeasuredRun(plan_rows(plan, request, "undefined", DIVERGED), clock.seconds, False)
    run_dir = zoo / "runs" / plan.run_id
    with clock.step(LOAD, counted=False):
        try:
            model, ckpt = load_run_model(run_dir)
        except CamgapError as exc:  # unreadable or unsafe final.pt: this model fails, the set goes on
            return MeasuredRun(plan_rows(plan, request, "failed", str(exc)), clock.seconds, False)
        model.eval().to(device)
        store = _store_for(zoo, ckpt)
        references = _references(
            zoo, cache_path(zoo, "train", ckpt["input_size"], ckpt["resize"]), store, request.masks
        )
    ctx = _context(model, ckpt, store, references, request, device)
    ctx.test_data = lambda: _store_for(zoo, ckpt, "test")
    with clock.step(request.pass_name):
        rows, broken = _shared_pass(ctx, plan, request)
    if plan.others and ctx.logits is None:  # every measure of a model that cannot run is failed, with the reason
        rows += [MeasurementRow(name, {}, None, "failed", broken) for name in plan.others]
    elif plan.others:
        rows += _other_measures(plan.others, ctx, run_dir, clock)
    return MeasuredRun(rows, clock.seconds, True)


def _context(
    model: torch.nn.Module, ckpt: dict, store: TensorStore, references: dict, request: MeasureRequest, device
) -> MeasureContext:
    """The measures' view of one model: its batches (normalised as in training) and the shared CAM
    pass, run on first use per (cam, masks) (``MeasureContext.need_score``)."""
    mean, std = ckpt["mean"], ckpt["std"]
    options = ScoreOptions(
        batch_size=request.batch_size,
        device=device,
        mean=mean,
        std=std,
        box_accuracy="maxboxacc_v2" in request.measures,  # on request: it costs more than the pass
    )

    def score_pass(cam: str, source: str, thresholds: tuple[float, ...], data=store) -> ScoreResult:
        ref, ref_ids = references.get(source, (None, None))
        return score_model(model, data, options, cam=cam, thresholds=thresholds, masks=ref, mask_ids=ref_ids)

    config = ckpt.get("config") or {}
    augmentation = None  # trained without: augmentation consistency says which one it used instead
    if config.get("augment"):
        augmentation = (float(config.get("flip_prob") or 0.0), float(config.get("jitter") or 0.0))
    return MeasureContext(
        model=model,
        device=device,
        augmentation=augmentation,
        batches=lambda: ((normalize(x, mean, std), y) for x, y, *_ in store.batches(request.batch_size, device=device)),
        seed=int(ckpt.get("seed", 0)),
        mean=mean,
        std=std,
        score_pass=score_pass,
    )


def _shared_pass(
    ctx: MeasureContext, plan: RunPlan, request: MeasureRequest
) -> tuple[list[MeasurementRow], str | None]:
    """The CAM pass(es): the rows of the score measures (IoU, IoU-B, ...) for the planned combinations,
    one pass per (cam, masks) for every threshold, and the logits of the first pass (the first CAM
    with the first mask source, run even when its scores are recorded: the other measures read its
    logits from ``ctx``). Returns (rows, broken): ``broken`` says why the model gave no logits (its
    pass raised), None when it did."""
    first = (request.cams[0], request.masks[0])
    passes = sorted({(c, m) for c, _, m in plan.scores} | {first}, key=lambda cm: cm != first)
    rows: list[MeasurementRow] = []
    broken = None
    for cam, source in passes:
        combos = [(c, t, m) for c, t, m in plan.scores if (c, m) == (cam, source)]
        try:
            ctx.need_score(cam, source, request.thresholds)
        except Exception as exc:  # noqa: BLE001 - one bad model never stops the set
            reason = measure_outcome(exc)[1]
            rows += score_rows(request, combos, "failed", reason)
            broken = broken or reason
            continue
        rows += _score_values(ctx, request, combos, cam, source)
    return rows, broken


def _score_values(
    ctx: MeasureContext, request: MeasureRequest, combos: list, cam: str, source: str
) -> list[MeasurementRow]:
    """The rows of each score measure from the pass (cam, source) that ran; a measure that
    raises gets its own failed or undefined rows, the others keep their values."""
    rows: list[MeasurementRow] = []
    wanted = score_measurements(request, combos)
    for name in request.score_measures:
        mine = [p for k, p in wanted if k == name]
        try:
            values = compute_measure(name, ctx, cam=cam, thresholds=request.thresholds, masks=source)
        except Exception as exc:  # noqa: BLE001 - recorded (undefined or failed), the set goes on
            rows += [MeasurementRow(name, p, None, *measure_outcome(exc)) for p in mine]
            continue
        rows += [_value_row(name, p, values[params.label(p)]) for p in mine]
    return rows


def _init_state(run_dir: Path, names: Sequence[str]) -> tuple[dict | None, str | None]:
    """The initial weights when a measure needs them: (state, None), or (None, why not)."""
    if not set(names) & NEEDS_INIT or not (run_dir / "init.pt").exists():
        return None, None
    try:
        return read_checkpoint(run_dir / "init.pt")["model_state_dict"], None
    except (CamgapError, KeyError, TypeError) as exc:
        return None, f"initial weights unreadable: {exc}"


def _other_measures(names: Sequence[str], ctx: MeasureContext, run_dir: Path, clock: _Clock) -> list[MeasurementRow]:
    """Rows of the measures not read from the CAM pass, from the same context (its logits)."""
    with clock.step(LOAD, counted=False):
        ctx.init_state, init_error = _init_state(run_dir, names)
    rows: list[MeasurementRow] = []
    for name in names:
        with clock.step(name):
            if init_error and name in NEEDS_INIT:
                rows.append(MeasurementRow(name, {}, None, "failed", init_error))
                continue
            try:
                values = compute_measure(name, ctx)
            except Exception as exc:  # noqa: BLE001 - recorded (undefined or failed), the set goes on
                rows.append(MeasurementRow(name, {}, None, *measure_outcome(exc)))
                continue
        rows += [_value_row(name, params.canonical(key), value) for key, value in values.items()]
    return rows


def _value_row(measure: str, p: dict, value: float | None) -> MeasurementRow:
    if value is None or not math.isfinite(value):
        return MeasurementRow(measure, p, None, "failed", f"not finite: {value}")
    return MeasurementRow(measure, p, float(value), "done", None)


def run_measure_task(task: MeasureTask, on_step: Callable[[str, bool], None] | None = None) -> MeasureOutcome:
    """Executor entry point (in the driver, a worker process or a Ray task); never raises."""
    try:
        if task.threads:
            torch.set_num_threads(int(task.threads))
        res = measure_run(Path(task.zoo), task.plan, task.request, task.device, on_step)
        return MeasureOutcome(task.run_id, "done", tuple(res.rows), res.seconds, res.measured)
    except Exception as exc:  # noqa: BLE001 - one bad run never stops the set
        return task.failure("failed", measure_outcome(exc)[1])


def measure_zoo(
    zoo_dir: str | Path,
    measures: Sequence[str] = DEFAULT_MEASURES,
    cams: Sequence[str] = ("gradcam",),
    thresholds: Sequence[float] = (0.1,),
    masks: Sequence[str] = ("boxes",),
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    progress: bool = True,
    log: Callable[[str], None] = print,
    executor: str = "local",
    workers: int | None = 0,
    ray_address: str | None = None,
) -> MeasureSummary:
    """Measure every done run of the model set in `zoo_dir`; resumable. Bad input (unknown
    measure, a threshold outside [0, 1), no model set) raises before anything is computed.
    Runs execute on the executors of `zoo build` (``executor`` local or ray; ``workers`` 0 or
    None: in this process; N: N local worker processes, or on Ray N runs in flight at most);
    the workers return each run's rows and this process records them, all of one model together
    (mirrored to its measurements.json)."""
    from camgap.zoo.executors import check_local_workers

    t0 = time.perf_counter()
    zoo = Path(zoo_dir).expanduser().resolve()
    request = make_request(measures, cams, thresholds, masks, batch_size)
    if executor == "local" and workers is not None:  # before reference masks are computed
        check_local_workers(workers)
    if not (zoo / ZooDB.FILENAME).exists():
        raise MissingFileError(f"{zoo}: no model set here ({ZooDB.FILENAME} missing); run `camgap zoo build` first")
    reg = ZooDB.in_dir(zoo, create=False)
    try:
        reg.allow_undefined_state()
        runs = reg.done_runs()
        plans = [
            plan_run(r["run_id"], reg.measurement_keys(r["run_id"]), request, r["stop_reason"] == "diverged")
            for r in runs
        ]
        plans = [p for p in plans if not p.empty]
        summary = MeasureSummary(len(runs), 0, 0, 0)
        if plans:
            _prepare_references(zoo, reg, request)
            _measure_plans(reg, zoo, plans, request, summary, str(device), executor, workers, ray_address, progress)
        summary.counts = reg.measurement_counts(request.measures)
    finally:
        reg.close()
    summary.wall = time.perf_counter() - t0
    log(str(summary))
    return summary


def _prepare_references(zoo: Path, reg: ZooDB, request: MeasureRequest) -> None:
    """Compute the set's reference masks (saliency, mask folders) once, before any worker needs them."""
    if all(m == "boxes" for m in request.masks) or not request.score_measures:
        return
    train = json.loads(reg.get_meta("grid") or "{}").get("train", {})
    if "input_size" not in train:
        return  # the workers compute them (and cache them) themselves
    store_dir = cache_path(zoo, "train", train["input_size"], train.get("resize", "resize"))
    _references(zoo, store_dir, TensorStore.open(store_dir), request.masks)


def _executor_for(kind: str, workers: int | None, device: str, ray_address: str | None):
    from camgap.zoo.executors import make_executor

    if kind == "ray":
        device = "cuda" if device.startswith("cuda") else "cpu"
    return make_executor(kind, 0 if workers is None else workers, device, ray_address, fn=run_measure_task)


def _measure_plans(
    reg: ZooDB,
    zoo: Path,
    plans: list[RunPlan],
    request: MeasureRequest,
    summary: MeasureSummary,
    device: str,
    executor: str,
    workers: int | None,
    ray_address: str | None,
    progress: bool,
) -> None:
    """Send each run's plan to the executor, record each run's rows as they come back (``zoo.sweep``)."""
    from camgap.progress import progress_bar
    from camgap.zoo.executors import InProcessExecutor

    steps = {p.run_id: len(p.steps(request)) for p in plans}
    bar = progress_bar(total=sum(steps.values()), unit="step", desc="measure", enabled=progress)
    job = _Measuring(reg, zoo, request, summary, bar, steps)
    ex = _executor_for(executor, workers, device, ray_address)
    if isinstance(ex, InProcessExecutor):  # live progress: it calls the task here, so the callback may be local
        ex.fn = functools.partial(run_measure_task, on_step=job.on_step)
    try:
        sweep(ex, plans, job)
    finally:
        ex.close()
        bar.close()


class _Measuring(SweepJob):
    """A measuring sweep: a run whose worker died is sent again once; a second death (or a crash of
    the task) fails its measurements with the reason. The bar counts each run's steps."""

    lost = ANY_DEATH

    def __init__(self, reg: ZooDB, zoo: Path, request: MeasureRequest, summary: MeasureSummary, bar, steps: dict):
        self.reg, self.zoo, self.request, self.summary, self.bar, self.steps = reg, zoo, request, summary, bar, steps
        self.counted: dict[str, int] = {}  # run id -> its steps the bar counted as they ended
        self.current: str | None = None  # the run the in-process executor measures now

    def on_step(self, name: str, ended: bool) -> None:
        if not ended:
            self.bar.set_description(f"measure {name}")
        elif self.current is not None:
            self.counted[self.current] = self.counted.get(self.current, 0) + 1
            self.bar.update(1)

    def start(self, plan: RunPlan) -> MeasureTask:
        self.current = plan.run_id
        return MeasureTask(plan.run_id, str(self.zoo), plan, self.request)

    def record(self, plan: RunPlan, res: MeasureOutcome) -> bool:
        if res.status == "done":
            rows = list(res.rows)
            self.summary.measured += int(res.measured)
            self.summary.add_seconds(res.seconds)
        else:
            reason = str(res.error or "unknown error").strip().splitlines()[0]
            rows = plan_rows(plan, self.request, "failed", f"measuring stopped: {reason}")
        _store(self.reg, plan.run_id, rows, self.summary)
        self.bar.update(self.steps[plan.run_id] - self.counted.pop(plan.run_id, 0))
        return False


def _store(reg: ZooDB, run_id: str, rows: list[MeasurementRow], summary: MeasureSummary) -> None:
    """Record one model's rows together (one transaction, then its measurements.json)."""
    reg.record_measurements(run_id, [row.stored() for row in rows])
    for row in rows:
        if row.state == "done":
            summary.recorded += 1
        elif row.state == "failed":
            summary.failed += 1
        else:
            summary.undefined += 1


class OverlayRows(list):
    """Figure 2's rows ``[(label, [overlay, ...]), ...]`` (a list, as ``write_study`` takes them)
    that also say which models they show: ``models`` (run_id, gap, train_acc of each row, in
    order), ``selection`` (the models they were picked from, in words; the study's caption) and
    ``fallback`` (True when fewer than three models reach the training-accuracy bar, so the rows
    come from every trained model instead)."""

    def __init__(self, rows=(), models: Sequence[dict] = (), selection: str = "", fallback: bool = False):
        super().__init__(rows)
        self.models = list(models)
        self.selection = selection
        self.fallback = fallback

    @property
    def caption(self) -> str:
        shown = "; ".join(
            f"{m['run_id']}: gap {m['gap']:.1f} pp, training accuracy {100 * m['train_acc']:.1f} %" for m in self.models
        )
        return f"{self.selection}. Rows: {shown}." if shown else self.selection


def overlay_picks(runs, min_train_acc: float = 0.8) -> tuple:
    """The models of Figure 2 from a runs frame: (picks, selection, fallback). The smallest, the
    median and the largest gap among the done, trained models with training accuracy >=
    ``min_train_acc`` (models that fit their training set, as in the paper); when fewer than three
    reach it, among every done, trained model, and ``selection`` says so."""
    trained = runs[(runs.status == "done") & runs.trained].sort_values(["gap", "run_id"])
    fitting = trained[trained.train_acc >= min_train_acc]
    bar = f"training accuracy >= {100 * min_train_acc:g} %"
    if len(fitting) >= 3:
        pool, fallback = fitting, False
        selection = f"Smallest, median and largest gap among the {len(pool)} trained models with {bar}"
    else:
        pool, fallback = trained, True
        selection = (
            f"Only {len(fitting)} trained model(s) reach {bar}: smallest, median and largest gap among "
            f"all {len(pool)} trained models, whatever their training accuracy"
        )
    if pool.empty:
        return pool, "No trained model to show", fallback
    return pool.iloc[sorted({0, len(pool) // 2, len(pool) - 1})], selection, fallback


def overlay_rows(
    zoo_dir: str | Path,
    n_images: int = 5,
    cam: str = "gradcam",
    threshold: float = 0.1,
    device: str | torch.device = "cpu",
    min_train_acc: float = 0.8,
) -> OverlayRows:
    """The paper's Figure 2: the same training images under the trained models with the
    smallest, the median and the largest gap (``overlay_picks``); one row per model, labelled
    with its gap and training accuracy. The result says which models it shows and how they were
    picked (``OverlayRows.selection``, ``.caption``); empty when no trained model is done."""
    from camgap.viz import render_overlay

    zoo = Path(zoo_dir)
    with ZooDB.in_dir(zoo, create=False) as reg:
        runs = reg.runs_frame()
    picks, selection, fallback = overlay_picks(runs, min_train_acc)
    rows, models = [], []
    for run in picks.itertuples():
        model, ckpt = load_run_model(zoo / "runs" / run.run_id)
        store = _store_for(zoo, ckpt)
        subset = _Head(store, n_images)
        res = score_model(
            model,
            subset,
            cam=cam,
            thresholds=(threshold,),
            device=device,
            mean=ckpt["mean"],
            std=ckpt["std"],
            keep_overlays=n_images,
        )
        pictures = [render_overlay(o["image"], o["cam"], threshold, o["boxes"]) for o in res.overlays]
        rows.append((f"gap {run.gap:.1f} pp\ntrain acc {100 * run.train_acc:.1f} %", pictures))
        models.append({"run_id": run.run_id, "gap": float(run.gap), "train_acc": float(run.train_acc)})
    return OverlayRows(rows, models, selection, fallback)


class _Head:
    """The first n images of a TensorStore, with the store's batch interface."""

    def __init__(self, store: TensorStore, n: int):
        self.store, self.n = store, min(n, len(store))
        self.image_ids = list(store.image_ids)[: self.n]

    def __len__(self) -> int:
        return self.n

    def batches(self, batch_size: int, device="cpu"):
        return self.store.batches(batch_size, device=device, indices=list(range(self.n)))
