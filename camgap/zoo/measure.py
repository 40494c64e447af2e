"""`camgap zoo measure`: every measure for every finished model of a model set.

Per model, ONE pass over the cached training tensors gives the CAM (IoU, IoU-B at every
threshold) and the logits; the margin, prediction-matrix and the clean half of effective
invariance reuse those logits. Extra CAM methods or mask sources cost one more pass each.
The data were decoded once by `zoo build` (the TensorStore under ZOO/cache); saliency masks
are computed once per model set and cached. Only this process writes the registry;
finished measurements are never recomputed, so an interrupted run resumes where it stopped.
A measurement recorded as failed (with its reason: NaN weights, a negative margin percentile)
is finished too: rerunning does not retry it (delete its registry row to force a retry).
"""
from __future__ import annotations

import json
import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from camgap.data.dataset import normalize
from camgap.data.store import TensorStore
from camgap.errors import InputError, MissingFileError
from camgap.measures.registry import MEASURES, MeasureContext, MeasureError, compute_measure
from camgap.measures.score import score_model
from camgap.models import create_model, load_weights
from camgap.zoo.grid import canonical_json
from camgap.zoo.registry import Registry

SCORE_MEASURES = ("iou", "iou_b")
NEEDS_INIT = {"distance_from_init", "pacbayes_flatness", "pacbayes_mag_flatness"}  # read init.pt
DEFAULT_MEASURES = (
    "iou", "iou_b", "spectral_norm", "nuclear_norm", "effective_invariance", "inverse_margin",
    "frobenius_norm", "path_norm", "distance_from_init", "pacbayes_flatness",
)


@dataclass
class MeasureSummary:
    models: int
    measured: int
    recorded: int
    failed: int

    def __str__(self) -> str:
        return (f"{self.models} model(s): {self.measured} measured now, {self.recorded} values recorded, "
                f"{self.failed} failed measurements")


def parse_params(text: str) -> dict:
    """'conv=reshape,scale=log' -> {'conv': 'reshape', 'scale': 'log'} (numbers stay strings)."""
    return dict(part.split("=", 1) for part in text.split(",") if part) if text else {}


def params_string(params_json: str) -> str:
    """Canonical JSON from the registry -> 'k=v,k=v' with keys sorted (the study's form)."""
    return ",".join(f"{k}={v}" for k, v in sorted(json.loads(params_json).items()))


def score_params(cam: str, threshold: float, masks: str) -> dict:
    return {"cam": cam, "masks": masks, "threshold": f"{threshold:g}"}


