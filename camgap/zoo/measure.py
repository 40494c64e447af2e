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

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from camgap.data.dataset import normalize
from camgap.data.store import TensorStore
from camgap.errors import CamgapError, InputError, MissingFileError
from camgap.measures.iou import validate_thresholds
from camgap.measures.registry import MEASURES, MeasureContext, compute_measure, measure_outcome
from camgap.measures.score import score_model
from camgap.models import CheckpointError, create_model, load_weights, read_checkpoint
from camgap.zoo.grid import canonical_json
from camgap.zoo.registry import Registry, state_line

SCORE_MEASURES = ("iou", "iou_b")
NEEDS_INIT = {"distance_from_init", "pacbayes_flatness", "pacbayes_mag_flatness"}  # read init.pt
DEFAULT_MEASURES = (
    "iou", "iou_b", "spectral_norm", "nuclear_norm", "effective_invariance", "inverse_margin",
    "frobenius_norm", "path_norm", "distance_from_init", "pacbayes_flatness",
)


@dataclass
class MeasureSummary:
    """What one ``measure_zoo`` call did (``measured`` models, rows ``recorded`` done, ``failed``
    and ``undefined`` now) and, over the whole set for the requested measures, the counts by
    state and the not-done rows grouped by reason (``Registry.measurement_counts``)."""

    models: int
    measured: int
    recorded: int
    failed: int
    undefined: int = 0
    counts: dict = field(default_factory=dict)

    @property
    def failed_in_set(self) -> int:
        return int(self.counts.get("states", {}).get("failed", 0))

    @property
    def exit_code(self) -> int:
        """0 when every requested measurement of the set is done or undefined, 3 when some
        failed (the same on an identical rerun: failed rows are not retried)."""
        return 3 if self.failed_in_set else 0

    def __str__(self) -> str:
        lines = [f"{self.models} model(s): {self.measured} measured now, {self.recorded} values recorded, "
                 f"{self.failed} failed measurements, {self.undefined} undefined"]
        for state in ("undefined", "failed"):
            line = state_line(self.counts, state)
            if line:
                lines.append(line)
        return "\n".join(lines)


def parse_params(text: str) -> dict:
    """'conv=reshape,scale=log' -> {'conv': 'reshape', 'scale': 'log'} (numbers stay strings)."""
    return dict(part.split("=", 1) for part in text.split(",") if part) if text else {}


def params_string(params_json: str) -> str:
    """Canonical JSON from the registry -> 'k=v,k=v' with keys sorted (the study's form)."""
    return ",".join(f"{k}={v}" for k, v in sorted(json.loads(params_json).items()))


DIVERGED = "the run diverged in training (non-finite weights): no measure has a value"


def score_params(cam: str, threshold: float, masks: str) -> dict:
    return {"cam": cam, "masks": masks, "threshold": f"{threshold:g}"}


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


def _store_for(zoo: Path, ckpt: dict) -> TensorStore:
    cache = zoo / "cache" / f"train-{ckpt['input_size']}-{ckpt['resize']}"
    return TensorStore.open(cache)


