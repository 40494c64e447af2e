"""The ranking table: granulated Kendall Psi and the CMI score of every measure (Jiang et al. 2020)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from . import stats
from .cmi import cmi_scores
from .options import StudyOptions, infer_hparams, study_frame, study_specs
from .variants import MeasureSpec, prepare_measurements


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
    the Psi cells and the CMI pairs are built once for all measures (`stats.granulated_kendalls`,
    `cmi.cmi_scores`)."""
    o = StudyOptions.of(options, **settings)
    m = prepare_measurements(measurements)
    specs = study_specs(m, specs, o)
    if hparams is None:
        hparams = o.hparams
    hparams = infer_hparams(runs) if hparams is None else list(hparams)
    w = study_frame(runs, m, specs)
    gap_ok = np.isfinite(pd.to_numeric(w[gap_col], errors="coerce").to_numpy(float))
    counts = {s.column: int((np.isfinite(w[s.column].to_numpy(float)) & gap_ok).sum()) for s in specs}
    scored = [c for c, n in counts.items() if hparams and n >= o.min_n]
    cmi = cmi_scores(w, scored, gap_col, hparams, mode=o.cmi) if scored else {}
    psi = stats.granulated_kendalls(w, scored, gap_col, hparams) if scored else {}
    rows = []
    for col, n in counts.items():
        row: dict[str, object] = {"measure": col, "n": n}
        if col in cmi:
            row["psi"], per = psi[col]
            score, per_set = cmi[col]
        else:
            row["psi"], per, score, per_set = math.nan, {}, math.nan, {}
        for h in hparams:
            row[f"psi[{h}]"] = per.get(h, math.nan)
        row["cmi"] = score
        arg = [k for k, v in per_set.items() if np.isfinite(v) and v == score]
        row["cmi_set"] = ("+".join(arg[0]) or "{}") if arg else ""
        rows.append(row)
    cols = ["measure", "n", "psi", *[f"psi[{h}]" for h in hparams], "cmi", "cmi_set"]
    return pd.DataFrame(rows, columns=cols).set_index("measure")
