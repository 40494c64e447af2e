"""The probe of the target layer's map (`camgap.measures.mapsize`): a model whose own forward
fails on the input size tried is one line naming the checkpoint, the size and its message."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from camgap.cli import main
from camgap.data.synthetic import write_synthetic
from camgap.errors import InputError
from camgap.measures.mapsize import ModelRefusedInputError, check_map_size

SIZE = 32


class SizeAsserting(nn.Module):
    """Takes 32 x 32 images only, as a model built for one size asserts on its input."""

    def __init__(self, error: type[Exception] = AssertionError, message: str = "input must be 32x32"):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.error, self.message = error, message

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (SIZE, SIZE):
            raise self.error(self.message)
        return self.fc(self.conv(x).mean((2, 3)))


def test_a_model_that_raises_on_the_size_is_one_input_error():
    model = SizeAsserting().train()
    assert check_map_size(model, model.conv, "conv", SIZE) == (SIZE, SIZE)
    with pytest.raises(ModelRefusedInputError) as caught:
        check_map_size(model, model.conv, "conv", 64, where="model.pt")
    assert isinstance(caught.value, InputError) and caught.value.input_size == 64
    assert str(caught.value) == (
        "model.pt: the model fails on a 64x64 input of zeros (AssertionError: input must be 32x32); "
        "if it takes images of another size only, give --input-size that size"
    )
    assert model.training and not model.conv._forward_hooks  # its mode back, the hook gone
    silent = SizeAsserting(RuntimeError, "")
    with pytest.raises(InputError, match=r"^the model fails on a 48x48 input of zeros \(RuntimeError\); if it takes"):
        check_map_size(silent, silent.conv, "conv", 48)


def test_score_says_it_in_one_line(capsys, tmp_path):
    data = write_synthetic(tmp_path / "data", seed=1, classes=3, train_per_class=1, test_per_class=1, size=SIZE)
    path = tmp_path / "sized.pt"
    torch.save(SizeAsserting(), path)
    args = ["score", "--checkpoint", path, "--data", data, "--layout", "csv", "--layer", "conv", "--unsafe-load"]
    args += ["--device", "cpu", "--no-progress"]
    capsys.readouterr()
    with pytest.warns(UserWarning, match="weights_only=False"):
        assert main([str(a) for a in [*args, "--input-size", 64]]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (
        f"camgap: error: {path}: the model fails on a 64x64 input of zeros (AssertionError: input must be "
        "32x32); if it takes images of another size only, give --input-size that size\n"
    )
    with pytest.warns(UserWarning, match="weights_only=False"):
        assert main([str(a) for a in [*args, "--input-size", SIZE, "--json"]]) == 0
    assert json.loads(capsys.readouterr().out)["target_map"] == [SIZE, SIZE]
