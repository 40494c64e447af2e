"""Which measurement variant each table reads: the params of a variant, `MeasureSpec` (one column
of the wide table), `prepare_measurements`, `wide_table` (the runs with one column per
variant), the variants a study shows (`discover_specs`, `variant_specs`, `primary_iou`) and
the notes that name a variant without a usable value.

The IoU in every table is the paper's primary variant, `PRIMARY_IOU` (Grad-CAM, rho = 0.1,
boxes). Where that variant was not measured, the table carries a row "...: not measured" and a
note saying so; no table falls back to another variant.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import pandas as pd

from camgap.errors import InputError, UnknownNameError
from camgap.measures.iou import validate_thresholds
from camgap.measures.registry import pass_keys, score_pass_measures
from camgap.params import canonical
from camgap.params import label as params_label

#: The paper's primary IoU (sec. 4): Grad-CAM, CAM threshold rho = 0.1, A_G from the bounding
#: boxes. Every table (3-7, the headline) uses exactly this variant of the IoU measures; Tables 6
#: and 7 vary one key and keep the other two. A `primary` argument may override these keys.
PRIMARY_IOU: Mapping[str, str] = MappingProxyType({"cam": "gradcam", "threshold": "0.1", "masks": "boxes"})
#: The measures that follow `PRIMARY_IOU` exactly, on the keys of it they have (`pass_variant`):
#: those the measure registry reads from the shared CAM pass (IoU, IoU-B with (cam, threshold,
#: masks); the threshold-free localization measures with (cam, masks)).
IOU_MEASURES: tuple[str, ...] = score_pass_measures()
#: The `primary` of the tables: the IoU keys are exact (see `PRIMARY_IOU`); other keys are a
#: preference among the variants of the other measures, applied when some variant has that value.
DEFAULT_PRIMARY: Mapping[str, str] = PRIMARY_IOU
NOT_MEASURED = "not measured"
TOTAL = "Total"

DISPLAY_NAMES = {
    "spectral_norm": "Spectral Norm",
    "nuclear_norm": "Nuclear Norm",
    "effective_invariance": "EI",
    "energy_pg": "Energy PG",
    "pointing_game": "Pointing Game",
    "maxboxacc_v2": "MaxBoxAccV2",
    "pxap": "PxAP",
    "iou_b": "IoU-B",
    "iou_heldout": "IoU held-out",
    "iou_drop": "IoU drop",
    "iou": "IoU",
    "augmentation_consistency": "Augmentation Consistency",
    "db_mixup": "DB x Mixup",
    "weightwatcher": "WeightWatcher",
}
#: Row order of Table 3: the paper's baselines first, other measures alphabetically, then the
#: threshold-free localization measures, IoU last.
MEASURE_ORDER = ("spectral_norm", "nuclear_norm", "effective_invariance")
MEASURE_LAST = ("energy_pg", "pointing_game", "maxboxacc_v2", "pxap", "iou_b", "iou")
CAM_NAMES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAM++",
    "smoothgradcam++": "SmoothGradCAM++",
    "scorecam": "ScoreCAM",
    "layercam": "LayerCAM",
    "xgradcam": "XGradCAM",
}
CAM_ORDER = ("gradcam", "gradcam++", "smoothgradcam++")
MASK_NAMES = {"boxes": "bounding box", "saliency": "saliency map"}


# ------------------------------------------------------------------------------- params
@functools.lru_cache(maxsize=4096)
def _label_of(params: str) -> str:
    return params_label(params)


@functools.lru_cache(maxsize=4096)
def _params_of(label: str) -> Mapping[str, str]:
    """The params of a label, parsed once per distinct label (read-only)."""
    return MappingProxyType(canonical(label))


def display_name(measure: str) -> str:
    return DISPLAY_NAMES.get(measure, measure.replace("_", " ").title())


def natural_key(s: object) -> tuple:
    """resnet18 < resnet34 < resnet50 < resnet101 (numbers compared as numbers)."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(s)))


# ------------------------------------------------------------------------ measure specs
@dataclass(frozen=True)
class MeasureSpec:
    """One column of the wide table: `measure` with `params` (an exact params string, a
    mapping every chosen params must contain, or None = the measure's only variant), shown
    as `label` (default: the display name)."""

    measure: str
    params: str | Mapping[str, str] | None = ""
    label: str | None = None

    @property
    def column(self) -> str:
        if self.label:
            return self.label
        if isinstance(self.params, str) and self.params:
            return f"{display_name(self.measure)} ({self.params})"
        return display_name(self.measure)


