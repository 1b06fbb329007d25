"""The budget's pure decisions: shares, racing, skipping, the final reserve."""

import math

import pytest

from pipeline import budget, models
from pipeline.budget import RungScore


def score(name: str, auc: float, seconds: float = 1.0, folds_left: int = 3, cost: float = 0.5) -> RungScore:
    return RungScore(name, auc, cost, seconds, rung_folds=2, folds_left=folds_left, n_jobs=2)


def test_research_plans_a_share_of_the_budget_not_all():
    assert 0 < budget.research_plan(100) < 100
    assert budget.research_plan(200) > budget.research_plan(100)
    assert budget.research_plan(1) == 0


def test_stage_2_has_what_stage_1_and_its_own_time_left():
    left = budget.seconds_left(100, research_spent=30, optimize_elapsed=5)
    assert left == pytest.approx(65 - 2 * budget.PROCESS_EXIT_SECONDS)
    assert budget.seconds_left(60, research_spent=70, optimize_elapsed=5) < 0


def test_the_rest_of_a_rung_is_predicted_in_batches_of_jobs():
    # 2 folds side by side took 4 s; 3 more folds are 2 batches.
    assert score("a", 0.7, seconds=4.0, folds_left=3).predicted_rest == pytest.approx(8.0)
    assert score("a", 0.7, seconds=4.0, folds_left=0).predicted_rest == 0


def test_everyone_is_promoted_when_the_whole_rest_fits():
    scores = [score("a", 0.7), score("b", 0.6), score("c", 0.5)]
    promoted, raced_out = budget.promote(scores, seconds_left=100)
    assert promoted == ["a", "b", "c"] and raced_out == {}


def test_racing_keeps_the_best_half_when_time_is_short():
    scores = [score("weak", 0.55), score("best", 0.80), score("good", 0.75), score("poor", 0.60)]
    promoted, raced_out = budget.promote(scores, seconds_left=5)  # each rest is 2 s: not all 8 s fit
    assert promoted == ["best", "good"]
    assert set(raced_out) == {"weak", "poor"}
    assert all(reason.startswith("raced out") for reason in raced_out.values())


def test_a_promising_candidate_whose_rest_cannot_fit_is_raced_out_and_does_not_block_the_next():
    scores = [score("slow", 0.80, seconds=50.0), score("fast", 0.75), score("weak", 0.5), score("dummy", 0.5)]
    promoted, raced_out = budget.promote(scores, seconds_left=10)
    assert promoted == ["fast"]
    assert "slow" in raced_out and "100 s" in raced_out["slow"]


def test_ties_go_to_the_lower_cost_and_nan_scores_rank_last():
    scores = [score("dear", 0.7, cost=0.6), score("cheap", 0.7, cost=0.4), score("nan", float("nan"))]
    promoted, _ = budget.promote(scores, seconds_left=2.5)  # one rest of 2 s fits
    assert promoted == ["cheap"]


def test_a_first_rung_is_stopped_at_twice_its_cap_never_past_what_is_left_nor_too_soon():
    floor = budget.RUNG_STOP_FLOOR_SECONDS
    assert budget.rung_limit(cap=20, seconds_left=100) == pytest.approx(40)
    assert budget.rung_limit(cap=20, seconds_left=30) == pytest.approx(30)  # the last ones: all left
    assert budget.rung_limit(cap=1, seconds_left=30) == floor  # worker start-up alone can take seconds
    assert budget.rung_limit(cap=0, seconds_left=-5) == floor


def test_a_slow_candidate_is_skipped_when_its_probe_predicts_more_than_a_fair_share():
    cap = budget.fair_cap(seconds_left=60, candidates_left=6)
    assert cap == pytest.approx(20.0)
    # The last candidates may take what is left, never twice it.
    assert budget.fair_cap(seconds_left=12, candidates_left=1) == pytest.approx(12.0)
    assert budget.fair_cap(seconds_left=12, candidates_left=2) == pytest.approx(12.0)
    assert budget.fair_cap(seconds_left=-5, candidates_left=1) == 0.0
    # 0.5 s on 2,000 rows, scaled to 200,000 rows: far above the cap.
    predicted = budget.predicted_from_probe(0.5, 0.1, 2_000, 200_000, 50_000, "random_forest")
    assert predicted > cap
    cheap = budget.predicted_from_probe(0.01, 0.001, 2_000, 20_000, 5_000, "logistic_regression")
    assert cheap < cap


