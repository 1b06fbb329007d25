"""The derived tables people read, built from the SQL in :mod:`pipeline.queries` and the registry,
and the source they are read from.

The results stage writes them to ``reports/``; the report notebook displays them. Both import
this module, so a view is computed one way wherever it is shown.

The source (:func:`open_source`): a tracking database is read by SQL. A tracking server's core
tables are read through MLflow's API (:mod:`pipeline.tracking.snapshot`) into a local SQLite copy
(:mod:`pipeline.queries.mirror`) that the same SQL then reads; with ``PIPELINE_STORE_DB_URL``, the
server's own database is read by SQL instead.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from pipeline.errors import ConfigError
from pipeline.queries import history, mirror, tables
from pipeline.settings import STORE_DB_URL_ENV, redact, redact_uri, store_db_url
from pipeline.tracking import keys, snapshot
from pipeline.tracking import store as tracking_store
from pipeline.tracking.runs import load_artifact_frame
from pipeline.tracking.status import registered_models_frame

logger = logging.getLogger(__name__)

SOURCE_SQL = "sql"
SOURCE_API = "api"
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

    def frames(self) -> dict[str, pd.DataFrame]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class Source:
    """Where the tables come from: ``store`` answers the SQL; ``uri`` is the tracking store itself."""

    store: tables.Store
    uri: str
    kind: str  # SOURCE_SQL or SOURCE_API
    database_uri: str | None  # the database read by SQL (None when read through the API)
    schema_revision: str | None
    _copy: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def safe_uri(self) -> str:
        return redact_uri(self.uri)

    @property
    def description(self) -> str:
        if self.kind == SOURCE_API:
            return f"MLflow's REST API of {self.safe_uri} (its core tables, copied locally for the SQL)"
        if self.database_uri != self.uri:
            return f"SQL over {redact_uri(self.database_uri)}, the database of {self.safe_uri}"
        return f"SQL over the tracking database {self.safe_uri}"

    def close(self) -> None:
        self.store.close()
        if self._copy is not None:
            self._copy.cleanup()


def open_source(uri: str) -> Source:
    """The tables of the store at ``uri``: by SQL from a database (``uri`` itself, or the server's in
    ``PIPELINE_STORE_DB_URL``), else through a tracking server's API."""
    database = store_db_url() or (uri if tracking_store.is_database(uri) else None)
    if database is not None:
        if not tracking_store.is_database(database):
            raise ConfigError(f"{STORE_DB_URL_ENV}={redact_uri(database)} is not a database URL")
        return Source(
            store=tables.open_store(database),
            uri=uri,
            kind=SOURCE_SQL,
            database_uri=database,
            schema_revision=tracking_store.schema_revision(database),
        )
    logger.info("reading %s through its API (set %s to read its database)", redact_uri(uri), STORE_DB_URL_ENV)
    folder = tempfile.TemporaryDirectory(prefix="mlflow-api-copy-")
    try:
        copy = mirror.write_copy(snapshot.read_tables(uri), Path(folder.name) / "tables.db")
        store = tables.open_store(copy)
    except BaseException:
        folder.cleanup()
        raise
    return Source(
        store=store, uri=uri, kind=SOURCE_API, database_uri=None, schema_revision=None, _copy=folder
    )


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
    source: Source, experiment_name: str, counts: pd.DataFrame, views: Views, experiment_id: str | None = None
) -> str:
    """A page short enough for ``$GITHUB_STEP_SUMMARY``: top of the leaderboard, champion,
    last gate decision and row counts of the tables people read."""
    parts = [
        "# MLflow results",
        f"Store `{source.safe_uri}`, experiment `{experiment_name}`, "
        f"schema revision `{source.schema_revision or 'unknown'}`, MLflow {mlflow.__version__}.",
        f"Read through {source.description}.",
    ]
    link = tracking_store.ui_url(source.uri, experiment_id) if experiment_id is not None else None
    if link is not None:
        parts.append(f"[Open the experiment in MLflow's UI]({link}) (model training view).")
    parts += [
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
