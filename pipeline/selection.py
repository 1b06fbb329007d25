"""The pure choices of stage 1: which candidates run, on how many rows and folds, and how they rank.
Training part in, decisions out: no tracking, no I/O, never the test part. Stage 2's choices (the
tuning objective, the final estimator) are in ``pipeline.final_model``.

Stage 1 and the benchmarks both import these, so the benchmarks measure the choices the pipeline makes.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from pipeline import budget, scorecard
from pipeline.config import PipelineConfig
from pipeline.data import Dataset, Split
from pipeline.models import (
    BASELINE_FAMILIES,
    CHEAP_FAMILIES,
    SAMPLE_ROWS,
    build_estimator,
    fit_rows_cap,
    forest_trees,
    row_limit_reason,
    validate_params,
)
from pipeline.tracking import keys
from pipeline.training import (
    CVResult,
    TrainingPart,
    cross_validate,
    fit_predict_fold,
    folds,
    result_from_folds,
    run_folds,
    sampled_part,
    stratified_sample,
)

logger = logging.getLogger(__name__)

# --- Stage 1: ranking the portfolio -------------------------------------------------------------

RANK_METRIC = keys.METRIC_CV_ROC_AUC_MEAN
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
    "folds",
    "status",
]


# A candidate's state at the end of stage 1.
STATUS_FULL = "cross-validated"
STATUS_RACED = "raced out"
STATUS_SKIPPED = "skipped"
_STATUS_ORDER = {STATUS_FULL: 0, STATUS_RACED: 1, STATUS_SKIPPED: 2}


@dataclass(frozen=True)
class CandidateOutcome:
    name: str
    family: str
    params: dict
    metrics: dict[str, float]  # empty when skipped
    status: str = STATUS_FULL
    note: str = ""  # why it was raced out or skipped

    @property
    def scored(self) -> bool:
        return "cv_roc_auc_mean" in self.metrics


def validate_portfolio(config: PipelineConfig) -> None:
    for name, candidate in config.research.portfolio.items():
        validate_params(candidate.family, candidate.params, f"research.candidates.{name}.params")


def left_out_candidates(config: PipelineConfig, n_train: int) -> dict[str, str]:
    """Candidates of the portfolio not run at ``n_train`` training rows, each with the reason."""
    reasons = {
        name: row_limit_reason(candidate.family, n_train)
        for name, candidate in config.research.portfolio.items()
    }
    return {name: reason for name, reason in reasons.items() if reason is not None}


def _training_part(dataset: Dataset, split: Split) -> tuple[pd.DataFrame, pd.Series]:
    features = dataset.features.iloc[split.train_index].reset_index(drop=True)
    target = dataset.target.iloc[split.train_index].reset_index(drop=True)
    return features, target


def _summary(result: CVResult, n_folds: int, rows: int, time_scale: float = 1.0) -> dict[str, float]:
    """The metrics of a candidate; ``fold_seconds`` (what stage 2 plans from) scaled by ``time_scale``."""
    return {
        **result.summary(),
        "cv_folds_done": float(n_folds),
        "fold_seconds": time_scale * (result.fit_seconds + result.predict_seconds) / max(1, n_folds),
        keys.METRIC_TRAIN_ROWS: float(rows),
    }


def _skipped(name: str, candidate, note: str, emit: Callable[[CandidateOutcome], None]) -> CandidateOutcome:
    """A candidate stage 1 did not rank, with why: logged and reported like the ranked ones."""
    outcome = CandidateOutcome(name, candidate.family, dict(candidate.params), {}, STATUS_SKIPPED, note)
    logger.warning("%s %s", name, note)
    emit(outcome)
    return outcome


@dataclass(frozen=True)
class _RacePlan:
    """How a raced candidate runs its folds, or why it does not run at all."""

    estimator: object = None
    part: TrainingPart | None = None
    note: str = ""  # a sample or fewer trees, said in the leaderboard
    time_scale: float = 1.0  # a forest ranked with fewer trees: its full size's time per fold
    forced: bool = False  # the first family runs on every row, whatever its time
    skipped: str = ""


def _sized(config: PipelineConfig, dataset: Dataset, candidate, rows: int, **params):
    """The candidate's estimator sized for ``rows`` training rows, ``params`` over its own."""
    return build_estimator(
        candidate.family,
        {**candidate.params, **params},
        dataset.categorical,
        dataset.numeric,
        config.seed,
        n_rows=rows,
    )


