"""The source models the package ships for its demo grid: what they record, and that a build
starts from them instead of training, saying so."""

import dataclasses

import pytest
import torch

from camgap.models import create_model
from camgap.zoo.grid import load_grid
from camgap.zoo.pretrained import (
    PACKAGED_SOURCE_DIR,
    ensure_source_models,
    load_pretrained_backbone,
    packaged_source_model,
)


class _NoTraining:
    """An executor that fails if anything is submitted: a packaged model must not be retrained."""

    capacity = 2

    def submit(self, task):
        raise AssertionError(f"{task.run_id} was trained although the package ships it")


@pytest.mark.parametrize("arch", sorted(load_grid("demo").wants_pretrained()))
def test_the_demo_grid_has_a_packaged_source_model_that_learned_its_task(arch):
    grid = load_grid("demo")
    path = packaged_source_model(grid, arch)
    assert path is not None, f"no {arch}-{grid.source_task_key(arch)}.pt in {PACKAGED_SOURCE_DIR}"
    obj = torch.load(path, map_location="cpu", weights_only=True)
    task, result = obj["source_task"], obj["result"]
    assert task["key"] == grid.source_task_key(arch)
    assert task["pretrain"] == grid.pretrain.to_dict()
    assert obj["arch"] == arch and obj["arch_kwargs"] == grid.arch_options[arch]
    # issue 17: a real pretraining, >= 80 % training accuracy on the source task, as its history says
    assert result["status"] == "done" and result["train_acc"] >= 0.8
    assert obj["history"][-1]["train_acc"] == result["train_acc"]
    assert len(obj["history"]) == result["epochs"] <= grid.pretrain.epochs
    model = create_model(arch, 6, **grid.arch_options[arch])
    load_pretrained_backbone(model, path)
    assert torch.equal(model.conv1.weight, obj["model_state_dict"]["conv1.weight"])


def test_a_build_copies_the_packaged_model_and_says_what_it_is(tmp_path):
    grid = load_grid("demo")
    lines = []
    paths = ensure_source_models(grid, tmp_path, _NoTraining(), log=lines.append)
    assert len(paths) == len(grid.wants_pretrained()) == len(lines)
    for path, line in zip(paths, lines, strict=True):
        arch = path.name.split("-")[0]
        src = packaged_source_model(grid, arch)
        assert path.read_bytes() == src.read_bytes()
        assert line.startswith(f"source task {arch}: the packaged source model {src.name} (")
        assert "train acc 0." in line and str(path) in line


def test_another_source_task_has_no_packaged_model():
    grid = load_grid("demo")
    other = dataclasses.replace(grid, pretrain=dataclasses.replace(grid.pretrain, epochs=grid.pretrain.epochs + 1))
    for arch in grid.wants_pretrained():
        assert packaged_source_model(other, arch) is None
