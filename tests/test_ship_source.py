"""`python -m camgap.zoo.ship_source`: its checks of the grid and the flags come before any
training, and its errors are one line with exit 2, as camgap's. Nothing here trains: the
training step is replaced by a stub that records what it was asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from camgap.machine import max_workers
from camgap.zoo import ship_source

PROG = "python -m camgap.zoo.ship_source"


@pytest.fixture
def trained(monkeypatch) -> list:
    """The grids ship_source would train source models for (nothing is trained or packaged)."""
    calls: list = []

    def stub(grid, zoo_dir, executor, packaged=True):
        calls.append((grid, packaged))
        return []

    monkeypatch.setattr(ship_source, "ensure_source_models", stub)
    return calls


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    ("grid", "problem"),
    [
        ("no-such-grid", "no-such-grid: no such grid file (packaged grids: cpu-small, demo, demo-quick, paper)"),
        ("demo-quick", "demo-quick.toml: no source model to ship: no small_resnet run has pretrained = true"),
        ("paper", "paper.toml: no source model to ship"),  # pretrained ResNet-18s start from ImageNet weights
    ],
)
def test_a_grid_without_source_models_is_refused_in_one_line(capsys, trained, grid, problem):
    assert ship_source.main(["--grid", grid]) == 2
    line = _one_error(capsys)
    assert line.startswith(f"{PROG}: error: ") and problem in line
    assert trained == []


def test_a_grid_file_that_is_not_toml_is_refused_in_one_line(capsys, trained, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("x = [\n")
    assert ship_source.main(["--grid", str(bad)]) == 2
    assert _one_error(capsys).startswith(f"{PROG}: error: {bad}: not valid TOML")
    assert trained == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("-5", "must be 0 (this process) or more, got -5"),
        ("1.5", "not a whole number of processes: '1.5'"),
        (str(max_workers() + 1), f"{max_workers() + 1} processes is more than one per CPU"),
    ],
)
def test_bad_workers_are_usage_errors(capsys, trained, value, problem):
    with pytest.raises(SystemExit) as exc:
        ship_source.main(["--workers", value])
    assert exc.value.code == 2
    assert f"error: argument --workers: {problem}" in capsys.readouterr().err
    assert trained == []


def _grid_without_pretrain(tmp_path: Path) -> Path:
    """cpu-small (pretrained = [true, false]) with its [pretrain] table cut off."""
    text = (Path(ship_source.__file__).parent.parent / "grids" / "cpu-small.toml").read_text(encoding="utf-8")
    path = tmp_path / "nopretrain.toml"
    path.write_text(text[: text.index("[pretrain]")], encoding="utf-8")
    return path


def test_a_grid_without_pretrain_trains_the_defaults_and_says_so(capsys, trained, tmp_path):
    path = _grid_without_pretrain(tmp_path)
    assert ship_source.main(["--grid", str(path), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert f"{path} has no [pretrain] table: the source task's defaults {{'classes': 12," in out
    ((grid, packaged),) = trained
    assert packaged is False and grid.pretrain.classes == 12


def test_ctrl_c_is_one_line_and_130(capsys, monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ship_source, "ensure_source_models", interrupted)
    assert ship_source.main(["--grid", str(_grid_without_pretrain(tmp_path)), "--workers", "0"]) == 130
    assert _one_error(capsys) == f"{PROG}: interrupted; the source models packaged so far are kept"
