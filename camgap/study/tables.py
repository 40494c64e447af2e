"""The study's tables, in the layout of the paper's Tables 3-7 (Du, Zhou, Dai 2024).

Input contract (decoupled from the model-set registry through two DataFrames):

- `runs`: one row per model: `run_id`, `arch`, the hyperparameter columns, `trained` (bool;
  False for the untrained random models of the validity test; a missing column means all
  trained), `train_acc`, `test_acc` (fractions), `gap` (percentage points,
  100 * (train_acc - test_acc)).
- `measurements`: long form: `run_id`, `measure`, `params` (a variant's identity, see
  `camgap.params`: the registry's JSON or the label "k=v,k=v", "" when none), `value`, `status`
  ("done"/"failed"), `error`, optionally `state` ("done"/"failed"/"undefined"). Only rows that
  are done (in `status`, and in `state` when present) with a finite value give numbers.

The IoU in every table is the paper's primary variant, `PRIMARY_IOU` (Grad-CAM, rho = 0.1,
boxes). Where that variant was not measured, the table carries a row "...: not measured" and a
note saying so; no table falls back to another variant.

`prepare_measurements` checks that frame and turns every params entry into its label once;
the table functions accept a raw or a prepared frame (a study prepares it once and passes it
on). `wide_table` pivots the measurements onto the runs, one column per (measure, params).
`StudyOptions` holds the settings every table shares. Every table cell with fewer than
`min_n` (3) usable models is NaN, rendered "n/a". Writing tables to files: `render`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

import numpy as np
import pandas as pd

from camgap.errors import InputError, UnknownNameError
from camgap.measures.iou import validate_thresholds
from camgap.measures.registry import pass_keys, score_pass_measures
from camgap.options import CheckedOptions, integer, number
from camgap.options import option as _option
from camgap.params import canonical
from camgap.params import label as params_label

from . import stats

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.95, 0.90, 0.85, 0.80)
#: The paper's seven hyperparameters (Table 2), as registry column names. Columns absent from
#: `runs`, or constant over the trained models, are left out of Psi and the CMI score.
DEFAULT_HPARAMS: tuple[str, ...] = ("arch", "batch_size", "lr", "optimizer", "weight_decay", "augment", "pretrained")
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
    "iou": "IoU",
    "iou_heldout": "IoU held-out",
    "iou_drop": "IoU drop",
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

_EPS = 1e-12


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


def threshold_label(t: float) -> str:
    """0.95 -> ">=95" (column label of the accuracy-threshold columns)."""
    return f">={100 * t:g}"


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


# ------------------------------------------------------------------------- study options
def _accuracy_thresholds(name: str, value: object) -> tuple[float, ...]:
    items = [value] if isinstance(value, (int, float, str)) else list(value)  # type: ignore[arg-type]
    out = []
    for t in items:
        try:
            x = float(t)
        except (TypeError, ValueError):
            raise InputError(f"{name}: accuracy threshold {t!r} is not a number") from None
        if not (math.isfinite(x) and 0.0 <= x <= 1.0):
            raise InputError(f"{name}: accuracy threshold {t!r} is outside [0, 1] (accuracies are fractions)")
        out.append(x)
    return tuple(out)


def _primary(name: str, value: object) -> Mapping[str, str]:
    if value is None:
        return DEFAULT_PRIMARY
    if not isinstance(value, Mapping):
        raise InputError(f"{name} must be a mapping of params keys to values, got {value!r}")
    if "threshold" in value:
        validate_thresholds([value["threshold"]])  # type: ignore[list-item]
    return MappingProxyType(canonical(value))


def _specs(name: str, value: object) -> tuple[MeasureSpec, ...] | None:
    return None if value is None else tuple(_as_spec(s) for s in value)  # type: ignore[union-attr]


def _cmi_mode(name: str, value: object) -> str:
    if value not in stats.CMI_MODES:
        raise InputError(f"{name} must be one of {', '.join(stats.CMI_MODES)}, got {value!r}")
    return str(value)


def _names(name: str, value: object) -> tuple[str, ...] | None:
    if isinstance(value, str):
        raise InputError(f"{name} must be a list of column names, got the string {value!r}")
    return None if value is None else tuple(str(v) for v in value)  # type: ignore[union-attr]


@dataclass(frozen=True)
class StudyOptions(CheckedOptions):
    """The settings every table of a study shares. Each field declares its check beside it;
    `__post_init__` runs them all (an InputError names the field) and stores the normalised
    values (tuples, a read-only `primary`).

    thresholds: training-accuracy thresholds, the columns of Tables 3, 4, 6, 7 (fractions).
    primary:    the IoU variant of every table and the preferred variant of the other
                measures (None: `DEFAULT_PRIMARY`); its threshold rho is validated.
    n_boot, seed, confidence: the percentile bootstrap of the Pearson r (0: no intervals).
    min_n:      cells with fewer models are n/a.
    measures:   the rows of Table 3 and the ranking (None: every measure present, its primary
                variant); hparams: the hyperparameters of Psi / CMI and of the within-group
                table (None: those that vary).
    cmi:        the CMI score's definition, `stats.CMI_MODES`: "jiang" (Jiang et al. 2020, a
                fraction in [0, 1]) or "pgdl" (the PGDL scoring program's, x 100).
    """

    thresholds: tuple[float, ...] = _option(DEFAULT_THRESHOLDS, _accuracy_thresholds)
    primary: Mapping[str, str] = _option(None, _primary)  # None: DEFAULT_PRIMARY
    n_boot: int = _option(2000, functools.partial(integer, low=0))
    seed: int = _option(0, functools.partial(integer, low=0))
    confidence: float = _option(0.95, functools.partial(number, low=0, high=1, open_low=True, open_high=True))
    min_n: int = _option(stats.MIN_N, functools.partial(integer, low=2))
    measures: tuple[MeasureSpec, ...] | None = _option(None, _specs)
    hparams: tuple[str, ...] | None = _option(None, _names)
    cmi: str = _option("jiang", _cmi_mode)

    what: ClassVar[str] = "study option"

    @classmethod
    def of(cls, options: StudyOptions | None = None, **settings: object) -> StudyOptions:
        """`options` (default: the defaults) with the given fields replaced; the keyword form of
        the table functions (``table3(runs, ms, n_boot=0)``). `specs` is accepted for `measures`."""
        if "specs" in settings:
            settings["measures"] = settings.pop("specs")
        return super().of(options, **settings)

    def bootstrap(self) -> dict[str, object]:
        """The keywords of `correlation_table` that come from the options."""
        return dict(
            thresholds=self.thresholds, n_boot=self.n_boot, seed=self.seed, confidence=self.confidence, min_n=self.min_n
        )


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
    m = prepare_measurements(measurements)
    out = []
    for spec in specs:
        rows = m[(m["measure"] == spec.measure) & m["params"].isin(_resolve_params(m, spec))]
        name = variant_name(spec.measure, spec_params(spec))
        if rows.empty:
            out.append(f"{name} was {NOT_MEASURED}.")
        elif not rows["_usable"].any():
            out.append(f"{name} has no usable value (failed or undefined for every model).")
    return " ".join(out)


def _join_notes(*notes: str) -> str:
    return " ".join(n for n in notes if n)


def _resolve_params(m: pd.DataFrame, spec: MeasureSpec) -> list[str]:
    """The params strings of `spec.measure` in `m` that `spec` selects."""
    have = sorted(set(m.loc[m["measure"] == spec.measure, "params"]))
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
    keys = runs["run_id"].astype(str)
    cols: dict[str, pd.Series] = {}
    for spec in specs:
        col = spec.column
        if col in runs.columns or col in cols:
            raise InputError(f"column {col!r} already in the table; give the measure another name")
        chosen = _resolve_params(m, spec)
        if len(chosen) > 1:
            raise InputError(
                f"{spec.measure} with params {spec.params!r} matches several variants "
                f"{chosen}; pass the exact params string"
            )
        if not chosen:
            cols[col] = pd.Series(np.nan, index=runs.index, dtype=float)
            continue
        sel = done[(done["measure"] == spec.measure) & (done["params"] == chosen[0])]
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
    m = prepare_measurements(measurements)
    specs: list[MeasureSpec] = []
    names = sorted(set(m["measure"]), key=_measure_rank) if measures is None else list(measures)
    for name in names:
        rows = m[m["measure"] == name]
        if primary and name in IOU_MEASURES:
            specs.extend(_exact_variant(rows, name, pass_variant(name, primary), display_name(name)))
            continue
        done = rows[rows["_usable"]]
        variants = sorted(set((done if len(done) else rows)["params"]))
        variants = _filter_primary(variants, primary or {})
        specs.extend(_label_variants(name, variants, display_name(name)))
    return specs


def _exact_variant(
    rows: pd.DataFrame, measure: str, want: Mapping[str, str], label: str, skip: Sequence[str] = ()
) -> list[MeasureSpec]:
    """The variants of `measure` in `rows` with every (key, value) of `want`; when there is none,
    one spec for `want` labelled "<label>: not measured" (an n/a row, never another variant)."""
    hit = sorted(p for p in set(rows["params"]) if params_match(p, want))
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
    m = prepare_measurements(measurements)
    rows = m[m["measure"] == measure]
    values = {_params_of(p)[vary] for p in set(rows["params"]) if vary in _params_of(p)}
    fixed = pass_variant(measure, primary) if primary and measure in IOU_MEASURES else dict(primary or {})
    fixed.pop(vary, None)
    specs: list[MeasureSpec] = []
    for v in sorted(values, key=lambda v: (order.index(v) if v in order else len(order), v)):
        specs.extend(_exact_variant(rows, measure, {**fixed, vary: v}, label(v), skip=(vary,)))
    return specs


# ------------------------------------------------------------------------- run filters
def trained_mask(runs: pd.DataFrame) -> pd.Series:
    if "trained" not in runs.columns:
        return pd.Series(True, index=runs.index)
    t = runs["trained"]
    if t.dtype == object or str(t.dtype).startswith("str"):
        t = t.map(
            lambda v: (
                str(v).strip().lower() not in ("false", "0", "no", "")
                if isinstance(v, str)
                else bool(v)
                if v is not None and v == v
                else True
            )
        )
    return t.fillna(True).astype(bool)


def at_threshold(df: pd.DataFrame, t: float | None, acc_col: str = "train_acc") -> pd.DataFrame:
    """Models with train_acc >= t (t = None: all)."""
    if t is None:
        return df
    return df[pd.to_numeric(df[acc_col], errors="coerce") >= t - _EPS]


def archs_of(df: pd.DataFrame, arch_col: str = "arch") -> list:
    if arch_col not in df.columns:
        return []
    return sorted(df[arch_col].dropna().unique(), key=natural_key)


def infer_hparams(runs: pd.DataFrame, candidates: Sequence[str] = DEFAULT_HPARAMS) -> list[str]:
    """The candidate hyperparameter columns present in `runs` that vary over the trained models."""
    tr = runs[trained_mask(runs)]
    return [h for h in candidates if h in tr.columns and tr[h].astype(object).nunique(dropna=False) > 1]


# --------------------------------------------------------------------- correlation tables
_STATS = ("pearson", "spearman", "kendall", "ci_low", "ci_high", "n")


@dataclass
class CorrelationTable:
    """One correlation table: each frame has the same rows and columns. `pearson` is the
    headline (the paper's statistic); `n` the number of models in the cell. Cells with
    fewer than `min_n` models are NaN in every frame but `n`."""

    pearson: pd.DataFrame
    spearman: pd.DataFrame
    kendall: pd.DataFrame
    ci_low: pd.DataFrame
    ci_high: pd.DataFrame
    n: pd.DataFrame
    confidence: float = 0.95
    note: str = ""

    def frames(self) -> dict[str, pd.DataFrame]:
        return {s: getattr(self, s) for s in _STATS}

    def long(self) -> pd.DataFrame:
        """Tidy form: one row per cell with every statistic."""
        parts = {s: f.stack(future_stack=True) for s, f in self.frames().items()}
        out = pd.DataFrame(parts)
        out.index = out.index.set_names([n or "row" for n in self.pearson.index.names] + ["column"])
        out["n"] = out["n"].astype(int)
        return out.reset_index()

    def block(self, key) -> CorrelationTable:
        """The rows of one first-level index value (e.g. the Total block of Table 3)."""
        return CorrelationTable(
            *(f.loc[[key]] for f in self.frames().values()), confidence=self.confidence, note=self.note
        )


def _cell(x, y, *, min_n: int, n_boot: int, seed: int, confidence: float) -> dict[str, float]:
    c = stats.correlations(x, y, min_n=min_n)
    lo = hi = math.nan
    if n_boot > 0 and np.isfinite(c["pearson"]):
        lo, hi = stats.bootstrap_ci(x, y, "pearson", n_resamples=n_boot, confidence=confidence, seed=seed, min_n=min_n)
    return {
        "pearson": c["pearson"],
        "spearman": c["spearman"],
        "kendall": c["kendall"],
        "ci_low": lo,
        "ci_high": hi,
        "n": c["n"],
    }


def _build(
    index: pd.Index, columns: Sequence[str], cell: Callable[[object, str], dict], confidence: float, note: str = ""
) -> CorrelationTable:
    frames = {s: pd.DataFrame(np.nan, index=index, columns=list(columns), dtype=float) for s in _STATS}
    for r in index:
        for c in columns:
            vals = cell(r, c)
            for s in _STATS:
                frames[s].loc[r, c] = vals[s]
    frames["n"] = frames["n"].fillna(0).astype(int)
    return CorrelationTable(**frames, confidence=confidence, note=note)


def correlation_table(
    wide: pd.DataFrame,
    measure_cols: Sequence[str],
    *,
    gap_col: str = "gap",
    arch_col: str = "arch",
    acc_col: str = "train_acc",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    by_arch: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    min_n: int = stats.MIN_N,
    note: str = "",
) -> CorrelationTable:
    """Table 3 layout: rows (arch, measure) for each architecture then a "Total" block over all
    models of `wide`; columns ">=95" ... (train_acc >= threshold). Cells: correlation of the
    measure column with `gap_col` over the models in the cell (non-finite values dropped)."""
    archs = archs_of(wide, arch_col) if by_arch else []
    groups = [*archs, TOTAL]
    index = pd.MultiIndex.from_tuples([(a, mc) for a in groups for mc in measure_cols], names=[arch_col, "measure"])
    cols = {threshold_label(t): t for t in thresholds}
    subsets = {
        (a, lab): at_threshold(wide if a == TOTAL else wide[wide[arch_col] == a], t, acc_col)
        for a in groups
        for lab, t in cols.items()
    }

    def cell(row, col):
        a, mc = row
        d = subsets[(a, col)]
        return _cell(d[mc], d[gap_col], min_n=min_n, n_boot=n_boot, seed=seed, confidence=confidence)

    return _build(index, list(cols), cell, confidence, note)


def _study_frame(
    runs: pd.DataFrame, measurements: pd.DataFrame, specs: Sequence[MeasureSpec], trained: bool | None = True
) -> pd.DataFrame:
    w = wide_table(runs, measurements, specs)
    if trained is None:
        return w
    mask = trained_mask(w)
    return w[mask if trained else ~mask]


def table3(
    runs: pd.DataFrame,
    measurements: pd.DataFrame,
    specs: Sequence[MeasureSpec] | None = None,
    options: StudyOptions | None = None,
    **settings,
) -> CorrelationTable:
    """Paper Table 3: every measure (primary variant, see `DEFAULT_PRIMARY`; the IoU exactly
    `PRIMARY_IOU`) against the gap, trained models, per architecture and in total, per
    training-accuracy threshold. The note names the variants without a usable value.
    `settings`: fields of `StudyOptions` (thresholds=, primary=, n_boot=, ...)."""
    o = StudyOptions.of(options, **settings)
    m = prepare_measurements(measurements)
    specs = _study_specs(m, specs, o)
    w = _study_frame(runs, m, specs)
    return correlation_table(
        w,
        [s.column for s in specs],
        **o.bootstrap(),
        note=_join_notes(
            "Pearson r between each measure and the generalization gap (trained models with train_acc >= threshold).",
            missing_note(m, specs),
        ),
    )


def _study_specs(m: pd.DataFrame, specs: Sequence[MeasureSpec] | None, o: StudyOptions) -> list[MeasureSpec]:
    """The given specs, else the options' measures, else every measure's primary variant."""
    if specs is not None:
        return [_as_spec(s) for s in specs]
    return list(o.measures) if o.measures is not None else discover_specs(m, o.primary)


# ----------------------------------------------------------------- within groups (Table 3)
#: Bootstrap resamples of a within-group cell at most: that table has a cell per measure and
#: per hyperparameter level, so its intervals use fewer resamples than Table 3's (rougher tails).
GROUP_N_BOOT = 400
#: The first row of the within-group table: every model of the primary subset.
ALL_MODELS = ("all models", "")


def primary_subset(o: StudyOptions) -> float | None:
    """The training-accuracy threshold of the models a selection-based table compares: the lowest
    of the options' thresholds above 0 (0.80 for the paper's model set; a 0 threshold means every
    trained model, not a selection), None (every trained model) when there is none."""
    selections = [t for t in o.thresholds if t > 0]
    return min(selections) if selections else None


def group_table(
    runs: pd.DataFrame,
    measurements: pd.DataFrame,
    specs: Sequence[MeasureSpec] | None = None,
    hparams: Sequence[str] | None = None,
    options: StudyOptions | None = None,
    **settings,
) -> CorrelationTable:
    """Table 3 within groups: Pearson r of each measure (columns) with the gap over the trained
    models of the primary subset (`primary_subset`), first over all of them (`ALL_MODELS`),
    then within each level of each hyperparameter (rows (hyperparameter, level)). A correlation
    over all models can come from differences between the groups alone (Simpson's paradox);
    `cluster_effects` names where. Intervals: `min(n_boot, GROUP_N_BOOT)` resamples."""
    o = StudyOptions.of(options, **settings)
    m = prepare_measurements(measurements)
    specs = _study_specs(m, specs, o)
    if hparams is None:
        hparams = o.hparams
    hparams = infer_hparams(runs) if hparams is None else list(hparams)
    t = primary_subset(o)
    w = at_threshold(_study_frame(runs, m, specs), t)
    groups = {ALL_MODELS: w}
    for h in hparams:
        values = w[h].astype(object)
        for level in sorted(values.dropna().unique(), key=natural_key):
            groups[(h, _level(level))] = w[(values == level).to_numpy()]
    n_boot = min(o.n_boot, GROUP_N_BOOT)

    def cell(row, col):
        d = groups[row]
        return _cell(d[col], d["gap"], min_n=o.min_n, n_boot=n_boot, seed=o.seed, confidence=o.confidence)

    subset = "every trained model" if t is None else f"trained models with train_acc >= {t:g}"
    note = (
        f"Pearson r between each measure and the gap within each level of each hyperparameter, {subset}; "
        f"bootstrap intervals from {n_boot} resamples."
    )
    index = pd.MultiIndex.from_tuples(list(groups), names=["hyperparameter", "level"])
    return _build(index, [s.column for s in specs], cell, o.confidence, _join_notes(note, missing_note(m, specs)))


def _level(v: object) -> str:
    """A hyperparameter value as a row label (16.0 -> "16": a column with missing values is float)."""
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


def group_cells(t: CorrelationTable, min_n: int) -> pd.DataFrame:
    """The within-group table as text: "r [low, high] (n=...)" per cell, or "undefined (n=... <
    min_n)" / "undefined (constant, n=...)" where r is not defined."""
    out = pd.DataFrame(index=t.pearson.index, columns=t.pearson.columns, dtype=object)
    for c in out.columns:
        cells = []
        for r, lo, hi, n in zip(t.pearson[c], t.ci_low[c], t.ci_high[c], t.n[c]):
            if not np.isfinite(r):
                cells.append(f"undefined (n={n} < {min_n})" if n < min_n else f"undefined (constant, n={n})")
                continue
            ci = f" [{lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) and np.isfinite(hi) else ""
            cells.append(f"{r:+.3f}{ci} (n={n})".replace("-", "\u2212"))
        out[c] = cells
    return out


def cluster_effects(t: CorrelationTable) -> list[str]:
    """One sentence per (measure, hyperparameter) where the r over all models exceeds in
    absolute value the r within every level of the hyperparameter that has one (at least two
    levels with a defined r): the correlation owes part of its strength to differences between
    the groups (a cluster effect; Simpson's paradox when the signs differ too)."""
    out = []
    hparams = list(dict.fromkeys(h for h, _ in t.pearson.index if h != ALL_MODELS[0]))
    for col in t.pearson.columns:
        overall = float(t.pearson.loc[ALL_MODELS, col])
        if not np.isfinite(overall):
            continue
        for h in hparams:
            within = t.pearson.loc[h, col].dropna()
            if len(within) < 2 or not (within.abs() < abs(overall)).all():
                continue
            levels = ", ".join(f"{lvl}: {r:+.3f}" for lvl, r in within.items())
            flip = " and some have the opposite sign" if (np.sign(within) != np.sign(overall)).any() else ""
            out.append(
                f"{col}: the r over all models ({overall:+.3f}) exceeds in absolute value every r within the "
                f"levels of {h} ({levels}){flip}: part of the correlation comes from differences between "
                f"the groups (a cluster effect, Simpson's paradox)."
            )
    return out


def primary_iou(
    measurements: pd.DataFrame, primary: Mapping[str, str] | None = None, measure: str = "iou"
) -> MeasureSpec | None:
    """The IoU variant Tables 4 and 5 use: exactly `iou_variant(primary)` (`PRIMARY_IOU` by
    default), labelled "IoU", or "IoU: not measured" when that variant is absent. None when
    `measure` was not measured at all. Several matching variants (params with further keys)
    are an InputError: the tables never choose one."""
    m = prepare_measurements(measurements)
    rows = m[m["measure"] == measure]
    if rows.empty:
        return None
    want = pass_variant(measure, DEFAULT_PRIMARY if primary is None else primary)
    specs = _exact_variant(rows, measure, want, display_name(measure))
    if len(specs) > 1:
        raise InputError(
            f"{len(specs)} variants of {measure} match {params_label(want)}: "
            f"{[s.params for s in specs]}; pass primary with their other keys"
        )
    return specs[0]


def ranking_table(
    runs: pd.DataFrame,
    measurements: pd.DataFrame,
    specs: Sequence[MeasureSpec] | None = None,
    hparams: Sequence[str] | None = None,
    options: StudyOptions | None = None,
    *,
    gap_col: str = "gap",
    **settings,
) -> pd.DataFrame:
    """Granulated Kendall Psi (with each psi_i) and the CMI score (with the conditioning set
    that attains the minimum; its definition is the options' `cmi` mode) per measure, over all
    trained models (NaN below `min_n` models or without a varying hyperparameter). See `stats`;
    the CMI pairs are built once for all measures (`stats.cmi_scores`)."""
    o = StudyOptions.of(options, **settings)
    m = prepare_measurements(measurements)
    specs = _study_specs(m, specs, o)
    if hparams is None:
        hparams = o.hparams
    hparams = infer_hparams(runs) if hparams is None else list(hparams)
    w = _study_frame(runs, m, specs)
    gap_ok = np.isfinite(pd.to_numeric(w[gap_col], errors="coerce").to_numpy(float))
    counts = {s.column: int((np.isfinite(w[s.column].to_numpy(float)) & gap_ok).sum()) for s in specs}
    scored = [c for c, n in counts.items() if hparams and n >= o.min_n]
    cmi = stats.cmi_scores(w, scored, gap_col, hparams, mode=o.cmi) if scored else {}
    rows = []
    for col, n in counts.items():
        row: dict[str, object] = {"measure": col, "n": n}
        if col in cmi:
            psi, per = stats.granulated_kendall(w, col, gap_col, hparams)
            score, per_set = cmi[col]
        else:
            psi, per, score, per_set = math.nan, {}, math.nan, {}
        row["psi"] = psi
        for h in hparams:
            row[f"psi[{h}]"] = per.get(h, math.nan)
        row["cmi"] = score
        arg = [k for k, v in per_set.items() if np.isfinite(v) and v == score]
        row["cmi_set"] = ("+".join(arg[0]) or "{}") if arg else ""
        rows.append(row)
    cols = ["measure", "n", "psi", *[f"psi[{h}]" for h in hparams], "cmi", "cmi_set"]
    return pd.DataFrame(rows, columns=cols).set_index("measure")


# -------------------------------------------------------------------- selection (Table 4)
@dataclass
class SelectionTable:
    """Paper Table 4. Rows: architectures then "Total" (all pairs, across architectures);
    columns: thresholds. `accuracy` is a fraction (NaN below `min_n` models or when every
    pair is tied); the other frames are pair/model counts."""

    accuracy: pd.DataFrame
    n_compared: pd.DataFrame
    n_ties: pd.DataFrame
    n_ties_measure: pd.DataFrame
    n_ties_gap: pd.DataFrame
    n_models: pd.DataFrame
    measure: str = "IoU"
    note: str = ""

    def long(self) -> pd.DataFrame:
        names = ("accuracy", "n_compared", "n_ties", "n_ties_measure", "n_ties_gap", "n_models")
        out = pd.DataFrame({k: getattr(self, k).stack(future_stack=True) for k in names})
        out.index = out.index.set_names([self.accuracy.index.name or "arch", "column"])
        return out.reset_index()


def selection_table(
    wide: pd.DataFrame,
    measure_col: str,
    *,
    higher_is_better: bool = True,
    gap_col: str = "gap",
    arch_col: str = "arch",
    acc_col: str = "train_acc",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    min_n: int = stats.MIN_N,
) -> SelectionTable:
    groups = [*archs_of(wide, arch_col), TOTAL]
    cols = {threshold_label(t): t for t in thresholds}
    idx = pd.Index(groups, name=arch_col)
    fr = {
        k: pd.DataFrame(np.nan, index=idx, columns=list(cols), dtype=float)
        for k in ("accuracy", "n_compared", "n_ties", "n_ties_measure", "n_ties_gap", "n_models")
    }
    for a in groups:
        d0 = wide if a == TOTAL else wide[wide[arch_col] == a]
        for lab, t in cols.items():
            d = at_threshold(d0, t, acc_col)
            s = stats.selection_accuracy(d[measure_col], d[gap_col], higher_is_better)
            fr["accuracy"].loc[a, lab] = s.accuracy if s.n_models >= min_n else math.nan
            fr["n_compared"].loc[a, lab] = s.n_compared
            fr["n_ties"].loc[a, lab] = s.n_ties
            fr["n_ties_measure"].loc[a, lab] = s.n_ties_measure
            fr["n_ties_gap"].loc[a, lab] = s.n_ties_gap
            fr["n_models"].loc[a, lab] = s.n_models
    for k in fr:
        if k != "accuracy":
            fr[k] = fr[k].astype(int)
    return SelectionTable(**fr, measure=measure_col)


def table4(
    runs: pd.DataFrame,
    measurements: pd.DataFrame,
    spec: MeasureSpec | None = None,
    options: StudyOptions | None = None,
    *,
    higher_is_better: bool = True,
    **settings,
) -> SelectionTable | None:
    """Paper Table 4: pairwise selection accuracy of IoU (higher IoU -> smaller gap), trained
    models, within each architecture and across all; the IoU is `primary_iou` (an n/a table
    with a note when that variant was not measured). None when no IoU was measured at all."""
    o = StudyOptions.of(options, **settings)
    m = prepare_measurements(measurements)
    spec = spec or primary_iou(m, o.primary)
    if spec is None:
        return None
    w = _study_frame(runs, m, [spec])
    t = selection_table(w, spec.column, higher_is_better=higher_is_better, thresholds=o.thresholds, min_n=o.min_n)
    t.note = missing_note(m, [spec])
    return t


# ---------------------------------------------------------------------- validity (Table 5)
RANDOM_ROW, TRAINED_ROW = "Random Model", "Trained Model"
_LOWEST = object()


def table5(
    runs: pd.DataFrame,
    measurements: pd.DataFrame,
    spec: MeasureSpec | None = None,
    options: StudyOptions | None = None,
    *,
    trained_threshold: float | None | object = _LOWEST,
    **settings,
) -> CorrelationTable | None:
    """Paper Table 5: IoU vs gap for untrained random models (every `trained == False` run)
    and for trained models (train_acc >= `trained_threshold`, default the lowest of the
    options' thresholds above 0, 0.80 as the paper's model set: a 0 column is every trained
    model, not a selection; None = all trained). Columns:
    architectures, then "Total". The IoU is `primary_iou` (n/a cells and a note when that
    variant was not measured); None when no IoU was measured at all."""
    o = StudyOptions.of(options, **settings)
    if trained_threshold is _LOWEST:
        trained_threshold = primary_subset(o)
    m = prepare_measurements(measurements)
    spec = spec or primary_iou(m, o.primary)
    if spec is None:
        return None
    w = _study_frame(runs, m, [spec], trained=None)
    tmask = trained_mask(w)
    sets = {RANDOM_ROW: w[~tmask], TRAINED_ROW: at_threshold(w[tmask], trained_threshold)}
    cols = [*archs_of(w), TOTAL]
    col = spec.column

    def cell(row, c):
        d = sets[row]
        if c != TOTAL:
            d = d[d["arch"] == c]
        return _cell(d[col], d["gap"], min_n=o.min_n, n_boot=o.n_boot, seed=o.seed, confidence=o.confidence)

    note = (
        f"Pearson r between {col} and the gap; trained models with train_acc >= {trained_threshold}."
        if trained_threshold is not None
        else ""
    )
    return _build(
        pd.Index([RANDOM_ROW, TRAINED_ROW], name="models"),
        cols,
        cell,
        o.confidence,
        note=_join_notes(note, missing_note(m, [spec])),
    )


# ------------------------------------------------------------ robustness (Tables 6 and 7)
def cam_label(cam: str) -> str:
    return f"IoU (Using {CAM_NAMES.get(cam, cam)})"


def mask_label(masks: str) -> str:
    return f"IoU (using {MASK_NAMES.get(masks, 'masks from ' + masks)})"


def _variant_table(
    runs: pd.DataFrame, m: pd.DataFrame, specs: list[MeasureSpec], o: StudyOptions, note: str
) -> CorrelationTable | None:
    if len(specs) < 2:
        return None
    w = _study_frame(runs, m, specs)
    return correlation_table(
        w, [s.column for s in specs], **o.bootstrap(), note=_join_notes(note, missing_note(m, specs))
    )


def table6(
    runs: pd.DataFrame,
    measurements: pd.DataFrame,
    options: StudyOptions | None = None,
    *,
    measure: str = "iou",
    **settings,
) -> CorrelationTable | None:
    """Paper Table 6: IoU vs gap for each CAM method (params key `cam`), in the Table 3 layout
    (per architecture and Total), each at the threshold and masks of `PRIMARY_IOU`. None when
    fewer than two CAM methods were measured."""
    o = StudyOptions.of(options, **settings)
    m = prepare_measurements(measurements)
    specs = variant_specs(m, measure, "cam", cam_label, CAM_ORDER, o.primary)
    return _variant_table(runs, m, specs, o, "Pearson r between IoU and the gap for each CAM method.")


def table7(
    runs: pd.DataFrame,
    measurements: pd.DataFrame,
    options: StudyOptions | None = None,
    *,
    measure: str = "iou",
    **settings,
) -> CorrelationTable | None:
    """Paper Table 7: IoU vs gap with A_G from saliency masks vs from boxes (params key
    `masks`), Table 3 layout, each with the cam and threshold of `PRIMARY_IOU`. None when fewer
    than two mask sources were measured."""
    o = StudyOptions.of(options, **settings)
    m = prepare_measurements(measurements)
    specs = variant_specs(m, measure, "masks", mask_label, ("saliency",), o.primary)
    specs.sort(key=lambda s: spec_params(s).get("masks") == "boxes")  # boxes last
    return _variant_table(runs, m, specs, o, "Pearson r between IoU and the gap, A_G from saliency masks vs boxes.")


def failures_table(measurements: pd.DataFrame) -> pd.DataFrame:
    """Failed measurements per (measure, params): how many runs, and the first reason."""
    m = prepare_measurements(measurements)
    if "error" not in m.columns:
        m["error"] = ""
    f = m[m["status"].astype(str) == "failed"]
    if f.empty:
        return pd.DataFrame(columns=["measure", "params", "n_failed", "runs", "first_error"])
    g = f.groupby(["measure", "params"], sort=True)
    out = pd.DataFrame(
        {
            "n_failed": g.size(),
            "runs": g["run_id"].agg(lambda s: ", ".join(map(str, list(s)[:5])) + (" ..." if len(s) > 5 else "")),
            "first_error": g["error"].agg(lambda s: str(s.iloc[0])),
        }
    )
    return out.reset_index()
