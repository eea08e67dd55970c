"""The benchmark harness's refusal rule: when do a comparison's rounds disagree too much?"""

from __future__ import annotations

import pytest

from bench.harness import Ratio, Report, Side, spread


def test_spread_is_the_range_over_the_median() -> None:
    assert spread([0.9, 1.0, 1.1]) == pytest.approx(0.2)
    assert spread([1.0]) == 0.0


def test_one_outlier_round_of_five_is_left_out() -> None:
    # Four rounds agree; one busy moment doubled a side's time in round 3.
    assert spread([0.66, 0.68, 0.87, 0.67, 0.65]) == pytest.approx(0.02 / 0.67)


def test_two_disagreeing_rounds_still_refuse() -> None:
    assert spread([0.5, 0.6, 1.0, 1.0, 0.7]) > 0.25


def _report(values: dict[str, list[float]]) -> Report:
    report = Report(key="t", title="t")
    sides = [Side(k, k, "1", "1", "-", lambda: 0.0) for k in values]
    report.figures(sides, values, [Ratio("a / b", "a", "b")])
    return report


def test_report_refuses_when_the_middle_rounds_disagree() -> None:
    agree = _report({"a": [66, 68, 87, 67, 65], "b": [100] * 5})
    assert agree.refusals == []
    disagree = _report({"a": [50, 60, 100, 100, 70], "b": [100] * 5})
    assert len(disagree.refusals) == 1
    assert "highest and lowest round left out" in disagree.refusals[0]
