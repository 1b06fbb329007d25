"""pipeline.scoring: input columns as users hold them, typed input, probability and decision."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import scoring
from pipeline.errors import DataError
from pipeline.models import build_estimator
from pipeline.scoring import INTEGER, NUMBER, TEXT, InputColumn, ScoringSpec
from tests.conftest import PROJECT_ROOT

GERMAN = PROJECT_ROOT / "data" / "german_credit.csv"
COLUMNS = [InputColumn("age", NUMBER), InputColumn("purpose", TEXT)]


@pytest.fixture(scope="module")
def german():
    frame = pd.read_csv(GERMAN)
    target = frame.pop("default")
    categorical = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    numeric = [c for c in frame.columns if c not in categorical]
    return frame, target, categorical, numeric


def test_describe_inputs_tells_integers_numbers_text_and_optional_columns():
    features = pd.DataFrame(
        {
            "months": [6.0, 12.0, 48.0],  # pipeline.data types every numeric column as float
            "rate": [0.5, 1.25, 2.0],
            "dependents": [1.0, np.nan, 2.0],  # whole numbers with a gap: an integer cannot be missing
            "purpose": ["car", "tv", "car"],
            "phone": ["yes", None, "no"],
        }
    )
    assert scoring.describe_inputs(features) == (
        InputColumn("months", INTEGER, required=True),
        InputColumn("rate", NUMBER, required=True),
        InputColumn("dependents", NUMBER, required=False),
        InputColumn("purpose", TEXT, required=True),
        InputColumn("phone", TEXT, required=False),
    )


def test_raw_rows_give_integer_columns_back_as_integers():
    features = pd.DataFrame({"months": [6.0, 12.0], "rate": [0.5, 1.0], "purpose": ["car", "tv"]})
    raw = scoring.raw_rows(features, scoring.describe_inputs(features))
    assert (raw["months"].dtype, raw["rate"].dtype) == (np.dtype("int64"), np.dtype(float))
    assert raw["months"].tolist() == [6, 12]
    assert raw["purpose"].tolist() == ["car", "tv"]


def test_spec_round_trips_and_refuses_what_is_not_one():
    spec = ScoringSpec(0.25, (InputColumn("age", INTEGER), InputColumn("phone", TEXT, required=False)))
    assert ScoringSpec.from_dict(spec.to_dict()) == spec
    for broken in ({}, {"threshold": 0.5, "columns": []}, {"threshold": 0.5, "columns": [{"name": "a"}]}):
        with pytest.raises(ValueError, match="not a scoring spec"):
            ScoringSpec.from_dict(broken)
    with pytest.raises(ValueError, match="unknown kinds"):
        ScoringSpec.from_dict(
            {"threshold": 0.5, "columns": [{"name": "a", "kind": "blob", "required": True}]}
        )


def test_prepare_input_types_columns_and_reports_extras():
    frame = pd.DataFrame({"purpose": ["car", None], "age": ["30", ""], "id": ["a", "b"]})
    features, check = scoring.prepare_input(frame, COLUMNS, {"purpose": {"car"}})
    assert list(features.columns) == ["age", "purpose"]
    assert features["age"].dtype == float
    assert features["age"].iloc[0] == 30.0
    assert np.isnan(features["age"].iloc[1])  # missing stays missing: the imputer handles it
    assert features["purpose"].iloc[0] == "car"
    assert check.extra_columns == ["id"]
    assert check.unseen_categories == {}


def test_prepare_input_fills_an_absent_optional_column_and_refuses_an_absent_required_one():
    columns = [InputColumn("age", INTEGER), InputColumn("phone", TEXT, required=False)]
    features, check = scoring.prepare_input(pd.DataFrame({"age": [30, 40]}), columns, {})
    assert check.absent_optional == ["phone"]
    assert features["phone"].isna().all()
    with pytest.raises(DataError, match="lacks column\\(s\\) the model needs: age"):
        scoring.prepare_input(pd.DataFrame({"phone": ["yes"]}), columns, {})


def test_prepare_input_reads_pandas_own_types_like_plain_ones():
    frame = pd.DataFrame(
        {
            "age": pd.array([30, None, 41], dtype="Int64"),
            "purpose": pd.Categorical(["car", None, "tv"]),
            "extra": pd.array([True, False, None], dtype="boolean"),
        }
    )
    plain = pd.DataFrame({"age": [30.0, np.nan, 41.0], "purpose": ["car", None, "tv"]})
    features, check = scoring.prepare_input(frame, COLUMNS, {"purpose": {"car"}})
    expected, _ = scoring.prepare_input(plain, COLUMNS, {"purpose": {"car"}})
    pd.testing.assert_frame_equal(features, expected)
    assert features["age"].dtype == float and features["purpose"].dtype == object
    assert check.unseen_categories == {"purpose": 1} and check.extra_columns == ["extra"]
    as_text, _ = scoring.prepare_input(frame.astype({"age": "str"}), COLUMNS, {})
    np.testing.assert_array_equal(as_text["age"].to_numpy(), [30.0, np.nan, 41.0])
    flags, _ = scoring.prepare_input(pd.DataFrame({"age": [True, False], "purpose": ["a", "b"]}), COLUMNS, {})
    assert flags["age"].tolist() == [1.0, 0.0]


def test_prepare_input_refuses_a_repeated_column():
    frame = pd.DataFrame([[30, "car", 40]], columns=["age", "purpose", "age"])
    with pytest.raises(DataError, match="repeats column\\(s\\): age"):
        scoring.prepare_input(frame, COLUMNS, {})


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"purpose": ["car"], "age": ["inf"]}), "column 'age' holds infinite values"),
        (pd.DataFrame({"purpose": ["car"], "age": ["abc"]}), "column 'age' must be numeric"),
        (pd.DataFrame({"purpose": [], "age": []}), "no rows to score"),
    ],
)
def test_prepare_input_names_the_problem(frame, message):
    with pytest.raises(DataError, match=message):
        scoring.prepare_input(frame, COLUMNS, {})


def test_decision_is_reject_at_or_above_threshold():
    output = scoring.decide(np.array([0.2, 0.3, 0.4]), 0.3, pd.Index([7, 8, 9]))
    assert list(output.columns) == list(scoring.OUTPUT_COLUMNS)
    assert output["decision"].tolist() == ["accept", "reject", "reject"]
    assert output["threshold"].tolist() == [0.3] * 3
    assert output.index.tolist() == [7, 8, 9]


def test_score_takes_raw_integer_text_and_extra_columns_like_the_training_frame(german):
    frame, target, categorical, numeric = german
    training = frame.astype({c: float for c in numeric})
    model = build_estimator("logistic_regression", {}, categorical, numeric, 0).fit(training, target)
    spec = ScoringSpec(0.3, scoring.describe_inputs(training))
    raw = frame.head(40).assign(applicant_id=range(40))  # integers as read, an extra column
    scored = scoring.score(scoring.Scorer.of(model, spec), raw)
    expected = model.predict_proba(training.head(40))[:, 1]
    np.testing.assert_array_equal(scored.output["default_probability"], expected)
    assert scored.check.extra_columns == ["applicant_id"]
    assert scored.rejected == int((expected >= 0.3).sum())


@pytest.mark.parametrize("family", ["logistic_regression", "hist_gradient_boosting"])
def test_known_categories_found_inside_calibrated_models(german, family):
    from sklearn.calibration import CalibratedClassifierCV

    frame, target, categorical, numeric = german
    frame, target = frame.head(200), target.head(200)
    model = CalibratedClassifierCV(build_estimator(family, {}, categorical, numeric, 0), cv=2)
    model.fit(frame, target)
    known = scoring.known_categories(model)
    assert set(known) == set(categorical)
    assert known["purpose"] == set(frame["purpose"])
    changed = frame.astype({c: str for c in numeric}).copy()
    changed.loc[:4, "purpose"] = "spaceship"
    columns = [InputColumn(c, TEXT if c in categorical else NUMBER) for c in frame]
    _, check = scoring.prepare_input(changed, columns, known)
    assert check.unseen_categories == {"purpose": 5}


def test_scoring_predicts_on_one_thread_with_the_same_probabilities(german):
    from sklearn.ensemble import VotingClassifier

    frame, target, categorical, numeric = german
    training = frame.astype({c: float for c in numeric})
    forest = build_estimator("random_forest", {"n_estimators": 20}, categorical, numeric, 0, n_jobs=2)
    vote = VotingClassifier(
        [("forest", forest), ("linear", build_estimator("logistic_regression", {}, categorical, numeric, 0))],
        voting="soft",
        n_jobs=2,
    ).fit(training, target)
    before = vote.predict_proba(training)[:, 1]
    scorer = scoring.Scorer.of(vote, ScoringSpec(0.5, scoring.describe_inputs(training)))
    assert scorer.estimator.n_jobs == 1
    assert scorer.estimator.estimators_[0].named_steps["model"].n_jobs == 1
    np.testing.assert_allclose(
        scoring.score(scorer, frame).output["default_probability"], before, rtol=0, atol=1e-12
    )


def test_reasons_stay_with_their_applicants_whatever_the_index(german):
    from pipeline import stability
    from pipeline.tracking import keys

    frame, target, categorical, numeric = german
    training = frame.astype({c: float for c in numeric})
    model = build_estimator("logistic_regression", {}, categorical, numeric, 0).fit(training, target)
    profile = stability.build_profile(training, model.predict_proba(training)[:, 1], categorical, numeric)
    recorded = {scoring.REASON_COUNT: 2, keys.META_TRAINING_PROFILE: profile}
    scorer = scoring.Scorer.of(model, ScoringSpec(0.3, scoring.describe_inputs(training), recorded))
    rows = frame.head(6)
    plain = scoring.score(scorer, rows).output
    relabelled = scoring.score(scorer, rows.set_axis([50, 7, 31, 2, 99, 13])).output
    assert relabelled.index.tolist() == [50, 7, 31, 2, 99, 13]
    pd.testing.assert_frame_equal(relabelled.reset_index(drop=True), plain)
    assert plain["reason_1_code"].ne("").all() and plain["reason_1_code"].dtype == object
