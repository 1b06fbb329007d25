"""The final step's reporting plan: importance rows and repeats, reason-code rows, within the time left."""

import pytest

from pipeline import reporting_plan


def test_importance_rows_fit_the_time_left_within_bounds():
    # 0.1 s to score 1,000 rows, nothing fixed; 20 features, 3 repeats: 6 s for all of them.
    cost = reporting_plan.ScoringCost.from_calls(200, 0.02, 1_000, 0.1)
    assert cost.fixed == pytest.approx(0.0) and cost.per_row == pytest.approx(1e-4)
    assert reporting_plan.importance_plan(cost, 1_000, 20, 3, seconds_left=100) == (1_000, 3)
    assert reporting_plan.importance_plan(cost, 1_000, 20, 3, seconds_left=3) == (500, 3)
    assert reporting_plan.importance_plan(cost, 10**6, 20, 3, seconds_left=10**6) == (
        reporting_plan.MAX_IMPORTANCE_ROWS,
        3,
    )
    # No time at all: the fewest rows, one repeat (the importance is still reported).
    assert reporting_plan.importance_plan(cost, 1_000, 20, 3, seconds_left=-1) == (
        reporting_plan.MIN_IMPORTANCE_ROWS,
        1,
    )


def test_a_scoring_calls_fixed_cost_takes_repeats_not_just_rows():
    # A vote of forests: 0.23 s a call on 200 rows or 250 (the trees' fixed cost), 20 features.
    cost = reporting_plan.ScoringCost.from_calls(200, 0.22, 250, 0.23)
    assert cost.fixed == pytest.approx(0.18) and cost.seconds(200) == pytest.approx(0.22)
    # 3 repeats would be 13 s; 6 s left: fewer rows would not help, one repeat fits.
    assert reporting_plan.importance_plan(cost, 250, 20, 3, seconds_left=6) == (200, 1)
    assert reporting_plan.importance_plan(cost, 250, 20, 3, seconds_left=9) == (200, 2)
    assert reporting_plan.importance_plan(cost, 250, 20, 3, seconds_left=60) == (250, 3)
    # One size measured (a test part of fewer rows than the few): all of it is fixed.
    small = reporting_plan.ScoringCost.from_calls(200, 0.05, 120, 0.04)
    assert small == reporting_plan.ScoringCost(0.05, 0.0)
    assert reporting_plan.importance_plan(small, 120, 10, 3, seconds_left=1.0) == (120, 2)


def test_reason_codes_are_planned_by_the_rows_they_score():
    # 1e-4 s a row and 0.05 s a call; an applicant is scored with 49 copies, 1,000 of them a call.
    cost = reporting_plan.ScoringCost(0.05, 1e-4)
    assert reporting_plan.reason_seconds(cost, 2_000, 50, 50_000) == pytest.approx(
        2 * 0.05 + 2_000 * 50 * 1e-4
    )
    assert reporting_plan.reason_seconds(cost, 2_000, 0, 50_000) == 0.0  # a scorecard: its points, no scoring
    assert reporting_plan.reason_seconds(cost, 0, 50, 50_000) == 0.0
    assert reporting_plan.reason_rows(cost, 2_000, 50, 50_000, seconds=100) == 2_000
    assert reporting_plan.reason_rows(cost, 2_000, 50, 50_000, seconds=5.05) == 1_000
    # No time at all: the fewest rows that still say something, or all there are.
    assert reporting_plan.reason_rows(cost, 2_000, 50, 50_000, seconds=0) == reporting_plan.MIN_REASON_ROWS
    assert reporting_plan.reason_rows(cost, 150, 50, 50_000, seconds=0) == 150
    free = reporting_plan.ScoringCost(0.0, 0.0)  # nothing measurable: everyone, whatever the time
    assert reporting_plan.reason_rows(free, 2_000, 50, 50_000, seconds=-1) == 2_000


def test_importance_and_reason_codes_share_the_time_left():
    cost = reporting_plan.ScoringCost(0.0, 1e-4)
    # Importance of 1,000 rows, 20 features, 3 repeats: 6 s; reasons of 2,000 applicants: 10 s.
    whole = reporting_plan.reporting_plan(cost, 1_000, 20, 3, 2_000, 50, 200_000, seconds_left=16)
    assert whole == reporting_plan.ReportingPlan(1_000, 3, 2_000)
    # Short of time: half each.
    half = reporting_plan.reporting_plan(cost, 1_000, 20, 3, 2_000, 50, 200_000, seconds_left=6)
    assert half == reporting_plan.ReportingPlan(500, 3, 600)
    # What one needs less than its half goes to the other: importance takes 6 s, reasons the rest.
    lopsided = reporting_plan.reporting_plan(cost, 1_000, 20, 3, 2_000, 50, 200_000, seconds_left=14)
    assert lopsided == reporting_plan.ReportingPlan(1_000, 3, 1_600)
    # A scorecard's reasons score nothing: importance gets it all.
    card = reporting_plan.reporting_plan(cost, 1_000, 20, 3, 2_000, 0, 200_000, seconds_left=6)
    assert card == reporting_plan.ReportingPlan(1_000, 3, 2_000)
