"""Model sets: train a hyperparameter grid of classifiers with the paper's stopping rules,
resumably, on one machine or a Ray cluster (issue 3).

    config.py      typed settings: [train]/[pretrain] tables, a run's config, a worker's task, its result
    grid.py        grid TOML -> validated Grid -> RunSpecs with stable run ids
    stopping.py    the paper's stopping rules C1-C4 as a pure function of the history
    train.py       the run driver (one run or a pack: checkpoints, resume, stopping) and the worker entry
    files.py       a model set's paths, atomic checkpoint/JSON writes, unreadable files set aside
    loop.py        the training loop: resident data, batched augmentation, one epoch, evaluation
    registry.py    ZooDB, the SQLite registry (runs, measurements), written by the driver only
    dbschema.py    the registry file's tables, connection and migrations
    rebuild.py     the registry rebuilt from the run directories
    executors.py   in-process, local worker processes, Ray
    pretrained.py  ImageNet weights from the torch cache; the synthetic source task
    build.py       the driver: build / status / export
    cli.py         `camgap zoo build|status|export`
"""

from camgap.zoo.config import Pack, PretrainConfig, RunConfig, RunResult, Task, TrainConfig
from camgap.zoo.grid import Grid, GridError, RunSpec, load_grid, make_run_id, parse_grid
from camgap.zoo.registry import RegistryError, ZooDB
from camgap.zoo.stopping import StopDecision, StoppingRules, check_stop

__all__ = [
    "Grid",
    "TrainConfig",
    "PretrainConfig",
    "RunConfig",
    "Task",
    "Pack",
    "RunResult",
    "GridError",
    "RunSpec",
    "load_grid",
    "parse_grid",
    "make_run_id",
    "ZooDB",
    "RegistryError",
    "StoppingRules",
    "StopDecision",
    "check_stop",
]
# The driver: camgap.zoo.build.build / status / export (the module name is taken by the file).
