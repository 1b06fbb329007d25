"""Stage 1's portfolio at any size: racing, sampling, skipping and ranking."""

import itertools
import logging
import re

import pytest

from pipeline import budget
from pipeline.data import load_dataset, split_dataset
from pipeline.models import ROW_LIMITS, SAMPLE_ROWS
from pipeline.selection import evaluate_portfolio, left_out_candidates
from pipeline.tracking import keys
from tests.conftest import make_config, small_params


def _racing_config():
    raw = small_params()
    raw["research"]["n_jobs"] = 1  # the first rung is one fold
    return make_config(raw)


def _predict_folds(monkeypatch, family: str, fold_seconds) -> None:
    """Make the timing probe predict ``fold_seconds(training rows)`` for each fold of ``family``."""
    original = budget.predicted_from_probe
    monkeypatch.setattr(
        budget,
        "predicted_from_probe",
        lambda fit, predict, rows, train, valid, name: (
            fold_seconds(train) if name == family else original(fit, predict, rows, train, valid, name)
        ),
    )


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
    _predict_folds(monkeypatch, "decision_tree", lambda train: 3600.0)
    outcomes = evaluate_portfolio(config, dataset, split, seconds=300)
    skipped = [o for o in outcomes if o.status == STATUS_SKIPPED]
    assert [o.family for o in skipped] == ["decision_tree"]
    assert skipped[0].metrics == {} and "3600 s" in skipped[0].note
    board = leaderboard_frame(outcomes)
    assert board.iloc[-1]["candidate"] == skipped[0].name and board.iloc[-1]["status"] == STATUS_SKIPPED
    assert "decision_tree" not in ranked_families(board)


def test_a_first_rung_that_runs_far_past_its_share_is_stopped_and_the_candidate_skipped(monkeypatch):
    """A forest far slower than predicted (here: nothing predicted, the table is under the probe's
    size) is stopped at its limit, its fold workers killed, and the candidates after it still run."""
    from pipeline.selection import STATUS_FULL, STATUS_SKIPPED

    raw = small_params()
    raw["research"].update({"n_jobs": 2, "use": ["dummy_prior", "logistic_regression", "slow_forest"]})
    raw["research"]["candidates"]["slow_forest"] = {
        "family": "random_forest",
        "params": {"n_estimators": 20_000, "min_samples_leaf": 1},  # a minute or more a fold here
    }
    config = make_config(raw)
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    monkeypatch.setattr(budget, "RUNG_STOP_FLOOR_SECONDS", 3.0)
    monkeypatch.setattr(budget, "RUNG_PRIOR", ("dummy", "random_forest", "logistic_regression"))
    outcomes = {o.name: o for o in evaluate_portfolio(config, dataset, split, seconds=4)}

    forest = outcomes["slow_forest"]
    assert forest.status == STATUS_SKIPPED and forest.metrics == {}
    # Stopped at what stage 1 had left (under 4 s), or at the floor of 3 s.
    assert re.fullmatch(r"stopped by time: its first folds ran past [34] s \(its share \d+ s\)", forest.note)
    # The first family to rank runs whatever the time left, on new workers.
    assert outcomes["logistic_regression"].metrics["cv_roc_auc_mean"] > 0.6
    assert outcomes["dummy_prior"].status in (STATUS_FULL, "raced out")


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
    _predict_folds(monkeypatch, "decision_tree", lambda train: (train / 200) ** 12)
    outcomes = {o.family: o for o in evaluate_portfolio(config, dataset, split, seconds=300)}
    tree = outcomes["decision_tree"]
    n_train = len(split.train_index)
    assert tree.status == STATUS_FULL and tree.note.startswith("sampled: ")
    assert 200 <= tree.metrics[keys.METRIC_TRAIN_ROWS] < n_train
    assert f"of {n_train:,} rows" in tree.note
    assert tree.metrics["cv_folds_done"] == 3
    others = [o for o in outcomes.values() if o.family != "decision_tree"]
    assert all(o.metrics[keys.METRIC_TRAIN_ROWS] == n_train and not o.note for o in others)


def test_a_forest_too_slow_on_a_part_too_small_to_sample_is_ranked_with_fewer_trees(monkeypatch):
    from pipeline import selection
    from pipeline.selection import STATUS_SKIPPED

    raw = small_params()
    raw["research"].update({"n_jobs": 1, "use": ["dummy_prior", "logistic_regression", "forest"]})
    raw["research"]["candidates"]["forest"] = {"family": "random_forest", "params": {"n_estimators": 400}}
    config = make_config(raw)
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    monkeypatch.setattr(budget, "PROBE_ROWS", 100)
    # Every fold of the 400-tree forest predicted at 40 s: over its share, and 750 rows cannot be sampled.
    _predict_folds(monkeypatch, "random_forest", lambda train: 40.0)
    built = []
    build = selection.build_estimator
    monkeypatch.setattr(
        selection,
        "build_estimator",
        lambda family, params, *a, **k: built.append(params) or build(family, params, *a, **k),
    )
    outcomes = {o.name: o for o in evaluate_portfolio(config, dataset, split, seconds=30)}

    forest = outcomes["forest"]
    assert forest.status != STATUS_SKIPPED and forest.metrics["cv_roc_auc_mean"] > 0.6
    fewer = int(re.match(r"ranked with (\d+) of its 400 trees, as one fold with all", forest.note).group(1))
    assert budget.MIN_RESEARCH_TREES <= fewer < 400 and {"n_estimators": fewer} in built
    assert forest.params == {"n_estimators": 400}  # stage 2 starts from the candidate as configured
    assert forest.metrics[keys.METRIC_TRAIN_ROWS] == len(split.train_index)  # every row


