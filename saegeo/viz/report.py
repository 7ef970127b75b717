"""A self-contained HTML report: sections of text, tables and plotly figures, plotly.js inline."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from saegeo.runtime.atomic import write_text
from saegeo.runtime.outputs import GENERATOR_META

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1.5em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.table-wrap { max-width: 100%; overflow-x: auto; margin: 0.8em 0; }
table { border-collapse: collapse; font-size: 0.85em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; white-space: normal; vertical-align: bottom; max-width: 9em; }
td.text, th.text { text-align: left; }
td.long { white-space: normal; overflow-wrap: anywhere; min-width: 16em; max-width: 32em; }
.figure { width: 100%; margin: 0.8em 0; }
p.note { color: #555; } code { background: #f4f4f4; padding: 0 3px; }
"""

LONG_TEXT = 32
"""Text cells longer than this many characters wrap; shorter ones stay on one line."""


def format_cell(value: Any, *, digits: int = 4) -> str:
    """A table cell as text: integers with thousands separators, floats to ``digits``
    significant figures (whole numbers from 1,000 up without decimals), NaN as a dash."""
    if value is None or (isinstance(value, float | np.floating) and np.isnan(value)):
        return "–"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        value = float(value)
        if value == int(value) and abs(value) < 1e15:
            return f"{int(value):,}"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) < 1e-3:
            return f"{value:.{max(digits - 1, 1)}e}"
        return f"{value:.{digits}g}"
    return str(value)


def table_html(frame: pd.DataFrame, *, digits: int = 4) -> str:
    """``frame`` as an HTML table without its index, inside a container that scrolls sideways
    when the table is wider than the page. Column names may break after underscores."""
    text_columns = {c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])}

    def css(column: Any, text: str = "") -> str:
        if column not in text_columns:
            return ""
        return ' class="text long"' if len(text) > LONG_TEXT else ' class="text"'

    head = "".join(
        f"<th{css(c)}>{html.escape(str(c)).replace('_', '_<wbr>')}</th>" for c in frame.columns
    )
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td{css(c, cell)}>{html.escape(cell)}</td>"
            for c, cell in zip(
                frame.columns, (format_cell(v, digits=digits) for v in row), strict=True
            )
        )
        + "</tr>"
        for row in frame.itertuples(index=False, name=None)
    )
    return (
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


@dataclass
class Report:
    """An HTML page built section by section; :meth:`write` saves it atomically."""

    title: str
    parts: list[str] = field(default_factory=list)
    _figures: int = 0

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str, *, note: bool = False) -> None:
        """A paragraph; ``text`` may hold simple inline HTML (code, links) written by saegeo."""
        css = ' class="note"' if note else ""
        self.parts.append(f"<p{css}>{text}</p>")

    def block(self, fragment: str) -> None:
        """HTML written by saegeo (a table of a tree's features, say), in a box that scrolls
        sideways when wider than the page."""
        self.parts.append(f'<div class="table-wrap">{fragment}</div>')

    def table(self, frame: pd.DataFrame, *, digits: int = 4, max_rows: int = 30) -> None:
        """The first ``max_rows`` rows of ``frame`` (:func:`table_html`: no index column)."""
        self.parts.append(table_html(frame.head(max_rows), digits=digits))
        if len(frame) > max_rows:
            self.text(f"First {max_rows} of {len(frame)} rows.", note=True)

    def figure(self, fig: go.Figure, *, height: str | None = None) -> None:
        """``fig`` at the page's width, and at its own height unless ``height`` is given."""
        fig = go.Figure(fig)  # a copy: the caller's figure keeps its fixed width
        fig.update_layout(width=None, autosize=True)
        if height is not None:
            fig.update_layout(height=None)  # plotly sizes the page's box from layout first
        elif fig.layout.height is None:
            height = "480px"
        # plotly.js goes inline once, with the first figure, so the page works offline.
        figure = fig.to_html(
            full_html=False,
            include_plotlyjs=self._figures == 0,
            default_width="100%",
            default_height=height or "480px",
            config={"responsive": True},
        )
        self.parts.append(f'<div class="figure">{figure}</div>')
        self._figures += 1

    def links(self, paths: dict[str, str]) -> None:
        items = "".join(
            f'<li><a href="{html.escape(target)}">{html.escape(label)}</a></li>'
            for label, target in paths.items()
        )
        self.parts.append(f"<ul>{items}</ul>")

    def html(self) -> str:
        title = html.escape(self.title)
        body = "\n".join(self.parts)
        return (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8">{GENERATOR_META}'
            f"<title>{title}</title>"
            f"<style>{_STYLE}</style></head>\n<body><h1>{title}</h1>\n{body}\n</body></html>\n"
        )

    def write(self, path: str | os.PathLike[str]) -> Path:
        return write_text(path, self.html())
