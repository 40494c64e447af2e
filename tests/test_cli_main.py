"""The top-level CLI: --version, exit codes in --help, defaults in every subcommand's help,
one-line errors for camgap's own errors and tracebacks for bugs."""

from __future__ import annotations

import pytest

import camgap
from camgap import cli
from camgap.errors import CamgapError, InputError


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"camgap {camgap.__version__} (torch ")


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for code in ("0 ", "2 ", "3 ", "130 "):
        assert f"\n  {code}" in out, code


def test_subcommand_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["zoo", "build", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "give up on a run after it failed this often (default 2)" in out
    assert "(default: None)" not in out
    with pytest.raises(SystemExit):
        cli.main(["synth", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--classes CLASSES number of target classes (default: 10)" in out


def test_camgap_error_is_one_line_and_rc_2(monkeypatch, capsys):
    def boom(args):
        raise InputError("data/x.csv: row 3: line one\nline two")

    monkeypatch.setattr(cli, "cmd_synth", boom)
    assert cli.main(["synth", "--out", "x"]) == 2
    assert capsys.readouterr().err == "camgap: error: data/x.csv: row 3: line one line two\n"


def test_a_bug_keeps_its_traceback(monkeypatch):
    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "cmd_synth", bug)
    with pytest.raises(ZeroDivisionError):
        cli.main(["synth", "--out", "x"])


def test_missing_user_file_is_one_line(monkeypatch, capsys, tmp_path):
    def opens(args):
        open(tmp_path / "nope.csv")

    monkeypatch.setattr(cli, "cmd_synth", opens)
    assert cli.main(["synth", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("camgap: error: ") and "nope.csv: No such file or directory" in err


def test_every_camgap_error_class_derives_from_the_root():
    import inspect

    import camgap.data.errors
    import camgap.data.masks
    import camgap.data.store
    import camgap.measures.registry
    import camgap.models
    import camgap.zoo.build
    import camgap.zoo.grid
    import camgap.zoo.pretrained
    import camgap.zoo.registry

    modules = [
        camgap.data.errors,
        camgap.data.masks,
        camgap.data.store,
        camgap.measures.registry,
        camgap.models,
        camgap.zoo.build,
        camgap.zoo.grid,
        camgap.zoo.pretrained,
        camgap.zoo.registry,
    ]
    classes = {
        c
        for m in modules
        for _, c in inspect.getmembers(m, inspect.isclass)
        if issubclass(c, Exception) and c.__module__.startswith("camgap")
    }
    assert len(classes) >= 10
    assert all(issubclass(c, CamgapError) for c in classes), [c for c in classes if not issubclass(c, CamgapError)]


def test_top_level_exports():
    from camgap import BoxDataset, CamgapError, create_cam, create_model, load_checkpoint, read_layout, score_model
    from camgap.data import BoxDataset as B
    from camgap.measures.score import score_model as s

    assert score_model is s and BoxDataset is B
    assert all(callable(f) for f in (create_cam, create_model, load_checkpoint, read_layout))
    assert issubclass(CamgapError, Exception)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        camgap.nope  # noqa: B018


@pytest.mark.slow
def test_warnings_are_one_line_on_stderr():
    import subprocess
    import sys

    code = (
        "import warnings, sys; from camgap import cli\n"
        "cli.cmd_synth = lambda a: warnings.warn('a\\nb') or 0\n"
        "sys.exit(cli.main(sys.argv[1:]))"
    )
    # the two processes run side by side: each spends its time importing torch
    loud, quiet = (
        subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in (["synth", "--out", "x"], ["-qq", "synth", "--out", "x"])
    )
    _, err = loud.communicate(timeout=600)
    assert loud.returncode == 0 and err == "camgap: warning: a b\n"
    _, err = quiet.communicate(timeout=600)
    assert err == ""


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly():
    import subprocess
    import sys

    code = "import sys; from camgap import cli; sys.exit(cli.main(sys.argv[1:]))"
    # two named architectures: several lines, without building every architecture for the full listing
    argv = ["models", "small_resnet", "resnet18"]
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"camgap:\n"  # `camgap models ... | head -1`
    proc.stdout.close()
    assert proc.wait(timeout=600) == 0
    assert b"Broken pipe" not in proc.stderr.read()


def test_zoo_measure_help_names_the_default_measures(capsys):
    from camgap.zoo.measure import DEFAULT_MEASURES

    with pytest.raises(SystemExit):
        cli.main(["zoo", "measure", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    always = [m for m in DEFAULT_MEASURES if m != "weightwatcher"]  # an optional package's measure
    assert "default: " + ", ".join(always) + ", and weightwatcher where its package is installed;" in text
