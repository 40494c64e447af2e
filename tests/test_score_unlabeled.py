"""`camgap score --split test` on held-out images without labels (unknown classes, empty labels):
scored for IoU like labelled ones, left out of the accuracy; and the train split stays strict."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from camgap.cli import main
from camgap.data.synthetic import write_synthetic
from camgap.errors import InputError
from camgap.measures.score import ScoreOptions
from camgap.models import create_model
from camgap.scoring import score_checkpoint

SIZE, N_CLASSES, TEST_PER_CLASS = 32, 3, 2
N_TEST = N_CLASSES * TEST_PER_CLASS


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("unlabeled") / "synth"
    write_synthetic(out, seed=3, classes=N_CLASSES, train_per_class=2, test_per_class=TEST_PER_CLASS, size=SIZE)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(create_model("small_resnet", num_classes=N_CLASSES, width=8).state_dict(), path)
    return path


def _relabel(data: Path, root: Path, split: str, labels: dict[int, str]) -> Path:
    """A copy of `data` whose `split`.csv gives image k (in the file's order) the label labels[k]."""
    root = Path(shutil.copytree(data, root))
    table = pd.read_csv(root / f"{split}.csv", dtype=str, keep_default_na=False)
    paths = list(dict.fromkeys(table["path"]))
    for k, label in labels.items():
        table.loc[table["path"] == paths[k], "label"] = label
    table.to_csv(root / f"{split}.csv", index=False)
    return root


def _score_args(checkpoint: Path, root: Path, *extra) -> list[str]:
    args = ["score", "--checkpoint", checkpoint, "--data", root, "--layout", "csv", "--split", "test"]
    args += ["--arch", "small_resnet", "--width", 8, "--num-classes", N_CLASSES, "--input-size", SIZE]
    return [str(a) for a in [*args, "--device", "cpu", "--batch-size", 4, "--no-progress", *extra]]


def _score(capsys, checkpoint: Path, root: Path, table: Path) -> tuple[dict, pd.DataFrame]:
    capsys.readouterr()
    assert main(_score_args(checkpoint, root, "--json", "--per-image", table)) == 0
    return json.loads(capsys.readouterr().out), pd.read_csv(table)


def test_unknown_and_empty_labels_score_the_same_iou_and_leave_the_accuracy(capsys, data, checkpoint, tmp_path):
    labelled, per_labelled = _score(capsys, checkpoint, data, tmp_path / "labelled.csv")
    root = _relabel(data, tmp_path / "data", "test", {1: "zebra", 4: ""})
    summary, per_image = _score(capsys, checkpoint, root, tmp_path / "unlabeled.csv")
    # IoU does not depend on labels: the CAM is the predicted class's
    iou_columns = [c for c in per_image.columns if "@" in c or c in ("energy_pg", "pointing_game")]
    assert iou_columns and per_image["image_id"].tolist() == per_labelled["image_id"].tolist()
    assert per_image[iou_columns].equals(per_labelled[iou_columns])
    assert per_image["pred"].tolist() == per_labelled["pred"].tolist()
    for key in ("iou", "iou_b", "by_threshold", "n_images", "n_no_reference"):
        assert summary[key] == labelled[key], key
    # the two relabelled images: label -1, `correct` empty; the accuracy is over the other four
    unlabeled = per_image.index.isin([1, 4])
    assert per_image.loc[unlabeled, "label"].tolist() == [-1, -1]
    assert per_image.loc[unlabeled, "correct"].isna().all() and per_image.loc[~unlabeled, "correct"].notna().all()
    kept = per_labelled[~unlabeled]
    assert summary["accuracy"] == pytest.approx(float((kept["label"] == kept["pred"]).mean()), abs=1e-12)
    assert (summary["n_unlabeled"], labelled["n_unlabeled"]) == (2, 0)
    assert summary["split"] == "test" and summary["n_images"] == N_TEST


def test_the_text_output_counts_them_and_says_n_a_without_any_label(capsys, data, checkpoint, tmp_path):
    root = _relabel(data, tmp_path / "data", "test", dict.fromkeys(range(N_TEST), "zebra"))
    capsys.readouterr()
    assert main(_score_args(checkpoint, root)) == 0
    out = capsys.readouterr().out
    assert f"unlabeled {N_TEST}, test accuracy n/a (no image has a known label)" in out
    assert main(_score_args(checkpoint, root, "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["accuracy"] is None and summary["n_unlabeled"] == N_TEST and summary["iou"] is not None
    partly = _relabel(data, tmp_path / "partly", "test", {0: ""})
    assert main(_score_args(checkpoint, partly)) == 0
    assert "unlabeled 1, test accuracy " in (out := capsys.readouterr().out)
    assert f"(over the {N_TEST - 1} labelled images)" in out


def test_the_parquet_table_holds_the_missing_correct_as_null(capsys, data, checkpoint, tmp_path):
    pytest.importorskip("pyarrow")
    root = _relabel(data, tmp_path / "data", "test", {0: "zebra", 5: "zebra"})
    table = tmp_path / "per_image.parquet"
    assert main(_score_args(checkpoint, root, "--per-image", table, "--batch-size", 2)) == 0  # batches of 2, 0, 1
    read = pd.read_parquet(table)
    result, _, _ = score_checkpoint(
        checkpoint,
        root,
        ScoreOptions(batch_size=2),
        layout="csv",
        split="test",
        flags={"arch": "small_resnet", "width": 8, "num_classes": N_CLASSES, "input_size": SIZE},
        device="cpu",
    )
    assert read["correct"].isna().tolist() == [True, False, False, False, False, True]
    assert read["correct"].dtype == result.per_image["correct"].dtype == "boolean"
    pd.testing.assert_frame_equal(read, result.per_image)
    assert result.n_unlabeled == 2 and not math.isnan(result.train_acc)


def test_the_train_split_stays_strict(capsys, data, checkpoint, tmp_path):
    """A training image without a label is refused (an unknown class would only add a class)."""
    from camgap.data import read_layout

    root = _relabel(data, tmp_path / "data", "train", {1: ""})
    args = _score_args(checkpoint, root)
    args[args.index("test")] = "train"
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.fullmatch(
        rf"camgap: error: {re.escape(str(root))}/images/train/\S+: no label \(train.csv row \d+\)", err[0]
    )
    with pytest.raises(InputError, match="unlabeled_ok is for a held-out split; a training image needs its label"):
        read_layout(root, "csv", "train", unlabeled_ok=True)


def test_class_boxes_only_needs_the_labels(capsys, data, checkpoint, tmp_path):
    root = _relabel(data, tmp_path / "data", "test", {0: "zebra", 2: "", 3: "zebra"})
    capsys.readouterr()
    assert main(_score_args(checkpoint, root, "--class-boxes-only")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"camgap: error: {root}: 3 of the {N_TEST} images of the test split")
    assert "--class-boxes-only draws A_G from the boxes of the labelled class" in err[0]
    # score_model itself refuses it too, naming the image (a dataset that was not read by score_checkpoint)
    from camgap.data import BoxDataset, read_layout
    from camgap.measures.score import score_model

    records, _ = read_layout(root, "csv", "test", unlabeled_ok=True)
    model = create_model("small_resnet", num_classes=N_CLASSES, width=8)
    with pytest.raises(InputError, match=r"image \S+: no known label \(-1\), so no boxes of its class"):
        score_model(model, BoxDataset(records, input_size=SIZE), class_boxes_only=True, batch_size=4)


def test_score_model_refuses_a_negative_label_other_than_minus_one():
    from camgap.measures.score import score_model

    class Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i):
            return torch.zeros(3, SIZE, SIZE, dtype=torch.uint8), [-1, -2][i], [[2.0, 2.0, 20.0, 20.0]]

    model = create_model("small_resnet", num_classes=N_CLASSES, width=8)
    refused = r"image 1: label -2 is outside the model's 3 classes \(negative: only -1, no known label, is allowed\)"
    with pytest.raises(InputError, match=refused):
        score_model(model, Items(), batch_size=2)
    result = score_model(model, torch.utils.data.Subset(Items(), [0]), batch_size=2)
    assert result.n_unlabeled == 1 and math.isnan(result.train_acc) and result.summary()["accuracy"] != 0
    assert np.isfinite(result.iou())


def test_masks_of_a_held_out_split_need_no_labels(capsys, data, tmp_path):
    root = _relabel(data, tmp_path / "d", "test", {0: "zebra", 1: ""})
    out = tmp_path / "masks"
    args = ["masks", "--data", root, "--layout", "csv", "--split", "test", "--source", "saliency"]
    args += ["--input-size", SIZE, "--out", out, "--cache", tmp_path / "cache", "--json", "--no-progress"]
    capsys.readouterr()
    assert main([str(a) for a in args]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_written"] == N_TEST == len(list(out.glob("*.png")))
    assert main([str(a) for a in [*args[:6], "train", *args[7:]]]) == 0  # labelled: as before
