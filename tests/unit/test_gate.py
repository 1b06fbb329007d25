"""The champion/challenger gate: floors, the paired bootstrap and the decision rule."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline import gate
from pipeline.config import CostConfig, RegisterConfig
from pipeline.evaluation import expected_cost

COSTS = CostConfig(false_negative=5.0, false_positive=1.0)
SETTINGS = RegisterConfig(bootstrap_samples=400, min_probability_of_improvement=0.9)


def make_scores(n: int = 400, seed: int = 0, noise: float = 1.0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    signal = y + rng.normal(0, noise, n)
    return y, 1 / (1 + np.exp(-signal))


def test_weighted_roc_auc_matches_sklearn_with_ties():
    y, scores = make_scores(200)
    scores = np.round(scores, 1)  # many ties
    weights = gate.resample_weights(len(y), 6, seed=3)
    ours = gate.weighted_roc_auc(y, scores, weights)
    expected = [roc_auc_score(y, scores, sample_weight=w) for w in weights]
    np.testing.assert_allclose(ours, expected, rtol=1e-12)


def test_weighted_roc_auc_is_nan_without_both_classes():
    weights = np.array([[1, 1, 0, 0]])
    assert np.isnan(gate.weighted_roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4]), weights))[0]


def test_resample_weights_draw_n_rows_per_sample_and_are_seeded():
    first = gate.resample_weights(50, 30, seed=7)
    assert first.shape == (30, 50)
    assert (first.sum(axis=1) == 50).all()
    np.testing.assert_array_equal(first, gate.resample_weights(50, 30, seed=7))
    assert not np.array_equal(first, gate.resample_weights(50, 30, seed=8))


def test_row_costs_follow_the_evaluation_convention():
    y, scores = make_scores(100)
    assert gate.row_costs(y, scores, 0.4, COSTS).mean() == pytest.approx(expected_cost(y, scores, 0.4, COSTS))


def test_bootstrap_is_paired_and_reproducible():
    y, challenger = make_scores(seed=1, noise=0.6)
    _, champion = make_scores(seed=1, noise=1.5)
    first = gate.paired_bootstrap(y, challenger, champion, 0.3, 0.3, COSTS, 100, seed=42)
    again = gate.paired_bootstrap(y, challenger, champion, 0.3, 0.3, COSTS, 100, seed=42)
    assert list(first.columns) == [
        "sample",
        "challenger_roc_auc",
        "champion_roc_auc",
        "challenger_expected_cost",
        "champion_expected_cost",
        "roc_auc_gain",
        "cost_saving",
    ]
    assert len(first) == 100
    np.testing.assert_array_equal(first.to_numpy(), again.to_numpy())
    # Paired: the same model on both sides gives exactly zero difference in every resample.
    same = gate.paired_bootstrap(y, challenger, challenger, 0.3, 0.3, COSTS, 50, seed=1)
    assert (same["roc_auc_gain"] == 0).all()
    assert (same["cost_saving"] == 0).all()


def test_chunked_bootstrap_equals_one_block(monkeypatch):
    y, challenger = make_scores(seed=2, noise=0.8)
    _, champion = make_scores(seed=3, noise=0.8)
    whole = gate.paired_bootstrap(y, challenger, champion, 0.3, 0.3, COSTS, 60, seed=5)
    monkeypatch.setattr(gate, "_CHUNK_CELLS", len(y) * 7)  # blocks of 7 resamples
    chunked = gate.paired_bootstrap(y, challenger, champion, 0.3, 0.3, COSTS, 60, seed=5)
    np.testing.assert_allclose(whole.to_numpy(), chunked.to_numpy())


def passing_floors(auc: float = 0.8) -> list[gate.FloorCheck]:
    return gate.check_floors(auc, 0.7, {"dummy": 0.5, "logistic_regression": 0.75})


@pytest.mark.parametrize(
    ("auc", "minimum", "baselines", "failed"),
    [
        (0.80, 0.70, {"dummy": 0.5, "logistic_regression": 0.75}, []),
        (0.65, 0.70, {"dummy": 0.5, "logistic_regression": 0.60}, ["min_test_roc_auc"]),
        (0.74, 0.70, {"dummy": 0.5, "logistic_regression": 0.75}, ["beats_logistic_regression"]),
        (0.75, 0.70, {"dummy": 0.5, "logistic_regression": 0.75}, ["beats_logistic_regression"]),
        (0.50, 0.00, {"dummy": 0.5, "logistic_regression": None}, ["beats_dummy"]),
    ],
)
def test_floors(auc, minimum, baselines, failed):
    checks = gate.check_floors(auc, minimum, baselines)
    assert [c.name for c in checks if not c.passed] == failed


def test_missing_baseline_is_skipped_and_noted():
    checks = gate.check_floors(0.8, 0.7, {"dummy": 0.5, "logistic_regression": None})
    skipped = next(c for c in checks if c.name == "beats_logistic_regression")
    assert skipped.passed and skipped.required is None
    decision = gate.decide(checks, None, SETTINGS)
    assert decision.promoted
    assert decision.notes == ["skipped: the research run has no logistic_regression candidate"]


def test_no_champion_promotes_when_floors_pass():
    decision = gate.decide(passing_floors(), None, SETTINGS)
    assert decision.decision == gate.PROMOTED
    assert decision.probability_of_improvement is None


def test_floor_failure_rejects_even_a_better_model():
    y, challenger = make_scores(seed=4, noise=0.5)
    _, champion = make_scores(seed=4, noise=2.0)
    comparison, _ = gate.compare(y, challenger, champion, 0.3, 0.3, COSTS, SETTINGS, seed=0)
    floors = gate.check_floors(0.6, 0.7, {"dummy": 0.5, "logistic_regression": 0.55})
    decision = gate.decide(floors, comparison, SETTINGS)
    assert decision.decision == gate.REJECTED
    assert decision.reason.startswith("floor not met: test ROC AUC 0.6000 vs minimum 0.7000")


def test_clearly_better_challenger_is_promoted():
    y, challenger = make_scores(seed=5, noise=0.5)
    _, champion = make_scores(seed=6, noise=3.0)
    comparison, draws = gate.compare(y, challenger, champion, 0.3, 0.3, COSTS, SETTINGS, seed=0)
    assert comparison.roc_auc_gain > 0.1
    assert comparison.probability_roc_auc == 1.0
    decision = gate.decide(passing_floors(), comparison, SETTINGS)
    assert decision.promoted
    assert decision.probability_of_improvement >= 0.9
    assert len(draws) == SETTINGS.bootstrap_samples


def test_identical_challenger_is_rejected():
    y, scores = make_scores(seed=7)
    comparison, _ = gate.compare(y, scores, scores, 0.3, 0.3, COSTS, SETTINGS, seed=0)
    decision = gate.decide(passing_floors(), comparison, SETTINGS)
    assert decision.decision == gate.REJECTED
    assert decision.probability_of_improvement == 0.0
    assert "not above margin" in decision.reason


def test_margin_blocks_a_small_improvement():
    y, challenger = make_scores(seed=5, noise=0.5)
    _, champion = make_scores(seed=6, noise=3.0)
    strict = RegisterConfig(bootstrap_samples=200, roc_auc_margin=0.5, cost_margin=5.0)
    comparison, _ = gate.compare(y, challenger, champion, 0.3, 0.3, COSTS, strict, seed=0)
    decision = gate.decide(passing_floors(), comparison, strict)
    assert decision.decision == gate.REJECTED
    assert "ROC AUC gain" in decision.reason and "not above margin 0.5" in decision.reason


def test_point_gain_without_enough_bootstrap_support_is_rejected():
    # Two nearly equal models: a small point gain, but far from 90 % of resamples.
    y, champion = make_scores(n=120, seed=8)
    rng = np.random.default_rng(9)
    challenger = np.clip(champion + rng.normal(0, 0.02, len(y)), 0, 1)
    comparison, _ = gate.compare(y, challenger, champion, 0.3, 0.3, COSTS, SETTINGS, seed=0)
    gains = [comparison.roc_auc_gain > 0, comparison.cost_saving > 0]
    assert any(gains), "the fixture must give some point gain"
    decision = gate.decide(passing_floors(), comparison, SETTINGS)
    assert decision.decision == gate.REJECTED
    assert "probability of improvement" in decision.reason


def test_cost_is_the_deciding_metric_when_both_improve():
    y, challenger = make_scores(seed=5, noise=0.5)
    _, champion = make_scores(seed=6, noise=3.0)
    comparison, _ = gate.compare(y, challenger, champion, 0.3, 0.3, COSTS, SETTINGS, seed=0)
    decision = gate.decide(passing_floors(), comparison, SETTINGS)
    assert comparison.cost_saving > 0 and comparison.probability_cost >= 0.9
    assert decision.deciding_metric == "expected_cost"
    assert decision.reason.startswith("expected cost lower by")
    assert decision.to_dict()["probability_of_improvement"] == comparison.probability_cost
