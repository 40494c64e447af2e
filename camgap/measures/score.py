"""The score: one pass over the training images computes the CAM of the predicted class,
IoU / IoU-B with the object region at every threshold, the threshold-free localization
measures (`camgap.measures.localization`), and keeps the logits so the margin,
prediction-matrix and effective-invariance measures need no second pass."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from camgap.cam import cam_name, create_cam, upsample_normalize
from camgap.data.dataset import IMAGENET_MEAN, IMAGENET_STD, normalize
from camgap.data.layouts import UNLABELED
from camgap.data.masks import boxes_to_masks
from camgap.data.preprocessing import CHANNEL_ORDERS
from camgap.errors import InputError, NonFiniteError
from camgap.measures.inputs import Batch, as_scoring_data, check_workers, decoding_split, iter_batches
from camgap.measures.iou import threshold_ious, validate_thresholds
from camgap.measures.localization import (
    LocalizationTotals,
    box_extents,
    component_boxes,
    energy_share,
    pointing_hits,
)
from camgap.measures.norms import check_finite
from camgap.measures.registry import MeasureError
from camgap.measures.tablefile import TableFile, check_table_path
from camgap.options import CheckedOptions, integer, option


@dataclass
class ScoreResult:
    """IoU^Model per threshold plus everything the one forward pass produced."""

    cam: str
    thresholds: tuple[float, ...]
    per_image: pd.DataFrame
    logits: Tensor | None  # None when the pass was told not to keep them (`keep_logits`)
    labels: Tensor
    n_skipped: int = 0
    n_boxes_dropped: int = 0  # boxes wholly outside their image (left out of A_G)
    overlays: list[dict] = field(default_factory=list)
    target_layer: str = ""
    localization: LocalizationTotals = field(default_factory=LocalizationTotals)
    num_workers: int = 0  # decoding worker processes
    model_threads: int = 1  # torch's intra-op threads the model ran with (`inputs.decoding_split`)

    @property
    def n_images(self) -> int:
        return len(self.per_image)

    @property
    def n_no_reference(self) -> int:
        """Images without any object region (no box / empty mask): excluded from the means."""
        return int(self.per_image[_col("iou", self.thresholds[0])].isna().sum())

    def iou(self, threshold: float | None = None) -> float:
        return self._mean("iou", threshold)

    def iou_b(self, threshold: float | None = None) -> float:
        return self._mean("iou_b", threshold)

    def energy_pg(self) -> float:
        """Energy-based pointing game: mean share of the CAM mass inside the object region."""
        return self._mean_of(ENERGY_PG)

    def pointing_game(self) -> float:
        """Share of the images whose CAM maximum lies in the object region."""
        return self._mean_of(POINTING_GAME)

    def max_box_acc_v2(self) -> float:
        return self.localization.max_box_acc_v2()

    def pxap(self) -> float:
        return self.localization.pxap()

    def _mean(self, kind: str, threshold: float | None) -> float:
        t = self.thresholds[0] if threshold is None else threshold
        return self._mean_of(_col(kind, t))

    def _mean_of(self, column: str) -> float:
        values = self.per_image[column].dropna()
        return float(values.mean()) if len(values) else math.nan

    @property
    def n_unlabeled(self) -> int:
        """Held-out images without a known label (label -1): scored for their IoU, not for accuracy."""
        return int(self.per_image["correct"].isna().sum())

    @property
    def train_acc(self) -> float:
        """Accuracy over the labelled images (of the scored split); NaN when none is labelled."""
        correct = self.per_image["correct"].dropna()
        return float(correct.astype(float).mean()) if len(correct) else math.nan

    def summary(self) -> dict:
        """The `--json` object: headline at the first threshold plus one entry per threshold."""
        by_t = {f"{t:g}": {"iou": self.iou(t), "iou_b": self.iou_b(t)} for t in self.thresholds}
        return {
            "iou": self.iou(),
            "iou_b": self.iou_b(),
            "threshold": self.thresholds[0],
            "by_threshold": by_t,
            "cam": self.cam,
            "n_images": self.n_images,
            "n_skipped": self.n_skipped,
            "n_boxes_dropped": self.n_boxes_dropped,
            "n_no_reference": self.n_no_reference,
            "n_unlabeled": self.n_unlabeled,
            "accuracy": self.train_acc,
            "target_layer": self.target_layer,
            "num_workers": self.num_workers,
            "model_threads": self.model_threads,
        }


def _cam(name: str, value: object) -> str:
    return cam_name(str(value))


def _thresholds(name: str, value: object) -> tuple[float, ...]:
    return validate_thresholds(value)  # type: ignore[arg-type]


def _device(name: str, value: object) -> torch.device | None:
    if value is None:
        return None
    try:
        return torch.device(value)  # type: ignore[arg-type]
    except (RuntimeError, TypeError):
        raise InputError(f"{name} {value!r} is not a torch device (cpu, cuda, cuda:N, mps)") from None


def _channels(positive: bool):
    """Three finite numbers (a per-channel mean; std: positive)."""

    def check(name: str, value: object) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in value)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise InputError(f"{name} must be three numbers (one per channel), got {value!r}") from None
        if len(values) != 3 or not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
            need = "positive " if positive else "finite "
            raise InputError(f"{name} must be three {need}numbers (one per channel), got {value!r}")
        return values

    return check


def _channel_order(name: str, value: object) -> str:
    if value not in CHANNEL_ORDERS:
        raise InputError(f"channel order must be one of {', '.join(CHANNEL_ORDERS)}, got {value!r}")
    return str(value)


def _flag(name: str, value: object) -> bool:
    return bool(value)


def _as_given(name: str, value: object) -> object:
    return value


def _kwargs(name: str, value: object) -> dict:
    if value is not None and not isinstance(value, Mapping):
        raise InputError(f"{name} must be a mapping of keyword arguments of the CAM method, got {value!r}")
    return dict(value or {})


@dataclass(frozen=True)
class ScoreOptions(CheckedOptions):
    """How `score_model` scores: every setting but the model, the data and precomputed masks.
    Each field declares its check beside it; building the options runs them all, so bad
    settings fail before any image is read (an InputError naming the field).

    cam:              CAM method (a `camgap.cam.CAMS` name or alias; stored canonical).
    thresholds:       CAM thresholds rho, each in [0, 1); the first is the headline.
    target_layer:     module or dotted name (None: the architecture's default).
    batch_size, num_workers: batches of the pass; DataLoader worker processes that decode and
                      resize images while the model runs (0: this process; the same numbers either way,
                      up to the float rounding of the fewer torch threads the model gets beside them).
    device:           None: the model's device.
    mean, std, channel_order: the model's normalisation, in its channel order (rgb or bgr).
    class_boxes_only: A_G from the boxes of the labelled class only.
    keep_overlays:    keep image, CAM and reference of the first k images.
    cam_kwargs:       keyword arguments of the CAM method; progress: show a progress bar.
    box_accuracy:     also accumulate MaxBoxAccV2 (its labelling costs more than the pass itself).
    per_image_out:    write the per-image table to this file as batches finish (`measures.tablefile`).
    keep_logits:      keep every image's logits in the result (the measures read them; a pass
                      that only reports IoU keeps memory flat without them).
    """

    cam: str = option("gradcam", _cam)
    thresholds: tuple[float, ...] = option((0.1,), _thresholds)
    target_layer: nn.Module | str | None = option(None, _as_given)
    batch_size: int = option(64, functools.partial(integer, low=1))
    device: torch.device | None = option(None, _device)
    mean: tuple[float, ...] = option(IMAGENET_MEAN, _channels(positive=False))
    std: tuple[float, ...] = option(IMAGENET_STD, _channels(positive=True))
    channel_order: str = option("rgb", _channel_order)
    class_boxes_only: bool = option(False, _flag)
    keep_overlays: int = option(0, functools.partial(integer, low=0))
    cam_kwargs: dict = option(None, _kwargs)
    progress: bool = option(False, _flag)
    num_workers: int = option(0, check_workers)
    box_accuracy: bool = option(False, _flag)
    per_image_out: Path | None = option(None, check_table_path)
    keep_logits: bool = option(True, _flag)

    what: ClassVar[str] = "score option"


ENERGY_PG, POINTING_GAME = "energy_pg", "pointing_game"  # per-image columns (NaN: no object region)


def _col(kind: str, threshold: float) -> str:
    return f"{kind}@{threshold:g}"


def _selected_boxes(boxes: list[Tensor], box_labels: list[Tensor], labels: Tensor, class_boxes_only: bool):
    if class_boxes_only:
        return [b[bl == int(y)] for b, bl, y in zip(boxes, box_labels, labels)]
    return boxes


def _localization(
    maps: Tensor, ref: Tensor, totals: LocalizationTotals, boxes: list[Tensor] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Add one batch to the streaming localization totals; return its per-image energy share
    and pointing hit (NaN without an object region). ``boxes``: the A_G boxes, None when A_G
    is a mask source (its connected components are the ground-truth boxes)."""
    h, w = ref.shape[-2:]
    if boxes is None:
        gt = [component_boxes(m) for m in ref.cpu().numpy()]
    else:
        gt = [box_extents(b, h, w) for b in boxes]
    totals.add(maps, ref, gt)
    has_ref = ref.flatten(1).any(1).cpu().numpy()
    energy = np.where(has_ref, energy_share(maps, ref).cpu().numpy(), np.nan)
    hits = np.where(has_ref, pointing_hits(maps, ref).cpu().numpy().astype(float), np.nan)
    return energy, hits


