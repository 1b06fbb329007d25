"""Alias moves and their history on every kind of store: SQLite, PostgreSQL and an MLflow server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import ServingError
from pipeline.queries import history, tables
from pipeline.serving import free_port, stop_process_group, wait_until_ready
from pipeline.settings import ARTIFACT_ROOT_ENV, TRACKING_URI_ENV
from pipeline.tracking import keys, registry, runs

pytestmark = pytest.mark.integration

NAME = "alias-history-model"


def two_versions(config):
    session = runs.connect(config)
    run = session.client.create_run(session.experiment_id)
    session.client.log_text(run.info.run_id, "placeholder", "model/MLmodel")
    session.client.set_terminated(run.info.run_id)
    registry.ensure_registered_model(session, NAME)
    for _ in range(2):
        session.client.create_model_version(NAME, f"runs:/{run.info.run_id}/model", run.info.run_id)
    return session


def check_moves_are_recorded_and_read_back(config) -> list:
    session = two_versions(config)
    why = registry.MoveReason(keys.STAGE_DEPLOY, "smoke test passed", "run-7", "abc123")
    first = registry.move_alias(session, NAME, keys.ALIAS_PRODUCTION, "1", why)
    assert (first.from_version, first.to_version) == (None, "1")
    assert registry.move_alias(session, NAME, keys.ALIAS_PRODUCTION, "1", why) is None  # already there
    registry.move_alias(session, NAME, keys.ALIAS_PRODUCTION, "2", why)
    removed = registry.move_alias(session, NAME, keys.ALIAS_PRODUCTION, None, why)
    assert (removed.from_version, removed.to_version) == ("2", None)
    assert registry.alias_version(session, NAME, keys.ALIAS_PRODUCTION) is None
    moves = registry.alias_history(session, NAME)
    assert [(m.from_version, m.to_version) for m in moves] == [(None, "1"), ("1", "2"), ("2", None)]
    assert all(
        (m.actor, m.reason, m.run_id, m.git_commit) == ("deploy", "smoke test passed", "run-7", "abc123")
        for m in moves
    )
    assert registry.alias_history(session, "no-such-model") == []
    return moves


@pytest.mark.parametrize(
    "store_fixture", ["sqlite_store", pytest.param("postgres_store", marks=pytest.mark.postgres)]
)
def test_moves_are_recorded_and_read_by_sql(store_fixture, request, small_config):
    uri = request.getfixturevalue(store_fixture)
    moves = check_moves_are_recorded_and_read_back(small_config)
    store = tables.open_store(uri)
    try:
        frame = history.alias_history(store, NAME)
    finally:
        store.close()
    assert len(frame) == len(moves)
    assert frame["to_version"].fillna("-").tolist() == ["-", "2", "1"]  # newest first
    assert frame["from_version"].fillna("-").tolist() == ["2", "1", "-"]
    assert set(frame["name"]) == {NAME}


@pytest.mark.slow
def test_moves_are_recorded_through_an_mlflow_tracking_server(tmp_path, monkeypatch, small_config):
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--default-artifact-root", (tmp_path / "artifacts").as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    environment.pop(TRACKING_URI_ENV, None)
    with (tmp_path / "server.log").open("w") as log:
        server = subprocess.Popen(
            command, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(url, 240, server, path="/health")
        except ServingError as error:
            pytest.fail(f"{error}:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
        monkeypatch.setenv(TRACKING_URI_ENV, url)
        # A server keeps the artifacts where it was told (the test's folder): no client-side root.
        monkeypatch.delenv(ARTIFACT_ROOT_ENV, raising=False)
        check_moves_are_recorded_and_read_back(small_config)
    finally:
        stop_process_group(server)
