"""scripts/check_mlflow_status.py and scripts/launch_mlflow.sh, run as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from mlflow.tracking import MlflowClient

from pipeline.settings import (
    ARTIFACT_ROOT_ENV,
    TRACKING_PASSWORD_ENV,
    TRACKING_URI_ENV,
    TRACKING_USERNAME_ENV,
    temporary_environment,
)
from tests.conftest import PROJECT_ROOT
from tests.integration.servers import free_port, watching_command_lines

pytestmark = pytest.mark.integration

STATUS_SCRIPT = PROJECT_ROOT / "scripts" / "check_mlflow_status.py"
LAUNCH_SCRIPT = PROJECT_ROOT / "scripts" / "launch_mlflow.sh"


def script_env(uri: str, artifacts) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PIPELINE_"))}
    return {**env, TRACKING_URI_ENV: uri, ARTIFACT_ROOT_ENV: str(artifacts)}


def run_status(uri: str, tmp_path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    output = tmp_path / "reports" / "mlflow_status_report.json"
    done = subprocess.run(
        [sys.executable, str(STATUS_SCRIPT), "--output", str(output), *extra],
        cwd=PROJECT_ROOT,
        env=script_env(uri, tmp_path / "artifacts"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, json.loads(output.read_text())


def populate(uri: str) -> None:
    """One experiment with a finished and a failed run, and a model whose version 1 is champion."""
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("status-check")
    finished = client.create_run(experiment_id)
    client.set_terminated(finished.info.run_id, "FINISHED")
    failed = client.create_run(experiment_id)
    client.set_terminated(failed.info.run_id, "FAILED")
    client.create_registered_model("loan-model")
    client.create_model_version("loan-model", source="file:///nowhere/model", run_id=finished.info.run_id)
    client.create_model_version("loan-model", source="file:///nowhere/model", run_id=finished.info.run_id)
    client.set_registered_model_alias("loan-model", "champion", "1")


def assert_populated(report: dict) -> None:
    assert report["reachable"] is True
    assert report["schema_revision"] == report["schema_expected"]
    assert report["schema_up_to_date"] is True
    experiments = {e["name"]: e for e in report["experiments"]}
    assert experiments["status-check"]["runs_by_status"] == {"FAILED": 1, "FINISHED": 1}
    assert report["runs_by_status"] == {"FAILED": 1, "FINISHED": 1}
    assert report["registered_models"] == [
        {"name": "loan-model", "versions": 2, "aliases": {"champion": "1"}, "champion": "1"}
    ]


def test_status_of_a_sqlite_store_lists_runs_and_the_champion(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    populate(uri)
    done, report = run_status(uri, tmp_path)
    assert done.returncode == 0, done.stderr
    assert_populated(report)
    assert report["tracking_uri"] == uri
    assert "experiment status-check" in done.stdout
    assert "model loan-model: 2 version(s), champion 1" in done.stdout


@pytest.mark.postgres
def test_status_of_a_postgres_store_masks_the_password(postgres_url, tmp_path):
    populate(postgres_url)
    with_password = postgres_url.replace("://postgres@", "://postgres:not-needed-here@")
    done, report = run_status(with_password, tmp_path)
    assert done.returncode == 0, done.stderr
    assert_populated(report)
    assert "not-needed-here" not in done.stdout
    assert "not-needed-here" not in json.dumps(report)
    assert report["tracking_uri"].startswith("postgresql+psycopg2://postgres:***@127.0.0.1")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_store_exits_1_with_one_redacted_line(tmp_path):
    uri = f"postgresql+psycopg2://loan:s3cret-pw@127.0.0.1:{closed_port()}/mlflow"
    done, report = run_status(uri, tmp_path, "--retries", "1", "--backoff", "0")
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("tracking store unreachable: cannot reach")
    assert "after 2 attempt(s)" in done.stderr
    assert "loan:***@127.0.0.1" in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout + json.dumps(report)
    assert report["reachable"] is False
    assert "experiments" not in report


def test_launch_rejects_a_port_that_is_not_a_number(tmp_path):
    done = subprocess.run(
        ["bash", str(LAUNCH_SCRIPT), "http"],
        env=script_env(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "PORT must be a number" in done.stderr


def fetch(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode("utf-8", "replace")


@contextmanager
def launched(env: dict[str, str], log, *args: str) -> Iterator[subprocess.Popen]:
    """``launch_mlflow.sh`` running in its own process group (stopping it stops mlflow's workers too)."""
    with log.open("w") as stream:
        server = subprocess.Popen(
            ["bash", str(LAUNCH_SCRIPT), *args],
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield server
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)


def wait_for_ui(server: subprocess.Popen, log, path: str = "/") -> tuple[str, int, str]:
    """The URL the script printed, once the server answers ``path`` there: ``(url, status, page)``."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and server.poll() is None:
        lines = [line for line in log.read_text().splitlines() if line.startswith("MLflow UI: ")]
        if lines:
            url = lines[0].removeprefix("MLflow UI: ")
            try:
                return url, *fetch(url + path)
            except OSError:
                pass
        time.sleep(1)
    pytest.fail(f"the UI did not answer:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_launch_serves_the_ui_and_api_on_the_next_free_port(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("launched")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    log = tmp_path / "launch.log"
    try:
        with launched(script_env(uri, tmp_path / "artifacts"), log, str(port)) as server:
            url, status, page = wait_for_ui(server, log)
            assert f"port {port} is busy" in log.read_text()
            assert url.startswith("http://127.0.0.1:")
            assert int(url.rsplit(":", 1)[1]) > port
            assert status == 200
            assert "<html" in page.lower()
            status, body = fetch(url + "/api/2.0/mlflow/experiments/search?max_results=10")
            assert status == 200
            names = {e["name"] for e in json.loads(body)["experiments"]}
            assert "launched" in names
            assert f"store:     {uri}" in log.read_text()
            assert f"artifacts: {(tmp_path / 'artifacts').as_uri()}" in log.read_text()
            assert (
                f"model training view: {url}/#/experiments?workflowType=machine_learning" in log.read_text()
            )
    finally:
        busy.close()


def launch_failure(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(LAUNCH_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_team_mode_needs_postgresql_and_a_first_admin_password(tmp_path):
    sqlite = launch_failure(script_env(f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "a"), "--team", "5999")
    assert sqlite.returncode == 2
    assert sqlite.stderr.strip() == (
        f"team mode needs a PostgreSQL store: set MLFLOW_TRACKING_URI=postgresql+psycopg2://… "
        f"(got sqlite:///{tmp_path / 'm.db'})"
    )
    env = {
        **script_env("postgresql+psycopg2://loan:pw-never-shown@127.0.0.1:9/mlflow", tmp_path / "a"),
        "PIPELINE_SERVER_DIR": str(tmp_path / "server"),
    }
    first = launch_failure(env, "--team", "5999")
    assert first.returncode == 2
    assert (
        first.stderr.strip()
        == "team mode, first start: set MLFLOW_AUTH_ADMIN_PASSWORD for the admin user (admin)"
    )
    assert "pw-never-shown" not in first.stdout + first.stderr


@pytest.mark.postgres
@pytest.mark.server
@pytest.mark.slow
def test_team_mode_keeps_the_store_off_every_command_line_and_asks_for_credentials(postgres_url, tmp_path):
    secret = "T3am-store-pw-5c1e"
    store = postgres_url.replace("://postgres@", f"://postgres:{secret}@")  # trust auth ignores it
    admin_password = "Adm1n-first-start-pw"
    env = {
        **script_env(store, tmp_path / "artifacts"),
        "PIPELINE_SERVER_DIR": str(tmp_path / "server"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
    }
    log = tmp_path / "launch.log"
    with launched(env, log, "--team", str(free_port())) as server, watching_command_lines() as seen:
        url, status, _ = wait_for_ui(server, log, "/health")  # the one page that needs no user
        assert status == 200
        for page in ("/", "/api/2.0/mlflow/experiments/search?max_results=10"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                fetch(url + page)
            assert refused.value.code == 401, page
        client_env = {
            TRACKING_URI_ENV: url,
            TRACKING_USERNAME_ENV: "admin",
            TRACKING_PASSWORD_ENV: admin_password,
        }
        with temporary_environment(**client_env):
            client = MlflowClient(url)
            experiment = client.create_experiment("team")
            run = client.create_run(experiment)
            client.log_text(run.info.run_id, "served", "note.txt")
        listed = [line for line in seen if "mlflow" in line]
    text = log.read_text()
    assert "team mode: basic auth" in text and secret not in text
    assert any("--app-name basic-auth" in line and "--serve-artifacts" in line for line in listed), listed
    assert not [line for line in seen if secret in line or store in line]
    # The server owns the artifacts: what a client logged is in its destination, not on the client.
    assert [p.read_text() for p in (tmp_path / "artifacts").rglob("note.txt")] == ["served"]
    assert "secret" not in (tmp_path / "server" / "basic_auth.ini").read_text().lower()


def test_status_of_an_empty_database_reports_the_schema_mlflow_created(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    done, report = run_status(uri, tmp_path)
    assert done.returncode == 0, done.stderr
    assert report["schema_created"] is True
    assert report["schema_revision"] == report["schema_expected"]
    assert report["runs_by_status"] == {}
    assert report["registered_models"] == []


@pytest.mark.postgres
def test_status_with_team_refuses_a_database_whose_artifacts_stay_on_this_machine(postgres_url, tmp_path):
    local, report = run_status(postgres_url, tmp_path, "--team")
    assert local.returncode == 2
    last = local.stderr.strip().splitlines()[-1]  # after MLflow's own lines as it creates its tables
    assert last.startswith("config error: the team store postgresql+psycopg2://")
    assert "set PIPELINE_ARTIFACT_ROOT to shared storage" in last
    assert report["reachable"] is True  # the report is still written
    shared = subprocess.run(
        [sys.executable, str(STATUS_SCRIPT), "--team", "--output", str(tmp_path / "s.json")],
        cwd=PROJECT_ROOT,
        env={**script_env(postgres_url, tmp_path), ARTIFACT_ROOT_ENV: "s3://bucket/mlflow"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shared.returncode == 0, shared.stderr


@pytest.mark.postgres
@pytest.mark.server
def test_status_of_a_server_that_refuses_the_credentials_is_one_line(auth_server, tmp_path):
    from tests.integration.servers import WRITER

    env = {**auth_server.command_env(WRITER), TRACKING_PASSWORD_ENV: "not-the-Passw0rd"}
    done = subprocess.run(
        [sys.executable, str(STATUS_SCRIPT), "--output", str(tmp_path / "status.json")],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"authentication failed: {auth_server.url} refused the credentials of user 'writer'"
    )
    report = json.loads((tmp_path / "status.json").read_text())
    assert report["reachable"] is True and "not-the-Passw0rd" not in json.dumps(report) + done.stdout
    with_password = subprocess.run(
        [sys.executable, str(STATUS_SCRIPT), "--output", str(tmp_path / "ok.json")],
        cwd=PROJECT_ROOT,
        env=auth_server.command_env(WRITER),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert with_password.returncode == 0, with_password.stderr
    assert json.loads((tmp_path / "ok.json").read_text())["schema_revision"] is None  # a server's
