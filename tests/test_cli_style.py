"""One command-line style: `--data DIR` / `--zoo ZOO` flags in every command, comma-separated lists,
the old spellings kept for one release with one deprecation warning, `camgap models`."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from camgap import cli
from camgap.cliutil import finish_args
from camgap.errors import InputError

SCORE = ["score", "--checkpoint", "c.pt", "--data", "d"]


def parse(*argv: str):
    """Parse as `camgap` does (without running): the namespace and the deprecation warnings."""
    parser = cli.build_parser()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = finish_args(parser, parser.parse_args(list(argv)))
    return args, [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]


@pytest.mark.parametrize(
    "new,old,dest,value",
    [
        (["masks", "--data", "D", "--out", "o"], ["masks", "D", "--out", "o"], "data", Path("D")),
        (["study", "--zoo", "Z", "--out", "o"], ["study", "Z", "--out", "o"], "zoo", Path("Z")),
        (["zoo", "status", "--zoo", "Z"], ["zoo", "status", "Z"], "zoo", "Z"),
        (["zoo", "measure", "--zoo", "Z"], ["zoo", "measure", "Z"], "zoo", "Z"),
        (["zoo", "export", "--zoo", "Z"], ["zoo", "export", "Z"], "zoo", "Z"),
        (["zoo", "repair", "--zoo", "Z"], ["zoo", "repair", "Z"], "zoo", "Z"),
        (
            ["zoo", "build", "paper", "--data", "D", "--zoo", "Z"],
            ["zoo", "build", "paper", "--data", "D", "--out", "Z"],
            "zoo",
            "Z",
        ),
    ],
)
def test_data_and_zoo_are_flags_and_old_spellings_still_work(new, old, dest, value):
    args, notes = parse(*new)
    assert getattr(args, dest) == value and notes == []
    old_args, notes = parse(*old)
    assert getattr(old_args, dest) == value
    assert len(notes) == 1 and "is deprecated and will be removed in the next release" in notes[0]
    flag = "--data" if dest == "data" else "--zoo"
    assert notes[0].endswith(f"write `{flag} {value}`")
    if "build" in old:
        assert args.grid == old_args.grid == "paper" and notes[0].startswith("`--out ZOO` is deprecated")
    else:
        assert notes[0].startswith(f"giving {'DIR' if dest == 'data' else 'ZOO'} as a positional argument")


@pytest.mark.parametrize(
    "argv,dest,value",
    [
        ([*SCORE, "--threshold", "0.1,0.3"], "threshold", [0.1, 0.3]),
        ([*SCORE, "--threshold", "0.2"], "threshold", [0.2]),
        ([*SCORE, "--mean", "0.485,0.456,0.406", "--std", "0.2, 0.2, 0.2"], "mean", [0.485, 0.456, 0.406]),
        ([*SCORE, "--std", "0.2,0.2,0.2"], "std", [0.2, 0.2, 0.2]),
        (["zoo", "measure", "--zoo", "Z", "--threshold", "0.1,0.3,0.5"], "threshold", [0.1, 0.3, 0.5]),
        (["predict", "--zoo", "Z", *SCORE[1:], "--threshold", "0.1,0.3"], "threshold", [0.1, 0.3]),
        (
            ["study", "--zoo", "Z", "--out", "o", "--subsets", "0.95,0.9,0.85,0.8,0"],
            "subsets",
            [0.95, 0.9, 0.85, 0.8, 0],
        ),
        (["study", "--zoo", "Z", "--out", "o", "--measures", "iou,iou_b"], "measures", ["iou", "iou_b"]),
    ],
)
def test_lists_are_comma_separated(argv, dest, value):
    args, notes = parse(*argv)
    assert getattr(args, dest) == pytest.approx(value) if dest != "measures" else getattr(args, dest) == value
    assert notes == []


def test_defaults_of_the_lists():
    assert parse(*SCORE)[0].threshold == [0.1]
    study = parse("study", "--zoo", "Z", "--out", "o")[0]
    assert study.subsets == [0.95, 0.9, 0.85, 0.8] and study.primary is None and study.seed == 0


@pytest.mark.parametrize(
    "argv,dest,value,old",
    [
        ([*SCORE, "--threshold", "0.1", "0.3"], "threshold", [0.1, 0.3], "--threshold 0.1 0.3"),
        ([*SCORE, "--mean", "0.5", "0.4", "0.3"], "mean", [0.5, 0.4, 0.3], "--mean 0.5 0.4 0.3"),
        (["zoo", "measure", "--zoo", "Z", "--threshold", "0.1", "0.5"], "threshold", [0.1, 0.5], "--threshold 0.1 0.5"),
    ],
)
def test_space_separated_lists_still_work_with_a_warning(argv, dest, value, old):
    args, notes = parse(*argv)
    assert getattr(args, dest) == pytest.approx(value)
    assert notes == [
        f"a space-separated list (`{old}`) is deprecated and will be removed in the next release; "
        f"write `{old.replace(' ', ',').replace(',', ' ', 1)}`"
    ]


@pytest.mark.parametrize(
    "argv,message",
    [
        ([*SCORE, "--threshold", "0.1,x"], "argument --threshold: '0.1,x' is not a comma-separated list of floats"),
        ([*SCORE, "--mean", "0.5,0.4"], "argument --mean: expected 3 values separated by commas, got '0.5,0.4'"),
        (["masks", "--out", "o"], "the following argument is required: --data DIR"),
        (["zoo", "status"], "the following argument is required: --zoo ZOO"),
        (["zoo", "build", "paper", "--data", "D"], "the following argument is required: --zoo ZOO"),
    ],
)
def test_bad_spelling_is_a_usage_error(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        parse(*argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {message}\n" in err and err.startswith("usage: camgap ")


def test_old_and_new_spelling_naming_two_places_is_an_error():
    with pytest.raises(
        InputError,
        match=r"--zoo A and giving ZOO as a positional argument \(B\) name two different "
        r"places; give --zoo only",
    ):
        parse("zoo", "status", "--zoo", "A", "B")
    assert parse("zoo", "status", "--zoo", "A", "A")[0].zoo == "A"  # the same place twice: fine (with the note)


def test_deprecation_is_one_line_on_stderr(tmp_path):
    """A real process: the old spelling warns with one line on stderr, then the command runs."""
    proc = subprocess.run(
        [sys.executable, "-m", "camgap.cli", "zoo", "status", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=600,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0] == (
        f"camgap: warning: giving ZOO as a positional argument is deprecated and will be removed in "
        f"the next release; write `--zoo {tmp_path / 'none'}`"
    )
    assert len(lines) == 2 and lines[1].startswith("camgap zoo: error: ") and "registry.sqlite" in lines[1]


def test_zoo_build_help_lists_the_packaged_grids(monkeypatch, capsys):
    from camgap.zoo import grid

    monkeypatch.setattr(grid, "packaged_grids", lambda: {"paper": Path("p.toml"), "zznewgrid": Path("z.toml")})
    with pytest.raises(SystemExit):
        cli.main(["zoo", "build", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "grid TOML file, or a packaged grid's name: paper, zznewgrid" in out
    assert "--zoo ZOO model-set directory" in out and "--out" not in out  # the old spelling is not advertised


def test_help_points_to_camgap_models_and_names_the_cam_aliases(capsys):
    with pytest.raises(SystemExit):
        cli.main(["score", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "timm:<name> (list: `camgap models`)" in out
    assert "gradcampp = gradcam++" in out and "smoothgradcampp = smoothgradcam++" in out
    assert "--threshold RHO[,RHO...]" in out and "--mean R,G,B" in out


# --- camgap models ------------------------------------------------------------------------------


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow
def test_models_lists_every_architecture_with_its_layer(capsys, monkeypatch):
    import functools

    import camgap.models
    from camgap.models import list_models, list_timm_models

    # both listings describe every architecture (each built once): the second one reuses the first's rows
    monkeypatch.setattr(camgap.models, "describe_model", functools.cache(camgap.models.describe_model))

    rc, out, _ = run_main(capsys, "models", "--json")
    assert rc == 0
    listing = json.loads(out)  # JSON alone on stdout
    rows = {r["name"]: r for r in listing["models"]}
    assert list(rows) == list_models()
    assert rows["resnet18"] == {
        "name": "resnet18",
        "group": "torchvision",
        "target_layer": "layer4",
        "closed_form": True,
        "reshape": "none",
    }
    assert rows["small_resnet"]["group"] == "camgap" and rows["squeezenet1_0"]["target_layer"] is None
    # every other torchvision classifier has a default layer (test_target_layer.py, test_vit.py)
    refused = ["alexnet", "googlenet", "inception_v3", "squeezenet1_0", "squeezenet1_1"]
    refused += [f"shufflenet_v2_x{w}" for w in ("0_5", "1_0", "1_5", "2_0")]
    assert sorted(n for n, r in rows.items() if r["target_layer"] is None) == sorted(refused)
    assert rows["vit_b_16"]["target_layer"] == "encoder.layers.encoder_layer_11.ln_1"
    assert rows["vit_b_16"]["closed_form"] is False and rows["vit_b_16"]["reshape"] == "tokens"
    assert listing["timm"]["names"] == list_timm_models()

    rc, text, _ = run_main(capsys, "models")
    lines = text.splitlines()
    assert lines[0] == "camgap:" and "torchvision:" in lines
    assert lines[1].split() == ["small_resnet", "layer4", "closed", "form"]
    resnet = next(ln for ln in lines if ln.split()[:1] == ["resnet50"])
    assert resnet.split() == ["resnet50", "layer4", "closed", "form"]
    vit = next(ln for ln in lines if ln.split()[:1] == ["vit_b_16"])
    assert vit.split()[1] == "encoder.layers.encoder_layer_11.ln_1"
    assert vit.endswith("autograd (tokens -> [C, h, w]; no closed form: a backward pass is needed)")
    squeezenet = next(ln for ln in lines if ln.split()[:1] == ["squeezenet1_0"])
    assert "(none: give --layer)" in squeezenet
    assert lines.index("torchvision:") < lines.index(resnet)


def test_models_for_given_names(capsys):
    pytest.importorskip("timm")
    rc, out, _ = run_main(capsys, "models", "timm:resnet18", "convnext_tiny", "--json")
    assert rc == 0
    assert json.loads(out)["models"] == [
        {"name": "timm:resnet18", "group": "timm", "target_layer": "layer4", "closed_form": False, "reshape": "none"},
        {
            "name": "convnext_tiny",
            "group": "torchvision",
            "target_layer": "features.7",
            "closed_form": False,
            "reshape": "none",
        },
    ]
    rc, out, err = run_main(capsys, "models", "resnet9000")
    assert rc == 2 and out == "" and err.startswith("camgap: error: unknown architecture 'resnet9000'; known: ")


@pytest.mark.parametrize(
    "argv", [[*SCORE, "--cam", "GradCAMpp"], ["zoo", "measure", "--zoo", "Z", "--cam", "gradcam, smoothgradcampp"]]
)
def test_cam_aliases_are_canonical_on_the_command_line(argv):
    """The reference release's names are accepted and stored under the canonical name (one variant)."""
    cam = parse(*argv)[0].cam
    assert cam == ("gradcam++" if argv[0] == "score" else "gradcam,smoothgradcam++")


def test_unknown_cam_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        parse("zoo", "measure", "--zoo", "Z", "--cam", "gradcam,scorecam")
    assert "argument --cam: unknown CAM method 'scorecam'; known: cam, gradcam," in capsys.readouterr().err
