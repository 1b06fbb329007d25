"""Stage 4 end to end: a real research run, faked stages 2-3, every table and view checked."""

import hashlib
import json
import subprocess
import sys

import pandas as pd
import psycopg2
import pytest
from mlflow.tracking import MlflowClient

from pipeline.errors import TrackingUnavailableError
from pipeline.queries import tables
from pipeline.settings import ARTIFACT_ROOT_ENV, TRACKING_URI_ENV
from pipeline.stages import results
from pipeline.tracking import keys
from tests.conftest import POSTGRES_ADMIN_DSN, PROJECT_ROOT, make_config, small_params
from tests.integration.fake_store import MODEL_NAME, populate

pytestmark = pytest.mark.integration


@pytest.fixture
def results_run(results_store, tmp_path, monkeypatch):
    monkeypatch.setenv(TRACKING_URI_ENV, results_store.uri)
    return results.run(make_config(small_params()), output_dir=tmp_path / "reports")


def test_every_table_is_written_with_its_row_count(results_run):
    counts = results_run.table_counts.set_index("table")
    assert len(counts) > 50  # MLflow 3 has ~65 tables; all are counted
    for name in tables.PEOPLE_TABLES:
        frame = pd.read_csv(results_run.output_dir / "tables" / f"{name}.csv")
        assert len(frame) == counts.loc[name, "rows"], name
    assert (
        counts.loc["runs", "rows"] == 1 + 4 + 3 * (1 + 3) + 3
    )  # research, candidates, optimize+trials, register
    assert counts.loc["model_versions", "rows"] == 3 and counts.loc["registered_model_aliases", "rows"] == 3


