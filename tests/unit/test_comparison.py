"""pipeline.comparison: the champion/challenger table, checked against scikit-learn and by hand."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from pipeline.comparison import (
    METRICS,
    compare_models,
    comparison_markdown,
    confusion,
    confusion_frame,
    weighted_metrics,
)
from pipeline.config import CostConfig
from pipeline.evaluation import expected_cost, ks_statistic

COSTS = CostConfig(false_negative=5.0, false_positive=1.0)


@pytest.fixture
def scored():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    # Rounded, so many scores tie: the grouping by distinct score must handle ties exactly.
    scores = np.round(np.clip(0.3 * y + rng.normal(0.35, 0.2, 300), 0, 1), 2)
    return y, scores


def test_plain_figures_match_scikit_learn_and_hand_counts(scored):
    y, scores = scored
    threshold = 0.5
    figures = {
        k: float(v[0]) for k, v in weighted_metrics(y, scores, threshold, COSTS, np.ones((1, len(y)))).items()
    }
    assert figures["roc_auc"] == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert figures["average_precision"] == pytest.approx(average_precision_score(y, scores), abs=1e-12)
    assert figures["ks"] == pytest.approx(ks_statistic(y, scores), abs=1e-12)
    assert figures["brier"] == pytest.approx(brier_score_loss(y, scores), abs=1e-12)
    assert figures["expected_cost"] == pytest.approx(expected_cost(y, scores, threshold, COSTS), abs=1e-12)
    assert figures["cost_per_1000"] == pytest.approx(1000 * figures["expected_cost"])
    approved = scores < threshold
    assert figures["approval_rate"] == pytest.approx(approved.mean())
    assert figures["bad_rate_approved"] == pytest.approx(y[approved].mean())


def test_weights_count_rows_as_if_repeated(scored):
    y, scores = scored
    counts = np.random.default_rng(0).integers(0, 3, len(y))
    weighted = weighted_metrics(y, scores, 0.4, COSTS, counts[None, :])
    repeated = weighted_metrics(
        np.repeat(y, counts), np.repeat(scores, counts), 0.4, COSTS, np.ones((1, counts.sum()))
    )
    for name in weighted:
        assert weighted[name][0] == pytest.approx(repeated[name][0], abs=1e-12), name


def test_a_model_against_itself_differs_by_nothing(scored):
    y, scores = scored
    table = compare_models(y, scores, 0.4, COSTS, scores, 0.4, samples=200, seed=1).set_index("metric")
    assert list(table.index) == [metric.name for metric in METRICS]
    assert (table["difference"] == 0).all()
    assert (table["interval_low"] == 0).all() and (table["interval_high"] == 0).all()
    assert (table["better"] == "unclear").all()


def test_a_clearly_better_challenger_is_named_for_ranking_and_cost(scored):
    y, champion = scored
    challenger = np.where(y == 1, 0.9, 0.1)  # separates the classes perfectly
    table = compare_models(y, challenger, 0.5, COSTS, champion, 0.5, samples=300, seed=1).set_index("metric")
    assert table.loc["roc_auc", "better"] == "challenger"
    assert table.loc["roc_auc", "interval_low"] > 0
    # Lower is better for cost and Brier: a negative difference favours the challenger.
    assert (
        table.loc["expected_cost", "difference"] < 0 and table.loc["expected_cost", "better"] == "challenger"
    )
    assert table.loc["brier", "better"] == "challenger"
    assert table.loc["bad_rate_approved", "challenger"] == 0.0
    assert (
        table.loc["roc_auc", "interval_low"]
        <= table.loc["roc_auc", "difference"]
        <= table.loc["roc_auc", "interval_high"]
    )


def test_without_a_champion_only_the_challenger_is_filled(scored):
    y, scores = scored
    table = compare_models(y, scores, 0.4, COSTS)
    assert table["challenger"].notna().all()
    assert table[["champion", "difference", "interval_low", "better"]].isna().all().all()


def test_confusion_counts_by_hand():
    y = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.6, 0.2, 0.7, 0.5])
    assert confusion(y, scores, 0.5) == {"tn": 1, "fp": 1, "fn": 1, "tp": 2}
    frame = confusion_frame(y, scores, 0.5, scores, 0.8)
    assert list(frame["model"]) == ["challenger", "champion"]
    assert frame.loc[1, ["tn", "fp", "fn", "tp"]].tolist() == [2, 0, 3, 0]
    assert isinstance(frame, pd.DataFrame)


def test_markdown_rounds_and_leaves_blanks(scored):
    y, scores = scored
    alone = comparison_markdown(compare_models(y, scores, 0.4, COSTS))
    assert alone.splitlines()[0] == "|  | challenger |"
    assert "nan" not in alone and "approval rate | " in alone and "%" in alone
    both = comparison_markdown(compare_models(y, scores, 0.4, COSTS, scores, 0.5, samples=100, seed=0))
    header, rule, *rows = both.splitlines()
    assert set(rule) == {"|", "-"}
    assert "difference (90% interval)" in header and len(rows) == len(METRICS)
    assert all(row.count("|") == 6 for row in rows)
    assert "nan" not in both