def test_neighbour_search_prediction_grows_with_training_rows():
    linear = budget.predicted_from_probe(0.0, 0.1, 1_000, 10_000, 1_000, "random_forest")
    quadratic = budget.predicted_from_probe(0.0, 0.1, 1_000, 10_000, 1_000, "knn")
    assert quadratic == pytest.approx(10 * linear)


def test_trial_seconds_scale_with_folds_and_rows():
    # Research: 5 folds, 2 s per fold (each on 4/5 of the rows). A 3-fold trial: 3 folds on 2/3.
    assert budget.trial_seconds(2.0, 5, 3) == pytest.approx(3 * 2.0 / 0.8 * 2 / 3)
    assert budget.trial_seconds(0.0, 5, 5) == 0


def test_final_reserve_comes_from_measured_fit_times_and_is_bounded():
    fold = {"random_forest": 4.0, "logistic_regression": 0.2}
    single = budget.final_reserve(fold, research_folds=5, ensemble=False, seconds_left=1_000)
    vote = budget.final_reserve(fold, research_folds=5, ensemble=True, seconds_left=1_000)
    assert budget.FINAL_OVERHEAD_SECONDS < single < vote
    # One refit on every row, calibrated or not: a fold's 4.0 s on 4/5 of the rows.
    assert single == pytest.approx(budget.FINAL_OVERHEAD_SECONDS + 5.0 * budget.FINAL_FIT_SLACK)
    # Never more than a share of what is left, so tuning always gets some.
    assert budget.final_reserve(fold, 5, True, seconds_left=20) == pytest.approx(
        20 * budget.MAX_RESERVE_SHARE
    )
    assert budget.final_reserve({}, 5, True, seconds_left=-5) == 0
    # The logging part is what the caller measured for this machine.
    assert budget.final_reserve(fold, 5, False, 1_000, overhead=4.0) == pytest.approx(
        single - budget.FINAL_OVERHEAD_SECONDS + 4.0
    )


def test_fixed_seconds_scale_with_the_speed_probe_within_bounds():
    reference = budget.PROBE_REFERENCE_SECONDS
    assert budget.fixed_seconds(10.0, reference) == pytest.approx(10.0)
    assert budget.fixed_seconds(10.0, 2.5 * reference) == pytest.approx(25.0)  # a slower or busier machine
    assert budget.fixed_seconds(10.0, 0.5 * reference) == pytest.approx(5.0)
    # One lucky probe never makes the machine look faster than the floor.
    assert budget.fixed_seconds(10.0, 0.01 * reference) == pytest.approx(10.0 * budget.MIN_SPEED_FACTOR)
    # No usable probe: the reference figure.
    for unusable in (None, 0.0, float("nan"), float("inf")):
        assert budget.fixed_seconds(10.0, unusable) == 10.0


@pytest.mark.parametrize(
    ("left", "reserve", "weight", "weights_left", "share"),
    [
        (100, 10, 1, 3, 30),  # three families of one weight: even shares
        (100, 10, 1, 1, 90),  # the last family: everything after the reserve
        (100, 10, 1, 1.5, 60),  # a leader beside two trailing families (0.25 each)
        (100, 10, 0.25, 0.5, 45),  # the last two trailing ones share what the leader left
        (5, 10, 1, 2, 0),
        (-3, 0, 1, 2, 0),
    ],
)
def test_each_family_gets_its_weighted_share_of_what_is_left_after_the_reserve(
    left, reserve, weight, weights_left, share
):
    assert budget.family_share(left, reserve, weight, weights_left) == pytest.approx(share)


