"""Novelty and Frankenstein figures: readable layout (titles clear of axes, level ticks, rows)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from saegeo.effects.novelty import FamilyNovelty
from saegeo.viz.plots import (
    ROW_GAP_PX,
    frankenstein_figure,
    grid_height,
    novelty_figure,
    seed_stability_figure,
    symlog_scale,
)


def synthetic_novelty(n_pairs: int) -> FamilyNovelty:
    rng = np.random.default_rng(0)
    summary, features, curves = [], [], []
    for pair in range(n_pairs):
        small, large = 576 * 2**pair, 576 * 2 ** (pair + 1)
        summary.append(
            {
                "small": f"topk-{small}",
                "large": f"topk-{large}",
                "small_width": small,
                "large_width": large,
                "n_novel": 10,
                "share_novel": 0.4,
                "novel_decreases": 6,
                "novel_does_not_decrease": 4,
                "reconstruction_decreases": 3,
                "reconstruction_does_not_decrease": 12,
            }
        )
        for feature in range(25):
            features.append(
                {
                    "pair": pair,
                    "feature": feature,
                    "nearest": feature % 7,
                    "kind": "novel" if feature < 10 else "reconstruction",
                    "max_cos": rng.random(),
                    "delta_mse": rng.normal(),
                }
            )
        for kind in ("novel", "reconstruction"):
            for n in (0, 5, 10):
                curves.append({"pair": pair, "kind": kind, "n_added": n, "mse": 1.0, "l0": 8.0})
    return FamilyNovelty(pd.DataFrame(summary), pd.DataFrame(features), pd.DataFrame(curves))


def row_gaps_px(fig) -> list[float]:
    """Pixels between vertically adjacent subplots' plotting areas."""
    plot_px = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    domains = sorted(
        {tuple(fig.layout[name].domain) for name in fig.layout if name.startswith("yaxis")},
        reverse=True,
    )
    return [
        (upper[0] - lower[1]) * plot_px
        for upper, lower in zip(domains[:-1], domains[1:], strict=True)
    ]


def assert_readable_axes(fig) -> None:
    for name in fig.layout:
        if name.startswith(("xaxis", "yaxis")):
            axis = fig.layout[name]
            assert axis.automargin is True, name
            assert axis.title.standoff is not None and axis.title.standoff >= 8, name
            if name.startswith("xaxis"):
                assert axis.tickangle == 0, name  # level tick labels, never rotated into titles


@pytest.mark.parametrize("n_pairs", [1, 3])
def test_novelty_figure_rows_stay_apart(n_pairs):
    fig = novelty_figure(synthetic_novelty(n_pairs), title="Novel vs reconstruction")
    assert_readable_axes(fig)
    gaps = row_gaps_px(fig)
    assert len(gaps) == n_pairs  # n_pairs + 1 rows
    # Room for an x-axis's tick labels and title, then the next row's subplot titles.
    assert all(gap == pytest.approx(ROW_GAP_PX) for gap in gaps) and ROW_GAP_PX >= 100
    assert fig.layout.height == grid_height(n_pairs + 1)[0]
    # Short category ticks (widths, not names); the names go to the hover text.
    assert list(fig.data[0].x) == [f"{576 * 2**p} → {576 * 2 ** (p + 1)}" for p in range(n_pairs)]
    assert "topk-576 → topk-1152" in fig.data[0].hovertext
    # The legend sits above the first row's subplot titles, the title above the legend.
    top_titles = max(a.y for a in fig.layout.annotations)
    assert fig.layout.legend.y > top_titles and fig.layout.legend.yanchor == "bottom"
    assert fig.layout.margin.t >= 100 and fig.layout.title.yanchor == "top"


def test_frankenstein_figure_layout():
    comparison = pd.DataFrame(
        {
            "kind": ["original", "original", "frankenstein"],
            "name": ["a", "b", "f"],
            "n_features": [48, 96, 120],
            "l0": [8.0, 8.0, 14.0],
            "mse": [1.0, 0.8, 0.7],
        }
    )
    fig = frankenstein_figure(comparison, title="Frankenstein")
    assert_readable_axes(fig)
    assert fig.layout.legend.orientation == "h" and fig.layout.legend.y > 1
    assert fig.layout.xaxis.type == "log"


def test_seed_stability_figure_draws_both_curves():
    curve = pd.DataFrame({"steps": [10, 20], "stability": [0.1, 0.3], "stability_live": [0.2, 0.4]})
    fig = seed_stability_figure(curve, title="Seed stability")
    assert_readable_axes(fig)
    assert [trace.name for trace in fig.data] == ["all latents", "live latents"]
    assert list(fig.data[1].y) == [0.2, 0.4] and tuple(fig.layout.yaxis.range) == (0, 1)
    assert fig.layout.legend.y > 1
    matched = seed_stability_figure(curve.assign(stability_matched=[0.05, 0.25]))
    assert [trace.name for trace in matched.data][-1] == "matched one to one"
    assert list(matched.data[-1].y) == [0.05, 0.25]


def test_novelty_scatter_is_symlog_so_signs_stay_readable():
    result = synthetic_novelty(1)
    rng = np.random.default_rng(1)
    features = pd.DataFrame(
        {
            "pair": 0,
            "feature": np.arange(300),
            "nearest": np.arange(300) % 7,
            "kind": np.where(np.arange(300) < 100, "novel", "reconstruction"),
            "max_cos": rng.random(300),
            "delta_mse": rng.normal(size=300),
        }
    )
    features.loc[3, "delta_mse"] = 6400.0
    features.loc[17, "delta_mse"] = -900.0
    fig = novelty_figure(result._replace(features=features))
    scatter = [t for t in fig.data if t.xaxis == "x3"]
    shown = np.concatenate([np.asarray(t.y, dtype=float) for t in scatter])
    true = np.concatenate(
        [features.loc[features["kind"] == k, "delta_mse"] for k in ("novel", "reconstruction")]
    )
    scale = symlog_scale(features["delta_mse"].to_numpy())
    # Every point keeps its sign, order and (through the ticks) its value.
    assert (np.sign(shown) == np.sign(true)).all()
    assert (np.argsort(shown, kind="stable") == np.argsort(true, kind="stable")).all()
    np.testing.assert_allclose(10 ** np.abs(shown) - 1, np.abs(true) / scale, rtol=1e-9)
    # The bulk is not squashed onto 0 (on a linear axis this ratio would be 1e-4).
    assert np.median(np.abs(shown)) > 0.05 * np.abs(shown).max()
    axis = fig.layout.yaxis3
    assert "10,000" in axis.ticktext and "-1,000" in axis.ticktext and "0" in axis.ticktext
    ticks = dict(zip(axis.ticktext, axis.tickvals, strict=True))
    assert ticks["0"] == 0 and ticks["1,000"] == pytest.approx(np.log10(1 + 1000 / scale))
    hover = [h for t in scatter for h in t.hovertext]
    assert any(h.startswith("1/3,") and "6400" in h for h in hover)
    assert {t.name for t in fig.data if t.xaxis == "x4"} == {"add novel", "add reconstruction"}
