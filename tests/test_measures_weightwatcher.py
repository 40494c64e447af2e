"""WeightWatcher's summary statistics against the package called directly; the optional extra."""

import logging
import warnings

import pandas as pd
import pytest
import torch
from torch import nn

from camgap.errors import InputError
from camgap.measures import weightwatcher as wwm
from camgap.measures.registry import MeasureContext, MeasureUndefined, compute_measure, unavailable_reason
from camgap.zoo import measure as zm

needs_weightwatcher = pytest.mark.skipif(not wwm.available(), reason="weightwatcher is not installed")


def _tiny_model():
    torch.manual_seed(0)
    # 64x32 and 32x16: fitted; the 4x16 head has fewer eigenvalues than min_evals (8): not analysed
    return nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.Linear(16, 4)
    )


@pytest.mark.filterwarnings("ignore:Passing a dict to DataFrame.from_records")  # the direct call's
@needs_weightwatcher
def test_matches_weightwatcher_called_directly(capsys):
    model = _tiny_model()
    root = logging.getLogger()
    records: list[logging.LogRecord] = []
    listener = logging.Handler(logging.DEBUG)
    listener.emit = records.append
    root.addHandler(listener)
    root_handlers = list(root.handlers)
    try:
        out = compute_measure("weightwatcher", MeasureContext(model=model))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again = compute_measure("weightwatcher", MeasureContext(model=model))
        assert root.handlers == root_handlers  # its basicConfig undone
    finally:
        root.removeHandler(listener)
    assert capsys.readouterr() == ("", "") and caught == [] and records == []  # nothing printed or logged
    assert again == out

    import weightwatcher as ww  # imported (quietly) by the measure above: its basicConfig is not rerun

    version = wwm.version()
    details = ww.WeightWatcher(model=model).analyze()
    assert (details["status"] != "failed").all()  # so its summary is the plain mean
    summary = ww.WeightWatcher().get_summary(details)
    assert set(out) == {f"stat={s},version={version}" for s in ("alpha", "alpha_weighted", "log_norm")}
    for stat in ("alpha", "alpha_weighted", "log_norm"):
        assert out[f"stat={stat},version={version}"] == pytest.approx(float(summary[stat]), rel=1e-9)
    assert len(details) == 3  # the conv and the two large linears; the 4-row head is too small


def test_a_failed_fit_is_left_out_of_the_alpha_means():
    details = pd.DataFrame(
        {
            "alpha": [2.0, 4.0, -1.0],
            "alpha_weighted": [1.0, 3.0, -1.0],
            "log_norm": [0.5, 1.5, 2.5],
            "status": ["success", "over-trained", "failed"],
        }
    )
    assert wwm.summarize(details) == {"alpha": 3.0, "alpha_weighted": 2.0, "log_norm": 1.5}


def test_no_layer_large_enough_is_undefined():
    with pytest.raises(MeasureUndefined, match="analysed no layer"):
        wwm.summarize(pd.DataFrame())
    failed = pd.DataFrame({"alpha": [-1.0], "alpha_weighted": [-1.0], "log_norm": [1.0], "status": ["failed"]})
    with pytest.raises(MeasureUndefined, match="every layer's power-law fit failed, no alpha"):
        wwm.summarize(failed)
    if not wwm.available():
        return
    with pytest.raises(MeasureUndefined, match="analysed no layer"):
        compute_measure("weightwatcher", MeasureContext(model=nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 2))))


def test_in_the_defaults_when_installed():
    assert ("weightwatcher" in zm.DEFAULT_MEASURES) == wwm.available()
    assert {"augmentation_consistency", "db_mixup"} <= set(zm.DEFAULT_MEASURES)


def test_without_the_package_a_request_says_how_to_install(monkeypatch):
    monkeypatch.setattr(wwm, "available", lambda: False)
    assert unavailable_reason("weightwatcher") == "needs the weightwatcher package: pip install camgap[weightwatcher]"
    assert unavailable_reason("iou") is None
    with pytest.raises(InputError) as err:
        zm.make_request(["iou", "weightwatcher"], ["gradcam"], [0.1], ["boxes"], 32)
    assert str(err.value) == (
        "measure weightwatcher needs the weightwatcher package: pip install camgap[weightwatcher]"
    )
    with pytest.raises(InputError, match=r"pip install camgap\[weightwatcher\]"):
        compute_measure("weightwatcher", MeasureContext(model=nn.Linear(2, 2)))
