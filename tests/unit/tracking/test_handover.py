"""Stage 2's reading of stage 1's hand-over without a store: what it planned and spent of the budget."""

import json
from types import SimpleNamespace

import pytest

from pipeline import budget
from pipeline.tracking import handover, keys
from tests.conftest import make_config, small_params


def research_run(metrics: dict, tags: dict, params: dict | None = None, start=1_000, end=31_000):
    return SimpleNamespace(
        info=SimpleNamespace(run_id="r1", start_time=start, end_time=end),
        data=SimpleNamespace(metrics=metrics, tags=tags, params=params or {"cv_folds": "5"}),
    )


def test_stage_2_plans_from_what_stage_1_recorded():
    config = make_config(small_params(budget_seconds=100))
    run = research_run(
        {
            keys.METRIC_BUDGET_PLANNED + keys.STAGE_RESEARCH: 30.0,
            keys.METRIC_BUDGET_SPENT + keys.STAGE_RESEARCH: 42.5,
        },
        {
            keys.TAG_FOLD_SECONDS: json.dumps({"lightgbm": 0.8, "random_forest": 2.0}),
            keys.TAG_BUDGET_STOPPED + keys.STAGE_RESEARCH: "time",
        },
    )
    step, fold_seconds, folds = handover.research_budget(run, config)
    assert step == budget.Step(keys.STAGE_RESEARCH, 30.0, 42.5, "time")
    assert fold_seconds == {"lightgbm": 0.8, "random_forest": 2.0} and folds == 5


def test_a_research_run_from_before_the_budget_counts_its_duration():
    config = make_config(small_params(budget_seconds=100))
    step, fold_seconds, _ = handover.research_budget(research_run({}, {}), config)
    assert step.spent == pytest.approx(30.0) and step.planned == budget.research_plan(100)
    assert fold_seconds == {}


def test_stage_2_reads_each_familys_research_score_and_none_from_an_older_run():
    recorded = {"lightgbm": [0.94, 0.003, 5], "logistic_regression": [0.87, float("nan"), 1]}
    scores = handover.family_scores(research_run({}, {keys.TAG_FAMILY_SCORES: json.dumps(recorded)}))
    assert scores["lightgbm"] == budget.FamilyScore(0.94, 0.003, 5)
    assert scores["logistic_regression"].folds == 1
    assert handover.family_scores(research_run({}, {})) == {}
    assert handover.family_scores(research_run({}, {keys.TAG_FAMILY_SCORES: "not json"})) == {}
