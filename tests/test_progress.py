"""Progress: a bar on a terminal only, plain lines in a log file (never a `\\r`), nothing with
`-q` or `--no-progress`, and every long command takes `--no-progress`."""

from __future__ import annotations

import logging

import pytest
import torch
from tqdm import tqdm

from camgap import cli, progress
from camgap.cliutil import wants_progress
from camgap.data.synthetic import write_synthetic
from camgap.models import create_model


@pytest.fixture
def lines(monkeypatch, caplog):
    """The progress lines logged, caught at camgap.progress itself: a handler an earlier
    `cli.main` left on the root logger (its stream closed since) never sees them."""
    logger = logging.getLogger("camgap.progress")
    caplog.set_level(logging.INFO, logger=logger.name)
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "handlers", [caplog.handler])
    monkeypatch.setattr(progress, "_interactive", lambda: False)
    return lambda: [r.getMessage() for r in caplog.records]


def count_to(n: int, **kwargs) -> None:
    bar = progress.progress_bar(total=n, desc="score", unit="img", **kwargs)
    for _ in range(n):
        bar.update(1)
    bar.close()


def test_off_a_terminal_progress_is_plain_lines(monkeypatch, capsys, lines):
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)  # a line at every update
    count_to(3)
    assert [line.split(",")[0] for line in lines()] == [
        "score: 1/3 img (33%)",
        "score: 2/3 img (67%)",
        "score: 3/3 img (100%)",
        "score: 3/3 img (100%)",  # the last line, from close()
    ]
    assert lines()[-1].endswith(" elapsed, 00:00 left")
    assert capsys.readouterr().err == ""  # nothing drawn: no bar, no "\r"


def test_a_short_step_off_a_terminal_logs_its_last_line_only(lines):
    count_to(5)
    assert [line.split(",")[0] for line in lines()] == ["score: 5/5 img (100%)"]


def test_without_a_total_the_line_counts(lines):
    assert list(progress.progress_bar(iter("abcd"), desc="decoding", unit="img")) == list("abcd")
    assert [line.split(",")[0] for line in lines()] == ["decoding: 4 img"]


def test_not_wanted_draws_and_logs_nothing(monkeypatch, capsys, lines):
    for interactive in (True, False):
        monkeypatch.setattr(progress, "_interactive", lambda interactive=interactive: interactive)
        count_to(3, enabled=False)
    assert lines() == [] and capsys.readouterr().err == ""


def test_on_a_terminal_it_is_a_bar_on_stderr(monkeypatch, capsys):
    monkeypatch.setattr(progress, "_interactive", lambda: True)
    bar = progress.progress_bar(total=2, desc="zoo", unit="run", initial=1)
    assert isinstance(bar, tqdm) and not isinstance(bar, progress._LogLines) and not bar.disable and bar.n == 1
    bar.update(1)
    bar.close()
    assert "zoo: 100%" in capsys.readouterr().err


LONG_COMMANDS = {
    "score": ["score", "--checkpoint", "c.pt", "--data", "d"],
    "predict": ["predict", "--zoo", "z", "--checkpoint", "c.pt", "--data", "d"],
    "masks": ["masks", "--data", "d", "--out", "o"],
    "study": ["study", "--zoo", "z", "--out", "o"],
    "demo": ["demo"],
    "zoo build": ["zoo", "build", "demo", "--data", "d", "--zoo", "z"],
    "zoo measure": ["zoo", "measure", "--zoo", "z"],
}


@pytest.mark.parametrize("name", sorted(LONG_COMMANDS))
def test_every_long_command_takes_no_progress_and_q(name):
    parser = cli.build_parser()
    argv = LONG_COMMANDS[name]
    assert wants_progress(parser.parse_args(argv))
    assert wants_progress(parser.parse_args(["-v", *argv]))
    assert not wants_progress(parser.parse_args([*argv, "--no-progress"]))
    assert not wants_progress(parser.parse_args(["-q", *argv]))
    assert wants_progress(parser.parse_args(["-q", "-v", *argv]))  # they cancel out


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A synthetic dataset of 6 training images and an untrained small_resnet's state dict."""
    root = tmp_path_factory.mktemp("progress")
    data = write_synthetic(root / "data", seed=0, classes=3, train_per_class=2, test_per_class=1, size=32)
    torch.manual_seed(0)
    torch.save(create_model("small_resnet", num_classes=3, width=4).state_dict(), root / "m.pt")
    args = ["score", "--checkpoint", root / "m.pt", "--arch", "small_resnet", "--width", "4", "--data", data]
    return [str(a) for a in (*args, "--input-size", "32", "--device", "cpu", "--layout", "csv")]


@pytest.mark.parametrize(
    ("before", "after", "line"),
    [([], [], True), (["-q"], [], False), ([], ["--no-progress"], False), ([], ["--json"], True)],
)
def test_score_into_a_log_file_writes_lines_not_bars(scored, capsys, before, after, line):
    capsys.readouterr()
    assert cli.main([*before, *scored, *after]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert ("score: 6/6 img (100%)" in err) is line, err


def test_a_step_that_fails_logs_no_last_line(lines):
    bar = progress.progress_bar(total=3, desc="score", unit="img")
    bar.update(1)
    del bar  # an exception left the loop: close() never ran
    assert lines() == []
