"""Benchmark (not a test): the scoring server's latency beside batch scoring, on the same rows.

Builds a champion in a throwaway SQLite store with the real stages 1-3 on the ``fast`` profile (or
takes ``--model`` from the configured store), serves it with ``mlflow models serve`` on a free
loopback port (as the deploy stage does), and measures:

- ``/invocations`` latency for 1 row and for 100 rows (p50 and p99 over many requests, after a
  warm-up), JSON ``dataframe_split`` bodies of raw held-out rows;
- the batch command (``python -m pipeline predict``) on the same 100 rows: wall clock of the whole
  command, and rows per second of its scoring path alone (:func:`pipeline.scoring.score`, in process).

    .venv/bin/python bench/serving.py [--model models:/NAME@champion] [--requests 300]
        [--config params.yaml] [--profile fast]

Target: p50 at most 20 ms for one row on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline import serving, smoke
from pipeline.config import load_config
from pipeline.deployment import holdout_rows
from pipeline.scoring import score
from pipeline.settings import ARTIFACT_ROOT_ENV, TRACKING_URI_ENV, tracking_uri
from pipeline.tracking.model_io import load_model
from pipeline.tracking.runs import connect, quiet_artifact_downloads

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WARM_UP = 20


def build_champion(folder: Path, config_path: Path, profile: str) -> str:
    """Stages 1-3 into a fresh SQLite store; the champion's URI."""
    os.environ[TRACKING_URI_ENV] = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ[ARTIFACT_ROOT_ENV] = str(folder / "artifacts")
    for stage in ("research", "optimize", "register"):
        command = [sys.executable, "-m", "pipeline", stage, "--quiet", "--config", str(config_path)]
        command += ["--profile", profile] if profile else []
        subprocess.run(command, check=True, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL)
    name = load_config(config_path).registration.model_name
    return f"models:/{name}@champion"


def timed(action, repeats: int = 50, warm_up: int = 5) -> np.ndarray:
    """Milliseconds of each of ``repeats`` calls of ``action``, after ``warm_up`` untimed ones."""
    for _ in range(warm_up):
        action()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    return np.array(seconds) * 1000.0


def latencies(url: str, body: str, requests: int) -> np.ndarray:
    """Milliseconds per ``/invocations`` request, client side (HTTP and JSON included)."""

    def invoke() -> None:
        answer = serving.request(f"{url}/invocations", body)
        if answer.status != 200:
            raise SystemExit(f"the server answered {answer.status}: {answer.message()[:300]}")

    return timed(invoke, requests, WARM_UP)


def batch_command_seconds(model_uri: str, rows, folder: Path) -> float:
    source, output = folder / "rows.csv", folder / "scored.csv"
    rows.to_csv(source, index=False)
    command = [sys.executable, "-m", "pipeline", "predict", "--quiet", "--model", model_uri]
    started = time.perf_counter()
    subprocess.run([*command, "--input", str(source), "--output", str(output)], check=True, cwd=PROJECT_ROOT)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model of the configured store (default: build a champion)")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per payload size")
    parser.add_argument("--config", type=Path, default=PROJECT_ROOT / "params.yaml", help="for building")
    parser.add_argument("--profile", default="fast", help="profile the champion is built with ('' for none)")
    args = parser.parse_args()
    config = load_config(args.config)
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        folder = Path(scratch)
        model_uri = args.model or build_champion(folder, args.config, args.profile)
        connect(config)
        with quiet_artifact_downloads():
            loaded = load_model(model_uri)
        rows = holdout_rows(config, loaded).head(100)
        with serving.scoring_server(
            model_uri, tracking_uri(config.root), config.deploy.startup_timeout_seconds, folder / "server.log"
        ) as (url, start_seconds):
            one = latencies(url, smoke.split_body(rows.head(1)), args.requests)
            hundred = latencies(url, smoke.split_body(rows), max(args.requests // 3, 30))
        scorer = loaded.scorer
        in_process_one, in_process = (
            timed(lambda: score(scorer, rows.head(1))),
            timed(lambda: score(scorer, rows)),
        )
        command_seconds = batch_command_seconds(model_uri, rows, folder)

    family = loaded.metadata.get("best_family", "?")
    print(f"model {model_uri} ({family}); server up in {start_seconds:.1f} s; {os.cpu_count()} cores")
    print(f"{'path':<46} {'p50 ms':>9} {'p99 ms':>9} {'rows/s':>10}")
    for label, milliseconds, count in (
        ("/invocations, 1 row", one, 1),
        ("/invocations, 100 rows", hundred, 100),
        ("batch scoring path (in process), 1 row", in_process_one, 1),
        ("batch scoring path (in process), 100 rows", in_process, 100),
        ("batch command (python -m pipeline predict)", np.array([command_seconds * 1000.0]), 100),
    ):
        p50, p99 = np.percentile(milliseconds, 50), np.percentile(milliseconds, 99)
        tail = f"{p99:9.2f}" if len(milliseconds) > 1 else f"{'':>9}"
        print(f"{label:<46} {p50:9.2f} {tail} {count * 1000.0 / p50:10.0f}")
    target = "met" if np.percentile(one, 50) <= 20 else "MISSED"
    print(f"target p50 <= 20 ms for one row: {target}")


if __name__ == "__main__":
    main()
