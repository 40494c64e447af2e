"""`camgap.scoring`: the checkpoint scoring service of `camgap score` / `predict`, used from Python."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

import camgap
from camgap import scoring
from camgap.data import BoxDataset, read_layout
from camgap.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from camgap.measures.score import ScoreOptions, score_model
from camgap.models import create_model

ARCH_KWARGS = {"width": 4, "strides": [1, 2, 2, 1]}  # a 4x4 layer4 map at the data's 16 px


def test_the_scoring_service_is_exported_from_camgap():
    from camgap import score_checkpoint

    assert score_checkpoint is scoring.score_checkpoint and "score_checkpoint" in camgap.__all__


def test_score_checkpoint_equals_score_model_on_the_same_model(synthetic_data, tmp_path):
    """From Python as from the CLI: the model and preprocessing the checkpoint records, the rest
    from PREPROCESSING_DEFAULTS, each with its source; the values are score_model's own."""
    torch.manual_seed(0)
    model = create_model("small_resnet", 3, **ARCH_KWARGS).eval()
    path = tmp_path / "final.pt"
    record = {"arch": "small_resnet", "arch_kwargs": ARCH_KWARGS, "num_classes": 3, "input_size": 16}
    torch.save({"model_state_dict": model.state_dict(), **record}, path)
    options = ScoreOptions(thresholds=(0.1, 0.3), batch_size=8)

    result, settings, classes = scoring.score_checkpoint(path, synthetic_data, options, device="cpu")

    records, expected_classes = read_layout(synthetic_data, "auto", "train")
    expected = score_model(
        model, BoxDataset(records, input_size=16), options, device="cpu", mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    assert classes == expected_classes
    pd.testing.assert_frame_equal(result.per_image, expected.per_image)
    assert result.iou(0.3) == expected.iou(0.3) and result.target_layer == "layer4"
    assert settings["model"] == {
        "arch": "small_resnet",
        "num_classes": 3,
        "arch_kwargs": ARCH_KWARGS,
        "reshape": "none",
        "source": {
            "arch": "checkpoint",
            "num_classes": "checkpoint",
            "arch_kwargs": "checkpoint",
            "reshape": "model family",
        },
    }
    prep = settings["preprocessing"]
    assert (prep["input_size"], prep["mean"], prep["resize"]) == (16, list(IMAGENET_MEAN), "resize")
    assert prep["source"]["input_size"] == "checkpoint" and prep["source"]["mean"] == "default"
    assert settings["target_map"] == [4, 4]


def test_resolve_settings_flag_then_checkpoint_then_fallback():
    fallback = {"a": (0, "default"), "b": (0, "default"), "c": (9, "data"), "mean": ([0.0] * 3, "default")}
    flags = {"a": 1, "mean": [0.5, 0.5, 0.5]}
    recorded = {"a": 2, "b": 3, "mean": (0.5, 0.5, 0.5 + 1e-9)}  # the same mean, as floats go
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values, sources = scoring.resolve_settings(flags, recorded, fallback, "ck.pt")
    assert values == {"a": 1, "b": 3, "c": 9, "mean": [0.5, 0.5, 0.5]}
    assert sources == {"a": "flag", "b": "checkpoint", "c": "data", "mean": "flag"}
    assert [str(w.message) for w in caught] == ["--a 1 contradicts the checkpoint's a 2 (ck.pt); using 1 (the flag)"]


def test_cache_dir_is_the_given_folder_else_the_user_cache(tmp_path, monkeypatch):
    assert scoring.cache_dir(tmp_path / "c", tmp_path, "train", 32, "resize") == tmp_path / "c" / "train-32-resize"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    digest = hashlib.sha256(str(Path(tmp_path).resolve()).encode()).hexdigest()[:16]
    got = scoring.cache_dir(None, tmp_path, "val", 64, "resize_crop")
    assert got == tmp_path / "xdg" / "camgap" / digest / "val-64-resize_crop"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(float("nan"), None), ({"a": (1, float("nan"))}, {"a": [1, None]}), ([0.5, "x"], [0.5, "x"])],
)
def test_json_safe(value, expected):
    assert scoring.json_safe(value) == expected
