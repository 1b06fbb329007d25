"""What the pipeline's stages left in the store, by SQL: the leaderboard, trials, the champion
history, gate decisions, the alias history, run durations, a metric summary and the latest lineage.

Views aggregate in SQL and look up only the runs they need, so they stay fast on a store with
millions of metric rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import sqlalchemy as sa

from pipeline.queries.tables import (
    Store,
    latest_stage_run,
    of_experiment,
    query_frame,
    runs_frame,
    stage_runs,
    tag_exists,
)
from pipeline.tracking import alias_history as aliases
from pipeline.tracking import keys

# Model-version tags the champion history shows (see pipeline.tracking.keys).
_VERSION_TAGS = (
    keys.VTAG_DECISION,
    keys.VTAG_REASON,
    keys.VTAG_STATUS,
    keys.VTAG_TEST_ROC_AUC,
    keys.VTAG_TEST_EXPECTED_COST,
    keys.VTAG_THRESHOLD,
    keys.VTAG_OPTIMIZE_RUN,
    keys.VTAG_RESEARCH_RUN,
    keys.TAG_DATASET_DIGEST,
    keys.VTAG_ARCHIVED,
)
_RESEARCH_METRICS = ("cv_roc_auc_mean", "cv_roc_auc_std", "cv_expected_cost_mean", "cv_threshold_mean")
_OPTIMIZE_METRICS = (
    "cv_roc_auc",
    "cv_expected_cost",
    "threshold",
    "test_roc_auc",
    "test_average_precision",
    "test_expected_cost",
)
LEADERBOARD_COLUMNS = [
    "stage",
    "name",
    "family",
    "cv_roc_auc",
    "cv_roc_auc_std",
    "cv_expected_cost",
    "test_roc_auc",
    "test_average_precision",
    "test_expected_cost",
    "threshold",
    "run_id",
    "parent_run_id",
    "start_time",
]


def leaderboard(store: Store, experiment: str | None) -> pd.DataFrame:
    """Research candidates of the latest research run and the tuned models built from it, best first."""
    research = latest_stage_run(store, experiment, keys.STAGE_RESEARCH)
    if research is None:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    candidates = runs_frame(
        store,
        experiment,
        where_tags={keys.TAG_PARENT_RUN: research["run_id"], keys.TAG_ROLE: keys.ROLE_CANDIDATE},
        tag_keys=(keys.TAG_FAMILY, keys.TAG_CANDIDATE),
        metric_keys=_RESEARCH_METRICS,
    )
    rows = pd.DataFrame(
        {
            "stage": keys.STAGE_RESEARCH,
            "name": candidates[keys.TAG_CANDIDATE],
            "family": candidates[keys.TAG_FAMILY],
            "cv_roc_auc": candidates[keys.METRIC_CV_ROC_AUC_MEAN],
            "cv_roc_auc_std": candidates["cv_roc_auc_std"],
            "cv_expected_cost": candidates["cv_expected_cost_mean"],
            "threshold": candidates["cv_threshold_mean"],
            "run_id": candidates["run_id"],
            "parent_run_id": research["run_id"],
            "start_time": candidates["start_time"],
        }
    )
    tuned = stage_runs(
        store,
        experiment,
        keys.STAGE_OPTIMIZE,
        tag_keys=(keys.TAG_BEST_FAMILY, keys.TAG_CALIBRATION),
        metric_keys=_OPTIMIZE_METRICS,
    )
    tuned = tuned[tuned["run_id"].isin(_optimize_runs_of(store, experiment, research["run_id"]))]
    tuned_rows = pd.DataFrame(
        {
            "stage": keys.STAGE_OPTIMIZE,
            "name": tuned["run_name"],
            "family": tuned[keys.TAG_BEST_FAMILY],
            **{key: tuned[key] for key in _OPTIMIZE_METRICS},
            "run_id": tuned["run_id"],
            "parent_run_id": research["run_id"],
            "start_time": tuned["start_time"],
        }
    )
    frames = [frame for frame in (tuned_rows, rows) if not frame.empty]
    if not frames:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    board = pd.concat(frames, ignore_index=True).reindex(columns=LEADERBOARD_COLUMNS)
    board = board.sort_values(["cv_roc_auc", "stage"], ascending=[False, True], kind="mergesort")
    return board.reset_index(drop=True)


def _optimize_runs_of(store: Store, experiment: str | None, research_run_id: str) -> list[str]:
    frame = runs_frame(
        store,
        experiment,
        where_tags={
            keys.TAG_STAGE: keys.STAGE_OPTIMIZE,
            keys.TAG_ROLE: keys.ROLE_STAGE,
            keys.TAG_RESEARCH_RUN: research_run_id,
        },
    )
    return frame["run_id"].tolist()


def _trial_runs(store: Store, experiment: str | None, optimize_run_id: str | None) -> pd.DataFrame | None:
    """The trial child runs of an optimization run (the latest by default); None when there is none."""
    if optimize_run_id is None:
        latest = latest_stage_run(store, experiment, keys.STAGE_OPTIMIZE)
        if latest is None:
            return None
        optimize_run_id = latest["run_id"]
    return runs_frame(
        store,
        experiment,
        where_tags={keys.TAG_PARENT_RUN: optimize_run_id, keys.TAG_ROLE: keys.ROLE_TRIAL},
        tag_keys=(keys.TAG_FAMILY, keys.TAG_OPTUNA_TRIAL, keys.TAG_OPTUNA_STATE),
        metric_keys=("cv_roc_auc", "cv_expected_cost"),
        status=None,
    )


def trial_scores(store: Store, experiment: str | None, optimize_run_id: str | None = None) -> pd.DataFrame:
    """One row per trial of an optimization run (the latest by default), in trial order per family:
    its state (complete, pruned) and CV ROC AUC, for the tuning-progress view."""
    columns = ["family", "trial", "state", "cv_roc_auc", "run_id"]
    children = _trial_runs(store, experiment, optimize_run_id)
    if children is None or children.empty:
        return pd.DataFrame(columns=columns)
    frame = children.rename(
        columns={keys.TAG_FAMILY: "family", keys.TAG_OPTUNA_TRIAL: "trial", keys.TAG_OPTUNA_STATE: "state"}
    )
    frame["trial"] = pd.to_numeric(frame["trial"], errors="coerce")
    frame = frame[
        frame["trial"].notna() & (frame["status"] != "FAILED")
    ]  # a record the store lost mid-write; its trial was redone
    return frame.reindex(columns=columns).sort_values(["family", "trial"]).reset_index(drop=True)


def trials(store: Store, experiment: str | None, optimize_run_id: str | None = None) -> pd.DataFrame:
    """Trial child runs of an optimization run (the latest by default), long format:
    one row per (trial, hyperparameter) with the trial's CV scores."""
    columns = ["run_id", "family", "param", "value", "cv_roc_auc", "cv_expected_cost"]
    children = _trial_runs(store, experiment, optimize_run_id)
    if children is None or children.empty:
        return pd.DataFrame(columns=columns)
    params = store.table("params")
    values = query_frame(
        store,
        sa.select(params.c.run_uuid.label("run_id"), params.c.key.label("param"), params.c.value).where(
            params.c.run_uuid.in_(sa.bindparam("ids", children["run_id"].tolist(), expanding=True)),
            params.c.key != "family",  # the optimize stage also logs the family as a param
        ),
    )
    merged = values.merge(
        children[["run_id", keys.TAG_FAMILY, "cv_roc_auc", "cv_expected_cost"]], on="run_id", how="inner"
    )
    merged = merged.rename(columns={keys.TAG_FAMILY: "family"})
    return merged.reindex(columns=columns).sort_values(["family", "param", "run_id"]).reset_index(drop=True)


