"""The report's building blocks: where the notebook finds its store, tables as people read them, and
the inputs of its figures. ``notebooks/results.ipynb`` only calls these and the plots.

The notebook runs the same under papermill (``python -m pipeline report``) and opened by hand in
Jupyter: the tracking store is ``MLFLOW_TRACKING_URI`` when set, else the one ``params.yaml``
configures, exactly as the commands resolve it.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import DEFAULT_CONFIG_PATH, PipelineConfig, load_config
from pipeline.models import SCORECARD_FAMILIES
from pipeline.queries import history, tables
from pipeline.settings import redact, redact_uri, tracking_uri
from pipeline.tracking import keys
from pipeline.tracking.runs import load_artifact_frame
from pipeline.views import Source, Views, build_views, open_source

# Tables fit the page (long cells wrap), images never overflow it, numbers line up.
PAGE_STYLE = """<style>
.jp-RenderedHTMLCommon table, table.readable {
  table-layout: auto; max-width: 100%; border-collapse: collapse; }
table.readable td, table.readable th { white-space: normal; overflow-wrap: break-word; word-break: normal;
  padding: 2px 8px; text-align: right; vertical-align: top; }
table.readable td:first-child, table.readable th:first-child { text-align: left; }
img { max-width: 100%; height: auto; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; }
</style>"""


@dataclass
class ReportContext:
    """An open store, the experiment and the views the report shows."""

    config: PipelineConfig
    uri: str
    source: Source
    experiment: str | None
    views: Views

    @property
    def store(self) -> tables.Store:
        return self.source.store

    @property
    def safe_uri(self) -> str:
        return redact_uri(self.uri)

    def close(self) -> None:
        self.source.close()


def find_config(start: Path | None = None) -> Path:
    """``params.yaml`` in the working folder or a parent (a notebook runs from ``notebooks/``)."""
    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / DEFAULT_CONFIG_PATH).is_file():
            return candidate / DEFAULT_CONFIG_PATH
    return DEFAULT_CONFIG_PATH


def open_report(
    experiment_name: str, model_name: str, config_path: str | Path | None = None, profile: str | None = None
) -> ReportContext:
    """The store the commands would use, with the views of ``experiment_name`` and ``model_name``."""
    config = load_config(Path(config_path) if config_path else find_config(), profile=profile)
    uri = tracking_uri(config.root)
    source = open_source(uri)
    experiment = tables.experiment_id(source.store, experiment_name)
    return ReportContext(
        config, uri, source, experiment, build_views(source.store, uri, experiment, model_name)
    )


def readable(frame: pd.DataFrame, digits: int = 4, links: dict[str, str] | None = None) -> str:
    """A table for people: no index, numbers rounded, blanks for missing values, timestamps to the minute,
    long cells wrapped. ``links`` maps a column to a URL template (``{value}`` is the cell)."""
    if frame.empty:
        return "<p><em>Nothing yet.</em></p>"
    # Headers may break at underscores (<wbr>), so a table of long metric names still fits the page.
    head = "".join(f"<th>{html.escape(str(column)).replace('_', '_<wbr>')}</th>" for column in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, record, strict=True):
            text = _cell(value, digits)
            if links and column in links and text:
                text = f'<a href="{html.escape(links[column].format(value=text))}">{html.escape(text)}</a>'
            else:
                text = html.escape(text)
            cells.append(f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    body = "".join(rows)
    return redact(f'<table class="readable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


def _cell(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
        return ""
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def alias_runs(champion_history: pd.DataFrame) -> list[tuple[str, str, str, object]]:
    """``(alias, version, optimization run id, threshold)`` of the champion and the challenger."""
    found = []
    if champion_history.empty:
        return found
    for alias in (keys.ALIAS_CHAMPION, keys.ALIAS_CHALLENGER):
        holders = champion_history[
            champion_history["aliases"].fillna("").str.split(",").map(lambda names, a=alias: a in names)
        ]
        if holders.empty:
            continue
        row = holders.iloc[0]
        run_id = (
            row[keys.VTAG_OPTIMIZE_RUN] if isinstance(row[keys.VTAG_OPTIMIZE_RUN], str) else row["run_id"]
        )
        if run_id:
            found.append((alias, str(row["version"]), run_id, row[keys.VTAG_THRESHOLD]))
    return found


def model_scores(uri: str, champion_history: pd.DataFrame) -> dict[str, tuple]:
    """``{label: (y_true, scores, threshold)}`` for the champion and the challenger, from the test
    scores their optimization runs logged (the same held-out rows) and their recorded thresholds."""
    models: dict[str, tuple] = {}
    for alias, version, run_id, threshold in alias_runs(champion_history):
        scores = load_artifact_frame(uri, run_id, keys.ARTIFACT_TEST_SCORES)
        if scores is None or not {"y_true", "score"} <= set(scores.columns) or pd.isna(threshold):
            continue
        models[f"{alias} v{version}"] = (scores["y_true"].to_numpy(), scores["score"].to_numpy(), threshold)
    return models


def scorecard_tables(
    uri: str, champion_history: pd.DataFrame, board: pd.DataFrame
) -> dict[str, pd.DataFrame]:
    """``{label: table}``: the scorecard of the champion and the challenger when they are or hold one,
    and of each scorecard candidate of the latest research run."""
    found: dict[str, pd.DataFrame] = {}
    for alias, version, run_id, _ in alias_runs(champion_history):
        table = load_artifact_frame(uri, run_id, f"{keys.ARTIFACT_SCORECARD}.csv")
        if table is not None:
            found[f"{alias} v{version}"] = table
    research = board[(board["stage"] == keys.STAGE_RESEARCH) & board["family"].isin(list(SCORECARD_FAMILIES))]
    for name, run_id in zip(research["name"], research["run_id"], strict=True):
        table = load_artifact_frame(uri, run_id, f"{keys.ARTIFACT_SCORECARD}.csv")
        if table is not None:
            found[f"research candidate {name}"] = table
    return found


def champion_reason_frequencies(uri: str, champion_history: pd.DataFrame) -> pd.DataFrame | None:
    """How often each reason code went to the rejected test applicants of the champion."""
    run_id = champion_run_id_of(champion_history)
    return (
        None
        if run_id is None
        else load_artifact_frame(uri, run_id, f"{keys.ARTIFACT_REASON_FREQUENCIES}.csv")
    )


def champion_run_id_of(champion_history: pd.DataFrame) -> str | None:
    """The optimization run behind the champion version."""
    for alias, _, run_id, _ in alias_runs(champion_history):
        if alias == keys.ALIAS_CHAMPION:
            return run_id
    return None


def business_lines(views: Views) -> list[str]:
    """What each model's threshold does to the applicants, in words."""
    table = views.comparison
    if table.empty:
        return ["_No registration has compared models yet._"]
    figures = table.set_index("metric")
    lines = []
    for side in ("champion", "challenger"):
        if figures[side].isna().all():
            continue
        approval, bad_rate = figures.loc["approval_rate", side], figures.loc["bad_rate_approved", side]
        cost = figures.loc["cost_per_1000", side]
        lines.append(
            f"- **{side.capitalize()}**: approves {approval:.1%} of applicants and rejects "
            f"{1 - approval:.1%}; {bad_rate:.1%} of those it approves default; expected cost "
            f"{cost:,.1f} per 1,000 applicants."
        )
    return lines


