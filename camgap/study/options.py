"""The settings every table of a study shares (`StudyOptions`, each field checked beside it) and
the models a table compares: trained or untrained, at or above a training-accuracy subset,
per architecture."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass
from types import MappingProxyType
from typing import ClassVar

import pandas as pd

from camgap.errors import InputError
from camgap.measures.iou import validate_thresholds
from camgap.options import CheckedOptions, integer, number
from camgap.options import option as _option
from camgap.params import canonical

from . import stats
from .cmi import CMI_MODES
from .variants import DEFAULT_PRIMARY, MeasureSpec, _as_spec, discover_specs, natural_key, wide_table

DEFAULT_SUBSETS: tuple[float, ...] = (0.95, 0.90, 0.85, 0.80)
#: The paper's seven hyperparameters (Table 2), as registry column names. Columns absent from
#: `runs`, or constant over the trained models, are left out of Psi and the CMI score.
DEFAULT_HPARAMS: tuple[str, ...] = ("arch", "batch_size", "lr", "optimizer", "weight_decay", "augment", "pretrained")

_EPS = 1e-12


def subset_label(t: float) -> str:
    """0.95 -> ">=95" (column label of the training-accuracy subsets)."""
    return f">={100 * t:g}"


# ------------------------------------------------------------------------- study options
def _accuracy_subsets(name: str, value: object) -> tuple[float, ...]:
    items = [value] if isinstance(value, (int, float, str)) else list(value)  # type: ignore[arg-type]
    out = []
    for t in items:
        try:
            x = float(t)
        except (TypeError, ValueError):
            raise InputError(f"{name}: training-accuracy cutoff {t!r} is not a number") from None
        if not (math.isfinite(x) and 0.0 <= x <= 1.0):
            raise InputError(f"{name}: training-accuracy cutoff {t!r} is outside [0, 1] (accuracies are fractions)")
        out.append(x)
    return tuple(out)


def _deprecated_thresholds(where: str) -> None:
    warnings.warn(
        f"{where}: thresholds= is deprecated, pass subsets= (the training-accuracy cutoffs; "
        "thresholds names the CAM threshold rho)",
        DeprecationWarning,
        stacklevel=4,
    )


def subsets_keyword(settings: dict, where: str) -> dict:
    """`settings` with the deprecated keyword `thresholds` moved to `subsets` (a
    DeprecationWarning naming `where`); both at once are a TypeError."""
    if "thresholds" not in settings:
        return settings
    if "subsets" in settings:
        raise TypeError(f"{where}: pass subsets= alone (thresholds= is its deprecated name)")
    _deprecated_thresholds(where)
    return {**{k: v for k, v in settings.items() if k != "thresholds"}, "subsets": settings["thresholds"]}


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
    if value not in CMI_MODES:
        raise InputError(f"{name} must be one of {', '.join(CMI_MODES)}, got {value!r}")
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

    subsets:    the training-accuracy cutoffs: the columns of Tables 3, 4, 6, 7 (fractions;
                a column holds the trained models with train_acc >= its cutoff).
                `thresholds=` is its deprecated name (a DeprecationWarning), since
                `thresholds` names the CAM threshold rho everywhere else.
    primary:    the IoU variant of every table and the preferred variant of the other
                measures (None: `DEFAULT_PRIMARY`); its threshold rho is validated.
    n_boot, seed, confidence: the percentile bootstrap of the Pearson r (0: no intervals).
    min_n:      cells with fewer models are n/a.
    measures:   the rows of Table 3 and the ranking (None: every measure present, its primary
                variant); hparams: the hyperparameters of Psi / CMI and of the within-group
                table (None: those that vary).
    cmi:        the CMI score's definition, `CMI_MODES`: "jiang" (Jiang et al. 2020, a
                fraction in [0, 1]) or "pgdl" (the PGDL scoring program's, x 100).
    """

    subsets: tuple[float, ...] = _option(DEFAULT_SUBSETS, _accuracy_subsets)
    primary: Mapping[str, str] = _option(None, _primary)  # None: DEFAULT_PRIMARY
    n_boot: int = _option(2000, functools.partial(integer, low=0))
    seed: int = _option(0, functools.partial(integer, low=0))
    confidence: float = _option(0.95, functools.partial(number, low=0, high=1, open_low=True, open_high=True))
    min_n: int = _option(stats.MIN_N, functools.partial(integer, low=2))
    measures: tuple[MeasureSpec, ...] | None = _option(None, _specs)
    hparams: tuple[str, ...] | None = _option(None, _names)
    cmi: str = _option("jiang", _cmi_mode)
    thresholds: InitVar[Sequence[float] | None] = None  # the deprecated name of `subsets`

    what: ClassVar[str] = "study option"

    def __post_init__(self, thresholds: Sequence[float] | None = None) -> None:
        if thresholds is not None:
            _deprecated_thresholds("StudyOptions")
            object.__setattr__(self, "subsets", thresholds)
        super().__post_init__()

    @classmethod
    def of(cls, options: StudyOptions | None = None, **settings: object) -> StudyOptions:
        """`options` (default: the defaults) with the given fields replaced; the keyword form of
        the table functions (``table3(runs, ms, n_boot=0)``). `specs` is accepted for `measures`,
        `thresholds` (deprecated) for `subsets`."""
        if "specs" in settings:
            settings["measures"] = settings.pop("specs")
        return super().of(options, **subsets_keyword(settings, "study"))

    def bootstrap(self) -> dict[str, object]:
        """The keywords of `correlation_table` that come from the options."""
        return dict(
            subsets=self.subsets, n_boot=self.n_boot, seed=self.seed, confidence=self.confidence, min_n=self.min_n
        )


def primary_subset(o: StudyOptions) -> float | None:
    """The training-accuracy cutoff of the models a selection-based table compares: the lowest of
    the options' subsets above 0 (0.80 for the paper's model set; a 0 cutoff means every trained
    model, not a selection), None (every trained model) when there is none."""
    selections = [t for t in o.subsets if t > 0]
    return min(selections) if selections else None


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


def at_subset(df: pd.DataFrame, t: float | None, acc_col: str = "train_acc") -> pd.DataFrame:
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


def study_frame(
    runs: pd.DataFrame, measurements: pd.DataFrame, specs: Sequence[MeasureSpec], trained: bool | None = True
) -> pd.DataFrame:
    w = wide_table(runs, measurements, specs)
    if trained is None:
        return w
    mask = trained_mask(w)
    return w[mask if trained else ~mask]


def study_specs(m: pd.DataFrame, specs: Sequence[MeasureSpec] | None, o: StudyOptions) -> list[MeasureSpec]:
    """The given specs, else the options' measures, else every measure's primary variant."""
    if specs is not None:
        return [_as_spec(s) for s in specs]
    return list(o.measures) if o.measures is not None else discover_specs(m, o.primary)