def _version_tags(store: Store, model_name: str | None, tag_keys: Sequence[str]) -> pd.DataFrame:
    tags = store.table("model_version_tags")
    statement = sa.select(tags.c.name, tags.c.version, tags.c.key, tags.c.value).where(
        tags.c.key.in_(sa.bindparam("keys", list(tag_keys), expanding=True))
    )
    if model_name is not None:
        statement = statement.where(tags.c.name == sa.bindparam("name", value=model_name))
    return query_frame(store, statement)


def _aliases(store: Store, model_name: str | None) -> pd.DataFrame:
    if not store.has("registered_model_aliases"):
        return pd.DataFrame(columns=["name", "version", "aliases"])
    table = store.table("registered_model_aliases")
    statement = sa.select(table.c.name, table.c.version, table.c.alias)
    if model_name is not None:
        statement = statement.where(table.c.name == sa.bindparam("name", value=model_name))
    frame = query_frame(store, statement)
    if frame.empty:
        return pd.DataFrame(columns=["name", "version", "aliases"])
    return (
        frame.sort_values("alias")
        .groupby(["name", "version"], as_index=False)["alias"]
        .agg(",".join)
        .rename(columns={"alias": "aliases"})
    )


def champion_history(store: Store, model_name: str | None) -> pd.DataFrame:
    """Every registered version (newest first) with its gate decision, aliases and when."""
    columns = ["name", "version", "created", "aliases", *_VERSION_TAGS, "run_id", "status"]
    if not store.has("model_versions", "model_version_tags"):
        return pd.DataFrame(columns=columns)
    versions = store.table("model_versions")
    statement = sa.select(
        versions.c.name,
        versions.c.version,
        versions.c.creation_time,
        versions.c.run_id,
        versions.c.status,
    ).where(versions.c.current_stage != "Deleted_Internal")
    if model_name is not None:
        statement = statement.where(versions.c.name == sa.bindparam("name", value=model_name))
    frame = query_frame(store, statement)
    if frame.empty:
        return pd.DataFrame(columns=columns)
    tags = _version_tags(store, model_name, _VERSION_TAGS)
    if not tags.empty:
        wide = tags.pivot_table(index=["name", "version"], columns="key", values="value", aggfunc="first")
        frame = frame.merge(wide.reset_index(), on=["name", "version"], how="left")
    frame = frame.merge(_aliases(store, model_name), on=["name", "version"], how="left")
    frame["aliases"] = frame["aliases"].fillna("")
    frame["created"] = pd.to_datetime(frame["creation_time"], unit="ms", utc=True)
    frame = frame.reindex(columns=columns)
    for key in (keys.VTAG_TEST_ROC_AUC, keys.VTAG_TEST_EXPECTED_COST, keys.VTAG_THRESHOLD):
        frame[key] = pd.to_numeric(frame[key], errors="coerce")
    return frame.sort_values(["name", "version"], ascending=[True, False]).reset_index(drop=True)


