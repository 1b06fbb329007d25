"""Stage 3, registration: register the optimized model behind the champion/challenger gate.

Reads the optimization run through MLflow, re-scores challenger and champion on the
current held-out test part, applies :mod:`pipeline.gate`, and moves the aliases.

Safe to rerun and to race: each version carries the optimization run id it came from, and its
``gate.status`` tag is ``pending`` from creation until the aliases have moved, when it becomes
``done`` (written last). A rerun finds a ``done`` version and registers nothing; a ``pending``
one (a crash in between) is finished, not duplicated. On a database store the sequence runs
under a per-model lock (:func:`pipeline.tracking.registry.registry_lock`); through a tracking
server, which has none, racing registrations order themselves through the registry
(:func:`pipeline.tracking.registry.claim_version`, :func:`~pipeline.tracking.registry.wait_for_turn`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from pipeline import gate, plots
from pipeline.comparison import compare_models, comparison_markdown, confusion_frame
from pipeline.config import PipelineConfig
from pipeline.data import Dataset, Split, load_dataset, split_dataset
from pipeline.errors import LookupFailedError
from pipeline.evaluation import all_metrics
from pipeline.tracking import keys, lookups, model_io, registry, runs
from pipeline.tracking.keys import (
    STATUS_DONE,
    STATUS_PENDING,
    VTAG_ARCHIVED,
    VTAG_DECISION,
    VTAG_OPTIMIZE_RUN,
    VTAG_REASON,
    VTAG_RESEARCH_RUN,
    VTAG_STATUS,
    VTAG_THRESHOLD,
)
from pipeline.tracking.session import TrackingSession

logger = logging.getLogger(__name__)

# Recorded and re-computed test ROC AUC may differ by float noise only.
_SCORE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Challenger:
    """What the optimization run recorded about its model."""

    run_id: str
    model_uri: str
    model_id: str | None
    threshold: float
    research_run_id: str | None
    family: str | None
    dataset_digest: str | None
    test_digest: str | None
    git_commit: str | None
    test_roc_auc: float | None
    test_expected_cost: float | None


@dataclass(frozen=True)
class Outcome:
    version: str
    decision: str
    reason: str
    gate_decision: gate.GateDecision | None = None
    draws: pd.DataFrame | None = None
    champion_version: str | None = None
    other_data: bool = False
    figures: dict[str, float] = field(default_factory=dict)
    resumed: bool = False
    earlier_decision: str | None = None  # for ALREADY_REGISTERED: what the gate decided then
    evidence: Evidence | None = None  # the comparison table and confusion matrices, for people


@dataclass(frozen=True)
class Evidence:
    """Champion and challenger on the same test rows, each at its own threshold (pipeline.comparison)."""

    table: pd.DataFrame
    confusion: pd.DataFrame


@dataclass(frozen=True)
class RegisterResult:
    run_id: str
    model_name: str
    optimize_run_id: str
    outcome: Outcome
    fail_on_reject: bool

    @property
    def decision(self) -> str:
        return self.outcome.decision

    @property
    def version(self) -> str:
        return self.outcome.version

    @property
    def exit_code(self) -> int:
        rejected = gate.REJECTED in (self.outcome.decision, self.outcome.earlier_decision)
        return 1 if self.fail_on_reject and rejected else 0

    def describe(self) -> str:
        o = self.outcome
        lines = [
            f"register run {self.run_id}: {self.model_name} version {o.version} "
            f"{o.decision.upper().replace('_', ' ')} (optimize run {self.optimize_run_id})",
            f"  reason: {o.reason}",
        ]
        f = o.figures
        if "challenger_test_roc_auc" in f:
            lines.append(
                f"  challenger: test ROC AUC {f['challenger_test_roc_auc']:.4f}, "
                f"expected cost {f['challenger_test_expected_cost']:.4f}"
            )
        if "champion_test_roc_auc" in f:
            lines.append(
                f"  champion v{o.champion_version}: test ROC AUC {f['champion_test_roc_auc']:.4f}, "
                f"expected cost {f['champion_test_expected_cost']:.4f}"
                + (" (trained on another dataset digest)" if o.other_data else "")
            )
            lines.append(
                f"  P(improvement): cost {f['probability_of_improvement_cost']:.3f}, "
                f"ROC AUC {f['probability_of_improvement_roc_auc']:.3f}"
            )
        if o.evidence is not None:
            lines.append(comparison_markdown(o.evidence.table))
        if o.gate_decision is not None:
            for check in o.gate_decision.floors:
                mark = "ok" if check.passed else "FAILED"
                lines.append(f"  floor {check.name}: {mark} ({check.note})")
        return "\n".join(lines)


# --- Reading the hand-over ------------------------------------------------------------------------


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def find_optimize_run(session: TrackingSession, optimize_run_id: str | None):
    """The given optimization run, checked, or the latest finished one."""
    try:
        return lookups.finished_stage_run(session, keys.STAGE_OPTIMIZE, optimize_run_id, "optimization")
    except LookupFailedError as error:
        if optimize_run_id is None:
            raise LookupFailedError(f"{error}; run stage 2 first") from None
        raise


def challenger_from_run(run) -> Challenger:
    tags, metrics = run.data.tags, run.data.metrics
    missing = [key for key in (keys.TAG_MODEL_URI, keys.TAG_THRESHOLD) if not tags.get(key)]
    if missing:
        raise LookupFailedError(f"optimization run {run.info.run_id} has no {', '.join(missing)} tag")
    threshold = _float(tags[keys.TAG_THRESHOLD])
    if threshold is None:
        raise LookupFailedError(f"optimization run {run.info.run_id} records a non-numeric threshold")
    return Challenger(
        run_id=run.info.run_id,
        model_uri=tags[keys.TAG_MODEL_URI],
        model_id=tags.get(keys.TAG_MODEL_ID),
        threshold=threshold,
        research_run_id=tags.get(keys.TAG_RESEARCH_RUN),
        family=tags.get(keys.TAG_BEST_FAMILY),
        dataset_digest=tags.get(keys.TAG_DATASET_DIGEST),
        test_digest=tags.get(keys.TAG_TEST_DIGEST),
        git_commit=tags.get(keys.TAG_GIT_COMMIT),
        test_roc_auc=metrics.get(keys.METRIC_TEST_ROC_AUC),
        test_expected_cost=metrics.get(keys.METRIC_TEST_EXPECTED_COST),
    )


def baseline_scores(session: TrackingSession, research_run_id: str | None) -> dict[str, float | None]:
    """Best ``cv_roc_auc_mean`` of each baseline family among the research run's candidates."""
    scores: dict[str, float | None] = dict.fromkeys(gate.BASELINE_FLOOR_FAMILIES)
    if not research_run_id:
        return scores
    for child in lookups.child_runs(session, research_run_id):
        family = child.data.tags.get(keys.TAG_FAMILY)
        value = child.data.metrics.get(keys.METRIC_CV_ROC_AUC_MEAN)
        if family in scores and value is not None:
            scores[family] = max(value, scores[family] or -np.inf)
    return scores


