"""Threshold choice on a hand-computed case; calibration kept only when out-of-fold log loss improves."""

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB

from pipeline.calibration import (
    NONE,
    calibrated,
    choose_method,
    cross_calibrate,
    oof_log_loss,
    select_calibration,
)
from pipeline.config import CostConfig
from pipeline.evaluation import best_threshold
from pipeline.training import folds

COSTS = CostConfig(false_negative=5, false_positive=1)


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


@pytest.mark.parametrize(
    ("losses", "expected"),
    [
        ({NONE: 0.50, "sigmoid": 0.48, "isotonic": 0.49}, "sigmoid"),
        ({NONE: 0.50, "sigmoid": 0.52, "isotonic": 0.47}, "isotonic"),
        ({NONE: 0.50, "sigmoid": 0.51, "isotonic": 0.55}, NONE),  # calibration hurts
        ({NONE: 0.50, "sigmoid": 0.50}, NONE),  # a tie is not an improvement
        ({NONE: 0.50, "sigmoid": 0.50 - 1e-6}, NONE),  # nor is noise in the last digits
        ({NONE: 0.50}, NONE),  # no methods configured
    ],
)
def test_calibration_chosen_only_when_it_lowers_log_loss(losses, expected):
    assert choose_method(losses) == expected


@pytest.fixture(scope="module")
def redundant_data():
    """Three informative features, each copied twice: naive Bayes double-counts and is overconfident."""
    rng = np.random.default_rng(0)
    n = 600
    z = rng.normal(size=(n, 3))
    copies = [z, z + 0.05 * rng.normal(size=(n, 3)), z + 0.05 * rng.normal(size=(n, 3))]
    features = pd.DataFrame(np.hstack(copies), columns=[f"x{i}" for i in range(9)])
    probability = 1 / (1 + np.exp(-(z @ np.array([1.0, -0.8, 0.5]))))
    target = pd.Series((rng.uniform(size=n) < probability).astype(int))
    return features, target, folds(target, 3, seed=0)


def test_overconfident_model_gets_calibrated(redundant_data):
    features, target, splits = redundant_data
    choice = select_calibration(
        GaussianNB(), features, target, splits, ["sigmoid", "isotonic"], COSTS, seed=0
    )
    assert choice.method in {"sigmoid", "isotonic"}
    assert choice.log_losses[choice.method] < choice.log_losses[NONE] - 0.05
    # The chosen option's out-of-fold scores are the ones its log loss was measured on.
    assert oof_log_loss(target.to_numpy(), choice.oof_scores) == pytest.approx(
        choice.log_losses[choice.method]
    )
    assert not np.isnan(choice.oof_scores).any()


def test_calibration_that_does_not_help_is_not_used(redundant_data):
    features, target, splits = redundant_data
    model = LogisticRegression(max_iter=1000)
    choice = select_calibration(model, features, target, splits, ["isotonic"], COSTS, seed=0)
    assert choice.log_losses["isotonic"] > choice.log_losses[NONE]
    assert choice.method == NONE
    # The threshold then comes from the uncalibrated model's out-of-fold scores.
    assert choice.threshold == best_threshold(target.to_numpy(), choice.oof_scores, COSTS)[0]


def test_calibrated_wrapper_uses_seeded_folds():
    wrapped = calibrated(LogisticRegression(), "sigmoid", n_folds=4, seed=7)
    assert isinstance(wrapped, CalibratedClassifierCV)
    assert wrapped.method == "sigmoid"
    assert wrapped.cv.n_splits == 4 and wrapped.cv.random_state == 7 and wrapped.cv.shuffle


def test_cross_calibration_never_uses_a_folds_own_labels():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    scores = np.clip(0.5 * y + rng.normal(0.25, 0.2, 200), 0.01, 0.99)
    splits = folds(pd.Series(y), 4, seed=0)
    for method in ("sigmoid", "isotonic"):
        before = cross_calibrate(y, scores, splits, method)
        flipped = y.copy()
        first_valid = splits[0][1]
        flipped[first_valid] = 1 - flipped[first_valid]
        after = cross_calibrate(flipped, scores, splits, method)
        # The first fold's calibrated scores depend only on the other folds' labels.
        np.testing.assert_array_equal(before[first_valid], after[first_valid])
        assert not np.array_equal(before, after)
        assert ((before >= 0) & (before <= 1)).all()


def _ensemble_case(best_single_auc: float, min_gain: float):
    from pipeline.data import load_dataset
    from pipeline.stages.optimize import FamilyOutcome, choose_final_estimator
    from pipeline.training import folds
    from tests.conftest import make_config, small_params

    raw = small_params()
    raw["optimize"]["ensemble_min_gain"] = min_gain
    config = make_config(raw)
    dataset = load_dataset(config)
    x, y = dataset.features.iloc[:400], dataset.target.iloc[:400]
    splits = folds(y, 3, config.seed)
    best = {"cv_roc_auc": best_single_auc, "cv_expected_cost": 0.6}
    outcomes = [
        FamilyOutcome("logistic_regression", "s1", 1, 1, 0, {"C": 1.0}, best),
        FamilyOutcome("naive_bayes", "s2", 1, 1, 0, {}, {"cv_roc_auc": 0.5, "cv_expected_cost": 0.7}),
    ]
    return choose_final_estimator(config, dataset, outcomes, outcomes[0], x, y, splits)


def test_soft_vote_is_kept_when_it_beats_the_best_family_by_the_margin():
    kept = _ensemble_case(best_single_auc=0.55, min_gain=0.01)  # the vote scores about 0.75 here
    assert kept.name == "soft_vote(logistic_regression+naive_bayes)"
    assert kept.cv is not None
    assert kept.cv_metrics["cv_roc_auc"] > 0.56


def test_soft_vote_is_dropped_when_it_does_not_beat_the_margin():
    dropped = _ensemble_case(best_single_auc=0.55, min_gain=0.99)
    assert dropped.name == "logistic_regression"
    assert dropped.cv is None
    assert dropped.cv_metrics["cv_roc_auc"] == 0.55