def _keeps_mode(score: Callable[..., ScoreResult]) -> Callable[..., ScoreResult]:
    """`score` puts the model in eval mode; the caller gets back each module's own train/eval flag
    (a model training with frozen BatchNorm stays so), also when `score` raises. Grad flags and
    weights are never changed; the model stays on the scoring device."""

    @functools.wraps(score)
    def keeping_mode(model: nn.Module, *args, **kwargs) -> ScoreResult:
        modes = [(m, m.training) for m in model.modules()]
        try:
            return score(model, *args, **kwargs)
        finally:
            for m, training in modes:
                m.training = training

    return keeping_mode


@_keeps_mode
def score_model(
    model: nn.Module,
    data,
    options: ScoreOptions | None = None,
    *,
    masks: Tensor | None = None,
    mask_ids: Sequence[str] | None = None,
    **settings,
) -> ScoreResult:
    """Score `model` on `data`, its *training* images: a BoxDataset, a TensorStore, or any
    `torch.utils.data.Dataset` yielding ``(image, label, boxes)`` (image uint8 [3,S,S] or float
    in [0,1], all of one size S; boxes float [n,4] xyxy in input pixels); anything else is a TypeError.
    Held-out images may carry label -1 (UNLABELED, no known label): the CAM is the predicted
    class's, so they are scored for IoU alike; their `correct` is NA and the accuracy leaves them out.

    A_G is the union of the image's boxes (or only the boxes of its labelled class with
    `class_boxes_only`), or row `i` of `masks` (bool [N,S,S], rows named by `mask_ids`).
    The model is scored in eval mode and given back in its own mode, each module's flag as it
    was (it stays on the scoring device). `keep_overlays=k` keeps image, CAM and reference of the
    first k images for pictures. `channel_order="bgr"` is for a model trained on BGR images
    (OpenCV / Caffe style): the channels of each RGB batch are reversed before normalising, so
    `mean` and `std` are in the model's channel order.

    The settings are `options` (a :class:`ScoreOptions`) with any of its fields given as
    keywords replacing them: ``score_model(model, data, cam="gradcam++", thresholds=(0.1, 0.3))``.

    Non-finite weights or logits raise NonFiniteError: a CAM of NaNs would pass for an IoU of 0."""
    o = ScoreOptions.of(options, **settings)
    data = as_scoring_data(data)
    _check_finite_weights(model)
    device = o.device if o.device is not None else next(model.parameters()).device
    model = model.eval().to(device)
    reference = _Reference(o.class_boxes_only, device, masks, mask_ids)
    table = TableFile(o.per_image_out) if o.per_image_out is not None else None
    kept = _Kept(LocalizationTotals(boxes=o.box_accuracy), table)
    bar = _progress(len(data), o.progress)
    cam = create_cam(o.cam, model, o.target_layer, **(o.cam_kwargs or {}))
    decoding = decoding_split(data, o.num_workers, o.batch_size, device)
    with table or contextlib.nullcontext(), cam as cam_fn, decoding as (workers, threads):
        for batch in iter_batches(data, o.batch_size, device, workers):
            if batch[-1]:  # a batch whose every item was skipped has no ids
                kept.add(_score_batch(cam_fn, batch, o, reference, kept.totals), o)
                bar.update(len(batch[-1]))
        # inside the `with`: a pass that scored nothing raises here, and no table takes its name
        result = kept.result(o, len(data), cam_fn.target_layer_name)
    bar.close()
    result.num_workers, result.model_threads = workers, threads
    return result