def _mask_sets(zoo: Path, store: TensorStore, masks: Sequence[str], cache: Path) -> dict[str, tuple]:
    """Reference masks other than boxes, computed once for the whole set (they do not depend on models)."""
    from camgap.data.masks import compute_masks

    out = {}
    for source in masks:
        if source == "boxes":
            continue
        res = compute_masks(source, store.images, store.boxes, list(store.image_ids), store.input_size,
                            cache_dir=cache, skip_bad=True, resize=store.resize)
        out[source] = (res.masks, list(res.image_ids))
    return out


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
) -> MeasureSummary:
    """Measure every done run of the model set in `zoo_dir`; resumable. Bad input (unknown
    measure, a threshold outside [0, 1), no model set) raises before anything is computed.
    Each model's measurements are recorded together (and mirrored to its measurements.json)."""
    zoo = Path(zoo_dir)
    unknown = [m for m in measures if m not in MEASURES and m not in SCORE_MEASURES]
    if unknown:
        raise InputError(f"unknown measure(s) {unknown}; known: {', '.join([*SCORE_MEASURES, *sorted(MEASURES)])}")
    thresholds = validate_thresholds(thresholds)
    if not (zoo / Registry.FILENAME).exists():
        raise MissingFileError(f"{zoo}: no model set here ({Registry.FILENAME} missing); run `camgap zoo build` first")
    device = torch.device(device)
    reg = Registry.in_dir(zoo, create=False)
    reg.allow_undefined_state()
    runs = reg.runs_frame()
    runs = runs[runs.status == "done"]
    stop_reasons = dict(zip(runs.run_id, runs.stop_reason, strict=True))
    score_measures = [k for k in measures if k in SCORE_MEASURES]
    wanted_scores = [(c, t, m) for c in cams for t in thresholds for m in masks] if score_measures else []
    summary = MeasureSummary(len(runs), 0, 0, 0)
    mask_cache: dict[str, tuple] | None = None

    from tqdm.auto import tqdm

    bar = tqdm(total=len(runs), unit="model", desc="measure", disable=not progress)
    try:
        for run_id in runs.run_id:
            todo_scores = [(c, t, m) for c, t, m in wanted_scores
                           if not all(_recorded(reg, run_id, k, score_params(c, t, m)) for k in score_measures)]
            todo_other = [m for m in measures if m not in SCORE_MEASURES and not _has_any(reg, run_id, m)]
            if not todo_scores and not todo_other:
                bar.update(1)
                continue
            run_dir = zoo / "runs" / run_id
            rows: list[tuple] = []  # (measure, params, value, state, reason) of this model
            if stop_reasons.get(run_id) == "diverged":  # its weights are NaN/inf by how it ended: no value exists
                reason = DIVERGED
                rows += _fail_scores(measures, todo_scores, todo_scores, reason, state="undefined")
                rows += [(name, {}, None, "undefined", reason) for name in todo_other]
                _store(reg, run_id, rows, summary)
                bar.update(1)
                continue
            try:
                model, ckpt = load_run_model(run_dir)
            except CamgapError as exc:  # unreadable or unsafe final.pt: this model fails, the set goes on
                rows += _fail_scores(measures, todo_scores, todo_scores, str(exc))
                rows += [(name, {}, None, "failed", str(exc)) for name in todo_other]
                _store(reg, run_id, rows, summary)
                bar.update(1)
                continue
            model.eval().to(device)
            store = _store_for(zoo, ckpt)
            if mask_cache is None:
                mask_cache = _mask_sets(zoo, store, masks, zoo / "cache" / "masks")
            mean, std = ckpt["mean"], ckpt["std"]
            # the shared pass: the first CAM with boxes (or the first requested combination)
            first = (cams[0], masks[0])
            passes = sorted({(c, m) for c, _, m in todo_scores} | {first}, key=lambda cm: cm != first)
            logits = labels = None
            broken = None  # why the model cannot be measured at all (its shared pass failed or gave NaN)
            for cam, source in passes:
                done_here = [(c, t, m) for c, t, m in todo_scores if (c, m) == (cam, source)]
                ref, ref_ids = mask_cache.get(source, (None, None))
                try:
                    res = score_model(model, store, cam=cam, thresholds=thresholds, batch_size=batch_size,
                                      device=device, mean=mean, std=std, masks=ref, mask_ids=ref_ids)
                except Exception as exc:  # noqa: BLE001 - one bad model never stops the set
                    reason = measure_outcome(exc)[1]
                    rows += _fail_scores(measures, todo_scores, done_here, reason)
                    broken = broken or reason
                    continue
                if not bool(torch.isfinite(res.logits).all()):  # NaN weights: a CAM of NaNs is no IoU of 0
                    broken = "non-finite logits (NaN/inf in the model's outputs)"
                    rows += _fail_scores(measures, todo_scores, done_here, broken)
                    continue
                if logits is None:
                    logits, labels = res.logits, res.labels
                for _, t, _ in done_here:
                    values = {"iou": res.iou(t), "iou_b": res.iou_b(t)}
                    rows += [_value_row(k, score_params(cam, t, source), values[k])
                             for k in measures if k in SCORE_MEASURES]
            if todo_other and logits is None and broken:
                # every measure of a model that cannot run is failed, with the reason
                rows += [(name, {}, None, "failed", broken) for name in todo_other]
            elif todo_other:
                rows += _other_measures(todo_other, model, ckpt, run_dir, store, logits, labels, device, batch_size)
            _store(reg, run_id, rows, summary)
            summary.measured += 1
            bar.update(1)
        summary.counts = reg.measurement_counts(measures)
    finally:
        bar.close()
        reg.close()
    log(str(summary))
    return summary


