"""The whole pipeline through a real ``mlflow server`` with a PostgreSQL backend store, proxied
artifacts and basic auth (tests/integration/servers.py): every command runs as a user runs it, in its
own process, and the outcome is checked by asking the server. Then what each kind of user may do:
a reader reads, an experimenter runs but may not register, wrong credentials change nothing."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import sqlalchemy as sa
from mlflow.tracking import MlflowClient

from pipeline.config import load_config
from pipeline.errors import PermissionDeniedError
from pipeline.settings import STORE_DB_URL_ENV
from pipeline.tracking import keys, registry, runs
from tests.integration.servers import ADMIN, READER, WRITER

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.server, pytest.mark.slow]

COMMANDS = ["research", "optimize", "register", "deploy", "results", "report", "predict", "rollback"]


def assert_nothing_changed(pipeline, runs_before: int) -> None:
    """No run was added, and none is left RUNNING."""
    assert len(pipeline.runs()) == runs_before
    assert pipeline.runs("RUNNING") == []


def refusal(done) -> str:
    """The one stderr line of a command that ended with exit 2."""
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_every_command_runs_through_the_server(server_pipeline):
    completed = server_pipeline.completed
    assert list(completed) == COMMANDS, {name: done.stderr[-3000:] for name, done in completed.items()}
    for name, done in completed.items():
        if name != "rollback":
            assert done.returncode == 0, f"{name}:\n{done.stderr[-3000:]}"
    assert f"{server_pipeline.model_name} version 1 PROMOTED" in completed["register"].stdout
    # Deploy served the champion, smoke-tested it and moved @production, all through the server.
    with server_pipeline.server.as_user(ADMIN):
        aliases = (
            MlflowClient(server_pipeline.server.url).get_registered_model(server_pipeline.model_name).aliases
        )
    assert str(aliases[keys.ALIAS_PRODUCTION]) == "1"
    # One deployment: rollback reads the alias history through the server and finds nothing before it.
    rollback = completed["rollback"]
    assert rollback.returncode == 2
    assert rollback.stderr.strip().splitlines()[-1].startswith("lookup error: the alias history of")
    assert "read through MLflow's REST API of" in completed["results"].stdout
    scores = pd.read_csv(server_pipeline.scores)
    assert len(scores) == 40 and set(scores["decision"]) <= {"accept", "reject"}
    assert not (server_pipeline.folder / "mlartifacts").exists()  # nothing kept on the client's disk


def test_the_server_holds_the_runs_the_model_and_its_artifacts(server_pipeline):
    server = server_pipeline.server
    first = server_pipeline.stage_runs()
    assert {keys.STAGE_RESEARCH, keys.STAGE_OPTIMIZE, keys.STAGE_REGISTER} <= set(first)
    assert server_pipeline.runs("RUNNING") == []
    with server.as_user(ADMIN):
        client = MlflowClient(server.url)
        experiment = client.get_experiment_by_name(server_pipeline.experiment)
        assert experiment.tags[keys.EXPERIMENT_KIND] == keys.EXPERIMENT_KIND_MODEL_TRAINING
        assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server keeps them
        for stage in (keys.STAGE_RESEARCH, keys.STAGE_OPTIMIZE, keys.STAGE_REGISTER):
            run = client.get_run(first[stage].info.run_id)
            tags = run.data.tags
            assert run.info.status == "FINISHED"
            assert run.info.user_id == tags[keys.TAG_MLFLOW_USER] == WRITER
            assert tags[keys.TAG_SOURCE_NAME] == f"python -m pipeline {stage}"
            assert tags[keys.TAG_SOURCE_TYPE] == keys.SOURCE_TYPE_LOCAL
            assert re.fullmatch(r"[0-9a-f]{40}", tags[keys.TAG_SOURCE_GIT_COMMIT])
        optimize = client.get_run(first[keys.STAGE_OPTIMIZE].info.run_id)
        listed = {a.path for a in client.list_artifacts(optimize.info.run_id, "evaluation")}
        assert keys.ARTIFACT_TEST_SCORES in listed
        model = client.get_logged_model(optimize.data.tags[keys.TAG_MODEL_ID])
        metrics = {m.key: m for m in model.metrics}
        assert {keys.METRIC_TEST_ROC_AUC, keys.METRIC_TEST_EXPECTED_COST} <= set(metrics)
        assert metrics[keys.METRIC_TEST_ROC_AUC].dataset_name.endswith("-test")
        assert metrics[keys.METRIC_TEST_ROC_AUC].value == optimize.data.metrics[keys.METRIC_TEST_ROC_AUC]
        registered = json.loads(model.tags[keys.TAG_MODEL_VERSIONS])
        assert [(e["name"], str(e["version"])) for e in registered] == [(server_pipeline.model_name, "1")]
        champion = client.get_model_version_by_alias(server_pipeline.model_name, keys.ALIAS_CHAMPION)
        assert champion.version == "1" and champion.tags[keys.VTAG_STATUS] == keys.STATUS_DONE
        assert champion.tags[keys.VTAG_OPTIMIZE_RUN] == optimize.info.run_id
    on_disk = {path.name for path in server.artifacts.rglob("*") if path.is_file()}
    assert {"test_scores.csv", "MLmodel", "indices.json", "decision.json"} <= on_disk


def deleted_version_rows(database_uri: str) -> dict[str, int]:
    deleted = "SELECT name, version FROM model_versions WHERE current_stage = 'Deleted_Internal'"
    engine = sa.create_engine(database_uri)
    try:
        with engine.connect() as connection:
            versions = connection.execute(sa.text(f"SELECT count(*) FROM ({deleted}) d")).scalar_one()
            tags = connection.execute(
                sa.text(
                    "SELECT count(*) FROM model_version_tags t JOIN "
                    f"({deleted}) d ON d.name = t.name AND d.version = t.version"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    return {"model_versions": versions, "model_version_tags": tags}


def test_results_read_the_api_and_equal_sql_over_the_servers_database(server_pipeline, tmp_path):
    manifest = json.loads((server_pipeline.reports / "manifest.json").read_text())
    assert manifest["source"] == "api" and manifest["tracking_uri"] == server_pipeline.server.url
    summary = (server_pipeline.reports / "summary.md").read_text()
    assert "Read through MLflow's REST API of" in summary and "workflowType=machine_learning" in summary
    assert "Read through MLflow's REST API of" in (server_pipeline.reports / "results.html").read_text()

    # The same store now, through the API and by SQL over the server's own database.
    api = server_pipeline.run("results", "--output-dir", str(tmp_path / "api"))
    sql = server_pipeline.run(
        "results",
        "--output-dir",
        str(tmp_path / "sql"),
        **{STORE_DB_URL_ENV: server_pipeline.server.backend_uri},
    )
    assert api.returncode == 0 and sql.returncode == 0, api.stderr + sql.stderr
    assert "read through SQL over postgresql+psycopg2://" in sql.stdout
    assert json.loads((tmp_path / "sql" / "manifest.json").read_text())["source"] == "sql"
    counts = {
        source: pd.read_csv(tmp_path / source / "table_counts.csv").set_index("table")["rows"]
        for source in ("api", "sql")
    }
    # MLflow's API hides deleted versions (duplicates of a concurrent registration); the tables keep them.
    hidden = deleted_version_rows(server_pipeline.server.backend_uri)
    for table, rows in counts["api"].items():
        assert rows == counts["sql"][table] - hidden.get(table, 0), table
    # The tables as files too. Not compared here: the runs' source columns (the API reads the tags
    # MLflow fills now) and is_nan (PostgreSQL's COPY writes booleans as t/f).
    unlike = ["source_type", "source_name", "entry_point_name", "source_version", "is_nan"]
    for table in ("runs", "params", "tags", "metrics", "latest_metrics", "registered_model_aliases"):
        by_sql, by_api = (
            pd.read_csv(tmp_path / source / "tables" / f"{table}.csv").drop(columns=unlike, errors="ignore")
            for source in ("sql", "api")
        )
        order = [column for column in by_sql.columns if column != "value"]
        by_sql, by_api = (f.sort_values(order, ignore_index=True) for f in (by_sql, by_api[by_sql.columns]))
        pd.testing.assert_frame_equal(by_api, by_sql, check_dtype=False, obj=table)
    for view in sorted((tmp_path / "sql" / "views").glob("*.csv")):
        by_sql, by_api = pd.read_csv(view), pd.read_csv(tmp_path / "api" / "views" / view.name)
        if view.stem not in ("baseline", "monitor_results"):  # no pull-request baseline, no monitor run
            assert not by_sql.empty, view.name
        pd.testing.assert_frame_equal(by_api, by_sql, check_dtype=False, obj=view.name)


def test_no_credential_reaches_output_reports_runs_artifacts_or_command_lines(server_pipeline):
    server, password = server_pipeline.server, server_pipeline.server.passwords[WRITER]
    for name, done in server_pipeline.completed.items():
        assert password not in done.stdout + done.stderr, name
    written = [p for p in server_pipeline.folder.rglob("*") if p.is_file()]
    assert any(p.name == "results.html" for p in written)
    for path in [*written, *(p for p in server.artifacts.rglob("*") if p.is_file())]:
        assert password.encode() not in path.read_bytes(), path
    for run in server_pipeline.runs():
        assert password not in json.dumps([run.data.params, run.data.tags]), run.info.run_id
    lines = server_pipeline.command_lines
    assert any("-m pipeline optimize" in line for line in lines)  # the sampler saw the commands
    assert any("mlflow server" in line or "uvicorn" in line for line in lines)
    assert not [line for line in lines if password in line]
    assert not [line for line in lines if server.backend_uri in line]  # the store reached it by env


def test_optimize_says_where_its_studies_are_and_that_they_are_not_shared(server_pipeline):
    stderr = server_pipeline.completed["optimize"].stderr
    said = [line for line in stderr.splitlines() if "workers elsewhere do not share them" in line]
    assert len(said) == 1 and "PIPELINE_OPTUNA_URL" in said[0]
    optimize = server_pipeline.stage_runs()[keys.STAGE_OPTIMIZE]
    assert optimize.data.tags[keys.TAG_OPTUNA_SHARED] == "false"
    assert optimize.data.tags[keys.TAG_OPTUNA_STORAGE] == f"sqlite:///{server_pipeline.folder / 'optuna.db'}"


def test_a_reader_reads_the_results_but_may_not_register_or_move_an_alias(
    server_pipeline, tmp_path, monkeypatch
):
    reports = ["--output-dir", str(tmp_path / "reports")]
    for command in ("results", "report"):
        done = server_pipeline.run(command, *reports, user=READER)
        assert done.returncode == 0, done.stderr[-3000:]
    assert (
        "champion: server-pipeline-model v1" in server_pipeline.run("results", *reports, user=READER).stdout
    )

    before = len(server_pipeline.runs())
    refused = server_pipeline.run("register", "--quiet", user=READER)
    assert refusal(refused) == (
        f"permission denied: user 'reader' may not call runs/create on {server_pipeline.server.url}; "
        "ask its admin for the permission"
    )
    assert_nothing_changed(server_pipeline, before)

    monkeypatch.chdir(tmp_path)
    with server_pipeline.server.as_user(READER):
        session = runs.connect(load_config(server_pipeline.config))
        why = registry.MoveReason("test", "a reader moving an alias", None, "none")
        with pytest.raises(PermissionDeniedError, match="user 'reader' may not call registered-models/alias"):
            registry.move_alias(session, server_pipeline.model_name, "reader-moved", "1", why)


def test_wrong_or_missing_credentials_are_one_line_and_change_nothing(server_pipeline):
    before = len(server_pipeline.runs())
    url = server_pipeline.server.url
    wrong = server_pipeline.run(
        "research",
        "--quiet",
        user=None,
        MLFLOW_TRACKING_USERNAME=WRITER,
        MLFLOW_TRACKING_PASSWORD="n0t-the-password",
    )
    assert refusal(wrong) == f"authentication failed: {url} refused the credentials of user 'writer'"
    assert "n0t-the-password" not in wrong.stdout + wrong.stderr
    anonymous = server_pipeline.run("research", "--quiet", user=None)
    assert refusal(anonymous) == (
        f"authentication failed: {url} asks for credentials: set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
    )
    assert_nothing_changed(server_pipeline, before)


def test_a_user_who_may_run_but_not_register_is_stopped_and_its_run_marked_failed(
    server_pipeline, monkeypatch
):
    from tests.integration.fakes import fake_optimize_run

    server = server_pipeline.server
    server.add_user("experimenter")
    research = server_pipeline.stage_runs()[keys.STAGE_RESEARCH]
    server.grant("experimenter", "experiment", research.info.experiment_id, "EDIT")  # the model stays READ
    monkeypatch.chdir(server_pipeline.folder)
    with server.as_user("experimenter"):
        optimize_id = fake_optimize_run(load_config(server_pipeline.config), research.info.run_id)
    versions_before = experiment_versions(server_pipeline)

    refused = server_pipeline.run(
        "register", "--quiet", "--optimize-run-id", optimize_id, user="experimenter"
    )
    line = refusal(refused)
    match = re.fullmatch(
        rf"permission denied: user 'experimenter' may not call model-versions/create on {server.url}; "
        r"ask its admin for the permission; run (\w+) marked FAILED",
        line,
    )
    assert match, line
    failed = next(r for r in server_pipeline.runs() if r.info.run_id == match[1])
    assert failed.info.status == "FAILED" and failed.data.tags[keys.TAG_STAGE] == keys.STAGE_REGISTER
    assert "PermissionDeniedError" in failed.data.tags[keys.TAG_FAILURE_REASON]
    assert server_pipeline.runs("RUNNING") == []
    assert experiment_versions(server_pipeline) == versions_before


def experiment_versions(pipeline) -> list[str]:
    with pipeline.server.as_user(ADMIN):
        found = MlflowClient(pipeline.server.url).search_model_versions(f"name = '{pipeline.model_name}'")
    return sorted(v.version for v in found)