@dataclass
class _Reference:
    """A_G of a batch: the rows of precomputed `masks` named by `mask_ids`, else the images'
    boxes (with `class_boxes_only`, those of the labelled class)."""

    class_boxes_only: bool
    device: torch.device
    masks: Tensor | None = None
    mask_ids: Sequence[str] | None = None
    row: dict[str, int] = field(init=False, default_factory=dict)  # mask row of each image id

    def __post_init__(self) -> None:
        if self.masks is not None:
            self.row = {m: i for i, m in enumerate(self.mask_ids)}  # type: ignore[arg-type]

    def of(self, batch: Batch) -> tuple[Tensor, list[Tensor] | None]:
        """A_G as bool [B,S,S] on the scoring device, and the boxes it was drawn from (None
        for masks: then their connected components are the ground-truth boxes)."""
        images, labels, boxes, box_labels, ids = batch
        if self.masks is None:
            if self.class_boxes_only and bool((labels == UNLABELED).any()):
                b = int((labels == UNLABELED).nonzero()[0, 0])
                raise InputError(f"image {ids[b]}: no known label (-1), so no boxes of its class (class_boxes_only)")
            selected = _selected_boxes(boxes, box_labels, labels, self.class_boxes_only)
            return boxes_to_masks(selected, images.shape[-1], self.device), selected
        missing = [i for i in ids if i not in self.row]
        if missing:
            raise InputError(f"no mask for {len(missing)} images, e.g. {missing[:3]}")
        return self.masks[[self.row[i] for i in ids]].to(self.device), None


