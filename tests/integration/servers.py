"""A real ``mlflow server`` for tests: PostgreSQL backend store, proxied artifacts, optional basic auth.

The server gets its store URI through the environment (``MLFLOW_BACKEND_STORE_URI``), never its
command line, listens on a free loopback port, and is stopped with its whole process group.
MLflow's GenAI job runner is switched off: the pipeline needs none of it, and it would start a
dozen worker processes on a two-core machine. The fixtures that use this live in tests/conftest.py.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.settings import (
    TRACKING_PASSWORD_ENV,
    TRACKING_TOKEN_ENV,
    TRACKING_URI_ENV,
    TRACKING_USERNAME_ENV,
    temporary_environment,
)

ADMIN, WRITER, READER = "admin", "writer", "reader"
START_TIMEOUT_SECONDS = 180
# Variables a test's own environment must not pass to the server or to the commands it runs.
CLIENT_PREFIXES = ("MLFLOW_", "PIPELINE_")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_environment() -> dict[str, str]:
    """This process's environment without any MLflow or pipeline setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith(CLIENT_PREFIXES)}


@dataclass
class MlflowServer:
    url: str
    backend_uri: str
    artifacts: Path
    log: Path
    process: subprocess.Popen
    passwords: dict[str, str] = field(default_factory=dict)  # user -> password; empty without auth

    def env(self, user: str | None = None, password: str | None = None) -> dict[str, str]:
        """A client's variables: the server's URI and, with auth, ``user``'s credentials."""
        values = {TRACKING_URI_ENV: self.url}
        if user is not None:
            values[TRACKING_USERNAME_ENV] = user
            values[TRACKING_PASSWORD_ENV] = password if password is not None else self.passwords[user]
        return values

    def command_env(self, user: str | None = None, **extra: str) -> dict[str, str]:
        """A whole environment for a command run as ``user`` (nothing inherited from MLflow or us)."""
        return {**clean_environment(), **self.env(user), **extra}

    @contextmanager
    def as_user(self, user: str | None = None) -> Iterator[None]:
        """This process talks to the server as ``user`` inside the block (MLflow reads the variables
        on every request)."""
        cleared = {name: "" for name in (TRACKING_USERNAME_ENV, TRACKING_PASSWORD_ENV, TRACKING_TOKEN_ENV)}
        with temporary_environment(**{**cleared, **self.env(user)}):
            yield

    def add_user(self, user: str, password: str | None = None) -> str:
        """Create a user (as the admin); returns its password."""
        from mlflow.server.auth.client import AuthServiceClient

        password = password or f"{user}-{secrets.token_hex(8)}"
        with self.as_user(ADMIN):
            AuthServiceClient(self.url).create_user(user, password)
        self.passwords[user] = password
        return password

    def grant(self, user: str, resource_type: str, resource_id: str, permission: str) -> None:
        from mlflow.server.auth.client import AuthServiceClient

        with self.as_user(ADMIN):
            AuthServiceClient(self.url).grant_user_permission(user, resource_type, resource_id, permission)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def _auth_config(folder: Path) -> Path:
    """MLflow's basic-auth settings: users in a SQLite file; anyone signed in may read. Checked
    credentials are cached for a minute: without it every request pays a password hash (~0.5 s here)."""
    path = folder / "basic_auth.ini"
    path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n"
    )
    return path


