"""`camgap predict`: the gap and its interval stay inside what the model's training accuracy
allows, `--json` prints one object on stdout (warnings on stderr and in the object), and the new
model is read as `camgap score` reads it (flag > checkpoint > default), never with the reference
set's preprocessing; each way it differs from the reference set is a warning, and a target-layer
map under 3x3 is an error. The reference fit is set by hand here, or the tiny model set's with IoUs
set by hand (a measured model set is tested in test_cli_study.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import camgap.cli as cli
from camgap.data import BoxDataset, read_layout
from camgap.data.synthetic import write_synthetic
from camgap.measures.registry import score_params
from camgap.measures.score import score_model
from camgap.models import create_model
from camgap.study.predict import DataInfo, ReferenceSet, fit_gap
from camgap.zoo.registry import ZooDB
from tests.helpers.zoo import frames

SIZE = 32
# gap = ~300 pp whatever the IoU: impossible for any model (at most 100 * train acc)
FIT = fit_gap([0.0, 0.25, 0.5, 1.0], [300.0, 305.0, 310.0, 290.0])


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
def reference(monkeypatch, setup):
    """A reference set of small_resnet models scored at 32 px (layer4) on the setup's data."""
    data = setup[0]
    same_data = DataInfo(str(data.resolve()), tuple(read_layout(data, "csv", "train")[1]), 6)
    calls = []

    def fake(zoo, min_train_acc, cam, threshold, masks):
        calls.append((zoo, min_train_acc, cam, threshold, masks))
        return ReferenceSet(FIT, ("small_resnet",), (SIZE,), ("layer4",), same_data)

    monkeypatch.setattr(cli, "_reference_fit", fake)
    return calls


def predict(capsys, ckpt, data, *extra):
    return predict_at(capsys, "refzoo", ckpt, data, *extra)