def _other_measures(names: Sequence[str], model: torch.nn.Module, ckpt: dict, run_dir: Path, store: TensorStore,
                    logits: torch.Tensor, labels: torch.Tensor, device: torch.device, batch_size: int) -> list[tuple]:
    """Rows of the non-score measures of one model, from the shared pass's logits."""
    mean, std = ckpt["mean"], ckpt["std"]
    init_state, init_error = None, None
    if set(names) & NEEDS_INIT and (run_dir / "init.pt").exists():
        try:
            init_state = read_checkpoint(run_dir / "init.pt")["model_state_dict"]
        except (CamgapError, KeyError, TypeError) as exc:
            init_error = f"initial weights unreadable: {exc}"
    ctx = MeasureContext(
        model=model, logits=logits, labels=labels, init_state=init_state, device=device,
        batches=lambda: ((normalize(x, mean, std), y) for x, y, *_ in store.batches(batch_size, device=device)),
        seed=int(ckpt.get("seed", 0)), mean=mean, std=std,
    )
    rows: list[tuple] = []
    for name in names:
        if init_error and name in NEEDS_INIT:
            rows.append((name, {}, None, "failed", init_error))
            continue
        try:
            values = compute_measure(name, ctx)
        except Exception as exc:  # noqa: BLE001 - recorded (undefined or failed), the set goes on
            rows.append((name, {}, None, *measure_outcome(exc)))
            continue
        rows += [_value_row(name, parse_params(params), value) for params, value in values.items()]
    return rows


def _has_any(reg: Registry, run_id: str, measure: str) -> bool:
    """A non-score measure is finished when any of its parameter rows is recorded (done or failed)."""
    row = reg.conn.execute(
        "SELECT 1 FROM measurements WHERE run_id = ? AND measure = ? LIMIT 1", (run_id, measure)
    ).fetchone()
    return row is not None


def _recorded(reg: Registry, run_id: str, measure: str, params: dict) -> bool:
    """A score measurement is finished when its row exists (done or failed)."""
    row = reg.conn.execute(
        "SELECT 1 FROM measurements WHERE run_id = ? AND measure = ? AND params = ?",
        (run_id, measure, canonical_json(params)),
    ).fetchone()
    return row is not None


def _fail_scores(measures: Sequence[str], todo_scores: list, combos: list, reason: str,
                 state: str = "failed") -> list[tuple]:
    """Failed (or undefined) rows for the score measurements of ``combos`` (cam, threshold, masks)
    that are still to do; never for finished ones (a pass run only for the logits covers
    combinations that were measured before)."""
    return [(k, score_params(c, t, m), None, state, reason)
            for c, t, m in combos if (c, t, m) in todo_scores for k in measures if k in SCORE_MEASURES]


def _value_row(measure: str, params: dict, value: float | None) -> tuple:
    if value is None or not math.isfinite(value):
        return measure, params, None, "failed", f"not finite: {value}"
    return measure, params, float(value), "done", None


def _store(reg: Registry, run_id: str, rows: list[tuple], summary: MeasureSummary) -> None:
    """Record one model's rows together (one transaction, then its measurements.json)."""
    reg.record_measurements(run_id, rows)
    for row in rows:
        state = row[3]
        if state == "done":
            summary.recorded += 1
        elif state == "failed":
            summary.failed += 1
        else:
            summary.undefined += 1


def overlay_rows(zoo_dir: str | Path, n_images: int = 5, cam: str = "gradcam", threshold: float = 0.1,
                 device: str | torch.device = "cpu", min_train_acc: float = 0.8) -> list[tuple[str, list]]:
    """The paper's Figure 2: the same training images under the trained models with the
    smallest, the median and the largest gap; one row per model, labelled with its gap."""
    from camgap.viz import render_overlay

    zoo = Path(zoo_dir)
    with Registry.in_dir(zoo, create=False) as reg:
        runs = reg.runs_frame()
    runs = runs[(runs.status == "done") & runs.trained].sort_values("gap")
    if (runs.train_acc >= min_train_acc).sum() >= 3:  # models that fit their training set, as in the paper
        runs = runs[runs.train_acc >= min_train_acc]
    if runs.empty:
        return []
    picks = runs.iloc[sorted({0, len(runs) // 2, len(runs) - 1})]
    rows = []
    for run in picks.itertuples():
        model, ckpt = load_run_model(zoo / "runs" / run.run_id)
        store = _store_for(zoo, ckpt)
        subset = _Head(store, n_images)
        res = score_model(model, subset, cam=cam, thresholds=(threshold,), device=device,
                          mean=ckpt["mean"], std=ckpt["std"], keep_overlays=n_images)
        pictures = [render_overlay(o["image"], o["cam"], threshold, o["boxes"]) for o in res.overlays]
        rows.append((f"gap {run.gap:.1f}", pictures))
    return rows


class _Head:
    """The first n images of a TensorStore, with the store's batch interface."""

    def __init__(self, store: TensorStore, n: int):
        self.store, self.n = store, min(n, len(store))
        self.image_ids = list(store.image_ids)[: self.n]

    def __len__(self) -> int:
        return self.n

    def batches(self, batch_size: int, device="cpu"):
        return self.store.batches(batch_size, device=device, indices=list(range(self.n)))
