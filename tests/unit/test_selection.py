"""Stage 1's portfolio at any size; stage 2's final estimator: the soft vote judged from its members'
out-of-fold scores."""

import itertools
import logging

import numpy as np
import pytest

from pipeline import budget
from pipeline.data import load_dataset, split_dataset
from pipeline.models import DENSE_SAMPLE_ROWS, ROW_LIMITS, build_ensemble
from pipeline.selection import (
    OPENMP_MIN_ROWS,
    FamilyOutcome,
    choose_final_estimator,
    estimator_for,
    evaluate_portfolio,
    family_jobs,
    left_out_candidates,
    merge_outcomes,
)
from pipeline.tracking import keys
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
    from pipeline import selection

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

    monkeypatch.setattr(selection, "cross_validate", refuse)
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


def _racing_config():
    raw = small_params()
    raw["research"]["n_jobs"] = 1  # the first rung is one fold
    return make_config(raw)


def test_with_time_to_spare_every_candidate_is_fully_cross_validated():
    from pipeline.data import split_dataset
    from pipeline.selection import STATUS_FULL, evaluate_portfolio

    config = _racing_config()
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    raced = evaluate_portfolio(config, dataset, split, seconds=1_000)
    plain = evaluate_portfolio(config, dataset, split)  # no budget: every fold at once, as before
    assert [o.status for o in raced] == [STATUS_FULL] * len(config.research.portfolio)
    # Racing changes the order folds run in, not the figures.
    for a, b in zip(raced, plain, strict=True):
        assert a.metrics["cv_roc_auc_mean"] == pytest.approx(b.metrics["cv_roc_auc_mean"])
        assert a.metrics["cv_folds_done"] == 3


def test_when_time_is_short_only_the_promising_half_is_fully_cross_validated():
    from pipeline.data import split_dataset
    from pipeline.selection import (
        STATUS_FULL,
        STATUS_RACED,
        evaluate_portfolio,
        leaderboard_frame,
        ranked_families,
    )

    config = _racing_config()
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    # A clock that says each call is 1 s later: the rest of every candidate never fits 2 s ...
    ticks = itertools.count()
    outcomes = evaluate_portfolio(config, dataset, split, seconds=100, clock=lambda: float(next(ticks)))
    statuses = {o.name: o.status for o in outcomes}
    assert STATUS_RACED not in statuses.values()  # ... but 100 s is plenty here
    ticks = itertools.count()  # every rung runs (about 13 s); the rests (2 s each) do not all fit
    outcomes = evaluate_portfolio(config, dataset, split, seconds=17, clock=lambda: float(next(ticks)))
    full = [o for o in outcomes if o.status == STATUS_FULL]
    raced = [o for o in outcomes if o.status == STATUS_RACED]
    assert raced and len(full) <= 2  # at most the better half of 4
    assert all(o.metrics["cv_folds_done"] == 1 and o.note.startswith("raced out") for o in raced)
    # The fully cross-validated are ranked first; raced-out candidates follow, on their own folds.
    board = leaderboard_frame(outcomes)
    assert list(board["status"][: len(full)]) == [STATUS_FULL] * len(full)
    assert set(ranked_families(board)) == {o.family for o in outcomes if o.family != "dummy"}


def test_a_candidate_predicted_too_slow_is_skipped_with_its_reason_and_ranked_last(monkeypatch):
    from pipeline import budget
    from pipeline.data import split_dataset
    from pipeline.selection import STATUS_SKIPPED, evaluate_portfolio, leaderboard_frame, ranked_families

    config = _racing_config()
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    monkeypatch.setattr(budget, "PROBE_ROWS", 100)  # probe even this small table
    # A probe predicting an hour per fold for the decision tree only.
    original = budget.predicted_from_probe
    monkeypatch.setattr(
        budget,
        "predicted_from_probe",
        lambda fit, predict, rows, train, valid, family: (
            3600.0 if family == "decision_tree" else original(fit, predict, rows, train, valid, family)
        ),
    )
    outcomes = evaluate_portfolio(config, dataset, split, seconds=300)
    skipped = [o for o in outcomes if o.status == STATUS_SKIPPED]
    assert [o.family for o in skipped] == ["decision_tree"]
    assert skipped[0].metrics == {} and "3600 s" in skipped[0].note
    board = leaderboard_frame(outcomes)
    assert board.iloc[-1]["candidate"] == skipped[0].name and board.iloc[-1]["status"] == STATUS_SKIPPED
    assert "decision_tree" not in ranked_families(board)