def _race_plan(
    config: PipelineConfig,
    dataset: Dataset,
    candidate,
    whole: TrainingPart,
    probe: budget.Probe | None,
    left: float,
    cap: float,
    ranked_one: bool,
) -> _RacePlan:
    """Every row when the probe predicts a fold within ``cap``; else a sample whose fold fits, a
    forest with fewer trees (a part too small to sample), every row for the first family stage 2
    needs or a cheap family on a small part (``budget.CHEAP_ROWS``), or a skip. A family's own row
    cap (``models.SAMPLE_ROWS``) applies last."""
    n, n_folds = whole.rows, len(whole.splits)
    predicted = probe.fold_seconds(n, n_folds) if probe else 0.0
    rows, why, forced = n, "", False
    if left <= 0 or predicted > cap:
        why = f"as one fold on all would take about {predicted:.0f} s and its share is {cap:.0f} s"
        rows = budget.sample_rows(probe, n, n_folds, cap) if probe else None
    if rows is None:
        trees = forest_trees(candidate.family, candidate.params)
        fewer = budget.trees_that_fit(probe, trees, n, n_folds, cap) if probe and trees else None
        if fewer:
            note = (
                f"ranked with {fewer} of its {trees} trees, as one fold with all would take about "
                f"{predicted:.0f} s and its share is {cap:.0f} s"
            )
            return _RacePlan(
                _sized(config, dataset, candidate, n, n_estimators=fewer), whole, note, trees / fewer
            )
        cheap = (
            candidate.family in CHEAP_FAMILIES
            and n <= budget.CHEAP_ROWS
            and predicted <= budget.CHEAP_FOLD_SECONDS
        )
        if ranked_one and not cheap:
            skipped = (
                f"skipped: one fold would take about {predicted:.0f} s, its share is {cap:.0f} s"
                if left > 0
                else "skipped: stage 1's share of the budget was spent before its turn"
            )
            return _RacePlan(skipped=skipped)
        rows, forced = n, True
    row_cap, reason = SAMPLE_ROWS.get(candidate.family, (None, ""))
    if row_cap is not None and rows > row_cap:
        rows, why = row_cap, f"as {reason} (at most {row_cap:,})"
    if rows >= n:
        return _RacePlan(_sized(config, dataset, candidate, n), whole, forced=forced)
    return _RacePlan(
        _sized(config, dataset, candidate, rows),  # sized for its sample (max_samples)
        sampled_part(whole, rows, n_folds, config.seed),
        f"sampled: {rows:,} of {n:,} rows, {why}",
        forced=forced,
    )


