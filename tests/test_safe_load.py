"""Checkpoints are read with weights_only=True: a file whose pickle would run code is refused
with a message naming it and --unsafe-load / unsafe=True, and that code never runs."""

from __future__ import annotations

import pytest
import torch

from camgap.cli import main
from camgap.data.synthetic import write_synthetic
from camgap.models import CheckpointError, create_model, load_checkpoint


class _CreatesFile:
    """Unpickling this calls open(marker, "w"): a file appears if the pickle's code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil(tmp_path):
    """A real checkpoint (state_dict of a small_resnet, 3 classes) with a code-running extra entry."""
    torch.manual_seed(0)
    model = create_model("small_resnet", num_classes=3, width=4)
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": model.state_dict(), "note": _CreatesFile(str(marker))}, path)
    return path, marker, model


def test_refused_by_default_and_the_code_never_runs(evil):
    path, marker, _ = evil
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path, "small_resnet", 3, width=4)
    msg = str(exc.value)
    assert str(path) in msg and "refused to load" in msg and "io.open" in msg
    assert "--unsafe-load" in msg and "unsafe=True" in msg and "trust" in msg
    assert not marker.exists()


def test_unsafe_load_runs_the_pickle_with_a_warning(evil):
    """The control: the payload is live, so the refusal above is what kept the marker away."""
    path, marker, model = evil
    with pytest.warns(UserWarning, match=r"weights_only=False \(--unsafe-load\).*arbitrary code"):
        loaded = load_checkpoint(path, "small_resnet", 3, width=4, unsafe=True)
    assert marker.exists()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_cli_refuses_with_one_line_and_rc_2(evil, tmp_path, capsys):
    path, marker, _ = evil
    data = write_synthetic(tmp_path / "d", seed=1, classes=3, train_per_class=1, test_per_class=1, size=32)
    rc = main(
        [
            "score",
            "--checkpoint",
            str(path),
            "--data",
            str(data),
            "--arch",
            "small_resnet",
            "--width",
            "4",
            "--input-size",
            "32",
            "--device",
            "cpu",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("camgap: error: ")
    assert str(path) in err and "refused to load" in err and "--unsafe-load" in err
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5])
def test_a_truncated_checkpoint_is_a_checkpoint_error_naming_it(evil, tmp_path, keep):
    """Whatever torch raises on a short file (EINVAL for a seek before the start, a zip error), score
    and predict get one CheckpointError naming the file: only a full or failing disk stays an OSError."""
    path, _, _ = evil
    short = tmp_path / "short.pt"
    data = path.read_bytes()
    short.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(short, "small_resnet", 3, width=4)
    assert str(short) in str(exc.value) and "cannot read checkpoint" in str(exc.value)


def test_a_disk_error_stays_an_oserror(evil, monkeypatch):
    import errno

    path, _, _ = evil

    def full_disk(*a, **k):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch, "load", full_disk)
    with pytest.raises(OSError) as exc:
        load_checkpoint(path, "small_resnet", 3, width=4)
    assert not isinstance(exc.value, CheckpointError) and exc.value.errno == errno.EIO
