"""IoU on held-out images: `camgap score --split test` / `score_checkpoint(split="test")`, and the
`iou_heldout` / `iou_drop` measures of `zoo measure`, end to end in the tiny model set through
the study's tables."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from camgap.cli import main
from camgap.errors import InputError
from camgap.measures.registry import MeasureContext, MeasureError, MeasureUndefined, compute_measure
from camgap.measures.score import ScoreOptions
from camgap.params import to_json
from camgap.scoring import score_checkpoint
from camgap.study.report import run_study, write_study
from camgap.zoo.measure import measure_zoo, score_params
from tests.helpers.zoo import frames, quiet

BATCH = 32  # one batch size for both paths: the float32 CAM pass is then the same computation
PRIMARY = to_json(score_params("gradcam", 0.1, "boxes"))


def _values(meas: pd.DataFrame, measure: str) -> dict[str, float]:
    rows = meas[(meas.measure == measure) & (meas.params == PRIMARY)]
    assert (rows.status == "done").all(), rows
    return dict(zip(rows.run_id, rows.value))


@pytest.fixture(scope="module")
def measured(tmp_path_factory, tiny_zoo):
    """A copy of the tiny model set with IoU, held-out IoU and the drop measured."""
    zoo = Path(shutil.copytree(tiny_zoo.zoo, tmp_path_factory.mktemp("heldout") / "zoo"))
    summary = measure_zoo(zoo, measures=("iou", "iou_heldout", "iou_drop"), batch_size=BATCH, progress=False, log=quiet)
    assert summary.failed == 0 and summary.measured == 4
    return zoo, tiny_zoo.data


def test_iou_heldout_is_score_checkpoint_on_the_test_split_and_the_drop_the_difference(measured):
    zoo, data = measured
    runs, meas = frames(zoo)
    iou, heldout, drop = (_values(meas, m) for m in ("iou", "iou_heldout", "iou_drop"))
    assert set(heldout) == set(drop) == set(runs.run_id)
    for run_id in runs.run_id:
        result, settings, _ = score_checkpoint(
            zoo / "runs" / run_id / "final.pt", data, ScoreOptions(batch_size=BATCH), split="test", device="cpu"
        )
        assert settings["split"] == "test" and result.n_images == 4 * 10  # the test split's images
        assert heldout[run_id] == result.iou(0.1)
        assert drop[run_id] == iou[run_id] - heldout[run_id]
    # the held-out pass is not the training pass: other images, other values
    assert any(heldout[r] != iou[r] for r in runs.run_id)


def test_the_study_reports_them_like_the_other_measures(measured, tmp_path):
    zoo, _ = measured
    runs, meas = frames(zoo)
    study = run_study(runs, meas, n_boot=0, thresholds=(0.0,))
    report = write_study(runs, meas, tmp_path, n_boot=0, thresholds=(0.0,)).read_text(encoding="utf-8")
    written = pd.read_csv(tmp_path / "tables" / "table3.csv", index_col=[0, 1])
    trained = runs[runs.trained]
    for measure, row in (("iou_heldout", "IoU held-out"), ("iou_drop", "IoU drop")):
        values = trained.run_id.map(_values(meas, measure))
        want = sps.pearsonr(values.to_numpy(float), trained.gap.to_numpy(float)).statistic
        assert study.table3.n.loc[("Total", row), ">=0"] == len(trained) == 3
        assert study.table3.pearson.loc[("Total", row), ">=0"] == pytest.approx(want, abs=1e-12)
        assert study.ranking.loc[row, "n"] == 3
        assert ("Total", row) in written.index and row in report


def test_score_split_test_from_the_cli_says_the_split(measured, capsys):
    zoo, data = measured
    run_id = frames(zoo)[0].run_id.iloc[0]
    args = ["score", "--checkpoint", zoo / "runs" / run_id / "final.pt", "--data", data, "--split", "test"]
    args += ["--batch-size", BATCH, "--device", "cpu", "--no-progress"]
    assert main([str(a) for a in args]) == 0
    out = capsys.readouterr().out
    assert "test images scored 40, skipped 0" in out and "test accuracy" in out
    assert main([str(a) for a in [*args, "--json"]]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["split"] == "test" and summary["n_images"] == 40
    assert summary["iou"] == _values(frames(zoo)[1], "iou_heldout")[run_id]


def _boxes_set(root: Path, split: str, **values) -> int:
    """Every row of `split`.csv with its box fields set to `values`; the number of rows."""
    table = pd.read_csv(root / f"{split}.csv")
    for key, value in values.items():
        table[key] = value
    table.to_csv(root / f"{split}.csv", index=False)
    return len(table)


@pytest.mark.parametrize("split", ["test", "train"])
def test_a_split_without_boxes_is_refused_in_one_line(measured, tmp_path, capsys, split):
    """The train split too: its IoU was NaN, "without reference" every image, and exit 0."""
    zoo, data = measured
    root = Path(shutil.copytree(data, tmp_path / "data"))
    _boxes_set(root, split, xmin=np.nan, ymin=np.nan, xmax=np.nan, ymax=np.nan)
    run_id = frames(zoo)[0].run_id.iloc[0]
    with pytest.raises(InputError, match=f"no image of the {split} split has a box"):
        score_checkpoint(zoo / "runs" / run_id / "final.pt", root, split=split, device="cpu")
    args = ["score", "--checkpoint", zoo / "runs" / run_id / "final.pt", "--data", root, "--split", split]
    assert main([str(a) for a in [*args, "--device", "cpu", "--no-progress"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{root}: no image of the {split} split has a box" in err[0]


@pytest.mark.parametrize("split", ["test", "train"])
def test_a_split_whose_boxes_all_lie_outside_their_images_is_refused_in_one_line(measured, tmp_path, capsys, split):
    """Nothing of a box is left inside its image: the IoU would be NaN; one line, before the model runs."""
    zoo, data = measured
    root = Path(shutil.copytree(data, tmp_path / "data"))
    n = _boxes_set(root, split, xmin=5000, ymin=5000, xmax=6000, ymax=6000)
    run_id = frames(zoo)[0].run_id.iloc[0]
    args = ["score", "--checkpoint", zoo / "runs" / run_id / "final.pt", "--data", root, "--split", split]
    assert main([str(a) for a in [*args, "--device", "cpu", "--no-progress"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"camgap: error: {root}: every box of the {split} split ({n}) lies wholly outside its image: its IoU "
        "compares the CAM with the boxes (check their coordinates and --box-units, or give --masks saliency|DIR)"
    ]
    saliency = [*args, "--device", "cpu", "--no-progress", "--masks", "saliency", "--cache", tmp_path / "cache"]
    with pytest.warns(UserWarning, match="degenerate box"):  # A_G from the images: the boxes are not needed
        assert main([str(a) for a in saliency]) == 0


# --- the context alone: which passes run, and the undefined cases ----------------------------


class _Result:
    """A ScoreResult's IoU: `iou(t)` the value given for the pass."""

    logits = labels = None

    def __init__(self, value: float, thresholds):
        self.value, self.thresholds = value, tuple(thresholds)

    def iou(self, t: float) -> float:
        assert t in self.thresholds
        return self.value


