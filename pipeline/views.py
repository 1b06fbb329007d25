"""The derived tables people read, built from the SQL in :mod:`pipeline.queries` and the registry.

The results stage writes them to ``reports/``; the report notebook displays them. Both import
this module, so a view is computed one way wherever it is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlflow
import pandas as pd

from pipeline.queries import history, tables
from pipeline.settings import redact
from pipeline.tracking import keys
from pipeline.tracking.runs import load_artifact_frame
from pipeline.tracking.status import registered_models_frame

SUMMARY_LEADERBOARD_ROWS = 5
_SUMMARY_LEADERBOARD_COLUMNS = ["stage", "name", "family", "cv_roc_auc", "test_roc_auc", "test_expected_cost"]


@dataclass(frozen=True)
class Views:
    """The derived tables of one store and experiment (empty frames when a stage never ran)."""

    leaderboard: pd.DataFrame
    champion_history: pd.DataFrame
    gate_decisions: pd.DataFrame
    run_durations: pd.DataFrame
    lineage: pd.DataFrame
    trials: pd.DataFrame
    metric_summary: pd.DataFrame
    registered_models: pd.DataFrame
    alias_history: pd.DataFrame

    def frames(self) -> dict[str, pd.DataFrame]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def format_number(value: Any, digits: int = 4) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if pd.isna(number) else f"{number:.{digits}f}"


def top_of_leaderboard(board: pd.DataFrame) -> pd.DataFrame:
    """The first rows of the leaderboard, in the columns a summary shows."""
    return board[_SUMMARY_LEADERBOARD_COLUMNS].head(SUMMARY_LEADERBOARD_ROWS)


def build_views(store: tables.Store, uri: str, experiment: str | None, model_name: str) -> Views:
    """Every derived table; empty frames (with their columns) when the experiment or a stage is absent."""
    if experiment is None:
        empty = pd.DataFrame()
        return Views(
            leaderboard=pd.DataFrame(columns=history.LEADERBOARD_COLUMNS),
            champion_history=history.champion_history(store, model_name),
            gate_decisions=empty,
            run_durations=empty,
            lineage=empty,
            trials=empty,
            metric_summary=empty,
            registered_models=registered_models_frame(uri, model_name),
            alias_history=history.alias_history(store, model_name),
        )
    return Views(
        leaderboard=history.leaderboard(store, experiment),
        champion_history=history.champion_history(store, model_name),
        gate_decisions=history.gate_decisions(store, experiment),
        run_durations=history.run_durations(store, experiment),
        lineage=history.lineage(store, experiment, model_name),
        trials=history.trials(store, experiment),
        metric_summary=history.metric_summary(store, experiment),
        registered_models=registered_models_frame(uri, model_name),
        alias_history=history.alias_history(store, model_name),
    )


def champion_of(history: pd.DataFrame) -> dict[str, Any] | None:
    """The version carrying the ``champion`` alias, as a plain dict."""
    if history.empty:
        return None
    holders = history[history["aliases"].fillna("").str.split(",").map(lambda a: keys.ALIAS_CHAMPION in a)]
    if holders.empty:
        return None
    return {k: (None if _missing(v) else v) for k, v in holders.iloc[0].to_dict().items()}


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def champion_text(champion: dict[str, Any] | None) -> str:
    """One Markdown sentence about the champion version."""
    if champion is None:
        return "_No version holds the `champion` alias._"
    return (
        f"Champion: `{champion['name']}` version {champion['version']}: test ROC AUC "
        f"{format_number(champion.get(keys.VTAG_TEST_ROC_AUC))}, test expected cost "
        f"{format_number(champion.get(keys.VTAG_TEST_EXPECTED_COST))}, "
        f"threshold {format_number(champion.get(keys.VTAG_THRESHOLD))}, "
        f"from optimization run `{champion.get(keys.VTAG_OPTIMIZE_RUN) or champion.get('run_id')}`."
    )


def production_text(moves: pd.DataFrame) -> str:
    """One Markdown sentence about what ``@production`` serves, from the alias history."""
    production = moves[moves["alias"] == keys.ALIAS_PRODUCTION] if not moves.empty else moves
    if production.empty:
        return "_No version has been deployed (`production` alias) yet._"
    last = production.iloc[0]  # newest first
    if _missing(last["to_version"]):
        return f"_The `production` alias was removed on {last['time']:%Y-%m-%d %H:%M} UTC._"
    return (
        f"Production: `{last['name']}` version {last['to_version']} since {last['time']:%Y-%m-%d %H:%M} UTC "
        f"({last['actor']}: {last['reason']})."
    )


def roc_inputs(uri: str, history: pd.DataFrame) -> dict[str, tuple]:
    """``{label: (y_true, scores)}`` for the champion and challenger versions, from the
    ``evaluation/test_scores.csv`` artifact of the optimization run behind each one."""
    curves: dict[str, tuple] = {}
    for alias in (keys.ALIAS_CHAMPION, keys.ALIAS_CHALLENGER):
        holders = history[history["aliases"].fillna("").str.split(",").map(lambda a, x=alias: x in a)]
        if holders.empty:
            continue
        row = holders.iloc[0]
        run_id = (
            row[keys.VTAG_OPTIMIZE_RUN] if isinstance(row[keys.VTAG_OPTIMIZE_RUN], str) else row["run_id"]
        )
        scores = load_artifact_frame(uri, run_id, keys.ARTIFACT_TEST_SCORES) if run_id else None
        if scores is not None and {"y_true", "score"} <= set(scores.columns):
            curves[f"{alias} v{row['version']}"] = (scores["y_true"].to_numpy(), scores["score"].to_numpy())
    return curves


def summary_markdown(
    safe_uri: str,
    experiment_name: str,
    counts: pd.DataFrame,
    views: Views,
    revision: str | None,
) -> str:
    """A page short enough for ``$GITHUB_STEP_SUMMARY``: top of the leaderboard, champion,
    last gate decision and row counts of the tables people read."""
    parts = [
        "# MLflow results",
        f"Store `{safe_uri}`, experiment `{experiment_name}`, schema revision `{revision or 'unknown'}`, "
        f"MLflow {mlflow.__version__}.",
        "",
        "## Leaderboard",
    ]
    board = views.leaderboard
    if board.empty:
        parts.append("_No research run in this experiment yet._")
    else:
        top = top_of_leaderboard(board)
        # Research candidates have no test metrics: blank cells, not "nan".
        top = top.astype(object).where(top.notna(), None)
        parts.append(top.to_markdown(index=False, floatfmt=".4f", missingval=""))
    parts += ["", "## Champion"]
    parts.append(champion_text(champion_of(views.champion_history)))
    parts += ["", "## Production"]
    parts.append(production_text(views.alias_history))
    parts += ["", "## Last gate decision"]
    gates = views.gate_decisions
    if gates.empty:
        parts.append("_No register run yet._")
    else:
        last = gates.iloc[0]
        parts.append(
            f"**{last.get('decision') or 'unknown'}** for `{last.get('model_name')}` version "
            f"{last.get('version') or 'n/a'} ({last['start_time']:%Y-%m-%d %H:%M} UTC): "
            f"{last.get('reason') or 'no reason recorded'}"
        )
    loaded = counts[counts["loaded"]][["table", "rows"]]
    others = counts[~counts["loaded"]]
    parts += [
        "",
        "## Table row counts",
        loaded.to_markdown(index=False),
        "",
        f"{len(others)} other tables hold {int(others['rows'].sum())} rows (see `table_counts.csv`).",
        "",
    ]
    return redact("\n".join(parts))


def leaderboard_display(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard as people read it: rounded, without the bookkeeping columns."""
    shown = board.drop(columns=["parent_run_id", "start_time"], errors="ignore").copy()
    shown["run_id"] = shown["run_id"].astype("string").str.slice(0, 8)
    return shown.round(4)
