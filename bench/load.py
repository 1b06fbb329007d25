"""Load benchmark: four whole pipelines (research -> optimize -> register) against one PostgreSQL,
started at once, against the same four run one after another. Prints both wall times, their ratio,
and the peak connection count seen in pg_stat_activity.

    .venv/bin/python bench/load.py [--admin-dsn postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.load_harness import ConnectionWatcher, run_concurrently, run_pipeline, write_configs

SPECS = [
    ("shared_a", "load-shared", "load-shared-model"),
    ("shared_b", "load-shared", "load-shared-model"),
    ("other_c", "load-c", "load-c-model"),
    ("other_d", "load-d", "load-d-model"),
]


def _database(admin_dsn: str, create: bool, name: str) -> None:
    connection = psycopg2.connect(admin_dsn)
    connection.autocommit = True
    with connection.cursor() as cursor:
        if create:
            cursor.execute(f'CREATE DATABASE "{name}"')
        else:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
    connection.close()


def measure(admin_dsn: str, concurrent: bool) -> tuple[float, int, bool]:
    name = f"loan_mlops_bench_{uuid.uuid4().hex[:10]}"
    _database(admin_dsn, True, name)
    uri = admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://") + f"/{name}"
    try:
        with tempfile.TemporaryDirectory(prefix="bench-load-") as folder:
            configs = write_configs(Path(folder), SPECS)
            artifacts = Path(folder) / "artifacts"
            with ConnectionWatcher(admin_dsn, name) as watcher:
                started = time.perf_counter()
                if concurrent:
                    outcomes = run_concurrently(configs, uri, artifacts)
                else:
                    outcomes = [run_pipeline(n, p, uri, artifacts) for n, p in configs]
                seconds = time.perf_counter() - started
            return seconds, watcher.peak, all(o.ok for o in outcomes)
    finally:
        _database(admin_dsn, False, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    sequential, seq_peak, seq_ok = measure(args.admin_dsn, concurrent=False)
    concurrent, con_peak, con_ok = measure(args.admin_dsn, concurrent=True)
    print(
        f"4 pipelines one after another: {sequential:7.1f} s  (all ok: {seq_ok}, peak connections {seq_peak})"
    )
    print(
        f"4 pipelines at once:           {concurrent:7.1f} s  (all ok: {con_ok}, peak connections {con_peak})"
    )
    print(f"concurrent / sequential:       {concurrent / sequential:7.2f}")


if __name__ == "__main__":
    main()
