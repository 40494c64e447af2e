"""Model sets: train a hyperparameter grid of classifiers with the paper's stopping rules,
resumably, on one machine or a Ray cluster (issue 3).

    config.py      typed settings: [train]/[pretrain] tables, a run's config, a worker's task, its result
    grid.py        grid TOML -> validated Grid -> RunSpecs with stable run ids
    stopping.py    the paper's stopping rules C1-C4 as a pure function of the history
    train.py       one run: tensor-store data on the device, batched augmentation, checkpoints
    registry.py    the SQLite registry (runs, measurements), written by the driver only
    executors.py   in-process, local worker processes, Ray
    pretrained.py  ImageNet weights from the torch cache; the synthetic source task
    build.py       the driver: build / status / export
    cli.py         `camgap zoo build|status|export`
"""

from camgap.zoo.config import Pack, PretrainConfig, RunConfig, RunResult, Task, TrainConfig
from camgap.zoo.grid import Grid, GridError, RunSpec, load_grid, make_run_id, parse_grid
from camgap.zoo.registry import Registry, RegistryError
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
    "Registry",
    "RegistryError",
    "StoppingRules",
    "StopDecision",
    "check_stop",
]
# The driver: camgap.zoo.build.build / status / export (the module name is taken by the file).
