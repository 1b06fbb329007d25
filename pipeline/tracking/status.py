"""What a store holds, through MLflow's client: experiments, runs by status, registered models and
their versions and aliases. For the results stage, the report and ``scripts/check_mlflow_status.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from pipeline.settings import redact
from pipeline.tracking import keys
from pipeline.tracking.lookups import quote_filter_value


def registered_models_frame(uri: str, model_name: str | None = None) -> pd.DataFrame:
    """Registered models and every version as ``MlflowClient`` sees them, one row per version."""
    client = MlflowClient(uri)
    columns = [
        "name",
        "version",
        "aliases",
        "status",
        "run_id",
        "source",
        "created",
        "model_description",
        "tags",
    ]
    models = client.search_registered_models(
        filter_string=f"name = {quote_filter_value(model_name)}" if model_name else None,
        max_results=1000,
    )
    rows = []
    for model in models:
        aliases_of: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases_of.setdefault(str(version), []).append(alias)
        versions = client.search_model_versions(
            f"name = {quote_filter_value(model.name)}", max_results=10_000
        )
        for version in versions:
            rows.append(
                {
                    "name": model.name,
                    "version": int(version.version),
                    "aliases": ",".join(sorted(aliases_of.get(str(version.version), []))),
                    "status": version.status,
                    "run_id": version.run_id,
                    "source": redact(version.source or ""),
                    "created": pd.to_datetime(version.creation_timestamp, unit="ms", utc=True),
                    "model_description": model.description or "",
                    "tags": json.dumps(dict(sorted((version.tags or {}).items()))),
                }
            )
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["name", "version"], ascending=[True, False]).reset_index(drop=True)


def store_overview(uri: str) -> dict[str, Any]:
    """Experiments, runs per status and registered models (with their champion) of a reachable store."""
    client = MlflowClient(uri)
    experiments = []
    for experiment in client.search_experiments(view_type=ViewType.ALL, max_results=1000):
        counts: dict[str, int] = {}
        token = None
        while True:
            page = client.search_runs(
                [experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000, page_token=token
            )
            for run in page:
                counts[run.info.status] = counts.get(run.info.status, 0) + 1
            token = page.token
            if not token:
                break
        experiments.append(
            {
                "experiment_id": experiment.experiment_id,
                "name": experiment.name,
                "lifecycle_stage": experiment.lifecycle_stage,
                "artifact_location": redact(experiment.artifact_location or ""),
                "runs_by_status": dict(sorted(counts.items())),
            }
        )
    models = []
    for model in client.search_registered_models(max_results=1000):
        aliases = {alias: str(version) for alias, version in sorted((model.aliases or {}).items())}
        name_filter = f"name = {quote_filter_value(model.name)}"
        versions = client.search_model_versions(name_filter, max_results=10_000)
        models.append(
            {
                "name": model.name,
                "versions": len(versions),
                "aliases": aliases,
                "champion": aliases.get(keys.ALIAS_CHAMPION),
            }
        )
    totals: dict[str, int] = {}
    for experiment in experiments:
        for status, count in experiment["runs_by_status"].items():
            totals[status] = totals.get(status, 0) + count
    return {
        "experiments": experiments,
        "runs_by_status": dict(sorted(totals.items())),
        "registered_models": models,
    }
