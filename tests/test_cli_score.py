"""`camgap synth` + `camgap score` end to end: the JSON, the per-image CSV and the overlays
equal what score_model computes, and bad input exits non-zero with a message naming the
file and the problem."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from camgap.cli import main
from camgap.data import BoxDataset, read_layout
from camgap.data.masks import compute_masks
from camgap.data.synthetic import write_synthetic
from camgap.measures.score import score_model
from camgap.models import create_model
from tests.helpers.data import make_imagenet, write_csv

SIZE = 32
N_CLASSES = 3
PER_CLASS = 2
N = N_CLASSES * PER_CLASS


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys, *args) -> dict:
    rc, out, err = run(capsys, *args, "--json")
    assert rc == 0, err
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out  # exactly one JSON object on stdout
    return json.loads(lines[0])


def _commas(values) -> str:
    return ",".join(str(v) for v in values)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The synthetic dataset written by `camgap synth`."""
    out = tmp_path_factory.mktemp("cli") / "synth"
    rc = main(
        [
            "synth",
            "--out",
            str(out),
            "--seed",
            "5",
            "--classes",
            str(N_CLASSES),
            "--train-per-class",
            str(PER_CLASS),
            "--test-per-class",
            "1",
            "--size",
            str(SIZE),
        ]
    )
    assert rc == 0
    assert (out / "train.csv").is_file() and (out / "test.csv").is_file()
    assert len(list((out / "images" / "train").glob("*.png"))) == N
    assert len(list((out / "images" / "test").glob("*.png"))) == N_CLASSES
    with Image.open(out / "images" / "train" / "00000.png") as im:
        assert im.size == (SIZE, SIZE)
    return out


@pytest.fixture(scope="module")
def model(data):
    """SmallResNet width 8 trained a few steps on the synthetic training images, in float64 (the
    kernels of one CPU kind or another change its weights by far less than the tests look at)."""
    records, _ = read_layout(data, "csv", "train")
    ds = BoxDataset(records, input_size=SIZE)
    from camgap.data import normalize

    x = normalize(torch.stack([ds[i][0] for i in range(len(ds))]))
    y = torch.tensor(ds.labels)
    torch.manual_seed(0)
    m = create_model("small_resnet", num_classes=N_CLASSES, width=8).double()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    m.train()
    for _ in range(10):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x.double()), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return m.float().eval()


@pytest.fixture(scope="module")
def checkpoints(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    state = model.state_dict()
    paths = {
        "wrapped": d / "wrapped.pt",  # the reference release: DataParallel prefix inside model_state_dict
        "plain": d / "plain.pt",
        "module": d / "module.pt",
    }
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 7}, paths["wrapped"])
    torch.save(state, paths["plain"])
    torch.save(model, paths["module"])
    return paths


def base_args(data, ckpt, *extra):
    return [
        "score",
        "--checkpoint",
        ckpt,
        "--data",
        data,
        "--layout",
        "csv",
        "--input-size",
        SIZE,
        "--device",
        "cpu",
        "--batch-size",
        4,
        *extra,
    ]


ARCH = ["--arch", "small_resnet", "--width", 8, "--num-classes", N_CLASSES]


@pytest.fixture(scope="module")
def expected(model, data):
    records, _ = read_layout(data, "csv", "train")
    return score_model(model, BoxDataset(records, input_size=SIZE), thresholds=(0.1,), batch_size=4)


# --- end to end -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["wrapped", "plain", "module"])
def test_json_equals_score_model(capsys, data, checkpoints, expected, fmt):
    if fmt == "module":  # a pickled module: only with --unsafe-load, which warns
        with pytest.warns(UserWarning, match="weights_only=False"):
            s = run_json(capsys, *base_args(data, checkpoints[fmt], "--unsafe-load"))
        assert s["model"]["arch"] == "SmallResNet" and s["model"]["source"]["arch"] == "saved nn.Module"
    else:
        s = run_json(capsys, *base_args(data, checkpoints[fmt], *ARCH))
        assert s["model"] == {
            "arch": "small_resnet",
            "arch_kwargs": {"width": 8},
            "num_classes": N_CLASSES,
            "reshape": "none",
            "source": {"arch": "flag", "arch_kwargs": "flag", "num_classes": "flag", "reshape": "model family"},
        }
    assert s["target_layer"] == "layer4"
    for key in ("iou", "iou_b", "n_images", "n_skipped", "cam", "threshold", "by_threshold"):
        assert key in s, key
    e = expected.summary()
    assert same(s["iou"], e["iou"]) and same(s["iou_b"], e["iou_b"])
    assert 0 < s["iou"] < 1 and 0 < s["iou_b"] < 1
    assert s["n_images"] == N and s["n_skipped"] == 0 and s["n_no_reference"] == 0
    assert s["cam"] == "gradcam" and s["threshold"] == 0.1
    assert set(s["by_threshold"]) == {"0.1"}
    assert same(s["by_threshold"]["0.1"]["iou"], e["iou"])
    assert s["accuracy"] == pytest.approx(e["accuracy"])


