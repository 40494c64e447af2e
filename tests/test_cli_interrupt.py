"""Ctrl-C: one line per command saying what it keeps; only the commands that resume say "rerun
the same command to resume" (score says where its rows are, as it starts over)."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch

import camgap.cli as cli
import camgap.measures.score as score_module
from camgap.cli import build_parser, interrupted_note, main
from camgap.cliutil import RESUMABLE
from camgap.data.synthetic import write_synthetic
from camgap.models import create_model

SIZE, N_CLASSES, BATCH = 32, 3, 2
STARTS_OVER = "score does not resume: a rerun scores every image again"


@pytest.fixture(scope="module")
def score_args(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    data = write_synthetic(root / "data", seed=2, classes=N_CLASSES, train_per_class=2, test_per_class=1, size=SIZE)
    torch.manual_seed(0)
    torch.save(create_model("small_resnet", num_classes=N_CLASSES, width=8).state_dict(), root / "model.pt")
    args = ["score", "--checkpoint", root / "model.pt", "--data", data, "--layout", "csv", "--arch", "small_resnet"]
    args += ["--width", 8, "--num-classes", N_CLASSES, "--input-size", SIZE, "--device", "cpu"]
    return [str(a) for a in [*args, "--batch-size", BATCH, "--no-progress"]]


def _interrupt_batch(monkeypatch, at: int) -> None:
    """Ctrl-C as the pass starts its batch number `at` (0: the first)."""
    score_batch, calls = score_module._score_batch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > at:
            raise KeyboardInterrupt
        return score_batch(*args, **kwargs)

    monkeypatch.setattr(score_module, "_score_batch", interrupted)


def _run(capsys, args) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(args)
    return rc, capsys.readouterr().err


def test_score_says_it_starts_over_and_where_the_rows_are(capsys, monkeypatch, score_args, tmp_path):
    table = tmp_path / "rows.csv"
    _interrupt_batch(monkeypatch, 2)
    assert _run(capsys, [*score_args, "--per-image", str(table)]) == (
        130,
        f"camgap: interrupted; {STARTS_OVER}; the rows scored so far are in {table}.partial\n",
    )
    rows = pd.read_csv(f"{table}.partial")
    assert len(rows) == 2 * BATCH and not table.exists()  # the two batches scored, the table not named whole
    assert _run(capsys, score_args) == (130, f"camgap: interrupted; {STARTS_OVER}\n")


def test_score_before_any_row_and_after_the_pass(capsys, monkeypatch, score_args, tmp_path):
    table = tmp_path / "rows.csv"
    _interrupt_batch(monkeypatch, 0)
    assert _run(capsys, [*score_args, "--per-image", str(table)]) == (
        130,
        f"camgap: interrupted; {STARTS_OVER}; no row was scored yet\n",
    )
    monkeypatch.undo()

    def interrupted(settings):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_settings_lines", interrupted)  # Ctrl-C while the result prints
    rc, err = _run(capsys, [*score_args, "--per-image", str(table)])
    assert (rc, err) == (
        130,
        f"camgap: interrupted; the scoring pass had finished; the per-image table is whole in {table}; "
        "a rerun scores every image again\n",
    )
    assert len(pd.read_csv(table)) == N_CLASSES * 2


@pytest.mark.parametrize(
    ("argv", "note"),
    [
        (["demo"], RESUMABLE),
        (["demo", "--experiment", "seeds"], RESUMABLE),
        (["synth", "--out", "x"], "synth does not resume: a rerun writes the dataset again"),
        (["masks", "--out", "x"], "masks does not resume: a rerun writes every mask again"),
        (["study", "--out", "x"], "study does not resume: a rerun computes it again"),
        (["predict", "--zoo", "z", "--checkpoint", "c", "--data", "d"], "predict does not resume"),
        (["models"], "nothing to keep"),
    ],
)
def test_each_command_says_what_it_keeps(argv, note):
    assert interrupted_note(build_parser().parse_args(argv)).startswith(note)
    assert interrupted_note(None) == "nothing was started"


@pytest.mark.parametrize(
    ("command", "note"),
    [
        ("build", "finished work is kept, rerun the same command to resume"),
        ("measure", "finished work is kept, rerun the same command to resume"),
        ("status", "rerun the same command (it has nothing to resume)"),
        ("export", "rerun the same command (it has nothing to resume)"),
        ("repair", "rerun the same command (it has nothing to resume)"),
    ],
)
def test_each_zoo_command_says_whether_it_resumes(command, note, monkeypatch, capsys, tmp_path):
    import camgap.zoo.cli as zoo_cli

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo_cli, f"_{command}", interrupted)
    args = ["demo", "--data", str(tmp_path)] if command == "build" else []
    capsys.readouterr()
    assert zoo_cli.main([command, *args, "--zoo", str(tmp_path)]) == 130
    assert capsys.readouterr().err == f"camgap zoo: interrupted; {note}\n"


def test_a_partial_table_of_an_earlier_run_is_not_this_run_s_rows(capsys, monkeypatch, score_args, tmp_path):
    table = tmp_path / "rows.csv"
    stale = table.with_name("rows.csv.partial")
    stale.write_text("image_id\nfrom-an-earlier-run\n")
    os.utime(stale, (1, 1))  # written long before this run started
    _interrupt_batch(monkeypatch, 0)
    assert _run(capsys, [*score_args, "--per-image", str(table)]) == (
        130,
        f"camgap: interrupted; {STARTS_OVER}; no row was scored yet\n",
    )
