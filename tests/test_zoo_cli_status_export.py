"""`zoo status --json` (plain names, integer counts, the documented schema) and
`zoo export --out -` (the table on standard output, nothing else)."""

import io
import json

import numpy as np
import pandas as pd
import pytest

from camgap.zoo.build import EXPORT_COLUMNS, export, format_status, status
from camgap.zoo.cli import STATUS_JSON_HELP, main
from camgap.zoo.config import RunConfig, RunResult
from camgap.zoo.grid import RunSpec
from camgap.zoo.registry import ZooDB

TRAINED = {"arch": "small_resnet", "batch_size": 32, "optimizer": "sgd", "weight_decay": 0.0, "trained": True}
UNTRAINED = {"arch": "small_resnet", "pretrained": False, "trained": False}
# run id -> (train_acc, test_acc, stop_reason) of the done runs
DONE = {"a": (0.9, 0.6, "C1"), "b": (1.0, 0.75, "C1+C2"), "c": (0.95, 0.75, "C1"), "u": (0.25, 0.2, "untrained")}


def result(run_id: str, train_acc: float, test_acc: float, stop: str, trained: bool) -> RunResult:
    return RunResult(
        run_id,
        "done",
        trained=trained,
        epochs=5 if trained else 0,
        stop_reason=stop,
        train_acc=train_acc,
        train_loss=0.1,
        test_acc=test_acc,
        test_loss=1.0,
        gap=100 * (train_acc - test_acc),
        wall_time=1.0,
    )


@pytest.fixture
def zoo(tmp_path):
    """A registry with hand-set results: 3 trained runs done, 1 untrained done, 1 pending, 1 failed."""
    specs = [RunSpec(rid, RunConfig.from_dict(TRAINED | {"lr": lr}), 0, 1) for rid, lr in zip("abcpf", [1, 2, 3, 4, 5])]
    specs.append(RunSpec("u", RunConfig.from_dict(UNTRAINED), 0, 2))
    with ZooDB.in_dir(tmp_path) as reg:
        reg.add_runs(specs)
        for rid, (tr, te, stop) in DONE.items():
            reg.mark_done(rid, result(rid, tr, te, stop, rid != "u"))
        reg.mark_failed("f", "RuntimeError: boom")
    return tmp_path


def stdout_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_status_json_has_integer_counts_and_plain_names(zoo, capsys):
    rc = main(["status", "--zoo", str(zoo), "--json"])
    got = stdout_json(capsys)
    assert rc == (1 if got["integrity_problems"] else 0)
    assert got["total"] == 6
    assert got["counts"] == {"pending": 1, "running": 0, "interrupted": 0, "done": 4, "failed": 1}
    assert got["by_arch"] == {
        "small_resnet": {"pending": 1, "running": 0, "interrupted": 0, "done": 3, "failed": 1},
        "small_resnet (untrained)": {"pending": 0, "running": 0, "interrupted": 0, "done": 1, "failed": 0},
    }
    assert got["stop_reasons"] == {"C1": 2, "C1+C2": 1, "untrained": 1}
    assert got["failures"] == [{"run_id": "f", "arch": "small_resnet", "attempts": 1, "error": "RuntimeError: boom"}]
    # the spreads: over the done trained runs (a, b, c), in percentage points; numpy as the oracle
    for key, column in (("train_acc_pp", 0), ("test_acc_pp", 1)):
        pp = np.array([100 * DONE[r][column] for r in "abc"])
        want = {"n": 3, "min": pp.min(), "median": np.median(pp), "mean": pp.mean(), "max": pp.max()}
        assert got[key] == pytest.approx(want, rel=1e-12), key
    gap = np.array([100 * (DONE[r][0] - DONE[r][1]) for r in "abc"])
    want = {"n": 3, "min": gap.min(), "median": np.median(gap), "mean": gap.mean(), "max": gap.max()}
    assert got["gap_pp"] == pytest.approx(want, rel=1e-12)
    assert want == pytest.approx({"n": 3, "min": 20.0, "median": 25.0, "mean": 25.0, "max": 30.0})
    assert "gap" not in got  # no pandas `describe` keys left

    def walk(value):
        if isinstance(value, dict):
            assert not any("%" in str(k) or k == "count" for k in value), value
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(got)
    counts = [got["total"], got["counts"], got["by_arch"], got["stop_reasons"], got["measurements"]["states"]]
    assert all(
        type(v) is int for c in counts for v in (c.values() if isinstance(c, dict) else [c]) if not isinstance(v, dict)
    )
    assert type(got["train_acc_pp"]["n"]) is int


