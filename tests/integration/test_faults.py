"""Faults: the database lost mid-stage or late at start, SIGTERM, stale RUNNING runs, old schemas.

The PostgreSQL cases run on a throwaway cluster (tests/pgcluster.py) the test stops and restarts.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline import termination
from pipeline.settings import ARTIFACT_ROOT_ENV, TRACKING_URI_ENV
from pipeline.termination import Terminated
from pipeline.tracking import keys, runs, sweep
from tests.conftest import PROJECT_ROOT, make_config, small_params

pytestmark = pytest.mark.integration

# Long enough (a few seconds after the parent run exists) to be interrupted mid-stage.
SLOW_PORTFOLIO = ["dummy_prior", "logistic_regression", "random_forest", "hist_gradient_boosting"]


def write_params(folder: Path, **overrides) -> Path:
    raw = small_params(**overrides)
    raw["dataset"]["path"] = str(PROJECT_ROOT / "data" / "german_credit.csv")
    raw["research"]["use"] = SLOW_PORTFOLIO
    raw["research"]["n_jobs"] = 1
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cli_env(uri: str, folder: Path) -> dict[str, str]:
    # TQDM_DISABLE: the progress bar also writes to stderr; the assertions are about the error line.
    return {
        **os.environ,
        TRACKING_URI_ENV: uri,
        ARTIFACT_ROOT_ENV: str(folder / "artifacts"),
        "TQDM_DISABLE": "1",
    }


def start_cli(params: Path, env: dict[str, str], *command: str) -> subprocess.Popen:
    # Output to files, not pipes: nobody reads a pipe while the test polls, and a full one would
    # stop the command before the state the test waits for.
    outputs = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by finish)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *(command or ("research",)), "--quiet", "--config", str(params)],
        stdout=outputs[0],
        stderr=outputs[1],
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
    )
    process.outputs = outputs
    return process


def stop(process: subprocess.Popen) -> None:
    """Kill a command from :func:`start_cli` if it still runs, and close its output files."""
    if process.poll() is None:
        process.kill()
        process.wait()
    for output in process.outputs:
        output.close()


def finish(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """Wait for a command from :func:`start_cli`; its stdout and stderr."""
    process.wait(timeout=timeout)
    texts = []
    for output in process.outputs:
        output.seek(0)
        texts.append(output.read())
        output.close()
    return texts[0], texts[1]


def run_cli(params: Path, env: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    process = start_cli(params, env, *command)
    stdout, stderr = finish(process, timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def assert_one_line(stderr: str, *fragments: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def wait_for(query, process: subprocess.Popen, timeout: float = 240, interval: float = 0.05):
    """Poll ``query()`` until it returns something truthy (errors count as not yet) while ``process``
    runs; a process that ends first fails the test with its output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, stderr = finish(process, timeout=1)
            raise AssertionError(f"the command ended ({process.returncode}) first: {stderr}")
        try:
            found = query()
        except Exception:
            found = None
        if found:
            return found
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def running_stage_run_pg(cluster, database: str) -> str | None:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=cluster.port, user="postgres", dbname=database)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                "WHERE t.key = 'pipeline.role' AND t.value = 'stage' AND r.status = 'RUNNING'"
            )
            row = cursor.fetchone()
    finally:
        connection.close()
    return row[0] if row else None


def trial_run_count_pg(cluster, database: str) -> int:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=cluster.port, user="postgres", dbname=database)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM tags WHERE key = 'pipeline.role' AND value = 'trial'")
            return cursor.fetchone()[0]
    finally:
        connection.close()


def running_stage_run_sqlite(path: Path) -> str | None:
    with sqlite3.connect(path, timeout=1) as connection:
        row = connection.execute(
            "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'pipeline.role' AND t.value = 'stage' AND r.status = 'RUNNING'"
        ).fetchone()
    return row[0] if row else None


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("loan-default")
    return client.search_runs([experiment.experiment_id], max_results=5000) if experiment else []


