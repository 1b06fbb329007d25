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

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from pipeline.comparison import COLUMNS, CONFUSION_COLUMNS, comparison_markdown
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
    # The latest register run's evidence: champion vs challenger, and both confusion matrices.
    comparison: pd.DataFrame
    confusion: pd.DataFrame
    # What a pull-request run restored from main as its baseline (one row; empty on main).
    baseline: pd.DataFrame
    # Every move of an alias (register, deploy, rollback), newest first.
    alias_history: pd.DataFrame
    # The latest monitor run per model version.
    monitor_results: pd.DataFrame

    @classmethod
    def empty(cls, **given: pd.DataFrame) -> Views:
        """Views of a store where nothing ran yet, with the frames in ``given`` filled in."""
        frames = {name: pd.DataFrame() for name in cls.__dataclass_fields__}
        frames["leaderboard"] = pd.DataFrame(columns=history.LEADERBOARD_COLUMNS)
        frames["comparison"] = pd.DataFrame(columns=COLUMNS)
        frames["confusion"] = pd.DataFrame(columns=CONFUSION_COLUMNS)
        frames["baseline"] = baseline_frame(None)
        frames["monitor_results"] = pd.DataFrame(columns=history.MONITOR_COLUMNS)
        return cls(**{**frames, **given})

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
    # The tables read through the API, kept until written out: reading them back from the local copy
    # took longer than writing them.
    _frames: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    def take_frame(self, name: str) -> pd.DataFrame | None:
        """Table ``name`` as read through the API (once: it is then let go), or None when read by SQL."""
        return self._frames.pop(name, None)

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
        self._frames.clear()
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
        frames = snapshot.read_tables(uri)
        store = tables.open_store(mirror.write_copy(frames, Path(folder.name) / "tables.db"))
    except BaseException:
        folder.cleanup()
        raise
    return Source(
        store=store,
        uri=uri,
        kind=SOURCE_API,
        database_uri=None,
        schema_revision=None,
        _copy=folder,
        _frames=frames,
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
    registered = registered_models_frame(uri, model_name)
    if experiment is None:
        return Views.empty(
            champion_history=history.champion_history(store, model_name),
            registered_models=registered,
            alias_history=history.alias_history(store, model_name),
            monitor_results=pd.DataFrame(columns=history.MONITOR_COLUMNS),
        )
    gates = history.gate_decisions(store, experiment)
    return Views(
        leaderboard=history.leaderboard(store, experiment),
        champion_history=history.champion_history(store, model_name),
        gate_decisions=gates,
        run_durations=history.run_durations(store, experiment),
        lineage=history.lineage(store, experiment, model_name),
        trials=history.trials(store, experiment),
        metric_summary=history.metric_summary(store, experiment),
        registered_models=registered,
        alias_history=history.alias_history(store, model_name),
        baseline=baseline_frame(tables.experiment_tags(store, experiment).get(keys.TAG_BASELINE)),
        comparison=latest_gate_artifact(uri, gates, keys.ARTIFACT_COMPARISON, COLUMNS),
        confusion=latest_gate_artifact(uri, gates, keys.ARTIFACT_CONFUSION, CONFUSION_COLUMNS),
        monitor_results=history.monitor_results(store, experiment),
    )


def baseline_frame(record: str | None) -> pd.DataFrame:
    """The baseline record of a pull-request run as one row: restored, reason, source."""
    columns = ["restored", "reason", "source", "restored_at"]
    if not record:
        return pd.DataFrame(columns=columns)
    try:
        data = json.loads(record)
    except ValueError:
        data = {"restored": False, "reason": "unreadable baseline record"}
    return pd.DataFrame([{column: data.get(column) for column in columns}], columns=columns)


def latest_gate_artifact(uri: str, gates: pd.DataFrame, path: str, columns: list[str]) -> pd.DataFrame:
    """A table the newest register run logged (empty, with ``columns``, when there is none)."""
    frame = None if gates.empty else load_artifact_frame(uri, gates.iloc[0]["run_id"], path)
    return pd.DataFrame(columns=columns) if frame is None else frame


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


def verdict_lines(views: Views) -> list[str]:
    """The first lines of every summary: what the gate decided about the newest model, and why."""
    gates = views.gate_decisions
    if gates.empty:
        return ["# Model check: no registration yet", "", "_No register run in this experiment yet._"]
    last = gates.iloc[0]
    decision = str(last.get("decision") or "unknown")
    champion = champion_of(views.champion_history)
    version = last.get("version") or "n/a"
    lines = [f"# Model check: {decision.replace('_', ' ')}", ""]
    if decision == "promoted":
        lines.append(f"**Promoted**: `{last.get('model_name')}` version {version} is the champion now.")
    elif decision == "rejected":
        held = f"version {champion['version']}" if champion else "no version"
        lines.append(f"**Rejected**: version {version} stays challenger; {held} remains champion.")
    else:
        lines.append(f"**{decision}**: `{last.get('model_name')}` version {version}.")
    lines.append(f"Reason: {last.get('reason') or 'no reason recorded'}")
    if not views.baseline.empty:
        record = views.baseline.iloc[0]
        if bool(record["restored"]):
            lines.append(f"Compared with main's champion, restored from {record['source']}.")
        else:
            lines.append(
                f"No baseline from main: {record['reason']}. The gate judged this model on its floors."
            )
    return lines


def comparison_lines(views: Views) -> list[str]:
    """The comparison on the test part, and the business view at each model's threshold."""
    if views.comparison.empty:
        return []
    confusion = views.confusion
    applicants = int(confusion.iloc[0][["tn", "fp", "fn", "tp"]].sum()) if not confusion.empty else None
    who = "Champion against challenger" if views.comparison["champion"].notna().any() else "The challenger"
    rows = f" on the same {applicants:,} held-out applicants" if applicants else ""
    lines = ["", f"## {who}{rows}, each at its own threshold", "", comparison_markdown(views.comparison)]
    if not confusion.empty:
        lines += ["", "Decisions at the threshold (reject when the probability is at or above it):", ""]
        shown = confusion.rename(
            columns={
                "tn": "good, accepted",
                "fp": "good, rejected",
                "fn": "defaulter, accepted",
                "tp": "defaulter, rejected",
            }
        )
        lines.append(shown.to_markdown(index=False, floatfmt=".4f"))
    return lines


def summary_markdown(
    source: Source, experiment_name: str, counts: pd.DataFrame, views: Views, experiment_id: str | None = None
) -> str:
    """A page short enough for ``$GITHUB_STEP_SUMMARY`` and a pull-request comment: the verdict and
    the comparison first, then the leaderboard, the champion and the store's row counts."""
    parts = [*verdict_lines(views)]
    link = tracking_store.ui_url(source.uri, experiment_id) if experiment_id is not None else None
    if link is not None:
        parts.append(f"[Open the experiment in MLflow's UI]({link}) (model training view).")
    parts += [*comparison_lines(views), "", "## Leaderboard"]
    board = views.leaderboard
    if board.empty:
        parts.append("_No research run in this experiment yet._")
    else:
        top = top_of_leaderboard(board)
        # Research candidates have no test metrics: blank cells, not "nan".
        top = top.astype(object).where(top.notna(), None)
        parts.append(top.to_markdown(index=False, floatfmt=".4f", missingval=""))
    parts += ["", "## Champion", champion_text(champion_of(views.champion_history))]
    parts += ["", "## Production", production_text(views.alias_history)]
    loaded = counts[counts["loaded"]][["table", "rows"]]
    others = counts[~counts["loaded"]]
    parts += [
        "",
        "## The store",
        f"`{source.safe_uri}`, experiment `{experiment_name}`, "
        f"schema revision `{source.schema_revision or 'unknown'}`, MLflow {mlflow.__version__}. "
        f"Read through {source.description}.",
        "",
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
