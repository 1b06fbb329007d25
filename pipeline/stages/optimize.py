"""Stage 2, optimization: tune the research's top families, calibrate, pick a threshold, test once.

Hands over through MLflow: the parent run carries ``optimize.model_uri`` (the logged model),
``optimize.threshold`` and the ``test_*`` metrics; every Optuna trial is a nested run. The test
part is touched once, after every choice (family, parameters, calibration, threshold) is made
on the training part.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import optuna
import pandas as pd
from sklearn.inspection import permutation_importance
from tabulate import tabulate
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from pipeline import plots, tracking, tuning
from pipeline.calibration import CalibrationChoice, calibrated, select_calibration
from pipeline.config import PipelineConfig
from pipeline.data import Dataset, Split, check_folds, load_dataset, split_dataset
from pipeline.errors import LookupFailedError
from pipeline.evaluation import all_metrics, cost_curve
from pipeline.models import build_ensemble, build_estimator
from pipeline.training import CVResult, cross_validate, folds, positive_scores, result_from_scores

logger = logging.getLogger(__name__)

STAGE = "optimize"
RESEARCH_STAGE = "research"
TAG_RANKED_FAMILIES = "research.ranked_families"  # written by stage 1
SPLIT_ARTIFACT = "split/indices.json"
# Families whose threads are OpenMP: on a shared 2-core machine, OpenMP's busy-waiting made one
# HistGradientBoosting CV take 86 s with the default thread count against 5 s with one thread.
OPENMP_FAMILIES = frozenset({"hist_gradient_boosting", "lightgbm"})
TEST_SCORES_ARTIFACT = "evaluation/test_scores.csv"


@dataclass(frozen=True)
class FamilyOutcome:
    family: str
    study_name: str
    trials_done: int
    trials_run_now: int
    pruned: int
    best_params: dict
    metrics: dict[str, float]  # CV summary of the family's best trial


@dataclass(frozen=True)
class OptimizeResult:
    run_id: str
    research_run_id: str
    dataset_digest: str
    families: list[FamilyOutcome]
    best_family: str
    calibration: str
    threshold: float
    test_metrics: dict[str, float]
    model_uri: str
    log_losses: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        rows = [
            [
                f.family + (" *" if f.family == self.best_family else ""),
                f.trials_done,
                f.trials_run_now,
                f.pruned,
                f.metrics.get("cv_roc_auc"),
                f.metrics.get("cv_expected_cost"),
            ]
            for f in self.families
        ]
        table = tabulate(
            rows,
            headers=["family", "trials", "new", "pruned", "cv ROC AUC", "cv cost"],
            floatfmt=".4f",
        )
        test = self.test_metrics
        lines = [
            f"optimize run {self.run_id} (research run {self.research_run_id}, "
            f"dataset {self.dataset_digest})",
            table,
            "",
            f"winner {self.best_family}, calibration {self.calibration}, threshold {self.threshold:.4f}",
            tabulate(
                [
                    ["ROC AUC", f"{test['test_roc_auc']:.4f}"],
                    ["average precision", f"{test['test_average_precision']:.4f}"],
                    ["log loss", f"{test['test_log_loss']:.4f}"],
                    ["Brier", f"{test['test_brier']:.4f}"],
                    ["KS", f"{test['test_ks']:.4f}"],
                    ["Gini", f"{test['test_gini']:.4f}"],
                    ["expected cost / applicant", f"{test['test_expected_cost']:.4f}"],
                    [
                        "TN / FP / FN / TP",
                        "{:.0f} / {:.0f} / {:.0f} / {:.0f}".format(
                            test["test_tn"], test["test_fp"], test["test_fn"], test["test_tp"]
                        ),
                    ],
                ],
                headers=["test part", "value"],
                floatfmt=".4f",
            ),
            f"model {self.model_uri}",
        ]
        return "\n".join(lines)


# --- Hand-over from stage 1 --------------------------------------------------------------------------


def find_research_run(session: tracking.TrackingSession, dataset: Dataset, research_run_id: str | None):
    """The given research run, or the latest finished one for this dataset; checked either way."""
    if research_run_id:
        run = tracking.get_run(session, research_run_id)
        tags = run.data.tags
        if tags.get(tracking.TAG_STAGE) != RESEARCH_STAGE or tags.get(tracking.TAG_ROLE) != "stage":
            raise LookupFailedError(f"run {research_run_id} is not a research stage run")
        if run.info.status != "FINISHED":
            raise LookupFailedError(f"research run {research_run_id} is {run.info.status}, not FINISHED")
    else:
        runs = tracking.search_stage_runs(
            session, RESEARCH_STAGE, {tracking.TAG_DATASET_DIGEST: dataset.digest}, max_results=1
        )
        if not runs:
            raise LookupFailedError(
                f"no finished research run for dataset digest {dataset.digest} in "
                f"{session.safe_uri}; run `python -m pipeline research` first"
            )
        run = runs[0]
    recorded = run.data.tags.get(tracking.TAG_DATASET_DIGEST)
    if recorded != dataset.digest:
        raise LookupFailedError(
            f"research run {run.info.run_id} used dataset {recorded}, but the data now has digest "
            f"{dataset.digest}; rerun research on this data"
        )
    return run


def check_split(session: tracking.TrackingSession, research_run, split: Split) -> None:
    """The research run's recorded test rows must be exactly the ones we hold out now."""
    run_id = research_run.info.run_id
    try:
        with tracking.quiet_artifact_downloads():
            recorded = json.loads(tracking.download_artifact_text(session, run_id, SPLIT_ARTIFACT))
    except Exception as error:
        raise LookupFailedError(f"research run {run_id} has no readable {SPLIT_ARTIFACT}: {error}") from None
    if sorted(recorded.get("test", [])) != sorted(split.test_index.tolist()):
        raise LookupFailedError(
            f"research run {run_id} held out other test rows than this split (seed or test_size changed?)"
        )
    if set(recorded.get("train", [])) != set(split.train_index.tolist()):
        raise LookupFailedError(f"research run {run_id} trained on other rows than this split")


