"""`zoo measure` on the executors of `zoo build`: worker processes and Ray give the rows of an
in-process run (the driver records them); per-step progress events and timing."""

import math
import shutil
from pathlib import Path

import pytest

import camgap.zoo.measure as zm
from camgap import progress
from camgap.zoo.measure import MeasureRequest, MeasureTask, measure_zoo, plan_run, run_measure_task
from camgap.zoo.registry import ZooDB
from tests.helpers.zoo import frames, quiet

MEASURES = ("iou", "iou_b", "nuclear_norm", "inverse_margin", "path_norm", "distance_from_init")


@pytest.fixture(scope="module")
def in_process_rows(tiny_zoo, tmp_path_factory) -> list[tuple]:
    """The rows of the session's tiny model set measured in-process (on a copy): the reference."""
    zoo = tmp_path_factory.mktemp("inproc") / "zoo"
    shutil.copytree(tiny_zoo.zoo, zoo)
    s = measure_zoo(zoo, measures=MEASURES, thresholds=(0.1, 0.3), progress=False, log=quiet)
    assert s.measured == 4 and s.failed == 0
    return _rows(zoo)


def _rows(zoo: Path) -> list[tuple]:
    meas = frames(zoo)[1].sort_values(["run_id", "measure", "params"])
    return [
        (
            r.run_id,
            r.measure,
            r.params,
            r.status,
            None if math.isnan(r.value) else r.value,
            r.error if isinstance(r.error, str) else None,
        )
        for r in meas.itertuples()
    ]


def _same(rows: list[tuple], want: list[tuple]) -> None:
    """Same keys, states and reasons; values equal up to float reassociation (other thread counts)."""
    assert [r[:4] + r[5:] for r in rows] == [r[:4] + r[5:] for r in want]
    for got, ref in zip(rows, want, strict=True):
        assert (got[4] is None) == (ref[4] is None)
        if ref[4] is not None:
            assert got[4] == pytest.approx(ref[4], rel=1e-6, abs=1e-12), got[:3]


@pytest.mark.slow
def test_two_local_workers_give_the_in_process_rows_and_resume(in_process_rows, tiny_zoo_copy, monkeypatch):
    zoo = tiny_zoo_copy
    lines = []
    s = measure_zoo(zoo, measures=MEASURES, thresholds=(0.1, 0.3), workers=2, progress=False, log=lines.append)
    assert (s.models, s.measured, s.failed) == (4, 4, 0)
    assert s.recorded + s.undefined == len(in_process_rows) == 4 * (2 * 2 + 2 + 1 + 2 + 2)
    _same(_rows(zoo), in_process_rows)
    with ZooDB.in_dir(zoo, create=False) as reg:
        assert reg.integrity_check(zoo) == []
    # the workers' seconds reach the summary: every step of every measured model is timed
    assert s.timed == {
        "load": 4,
        "iou/iou_b": 4,
        "nuclear_norm": 4,
        "inverse_margin": 4,
        "path_norm": 4,
        "distance_from_init": 4,
    }
    assert lines[0].splitlines()[1].startswith("time per step (s total, s per model): load ")

    def boom(*a, **k):
        raise AssertionError("nothing should be recomputed")

    monkeypatch.setattr(zm, "load_run_model", boom)
    again = measure_zoo(zoo, measures=MEASURES, thresholds=(0.1, 0.3), workers=2, progress=False, log=quiet)
    assert (again.measured, again.recorded, again.seconds) == (0, 0, {})
    _same(_rows(zoo), in_process_rows)


