"""Grid files: a TOML hyperparameter grid expanded into runs with stable ids.

A grid file::

    [grid]                      # each key a list of values; the runs are their product
    arch = ["resnet18", "resnet34"]
    batch_size = [16, 32, 64]
    lr = [1.25e-1, 1.25e-3, 1.25e-5]
    optimizer = ["adam", "sgd"]
    weight_decay = [0, 2e-4, 5e-4]
    augment = [true, false]     # random horizontal flip + colour jitter
    pretrained = [true, false]
    repeats = 2                 # an integer: runs per configuration (different seeds)
    sample = 24                 # optional: a seeded random subset of the product's configurations
    untrained = 50              # an integer: randomly initialised models per arch (validity test)

    [train]                     # scalars shared by every run (all optional, defaults below)
    max_epochs = 150            # stopping rule C4
    loss_threshold = 0.1        # C1: clean training cross-entropy below this
    acc_threshold = 0.95        # C2: clean training accuracy above this
    input_size = 224
    resize = "resize"           # or "resize_crop"
    momentum = 0.9              # SGD only
    mean = [0.485, 0.456, 0.406]
    std = [0.229, 0.224, 0.225]
    flip_prob = 0.5             # augmentation: horizontal flip probability
    jitter = 0.4                # augmentation: brightness/contrast/saturation strength
    threads = 1                 # torch intra-op threads of each run (part of its id: see below)
    eval_batch_size = 256       # execution only: does not change a run's id
    pretrained_weights = { resnet18 = "/path/resnet18-f37072fd.pth" }   # execution only

    [arch_options.small_resnet] # keyword arguments of camgap.models.create_model per arch
    width = 8
    blocks = [1, 1, 1, 1]

    [pretrain]                  # the synthetic "source task" that pretrains small_resnet
    epochs = 20
    ...

Every key and value is validated (``GridError`` names the file, the key and what is
allowed) before anything trains. Grid keys missing from ``[grid]`` take one default value
(``arch`` is required). The run count (configurations x repeats + untrained x archs) comes
from the number of values alone and is checked before anything is expanded: more than
``MAX_RUNS`` (``max_runs``; ``zoo build --max-runs``) is a ``GridError`` naming the count.

Run identity: a run's *config* is the JSON-canonical dict (sorted keys, floats as floats)
of its grid values plus every setting that changes its training; ``run_id`` is the first
16 hex digits of sha256 over the canonical config and the repeat index, and the run's
seed is derived from ``run_id``. The same grid therefore always yields the same ids, and
building it twice trains nothing twice. ``[train] precision = "auto"`` is resolved to fp32 or bf16
before a model set's first run starts (``Grid.with_precision``), so a run's id names the precision
it computes in.

Reproducibility. A run's weights depend only on its config and seed, never on how many runs
train side by side, the executor or the machine's load: the number of torch intra-op threads
changes how float reductions are split and summed, so it is fixed per run by ``[train]
threads`` (default 1; parallelism comes from running several runs at once, ``--workers``).
Since it changes the weights, ``threads`` is part of every trained run's config and id (an
untrained model's weights are its seeded initialisation, so its id leaves it out). On one
machine a run is then bit-identical whichever executor trains it. Across machines bit-identity
is not possible: different CPUs (Intel, AMD) and GPUs run different kernels (oneDNN, cuDNN pick
them per instruction set), so the last bits of the weights differ while the training is the
same. On a GPU, cuDNN picks algorithms by benchmark unless ``torch.backends.cudnn.deterministic``
and ``torch.use_deterministic_algorithms(True)`` are set, which costs speed; camgap does not set
them.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import sys
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from camgap.options import check_of
from camgap.params import canonical_json
from camgap.zoo.config import GridError, PretrainConfig, RunConfig, TrainConfig, _arch, _int, _unknown
from camgap.zoo.packing import pack_size

__all__ = [
    "GRID_KEYS",
    "MAX_RUNS",
    "TRAIN_DEFAULTS",
    "PRETRAIN_DEFAULTS",
    "GridError",
    "Grid",
    "TORCHVISION_WEIGHTS",
    "RunSpec",
    "canonical_json",
    "make_run_id",
    "seed_from_run_id",
    "load_grid",
    "parse_grid",
    "packaged_grids",
    "resolve_grid_path",
]


# grid key -> default value when the key is absent from [grid] (None = required)
GRID_KEYS: dict[str, Any] = {
    "arch": None,
    "batch_size": 32,
    "lr": 1.25e-3,
    "optimizer": "sgd",
    "weight_decay": 0.0,
    "augment": False,
    "pretrained": False,
}

TRAIN_DEFAULTS: dict[str, Any] = TrainConfig().to_dict()
# how a run computes, not what it studies: left out of ids and fingerprints at their defaults
OPTIONAL_TRAIN_KEYS = ("pack", "precision", "channels_last")
# settings that do not change what a run computes: not part of run ids nor the fingerprint
EXECUTION_ONLY = ("eval_batch_size", "pretrained_weights")

PRETRAIN_DEFAULTS: dict[str, Any] = PretrainConfig().to_dict()

TORCHVISION_PRETRAINED = "torchvision:IMAGENET1K_V1"
# architectures with torchvision ImageNet weights -> their weights enum in torchvision.models
TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
}


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid: its id, config, repeat index and seed. A config given in its stored form
    (a dict, as the registry and config.json hold it) is read into a ``RunConfig``."""

    run_id: str
    config: RunConfig
    repeat: int
    seed: int

    @property
    def trained(self) -> bool:
        return bool(self.config.trained)


