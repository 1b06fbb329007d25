"""Reason codes: the expected reasons on hand-built cases, exact for a scorecard, faithful otherwise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import reasons, scorecard, stability
from pipeline.errors import LookupFailedError
from pipeline.models import build_estimator
from pipeline.tracking import keys
from tests.unit.test_scorecard import SCALING, loans


class LinearModel:
    """A hand-built model: log-odds of default = 2 * debt + 1 * late_payments - 1 * (region == 'north')."""

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        logit = 2.0 * frame["debt"] + 1.0 * frame["late_payments"] - 1.0 * (frame["region"] == "north")
        p = 1 / (1 + np.exp(-logit.to_numpy(dtype=float)))
        return np.column_stack([1 - p, p])


CANDIDATES = {"debt": [0.0, 1.0], "late_payments": [0.0, 2.0], "region": ["north", "south"]}


def test_hand_built_case_gives_the_expected_reasons_in_order():
    applicants = pd.DataFrame(
        {"debt": [3.0, 0.0, 1.0], "late_payments": [1.0, 0.0, 2.0], "region": ["south", "north", "north"]}
    )
    given = reasons.substitution_reasons(LinearModel(), applicants, CANDIDATES, count=4)
    assert given.method == reasons.METHOD_SUBSTITUTION
    # Row 0: debt costs 2 * (3 - 0) = 6, late payments 1 * (1 - 0) = 1, region 1 (south vs north).
    assert given.codes.iloc[0].tolist() == ["DEBT", "LATE_PAYMENTS", "REGION", ""]
    # Row 1 already holds the best value of everything: no reason at all.
    assert given.codes.iloc[1].tolist() == ["", "", "", ""]
    # Row 2: late payments 2 (2 - 0), debt 2 (1 - 0): a tie keeps the column order.
    assert given.codes.iloc[2].tolist() == ["DEBT", "LATE_PAYMENTS", "", ""]
    assert given.texts.iloc[0, 0] == (
        "debt = 3: log-odds of default 6.00 above its most favourable typical value 0"
    )
    weights, best = reasons.substitution_weights(LinearModel(), applicants, CANDIDATES)
    np.testing.assert_allclose(weights.iloc[0], [6.0, 1.0, 1.0])
    assert best.iloc[0].tolist() == [0.0, 0.0, "north"]


def test_applicants_in_batches_get_the_same_weights(monkeypatch):
    """A big file is explained in batches (bounded memory) with the same result as in one go."""
    rng = np.random.default_rng(0)
    applicants = pd.DataFrame(
        {
            "debt": rng.integers(0, 4, 25).astype(float),
            "late_payments": rng.integers(0, 3, 25).astype(float),
            "region": rng.choice(["north", "south"], 25),
        }
    )
    whole = reasons.substitution_weights(LinearModel(), applicants, CANDIDATES)
    monkeypatch.setattr(reasons, "SUBSTITUTED_ROWS", 14)  # an applicant and its 6 copies: 2 a batch
    batched = reasons.substitution_weights(LinearModel(), applicants, CANDIDATES)
    pd.testing.assert_frame_equal(batched[0], whole[0])
    pd.testing.assert_frame_equal(batched[1], whole[1])
    empty = reasons.substitution_weights(LinearModel(), applicants.head(0), CANDIDATES)
    assert empty[0].empty


def test_the_applicants_probabilities_come_from_the_same_call_as_their_copies(monkeypatch):
    """One scoring call per batch (a request's main cost): the applicants' own probabilities are
    those of the model, whatever their column types (whole numbers, categories)."""
    applicants = pd.DataFrame(
        {
            "debt": np.array([3, 0, 1]),  # integers; a candidate may be fractional
            "late_payments": [1.0, 0.0, 2.0],
            "region": pd.Categorical(["south", "north", "north"]),
        }
    )
    candidates = {**CANDIDATES, "debt": [0.0, 0.5]}
    calls: list[int] = []
    model = LinearModel()
    original = model.predict_proba
    monkeypatch.setattr(model, "predict_proba", lambda frame: calls.append(len(frame)) or original(frame))
    given = reasons.substitution_reasons(model, applicants, candidates, count=2)
    assert calls == [3 * 7]  # the 3 applicants and 6 copies of each, at once
    np.testing.assert_allclose(given.probabilities, original(applicants)[:, 1], rtol=0, atol=1e-15)
    weights, best = reasons.substitution_weights(LinearModel(), applicants, candidates)
    np.testing.assert_allclose(weights["debt"], [6.0, 0.0, 2.0])  # 0.5 was not truncated to 0
    assert best["region"].tolist() == ["north", "north", "north"]


def test_frame_has_ranked_code_and_text_columns_and_the_method():
    applicants = pd.DataFrame({"debt": [3.0], "late_payments": [1.0], "region": ["south"]})
    frame = reasons.substitution_reasons(LinearModel(), applicants, CANDIDATES, count=2).frame()
    assert list(frame.columns) == [
        "reason_1_code",
        "reason_1_text",
        "reason_2_code",
        "reason_2_text",
        reasons.METHOD_COLUMN,
    ]
    assert frame[reasons.METHOD_COLUMN].tolist() == [reasons.METHOD_SUBSTITUTION]


@pytest.fixture(scope="module")
def card():
    features, target = loans()
    model = build_estimator("woe_scorecard", {"min_iv": 0.0}, ["housing"], ["duration", "age"], seed=0)
    return model.fit(features, target), features


def test_scorecard_reasons_are_the_points_lost_against_the_best_bin(card):
    model, features = card
    applicants = features.head(50).reset_index(drop=True)
    given = reasons.scorecard_reasons(model, applicants, count=3, scaling=SCALING)
    table = scorecard.scorecard_table(model, SCALING)
    best = scorecard.best_points(table)
    labels = scorecard.bin_labels(model, applicants)
    lookup = table.set_index(["characteristic", "bin"])["points"]
    for row in range(len(applicants)):
        lost = {c: best[c] - lookup[(c, labels.at[row, c])] for c in labels.columns}
        expected = [reasons.code_for(c) for c, v in sorted(lost.items(), key=lambda kv: -kv[1]) if v > 1e-9]
        assert [code for code in given.codes.iloc[row] if code] == expected[:3]
    assert given.method == reasons.METHOD_SCORECARD


def test_scorecard_reasons_of_a_hand_built_applicant(card):
    model, _ = card
    # Long loan, young, renting: the three risky bins; the shortest loan, oldest owner loses nothing.
    risky = pd.DataFrame({"duration": [70.0, 6.0], "age": [20.0, 74.0], "housing": ["rent", "own"]})
    given = reasons.scorecard_reasons(model, risky, count=4, scaling=SCALING)
    assert set(given.codes.iloc[0]) - {""} == {"DURATION", "AGE", "HOUSING"}
    assert given.codes.iloc[1].tolist() == ["", "", "", ""]
    assert given.texts.iloc[0, 0].endswith("points below its best bin")


def test_substitution_on_a_scorecard_equals_its_lost_points(card):
    """Faithfulness: with a candidate value in every bin, the model-agnostic weights are the exact
    lost points divided by pdo / ln 2."""
    model, features = card
    applicants = features.head(80).dropna().reset_index(drop=True)
    labels = scorecard.bin_labels(model, features)
    candidates = {
        name: [features[name][labels[name] == label].iloc[0] for label in labels[name].dropna().unique()]
        for name in ("duration", "age", "housing")
    }
    weights, _ = reasons.substitution_weights(model, applicants, candidates)
    table = scorecard.scorecard_table(model, SCALING)
    lost = (scorecard.best_points(table) - scorecard.points(model, applicants, SCALING)).clip(lower=0)
    np.testing.assert_allclose(weights[lost.columns] * SCALING.factor, lost, atol=1e-6)


def test_explain_picks_the_method_and_reads_the_profile(card):
    model, features = card
    metadata = {keys.META_SCORECARD_SCALING: {"base_points": 600.0, "base_odds": 50.0, "pdo": 20.0}}
    assert reasons.explain(model, features.head(5), metadata, 2).method == reasons.METHOD_SCORECARD
    other = build_estimator("logistic_regression", {}, ["housing"], ["duration", "age"], seed=0)
    other.fit(features, loans()[1])
    with pytest.raises(LookupFailedError, match="no training profile"):
        reasons.explain(other, features.head(5), {}, 2)
    profile = stability.build_profile(
        features, other.predict_proba(features)[:, 1], ["housing"], ["duration", "age"]
    )
    given = reasons.explain(other, features.head(5), {keys.META_TRAINING_PROFILE: profile}, 2)
    assert given.method == reasons.METHOD_SUBSTITUTION
    assert given.codes.shape == (5, 2)


def test_frequencies_count_first_and_top_reasons():
    codes = pd.DataFrame({1: ["A", "B", "A", ""], 2: ["B", "A", "", ""]})
    given = reasons.Reasons(codes=codes, texts=codes, method="m")
    frame = reasons.frequencies(given)
    assert frame.to_dict("list") == {
        "code": ["A", "B"],
        "as_first_reason": [2, 1],
        "in_top_reasons": [3, 2],
        "share_first": [0.5, 0.25],
        "share_top": [0.75, 0.5],
    }


@pytest.mark.parametrize(
    ("name", "code"), [("checking_status", "CHECKING_STATUS"), ("Loan %-rate", "LOAN_RATE")]
)
def test_codes_are_stable_upper_case_names(name, code):
    assert reasons.code_for(name) == code


def test_scored_per_applicant_counts_the_rows_explain_scores(card, monkeypatch):
    """What the final step plans reason codes' time by: the rows one explained applicant costs."""
    model, features = card
    metadata = {keys.META_SCORECARD_SCALING: {"base_points": 600.0, "base_odds": 50.0, "pdo": 20.0}}
    assert reasons.scored_per_applicant(model, features.columns, metadata) == 0
    other = build_estimator("logistic_regression", {}, ["housing"], ["duration", "age"], seed=0)
    other.fit(features, loans()[1])
    profile = stability.build_profile(
        features, other.predict_proba(features)[:, 1], ["housing"], ["duration", "age"]
    )
    metadata = {keys.META_TRAINING_PROFILE: profile}
    per_applicant = reasons.scored_per_applicant(other, features.columns, metadata)
    candidates = stability.reference_values(profile)
    assert per_applicant == 1 + sum(len(candidates[name]) for name in features.columns)
    scored: list[int] = []
    original = other.predict_proba
    monkeypatch.setattr(other, "predict_proba", lambda rows: scored.append(len(rows)) or original(rows))
    reasons.explain(other, features.head(7), metadata, 2)
    assert sum(scored) == 7 * per_applicant
