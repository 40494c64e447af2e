"""Typed configuration of the model-set pipeline: what a grid's tables hold, what one run is, what a
worker is given and what it hands back.

* ``TrainConfig`` / ``PretrainConfig``: a grid's ``[train]`` and ``[pretrain]`` tables, with their
  defaults; each field declares its check beside it (``metadata["check"]``), run in one loop by
  ``from_dict``, which raises ``GridError`` naming the key and what is allowed.
* ``RunConfig``: one run's config, the dict that run ids are hashed from and that ``config.json``,
  the checkpoints and the registry store.
* ``Task`` (one run for a worker), ``Pack`` (runs that train together) and ``RunResult`` (what
  comes back; the ``result`` that ``final.pt`` stores).

Stored forms. ``RunConfig`` and ``RunResult`` read back from disk remember which keys were stored,
in which order (``stored_keys``), and ``to_dict`` writes exactly those: a config read back
serialises to the bytes it was read from, so its run id holds whatever fields camgap adds to the
class. Frozen dataclasses pickle, so tasks travel to worker processes and Ray as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from camgap.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, RESIZE_MODES
from camgap.errors import CamgapError
from camgap.options import Wording, field_checks, integer, number
from camgap.options import option as _field

__all__ = [
    "TrainConfig",
    "PretrainConfig",
    "RunConfig",
    "RunResult",
    "Task",
    "Pack",
    "check_pack",
    "GridError",
    "PackMismatchError",
]

OPTIMIZERS = ("sgd", "adam")
# auto: bf16 where the device computes it natively; resolved once per model set, before its runs start
PRECISIONS = ("fp32", "bf16", "auto")


class GridError(CamgapError, ValueError):
    """A grid file that cannot be used; the message names the key and what is allowed."""


# --- value checks: each takes (where, value) and returns the value as stored ------------


# a grid file's refusals name the file, table and key first: "g.toml: [train] threads: expected ..."
_GRID_WORDS = Wording(
    GridError, "{name}: expected {what}, got {value!r}", outside="{name}: {value!r} is outside {interval}"
)


def _int(where: str, v: Any, lo: int | None = None) -> int:
    return integer(where, v, lo, words=_GRID_WORDS)


def _float(where: str, v: Any, lo: float | None = None, hi: float | None = None, lo_open=False, hi_open=False) -> float:
    return number(where, v, lo, hi, open_low=lo_open, open_high=hi_open, words=_GRID_WORDS)


def _bool(where: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise GridError(f"{where}: expected true or false, got {v!r}")
    return v


def _choice(where: str, v: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v.lower() not in choices:
        raise GridError(f"{where}: {v!r} is not one of {', '.join(choices)}")
    return v.lower()


def _arch(where: str, v: Any) -> str:
    """A name `camgap.models.create_model` knows (camgap's, torchvision's, ``timm:<name>``), as written."""
    from camgap.models import MODELS

    if not isinstance(v, str) or v not in MODELS:
        raise GridError(f"{where}: unknown architecture {v!r}; `camgap models` lists the known names")
    return v


def _triple(where: str, v: Any, positive: bool) -> list[float]:
    if not isinstance(v, list) or len(v) != 3:
        raise GridError(f"{where}: expected a list of 3 numbers (R, G, B), got {v!r}")
    return [_float(f"{where}[{i}]", x, 0.0, lo_open=positive) for i, x in enumerate(v)]


def _weights_files(where: str, v: Any) -> dict[str, str]:
    """``{arch = "path"}``: pretrained weights files by architecture."""
    if not isinstance(v, dict):
        raise GridError(f'{where}: expected a table {{arch = "path"}}, got {v!r}')
    for arch, path in v.items():
        _arch(f"{where} key", arch)
        if not isinstance(path, str) or not path:
            raise GridError(f"{where}.{arch}: expected a file path, got {path!r}")
    return dict(v)


def _unknown(where: str, keys, allowed) -> None:
    bad = sorted(set(keys) - set(allowed))
    if bad:
        raise GridError(f"{where}: unknown key(s) {', '.join(map(repr, bad))}; allowed: {', '.join(allowed)}")


def _checked(cls: type, raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``raw``'s values, each through the check its field declares (GridError on the first bad one)."""
    declared = {k: check for k, check in field_checks(cls).items() if k != "stored_keys"}
    _unknown(where, raw, declared)
    return {k: (declared[k](f"{where} {k}", v) if declared[k] else v) for k, v in raw.items()}