def optimize_run_id(views: Views) -> str | None:
    """The optimization run of the newest pipeline run (from the lineage)."""
    lineage = views.lineage
    if lineage.empty:
        return None
    steps = lineage[lineage["step"] == keys.STAGE_OPTIMIZE]
    return None if steps.empty else str(steps.iloc[0]["run_id"])


def champion_run_id(views: Views) -> str | None:
    """The optimization run behind the champion version."""
    return champion_run_id_of(views.champion_history)


def tuning_table(uri: str, run_id: str | None) -> pd.DataFrame:
    """Per tuned family: trials run against the cap, what stopped the study, the best CV ROC AUC."""
    columns = [
        "family",
        "trials",
        "trials_cap",
        "stopped_by",
        "pruned",
        "cv_roc_auc",
        "planned_seconds",
        "spent_seconds",
        "best_params",
    ]
    frame = load_artifact_frame(uri, run_id, f"{keys.ARTIFACT_FAMILIES}.csv") if run_id else None
    if frame is None:
        return pd.DataFrame(columns=columns)
    return frame.reindex(columns=columns)


def budget_table(uri: str, run_id: str | None) -> pd.DataFrame:
    """Planned against spent seconds per step of ``budget_seconds`` (research, each family, final, total)."""
    columns = ["step", "planned_seconds", "spent_seconds", "stopped_by"]
    frame = load_artifact_frame(uri, run_id, f"{keys.ARTIFACT_BUDGET}.csv") if run_id else None
    if frame is None:  # a run from before the budget
        return pd.DataFrame(columns=columns)
    return frame.reindex(columns=columns)


def budget_notes(steps: pd.DataFrame) -> list[str]:
    """One sentence per step the budget cut short (stopped by time, or skipped)."""
    notes = []
    for row in steps.itertuples(index=False):
        if row.stopped_by == "time":
            notes.append(
                f"{row.step}: stopped by time after {row.spent_seconds:.0f} s of {row.planned_seconds:.0f} s"
            )
        elif row.stopped_by == "skipped":
            notes.append(f"{row.step}: skipped, its one trial could not fit its {row.planned_seconds:.0f} s")
    return notes


def importance(uri: str, run_id: str | None) -> pd.DataFrame | None:
    """The permutation importance the optimization run logged for its model."""
    return load_artifact_frame(uri, run_id, f"{keys.ARTIFACT_IMPORTANCE}.csv") if run_id else None


def trial_scores(context: ReportContext, run_id: str | None) -> pd.DataFrame:
    return history.trial_scores(context.store, context.experiment, run_id)


def run_links(ui_url: str | None, experiment: str | None) -> dict[str, str]:
    """URL templates for run ids in a table, when an MLflow UI address is configured."""
    if not ui_url or experiment is None:
        return {}
    return {"run_id": f"{ui_url.rstrip('/')}/#/experiments/{experiment}/runs/{{value}}"}