def _context(train: float, test: float, calls: list):
    def score_pass(cam, masks, thresholds, data="train"):
        calls.append((cam, masks, tuple(thresholds), data))
        return _Result(train if data == "train" else test, thresholds)

    return MeasureContext(model=torch.nn.Linear(1, 1), score_pass=score_pass, test_data=lambda: "test")


def test_one_test_pass_for_both_and_the_train_iou_from_the_shared_pass():
    calls: list = []
    ctx = _context(0.75, 0.5, calls)
    ctx.need_score("gradcam", "boxes", (0.1, 0.3))  # the shared pass at two thresholds
    label = "cam=gradcam,masks=boxes,threshold=0.1"
    assert compute_measure("iou_heldout", ctx) == {label: 0.5}
    assert compute_measure("iou_drop", ctx) == {label: 0.25}
    assert calls == [("gradcam", "boxes", (0.1, 0.3), "train"), ("gradcam", "boxes", (0.1,), "test")]


@pytest.mark.parametrize(("train", "test", "split"), [(0.5, math.nan, "test"), (math.nan, 0.5, "training")])
def test_undefined_when_a_split_has_no_box(train, test, split):
    ctx = _context(train, test, [])
    message = f"no {split} image has a box: the IoU on the {split} images has no value"
    with pytest.raises(MeasureUndefined, match=message):
        compute_measure("iou_drop", ctx)


def test_without_the_test_split_the_measure_says_what_it_needs():
    ctx = MeasureContext(model=torch.nn.Linear(1, 1), score_pass=lambda *a, **k: None)
    with pytest.raises(MeasureError, match=r"needs the test split \(ctx.test_data\)"):
        compute_measure("iou_heldout", ctx)