# --- The gate, with both models re-scored --------------------------------------------------------


def _positive_scores(estimator, features: pd.DataFrame) -> np.ndarray:
    return np.asarray(estimator.predict_proba(features)[:, 1], dtype=float)


def evaluate_gate(
    config: PipelineConfig,
    session: TrackingSession,
    challenger: Challenger,
    dataset: Dataset,
    split: Split,
    champion,
) -> tuple[gate.GateDecision, pd.DataFrame | None, dict[str, float], bool, Evidence]:
    """The gate decision, bootstrap draws, figures, whether the champion saw other data, and the
    comparison people read."""
    settings = config.registration
    test_x = dataset.features.iloc[split.test_index]
    test_y = dataset.target.iloc[split.test_index].to_numpy()
    challenger_scores = _positive_scores(model_io.load_model(challenger.model_uri).estimator, test_x)
    measured = all_metrics(test_y, challenger_scores, challenger.threshold, config.costs)
    notes: list[str] = []
    if (
        challenger.test_roc_auc is not None
        and abs(measured["roc_auc"] - challenger.test_roc_auc) > _SCORE_TOLERANCE
    ):
        notes.append(
            f"re-scored test ROC AUC {measured['roc_auc']:.6f} differs from the recorded "
            f"{challenger.test_roc_auc:.6f}"
        )
        logger.warning(notes[-1])
    figures = {
        "challenger_test_roc_auc": measured["roc_auc"],
        "challenger_test_expected_cost": measured["expected_cost"],
        "challenger_threshold": challenger.threshold,
    }
    baselines = baseline_scores(session, challenger.research_run_id)
    floors = gate.check_floors(measured["roc_auc"], settings.min_test_roc_auc, baselines)
    comparison, draws, other_data = None, None, False
    champion_scores, champion_threshold = None, None
    if champion is not None:
        loaded = model_io.load_model(f"models:/{settings.model_name}/{champion.version}")
        champion_threshold = _float(loaded.metadata.get("threshold"))
        if champion_threshold is None:
            champion_threshold = _float(champion.tags.get(VTAG_THRESHOLD))
        if champion_threshold is None:
            raise LookupFailedError(f"champion version {champion.version} records no decision threshold")
        champion_scores = _positive_scores(loaded.estimator, test_x)
        other_data = champion.tags.get(keys.TAG_DATASET_DIGEST) != dataset.digest
        if other_data:
            notes.append(
                f"champion v{champion.version} was trained on dataset "
                f"{champion.tags.get(keys.TAG_DATASET_DIGEST, 'unknown')}; "
                f"compared on the current test part of {dataset.digest}"
            )
        comparison, draws = gate.compare(
            test_y,
            challenger_scores,
            champion_scores,
            challenger.threshold,
            champion_threshold,
            config.costs,
            settings,
            config.seed,
        )
        figures.update(
            {
                "champion_test_roc_auc": comparison.champion_roc_auc,
                "champion_test_expected_cost": comparison.champion_expected_cost,
                "champion_threshold": champion_threshold,
                "roc_auc_gain": comparison.roc_auc_gain,
                "cost_saving": comparison.cost_saving,
                "probability_of_improvement_cost": comparison.probability_cost,
                "probability_of_improvement_roc_auc": comparison.probability_roc_auc,
            }
        )
    decision = gate.decide(floors, comparison, settings, notes)
    if decision.probability_of_improvement is not None:
        figures["probability_of_improvement"] = decision.probability_of_improvement
    sides = (test_y, challenger_scores, challenger.threshold)
    evidence = Evidence(
        table=compare_models(
            *sides, config.costs, champion_scores, champion_threshold, settings.bootstrap_samples, config.seed
        ),
        confusion=confusion_frame(*sides, champion_scores, champion_threshold),
    )
    return decision, draws, figures, other_data, evidence