def alias_history(store: Store, model_name: str | None) -> pd.DataFrame:
    """Every recorded move of a registered model's aliases (by register, deploy, rollback), newest first.

    The moves are registered-model tags (see :mod:`pipeline.tracking.alias_history`).
    """
    columns = ["name", *aliases.COLUMNS]
    if not store.has("registered_model_tags"):
        return pd.DataFrame(columns=columns)
    tags = store.table("registered_model_tags")
    statement = sa.select(tags.c.name, tags.c.key, tags.c.value).where(
        tags.c.key.startswith(keys.RMTAG_ALIAS_MOVE_PREFIX, autoescape=True)
    )
    if model_name is not None:
        statement = statement.where(tags.c.name == sa.bindparam("name", value=model_name))
    frame = query_frame(store, statement)
    parts = [
        aliases.history_frame(aliases.moves_from_tags(zip(group["key"], group["value"], strict=True))).assign(
            name=name
        )
        for name, group in frame.groupby("name", sort=True)
    ]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def gate_decisions(store: Store, experiment: str | None, limit: int = 20) -> pd.DataFrame:
    """Register runs, newest first: which version, what the gate decided and why."""
    columns = {
        keys.TAG_REGISTER_MODEL_NAME: "model_name",
        keys.TAG_REGISTER_VERSION: "version",
        keys.TAG_REGISTER_DECISION: "decision",
        keys.TAG_REGISTER_REASON: "reason",
        keys.TAG_REGISTER_OPTIMIZE_RUN: "optimize_run_id",
    }
    frame = stage_runs(store, experiment, keys.STAGE_REGISTER, tag_keys=tuple(columns), limit=limit)
    return frame.rename(columns=columns)


