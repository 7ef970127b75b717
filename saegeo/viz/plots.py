"""Figures of novel vs reconstruction features and Frankenstein curves.

The figures are those of "Stitching SAEs of different sizes"."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from saegeo.effects.novelty import FamilyNovelty

NOVELTY_COLOURS = {"novel": "#d62728", "reconstruction": "#1f77b4"}
FRANKENSTEIN_COLOURS = {"original": "#1f77b4", "frankenstein": "#d62728", "unrefit": "#ff9896"}

ROW_PX = 330
"""Height of one row of subplots' plotting area, in pixels."""
ROW_GAP_PX = 110
"""Pixels between two rows of subplots: an x-axis's tick labels and title, then the next row's
subplot titles, each clear of the other."""
MARGIN = {"t": 120, "b": 70, "l": 80, "r": 30}
"""Outer margins: the title and a horizontal legend above the first row's subplot titles."""


def grid_height(n_rows: int) -> tuple[int, float]:
    """Total height in pixels and plotly's ``vertical_spacing`` for ``n_rows`` rows of subplots,
    so that rows are ``ROW_PX`` high and ``ROW_GAP_PX`` apart at any number of rows."""
    plot_px = n_rows * ROW_PX + (n_rows - 1) * ROW_GAP_PX
    return plot_px + MARGIN["t"] + MARGIN["b"], ROW_GAP_PX / plot_px


def readable_axes_(fig: go.Figure) -> go.Figure:
    """Axis titles kept clear of tick labels, margins grown to fit them, tick labels level."""
    fig.update_xaxes(automargin=True, title_standoff=10, tickangle=0)
    fig.update_yaxes(automargin=True, title_standoff=8)
    return fig


def page_layout_(fig: go.Figure, title: str, height: int, *, width: int = 1100) -> go.Figure:
    """The title at the top left, the legend above the plots, ``MARGIN`` around them, readable
    axes (:func:`readable_axes_`); ``height`` in pixels, margins included."""
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left", "y": 1 - 16 / height, "yanchor": "top"},
        template="plotly_white",
        height=height,
        width=width,
        margin=MARGIN,
        legend=_legend_above(height - MARGIN["t"] - MARGIN["b"]),
    )
    return readable_axes_(fig)


def _legend_above(plot_px: int) -> dict[str, object]:
    """A horizontal legend just above the first row's subplot titles."""
    return {
        "orientation": "h",
        "x": 0,
        "xanchor": "left",
        "y": 1 + 34 / plot_px,
        "yanchor": "bottom",
    }


SYMLOG_QUANTILE = 0.1
"""Quantile of the non-zero magnitudes that sets the linear part of the symlog axis."""


def symlog_scale(values: np.ndarray) -> float:
    """The width of the linear part of :func:`symlog` for ``values``: the
    :data:`SYMLOG_QUANTILE` quantile of their non-zero magnitudes (1 if none), so that small
    values of either sign stand apart from 0 and the rest spread over the decades.

    Examples
    --------
    >>> symlog_scale(np.array([0.0, -2.0, 4.0, 6400.0]))
    2.4
    """
    magnitude = np.abs(np.asarray(values, dtype=float))
    magnitude = magnitude[np.isfinite(magnitude) & (magnitude > 0)]
    return float(np.quantile(magnitude, SYMLOG_QUANTILE)) if magnitude.size else 1.0


def symlog(values: np.ndarray, scale: float) -> np.ndarray:
    """``sign(v) · log10(1 + |v| / scale)``: linear near 0, logarithmic beyond ``scale``, and
    of the same sign as ``v``, so that a few huge values leave the sign of the rest readable.

    Examples
    --------
    >>> symlog(np.array([-9.0, 0.0, 99.0]), 1.0).tolist()
    [-1.0, 0.0, 2.0]
    """
    values = np.asarray(values, dtype=float)
    return np.sign(values) * np.log10(1 + np.abs(values) / scale)


