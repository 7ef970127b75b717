"""The HTML report: tables without index columns, number formatting, figures at page width."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from saegeo.viz.report import Report, format_cell, table_html


def cells(page: str, tag: str) -> list[list[str]]:
    """Text of each row's ``tag`` cells."""
    return [
        [re.sub(r"<[^>]+>", "", c) for c in re.findall(rf"<{tag}[^>]*>(.*?)</{tag}>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", page)
        if f"<{tag}" in row
    ]


def test_tables_have_no_index_column():
    frame = pd.DataFrame(
        {"small": ["a-48", "b-96"], "share_novel": [0.25, 0.5], "n_novel": [12, 48]},
        index=pd.Index([7, 9], name="feature"),
    )
    page = table_html(frame)
    assert cells(page, "th") == [["small", "share_novel", "n_novel"]]
    assert cells(page, "td") == [["a-48", "0.25", "12"], ["b-96", "0.5", "48"]]
    assert "feature" not in page and ">7<" not in page
    assert page.startswith('<div class="table-wrap">')  # scrolls inside the page, not past it
    assert "share_<wbr>novel" in page  # long names may wrap
    assert '<td class="text">a-48</td>' in page and "<td>0.25</td>" in page


def test_report_tables_and_row_limit():
    report = Report("t")
    report.table(pd.DataFrame({"x": range(40)}), max_rows=5)
    html = report.html()
    assert len(cells(html, "td")) == 5 and "First 5 of 40 rows" in html
    assert "dataframe" not in html  # not pandas' to_html, which writes the index


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (12345, "12,345"),
        (np.int64(7), "7"),
        (32.0, "32"),
        (3982.123, "3,982"),
        (0.29234, "0.2923"),
        (0.00041, "4.100e-04"),
        (float("nan"), "–"),
        (None, "–"),
        (True, "True"),
        ("topk-576", "topk-576"),
    ],
)
def test_cell_formatting(value, text):
    assert format_cell(value) == text


def test_figures_take_the_page_width_and_their_own_height():
    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))
    fig.update_layout(width=1150, height=777)
    report = Report("t")
    report.figure(fig)
    report.figure(fig, height="300px")
    html = report.html()
    assert fig.layout.width == 1150  # the caller's figure is unchanged
    assert html.count('<div class="figure">') == 2
    assert "height:777px; width:100%" in html and "height:300px; width:100%" in html
    assert '"width":1150' not in html.replace(" ", "")
    assert html.count("plotly.js v") == 1  # inline once, offline


def test_long_text_cells_wrap_and_short_ones_do_not():
    page = table_html(pd.DataFrame({"name": ["topk-576", "x" * 40]}))
    assert '<td class="text">topk-576</td>' in page
    assert '<td class="text long">' + "x" * 40 in page
