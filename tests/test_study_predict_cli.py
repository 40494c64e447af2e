"""`camgap predict`: the gap and its interval stay inside what the model's training accuracy
allows, `--json` prints one object on stdout (warnings on stderr), and the new model is
preprocessed as its checkpoint says, else as the reference set was. The reference fit is
set by hand (a measured model set is tested in test_cli_study.py)."""

from __future__ import annotations

import json

import pytest
import torch

import camgap.cli as cli
from camgap.data import BoxDataset, read_layout
from camgap.data.synthetic import write_synthetic
from camgap.measures.score import score_model
from camgap.models import create_model
from camgap.study.predict import fit_gap

SIZE = 32
# gap = ~300 pp whatever the IoU: impossible for any model (at most 100 * train acc)
FIT = fit_gap([0.0, 0.25, 0.5, 1.0], [300.0, 305.0, 310.0, 290.0])
REFERENCE = {
    "input_size": (SIZE, "reference set"),
    "resize": ("resize", "reference set"),
    "mean": ([0.5, 0.5, 0.5], "reference set"),
    "std": ([0.25, 0.25, 0.25], "reference set"),
    "channel_order": ("rgb", "default"),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Data with 3 balanced classes and a model with hand-set head: it always predicts class 0
    (train acc exactly 1/3) and its Grad-CAM is constant (IoU exactly 0)."""
    root = tmp_path_factory.mktemp("predict")
    data = write_synthetic(root / "d", seed=2, classes=3, train_per_class=2, test_per_class=1, size=SIZE)
    torch.manual_seed(0)
    model = create_model("small_resnet", num_classes=3, width=4)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    _, classes = read_layout(data, "csv", "train")
    ckpts = {"zoo": root / "zoo.pt", "plain": root / "plain.pt"}
    torch.save(
        {
            "model_state_dict": model.state_dict(),
            "arch": "small_resnet",
            "arch_kwargs": {"width": 4},
            "num_classes": 3,
            "classes": classes,
            "input_size": 48,
            "resize": "resize_crop",
            "mean": [0.4, 0.4, 0.4],
            "std": [0.2, 0.2, 0.2],
            "channel_order": "rgb",
        },
        ckpts["zoo"],
    )
    torch.save(model.state_dict(), ckpts["plain"])
    return data, ckpts, model.eval()


@pytest.fixture
def reference(monkeypatch):
    calls = []

    def fake(zoo, min_train_acc, cam, threshold, masks):
        calls.append((zoo, min_train_acc, cam, threshold, masks))
        return FIT, REFERENCE

    monkeypatch.setattr(cli, "_reference_fit", fake)
    return calls


def predict(capsys, ckpt, data, *extra):
    capsys.readouterr()
    rc = cli.main(
        [
            "predict",
            "--zoo",
            "refzoo",
            "--checkpoint",
            str(ckpt),
            "--data",
            str(data),
            "--layout",
            "csv",
            "--device",
            "cpu",
            *map(str, extra),
        ]
    )
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_is_one_object_clipped_to_the_possible_range(setup, reference, capsys):
    data, ckpts, model = setup
    rc, out, err = predict(capsys, ckpts["zoo"], data, "--json", "--no-progress")
    assert rc == 0, err
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1
    s = json.loads(lines[0])
    records, _ = read_layout(data, "csv", "train")
    e = score_model(model, BoxDataset(records, input_size=48, resize="resize_crop"), mean=[0.4] * 3, std=[0.2] * 3)
    assert s["iou"] == e.iou() == 0.0 and s["train_acc"] == e.train_acc == pytest.approx(1 / 3)
    hi = 100 * s["train_acc"]
    assert s["possible_range"] == [pytest.approx(hi - 100), pytest.approx(hi)]
    assert s["clipped"] is True
    assert s["prediction"] == pytest.approx(hi) and s["interval"] == [pytest.approx(hi), pytest.approx(hi)]
    assert s["fit"]["n"] == 4 and s["fit"]["r"] == pytest.approx(FIT.r)
    assert s["preprocessing"]["input_size"] == 48 and set(s["preprocessing"]["source"].values()) == {"checkpoint"}
    assert s["target_layer"] == "layer4" and s["confidence"] == 0.95
    # warnings go to stderr (and into the object), never onto stdout
    assert "training accuracy 0.333 is below 0.8" in err and err.startswith("camgap: warning: ")
    assert any("below 0.8" in w for w in s["warnings"])
    assert reference == [(cli.Path("refzoo"), 0.8, "gradcam", 0.1, "boxes")]


def test_text_says_clipped_and_reference_preprocessing_fills_in(setup, reference, capsys):
    data, ckpts, _ = setup
    rc, out, err = predict(capsys, ckpts["plain"], data, "--arch", "small_resnet", "--width", 4)
    assert rc == 0, err
    hi = 100 / 3
    assert (
        f"predicted gap {hi:.2f} pp, 95% prediction interval [{hi:.2f}, {hi:.2f}] pp "
        f"(clipped to the possible range [{hi - 100:.2f}, {hi:.2f}] pp)"
    ) in out
    # a bare state_dict records nothing: the reference set's preprocessing, the flags for the model
    assert (
        f"preprocessing: input {SIZE} (reference set), resize (reference set), mean [0.5, 0.5, 0.5] "
        "(reference set), std [0.25, 0.25, 0.25] (reference set), channels rgb (default)"
    ) in out
    assert "model: small_resnet {'width': 4} (flag), 3 outputs (data)" in out
    assert "WARNING: the model's training accuracy 0.333 is below 0.8" in out


def test_bad_threshold_before_the_reference_set_is_read(setup, reference, capsys):
    data, ckpts, _ = setup
    rc, out, err = predict(capsys, ckpts["zoo"], data, "--threshold", 1.5)
    assert rc == 2 and out == "" and "threshold 1.5 is outside [0, 1)" in err
    assert reference == []
