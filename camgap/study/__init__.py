"""The study: how well do generalization measures track the gap over a model set?

Inputs are two DataFrames (`runs`, one row per model; `measurements`, long form); see
`camgap.study.tables` for the contract. Modules: `stats` (correlations, bootstrap, granulated
Kendall Psi, CMI score, selection accuracy), `tables` (the paper's Tables 3-7 and the
`StudyOptions` they share), `render` (Markdown, HTML and CSV files), `figures`, `report`
(`run_study`, `write_study`, `headline`), `predict` (gap ~ measure with a prediction interval).
"""

from .bootstrap import bootstrap_ci
from .cmi import cmi_score
from .options import StudyOptions
from .predict import GapFit, GapPrediction, fit_from_wide, fit_gap, predict_gap
from .render import write_table
from .report import Study, demo_frames, headline, run_study, write_study
from .stats import (
    correlations,
    granulated_kendall,
    kendall,
    pearson,
    selection_accuracy,
    spearman,
)
from .variants import MeasureSpec, wide_table

__all__ = [
    "GapFit",
    "GapPrediction",
    "MeasureSpec",
    "Study",
    "StudyOptions",
    "bootstrap_ci",
    "cmi_score",
    "correlations",
    "demo_frames",
    "fit_from_wide",
    "fit_gap",
    "granulated_kendall",
    "headline",
    "kendall",
    "pearson",
    "predict_gap",
    "run_study",
    "selection_accuracy",
    "spearman",
    "wide_table",
    "write_study",
    "write_table",
]