SAMPLE_TRIES = 200
# runs a grid may expand to unless the caller allows more (`zoo build --max-runs`): a typo such as
# 1000 values on two keys, or `repeats = 1000000`, is refused before anything is expanded or written
MAX_RUNS = 100_000


def combo_digits(index: int, sizes: Sequence[int]) -> tuple[int, ...]:
    """The value index on each axis of configuration ``index`` of the product of axes of these
    sizes, in ``itertools.product`` order (last axis fastest): mixed-radix decoding, so a
    configuration is found without expanding the product."""
    digits = []
    for size in reversed(sizes):
        index, d = divmod(index, size)
        digits.append(d)
    return tuple(reversed(digits))


def balanced_sample(sizes: Sequence[int], k: int, seed: int = 0) -> list[int]:
    """Indices (into the product of axes of these sizes) of k configurations, as balanced as
    possible over every axis's values: of SAMPLE_TRIES seeded random subsets, the one whose value
    counts are most even (deterministic, so run ids never change). Each try draws k indices of
    ``range(n)`` (which ``random.sample`` does in O(k), never listing the range) and decodes only
    those, so a product of millions costs what a small one does. The draws and the score are those
    of expanding the product: the population is ``range(n)`` either way, and an axis's values are
    distinct (``parse_grid`` refuses duplicates), so counting values is counting digits."""
    n = math.prod(sizes)  # at most sys.maxsize (Grid.check_size): random.sample takes len(range(n))

    def imbalance(idx: list[int]) -> int:
        digits = [combo_digits(i, sizes) for i in idx]
        total = 0
        for axis, size in enumerate(sizes):
            counts: dict[int, int] = {}
            for d in digits:
                counts[d[axis]] = counts.get(d[axis], 0) + 1
            total += max(counts.values()) - (min(counts.values()) if len(counts) == size else 0)
        return total

    tries = range(seed * SAMPLE_TRIES, (seed + 1) * SAMPLE_TRIES)
    return min((sorted(random.Random(t).sample(range(n), k)) for t in tries), key=imbalance)


def _is_torchvision(arch: str) -> bool:
    return arch in TORCHVISION_WEIGHTS


def make_run_id(config: dict, repeat: int) -> str:
    payload = canonical_json({"config": config, "repeat": int(repeat)})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run_seed(config: dict, repeat: int) -> int:
    """A run's seed: from its id without how it computes (pack size, precision, memory layout), so
    a run trained in a pack or in bf16 draws the same initial weights, data order and augmentation
    as the same run trained alone in fp32."""
    return seed_from_run_id(make_run_id({k: v for k, v in config.items() if k not in OPTIONAL_TRAIN_KEYS}, repeat))