def test_several_thresholds(capsys, data, checkpoints, model):
    s = run_json(capsys, *base_args(data, checkpoints["plain"], *ARCH, "--threshold", "0.1,0.3,0.5"))
    records, _ = read_layout(data, "csv", "train")
    e = score_model(model, BoxDataset(records, input_size=SIZE), thresholds=(0.1, 0.3, 0.5), batch_size=4)
    assert s["threshold"] == 0.1 and set(s["by_threshold"]) == {"0.1", "0.3", "0.5"}
    for t in (0.1, 0.3, 0.5):
        assert same(s["by_threshold"][f"{t:g}"]["iou"], e.iou(t))
        assert same(s["by_threshold"][f"{t:g}"]["iou_b"], e.iou_b(t))
    assert same(s["iou"], e.iou(0.1))
    assert s["by_threshold"]["0.1"]["iou"] != s["by_threshold"]["0.5"]["iou"]


def test_per_image_csv_and_overlays(capsys, data, checkpoints, tmp_path):
    table = tmp_path / "out" / "per_image.csv"
    overlays = tmp_path / "ov"
    s = run_json(
        capsys,
        *base_args(
            data,
            checkpoints["wrapped"],
            *ARCH,
            "--threshold",
            "0.1,0.5",
            "--per-image",
            table,
            "--overlays",
            overlays,
            "--n",
            4,
        ),
    )
    df = pd.read_csv(table, dtype={"image_id": str})
    assert list(df.columns) == [
        "image_id",
        "label",
        "pred",
        "correct",
        "iou@0.1",
        "iou_b@0.1",
        "cam_area@0.1",
        "iou@0.5",
        "iou_b@0.5",
        "cam_area@0.5",
        "energy_pg",
        "pointing_game",
    ]
    assert len(df) == N == s["n_images"]
    records, _ = read_layout(data, "csv", "train")
    assert df["image_id"].tolist() == [r.image_id for r in records]
    assert df["label"].tolist() == [r.label for r in records]
    assert (df["correct"] == (df["label"] == df["pred"])).all()
    assert df["iou@0.1"].mean() == pytest.approx(s["iou"], abs=1e-12)
    assert df["iou_b@0.5"].mean() == pytest.approx(s["by_threshold"]["0.5"]["iou_b"], abs=1e-12)
    assert ((df["cam_area@0.1"] >= df["cam_area@0.5"]) & (df["cam_area@0.5"] >= 0) & (df["cam_area@0.1"] <= 1)).all()

    pngs = sorted(overlays.glob("*.png"))
    assert len(pngs) == 4
    scale = max(1, 224 // SIZE)
    for p, image_id in zip(pngs, [r.image_id for r in records[:4]]):
        assert p.name.startswith(f"{image_id}_pred-")
        with Image.open(p) as im:
            assert im.size == (SIZE * scale, SIZE * scale) and im.mode == "RGB"


def test_text_output(capsys, data, checkpoints):
    rc, out, err = run(capsys, *base_args(data, checkpoints["plain"], *ARCH, "--threshold", "0.1,0.5"))
    assert rc == 0, err
    assert "IoU^Model" in out and "IoU-B^Model" in out and "rho=0.5" in out
    assert f"images scored {N}, skipped 0" in out


def test_saliency_masks(capsys, data, checkpoints, model):
    pytest.importorskip("cv2")
    s = run_json(capsys, *base_args(data, checkpoints["plain"], *ARCH, "--masks", "saliency"))
    assert s["masks"] == "saliency" and s["n_images"] == N and s["n_skipped"] == 0
    assert 0 <= s["iou"] <= 1 and 0 <= s["iou_b"] <= 1
    # the same masks through the Python API give the same score
    records, _ = read_layout(data, "csv", "train")
    ds = BoxDataset(records, input_size=SIZE)
    images = torch.stack([ds[i][0] for i in range(N)])
    masks = compute_masks("saliency", images, None, ds.image_ids, SIZE)
    e = score_model(model, ds, masks=masks.masks, mask_ids=masks.image_ids, batch_size=4)
    assert same(s["iou"], e.iou()) and same(s["iou_b"], e.iou_b())
    assert s["n_no_reference"] == e.n_no_reference
    # the saliency masks are not the boxes
    assert not same(s["iou"], score_model(model, ds, batch_size=4).iou())


# --- bad input ------------------------------------------------------------------------------


def _fresh_synth(tmp_path):
    return write_synthetic(
        tmp_path / "d", seed=5, classes=N_CLASSES, train_per_class=PER_CLASS, test_per_class=1, size=SIZE
    )


def test_corrupt_image(capsys, tmp_path, checkpoints):
    root = _fresh_synth(tmp_path)
    bad = root / "images" / "train" / "00002.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    rc, out, err = run(capsys, *base_args(root, checkpoints["plain"], *ARCH, "--json"))
    assert rc != 0 and out == ""
    assert str(bad) in err and "corrupt" in err
    with pytest.warns(UserWarning, match="00002.png"):
        s = run_json(capsys, *base_args(root, checkpoints["plain"], *ARCH, "--skip-bad"))
    assert s["n_skipped"] == 1 and s["n_images"] == N - 1


def test_every_image_bad_with_skip_bad(capsys, tmp_path, checkpoints):
    root = _fresh_synth(tmp_path)
    for p in (root / "images" / "train").glob("*.png"):
        p.write_bytes(b"")
    with pytest.warns(UserWarning):
        rc, out, err = run(capsys, *base_args(root, checkpoints["plain"], *ARCH, "--skip-bad", "--json"))
    assert rc != 0 and "no images were scored" in err


@pytest.fixture
def two_class_ckpt(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "two.pt"
    torch.save(create_model("small_resnet", num_classes=2, width=8).state_dict(), path)
    return path


def test_missing_annotation(capsys, tmp_path, two_class_ckpt):
    root = make_imagenet(tmp_path / "inet")
    xml = root / "Annotation" / "n02" / "n02_1.xml"
    xml.unlink()
    args = [
        "score",
        "--checkpoint",
        two_class_ckpt,
        "--arch",
        "small_resnet",
        "--width",
        8,
        "--num-classes",
        2,
        "--data",
        root,
        "--layout",
        "imagenet",
        "--input-size",
        SIZE,
        "--device",
        "cpu",
    ]
    rc, out, err = run(capsys, *args, "--json")
    assert rc != 0
    assert "n02_1.JPEG" in err and "missing annotation" in err and str(xml) in err
    s = run_json(capsys, *args, "--skip-bad")
    assert s["n_skipped"] == 1 and s["n_images"] == 2


def test_label_outside_the_models_classes(capsys, data, tmp_path, two_class_ckpt):
    rc, out, err = run(
        capsys, *base_args(data, two_class_ckpt, "--arch", "small_resnet", "--width", 8, "--num-classes", 2, "--json")
    )
    assert rc != 0 and out == ""
    assert str(data) in err and f"{N_CLASSES} classes" in err and "2 outputs" in err
    # a saved nn.Module carries its own number of outputs: no --num-classes to compare with
    module = tmp_path / "two_module.pt"
    torch.save(create_model("small_resnet", num_classes=2, width=8), module)
    with pytest.warns(UserWarning, match="weights_only=False"):
        rc, out, err = run(capsys, *base_args(data, module, "--json", "--unsafe-load"))
    assert rc != 0 and out == ""
    assert "label 2 is outside the model's 2 classes" in err


def test_empty_dataset(capsys, tmp_path, checkpoints):
    root = tmp_path / "empty"
    write_csv(root / "train.csv", [])
    rc, out, err = run(capsys, *base_args(root, checkpoints["plain"], *ARCH, "--json"))
    assert rc != 0 and out == ""
    assert str(root / "train.csv") in err and "no images" in err


@pytest.mark.parametrize("wrong", ["other_small", "sequential"])
def test_checkpoint_for_another_architecture(capsys, data, tmp_path, wrong):
    path = tmp_path / f"{wrong}.pt"
    if wrong == "other_small":  # deeper and wider: extra blocks and other shapes
        state = create_model("small_resnet", num_classes=N_CLASSES, width=16, blocks=(2, 1, 1, 1)).state_dict()
    else:
        state = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, N_CLASSES)).state_dict()
    torch.save({"model_state_dict": state}, path)
    rc, out, err = run(capsys, *base_args(data, path, *ARCH, "--json"))
    assert rc != 0 and out == ""
    assert str(path) in err and "does not match" in err
    if wrong == "other_small":
        assert "unexpected keys [layer1.1." in err and "shape mismatch" in err and "conv1.weight" in err
    else:
        assert "missing keys [" in err and "unexpected keys [0.bias, 0.weight, 2.bias, 2.weight]" in err