def symlog_ticks(values: np.ndarray, scale: float) -> tuple[list[float], list[str]]:
    """Tick positions (in :func:`symlog` units) and labels (true values) for ``values``: 0 and
    the powers of ten from ``scale`` (rounded up, so that no tick crowds 0) up to the largest
    magnitude, on each side that has values.

    Examples
    --------
    >>> symlog_ticks(np.array([-5.0, 0.5, 2000.0]), 0.5)[1]
    ['-10', '-1', '0', '1', '10', '100', '1,000', '10,000']
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    first = int(np.ceil(np.log10(scale)))
    ticks: list[float] = [0.0]
    for side in (1.0, -1.0):
        reach = float(np.max(side * values, initial=0.0))
        if reach <= 0:
            continue
        last = int(np.ceil(np.log10(reach)))
        ticks += [side * 10.0**m for m in range(first, max(last, first) + 1)]
    ticks.sort()

    def text(value: float) -> str:
        return f"{value:,.0f}" if abs(value) >= 1 or value == 0 else f"{value:g}"

    return symlog(np.array(ticks), scale).tolist(), [text(v) for v in ticks]


def novelty_figure(result: FamilyNovelty, *, threshold: float = 0.7, title: str = "") -> go.Figure:
    """Per pair: delta_mse vs max cosine (the paper's scatter) and the cumulative MSE curves.

    The scatter's y axis is a symmetric log (:func:`symlog`, ticks in true values): a few
    features of very large |delta_mse| would squash every other point onto a linear axis,
    and the sign of each feature's delta_mse, the point of the figure, must stay readable.
    Hover names each feature by id (``"LEVEL/INDEX"`` of the wider SAE) with its true value.
    """
    n_pairs = len(result.summary)
    # Widths keep the category ticks short enough to stay level; names are in the hover text.
    labels = [f"{r.small_width} → {r.large_width}" for r in result.summary.itertuples()]
    names = [f"{r.small} → {r.large}" for r in result.summary.itertuples()]
    height, spacing = grid_height(n_pairs + 1)
    fig = make_subplots(
        rows=n_pairs + 1,
        cols=2,
        subplot_titles=[
            "share of novel features per pair",
            "2×2: kind × sign(delta_mse)",
            *[
                t
                for label in labels
                for t in (f"{label}: delta_mse vs max cos", f"{label}: cumulative MSE")
            ],
        ],
        vertical_spacing=spacing,
        horizontal_spacing=0.1,
    )
    fig.add_trace(
        go.Bar(
            x=labels,
            y=result.summary["share_novel"],
            marker_color=NOVELTY_COLOURS["novel"],
            name="share novel",
            showlegend=False,
            hovertext=names,
        ),
        row=1,
        col=1,
    )
    for kind in ("novel", "reconstruction"):
        for sign in ("decreases", "does_not_decrease"):
            fig.add_trace(
                go.Bar(
                    x=labels,
                    y=result.summary[f"{kind}_{sign}"],
                    name=f"{kind}, delta_mse {'< 0' if sign == 'decreases' else '>= 0'}",
                    marker_color=NOVELTY_COLOURS[kind],
                    opacity=1.0 if sign == "decreases" else 0.45,
                    hovertext=names,
                ),
                row=1,
                col=2,
            )
    for pair in range(n_pairs):
        table = result.features[result.features["pair"] == pair]
        curves = result.curves[result.curves["pair"] == pair]
        scale = symlog_scale(table["delta_mse"].to_numpy())
        for kind in ("novel", "reconstruction"):
            rows = table[table["kind"] == kind]
            fig.add_trace(
                go.Scattergl(
                    x=rows["max_cos"],
                    y=symlog(rows["delta_mse"].to_numpy(), scale),
                    mode="markers",
                    marker={"color": NOVELTY_COLOURS[kind], "size": 4, "opacity": 0.6},
                    name=kind,
                    legendgroup=kind,
                    showlegend=False,
                    hovertext=[
                        f"{pair + 1}/{f}, nearest {pair}/{n}, delta_mse {d:.4g}"
                        for f, n, d in zip(
                            rows["feature"], rows["nearest"], rows["delta_mse"], strict=True
                        )
                    ],
                ),
                row=pair + 2,
                col=1,
            )
            curve = curves[curves["kind"] == kind]
            fig.add_trace(
                go.Scatter(
                    x=curve["n_added"],
                    y=curve["mse"],
                    mode="lines+markers",
                    line={"color": NOVELTY_COLOURS[kind]},
                    name=f"add {kind}",
                    legendgroup=f"curve-{kind}",
                    showlegend=pair == 0,
                    hovertext=[f"L0 {v:.1f}" for v in curve["l0"]],
                ),
                row=pair + 2,
                col=2,
            )
        tickvals, ticktext = symlog_ticks(table["delta_mse"].to_numpy(), scale)
        fig.update_yaxes(tickvals=tickvals, ticktext=ticktext, row=pair + 2, col=1)
        fig.add_vline(x=threshold, line_dash="dot", line_color="#7f7f7f", row=pair + 2, col=1)
        fig.add_hline(y=0, line_color="#bbbbbb", row=pair + 2, col=1)
        fig.update_xaxes(title_text="max decoder cosine to the smaller SAE", row=pair + 2, col=1)
        fig.update_yaxes(title_text="delta_mse (added alone, symlog)", row=pair + 2, col=1)
        fig.update_xaxes(title_text="features added (lowest delta_mse first)", row=pair + 2, col=2)
        fig.update_yaxes(title_text="MSE", row=pair + 2, col=2)
    fig.update_xaxes(title_text="pair of widths", type="category", row=1, col=1)
    fig.update_xaxes(title_text="pair of widths", type="category", row=1, col=2)
    fig.update_yaxes(title_text="share novel", tickformat=".0%", row=1, col=1)
    fig.update_yaxes(title_text="features", row=1, col=2)
    fig.update_layout(barmode="group")
    return page_layout_(fig, title, height, width=1150)


def _mse_in_both_panels(fig: go.Figure, rows: pd.DataFrame, **style: Any) -> None:
    """One line of ``rows``' MSE in each panel of :func:`frankenstein_figure`, against the
    features (left) and against L0 (right), with one legend entry for the two."""
    for col, x in ((1, "n_features"), (2, "l0")):
        fig.add_trace(
            go.Scatter(x=rows[x], y=rows["mse"], showlegend=col == 1, **style), row=1, col=col
        )


def frankenstein_figure(
    comparison: pd.DataFrame, path: pd.DataFrame | None = None, *, title: str = ""
) -> go.Figure:
    """MSE against features and against L0: originals, Frankenstein SAEs, interpolation paths.

    ``comparison`` is :func:`saegeo.stitch.curve.frankenstein_curve`'s frame and ``path``
    :func:`saegeo.stitch.interpolation.interpolation_path`'s.
    """
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("MSE vs features", "MSE vs L0"), horizontal_spacing=0.1
    )
    for pair, rows in (path if path is not None else pd.DataFrame(columns=["pair"])).groupby(
        "pair"
    ):
        _mse_in_both_panels(
            fig,
            rows,
            mode="lines",
            name=f"path {rows['small'].iloc[0]} → {rows['large'].iloc[0]}",
            line={"color": "#7f7f7f", "width": 1},
            opacity=0.6,
            legendgroup=f"path{pair}",
            hovertext=rows["action"],
        )
    for kind, rows in comparison.groupby("kind", sort=False):
        rows = rows.sort_values("n_features")
        _mse_in_both_panels(
            fig,
            rows,
            mode="lines+markers",
            name=str(kind),
            marker={"color": FRANKENSTEIN_COLOURS.get(str(kind))},
            line={"dash": "dot" if kind == "unrefit" else "solid"},
            legendgroup=str(kind),
            hovertext=rows["name"],
        )
    fig.update_xaxes(type="log", title_text="features", row=1, col=1)
    fig.update_xaxes(title_text="L0 (mean active latents)", row=1, col=2)
    fig.update_yaxes(title_text="MSE (held-out)", row=1, col=1)
    height = ROW_PX + 90 + MARGIN["t"] + MARGIN["b"]
    return page_layout_(fig, title, height)


def seed_stability_figure(
    curve: pd.DataFrame, *, threshold: float = 0.7, title: str = ""
) -> go.Figure:
    """Seed stability against optimiser steps: all latents, live latents only, and matched
    one to one.

    ``curve`` has columns ``steps``, ``stability`` and ``stability_live`` (shares in [0, 1])
    and, where measured, ``stability_matched`` (:func:`saegeo.seed_stability_matched`), as
    ``analyses/seed_stability.py`` and ``analyses/demo_family.py`` write them.
    """
    fig = go.Figure()
    for column, name, colour in (
        ("stability", "all latents", "#1f77b4"),
        ("stability_live", "live latents", "#ff7f0e"),
        ("stability_matched", "matched one to one", "#2ca02c"),
    ):
        if column in curve:
            fig.add_trace(
                go.Scatter(
                    x=curve["steps"],
                    y=curve[column],
                    mode="lines+markers",
                    name=name,
                    marker={"color": colour},
                )
            )
    fig.update_xaxes(title_text="optimiser steps", rangemode="tozero")
    fig.update_yaxes(
        title_text=f"share found again by the other seed (cos > {threshold})", range=[0, 1]
    )
    height = ROW_PX + MARGIN["t"] + MARGIN["b"]
    return page_layout_(fig, title, height)