@dataclass
class _Scored:
    """One batch through the CAM: the batch, the maps, A_G and every per-image value."""

    batch: Batch
    logits: Tensor
    maps: Tensor  # [B,S,S] in [0,1]
    ref: Tensor  # A_G, bool [B,S,S]
    from_boxes: bool  # A_G drawn from the boxes (not from masks)
    pred: np.ndarray
    iou: np.ndarray  # [T,B]: one row per threshold
    iou_b: np.ndarray
    area: np.ndarray
    energy: np.ndarray  # [B]; NaN without an object region
    hits: np.ndarray


def _score_batch(cam_fn, batch: Batch, o: ScoreOptions, reference: _Reference, totals: LocalizationTotals) -> _Scored:
    """The CAM of the predicted class for one batch, IoU / IoU-B / CAM area at every threshold
    and the localization measures (added to `totals`)."""
    images, labels, ids = batch[0], batch[1], batch[-1]
    out = cam_fn(normalize(images.flip(1) if o.channel_order == "bgr" else images, o.mean, o.std), None)
    _check_finite_outputs(out.logits, out.maps, ids)
    _check_labels(labels, out.logits.shape[1], ids)
    maps = upsample_normalize(out.maps, (images.shape[-2], images.shape[-1]))
    ref, gt_boxes = reference.of(batch)
    iou, iou_b, area = threshold_ious(maps, ref, o.thresholds)
    energy, hits = _localization(maps, ref, totals, gt_boxes)
    pred = out.logits.argmax(1).cpu().numpy()
    iou, iou_b, area = iou.cpu().numpy(), iou_b.cpu().numpy(), area.cpu().numpy()
    return _Scored(batch, out.logits, maps, ref, gt_boxes is not None, pred, iou, iou_b, area, energy, hits)


def _check_labels(labels: Tensor, n_classes: int, ids: Sequence[str]) -> None:
    """Each label a class of the model, or UNLABELED (-1: a held-out image without a known label)."""
    outside = (labels < UNLABELED) | (labels >= n_classes)
    if bool(outside.any()):
        b = int(outside.nonzero()[0, 0])
        why = (
            "the data has more classes than the model has outputs"
            if int(labels[b]) >= 0
            else "negative: only -1, no known label, is allowed"
        )
        raise InputError(f"image {ids[b]}: label {int(labels[b])} is outside the model's {n_classes} classes ({why})")