def test_nonexistent_and_unreadable_checkpoint(capsys, data, tmp_path):
    missing = tmp_path / "nope.pt"
    rc, out, err = run(capsys, *base_args(data, missing, *ARCH, "--json"))
    assert rc != 0 and out == "" and str(missing) in err and "no such checkpoint" in err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a torch file")
    rc, out, err = run(capsys, *base_args(data, garbage, *ARCH, "--json"))
    assert rc != 0 and str(garbage) in err and "cannot read checkpoint" in err


def test_state_dict_without_arch(capsys, data, checkpoints):
    rc, out, err = run(capsys, *base_args(data, checkpoints["plain"], "--json"))
    assert rc != 0 and str(checkpoints["plain"]) in err and "architecture" in err


def test_synth_rerun_and_conflict(capsys, data):
    # the same parameters again: a no-op that succeeds; other parameters: an error naming them
    args = [
        "synth",
        "--out",
        data,
        "--seed",
        5,
        "--classes",
        N_CLASSES,
        "--train-per-class",
        PER_CLASS,
        "--test-per-class",
        1,
        "--size",
        SIZE,
    ]
    rc, out, err = run(capsys, *args)
    assert rc == 0 and str(data) in out
    rc, out, err = run(capsys, *args[:-2], "--size", 48)
    assert rc != 0 and "size" in err and str(data) in err


