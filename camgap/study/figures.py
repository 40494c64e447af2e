"""The study's figures as PNG files (matplotlib, Agg canvas; no pyplot global state).

- `gap_boxplot`: paper Figure 4, distribution of the gap per architecture (box = IQR,
  whiskers 1.5 IQR, outliers as points).
- `gap_histogram`: paper Figure 5, number of models per gap range.
- `measure_scatter`: a measure against the gap, coloured by architecture (or another column), with the
  least-squares line and Pearson r in the title.
- `overlay_grid`: paper Figure 2 style grid of pre-rendered CAM overlays, one row per model
  (labelled with its gap), with the CAM method and threshold in the title, a legend of the
  outlines and a colour bar of the CAM colour map (`camgap.viz`).

PNG metadata is stripped of the "Software" entry so the files carry no URL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from camgap.errors import InputError
from camgap.viz import BOX_COLOUR, CAM_CMAP, REGION_COLOUR

from . import stats
from .options import archs_of, trained_mask
from .variants import CAM_NAMES

_PNG_META = {"Software": None}


def _save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=dpi, metadata=_PNG_META)
    return path


def _trained(df: pd.DataFrame) -> pd.DataFrame:
    return df[trained_mask(df)]


def gap_boxplot(
    runs: pd.DataFrame, path: str | Path, *, gap_col: str = "gap", arch_col: str = "arch", trained_only: bool = True
) -> Path:
    """Figure 4: box plot of the generalization gap per architecture (trained models)."""
    d = _trained(runs) if trained_only else runs
    archs = archs_of(d, arch_col)
    data = [pd.to_numeric(d.loc[d[arch_col] == a, gap_col], errors="coerce").dropna().to_numpy() for a in archs]
    fig = Figure(layout="constrained", figsize=(max(4.0, 1.3 * len(archs) + 2), 4))
    ax = fig.add_subplot()
    if archs:
        ax.boxplot(data, whis=1.5)
        ax.set_xticks(range(1, len(archs) + 1), [f"{a}\n(n={len(x)})" for a, x in zip(archs, data)])
    else:
        ax.text(0.5, 0.5, "no models", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("generalization gap (pp)")
    ax.set_title("Generalization gap per architecture")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def gap_histogram(
    runs: pd.DataFrame, path: str | Path, *, gap_col: str = "gap", bin_width: float = 5.0, trained_only: bool = True
) -> Path:
    """Figure 5: number of models per gap range (bins `bin_width` pp wide, aligned to 0)."""
    d = _trained(runs) if trained_only else runs
    g = pd.to_numeric(d[gap_col], errors="coerce").dropna().to_numpy()
    fig = Figure(layout="constrained", figsize=(6, 4))
    ax = fig.add_subplot()
    if g.size:
        lo = math.floor(g.min() / bin_width) * bin_width
        hi = math.ceil(g.max() / bin_width) * bin_width
        bins = np.arange(lo, hi + bin_width * 0.5, bin_width) if hi > lo else [lo - 0.5, lo + 0.5]
        if len(bins) > 80:
            bins = "auto"
        counts, edges, _ = ax.hist(g, bins=bins, edgecolor="black", color="#4c72b0")
        for c, e0, e1 in zip(counts, edges[:-1], edges[1:]):
            if c:
                ax.text((e0 + e1) / 2, c, str(int(c)), ha="center", va="bottom", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no models", ha="center", va="center", transform=ax.transAxes)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 0.5 of a model
    ax.set_xlabel("generalization gap (pp)")
    ax.set_ylabel("number of models")
    ax.set_title(f"Distribution of the gap (n={g.size})")
    return _save(fig, path)


def measure_scatter(
    wide: pd.DataFrame,
    measure_col: str,
    path: str | Path,
    *,
    gap_col: str = "gap",
    arch_col: str = "arch",
    label: str | None = None,
    color_by: str | None = None,
) -> Path:
    """A measure (x) against the gap (y), one colour per architecture (per value of the column
    `color_by` when given), least-squares line gap = a + b * measure over all points, Pearson r
    and n in the title ("n/a" below 3)."""
    x = pd.to_numeric(wide[measure_col], errors="coerce").to_numpy(float)
    y = pd.to_numeric(wide[gap_col], errors="coerce").to_numpy(float)
    ok = np.isfinite(x) & np.isfinite(y)
    fig = Figure(layout="constrained", figsize=(5.5, 4.2))
    ax = fig.add_subplot()
    group_col = color_by or arch_col
    groups = archs_of(wide[ok], group_col) if group_col in wide.columns else []
    if groups:
        for a in groups:
            sel = ok & (wide[group_col] == a).to_numpy()
            ax.scatter(x[sel], y[sel], s=14, alpha=0.75, label=f"{a:g}" if isinstance(a, float) else str(a))
        ax.legend(fontsize=8, frameon=False, title=color_by)
    else:
        ax.scatter(x[ok], y[ok], s=14, alpha=0.75)
    r = stats.pearson(x, y)
    if np.isfinite(r):
        b, a = np.polyfit(x[ok], y[ok], 1)
        xs = np.linspace(x[ok].min(), x[ok].max(), 50)
        ax.plot(xs, a + b * xs, color="black", lw=1.2)
    name = label or measure_col
    ax.set_title(
        f"{name}: r = {r:.4f} (n={int(ok.sum())})" if np.isfinite(r) else f"{name}: r = n/a (n={int(ok.sum())})"
    )
    ax.set_xlabel(name)
    ax.set_ylabel("generalization gap (pp)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _as_rgb(img) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise InputError(f"overlay images must be HxWx3 (or HxW / HxWx4), got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    a = a.astype(float)
    if a.size and np.nanmax(a) > 1.0:
        a = a / 255.0
    return np.clip(a, 0.0, 1.0)


def _row_label(label) -> str:
    if isinstance(label, (int, float, np.integer, np.floating)) and not isinstance(label, bool):
        return f"gap = {float(label):.1f} pp"
    return str(label)


def overlay_figure(
    rows: Sequence[tuple[object, Sequence[np.ndarray]]],
    *,
    cam: str | None = None,
    threshold: float | None = None,
    col_titles: Sequence[str] | None = None,
    title: str | None = None,
    cell_size: float = 1.8,
) -> Figure:
    """The Figure 2 grid as a matplotlib Figure (see `overlay_grid`)."""
    rows = list(rows)
    if not rows:
        raise InputError("overlay_grid needs at least one row")
    ncols = max(1, max(len(imgs) for _, imgs in rows))
    size = (cell_size * ncols + 2.2, cell_size * len(rows) + 1.3)
    fig = Figure(layout="constrained", figsize=size)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_visible(False)
            if c < len(imgs):
                ax.imshow(_as_rgb(imgs[c]))
            if c == 0:
                ax.set_ylabel(_row_label(label), fontsize=9)
            if r == 0 and col_titles is not None and c < len(col_titles):
                ax.set_title(str(col_titles[c]), fontsize=9)
    method = CAM_NAMES.get(cam, cam) if cam else "CAM"
    rho = f"ρ = {threshold:g}" if threshold is not None else "ρ"
    fig.suptitle(title or f"{method} of the predicted class over the grey image, threshold {rho}")
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap=CAM_CMAP), ax=axes, shrink=0.8, fraction=0.05, pad=0.02)
    bar.set_label(f"{method} (normalised to [0, 1])")
    if threshold is not None:
        bar.ax.axhline(threshold, color=REGION_COLOUR, lw=1.5)
    handles = [
        Line2D([], [], color=REGION_COLOUR, lw=2, label=f"{method} ≥ {rho} (thresholded region)"),
        Line2D([], [], color=BOX_COLOUR, lw=2, label="object (bounding boxes or mask)"),
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=2,
        fontsize=8,
        facecolor="0.3",
        labelcolor="white",
        framealpha=1.0,
    )
    return fig


def overlay_grid(
    rows: Sequence[tuple[object, Sequence[np.ndarray]]],
    path: str | Path,
    *,
    cam: str | None = None,
    threshold: float | None = None,
    col_titles: Sequence[str] | None = None,
    title: str | None = None,
    cell_size: float = 1.8,
) -> Path:
    """Lay out pre-rendered overlays in a grid: `rows` = [(label, [img, ...]), ...], one row
    per model; a numeric label is shown as "gap = x.x pp". Images are numpy HxWx3 (uint8, or
    float in [0, 1] / [0, 255]); rows may have different lengths (missing cells stay blank).
    `cam` and `threshold` (the method and rho the overlays were rendered with, `camgap.viz`) name
    the figure; a legend explains the outlines and a colour bar the CAM colours."""
    fig = overlay_figure(rows, cam=cam, threshold=threshold, col_titles=col_titles, title=title, cell_size=cell_size)
    return _save(fig, path)
