"""Stage 2's pure choices: the soft vote judged from its members' out-of-fold scores, reused
cross-validation, a family's threads and its tuning rounds."""

import itertools

import numpy as np
import pytest

from pipeline.data import load_dataset
from pipeline.final_model import (
    OPENMP_MIN_ROWS,
    FamilyOutcome,
    choose_final_estimator,
    estimator_for,
    family_jobs,
    merge_outcomes,
)
from pipeline.models import build_ensemble
from pipeline.training import cross_validate, folds
from tests.conftest import make_config, small_params


def _ensemble_case(best_single_auc: float, min_gain: float):
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
    # The winner's cross-validation comes along, so fitting the final model does not repeat it.
    assert dropped.cv is not None and len(dropped.cv.per_fold) == 3
    assert dropped.cv_metrics["cv_roc_auc"] == 0.55


def test_cross_validation_the_trials_did_is_reused_not_repeated(monkeypatch):
    """Families whose best trial's CV is known are never cross-validated again (issue 15)."""
    from pipeline import final_model

    raw = small_params()
    config = make_config(raw)
    dataset = load_dataset(config)
    x, y = dataset.features.iloc[:400], dataset.target.iloc[:400]
    splits = folds(y, 3, config.seed)
    weak = {"cv_roc_auc": 0.5, "cv_expected_cost": 0.7}
    known = {
        family: cross_validate(
            estimator_for(config, dataset, FamilyOutcome(family, "s", 1, 1, 0, params, weak)),
            x,
            y,
            splits,
            config.costs,
        )
        for family, params in [("logistic_regression", {"C": 1.0}), ("naive_bayes", {})]
    }
    outcomes = [
        FamilyOutcome(
            "logistic_regression", "s1", 1, 1, 0, {"C": 1.0}, weak, cv=known["logistic_regression"]
        ),
        FamilyOutcome("naive_bayes", "s2", 1, 1, 0, {}, weak, cv=known["naive_bayes"]),
    ]

    def refuse(*args, **kwargs):
        raise AssertionError("cross-validated again")

    monkeypatch.setattr(final_model, "cross_validate", refuse)
    chosen = choose_final_estimator(config, dataset, outcomes, outcomes[0], x, y, splits)
    expected = np.mean([known["logistic_regression"].oof_scores, known["naive_bayes"].oof_scores], axis=0)
    if chosen.name.startswith("soft_vote("):
        np.testing.assert_allclose(chosen.cv.oof_scores, expected)
    else:
        assert chosen.cv is known["logistic_regression"]


def test_vote_judged_from_member_scores_matches_a_refit_voting_classifier():
    """The chosen subset's CV equals cross-validating the VotingClassifier itself on the same folds."""
    config = make_config(small_params())
    dataset = load_dataset(config)
    x, y = dataset.features.iloc[:400], dataset.target.iloc[:400]
    splits = folds(y, 3, config.seed)
    weak = {"cv_roc_auc": 0.5, "cv_expected_cost": 0.7}
    outcomes = [
        FamilyOutcome("logistic_regression", "s1", 1, 1, 0, {"C": 1.0}, weak),
        FamilyOutcome("naive_bayes", "s2", 1, 1, 0, {}, weak),
        FamilyOutcome("decision_tree", "s3", 1, 1, 0, {"max_depth": 3}, weak),
    ]
    chosen = choose_final_estimator(config, dataset, outcomes, outcomes[0], x, y, splits)
    assert chosen.name.startswith("soft_vote(")
    refit = cross_validate(chosen.estimator, x, y, splits, config.costs)
    np.testing.assert_allclose(chosen.cv.oof_scores, refit.oof_scores, rtol=1e-9, atol=1e-12)
    assert chosen.cv_metrics["cv_roc_auc"] == pytest.approx(refit.summary()["cv_roc_auc_mean"])
    assert chosen.cv.threshold == pytest.approx(refit.threshold)
    # No other vote, each refit for real, beats it: a larger one not at all, a smaller one not by
    # more than the margin it would need.
    chosen_size, margin = len(chosen.estimator.estimators), config.optimize.ensemble_min_gain
    for size in (2, 3):
        for combo in itertools.combinations(outcomes, size):
            vote = build_ensemble([(o.family, estimator_for(config, dataset, o)) for o in combo])
            auc = cross_validate(vote, x, y, splits, config.costs).summary()["cv_roc_auc_mean"]
            allowed = margin if size < chosen_size else 0.0
            assert auc <= chosen.cv_metrics["cv_roc_auc"] + allowed + 1e-12


# --- Stage 1 within its share of the budget: racing and skipping ---------------------------------


@pytest.mark.parametrize(
    ("family", "n_rows", "threads"),
    [
        ("lightgbm", 1_000, 1),  # small data: one OpenMP thread, as measured best on 2 shared cores
        ("hist_gradient_boosting", OPENMP_MIN_ROWS - 1, 1),
        ("lightgbm", OPENMP_MIN_ROWS, 4),  # large data: the cores the config gives
        ("hist_gradient_boosting", 1_000_000, 4),
        ("random_forest", 1_000, 4),  # joblib threads: always the config's
    ],
)
def test_boosters_get_the_configured_cores_on_large_data(family, n_rows, threads):
    assert family_jobs(family, 4, n_rows) == threads


def test_the_final_estimator_is_threaded_for_the_training_rows():
    config = make_config(small_params(optimize={"n_jobs": 2}))
    dataset = load_dataset(config)
    outcome = FamilyOutcome("lightgbm", "s", 1, 1, 0, {}, {"cv_roc_auc": 0.7, "cv_expected_cost": 0.6})
    assert estimator_for(config, dataset, outcome).named_steps["model"].n_jobs == 1
    assert estimator_for(config, dataset, outcome, 100_000).named_steps["model"].n_jobs == 2


def _outcome(params: dict, cv, run_now: int, seconds: float, stopped_by: str) -> FamilyOutcome:
    return FamilyOutcome(
        "lightgbm",
        "study",
        run_now,
        run_now,
        0,
        params,
        {"cv_roc_auc": 0.8},
        40,
        stopped_by,
        seconds,
        seconds,
        cv,
    )


def test_a_family_tuned_twice_adds_up_its_rounds_and_keeps_its_best_trials_cv():
    first_cv, second_cv = object(), object()
    first = _outcome({"n": 1}, first_cv, run_now=3, seconds=10.0, stopped_by="time")
    # The second round found no better trial: the best is still the first round's, with its CV.
    same = merge_outcomes(first, _outcome({"n": 1}, None, run_now=2, seconds=6.0, stopped_by="count"))
    assert (same.trials_run_now, same.planned_seconds, same.spent_seconds) == (5, 16.0, 16.0)
    assert same.cv is first_cv and same.stopped_by == "count"
    better = merge_outcomes(first, _outcome({"n": 2}, second_cv, run_now=2, seconds=6.0, stopped_by="time"))
    assert better.cv is second_cv and better.best_params == {"n": 2}
    # A better trial from elsewhere (another worker): no CV result to reuse, the final step recomputes it.
    assert merge_outcomes(first, _outcome({"n": 3}, None, 1, 1.0, "time")).cv is None