def test_saliency_masks_skip_bad(capsys, tmp_path, checkpoints):
    pytest.importorskip("cv2")
    root = _fresh_synth(tmp_path)
    bad = root / "images" / "train" / "00001.png"
    bad.write_bytes(b"garbage")
    args = base_args(root, checkpoints["plain"], *ARCH, "--masks", "saliency")
    rc, out, err = run(capsys, *args, "--json")
    assert rc != 0 and str(bad) in err
    with pytest.warns(UserWarning, match="00001.png"):
        s = run_json(capsys, *args, "--skip-bad")
    assert s["n_skipped"] == 1 and s["n_images"] == N - 1 and s["masks"] == "saliency"


def test_mask_folder(capsys, tmp_path, checkpoints, model):
    """--masks DIR: the score uses those masks; a missing mask is an error, or skipped with
    --skip-bad (counted in n_skipped, as is a corrupt image)."""
    root = _fresh_synth(tmp_path)
    records, _ = read_layout(root, "csv", "train")
    rng = np.random.default_rng(0)
    mdir = tmp_path / "masks"
    mdir.mkdir()
    masks = {}
    for r in records:
        m = np.zeros((SIZE, SIZE), dtype=bool)
        y0, x0 = rng.integers(0, 16, size=2)
        m[y0 : y0 + 14, x0 : x0 + 10] = True
        masks[r.image_id] = m
        Image.fromarray(m.astype(np.uint8) * 255).save(mdir / f"{r.image_id}.png")
    args = base_args(root, checkpoints["plain"], *ARCH, "--masks", mdir, "--threshold", "0.1,0.5")
    s = run_json(capsys, *args)
    ids = [r.image_id for r in records]
    e = score_model(
        model,
        BoxDataset(records, input_size=SIZE),
        thresholds=(0.1, 0.5),
        masks=torch.from_numpy(np.stack([masks[i] for i in ids])),
        mask_ids=ids,
    )
    assert s["n_images"] == N and s["n_skipped"] == 0
    for t in ("0.1", "0.5"):
        assert same(s["by_threshold"][t]["iou"], e.iou(float(t)))
        assert same(s["by_threshold"][t]["iou_b"], e.iou_b(float(t)))

    (mdir / f"{ids[3]}.png").unlink()
    rc, out, err = run(capsys, *args, "--json")
    assert rc != 0 and ids[3] in err
    (root / "images" / "train" / f"{ids[1]}.png").write_bytes(b"")
    with pytest.warns(UserWarning):
        s = run_json(capsys, *args, "--skip-bad")
    assert s["n_skipped"] == 2 and s["n_images"] == N - 2


# --- settings: flag > checkpoint > default --------------------------------------------------

ZOO_SIZE, ZOO_MEAN, ZOO_STD = 40, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def _zoo_like(model, classes, **over) -> dict:
    """A checkpoint as camgap.zoo.train's _checkpoint_base writes it, built by hand."""
    cfg = {
        "arch": "small_resnet",
        "arch_options": {"width": 8},
        "input_size": ZOO_SIZE,
        "resize": "resize_crop",
        "mean": ZOO_MEAN,
        "std": ZOO_STD,
        "trained": True,
    }
    return {
        "model_state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "arch": "small_resnet",
        "arch_kwargs": {"width": 8},
        "num_classes": N_CLASSES,
        "classes": list(classes),
        "config": cfg,
        "run_id": "r0",
        "repeat": 0,
        "seed": 0,
        "input_size": ZOO_SIZE,
        "resize": "resize_crop",
        "mean": ZOO_MEAN,
        "std": ZOO_STD,
        "channel_order": "rgb",
        "epoch": 3,
        "history": [{"train_acc": 0.5}],
    } | over


@pytest.fixture(scope="module")
def zoo_ckpt(model, data, tmp_path_factory):
    _, classes = read_layout(data, "csv", "train")
    path = tmp_path_factory.mktemp("zoockpt") / "final.pt"
    torch.save(_zoo_like(model, classes), path)
    return path


def zoo_args(data, ckpt, *extra):
    return ["score", "--checkpoint", ckpt, "--data", data, "--layout", "csv", "--device", "cpu", *extra]