def top_families(research_run, k: int) -> list[str]:
    raw = research_run.data.tags.get(TAG_RANKED_FAMILIES)
    try:
        ranked = json.loads(raw)
    except (TypeError, ValueError):
        raise LookupFailedError(
            f"research run {research_run.info.run_id} has no valid {TAG_RANKED_FAMILIES} tag"
        ) from None
    if not ranked:
        raise LookupFailedError(f"research run {research_run.info.run_id} ranked no families")
    return list(ranked[:k])


# --- Tuning with trials recorded as nested runs --------------------------------------------------------


def _trial_tags(base: dict[str, str], family: str, name: str, trial: optuna.trial.FrozenTrial) -> dict:
    return {
        **base,
        tracking.TAG_ROLE: "trial",
        tracking.TAG_FAMILY: family,
        tracking.TAG_OPTUNA_STUDY: name,
        tracking.TAG_OPTUNA_TRIAL: str(trial.number),
        "optuna.state": trial.state.name,
    }


def _record_trial(session, parent_run_id, base_tags, family, name, trial, logged: set[int]) -> None:
    if trial.number in logged or trial.state not in tuning.DONE_STATES:
        return
    tracking.log_child_run(
        session,
        parent_run_id,
        f"{family}-trial-{trial.number:03d}",
        tags=_trial_tags(base_tags, family, name, trial),
        params={"family": family, **trial.params},
        metrics=tuning.trial_metrics(trial),
        status="FINISHED" if trial.state == optuna.trial.TrialState.COMPLETE else "KILLED",
    )
    logged.add(trial.number)


def family_jobs(family: str, n_jobs: int) -> int:
    return 1 if family in OPENMP_FAMILIES else n_jobs


def family_objective(
    config: PipelineConfig,
    dataset: Dataset,
    family: str,
    features: pd.DataFrame,
    target: pd.Series,
    splits: list,
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
        n_jobs=family_jobs(family, settings.n_jobs),
        pruning=settings.pruning,
    )


