"""The WoE scorecard's table: its points reproduce the model's probability, bin by bin."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline import scorecard
from pipeline.models import build_estimator

SCALING = scorecard.Scaling(base_points=600, base_odds=50, pdo=20)


def loans(rows: int = 1200, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Synthetic applicants: risk rises with duration and falls with age; a string column with a
    risky and a safe category (pandas 3 reads text as its ``str`` dtype); some missing values."""
    rng = np.random.default_rng(seed)
    duration = rng.integers(6, 72, rows).astype(float)
    age = rng.integers(19, 75, rows).astype(float)
    housing = rng.choice(["rent", "own", "free"], rows, p=[0.4, 0.45, 0.15])
    effect = {"rent": 0.8, "free": 0.0, "own": -0.6}
    logit = -1.5 + 0.04 * (duration - 24) - 0.03 * (age - 35) + np.vectorize(effect.get)(housing)
    target = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame({"duration": duration, "age": age, "housing": pd.array(housing, dtype="str")})
    frame.loc[::37, "age"] = np.nan
    return frame, pd.Series(target, name="default")


@pytest.fixture(scope="module")
def fitted():
    features, target = loans()
    model = build_estimator("woe_scorecard", {"min_iv": 0.0}, ["housing"], ["duration", "age"], seed=0)
    return model.fit(features, target), features


def score_from_table(table: pd.DataFrame, labels: pd.DataFrame) -> np.ndarray:
    """What a reader of the table does: look up each applicant's bin, add the points."""
    lookup = table.set_index(["characteristic", "bin"])["points"]
    return sum(lookup.loc[list(zip([c] * len(labels), labels[c], strict=True))].to_numpy() for c in labels)


def test_points_from_the_table_give_back_the_probability(fitted):
    model, features = fitted
    applicants = features.head(300).copy()
    applicants.loc[applicants.index[:3], "housing"] = ["castle", np.nan, "own"]  # unseen, missing, known
    applicants.loc[applicants.index[3], "duration"] = np.nan
    table = scorecard.scorecard_table(model, SCALING)
    score = score_from_table(table, scorecard.bin_labels(model, applicants))
    recomputed = scorecard.probability_from_score(score, SCALING)
    np.testing.assert_allclose(recomputed, model.predict_proba(applicants)[:, 1], rtol=0, atol=1e-6)
    # And the per-applicant points add up to the same score.
    np.testing.assert_allclose(scorecard.points(model, applicants, SCALING).sum(axis=1), score, atol=1e-9)


def test_table_has_every_bin_with_its_statistics(fitted):
    model, features = fitted
    table = scorecard.scorecard_table(model, SCALING)
    assert list(table.columns) == scorecard.TABLE_COLUMNS
    assert (
        set(table["characteristic"])
        == set(scorecard.characteristics(model))
        == {"duration", "age", "housing"}
    )
    for name, rows in table.groupby("characteristic"):
        assert rows["count"].sum() == len(features), name  # every training row in exactly one bin
        assert scorecard.MISSING_BIN in set(rows["bin"])
    assert table.loc[table["characteristic"] == "age"].query("bin == 'Missing'")["count"].item() > 0
    housing = table[table["characteristic"] == "housing"]
    assert scorecard.UNSEEN_BIN in set(housing["bin"])
    assert {"rent", "own", "free"} <= set(" | ".join(housing["bin"]).split(" | "))  # names, not codes
    assert table["event_rate"].between(0, 1).all()
    assert (table["iv"] >= 0).all()
    # Monotonic event rates in a numeric characteristic (auto_asc_desc): risk rises with duration.
    duration = table[
        (table["characteristic"] == "duration") & (table["count"] > 0) & (table["bin"] != "Missing")
    ]
    assert duration["event_rate"].is_monotonic_increasing
    # A safer bin (higher WoE) earns more points.
    assert duration["points"].is_monotonic_decreasing


def test_scaling_puts_base_points_at_base_odds():
    assert scorecard.probability_from_score(600.0, SCALING) == pytest.approx(1 / 51)
    # pdo more points double the good:bad odds.
    p = scorecard.probability_from_score(620.0, SCALING)
    assert (1 - p) / p == pytest.approx(100.0)
    assert SCALING.factor == pytest.approx(20 / math.log(2))


def test_finds_a_scorecard_inside_a_soft_vote(fitted):
    from sklearn.ensemble import VotingClassifier

    model, features = fitted
    _, target = loans()
    other = build_estimator("logistic_regression", {}, ["housing"], ["duration", "age"], seed=0)
    vote = VotingClassifier([("woe_scorecard", model), ("lr", other)], voting="soft").fit(features, target)
    assert scorecard.find_scorecard(vote) is vote.named_estimators_["woe_scorecard"]
    assert scorecard.find_scorecard(other.fit(features, target)) is None
    assert scorecard.is_scorecard(model)


def test_best_points_ignore_missing_and_unseen_rows(fitted):
    model, _ = fitted
    table = scorecard.scorecard_table(model, SCALING)
    best = scorecard.best_points(table)
    for name, rows in table.groupby("characteristic"):
        fitted_rows = rows[
            (rows["count"] > 0) & ~rows["bin"].isin([scorecard.MISSING_BIN, scorecard.UNSEEN_BIN])
        ]
        assert best[name] == fitted_rows["points"].max()