def test_zoo_checkpoint_scored_with_its_own_settings(capsys, data, zoo_ckpt, model, recwarn):
    s = run_json(capsys, *zoo_args(data, zoo_ckpt))
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]  # weights_only read, no conflict
    records, _ = read_layout(data, "csv", "train")
    e = score_model(model, BoxDataset(records, input_size=ZOO_SIZE, resize="resize_crop"), mean=ZOO_MEAN, std=ZOO_STD)
    assert s["iou"] == e.iou() and s["iou_b"] == e.iou_b() and s["accuracy"] == e.train_acc
    assert s["preprocessing"] == {
        "input_size": ZOO_SIZE,
        "resize": "resize_crop",
        "mean": ZOO_MEAN,
        "std": ZOO_STD,
        "channel_order": "rgb",
        "source": dict.fromkeys(["input_size", "resize", "mean", "std", "channel_order"], "checkpoint"),
    }
    assert s["model"] == {
        "arch": "small_resnet",
        "arch_kwargs": {"width": 8},
        "num_classes": N_CLASSES,
        "reshape": "none",
        "source": dict.fromkeys(["arch", "arch_kwargs", "num_classes"], "checkpoint") | {"reshape": "model family"},
    }
    # the same settings given as flags: the same number, every source "flag", no warning
    explicit = run_json(
        capsys,
        *zoo_args(
            data,
            zoo_ckpt,
            *ARCH,
            "--input-size",
            ZOO_SIZE,
            "--resize",
            "resize_crop",
            "--mean",
            _commas(ZOO_MEAN),
            "--std",
            _commas(ZOO_STD),
            "--channel-order",
            "rgb",
        ),
    )
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
    assert explicit["iou"] == s["iou"] and explicit["iou_b"] == s["iou_b"]
    assert set(explicit["preprocessing"]["source"].values()) == {"flag"}
    # the old behaviour (224 whatever the checkpoint says) gives another number
    at_224 = score_model(model, BoxDataset(records, input_size=224, resize="resize_crop"), mean=ZOO_MEAN, std=ZOO_STD)
    assert at_224.iou() != s["iou"]
    # text output says what was chosen and where from
    rc, out, err = run(capsys, *zoo_args(data, zoo_ckpt))
    assert rc == 0, err
    assert "model: small_resnet {'width': 8} (checkpoint), 3 outputs (checkpoint)" in out
    assert (
        f"preprocessing: input {ZOO_SIZE} (checkpoint), resize_crop (checkpoint), mean {ZOO_MEAN} (checkpoint), "
        f"std {ZOO_STD} (checkpoint), channels rgb (checkpoint)"
    ) in out
    assert "gradcam at layer4" in out


def test_flag_contradicting_the_checkpoint_wins_with_a_warning(capsys, data, zoo_ckpt, model):
    with pytest.warns(UserWarning) as caught:
        s = run_json(capsys, *zoo_args(data, zoo_ckpt, "--input-size", 224, "--mean", "0.485,0.456,0.406"))
    msgs = [str(w.message) for w in caught]
    assert any(
        f"--input-size 224 contradicts the checkpoint's input_size {ZOO_SIZE}" in m and str(zoo_ckpt) in m for m in msgs
    ), msgs
    assert any(f"--mean [0.485, 0.456, 0.406] contradicts the checkpoint's mean {ZOO_MEAN}" in m for m in msgs), msgs
    source = s["preprocessing"]["source"]
    assert s["preprocessing"]["input_size"] == 224 and source["input_size"] == source["mean"] == "flag"
    assert source["resize"] == source["std"] == source["channel_order"] == "checkpoint"
    records, _ = read_layout(data, "csv", "train")
    e = score_model(
        model, BoxDataset(records, input_size=224, resize="resize_crop"), mean=(0.485, 0.456, 0.406), std=ZOO_STD
    )
    assert s["iou"] == e.iou()


def test_defaults_when_neither_flag_nor_checkpoint_says(capsys, data, checkpoints):
    s = run_json(capsys, *base_args(data, checkpoints["plain"], *ARCH))  # base_args gives --input-size only
    p = s["preprocessing"]
    assert (p["input_size"], p["resize"], p["channel_order"]) == (SIZE, "resize", "rgb")
    assert p["mean"] == [0.485, 0.456, 0.406] and p["std"] == [0.229, 0.224, 0.225]
    assert p["source"] == {
        "input_size": "flag",
        "resize": "default",
        "mean": "default",
        "std": "default",
        "channel_order": "default",
    }


def test_checkpoint_classes_other_than_the_datas_warn(capsys, data, model, tmp_path):
    path = tmp_path / "other_classes.pt"
    torch.save(_zoo_like(model, ["cat", "dog", "emu"]), path)
    with pytest.warns(UserWarning, match=r"classes \[cat, dog, emu\] differ from the data's"):
        run_json(capsys, *zoo_args(data, path))