@pytest.mark.postgres
@pytest.mark.slow
def test_database_lost_mid_stage_then_rerun_completes(pg_cluster, tmp_path):
    uri = pg_cluster.create_database("mlflow_lost")
    params = write_params(tmp_path, tracking={"connect_retries": 1, "connect_backoff_seconds": 0.1})
    env = cli_env(uri, tmp_path)

    process = start_cli(params, env)
    try:
        lost_run = wait_for(lambda: running_stage_run_pg(pg_cluster, "mlflow_lost"), process)
        pg_cluster.stop("immediate")
        _, stderr = finish(process, timeout=300)
    finally:
        stop(process)
    assert process.returncode == 2, stderr
    line = assert_one_line(stderr, "tracking store unreachable: lost the tracking store", lost_run)
    assert "next start marks it FAILED" in line

    pg_cluster.start()
    assert {r.info.run_id: r.info.status for r in all_runs(uri)}[lost_run] == "RUNNING"
    rerun = run_cli(params, env)
    assert rerun.returncode == 0, rerun.stderr
    every_run = all_runs(uri)
    assert [r.info.status for r in every_run if r.info.status == "RUNNING"] == []
    lost = next(r for r in every_run if r.info.run_id == lost_run)
    assert lost.info.status == "FAILED"
    assert lost.data.tags[keys.TAG_FAILURE_REASON].startswith("stale: process")
    finished = [
        r for r in every_run if r.data.tags.get(keys.TAG_ROLE) == "stage" and r.info.status == "FINISHED"
    ]
    assert len(finished) == 1


@pytest.mark.postgres
@pytest.mark.slow
def test_database_lost_mid_optuna_study_then_rerun_completes(pg_cluster, tmp_path):
    """Stage 2 loses both stores at once (MLflow's tables and Optuna's schema) between trials."""
    uri = pg_cluster.create_database("mlflow_lost_om")
    params = write_params(
        tmp_path,
        tracking={"connect_retries": 1, "connect_backoff_seconds": 0.1},
        optimize={"n_trials": 3, "pruning": False},
    )
    env = cli_env(uri, tmp_path)
    assert run_cli(params, env, "research").returncode == 0

    process = start_cli(params, env, "optimize")
    try:
        wait_for(lambda: trial_run_count_pg(pg_cluster, "mlflow_lost_om") >= 1, process)
        lost_run = running_stage_run_pg(pg_cluster, "mlflow_lost_om")
        pg_cluster.stop("immediate")
        _, stderr = finish(process, timeout=300)
    finally:
        stop(process)
    assert lost_run is not None
    assert process.returncode == 2, stderr
    assert_one_line(stderr, "tracking store unreachable", lost_run)

    pg_cluster.start()
    rerun = run_cli(params, env, "optimize")
    assert rerun.returncode == 0, rerun.stderr
    every_run = all_runs(uri)
    assert [r.info.run_id for r in every_run if r.info.status == "RUNNING"] == []
    assert next(r for r in every_run if r.info.run_id == lost_run).info.status == "FAILED"
    finished = [r for r in every_run if r.data.tags.get(keys.TAG_STAGE) == "optimize"]
    finished = [
        r for r in finished if r.data.tags.get(keys.TAG_ROLE) == "stage" and r.info.status == "FINISHED"
    ]
    assert len(finished) == 1
    # The resumed studies hold each family's cap of finished trials, none twice.
    trials = [r for r in every_run if r.data.tags.get(keys.TAG_ROLE) == "trial" and r.info.status != "FAILED"]
    trial_ids = [(r.data.tags[keys.TAG_OPTUNA_STUDY], r.data.tags[keys.TAG_OPTUNA_TRIAL]) for r in trials]
    assert len(trial_ids) == len(set(trial_ids))
    assert sorted(Counter(study for study, _ in trial_ids).values()) == [3, 3]


@pytest.mark.postgres
def test_database_comes_up_during_the_back_off(pg_cluster, tmp_path):
    uri = pg_cluster.create_database("mlflow_late")
    pg_cluster.stop("fast")
    params = write_params(tmp_path, tracking={"connect_retries": 6, "connect_backoff_seconds": 0.5})
    env = cli_env(uri, tmp_path)
    starter = threading.Timer(2.0, pg_cluster.start)
    starter.start()
    try:
        completed = run_cli(params, env)
    finally:
        starter.join()
    assert completed.returncode == 0, completed.stderr
    assert [r.info.status for r in all_runs(uri) if r.data.tags.get(keys.TAG_ROLE) == "stage"] == ["FINISHED"]