def evaluate_portfolio(
    config: PipelineConfig,
    dataset: Dataset,
    split: Split,
    on_candidate=None,
    seconds: float | None = None,
    clock=time.monotonic,
) -> list[CandidateOutcome]:
    """Cross-validate the candidates on the training part. No tracking, no I/O.

    Without ``seconds`` every candidate runs every fold. With it the candidates are raced
    (successive halving over folds, :func:`pipeline.budget.promote`): each runs a first rung of
    ``n_jobs`` folds side by side, a candidate predicted too slow for its fair share on every row
    is cross-validated on a stratified sample of the rows its share fits (or skipped when not
    even ``budget.MIN_SAMPLE_ROWS`` fit) before its first fold, a first rung that runs far past its
    share is stopped (``budget.rung_limit``; folds in worker processes only) and the candidate
    skipped, and only the promising ones that fit run the other folds.
    """
    features, target = _training_part(dataset, split)
    splits = folds(target, config.research.cv_folds, config.seed)
    left_out = left_out_candidates(config, len(target))
    for name, reason in left_out.items():
        logger.warning("candidate %s left out: %s", name, reason)
    portfolio = {name: c for name, c in config.research.portfolio.items() if name not in left_out}
    n_jobs = config.research.n_jobs
    emit = on_candidate or (lambda outcome: None)
    if seconds is None:
        outcomes = []
        for name, candidate in portfolio.items():
            estimator = _sized(config, dataset, candidate, len(target))
            result = cross_validate(estimator, features, target, splits, config.costs, n_jobs=n_jobs)
            outcomes.append(
                CandidateOutcome(
                    name, candidate.family, dict(candidate.params), _summary(result, len(splits), len(target))
                )
            )
            emit(outcomes[-1])
        return outcomes

    started = clock()
    whole = TrainingPart(features, target, splits)
    plans: dict[str, _RacePlan] = {}
    rung = min(len(splits), max(1, n_jobs))
    first: dict[str, tuple[list, float]] = {}
    outcomes: dict[str, CandidateOutcome] = {}
    order = budget.rung_order({name: c.family for name, c in portfolio.items()})
    for position, name in enumerate(order):
        candidate = portfolio[name]
        left = seconds - (clock() - started)
        cap = budget.fair_cap(left, len(portfolio) - position)
        # Until one candidate besides the baselines has run, none is skipped: stage 2 needs a family.
        ranked_one = any(portfolio[n].family not in BASELINE_FAMILIES for n in first)
        probe = (
            _probe(
                # Sized for the probe's rows: a forest sized for the part would fit each tree on a
                # share of them, which a sample of the part (more rows per tree) does not keep.
                _sized(config, dataset, candidate, budget.PROBE_ROWS),
                features,
                target,
                splits[0],
                candidate.family,
                config.seed,
                capped_rows=fit_rows_cap(candidate.family, candidate.params),
            )
            if left > 0
            else None  # no time to probe either
        )
        plan = plans[name] = _race_plan(config, dataset, candidate, whole, probe, left, cap, ranked_one)
        if plan.skipped:
            outcomes[name] = _skipped(name, candidate, plan.skipped, emit)
            continue
        if plan.note:
            logger.warning("%s %s", name, plan.note)
        rung_started = clock()
        stop_after = None if plan.forced else budget.rung_limit(cap, seconds - (rung_started - started))
        try:
            fold_outcomes = run_folds(
                plan.estimator,
                plan.part.features,
                plan.part.target,
                plan.part.splits,
                range(rung),
                n_jobs,
                stop_after,
            )
        except multiprocessing.TimeoutError:
            note = f"stopped by time: its first folds ran past {stop_after:.0f} s (its share {cap:.0f} s)"
            outcomes[name] = _skipped(name, candidate, note, emit)
            continue
        first[name] = (fold_outcomes, clock() - rung_started)

    scores = []
    for name, (fold_outcomes, wall) in first.items():
        part = plans[name].part
        result = result_from_folds(part.target.to_numpy(), fold_outcomes, part.splits, config.costs)
        metrics = result.summary()
        scores.append(
            budget.RungScore(
                name,
                metrics["cv_roc_auc_mean"],
                metrics["cv_expected_cost_mean"],
                wall,
                rung,
                len(splits) - rung,
                n_jobs,
            )
        )
    promoted, raced_out = budget.promote(scores, seconds - (clock() - started))
    rest = {s.name: s.predicted_rest for s in scores}
    for name in promoted:
        left = seconds - (clock() - started)
        if rest[name] > left and rest[name] > 0:  # earlier candidates took longer than predicted
            raced_out[name] = (
                f"raced out: the other folds would take about {rest[name]:.0f} s, {left:.0f} s left"
            )
            continue
        plan, candidate = plans[name], portfolio[name]
        part = plan.part
        fold_outcomes = first[name][0] + run_folds(
            plan.estimator, part.features, part.target, part.splits, range(rung, len(splits)), n_jobs
        )
        result = result_from_folds(part.target.to_numpy(), fold_outcomes, part.splits, config.costs)
        outcomes[name] = CandidateOutcome(
            name,
            candidate.family,
            dict(candidate.params),
            _summary(result, len(splits), part.rows, plan.time_scale),
            note=plan.note,
        )
        emit(outcomes[name])
    for name, note in raced_out.items():
        plan, candidate = plans[name], portfolio[name]
        part = plan.part
        result = result_from_folds(part.target.to_numpy(), first[name][0], part.splits, config.costs)
        outcomes[name] = CandidateOutcome(
            name,
            candidate.family,
            dict(candidate.params),
            _summary(result, rung, part.rows, plan.time_scale),
            STATUS_RACED,
            "; ".join(filter(None, [note, plan.note])),
        )
        logger.info("%s %s", name, note)
        emit(outcomes[name])
    return [outcomes[name] for name in portfolio]


