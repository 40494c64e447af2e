"""The PGDL baselines in `zoo measure` on the tiny model set: rows, params, values against direct
calls on the stored data, and their labels in the study tables."""

import pandas as pd
import pytest
import torch

from camgap.data.dataset import normalize
from camgap.data.store import TensorStore
from camgap.measures.consistency import augmentation_consistency
from camgap.measures.representation import db_mixup
from camgap.params import to_json
from camgap.study.tables import discover_specs
from camgap.zoo.measure import load_run_model, measure_zoo
from tests.helpers.zoo import N_TRAIN, frames, quiet


@pytest.mark.slow
def test_baselines_in_zoo_measure_match_direct_calls(tiny_zoo_copy):
    zoo = tiny_zoo_copy
    summary = measure_zoo(
        zoo, measures=("augmentation_consistency", "db_mixup"), batch_size=32, progress=False, log=quiet
    )
    assert summary.failed == 0
    runs, meas = frames(zoo)
    store = TensorStore.open(zoo / "cache" / "train-32-resize")
    run = runs[runs.trained].iloc[0]
    model, ckpt = load_run_model(zoo / "runs" / run.run_id)
    model.eval()
    mean, std = ckpt["mean"], ckpt["std"]
    assert not ckpt["config"].get("augment")  # trained without: camgap's training defaults are used

    def batches():
        return ((normalize(x, mean, std), y) for x, y, *_ in store.batches(32))

    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in batches()])
    mine = meas[meas.run_id == run.run_id].set_index(["measure", "params"])["value"]
    ac = augmentation_consistency(model, logits, batches(), mean, std, 0.5, 0.4, seed=ckpt["seed"])
    key = ("augmentation_consistency", to_json({"draws": "1", "flip_prob": "0.5", "jitter": "0.4"}))
    assert mine[key] == pytest.approx(ac, rel=1e-6)
    res = db_mixup(model, batches(), N_TRAIN, seed=ckpt["seed"])
    assert res["images"] == N_TRAIN  # fewer training images than the 300 asked for: all of them
    base = {"images": str(N_TRAIN), "lambda": "0.5", "layer": "first_conv", "pool": "4"}
    for form in ("product", "db", "mixup_accuracy"):
        assert mine[("db_mixup", to_json({**base, "form": form}))] == pytest.approx(res[form], rel=1e-9)


def test_readable_labels_in_the_study_tables():
    rows = [
        ("r1", "augmentation_consistency", "draws=1,flip_prob=0.5,jitter=0.4"),
        ("r1", "db_mixup", "form=product,images=300,lambda=0.5,layer=first_conv,pool=4"),
        ("r1", "db_mixup", "form=db,images=300,lambda=0.5,layer=first_conv,pool=4"),
        ("r1", "weightwatcher", "stat=alpha,version=0.7.7"),
        ("r1", "weightwatcher", "stat=log_norm,version=0.7.7"),
    ]
    frame = pd.DataFrame(rows, columns=["run_id", "measure", "params"]).assign(value=1.0, status="done")
    labels = sorted(spec.column for spec in discover_specs(frame))
    assert labels == [
        "Augmentation Consistency",
        "DB x Mixup (form=db)",
        "DB x Mixup (form=product)",
        "WeightWatcher (stat=alpha)",
        "WeightWatcher (stat=log_norm)",
    ]
