"""Figures for MLflow artifacts and the report. Pure: data in, matplotlib figures out."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on CI machines

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure


def leaderboard_chart(leaderboard: pd.DataFrame, metric: str = "cv_roc_auc") -> Figure:
    """Horizontal bars of a CV metric's mean with one-std error bars, best on top."""
    ordered = leaderboard.sort_values(f"{metric}_mean")
    figure, axis = plt.subplots(figsize=(7, 0.45 * len(ordered) + 1.2))
    axis.barh(
        ordered["candidate"],
        ordered[f"{metric}_mean"],
        xerr=ordered[f"{metric}_std"],
        color="#4c72b0",
        ecolor="#333333",
        capsize=3,
    )
    low = max(0.0, float((ordered[f"{metric}_mean"] - ordered[f"{metric}_std"]).min()) - 0.05)
    axis.set_xlim(low, 1.0)
    axis.set_xlabel(f"{metric.removeprefix('cv_').replace('_', ' ')} (cross-validated mean ± std)")
    axis.set_title("Research candidates")
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def close(figure: Figure) -> None:
    plt.close(figure)
