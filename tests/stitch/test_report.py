"""The Frankenstein report: plain JSON that reads back as the same report."""

from __future__ import annotations

import json

from helpers.stitch import CPU, toy_acts, toy_family

from saegeo.stitch.frankenstein import frankenstein
from saegeo.stitch.report import FrankensteinReport


def test_report_is_json_and_round_trips():
    family, x = toy_family(), toy_acts(300)
    _, report = frankenstein(family, x, retrain="none", **CPU)
    text = json.dumps(report.to_dict(), allow_nan=False)
    again = FrankensteinReport.from_dict(json.loads(text))
    assert again.to_dict() == report.to_dict()
    assert again.steps[0].source == "m6"
