"""pipeline.views: the derived tables and the summary, on hand-made frames."""

import numpy as np
import pandas as pd

from pipeline import views
from pipeline.comparison import compare_models, confusion_frame
from pipeline.config import CostConfig


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
    frames = views.Views.empty()
    counts = pd.DataFrame({"table": ["runs", "spans"], "rows": [0, 0], "loaded": [True, False]})
    source = views.Source(None, "sqlite:///x", views.SOURCE_SQL, "sqlite:///x", None)
    text = views.summary_markdown(source, "loan-default", counts, frames)
    assert text.startswith("# Model check: no registration yet")
    assert "No research run" in text and "No version holds" in text and "No register run" in text
    assert "No version has been deployed" in text
    assert "| runs" in text and "1 other tables" in text


def test_summary_leads_with_the_verdict_then_the_comparison():
    y = np.array([0, 1] * 50)
    champion = np.where(y == 1, 0.6, 0.4) + np.linspace(-0.15, 0.15, 100)
    challenger = np.where(y == 1, 0.8, 0.2)
    costs = CostConfig()
    gates = pd.DataFrame(
        [
            {
                "decision": "promoted",
                "model_name": "m",
                "version": "3",
                "reason": "expected cost lower by 0.3",
                "run_id": "r",
                "start_time": pd.Timestamp("2026-11-26", tz="UTC"),
            }
        ]
    )
    frames = views.Views.empty(
        gate_decisions=gates,
        comparison=compare_models(y, challenger, 0.5, costs, champion, 0.5, samples=100, seed=0),
        confusion=confusion_frame(y, challenger, 0.5, champion, 0.5),
    )
    counts = pd.DataFrame({"table": ["runs"], "rows": [3], "loaded": [True]})
    source = views.Source(None, "sqlite:///x", views.SOURCE_SQL, "sqlite:///x", None)
    text = views.summary_markdown(source, "loan-default", counts, frames)
    lines = text.splitlines()
    assert lines[0] == "# Model check: promoted"
    assert (
        lines[2].startswith("**Promoted**: `m` version 3")
        and lines[3] == "Reason: expected cost lower by 0.3"
    )
    assert "## Champion against challenger on the same 100 held-out applicants" in text
    assert text.index("## Champion against challenger") < text.index("## Leaderboard")
    assert "| ROC AUC |" in text and "defaulter, accepted" in text