def test_a_forest_is_skipped_when_not_even_the_fewest_trees_fit():
    probe = budget.Probe("random_forest", rows=100, fit_seconds=1.0, predict_seconds=0.1, fixed_seconds=0.5)
    slow = probe.fold_seconds(750, 5)
    assert budget.trees_that_fit(probe, 400, 750, 5, seconds=slow / 400 * 10) is None  # ~10 trees fit
    assert budget.trees_that_fit(probe, 400, 750, 5, seconds=slow) is not None
    assert budget.trees_that_fit(probe, 400, 750, 5, seconds=0.4) is None  # not even the fixed part


@pytest.mark.parametrize(
    ("candidate", "family", "reason"),
    [
        ("naive_bayes", "naive_bayes", "its dense encoding holds every row in memory"),
        ("random_forest", "random_forest", "each tree pays for every row it is drawn from"),
    ],
)
def test_a_family_with_a_row_cap_runs_on_its_capped_sample_whatever_its_time(
    monkeypatch, caplog, candidate, family, reason
):
    from pipeline.selection import STATUS_FULL

    config = make_config(small_params(research={"cv_folds": 3, "use": ["dummy_prior", candidate]}))
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    n_train = len(split.train_index)
    assert SAMPLE_ROWS[family][1] == reason
    monkeypatch.setitem(SAMPLE_ROWS, family, (300, reason))  # of the 750 training rows
    with caplog.at_level(logging.WARNING, logger="pipeline.selection"):
        outcomes = {o.family: o for o in evaluate_portfolio(config, dataset, split, seconds=300)}
    capped = outcomes[family]
    assert capped.status == STATUS_FULL and capped.metrics[keys.METRIC_TRAIN_ROWS] == 300
    assert capped.note == f"sampled: 300 of {n_train:,} rows, as {reason} (at most 300)"
    assert capped.note in caplog.text
    assert outcomes["dummy"].metrics[keys.METRIC_TRAIN_ROWS] == n_train and not outcomes["dummy"].note


def test_a_forest_draws_its_trees_from_at_most_twice_the_rows_each_grows_on():
    from pipeline.models import FOREST_MAX_SAMPLES, size_settings

    rows, _ = SAMPLE_ROWS["extra_trees"]
    assert rows == SAMPLE_ROWS["random_forest"][0] == 2 * FOREST_MAX_SAMPLES
    assert size_settings("extra_trees", rows)["max_samples"] == pytest.approx(0.5)


def _spent_share_outcomes(use: list[str], monkeypatch=None, cheap_rows: int | None = None):
    from pipeline.selection import STATUS_SKIPPED

    raw = small_params()
    raw["research"]["n_jobs"] = 1
    raw["research"]["use"] = use
    config = make_config(raw)
    if cheap_rows is not None:
        monkeypatch.setattr(budget, "CHEAP_ROWS", cheap_rows)
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    outcomes = evaluate_portfolio(config, dataset, split, seconds=0)
    assert all("spent before its turn" in o.note for o in outcomes if o.status == STATUS_SKIPPED)
    return [o.family for o in outcomes if o.status != STATUS_SKIPPED]


def test_once_the_share_is_spent_the_first_strong_family_and_the_cheap_ones_still_run():
    portfolio = ["dummy_prior", "lightgbm", "random_forest", "extra_trees", "logistic_regression"]
    portfolio.append("naive_bayes")
    # Stage 2 still has a family to tune: the first by the prior; and on a small part the cheap
    # families, whose folds cost less than a second, are ranked beside it.
    ran = _spent_share_outcomes(portfolio)
    assert sorted(ran) == ["dummy", "lightgbm", "logistic_regression", "naive_bayes"]


def test_on_a_larger_part_only_the_first_strong_family_runs_once_the_share_is_spent(monkeypatch):
    portfolio = ["dummy_prior", "random_forest", "logistic_regression", "naive_bayes", "decision_tree"]
    ran = _spent_share_outcomes(portfolio, monkeypatch, cheap_rows=100)  # fewer than the part's rows
    assert ran == ["logistic_regression"]  # the first by the prior: stage 2 needs a family


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
