"""Pretrained starting weights for `pretrained = true` runs.

* torchvision ResNets: the ImageNet weights (IMAGENET1K_V1, the paper's era) from the local
  torch hub cache, ``torch.hub.get_dir()/checkpoints/<torchvision's file name>`` (for
  example ``resnet18-f37072fd.pth``), or a file given in the grid
  (``[train] pretrained_weights = { resnet18 = "/path/file.pth" }``). Nothing is downloaded:
  a missing file is an error before the sweep, naming where to put it.
* ``small_resnet``: a "source task" model, trained once per model set on the synthetic
  dataset's disjoint source classes (``write_synthetic(class_set="source")``) with the
  grid's ``[pretrain]`` settings, and cached as ``ZOO/pretrained/small_resnet-<key>.pt``
  (``key`` hashes the architecture options and the pretraining settings). Offline. The
  package ships the source models of its own grids (``camgap/grids/source/<arch>-<key>.pt``,
  made by ``python -m camgap.zoo.ship_source --grid demo``): a grid with the same key starts
  from those, the same bytes on every machine, as torchvision's ImageNet weights are for the
  paper's ResNets; any other key trains its source model in the build.

A run loads the pretrained weights into its model except the final ``fc`` layer, which
keeps its seeded random initialisation for the target classes. Weights files are read with
``torch.load(weights_only=True)``: a file holding pickled objects (a whole saved model
rather than its state_dict) is refused with an error naming it, never executed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from camgap.errors import CamgapError, StateError
from camgap.zoo.config import RunConfig, Task
from camgap.zoo.grid import TORCHVISION_WEIGHTS, Grid

__all__ = [
    "PretrainedWeightsError",
    "TORCHVISION_WEIGHTS",
    "torchvision_weights_url",
    "torchvision_weights_filename",
    "pretrained_paths",
    "source_model_path",
    "ensure_source_models",
    "source_task_archs",
    "load_pretrained_backbone",
]

HEAD_KEYS = ("fc.weight", "fc.bias")


class PretrainedWeightsError(CamgapError, FileNotFoundError):
    """Pretrained weights a grid asks for cannot be found."""


def torchvision_weights_url(arch: str) -> str:
    """Where torchvision downloads the ImageNet (V1) weights of ``arch`` from."""
    from torchvision import models as tvm

    return getattr(tvm, TORCHVISION_WEIGHTS[arch]).IMAGENET1K_V1.url


def torchvision_weights_filename(arch: str) -> str:
    """The file name torch hub stores those weights under (e.g. ``resnet18-f37072fd.pth``)."""
    return torchvision_weights_url(arch).rsplit("/", 1)[-1]


PACKAGED_SOURCE_DIR = Path(__file__).resolve().parent.parent / "grids" / "source"


def source_model_path(grid: Grid, arch: str, zoo_dir: str | Path) -> Path:
    return Path(zoo_dir) / "pretrained" / f"{arch}-{grid.source_task_key(arch)}.pt"


def packaged_source_model(grid: Grid, arch: str) -> Path | None:
    """The packaged source model of ``arch`` for this grid's source-task key, if the package has one."""
    path = PACKAGED_SOURCE_DIR / f"{arch}-{grid.source_task_key(arch)}.pt"
    return path if path.is_file() else None


def _use_packaged(grid: Grid, arch: str, path: Path, log) -> bool:
    """Copy the packaged source model of ``arch`` to ``path`` when the package has one for this
    key (checked against the key the file records); say what it is."""
    from camgap.checkpoints import read_checkpoint
    from camgap.zoo.files import atomic_save

    src = packaged_source_model(grid, arch)
    if src is None:
        return False
    obj = read_checkpoint(src)
    key = obj.get("source_task", {}).get("key")
    if key != grid.source_task_key(arch):
        raise StateError(f"{src}: packaged source model records key {key!r}, not its file name's")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(obj, path)
    r = obj["result"]
    log(
        f"source task {arch}: the packaged source model {src.name} ({r['epochs']} epochs, stop "
        f"{r['stop_reason']}, train acc {r['train_acc']:.3f}, test acc {r['test_acc']:.3f}) -> {path}"
    )
    return True


def pretrained_paths(grid: Grid, zoo_dir: str | Path) -> dict[str, str]:
    """Weights file per architecture that some run trains from pretrained weights.

    Raises PretrainedWeightsError (listing every missing file and where to put it) before
    anything trains. Source-task models of small_resnet are returned even when not built
    yet (``ensure_source_models`` builds them)."""
    given = grid.train.pretrained_weights
    paths: dict[str, str] = {}
    missing: list[str] = []
    for arch in sorted(grid.wants_pretrained()):
        if arch in given:
            p = Path(given[arch]).expanduser()
            if not p.is_file():
                missing.append(f"  {arch}: {p} (from [train] pretrained_weights in {grid.source}) does not exist")
            paths[arch] = str(p.resolve())
        elif arch.startswith("small_resnet"):
            paths[arch] = str(source_model_path(grid, arch, zoo_dir).resolve())
        elif arch in TORCHVISION_WEIGHTS:
            url = torchvision_weights_url(arch)
            name = url.rsplit("/", 1)[-1]
            p = Path(torch.hub.get_dir()) / "checkpoints" / name
            if not p.is_file():
                missing.append(
                    f"  {arch}: put {name} (from {url}) at {p}, or set "
                    f'[train] pretrained_weights = {{ {arch} = "/path/{name}" }}'
                )
            paths[arch] = str(p)
        else:
            missing.append(
                f"  {arch}: no known pretrained weights; set [train] pretrained_weights = "
                f'{{ {arch} = "/path/weights.pt" }}'
            )
    if missing:
        raise PretrainedWeightsError(
            "the grid asks for pretrained weights that are not available (nothing is downloaded):\n"
            + "\n".join(missing)
        )
    return paths


