"""pipeline.smoke: request bodies and the verdicts on what a scoring server answered."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline import smoke
from pipeline.scoring import INTEGER, TEXT, InputColumn, decide

ROWS = pd.DataFrame(
    {"age": np.array([30, 41], dtype="int64"), "rate": [0.1 + 0.2, np.nan], "phone": ["yes", None]}
)


@pytest.mark.parametrize("body", [smoke.split_body, smoke.records_body])
def test_bodies_carry_exact_floats_integers_and_nulls(body):
    text = body(ROWS)
    decoded = json.loads(text)
    rows = (
        decoded["dataframe_split"]["data"]
        if "dataframe_split" in decoded
        else [list(r.values()) for r in decoded["dataframe_records"]]
    )
    assert rows == [[30, 0.30000000000000004, "yes"], [41, None, None]]
    assert isinstance(rows[0][0], int)


def test_the_malformed_body_lacks_the_first_required_column():
    columns = [InputColumn("age", INTEGER), InputColumn("phone", TEXT, required=False)]
    body, words = smoke.malformed_body(ROWS, columns)
    assert json.loads(body)["dataframe_split"]["columns"] == ["rate", "phone"]
    assert words == ("missing", "'age'")
    body, words = smoke.malformed_body(ROWS, [InputColumn("phone", TEXT, required=False)])
    assert words == ("JSON",)
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)


def answer(frame: pd.DataFrame) -> dict:
    return {"predictions": frame.to_dict(orient="records")}


EXPECTED = decide(np.array([0.2, 0.6]), 0.5)


@pytest.mark.parametrize(
    ("status", "served", "passed", "detail"),
    [
        (200, EXPECTED, True, "2 rows as batch scoring"),
        (200, EXPECTED.assign(default_probability=[0.2 + 1e-12, 0.6]), True, "largest difference 1e-12"),
        (500, EXPECTED, False, "HTTP 500"),
        (
            200,
            EXPECTED.assign(default_probability=[0.2, 0.6 + 1e-6]),
            False,
            "differ from batch scoring by up to 1e-06",
        ),
        (200, EXPECTED.assign(decision=["accept", "accept"]), False, "1 decision(s) differ"),
        (200, EXPECTED.assign(threshold=0.4), False, "threshold differs"),
        (200, EXPECTED.head(1), False, "1 predictions for 2 rows"),
        (200, EXPECTED.drop(columns=["decision"]), False, "not one row per applicant"),
    ],
)
def test_judge_scores(status, served, passed, detail):
    verdict, text = smoke.judge_scores(EXPECTED, status, answer(served), 1e-9)
    assert verdict is passed
    assert detail in text


def test_judge_scores_refuses_an_answer_that_is_not_predictions():
    assert smoke.judge_scores(EXPECTED, 200, ["not", "a", "dict"], 1e-9)[0] is False
    assert smoke.judge_scores(EXPECTED, 200, None, 1e-9)[0] is False


def test_judge_refusal_wants_400_and_every_word():
    words = ("missing", "'age'")
    assert smoke.judge_refusal(400, "Model is missing inputs ['age']", words) == (
        True,
        "HTTP 400 saying missing 'age'",
    )
    assert smoke.judge_refusal(500, "Model is missing inputs ['age']", words)[1] == "HTTP 500 instead of 400"
    # A schema listing names every column: naming it is not enough, it must be said missing.
    assert smoke.judge_refusal(400, "schema ['age': long (required)]", words)[0] is False


def test_failures_lists_only_the_failed_checks():
    checks = [smoke.Check("ping", True, 0.1, "HTTP 200"), smoke.Check("held_out_rows", False, 0.2, "differ")]
    assert smoke.failures(checks) == "held_out_rows: differ"
    assert smoke.failures(checks[:1]) == ""