# --- Registry moves, under the lock --------------------------------------------------------------


def _version_tags(challenger: Challenger) -> dict[str, str]:
    tags = {
        keys.TAG_GIT_COMMIT: challenger.git_commit or "unknown",
        keys.TAG_DATASET_DIGEST: challenger.dataset_digest or "unknown",
        keys.TAG_TEST_DIGEST: challenger.test_digest or "unknown",
        VTAG_RESEARCH_RUN: challenger.research_run_id or "",
        VTAG_OPTIMIZE_RUN: challenger.run_id,
        VTAG_THRESHOLD: repr(challenger.threshold),
        VTAG_STATUS: STATUS_PENDING,
    }
    if challenger.family:
        tags[keys.TAG_FAMILY] = challenger.family
    return tags


def _move_aliases(
    config: PipelineConfig,
    session: TrackingSession,
    version: str,
    champion,
    promoted: bool,
    why: registry.MoveReason,
) -> None:
    name = config.registration.model_name
    mirror = config.registration.mirror_stages
    if not promoted:
        registry.move_alias(session, name, keys.ALIAS_CHALLENGER, version, why)
        if mirror:
            registry.mirror_stage(session, name, version, "Staging")
        return
    if champion is not None and str(champion.version) != str(version):
        registry.move_alias(session, name, keys.ALIAS_PREVIOUS, champion.version, why)
        registry.set_version_tags(session, name, champion.version, {VTAG_ARCHIVED: "true"})
        if mirror:
            registry.mirror_stage(session, name, champion.version, "Archived")
    registry.move_alias(session, name, keys.ALIAS_CHAMPION, version, why)
    if mirror:
        registry.mirror_stage(session, name, version, "Production")
    # A rerun that promotes what an interrupted run had left as challenger (e.g. after the floors changed).
    challenger = registry.alias_version(session, name, keys.ALIAS_CHALLENGER)
    if challenger is not None and str(challenger.version) == str(version):
        registry.move_alias(session, name, keys.ALIAS_CHALLENGER, None, why)


