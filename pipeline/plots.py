"""Figures for MLflow artifacts and the report. Pure: data in, matplotlib figures out.

Figures are built with matplotlib's object API, never pyplot: no backend to choose, no global
figure registry, so importing this module changes nothing and figures are freed with their owner.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure


def subplots(rows: int = 1, columns: int = 1, *, figsize: tuple[float, float], squeeze: bool = True):
    """A figure and its axes, like ``pyplot.subplots`` but outside pyplot's state."""
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(rows, columns, squeeze=squeeze)


def leaderboard_chart(leaderboard: pd.DataFrame, metric: str = "cv_roc_auc") -> Figure:
    """Horizontal bars of a CV metric's mean with one-std error bars, best on top."""
    ordered = leaderboard.sort_values(f"{metric}_mean")
    figure, axis = subplots(figsize=(7, 0.45 * len(ordered) + 1.2))
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
    figure.clear()


# --- Stage 2: the final model on the held-out test part ---------------------------------------------


def roc_chart(y_true, scores, label: str = "model") -> Figure:
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y_true, scores)
    figure, axis = subplots(figsize=(5, 5))
    axis.plot(fpr, tpr, color="#4c72b0", label=f"{label} (AUC {roc_auc_score(y_true, scores):.3f})")
    axis.plot([0, 1], [0, 1], color="#999999", linestyle="--", label="chance")
    axis.set_xlabel("false positive rate (good payers rejected)")
    axis.set_ylabel("true positive rate (defaulters rejected)")
    axis.set_title("ROC curve, test part")
    axis.legend(loc="lower right")
    figure.tight_layout()
    return figure


def precision_recall_chart(y_true, scores) -> Figure:
    import numpy as np
    from sklearn.metrics import average_precision_score, precision_recall_curve

    precision, recall, _ = precision_recall_curve(y_true, scores)
    figure, axis = subplots(figsize=(5, 5))
    axis.step(recall, precision, where="post", color="#4c72b0")
    axis.axhline(float(np.mean(y_true)), color="#999999", linestyle="--", label="prevalence")
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_title(f"Precision-recall, test part (AP {average_precision_score(y_true, scores):.3f})")
    axis.legend(loc="upper right")
    figure.tight_layout()
    return figure


def calibration_chart(y_true, scores, bins: int = 10) -> Figure:
    from sklearn.calibration import calibration_curve

    observed, predicted = calibration_curve(y_true, scores, n_bins=bins, strategy="quantile")
    figure, axis = subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], color="#999999", linestyle="--", label="perfect")
    axis.plot(predicted, observed, marker="o", color="#4c72b0", label="model")
    axis.set_xlabel("mean predicted probability of default")
    axis.set_ylabel("observed default rate")
    axis.set_title("Calibration, test part")
    axis.legend(loc="upper left")
    figure.tight_layout()
    return figure


def confusion_chart(tn: float, fp: float, fn: float, tp: float, threshold: float) -> Figure:
    import numpy as np

    matrix = np.array([[tn, fp], [fn, tp]])
    figure, axis = subplots(figsize=(4.5, 4))
    axis.imshow(matrix, cmap="Blues")
    for (row, column), value in np.ndenumerate(matrix):
        colour = "white" if value > matrix.max() / 2 else "black"
        axis.text(column, row, f"{int(value)}", ha="center", va="center", color=colour, fontsize=14)
    axis.set_xticks([0, 1], ["accept", "reject"])
    axis.set_yticks([0, 1], ["repaid", "defaulted"])
    axis.set_xlabel("decision")
    axis.set_ylabel("outcome")
    axis.set_title(f"Confusion matrix at threshold {threshold:.3f}")
    figure.tight_layout()
    return figure