@pytest.mark.slow
def test_sigterm_marks_the_run_killed_and_exits_143(sqlite_store, tmp_path):
    database = Path(sqlite_store.removeprefix("sqlite:///"))
    params = write_params(tmp_path)
    process = start_cli(params, cli_env(sqlite_store, tmp_path))
    try:
        run_id = wait_for(lambda: running_stage_run_sqlite(database), process)
        process.send_signal(signal.SIGTERM)
        _, stderr = finish(process, timeout=120)
    finally:
        stop(process)
    assert process.returncode == 143, stderr
    assert_one_line(stderr, "terminated: received SIGTERM")
    every_run = all_runs(sqlite_store)
    parent = next(r for r in every_run if r.info.run_id == run_id)
    assert parent.info.status == "KILLED"
    assert parent.data.tags[keys.TAG_FAILURE_REASON] == "Terminated: received SIGTERM"
    assert [r.info.run_id for r in every_run if r.info.status == "RUNNING"] == []


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_sweep_fails_only_abandoned_runs(sqlite_store):
    config = make_config(small_params(tracking={"stale_after_hours": 12}))
    session = runs.connect(config)
    client, experiment = session.client, session.experiment_id
    host, now_ms = socket.gethostname(), int(time.time() * 1000)

    def make_run(name, host_tag=None, pid=None, parent=None, hours_ago=0.0):
        tags = {keys.TAG_ROLE: "stage"}
        if host_tag is not None:
            tags |= {keys.TAG_HOST: host_tag, keys.TAG_PID: str(pid)}
        if parent is not None:
            tags |= {keys.TAG_PARENT_RUN: parent, keys.TAG_ROLE: "candidate"}
        start = now_ms - int(hours_ago * 3600 * 1000)
        return client.create_run(experiment, start_time=start, tags=tags, run_name=name).info.run_id

    gone = make_run("gone", host, dead_pid())
    gone_child = make_run("gone-child", parent=gone)
    gone_grandchild = make_run("gone-grandchild", parent=gone_child)
    live = make_run("live", host, os.getpid())
    live_child = make_run("live-child", parent=live)
    elsewhere_recent = make_run("elsewhere-recent", "another-host", 1, hours_ago=1)
    elsewhere_old = make_run("elsewhere-old", "another-host", 1, hours_ago=13)
    untagged_old = make_run("untagged-old", hours_ago=20)
    ended = make_run("ended", host, os.getpid())
    client.set_terminated(ended, "FINISHED")
    orphan = make_run("orphan", parent=ended)

    swept = sweep.fail_stale_runs(session, config.tracking.stale_after_hours)

    assert set(swept) == {gone, gone_child, gone_grandchild, elsewhere_old, untagged_old, orphan}
    status = {r.info.run_id: r for r in client.search_runs([experiment], max_results=100)}
    for run_id in swept:
        assert status[run_id].info.status == "FAILED"
        assert status[run_id].data.tags[keys.TAG_FAILURE_REASON].startswith("stale: ")
    for run_id in (live, live_child, elsewhere_recent):
        assert status[run_id].info.status == "RUNNING"
    assert "process" in swept[gone] and "parent run" in swept[gone_grandchild]
    assert "13.0 h" in swept[elsewhere_old] and "ended" in swept[orphan]
    # connect() sweeps on every start; nothing left to do now.
    assert sweep.fail_stale_runs(session, 12) == {}
    # Older than the limit but its process is alive (a long pipeline): still never touched.
    time.sleep(0.5)
    assert live not in sweep.fail_stale_runs(session, max_age_hours=0.0001)
    assert client.get_run(live).info.status == "RUNNING"


def test_stage_run_tags_its_owner_and_closes_children_on_failure(sqlite_store, small_config):
    session = runs.connect(small_config)
    ids: list[str] = []

    def failing_stage() -> None:
        with runs.stage_run(session, "owner", {keys.TAG_STAGE: "probe"}) as run_id:
            tags = {keys.TAG_PARENT_RUN: run_id}
            ids.extend([run_id, session.client.create_run(session.experiment_id, tags=tags).info.run_id])
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing_stage()
    run_id, child = ids
    parent = session.client.get_run(run_id)
    assert parent.data.tags[keys.TAG_HOST] == socket.gethostname()
    assert parent.data.tags[keys.TAG_PID] == str(os.getpid())
    assert parent.info.status == "FAILED"
    closed = session.client.get_run(child)
    assert closed.info.status == "FAILED"
    assert closed.data.tags[keys.TAG_FAILURE_REASON] == "parent run ended FAILED: RuntimeError: boom"