def test_families_clearly_behind_the_leader_get_a_smaller_weight_those_within_noise_do_not():
    scores = {
        "lightgbm": budget.FamilyScore(0.941, 0.003, 5),
        "hist_gradient_boosting": budget.FamilyScore(0.939, 0.004, 5),  # within noise of the leader
        "logistic_regression": budget.FamilyScore(0.867, 0.004, 5),  # far behind
    }
    weights = budget.family_weights(list(scores), scores)
    assert weights == {
        "lightgbm": 1.0,
        "hist_gradient_boosting": budget.TIED_WEIGHT,
        "logistic_regression": budget.TRAILING_WEIGHT,
    }
    assert budget.TRAILING_WEIGHT < budget.TIED_WEIGHT < 1
    # Small data: folds disagree by a couple of points, and a 0.01 gap says nothing.
    noisy = {"a": budget.FamilyScore(0.79, 0.03, 5), "b": budget.FamilyScore(0.78, 0.03, 5)}
    assert budget.family_weights(["a", "b"], noisy) == {"a": 1.0, "b": budget.TIED_WEIGHT}
    # The leader is the best scored, wherever it stands in the list.
    assert budget.family_weights(["b", "a"], noisy) == {"b": budget.TIED_WEIGHT, "a": 1.0}
    # Two folds that happen to agree, or one fold (no spread): the floor on the spread applies.
    lucky = {"a": budget.FamilyScore(0.80, 0.0, 2), "b": budget.FamilyScore(0.795, float("nan"), 1)}
    assert budget.family_weights(["a", "b"], lucky) == {"a": 1.0, "b": budget.TIED_WEIGHT}
    # A research run without the scores (or a family without one): even weights, as before.
    assert budget.family_weights(["a", "c"], lucky) == {"a": 1.0, "c": 1.0}
    assert budget.family_weights([], {}) == {}


def test_a_family_whose_one_trial_cannot_fit_is_skipped_unless_it_is_the_first():
    assert budget.skip_family(share=10, predicted_trial=5, first=False) is None
    reason = budget.skip_family(share=10, predicted_trial=50, first=False)
    assert reason is not None and reason.startswith("skipped") and "50 s" in reason
    assert budget.skip_family(share=0, predicted_trial=50, first=True) is None


def test_fold_seconds_from_measured_trials_predict_those_trials_again():
    fold = budget.fold_seconds_from_trials(spent_seconds=30.0, trials=3, cv_folds=5, research_folds=3)
    assert budget.trial_seconds(fold, research_folds=3, cv_folds=5) == pytest.approx(10.0)
    assert budget.fold_seconds_from_trials(12.0, 0, 5, 3) is None


def test_a_second_round_takes_a_share_that_fits_a_trial_and_is_not_a_sliver():
    assert budget.extra_round(share=30, predicted_trial=4)
    assert not budget.extra_round(share=30, predicted_trial=40)  # not one whole trial
    assert not budget.extra_round(share=budget.EXTRA_ROUND_MIN_SECONDS / 2, predicted_trial=0.1)


def test_planned_against_spent():
    step = budget.Step("tune.lightgbm", planned=30.0, spent=33.5, stopped_by="time")
    assert step.over == pytest.approx(3.5)


def test_the_process_started_before_now():
    import time

    assert budget.process_started() <= time.monotonic()


# --- A family too slow for every row: the most rows its share fits ----------------------------------


def _probe_taking(seconds_per_1000_rows: float) -> budget.Probe:
    return budget.Probe("lightgbm", seconds_per_1000_rows * 2, 0.0, 2_000)


def test_every_row_when_a_fold_on_all_of_them_fits():
    assert budget.sample_rows(_probe_taking(0.001), 50_000, 5, seconds=60) == 50_000


def test_the_most_rows_whose_fold_fits_the_aim_below_the_share():
    probe = _probe_taking(0.01)
    rows = budget.sample_rows(probe, 1_000_000, 5, seconds=10)
    assert probe.fold_seconds(1_000_000, 5) > 10
    assert budget.MIN_SAMPLE_ROWS <= rows < 1_000_000
    aim = 10 * budget.SAMPLE_SAFETY
    assert probe.fold_seconds(rows, 5) <= aim < probe.fold_seconds(rows + 2_000, 5)


def test_no_sample_when_not_even_the_smallest_one_fits():
    assert budget.sample_rows(_probe_taking(10.0), 1_000_000, 5, seconds=20) is None
    # A part no larger than the smallest sample is never sampled.
    assert budget.sample_rows(_probe_taking(10.0), budget.MIN_SAMPLE_ROWS, 5, seconds=1) is None


