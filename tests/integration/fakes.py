"""Hand-over runs built per the stage contracts, so stage 3 is testable without running stage 2.

``fake_optimize_run`` logs what stage 2 leaves behind (parent run tags, test metrics,
``evaluation/test_scores.csv``, the skops model with its threshold) for a quickly fitted model.
"""

from __future__ import annotations

import json

import pandas as pd

from pipeline import tracking
from pipeline.config import PipelineConfig
from pipeline.data import load_dataset, split_dataset
from pipeline.evaluation import all_metrics, best_threshold
from pipeline.models import build_estimator


def fake_research_run(config: PipelineConfig, baselines: dict[str, float]) -> str:
    """A finished research run whose candidates are only the given baselines (family -> CV ROC AUC)."""
    session = tracking.connect(config)
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    tags = tracking.base_tags(config, "research", dataset, split)
    with tracking.stage_run(session, "research-fake", tags) as run_id:
        for family, auc in baselines.items():
            tracking.log_child_run(
                session,
                run_id,
                family,
                tags={**tags, tracking.TAG_ROLE: "candidate", tracking.TAG_FAMILY: family},
                metrics={"cv_roc_auc_mean": auc, "cv_roc_auc_std": 0.01},
            )
        tracking.log_batch(session, run_id, tags={"research.ranked_families": json.dumps([])})
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
    session = tracking.connect(config)
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
        **tracking.base_tags(config, "optimize", dataset, split),
        "optimize.research_run_id": research_run_id,
        "optimize.families": json.dumps([family]),
    }
    with tracking.stage_run(session, "optimize-fake", tags) as run_id:
        info = tracking.log_model(
            session,
            run_id,
            model,
            train_x,
            {
                "threshold": threshold,
                "research_run_id": research_run_id,
                "families": [family],
                "dataset_digest": dataset.digest,
            },
        )
        tracking.log_batch(
            session,
            run_id,
            metrics={**metrics, "threshold": threshold, "cv_roc_auc": 0.0, "cv_expected_cost": 0.0},
            tags={
                "optimize.best_family": family,
                "optimize.calibration": "none",
                "optimize.threshold": repr(float(threshold)),
                "optimize.model_id": info.model_id,
                "optimize.model_uri": f"models:/{info.model_id}",
            },
        )
        scores = pd.DataFrame({"row_index": split.test_index, "y_true": test_y, "score": test_scores})
        tracking.log_text(session, run_id, scores.to_csv(index=False), "evaluation/test_scores.csv")
    return run_id
