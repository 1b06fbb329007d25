"""Stage 1, research: cross-validated comparison of the candidate portfolio.

Hands over to stage 2 through MLflow: the parent run carries the ranked families
in the tag ``research.ranked_families``, and every candidate is a child run.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
from tqdm.auto import tqdm

from pipeline import plots, tracking
from pipeline.config import PipelineConfig
from pipeline.data import Dataset, Split, check_folds, load_dataset, split_dataset
from pipeline.models import BASELINE_FAMILIES, build_estimator, validate_params
from pipeline.training import cross_validate, folds

logger = logging.getLogger(__name__)

STAGE = "research"
TAG_RANKED_FAMILIES = "research.ranked_families"
TAG_RANKED_CANDIDATES = "research.ranked_candidates"
RANK_METRIC = "cv_roc_auc_mean"
LEADERBOARD_COLUMNS = [
    "rank",
    "candidate",
    "family",
    "cv_roc_auc_mean",
    "cv_roc_auc_std",
    "cv_average_precision_mean",
    "cv_log_loss_mean",
    "cv_brier_mean",
    "cv_expected_cost_mean",
    "cv_expected_cost_std",
    "cv_threshold",
    "fit_seconds",
]


@dataclass(frozen=True)
class CandidateOutcome:
    name: str
    family: str
    params: dict
    metrics: dict[str, float]


@dataclass(frozen=True)
class ResearchResult:
    run_id: str
    dataset_digest: str
    leaderboard: pd.DataFrame
    ranked_families: list[str]

    def describe(self) -> str:
        shown = self.leaderboard.drop(columns=["run_id"], errors="ignore")
        table = shown.to_string(index=False, float_format=lambda v: f"{v:.4f}")
        return f"research run {self.run_id} (dataset {self.dataset_digest})\n{table}"


def validate_portfolio(config: PipelineConfig) -> None:
    for name, candidate in config.research.portfolio.items():
        validate_params(candidate.family, candidate.params, f"research.candidates.{name}.params")


def evaluate_portfolio(
    config: PipelineConfig, dataset: Dataset, split: Split, on_candidate=None
) -> list[CandidateOutcome]:
    """Cross-validate every candidate on the training part. No tracking, no I/O."""
    features = dataset.features.iloc[split.train_index].reset_index(drop=True)
    target = dataset.target.iloc[split.train_index].reset_index(drop=True)
    splits = folds(target, config.research.cv_folds, config.seed)
    outcomes = []
    for name, candidate in config.research.portfolio.items():
        estimator = build_estimator(
            candidate.family, candidate.params, dataset.categorical, dataset.numeric, config.seed
        )
        result = cross_validate(
            estimator, features, target, splits, config.costs, n_jobs=config.research.n_jobs
        )
        outcome = CandidateOutcome(name, candidate.family, dict(candidate.params), result.summary())
        outcomes.append(outcome)
        if on_candidate is not None:
            on_candidate(outcome)
    return outcomes


def leaderboard_frame(
    outcomes: list[CandidateOutcome], run_ids: dict[str, str] | None = None
) -> pd.DataFrame:
    """Candidates ranked by mean CV ROC AUC (ties: lower expected cost first)."""
    rows = [{"candidate": o.name, "family": o.family, **o.metrics} for o in outcomes]
    frame = pd.DataFrame(rows).sort_values(
        [RANK_METRIC, "cv_expected_cost_mean"], ascending=[False, True], kind="mergesort"
    )
    frame.insert(0, "rank", range(1, len(frame) + 1))
    frame = frame[LEADERBOARD_COLUMNS].reset_index(drop=True)
    if run_ids is not None:
        frame["run_id"] = frame["candidate"].map(run_ids)
    return frame


def ranked_families(leaderboard: pd.DataFrame) -> list[str]:
    """Families in leaderboard order, each once, baselines left out."""
    families = leaderboard.loc[~leaderboard["family"].isin(BASELINE_FAMILIES), "family"]
    return list(dict.fromkeys(families))


def run(config: PipelineConfig) -> ResearchResult:
    """Run stage 1 and return its leaderboard; raises PipelineError on bad input."""
    validate_portfolio(config)
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    check_folds(dataset.target.iloc[split.train_index], config.research.cv_folds, "research.cv_folds")
    session = tracking.connect(config)

    tags = tracking.base_tags(config, STAGE, dataset, split)
    run_name = f"{STAGE}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    with tracking.stage_run(session, run_name, tags) as run_id:
        tracking.log_batch(
            session,
            run_id,
            params={
                "seed": config.seed,
                "test_size": config.split.test_size,
                "cv_folds": config.research.cv_folds,
                "cost_false_negative": config.costs.false_negative,
                "cost_false_positive": config.costs.false_positive,
                "dataset_source": dataset.source,
                "candidates": ",".join(config.research.portfolio),
            },
            metrics={
                "n_rows": dataset.n_rows,
                "n_train": len(split.train_index),
                "n_test": len(split.test_index),
                "positive_rate": float(dataset.target.mean()),
                **{f"removed_{k}": v for k, v in dataset.removed_rows.items()},
            },
        )
        child_ids: dict[str, str] = {}
        progress = tqdm(total=len(config.research.portfolio), desc="research", unit="candidate")

        def log_candidate(outcome: CandidateOutcome) -> None:
            child_ids[outcome.name] = tracking.log_child_run(
                session,
                run_id,
                outcome.name,
                tags={
                    **tags,
                    tracking.TAG_ROLE: "candidate",
                    tracking.TAG_FAMILY: outcome.family,
                    tracking.TAG_CANDIDATE: outcome.name,
                },
                params={"family": outcome.family, **outcome.params},
                metrics=outcome.metrics,
            )

        def record(outcome: CandidateOutcome) -> None:
            pending.append(writer.submit(log_candidate, outcome))
            logger.info(
                "%-24s cv ROC AUC %.4f ± %.4f, cost %.4f",
                outcome.name,
                outcome.metrics["cv_roc_auc_mean"],
                outcome.metrics["cv_roc_auc_std"],
                outcome.metrics["cv_expected_cost_mean"],
            )
            progress.set_postfix_str(outcome.name)
            progress.update()

        # One writer thread logs to MLflow while the next candidate trains: the store's round
        # trips then overlap the cross-validation instead of adding to it. Order is kept.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-writer") as writer:
            pending = [
                writer.submit(tracking.log_datasets, session, run_id, dataset, split),
                writer.submit(
                    tracking.log_dict,
                    session,
                    run_id,
                    {"train": split.train_index.tolist(), "test": split.test_index.tolist()},
                    "split/indices.json",
                ),
            ]
            try:
                outcomes = evaluate_portfolio(config, dataset, split, on_candidate=record)
            finally:
                progress.close()
            for future in pending:
                future.result()  # surface any logging error here, inside the stage run

        leaderboard = leaderboard_frame(outcomes, child_ids)
        families = ranked_families(leaderboard)
        best = leaderboard.iloc[0]
        tracking.log_batch(
            session,
            run_id,
            metrics={
                "best_cv_roc_auc": float(best[RANK_METRIC]),
                "best_cv_expected_cost": float(leaderboard["cv_expected_cost_mean"].min()),
            },
            tags={
                TAG_RANKED_FAMILIES: json.dumps(families),
                TAG_RANKED_CANDIDATES: json.dumps(leaderboard["candidate"].tolist()),
                "research.best_candidate": best["candidate"],
            },
        )
        tracking.log_frame(session, run_id, leaderboard, "leaderboard")
        figure = plots.leaderboard_chart(leaderboard)
        tracking.log_figure(session, run_id, figure, "cv_roc_auc.png")
        plots.close(figure)

    logger.info("research run %s finished; ranked families: %s", run_id, ", ".join(families))
    return ResearchResult(
        run_id=run_id, dataset_digest=dataset.digest, leaderboard=leaderboard, ranked_families=families
    )