def _as_spec(m: MeasureSpec | Sequence) -> MeasureSpec:
    if isinstance(m, MeasureSpec):
        return m
    if isinstance(m, str):
        return MeasureSpec(m, None)
    return MeasureSpec(*m)


def prepare_measurements(measurements: pd.DataFrame) -> pd.DataFrame:
    """The measurements as the tables read them: every params entry (JSON or label, "" or
    missing = none) as its `camgap.params.label`, each distinct entry parsed once; `value`
    numeric; `_usable` marks the done rows with a finite value. A prepared frame is returned
    as it is."""
    if "_usable" in measurements.columns:
        return measurements
    need = {"run_id", "measure", "value"}
    if not need <= set(measurements.columns):
        raise UnknownNameError(f"measurements need columns {sorted(need)}, got {list(measurements.columns)}")
    m = measurements.copy()
    if "params" not in m.columns:
        m["params"] = ""
    raw = m["params"].astype(object).where(m["params"].notna(), "").astype(str)
    m["params"] = raw.map({p: _label_of(p) for p in raw.unique()})
    if "status" not in m.columns:
        m["status"] = "done"
    m["value"] = pd.to_numeric(m["value"], errors="coerce")
    usable = (m["status"].astype(str) == "done") & np.isfinite(m["value"].to_numpy(float))
    if "state" in m.columns:
        usable &= m["state"].astype(str) == "done"
    m["_usable"] = usable
    return m


def params_match(params: str, want: Mapping[str, object]) -> bool:
    """Whether the params label has every key of `want` with that value (values in their
    canonical spelling: "0.10" is "0.1")."""
    have = _params_of(params)
    return all(have.get(k) == v for k, v in canonical(want).items())


def spec_params(spec: MeasureSpec) -> dict[str, str]:
    """The params of a spec as a dict (an exact string parsed, a mapping copied, None: {})."""
    if spec.params is None:
        return {}
    if isinstance(spec.params, str):
        return dict(_params_of(_label_of(spec.params)))
    return canonical(spec.params)


def iou_variant(primary: Mapping[str, object] | None = None) -> dict[str, str]:
    """The IoU variant the tables use: `PRIMARY_IOU`, with the cam/threshold/masks of `primary`
    where it gives them. The threshold rho is validated (finite, in [0, 1))."""
    want = {k: (primary or {}).get(k, v) for k, v in PRIMARY_IOU.items()}
    validate_thresholds([want["threshold"]])  # type: ignore[list-item]
    return canonical(want)


def pass_variant(measure: str, primary: Mapping[str, object] | None = None) -> dict[str, str]:
    """`iou_variant(primary)` on the params keys of score-pass measure `measure` (a
    threshold-free localization measure: cam and masks)."""
    return {k: v for k, v in iou_variant(primary).items() if k in pass_keys(measure)}


def variant_name(measure: str, params: Mapping[str, str]) -> str:
    """ "IoU (gradcam, rho 0.1, boxes)", "PxAP (gradcam, boxes)": how notes name a variant."""
    if {"cam", "threshold", "masks"} <= set(params):
        return f"{display_name(measure)} ({params['cam']}, rho {params['threshold']}, {params['masks']})"
    if set(params) == {"cam", "masks"}:
        return f"{display_name(measure)} ({params['cam']}, {params['masks']})"
    return f"{display_name(measure)} ({params_label(params)})" if params else display_name(measure)


def missing_note(measurements: pd.DataFrame, specs: Sequence[MeasureSpec]) -> str:
    """One sentence per spec without a usable value: not measured at all, or only failed or
    undefined. Empty when every spec has values."""
    usable = _usable_variants(prepare_measurements(measurements))
    have = {k: sorted(v) for k, v in usable.items()}
    out = []
    for spec in specs:
        hits = [usable[spec.measure][p] for p in _resolve_params(have, spec)]
        name = variant_name(spec.measure, spec_params(spec))
        if not hits:
            out.append(f"{name} was {NOT_MEASURED}.")
        elif not any(hits):
            out.append(f"{name} has no usable value (failed or undefined for every model).")
    return " ".join(out)


def _join_notes(*notes: str) -> str:
    return " ".join(n for n in notes if n)


def _variants_of(m: pd.DataFrame) -> dict[str, list[str]]:
    """{measure: its params strings in `m`, sorted}."""
    return {k: sorted(v) for k, v in _usable_variants(m).items()}