def test_a_candidate_too_slow_for_every_row_is_cross_validated_on_the_sample_its_share_fits(monkeypatch):
    from pipeline import budget
    from pipeline.data import split_dataset
    from pipeline.selection import STATUS_FULL, evaluate_portfolio

    config = _racing_config()
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    monkeypatch.setattr(budget, "PROBE_ROWS", 100)
    monkeypatch.setattr(budget, "MIN_SAMPLE_ROWS", 200)
    # The decision tree's fold grows steeply with its rows: all 750 take an hour, 300 take 1 s.
    original = budget.predicted_from_probe
    monkeypatch.setattr(
        budget,
        "predicted_from_probe",
        lambda fit, predict, rows, train, valid, family: (
            (train / 200) ** 12
            if family == "decision_tree"
            else original(fit, predict, rows, train, valid, family)
        ),
    )
    outcomes = {o.family: o for o in evaluate_portfolio(config, dataset, split, seconds=300)}
    tree = outcomes["decision_tree"]
    n_train = len(split.train_index)
    assert tree.status == STATUS_FULL and tree.note.startswith("sampled: ")
    assert 200 <= tree.metrics[keys.METRIC_TRAIN_ROWS] < n_train
    assert f"of {n_train:,} rows" in tree.note
    assert tree.metrics["cv_folds_done"] == 3
    others = [o for o in outcomes.values() if o.family != "decision_tree"]
    assert all(o.metrics[keys.METRIC_TRAIN_ROWS] == n_train and not o.note for o in others)


def test_a_dense_family_runs_on_its_capped_sample_whatever_its_time(monkeypatch, caplog):
    from pipeline.selection import STATUS_FULL

    config = make_config(small_params(research={"cv_folds": 3, "use": ["dummy_prior", "naive_bayes"]}))
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    n_train = len(split.train_index)
    monkeypatch.setitem(DENSE_SAMPLE_ROWS, "naive_bayes", 300)  # of the 750 training rows
    with caplog.at_level(logging.WARNING, logger="pipeline.selection"):
        outcomes = {o.family: o for o in evaluate_portfolio(config, dataset, split, seconds=300)}
    bayes = outcomes["naive_bayes"]
    assert bayes.status == STATUS_FULL and bayes.metrics[keys.METRIC_TRAIN_ROWS] == 300
    assert (
        bayes.note
        == f"sampled: 300 of {n_train:,} rows, as its dense encoding holds every row in memory (at most 300)"
    )
    assert bayes.note in caplog.text
    assert outcomes["dummy"].metrics[keys.METRIC_TRAIN_ROWS] == n_train and not outcomes["dummy"].note


def test_once_the_share_is_spent_only_the_first_strong_family_by_the_prior_runs():
    from pipeline.data import split_dataset
    from pipeline.selection import STATUS_SKIPPED, evaluate_portfolio

    config = _racing_config()
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    outcomes = evaluate_portfolio(config, dataset, split, seconds=0)
    ran = [o.family for o in outcomes if o.status != STATUS_SKIPPED]
    # Stage 2 still has a family to tune: the first by the prior, a cheap one often best.
    families = {name: c.family for name, c in config.research.portfolio.items()}
    assert ran == [families[budget.rung_order(families)[0]]]
    assert ran[0] in {"lightgbm", "logistic_regression", "hist_gradient_boosting"}
    assert all("spent before its turn" in o.note for o in outcomes if o.status == STATUS_SKIPPED)


def test_knn_is_left_out_above_its_row_limit_and_the_rest_still_runs(monkeypatch, caplog):
    config = make_config(small_params(research={"cv_folds": 3, "use": ["dummy_prior", "knn"]}))
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    assert left_out_candidates(config, len(split.train_index)) == {}

    monkeypatch.setitem(ROW_LIMITS, "knn", 100)  # the 750 training rows are then too many
    left_out = left_out_candidates(config, len(split.train_index))
    assert list(left_out) == ["knn"] and "750 training rows" in left_out["knn"]
    with caplog.at_level(logging.WARNING, logger="pipeline.selection"):
        outcomes = evaluate_portfolio(config, dataset, split)
    assert [o.name for o in outcomes] == ["dummy_prior"]
    assert "candidate knn left out: 750 training rows" in caplog.text


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
