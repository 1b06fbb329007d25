"""Held-out quality of stages 1+2 against FLAML and plain logistic regression, at equal wall budget.

Benchmark, not a test. Runs the pipeline's pure functions (no MLflow; Optuna in memory):
stage 1's portfolio ranking, stage 2's tuning of the top-k families within what is left of the
budget, calibration, the out-of-fold threshold and one refit.

    .venv/bin/python bench/quality.py                      # 5 splits, B = 120 s (about 25 min)
    .venv/bin/python bench/quality.py --budget 60 --splits 3
    .venv/bin/python bench/quality.py --protocol cv10 --budget 60 --no-flaml   # about 9 min

Protocols:
  holdout  train_test_split(test_size=0.25, stratify=y, random_state=s) for s = 1..splits;
           held-out ROC AUC and expected cost per applicant (ours and LR at their out-of-fold
           threshold, FLAML at its default 0.5).
  cv10     10-fold stratified CV over all rows (the OpenML AutoML benchmark's protocol);
           mean ROC AUC; --budget is then per fold.

FLAML is a benchmark-only dependency (bench/requirements.txt), never imported by the pipeline.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from tabulate import tabulate
from threadpoolctl import threadpool_limits

from pipeline import tuning
from pipeline.config import PipelineConfig, load_config
from pipeline.data import Dataset, Split, load_dataset
from pipeline.evaluation import expected_cost
from pipeline.models import build_estimator
from pipeline.selection import (
    FamilyOutcome,
    choose_final_estimator,
    evaluate_portfolio,
    family_objective,
    fit_final,
    leaderboard_frame,
    ranked_families,
)
from pipeline.training import cross_validate, folds, positive_scores

ROOT = Path(__file__).resolve().parents[1]
# Kept for the final refit, calibration check and test scoring, out of the tuning budget: they took
# 7-10 s on 2 cores, and the trial running when a family's time is up adds a few seconds.
FINAL_RESERVE_SECONDS = 15.0


@dataclass
class Outcome:
    method: str
    split: str
    roc_auc: float
    cost: float
    seconds: float
    note: str = ""


def ours(
    config: PipelineConfig, dataset: Dataset, train: np.ndarray, test: np.ndarray, budget: float
) -> tuple[np.ndarray, float, str]:
    """Stages 1 and 2 within ``budget`` seconds; returns test scores, threshold and the winner."""
    started = time.perf_counter()
    split = Split(train_index=train, test_index=test, train_digest="bench", test_digest="bench")
    with threadpool_limits(limits=1, user_api="openmp"):
        board = leaderboard_frame(evaluate_portfolio(config, dataset, split))
        families = ranked_families(board)[: config.optimize.top_k]
        researched = time.perf_counter()

        train_x, train_y = dataset.features.iloc[train], dataset.target.iloc[train]
        splits = folds(train_y, config.optimize.cv_folds, config.seed)
        settings = config.optimize
        outcomes: list[FamilyOutcome] = []
        trials = 0
        for position, family in enumerate(families):
            left = budget - (time.perf_counter() - started) - FINAL_RESERVE_SECONDS
            share = max(1.0, left / (len(families) - position))
            study = tuning.open_study(
                optuna.storages.InMemoryStorage(), family, config.seed, settings.pruning
            )
            objective = family_objective(config, dataset, family, train_x, train_y, splits)
            ran = tuning.tune(study, objective, settings.n_trials, share)
            trials += ran
            trial = tuning.best_trial(study)
            if trial is None:
                continue
            metrics = tuning.trial_metrics(trial)
            outcomes.append(FamilyOutcome(family, family, ran, ran, 0, dict(trial.params), metrics))
        tuned = time.perf_counter()
        winner = min(outcomes, key=lambda o: tuning.rank_key(o.metrics))
        candidate = choose_final_estimator(config, dataset, outcomes, winner, train_x, train_y, splits)
        final, choice = fit_final(config, candidate.estimator, train_x, train_y, splits, candidate.cv)
        scores = positive_scores(final, dataset.features.iloc[test])
    spent = (
        f"research {researched - started:.0f} s, tuning {tuned - researched:.0f} s ({trials} trials), "
        f"final {time.perf_counter() - tuned:.0f} s"
    )
    return scores, choice.threshold, f"{candidate.name}/{choice.method}; {spent}"


def logistic(config: PipelineConfig, dataset: Dataset, train: np.ndarray, test: np.ndarray):
    """Default logistic regression; its threshold from out-of-fold scores on the training part."""
    train_x, train_y = dataset.features.iloc[train], dataset.target.iloc[train]
    model = build_estimator("logistic_regression", {}, dataset.categorical, dataset.numeric, config.seed)
    cv = cross_validate(model, train_x, train_y, folds(train_y, 5, config.seed), config.costs)
    model.fit(train_x, train_y)
    return positive_scores(model, dataset.features.iloc[test]), cv.threshold


def flaml_scores(dataset: Dataset, train: np.ndarray, test: np.ndarray, budget: float, seed: int):
    from flaml import AutoML

    frame = dataset.features.copy()
    for column in dataset.categorical:
        frame[column] = frame[column].astype("category")
    automl = AutoML()
    settings = {
        "task": "classification",
        "metric": "roc_auc",
        "time_budget": budget,
        "seed": seed,
        "verbose": 0,
        "n_jobs": 2,
    }
    try:
        import xgboost  # noqa: F401
    except ImportError:
        settings["estimator_list"] = ["lgbm", "rf", "extra_tree", "lrl1"]
    automl.fit(frame.iloc[train], dataset.target.iloc[train].to_numpy(), **settings)
    return automl.predict_proba(frame.iloc[test])[:, 1], automl.best_estimator


def run_split(args, config, dataset, label, train, test) -> list[Outcome]:
    y_test = dataset.target.iloc[test].to_numpy()
    results = []

    started = time.perf_counter()
    scores, threshold = logistic(config, dataset, train, test)
    results.append(
        Outcome(
            "logistic regression",
            label,
            roc_auc_score(y_test, scores),
            expected_cost(y_test, scores, threshold, config.costs),
            time.perf_counter() - started,
        )
    )

    started = time.perf_counter()
    scores, threshold, winner = ours(config, dataset, train, test, args.budget)
    results.append(
        Outcome(
            "ours (stages 1+2)",
            label,
            roc_auc_score(y_test, scores),
            expected_cost(y_test, scores, threshold, config.costs),
            time.perf_counter() - started,
            winner,
        )
    )

    if not args.no_flaml:
        started = time.perf_counter()
        scores, estimator = flaml_scores(dataset, train, test, args.budget, seed=config.seed)
        results.append(
            Outcome(
                "FLAML",
                label,
                roc_auc_score(y_test, scores),
                expected_cost(y_test, scores, 0.5, config.costs),
                time.perf_counter() - started,
                estimator,
            )
        )
    for outcome in results:
        print(
            f"{label}: {outcome.method:20s} ROC AUC {outcome.roc_auc:.4f}  cost {outcome.cost:.4f}  "
            f"{outcome.seconds:6.1f} s  {outcome.note}",
            flush=True,
        )
    return results


def summarise(outcomes: list[Outcome]) -> str:
    frame = pd.DataFrame([o.__dict__ for o in outcomes])
    per_split = frame.pivot(index="method", columns="split", values="roc_auc")[
        list(dict.fromkeys(frame["split"]))
    ]
    summary = frame.groupby("method").agg(
        roc_auc_mean=("roc_auc", "mean"),
        roc_auc_std=("roc_auc", "std"),
        cost_mean=("cost", "mean"),
        cost_std=("cost", "std"),
        seconds_mean=("seconds", "mean"),
    )
    text = [
        "held-out ROC AUC per split",
        tabulate(per_split, headers="keys", floatfmt=".4f"),
        "",
        tabulate(summary, headers="keys", floatfmt=".4f"),
    ]
    if "FLAML" in summary.index:
        ratio = summary.loc["ours (stages 1+2)"] / summary.loc["FLAML"]
        text.append(
            f"\nours / FLAML: ROC AUC x{ratio['roc_auc_mean']:.4f}, expected cost x{ratio['cost_mean']:.4f}, "
            f"wall time x{ratio['seconds_mean']:.2f}"
        )
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=120.0, help="wall seconds for ours and for FLAML")
    parser.add_argument(
        "--splits", type=int, help="holdout: seeds 1..N (default 5); cv10: first N folds (10)"
    )
    parser.add_argument("--protocol", choices=["holdout", "cv10"], default="holdout")
    parser.add_argument("--no-flaml", action="store_true", help="skip FLAML (not installed, or to save time)")
    parser.add_argument("--config", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--profile", help="a params.yaml profile, e.g. fast")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore")
    config = load_config(args.config, profile=args.profile)
    dataset = load_dataset(config)
    positions, y = np.arange(dataset.n_rows), dataset.target.to_numpy()

    if args.protocol == "holdout":
        parts = [
            (f"seed {seed}", *train_test_split(positions, test_size=0.25, stratify=y, random_state=seed))
            for seed in range(1, (args.splits or 5) + 1)
        ]
    else:
        splitter = StratifiedKFold(n_splits=10, shuffle=True, random_state=0)
        parts = [(f"fold {i + 1}", tr, te) for i, (tr, te) in enumerate(splitter.split(positions, y))]
        parts = parts[: args.splits or 10]
    print(
        f"protocol {args.protocol}, budget {args.budget:.0f} s, {len(parts)} part(s), "
        f"{dataset.n_rows} rows, digest {dataset.digest}",
        flush=True,
    )
    outcomes = []
    for label, train, test in parts:
        outcomes += run_split(args, config, dataset, label, train, test)
    print()
    print(summarise(outcomes))


if __name__ == "__main__":
    main()
