"""The identity of a measurement variant: its params, encoded one way.

A measure's params (``{"cam": "gradcam", "masks": "boxes", "threshold": "0.1"}``) have two
spellings: ``to_json`` for storage (sorted keys, every value a string, so the same variant is
the same bytes wherever it was computed) and ``label`` for display and the command line
(``cam=gradcam,masks=boxes,threshold=0.1``). Numbers are written with ``:g`` so that 0.1,
0.10 and "0.1" name one variant."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from camgap.errors import InputError

Params = dict[str, str]


def _value(v: object) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise InputError(f"parameter value {v!r} is not finite")
        return f"{v:g}"
    if isinstance(v, (tuple, list)):
        return "/".join(_value(x) for x in v)
    return str(v)


def canonical(params: Mapping[str, object] | str | None) -> Params:
    """Params as a dict with sorted keys and string values; accepts a mapping, the stored JSON
    or a label."""
    if params is None:
        return {}
    if isinstance(params, str):
        return from_json(params) if params.lstrip().startswith("{") else parse_label(params)
    return {str(k): _value(_number_or_text(v) if isinstance(v, str) else v) for k, v in sorted(params.items())}


def canonical_json(obj: object) -> str:
    """Sorted keys, no whitespace, no NaN: the one byte form camgap stores and hashes (params,
    run configs and their ids)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def to_json(params: Mapping[str, object] | str | None) -> str:
    """The storage form: ``{"cam":"gradcam","threshold":"0.1"}``."""
    return canonical_json(canonical(params))


def from_json(text: str) -> Params:
    try:
        obj = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise InputError(f"params {text!r} are not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise InputError(f"params {text!r} are not a JSON object")
    return canonical(obj)


def label(params: Mapping[str, object] | str | None, sep: str = ",") -> str:
    """The display form: ``cam=gradcam,threshold=0.1`` (keys sorted); ``sep=", "`` for prose
    (table row labels). Only the ``","`` form is read back by :func:`parse_label`."""
    return sep.join(f"{k}={v}" for k, v in canonical(params).items())


def parse_label(text: str) -> Params:
    """``"threshold=0.1, cam=gradcam"`` -> ``{"cam": "gradcam", "threshold": "0.1"}``."""
    out: dict[str, object] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise InputError(f"params {text!r}: {part!r} is not of the form key=value")
        out[key.strip()] = value.strip()
    return canonical(out)


def _number_or_text(v: str) -> object:
    """ "0.10" -> 0.1, so a number written as text names the same variant; other text stays."""
    try:
        number = float(v)
    except ValueError:
        return v
    return number if math.isfinite(number) else v