def test_two_probes_tell_a_fixed_cost_from_one_that_grows_with_the_rows():
    growth = 4**budget.FIT_EXPONENT
    # All of it grows: nothing is fixed, and a fold scales as before.
    growing = budget.probe_from_fits("lightgbm", 500, 0.1, 2_000, 0.1 * growth, 0.0)
    assert growing.fixed_seconds == pytest.approx(0.0, abs=1e-12)
    # Mostly start-up: the fixed part is not scaled up to the fold's rows.
    startup = budget.probe_from_fits("lightgbm", 500, 0.30, 2_000, 0.34, 0.0)
    assert 0.0 < startup.fixed_seconds <= 0.34 * (1 - budget.MIN_GROWING_SHARE) + 1e-12
    big = 1_000_000
    assert startup.fold_seconds(big, 5) < 0.34 * (big * 0.8 / 2_000) ** budget.FIT_EXPONENT / 2
    # Noisy timings (the smaller fit took longer): a quarter is still taken to grow.
    noisy = budget.probe_from_fits("lightgbm", 500, 0.5, 2_000, 0.4, 0.0)
    assert noisy.fixed_seconds == pytest.approx(0.4 * (1 - budget.MIN_GROWING_SHARE))
    assert noisy.fold_seconds(2_500, 5) == pytest.approx(0.4)  # at the probe's own size: its time


def test_a_forest_fits_each_tree_on_a_capped_share_of_its_part_so_a_smaller_sample_is_no_cheaper_per_tree():
    cap = models.FOREST_MAX_SAMPLES
    forest = budget.Probe("random_forest", 0.2, 0.0, 2_000, capped_rows=cap)
    uncapped = budget.Probe("random_forest", 0.2, 0.0, 2_000)
    # Below the cap every training row is fitted on, as without it.
    assert forest.fold_seconds(50_000, 5) == pytest.approx(uncapped.fold_seconds(50_000, 5))
    # Above it each tree gets the cap's share of a fold: the fit stops growing with the part.
    assert forest.fold_seconds(750_000, 5) == pytest.approx(forest.fold_seconds(250_000, 5))
    assert forest.fold_seconds(750_000, 5) < uncapped.fold_seconds(750_000, 5) / 5
    assert forest.fold_seconds(250_000, 5) == pytest.approx(uncapped.fold_seconds(cap, 5))
    # As sized by the models: a forest sized for a sample fits each tree on more of the sample's rows.
    for rows in (250_000, 750_000):
        settings = models.size_settings("random_forest", rows, {})
        assert settings["max_samples"] * rows == pytest.approx(cap)
    assert models.fit_rows_cap("random_forest") == cap
    assert models.fit_rows_cap("random_forest", {"max_samples": 0.5}) is None
    assert models.fit_rows_cap("lightgbm") is None


def test_rung_order_runs_the_cheap_strong_families_first_and_the_dear_ones_last():
    families = {
        "forest": "random_forest",
        "mine": "my_family",
        "gbm": "lightgbm",
        "baseline": "dummy",
        "linear": "logistic_regression",
        "neighbours": "knn",
    }
    order = budget.rung_order(families)
    assert order[:2] == ["gbm", "linear"]
    assert order.index("baseline") < order.index("neighbours") < order.index("forest")
    assert order[-1] == "mine"  # a family the prior does not know runs last
    # Stable: candidates of one family keep their config order.
    assert budget.rung_order({"b": "lightgbm", "a": "lightgbm"}) == ["b", "a"]


