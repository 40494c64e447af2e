"""`camgap score` end to end on a saved timm ViT checkpoint: the documented layer and the token
reshape named in the output, the scores those of `score_model`; `--reshape` for a transformer
camgap does not know."""

from __future__ import annotations

import json

import pytest
import torch

from camgap.cli import main
from camgap.data import BoxDataset, read_layout
from camgap.data.synthetic import write_synthetic
from camgap.measures.score import score_model
from camgap.models import create_model

timm = pytest.importorskip("timm")

SIZE = 32
N_CLASSES = 3
VIT = "timm:vit_tiny_patch16_224"
SMALL = {"img_size": SIZE, "patch_size": 8, "depth": 2}  # 4x4 patches of 8 px


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit") / "synth"
    return write_synthetic(root, seed=3, classes=N_CLASSES, train_per_class=2, test_per_class=1, size=SIZE)


def _args(data, ckpt, *extra):
    return [
        "score",
        "--checkpoint",
        ckpt,
        "--data",
        data,
        "--layout",
        "csv",
        "--device",
        "cpu",
        "--batch-size",
        4,
        *extra,
    ]


def test_score_a_timm_vit_checkpoint(capsys, data, tmp_path):
    torch.manual_seed(0)
    model = create_model(VIT, num_classes=N_CLASSES, **SMALL).eval()
    path = tmp_path / "vit.pt"
    record = {"arch": VIT, "arch_kwargs": SMALL, "num_classes": N_CLASSES, "input_size": SIZE}
    torch.save({"model_state_dict": model.state_dict(), **record}, path)
    rc, out, err = run(capsys, *_args(data, path, "--json"))
    assert rc == 0, err
    s = json.loads(out)
    assert s["target_layer"] == "blocks.1.norm1" and s["target_map"] == [4, 4]
    assert s["model"]["reshape"] == "tokens (1 prefix token dropped)"
    assert s["model"]["source"]["reshape"] == "model family"
    records, _ = read_layout(data, "csv", "train")
    want = score_model(model, BoxDataset(records, input_size=SIZE), batch_size=4)
    assert s["iou"] == pytest.approx(want.iou(), abs=1e-12) and s["iou_b"] == pytest.approx(want.iou_b(), abs=1e-12)
    rc, out, err = run(capsys, *_args(data, path))
    assert rc == 0, err
    assert "gradcam at blocks.1.norm1" in out
    assert "target layer output reshaped: tokens (1 prefix token dropped) (model family)" in out


def test_reshape_flag_for_a_transformer_camgap_does_not_know(capsys, data, tmp_path):
    """timm's post-norm EVA has no default layer in camgap: --layer and --reshape name what to do,
    and the output records the flag; without --reshape its tokens are refused before any image is
    read. (Its pooling averages the tokens, so the last block's output is a layer with gradients.)"""
    arch = "timm:eva02_tiny_patch14_224"
    opts = {"img_size": SIZE, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2, "use_post_norm": True}
    torch.manual_seed(0)
    model = create_model(arch, num_classes=N_CLASSES, **opts).eval()
    path = tmp_path / "eva.pt"
    torch.save({"model_state_dict": model.state_dict(), "arch": arch, "arch_kwargs": opts}, path)
    rc, out, err = run(capsys, *_args(data, path, "--input-size", SIZE))
    assert rc == 2 and err.startswith("camgap: error: cannot choose a target layer for a Eva")
    layer = ["--input-size", SIZE, "--layer", "blocks.1"]
    rc, out, err = run(capsys, *_args(data, path, *layer))
    assert rc == 2 and err == (
        "camgap: error: the target layer blocks.1 must output a [B, C, h, w] tensor, got (1, 17, 32)\n"
    )
    rc, out, err = run(capsys, *_args(data, path, *layer, "--reshape", "tokens", "--json"))
    assert rc == 0, err
    s = json.loads(out)
    assert s["target_map"] == [4, 4] and s["target_layer"] == "blocks.1"
    assert s["model"]["reshape"] == "tokens (1 prefix token dropped)" and s["model"]["source"]["reshape"] == "flag"
    records, _ = read_layout(data, "csv", "train")
    want = score_model(
        model,
        BoxDataset(records, input_size=SIZE),
        batch_size=4,
        target_layer="blocks.1",
        cam_kwargs={"reshape": "tokens"},
    )
    assert s["iou"] == pytest.approx(want.iou(), abs=1e-12)


def _vit_checkpoint(tmp_path, **record):
    torch.manual_seed(0)
    model = create_model(VIT, num_classes=N_CLASSES, **SMALL).eval()
    path = tmp_path / "vit.pt"
    torch.save({"model_state_dict": model.state_dict(), "arch": VIT, "arch_kwargs": SMALL, **record}, path)
    return model, path


def test_a_vit_is_scored_at_its_own_input_size_where_nothing_names_one(capsys, data, tmp_path):
    """The default 224 would not fit a ViT built for 32 px (its forward asserted, a traceback):
    its own size is chosen, and the settings say where it came from."""
    model, path = _vit_checkpoint(tmp_path)
    rc, out, err = run(capsys, *_args(data, path, "--json"))
    assert rc == 0, err
    s = json.loads(out)
    assert s["preprocessing"]["input_size"] == SIZE and s["preprocessing"]["source"]["input_size"] == "model"
    records, _ = read_layout(data, "csv", "train")
    want = score_model(model, BoxDataset(records, input_size=SIZE), batch_size=4)
    assert s["iou"] == pytest.approx(want.iou(), abs=1e-12)


@pytest.mark.parametrize(
    ("flag", "record", "named"),
    [(["--input-size", "64"], {}, "--input-size 64"), ([], {"input_size": 48}, "the checkpoint's input_size 48")],
)
def test_a_vit_at_another_input_size_is_one_line_before_any_image_is_read(capsys, data, tmp_path, flag, record, named):
    _, path = _vit_checkpoint(tmp_path, **record)
    rc, out, err = run(capsys, *_args(data, path, *flag))
    assert rc == 2 and out == ""
    assert err == (
        f"camgap: error: {path}: the VisionTransformer takes {SIZE}x{SIZE} images only (its patch embedding is "
        f"built for that size), not {named}: give --input-size {SIZE}, or build the model at the size you want "
        "(timm: img_size=...)\n"
    )
