"""PAC-Bayes flatness (Jiang et al. 2020, "Fantastic Generalization Measures", sec. 6 / C).

sigma' is the largest noise scale such that perturbing ALL parameters (weights, biases and
BatchNorm affine parameters; not the BN running statistics) with Gaussian noise moves the
training accuracy by at most ``target`` (0.1 by default; or raises the training cross-entropy
by at most ``target`` with ``criterion="loss"``):

* ``pacbayes.flatness``     = 1 / sigma'^2, noise u ~ N(0, sigma'^2 I);
* ``pacbayes.mag.flatness`` = 1 / sigma'^2, noise u_i ~ N(0, sigma'^2 w_i^2 + eps^2)
  (magnitude-aware, eps = 1e-3).

The accuracy drop is the mean over ``draws`` noise draws on a fixed subset (the first
``n_images`` images of the training batches, in the store's order), in eval mode. sigma' is
found by bracketing (doubling / halving from a start near the weights' RMS, rounded to a power
of 2) then bisection, stopping when the drop is within ``tol`` of ``target`` or after
``depth`` halvings of the bracket - as in Jiang et al.'s search.

The search is bounded: sigma never exceeds ``sigma_max`` (by default 2^12 times the start, i.e.
noise ~1000 times the weights' RMS, long past the point where the network's outputs are noise),
and the bracketing takes at most ``max_steps`` doublings or halvings, so at most
``1 + max_steps + depth`` noise levels are evaluated. A model whose training accuracy no noise
level within these caps moves by ``target`` (a model at chance level, whose accuracy noise cannot
lower; or one with a clean accuracy below ``target``, found without any noisy pass), or which
moves by more than ``target`` at every sigma down to ``sigma0 / 2^max_steps``, has no sigma':
the search raises :class:`MeasureUndefined` with the reason.

Determinism: draw j uses a generator seeded with (seed, j) on the model's device, and the SAME
standard-normal direction z_j at every sigma (u = std(sigma) * z_j: common random numbers), so
the drop is a smooth function of sigma and a seed gives one answer. The model's parameters are
never modified: the perturbed networks run through ``torch.func.functional_call`` with
perturbed copies, so the search leaves the weights bit-for-bit unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from camgap.errors import InputError
from camgap.measures.norms import check_finite
from camgap.measures.registry import MeasureError, MeasureUndefined


@dataclass
class PacBayesResult:
    sigma: float  # sigma' (the largest noise scale within the target)
    clean: float  # accuracy (or loss) of the unperturbed model on the subset
    displacement: float  # accuracy drop (loss rise) at the last sigma evaluated
    n_images: int
    evaluations: list[tuple[float, float]] = field(default_factory=list)  # (sigma, displacement)

    @property
    def flatness(self) -> float:
        return 1.0 / self.sigma**2


def _subset(
    batches: Callable[[], Iterator] | Iterable, n_images: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    it = batches() if callable(batches) else iter(batches)
    out, n = [], 0
    for batch in it:
        x, y = batch[0], batch[1]
        take = min(x.shape[0], n_images - n)
        out.append((x[:take].to(device), torch.as_tensor(y[:take]).to(device, torch.long)))
        n += take
        if n >= n_images:
            break
    if n == 0:
        raise MeasureError("no training images for the PAC-Bayes search")
    return out


def _score(
    model: nn.Module,
    params: dict[str, torch.Tensor] | None,
    data: list[tuple[torch.Tensor, torch.Tensor]],
    criterion: str,
) -> float:
    total, n = 0.0, 0
    for x, y in data:
        out = model(x) if params is None else functional_call(model, params, (x,))
        if criterion == "accuracy":
            total += float((out.argmax(dim=1) == y).sum())
        else:
            total += float(F.cross_entropy(out.double(), y, reduction="sum"))
        n += x.shape[0]
    return total / n


def _draw_seed(seed: int, draw: int) -> int:
    return (int(seed) * 1_000_003 + 7919 * draw + 10_348_628_753) % (2**63 - 1)


_Data = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _Search:
    """One sigma' search: the fixed subset, its clean score, the noise model, and every noise level
    evaluated (in order), shared by the bracketing and the bisection."""

    model: nn.Module
    base: dict[str, torch.Tensor]
    data: _Data
    criterion: str
    clean: float
    target: float
    tol: float
    draws: int
    seed: int
    magnitude_eps: float | None
    on_evaluate: Callable[[float, float], None] | None
    evaluations: list[tuple[float, float]] = field(default_factory=list)

    def perturbed(self, sigma: float, draw: int) -> dict[str, torch.Tensor]:
        """Noisy copies of all parameters for one draw; the direction z depends on (seed, draw)
        only, so every sigma sees the same z (common random numbers)."""
        dev = next(iter(self.base.values())).device
        g = torch.Generator(device=dev).manual_seed(_draw_seed(self.seed, draw))
        params = {}
        for name, p in self.base.items():
            z = torch.randn(p.shape, generator=g, device=dev, dtype=p.dtype)
            if self.magnitude_eps is None:
                params[name] = p + sigma * z
            else:
                params[name] = p + torch.sqrt(sigma**2 * p.square() + self.magnitude_eps**2) * z
        return params

    def displacement(self, sigma: float) -> float:
        """Accuracy drop (loss rise) at ``sigma``, mean over the draws; inf when not finite, so a
        diverged network counts as too much noise."""
        values = [_score(self.model, self.perturbed(sigma, j), self.data, self.criterion) for j in range(self.draws)]
        mean = sum(values) / self.draws
        d = self.clean - mean if self.criterion == "accuracy" else mean - self.clean
        if not math.isfinite(d):
            d = math.inf
        self.evaluations.append((sigma, d))
        if self.on_evaluate is not None:
            self.on_evaluate(sigma, d)
        return d

    def hit(self, d: float) -> bool:
        return abs(d - self.target) <= self.tol

    def result(self, sigma: float, d: float) -> PacBayesResult:
        n_seen = sum(x.shape[0] for x, _ in self.data)
        return PacBayesResult(
            sigma=sigma, clean=self.clean, displacement=d, n_images=n_seen, evaluations=self.evaluations
        )


@torch.no_grad()
def pacbayes_sigma(
    model: nn.Module,
    batches: Callable[[], Iterator] | Iterable,
    *,
    target: float = 0.1,
    criterion: str = "accuracy",
    magnitude_eps: float | None = None,
    draws: int = 5,
    n_images: int = 512,
    depth: int = 15,
    tol: float = 0.01,
    seed: int = 0,
    sigma0: float | None = None,
    sigma_max: float | None = None,
    max_steps: int = 20,
    on_evaluate: Callable[[float, float], None] | None = None,
) -> PacBayesResult:
    """Find sigma' by bisection (see the module docstring). ``batches``: a callable returning an
    iterator of ``(images_normalized, labels, ...)`` or such an iterable. ``magnitude_eps``:
    None for isotropic noise, eps for the magnitude-aware variant. ``sigma_max`` caps the noise
    scale (default ``sigma0 * 2**12``); ``on_evaluate(sigma, displacement)`` is called after each
    noisy evaluation. Raises :class:`MeasureError` for non-finite weights or when even tiny noise
    moves the criterion too far, :class:`MeasureUndefined` when no sigma within the caps moves it by
    the target (sigma' is then unbounded as far as the search can tell)."""
    _check_options(criterion, target, tol, draws, max_steps, depth)
    check_finite(model)
    base = {n: p.detach() for n, p in model.named_parameters()}
    if not base:
        raise MeasureError("the model has no parameters")
    was_training = model.training
    model.eval()
    try:
        data = _subset(batches, n_images, next(iter(base.values())).device)
        clean = _clean_score(model, data, criterion, target, tol)
        search = _Search(model, base, data, criterion, clean, target, tol, draws, seed, magnitude_eps, on_evaluate)
        s, cap = _start_and_cap(base, magnitude_eps, sigma0, sigma_max)
        d = search.displacement(s)
        if search.hit(d):
            return search.result(s, d)
        bracket = _bracket_down(search, s, max_steps) if d > target else _bracket_up(search, s, cap, max_steps)
        if isinstance(bracket, PacBayesResult):
            return bracket
        return _bisect(search, *bracket, depth)
    finally:
        model.train(was_training)


def _check_options(criterion: str, target: float, tol: float, draws: int, max_steps: int, depth: int) -> None:
    if criterion not in ("accuracy", "loss"):
        raise InputError(f"criterion must be 'accuracy' or 'loss', got {criterion!r}")
    if not target > 0 or not tol >= 0 or draws < 1 or max_steps < 0 or depth < 0:
        raise InputError(
            f"need target > 0, tol >= 0, draws >= 1, max_steps >= 0, depth >= 0; got target={target}, "
            f"tol={tol}, draws={draws}, max_steps={max_steps}, depth={depth}"
        )


def _clean_score(model: nn.Module, data: _Data, criterion: str, target: float, tol: float) -> float:
    """Score of the unperturbed model; an accuracy already below the target drop is refused before
    any noisy pass, since no noise can lower it by that much."""
    clean = _score(model, None, data, criterion)
    if not math.isfinite(clean):
        raise MeasureError(f"non-finite clean training {criterion}")
    if criterion == "accuracy" and clean < target - tol:
        raise MeasureUndefined(
            f"clean training accuracy {clean:.3g} is below the target drop {target}: "
            "no noise level can lower it by that much"
        )
    return clean


def _start_and_cap(
    base: Mapping[str, torch.Tensor], magnitude_eps: float | None, sigma0: float | None, sigma_max: float | None
) -> tuple[float, float]:
    """The first noise level and the largest one the search may try."""
    if sigma0 is None:
        sigma0 = _default_sigma0(base, magnitude_eps)
    cap = float(sigma_max) if sigma_max is not None else float(sigma0) * 2.0**12
    if not 0 < sigma0 <= cap:
        raise InputError(f"need 0 < sigma0 <= sigma_max, got sigma0={sigma0}, sigma_max={cap}")
    return float(sigma0), cap


def _bracket_down(search: _Search, s: float, max_steps: int) -> PacBayesResult | tuple[float, float]:
    """Too much noise at ``s``: halve until the displacement is within the target. Returns the
    result on a hit, else the bracket (lo, hi) with the target between d(lo) and d(hi)."""
    hi = s
    for _ in range(max_steps):
        s /= 2
        d = search.displacement(s)
        if search.hit(d):
            return search.result(s, d)
        if d <= search.target:
            return s, hi
        hi = s
    raise MeasureUndefined(
        f"training {search.criterion} moves by more than {search.target} even at sigma={s:.3g} "
        f"({len(search.evaluations)} noise levels evaluated, max_steps={max_steps})"
    )


def _bracket_up(search: _Search, s: float, cap: float, max_steps: int) -> PacBayesResult | tuple[float, float]:
    """Not enough noise at ``s``: double (never past ``cap``) until the target is exceeded. Returns
    the result on a hit, else the bracket (lo, hi)."""
    crit, target, clean = search.criterion, search.target, search.clean
    lo = s
    for _ in range(max_steps):
        if 2 * s > cap:
            raise MeasureUndefined(
                f"training {crit} never moves by {target} for sigma up to the cap "
                f"sigma_max={cap:.3g} (clean {crit} {clean:.3g}; "
                f"{len(search.evaluations)} noise levels evaluated)"
            )
        s *= 2
        d = search.displacement(s)
        if search.hit(d):
            return search.result(s, d)
        if d > target:
            return lo, s
        lo = s
    raise MeasureUndefined(
        f"training {crit} never moves by {target} within max_steps={max_steps} "
        f"doublings (sigma up to {s:.3g}; clean {crit} {clean:.3g})"
    )


def _bisect(search: _Search, lo: float, hi: float, depth: int) -> PacBayesResult:
    """At most ``depth`` halvings of the bracket; without a hit, its midpoint with the displacement
    last evaluated."""
    for _ in range(depth):
        mid = (lo + hi) / 2
        d = search.displacement(mid)
        if search.hit(d):
            return search.result(mid, d)
        if d > search.target:
            hi = mid
        else:
            lo = mid
    return search.result((lo + hi) / 2, search.evaluations[-1][1])


def _default_sigma0(base: Mapping[str, torch.Tensor], magnitude_eps: float | None) -> float:
    """Start of the search: 1/8 for the magnitude-aware noise (relative to |w|), else a quarter of
    the parameters' RMS rounded to a power of 2 (1/4 for all-zero parameters)."""
    if magnitude_eps is not None:
        return 2.0**-3
    sq = sum(float(p.double().square().sum()) for p in base.values())
    cnt = sum(p.numel() for p in base.values())
    rms = math.sqrt(sq / cnt) if sq > 0 else 1.0
    return 2.0 ** (round(math.log2(rms)) - 2)


def pacbayes_flatness(model: nn.Module, batches, **options) -> float:
    """Jiang et al. "pacbayes.flatness" = 1 / sigma'^2 (options: see :func:`pacbayes_sigma`)."""
    return pacbayes_sigma(model, batches, **options).flatness


def pacbayes_mag_flatness(model: nn.Module, batches, magnitude_eps: float = 1e-3, **options) -> float:
    """Jiang et al. "pacbayes.mag.flatness" = 1 / sigma'^2 with magnitude-aware noise."""
    return pacbayes_sigma(model, batches, magnitude_eps=magnitude_eps, **options).flatness


@torch.no_grad()
def pacbayes_bounds(
    model: nn.Module,
    sigma: float,
    m: int,
    init_state: Mapping[str, torch.Tensor] | None = None,
    magnitude_eps: float | None = None,
) -> dict[str, float]:
    """Jiang et al.'s PAC-Bayes bound measures at sigma' over all parameters, m training images:

    isotropic: ``orig`` = ||w||^2 / (4 sigma^2) + log(m / sigma) + 10, and ``init`` the same
    with w - w0 (needs ``init_state``);
    magnitude-aware (``magnitude_eps`` set, needs ``init_state``), omega parameters:
    ``mag_init`` = 1/4 sum_i log((eps^2 + (sigma^2+1) ||w - w0||^2 / omega)
    / (eps^2 + sigma^2 (w_i - w0_i)^2)) + log(m / sigma) + 10, and ``mag_orig`` with ||w||^2 in
    the numerator."""
    w = torch.cat([p.detach().double().flatten().cpu() for _, p in model.named_parameters()])
    tail = math.log(m / sigma) + 10.0
    out: dict[str, float] = {}
    w0 = None
    if init_state is not None:
        try:
            w0 = torch.cat([init_state[n].detach().double().flatten().cpu() for n, _ in model.named_parameters()])
        except KeyError:
            w0 = None
        if w0 is not None and w0.shape != w.shape:
            w0 = None
    if magnitude_eps is None:
        out["orig"] = float(w.square().sum()) / (4 * sigma**2) + tail
        if w0 is not None:
            out["init"] = float((w - w0).square().sum()) / (4 * sigma**2) + tail
    elif w0 is not None:
        eps2, omega = magnitude_eps**2, w.numel()
        den = eps2 + sigma**2 * (w - w0).square()
        for form, ref in (("mag_init", w - w0), ("mag_orig", w)):
            num = eps2 + (sigma**2 + 1) * float(ref.square().sum()) / omega
            out[form] = 0.25 * float(torch.log(num / den).sum()) + tail
    return out