@pytest.mark.slow
def test_ray_local_instance_gives_the_in_process_rows(in_process_rows, tiny_zoo_copy, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_ADDRESS", "")  # never join a cluster from the environment
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    zoo = tiny_zoo_copy
    assert not ray.is_initialized()
    try:
        s = measure_zoo(
            zoo, measures=MEASURES, thresholds=(0.1, 0.3), executor="ray", workers=2, progress=False, log=quiet
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert (s.measured, s.failed) == (4, 0)
    _same(_rows(zoo), in_process_rows)


def test_run_task_reports_each_step_and_records_nothing(tiny_zoo_copy):
    zoo = tiny_zoo_copy
    runs, _ = frames(zoo)
    run_id = runs.run_id.iloc[0]
    request = MeasureRequest(("iou", "nuclear_norm", "path_norm"))
    plan = plan_run(run_id, set(), request)
    assert plan.scores == (("gradcam", 0.1, "boxes"),) and plan.others == ("nuclear_norm", "path_norm")
    events = []
    res = run_measure_task(
        MeasureTask(run_id, str(zoo), plan, request), on_step=lambda name, ended: events.append((name, ended))
    )
    assert events == [
        ("iou/iou_b", False),
        ("iou/iou_b", True),
        ("nuclear_norm", False),
        ("nuclear_norm", True),
        ("path_norm", False),
        ("path_norm", True),
    ]
    assert res.status == "done" and res.measured is True
    assert set(res.seconds) == {"load", "iou/iou_b", "nuclear_norm", "path_norm"}
    assert [(r.measure, r.params, r.state) for r in res.rows] == [
        ("iou", {"cam": "gradcam", "masks": "boxes", "threshold": "0.1"}, "done"),
        ("nuclear_norm", {"norm": "paper"}, "done"),
        ("nuclear_norm", {"norm": "deng"}, "done"),
        ("path_norm", {"scale": "log"}, "done"),
        ("path_norm", {"scale": "raw"}, "done"),
    ]
    assert frames(zoo)[1].empty  # the driver records, never the task
    # a plan that finds its rows recorded asks for nothing
    keys = {(r.measure, zm.params.to_json(r.params)) for r in res.rows}
    assert plan_run(run_id, keys, request).empty


def test_run_task_never_raises(tmp_path):
    request = MeasureRequest(("nuclear_norm",))
    plan = plan_run("nope", set(), request)
    res = run_measure_task(MeasureTask("nope", str(tmp_path), plan, request))
    assert res.status == "done" and res.measured is False
    [row] = res.rows
    assert (row.measure, row.value, row.state) == ("nuclear_norm", None, "failed") and "final.pt" in row.reason


def test_progress_bar_names_the_measures_on_stderr(tiny_zoo_copy, capsys, monkeypatch):
    # a bar is drawn on a terminal (or in a notebook); pytest's stderr is neither, whatever an
    # earlier test imported (a module that imports ipykernel would make it look like a notebook)
    monkeypatch.setattr(progress, "_interactive", lambda: True)
    zoo = tiny_zoo_copy
    s = measure_zoo(zoo, measures=("nuclear_norm",), progress=True, log=quiet)
    err = capsys.readouterr().err
    assert s.measured == 4 and "measure" in err and "8/8" in err  # 4 models x (shared pass + nuclear_norm)
    assert set(s.seconds) == {"load", "shared pass", "nuclear_norm"}
    assert all(v >= 0 for v in s.seconds.values()) and s.timed["nuclear_norm"] == 4


def test_cli_measure_takes_executor_arguments(tiny_zoo_copy, capsys):
    from camgap.cli import main

    zoo = tiny_zoo_copy
    assert (
        main(
            [
                "zoo",
                "measure",
                str(zoo),
                "--measures",
                "nuclear_norm",
                "--workers",
                "0",
                "--executor",
                "local",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("4 model(s): 4 measured now, 8 values recorded, 0 failed measurements, 0 undefined in ")
    assert out[1].startswith("time per step (s total, s per model): load ")
    assert "nuclear_norm " in out[1]


# --- Figure 2's models ------------------------------------------------------------------------


def _runs(train_accs, gaps):
    import pandas as pd

    n = len(gaps)
    return pd.DataFrame(
        {
            "run_id": [f"r{i}" for i in range(n)],
            "status": ["done"] * n,
            "trained": [True] * n,
            "train_acc": train_accs,
            "gap": gaps,
        }
    )


def test_overlay_picks_fitting_models_and_says_so():
    runs = _runs([0.9, 0.95, 0.5, 0.85, 0.99], [10.0, 30.0, 1.0, 20.0, 40.0])
    picks, selection, fallback = zm.overlay_picks(runs, 0.8)
    # fitting: gaps 10, 20, 30, 40 (r2 is below 80 %): rows 0, 4 // 2 and 3
    assert list(picks.run_id) == ["r0", "r1", "r4"] and not fallback
    assert selection == "Smallest, median and largest gap among the 4 trained models with training accuracy >= 80 %"


def test_overlay_picks_falls_back_out_loud():
    runs = _runs([0.9, 0.5, 0.6, 0.7], [10.0, 1.0, 5.0, 30.0])
    picks, selection, fallback = zm.overlay_picks(runs, 0.8)
    assert list(picks.run_id) == ["r1", "r0", "r3"] and fallback  # gaps 1, 5, 10, 30: rows 0, 2, 3
    assert selection == (
        "Only 1 trained model(s) reach training accuracy >= 80 %: smallest, median and largest gap "
        "among all 4 trained models, whatever their training accuracy"
    )


def test_overlay_rows_name_their_models(tiny_zoo):
    rows = zm.overlay_rows(tiny_zoo.zoo, n_images=2, min_train_acc=0.0)
    runs, _ = frames(tiny_zoo.zoo)
    trained = runs[runs.trained].sort_values("gap")
    assert isinstance(rows, list) and len(rows) == 3 and not rows.fallback
    assert [m["run_id"] for m in rows.models] == list(trained.run_id)
    assert [label for label, _ in rows] == [
        f"gap {g:.1f} pp\ntrain acc {100 * a:.1f} %" for g, a in zip(trained.gap, trained.train_acc, strict=True)
    ]
    assert all(len(pictures) == 2 for _, pictures in rows)
    assert rows.caption.startswith(
        "Smallest, median and largest gap among the 3 trained models with training "
        "accuracy >= 0 %. Rows: " + trained.run_id.iloc[0] + ": gap "
    )


class _DyingExecutor:
    """An in-process stand-in whose worker 'dies' (result ``lost``) on given runs a number of times."""

    capacity = 2

    def __init__(self, deaths: dict[str, int]):
        self.deaths, self.tasks, self.submitted = dict(deaths), [], []

    def submit(self, task):
        self.tasks.append(task)
        self.submitted.append(task.run_id)

    def wait(self):
        task = self.tasks.pop(0)
        if self.deaths.get(task.run_id, 0) > 0:
            self.deaths[task.run_id] -= 1
            return [task.failure("lost", "its worker died", worker_died=True)]
        return [run_measure_task(task)]

    def close(self):
        pass


def test_a_dead_worker_is_retried_once_then_its_measurements_fail(tiny_zoo_copy, monkeypatch):
    zoo = tiny_zoo_copy
    runs, _ = frames(zoo)
    once, twice = runs.run_id.iloc[0], runs.run_id.iloc[1]
    ex = _DyingExecutor({once: 1, twice: 2})
    monkeypatch.setattr(zm, "_executor_for", lambda *a: ex)
    s = measure_zoo(zoo, measures=("nuclear_norm",), progress=False, log=quiet)
    assert ex.submitted.count(once) == 2 and ex.submitted.count(twice) == 2 and len(ex.submitted) == 6
    _, meas = frames(zoo)
    assert (meas[meas.run_id == once].status == "done").all() and len(meas[meas.run_id == once]) == 2
    [row] = meas[meas.run_id == twice].itertuples()
    assert (row.status, row.error) == ("failed", "measuring stopped: its worker died")
    assert (s.measured, s.failed, s.exit_code) == (3, 1, 3)
