"""Run whole pipelines (research -> optimize -> register) as separate processes, for the load test
and bench/load.py, and watch the database's connection count while they run."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.settings import ARTIFACT_ROOT_ENV, TRACKING_URI_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STAGES = ("research", "optimize", "register")


def tiny_params(experiment: str, model_name: str) -> dict:
    """The shipped params with the smallest budgets that still exercise every stage."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw.pop("profiles", None)
    raw["dataset"]["path"] = str(PROJECT_ROOT / raw["dataset"]["path"])
    raw["tracking"].update({"experiment": experiment, "artifact_location": "artifacts"})
    raw["research"].update(
        {"cv_folds": 3, "n_jobs": 1, "use": ["dummy_prior", "logistic_regression", "naive_bayes"]}
    )
    raw["optimize"].update(
        {
            "top_k": 1,
            "cv_folds": 3,
            "n_trials": 2,
            "n_jobs": 1,
            "permutation_repeats": 1,
        }
    )
    raw["register"].update({"model_name": model_name, "bootstrap_samples": 200})
    return raw


@dataclass
class PipelineOutcome:
    name: str
    returncodes: list[int] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return len(self.returncodes) == len(STAGES) and not any(self.returncodes)


def run_pipeline(name: str, config_path: Path, tracking_uri: str, artifact_root: Path) -> PipelineOutcome:
    env = {
        **os.environ,
        TRACKING_URI_ENV: tracking_uri,
        ARTIFACT_ROOT_ENV: str(artifact_root),
        "TQDM_DISABLE": "1",
        "PIPELINE_PROFILE": "",
    }
    outcome = PipelineOutcome(name)
    started = time.perf_counter()
    for stage in STAGES:
        completed = subprocess.run(
            [sys.executable, "-m", "pipeline", stage, "--quiet", "--config", str(config_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
            cwd=config_path.parent,
        )
        outcome.returncodes.append(completed.returncode)
        outcome.stderr.append(completed.stderr)
        if completed.returncode:
            break
    outcome.seconds = time.perf_counter() - started
    return outcome


def write_configs(folder: Path, specs: list[tuple[str, str, str]]) -> list[tuple[str, Path]]:
    """``specs``: (pipeline name, experiment, model name) -> config files in their own folders."""
    paths = []
    for name, experiment, model_name in specs:
        home = folder / name
        home.mkdir(parents=True, exist_ok=True)
        path = home / "params.yaml"
        path.write_text(yaml.safe_dump(tiny_params(experiment, model_name), sort_keys=False))
        paths.append((name, path))
    return paths


def run_concurrently(
    configs: list[tuple[str, Path]], tracking_uri: str, artifact_root: Path
) -> list[PipelineOutcome]:
    outcomes: dict[str, PipelineOutcome] = {}

    def work(name: str, path: Path) -> None:
        outcomes[name] = run_pipeline(name, path, tracking_uri, artifact_root)

    threads = [threading.Thread(target=work, args=item) for item in configs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [outcomes[name] for name, _ in configs]


class ConnectionWatcher:
    """Samples ``pg_stat_activity`` for one database and keeps the peak connection count."""

    def __init__(self, admin_dsn: str, database: str, interval: float = 0.1) -> None:
        self.admin_dsn, self.database, self.interval = admin_dsn, database, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        import psycopg2

        connection = psycopg2.connect(self.admin_dsn)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                while not self._stop.is_set():
                    cursor.execute(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = %s AND pid <> pg_backend_pid()",
                        (self.database,),
                    )
                    self.peak = max(self.peak, cursor.fetchone()[0])
                    time.sleep(self.interval)
        finally:
            connection.close()

    def __enter__(self) -> ConnectionWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