def _already_registered(version) -> Outcome:
    """What an earlier (or a concurrent) registration of the same optimization run decided."""
    previous = version.tags.get(VTAG_DECISION, "unknown")
    figures = {
        key: value
        for key, value in (
            ("challenger_test_roc_auc", _float(version.tags.get(keys.VTAG_TEST_ROC_AUC))),
            ("challenger_test_expected_cost", _float(version.tags.get(keys.VTAG_TEST_EXPECTED_COST))),
        )
        if value is not None
    }
    logger.info("the optimization run is already version %s (%s)", version.version, previous)
    return Outcome(
        version=str(version.version),
        decision=gate.ALREADY_REGISTERED,
        reason=f"{previous} earlier as version {version.version}: {version.tags.get(VTAG_REASON, '')}",
        figures=figures,
        earlier_decision=previous,
    )


def register_version(
    config: PipelineConfig,
    session: TrackingSession,
    challenger: Challenger,
    dataset: Dataset,
    split: Split,
    locked: bool,
    run_id: str | None = None,
) -> Outcome:
    """Register, judge against the champion, move aliases, then mark the version done.

    ``locked``: under the registry's cross-process lock, a pending version of this run was left by a
    crash and is finished here. Without one (a tracking server), a recent pending version is another
    registration at work, a duplicate made at the same moment is deleted, and versions take turns.
    ``run_id`` is the register run, recorded with each alias move.
    """
    name = config.registration.model_name
    registry.ensure_registered_model(session, name)
    existing = registry.model_versions_with_tag(session, name, VTAG_OPTIMIZE_RUN, challenger.run_id)
    done = [v for v in existing if v.tags.get(VTAG_STATUS) == STATUS_DONE]
    if done:
        return _already_registered(done[0])
    pending = existing[0] if existing else None
    if pending is not None and not locked and registry.in_progress(pending):
        return _already_registered(registry.wait_until_done(session, name, str(pending.version)))
    if pending is not None:
        logger.warning("finishing version %s left pending by an interrupted registration", pending.version)
        version = str(pending.version)
    else:
        created = registry.create_model_version(
            session,
            name,
            challenger.model_uri,
            challenger.run_id,
            challenger.model_id,
            _version_tags(challenger),
            unique_tag=VTAG_OPTIMIZE_RUN,
        )
        kept, ours = registry.claim_version(session, name, created, VTAG_OPTIMIZE_RUN)
        if not ours:
            return _already_registered(registry.wait_until_done(session, name, str(kept.version)))
        version = str(kept.version)
    registry.link_logged_model(session, name, version, challenger.model_id)
    if not locked:
        registry.wait_for_turn(session, name, version)
    champion = registry.alias_version(session, name, keys.ALIAS_CHAMPION)
    if champion is not None and str(champion.version) == version:
        # A crash after the champion alias moved: judge against the version it replaced.
        champion = registry.alias_version(session, name, keys.ALIAS_PREVIOUS)
    decision, draws, figures, other_data, evidence = evaluate_gate(
        config, session, challenger, dataset, split, champion
    )
    why = registry.MoveReason(
        keys.STAGE_REGISTER,
        f"gate {decision.decision} version {version}: {decision.reason}",
        run_id,
        runs.git_commit(config.root),
    )
    _move_aliases(config, session, version, champion, decision.promoted, why)
    gate_tags: dict[str, Any] = {
        VTAG_DECISION: decision.decision,
        VTAG_REASON: decision.reason,
        keys.VTAG_TEST_ROC_AUC: repr(figures["challenger_test_roc_auc"]),
        keys.VTAG_TEST_EXPECTED_COST: repr(figures["challenger_test_expected_cost"]),
    }
    gate_tags.update(
        {
            f"{keys.VTAG_GATE_PREFIX}{key}": repr(value)
            for key, value in figures.items()
            if not key.startswith("challenger_")
        }
    )
    if champion is not None:
        gate_tags[keys.VTAG_CHAMPION_VERSION] = str(champion.version)
        gate_tags[keys.VTAG_OTHER_DATA] = str(other_data).lower()
    registry.set_version_tags(session, name, version, gate_tags)
    registry.set_version_tags(session, name, version, {VTAG_STATUS: STATUS_DONE})  # last: marks it complete
    return Outcome(
        version=version,
        decision=decision.decision,
        reason=decision.reason,
        gate_decision=decision,
        draws=draws,
        champion_version=None if champion is None else str(champion.version),
        other_data=other_data,
        figures=figures,
        resumed=pending is not None,
        evidence=evidence,
    )