def test_bgr_equals_rgb_on_channel_swapped_images(capsys, data, checkpoints, tmp_path):
    """--channel-order bgr reverses the channels of each batch before normalising: scoring the
    original images so equals scoring RGB on images whose channels were swapped on disk."""
    import shutil

    swapped = tmp_path / "swapped"
    shutil.copytree(data, swapped)
    for png in (swapped / "images" / "train").glob("*.png"):
        with Image.open(png) as im:
            Image.fromarray(np.asarray(im.convert("RGB"))[:, :, ::-1].copy()).save(png)
    table_bgr, table_swapped = tmp_path / "bgr.csv", tmp_path / "swapped.csv"
    bgr = run_json(
        capsys, *base_args(data, checkpoints["plain"], *ARCH, "--channel-order", "bgr", "--per-image", table_bgr)
    )
    rgb_swapped = run_json(capsys, *base_args(swapped, checkpoints["plain"], *ARCH, "--per-image", table_swapped))
    rgb = run_json(capsys, *base_args(data, checkpoints["plain"], *ARCH))
    assert bgr["preprocessing"]["channel_order"] == "bgr" and bgr["preprocessing"]["source"]["channel_order"] == "flag"
    assert bgr["iou"] == rgb_swapped["iou"] and bgr["iou_b"] == rgb_swapped["iou_b"]
    pd.testing.assert_frame_equal(pd.read_csv(table_bgr), pd.read_csv(table_swapped))
    assert (bgr["iou"], bgr["accuracy"]) != (rgb["iou"], rgb["accuracy"])  # the flag changes what the model sees


@pytest.mark.parametrize("bad", ["-0.5", "1.5", "nan"])
def test_bad_threshold_is_refused_before_anything_is_read(capsys, tmp_path, bad):
    missing = tmp_path / "no.pt"  # neither the checkpoint nor the data exist: the threshold is checked first
    rc, out, err = run(capsys, "score", "--checkpoint", missing, "--data", tmp_path / "nodata", "--threshold", bad)
    assert rc == 2 and out == ""
    assert err == (
        f"camgap: error: threshold {float(bad)!r} is outside [0, 1): the CAM threshold rho selects pixels of the "
        "normalised CAM, which lies in [0, 1]\n"
    )


@pytest.mark.parametrize("where", ["weights", "logits"])
def test_non_finite_one_line_rc_2(capsys, data, model, tmp_path, where):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if where == "weights":
        state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
        expected = "non-finite values in parameter 'layer2.0.conv1.weight'"
    else:  # finite weights whose products overflow float32: the pooled features are >= 0 (after a ReLU)
        state["fc.weight"].fill_(3e38)
        state["fc.bias"].fill_(3e38)
        expected = "the model's logits are not finite"
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    rc, out, err = run(capsys, *base_args(data, path, *ARCH, "--json"))
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("camgap: error: ") and expected in err


# --- models from elsewhere: the reference release, timm -------------------------------------------


# resnet18's layer4 is 3x3 at 96 px (1x1 at the data's 32 px: refused, see the test below)
RESNET_SIZE = 96


def test_reference_release_checkpoint(capsys, data, tmp_path):
    """The reference release's checkpoints: a torchvision ResNet18 with 20 outputs saved as
    {'model_state_dict': DataParallel state}, trained on BGR images, scored with its Grad-CAM++ name."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=20).eval()
    path = tmp_path / "ref.pt"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    s = run_json(
        capsys,
        *base_args(
            data, path, "--arch", "resnet18", "--num-classes", 20, "--cam", "gradcampp", "--channel-order", "bgr"
        ),
        "--input-size",
        RESNET_SIZE,
    )
    records, _ = read_layout(data, "csv", "train")
    dataset = BoxDataset(records, input_size=RESNET_SIZE)
    e = score_model(model, dataset, cam="gradcam++", channel_order="bgr", batch_size=4)
    assert s["cam"] == "gradcam++" and s["target_layer"] == "layer4"
    assert same(s["iou"], e.iou()) and same(s["iou_b"], e.iou_b())
    assert s["model"]["num_classes"] == 20 and s["preprocessing"]["channel_order"] == "bgr"


def test_timm_checkpoint(capsys, data, tmp_path):
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = create_model("timm:resnet18", num_classes=N_CLASSES).eval()
    path = tmp_path / "timm.pt"
    torch.save(model.state_dict(), path)
    flags = ["--arch", "timm:resnet18", "--num-classes", N_CLASSES, "--input-size", RESNET_SIZE]
    s = run_json(capsys, *base_args(data, path, *flags))
    records, _ = read_layout(data, "csv", "train")
    e = score_model(model, BoxDataset(records, input_size=RESNET_SIZE), batch_size=4)
    assert s["target_layer"] == "layer4" and s["model"]["arch"] == "timm:resnet18"
    assert same(s["iou"], e.iou()) and same(s["iou_b"], e.iou_b())


def test_a_map_under_3x3_is_an_error_naming_the_input_size(capsys, data, tmp_path):
    """resnet18 downsamples by 32: at the data's 32 px its layer4 map is 1x1 (a constant CAM, an
    IoU that means nothing); the error names 96 px (3x3), and --force scores anyway, with a warning."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=N_CLASSES).eval()
    path = tmp_path / "r18.pt"
    torch.save(model.state_dict(), path)
    with torch.no_grad():  # the oracle: the stages run one by one
        stem = model.maxpool(model.relu(model.bn1(model.conv1(torch.zeros(1, 3, SIZE, SIZE)))))
        assert model.layer4(model.layer3(model.layer2(model.layer1(stem)))).shape[-2:] == (1, 1)
    flags = ["--arch", "resnet18", "--num-classes", N_CLASSES]
    rc, out, err = run(capsys, *base_args(data, path, *flags))
    assert rc == 2 and out == ""
    assert err == (
        f"camgap: error: {path}: the target layer layer4 gives a 1x1 map at input size 32 (the model "
        "downsamples by 32; 224 px gives 7x7): a CAM of fewer than 3x3 cells cannot show where the model looks; "
        "use --input-size 96 or more, or --force to score anyway\n"
    )
    rc, out, err = run(capsys, *base_args(data, path, *flags, "--layer", "layer2", "--json"))
    assert rc == 0 and json.loads(out)["target_map"] == [4, 4]  # 32 px / 8: large enough
    with pytest.warns(UserWarning) as caught:
        rc, out, err = run(capsys, *base_args(data, path, *flags, "--force", "--json"))
    assert rc == 0, err
    s = json.loads(out)
    assert s["target_map"] == [1, 1] and s["target_layer"] == "layer4"
    assert [str(w.message) for w in caught] == [
        f"{path}: the target layer layer4 gives a 1x1 map at input size 32 (the model downsamples by 32; 224 px "
        "gives 7x7): a CAM of fewer than 3x3 cells cannot show where the model looks; scoring anyway (--force)"
    ]


