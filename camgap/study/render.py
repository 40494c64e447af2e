"""Rendering the study's tables: cells as display text (`format_frame`: minus as U+2212 like
the paper, NaN as "n/a"), Markdown and HTML tables, and the CSV + Markdown files that
`write_study` leaves under `tables/`. Computing the tables is `tables`' job."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .correlation import CorrelationTable
from .selection import SelectionTable

Fmt = str | Callable[[float], str] | Mapping[str, "str | Callable[[float], str]"] | None


def fmt_value(v, fmt, na_rep: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT:
        return na_rep
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if callable(fmt):
            return fmt(float(v))
        return (fmt or "{:.4f}").format(float(v)).replace("-", "\u2212")
    return str(v)


def format_frame(df: pd.DataFrame, fmt: Fmt = "{:.4f}", na_rep: str = "n/a") -> pd.DataFrame:
    """Every cell as display text: floats with `fmt` (a format string, a callable, or a
    {column: fmt} mapping), minus as U+2212 like the paper, NaN as `na_rep`."""
    out = pd.DataFrame(index=df.index, columns=df.columns, dtype=object)
    for c in df.columns:
        f = fmt.get(c, "{:.4f}") if isinstance(fmt, Mapping) else fmt
        out[c] = [fmt_value(v, f, na_rep) for v in df[c].tolist()]
    return out


def percent(v: float) -> str:
    return f"{100 * v:.2f}%"


def column_label(x) -> str:
    """ ">=95" -> "≥ 95" (how a threshold column is shown)."""
    s = str(x)
    return s.replace(">=", "\u2265 ") if s.startswith(">=") else s


def _display_rows(df: pd.DataFrame, fmt: Fmt, na_rep: str) -> tuple[list[str], list[list[str]], int]:
    """(header, rows of cell text, number of index columns) shared by Markdown and HTML."""
    text = format_frame(df, fmt, na_rep)
    plain = isinstance(df.index, pd.RangeIndex) and df.index.name is None
    idx_names = (
        [] if plain else [n or "" for n in (df.index.names if isinstance(df.index, pd.MultiIndex) else [df.index.name])]
    )
    header = [*idx_names, *(column_label(c) for c in df.columns)]
    rows = []
    for key, (_, r) in zip(df.index, text.iterrows()):
        key = () if plain else key if isinstance(key, tuple) else (key,)
        rows.append([*(str(k) for k in key), *r.tolist()])
    return header, rows, len(idx_names)


def to_markdown(df: pd.DataFrame, fmt: Fmt = "{:.4f}", na_rep: str = "n/a") -> str:
    """A GitHub-flavoured Markdown table; index levels become leading columns and a repeated
    first-level value (the architecture of a block) is shown only on its block's first row."""
    header, rows, n_idx = _display_rows(df, fmt, na_rep)

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = [
        "| " + " | ".join(esc(h) for h in header) + " |",
        "| " + " | ".join(["---"] * n_idx + ["---:"] * len(df.columns)) + " |",
    ]
    prev = None
    for row in rows:
        shown = list(row)
        if n_idx > 1 and row[0] == prev:
            shown[0] = ""
        prev = row[0] if n_idx else None
        lines.append("| " + " | ".join(esc(c) for c in shown) + " |")
    return "\n".join(lines) + "\n"


def to_html_table(df: pd.DataFrame, fmt: Fmt = "{:.4f}", na_rep: str = "n/a") -> str:
    """An HTML table (escaped text, one header row); the first index level of a MultiIndex
    spans its block's rows, like the paper's tables."""
    header, rows, n_idx = _display_rows(df, fmt, na_rep)
    e = html.escape
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead>", "<tbody>"]
    i = 0
    while i < len(rows):
        span = 1
        if n_idx > 1:
            while i + span < len(rows) and rows[i + span][0] == rows[i][0]:
                span += 1
        for k in range(span):
            row = rows[i + k]
            cells = []
            for c, v in enumerate(row):
                if c == 0 and n_idx > 1:
                    if k == 0:
                        cells.append(f"<th rowspan='{span}'>{e(v)}</th>")
                    continue
                cells.append(f"<th>{e(v)}</th>" if c < n_idx else f"<td>{e(v)}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        i += span
    out.append("</tbody></table>")
    return "\n".join(out)


def write_table(
    df: pd.DataFrame,
    out_dir: str | Path,
    name: str,
    *,
    fmt: Fmt = "{:.4f}",
    na_rep: str = "n/a",
    title: str | None = None,
    note: str = "",
) -> tuple[Path, Path]:
    """Write `name.csv` (full-precision numbers, NaN as "n/a", which pandas.read_csv reads back
    as NaN) and `name.md` (formatted with `fmt`, `note` as a paragraph under the table, so a
    variant that was not measured is said there). Returns (csv_path, md_path)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    index = not (isinstance(df.index, pd.RangeIndex) and df.index.name is None)
    df.to_csv(csv_path, na_rep=na_rep, index=index)
    md = to_markdown(df, fmt, na_rep) if len(df.columns) else "(empty)\n"
    md_path.write_text((f"**{title}**\n\n" if title else "") + md + (f"\n{note}\n" if note else ""), encoding="utf-8")
    return csv_path, md_path


def write_correlation_table(
    t: CorrelationTable, out_dir: str | Path, name: str, title: str | None = None
) -> list[Path]:
    """`name` (Pearson, the headline), `name_spearman`, `name_kendall`, `name_ci_low`,
    `name_ci_high`, `name_n` and the tidy `name_long`, each as CSV + Markdown."""
    paths: list[Path] = []
    for s, f in t.frames().items():
        paths += write_table(
            f,
            out_dir,
            name if s == "pearson" else f"{name}_{s}",
            title=title if s == "pearson" else None,
            note=t.note if s == "pearson" else "",
        )
    paths += write_table(t.long(), out_dir, f"{name}_long")
    return paths


def write_selection_table(
    t: SelectionTable, out_dir: str | Path, name: str = "table4", title: str | None = None
) -> list[Path]:
    paths = list(write_table(t.accuracy, out_dir, name, fmt=percent, title=title, note=t.note))
    paths += write_table(t.long(), out_dir, f"{name}_long", fmt={"accuracy": "{:.6f}"})
    return paths
