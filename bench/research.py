"""Stage 1 benchmark: the research stage with MLflow against the same work without it.

Prints the stage's wall time on the default data (a fresh SQLite store), the same portfolio's
cross-validation without any tracking, and their ratio (the tracking overhead).
Targets: the stage within 60 s on 2 cores; overhead at most 1.10.

    .venv/bin/python bench/research.py [--config params.yaml] [--profile NAME] [--repeats 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from pipeline.config import load_config
from pipeline.data import load_dataset, split_dataset
from pipeline.selection import evaluate_portfolio
from pipeline.settings import ARTIFACT_ROOT_ENV, TRACKING_URI_ENV, temporary_environment
from pipeline.stages import research
from pipeline.tracking import runs

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "params.yaml"))
    parser.add_argument("--profile", default=None)
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two measurements this often")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = load_config(args.config, profile=args.profile)

    stage_times, plain_times = [], []
    with (
        tempfile.TemporaryDirectory(prefix="bench-research-") as folder,
        temporary_environment(
            **{TRACKING_URI_ENV: f"sqlite:///{folder}/mlflow.db", ARTIFACT_ROOT_ENV: f"{folder}/artifacts"}
        ),
    ):  # Warm-up: creates the SQLite schema and imports, which a real store already has.
        runs.connect(config)
        for _ in range(args.repeats):
            started = time.perf_counter()
            dataset = load_dataset(config)
            split = split_dataset(dataset, config.split.test_size, config.seed)
            evaluate_portfolio(config, dataset, split)
            plain_times.append(time.perf_counter() - started)

            started = time.perf_counter()
            research.run(config)
            stage_times.append(time.perf_counter() - started)

    stage, plain = min(stage_times), min(plain_times)
    candidates = len(config.research.portfolio)
    print(f"candidates: {candidates}, cv folds: {config.research.cv_folds}, cores: {os.cpu_count()}")
    print(f"research stage with MLflow (SQLite): {stage:7.2f} s   (target <= 60 s)")
    print(f"same portfolio CV without MLflow:    {plain:7.2f} s")
    print(f"tracking overhead ratio:             {stage / plain:7.3f}   (target <= 1.10)")


if __name__ == "__main__":
    main()
