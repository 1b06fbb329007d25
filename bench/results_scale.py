"""Benchmark (not a test): the results stage on a store that has grown for years.

Creates a fresh PostgreSQL database (unique name, dropped at the end), lets MLflow create
its own schema once, then bulk-loads it with COPY: 10,000 runs, 200 params, 1,000,000
metric rows (plus their latest_metrics), tags, one registered model with 200 versions.
It then times ``python -m pipeline results`` in a child process (wall clock and peak RSS) on
the database by SQL, then through a real ``mlflow server`` on that database (the API path: the core
tables read through MLflow's REST API into a local copy), and, for comparison,
``mlflow.search_runs`` over the same experiment.

    .venv/bin/python bench/results_scale.py [--admin-dsn postgresql://postgres@127.0.0.1:5432/postgres]

Targets: the stage in at most 20 s and under 1 GB peak memory by SQL; through the API within
3 times the SQL path.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.tracking import keys, snapshot
from tests.integration.servers import start_server

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "loan-default"
MODEL = "loan-default-classifier"
N_RUNS = 10_000
N_PARAMS = 200
N_METRIC_ROWS = 1_000_000
N_VERSIONS = 200
N_RESEARCH = 100  # research parents, 9 candidates each
N_CANDIDATES = 9
N_OPTIMIZE = 100  # optimization parents; the rest of the runs are their trials
N_REGISTER = N_VERSIONS
METRIC_KEYS = ("cv_roc_auc", "cv_expected_cost", "loss", "fit_seconds", "threshold")
RESEARCH_KEYS = ("cv_roc_auc_mean", "cv_roc_auc_std", "cv_expected_cost_mean", "cv_threshold_mean", "loss")
OPTIMIZE_KEYS = ("cv_roc_auc", "cv_expected_cost", "threshold", "test_roc_auc", "test_expected_cost")


def copy_rows(cursor, table: str, columns: tuple[str, ...], rows) -> int:
    """COPY rows (tuples; None for NULL) into ``table`` through one in-memory tab-separated buffer."""
    buffer = io.StringIO()
    count = 0
    for row in rows:
        buffer.write("\t".join("\\N" if v is None else str(v) for v in row))
        buffer.write("\n")
        count += 1
    buffer.seek(0)
    cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buffer)
    return count


def build_plan(rng: np.random.Generator, start_ms: int) -> dict:
    """Run ids, roles and parents of a realistic history: research, optimization and register runs."""
    runs = []  # (run_id, name, stage, role, parent, family, start)
    t = start_ms
    families = ("logistic_regression", "random_forest", "lightgbm", "hist_gradient_boosting")
    for r in range(N_RESEARCH):
        parent = uuid.uuid4().hex
        runs.append((parent, f"research-{r}", "research", "stage", None, None, t))
        for c in range(N_CANDIDATES):
            runs.append(
                (uuid.uuid4().hex, f"candidate-{c}", "research", "candidate", parent, families[c % 4], t)
            )
        t += 3_600_000
    n_trials = N_RUNS - len(runs) - N_OPTIMIZE - N_REGISTER
    per_optimize = n_trials // N_OPTIMIZE
    optimize_ids = []
    for o in range(N_OPTIMIZE):
        parent = uuid.uuid4().hex
        optimize_ids.append(parent)
        family = families[o % 4]
        runs.append((parent, f"optimize-{o}", "optimize", "stage", runs[(o % N_RESEARCH) * 10][0], family, t))
        extra = n_trials - per_optimize * N_OPTIMIZE if o == N_OPTIMIZE - 1 else 0
        for k in range(per_optimize + extra):
            runs.append((uuid.uuid4().hex, f"trial-{k}", "optimize", "trial", parent, family, t))
        t += 3_600_000
    register_ids = []
    for v in range(N_REGISTER):
        run_id = uuid.uuid4().hex
        register_ids.append(run_id)
        runs.append((run_id, f"register-{v}", "register", "stage", optimize_ids[v // 2], None, t))
        t += 60_000
    assert len(runs) == N_RUNS, len(runs)
    return {"runs": runs, "optimize_ids": optimize_ids, "register_ids": register_ids}


def fill(dsn: str, experiment_id: int, artifact_root: str) -> dict[str, int]:
    rng = np.random.default_rng(0)
    start_ms = int(time.time() * 1000) - 400 * 24 * 3_600_000
    plan = build_plan(rng, start_ms)
    runs = plan["runs"]
    counts: dict[str, int] = {}
    connection = psycopg2.connect(dsn)
    with connection, connection.cursor() as cursor:
        durations = rng.integers(1_000, 600_000, len(runs))
        statuses = np.where(rng.random(len(runs)) < 0.03, "FAILED", "FINISHED")
        counts["runs"] = copy_rows(
            cursor,
            "runs",
            tuple(column for column in snapshot.COLUMNS["runs"] if column != "deleted_time"),
            (
                (
                    rid,
                    name,
                    "LOCAL",
                    "bench",
                    "",
                    "bench",
                    statuses[i] if role != "stage" else "FINISHED",
                    start,
                    start + int(durations[i]),
                    "",
                    "active",
                    f"{artifact_root}/{rid}/artifacts",
                    experiment_id,
                )
                for i, (rid, name, stage, role, parent, family, start) in enumerate(runs)
            ),
        )

        def tag_rows():
            for rid, name, stage, role, parent, family, _ in runs:
                yield (keys.TAG_STAGE, stage, rid)
                yield (keys.TAG_ROLE, role, rid)
                yield (keys.TAG_RUN_NAME, name, rid)
                if family:
                    key = keys.TAG_BEST_FAMILY if role == "stage" else keys.TAG_FAMILY
                    yield (key, family, rid)
                if role == "candidate":
                    yield (keys.TAG_CANDIDATE, name, rid)
                if parent and role != "stage":
                    yield (keys.TAG_PARENT_RUN, parent, rid)
                if stage == "optimize" and role == "stage":
                    yield (keys.TAG_RESEARCH_RUN, parent, rid)
                    yield (keys.TAG_CALIBRATION, "sigmoid", rid)
                    yield (keys.TAG_THRESHOLD, "0.21", rid)
                if stage == "research" and role == "stage":
                    yield (keys.TAG_DATASET_DIGEST, "07c9c60b19bb2811", rid)
                    yield (keys.TAG_BEST_CANDIDATE, "candidate-0", rid)
            for v, rid in enumerate(plan["register_ids"], start=1):
                yield (keys.TAG_REGISTER_OPTIMIZE_RUN, plan["optimize_ids"][(v - 1) // 2], rid)
                yield (keys.TAG_REGISTER_MODEL_NAME, MODEL, rid)
                yield (keys.TAG_REGISTER_VERSION, str(v), rid)
                yield (keys.TAG_REGISTER_DECISION, "promoted" if v % 3 else "rejected", rid)
                yield (keys.TAG_REGISTER_REASON, "benchmark", rid)

        counts["tags"] = copy_rows(cursor, "tags", ("key", "value", "run_uuid"), tag_rows())

        trials = [r for r in runs if r[3] == "trial"][-(N_PARAMS // 2) :]  # the latest study
        counts["params"] = copy_rows(
            cursor,
            "params",
            ("key", "value", "run_uuid"),
            (
                row
                for r in trials
                for row in (("C", f"{rng.uniform(0.01, 10):.4f}", r[0]), ("max_depth", "5", r[0]))
            ),
        )

        # 1,000,000 metric rows: every run logs its metric keys over steps (training curves).
        steps = N_METRIC_ROWS // (N_RUNS * len(METRIC_KEYS))
        keys_of = {"candidate": RESEARCH_KEYS, "stage": OPTIMIZE_KEYS}

        def metric_rows():
            for _i, (rid, _, _, role, _, _, start) in enumerate(runs):
                keys = keys_of.get(role, METRIC_KEYS)
                values = rng.uniform(0.5, 0.9, (len(keys), steps))
                for k, key in enumerate(keys):
                    for step in range(steps):
                        yield (key, f"{values[k, step]:.6f}", start + step * 1000, rid, step, "false")

        counts["metrics"] = copy_rows(
            cursor, "metrics", ("key", "value", "timestamp", "run_uuid", "step", "is_nan"), metric_rows()
        )
        cursor.execute(
            """
            INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)
            SELECT DISTINCT ON (run_uuid, key) key, value, timestamp, step, is_nan, run_uuid
            FROM metrics ORDER BY run_uuid, key, step DESC, timestamp DESC
            """
        )
        counts["latest_metrics"] = cursor.rowcount

        now = int(time.time() * 1000)
        cursor.execute(
            "INSERT INTO registered_models (name, creation_time, last_updated_time, description, workspace) "
            "VALUES (%s, %s, %s, %s, 'default')",
            (MODEL, now, now, "benchmark model"),
        )
        counts["model_versions"] = copy_rows(
            cursor,
            "model_versions",
            (
                "name",
                "version",
                "creation_time",
                "last_updated_time",
                "user_id",
                "current_stage",
                "source",
                "run_id",
                "status",
                "storage_location",
                "workspace",
            ),
            (
                (
                    MODEL,
                    v,
                    start_ms + v * 60_000,
                    start_ms + v * 60_000,
                    "bench",
                    "None",
                    f"{artifact_root}/{plan['optimize_ids'][(v - 1) // 2]}/artifacts/model",
                    plan["optimize_ids"][(v - 1) // 2],
                    "READY",
                    f"{artifact_root}/{plan['optimize_ids'][(v - 1) // 2]}/artifacts/model",
                    "default",
                )
                for v in range(1, N_VERSIONS + 1)
            ),
        )

        def version_tags():
            for v in range(1, N_VERSIONS + 1):
                for key, value in (
                    ("optimize_run_id", plan["optimize_ids"][(v - 1) // 2]),
                    (keys.VTAG_DECISION, "promoted" if v % 3 else "rejected"),
                    (keys.VTAG_REASON, "benchmark"),
                    (keys.VTAG_STATUS, "done"),
                    ("test_roc_auc", f"{0.7 + v / 2000:.4f}"),
                    ("test_expected_cost", f"{0.6 - v / 4000:.4f}"),
                    ("threshold", "0.21"),
                ):
                    yield (key, value, MODEL, v, "default")

        counts["model_version_tags"] = copy_rows(
            cursor, "model_version_tags", ("key", "value", "name", "version", "workspace"), version_tags()
        )
        for alias, version in (
            ("champion", N_VERSIONS - 1),
            ("previous", N_VERSIONS - 2),
            ("challenger", N_VERSIONS),
        ):
            cursor.execute(
                "INSERT INTO registered_model_aliases (alias, version, name, workspace) "
                "VALUES (%s, %s, %s, 'default')",
                (alias, version, MODEL),
            )
        cursor.execute("ANALYZE")
    connection.close()
    return counts


_PEAK = "PEAK_RSS_KIB"


def timed_child(code: str, env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``code`` in a fresh interpreter: wall seconds, its own peak RSS (MiB) and its stdout."""
    # VmHWM is this process's own high-water mark; ru_maxrss would carry over the parent's
    # peak across fork and exec (Linux keeps it in the signal struct).
    peak = "next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM'))"
    wrapped = f"{code}\nimport sys\nprint({_PEAK!r}, {peak}, file=sys.stderr)\n"
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", wrapped], env=env, capture_output=True, text=True, cwd=PROJECT_ROOT
    )
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"child failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    peak_kib = next(int(line.split()[1]) for line in completed.stderr.splitlines() if line.startswith(_PEAK))
    return seconds, peak_kib / 1024, completed.stdout