def _image_frame(s: _Scored, thresholds: Sequence[float]) -> pd.DataFrame:
    """The batch's rows of the per-image table: label, prediction, then IoU, IoU-B and CAM area
    per threshold, then the threshold-free columns. Built by column: a frame per batch holds a
    few numbers per image, where a dict per row would hold a few hundred bytes."""
    labels, pred = s.batch[1].cpu().numpy().astype(np.int64), s.pred.astype(np.int64)
    columns: dict[str, object] = {
        "image_id": list(s.batch[-1]),
        "label": labels,
        "pred": pred,
        # nullable: an image without a known label (-1, a held-out split) is neither right nor wrong
        "correct": pd.arrays.BooleanArray(labels == pred, labels == UNLABELED),
    }
    for t_i, t in enumerate(thresholds):
        columns[_col("iou", t)] = s.iou[t_i].astype(np.float64)
        columns[_col("iou_b", t)] = s.iou_b[t_i].astype(np.float64)
        columns[_col("cam_area", t)] = s.area[t_i].astype(np.float64)
    columns[ENERGY_PG], columns[POINTING_GAME] = s.energy.astype(np.float64), s.hits.astype(np.float64)
    return pd.DataFrame(columns)


def _overlays(s: _Scored, k: int) -> list[dict]:
    """Image, CAM and A_G of the batch's first `k` images, for pictures."""
    images, labels, boxes, _, ids = s.batch
    return [
        {
            "image": images[b].cpu(),
            "cam": s.maps[b].cpu(),
            "reference": s.ref[b].cpu(),
            "boxes": boxes[b].cpu() if s.from_boxes else None,
            "image_id": ids[b],
            "label": int(labels[b]),
            "pred": int(s.pred[b]),
            "iou": float(s.iou[0, b]),
        }
        for b in range(min(len(ids), k))
    ]


@dataclass
class _Kept:
    """What the pass keeps from batch to batch, and the ScoreResult it makes of them: a few
    numbers per image (and its logits with `keep_logits`); images only for the overlays."""

    totals: LocalizationTotals
    table: TableFile | None = None  # where the rows are written as batches finish
    frames: list[pd.DataFrame] = field(default_factory=list)
    logits: list[Tensor] = field(default_factory=list)
    labels: list[Tensor] = field(default_factory=list)
    overlays: list[dict] = field(default_factory=list)
    n_rows: int = 0

    def add(self, s: _Scored, o: ScoreOptions) -> None:
        frame = _image_frame(s, o.thresholds)
        if self.table is not None:
            self.table.write(frame)
        self.frames.append(frame)
        self.n_rows += len(frame)
        self.overlays += _overlays(s, o.keep_overlays - len(self.overlays))
        if o.keep_logits:
            self.logits.append(s.logits.detach().float().cpu())
        self.labels.append(s.batch[1].cpu())

    def result(self, o: ScoreOptions, n_total: int, layer_name: str) -> ScoreResult:
        if not self.frames:
            raise InputError("no images were scored: the dataset is empty or every image was skipped")
        return ScoreResult(
            cam=o.cam,
            thresholds=o.thresholds,
            per_image=pd.concat(self.frames, ignore_index=True),
            logits=torch.cat(self.logits) if o.keep_logits else None,
            labels=torch.cat(self.labels),
            n_skipped=max(0, n_total - self.n_rows),
            overlays=self.overlays,
            target_layer=layer_name,
            localization=self.totals,
        )


def _check_finite_weights(model: nn.Module) -> None:
    try:
        check_finite(model)
    except MeasureError as exc:
        raise NonFiniteError(
            f"{exc}: the model's weights hold NaN/inf (a diverged run?), so no CAM or "
            "IoU computed from it could be trusted"
        ) from None


def _check_finite_outputs(logits: Tensor, maps: Tensor, ids: Sequence[str]) -> None:
    for what, t in (("logits", logits), ("CAM", maps)):
        bad = ~torch.isfinite(t.flatten(1)).all(1)
        if bool(bad.any()):
            raise NonFiniteError(
                f"image {ids[int(bad.nonzero()[0, 0])]}: the model's {what} are not finite "
                "(NaN/inf), so no IoU computed from them could be trusted"
            )


def _progress(total: int, enabled: bool):
    from camgap.progress import progress_bar

    return progress_bar(total=total, unit="img", desc="score", enabled=enabled, rate=True)
