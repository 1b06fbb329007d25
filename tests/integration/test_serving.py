"""A real scoring server (``mlflow models serve`` on a free loopback port) answering raw applicants."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline import scoring, serving, smoke
from pipeline.errors import ServingError
from pipeline.tracking import model_io
from tests.conftest import PROJECT_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GERMAN = PROJECT_ROOT / "data" / "german_credit.csv"


@pytest.fixture(scope="module")
def server(champion_store, champion_server):
    """The session's scoring server and the batch scorer of the version it serves."""
    return champion_server, model_io.load_model(champion_store.version_uri, champion_store.uri).scorer


def invoke(url: str, body: str) -> serving.Response:
    return serving.request(f"{url}/invocations", body, timeout=60)


@pytest.fixture(scope="module")
def applicants() -> pd.DataFrame:
    return pd.read_csv(GERMAN).drop(columns=["default"]).head(100)


def test_ping_answers(server):
    url, _ = server
    assert serving.request(f"{url}/ping").status == 200


@pytest.mark.parametrize("body", [smoke.split_body, smoke.records_body], ids=["split", "records"])
def test_raw_rows_are_scored_as_batch_scoring_scores_them(server, applicants, body):
    url, scorer = server
    answer = invoke(url, body(applicants))
    assert answer.status == 200, answer.body[:500]
    served = pd.DataFrame(answer.json()["predictions"])
    expected = scoring.score(scorer, applicants).output
    np.testing.assert_allclose(
        served["default_probability"], expected["default_probability"], rtol=0, atol=1e-9
    )
    assert served["decision"].tolist() == expected["decision"].tolist()
    assert (served["threshold"] == scorer.threshold).all()


def test_extra_columns_and_missing_text_are_accepted(server, applicants):
    url, scorer = server
    rows = applicants.head(3).assign(applicant_id=[11, 12, 13])
    rows["telephone"] = [None, "none", None]
    answer = invoke(url, smoke.records_body(rows))
    assert answer.status == 200, answer.body[:500]
    served = pd.DataFrame(answer.json()["predictions"])
    expected = scoring.score(scorer, rows).output
    np.testing.assert_allclose(
        served["default_probability"], expected["default_probability"], rtol=0, atol=1e-9
    )


@pytest.mark.parametrize(
    ("make_body", "named"),
    [
        (lambda rows: smoke.split_body(rows.drop(columns=["credit_amount"])), "credit_amount"),
        (lambda rows: smoke.records_body(rows.assign(age="forty")), "age"),
        (lambda rows: smoke.split_body(rows.head(0)), "no rows to score"),
        (lambda rows: '{"dataframe_split": ', "JSON"),
        (lambda rows: json.dumps({"rows": []}), "dataframe_split"),
        (lambda rows: json.dumps({"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}), "columns"),
    ],
    ids=["missing column", "text in an integer column", "no rows", "not JSON", "no known key", "ragged rows"],
)
def test_malformed_requests_get_400_naming_the_problem_without_a_traceback(
    server, applicants, make_body, named
):
    url, _ = server
    answer = invoke(url, make_body(applicants.head(2)))
    assert answer.status == 400, answer.body[:500]
    assert named in answer.message()
    assert "Traceback" not in answer.body
    assert "stack_trace" not in answer.json()


def test_a_model_that_does_not_load_is_a_serving_error_with_the_reason(champion_store, tmp_path):
    missing = f"models:/{champion_store.model_name}/99"
    with (
        pytest.raises(ServingError, match="exited with code") as raised,
        serving.scoring_server(missing, champion_store.uri, 240, tmp_path / "server.log"),
    ):
        pytest.fail("a server without a model came up")
    assert "99" in str(raised.value)  # the log's last lines say which model was not found


def test_the_tracking_uri_reaches_the_server_through_its_environment_not_its_command_line(
    server, champion_store
):
    import psutil

    url, _ = server
    port = url.rsplit(":", 1)[1]
    processes = [
        process
        for process in psutil.process_iter(["cmdline"])
        if process.info["cmdline"] and port in process.info["cmdline"]
    ]
    assert processes, "no process serves the port"  # mlflow models serve and its uvicorn
    for process in processes:
        assert champion_store.uri not in " ".join(process.info["cmdline"])
    assert any(process.environ().get("MLFLOW_TRACKING_URI") == champion_store.uri for process in processes)


def test_error_messages_and_log_tails_are_one_redacted_line(tmp_path):
    body = json.dumps({"error_code": "BAD_REQUEST", "message": "Invalid input.\n  Ensure JSON"})
    assert serving.Response(400, body, 0.1).message() == "Invalid input. Ensure JSON"
    assert serving.Response(0, "connection refused", 0.1).message() == "connection refused"
    log = tmp_path / "server.log"
    log.write_text("starting\n\nuri postgresql://u:secret@db/x\nTraceback\n  boom\n")
    assert serving.log_tail(log, lines=3) == "uri postgresql://u:***@db/x | Traceback | boom"
    assert serving.log_tail(tmp_path / "absent.log") == ""