# --- the grid's tables ------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """A grid's ``[train]`` table: scalars shared by every run (``camgap.zoo.grid`` documents them)."""

    max_epochs: int = _field(150, lambda w, v: _int(w, v, 1))
    loss_threshold: float = _field(0.1, lambda w, v: _float(w, v, 0.0, lo_open=True))
    acc_threshold: float = _field(0.95, lambda w, v: _float(w, v, 0.0, 1.0, lo_open=True))
    input_size: int = _field(224, lambda w, v: _int(w, v, 8))
    resize: str = _field("resize", lambda w, v: _choice(w, v, RESIZE_MODES))
    momentum: float = _field(0.9, lambda w, v: _float(w, v, 0.0, 1.0, hi_open=True))
    mean: list[float] = _field(check=lambda w, v: _triple(w, v, positive=False), factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = _field(check=lambda w, v: _triple(w, v, positive=True), factory=lambda: list(IMAGENET_STD))
    flip_prob: float = _field(0.5, lambda w, v: _float(w, v, 0.0, 1.0))
    jitter: float = _field(0.4, lambda w, v: _float(w, v, 0.0, 1.0))
    threads: int = _field(1, lambda w, v: _int(w, v, 1))
    pack: int | str = _field(1, lambda w, v: v if v == "auto" else _int(w, v, 1))
    precision: str = _field("fp32", lambda w, v: _choice(w, v, PRECISIONS))
    channels_last: bool = _field(False, _bool)
    eval_batch_size: int = _field(256, lambda w, v: _int(w, v, 1))
    pretrained_weights: dict[str, str] = _field(check=_weights_files, factory=dict)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "[train]") -> TrainConfig:
        """The validated table (defaults for the keys it leaves out)."""
        return cls(**_checked(cls, raw, where))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class PretrainConfig:
    """A grid's ``[pretrain]`` table: the synthetic source task that pretrains small_resnet."""

    classes: int = _field(12, lambda w, v: _int(w, v, 2))
    train_per_class: int = _field(100, lambda w, v: _int(w, v, 1))
    test_per_class: int = _field(20, lambda w, v: _int(w, v, 1))
    seed: int = _field(0, lambda w, v: _int(w, v, 0))
    epochs: int = _field(20, lambda w, v: _int(w, v, 1))
    batch_size: int = _field(32, lambda w, v: _int(w, v, 1))
    lr: float = _field(1.25e-3, lambda w, v: _float(w, v, 0.0, lo_open=True))
    optimizer: str = _field("adam", lambda w, v: _choice(w, v, OPTIMIZERS))
    weight_decay: float = _field(0.0, lambda w, v: _float(w, v, 0.0))
    augment: bool = _field(True, _bool)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "[pretrain]") -> PretrainConfig:
        return cls(**_checked(cls, raw, where))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --- one run ----------------------------------------------------------------------------


def _changed(obj: Any, f: Field) -> bool:
    default = f.default_factory() if f.default is MISSING else f.default
    return f.name != "stored_keys" and getattr(obj, f.name) != default


def _stored(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.stored_keys}


def _from_stored(cls: type, d: Mapping[str, Any], where: str) -> Any:
    allowed = {f.name for f in fields(cls)} - {"stored_keys"}
    bad = sorted(set(d) - allowed)
    if bad:
        raise InvalidStoredError(f"{where}: unknown key(s) {', '.join(map(repr, bad))}")
    return cls(**d, stored_keys=tuple(d))


class InvalidStoredError(CamgapError, ValueError):
    """A stored run config or result with keys camgap does not know (written by another version)."""


@dataclass(frozen=True)
class RunConfig:
    """One run: its grid values (each field of ``[grid]`` with the check ``parse_grid`` runs on it),
    the ``[train]`` settings that change its training, and whether it trains at all. An untrained
    model (validity test) has no hyperparameters: those fields are None. ``pack``, ``grid_seed``,
    ``precision`` and ``channels_last`` are stored only where they differ from their defaults."""

    arch: str = _field(None, _arch)
    batch_size: int | None = _field(None, lambda w, v: _int(w, v, 1))
    lr: float | None = _field(None, lambda w, v: _float(w, v, 0.0, lo_open=True))
    optimizer: str | None = _field(None, lambda w, v: _choice(w, v, OPTIMIZERS))
    weight_decay: float | None = _field(None, lambda w, v: _float(w, v, 0.0))
    augment: bool | None = _field(None, _bool)
    pretrained: bool = _field(False, _bool)
    trained: bool = True
    arch_options: dict[str, Any] = field(default_factory=dict)
    input_size: int | None = None
    resize: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    max_epochs: int | None = None
    threads: int | None = None
    loss_threshold: float | None = None
    acc_threshold: float | None = None
    momentum: float | None = None  # SGD only
    flip_prob: float | None = None  # with augment only
    jitter: float | None = None
    pretrained_source: str | None = None
    pack: int | None = None
    grid_seed: int | None = None
    precision: str | None = None
    channels_last: bool | None = None
    stored_keys: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "run config") -> RunConfig:
        """A config as ``to_dict`` wrote it (a grid's, or one read back from a model set)."""
        return _from_stored(cls, d, where)

    def to_dict(self) -> dict[str, Any]:
        """The stored form: the keys it was read from, in their order (run ids hash it), then each
        other field that differs from its default (one set by ``dataclasses.replace``; for a config
        made without ``from_dict``, every field it was given)."""
        changed = [f.name for f in fields(self) if f.name not in self.stored_keys and _changed(self, f)]
        return {k: getattr(self, k) for k in (*self.stored_keys, *changed)}