def predict_at(capsys, zoo, ckpt, data, *extra):
    capsys.readouterr()
    rc = cli.main(
        [
            "predict",
            "--zoo",
            str(zoo),
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
    # 4 reference models: too few to calibrate on, the t interval stays (and says so)
    assert s["interval_kind"] == "t" and s["fit"]["loo_coverage"] == pytest.approx(FIT.loo_coverage())
    assert s["preprocessing"]["input_size"] == 48 and set(s["preprocessing"]["source"].values()) == {"checkpoint"}
    assert s["target_layer"] == "layer4" and s["confidence"] == 0.95
    # warnings go to stderr (and into the object), never onto stdout
    assert "training accuracy 0.333 is below 0.8" in err and err.startswith("camgap: warning: ")
    assert [w.split(":")[0] for w in s["warnings"]] == [
        "the model's input size 48 is not the reference set's (32)",
        "the fit rests on 4 reference models (fewer than 10)",
        "the model's training accuracy 0.333 is below 0.8",
    ]
    assert err.count("camgap: warning: ") == 3
    assert s["fit"]["warnings"] == [s["warnings"][1]] and s["target_map"] == [6, 6]  # 48 px / 8
    assert reference == [(cli.Path("refzoo"), 0.8, "gradcam", 0.1, "boxes")]


def test_text_says_clipped_and_the_defaults_fill_in_as_score_does(setup, reference, capsys):
    data, ckpts, _ = setup
    rc, out, err = predict(capsys, ckpts["plain"], data, "--arch", "small_resnet", "--width", 4)
    assert rc == 0, err
    hi = 100 / 3
    assert (
        f"predicted gap {hi:.2f} pp, 95% prediction interval [{hi:.2f}, {hi:.2f}] pp "
        f"(clipped to the possible range [{hi - 100:.2f}, {hi:.2f}] pp)"
    ) in out
    # a bare state_dict records nothing: `score`'s defaults, never the reference set's preprocessing
    assert (
        "preprocessing: input 224 (default), resize (default), mean [0.485, 0.456, 0.406] (default), "
        "std [0.229, 0.224, 0.225] (default), channels rgb (default)"
    ) in out
    assert "model: small_resnet {'width': 4} (flag), 3 outputs (data)" in out
    # one line each, after the prediction: what differs from the reference set, the fit, the model
    assert [ln for ln in out.splitlines() if ln.startswith("WARNING: ")] == [
        "WARNING: the model's input size 224 is not the reference set's (32): its CAM maps have another "
        "resolution, so the fit may not apply",
        "WARNING: the fit rests on 4 reference models (fewer than 10): its slope and interval are rough",
        "WARNING: the model's training accuracy 0.333 is below 0.8: it has not fitted its training set, and "
        "the reference fit covers only models that have",
    ]


def test_bad_threshold_before_the_reference_set_is_read(setup, reference, capsys):
    data, ckpts, _ = setup
    rc, out, err = predict(capsys, ckpts["zoo"], data, "--threshold", 1.5)
    assert rc == 2 and out == "" and "threshold 1.5 is outside [0, 1)" in err
    assert reference == []


def test_a_held_out_split_is_refused_before_the_reference_set_is_read(setup, reference, capsys):
    data, ckpts, _ = setup
    rc, out, err = predict(capsys, ckpts["zoo"], data, "--split", "test")
    assert rc == 2 and out == "" and reference == []
    assert err.splitlines()[-1] == (
        "camgap: error: --split test: predict fits the gap on the IoU over training images, as its reference "
        "set's IoU is; the held-out IoU is `camgap score --split test`"
    )


def test_predict_writes_the_per_image_table_and_overlays_as_score_does(setup, reference, capsys, tmp_path):
    data, ckpts, _ = setup
    table, pictures = tmp_path / "per_image.csv", tmp_path / "overlays"
    rc, out, err = predict(
        capsys, ckpts["zoo"], data, "--json", "--no-progress", "--per-image", table, "--overlays", pictures, "--n", 2
    )
    assert rc == 0, err
    rows = pd.read_csv(table)
    assert len(rows) == json.loads(out)["n_images"] == 6
    assert json.loads(out)["iou"] == pytest.approx(rows["iou@0.1"].mean())
    assert len(list(pictures.glob("*.png"))) == 2


# --- a foreign checkpoint against a real 32-px reference set -------------------------------------


@pytest.fixture
def reference_zoo(tiny_zoo_copy):
    """The tiny model set (small_resnet10, width 4, 32 px) with an IoU set by hand for each of its
    3 trained models: IoU = 0.5 - gap / 200 exactly, so the fit is gap = 100 - 200 * IoU, r = -1."""
    runs, _ = frames(tiny_zoo_copy)
    trained = runs[runs.trained & (runs.status == "done")]
    assert len(trained) == 3
    with ZooDB.in_dir(tiny_zoo_copy) as reg:
        for run_id, gap in zip(trained.run_id, trained.gap):
            reg.record_measurement(run_id, "iou", score_params("gradcam", 0.1, "boxes"), 0.5 - gap / 200)
    return tiny_zoo_copy


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    """A torchvision resnet18 (random init, 2 outputs), saved as a bare state_dict and as a
    checkpoint that records a 32 px input, with small data of its own (2 classes x 1 image)."""
    root = tmp_path_factory.mktemp("resnet18")
    data = write_synthetic(root / "d", seed=3, classes=2, train_per_class=1, test_per_class=1, size=SIZE)
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=2).eval()
    ckpts = {"plain": root / "plain.pt", "at32": root / "at32.pt"}
    torch.save(model.state_dict(), ckpts["plain"])
    torch.save(
        {"model_state_dict": model.state_dict(), "arch": "resnet18", "num_classes": 2, "input_size": 32}, ckpts["at32"]
    )
    return data, ckpts, model


def layer4_side(model, size: int) -> int:
    """The side of resnet18's layer4 map at `size` px, by running its stages one by one."""
    m = model
    x = m.maxpool(m.relu(m.bn1(m.conv1(torch.zeros(1, 3, size, size)))))
    with torch.no_grad():
        return int(m.layer4(m.layer3(m.layer2(m.layer1(x)))).shape[-1])


def run_predict(capsys, zoo, ckpt, data, *extra):
    return predict_at(capsys, zoo, ckpt, data, "--arch", "resnet18", "--min-train-acc", 0, *extra)


def test_a_torchvision_resnet18_is_scored_at_its_own_input_size_with_warnings(
    tiny_zoo, reference_zoo, resnet18, capsys
):
    """The issue's probe: predict took the reference set's 32 px, where layer4 is 1x1 (IoU 0,
    gap -66.67 pp, no word). Now: score's defaults (224 px, 7x7) and one warning per difference."""
    data, ckpts, model = resnet18
    rc, out, err = run_predict(capsys, reference_zoo, ckpts["plain"], data, "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert s["preprocessing"]["input_size"] == 224 and s["preprocessing"]["source"]["input_size"] == "default"
    assert s["target_map"] == [7, 7] == [layer4_side(model, 224)] * 2 and s["target_layer"] == "layer4"
    records, _ = read_layout(data, "csv", "train")
    e = score_model(model, BoxDataset(records, input_size=224), device="cpu")
    assert s["iou"] == pytest.approx(e.iou(), abs=1e-6) and s["n_images"] == 2
    zoo_data = f"{tiny_zoo.data.resolve()}, 4 classes, 80 training images"
    assert s["warnings"] == [
        "the model's architecture resnet18 is not the reference set's (small_resnet10): the relation of IoU "
        "and gap may differ between architectures, so the fit may not apply",
        "the model's input size 224 is not the reference set's (32): its CAM maps have another resolution, "
        "so the fit may not apply",
        f"the model is scored on {data.resolve()}, 2 classes, 2 training images, the reference set was "
        f"trained on {zoo_data}: the fit may not apply to other data",
        "the fit rests on 3 reference models (fewer than 10): its slope and interval are rough",
        *s["warnings"][4:],  # the model's own training accuracy, if below 0.8
    ]
    assert s["fit"]["slope"] == pytest.approx(-200) and s["fit"]["r"] == pytest.approx(-1)
    assert s["reference"] == {
        "archs": ["small_resnet10"],
        "input_sizes": [32],
        "target_layers": ["layer4"],
        "data": zoo_data,
    }
    assert err.count("camgap: warning: ") == len(s["warnings"])


def test_another_target_layer_than_the_reference_sets_is_said(reference_zoo, resnet18, capsys):
    data, ckpts, _ = resnet18
    rc, out, err = run_predict(capsys, reference_zoo, ckpts["plain"], data, "--layer", "layer3")
    assert rc == 0, err
    assert (
        "WARNING: the model's target layer layer3 is not the reference set's (layer4): its CAM is taken "
        "elsewhere, so the fit may not apply"
    ) in out.splitlines()


def test_a_map_under_3x3_is_an_error_naming_the_input_size(reference_zoo, resnet18, capsys):
    """A checkpoint that records 32 px: resnet18's layer4 is 1x1 there; 96 px (3 x its
    downsampling of 32) gives 3x3."""
    data, ckpts, model = resnet18
    assert (layer4_side(model, 32), layer4_side(model, 96), layer4_side(model, 224)) == (1, 3, 7)
    rc, out, err = run_predict(capsys, reference_zoo, ckpts["at32"], data)
    assert rc == 2 and out == ""
    assert err == (
        f"camgap: error: {ckpts['at32']}: the target layer layer4 gives a 1x1 map at input size 32 (the model "
        "downsamples by 32; 224 px gives 7x7): a CAM of fewer than 3x3 cells cannot show where the model looks; "
        "use --input-size 96 or more, or --force to score anyway\n"
    )
    rc, out, err = run_predict(capsys, reference_zoo, ckpts["at32"], data, "--input-size", 96, "--json")
    assert rc == 0 and json.loads(out)["target_map"] == [3, 3]
    rc, out, err = run_predict(capsys, reference_zoo, ckpts["at32"], data, "--force", "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert s["target_map"] == [1, 1] and s["preprocessing"]["source"]["input_size"] == "checkpoint"
    assert s["warnings"][0].endswith("cannot show where the model looks; scoring anyway (--force)")
