"""Hand-over runs built per the stage contracts, so stage 3 is testable without running stage 2.

``fake_optimize_run`` logs what stage 2 leaves behind (parent run tags, test metrics,
``evaluation/test_scores.csv``, the skops model with its threshold) for a quickly fitted model.
"""

from __future__ import annotations

import json

import pandas as pd

from pipeline import stability
from pipeline.config import PipelineConfig
from pipeline.data import load_dataset, split_dataset
from pipeline.evaluation import all_metrics, best_threshold
from pipeline.models import build_estimator
from pipeline.tracking import keys, model_io, runs


def fake_research_run(config: PipelineConfig, baselines: dict[str, float]) -> str:
    """A finished research run whose candidates are only the given baselines (family -> CV ROC AUC)."""
    session = runs.connect(config)
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    tags = runs.base_tags(config, "research", dataset, split)
    with runs.stage_run(session, "research-fake", tags) as run_id:
        for family, auc in baselines.items():
            runs.log_child_run(
                session,
                run_id,
                family,
                tags={**tags, keys.TAG_ROLE: "candidate", keys.TAG_FAMILY: family},
                metrics={"cv_roc_auc_mean": auc, "cv_roc_auc_std": 0.01},
            )
        runs.log_batch(session, run_id, tags={keys.TAG_RANKED_FAMILIES: json.dumps([])})
    return run_id


def fake_optimize_run(
    config: PipelineConfig,
    research_run_id: str,
    family: str = "logistic_regression",
    params: dict | None = None,
    numeric_only: list[str] | None = None,
) -> str:
    """A finished optimization run per the hand-over contract; returns its id.

    ``numeric_only`` fits on just those numeric columns (a deliberately weak model); the
    signature still lists every feature, as a real model's would.
    """
    session = runs.connect(config)
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    categorical, numeric = dataset.categorical, dataset.numeric
    if numeric_only is not None:
        categorical, numeric = [], numeric_only
    model = build_estimator(family, params or {}, categorical, numeric, config.seed)
    train_x = dataset.features.iloc[split.train_index]
    train_y = dataset.target.iloc[split.train_index].to_numpy()
    test_x = dataset.features.iloc[split.test_index]
    test_y = dataset.target.iloc[split.test_index].to_numpy()
    model.fit(train_x, train_y)
    threshold, _ = best_threshold(train_y, model.predict_proba(train_x)[:, 1], config.costs)
    test_scores = model.predict_proba(test_x)[:, 1]
    metrics = {f"test_{k}": v for k, v in all_metrics(test_y, test_scores, threshold, config.costs).items()}
    tags = {
        **runs.base_tags(config, "optimize", dataset, split),
        keys.TAG_RESEARCH_RUN: research_run_id,
        keys.TAG_TUNED_FAMILIES: json.dumps([family]),
    }
    with runs.stage_run(session, "optimize-fake", tags) as run_id:
        info = model_io.log_model(
            session,
            run_id,
            model,
            train_x,
            {
                "threshold": threshold,
                "research_run_id": research_run_id,
                "families": [family],
                "dataset_digest": dataset.digest,
                keys.META_TRAINING_PROFILE: stability.build_profile(
                    train_x, model.predict_proba(train_x)[:, 1], categorical, numeric
                ),
            },
        )
        runs.log_batch(
            session,
            run_id,
            metrics={**metrics, "threshold": threshold, "cv_roc_auc": 0.0, "cv_expected_cost": 0.0},
            tags={
                keys.TAG_BEST_FAMILY: family,
                keys.TAG_CALIBRATION: "none",
                keys.TAG_THRESHOLD: repr(float(threshold)),
                keys.TAG_MODEL_ID: info.model_id,
                keys.TAG_MODEL_URI: f"models:/{info.model_id}",
            },
        )
        scores = pd.DataFrame({"row_index": split.test_index, "y_true": test_y, "score": test_scores})
        runs.log_text(session, run_id, scores.to_csv(index=False), keys.ARTIFACT_TEST_SCORES)
    return run_id


def weak_then_strong(config: PipelineConfig) -> tuple[str, str]:
    """A research run, then two optimization runs: a model fitted on one numeric column (weak) and a
    full logistic regression (strong); their run ids."""
    research_id = fake_research_run(config, {"dummy": 0.5})
    weak = fake_optimize_run(config, research_id, numeric_only=["duration_months"])
    strong = fake_optimize_run(config, research_id)
    return weak, strong
