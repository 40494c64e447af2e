"""String registry of the baseline generalization measures, with one interface.

Every measure is a function ``measure(ctx: MeasureContext, **options) -> dict[str, float]``.
The returned dict maps the *params label* of a variant (:func:`camgap.params.label`: sorted
``key=value`` pairs joined by commas, ``""`` when a measure has no parameters) to its value, so
results go straight into a long table ``(run, measure, params, value)``, e.g.
``{"conv=reshape,scale=log": 57.1, "conv=reshape,scale=raw": 6.3e24}``. The registry stores
``camgap.params.to_json`` of the same params: one variant, one identity.

IoU and IoU-B (``iou``, ``iou_b``; params cam, masks, threshold: ``score_params``) are read
from the shared CAM pass: ``ctx.need_score(cam, masks, thresholds)`` runs ``ctx.score_pass``
once per distinct (cam, masks, thresholds) and keeps its ``ScoreResult``, so both measures at
every threshold cost one pass; ``score_pass_measures()`` names them. The threshold-free
localization measures (``energy_pg``, ``pointing_game``, ``maxboxacc_v2``, ``pxap``; params
cam, masks: ``pass_params``) read the same pass. That pass (or the caller's
own) gives the logits ``[N, K]`` and labels ``[N]`` of the training set; margin and
prediction-matrix measures use only those. Weight measures read ``ctx.model`` (and
``ctx.init_state``). Effective invariance runs only the transformed passes over
``ctx.batches()`` (the clean pass is ``ctx.logits``), and PAC-Bayes flatness needs its own
passes on a fixed subset of ``ctx.batches()``. The held-out measures (``iou_heldout``,
``iou_drop``; params as IoU's, A_G always the boxes) add one CAM pass over the test split
(``ctx.need_test_score``, kept and shared by both).

Outcomes. A measure that cannot be computed for a model raises :class:`MeasureError` with the
reason, and ``measure_outcome`` sorts it into one of two states the caller records:

* ``undefined`` (:class:`MeasureUndefined`): the measure has no value for this model by its
  own definition, e.g. a margin-normalised norm when the 10th-percentile margin gamma <= 0
  (more than 10 % of the training images misclassified), or PAC-Bayes flatness when no noise
  level moves the training accuracy by the target (sigma' is unbounded). Expected for poorly
  fitting models such as the untrained ones; nothing is broken.
* ``failed``: anything else, e.g. non-finite weights or logits, missing initial weights, an
  exception from the code. Something is wrong with the model or the measurement.

>>> from camgap.measures.registry import MEASURES, MeasureContext, compute_measure
>>> ctx = MeasureContext(model=model, logits=logits, labels=labels, batches=lambda: iter(loader))
>>> compute_measure("nuclear_norm", ctx)
{'norm=paper': 1.2e-05, 'norm=deng': 0.61}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from camgap.errors import CamgapError, StateError
from camgap.params import canonical, label
from camgap.registry import Registry


class MeasureError(CamgapError, RuntimeError):
    """A measure cannot be computed for this model; ``str(err)`` is the reason."""


class MeasureUndefined(MeasureError):
    """The measure is undefined for this model by its own definition (not a failure)."""


def measure_outcome(exc: BaseException) -> tuple[str, str]:
    """(state, reason) of a measure that raised ``exc``: ``undefined`` for
    :class:`MeasureUndefined`, else ``failed``; the reason is the message (with the exception's
    type and the function it came from when it is not a MeasureError: that is a bug to find)."""
    if isinstance(exc, MeasureUndefined):
        return "undefined", str(exc)
    if isinstance(exc, CamgapError):  # a reason camgap states itself (non-finite weights, ...)
        return "failed", str(exc)
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].name})" if frames else ""
    return "failed", f"{type(exc).__name__}: {exc}{where}"


@dataclass
class MeasureContext:
    """Everything a measure may need about one model.

    model:      the trained classifier (any device; measures never change its weights).
    logits:     ``[N, K]`` logits of the single clean pass over the training set (in order).
    labels:     ``[N]`` int64 training labels in the same order.
    init_state: ``state_dict`` of the same model at initialisation (distance from init,
                PAC-Bayes bounds).
    batches:    zero-argument callable returning a fresh iterator of
                ``(images_normalized [B,3,H,W], labels [B])`` on ``device``, in the SAME order
                as ``logits`` (extra tuple elements, e.g. boxes, are ignored).
    device:     device of the batches (default: the model's device).
    seed:       seed for the randomized measures (PAC-Bayes noise, power iteration start).
    mean, std:  the per-channel normalisation of the batches (needed by the grayscale
                effective invariance, which must un-normalise, convert and re-normalise).
    score_pass: ``(cam, masks, thresholds, data=<the training set>) -> ScoreResult``, one CAM
                pass over the training set (``score_model`` with that CAM, A_G source and
                thresholds); IoU / IoU-B read it through :meth:`need_score`, which runs each
                distinct pass once.
    augmentation: ``(flip_prob, jitter)`` of the augmentation the model trained with, None when
                it trained without one (or nobody knows): augmentation consistency reads it.
    test_data:  zero-argument callable returning the test split's images with their boxes
                (what ``score_model`` reads, e.g. a TensorStore): the held-out measures score
                it through ``score_pass(cam, "boxes", thresholds, data=test_data())``
                (:meth:`need_test_score`, one pass per CAM).
    """

    model: nn.Module
    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    init_state: Mapping[str, torch.Tensor] | None = None
    batches: Callable[[], Iterator[Any]] | None = None
    device: torch.device | str | None = None
    seed: int = 0
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    score_pass: Callable[[str, str, tuple[float, ...]], Any] | None = None
    augmentation: tuple[float, float] | None = None
    test_data: Callable[[], Any] | None = None
    _scores: dict[tuple, Any] = field(default_factory=dict, init=False, repr=False)
    _test_scores: dict[tuple, Any] = field(default_factory=dict, init=False, repr=False)

    def need_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.logits is None or self.labels is None:
            raise MeasureError("this measure needs the training-set logits and labels")
        return self.logits, self.labels

    def need_score(self, cam: str, masks: str, thresholds: Sequence[float], any_thresholds: bool = False) -> Any:
        """The ``ScoreResult`` of the CAM pass ``(cam, masks)`` at ``thresholds``, run on first
        use by ``score_pass`` and kept: IoU and IoU-B at every threshold share that one pass.
        ``any_thresholds``: a pass of ``(cam, masks)`` at other thresholds will do (for the
        measures that do not read them). The first pass also fills ``logits`` / ``labels``
        when they are not given."""
        key = (cam, masks, tuple(float(t) for t in thresholds))
        if key not in self._scores and any_thresholds:
            # a threshold-free measure reads whichever pass of (cam, masks) already ran
            key = next((k for k in self._scores if k[:2] == (cam, masks)), key)
        if key not in self._scores:
            if self.score_pass is None:
                raise MeasureError("this measure needs the shared CAM pass (ctx.score_pass)")
            self._scores[key] = self.score_pass(cam, masks, key[2])
            if self.logits is None:
                self.logits, self.labels = self._scores[key].logits, self._scores[key].labels
        return self._scores[key]

    def score_with(self, cam: str, masks: str, threshold: float) -> Any:
        """A kept pass of ``(cam, masks)`` that holds ``threshold`` among its thresholds, else
        the pass at ``threshold`` alone (:meth:`need_score`): a measure of one threshold reads
        the pass that the IoU at several thresholds already ran."""
        t = float(threshold)
        key = next((k for k in self._scores if k[:2] == (cam, masks) and t in k[2]), None)
        return self._scores[key] if key is not None else self.need_score(cam, masks, (t,))

    def need_test_score(self, cam: str, threshold: float) -> Any:
        """The ``ScoreResult`` of the CAM pass ``cam`` over the test split (``test_data``), A_G
        from its boxes, at ``threshold``; run on first use and kept, so held-out IoU and the
        IoU drop share it."""
        key = (cam, float(threshold))
        if key not in self._test_scores:
            if self.score_pass is None or self.test_data is None:
                raise MeasureError("this measure needs the test split (ctx.test_data) and a CAM pass (ctx.score_pass)")
            self._test_scores[key] = self.score_pass(cam, "boxes", (key[1],), data=self.test_data())
        return self._test_scores[key]

    def need_batches(self) -> Callable[[], Iterator[Any]]:
        if self.batches is None:
            raise MeasureError("this measure needs the training batches (ctx.batches)")
        return self.batches

    def example_input(self) -> torch.Tensor:
        """First image of the first batch, ``[1, C, H, W]`` (sizes for operator/path norms)."""
        for batch in self.need_batches()():
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            return images[:1]
        raise MeasureError("ctx.batches() yielded no batch")


MeasureFn = Callable[..., dict[str, float]]
#: name -> measure function; ``@MEASURES.register("name")`` adds one (a duplicate is an InputError).
MEASURES: Registry[MeasureFn] = Registry("measure")
register_measure = MEASURES.register


def list_measures() -> list[str]:
    return MEASURES.names()


#: The params keys of a score-pass measure read at each CAM threshold, and of a threshold-free one.
THRESHOLD_KEYS: tuple[str, ...] = ("cam", "masks", "threshold")
PASS_KEYS: tuple[str, ...] = ("cam", "masks")


def score_pass_measure(name: str, keys: tuple[str, ...] = THRESHOLD_KEYS) -> Callable[[MeasureFn], MeasureFn]:
    """Register a measure computed from the shared CAM pass (``ctx.need_score``); its options are
    ``cam``, ``thresholds``, ``masks`` and its params ``keys`` of them: ``THRESHOLD_KEYS`` (one
    value per CAM threshold, ``score_params``) or ``PASS_KEYS`` (one value per pass)."""

    def wrap(fn: MeasureFn) -> MeasureFn:
        fn.from_score_pass = True  # type: ignore[attr-defined]
        fn.pass_keys = tuple(keys)  # type: ignore[attr-defined]
        return register_measure(name)(fn)

    return wrap


def pass_keys(name: str) -> tuple[str, ...]:
    """The params keys of score-pass measure ``name`` (() for any other measure)."""
    return tuple(getattr(MEASURES.get(name), "pass_keys", ()))


def pass_params(name: str, cam: str, threshold: float, masks: str) -> dict[str, str]:
    """The params of score-pass measure ``name``'s measurement for (cam, threshold, masks),
    canonical: ``score_params``, without the threshold for a threshold-free measure."""
    full = score_params(cam, threshold, masks)
    return {k: v for k, v in full.items() if k in pass_keys(name)}


def from_score_pass(name: str) -> bool:
    """Whether measure ``name`` is read from the shared CAM pass (an unknown name: UnknownNameError)."""
    return bool(getattr(MEASURES.get(name), "from_score_pass", False))


def score_pass_measures() -> tuple[str, ...]:
    """The measures read from the shared CAM pass (IoU, IoU-B, the localization measures), by name."""
    return tuple(name for name in MEASURES.names() if from_score_pass(name))


def unavailable_reason(name: str) -> str | None:
    """Why measure ``name`` cannot run in this installation (an optional package is missing, and
    how to install it), None when it can; an unknown name: UnknownNameError."""
    check = getattr(MEASURES.get(name), "unavailable", None)
    return check() if check else None


def score_params(cam: str, threshold: float, masks: str) -> dict[str, str]:
    """The params of a score-pass measurement (IoU, IoU-B), canonical (``camgap.params``)."""
    return canonical({"cam": cam, "masks": masks, "threshold": float(threshold)})


def compute_measure(name: str, ctx: MeasureContext, **options) -> dict[str, float]:
    """Run one measure by name; raises ``UnknownNameError`` (a ``KeyError``) for an unknown name,
    :class:`MeasureError` when the measure cannot be computed for this model."""
    return MEASURES.get(name)(ctx, **options)


def _pct(percentile: float) -> dict[str, float]:
    """The margin percentile appears in the parameter string only when it is not the default 10."""
    return {} if float(percentile) == 10.0 else {"percentile": float(percentile)}


def _log_and_raw(log_value: float, **params: Any) -> dict[str, float]:
    out = {label({**params, "scale": "log"}): float(log_value)}
    if log_value < 700:  # exp() finite in float64
        out[label({**params, "scale": "raw"})] = math.exp(log_value)
    return out


# ----------------------------------------------------------------------------- measures
# Imports are inside the functions: the measure modules import MeasureError from here.


def _from_score(
    kind: str, ctx: MeasureContext, cam: str, thresholds: Sequence[float] | float, masks: str
) -> dict[str, float]:
    from camgap.measures.iou import validate_thresholds

    rhos = validate_thresholds(thresholds)
    res = ctx.need_score(cam, masks, rhos)
    mean = res.iou if kind == "iou" else res.iou_b
    return {label(score_params(cam, t, masks)): mean(t) for t in rhos}


@score_pass_measure("iou")
def _iou(
    ctx: MeasureContext, cam: str = "gradcam", thresholds: Sequence[float] | float = (0.1,), masks: str = "boxes"
) -> dict[str, float]:
    """Paper eq. 4: mean IoU of the thresholded CAM region A_L with the object region A_G, per rho."""
    return _from_score("iou", ctx, cam, thresholds, masks)


@score_pass_measure("iou_b")
def _iou_b(
    ctx: MeasureContext, cam: str = "gradcam", thresholds: Sequence[float] | float = (0.1,), masks: str = "boxes"
) -> dict[str, float]:
    """Paper eq. 5: IoU-B, A_L replaced by its enclosing box; the same pass as ``iou``."""
    return _from_score("iou_b", ctx, cam, thresholds, masks)


@register_measure("iou_heldout")
def _iou_heldout(ctx: MeasureContext, cam: str = "gradcam", threshold: float = 0.1) -> dict[str, float]:
    """IoU (eq. 4) on the test split's images, A_G from their boxes (`camgap.measures.heldout`)."""
    from camgap.measures.heldout import heldout_iou

    return {label(score_params(cam, threshold, "boxes")): heldout_iou(ctx, cam, threshold)}


@register_measure("iou_drop")
def _iou_drop(ctx: MeasureContext, cam: str = "gradcam", threshold: float = 0.1) -> dict[str, float]:
    """Train IoU - held-out IoU (boxes); undefined when either is (`camgap.measures.heldout`)."""
    from camgap.measures.heldout import iou_drop

    return {label(score_params(cam, threshold, "boxes")): iou_drop(ctx, cam, threshold)}


def _from_pass(
    ctx: MeasureContext, value: Callable[[Any], float], cam: str, thresholds: Sequence[float] | float, masks: str
) -> dict[str, float]:
    """A threshold-free measure of the pass (cam, masks): any thresholds' pass will do."""
    from camgap.measures.iou import validate_thresholds

    res = ctx.need_score(cam, masks, validate_thresholds(thresholds), any_thresholds=True)
    try:
        v = value(res)
    except StateError as exc:  # the pass left this measure out (MaxBoxAccV2 on request)
        raise MeasureError(str(exc)) from None
    if math.isnan(v):
        raise MeasureUndefined("no training image has an object region (a box or a non-empty mask)")
    return {label(canonical({"cam": cam, "masks": masks})): v}


#: The threshold-free localization measures: name -> (ScoreResult method, what it is).
LOCALIZATION_MEASURES: dict[str, tuple[str, str]] = {
    "energy_pg": ("energy_pg", "energy-based pointing game (Score-CAM): mean share of the CAM mass in the region"),
    "pointing_game": ("pointing_game", "share of the images whose CAM maximum (the first, row-major) is in the region"),
    "maxboxacc_v2": ("max_box_acc_v2", "MaxBoxAccV2 (Choe et al. 2020): mean over IoU 0.3/0.5/0.7 of MaxBoxAcc"),
    "pxap": ("pxap", "PxAP (Choe et al. 2020): pixel average precision of the CAM against the object region"),
}


def _localization_measure(name: str, method: str, what: str) -> MeasureFn:
    def measure(
        ctx: MeasureContext, cam: str = "gradcam", thresholds: Sequence[float] | float = (0.1,), masks: str = "boxes"
    ) -> dict[str, float]:
        return _from_pass(ctx, lambda r: getattr(r, method)(), cam, thresholds, masks)

    measure.__doc__ = (
        f"{what[0].upper()}{what[1:]}. ``thresholds`` only names the pass to share; definitions in "
        "`camgap.measures.localization`."
    )
    return score_pass_measure(name, PASS_KEYS)(measure)


for _name, (_method, _what) in LOCALIZATION_MEASURES.items():
    _localization_measure(_name, _method, _what)


@register_measure("spectral_norm")
def _spectral_norm(ctx: MeasureContext, conv: str = "reshape", percentile: float = 10.0) -> dict[str, float]:
    """Paper eq. A1 / Jiang et al. "spec.norm"; log value and raw value (when finite)."""
    from camgap.measures.norms import spectral_norm_measure

    logits, labels = ctx.need_logits()
    example = ctx.example_input() if conv == "operator" else None
    value = spectral_norm_measure(
        ctx.model, logits, labels, conv=conv, example_input=example, percentile=percentile, seed=ctx.seed
    )
    return _log_and_raw(value, conv=conv, **_pct(percentile))


@register_measure("frobenius_norm")
def _frobenius_norm(ctx: MeasureContext, percentile: float = 10.0) -> dict[str, float]:
    """Margin-normalised Frobenius norms (Jiang et al. "prod.of.fro" and "sum.of.fro")."""
    from camgap.measures.norms import frobenius_measure

    logits, labels = ctx.need_logits()
    out: dict[str, float] = {}
    for form in ("prod", "sum"):
        out.update(
            _log_and_raw(
                frobenius_measure(ctx.model, logits, labels, form=form, percentile=percentile),
                form=form,
                **_pct(percentile),
            )
        )
    return out


@register_measure("path_norm")
def _path_norm(ctx: MeasureContext, bias: bool = True) -> dict[str, float]:
    """Jiang et al. "path.norm": sum of the squared-weight network's outputs on a ones input."""
    from camgap.measures.norms import path_norm

    value = path_norm(ctx.model, tuple(ctx.example_input().shape[1:]), bias=bias)
    return {label({"scale": "log"}): math.log(value) if value > 0 else -math.inf, label({"scale": "raw"}): value}


@register_measure("distance_from_init")
def _distance_from_init(ctx: MeasureContext) -> dict[str, float]:
    """sum_i ||W_i - W_i^0||_F^2 over Conv2d/Linear weights, and its square root."""
    from camgap.measures.norms import distance_from_init

    if ctx.init_state is None:
        raise MeasureError("distance_from_init needs the initial weights (ctx.init_state)")
    sq = distance_from_init(ctx.model, ctx.init_state)
    return {label({"form": "squared"}): sq, label({"form": "sqrt"}): math.sqrt(sq)}


@register_measure("inverse_margin")
def _inverse_margin(ctx: MeasureContext, percentile: float = 10.0) -> dict[str, float]:
    """Jiang et al. "1/margin": 1 / gamma^2, gamma = 10th percentile of the margins."""
    from camgap.measures.predictions import margin_percentile

    gamma = margin_percentile(*ctx.need_logits(), percentile=percentile)
    return {label(_pct(percentile)): 1.0 / gamma**2}


@register_measure("nuclear_norm")
def _nuclear_norm(ctx: MeasureContext) -> dict[str, float]:
    """Paper eq. A2 (``norm=paper``) and Deng et al. 2023's normalisation (``norm=deng``)."""
    from camgap.measures.predictions import nuclear_norm

    logits, _ = ctx.need_logits()
    values = nuclear_norm(logits)
    return {label({"norm": k}): v for k, v in values.items()}


@register_measure("effective_invariance")
def _effective_invariance(ctx: MeasureContext, angles: Sequence[int] = (90, 180, 270)) -> dict[str, float]:
    """Paper eq. A3: rotations by 90/180/270 degrees, mean over images and angles."""
    from camgap.measures.invariance import effective_invariance

    logits, _ = ctx.need_logits()
    value = effective_invariance(ctx.model, logits, ctx.need_batches()(), transform="rotation", angles=tuple(angles))
    return {label({"transform": "rotation"}): value}


@register_measure("effective_invariance_gray")
def _effective_invariance_gray(ctx: MeasureContext) -> dict[str, float]:
    """Effective invariance to a grayscale conversion (needs ctx.mean / ctx.std)."""
    from camgap.measures.invariance import effective_invariance

    if ctx.mean is None or ctx.std is None:
        raise MeasureError("grayscale effective invariance needs ctx.mean and ctx.std")
    logits, _ = ctx.need_logits()
    value = effective_invariance(
        ctx.model, logits, ctx.need_batches()(), transform="grayscale", mean=ctx.mean, std=ctx.std
    )
    return {label({"transform": "grayscale"}): value}


def _pacbayes(ctx: MeasureContext, magnitude_eps: float | None, **options) -> dict[str, float]:
    from camgap.measures.flatness import pacbayes_bounds, pacbayes_sigma

    res = pacbayes_sigma(ctx.model, ctx.need_batches(), magnitude_eps=magnitude_eps, seed=ctx.seed, **options)
    variant = {"criterion": options.get("criterion", "accuracy"), "target": options.get("target", 0.1)}
    out = {label({**variant, "form": "flatness"}): 1.0 / res.sigma**2, label({**variant, "form": "sigma"}): res.sigma}
    m = int(ctx.labels.numel()) if ctx.labels is not None else None
    if m:
        bounds = pacbayes_bounds(ctx.model, res.sigma, m, init_state=ctx.init_state, magnitude_eps=magnitude_eps)
        for form, v in bounds.items():
            out[label({**variant, "form": form})] = v
    return out


@register_measure("pacbayes_flatness")
def _pacbayes_flatness(ctx: MeasureContext, **options) -> dict[str, float]:
    """Jiang et al. "pacbayes.flatness" 1/sigma'^2 (and "pacbayes.orig"/"pacbayes.init"
    when the training-set size / initial weights are known)."""
    return _pacbayes(ctx, None, **options)


@register_measure("pacbayes_mag_flatness")
def _pacbayes_mag_flatness(ctx: MeasureContext, magnitude_eps: float = 1e-3, **options) -> dict[str, float]:
    """Jiang et al. "pacbayes.mag.flatness": noise N(0, sigma'^2 w^2 + eps^2) per weight."""
    return _pacbayes(ctx, magnitude_eps, **options)


@register_measure("augmentation_consistency")
def _augmentation_consistency(ctx: MeasureContext, draws: int = 1) -> dict[str, float]:
    """PGDL 2nd place idea: mean total variation between the softmax outputs of each training
    image and of ``draws`` draws of the run's training augmentation (needs ctx.mean / ctx.std)."""
    from camgap.measures.consistency import augmentation_consistency, default_augmentation

    if ctx.mean is None or ctx.std is None:
        raise MeasureError("augmentation consistency needs ctx.mean and ctx.std")
    logits, _ = ctx.need_logits()
    flip_prob, jitter = ctx.augmentation or default_augmentation()
    value = augmentation_consistency(
        ctx.model, logits, ctx.need_batches()(), ctx.mean, ctx.std, flip_prob, jitter, draws=draws, seed=ctx.seed
    )
    return {label({"draws": int(draws), "flip_prob": float(flip_prob), "jitter": float(jitter)}): value}


@register_measure("db_mixup")
def _db_mixup(ctx: MeasureContext, images: int = 300, pool: int = 4, lam: float = 0.5) -> dict[str, float]:
    """PGDL 1st place (Natekar & Sharma 2020): Davies-Bouldin index of the first conv layer's
    max-pooled features x (1 - label-wise mixup accuracy), on a seeded subset of the training
    images; also each factor (``form=db``, ``form=mixup_accuracy``)."""
    from camgap.measures.representation import db_mixup

    batches = ctx.need_batches()
    count = int(ctx.labels.numel()) if ctx.labels is not None else sum(int(b[0].shape[0]) for b in batches())
    res = db_mixup(ctx.model, batches(), count, images=images, pool=pool, lam=lam, seed=ctx.seed)
    base = {"images": int(res["images"]), "lambda": float(lam), "layer": "first_conv", "pool": int(pool)}
    return {label({**base, "form": form}): res[form] for form in ("product", "db", "mixup_accuracy")}


def _weightwatcher_missing() -> str | None:
    from camgap.measures import weightwatcher

    return None if weightwatcher.available() else f"needs the weightwatcher package: {weightwatcher.INSTALL}"


@register_measure("weightwatcher")
def _weightwatcher(ctx: MeasureContext) -> dict[str, float]:
    """WeightWatcher's alpha, alpha_weighted and log_norm, means over the layers (optional package;
    its version is in the params)."""
    from camgap.measures import weightwatcher

    values = weightwatcher.weightwatcher_summary(ctx.model)
    version = weightwatcher.version()
    return {label({"stat": stat, "version": version}): value for stat, value in values.items()}


_weightwatcher.unavailable = _weightwatcher_missing  # type: ignore[attr-defined]