def tune_family(
    config: PipelineConfig,
    session: tracking.TrackingSession,
    parent_run_id: str,
    base_tags: dict[str, str],
    storage,
    family: str,
    dataset: Dataset,
    features: pd.DataFrame,
    target: pd.Series,
    splits: list,
) -> FamilyOutcome:
    settings = config.optimize
    space = settings.search_spaces[family]
    name = tuning.study_name(dataset.digest, family, space, settings.cv_folds, config.seed, config.costs)
    tracking.log_batch(session, parent_run_id, tags={f"optimize.study.{family}": name})
    study = tuning.open_study(storage, name, config.seed, pruning=settings.pruning)

    # Trials finished by an earlier, interrupted run (or another worker) whose run never landed.
    logged = tracking.logged_trial_numbers(session, name)
    for trial in tuning.done_trials(study):
        _record_trial(session, parent_run_id, base_tags, family, name, trial, logged)

    remaining = tuning.remaining_trials(study, settings.n_trials)
    progress = tqdm(total=remaining, desc=f"optimize {family}", unit="trial", leave=False)

    def record(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        _record_trial(session, parent_run_id, base_tags, family, name, trial, logged)
        best = tuning.best_trial(_study)
        if best is not None:
            progress.set_postfix_str(f"best AUC {best.value:.4f}")
        progress.update()

    objective = family_objective(config, dataset, family, features, target, splits)
    try:
        ran = tuning.tune(study, objective, settings.n_trials, settings.timeout_seconds, callbacks=[record])
    finally:
        progress.close()

    best = tuning.best_trial(study)
    if best is None:
        raise LookupFailedError(f"no trial of {family} completed within the budget; raise the budget")
    done = tuning.done_trials(study)
    return FamilyOutcome(
        family=family,
        study_name=name,
        trials_done=len(done),
        trials_run_now=ran,
        pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in done),
        best_params=dict(best.params),
        metrics=tuning.trial_metrics(best),
    )