def load_pretrained_backbone(model: nn.Module, path: str | Path) -> nn.Module:
    """Load every weight of ``path`` except the classifier head (fc) into ``model``, strictly."""
    from camgap.models import CheckpointError, extract_state_dict, read_checkpoint

    path = Path(path)
    try:
        obj = read_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"pretrained weights: {exc} (save the model's state_dict with torch.save)") from None
    state = {k: v for k, v in extract_state_dict(obj, path).items() if k not in HEAD_KEYS}
    own = model.state_dict()
    missing = sorted(set(own) - set(state) - set(HEAD_KEYS))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        raise CheckpointError(
            f"{path}: pretrained weights do not match the architecture: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatch {shape[:5]}"
        )
    model.load_state_dict(state, strict=False)
    return model


def source_task_config(grid: Grid, arch: str) -> RunConfig:
    """The config of the run that pretrains ``arch`` on the synthetic source task (in this key
    order: its checkpoints store it as written, and the shipped source models hold this order)."""
    p, t = grid.pretrain, grid.train
    return RunConfig.from_dict(
        {
            "arch": arch,
            "arch_options": grid.arch_options.get(arch, {}),
            "batch_size": p.batch_size,
            "lr": p.lr,
            "optimizer": p.optimizer,
            "weight_decay": p.weight_decay,
            "augment": p.augment,
            "pretrained": False,
            "trained": True,
            "max_epochs": p.epochs,
            "threads": t.threads,
            "loss_threshold": t.loss_threshold,
            "acc_threshold": t.acc_threshold,
            "momentum": t.momentum if p.optimizer == "sgd" else None,
            "flip_prob": t.flip_prob,
            "jitter": t.jitter,
            "input_size": t.input_size,
            "resize": t.resize,
            "mean": t.mean,
            "std": t.std,
            "pretrained_source": None,
        }
    )


def source_task_archs(grid: Grid) -> list[str]:
    """The architectures whose `pretrained = true` runs start from a source-task model: the
    small_resnet ones without a weights file in ``[train] pretrained_weights``."""
    given = grid.train.pretrained_weights
    return [a for a in sorted(grid.wants_pretrained()) if a.startswith("small_resnet") and a not in given]


def ensure_source_models(grid: Grid, zoo_dir: str | Path, executor, log=print, packaged: bool = True) -> list[Path]:
    """Train the missing source-task models (small_resnet* with pretrained = true and no
    explicit weights file) on the sweep's executor, side by side; return their paths. A model
    the package ships for the same key is copied instead (``packaged=False``: train it anyway)."""
    from camgap.data.layouts import read_layout
    from camgap.data.synthetic import write_synthetic
    from camgap.models import read_checkpoint
    from camgap.zoo.files import atomic_save, prepare_split

    out, pending = [], []
    for arch in source_task_archs(grid):
        path = source_model_path(grid, arch, zoo_dir)
        out.append(path)
        if path.is_file() or (packaged and _use_packaged(grid, arch, path, log)):
            continue
        key = grid.source_task_key(arch)
        work = Path(zoo_dir) / "pretrained" / f"{arch}-{key}"
        p = grid.pretrain
        size = max(16, int(grid.train.input_size))
        log(
            f"pretraining {arch} on the synthetic source task ({p.classes} classes, "
            f"{p.train_per_class} images per class, up to {p.epochs} epochs) -> {path}"
        )
        data_dir = write_synthetic(
            work / "data",
            seed=p.seed,
            classes=p.classes,
            train_per_class=p.train_per_class,
            test_per_class=p.test_per_class,
            size=size,
            class_set="source",
        )
        t, r = grid.train.input_size, grid.train.resize
        train_records, classes = read_layout(data_dir, "csv", "train")
        test_records, _ = read_layout(data_dir, "csv", "test")
        task = Task(
            f"source-{arch}-{key}",
            source_task_config(grid, arch),
            p.seed,
            0,
            str(work / "run"),
            prepare_split(train_records, classes, work / "cache" / "train", t, r),
            prepare_split(test_records, classes, work / "cache" / "test", t, r),
            len(classes),
            tuple(classes),
            eval_batch_size=grid.train.eval_batch_size,
        )
        pending.append((task, path, work, key, classes))

    queue, inflight = list(pending), {}
    while queue or inflight:
        while queue and len(inflight) < executor.capacity:
            item = queue.pop(0)
            executor.submit(item[0])
            inflight[item[0].run_id] = item
        for result in executor.wait():
            task, path, work, key, classes = inflight.pop(result.run_id)
            if result.status != "done":
                raise StateError(f"pretraining on the synthetic source task failed ({task.run_id}): {result.error}")
            log(
                f"source task {task.config.arch}: {result.epochs} epochs, stop {result.stop_reason}, "
                f"train acc {result.train_acc:.3f}, test acc {result.test_acc:.3f}"
            )
            final = read_checkpoint(work / "run" / "final.pt")
            final["source_task"] = {"key": key, "pretrain": grid.pretrain.to_dict(), "classes": classes}
            atomic_save(final, path)
            shutil.rmtree(work / "cache", ignore_errors=True)
    return out
