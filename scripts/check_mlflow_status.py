#!/usr/bin/env python
"""Health of the MLflow tracking store: reachable?, schema revision, experiments, runs, champions.

Writes ``reports/mlflow_status_report.json`` (atomically) and prints a short summary.
Exit 0 when the store answers, 1 when it cannot be reached (one line on stderr, password masked),
2 on a bad config, when a tracking server refuses the credentials or the user, or with ``--team``
when a team's database store would keep artifacts on this machine. The CI workflow uses it to wait
for the store before stage 1.

    python scripts/check_mlflow_status.py [--config params.yaml] [--output PATH] [--retries N] [--team]
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import mlflow

from pipeline.config import DEFAULT_CONFIG_PATH, load_config
from pipeline.errors import PipelineError, TrackingUnavailableError
from pipeline.files import write_json_atomic
from pipeline.settings import redact, redact_uri, tracking_uri
from pipeline.tracking import status, store
from pipeline.tracking.session import team_artifact_problem

REPORT_NAME = "mlflow_status_report.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    parser.add_argument("--output", type=Path, help=f"default: <results.output_dir>/{REPORT_NAME}")
    parser.add_argument("--retries", type=int, help="connection retries (default: tracking.connect_retries)")
    parser.add_argument("--backoff", type=float, help="first retry delay in seconds, doubling")
    parser.add_argument(
        "--team", action="store_true", help="the store is a team's: its artifacts must outlive this machine"
    )
    return parser.parse_args(argv)


def collect(uri: str, retries: int, backoff: float) -> dict:
    """The status report; ``reachable`` is False (with ``error``) when the store does not answer."""
    report: dict = {
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mlflow_version": mlflow.__version__,
        "tracking_uri": redact_uri(uri),
        "reachable": False,
    }
    try:
        store.wait_until_reachable(uri, retries, backoff)
    except TrackingUnavailableError as error:
        report["error"] = str(error)
        return report
    report["reachable"] = True
    current, expected = store.schema_revisions(uri)
    report["schema_revision"] = current
    report["schema_expected"] = expected
    report["schema_up_to_date"] = None if current is None else current == expected
    if current is not None and current != expected:
        # MLflow refuses to open an out-of-date store; reading it would fail, so say what to do.
        report["error"] = "schema out of date: back up and run `python -m pipeline db-upgrade`"
        return report
    try:
        report.update(status.store_overview(uri))
    except mlflow.exceptions.MlflowException as error:
        refused = store.access_error(error, uri)  # a tracking server that will not let us in
        if refused is None:
            raise
        report["error"] = f"{refused.kind}: {refused}"
        report["refused"] = True
        return report
    if current is None and store.schema_revisions(uri)[0] == expected:
        # An empty database: MLflow created its tables on first contact.
        report["schema_revision"] = expected
        report["schema_up_to_date"] = True
        report["schema_created"] = True
    return report


def summary(report: dict) -> str:
    lines = [
        f"MLflow {report['mlflow_version']} store {report['tracking_uri']}: "
        + ("reachable" if report["reachable"] else "UNREACHABLE"),
    ]
    if not report["reachable"]:
        return lines[0]
    lines.append(
        f"schema revision {report['schema_revision']} (this MLflow needs {report['schema_expected']})"
    )
    for experiment in report.get("experiments", []):
        runs = ", ".join(f"{k} {v}" for k, v in experiment["runs_by_status"].items()) or "no runs"
        lines.append(f"experiment {experiment['name']} ({experiment['experiment_id']}): {runs}")
    for model in report.get("registered_models", []):
        lines.append(
            f"model {model['name']}: {model['versions']} version(s), champion {model['champion'] or '-'}"
        )
    if report.get("error"):
        lines.append(report["error"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except PipelineError as error:
        print(f"{error.kind}: {redact(str(error))}", file=sys.stderr)
        return error.exit_code
    uri = tracking_uri(config.root)
    retries = config.tracking.connect_retries if args.retries is None else args.retries
    backoff = config.tracking.connect_backoff_seconds if args.backoff is None else args.backoff
    report = collect(uri, retries, backoff)
    output = args.output or config.resolve(config.results.output_dir) / REPORT_NAME
    write_json_atomic(output, report)
    if not report["reachable"]:
        print(f"tracking store unreachable: {redact(report['error'])}", file=sys.stderr)
        return 1
    if report.get("refused"):
        print(redact(report["error"]), file=sys.stderr)
        return 2
    print(summary(report))
    print(f"report: {output}")
    if args.team:
        existing = {e["name"]: e["artifact_location"] for e in report.get("experiments", [])}
        problem = team_artifact_problem(config, uri, existing.get(config.tracking.experiment))
        if problem is not None:
            print(f"config error: {problem}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
