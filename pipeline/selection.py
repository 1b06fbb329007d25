"""The pure choices of stages 1 and 2: ranking the research portfolio, the tuning objective, the
final estimator (one family or a soft vote) and its calibrated refit. Training part in, decisions
out: no tracking, no I/O, never the test part.

The stages and ``bench/quality.py`` both import these, so the benchmark measures the choices the
pipeline makes.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from pipeline import budget, scorecard, tuning
from pipeline.calibration import CalibrationChoice, calibrated, fit_on_scores, select_calibration
from pipeline.config import PipelineConfig
from pipeline.data import Dataset, Split
from pipeline.models import (
    BASELINE_FAMILIES,
    DENSE_SAMPLE_ROWS,
    build_ensemble,
    build_estimator,
    fit_rows_cap,
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
    result_from_scores,
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


def _summary(result: CVResult, n_folds: int, rows: int) -> dict[str, float]:
    return {
        **result.summary(),
        "cv_folds_done": float(n_folds),
        "fold_seconds": (result.fit_seconds + result.predict_seconds) / max(1, n_folds),
        keys.METRIC_TRAIN_ROWS: float(rows),
    }


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
    even ``budget.MIN_SAMPLE_ROWS`` fit) before its first fold, and only the promising ones that
    fit run the other folds.
    """
    features, target = _training_part(dataset, split)
    splits = folds(target, config.research.cv_folds, config.seed)
    left_out = left_out_candidates(config, len(target))
    for name, reason in left_out.items():
        logger.warning("candidate %s left out: %s", name, reason)
    portfolio = {name: c for name, c in config.research.portfolio.items() if name not in left_out}
    n_jobs = config.research.n_jobs
    emit = on_candidate or (lambda outcome: None)
    estimators = {
        name: build_estimator(
            c.family, c.params, dataset.categorical, dataset.numeric, config.seed, n_rows=len(target)
        )
        for name, c in portfolio.items()
    }
    if seconds is None:
        outcomes = []
        for name, candidate in portfolio.items():
            result = cross_validate(estimators[name], features, target, splits, config.costs, n_jobs=n_jobs)
            outcomes.append(
                CandidateOutcome(
                    name, candidate.family, dict(candidate.params), _summary(result, len(splits), len(target))
                )
            )
            emit(outcomes[-1])
        return outcomes

    started = clock()
    whole = TrainingPart(features, target, splits)
    parts: dict[str, TrainingPart] = {}
    notes: dict[str, str] = {}
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
                build_estimator(
                    candidate.family,
                    candidate.params,
                    dataset.categorical,
                    dataset.numeric,
                    config.seed,
                    n_rows=budget.PROBE_ROWS,
                ),
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
        predicted = probe.fold_seconds(len(target), len(splits)) if probe else 0.0
        parts[name] = whole
        rows, why = len(target), ""
        if left <= 0 or predicted > cap:
            rows = budget.sample_rows(probe, len(target), len(splits), cap) if probe else None
            if rows is None and not ranked_one:
                rows = len(target)  # the first family runs on every row, whatever its time
            if rows is None:
                note = (
                    f"skipped: one fold would take about {predicted:.0f} s, its share is {cap:.0f} s"
                    if left > 0
                    else "skipped: stage 1's share of the budget was spent before its turn"
                )
                outcomes[name] = CandidateOutcome(
                    name, candidate.family, dict(candidate.params), {}, STATUS_SKIPPED, note
                )
                logger.warning("%s %s", name, outcomes[name].note)
                emit(outcomes[name])
                continue
            why = f"as one fold on all would take about {predicted:.0f} s and its share is {cap:.0f} s"
        limit = DENSE_SAMPLE_ROWS.get(candidate.family)
        if limit is not None and rows > limit:
            rows, why = limit, f"as its dense encoding holds every row in memory (at most {limit:,})"
        if rows < len(target):
            parts[name] = sampled_part(whole, rows, len(splits), config.seed)
            family, params = candidate.family, candidate.params  # sized for its sample (max_samples)
            estimators[name] = build_estimator(
                family, params, dataset.categorical, dataset.numeric, config.seed, n_rows=rows
            )
            notes[name] = f"sampled: {rows:,} of {len(target):,} rows, {why}"
            logger.warning("%s %s", name, notes[name])
        part = parts[name]
        rung_started = clock()
        first[name] = (
            run_folds(estimators[name], part.features, part.target, part.splits, range(rung), n_jobs),
            clock() - rung_started,
        )

    scores = []
    for name, (fold_outcomes, wall) in first.items():
        part = parts[name]
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
        part = parts[name]
        fold_outcomes = first[name][0] + run_folds(
            estimators[name], part.features, part.target, part.splits, range(rung, len(splits)), n_jobs
        )
        candidate = portfolio[name]
        result = result_from_folds(part.target.to_numpy(), fold_outcomes, part.splits, config.costs)
        outcomes[name] = CandidateOutcome(
            name,
            candidate.family,
            dict(candidate.params),
            _summary(result, len(splits), part.rows),
            note=notes.get(name, ""),
        )
        emit(outcomes[name])
    for name, note in raced_out.items():
        candidate = portfolio[name]
        part = parts[name]
        result = result_from_folds(part.target.to_numpy(), first[name][0], part.splits, config.costs)
        outcomes[name] = CandidateOutcome(
            name,
            candidate.family,
            dict(candidate.params),
            _summary(result, rung, part.rows),
            STATUS_RACED,
            "; ".join(filter(None, [note, notes.get(name, "")])),
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


# --- Stage 2: tuning and the final model ---------------------------------------------------------

# Families whose threads are OpenMP: on a shared 2-core machine, OpenMP's busy-waiting made one
# HistGradientBoosting CV take 86 s with the default thread count against 5 s with one thread, on
# the 1,000-row default data, where a fit is too short for threads to pay. They get one thread below
# OPENMP_MIN_ROWS training rows and the cores the config gives (optimize.n_jobs) from there on.
OPENMP_FAMILIES = frozenset({"hist_gradient_boosting", "lightgbm"})
OPENMP_MIN_ROWS = 20_000


@dataclass(frozen=True)
class FamilyOutcome:
    family: str
    study_name: str
    trials_done: int
    trials_run_now: int
    pruned: int
    best_params: dict
    metrics: dict[str, float]  # CV summary of the family's best trial
    trials_cap: int = 0  # optimize.n_trials
    stopped_by: str = "count"  # "count": the cap was reached; "time": its share of the budget ended it
    planned_seconds: float = 0.0  # its share of budget_seconds
    spent_seconds: float = 0.0
    # The best trial's CV result when this process ran it: the final step reuses it.
    cv: CVResult | None = field(default=None, repr=False, compare=False)

    @property
    def cut_short(self) -> bool:
        return self.stopped_by == keys.BUDGET_STOPPED_TIME


def merge_outcomes(earlier: FamilyOutcome, later: FamilyOutcome) -> FamilyOutcome:
    """One family tuned twice in a stage (a second round on time left over): ``later`` read the
    whole study, so its best trial is the family's; the times and trials run add up. The best
    trial's CV result is kept from whichever round ran it."""
    same_best = later.best_params == earlier.best_params
    return dataclasses.replace(
        later,
        trials_run_now=earlier.trials_run_now + later.trials_run_now,
        planned_seconds=earlier.planned_seconds + later.planned_seconds,
        spent_seconds=earlier.spent_seconds + later.spent_seconds,
        cv=later.cv if later.cv is not None else (earlier.cv if same_best else None),
    )


def openmp_threads(n_jobs: int, n_rows: int) -> int:
    """OpenMP threads for stage 2's boosters on ``n_rows`` training rows (see OPENMP_FAMILIES)."""
    return n_jobs if n_rows >= OPENMP_MIN_ROWS else 1


def family_jobs(family: str, n_jobs: int, n_rows: int = 0) -> int:
    """Threads (``n_jobs``) one model of ``family`` gets in stage 2."""
    return openmp_threads(n_jobs, n_rows) if family in OPENMP_FAMILIES else n_jobs


def family_objective(
    config: PipelineConfig,
    dataset: Dataset,
    family: str,
    features: pd.DataFrame,
    target: pd.Series,
    splits: list,
    deadline: float | None = None,
    fold_seconds: float = 0.0,
    keep: tuning.BestCV | None = None,
):
    """The Optuna objective for one family, from its search space and the stage's settings."""
    settings = config.optimize
    return tuning.make_objective(
        family,
        settings.search_spaces[family],
        features,
        target,
        splits,
        dataset.categorical,
        dataset.numeric,
        config.costs,
        config.seed,
        n_jobs=family_jobs(family, settings.n_jobs, len(target)),
        pruning=settings.pruning,
        deadline=deadline,
        fold_seconds=fold_seconds,
        keep=keep,
    )


@dataclass(frozen=True)
class FinalCandidate:
    """What stage 2 refits: the best family's best trial, or a soft vote of several families' best."""

    name: str
    estimator: object
    cv_metrics: dict[str, float]
    cv: CVResult | None = None  # out-of-fold scores: a vote's, or a family's best trial's when known
    families: tuple[str, ...] = ()  # the families refitted: the vote's members, or the one family


def vote_name(families: tuple[str, ...] | list[str]) -> str:
    return "soft_vote(" + "+".join(families) + ")"


def choose_final_estimator(
    config: PipelineConfig,
    dataset: Dataset,
    outcomes: list[FamilyOutcome],
    winner: FamilyOutcome,
    train_x: pd.DataFrame,
    train_y: pd.Series,
    splits: list,
) -> FinalCandidate:
    """The best single family, unless a soft vote of two or more tuned families cross-validates better.

    Each family's best model is cross-validated on the trials' folds once: its best trial's
    result is reused when this process ran it, else it is cross-validated here. A soft vote's
    out-of-fold scores are then the mean of its members' (what ``VotingClassifier`` computes),
    so every subset is judged without another fit. The vote of all of them is the default; a
    smaller one replaces it only when its CV ROC AUC is higher by more than ``ensemble_min_gain``
    (a member that clearly hurts is dropped; noise is not chased). The vote is kept only when it
    beats the best single family by that margin too, as one model is cheaper to keep and score.
    Pure: training folds only, never the test part.
    """
    settings = config.optimize
    if not settings.ensemble or len(outcomes) < 2:
        return FinalCandidate(
            winner.family,
            estimator_for(config, dataset, winner, len(train_y)),
            dict(winner.metrics),
            cv=winner.cv,
            families=(winner.family,),
        )

    y = train_y.to_numpy()
    members = {o.family: estimator_for(config, dataset, o, len(train_y)) for o in outcomes}
    by_family = {o.family: o for o in outcomes}
    member_cv = {
        family: by_family[family].cv
        or cross_validate(model, train_x, train_y, splits, config.costs, n_jobs=1)
        for family, model in members.items()
    }
    best: tuple[tuple[str, ...], CVResult, dict[str, float]] | None = None
    for size in range(len(members), 1, -1):
        for combo in itertools.combinations(members, size):
            scores = np.mean([member_cv[f].oof_scores for f in combo], axis=0)
            result = result_from_scores(
                y,
                scores,
                splits,
                config.costs,
                fit_seconds=sum(member_cv[f].fit_seconds for f in combo),
                predict_seconds=sum(member_cv[f].predict_seconds for f in combo),
            )
            metrics = tuning.with_short_names(result.summary())
            logger.info("%s: cv ROC AUC %.4f", vote_name(combo), metrics["cv_roc_auc"])
            # Fewer members must beat more by the margin: on a few hundred rows the CV cannot tell
            # small differences apart, and averaging more models reduces variance.
            margin = settings.ensemble_min_gain if best is not None and size < len(best[0]) else 0.0
            if best is None or metrics["cv_roc_auc"] > best[2]["cv_roc_auc"] + margin:
                best = (combo, result, metrics)

    combo, result, metrics = best
    logger.info(
        "best vote %s: cv ROC AUC %.4f against %.4f for %s alone",
        vote_name(combo),
        metrics["cv_roc_auc"],
        winner.metrics["cv_roc_auc"],
        winner.family,
    )
    if metrics["cv_roc_auc"] > winner.metrics["cv_roc_auc"] + settings.ensemble_min_gain:
        vote = build_ensemble([(f, members[f]) for f in combo])
        return FinalCandidate(vote_name(combo), vote, metrics, cv=result, families=combo)
    return FinalCandidate(
        winner.family,
        members[winner.family],
        dict(winner.metrics),
        cv=member_cv[winner.family],
        families=(winner.family,),
    )


def estimator_for(config: PipelineConfig, dataset: Dataset, outcome: FamilyOutcome, n_rows: int = 0):
    """An unfitted estimator with a family's best parameters, threaded for ``n_rows`` training rows."""
    return build_estimator(
        outcome.family,
        outcome.best_params,
        dataset.categorical,
        dataset.numeric,
        config.seed,
        n_jobs=family_jobs(outcome.family, config.optimize.n_jobs, n_rows),
        n_rows=n_rows or None,
    )


def fit_final(
    config: PipelineConfig,
    estimator,
    train_x: pd.DataFrame,
    train_y: pd.Series,
    splits: list,
    uncalibrated: CVResult | None = None,
) -> tuple[object, CalibrationChoice]:
    """Refit ``estimator`` on the whole training part, calibrated only if out-of-fold log loss improves.

    A scorecard is never calibrated: its logistic regression is fitted on the log-odds scale already,
    and its published points must add up to the very score it gives.
    The threshold (in the returned choice) is chosen on the final form's out-of-fold scores.
    Pure: the training part in, a fitted model out; the test part is not an argument.
    """
    settings = config.optimize
    if uncalibrated is None:
        uncalibrated = cross_validate(estimator, train_x, train_y, splits, config.costs, n_jobs=1)
    methods = [] if scorecard.is_scorecard(estimator) else settings.calibration_methods
    choice = select_calibration(
        estimator,
        train_x,
        train_y,
        splits,
        methods,
        config.costs,
        uncalibrated=uncalibrated,
        max_auc_loss=settings.calibration_max_auc_loss,
    )
    if choice.method == "none":
        return estimator.fit(train_x, train_y), choice
    final = calibrated(estimator, choice.method, settings.cv_folds, config.seed)
    if np.isfinite(uncalibrated.oof_scores).all():  # the folds' scores are there: one refit
        return fit_on_scores(final, train_x, train_y, uncalibrated.oof_scores), choice
    return final.fit(train_x, train_y), choice