def seed_from_run_id(run_id: str) -> int:
    return int(hashlib.sha256(("seed:" + run_id).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


# --- the grid ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    axes: dict[str, tuple]  # GRID_KEYS order -> tuple of values
    repeats: int = 1
    untrained: int = 0
    sample: int | None = None  # keep this many configurations of the product (seeded), or all
    train: TrainConfig = field(default_factory=TrainConfig)
    arch_options: dict = field(default_factory=dict)  # arch -> kwargs
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    source: str = "<grid>"
    seed: int = 0  # another seed draws another sample and other run seeds: the same study, rerun
    max_runs: int = field(default=MAX_RUNS, compare=False)  # a guard of whoever reads it, not the grid

    @property
    def archs(self) -> tuple[str, ...]:
        return self.axes["arch"]

    @property
    def n_product(self) -> int:
        """Configurations of the full product of the [grid] values."""
        return math.prod(len(v) for v in self.axes.values())

    @property
    def n_configs(self) -> int:
        full = self.n_product
        return full if self.sample is None else min(self.sample, full)

    @property
    def n_trained(self) -> int:
        return self.n_configs * self.repeats

    @property
    def n_untrained(self) -> int:
        return self.untrained * len(self.archs)

    def __len__(self) -> int:
        return self.n_trained + self.n_untrained

    def check_size(self) -> None:
        """GridError naming the run count when the grid has more than ``max_runs`` runs, counted
        from the number of values per key alone (nothing is expanded)."""
        n = len(self)
        if n > self.max_runs:
            raise GridError(
                f"{self.source}: {n:,} runs ({self.n_configs:,} configurations x {self.repeats:,} repeats "
                f"+ {self.untrained:,} untrained x {len(self.archs)} architectures) is more than the limit of "
                f"{self.max_runs:,}; use fewer values, `sample = K` in [grid], or raise the limit (--max-runs)"
            )
        if self.n_configs < self.n_product > sys.maxsize:  # random.sample takes len(range(n_product))
            raise GridError(
                f"{self.source}: [grid] sample = {self.sample}: the product has {self.n_product:,} "
                f"configurations, more than can be sampled from (at most {sys.maxsize:,}); use fewer values"
            )

    def wants_pretrained(self) -> set[str]:
        """Architectures that some run trains from pretrained weights."""
        return set(self.archs) if True in self.axes["pretrained"] else set()

    def pretrained_source(self, arch: str) -> str:
        """Identity of the weights a `pretrained = true` run of `arch` starts from."""
        if arch in TORCHVISION_WEIGHTS:
            return TORCHVISION_PRETRAINED
        given = self.train.pretrained_weights
        if arch in given:
            return "file:" + Path(given[arch]).name
        return "synthetic-source:" + self.source_task_key(arch)

    def source_task_key(self, arch: str) -> str:
        """Hash of everything that determines the cached source-task model of `arch`."""
        payload = {
            "arch": arch,
            "arch_options": self.arch_options.get(arch, {}),
            "pretrain": self.pretrain.to_dict(),
            "train": {
                k: getattr(self.train, k)
                for k in (
                    "input_size",
                    "resize",
                    "mean",
                    "std",
                    "flip_prob",
                    "jitter",
                    "momentum",
                    "loss_threshold",
                    "acc_threshold",
                    "threads",
                )
            },
        }
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:12]

    def _shared(self, arch: str) -> dict:
        t = self.train
        return {
            "arch_options": self.arch_options.get(arch, {}),
            "input_size": t.input_size,
            "resize": t.resize,
            "mean": t.mean,
            "std": t.std,
        }

    def run_config(self, values: dict) -> RunConfig:
        """The canonical config of one trained run from one value per grid key, built as its stored
        form: the run id hashes it, key order included, so the order below is part of every id."""
        t = self.train
        cfg = {k: values[k] for k in GRID_KEYS}
        cfg.update(self._shared(values["arch"]))
        cfg.update(
            trained=True,
            max_epochs=t.max_epochs,
            threads=t.threads,
            loss_threshold=t.loss_threshold,
            acc_threshold=t.acc_threshold,
            momentum=t.momentum if values["optimizer"] == "sgd" else None,
            flip_prob=t.flip_prob if values["augment"] else None,
            jitter=t.jitter if values["augment"] else None,
            pretrained_source=self.pretrained_source(values["arch"]) if values["pretrained"] else None,
        )
        pack = self.pack_size(values["arch"])
        if pack > 1:  # packed runs compute in other float order than alone: part of what the run is
            cfg["pack"] = pack
        if self.seed:  # another study of the same grid: other run ids, other seeds
            cfg["grid_seed"] = self.seed
        for key in ("precision", "channels_last"):  # likewise: at their defaults they leave the ids alone
            if getattr(t, key) != TRAIN_DEFAULTS[key]:
                cfg[key] = getattr(t, key)
        return RunConfig.from_dict(cfg)

    def with_precision(self, precision: str) -> Grid:
        """This grid with ``[train] precision = "auto"`` resolved to ``precision`` ("fp32" or "bf16",
        ``zoo.build`` chooses it for the device once per model set): its runs' configs and ids then
        name the precision they compute in, and an fp32 run has the id of one with fp32 written."""
        if self.train.precision != "auto":
            return self
        if precision not in ("fp32", "bf16"):
            raise GridError(f'{self.source}: [train] precision = "auto" resolves to fp32 or bf16, not {precision!r}')
        return replace(self, train=replace(self.train, precision=precision))

    def pack_size(self, arch: str) -> int:
        """Runs of ``arch`` trained together as one computation (``camgap.zoo.packing.pack_size``)."""
        return pack_size(self.train.pack, arch, self.arch_options.get(arch, {}))

    def untrained_config(self, arch: str) -> RunConfig:
        cfg = {k: None for k in GRID_KEYS}
        cfg.update(arch=arch, pretrained=False, trained=False)
        cfg.update(self._shared(arch))
        if self.seed:
            cfg["grid_seed"] = self.seed
        return RunConfig.from_dict(cfg)

    def runs(self) -> list[RunSpec]:
        """Every run: the product of the grid values (in GRID_KEYS order) x repeats, then the
        untrained models (`untrained` per architecture). GridError when there are more than
        ``max_runs`` (checked before anything is expanded)."""
        self.check_size()
        specs: list[RunSpec] = []
        keys = list(self.axes)
        for combo in self._combos():
            cfg = self.run_config(dict(zip(keys, combo)))
            for r in range(self.repeats):
                rid = make_run_id(cfg.to_dict(), r)
                specs.append(RunSpec(rid, cfg, r, run_seed(cfg.to_dict(), r)))
        for arch in self.archs:
            cfg = self.untrained_config(arch)
            for r in range(self.untrained):
                rid = make_run_id(cfg.to_dict(), r)
                specs.append(RunSpec(rid, cfg, r, seed_from_run_id(rid)))
        return specs

    def _combos(self) -> Iterator[tuple]:
        """The configurations, one value per key: the product, or its balanced sample."""
        values = list(self.axes.values())
        if self.n_configs == self.n_product:
            return itertools.product(*values)
        sizes = [len(v) for v in values]
        picked = balanced_sample(sizes, self.n_configs, self.seed)
        return (tuple(v[d] for v, d in zip(values, combo_digits(i, sizes))) for i in picked)

    def canonical(self) -> dict:
        """Everything that defines the model set (execution-only settings left out)."""
        return {
            "grid": {k: list(v) for k, v in self.axes.items()},
            "repeats": self.repeats,
            "untrained": self.untrained,
            "sample": self.sample,
            **({"seed": self.seed} if self.seed else {}),
            "train": {
                k: v
                for k, v in self.train.to_dict().items()
                if k not in EXECUTION_ONLY and not (k in OPTIONAL_TRAIN_KEYS and v == TRAIN_DEFAULTS[k])
            },
            "arch_options": self.arch_options,
            "pretrain": self.pretrain.to_dict()
            if any(not _is_torchvision(a) for a in self.wants_pretrained())
            else None,
        }

    def fingerprint(self) -> str:
        return hashlib.sha256(canonical_json(self.canonical()).encode()).hexdigest()


def parse_grid(doc: dict, source: str = "<grid>", max_runs: int = MAX_RUNS) -> Grid:
    """Validate a parsed TOML document and return the Grid (GridError on any problem, and when
    it has more than ``max_runs`` runs: counted right after the [grid] values are read)."""
    _unknown(source, doc, ("grid", "train", "arch_options", "pretrain"))
    raw = doc.get("grid")
    if not isinstance(raw, dict) or not raw:
        raise GridError(f"{source}: empty grid: a [grid] table with at least `arch = [...]` is required")
    raw = dict(raw)
    repeats = _int(f"{source}: [grid] repeats", raw.pop("repeats", 1), 1)
    untrained = _int(f"{source}: [grid] untrained", raw.pop("untrained", 0), 0)
    sample = raw.pop("sample", None)
    sample = None if sample is None else _int(f"{source}: [grid] sample", sample, 1)
    seed = _int(f"{source}: [grid] seed", raw.pop("seed", 0), 0)
    _unknown(f"{source}: [grid]", raw, [*GRID_KEYS, "repeats", "untrained", "sample", "seed"])
    if "arch" not in raw:
        raise GridError(f"{source}: [grid] needs `arch = [...]` (a list of architecture names)")

    axes: dict[str, tuple] = {}
    for key, default in GRID_KEYS.items():
        values = raw.get(key, [default])
        where = f"{source}: [grid] {key}"
        if not isinstance(values, list):
            raise GridError(f"{where}: expected a list of values, e.g. {key} = [{values!r}]")
        if not values:
            raise GridError(f"{where}: empty list: the grid would have no runs")
        checked = tuple(check_of(RunConfig, key)(f"{where}[{i}]", v) for i, v in enumerate(values))
        if len(set(checked)) != len(checked):
            raise GridError(f"{where}: duplicate values in {values!r}")
        axes[key] = checked
    Grid(axes, repeats, untrained, sample, source=source, max_runs=max_runs).check_size()

    train_raw = doc.get("train", {})
    if not isinstance(train_raw, dict):
        raise GridError(f"{source}: [train] must be a table")
    train = TrainConfig.from_dict(train_raw, f"{source}: [train]")

    opts_raw = doc.get("arch_options", {})
    if not isinstance(opts_raw, dict):
        raise GridError(f"{source}: [arch_options] must be a table of tables, e.g. [arch_options.small_resnet]")
    arch_options: dict[str, dict] = {}
    for arch, opts in opts_raw.items():
        where = f"{source}: [arch_options.{arch}]"
        _arch(where, arch)
        if not isinstance(opts, dict):
            raise GridError(f"{where}: expected a table of keyword arguments")
        if arch not in axes["arch"]:
            raise GridError(f"{where}: {arch!r} is not in [grid] arch = {list(axes['arch'])}")
        _check_arch_options(where, arch, opts)
        arch_options[arch] = dict(opts)

    pre_raw = doc.get("pretrain", {})
    if not isinstance(pre_raw, dict):
        raise GridError(f"{source}: [pretrain] must be a table")
    pretrain = PretrainConfig.from_dict(pre_raw, f"{source}: [pretrain]")

    return Grid(axes, repeats, untrained, sample, train, arch_options, pretrain, source, seed, max_runs)


def _check_arch_options(where: str, arch: str, opts: dict) -> None:
    """Every option checked here (the model built once, on the meta device), not in a worker."""
    from camgap.errors import CamgapError
    from camgap.models import check_model_options

    try:
        check_model_options(arch, opts)
    except CamgapError as exc:
        raise GridError(f"{where}: {exc}") from None


def packaged_grids() -> dict[str, Path]:
    """Grids shipped in the wheel (camgap/grids/*.toml), by stem: `paper`, `cpu-small`."""
    root = resources.files("camgap") / "grids"
    try:
        return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml")}
    except FileNotFoundError:
        return {}


def resolve_grid_path(grid: str | Path) -> Path:
    """A path to a TOML file, or the name of a packaged grid (`paper`, `cpu-small`)."""
    p = Path(grid)
    if p.is_file():
        return p
    shipped = packaged_grids()
    if str(grid) in shipped:
        return shipped[str(grid)]
    names = ", ".join(sorted(shipped)) or "none"
    raise GridError(f"{grid}: no such grid file (packaged grids: {names})")


def load_grid(path: str | Path, max_runs: int = MAX_RUNS) -> Grid:
    """Read and validate a grid file (a path or a packaged grid's name); ``max_runs``: see
    ``parse_grid``."""
    p = resolve_grid_path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise GridError(f"{p}: not valid TOML: {exc}") from None
    return parse_grid(doc, str(p), max_runs)
