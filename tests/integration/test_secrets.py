"""No credentials in stage 1's output, logs, artifacts, params, tags or dataset records.

The local PostgreSQL server uses trust authentication, so it accepts any password: the
tracking URI and the data URL carry made-up secrets that must appear nowhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy
import yaml

from pipeline.settings import ARTIFACT_ROOT_ENV, DATA_URL_ENV, TRACKING_URI_ENV
from pipeline.tracking import keys
from tests.conftest import PROJECT_ROOT, small_params

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

TRACKING_SECRET = "Tr4ckingS3cret"
DATA_SECRET = "D4taS3cret"


def with_password(url: str, password: str) -> str:
    return url.replace("postgres@", f"postgres:{password}@", 1)


def scan_files(folder: Path, secrets: tuple[str, ...]) -> list[str]:
    leaks = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            leaks += [f"{path}: {s}" for s in secrets if s.encode() in data]
    return leaks


def scan_tracking_tables(url: str, secrets: tuple[str, ...]) -> tuple[int, list[str]]:
    """Every text value of every MLflow table (params, tags, inputs, datasets, ...)."""
    engine = sqlalchemy.create_engine(url)
    leaks, rows = [], 0
    try:
        with engine.connect() as connection:
            for table in sqlalchemy.inspect(connection).get_table_names():
                frame = pd.read_sql_query(sqlalchemy.text(f'SELECT * FROM "{table}"'), connection)
                rows += len(frame)
                text = frame.astype(str).to_csv(index=False)
                leaks += [f"table {table}: {s}" for s in secrets if s in text]
    finally:
        engine.dispose()
    return rows, leaks


@pytest.mark.slow
def test_research_leaks_no_credentials(postgres_url, tmp_path):
    tracking_url = with_password(postgres_url, TRACKING_SECRET)
    data_url = with_password(postgres_url, DATA_SECRET)
    engine = sqlalchemy.create_engine(postgres_url)
    pd.read_csv(PROJECT_ROOT / "data" / "german_credit.csv").to_sql("loans", engine, index=False)
    engine.dispose()

    raw = small_params()
    raw["dataset"] = {"name": "german_credit", "query": "SELECT * FROM loans", "target": "default"}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    env = {
        **os.environ,
        TRACKING_URI_ENV: tracking_url,
        DATA_URL_ENV: data_url,
        ARTIFACT_ROOT_ENV: str(tmp_path / "artifacts"),
    }
    completed = subprocess.run(
        [sys.executable, "-m", "pipeline", "research", "-v", "--config", str(params)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    secrets = (TRACKING_SECRET, DATA_SECRET)
    output = completed.stdout + completed.stderr
    assert "DEBUG" in output and "rank" in completed.stdout  # verbose logs were really produced
    assert [s for s in secrets if s in output] == []

    artifacts = tmp_path / "artifacts"
    names = {p.name for p in artifacts.rglob("*") if p.is_file()}
    assert {"leaderboard.csv", "leaderboard.md", keys.ARTIFACT_RESEARCH_CHART, "indices.json"} <= names
    assert scan_files(artifacts, secrets) == []

    rows, leaks = scan_tracking_tables(postgres_url, secrets)
    assert rows > 50 and leaks == []


def test_failed_stage_reason_tag_is_redacted(sqlite_store, small_config, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import keys, runs

    session = runs.connect(small_config)

    def leaky_stage() -> str:
        with runs.stage_run(session, "leaky", {keys.TAG_STAGE: "probe"}) as run_id:
            leaked_ids.append(run_id)
            runs.log_batch(
                session,
                run_id,
                params={
                    "source": f"postgresql://loan:{DATA_SECRET}@db/loans",
                    "nested": {"url": f"x://u:{DATA_SECRET}@h"},
                },
                tags={"note": f"postgresql://loan:{TRACKING_SECRET}@db/mlflow"},
            )
            raise RuntimeError(f"could not reach postgresql://loan:{TRACKING_SECRET}@db/mlflow")

    leaked_ids: list[str] = []
    with pytest.raises(RuntimeError):
        leaky_stage()
    (run_id,) = leaked_ids
    run = MlflowClient(sqlite_store).get_run(run_id)
    stored = str(run.data.params) + str(run.data.tags)
    assert TRACKING_SECRET not in stored and DATA_SECRET not in stored
    assert "loan:***@db" in run.data.tags[keys.TAG_FAILURE_REASON]