def _log_outcome(config: PipelineConfig, session: TrackingSession, run_id: str, outcome: Outcome) -> None:
    tags = {
        keys.TAG_REGISTER_VERSION: outcome.version,
        keys.TAG_REGISTER_DECISION: outcome.decision,
        keys.TAG_REGISTER_REASON: outcome.reason,
        keys.TAG_REGISTER_RESUMED: str(outcome.resumed).lower(),
    }
    if outcome.champion_version is not None:
        tags[keys.TAG_REGISTER_CHAMPION] = outcome.champion_version
        tags[keys.TAG_REGISTER_OTHER_DATA] = str(outcome.other_data).lower()
    runs.log_batch(session, run_id, tags=tags, metrics=outcome.figures)
    record: dict[str, Any] = {
        "model_name": config.registration.model_name,
        "version": outcome.version,
        "decision": outcome.decision,
        "reason": outcome.reason,
        "champion_version": outcome.champion_version,
        "champion_compared_on_other_data": outcome.other_data,
        "figures": outcome.figures,
        "settings": config.registration.model_dump(),
        "seed": config.seed,
    }
    if outcome.gate_decision is not None:
        record["gate"] = outcome.gate_decision.to_dict()
    runs.log_dict(session, run_id, json.loads(json.dumps(record, default=str)), keys.ARTIFACT_GATE_DECISION)
    if outcome.evidence is not None:
        runs.log_text(session, run_id, outcome.evidence.table.to_csv(index=False), keys.ARTIFACT_COMPARISON)
        runs.log_text(
            session, run_id, outcome.evidence.confusion.to_csv(index=False), keys.ARTIFACT_CONFUSION
        )
    if outcome.draws is not None:
        runs.log_text(session, run_id, outcome.draws.to_csv(index=False), keys.ARTIFACT_BOOTSTRAP)
        figure = plots.bootstrap_chart(
            outcome.draws,
            {
                "cost_saving": config.registration.cost_margin,
                "roc_auc_gain": config.registration.roc_auc_margin,
            },
        )
        runs.log_figure(session, run_id, figure, keys.PLOT_BOOTSTRAP)
        plots.close(figure)


def run(
    config: PipelineConfig, optimize_run_id: str | None = None, fail_on_reject: bool | None = None
) -> RegisterResult:
    """Run stage 3 on ``optimize_run_id`` (default: the latest finished optimization run)."""
    name = config.registration.model_name
    fail = config.registration.fail_on_reject if fail_on_reject is None else fail_on_reject
    session = runs.connect(config)
    challenger = challenger_from_run(find_optimize_run(session, optimize_run_id))
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    if challenger.test_digest != split.test_digest:
        raise LookupFailedError(
            f"optimization run {challenger.run_id} was tested on test part {challenger.test_digest}, "
            f"but the current data and split give {split.test_digest}; rerun stages 1-2 on this data"
        )
    tags = {
        **runs.base_tags(config, keys.STAGE_REGISTER, dataset, split),
        keys.TAG_REGISTER_OPTIMIZE_RUN: challenger.run_id,
        keys.TAG_REGISTER_MODEL_NAME: name,
    }
    run_name = f"{keys.STAGE_REGISTER}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    with runs.stage_run(session, run_name, tags) as run_id:
        with registry.registry_lock(session, name) as locked, runs.quiet_artifact_downloads():
            outcome = register_version(config, session, challenger, dataset, split, locked, run_id)
        _log_outcome(config, session, run_id, outcome)
    logger.info("%s version %s: %s (%s)", name, outcome.version, outcome.decision, outcome.reason)
    return RegisterResult(
        run_id=run_id,
        model_name=name,
        optimize_run_id=challenger.run_id,
        outcome=outcome,
        fail_on_reject=fail,
    )
