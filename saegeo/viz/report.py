"""A self-contained HTML report: sections of text, tables and plotly figures, plotly.js inline."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from saegeo.io.atomic import write_text
from saegeo.io.outputs import GENERATOR_META

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } p.note { color: #555; } code { background: #f4f4f4; padding: 0 3px; }
"""


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

    def table(self, frame: pd.DataFrame, *, digits: int = 4, max_rows: int = 30) -> None:
        shown = frame.head(max_rows)
        self.parts.append(shown.to_html(float_format=lambda v: f"{v:.{digits}g}", border=0))
        if len(frame) > max_rows:
            self.text(f"First {max_rows} of {len(frame)} rows.", note=True)

    def figure(self, fig: go.Figure, *, height: str = "480px") -> None:
        # plotly.js goes inline once, with the first figure, so the page works offline.
        self.parts.append(
            fig.to_html(full_html=False, include_plotlyjs=self._figures == 0, default_height=height)
        )
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