def load_run_model(run_dir: Path, which: str = "final") -> tuple[torch.nn.Module, dict]:
    """A model of the set, rebuilt from its plain-dict checkpoint."""
    ckpt = torch.load(run_dir / f"{which}.pt", map_location="cpu", weights_only=False)
    model = create_model(ckpt["arch"], ckpt["num_classes"], **ckpt.get("arch_kwargs", {}))
    load_weights(model, ckpt["model_state_dict"], run_dir / f"{which}.pt")
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
    """Measure every done run of the model set in `zoo_dir`; resumable."""
    zoo = Path(zoo_dir)
    unknown = [m for m in measures if m not in MEASURES and m not in SCORE_MEASURES]
    if unknown:
        raise InputError(f"unknown measure(s) {unknown}; known: {', '.join([*SCORE_MEASURES, *sorted(MEASURES)])}")
    if not (zoo / Registry.FILENAME).exists():
        raise MissingFileError(f"{zoo}: no model set here ({Registry.FILENAME} missing); run `camgap zoo build` first")
    device = torch.device(device)
    reg = Registry.in_dir(zoo, create=False)
    runs = reg.runs_frame()
    runs = runs[runs.status == "done"]
    wanted_scores = [(c, t, m) for c in cams for t in thresholds for m in masks] if set(measures) & set(SCORE_MEASURES) else []
    summary = MeasureSummary(len(runs), 0, 0, 0)
    mask_cache: dict[str, tuple] | None = None

    from tqdm.auto import tqdm

    bar = tqdm(total=len(runs), unit="model", desc="measure", disable=not progress)
    try:
        for run_id in runs.run_id:
            todo_scores = [(c, t, m) for c, t, m in wanted_scores
                           if not all(_recorded(reg, run_id, k, score_params(c, t, m)) for k in measures if k in SCORE_MEASURES)]
            todo_other = [m for m in measures if m not in SCORE_MEASURES and not _has_any(reg, run_id, m)]
            if not todo_scores and not todo_other:
                bar.update(1)
                continue
            run_dir = zoo / "runs" / run_id
            model, ckpt = load_run_model(run_dir)
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
                ref, ref_ids = mask_cache.get(source, (None, None))
                try:
                    res = score_model(model, store, cam=cam, thresholds=thresholds, batch_size=batch_size,
                                      device=device, mean=mean, std=std, masks=ref, mask_ids=ref_ids)
                except Exception as exc:  # noqa: BLE001 - one bad model never stops the set
                    _fail_scores(reg, run_id, measures, todo_scores, cam, thresholds, source, _reason(exc), summary)
                    broken = broken or _reason(exc)
                    continue
                if not bool(torch.isfinite(res.logits).all()):  # NaN weights: a CAM of NaNs is no IoU of 0
                    broken = "non-finite logits (NaN/inf in the model's outputs)"
                    _fail_scores(reg, run_id, measures, todo_scores, cam, thresholds, source, broken, summary)
                    continue
                if logits is None:
                    logits, labels = res.logits, res.labels
                for t in thresholds:
                    values = {"iou": res.iou(t), "iou_b": res.iou_b(t)}
                    for k in measures:
                        if k in SCORE_MEASURES and (cam, t, source) in todo_scores:
                            _record(reg, run_id, k, score_params(cam, t, source), values[k], summary)
            if todo_other and logits is None and broken:
                for name in todo_other:  # every measure of a model that cannot run is failed, with the reason
                    reg.record_measurement(run_id, name, {}, None, "failed", broken)
                    summary.failed += 1
            elif todo_other:
                init_state = None
                if set(todo_other) & NEEDS_INIT and (run_dir / "init.pt").exists():
                    init_state = torch.load(run_dir / "init.pt", map_location="cpu", weights_only=False)["model_state_dict"]
                ctx = MeasureContext(
                    model=model, logits=logits, labels=labels, init_state=init_state, device=device,
                    batches=lambda: ((normalize(x, mean, std), y) for x, y, *_ in store.batches(batch_size, device=device)),
                    seed=int(ckpt.get("seed", 0)), mean=mean, std=std,
                )
                for name in todo_other:
                    try:
                        values = compute_measure(name, ctx)
                    except Exception as exc:  # noqa: BLE001 - recorded, the set goes on
                        reg.record_measurement(run_id, name, {}, None, "failed", _reason(exc))
                        summary.failed += 1
                        continue
                    for params, value in values.items():
                        _record(reg, run_id, name, parse_params(params), value, summary)
            summary.measured += 1
            bar.update(1)
    finally:
        bar.close()
        reg.close()
    log(str(summary))
    return summary


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


def _fail_scores(reg: Registry, run_id: str, measures: Sequence[str], todo_scores: list, cam: str,
                 thresholds: Sequence[float], source: str, reason: str, summary: MeasureSummary) -> None:
    """Record the score measurements of one failed pass; never overwrite finished ones (a pass
    run only for the logits covers combinations that were measured before)."""
    for t in thresholds:
        if (cam, t, source) not in todo_scores:
            continue
        for k in measures:
            if k in SCORE_MEASURES:
                reg.record_measurement(run_id, k, score_params(cam, t, source), None, "failed", reason)
                summary.failed += 1


def _record(reg: Registry, run_id: str, measure: str, params: dict, value: float, summary: MeasureSummary) -> None:
    if value is None or not math.isfinite(value):
        reg.record_measurement(run_id, measure, params, None, "failed", f"not finite: {value}")
        summary.failed += 1
    else:
        reg.record_measurement(run_id, measure, params, float(value), "done")
        summary.recorded += 1


def _reason(exc: BaseException) -> str:
    if isinstance(exc, MeasureError):
        return str(exc)
    return f"{type(exc).__name__}: {exc} ({traceback.extract_tb(exc.__traceback__)[-1].name})"


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
