import numpy as np
import pytest

from pipeline.config import CostConfig
from pipeline.evaluation import (
    all_metrics,
    best_threshold,
    cost_curve,
    expected_cost,
    ks_statistic,
    sample_positions,
)

COSTS = CostConfig(false_negative=5, false_positive=1)


def test_expected_cost_by_hand():
    y = np.array([1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.2, 0.6, 0.1, 0.3])
    # Threshold 0.5 rejects 0.9 (bad, right) and 0.6 (good: FP); accepts 0.2 (bad: FN).
    assert expected_cost(y, scores, 0.5, COSTS) == pytest.approx((5 * 1 + 1 * 1) / 5)
    # Threshold 0.15 rejects all but 0.1: no FN, FPs are 0.6 and 0.3.
    assert expected_cost(y, scores, 0.15, COSTS) == pytest.approx(2 / 5)


def test_cost_curve_matches_brute_force_and_best_threshold():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300), 2)  # ties on purpose
    curve = cost_curve(y, scores, COSTS)
    for threshold, cost in zip(curve.thresholds, curve.costs, strict=True):
        assert cost == pytest.approx(expected_cost(y, scores, threshold, COSTS))
    brute = min(expected_cost(y, scores, t, COSTS) for t in np.r_[np.unique(scores), 1.01])
    threshold, cost = best_threshold(y, scores, COSTS)
    assert cost == pytest.approx(brute)
    assert expected_cost(y, scores, threshold, COSTS) == pytest.approx(cost)


def test_accepting_everyone_is_a_candidate():
    # Expensive false positives: the best choice is to reject nobody.
    y = np.array([0, 0, 0, 1])
    threshold, cost = best_threshold(
        y, np.array([0.9, 0.8, 0.7, 0.1]), CostConfig(false_negative=1, false_positive=10)
    )
    assert threshold > 1.0 and cost == pytest.approx(0.25)


def test_ks_gini_and_confusion():
    y = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    metrics = all_metrics(y, scores, 0.5, COSTS)
    assert metrics["roc_auc"] == pytest.approx(0.75)
    assert metrics["gini"] == pytest.approx(0.5)
    assert ks_statistic(y, scores) == pytest.approx(0.5)
    assert (metrics["tn"], metrics["fp"], metrics["fn"], metrics["tp"]) == (2, 0, 1, 1)
    assert metrics["expected_cost"] == pytest.approx(5 / 4)


def test_threshold_by_hand():
    y = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    # Reject at >= t; cost per applicant = (5 * FN + 1 * FP) / 4:
    #   t > 0.8: FN 2 -> 2.5 | t = 0.8: FN 1 -> 1.25 | t = 0.4: FN 1, FP 1 -> 1.5
    #   t = 0.35: FP 1 -> 0.25 (best) | t = 0.1: FP 2 -> 0.5
    threshold, cost = best_threshold(y, scores, COSTS)
    assert threshold == pytest.approx(0.35)
    assert cost == pytest.approx(0.25)
    # Cheaper false negatives move the cut up: at FN = 0.5, rejecting only 0.8 is best (0.5 * 1 / 4).
    threshold, cost = best_threshold(y, scores, CostConfig(false_negative=0.5, false_positive=1))
    assert threshold == pytest.approx(0.8)
    assert cost == pytest.approx(0.125)


def test_a_sample_of_positions_is_seeded_sorted_distinct_and_capped():
    rows = sample_positions(250_000, 10_000, seed=42)
    assert len(rows) == 10_000 and len(np.unique(rows)) == 10_000
    assert np.all(np.diff(rows) > 0) and rows[-1] < 250_000
    assert np.array_equal(rows, sample_positions(250_000, 10_000, seed=42))
    assert not np.array_equal(rows, sample_positions(250_000, 10_000, seed=43))


def test_fewer_rows_than_the_cap_are_all_kept_in_order():
    assert sample_positions(250, 10_000, seed=1).tolist() == list(range(250))