MONITOR_COLUMNS = [
    "model_name",
    "version",
    "population",
    keys.METRIC_SCORE_PSI,
    keys.METRIC_MAX_CSI,
    "rows",
    "input",
    "model_uri",
    "run_id",
    "start_time",
]


def monitor_results(store: Store, experiment: str | None) -> pd.DataFrame:
    """The latest finished monitor run of every model version (or model URI), newest first;
    ``population`` is its reading: stable, watch or shifted."""
    columns = {
        keys.TAG_MONITOR_MODEL_NAME: "model_name",
        keys.TAG_MONITOR_VERSION: "version",
        keys.TAG_MONITOR_STATUS: "population",
        keys.TAG_MONITOR_INPUT: "input",
        keys.TAG_MONITOR_MODEL_URI: "model_uri",
    }
    frame = stage_runs(
        store,
        experiment,
        keys.STAGE_MONITOR,
        tag_keys=tuple(columns),
        metric_keys=(keys.METRIC_SCORE_PSI, keys.METRIC_MAX_CSI, "rows"),
    ).rename(columns=columns)
    if frame.empty:
        return pd.DataFrame(columns=MONITOR_COLUMNS)
    watched = frame["version"].fillna(frame["model_uri"])
    latest = frame.assign(watched=watched).drop_duplicates(subset=["model_name", "watched"], keep="first")
    return latest.reindex(columns=MONITOR_COLUMNS).reset_index(drop=True)


