"""Stage 2's pure choices: the soft vote judged from its members' out-of-fold scores, reused
cross-validation, a family's threads and its tuning rounds."""

import itertools

import numpy as np
import pandas as pd
import pytest

from pipeline import tuning
from pipeline.data import load_dataset
from pipeline.final_model import (
    OPENMP_MIN_ROWS,
    FamilyOutcome,
    choose_final_estimator,
    estimator_for,
    family_jobs,
    merge_outcomes,
    paired_gain,
)
from pipeline.models import build_ensemble
from pipeline.training import cross_validate, folds, result_from_scores
from tests.conftest import make_config, small_params


def _members(scores: dict[str, np.ndarray], y: pd.Series, splits: list, config) -> list[FamilyOutcome]:
    """Tuned families whose best trial's cross-validation gave these out-of-fold scores."""
    outcomes = []
    for family, oof in scores.items():
        cv = result_from_scores(y.to_numpy(), oof, splits, config.costs)
        metrics = tuning.with_short_names(cv.summary())
        outcomes.append(FamilyOutcome(family, f"s-{family}", 1, 1, 0, {}, metrics, cv=cv))
    return outcomes


def _scored_case(min_gain: float = 0.001):
    """Two families on 600 rows, 3 folds: logistic regression's scores carry the signal on every fold;
    naive Bayes's are better on folds 2 and 3 and reversed on fold 1, so logistic regression alone
    beats the vote of both on average, by much less than the folds disagree."""
    config = make_config(small_params(optimize={"ensemble_min_gain": min_gain}))
    dataset = load_dataset(config)
    rng = np.random.default_rng(0)
    y = pd.Series((rng.random(600) < 0.3).astype(int))
    splits = folds(y, 3, 0)
    steady = 1 / (1 + np.exp(-(y.to_numpy() + rng.normal(0, 1, 600))))
    erratic = steady.copy()
    erratic[splits[0][1]] = 1 - steady[splits[0][1]] + rng.normal(0, 0.01, len(splits[0][1]))
    for _, valid in splits[1:]:
        erratic[valid] = 1 / (1 + np.exp(-(2 * y.to_numpy()[valid] + rng.normal(0, 1, len(valid)))))
    outcomes = _members({"logistic_regression": steady, "naive_bayes": erratic}, y, splits, config)
    x = pd.DataFrame(index=y.index)  # never fitted: both cross-validations are known
    return config, dataset, outcomes, x, y, splits


def test_a_family_better_than_the_vote_only_within_the_folds_noise_does_not_replace_it():
    config, dataset, outcomes, x, y, splits = _scored_case()
    everyone = result_from_scores(
        y.to_numpy(), np.mean([o.cv.oof_scores for o in outcomes], axis=0), splits, config.costs
    )
    gain, error = paired_gain(outcomes[0].cv, everyone)
    assert config.optimize.ensemble_min_gain < gain < error  # better on average, not beyond the noise
    chosen = choose_final_estimator(config, dataset, outcomes, outcomes[0], x, y, splits)
    assert chosen.name == "soft_vote(logistic_regression+naive_bayes)"
    assert chosen.families == ("logistic_regression", "naive_bayes")
    np.testing.assert_allclose(chosen.cv.oof_scores, everyone.oof_scores)
    assert chosen.cv_metrics["cv_roc_auc"] == pytest.approx(everyone.summary()["cv_roc_auc_mean"])


@pytest.mark.parametrize(
    ("min_gain", "expected"),
    [
        (0.001, "logistic_regression"),  # clearly better than the vote: kept alone
        (0.99, "soft_vote(logistic_regression+naive_bayes)"),  # the margin is a floor under the noise
    ],
)
def test_a_family_clearly_better_than_the_vote_is_kept_alone_with_its_own_cross_validation(
    min_gain, expected
):
    config = make_config(small_params(optimize={"ensemble_min_gain": min_gain}))
    dataset = load_dataset(config)
    rng = np.random.default_rng(1)
    y = pd.Series((rng.random(600) < 0.3).astype(int))
    splits = folds(y, 3, 0)
    signal = 1 / (1 + np.exp(-(2 * y.to_numpy() + rng.normal(0, 1, 600))))
    outcomes = _members({"logistic_regression": signal, "naive_bayes": rng.random(600)}, y, splits, config)
    # The rank winner passed is naive Bayes: the choice is made on the folds, not by rank.
    chosen = choose_final_estimator(
        config, dataset, outcomes, outcomes[1], pd.DataFrame(index=y.index), y, splits
    )
    assert chosen.name == expected
    if expected == "logistic_regression":
        assert chosen.families == ("logistic_regression",)
        assert chosen.cv is outcomes[0].cv  # reused, not cross-validated again
        assert chosen.cv_metrics == outcomes[0].metrics


def test_paired_gain_is_the_mean_per_fold_difference_and_its_standard_error():
    config = make_config(small_params())
    rng = np.random.default_rng(2)
    y = (rng.random(300) < 0.4).astype(int)
    splits = folds(pd.Series(y), 3, 0)
    first = result_from_scores(y, (rng.random(300) + y) / 2, splits, config.costs)
    second = result_from_scores(y, (rng.random(300) + 0.3 * y) / 1.3, splits, config.costs)
    differences = [a["roc_auc"] - b["roc_auc"] for a, b in zip(first.per_fold, second.per_fold, strict=True)]
    gain, error = paired_gain(first, second)
    assert gain == pytest.approx(np.mean(differences))
    assert error == pytest.approx(np.std(differences, ddof=1) / np.sqrt(3))
    assert paired_gain(first, first) == (0.0, 0.0)


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
    # Each smaller vote and each family, refit for real, against the vote of all: the chosen one is
    # the best of those better by more than the margin and the folds' noise, else the vote of all.
    everyone = build_ensemble([(o.family, estimator_for(config, dataset, o)) for o in outcomes])
    reference = cross_validate(everyone, x, y, splits, config.costs)
    clear = {}
    for size in (1, 2):
        for combo in itertools.combinations(outcomes, size):
            model = (
                estimator_for(config, dataset, combo[0])
                if size == 1
                else build_ensemble([(o.family, estimator_for(config, dataset, o)) for o in combo])
            )
            gain, error = paired_gain(cross_validate(model, x, y, splits, config.costs), reference)
            if gain > max(config.optimize.ensemble_min_gain, error):
                clear[tuple(o.family for o in combo)] = gain
    expected = max(clear, key=clear.get) if clear else tuple(o.family for o in outcomes)
    assert chosen.families == expected


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