def _usable_variants(m: pd.DataFrame) -> dict[str, dict[str, bool]]:
    """{measure: {params: whether some row of that variant is usable}} of a prepared frame, in
    order of first appearance. One groupby over the rows: the callers then loop over the few
    distinct variants, never over the rows (Python iteration over a pyarrow string column is
    what a study of 200,000 rows spent its seconds on)."""
    usable = m.groupby(["measure", "params"], sort=False, dropna=False, observed=True)["_usable"].any()
    out: dict[str, dict[str, bool]] = {}
    for (measure, params), ok in zip(usable.index.tolist(), usable.tolist(), strict=True):
        out.setdefault(measure, {})[params] = bool(ok)
    return out


def _resolve_params(variants: Mapping[str, list[str]], spec: MeasureSpec) -> list[str]:
    """The params strings of `spec.measure` (among `variants`, see `_variants_of`) that `spec` selects."""
    have = variants.get(spec.measure, [])
    if isinstance(spec.params, str):
        exact = _label_of(spec.params)
        return [exact] if exact in have else []
    if spec.params is None:
        return have
    return [p for p in have if params_match(p, spec.params)]


def wide_table(
    runs: pd.DataFrame, measurements: pd.DataFrame, measures: Sequence[MeasureSpec | tuple] | None = None
) -> pd.DataFrame:
    """The runs with one column per (measure, params).

    `measures`: [(measure, params, column_name), ...] (or `MeasureSpec`s); params is the exact
    params string ("" for none), a mapping of params keys that must match (exactly one params
    string must match), or None for a measure with a single variant. None (default) = every
    (measure, params) present, columns named by `discover_specs`.

    Only usable rows (done, finite value) give values; a failed, undefined or missing
    measurement is NaN. When a run has several done rows for the same (measure, params), the last one wins.
    """
    m = prepare_measurements(measurements)
    specs = discover_specs(m) if measures is None else [_as_spec(s) for s in measures]
    done = m[m["_usable"]]
    rows_of = done.groupby(["measure", "params"], sort=False).indices  # each variant's usable rows
    have = _variants_of(m)
    keys = runs["run_id"].astype(str)
    cols: dict[str, pd.Series] = {}
    for spec in specs:
        col = spec.column
        if col in runs.columns or col in cols:
            raise InputError(f"column {col!r} already in the table; give the measure another name")
        chosen = _resolve_params(have, spec)
        if len(chosen) > 1:
            raise InputError(
                f"{spec.measure} with params {spec.params!r} matches several variants "
                f"{chosen}; pass the exact params string"
            )
        if not chosen:
            cols[col] = pd.Series(np.nan, index=runs.index, dtype=float)
            continue
        sel = done.iloc[rows_of.get((spec.measure, chosen[0]), [])]
        vals = sel.groupby(sel["run_id"].astype(str), sort=False)["value"].last()
        cols[col] = keys.map(vals).astype(float)
    if not cols:
        return runs.copy()
    return pd.concat([runs, pd.DataFrame(cols, index=runs.index)], axis=1)


def discover_specs(
    measurements: pd.DataFrame, primary: Mapping[str, str] | None = None, measures: Sequence[str] | None = None
) -> list[MeasureSpec]:
    """One spec per (measure, params) with a done value; a measure that failed everywhere
    keeps its failed variants, so it shows as an n/a row rather than vanishing.

    `primary`: {params key: value}, e.g. `DEFAULT_PRIMARY` for the headline tables. The IoU
    measures (`IOU_MEASURES`) get exactly `pass_variant(name, primary)`, or a row "...: not measured"
    when that variant is absent; for the other measures, keep the variants with a key's value
    when at least one has it. `measures` restricts to those measure names. Labels are the
    display name, plus "(k=v, ...)" listing the params that still differ between a measure's
    variants. Order: the paper's baselines, other measures A-Z, IoU-B, IoU.
    """
    by_measure = _usable_variants(prepare_measurements(measurements))
    specs: list[MeasureSpec] = []
    names = sorted(by_measure, key=_measure_rank) if measures is None else list(measures)
    for name in names:
        have = by_measure.get(name, {})
        if primary and name in IOU_MEASURES:
            specs.extend(_exact_variant(have, name, pass_variant(name, primary), display_name(name)))
            continue
        done = [p for p, ok in have.items() if ok]
        variants = sorted(done or have)
        variants = _filter_primary(variants, primary or {})
        specs.extend(_label_variants(name, variants, display_name(name)))
    return specs