def test_score_and_predict_build_one_score_options(capsys, monkeypatch, data, checkpoints, tmp_path):
    """Both commands turn the same flags into the same ScoreOptions and score through one function."""
    import camgap.cli as cli
    import camgap.measures.score as score_module
    from camgap.measures.score import ScoreOptions
    from camgap.study.predict import DataInfo, ReferenceSet, fit_gap

    seen: list[ScoreOptions] = []
    real = score_module.score_model

    def spy(model, data, options=None, **kw):
        seen.append(options)
        return real(model, data, options, **kw)

    monkeypatch.setattr(score_module, "score_model", spy)
    fit = fit_gap([0.0, 0.25, 0.5, 1.0], [10.0, 12.0, 14.0, 16.0])
    reference = ReferenceSet(fit, ("small_resnet",), (SIZE,), ("layer4",), DataInfo(None, None, None))
    monkeypatch.setattr(cli, "_reference_fit", lambda *a: reference)
    flags = ["--cam", "gradcampp", "--threshold", "0.2,0.4", "--class-boxes-only", "--workers", 0, *ARCH]
    s = run_json(capsys, *base_args(data, checkpoints["plain"], *flags))
    rc, out, err = run(
        capsys, "predict", "--zoo", tmp_path, *base_args(data, checkpoints["plain"], *flags)[1:], "--json"
    )
    assert rc == 0, err
    want = ScoreOptions(
        cam="gradcam++",
        thresholds=(0.2, 0.4),
        batch_size=4,
        class_boxes_only=True,
        device="cpu",
        progress=True,
        keep_logits=False,
    )
    # the preprocessing (the defaults here) filled in by the same function; neither keeps logits
    assert seen == [want, want]
    assert json.loads(out)["iou"] == s["by_threshold"]["0.2"]["iou"]