def start_server(
    backend_uri: str, folder: Path, auth: bool = False, workers: int = 2, artifacts: Path | None = None
) -> MlflowServer:
    """Start ``mlflow server`` on ``backend_uri``, serving artifacts from ``artifacts`` (default: under
    ``folder``, which also holds its log and users); wait until it answers."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    artifacts = artifacts or folder / "artifacts"
    env = {
        **clean_environment(),
        "MLFLOW_BACKEND_STORE_URI": backend_uri,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
    ]
    passwords = {}
    if auth:
        passwords[ADMIN] = f"admin-{secrets.token_hex(8)}"
        env.update(
            {
                "MLFLOW_AUTH_CONFIG_PATH": str(_auth_config(folder)),
                "MLFLOW_AUTH_ADMIN_PASSWORD": passwords[ADMIN],
                # One secret for every worker, so a session cookie or CSRF token works on any of them.
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            }
        )
        command += ["--app-name", "basic-auth"]
    log = folder / "server.log"
    with log.open("w") as stream:
        process = subprocess.Popen(
            command, env=env, stdout=stream, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True
        )
    server = MlflowServer(
        url=f"http://127.0.0.1:{port}",
        backend_uri=backend_uri,
        artifacts=artifacts,
        log=log,
        process=process,
        passwords=passwords,
    )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=5) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(
        f"mlflow server did not answer in {START_TIMEOUT_SECONDS} s:\n{log.read_text()[-3000:]}"
    )


# --- The whole pipeline through a server ------------------------------------------------------------


@contextmanager
def watching_command_lines(interval_seconds: float = 0.25) -> Iterator[set[str]]:
    """Every process command line on this machine (``ps -e -ww -o args=``), sampled until the block ends."""
    import threading

    seen: set[str] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            # -ww: whole command lines (ps cuts them at 80 columns when not on a terminal).
            listed = subprocess.run(
                ["ps", "-e", "-ww", "-o", "args="], capture_output=True, text=True, check=False
            )
            seen.update(line.strip() for line in listed.stdout.splitlines())
            stop.wait(interval_seconds)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=30)


@dataclass
class ServedPipeline:
    """Every command of the pipeline, run through ``server`` as the writer, and what they left."""

    server: MlflowServer
    folder: Path
    config: Path
    experiment: str
    model_name: str
    completed: dict[str, subprocess.CompletedProcess]
    command_lines: set[str]

    @property
    def reports(self) -> Path:
        return self.folder / "reports"

    @property
    def scores(self) -> Path:
        return self.folder / "scores.csv"

    def run(self, *args: str, user: str | None = WRITER, **env: str) -> subprocess.CompletedProcess:
        return run_command(self.server, self.config, *args, user=user, **env)

    def runs(self, status: str | None = None) -> list:
        """Every run of the pipeline's experiment, asked of the server as its admin."""
        from mlflow.tracking import MlflowClient

        with self.server.as_user(ADMIN):
            client = MlflowClient(self.server.url)
            experiment = client.get_experiment_by_name(self.experiment)
            clause = f"attributes.status = '{status}'" if status else ""
            return client.search_runs([experiment.experiment_id], filter_string=clause, max_results=5000)

    def stage_runs(self) -> dict:
        """The first parent run of each stage: what :func:`serve_pipeline` ran."""
        from pipeline.tracking import keys

        found: dict = {}
        for run in sorted(self.runs(), key=lambda r: r.info.start_time):
            if run.data.tags.get(keys.TAG_ROLE) == keys.ROLE_STAGE:
                found.setdefault(run.data.tags[keys.TAG_STAGE], run)
        return found


def write_config(folder: Path, **overrides) -> Path:
    """The small test params (tests/conftest.py) with absolute data and notebook paths, in ``folder``."""
    import yaml

    from tests.conftest import PROJECT_ROOT, small_params

    raw = small_params(**overrides)
    raw["dataset"]["path"] = str(PROJECT_ROOT / raw["dataset"]["path"])
    raw["results"]["notebook"] = str(PROJECT_ROOT / raw["results"]["notebook"])
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_command(
    server: MlflowServer,
    config: Path,
    *args: str,
    user: str | None = WRITER,
    timeout: float = 900,
    **env: str,
) -> subprocess.CompletedProcess:
    """``python -m pipeline <args> --config <config>`` as ``user``, in the config's folder."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args, "--config", str(config)],
        env=server.command_env(user, **env),
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def serve_pipeline(server: MlflowServer, folder: Path) -> ServedPipeline:
    """research, optimize, register, deploy, results, report, predict and rollback through ``server``,
    in order, while every process command line is recorded. Stops at the first command that fails,
    except rollback, the last, which has nothing to roll back to after a single deployment."""
    import pandas as pd

    from tests.conftest import PROJECT_ROOT

    experiment, model_name = "server-pipeline", "server-pipeline-model"
    config = write_config(folder, tracking={"experiment": experiment}, register={"model_name": model_name})
    applicants = folder / "applicants.csv"
    pd.read_csv(PROJECT_ROOT / "data" / "german_credit.csv").drop(columns=["default"]).head(40).to_csv(
        applicants, index=False
    )
    reports = ["--output-dir", str(folder / "reports")]
    commands = {
        "research": ["research"],
        "optimize": ["optimize"],
        "register": ["register"],
        "deploy": ["deploy"],
        "results": ["results", *reports],
        "report": ["report", *reports],
        "predict": [
            "predict",
            "--model",
            f"models:/{model_name}@champion",
            "--input",
            str(applicants),
            "--output",
            str(folder / "scores.csv"),
        ],
        "rollback": ["rollback"],
    }
    completed: dict[str, subprocess.CompletedProcess] = {}
    with watching_command_lines() as command_lines:
        for name, args in commands.items():
            completed[name] = run_command(server, config, *args)
            if completed[name].returncode != 0:
                break
    return ServedPipeline(server, folder, config, experiment, model_name, completed, set(command_lines))