def _exact_variant(
    variants: Iterable[str], measure: str, want: Mapping[str, str], label: str, skip: Sequence[str] = ()
) -> list[MeasureSpec]:
    """The `variants` (params strings) of `measure` with every (key, value) of `want`; when there
    is none, one spec for `want` labelled "<label>: not measured" (an n/a row, never another variant)."""
    hit = sorted(p for p in set(variants) if params_match(p, want))
    if not hit:
        return [MeasureSpec(measure, dict(want), f"{label}: {NOT_MEASURED}")]
    return _label_variants(measure, hit, label, skip)


PAPER_MEASURES = ("spectral_norm", "nuclear_norm", "effective_invariance", "iou_b", "iou")
PAPER_PRIMARY = {**PRIMARY_IOU, "conv": "reshape", "scale": "log", "norm": "paper", "transform": "rotation"}


def paper_specs(measurements: pd.DataFrame) -> list[MeasureSpec]:
    """The rows of the paper's Table 3 (spectral norm in log space, nuclear norm as eq. A2, EI
    with rotations, IoU-B, IoU), for the headline."""
    present = set(prepare_measurements(measurements)["measure"])
    return discover_specs(measurements, PAPER_PRIMARY, [m for m in PAPER_MEASURES if m in present])


def _measure_rank(name: str) -> tuple:
    if name in MEASURE_ORDER:
        return (0, MEASURE_ORDER.index(name), "")
    if name in MEASURE_LAST:
        return (2, MEASURE_LAST.index(name), "")
    return (1, 0, name)


def _filter_primary(variants: list[str], primary: Mapping[str, str]) -> list[str]:
    for k, v in primary.items():
        hit = [p for p in variants if params_match(p, {k: v})]
        if hit:
            variants = hit
    return variants


def _label_variants(measure: str, variants: list[str], base: str, skip: Sequence[str] = ()) -> list[MeasureSpec]:
    parsed = [_params_of(p) for p in variants]
    keys = sorted({k for d in parsed for k in d} - set(skip))
    differ = [k for k in keys if len({d.get(k) for d in parsed}) > 1]
    out = []
    for p, d in zip(variants, parsed):
        extra = params_label({k: d.get(k, "") for k in differ}, sep=", ")
        out.append(MeasureSpec(measure, p, f"{base} ({extra})" if extra else base))
    return out


def variant_specs(
    measurements: pd.DataFrame,
    measure: str,
    vary: str,
    label: Callable[[str], str],
    order: Sequence[str] = (),
    primary: Mapping[str, str] | None = None,
) -> list[MeasureSpec]:
    """Specs for the values of params key `vary` (Table 6: cam, Table 7: masks) that `measure`
    was measured with, the other keys fixed exactly: by `pass_variant(measure, primary)` for a score-pass
    measure, else by `primary`. A value measured only with other fixed keys gets a row
    "<label>: not measured". Rows ordered by `order`, then A-Z; labelled `label(value)` (+ any
    other params that still differ)."""
    have = _variants_of(prepare_measurements(measurements)).get(measure, [])
    values = {_params_of(p)[vary] for p in have if vary in _params_of(p)}
    fixed = pass_variant(measure, primary) if primary and measure in IOU_MEASURES else dict(primary or {})
    fixed.pop(vary, None)
    specs: list[MeasureSpec] = []
    for v in sorted(values, key=lambda v: (order.index(v) if v in order else len(order), v)):
        specs.extend(_exact_variant(have, measure, {**fixed, vary: v}, label(v), skip=(vary,)))
    return specs


def primary_iou(
    measurements: pd.DataFrame, primary: Mapping[str, str] | None = None, measure: str = "iou"
) -> MeasureSpec | None:
    """The IoU variant Tables 4 and 5 use: exactly `iou_variant(primary)` (`PRIMARY_IOU` by
    default), labelled "IoU", or "IoU: not measured" when that variant is absent. None when
    `measure` was not measured at all. Several matching variants (params with further keys)
    are an InputError: the tables never choose one."""
    have = _variants_of(prepare_measurements(measurements)).get(measure)
    if not have:
        return None
    want = pass_variant(measure, DEFAULT_PRIMARY if primary is None else primary)
    specs = _exact_variant(have, measure, want, display_name(measure))
    if len(specs) > 1:
        raise InputError(
            f"{len(specs)} variants of {measure} match {params_label(want)}: "
            f"{[s.params for s in specs]}; pass primary with their other keys"
        )
    return specs[0]