def cost_chart(thresholds, costs, chosen: float, test_curve=None) -> Figure:
    """Expected cost per applicant against threshold (out-of-fold, and the test part if given)."""
    figure, axis = subplots(figsize=(6, 4))
    axis.plot(thresholds, costs, color="#4c72b0", label="out-of-fold (train)")
    if test_curve is not None:
        axis.plot(test_curve[0], test_curve[1], color="#dd8452", alpha=0.8, label="test part")
    axis.axvline(chosen, color="#c44e52", linestyle="--", label=f"chosen {chosen:.3f}")
    axis.set_xlim(0, 1)
    axis.set_xlabel("threshold (reject at or above)")
    axis.set_ylabel("expected cost per applicant")
    axis.set_title("Business cost against threshold")
    axis.legend()
    figure.tight_layout()
    return figure


def score_distribution_chart(y_true, scores, threshold: float) -> Figure:
    import numpy as np

    y_true, scores = np.asarray(y_true), np.asarray(scores)
    figure, axis = subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 26)
    axis.hist(scores[y_true == 0], bins=bins, alpha=0.6, color="#4c72b0", label="repaid", density=True)
    axis.hist(scores[y_true == 1], bins=bins, alpha=0.6, color="#c44e52", label="defaulted", density=True)
    axis.axvline(threshold, color="#333333", linestyle="--", label=f"threshold {threshold:.3f}")
    axis.set_xlabel("predicted probability of default")
    axis.set_ylabel("density")
    axis.set_title("Scores by class, test part")
    axis.legend()
    figure.tight_layout()
    return figure


def importance_chart(importance: pd.DataFrame, top: int = 20) -> Figure:
    """Bars of permutation importance (``feature``, ``importance_mean``, ``importance_std``)."""
    shown = importance.sort_values("importance_mean").tail(top)
    figure, axis = subplots(figsize=(6, 0.3 * len(shown) + 1.2))
    axis.barh(
        shown["feature"],
        shown["importance_mean"],
        xerr=shown["importance_std"],
        color="#4c72b0",
        ecolor="#333333",
        capsize=2,
    )
    axis.set_xlabel("drop in ROC AUC when the feature is shuffled")
    axis.set_title("Permutation importance, test part")
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


# --- Monitoring ---------------------------------------------------------------------------------------

_STATUS_COLOURS = {"stable": "#55a868", "watch": "#dd8452", "shifted": "#c44e52"}


def stability_chart(summary: pd.DataFrame, bins: pd.DataFrame, watch: float, shift: float) -> Figure:
    """PSI of the score and CSI per characteristic (bars by status), and the score's bins."""
    import numpy as np

    shown = summary.iloc[::-1]
    figure, (left, right) = subplots(1, 2, figsize=(12, 0.3 * len(shown) + 2.2))
    left.barh(shown["name"], shown["index"], color=shown["status"].map(_STATUS_COLOURS).fillna("#4c72b0"))
    left.axvline(watch, color="#dd8452", linestyle="--", label=f"watch {watch:g}")
    left.axvline(shift, color="#c44e52", linestyle="--", label=f"shifted {shift:g}")
    left.set_xlabel("stability index (PSI of the score, CSI of a characteristic)")
    left.set_title("Population stability against the training part")
    left.legend(loc="lower right")
    score = bins[bins["name"] == summary.iloc[0]["name"]]
    positions = np.arange(len(score))
    right.bar(positions - 0.2, score["expected"], width=0.4, color="#4c72b0", label="training")
    right.bar(positions + 0.2, score["actual"], width=0.4, color="#dd8452", label="new applicants")
    right.set_xticks(positions, score["bin"], rotation=60, ha="right", fontsize=7)
    right.set_ylabel("share of applicants")
    right.set_title("Score bins")
    right.legend()
    figure.tight_layout()
    return figure


# --- Stage 4: the results report --------------------------------------------------------------------


