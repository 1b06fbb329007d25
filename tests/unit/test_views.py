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
    )
    counts = pd.DataFrame({"table": ["runs", "spans"], "rows": [0, 0], "loaded": [True, False]})
    source = views.Source(None, "sqlite:///x", views.SOURCE_SQL, "sqlite:///x", None)
    text = views.summary_markdown(source, "loan-default", counts, frames)
    assert "No research run" in text and "No version holds" in text and "No register run" in text
    assert "| runs" in text and "1 other tables" in text
    assert "Read through SQL over the tracking database sqlite:///x." in text


def test_a_source_says_how_it_was_read_without_a_password():
    server = "http://alice:s3cret@mlflow.example:5000"
    api = views.Source(None, server, views.SOURCE_API, None, None)
    assert api.description.startswith("MLflow's REST API of http://alice:***@mlflow.example:5000")
    database = "postgresql+psycopg2://mlflow:pw-2@db/mlflow"
    behind = views.Source(None, server, views.SOURCE_SQL, database, "abc")
    assert behind.description == (
        "SQL over postgresql+psycopg2://mlflow:***@db/mlflow, the database of http://alice:***@mlflow.example:5000"
    )
    assert "s3cret" not in api.description + behind.description and "pw-2" not in behind.description
