"""`zoo export`: counts as integers, every other number to 6 significant digits, accuracies and
the gap in percentage points (named _pp), the same numbers in CSV and Parquet."""

import json

import pandas as pd
import pytest

from camgap.zoo.build import EXPORT_COLUMNS, export
from camgap.zoo.config import RunConfig, RunResult
from camgap.zoo.grid import RunSpec
from camgap.zoo.registry import ZooDB

CONFIG = {
    "arch": "small_resnet10",
    "batch_size": 32,
    "lr": 0.00125,
    "optimizer": "sgd",
    "weight_decay": 0.0005,
    "augment": True,
    "pretrained": False,
    "trained": True,
}


@pytest.fixture
def zoo(tmp_path):
    """A registry with hand-set results: one done run, one pending run, three measurements."""
    with ZooDB.in_dir(tmp_path) as reg:
        reg.add_runs(
            [
                RunSpec("r1", RunConfig.from_dict(CONFIG), 0, 1234567),
                RunSpec("r2", RunConfig.from_dict(CONFIG | {"lr": 0.01}), 1, 7),
            ]
        )
        reg.mark_done(
            "r1",
            RunResult(
                "r1",
                "done",
                epochs=17,
                stop_reason="C1+C2",
                train_acc=0.987654321,
                train_loss=0.0123456789,
                test_acc=0.5,
                test_loss=2.0,
                gap=100 * (0.987654321 - 0.5),
                wall_time=12.3456789,
                pack_wall_time=98.7654321,
                precision="bf16",
                pack_size=8,
            ),
        )
        reg.record_measurements(
            "r1",
            [
                ("iou", {"cam": "gradcam"}, 0.123456789, "done", None),
                ("path_norm", {"scale": "raw"}, 123456789.0, "done", None),
                ("spectral_norm", {}, None, "undefined", "gamma <= 0"),
            ],
        )
    return tmp_path


def test_runs_csv_row_is_exact(zoo):
    path = export(zoo, "csv")
    header, done, pending = path.read_text().splitlines()
    assert header.split(",") == EXPORT_COLUMNS
    assert "train_acc_pp" in header and "gap_pp" in header and ",gap," not in header
    assert header.endswith(",wall_time,pack_wall_time,precision,pack_size,attempts,error")
    assert done == (
        "r1,small_resnet10,32,0.00125,sgd,0.0005,True,False,0,1234567,True,done,17,C1+C2,"
        "98.7654,0.0123457,50,2,48.7654,12.3457,98.7654,bf16,8,0,"
    )
    # a pending run: the precision its config (and id) names, fp32 where it names none; no pack yet
    assert pending == "r2,small_resnet10,32,0.01,sgd,0.0005,True,False,1,7,True,pending,,,,,,,,,,fp32,,0,"


def test_parquet_holds_the_csv_numbers(zoo):
    csv = pd.read_csv(export(zoo, "csv"))
    pq = pd.read_parquet(export(zoo, "parquet"))
    assert list(pq.columns) == EXPORT_COLUMNS
    for col in ("batch_size", "repeat", "seed", "epochs", "pack_size", "attempts"):
        assert pd.api.types.is_integer_dtype(pq[col]), col
    assert pq.loc[0, "batch_size"] == 32 and pq.loc[0, "epochs"] == 17 and pd.isna(pq.loc[1, "epochs"])
    assert pq.loc[0, "train_acc_pp"] == 98.7654 and pq.loc[0, "gap_pp"] == 48.7654 and pq.loc[0, "test_acc_pp"] == 50
    assert pq.loc[0, "train_acc_pp"] - pq.loc[0, "test_acc_pp"] == pytest.approx(pq.loc[0, "gap_pp"])
    pd.testing.assert_frame_equal(
        csv[["train_acc_pp", "gap_pp", "wall_time"]], pq[["train_acc_pp", "gap_pp", "wall_time"]]
    )


def test_measures_export_rounded(zoo):
    lines = export(zoo, "csv", measures=True).read_text().splitlines()
    assert lines[0] == "run_id,measure,params,value,state,reason"
    rows = sorted(lines[1:])
    assert rows[0] == 'r1,iou,"{""cam"":""gradcam""}",0.123457,done,'
    assert rows[1] == 'r1,path_norm,"{""scale"":""raw""}",1.23457e+08,done,'
    assert rows[2] == "r1,spectral_norm,{},,undefined,gamma <= 0"
    pq = pd.read_parquet(export(zoo, "parquet", measures=True))
    assert sorted(pq.value.dropna()) == [0.123457, 123457000.0]
    assert json.loads(pq.params.iloc[0]) == {"cam": "gradcam"}


def test_a_set_of_pending_runs_exports_empty_cells(tmp_path):
    with ZooDB.in_dir(tmp_path) as reg:
        reg.add_runs([RunSpec("r1", RunConfig.from_dict(CONFIG), 0, 3)])
    _, row = export(tmp_path, "csv").read_text().splitlines()
    assert row == "r1,small_resnet10,32,0.00125,sgd,0.0005,True,False,0,3,True,pending,,,,,,,,,,fp32,,0,"
    assert pd.read_parquet(export(tmp_path, "parquet"))["epochs"].isna().all()