def results_leaderboard_chart(board: pd.DataFrame, top: int = 15) -> Figure:
    """Horizontal bars of CV ROC AUC for research candidates and tuned models, best on top."""
    shown = board.dropna(subset=["cv_roc_auc"]).head(top).iloc[::-1]
    figure, axis = subplots(figsize=(7, 0.4 * max(len(shown), 1) + 1.4))
    if shown.empty:
        axis.text(0.5, 0.5, "no runs yet", ha="center", va="center")
        axis.set_axis_off()
        return figure
    colours = shown["stage"].map({"optimize": "#dd8452"}).fillna("#4c72b0")
    labels = shown["stage"] + ": " + shown["name"].fillna(shown["family"]).astype(str)
    axis.barh(labels, shown["cv_roc_auc"], color=colours)
    axis.set_xlim(max(0.0, float(shown["cv_roc_auc"].min()) - 0.05), 1.0)
    axis.set_xlabel("cross-validated ROC AUC (orange: tuned models)")
    axis.set_title("Leaderboard")
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def roc_comparison_chart(curves: dict[str, tuple]) -> Figure:
    """ROC curves of several models on the same test part: ``{label: (y_true, scores)}``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    figure, axis = subplots(figsize=(5.5, 5))
    for label, (y_true, scores) in curves.items():
        fpr, tpr, _ = roc_curve(y_true, scores)
        axis.plot(fpr, tpr, label=f"{label} (AUC {roc_auc_score(y_true, scores):.3f})")
    axis.plot([0, 1], [0, 1], color="#999999", linestyle="--", label="chance")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title("ROC curves on the held-out test part")
    axis.legend(loc="lower right")
    figure.tight_layout()
    return figure


def hyperparameter_chart(trials: pd.DataFrame, score: str = "cv_roc_auc") -> Figure:
    """One panel per (family, numeric hyperparameter): value against the trial's CV score."""
    values = trials.assign(numeric=pd.to_numeric(trials["value"], errors="coerce")).dropna(
        subset=["numeric", score]
    )
    panels = sorted(values.groupby(["family", "param"]).groups)
    columns = min(3, max(len(panels), 1))
    rows = max(1, -(-len(panels) // columns))
    figure, axes = subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.set_axis_off()
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no numeric hyperparameters tuned", ha="center", va="center")
    for axis, (family, param) in zip(axes.flat, panels, strict=False):
        part = values[(values["family"] == family) & (values["param"] == param)]
        axis.scatter(part["numeric"], part[score], color="#4c72b0", alpha=0.8)
        if part["numeric"].gt(0).all() and part["numeric"].max() / part["numeric"].min() > 20:
            axis.set_xscale("log")
        axis.set_title(f"{family}: {param}", fontsize=9)
        axis.set_ylabel(score.replace("_", " "), fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def bootstrap_chart(differences: pd.DataFrame, margins: dict[str, float] | None = None) -> Figure:
    """Histograms of the paired bootstrap gains over the champion (right of the line = better)."""
    columns = [c for c in ("cost_saving", "roc_auc_gain") if c in differences.columns]
    figure, axes = subplots(1, len(columns), figsize=(5 * len(columns), 3.4), squeeze=False)
    for axis, column in zip(axes[0], columns, strict=True):
        values = differences[column].dropna()
        axis.hist(values, bins=40, color="#4c72b0", alpha=0.85)
        margin = (margins or {}).get(column, 0.0)
        axis.axvline(margin, color="#c44e52", linestyle="--", label=f"margin {margin:g}")
        share = float((values > margin).mean()) if len(values) else 0.0
        title = "expected cost saving" if column == "cost_saving" else "ROC AUC gain"
        axis.set_title(f"{title}: P(improvement) = {share:.3f}")
        axis.set_xlabel("challenger vs champion, per bootstrap resample")
        axis.legend()
    figure.tight_layout()
    return figure


# --- The report: champion and challenger side by side ---------------------------------------------

_MODEL_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")


def diagnostics_chart(models: dict[str, tuple], costs) -> Figure:
    """ROC, precision-recall, calibration and expected cost against threshold, one colour per model.

    ``models`` maps a label to ``(y_true, scores, threshold)`` on the same test rows; a dot marks
    each model's own threshold on the cost curve.
    """
    import numpy as np
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    from pipeline.evaluation import cost_curve, expected_cost

    figure, axes = subplots(2, 2, figsize=(10, 8.4))
    roc, pr, calibration, cost = axes.ravel()
    for colour, (label, (y_true, scores, threshold)) in zip(_MODEL_COLOURS, models.items(), strict=False):
        fpr, tpr, _ = roc_curve(y_true, scores)
        roc.plot(fpr, tpr, color=colour, label=f"{label} (AUC {roc_auc_score(y_true, scores):.3f})")
        precision, recall, _ = precision_recall_curve(y_true, scores)
        pr.step(
            recall,
            precision,
            where="post",
            color=colour,
            label=f"{label} (AP {average_precision_score(y_true, scores):.3f})",
        )
        observed, predicted = calibration_curve(y_true, scores, n_bins=10, strategy="quantile")
        calibration.plot(predicted, observed, marker="o", color=colour, label=label)
        curve = cost_curve(np.asarray(y_true), np.asarray(scores), costs)
        thresholds = np.clip(curve.thresholds, 0, 1)
        cost.plot(thresholds, curve.costs, color=colour, label=label)
        chosen = expected_cost(np.asarray(y_true), np.asarray(scores), threshold, costs)
        cost.plot([threshold], [chosen], marker="o", color=colour, markersize=8)
    roc.plot([0, 1], [0, 1], color="#999999", linestyle="--")
    roc.set(
        xlabel="good payers rejected (false positive rate)",
        ylabel="defaulters rejected (true positive rate)",
        title="ROC",
    )
    pr.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    calibration.plot([0, 1], [0, 1], color="#999999", linestyle="--")
    calibration.set(xlabel="mean predicted probability", ylabel="observed default rate", title="Calibration")
    cost.set(
        xlim=(0, 1),
        xlabel="threshold (reject at or above)",
        ylabel="expected cost per applicant",
        title="Cost against threshold (dot: the model's threshold)",
    )
    for axis in axes.ravel():
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("Held-out test part")
    figure.tight_layout()
    return figure


def score_distributions_chart(models: dict[str, tuple]) -> Figure:
    """Each model's scores by outcome, with its threshold, side by side."""
    import numpy as np

    figure, axes = subplots(1, max(len(models), 1), figsize=(5 * max(len(models), 1), 3.6), squeeze=False)
    bins = np.linspace(0, 1, 26)
    for axis, (label, (y_true, scores, threshold)) in zip(axes[0], models.items(), strict=False):
        y_true, scores = np.asarray(y_true), np.asarray(scores)
        axis.hist(scores[y_true == 0], bins=bins, alpha=0.6, color="#4c72b0", label="repaid", density=True)
        axis.hist(scores[y_true == 1], bins=bins, alpha=0.6, color="#c44e52", label="defaulted", density=True)
        axis.axvline(threshold, color="#333333", linestyle="--", label=f"threshold {threshold:.3f}")
        axis.set(title=label, xlabel="predicted probability of default", ylabel="density")
        axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def tuning_progress_chart(scores: pd.DataFrame) -> Figure:
    """The best CV ROC AUC so far against trial number, per tuned family (pruned trials as crosses)."""
    figure, axis = subplots(figsize=(8, 4))
    for colour, (family, trials) in zip(_MODEL_COLOURS * 3, scores.groupby("family"), strict=False):
        trials = trials.sort_values("trial")
        complete = trials[trials["cv_roc_auc"].notna()]
        axis.plot(
            complete["trial"], complete["cv_roc_auc"].cummax(), color=colour, label=f"{family} (best so far)"
        )
        axis.scatter(complete["trial"], complete["cv_roc_auc"], color=colour, s=12, alpha=0.5)
        pruned = trials[trials["cv_roc_auc"].isna()]
        if len(pruned):
            low = float(complete["cv_roc_auc"].min()) if len(complete) else 0.5
            axis.scatter(pruned["trial"], [low] * len(pruned), color=colour, marker="x", s=16, alpha=0.6)
    axis.set(xlabel="trial", ylabel="cross-validated ROC AUC", title="Tuning: best value over trials")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