def time_results(env: dict[str, str], output: Path, label: str) -> tuple[float, float]:
    """``python -m pipeline results`` in a child process: wall seconds and peak RSS (MiB), printed."""
    stage = (
        "import sys\nfrom pipeline.cli import main\n"
        f"code = main(['results', '--output-dir', {str(output)!r}, '-q'])\n"
        "assert code == 0, code\n"
    )
    seconds, peak, stdout = timed_child(stage, env)
    manifest = json.loads((output / "manifest.json").read_text())
    size = sum(f["bytes"] for f in manifest["files"])
    print(
        f"{label}: {seconds:.1f} s wall ({manifest['seconds']:.1f} s in the stage), "
        f"peak RSS {peak:.0f} MiB, {len(manifest['files'])} files, {size / 2**20:.0f} MiB written"
    )
    print(stdout.splitlines()[0])
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    name = f"loan_mlops_bench_{uuid.uuid4().hex[:10]}"
    base = args.admin_dsn.rsplit("/", 1)[0]
    dsn = f"{base}/{name}"
    uri = dsn.replace("postgresql://", "postgresql+psycopg2://")
    admin = psycopg2.connect(args.admin_dsn)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        with tempfile.TemporaryDirectory() as folder:
            from mlflow.tracking import MlflowClient

            started = time.perf_counter()
            client = MlflowClient(uri)  # MLflow creates and migrates its own schema
            experiment_id = int(
                client.create_experiment(EXPERIMENT, artifact_location=f"file://{folder}/art")
            )
            schema_seconds = time.perf_counter() - started
            started = time.perf_counter()
            counts = fill(dsn, experiment_id, f"file://{folder}/art")
            fill_seconds = time.perf_counter() - started
            print(f"schema created in {schema_seconds:.1f} s; filled in {fill_seconds:.1f} s")
            print(f"rows: {json.dumps(counts)}")

            env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
            seconds, peak = time_results(env, Path(folder) / "reports", "results stage by SQL")

            server = start_server(uri, Path(folder) / "server")
            try:
                api_env = {**os.environ, "MLFLOW_TRACKING_URI": server.url}
                label = "results stage by API (mlflow server, 2 workers, same machine)"
                api_seconds, _ = time_results(api_env, Path(folder) / "reports-api", label)
            finally:
                server.stop()
            ratio = api_seconds / seconds
            print(f"API path / SQL path: {ratio:.2f} (target within 3): {'met' if ratio <= 3 else 'NOT met'}")

            search = (
                "import time, mlflow\n"
                f"mlflow.set_tracking_uri({uri!r})\n"
                "t = time.perf_counter()\n"
                f"frame = mlflow.search_runs(experiment_names=[{EXPERIMENT!r}], max_results=100000)\n"
                "print(f'{len(frame)} rows x {frame.shape[1]} columns in {time.perf_counter() - t:.1f} s')\n"
            )
            search_seconds, search_peak, stdout = timed_child(search, env)
            print(
                f"mlflow.search_runs: {stdout.strip()} ({search_seconds:.1f} s with start-up, "
                f"peak RSS {search_peak:.0f} MiB)"
            )
            targets = seconds <= 20 and peak < 1024
            print(f"targets (<= 20 s, < 1 GiB) for the stage: {'met' if targets else 'NOT met'}")
    finally:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


if __name__ == "__main__":
    main()
