"""Stage 1's hand-over to stage 2, read and written: the research run found and checked (dataset,
split, ranked families), what it planned and spent of the budget, and stage 2's budget records."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from pipeline import budget
from pipeline.config import PipelineConfig
from pipeline.data import Dataset, Split
from pipeline.errors import LookupFailedError
from pipeline.tracking import keys, lookups, runs
from pipeline.tracking.session import TrackingSession

logger = logging.getLogger(__name__)


def find_research_run(session: TrackingSession, dataset: Dataset, research_run_id: str | None):
    """The given research run, or the latest finished one for this dataset; checked either way."""
    run = lookups.finished_stage_run(
        session,
        keys.STAGE_RESEARCH,
        research_run_id,
        conditions={keys.TAG_DATASET_DIGEST: dataset.digest},
        missing_hint="; run `python -m pipeline research` first",
    )
    recorded = run.data.tags.get(keys.TAG_DATASET_DIGEST)
    if recorded != dataset.digest:
        raise LookupFailedError(
            f"research run {run.info.run_id} used dataset {recorded}, but the data now has digest "
            f"{dataset.digest}; rerun research on this data"
        )
    return run


def check_split(session: TrackingSession, research_run, split: Split) -> None:
    """The research run's recorded test rows must be exactly the ones we hold out now."""
    run_id = research_run.info.run_id
    try:
        train, test = runs.read_split(session, run_id)
    except Exception as error:
        raise LookupFailedError(
            f"research run {run_id} has no readable {keys.ARTIFACT_SPLIT}: {error}"
        ) from None
    if not np.array_equal(test, np.sort(split.test_index)):
        raise LookupFailedError(
            f"research run {run_id} held out other test rows than this split (seed or test_size changed?)"
        )
    if not np.array_equal(train, np.sort(split.train_index)):
        raise LookupFailedError(f"research run {run_id} trained on other rows than this split")


def top_families(research_run, k: int) -> list[str]:
    raw = research_run.data.tags.get(keys.TAG_RANKED_FAMILIES)
    try:
        ranked = json.loads(raw)
    except (TypeError, ValueError):
        raise LookupFailedError(
            f"research run {research_run.info.run_id} has no valid {keys.TAG_RANKED_FAMILIES} tag"
        ) from None
    if not ranked:
        raise LookupFailedError(f"research run {research_run.info.run_id} ranked no families")
    return list(ranked[:k])


def research_budget(research_run, config: PipelineConfig) -> tuple[budget.Step, dict[str, float], int]:
    """What stage 1 planned and spent, one CV fold's seconds per family, and its number of folds.

    A research run from before the budget has no such records: its duration stands in for the
    spent seconds, and the families' trials are then not predicted (0 s).
    """
    metrics, tags = research_run.data.metrics, research_run.data.tags
    spent = metrics.get(keys.METRIC_BUDGET_SPENT + keys.STAGE_RESEARCH)
    if spent is None:
        info = research_run.info
        spent = max(0.0, ((info.end_time or info.start_time) - info.start_time) / 1000)
    planned = metrics.get(
        keys.METRIC_BUDGET_PLANNED + keys.STAGE_RESEARCH, budget.research_plan(config.budget_seconds)
    )
    try:
        fold_seconds = {str(k): float(v) for k, v in json.loads(tags[keys.TAG_FOLD_SECONDS]).items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        fold_seconds = {}
    stopped = tags.get(keys.TAG_BUDGET_STOPPED + keys.STAGE_RESEARCH, "")
    folds_used = int(float(research_run.data.params.get("cv_folds", config.research.cv_folds)))
    return budget.Step(keys.STAGE_RESEARCH, planned, spent, stopped), fold_seconds, folds_used


def family_scores(research_run) -> dict[str, budget.FamilyScore]:
    """Each family's best research score (none from a research run that did not record them)."""
    try:
        recorded = json.loads(research_run.data.tags[keys.TAG_FAMILY_SCORES])
        return {
            str(family): budget.FamilyScore(float(auc), float(std), int(folds))
            for family, (auc, std, folds) in recorded.items()
        }
    except (KeyError, TypeError, ValueError, AttributeError):
        return {}


def family_rows(research_run) -> dict[str, int]:
    """Rows of the training part each sampled family was cross-validated on (none: every row)."""
    try:
        recorded = json.loads(research_run.data.tags[keys.TAG_FAMILY_ROWS])
        return {str(family): int(rows) for family, rows in recorded.items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        return {}


def log_budget(session: TrackingSession, run_id: str, steps: list[budget.Step]) -> None:
    """Planned and spent seconds per step on the optimize run, and a warning per step over its plan."""
    metrics, tags = {}, {}
    for step in steps:
        metrics[keys.METRIC_BUDGET_PLANNED + step.name] = step.planned
        metrics[keys.METRIC_BUDGET_SPENT + step.name] = step.spent
        if step.stopped_by in (keys.BUDGET_STOPPED_TIME, keys.BUDGET_STOPPED_SKIPPED):
            tags[keys.TAG_BUDGET_STOPPED + step.name] = step.stopped_by
    runs.log_batch(session, run_id, metrics=metrics, tags=tags)
    frame = pd.DataFrame(
        [
            {
                "step": st.name,
                "planned_seconds": st.planned,
                "spent_seconds": st.spent,
                "stopped_by": st.stopped_by,
            }
            for st in steps
        ]
    )
    runs.log_frame(session, run_id, frame, keys.ARTIFACT_BUDGET)
    total = steps[-1]
    # The rule: within 10 % of the budget, or 15 s, whichever is larger.
    if total.over > max(0.1 * total.planned, 15.0):
        slowest = max(steps[:-1], key=lambda st: st.over)
        logger.warning(
            "research and optimize took %.0f s against budget_seconds=%g; %s ran %.0f s over its %.0f s",
            total.spent,
            total.planned,
            slowest.name,
            slowest.over,
            slowest.planned,
        )
    else:
        logger.info("research and optimize took %.0f s of budget_seconds=%g", total.spent, total.planned)