def test_status_json_keys_are_the_documented_ones(zoo):
    info = status(zoo)
    documented = {line.split()[0].rstrip(",") for line in STATUS_JSON_HELP.splitlines()[1:] if line[2:3].isalpha()}
    documented |= {"test_acc_pp", "gap_pp"}  # listed on one line with train_acc_pp
    assert set(info) == documented


def test_status_of_a_set_without_done_runs_has_empty_spreads(tmp_path, capsys):
    with ZooDB.in_dir(tmp_path) as reg:
        reg.add_runs([RunSpec("p", RunConfig.from_dict(TRAINED | {"lr": 0.1}), 0, 1)])
    assert main(["status", "--zoo", str(tmp_path), "--json"]) == 0
    got = stdout_json(capsys)
    empty = {"n": 0, "min": None, "median": None, "mean": None, "max": None}
    assert got["train_acc_pp"] == got["test_acc_pp"] == got["gap_pp"] == empty
    assert got["stop_reasons"] == {} and got["counts"]["pending"] == 1
    assert "trained runs" not in format_status(status(tmp_path))


def test_status_text_shows_the_spreads(zoo):
    text = format_status(status(zoo))
    assert "gap (pp) of 3 trained runs: median 25.00, mean 25.00, min 20.00, max 30.00" in text
    assert "train acc (pp) of 3 trained runs: median 95.00, mean 95.00, min 90.00, max 100.00" in text


def test_status_help_documents_the_json_schema(capsys):
    with pytest.raises(SystemExit):
        main(["status", "--help"])
    out = capsys.readouterr().out
    assert "every count is an integer" in out and '{"n": runs, "min", "median", "mean", "max"}' in out


def test_export_to_stdout_is_the_csv_alone(zoo, capsys):
    assert main(["export", "--zoo", str(zoo), "--out", "-"]) == 0
    out = capsys.readouterr().out
    assert out == export(zoo, "csv").read_text()  # the same bytes as the file
    assert not (zoo / "-").exists()
    table = pd.read_csv(io.StringIO(out))
    assert list(table.columns) == EXPORT_COLUMNS and sorted(table["run_id"]) == list("abcfpu")
    assert main(["export", "--zoo", str(zoo), "--out", "-", "--measures"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "run_id,measure,params,value,state,reason"


def test_export_to_a_file_still_prints_its_path(zoo, capsys):
    assert main(["export", "--zoo", str(zoo), "--out", str(zoo / "x.csv")]) == 0
    assert capsys.readouterr().out == f"{zoo / 'x.csv'}\n"


def test_parquet_to_stdout_goes_to_a_pipe_never_a_terminal(zoo, monkeypatch):
    pytest.importorskip("pyarrow")

    class Pipe(io.TextIOWrapper):
        def isatty(self):
            return False

    pipe = Pipe(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr("sys.stdout", pipe)
    assert export(zoo, "parquet", "-") is None
    got = pd.read_parquet(io.BytesIO(pipe.buffer.getvalue()))
    assert got["run_id"].tolist() == pd.read_parquet(export(zoo, "parquet"))["run_id"].tolist()

    class Terminal(Pipe):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stdout", Terminal(io.BytesIO(), encoding="utf-8"))
    with pytest.raises(Exception, match="Parquet is binary; redirect standard output"):
        export(zoo, "parquet", "-")
