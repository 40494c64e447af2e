"""The report page: `render_html` fills the Jinja2 template `report.html.j2` (autoescaped) with
the study's tables as HTML and its figures inlined as base64 PNG data URIs."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from camgap.errors import InputError

from . import render
from .correlation import CorrelationTable
from .groups import group_cells
from .options import archs_of, subset_label, trained_mask
from .selection import SelectionTable

if TYPE_CHECKING:
    from .report import Study


@dataclass(frozen=True)
class FigureFile:
    """A figure of the report: its caption and PNG file."""

    caption: str
    path: Path


def how_computed(runs: pd.DataFrame) -> str:
    """' Trained in fp32 (8), bf16 (64); pack size 8 (64), 1 (8).' for the registry's columns (what
    speeds training up, not what is studied; the model table has them per model); '' without them."""
    parts = []
    for col, name in (("precision", "trained in"), ("pack_size", "pack size")):
        if col in runs.columns and runs[col].notna().any():
            counts = runs[col].dropna().map(lambda v: str(int(v)) if isinstance(v, float) else str(v)).value_counts()
            parts.append(f"{name} " + ", ".join(f"{v} ({n})" for v, n in counts.items()))
    text = "; ".join(parts)
    return f" {text[:1].upper()}{text[1:]}." if parts else ""


#: How the report names each CMI definition (`StudyOptions.cmi`).
CMI_DESCRIPTIONS = {
    "jiang": "jiang (Jiang et al. 2020, sec. 2.3: ordered pairs of distinct models, three-valued signs, "
    "cells weighted by size, minimum over conditioning sets of at most two hyperparameters; in [0, 1])",
    "pgdl": "pgdl (the PGDL competition's scoring program: ordered pairs including a model with itself, "
    'ties as "-", cells averaged unweighted, minimum over pairs of distinct hyperparameters; x 100)',
}
_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


def _html_table(df: pd.DataFrame | None, fmt: render.Fmt = "{:.4f}") -> Markup:
    if df is None or not len(df.columns):
        return Markup("<p class='note'>(empty)</p>")
    return Markup(render.to_html_table(df, fmt))  # to_html_table escapes every cell


def _ci_frame(t: CorrelationTable) -> pd.DataFrame:
    out = pd.DataFrame(index=t.ci_low.index, columns=t.ci_low.columns, dtype=object)
    for c in out.columns:
        out[c] = [
            (
                "n/a"
                if not (np.isfinite(lo) and np.isfinite(hi))
                else render.fmt_value(lo, "{:.4f}", "n/a") + ", " + render.fmt_value(hi, "{:.4f}", "n/a")
            )
            for lo, hi in zip(t.ci_low[c], t.ci_high[c])
        ]
    return out


def _corr_section(title: str, t: CorrelationTable | None, missing: str) -> dict:
    if t is None:
        return dict(title=title, table=None, missing=missing)
    return dict(
        title=title,
        table=t,
        missing=missing,
        pearson=_html_table(t.pearson),
        spearman=_html_table(t.spearman),
        kendall=_html_table(t.kendall),
        confidence=int(round(100 * t.confidence)),
        ci=_html_table(_ci_frame(t)),
        n=_html_table(t.n),
    )


def _figure(fig: FigureFile, base: Path | None) -> dict:
    path = Path(fig.path)
    data = path.read_bytes()
    if not data:
        raise InputError(f"{path}: empty figure file")
    try:
        file = path.resolve().relative_to(base.resolve()).as_posix() if base is not None else path.name
    except ValueError:
        file = str(path)
    return dict(caption=fig.caption, file=file, data=base64.b64encode(data).decode("ascii"))


def render_html(
    st: Study,
    figs: Sequence[FigureFile | tuple[str, Path]],
    title: str,
    *,
    provenance: Sequence[tuple[str, str]] = (),
    no_data: Sequence[str] = (),
    base: Path | None = None,
) -> str:
    """The report page from the template `report.html.j2` (autoescaped). `figs` are inlined as
    data URIs; each <img> names its file (relative to `base`) in `data-file`."""
    runs = st.models
    tm = trained_mask(runs)
    archs = ", ".join(map(str, archs_of(runs[tm]))) or "none"
    summary = (
        f"{int(tm.sum())} trained models ({archs}), "
        f"{int((~tm).sum())} untrained random models; thresholds on training accuracy: "
        f"{', '.join(render.column_label(subset_label(t)) for t in st.subsets)}; "
        f"hyperparameters for Psi / CMI: {', '.join(st.hparams) or 'none'}; "
        f"CMI definition: {CMI_DESCRIPTIONS[st.options.cmi]}; "
        f"bootstrap resamples: {st.settings.get('n_boot')}, seed {st.settings.get('seed')}."
        f"{how_computed(runs[tm])}"
    )
    groups = (
        None
        if st.groups is None
        else dict(
            cells=_html_table(group_cells(st.groups, st.options.min_n)),
            note=st.groups.note,
            clusters=st.clusters,
        )
    )
    calibration = dict(table=None if st.calibration is None else _html_table(st.calibration), note=st.calibration_note)
    t4 = (
        None
        if st.table4 is None
        else dict(
            accuracy=_html_table(st.table4.accuracy, render.percent),
            counts=_html_table(_counts_frame(st.table4)),
            note=st.table4.note,
        )
    )
    variants = [
        _corr_section(
            "Table 5. Validity: IoU vs gap for untrained random and trained models",
            st.table5,
            "not available: no IoU measurements.",
        ),
        _corr_section(
            "Table 6. Robustness to the CAM method",
            st.table6,
            "not available: IoU was measured with fewer than two CAM methods.",
        ),
        _corr_section(
            "Table 7. IoU from boxes vs from saliency masks",
            st.table7,
            "not available: IoU was measured with fewer than two mask sources.",
        ),
    ]
    return _TEMPLATES.get_template("report.html.j2").render(
        title=title,
        provenance=list(provenance),
        summary=summary,
        min_n=st.options.min_n,
        table3=_corr_section("Table 3. Correlation of each measure with the generalization gap", st.table3, ""),
        groups=groups,
        ranking=_html_table(st.ranking),
        cmi=CMI_DESCRIPTIONS[st.options.cmi],
        calibration=calibration,
        table4=t4,
        variant_sections=variants,
        failures=None if st.failures.empty else _html_table(st.failures),
        figures=[_figure(f if isinstance(f, FigureFile) else FigureFile(*f), base) for f in figs],
        no_data=list(no_data),
    )


def _counts_frame(t: SelectionTable) -> pd.DataFrame:
    out = pd.DataFrame(index=t.accuracy.index, columns=t.accuracy.columns, dtype=object)
    for c in out.columns:
        out[c] = [
            f"{a} / {b} ({m}, {g})"
            for a, b, m, g in zip(t.n_compared[c], t.n_ties[c], t.n_ties_measure[c], t.n_ties_gap[c])
        ]
    return out