def test_sigterm_swallowed_inside_a_library_still_ends_the_run_killed(sqlite_store, small_config):
    """A SIGTERM whose exception some library caught (seen once in 12 runs) must not end FINISHED."""
    session = runs.connect(small_config)
    try:
        with (
            pytest.raises(Terminated),
            runs.stage_run(session, "swallowed", {keys.TAG_STAGE: "probe"}) as run_id,
        ):
            termination.note_received()  # what the handler sets before its exception was lost
    finally:
        termination.reset()
    run = session.client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags[keys.TAG_FAILURE_REASON] == "Terminated: received SIGTERM"


def test_sigterm_during_the_run_creation_still_ends_the_run_killed(sqlite_store, small_config):
    """The signal lands after the store wrote the run but before its id came back (seen under load)."""
    session = runs.connect(small_config)
    create_run = session.client.create_run
    created: list[str] = []

    def create_then_signal(*args, **kwargs):
        run = create_run(*args, **kwargs)
        created.append(run.info.run_id)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs here, inside the call
        return run

    session.client.create_run = create_then_signal
    with (
        pytest.raises(Terminated),
        termination.handling_sigterm(),
        runs.stage_run(session, "interrupted", {keys.TAG_STAGE: "probe"}),
    ):
        raise AssertionError("the stage body must not start after a SIGTERM")
    run = session.client.get_run(created[0])
    assert run.info.status == "KILLED"
    assert run.data.tags[keys.TAG_FAILURE_REASON] == "Terminated: received SIGTERM"


def test_sigterm_swallowed_outside_a_stage_run_still_exits_143(tmp_path, monkeypatch, capsys):
    """A command that runs no stage (scoring) honours a SIGTERM whose exception a library caught."""
    from pipeline import cli
    from pipeline.stages import predict

    def swallowing_run(config, **_):
        termination.note_received()  # what the handler sets before its exception was lost
        return None

    monkeypatch.setattr(predict, "run", swallowing_run)
    params = write_params(tmp_path)
    argv = ["predict", "--config", str(params), "--model", "m", "--input", "in.csv", "--output", "out.csv"]
    try:
        assert cli.main(argv) == Terminated.exit_code == 143
    finally:
        termination.reset()
    assert capsys.readouterr().err.startswith("terminated: received SIGTERM")


def test_a_background_thread_failure_is_one_log_line_and_a_lost_store_none(tmp_path, monkeypatch, capsys):
    """Optuna's heartbeat thread can hit a lost database first: no traceback from it on stderr."""
    import sqlalchemy

    from pipeline import cli
    from pipeline.stages import predict

    failures = [
        sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly")),
        ValueError("bad heartbeat\nsecond line"),
    ]

    def fail(error: Exception) -> None:
        raise error

    def run_with_failing_threads(config, **_):
        for error in failures:
            thread = threading.Thread(target=fail, args=(error,), name="beat")
            thread.start()
            thread.join()

    monkeypatch.setattr(predict, "run", run_with_failing_threads)
    params = write_params(tmp_path)
    argv = ["predict", "--config", str(params), "--model", "m", "--input", "in.csv", "--output", "out.csv"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0]
    assert lines[0].endswith("ERROR   pipeline: background thread beat failed: ValueError: bad heartbeat")
    assert threading.excepthook is not cli.report_thread_failure  # restored after the command


def downgrade_one_revision(uri: str) -> tuple[str, str]:
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config

    from pipeline.tracking.store import schema_revisions

    _, head = schema_revisions(uri)
    command.downgrade(_get_alembic_config(uri), "-1")
    old, _ = schema_revisions(uri)
    assert old != head
    return old, head