@dataclass(frozen=True)
class Task:
    """What a worker is given to train (or evaluate, untrained) one run: its config and seed, its
    directory, the decoded splits (``prepare_split`` cache directories) and where it computes.
    ``device`` and ``threads`` are filled in by the executor."""

    run_id: str
    config: RunConfig
    seed: int
    repeat: int | None
    run_dir: str
    train_data: str
    test_data: str
    num_classes: int
    classes: tuple[str, ...] = ()
    pretrained_path: str | None = None  # weights a pretrained run starts from
    eval_batch_size: int = 256
    keep_last: bool = False
    device: str = "cpu"
    threads: int = 1

    def failure(self, status: str, error: str, worker_died: bool = False) -> RunResult:
        """Its result when the executor, not the run, ended it (a dead worker, an unpicklable result)."""
        return RunResult(self.run_id, status, error=error, worker_died=worker_died)


@dataclass(frozen=True)
class Pack:
    """Runs that train together as one computation (``camgap.zoo.packed``), under the pack's id."""

    pack_id: str
    runs: tuple[Task, ...]
    device: str = "cpu"
    threads: int = 1

    @property
    def run_id(self) -> str:
        """The key executors track every piece of work by (``executors.Work``): for a pack, its pack id."""
        return self.pack_id

    def failure(self, status: str, error: str, worker_died: bool = False) -> RunResult:
        return RunResult(self.pack_id, status, error=error, worker_died=worker_died)


class PackMismatchError(CamgapError, ValueError):
    """Runs given to train together that cannot: the message names the field they differ in."""


# what a pack computes once for all its runs: the network's shape, the batches, the arithmetic, the data
PACK_SHARED_CONFIG = ("arch", "arch_options", "batch_size", "precision", "channels_last", "threads")
PACK_SHARED_TASK = ("train_data", "test_data", "eval_batch_size")


def check_pack(tasks: Sequence[Task]) -> None:
    """``PackMismatchError`` naming the first field in which a task differs from the first one, or
    a precision still "auto" (resolved before a run starts, so that its id names it)."""
    first = tasks[0]
    for t in tasks:
        if t.config.precision == "auto":
            raise PackMismatchError(
                f"run {t.run_id}: precision = 'auto' was not resolved to fp32 or bf16 before the run started"
            )
        for name in PACK_SHARED_CONFIG:
            if getattr(t.config, name) != getattr(first.config, name):
                raise PackMismatchError(_differ(first, t, name, getattr(first.config, name), getattr(t.config, name)))
        for name in PACK_SHARED_TASK:
            if getattr(t, name) != getattr(first, name):
                raise PackMismatchError(_differ(first, t, name, getattr(first, name), getattr(t, name)))


def _differ(first: Task, other: Task, name: str, a: Any, b: Any) -> str:
    return (
        f"runs {first.run_id} and {other.run_id} cannot train in one pack: {name} differs "
        f"({a!r} vs {b!r}); a pack's runs share arch, arch_options, batch_size, precision, channels_last, "
        "threads and data"
    )


# the keys of a stored result, in the order final.pt holds them (its bytes depend on it)
RESULT_KEYS = (
    "run_id",
    "status",
    "trained",
    "epochs",
    "stop_reason",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "gap",
    "wall_time",
    "resumed_from",
    "pack_size",
    "precision",
    "pack_wall_time",
)


@dataclass(frozen=True)
class RunResult:
    """What comes back for a task. ``status``: ``done`` (with the metrics), ``failed`` (the run's own
    failure), ``storage`` (a full or failing disk), ``lost`` (stopped by a dead worker;
    ``worker_died`` whether it was its own) or ``pack`` (``results``: one per run of a pack).
    ``warnings``: checkpoints set aside on the way. Accuracies are fractions, ``gap`` in percentage
    points. ``wall_time``: the run's share of its training seconds (a pack's epoch divided among the
    runs that trained in it), summed over resumes; ``pack_wall_time``: its pack's seconds while the
    run was in it (``wall_time`` for a run trained alone)."""

    run_id: str
    status: str
    error: str | None = None
    worker_died: bool = False
    trained: bool | None = None
    epochs: int | None = None
    stop_reason: str | None = None
    train_loss: float | None = None
    train_acc: float | None = None
    test_loss: float | None = None
    test_acc: float | None = None
    gap: float | None = None
    wall_time: float | None = None
    resumed_from: int | None = None
    pack_size: int | None = None
    precision: str | None = None
    pack_wall_time: float | None = None
    warnings: tuple[str, ...] = ()
    results: tuple[RunResult, ...] = ()
    stored_keys: tuple[str, ...] = field(default=RESULT_KEYS, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "run result") -> RunResult:
        """A result as ``final.pt`` stores it."""
        return _from_stored(cls, d, where)

    def to_dict(self) -> dict[str, Any]:
        """The stored form (``final.pt``'s ``result``)."""
        return _stored(self)
