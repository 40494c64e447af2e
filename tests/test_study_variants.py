"""The variants a study shows (`discover_specs`) come from one groupby over the measurements, not a
loop over their rows: the same variants as walking the rows, whatever the string dtype or row order."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from camgap.study import variants as v

IOU_PARAMS = [{"cam": c, "threshold": t, "masks": "boxes"} for c in ("gradcam", "gradcam++") for t in ("0.1", "0.3")]


def _random_measurements(seed: int, n_runs: int = 40) -> pd.DataFrame:
    """Registry-like rows (JSON params, some failed, some NaN) of measures with several variants;
    nuclear_norm failed everywhere, spectral_norm's fft variant failed everywhere."""
    rng = np.random.default_rng(seed)
    variants = [
        ("spectral_norm", {"conv": "reshape", "scale": "log"}, 1.0),
        ("spectral_norm", {"conv": "fft", "scale": "log"}, 0.0),
        ("nuclear_norm", {"norm": "paper"}, 0.0),
        ("nuclear_norm", {"norm": "deng"}, 0.0),
        ("path_norm", {}, 0.7),
        ("pxap", {"cam": "gradcam", "masks": "boxes"}, 0.9),
        ("pxap", {"cam": "gradcam", "masks": "saliency"}, 0.9),
        *(("iou", p, 0.8) for p in IOU_PARAMS),
    ]
    rows = []
    for r in range(n_runs):
        for measure, params, p_done in variants:
            done = rng.random() < p_done
            value = float(rng.normal()) if rng.random() < 0.9 else float("nan")
            rows.append((f"r{r}", measure, json.dumps(params) if params else "", value, "done" if done else "failed"))
    m = pd.DataFrame(rows, columns=["run_id", "measure", "params", "value", "status"])
    return m.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _row_by_row(m: pd.DataFrame) -> dict[str, dict[str, bool]]:
    """The oracle: walk the rows, a variant usable when any of its rows is."""
    out: dict[str, dict[str, bool]] = {}
    for measure, params, ok in zip(list(m["measure"]), list(m["params"]), list(m["_usable"]), strict=True):
        out.setdefault(measure, {})
        out[measure][params] = out[measure].get(params, False) or bool(ok)
    return out


def _dtypes(m: pd.DataFrame):
    """The frame with pyarrow-backed strings, with Python object strings, and reversed."""
    return [
        m.astype({"measure": "string[pyarrow]", "params": "string[pyarrow]"}),
        m.astype({"measure": object, "params": object}),
        m.iloc[::-1].reset_index(drop=True),
    ]


def _key(specs) -> list[tuple]:
    return [(s.measure, s.params if isinstance(s.params, str) else dict(s.params), s.label) for s in specs]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_variants_are_those_of_the_rows(seed):
    for frame in _dtypes(_random_measurements(seed)):
        m = v.prepare_measurements(frame)
        want = _row_by_row(m)
        got = v._usable_variants(m)
        assert got == want and list(got) == list(want)  # measures in order of first appearance
        assert all(list(got[k]) == list(want[k]) for k in want)
        assert v._variants_of(m) == {k: sorted(d) for k, d in want.items()}


def test_discover_specs_shows_the_usable_variants_of_each_measure():
    frame = _random_measurements(0)
    for primary in (None, v.DEFAULT_PRIMARY):
        results = [_key(v.discover_specs(f, primary)) for f in _dtypes(frame)]
        assert results[0] == results[1] == results[2]
    assert _key(v.discover_specs(frame)) == [
        ("spectral_norm", "conv=reshape,scale=log", "Spectral Norm"),  # the fft variant failed everywhere
        ("nuclear_norm", "norm=deng", "Nuclear Norm (norm=deng)"),  # failed everywhere: kept, an n/a row
        ("nuclear_norm", "norm=paper", "Nuclear Norm (norm=paper)"),
        ("path_norm", "", "Path Norm"),
        ("pxap", "cam=gradcam,masks=boxes", "PxAP (masks=boxes)"),
        ("pxap", "cam=gradcam,masks=saliency", "PxAP (masks=saliency)"),
        # sorted as strings: "+" sorts before ","
        ("iou", "cam=gradcam++,masks=boxes,threshold=0.1", "IoU (cam=gradcam++, threshold=0.1)"),
        ("iou", "cam=gradcam++,masks=boxes,threshold=0.3", "IoU (cam=gradcam++, threshold=0.3)"),
        ("iou", "cam=gradcam,masks=boxes,threshold=0.1", "IoU (cam=gradcam, threshold=0.1)"),
        ("iou", "cam=gradcam,masks=boxes,threshold=0.3", "IoU (cam=gradcam, threshold=0.3)"),
    ]
    primary = v.discover_specs(frame, v.DEFAULT_PRIMARY, ["iou", "pxap", "iou_b"])
    assert _key(primary) == [
        ("iou", "cam=gradcam,masks=boxes,threshold=0.1", "IoU"),
        ("pxap", "cam=gradcam,masks=boxes", "PxAP"),
        ("iou_b", dict(v.pass_variant("iou_b", v.DEFAULT_PRIMARY)), "IoU-B: not measured"),
    ]


def test_variant_specs_primary_iou_and_notes_read_the_same_variants():
    frame = _random_measurements(1)
    cams = v.variant_specs(frame, "iou", "cam", str, v.CAM_ORDER, v.DEFAULT_PRIMARY)
    assert _key(cams) == [
        ("iou", "cam=gradcam,masks=boxes,threshold=0.1", "gradcam"),
        ("iou", "cam=gradcam++,masks=boxes,threshold=0.1", "gradcam++"),
    ]
    assert _key([v.primary_iou(frame)]) == [("iou", "cam=gradcam,masks=boxes,threshold=0.1", "IoU")]
    assert v.primary_iou(frame, measure="iou_b") is None
    specs = v.discover_specs(frame, v.DEFAULT_PRIMARY, ["nuclear_norm", "iou_b"])
    assert v.missing_note(frame, specs) == (
        "Nuclear Norm (norm=deng) has no usable value (failed or undefined for every model). "
        "Nuclear Norm (norm=paper) has no usable value (failed or undefined for every model). "
        "IoU-B (gradcam, rho 0.1, boxes) was not measured."
    )