@pytest.mark.slow
def test_old_schema_gives_a_clear_message_and_db_upgrade_fixes_it(sqlite_store, tmp_path):
    params = write_params(tmp_path)
    env = cli_env(sqlite_store, tmp_path)
    runs.connect(make_config(small_params()))  # creates the store at the current schema
    old, head = downgrade_one_revision(sqlite_store)

    refused = run_cli(params, env)
    assert refused.returncode == 2, refused.stderr
    assert_one_line(
        refused.stderr,
        f"tracking schema outdated: tracking database sqlite:///{tmp_path}/mlflow.db schema is at revision "
        f"{old}, this MLflow needs {head}: back up and run `python -m pipeline db-upgrade`",
    )

    upgraded = run_cli(params, env, "db-upgrade", "--backup-dir", str(tmp_path / "backups"))
    assert upgraded.returncode == 0, upgraded.stderr
    backups = list((tmp_path / "backups").iterdir())
    assert len(backups) == 1 and backups[0].suffix == ".sqlite"
    with sqlite3.connect(backups[0]) as copy:  # the backup is the database as it was
        assert copy.execute("SELECT version_num FROM alembic_version").fetchone() == (old,)
    assert f"upgraded from revision {old} to {head}" in upgraded.stdout

    again = run_cli(params, env, "db-upgrade", "--backup-dir", str(tmp_path / "backups"))
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert len(list((tmp_path / "backups").iterdir())) == 1

    completed = run_cli(params, env)
    assert completed.returncode == 0, completed.stderr


@pytest.mark.postgres
def test_db_upgrade_on_postgres_takes_a_pg_dump_first(pg_cluster, tmp_path):
    from pipeline.tracking.store import schema_revisions

    # Trust auth accepts any password: it must reach pg_dump through PGPASSWORD only.
    uri = pg_cluster.create_database("mlflow_old").replace("postgres@", "postgres:Pw0rdXyz@")
    MlflowClient(uri).search_experiments()  # creates the schema
    old, head = downgrade_one_revision(uri)
    params = write_params(tmp_path)
    env = cli_env(uri, tmp_path)

    refused = run_cli(params, env)
    assert refused.returncode == 2
    assert_one_line(refused.stderr, f"schema is at revision {old}, this MLflow needs {head}", "postgres:***@")

    upgraded = run_cli(params, env, "db-upgrade", "--backup-dir", str(tmp_path / "backups"))
    assert upgraded.returncode == 0, upgraded.stderr
    assert "Pw0rdXyz" not in upgraded.stdout + upgraded.stderr
    (dump,) = (tmp_path / "backups").iterdir()
    assert dump.suffix == ".dump" and dump.read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format
    assert schema_revisions(uri) == (head, head)


def test_schema_from_a_newer_mlflow_is_refused(sqlite_store, small_config):
    from pipeline.errors import SchemaOutdatedError

    runs.connect(small_config)
    with sqlite3.connect(sqlite_store.removeprefix("sqlite:///")) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'f00dfeedbeef'")
    with pytest.raises(SchemaOutdatedError, match="revision f00dfeedbeef, unknown to this MLflow"):
        runs.connect(small_config)


def test_store_lost_outside_a_stage_run_is_one_line(monkeypatch, capsys):
    """The command maps a lost connection anywhere (not only inside stage_run) to exit 2."""
    import sqlalchemy

    from pipeline import cli

    def lost(config, args):
        import mlflow  # noqa: F401  (the store was in use)

        raise sqlalchemy.exc.OperationalError(
            "SELECT 1", {}, Exception("server closed the connection unexpectedly\n\tThis probably means...")
        )

    monkeypatch.setenv(TRACKING_URI_ENV, "postgresql://loan:Secr3t@db:5432/mlflow")
    monkeypatch.setattr(cli, "_research", lost)
    code = cli.main(["research", "--config", str(PROJECT_ROOT / "params.yaml")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "tracking store unreachable: lost the tracking store postgresql://loan:***@db:5432/mlflow: "
        "server closed the connection unexpectedly"
    ]


def test_db_upgrade_needs_a_database(monkeypatch, small_config):
    from pipeline.errors import ConfigError
    from pipeline.stages import db_upgrade

    monkeypatch.setenv(TRACKING_URI_ENV, "http://mlflow.example:5000")
    with pytest.raises(ConfigError, match="db-upgrade needs a database tracking URI"):
        db_upgrade.run(small_config)