def test_manifest_lists_every_file_with_its_digest(results_run):
    manifest = json.loads((results_run.output_dir / "manifest.json").read_text())
    assert manifest["schema_revision"] and manifest["mlflow_version"]
    written = {p.relative_to(results_run.output_dir).as_posix() for p in results_run.output_dir.rglob("*")}
    listed = {entry["path"] for entry in manifest["files"]}
    assert listed == {p for p in written if "." in p.rsplit("/", 1)[-1]} - {"manifest.json"}
    for entry in manifest["files"]:
        data = (results_run.output_dir / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        if entry["path"].endswith(".csv"):
            assert len(pd.read_csv(results_run.output_dir / entry["path"])) == entry["rows"]


def test_leaderboard_spans_research_and_tuned_models(results_run, results_store):
    board = results_run.views.leaderboard
    assert (board["stage"] == "research").sum() == 4 and (board["stage"] == "optimize").sum() == 3
    assert board["cv_roc_auc"].is_monotonic_decreasing
    tuned = board[board["stage"] == "optimize"]
    assert set(tuned["run_id"]) == set(results_store.optimize_run_ids)
    assert tuned["test_roc_auc"].notna().all()
    research_rows = board[board["stage"] == "research"].set_index("name")
    expected = results_store.research.leaderboard.set_index("candidate")["cv_roc_auc_mean"]
    assert research_rows["cv_roc_auc"].to_dict() == pytest.approx(expected.to_dict())


def test_champion_history_gate_and_lineage(results_run, results_store):
    history = results_run.views.champion_history.set_index("version")
    assert history.loc[int(results_store.champion_version), "aliases"] == "champion"
    assert history.loc[int(results_store.previous_version), "archived"] == "true"
    assert history.loc[int(results_store.challenger_version), keys.VTAG_DECISION] == "rejected"
    assert results_run.champion["version"] == int(results_store.champion_version)

    gates = results_run.views.gate_decisions
    assert gates["decision"].tolist() == ["rejected", "promoted", "promoted"]

    lineage = results_run.views.lineage.set_index("step")
    assert lineage.loc["research", "run_id"] == results_store.research.run_id
    assert lineage.loc["optimize", "run_id"] == results_store.optimize_run_ids[-1]
    assert lineage.loc["register", "run_id"] == results_store.register_run_ids[-1]
    assert lineage.loc["dataset", "dataset_digest"] == results_store.research.dataset_digest
    assert lineage.loc["model_version", "detail"] == f"{MODEL_NAME} v{results_store.challenger_version}"


def test_trials_durations_and_registry_frame(results_run, results_store):
    trials = results_run.views.trials
    assert set(trials["run_id"]) == set(results_store.trial_run_ids[-3:])  # latest optimization run
    assert sorted(trials["param"].unique()) == ["C", "class_weight"]
    durations = results_run.views.run_durations.set_index("stage")
    assert durations["runs"].to_dict() == {"optimize": 3, "register": 3, "research": 1}
    registry = results_run.views.registered_models
    assert dict(zip(registry["version"], registry["aliases"], strict=True)) == {
        int(results_store.champion_version): "champion",
        int(results_store.previous_version): "previous",
        int(results_store.challenger_version): "challenger",
    }


def test_summary_is_short_and_says_what_matters(results_run, results_store):
    summary = (results_run.output_dir / "summary.md").read_text()
    assert len(summary) < 8_000
    assert f"version {results_store.champion_version}" in summary
    assert summary.startswith("# Model check: rejected\n")
    assert f"**Rejected**: version {results_store.challenger_version} stays challenger" in summary
    assert "| runs " in summary and "optimize-3" in summary


def test_store_without_pipeline_runs_gives_empty_views(sqlite_store, tmp_path):
    MlflowClient(sqlite_store).create_experiment("loan-default")
    result = results.run(make_config(small_params()), output_dir=tmp_path / "out")
    assert result.views.leaderboard.empty and result.views.champion_history.empty
    assert result.champion is None
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "No research run" in summary and "No register run" in summary
    assert (tmp_path / "out" / "views" / "leaderboard.csv").read_text().startswith("stage,name,family")


def test_server_uri_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(TRACKING_URI_ENV, "http://user:pw-secret@127.0.0.1:9/")
    with pytest.raises(TrackingUnavailableError) as caught:
        results.run(make_config(small_params()), output_dir=tmp_path)
    assert "pw-secret" not in str(caught.value)


def test_console_script(results_store, tmp_path, monkeypatch):
    monkeypatch.setenv(TRACKING_URI_ENV, results_store.uri)
    config = tmp_path / "params.yaml"
    config.write_text(
        (PROJECT_ROOT / "params.yaml")
        .read_text()
        .replace("path: data/german_credit.csv", f"path: {PROJECT_ROOT}/data/german_credit.csv")
    )
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "results",
            "--config",
            str(config),
            "--output-dir",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert f"champion: {MODEL_NAME} v{results_store.champion_version}" in completed.stdout
    assert (tmp_path / "r" / "manifest.json").is_file()


# --- secrets: a password-protected role on PostgreSQL --------------------------------------------------

PASSWORD = "Sup3r-S3cret-pw-7f1c"


@pytest.fixture
def password_store(postgres_url, tmp_path, monkeypatch):
    """The throwaway database, used through a LOGIN role with a password (trust auth on this server
    does not check it, but it is in the URI every component sees)."""
    database = postgres_url.rsplit("/", 1)[1]
    role = f"{database}_owner"
    admin = psycopg2.connect(POSTGRES_ADMIN_DSN)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{PASSWORD}'")
        cursor.execute(f'GRANT ALL ON DATABASE "{database}" TO "{role}"')
    inside = psycopg2.connect(POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}")
    inside.autocommit = True
    with inside.cursor() as cursor:
        cursor.execute(f'GRANT ALL ON SCHEMA public TO "{role}"')
    host = POSTGRES_ADMIN_DSN.rsplit("@", 1)[1].rsplit("/", 1)[0]
    uri = f"postgresql+psycopg2://{role}:{PASSWORD}@{host}/{database}"
    monkeypatch.setenv(TRACKING_URI_ENV, uri)
    monkeypatch.setenv(ARTIFACT_ROOT_ENV, str(tmp_path / "artifacts"))
    try:
        yield uri
    finally:
        with inside.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
            )
            cursor.execute(f'DROP OWNED BY "{role}" CASCADE')
        inside.close()
        with admin.cursor() as cursor:
            cursor.execute(f'REVOKE ALL ON DATABASE "{database}" FROM "{role}"')
            cursor.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_no_output_contains_the_password(password_store, tmp_path):
    populate(make_config(small_params()), password_store)
    config = tmp_path / "params.yaml"
    config.write_text(
        (PROJECT_ROOT / "params.yaml")
        .read_text()
        .replace("path: data/german_credit.csv", f"path: {PROJECT_ROOT}/data/german_credit.csv")
        .replace("notebook: notebooks/results.ipynb", f"notebook: {PROJECT_ROOT}/notebooks/results.ipynb")
    )
    output = tmp_path / "reports"
    streams = []
    for command in ("results", "report"):
        completed = subprocess.run(
            [sys.executable, "-m", "pipeline", command, "--config", str(config), "--output-dir", str(output)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert completed.returncode == 0, completed.stderr
        streams += [completed.stdout, completed.stderr]
    files = [path for path in output.rglob("*") if path.is_file()]
    assert {"summary.md", "manifest.json", "results.ipynb", "results.html"} <= {p.name for p in files}
    for path in files:
        assert PASSWORD not in path.read_text(encoding="utf-8", errors="replace"), path
    for text in streams:
        assert PASSWORD not in text
    manifest = json.loads((output / "manifest.json").read_text())
    assert (
        manifest["tracking_uri"].startswith("postgresql+psycopg2://") and ":***@" in manifest["tracking_uri"]
    )
    assert ":***@" in (output / "results.html").read_text()
    assert "champion" in (output / "summary.md").read_text().lower()


def _digests(folder) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.postgres
@pytest.mark.slow
def test_reports_change_as_a_whole_or_not_at_all(pg_cluster, tmp_path, monkeypatch):
    """The store cut (the server stopped) after the first table is written: reports/ keeps the
    previous complete set, and no staging folder is left behind."""
    uri = pg_cluster.create_database("mlflow_results_cut")
    monkeypatch.setenv(TRACKING_URI_ENV, uri)
    monkeypatch.setenv(ARTIFACT_ROOT_ENV, str(tmp_path / "artifacts"))
    config = make_config(small_params())
    populate(config, uri)
    output = tmp_path / "reports"
    output.mkdir()
    (output / "results.html").write_text("the report command's file, not the results stage's")
    results.run(config, output_dir=output)
    before = _digests(output)
    manifest = json.loads((output / "manifest.json").read_text())
    assert {entry["path"]: entry["sha256"] for entry in manifest["files"]}.items() <= before.items()
    assert "results.html" in before

    original = tables.iter_table

    def cut_after_first_table(store, name, *args, **kwargs):
        yield from original(store, name, *args, **kwargs)
        if pg_cluster.running:
            pg_cluster.stop("immediate")  # the store goes away mid-stage

    monkeypatch.setattr(tables, "iter_table", cut_after_first_table)
    with pytest.raises(Exception, match=r"(?i)connection|terminating|server closed"):
        results.run(config, output_dir=output)
    assert not pg_cluster.running
    assert _digests(output) == before
    assert [path.name for path in tmp_path.iterdir() if ".staging-" in path.name] == []
