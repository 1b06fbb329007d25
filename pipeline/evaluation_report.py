"""What stage 2's run shows of its one test evaluation: the charts, permutation importance, how often
each reason code is given to the rejected applicants, and the scorecard's table.

Reporting only, after the evaluation: nothing here feeds a choice. Its rows are what the time left
allows (``reporting_plan``, from timed scoring calls), at most ``optimize.report_max_rows``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.inspection import permutation_importance

from pipeline import inference, plots, reasons, reporting_plan, scorecard
from pipeline.config import PipelineConfig
from pipeline.evaluation import CostCurve, cost_curve, sample_positions
from pipeline.tracking import keys, runs
from pipeline.tracking.session import TrackingSession
from pipeline.training import positive_scores

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldOutEvaluation:
    """The one evaluation on the held-out test part, as the reporting reads it."""

    model_name: str
    features: pd.DataFrame
    labels: np.ndarray
    scores: np.ndarray
    threshold: float
    metrics: dict[str, float]  # test_* figures, as logged
    oof_curve: CostCurve  # the training part's out-of-fold cost curve, where the threshold came from


def importance(
    model, features: pd.DataFrame, target: pd.Series, repeats: int, seed: int, max_rows: int
) -> tuple[pd.DataFrame, int]:
    """Permutation importance on a seeded sample of at most ``max_rows`` rows; the frame and the rows used."""
    # ROC AUC is unchanged by a monotone calibration, so the base model ranks the features as the
    # calibrated model does, without scoring through the calibrator.
    folds_fitted = getattr(model, "calibrated_classifiers_", None)
    if folds_fitted:
        model = folds_fitted[0].estimator
    rows = sample_positions(len(features), max_rows, seed)
    if len(rows) < len(features):
        logger.info(
            "permutation importance on %d of %d test rows (optimize.report_max_rows and the time left)",
            len(rows),
            len(features),
        )
        features, target = features.iloc[rows], target.iloc[rows]
    # One process: spawning workers and shipping the model costs more than 250 rows of scoring.
    result = permutation_importance(
        model, features, target, scoring="roc_auc", n_repeats=repeats, random_state=seed, n_jobs=1
    )
    frame = (
        pd.DataFrame(
            {
                "feature": features.columns,
                "importance_mean": result.importances_mean,
                "importance_std": result.importances_std,
            }
        )
        .sort_values("importance_mean", ascending=False)
        .reset_index(drop=True)
    )
    return frame, len(rows)


def _scoring_cost(final, features: pd.DataFrame) -> reporting_plan.ScoringCost:
    """What a scoring call costs, from two timed calls: a few rows (what a call costs whatever its
    rows) and as many as importance may take."""
    few, many = (
        min(len(features), n)
        for n in (reporting_plan.MIN_IMPORTANCE_ROWS, reporting_plan.MAX_IMPORTANCE_ROWS)
    )
    timed = []
    for size in (few, many):
        call_started = time.monotonic()
        positive_scores(final, features.iloc[:size])
        timed.append(time.monotonic() - call_started)
    return reporting_plan.ScoringCost.from_calls(few, timed[0], many, timed[1])


def _log_explanations(
    config: PipelineConfig, session, run_id: str, final, metadata: dict, rejected: pd.DataFrame
) -> None:
    """The scorecard table when the model is or holds a scorecard, and how often each reason code
    is given to ``rejected``."""
    card = scorecard.find_scorecard(final)
    if card is not None:
        table = scorecard.scorecard_table(card, scorecard.Scaling(**config.scorecard.model_dump()))
        runs.log_frame(session, run_id, table, keys.ARTIFACT_SCORECARD)
    if rejected.empty:
        return
    given = reasons.explain(final, rejected, metadata, config.reason_codes.count)
    counts = reasons.frequencies(given).assign(method=given.method, rejected=len(rejected))
    runs.log_frame(session, run_id, counts, keys.ARTIFACT_REASON_FREQUENCIES)


def _log_charts(
    config: PipelineConfig,
    session,
    run_id: str,
    evaluation: HeldOutEvaluation,
    importance_frame: pd.DataFrame,
) -> None:
    labels, scores, threshold = evaluation.labels, evaluation.scores, evaluation.threshold
    metrics, oof_curve = evaluation.metrics, evaluation.oof_curve
    test_curve = cost_curve(labels, scores, config.costs)
    figures = {
        keys.PLOT_ROC: plots.roc_chart(labels, scores, evaluation.model_name),
        keys.PLOT_PRECISION_RECALL: plots.precision_recall_chart(labels, scores),
        keys.PLOT_CALIBRATION: plots.calibration_chart(labels, scores),
        keys.PLOT_CONFUSION: plots.confusion_chart(
            metrics["test_tn"], metrics["test_fp"], metrics["test_fn"], metrics["test_tp"], threshold
        ),
        keys.PLOT_COST: plots.cost_chart(
            np.clip(oof_curve.thresholds, 0, 1),
            oof_curve.costs,
            threshold,
            test_curve=(np.clip(test_curve.thresholds, 0, 1), test_curve.costs),
        ),
        keys.PLOT_SCORES: plots.score_distribution_chart(labels, scores, threshold),
        keys.PLOT_IMPORTANCE: plots.importance_chart(importance_frame),
    }
    for path, figure in figures.items():
        runs.log_figure(session, run_id, figure, path)
        plots.close(figure)


def log_evaluation(
    config: PipelineConfig,
    session: TrackingSession,
    run_id: str,
    final,
    evaluation: HeldOutEvaluation,
    metadata: dict,
    seconds_left: Callable[[], float],
) -> None:
    """Log the evaluation's charts and explanations to ``run_id``, within ``seconds_left()``.

    Permutation importance and reason codes for the rejected test applicants (a seeded sample of at
    most ``optimize.report_max_rows``) share that time; a cut is a warning and the metrics
    ``importance_rows``, ``importance_repeats`` and ``reason_rows`` say what each got.
    """
    settings = config.optimize
    test_x = evaluation.features
    # The model is written: from here it only scores, so it is readied as the scoring server
    # readies it (same probabilities, without scikit-learn's per-call checks, which cost 50 ms a
    # call on a column of a few thousand levels), and its calls are timed as readied.
    inference.for_few_rows(final)
    cost = _scoring_cost(final, test_x)
    # Reason codes go to the rejected applicants of the test part, each scored with its
    # substituted copies: with permutation importance, what the time left allows.
    rejected = test_x[evaluation.scores >= evaluation.threshold]
    rejected = rejected.iloc[sample_positions(len(rejected), settings.report_max_rows, config.seed)]
    plan = reporting_plan.reporting_plan(
        cost,
        min(len(test_x), settings.report_max_rows),
        test_x.shape[1],
        settings.permutation_repeats,
        len(rejected),
        reasons.scored_per_applicant(final, test_x.columns, metadata),
        reasons.SUBSTITUTED_ROWS,
        seconds_left(),
    )
    if plan.importance_repeats < settings.permutation_repeats:
        logger.warning(
            "permutation importance with %d of %d repeats (optimize.permutation_repeats): the time left "
            "allows no more",
            plan.importance_repeats,
            settings.permutation_repeats,
        )
    importance_frame, importance_rows = importance(
        final,
        test_x,
        pd.Series(evaluation.labels),
        plan.importance_repeats,
        config.seed,
        plan.importance_rows,
    )
    runs.log_frame(session, run_id, importance_frame, keys.ARTIFACT_IMPORTANCE)
    if plan.reason_rows < len(rejected):
        logger.warning(
            "reason codes for %d of %d rejected test applicants: the time left allows no more",
            plan.reason_rows,
            len(rejected),
        )
        rejected = rejected.iloc[sample_positions(len(rejected), plan.reason_rows, config.seed)]
    runs.log_batch(
        session,
        run_id,
        metrics={
            "importance_rows": importance_rows,
            "importance_repeats": plan.importance_repeats,
            "reason_rows": len(rejected),
        },
    )
    _log_explanations(config, session, run_id, final, metadata, rejected)
    _log_charts(config, session, run_id, evaluation, importance_frame)
