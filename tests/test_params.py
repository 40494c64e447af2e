from __future__ import annotations

import pytest

from camgap import params
from camgap.errors import InputError


@pytest.mark.parametrize(
    "given",
    [
        {"threshold": 0.1, "cam": "gradcam", "masks": "boxes"},
        {"masks": "boxes", "cam": "gradcam", "threshold": "0.1"},
        '{"cam": "gradcam", "masks": "boxes", "threshold": 0.10}',
        '{"threshold":"0.10","masks":"boxes","cam":"gradcam"}',
        "threshold=0.10, cam=gradcam,masks=boxes",
    ],
)
def test_every_spelling_of_a_variant_is_one_identity(given):
    assert params.to_json(given) == '{"cam":"gradcam","masks":"boxes","threshold":"0.1"}'
    assert params.label(given) == "cam=gradcam,masks=boxes,threshold=0.1"
    assert params.canonical(given) == {"cam": "gradcam", "masks": "boxes", "threshold": "0.1"}


def test_round_trips():
    p = {"conv": "reshape", "scale": "log", "rotations": (90, 180, 270)}
    assert (
        params.from_json(params.to_json(p))
        == params.canonical(p)
        == {"conv": "reshape", "rotations": "90/180/270", "scale": "log"}
    )
    assert params.parse_label(params.label(p)) == params.canonical(p)
    assert params.to_json(None) == params.to_json("") == params.to_json({}) == "{}"
    assert params.label({}) == ""


def test_bad_params_are_named():
    with pytest.raises(InputError, match="'cam' is not of the form key=value"):
        params.parse_label("cam,threshold=0.1")
    with pytest.raises(InputError, match="not valid JSON"):
        params.from_json("{cam")
    with pytest.raises(InputError, match="not finite"):
        params.to_json({"threshold": float("nan")})
