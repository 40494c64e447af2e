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
`StudyOptions` (`options`) holds the settings every table shares. Every table cell with fewer than
`min_n` (3) usable models is NaN, rendered "n/a". Writing tables to files: `render`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd

from .correlation import CorrelationTable, _build, correlation_cells, correlation_table
from .groups import ALL_MODELS, GROUP_N_BOOT, cluster_effects, group_cells, group_table
from .options import (
    DEFAULT_HPARAMS,
    DEFAULT_SUBSETS,
    StudyOptions,
    archs_of,
    at_subset,
    infer_hparams,
    primary_subset,
    study_frame,
    study_specs,
    subset_label,
    trained_mask,
)
from .ranking import ranking_table
from .selection import SelectionTable, selection_table, table4
from .variants import (
    CAM_NAMES,
    CAM_ORDER,
    DEFAULT_PRIMARY,
    DISPLAY_NAMES,
    IOU_MEASURES,
    MASK_NAMES,
    NOT_MEASURED,
    PAPER_PRIMARY,
    PRIMARY_IOU,
    TOTAL,
    MeasureSpec,
    _join_notes,
    discover_specs,
    display_name,
    iou_variant,
    missing_note,
    paper_specs,
    params_match,
    pass_variant,
    prepare_measurements,
    primary_iou,
    spec_params,
    variant_name,
    variant_specs,
    wide_table,
)

#: The names `camgap.experiments` imports under their former names (the training-accuracy cutoffs
#: are subsets; `threshold` is the CAM threshold rho).

#: The table functions, and the names callers of `camgap.study.tables` read from the modules it
#: draws on (their homes: `options`, `variants`, `correlation`, `groups`, `selection`, `ranking`).
__all__ = [
    "ALL_MODELS",
    "CAM_NAMES",
    "CAM_ORDER",
    "CorrelationTable",
    "DEFAULT_HPARAMS",
    "DEFAULT_PRIMARY",
    "DEFAULT_SUBSETS",
    "DISPLAY_NAMES",
    "GROUP_N_BOOT",
    "IOU_MEASURES",
    "MASK_NAMES",
    "MeasureSpec",
    "NOT_MEASURED",
    "PAPER_PRIMARY",
    "PRIMARY_IOU",
    "SelectionTable",
    "StudyOptions",
    "TOTAL",
    "archs_of",
    "at_subset",
    "cam_label",
    "cluster_effects",
    "correlation_table",
    "discover_specs",
    "display_name",
    "failures_table",
    "group_cells",
    "group_table",
    "infer_hparams",
    "iou_variant",
    "mask_label",
    "missing_note",
    "paper_specs",
    "params_match",
    "pass_variant",
    "prepare_measurements",
    "primary_iou",
    "primary_subset",
    "ranking_table",
    "selection_table",
    "spec_params",
    "study_frame",
    "study_specs",
    "table3",
    "table4",
    "table5",
    "table6",
    "table7",
    "subset_label",
    "trained_mask",
    "variant_name",
    "variant_specs",
    "wide_table",
]


def table3(
    runs: pd.DataFrame,
    measurements: pd.DataFrame,
    specs: Sequence[MeasureSpec] | None = None,
    options: StudyOptions | None = None,
    **settings,
) -> CorrelationTable:
    """Paper Table 3: every measure (primary variant, see `DEFAULT_PRIMARY`; the IoU exactly
    `PRIMARY_IOU`) against the gap, trained models, per architecture and in total, per
    training-accuracy subset. The note names the variants without a usable value.
    `settings`: fields of `StudyOptions` (subsets=, primary=, n_boot=, ...)."""
    o = StudyOptions.of(options, **settings)
    m = prepare_measurements(measurements)
    specs = study_specs(m, specs, o)
    w = study_frame(runs, m, specs)
    return correlation_table(
        w,
        [s.column for s in specs],
        **o.bootstrap(),
        note=_join_notes(
            "Pearson r between each measure and the generalization gap (trained models with train_acc >= threshold).",
            missing_note(m, specs),
        ),
    )


# ---------------------------------------------------------------------- validity (Table 5)
RANDOM_ROW, TRAINED_ROW = "Random Model", "Trained Model"
_LOWEST = object()


def table5(
    runs: pd.DataFrame,
    measurements: pd.DataFrame,
    spec: MeasureSpec | None = None,
    options: StudyOptions | None = None,
    *,
    trained_subset: float | None | object = _LOWEST,
    **settings,
) -> CorrelationTable | None:
    """Paper Table 5: IoU vs gap for untrained random models (every `trained == False` run)
    and for trained models (train_acc >= `trained_subset`, default the lowest of the
    options' subsets above 0, 0.80 as the paper's model set: a 0 column is every trained
    model, not a selection; None = all trained). Columns:
    architectures, then "Total". The IoU is `primary_iou` (n/a cells and a note when that
    variant was not measured); None when no IoU was measured at all."""
    o = StudyOptions.of(options, **settings)
    if trained_subset is _LOWEST:
        trained_subset = primary_subset(o)
    m = prepare_measurements(measurements)
    spec = spec or primary_iou(m, o.primary)
    if spec is None:
        return None
    w = study_frame(runs, m, [spec], trained=None)
    tmask = trained_mask(w)
    sets = {RANDOM_ROW: w[~tmask], TRAINED_ROW: at_subset(w[tmask], trained_subset)}
    cols = [*archs_of(w), TOTAL]
    col = spec.column

    def cell(row, c):
        d = sets[row]
        if c != TOTAL:
            d = d[d["arch"] == c]
        return correlation_cells(d, [col], min_n=o.min_n, n_boot=o.n_boot, seed=o.seed, confidence=o.confidence)[col]

    note = (
        f"Pearson r between {col} and the gap; trained models with train_acc >= {trained_subset}."
        if trained_subset is not None
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
    w = study_frame(runs, m, specs)
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
    t = _variant_table(runs, m, specs, o, "Pearson r between IoU and the gap for each CAM method.")
    if t is not None and _same_rows(t, cam_label("gradcam++"), cam_label("smoothgradcam++")):
        t = dataclasses.replace(t, note=_join_notes(t.note, SMOOTH_SAME_NOTE))
    return t


# Why Table 6 can show two equal rows (written under it only when they are equal, see `_same_rows`).
SMOOTH_SAME_NOTE = (
    "The GradCAM++ and SmoothGradCAM++ rows are identical: the CAM's layer feeds global average pooling "
    "and one linear layer (as ResNets' layer4 does), so the gradient there is the head's weights / (h*w) "
    "whatever the input; the noise SmoothGrad adds to the input changes nothing, and both methods give "
    "the same maps."
)


def _same_rows(t: CorrelationTable, a: str, b: str) -> bool:
    """Whether the measured rows `a` and `b` hold the same statistics in every block (architecture
    and Total), with at least one correlation defined: not two rows of n/a."""
    measures = t.pearson.index.get_level_values("measure")
    if a not in measures or b not in measures or t.pearson.xs(a, level="measure").isna().all().all():
        return False
    return all(f.xs(a, level="measure").equals(f.xs(b, level="measure")) for f in t.frames().values())


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