def test_each_share_is_raised_to_one_trial_from_the_largest_while_it_keeps_its_own_trials():
    shares = {"leader": 30.0, "booster": 4.0, "forest": 5.0}
    trials = {"leader": 1.0, "booster": 6.0, "forest": 7.0}
    moved = budget.with_one_trial_each(shares, trials)
    assert moved["booster"] == pytest.approx(6.0 * budget.ONE_TRIAL_MARGIN)
    assert moved["forest"] == pytest.approx(7.0 * budget.ONE_TRIAL_MARGIN)
    assert sum(moved.values()) == pytest.approx(sum(shares.values()))  # moved, never added
    # A leader that cannot spare it (it would keep fewer than DONOR_TRIALS_KEPT of its trials) gives nothing.
    dear = {"leader": 10.0, "booster": 6.0, "forest": 7.0}
    assert budget.with_one_trial_each(shares, dear) == shares
    assert budget.with_one_trial_each({"only": 2.0}, {"only": 5.0}) == {"only": 2.0}


def test_a_first_round_share_holds_to_a_plan_raised_for_one_trial_while_time_is_left():
    # Weighted part of what is left: 60 s after a 10 s reserve, weight 1 of 3 -> 20 s, under a 25 s plan.
    assert budget.first_round_share(70.0, 10.0, 1.0, 3.0, planned=25.0, trial=5.0) == pytest.approx(20.0)
    # Never more than planned, though more is left now.
    assert budget.first_round_share(130.0, 10.0, 1.0, 1.0, planned=25.0, trial=5.0) == pytest.approx(25.0)
    # Raised to fit one 8 s trial: the plan (9 s) is held to, not the 20/3 s weighted part ...
    assert budget.first_round_share(30.0, 10.0, 1.0, 3.0, planned=9.0, trial=8.0) == pytest.approx(9.0)
    # ... while what is left after the reserve allows it, and never past it.
    assert budget.first_round_share(18.0, 10.0, 1.0, 3.0, planned=9.0, trial=8.0) == pytest.approx(8.0)
    assert budget.first_round_share(5.0, 10.0, 1.0, 3.0, planned=9.0, trial=8.0) == 0.0
    # A trial dearer than its plan too: the weighted part stands (the family is then skipped).
    assert budget.first_round_share(30.0, 10.0, 1.0, 3.0, planned=6.0, trial=8.0) == pytest.approx(6.0)


def test_a_configuration_costs_by_its_trees_and_the_depth_of_its_leaves_against_the_reference():
    reference = {"n_estimators": 200, "num_leaves": 15, "learning_rate": 0.05}
    assert budget.relative_cost(reference, reference) == pytest.approx(1.0)
    assert budget.relative_cost(reference, {"n_estimators": 500}) == pytest.approx(2.5)
    bigger = {"n_estimators": 500, "num_leaves": 31}
    assert budget.relative_cost(reference, bigger) == pytest.approx(2.5 * math.log2(31) / math.log2(15))
    # What either leaves to the sampler or the default counts as the reference's.
    assert budget.relative_cost({}, bigger) == pytest.approx(1.0)
    assert budget.relative_cost(reference, {"C": 10.0}) == pytest.approx(1.0)
    assert budget.relative_cost({"max_iter": 100}, {"max_iter": 300}) == pytest.approx(3.0)
    configurations = [reference, {"n_estimators": 300}, bigger]
    assert budget.first_trials_seconds(2.0, reference, configurations) == pytest.approx(
        2.0 * (1.0 + 1.5 + 2.5 * math.log2(31) / math.log2(15))
    )


def test_the_leaders_share_is_raised_to_fit_its_first_trials_from_the_others_in_proportion():
    shares = {"leader": 8.0, "tied": 6.0, "trailing": 2.0}
    moved = budget.with_leader_first(shares, "leader", need=11.0)
    assert moved["leader"] == pytest.approx(11.0)
    assert moved["tied"] == pytest.approx(6.0 * 5 / 8) and moved["trailing"] == pytest.approx(2.0 * 5 / 8)
    assert sum(moved.values()) == pytest.approx(sum(shares.values()))  # moved, never added
    # Never above LEADER_FIRST_MAX_SHARE of the whole ...
    capped = budget.with_leader_first(shares, "leader", need=100.0)
    assert capped["leader"] == pytest.approx(budget.LEADER_FIRST_MAX_SHARE * 16.0)
    # ... and a leader whose share fits its first trials already takes nothing.
    assert budget.with_leader_first(shares, "leader", need=5.0) == shares
    assert budget.with_leader_first({"only": 3.0}, "only", need=9.0) == {"only": 3.0}
