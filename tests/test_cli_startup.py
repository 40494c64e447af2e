"""`camgap --help`, `camgap <cmd> --help` and `--version` without torch: the parser is built
from plain values, and the heavy libraries load in the commands that need them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from camgap import cli

HEAVY = ("torch", "torchvision", "pandas", "matplotlib", "scipy", "numpy", "PIL", "cv2", "ray")

# Every help and --version in one fresh interpreter: which heavy modules did they import?
PROBE = """
import contextlib, io, json, sys
import camgap.cli
camgap.cli.build_parser()
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        camgap.cli.main(argv)
print(json.dumps(sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)))
"""

HELPS = [
    ["--help"],
    ["--version"],
    *([cmd, "--help"] for cmd in ("score", "synth", "demo", "masks", "study", "predict", "models", "zoo")),
    *(["zoo", cmd, "--help"] for cmd in ("build", "status", "repair", "export", "measure")),
]


def test_parser_and_every_help_import_no_heavy_library():
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(HELPS), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(proc.stdout) == []


def test_version_names_the_installed_torch(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip().endswith(f"(torch {version('torch')})")


def test_cam_help_names_every_registered_method_and_alias():
    from camgap.cam import CAMS

    aliases = ", ".join(f"{a} = {n}" for n in CAMS.names() for a in CAMS.aliases(n) if "-" not in a)
    assert cli.CAM_HELP == f"CAM method: {', '.join(CAMS.names())} (also {aliases}, the reference release's names)"


def test_top_level_names_still_import():
    from camgap import BoxDataset, create_model, read_layout, score_model
    from camgap.data import IMAGENET_MEAN, decode_rgb
    from camgap.data.dataset import IMAGENET_STD

    assert callable(score_model) and callable(create_model) and callable(read_layout) and callable(decode_rgb)
    assert BoxDataset.__module__ == "camgap.data.dataset"
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
