"""Builds a tracking store for the results tests: a real research run (stage 1), then
optimization runs, register runs and registered versions faked with plain MLflow calls,
following the hand-over contract of stages 2 and 3."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pipeline.config import PipelineConfig
from pipeline.stages import research
from pipeline.tracking import keys

MODEL_NAME = "loan-default-classifier"


@dataclass(frozen=True)
class FakeStore:
    uri: str
    experiment_id: str
    research: research.ResearchResult
    optimize_run_ids: list[str]
    register_run_ids: list[str]
    champion_version: str
    challenger_version: str
    previous_version: str
    trial_run_ids: list[str]


def _test_scores(seed: int, strength: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, 250)
    score = np.clip(0.5 + strength * (y_true - 0.5) + rng.normal(0, 0.25, 250), 0, 1)
    return pd.DataFrame({"row_index": np.arange(250), "y_true": y_true, "score": score})


def _fake_optimize(
    client: MlflowClient, experiment_id: str, result: research.ResearchResult, number: int, family: str
) -> tuple[str, list[str]]:
    tags = {
        keys.TAG_STAGE: "optimize",
        keys.TAG_ROLE: "stage",
        keys.TAG_DATASET_DIGEST: result.dataset_digest,
        keys.TAG_RESEARCH_RUN: result.run_id,
        keys.TAG_BEST_FAMILY: family,
        keys.TAG_TUNED_FAMILIES: json.dumps([family]),
        keys.TAG_CALIBRATION: "sigmoid",
        keys.TAG_THRESHOLD: repr(0.2 + 0.01 * number),
        f"{keys.TAG_STUDY_PREFIX}{family}": f"study-{number}",
    }
    run = client.create_run(experiment_id, run_name=f"optimize-{number}", tags=tags)
    run_id = run.info.run_id
    scores = _test_scores(number, 0.2 + 0.1 * number)
    metrics = {
        "threshold": 0.2 + 0.01 * number,
        "cv_roc_auc": 0.76 + 0.01 * number,
        "cv_expected_cost": 0.6 - 0.01 * number,
        "test_roc_auc": 0.74 + 0.01 * number,
        "test_average_precision": 0.55,
        "test_expected_cost": 0.62 - 0.01 * number,
    }
    client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
    client.log_text(run_id, scores.to_csv(index=False), keys.ARTIFACT_TEST_SCORES)
    trial_ids = []
    for trial in range(3):
        child = client.create_run(
            experiment_id,
            run_name=f"trial-{trial}",
            tags={
                keys.TAG_STAGE: "optimize",
                keys.TAG_ROLE: "trial",
                keys.TAG_FAMILY: family,
                keys.TAG_PARENT_RUN: run_id,
            },
        )
        client.log_batch(
            child.info.run_id,
            params=[Param("C", str(10.0 ** (trial - 1))), Param("class_weight", "balanced")],
            metrics=[
                Metric("cv_roc_auc", 0.70 + 0.02 * trial, 0, 0),
                Metric("cv_expected_cost", 0.7 - 0.02 * trial, 0, 0),
            ],
        )
        client.set_terminated(child.info.run_id, "FINISHED")
        trial_ids.append(child.info.run_id)
    client.set_terminated(run_id, "FINISHED")
    return run_id, trial_ids


def _fake_register(
    client: MlflowClient, experiment_id: str, optimize_run_id: str, version: str, decision: str
) -> str:
    tags = {
        keys.TAG_STAGE: "register",
        keys.TAG_ROLE: "stage",
        keys.TAG_REGISTER_OPTIMIZE_RUN: optimize_run_id,
        keys.TAG_REGISTER_MODEL_NAME: MODEL_NAME,
        keys.TAG_REGISTER_VERSION: version,
        keys.TAG_REGISTER_DECISION: decision,
        keys.TAG_REGISTER_REASON: f"gate says {decision}",
    }
    run = client.create_run(experiment_id, run_name=f"register-v{version}", tags=tags)
    client.log_batch(run.info.run_id, tags=[RunTag(keys.TAG_REGISTER_DECISION, decision)])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def populate(config: PipelineConfig, uri: str) -> FakeStore:
    """Stage 1 for real, then three optimization runs and three registered versions:
    v1 promoted then archived (``previous``), v2 promoted (``champion``), v3 rejected (``challenger``)."""
    result = research.run(config)
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(config.tracking.experiment).experiment_id
    family = result.ranked_families[0]
    optimize_ids, trial_ids, register_ids, versions = [], [], [], []
    client.create_registered_model(MODEL_NAME, description="loan default probability")
    for number, decision in enumerate(("promoted", "promoted", "rejected"), start=1):
        optimize_id, trials = _fake_optimize(client, experiment_id, result, number, family)
        optimize_ids.append(optimize_id)
        trial_ids += trials
        source = f"{client.get_run(optimize_id).info.artifact_uri}/model"
        version = client.create_model_version(MODEL_NAME, source, run_id=optimize_id).version
        versions.append(str(version))
        version_tags = {
            "optimize_run_id": optimize_id,
            "research_run_id": result.run_id,
            keys.TAG_DATASET_DIGEST: result.dataset_digest,
            "threshold": repr(0.2 + 0.01 * number),
            "test_roc_auc": str(0.74 + 0.01 * number),
            "test_expected_cost": str(0.62 - 0.01 * number),
            keys.VTAG_DECISION: decision,
            keys.VTAG_REASON: f"gate says {decision}",
            keys.VTAG_STATUS: "done",
        }
        for key, value in version_tags.items():
            client.set_model_version_tag(MODEL_NAME, version, key, value)
        register_ids.append(_fake_register(client, experiment_id, optimize_id, str(version), decision))
    client.set_registered_model_alias(MODEL_NAME, "previous", versions[0])
    client.set_model_version_tag(MODEL_NAME, versions[0], "archived", "true")
    client.set_registered_model_alias(MODEL_NAME, "champion", versions[1])
    client.set_registered_model_alias(MODEL_NAME, "challenger", versions[2])
    return FakeStore(
        uri=uri,
        experiment_id=experiment_id,
        research=result,
        optimize_run_ids=optimize_ids,
        register_run_ids=register_ids,
        champion_version=versions[1],
        challenger_version=versions[2],
        previous_version=versions[0],
        trial_run_ids=trial_ids,
    )
