"""Stage 1, research: cross-validated comparison of the candidate portfolio.

Hands over to stage 2 through MLflow: the parent run carries the ranked families
in the tag ``research.ranked_families``, and every candidate is a child run.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
from tqdm.auto import tqdm

from pipeline import budget, plots, scorecard, speed
from pipeline.config import PipelineConfig
from pipeline.data import check_folds, load_dataset, split_dataset
from pipeline.models import modules_of
from pipeline.selection import (
    STATUS_FULL,
    STATUS_SKIPPED,
    CandidateOutcome,
    evaluate_portfolio,
    family_scores,
    fitted_scorecards,
    leaderboard_frame,
    left_out_candidates,
    ranked_families,
    validate_portfolio,
)
from pipeline.tracking import keys, runs
from pipeline.training import start_fold_workers

logger = logging.getLogger(__name__)


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


def run(config: PipelineConfig, started: float | None = None) -> ResearchResult:
    """Run stage 1 and return its leaderboard; raises PipelineError on bad input.

    ``started`` (``time.monotonic()``) is when its share of the budget began: the process's
    start for the command, now when not given.
    """
    entered = time.monotonic()
    started = entered if started is None else started
    planned = budget.research_plan(config.budget_seconds)
    validate_portfolio(config)
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    check_folds(dataset.target.iloc[split.train_index], config.research.cv_folds, "research.cv_folds")
    # Started once the data is known good, so a bad table still fails at once.
    workers = start_fold_workers(
        config.research.n_jobs,
        modules_of(c.family for c in config.research.portfolio.values()),
        config.research.cv_folds,
    )
    session = runs.connect(config)

    tags = runs.base_tags(config, keys.STAGE_RESEARCH, dataset, split)
    run_name = f"{keys.STAGE_RESEARCH}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    with runs.stage_run(session, run_name, tags) as run_id:
        runs.log_batch(
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
                keys.PARAM_BUDGET_SECONDS: config.budget_seconds,
            },
            metrics={
                "n_rows": dataset.n_rows,
                "n_train": len(split.train_index),
                "n_test": len(split.test_index),
                "positive_rate": float(dataset.target.mean()),
                **{f"removed_{k}": v for k, v in dataset.removed_rows.items()},
            },
        )
        if workers is not None:
            workers.join()  # before the probe and the candidates: neither is timed beside their start
        # The work after the candidates, scaled to how fast this machine is now.
        probe = speed.probe_seconds()
        tail = budget.fixed_seconds(budget.RESEARCH_TAIL_SECONDS, probe)
        child_ids: dict[str, str] = {}
        progress = tqdm(total=len(config.research.portfolio), desc="research", unit="candidate")

        def log_candidate(outcome: CandidateOutcome) -> None:
            child_ids[outcome.name] = runs.log_child_run(
                session,
                run_id,
                outcome.name,
                tags={
                    **tags,
                    keys.TAG_ROLE: keys.ROLE_CANDIDATE,
                    keys.TAG_FAMILY: outcome.family,
                    keys.TAG_CANDIDATE: outcome.name,
                    keys.TAG_CANDIDATE_STATUS: outcome.status,
                    **({keys.TAG_CANDIDATE_NOTE: outcome.note} if outcome.note else {}),
                },
                params={"family": outcome.family, **outcome.params},
                metrics=outcome.metrics,
            )

        def record(outcome: CandidateOutcome) -> None:
            pending.append(writer.submit(log_candidate, outcome))
            if outcome.scored:
                logger.info(
                    "%-24s cv ROC AUC %.4f ± %.4f, cost %.4f (%d folds)",
                    outcome.name,
                    outcome.metrics["cv_roc_auc_mean"],
                    outcome.metrics["cv_roc_auc_std"],
                    outcome.metrics["cv_expected_cost_mean"],
                    outcome.metrics["cv_folds_done"],
                )
            progress.set_postfix_str(outcome.name)
            progress.update()

        # The dataset parts and the split are logged before the candidates, not beside them: copying
        # and hashing a large table holds the interpreter, and the candidates' timing probes run in
        # this process (at a million rows they read 5 to 40 times too slow beside it).
        runs.log_datasets(session, run_id, dataset, split)
        runs.log_split(session, run_id, split)
        # One writer thread logs each candidate to MLflow while the next one trains: the store's
        # round trips then overlap the cross-validation instead of adding to it. Order is kept.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-writer") as writer:
            pending = []
            try:
                outcomes = evaluate_portfolio(
                    config,
                    dataset,
                    split,
                    on_candidate=record,
                    # The share is for the stage's own work: the interpreter's start is the
                    # command's fixed cost (it still counts in the spent seconds and the total).
                    # What follows the candidates is kept out of it.
                    seconds=planned - (time.monotonic() - entered) - tail,
                )
            finally:
                progress.close()
            for future in pending:
                future.result()  # surface any logging error here, inside the stage run

        leaderboard = leaderboard_frame(outcomes, child_ids)
        families = ranked_families(leaderboard)
        best = leaderboard.iloc[0]
        # What stage 2 plans from: one fold's seconds per family (its slowest candidate).
        # And the rows of a family cross-validated on a sample (its fewest, when several were).
        fold_seconds: dict[str, float] = {}
        family_rows: dict[str, int] = {}
        for outcome in outcomes:
            if outcome.scored:
                seconds = outcome.metrics["fold_seconds"]
                fold_seconds[outcome.family] = max(seconds, fold_seconds.get(outcome.family, 0.0))
                rows = int(outcome.metrics[keys.METRIC_TRAIN_ROWS])
                if rows < len(split.train_index):
                    family_rows[outcome.family] = min(rows, family_rows.get(outcome.family, rows))
        runs.log_batch(
            session,
            run_id,
            metrics={
                "best_cv_roc_auc": float(best[keys.METRIC_CV_ROC_AUC_MEAN]),
                "best_cv_expected_cost": float(leaderboard["cv_expected_cost_mean"].min()),
            },
            tags={
                keys.TAG_RANKED_FAMILIES: json.dumps(families),
                keys.TAG_RANKED_CANDIDATES: json.dumps(leaderboard["candidate"].tolist()),
                keys.TAG_BEST_CANDIDATE: best["candidate"],
                keys.TAG_FOLD_SECONDS: json.dumps(fold_seconds),
                keys.TAG_FAMILY_ROWS: json.dumps(family_rows),
                keys.TAG_FAMILY_SCORES: json.dumps(family_scores(leaderboard, families)),
                keys.TAG_LEFT_OUT_CANDIDATES: json.dumps(
                    left_out_candidates(config, len(split.train_index)), sort_keys=True
                ),
            },
        )
        runs.log_frame(session, run_id, leaderboard, keys.ARTIFACT_LEADERBOARD)
        # A scorecard candidate's table (fitted on the whole training part) in its own child run.
        scaling = scorecard.Scaling(**config.scorecard.model_dump())
        scored = {o.name: int(o.metrics[keys.METRIC_TRAIN_ROWS]) for o in outcomes if o.scored}
        fitted = fitted_scorecards(config, dataset, split, only=set(scored), rows=scored)
        for name, model in fitted.items():
            table = scorecard.scorecard_table(model, scaling)
            runs.log_frame(session, child_ids[name], table, keys.ARTIFACT_SCORECARD)
        figure = plots.leaderboard_chart(leaderboard[leaderboard["status"] != STATUS_SKIPPED])
        runs.log_figure(session, run_id, figure, keys.ARTIFACT_RESEARCH_CHART)
        plots.close(figure)
        spent = time.monotonic() - started
        cut = [o.name for o in outcomes if o.status != STATUS_FULL]
        runs.log_batch(
            session,
            run_id,
            metrics={
                keys.METRIC_BUDGET_PLANNED + keys.STAGE_RESEARCH: planned,
                keys.METRIC_BUDGET_SPENT + keys.STAGE_RESEARCH: spent,
                keys.METRIC_SPEED_PROBE: probe,
            },
            tags={keys.TAG_BUDGET_STOPPED + keys.STAGE_RESEARCH: "time"} if cut else None,
        )
        if cut:
            logger.warning(
                "research stopped by time: %s not cross-validated on every fold (%.0f s planned of "
                "budget_seconds=%g); see the leaderboard's status column",
                ", ".join(cut),
                planned,
                config.budget_seconds,
            )
        logger.info("research spent %.1f s of %.1f s planned", spent, planned)

    logger.info("research run %s finished; ranked families: %s", run_id, ", ".join(families))
    return ResearchResult(
        run_id=run_id, dataset_digest=dataset.digest, leaderboard=leaderboard, ranked_families=families
    )