# --- The final model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinalCandidate:
    """What stage 2 refits: the best family's best trial, or a soft vote of several families' best."""

    name: str
    estimator: object
    cv_metrics: dict[str, float]
    cv: CVResult | None = None  # computed here for a vote; a single family's comes from its trial


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

    Each family's best model is cross-validated once on the trials' folds. A soft vote's
    out-of-fold scores are then the mean of its members' (what ``VotingClassifier`` computes),
    so every subset is judged without another fit. The vote of all of them is the default; a
    smaller one replaces it only when its CV ROC AUC is higher by more than ``ensemble_min_gain``
    (a member that clearly hurts is dropped; noise is not chased). The vote is kept only when it
    beats the best single family by that margin too, as one model is cheaper to keep and score.
    Pure: training folds only, never the test part.
    """
    settings = config.optimize
    if not settings.ensemble or len(outcomes) < 2:
        return FinalCandidate(winner.family, estimator_for(config, dataset, winner), dict(winner.metrics))

    y = train_y.to_numpy()
    members = {o.family: estimator_for(config, dataset, o) for o in outcomes}
    member_cv = {
        family: cross_validate(model, train_x, train_y, splits, config.costs, n_jobs=1)
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
        return FinalCandidate(vote_name(combo), vote, metrics, cv=result)
    return FinalCandidate(winner.family, members[winner.family], dict(winner.metrics))


def estimator_for(config: PipelineConfig, dataset: Dataset, outcome: FamilyOutcome):
    """An unfitted estimator with a family's best parameters."""
    return build_estimator(
        outcome.family,
        outcome.best_params,
        dataset.categorical,
        dataset.numeric,
        config.seed,
        n_jobs=family_jobs(outcome.family, config.optimize.n_jobs),
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

    The threshold (in the returned choice) is chosen on the final form's out-of-fold scores.
    Pure: the training part in, a fitted model out; the test part is not an argument.
    """
    settings = config.optimize
    if uncalibrated is None:
        uncalibrated = cross_validate(estimator, train_x, train_y, splits, config.costs, n_jobs=1)
    choice = select_calibration(
        estimator,
        train_x,
        train_y,
        splits,
        settings.calibration_methods,
        config.costs,
        uncalibrated=uncalibrated,
        max_auc_loss=settings.calibration_max_auc_loss,
    )
    final = (
        estimator
        if choice.method == "none"
        else calibrated(estimator, choice.method, settings.cv_folds, config.seed)
    )
    final.fit(train_x, train_y)
    return final, choice


# --- The stage ---------------------------------------------------------------------------------------


def _importance(model, features: pd.DataFrame, target: pd.Series, repeats: int, seed: int):
    # ROC AUC is unchanged by a monotone calibration, so the base model ranks the features as the
    # calibrated model does, without scoring through the calibrator.
    folds_fitted = getattr(model, "calibrated_classifiers_", None)
    if folds_fitted:
        model = folds_fitted[0].estimator
    # One process: spawning workers and shipping the model costs more than 250 rows of scoring.
    result = permutation_importance(
        model, features, target, scoring="roc_auc", n_repeats=repeats, random_state=seed, n_jobs=1
    )
    return (
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


def run(config: PipelineConfig, research_run_id: str | None = None) -> OptimizeResult:
    """Run stage 2 and return the winner's summary; raises PipelineError on bad input."""
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    settings = config.optimize
    check_folds(dataset.target.iloc[split.train_index], settings.cv_folds, "optimize.cv_folds")
    session = tracking.connect(config)
    research_run = find_research_run(session, dataset, research_run_id)
    check_split(session, research_run, split)
    families = top_families(research_run, settings.top_k)
    tuning.validate_spaces(settings.search_spaces, families)

    # Row labels stay the dataset positions, so anything fitted can be traced back to its rows.
    train_x = dataset.features.iloc[split.train_index]
    train_y = dataset.target.iloc[split.train_index]
    splits = folds(train_y, settings.cv_folds, config.seed)

    research_id = research_run.info.run_id
    tags = tracking.base_tags(config, STAGE, dataset, split)
    run_name = f"{STAGE}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    stage_tags = {**tags, "optimize.research_run_id": research_id, "optimize.families": json.dumps(families)}
    # OpenMP threads (HistGradientBoosting, LightGBM) capped at one for the whole stage: see OPENMP_FAMILIES.
    with (
        tracking.stage_run(session, run_name, stage_tags) as run_id,
        threadpool_limits(limits=1, user_api="openmp"),
    ):
        tracking.log_batch(
            session,
            run_id,
            params={
                "seed": config.seed,
                "top_k": settings.top_k,
                "cv_folds": settings.cv_folds,
                "n_trials": settings.n_trials,
                "timeout_seconds": settings.timeout_seconds,
                "pruning": settings.pruning,
                "calibration_methods": ",".join(settings.calibration_methods),
                "calibration_max_auc_loss": settings.calibration_max_auc_loss,
                "ensemble": settings.ensemble,
                "ensemble_min_gain": settings.ensemble_min_gain,
                "cost_false_negative": config.costs.false_negative,
                "cost_false_positive": config.costs.false_positive,
                "families": ",".join(families),
            },
        )
        tracking.log_datasets(session, run_id, dataset, split)
        tracking.log_dict(
            session,
            run_id,
            {"train": split.train_index.tolist(), "test": split.test_index.tolist()},
            SPLIT_ARTIFACT,
        )

        storage = tuning.open_storage(session.uri, config.root)
        outcomes = [
            tune_family(config, session, run_id, tags, storage, family, dataset, train_x, train_y, splits)
            for family in families
        ]
        winner = min(outcomes, key=lambda o: tuning.rank_key(o.metrics))
        logger.info(
            "winner %s: cv ROC AUC %.4f, cost %.4f, params %s",
            winner.family,
            winner.metrics["cv_roc_auc"],
            winner.metrics["cv_expected_cost"],
            winner.best_params,
        )

        candidate = choose_final_estimator(config, dataset, outcomes, winner, train_x, train_y, splits)
        final, choice = fit_final(config, candidate.estimator, train_x, train_y, splits, candidate.cv)
        threshold = choice.threshold

        # The one evaluation on the held-out test part.
        test_x = dataset.features.iloc[split.test_index]
        test_y = dataset.target.iloc[split.test_index].to_numpy()
        test_scores = positive_scores(final, test_x)
        test_metrics = {
            f"test_{k}": v for k, v in all_metrics(test_y, test_scores, threshold, config.costs).items()
        }
        oof_curve = cost_curve(train_y.to_numpy(), choice.oof_scores, config.costs)
        model_info = tracking.log_model(
            session,
            run_id,
            final,
            input_example=train_x.head(5),
            metadata={
                "threshold": threshold,
                "research_run_id": research_id,
                "families": families,
                "best_family": candidate.name,
                "calibration": choice.method,
                "dataset_digest": dataset.digest,
            },
        )
        model_uri = f"models:/{model_info.model_id}"
        tracking.log_batch(
            session,
            run_id,
            params={"final_model": candidate.name, **{f"best_{k}": v for k, v in winner.best_params.items()}},
            metrics={
                "threshold": threshold,
                "cv_roc_auc": candidate.cv_metrics["cv_roc_auc"],
                "cv_expected_cost": candidate.cv_metrics["cv_expected_cost"],
                "oof_expected_cost": oof_curve.best_cost,
                **{f"oof_log_loss_{m}": v for m, v in choice.log_losses.items()},
                **{f"oof_roc_auc_{m}": v for m, v in choice.roc_aucs.items()},
                **test_metrics,
            },
            tags={
                "optimize.best_family": candidate.name,
                "optimize.calibration": choice.method,
                "optimize.threshold": repr(float(threshold)),
                "optimize.model_id": model_info.model_id,
                "optimize.model_uri": model_uri,
            },
        )
        scores_frame = pd.DataFrame({"row_index": split.test_index, "y_true": test_y, "score": test_scores})
        tracking.log_text(session, run_id, scores_frame.to_csv(index=False), TEST_SCORES_ARTIFACT)
        summary = pd.DataFrame(
            [
                {
                    "family": o.family,
                    "study": o.study_name,
                    "trials": o.trials_done,
                    "pruned": o.pruned,
                    "cv_roc_auc": o.metrics["cv_roc_auc"],
                    "cv_expected_cost": o.metrics["cv_expected_cost"],
                    "best_params": json.dumps(o.best_params),
                }
                for o in outcomes
            ]
        )
        tracking.log_frame(session, run_id, summary, "families")

        # Reporting only, after the evaluation: nothing below feeds a choice.
        importance = _importance(final, test_x, pd.Series(test_y), settings.permutation_repeats, config.seed)
        tracking.log_frame(session, run_id, importance, "evaluation/permutation_importance")
        test_curve = cost_curve(test_y, test_scores, config.costs)
        figures = {
            "plots/roc_curve.png": plots.roc_chart(test_y, test_scores, candidate.name),
            "plots/precision_recall.png": plots.precision_recall_chart(test_y, test_scores),
            "plots/calibration.png": plots.calibration_chart(test_y, test_scores),
            "plots/confusion_matrix.png": plots.confusion_chart(
                test_metrics["test_tn"],
                test_metrics["test_fp"],
                test_metrics["test_fn"],
                test_metrics["test_tp"],
                threshold,
            ),
            "plots/cost_vs_threshold.png": plots.cost_chart(
                np.clip(oof_curve.thresholds, 0, 1),
                oof_curve.costs,
                threshold,
                test_curve=(np.clip(test_curve.thresholds, 0, 1), test_curve.costs),
            ),
            "plots/score_distribution.png": plots.score_distribution_chart(test_y, test_scores, threshold),
            "plots/permutation_importance.png": plots.importance_chart(importance),
        }
        for path, figure in figures.items():
            tracking.log_figure(session, run_id, figure, path)
            plots.close(figure)

    logger.info(
        "optimize run %s finished: %s (%s), test ROC AUC %.4f, cost %.4f",
        run_id,
        candidate.name,
        choice.method,
        test_metrics["test_roc_auc"],
        test_metrics["test_expected_cost"],
    )
    return OptimizeResult(
        run_id=run_id,
        research_run_id=research_id,
        dataset_digest=dataset.digest,
        families=outcomes,
        best_family=candidate.name,
        calibration=choice.method,
        threshold=float(threshold),
        test_metrics=test_metrics,
        model_uri=model_uri,
        log_losses=choice.log_losses,
    )
