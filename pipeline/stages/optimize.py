"""Stage 2, optimization: tune the research's top families, calibrate, pick a threshold, test once.

Hands over through MLflow: the parent run carries ``optimize.model_uri`` (the logged model),
``optimize.threshold`` and the ``test_*`` metrics; every Optuna trial is a nested run. The test
part is touched once, after every choice (family, parameters, calibration, threshold) is made
on the training part.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd
from tabulate import tabulate
from threadpoolctl import threadpool_limits

from pipeline import budget, evaluation_report, speed, stability, tuning
from pipeline.config import PipelineConfig
from pipeline.data import check_folds, load_dataset, split_dataset
from pipeline.evaluation import all_metrics, cost_curve
from pipeline.final_model import (
    FamilyOutcome,
    FinalCandidate,
    choose_final_estimator,
    fit_final,
    merge_outcomes,
    openmp_threads,
)
from pipeline.tracking import handover, keys, model_io, runs, trials
from pipeline.training import TrainingPart, folds, positive_scores, sampled_part

logger = logging.getLogger(__name__)


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
    steps: list[budget.Step] = field(default_factory=list)  # planned and spent seconds per step

    def describe(self) -> str:
        rows = [
            [
                f.family + (" *" if f.family == self.best_family else ""),
                f"{f.trials_done}/{f.trials_cap}",
                f.stopped_by,
                f.trials_run_now,
                f.pruned,
                f.metrics.get("cv_roc_auc"),
                f.metrics.get("cv_expected_cost"),
            ]
            for f in self.families
        ]
        table = tabulate(
            rows,
            headers=["family", "trials/cap", "stopped by", "new", "pruned", "cv ROC AUC", "cv cost"],
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
            "",
            tabulate(
                [[st.name, st.planned, st.spent, st.stopped_by] for st in self.steps],
                headers=["budget step", "planned s", "spent s", "stopped by"],
                floatfmt=".1f",
            ),
        ]
        return "\n".join(lines)


# --- The stage ---------------------------------------------------------------------------------------


def run(
    config: PipelineConfig, research_run_id: str | None = None, started: float | None = None
) -> OptimizeResult:
    """Run stage 2 and return the winner's summary; raises PipelineError on bad input.

    ``started`` (``time.monotonic()``) is when the stage's clock began: the process's start for the
    command, now when not given.
    """
    started = time.monotonic() if started is None else started
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    settings = config.optimize
    check_folds(dataset.target.iloc[split.train_index], settings.cv_folds, "optimize.cv_folds")
    session = runs.connect(config)
    research_run = handover.find_research_run(session, dataset, research_run_id)
    handover.check_split(session, research_run, split)
    families = handover.top_families(research_run, settings.top_k)
    tuning.validate_spaces(settings.search_spaces, families, settings.known_configurations)
    research_step, fold_seconds, research_folds = handover.research_budget(research_run, config)

    def left() -> float:
        """Seconds of the budget still unspent by stages 1 and 2."""
        return budget.seconds_left(config.budget_seconds, research_step.spent, time.monotonic() - started)

    # Row labels stay the dataset positions, so anything fitted can be traced back to its rows.
    train_x = dataset.features.iloc[split.train_index]
    train_y = dataset.target.iloc[split.train_index]
    splits = folds(train_y, settings.cv_folds, config.seed)
    whole = TrainingPart(train_x, train_y, splits)
    sampled = handover.family_rows(research_run)
    parts: dict[int, TrainingPart] = {whole.rows: whole}

    def part_of(family: str) -> TrainingPart:
        """The rows a family is tuned and refitted on: the sample stage 1 drew for it, else all."""
        rows = min(sampled.get(family, whole.rows), whole.rows)
        if rows not in parts:
            parts[rows] = sampled_part(whole, rows, settings.cv_folds, config.seed)
        return parts[rows]

    research_id = research_run.info.run_id
    tags = runs.base_tags(config, keys.STAGE_OPTIMIZE, dataset, split)
    run_name = f"{keys.STAGE_OPTIMIZE}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    stage_tags = {**tags, keys.TAG_RESEARCH_RUN: research_id, keys.TAG_TUNED_FAMILIES: json.dumps(families)}
    # OpenMP threads (HistGradientBoosting, LightGBM) capped for the whole stage: one on small data,
    # optimize.n_jobs from OPENMP_MIN_ROWS training rows (see OPENMP_FAMILIES).
    with (
        runs.stage_run(session, run_name, stage_tags) as run_id,
        threadpool_limits(limits=openmp_threads(settings.n_jobs, len(train_y)), user_api="openmp"),
    ):
        runs.log_batch(
            session,
            run_id,
            params={
                "seed": config.seed,
                "top_k": settings.top_k,
                "cv_folds": settings.cv_folds,
                "n_trials": settings.n_trials,
                keys.PARAM_BUDGET_SECONDS: config.budget_seconds,
                "pruning": settings.pruning,
                "calibration_methods": ",".join(settings.calibration_methods),
                "calibration_max_auc_loss": settings.calibration_max_auc_loss,
                "report_max_rows": settings.report_max_rows,
                "ensemble": settings.ensemble,
                "ensemble_min_gain": settings.ensemble_min_gain,
                "cost_false_negative": config.costs.false_negative,
                "cost_false_positive": config.costs.false_positive,
                "families": ",".join(families),
            },
        )
        inputs = runs.log_datasets(session, run_id, dataset, split)
        runs.log_split(session, run_id, split)

        storage = tuning.open_storage(session.uri, config.root)
        location = tuning.storage_location(session.uri, config.root)
        runs.log_batch(
            session,
            run_id,
            tags={
                keys.TAG_OPTUNA_STORAGE: location.safe_url,
                keys.TAG_OPTUNA_SHARED: str(location.shared).lower(),
            },
        )
        # The final step's logging, charts and tables, scaled to how fast this machine is now.
        probe = speed.probe_seconds()
        overhead = budget.fixed_seconds(budget.FINAL_OVERHEAD_SECONDS, probe)
        runs.log_batch(
            session, run_id, metrics={keys.METRIC_SPEED_PROBE: probe, keys.METRIC_FINAL_OVERHEAD: overhead}
        )
        tuning_started_with = left()
        tuned: dict[str, FamilyOutcome] = {}
        family_steps: dict[str, budget.Step] = {}

        def reserve_with(final_families: list[str]) -> float:
            """The final step's reserve were these families in it (a name given twice counts once)."""
            return budget.final_reserve(
                {f: fold_seconds.get(f, 0.0) for f in final_families},
                research_folds,
                settings.ensemble,
                tuning_started_with,
                overhead,
            )

        def trial_of(family: str) -> float:
            """Predicted seconds of one of ``family``'s trials."""
            return budget.trial_seconds(fold_seconds.get(family, 0.0), research_folds, settings.cv_folds)

        def tune(family: str, share: float, trial: float) -> None:
            part = part_of(family)
            outcome = trials.tune_family(
                config,
                session,
                run_id,
                tags,
                storage,
                family,
                dataset,
                part.features,
                part.target,
                part.splits,
                seconds=share,
                fold_seconds=trial / settings.cv_folds,
                sample_rows=part.rows if part.rows < whole.rows else None,
            )
            earlier, step = tuned.get(family), family_steps.get(family)
            tuned[family] = outcome if earlier is None else merge_outcomes(earlier, outcome)
            family_steps[family] = budget.Step(
                keys.BUDGET_STEP_TUNE + family,
                share + (step.planned if step else 0.0),
                outcome.spent_seconds + (step.spent if step else 0.0),
                keys.BUDGET_STOPPED_TIME if outcome.cut_short else "",
            )

        # The leaders by research get the most time; a family clearly behind, a smaller share.
        weights = budget.family_weights(families, handover.family_scores(research_run))
        logger.info("tuning shares by weight: %s", ", ".join(f"{f} {w:g}" for f, w in weights.items()))
        # No family gets more than its part of this first plan: what a family skipped or stopped
        # early leaves goes to round two, the best family first, not to whoever comes next.
        planned_left, planned_reserve = left(), reserve_with(families)
        planned = budget.with_one_trial_each(
            {
                f: budget.family_share(planned_left, planned_reserve, weights[f], sum(weights.values()))
                for f in families
            },
            {f: trial_of(f) for f in families},
        )
        # The leader's first trials (its research candidate, the known configurations) are the best
        # bet of the stage: its plan fits them, the others' shares give way (round two gives back).
        leader = max(families, key=lambda f: weights[f])
        first = tuning.first_configurations(config, leader)
        first_trials = budget.first_trials_seconds(trial_of(leader), first.reference, first.queued)
        planned = budget.with_leader_first(planned, leader, first_trials)
        for position, family in enumerate(families):
            # The final step refits what may be in it: the families tuned and those still to come.
            reserve = reserve_with([*tuned, *families[position:]])
            weights_left = sum(weights[f] for f in families[position:])
            trial = trial_of(family)
            needed = min(max(trial, first_trials), planned[family]) if family == leader else trial
            share = budget.first_round_share(
                left(), reserve, weights[family], weights_left, planned[family], needed
            )
            skipped = budget.skip_family(share, trial, first=not tuned)
            if skipped:
                logger.warning("tuning of %s %s", family, skipped)
                family_steps[family] = budget.Step(
                    keys.BUDGET_STEP_TUNE + family, share, 0.0, keys.BUDGET_STOPPED_SKIPPED
                )
                continue
            tune(family, share, trial)

        # Round two plans with what round one's trials measured.
        fold_seconds = dict(fold_seconds)
        for family, outcome in tuned.items():
            measured = budget.fold_seconds_from_trials(
                outcome.spent_seconds, outcome.trials_run_now, settings.cv_folds, research_folds
            )
            if measured is not None:
                fold_seconds[family] = measured

        # Time the first round left (a family that reached its trial cap, a reserve kept for
        # families that were then skipped) goes first to the families it skipped, in research
        # order: each gets an even part of what is left (one more part kept for the families tuned
        # already), at least one trial. A family's first trials are its research candidate and its
        # known configurations, worth more than more trials of a family tuned already (on an
        # 8,000-row table the leader's 25 trials found nothing after its third). The rest goes to
        # the families time stopped, the best first, with all of it (what it leaves goes to the
        # next), then to those still skipped. A family whose one trial cannot fit is passed over.
        def second_round(family: str, share: float, trial: float) -> None:
            if budget.extra_round(share, trial):
                logger.info("%s: %.0f s more of the budget, left by the first round", family, share)
                tune(family, share, trial)

        untuned = [f for f in families if f not in tuned]
        for position, family in enumerate(untuned):
            available, trial = max(0.0, left() - reserve_with([*tuned, family])), trial_of(family)
            second_round(family, min(available, max(trial, available / (len(untuned) - position + 1))), trial)
        again = sorted(
            (f for f in tuned if tuned[f].cut_short), key=lambda f: tuning.rank_key(tuned[f].metrics)
        ) + [f for f in families if f not in tuned]
        for family in again:
            second_round(family, max(0.0, left() - reserve_with([*tuned, family])), trial_of(family))

        def choose(among: list[str]) -> tuple[TrainingPart, FinalCandidate]:
            """The rows and the final candidate (a soft vote, or one family) of these tuned families."""
            outcomes = [tuned[f] for f in among]
            winner = min(outcomes, key=lambda o: tuning.rank_key(o.metrics))
            # The winner's rows (a sample when stage 1 drew one); a soft vote only of families tuned
            # on the same rows, as it averages their out-of-fold scores row by row.
            part = part_of(winner.family)
            voters = [o for o in outcomes if part_of(o.family).rows == part.rows]
            return part, choose_final_estimator(
                config, dataset, voters, winner, part.features, part.target, part.splits
            )

        final_started, final_planned = time.monotonic(), max(0.0, left())
        part, candidate = choose([f for f in families if f in tuned])
        # The reserve was kept for the dearest final (a vote refitting every tuned family). With
        # the candidate known, what its own refit does not need goes to its best family still cut
        # short by time, for one more round; the candidate is then chosen again among the same
        # families, so its refit stays within what is left. Only when choosing again costs no fit
        # (this process ran every member's best trial, so their out-of-fold scores are in hand).
        spare = [f for f in candidate.families if tuned[f].cut_short]
        if spare and all(tuned[f].cv is not None for f in candidate.families):
            family = min(spare, key=lambda f: tuning.rank_key(tuned[f].metrics))
            share, trial = max(0.0, left() - reserve_with(list(candidate.families))), trial_of(family)
            if budget.extra_round(share, trial):
                logger.info("%s: %.0f s more of the budget, left by the final step's reserve", family, share)
                tune(family, share, trial)
                part, candidate = choose(list(candidate.families))
                final_started, final_planned = time.monotonic(), max(0.0, left())
        steps = [research_step, *(family_steps[f] for f in families)]
        outcomes = [tuned[f] for f in families if f in tuned]
        winner = min(outcomes, key=lambda o: tuning.rank_key(o.metrics))
        logger.info(
            "winner %s: cv ROC AUC %.4f, cost %.4f, params %s; final model %s",
            winner.family,
            winner.metrics["cv_roc_auc"],
            winner.metrics["cv_expected_cost"],
            winner.best_params,
            candidate.name,
        )
        if part.rows < whole.rows:
            logger.warning(
                "%s is refitted on its sample of %d of %d training rows (research.family_rows)",
                candidate.name,
                part.rows,
                whole.rows,
            )
        final, choice = fit_final(
            config, candidate.estimator, part.features, part.target, part.splits, candidate.cv
        )
        threshold = choice.threshold

        # The one evaluation on the held-out test part.
        test_x = dataset.features.iloc[split.test_index]
        test_y = dataset.target.iloc[split.test_index].to_numpy()
        test_scores = positive_scores(final, test_x)
        test_metrics = {
            f"test_{k}": v for k, v in all_metrics(test_y, test_scores, threshold, config.costs).items()
        }
        oof_curve = cost_curve(part.target.to_numpy(), choice.oof_scores, config.costs)
        metadata = {
            keys.META_THRESHOLD: threshold,
            keys.META_RESEARCH_RUN: research_id,
            keys.META_FAMILIES: families,
            keys.META_BEST_FAMILY: candidate.name,
            keys.META_CALIBRATION: choice.method,
            keys.META_DATASET_DIGEST: dataset.digest,
            # What monitoring compares new applicants with; out-of-fold scores, as new rows are scored.
            keys.META_TRAINING_PROFILE: stability.build_profile(
                part.features,
                choice.oof_scores,
                dataset.categorical,
                dataset.numeric,
                config.monitor.bins,
                config.monitor.max_categories,
            ),
            keys.META_SCORECARD_SCALING: config.scorecard.model_dump(),
            keys.META_REASON_COUNT: config.reason_codes.count,
        }
        model_info = model_io.log_model(session, run_id, final, features=dataset.features, metadata=metadata)
        model_uri = f"models:/{model_info.model_id}"
        runs.log_batch(
            session,
            run_id,
            params={"final_model": candidate.name, **{f"best_{k}": v for k, v in winner.best_params.items()}},
            metrics={
                "threshold": threshold,
                "cv_roc_auc": candidate.cv_metrics["cv_roc_auc"],
                "cv_expected_cost": candidate.cv_metrics["cv_expected_cost"],
                "oof_expected_cost": oof_curve.best_cost,
                keys.METRIC_TRAIN_ROWS: part.rows,
                **{f"oof_log_loss_{m}": v for m, v in choice.log_losses.items()},
                **{f"oof_roc_auc_{m}": v for m, v in choice.roc_aucs.items()},
            },
            tags={
                keys.TAG_BEST_FAMILY: candidate.name,
                keys.TAG_CALIBRATION: choice.method,
                keys.TAG_THRESHOLD: repr(float(threshold)),
                keys.TAG_MODEL_ID: model_info.model_id,
                keys.TAG_MODEL_URI: model_uri,
            },
        )
        # The one evaluation belongs to the model too: its page in the UI lists these, on the test part.
        runs.log_model_metrics(session, run_id, model_info.model_id, test_metrics, dataset=inputs["test"])
        scores_frame = pd.DataFrame({"row_index": split.test_index, "y_true": test_y, "score": test_scores})
        runs.log_text(session, run_id, scores_frame.to_csv(index=False), keys.ARTIFACT_TEST_SCORES)
        summary = pd.DataFrame(
            [
                {
                    "family": o.family,
                    "study": o.study_name,
                    "trials": o.trials_done,
                    "trials_cap": o.trials_cap,
                    "stopped_by": o.stopped_by,
                    "pruned": o.pruned,
                    "cv_roc_auc": o.metrics["cv_roc_auc"],
                    "cv_expected_cost": o.metrics["cv_expected_cost"],
                    "best_params": json.dumps(o.best_params),
                    "planned_seconds": o.planned_seconds,
                    "spent_seconds": o.spent_seconds,
                }
                for o in outcomes
            ]
            + [
                {
                    "family": st.name.removeprefix(keys.BUDGET_STEP_TUNE),
                    "trials": 0,
                    "trials_cap": settings.n_trials,
                    "stopped_by": keys.BUDGET_STOPPED_SKIPPED,
                    "planned_seconds": st.planned,
                    "spent_seconds": 0.0,
                }
                for st in steps
                if st.stopped_by == keys.BUDGET_STOPPED_SKIPPED
            ]
        )
        runs.log_frame(session, run_id, summary, keys.ARTIFACT_FAMILIES)

        # Reporting only, after the evaluation; half the final step's fixed part is kept for the rest.
        evaluation = evaluation_report.HeldOutEvaluation(
            candidate.name, test_x, test_y, test_scores, float(threshold), test_metrics, oof_curve
        )
        evaluation_report.log_evaluation(
            config, session, run_id, final, evaluation, metadata, lambda: left() - overhead / 2
        )

        steps.append(budget.Step(keys.BUDGET_STEP_FINAL, final_planned, time.monotonic() - final_started))
        spent = research_step.spent + time.monotonic() - started
        steps.append(budget.Step(keys.BUDGET_STEP_TOTAL, config.budget_seconds, spent))
        handover.log_budget(session, run_id, steps)

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
        steps=steps,
    )