def run_durations(store: Store, experiment: str | None) -> pd.DataFrame:
    """Per stage: how many parent runs, how many finished or failed, and their wall-clock seconds."""
    runs, tags = store.table("runs"), store.table("tags")
    stage = tags.alias("stage_tag")
    seconds = (runs.c.end_time - runs.c.start_time) / 1000.0
    finished = sa.case((runs.c.status == "FINISHED", 1), else_=0)
    failed = sa.case((runs.c.status.in_(("FAILED", "KILLED")), 1), else_=0)
    statement = (
        sa.select(
            stage.c.value.label("stage"),
            sa.func.count().label("runs"),
            sa.func.sum(finished).label("finished"),
            sa.func.sum(failed).label("failed"),
            sa.func.avg(seconds).label("mean_seconds"),
            sa.func.min(seconds).label("min_seconds"),
            sa.func.max(seconds).label("max_seconds"),
            sa.func.max(runs.c.start_time).label("last_start"),
        )
        .select_from(
            runs.join(stage, sa.and_(stage.c.run_uuid == runs.c.run_uuid, stage.c.key == keys.TAG_STAGE))
        )
        .where(
            runs.c.lifecycle_stage == "active",
            tag_exists(store, runs, keys.TAG_ROLE, keys.ROLE_STAGE),
        )
        .group_by(stage.c.value)
        .order_by(stage.c.value)
    )
    if experiment is not None:
        statement = statement.where(of_experiment(store, runs, experiment))
    frame = query_frame(store, statement)
    for column in ("mean_seconds", "min_seconds", "max_seconds"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["last_start"] = pd.to_datetime(frame["last_start"], unit="ms", utc=True)
    return frame


def metric_summary(store: Store, experiment: str | None = None) -> pd.DataFrame:
    """Per metric key, over the full metric history: rows, runs, min, mean, max (aggregated in SQL)."""
    metrics, runs = store.table("metrics"), store.table("runs")
    statement = sa.select(
        metrics.c.key,
        sa.func.count().label("rows"),
        sa.func.count(sa.distinct(metrics.c.run_uuid)).label("runs"),
        sa.func.min(metrics.c.value).label("min"),
        sa.func.avg(metrics.c.value).label("mean"),
        sa.func.max(metrics.c.value).label("max"),
    )
    if experiment is not None:
        statement = statement.select_from(metrics.join(runs, runs.c.run_uuid == metrics.c.run_uuid)).where(
            of_experiment(store, runs, experiment)
        )
    return query_frame(store, statement.group_by(metrics.c.key).order_by(metrics.c.key))


def lineage(store: Store, experiment: str | None, model_name: str | None = None) -> pd.DataFrame:
    """The latest pipeline run's chain: dataset digest -> research -> optimization -> registered version.

    Walks back from the newest register run (else the newest optimization, else research run)
    through the run ids each stage recorded.
    """
    columns = ["step", "run_id", "status", "start_time", "dataset_digest", "git_commit", "detail"]
    steps: list[dict[str, Any]] = []
    register = latest_stage_run(
        store,
        experiment,
        keys.STAGE_REGISTER,
        tag_keys=(
            keys.TAG_GIT_COMMIT,
            keys.TAG_REGISTER_OPTIMIZE_RUN,
            keys.TAG_REGISTER_MODEL_NAME,
            keys.TAG_REGISTER_VERSION,
            keys.TAG_REGISTER_DECISION,
        ),
    )
    optimize_id = register[keys.TAG_REGISTER_OPTIMIZE_RUN] if register is not None else None
    optimize = _stage_run_by_id(store, experiment, keys.STAGE_OPTIMIZE, optimize_id)
    research_id = optimize[keys.TAG_RESEARCH_RUN] if optimize is not None else None
    research = _stage_run_by_id(store, experiment, keys.STAGE_RESEARCH, research_id)
    if research is not None:
        steps.append(
            {
                "step": "dataset",
                "dataset_digest": research[keys.TAG_DATASET_DIGEST],
                "detail": f"train {research[keys.TAG_TRAIN_DIGEST]}, test {research[keys.TAG_TEST_DIGEST]}",
            }
        )
        best = research[keys.TAG_BEST_CANDIDATE]
        steps.append(_step(keys.STAGE_RESEARCH, research, f"best candidate {best}"))
    if optimize is not None:
        detail = (
            f"family {optimize[keys.TAG_BEST_FAMILY]}, calibration {optimize[keys.TAG_CALIBRATION]}, "
            f"threshold {optimize[keys.TAG_THRESHOLD]}"
        )
        steps.append(_step(keys.STAGE_OPTIMIZE, optimize, detail))
    if register is not None:
        name, version = register[keys.TAG_REGISTER_MODEL_NAME], register[keys.TAG_REGISTER_VERSION]
        steps.append(_step(keys.STAGE_REGISTER, register, f"decision {register[keys.TAG_REGISTER_DECISION]}"))
        if version:
            steps.append(
                {
                    "step": "model_version",
                    "run_id": register["run_id"],
                    "detail": f"{name} v{version}",
                }
            )
    return pd.DataFrame(steps, columns=columns)


def _step(name: str, run: pd.Series, detail: str) -> dict[str, Any]:
    return {
        "step": name,
        "run_id": run["run_id"],
        "status": run["status"],
        "start_time": run["start_time"],
        "dataset_digest": run.get(keys.TAG_DATASET_DIGEST),
        "git_commit": run.get(keys.TAG_GIT_COMMIT),
        "detail": detail,
    }


_LINEAGE_TAGS = (
    keys.TAG_DATASET_DIGEST,
    keys.TAG_GIT_COMMIT,
    keys.TAG_TRAIN_DIGEST,
    keys.TAG_TEST_DIGEST,
    keys.TAG_BEST_CANDIDATE,
    keys.TAG_RESEARCH_RUN,
    keys.TAG_BEST_FAMILY,
    keys.TAG_CALIBRATION,
    keys.TAG_THRESHOLD,
)


def _stage_run_by_id(
    store: Store, experiment: str | None, stage: str, run_id: str | None
) -> pd.Series | None:
    if run_id:
        frame = runs_frame(store, experiment, run_ids=[run_id], tag_keys=_LINEAGE_TAGS)
        return None if frame.empty else frame.iloc[0]
    return latest_stage_run(store, experiment, stage, tag_keys=_LINEAGE_TAGS)
