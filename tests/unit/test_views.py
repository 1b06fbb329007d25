"""pipeline.views: the derived tables and the summary, on hand-made frames."""

import pandas as pd

from pipeline import views
from pipeline.queries import history


def test_champion_of_and_summary_handle_empty_views():
    versions = pd.DataFrame(
        {
            "name": ["m", "m"],
            "version": [2, 1],
            "aliases": ["champion", "previous"],
            "test_roc_auc": [0.8, None],
        }
    )
    assert views.champion_of(versions)["version"] == 2
    assert views.champion_of(versions.assign(aliases="")) is None
    empty = pd.DataFrame()
    frames = views.Views(
        leaderboard=pd.DataFrame(columns=history.LEADERBOARD_COLUMNS),
        champion_history=empty,
        gate_decisions=empty,
        run_durations=empty,
        lineage=empty,
        trials=empty,
        metric_summary=empty,
        registered_models=empty,
        monitor_results=empty,
    )
    counts = pd.DataFrame({"table": ["runs", "spans"], "rows": [0, 0], "loaded": [True, False]})
    text = views.summary_markdown("sqlite:///x", "loan-default", counts, frames, None)
    assert "No research run" in text and "No version holds" in text and "No register run" in text
    assert "| runs" in text and "1 other tables" in text
