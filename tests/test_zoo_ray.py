"""The Ray executor on a real local Ray instance with 2 CPUs: a tiny grid of 2 runs."""

import pytest

ray = pytest.importorskip("ray")

from camgap.data.synthetic import write_synthetic  # noqa: E402
from camgap.zoo.build import build  # noqa: E402
from camgap.zoo.registry import ZooDB  # noqa: E402

GRID = """
[grid]
arch = ["small_resnet"]
batch_size = [16]
lr = [0.05, 0.005]
optimizer = ["sgd"]

[train]
max_epochs = 2
acc_threshold = 1.0  # only the epoch budget (C4) can stop a run: the test may not hinge on float details
input_size = 16

[arch_options.small_resnet]
width = 4
"""


@pytest.mark.slow
def test_ray_executor_local_instance(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "")  # never join a cluster from the environment
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    data = write_synthetic(tmp_path / "data", seed=2, classes=3, train_per_class=8, test_per_class=4, size=16)
    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    zoo = tmp_path / "zoo"
    lines = []
    assert not ray.is_initialized()
    try:
        s = build(grid, data, zoo, executor="ray", workers=2, device="cpu", progress=False, log=lines.append)
    finally:
        if ray.is_initialized():  # build shuts down the instance it started; make sure
            ray.shutdown()
    assert s.total == 2 and s.done == 2 and s.failed == 0 and s.trained_now == 2
    with ZooDB.in_dir(zoo, create=False) as reg:
        assert reg.integrity_check(zoo) == []
        frame = reg.runs_frame()
    assert (frame.status == "done").all() and (frame.epochs == 2).all()
    assert all((zoo / "runs" / rid / "final.pt").is_file() for rid in frame.run_id)
    assert not ray.is_initialized()
    # rebuilding trains nothing and does not even start Ray
    s2 = build(grid, data, zoo, executor="ray", workers=2, device="cpu", progress=False, log=lines.append)
    assert s2.trained_now == 0 and not ray.is_initialized()
