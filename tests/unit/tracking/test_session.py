"""pipeline.tracking.session: where a new experiment keeps its artifacts, and when a team's store
would lose them."""

import pytest

from pipeline.errors import ConfigError
from pipeline.settings import ARTIFACT_ROOT_ENV
from pipeline.tracking.session import artifact_location, team_artifact_problem

SERVER = "https://ci:pw@mlflow.example.com"
TEAM_DB = "postgresql+psycopg2://mlflow:db-pw@db.internal/mlflow"


def test_a_server_keeps_the_artifacts_unless_told_a_shared_place(small_config, monkeypatch):
    monkeypatch.delenv(ARTIFACT_ROOT_ENV, raising=False)
    assert artifact_location(small_config, SERVER) is None  # the server decides (mlflow-artifacts:)
    monkeypatch.setenv(ARTIFACT_ROOT_ENV, "s3://bucket/mlflow")
    assert artifact_location(small_config, SERVER) == "s3://bucket/mlflow"
    monkeypatch.setenv(ARTIFACT_ROOT_ENV, "/runner/work/mlartifacts")
    with pytest.raises(ConfigError, match="is a folder on this machine") as refused:
        artifact_location(small_config, SERVER)
    assert "pw" not in str(refused.value).replace("https://ci:***@", "")


def test_a_database_store_keeps_todays_artifact_root(small_config, monkeypatch):
    monkeypatch.delenv(ARTIFACT_ROOT_ENV, raising=False)
    assert artifact_location(small_config, TEAM_DB) == small_config.resolve("mlartifacts").as_uri()
    monkeypatch.setenv(ARTIFACT_ROOT_ENV, "/shared/nfs/mlartifacts")
    assert artifact_location(small_config) == "file:///shared/nfs/mlartifacts"


def test_a_team_database_with_artifacts_on_this_machine_is_a_problem(small_config, monkeypatch):
    monkeypatch.delenv(ARTIFACT_ROOT_ENV, raising=False)
    problem = team_artifact_problem(small_config, TEAM_DB)
    assert problem.startswith(
        "the team store postgresql+psycopg2://mlflow:***@db.internal/mlflow is a database"
    )
    assert "set PIPELINE_ARTIFACT_ROOT to shared storage" in problem and "db-pw" not in problem
    monkeypatch.setenv(ARTIFACT_ROOT_ENV, "gs://bucket/mlflow")
    assert team_artifact_problem(small_config, TEAM_DB) is None
    # An experiment created earlier keeps its own location, whatever the root says now.
    stuck = team_artifact_problem(
        small_config, TEAM_DB, existing_location="file:///home/runner/work/x/mlartifacts/1"
    )
    assert "keeps its artifacts in file:///home/runner/work/x/mlartifacts/1" in stuck
    assert team_artifact_problem(small_config, TEAM_DB, existing_location="s3://bucket/mlflow/1") is None
    # A server keeps artifacts itself; a SQLite file is one machine's store anyway.
    assert team_artifact_problem(small_config, SERVER) is None
    assert team_artifact_problem(small_config, "sqlite:////tmp/mlflow.db") is None