@pytest.mark.parametrize(
    "flag, message",
    [
        (["--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
        (["--cam", "gradcam", "--threshold", "0.1,1"], "threshold 1.0 is outside [0, 1)"),
    ],
)
def test_bad_score_options_are_refused_before_anything_is_read(capsys, tmp_path, flag, message):
    missing = tmp_path / "no.pt"
    rc, out, err = run(capsys, "score", "--checkpoint", missing, "--data", tmp_path / "nodata", *flag)
    assert rc == 2 and out == "" and err.startswith(f"camgap: error: {message}")


# --- boxes as the user meant them; files refused by their header --------------------------------


def _last_line(err: str) -> str:
    """The error line (the csv layout's class mapping is logged before it)."""
    return err.splitlines()[-1] + "\n"


def _rewrite_boxes(root, change) -> None:
    """Rewrite train.csv with `change(row)` applied to each row (dicts of the csv's columns)."""
    frame = pd.read_csv(root / "train.csv", dtype=str)
    rows = [change(dict(r)) for _, r in frame.iterrows()]
    pd.DataFrame(rows, columns=frame.columns).to_csv(root / "train.csv", index=False)


def test_fractional_boxes_are_an_error_suggesting_box_units_relative(capsys, tmp_path, checkpoints, expected):
    root = _fresh_synth(tmp_path)

    def to_fractions(row):
        return row | {k: repr(int(row[k]) / SIZE) for k in ("xmin", "ymin", "xmax", "ymax")}  # exact in binary

    _rewrite_boxes(root, to_fractions)
    rc, out, err = run(capsys, *base_args(root, checkpoints["plain"], *ARCH, "--json"))
    assert rc == 2 and out == ""
    assert _last_line(err) == (
        f"camgap: error: {root / 'train.csv'}: all {N} boxes lie within [0, 1]: fractions of the image size? "
        "pass --box-units relative (or --box-units pixels if they are pixel coordinates)\n"
    )
    s = run_json(capsys, *base_args(root, checkpoints["plain"], *ARCH, "--box-units", "relative"))
    assert s["iou"] == expected.iou() and s["iou_b"] == expected.iou_b()  # the pixel boxes, exactly
    assert s["n_images"] == N and s["n_no_reference"] == 0 and s["n_boxes_dropped"] == 0
    records, _ = read_layout(root, "csv", box_units="relative")
    pixels, _ = read_layout(_fresh_synth(tmp_path / "pixels"), "csv")
    for r, p in zip(records, pixels):
        assert torch.equal(BoxDataset([r], input_size=SIZE)[0][2], BoxDataset([p], input_size=SIZE)[0][2])


def test_box_units_relative_refuses_a_box_outside_0_1(capsys, tmp_path, checkpoints):
    root = _fresh_synth(tmp_path)
    rc, out, err = run(capsys, *base_args(root, checkpoints["plain"], *ARCH, "--box-units", "relative"))
    assert rc == 2
    assert _last_line(err) == (
        f"camgap: error: {root / 'images' / 'train' / '00000.png'}: box (6.0, 16.0, 18.0, 28.0) is not a "
        "fraction of the image size (--box-units relative: each in [0, 1])\n"
    )


def test_boxes_wholly_outside_the_image_are_counted(capsys, tmp_path, checkpoints):
    root = _fresh_synth(tmp_path)

    def push_out(row):  # two images' boxes moved past the 32 x 32 image: nothing of them is left
        if row["path"].endswith(("00001.png", "00004.png")):
            row |= {"xmin": "40", "ymin": "1", "xmax": "50", "ymax": "9"}
        return row

    _rewrite_boxes(root, push_out)
    with pytest.warns(UserWarning, match=r"00001\.png: dropped 1 degenerate box"):
        s = run_json(capsys, *base_args(root, checkpoints["plain"], *ARCH))
    assert s["n_boxes_dropped"] == 2 and s["n_no_reference"] == 2 and s["n_images"] == N
    with pytest.warns(UserWarning, match="degenerate box"):
        rc, out, err = run(capsys, *base_args(root, checkpoints["plain"], *ARCH))
    assert rc == 0 and "without reference 2, boxes outside their image 2," in out


def test_truncated_png_and_bomb_header_name_the_file(capsys, tmp_path, checkpoints):
    from tests.test_images import bomb_png, truncated_1bit_png  # decoding it is known not to crash

    root = _fresh_synth(tmp_path)
    cut, bomb = root / "images" / "train" / "00002.png", root / "images" / "train" / "00003.png"
    cut.write_bytes(truncated_1bit_png())
    bomb.write_bytes(bomb_png())
    rc, out, err = run(capsys, *base_args(root, checkpoints["plain"], *ARCH, "--json"))
    assert rc == 2
    assert _last_line(err).startswith(f"camgap: error: {cut}: corrupt or unsupported image (image file is truncated")
    with pytest.warns(UserWarning, match="skipping"):
        s = run_json(capsys, *base_args(root, checkpoints["plain"], *ARCH, "--skip-bad"))
    assert s["n_skipped"] == 2 and s["n_images"] == N - 2
    cut.unlink()
    bomb.unlink()
    frame = pd.read_csv(root / "train.csv", dtype=str)
    frame[~frame["path"].str.endswith(("00002.png", "00003.png"))].to_csv(root / "train.csv", index=False)
    rc, out, err = run(capsys, *base_args(root, checkpoints["plain"], *ARCH, "--max-pixels", "1e3", "--json"))
    assert _last_line(err) == (
        f"camgap: error: {root / 'images' / 'train' / '00000.png'}: image header declares 32x32 pixels (0.0 "
        "megapixels), over the limit of 0.001 megapixels and 16384 px a side; raise --max-pixels to read it\n"
    )


def test_empty_class_folder_is_skipped_and_counted(capsys, tmp_path, two_class_ckpt):
    root = make_imagenet(tmp_path / "inet")
    (root / "train" / "n00").mkdir()
    args = [*base_args(root, two_class_ckpt, "--arch", "small_resnet", "--width", 8, "--num-classes", 2)]
    args[args.index("csv")] = "imagenet"
    rc, out, err = run(capsys, *args)
    assert rc == 2 and f"camgap: error: {root / 'train' / 'n00'}: empty class folder" in err
    s = run_json(capsys, *args, "--skip-bad")
    assert s["n_skipped"] == 1 and s["n_images"] == 3


def test_verbose_score_prints_the_class_mapping(capsys, data, checkpoints):
    mapping = (
        "csv layout: 3 classes from train.csv, labels sorted as strings: "
        "'00_circle' -> 0, '01_square' -> 1, '02_triangle' -> 2"
    )
    rc, out, err = run(capsys, "-v", *base_args(data, checkpoints["plain"], *ARCH, "--json"))
    assert rc == 0 and mapping in err.splitlines()
    rc, out, err = run(capsys, *base_args(data, checkpoints["plain"], *ARCH, "--json"))
    assert rc == 0 and "csv layout" not in err