def _probe(
    estimator,
    features: pd.DataFrame,
    target: pd.Series,
    fold,
    family: str,
    seed: int,
    capped_rows: int | None = None,
) -> budget.Probe | None:
    """The candidate timed on a sample of ``budget.PROBE_ROWS`` rows and on a quarter of it, when its
    fold is larger (else, or when a sample fails, None: the fold is small enough to just run)."""
    train, valid = fold
    if len(train) <= budget.PROBE_ROWS:
        return None
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(train, budget.PROBE_ROWS, replace=False))
    small = rows[::4]
    scored = valid[: budget.PROBE_ROWS]
    try:
        # One OpenMP thread, as in the fold workers (joblib limits them): see OPENMP_FAMILIES.
        with threadpool_limits(limits=1, user_api="openmp"):
            first = fit_predict_fold(estimator, features, target, 0, small, scored[:1])
            outcome = fit_predict_fold(estimator, features, target, 0, rows, scored)
    except Exception:  # a sample with one class, say: the real fold decides
        logger.debug("probe of %s failed", family, exc_info=True)
        return None
    # Predicting scales with the rows scored: the probe scored at most PROBE_ROWS of them.
    predict = outcome.predict_seconds * len(rows) / max(1, len(scored))
    return budget.probe_from_fits(
        family, len(small), first.fit_seconds, len(rows), outcome.fit_seconds, predict, capped_rows
    )


def leaderboard_frame(
    outcomes: list[CandidateOutcome], run_ids: dict[str, str] | None = None
) -> pd.DataFrame:
    """Candidates ranked by mean CV ROC AUC (ties: lower expected cost first).

    Fully cross-validated candidates come first, then those raced out (scored on their first
    folds only, so not comparable with the others), then the skipped ones.
    """
    rows = [
        {
            "candidate": o.name,
            "family": o.family,
            **o.metrics,
            "folds": o.metrics.get("cv_folds_done", 0.0),
            "status": o.status,
            "note": o.note,
            "_order": _STATUS_ORDER[o.status],
        }
        for o in outcomes
    ]
    frame = pd.DataFrame(rows).reindex(columns=[*LEADERBOARD_COLUMNS, "note", "_order"])
    frame = frame.sort_values(
        ["_order", RANK_METRIC, "cv_expected_cost_mean"], ascending=[True, False, True], kind="mergesort"
    )
    frame["rank"] = range(1, len(frame) + 1)
    frame = frame[[*LEADERBOARD_COLUMNS, "note"]].reset_index(drop=True)
    frame["folds"] = frame["folds"].astype(int)
    if run_ids is not None:
        frame["run_id"] = frame["candidate"].map(run_ids)
    return frame


def fitted_scorecards(
    config: PipelineConfig,
    dataset: Dataset,
    split: Split,
    only: set[str] | None = None,
    rows: dict[str, int] | None = None,
) -> dict[str, object]:
    """Every scorecard candidate of the portfolio (of ``only``, when given) fitted on the training
    part, for its table: on the sample it was cross-validated on when ``rows`` gives one."""
    features, target = _training_part(dataset, split)
    fitted = {}
    for name, candidate in config.research.portfolio.items():
        if only is not None and name not in only:
            continue
        model = build_estimator(
            candidate.family, candidate.params, dataset.categorical, dataset.numeric, config.seed
        )
        if scorecard.is_scorecard(model):
            kept = stratified_sample(target, (rows or {}).get(name, len(target)), config.seed)
            fitted[name] = model.fit(features.iloc[kept], target.iloc[kept])
    return fitted


def family_scores(leaderboard: pd.DataFrame, families: list[str]) -> dict[str, list[float]]:
    """Per ranked family, its best candidate's mean and std of per-fold ROC AUC and its folds."""
    scores = {}
    for family in families:
        best = leaderboard[leaderboard["family"] == family].iloc[0]  # the leaderboard is ranked
        scores[family] = [
            float(best[RANK_METRIC]),
            float(best["cv_roc_auc_std"]),
            int(best["folds"]),
        ]
    return scores


def ranked_families(leaderboard: pd.DataFrame) -> list[str]:
    """Families in leaderboard order, each once, baselines and skipped candidates left out."""
    kept = ~leaderboard["family"].isin(BASELINE_FAMILIES) & (leaderboard["status"] != STATUS_SKIPPED)
    families = leaderboard.loc[kept, "family"]
    return list(dict.fromkeys(families))
