"""The Frankenstein report: plain JSON that reads back as the same report."""

from __future__ import annotations

import json
import math

from helpers.property import PROPERTY
from helpers.stitch import CPU, toy_acts, toy_family
from hypothesis import given
from hypothesis import strategies as st

from saegeo.stitch.frankenstein import frankenstein
from saegeo.stitch.report import FrankensteinReport, StepReport


def test_report_is_json_and_round_trips():
    family, x = toy_family(), toy_acts(300)
    _, report = frankenstein(family, x, retrain="none", **CPU)
    text = json.dumps(report.to_dict(), allow_nan=False)
    again = FrankensteinReport.from_dict(json.loads(text))
    assert again.to_dict() == report.to_dict()
    assert again.steps[0].source == "m6"


FLOAT_FIELDS = ("mse_before", "fvu_before", "l0_before", "mse_after", "fvu_after", "l0_after")
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**40), 2**40).map(float)
)


@st.composite
def reports(draw: st.DrawFn) -> FrankensteinReport:
    n_steps = draw(st.integers(1, 4))
    counts = st.integers(0, 2**20)
    steps = tuple(
        StepReport(
            source=draw(st.text(max_size=10)),
            width=draw(st.integers(1, 2**20)),
            offered=draw(counts),
            added=draw(counts),
            swapped_in=draw(counts),
            swapped_out=draw(counts),
            n_features=draw(counts),
            **{name: draw(NUMBERS) for name in FLOAT_FIELDS},
        )
        for _ in range(n_steps)
    )
    return FrankensteinReport(
        threshold=draw(st.floats(-1.0, 1.0)),
        swap=draw(st.booleans()),
        retrain=draw(st.sampled_from(["exact", "sgd", "none"])),
        n_tokens=draw(st.integers(0, 2**40)),
        steps=steps,
        sources=tuple(step.source for step in steps),
        provenance=tuple(
            draw(st.lists(st.tuples(st.integers(0, n_steps - 1), st.integers(0, 99)), max_size=6))
        ),
        refit_seconds=draw(st.floats(0.0, 1e6)),
        refit_method=draw(st.sampled_from(["cholesky", "lstsq", "adam", "none"])),
    )


@PROPERTY
@given(report=reports())
def test_property_any_report_is_strict_json_and_round_trips(report):
    doc = report.to_dict()
    text = json.dumps(doc, allow_nan=False)  # NaN and infinities are written as null
    again = FrankensteinReport.from_dict(json.loads(text))
    assert again.to_dict() == doc
    for step, original in zip(again.steps, report.steps, strict=True):
        for name in FLOAT_FIELDS:
            value = getattr(original, name)
            if math.isfinite(value):
                assert getattr(step, name) == value
            else:
                assert math.isnan(getattr(step, name))
