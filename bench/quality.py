"""Held-out quality of stages 1+2 against FLAML and plain logistic regression, at equal wall budget.

Benchmark, not a test. On the holdout protocol (and --suite) "ours" is the pipeline itself:
``research.run`` then ``optimize.run`` under ``budget_seconds = B`` on a throwaway SQLite store,
with ``seed = s`` so that the stages' own held-out part is the protocol's split (checked); its
wall is the two stages', tracking included, against B. The cv10 protocol, whose parts the stages
cannot take, runs the pipeline's pure functions (no MLflow; Optuna in memory) with the bench's
own split of B (tuning_seconds).

    .venv/bin/python bench/quality.py                      # 5 splits, B = 120 s (about 25 min)
    .venv/bin/python bench/quality.py --budget 60 --splits 3
    .venv/bin/python bench/quality.py --protocol cv10 --budget 60 --no-flaml   # about 9 min
    .venv/bin/python bench/quality.py --suite --splits 1 --budget 60
    .venv/bin/python bench/quality.py --suite --data loans.csv:status:bad   # and any CSV of yours
    .venv/bin/python bench/quality.py --suite --synthetic 6000 --budget 60   # and four generated tables

Protocols:
  holdout  train_test_split(test_size=0.25, stratify=y, random_state=s) for s = 1..splits;
           held-out ROC AUC and expected cost per applicant, each method at its own out-of-fold
           cost-minimising threshold on the training part (FLAML's from its best configuration
           refit on the same folds, see flaml_scores).
  cv10     10-fold stratified CV over all rows (the OpenML AutoML benchmark's protocol);
           mean ROC AUC; --budget is then per fold.
  --suite  holdout on every dataset: the configured one, ../shared/data/credit_risk_dataset.csv
           when present (--credit-risk elsewhere; never required, never committed), and each
           --data path.csv:target[:positive_label] (--synthetic ROWS: bench/scale.py's generated tables,
           a nearly linear signal, a weak signal of thresholds and interactions, a rare default, and a
           wide table of 65 other columns with 2 % "bad"); at B = 60 and 120 s unless --budget is given.
           Prints per-split figures, then per dataset and budget the means, ours/FLAML and ours' wall/B.

FLAML is a benchmark-only dependency (bench/requirements.txt), never imported by the pipeline.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from tabulate import tabulate
from threadpoolctl import threadpool_limits

from pipeline import tuning
from pipeline.config import DatasetConfig, PipelineConfig, load_config
from pipeline.data import Dataset, Split, load_dataset, split_dataset
from pipeline.evaluation import best_threshold, expected_cost
from pipeline.final_model import FamilyOutcome, choose_final_estimator, family_objective, fit_final
from pipeline.models import build_estimator
from pipeline.selection import evaluate_portfolio, leaderboard_frame, ranked_families
from pipeline.settings import ARTIFACT_ROOT_ENV, TRACKING_URI_ENV, temporary_environment
from pipeline.tracking import keys
from pipeline.training import cross_validate, folds, positive_scores

ROOT = Path(__file__).resolve().parents[1]
CREDIT_RISK = ROOT.parent / "shared" / "data" / "credit_risk_dataset.csv"
CREDIT_RISK_TARGET = ("loan_status", 1)
SUITE_BUDGETS = (60.0, 120.0)
# Kept for the final refit, calibration check and test scoring, out of the tuning budget: they took
# 7-10 s on 2 cores, and the trial running when a family's time is up adds a few seconds.
FINAL_RESERVE_SECONDS = 15.0
# FLAML's share of B kept for refitting its best configuration on the threshold folds.
FLAML_THRESHOLD_SHARE = 0.1
HOLDOUT_TEST_SIZE = 0.25  # the protocol's (ANCHORS.md)
OURS = "ours (stages 1+2)"


@dataclass
class Outcome:
    method: str
    split: str
    roc_auc: float
    cost: float
    seconds: float
    note: str = ""
    data: str = ""
    budget: float = 0.0


def tuning_seconds(budget: float, elapsed: float, families_left: int) -> float:
    """Seconds of Optuna for the next family: the one place the bench splits B for ours.

    Stage 1 has no budget of its own: it runs the whole portfolio, and ``elapsed`` includes it.
    What is left of B after a fixed reserve for the final step (:data:`FINAL_RESERVE_SECONDS`)
    is shared equally among the families still to tune, so a family that stops early (trial
    cap, or all pruned) leaves its time to the next; never less than one second a family.
    """
    left = budget - elapsed - FINAL_RESERVE_SECONDS
    return max(1.0, left / families_left)


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
            share = tuning_seconds(budget, time.perf_counter() - started, len(families) - position)
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


def ours_pipeline(
    config: PipelineConfig, dataset: Dataset, train: np.ndarray, test: np.ndarray, budget: float, seed: int
) -> tuple[np.ndarray, float, str]:
    """Stages 1 and 2 as the commands run them, under ``budget_seconds = budget``; the test scores
    of the test part, the threshold and what won (with the budget steps the stages recorded)."""
    from pipeline.stages import optimize, research

    run_config = config.model_copy(
        update={
            "seed": seed,
            "budget_seconds": budget,
            "split": config.split.model_copy(update={"test_size": HOLDOUT_TEST_SIZE}),
        }
    )
    own = split_dataset(dataset, HOLDOUT_TEST_SIZE, seed)
    if not np.array_equal(np.sort(own.test_index), np.sort(test)):
        raise SystemExit(
            "the stages' held-out part is not the protocol's: compare split_dataset and holdout_parts"
        )
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as folder:
        store = {TRACKING_URI_ENV: f"sqlite:///{folder}/mlflow.db", ARTIFACT_ROOT_ENV: f"{folder}/artifacts"}
        with temporary_environment(**store):
            # Each stage's clock starts at its own call, as each command's at its process's start:
            # stage 2 adds what stage 1 recorded.
            found = research.run(run_config)
            tuned = optimize.run(run_config, research_run_id=found.run_id)
            scored = Path(MlflowClient().download_artifacts(tuned.run_id, keys.ARTIFACT_TEST_SCORES, folder))
            frame = pd.read_csv(scored)
    by_row = dict(zip(frame["row_index"], frame["score"], strict=True))
    scores = np.array([by_row[position] for position in test])
    steps = ", ".join(
        f"{step.name} {step.spent:.0f}/{step.planned:.0f} s"
        + (f" ({step.stopped_by})" if step.stopped_by else "")
        for step in tuned.steps
    )
    return scores, tuned.threshold, f"{tuned.best_family}/{tuned.calibration}; {steps}"


def logistic(config: PipelineConfig, dataset: Dataset, train: np.ndarray, test: np.ndarray):
    """Default logistic regression; its threshold from out-of-fold scores on the training part."""
    train_x, train_y = dataset.features.iloc[train], dataset.target.iloc[train]
    model = build_estimator("logistic_regression", {}, dataset.categorical, dataset.numeric, config.seed)
    cv = cross_validate(model, train_x, train_y, folds(train_y, 5, config.seed), config.costs)
    model.fit(train_x, train_y)
    return positive_scores(model, dataset.features.iloc[test]), cv.threshold


def flaml_scores(
    config: PipelineConfig, dataset: Dataset, train: np.ndarray, test: np.ndarray, budget: float
):
    """FLAML within ``budget``: test scores and its own out-of-fold cost-minimising threshold.

    The search gets B less :data:`FLAML_THRESHOLD_SHARE`; its best configuration is then refit on
    the same stratified folds of the training part that ours uses, and the threshold comes from
    those out-of-fold scores through the pipeline's own threshold function, as ours and logistic
    regression get theirs. Its probabilities, so its ROC AUC, are those of the searched model.
    """
    from flaml import AutoML

    frame = dataset.features.copy()
    for column in dataset.categorical:
        frame[column] = frame[column].astype("category")
    train_x, train_y = frame.iloc[train], dataset.target.iloc[train].to_numpy()
    automl = AutoML()
    settings = {
        "task": "classification",
        "metric": "roc_auc",
        "time_budget": budget * (1 - FLAML_THRESHOLD_SHARE),
        "seed": config.seed,
        "verbose": 0,
        "n_jobs": 2,
    }
    try:
        import xgboost  # noqa: F401
    except ImportError:
        settings["estimator_list"] = ["lgbm", "rf", "extra_tree", "lrl1"]
    started = time.perf_counter()
    automl.fit(train_x, train_y, **settings)
    searched = time.perf_counter()

    prepared = automl.preprocess(train_x)  # FLAML's own column handling, as predict_proba applies it
    out_of_fold = np.full(len(train_y), np.nan)
    for fit_rows, valid_rows in folds(pd.Series(train_y), config.optimize.cv_folds, config.seed):
        model = copy.deepcopy(automl.model)  # the best configuration, refit on this fold
        model.fit(prepared.iloc[fit_rows], train_y[fit_rows])
        out_of_fold[valid_rows] = model.predict_proba(prepared.iloc[valid_rows])[:, 1]
    threshold, _ = best_threshold(train_y, out_of_fold, config.costs)
    spent = (
        f"search and refit {searched - started:.0f} s, threshold folds {time.perf_counter() - searched:.0f} s"
    )
    return automl.predict_proba(frame.iloc[test])[:, 1], threshold, f"{automl.best_estimator}; {spent}"


def run_split(
    args, config, dataset, label, train, test, budget: float, data: str = "", seed: int | None = None
) -> list[Outcome]:
    """One part: logistic regression, ours (the stages themselves when ``seed`` names a holdout
    split, else the pure functions) and FLAML."""
    y_test = dataset.target.iloc[test].to_numpy()
    results = []

    def record(method: str, scores, threshold: float, started: float, note: str = "") -> None:
        seconds = time.perf_counter() - started
        roc_auc = roc_auc_score(y_test, scores)
        cost = expected_cost(y_test, scores, threshold, config.costs)
        results.append(Outcome(method, label, roc_auc, cost, seconds, note, data, budget))

    started = time.perf_counter()
    scores, threshold = logistic(config, dataset, train, test)
    record("logistic regression", scores, threshold, started)

    started = time.perf_counter()
    if seed is not None:
        scores, threshold, winner = ours_pipeline(config, dataset, train, test, budget, seed)
    else:
        scores, threshold, winner = ours(config, dataset, train, test, budget)
    record(OURS, scores, threshold, started, winner)

    if not args.no_flaml:
        started = time.perf_counter()
        scores, threshold, estimator = flaml_scores(config, dataset, train, test, budget)
        record("FLAML", scores, threshold, started, f"threshold {threshold:.3f}, {estimator}")
    prefix = f"{data} B={budget:.0f} s " if data else ""
    for outcome in results:
        print(
            f"{prefix}{label}: {outcome.method:20s} ROC AUC {outcome.roc_auc:.4f}  cost {outcome.cost:.4f}  "
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
        ratio = summary.loc[OURS] / summary.loc["FLAML"]
        text.append(
            f"\nours / FLAML: ROC AUC x{ratio['roc_auc_mean']:.4f}, expected cost x{ratio['cost_mean']:.4f}, "
            f"wall time x{ratio['seconds_mean']:.2f}"
        )
    return "\n".join(text)


def summarise_suite(outcomes: list[Outcome]) -> str:
    """Per split, then per dataset and budget: means, ours/FLAML and ours' wall against B."""
    frame = pd.DataFrame([o.__dict__ for o in outcomes])
    per_split = frame[["data", "budget", "split", "method", "roc_auc", "cost", "seconds"]]
    means = frame.groupby(["data", "budget", "method"], sort=False)[["roc_auc", "cost", "seconds"]].mean()
    rows = []
    for (data, budget), part in frame.groupby(["data", "budget"], sort=False):
        mean = part.groupby("method")[["roc_auc", "cost", "seconds"]].mean()
        ours_part = part[part["method"] == OURS]
        row = {
            "data": data,
            "B s": budget,
            "splits": len(ours_part),
            "ours ROC AUC": mean.loc[OURS, "roc_auc"],
            "ours cost": mean.loc[OURS, "cost"],
            "ours wall/B": mean.loc[OURS, "seconds"] / budget,
            "ours max wall/B": ours_part["seconds"].max() / budget,
            "LR ROC AUC": mean.loc["logistic regression", "roc_auc"],
        }
        if "FLAML" in mean.index:
            row |= {
                "FLAML ROC AUC": mean.loc["FLAML", "roc_auc"],
                "FLAML cost": mean.loc["FLAML", "cost"],
                "FLAML wall/B": mean.loc["FLAML", "seconds"] / budget,
                "AUC ours/FLAML": mean.loc[OURS, "roc_auc"] / mean.loc["FLAML", "roc_auc"],
                "cost ours/FLAML": mean.loc[OURS, "cost"] / mean.loc["FLAML", "cost"],
            }
        rows.append(row)
    return "\n".join(
        [
            "per split",
            tabulate(per_split, headers="keys", floatfmt=".4f", showindex=False),
            "",
            "means per method",
            tabulate(means, headers="keys", floatfmt=".4f"),
            "",
            "per dataset and budget",
            tabulate(pd.DataFrame(rows), headers="keys", floatfmt=".4f", showindex=False),
        ]
    )


def parse_data(spec: str) -> tuple[Path, str, str | int | None]:
    """``path.csv:target[:positive_label]``; a label that reads as a whole number is one."""
    path, _, rest = spec.partition(":")
    target, _, label = rest.partition(":")
    if not path or not target:
        raise SystemExit(f"--data {spec}: expected path.csv:target[:positive_label]")
    return Path(path), target, (int(label) if label.lstrip("-").isdigit() else label) or None


def with_data(config: PipelineConfig, path: Path, target: str, positive_label) -> PipelineConfig:
    """The same settings on another table: only the dataset section changes (no per-dataset tuning)."""
    dataset = DatasetConfig(
        name=path.stem,
        path=path.resolve(),
        target=target,
        positive_label=config.dataset.positive_label if positive_label is None else positive_label,
    )
    return config.model_copy(update={"dataset": dataset})


def suite_datasets(args, config: PipelineConfig) -> list[tuple[PipelineConfig, Dataset]]:
    chosen = [config]
    credit_risk = args.credit_risk or CREDIT_RISK
    if credit_risk.is_file():
        chosen.append(with_data(config, credit_risk, *CREDIT_RISK_TARGET))
    else:
        print(f"({credit_risk} not found: skipped)", flush=True)
    chosen += [with_data(config, *parse_data(spec)) for spec in args.data]
    return [(c, load_dataset(c)) for c in chosen]


def holdout_parts(dataset: Dataset, n_splits: int) -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    positions, y = np.arange(dataset.n_rows), dataset.target.to_numpy()
    return [
        (
            f"seed {seed}",
            *train_test_split(positions, test_size=HOLDOUT_TEST_SIZE, stratify=y, random_state=seed),
            seed,
        )
        for seed in range(1, n_splits + 1)
    ]


def synthetic_tables(rows: int, folder: Path) -> list[str]:
    """bench/scale.py's generated loan tables of ``rows`` rows (seed 0), written to ``folder`` as CSVs
    without the id column: its nearly linear signal, a weak one of thresholds and interactions, and a
    rare default (about 4 %); and a wide table of other columns (:func:`scale.wide_loans`: 65 columns,
    2 % "bad"). Returned as ``--data`` specs."""
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "scale.py")
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    specs = []
    for name, generate in (
        ("synthetic_loans", scale.synthetic_loans),
        ("weak_signal_loans", scale.weak_signal_loans),
        ("rare_default_loans", scale.rare_default_loans),
    ):
        path = folder / f"{name}_{rows}.csv"
        generate(rows, 0).drop(columns=[scale.ID_COLUMN]).to_csv(path, index=False)
        specs.append(f"{path}:{scale.TARGET}:1")
    path = folder / f"wide_loans_{rows}.csv"
    scale.wide_loans(rows, 0).to_csv(path, index=False)
    return [*specs, f"{path}:{scale.WIDE_TARGET}:{scale.WIDE_POSITIVE}"]


def run_suite(args, config: PipelineConfig) -> None:
    budgets = [args.budget] if args.budget is not None else list(SUITE_BUDGETS)
    if args.synthetic:
        tables = tempfile.TemporaryDirectory(prefix="bench-quality-tables-")
        args.data = [*args.data, *synthetic_tables(args.synthetic, Path(tables.name))]
    datasets = suite_datasets(args, config)
    outcomes = []
    for data_config, dataset in datasets:
        print(f"{dataset.name}: {dataset.n_rows} rows, {dataset.target.mean():.1%} positive", flush=True)
        for budget in budgets:
            for label, train, test, seed in holdout_parts(dataset, args.splits or 3):
                outcomes += run_split(
                    args, data_config, dataset, label, train, test, budget, dataset.name, seed
                )
    print()
    print(summarise_suite(outcomes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget", type=float, help="wall seconds for ours and for FLAML (default 120; --suite: 60 and 120)"
    )
    parser.add_argument(
        "--splits", type=int, help="holdout: seeds 1..N (default 5, --suite 3); cv10: first N folds (10)"
    )
    parser.add_argument("--protocol", choices=["holdout", "cv10"], default="holdout")
    parser.add_argument("--no-flaml", action="store_true", help="skip FLAML (not installed, or to save time)")
    parser.add_argument("--config", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--profile", help="a params.yaml profile, e.g. fast")
    parser.add_argument("--suite", action="store_true", help="every dataset below, at B = 60 and 120 s")
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="PATH:TARGET[:POSITIVE_LABEL]",
        help="--suite: another CSV (repeatable); positive label defaults to the config's",
    )
    parser.add_argument(
        "--synthetic",
        type=int,
        metavar="ROWS",
        help="--suite: also bench/scale.py's generated tables (linear, weak, rare default) of ROWS rows",
    )
    parser.add_argument(
        "--credit-risk", type=Path, help=f"--suite: credit_risk_dataset.csv (default {CREDIT_RISK})"
    )
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore")
    config = load_config(args.config, profile=args.profile)
    if args.suite:
        run_suite(args, config)
        return
    budget = 120.0 if args.budget is None else args.budget
    dataset = load_dataset(config)

    if args.protocol == "holdout":
        parts = holdout_parts(dataset, args.splits or 5)
    else:
        positions, y = np.arange(dataset.n_rows), dataset.target.to_numpy()
        splitter = StratifiedKFold(n_splits=10, shuffle=True, random_state=0)
        parts = [(f"fold {i + 1}", tr, te, None) for i, (tr, te) in enumerate(splitter.split(positions, y))]
        parts = parts[: args.splits or 10]
    print(
        f"protocol {args.protocol}, budget {budget:.0f} s, {len(parts)} part(s), "
        f"{dataset.n_rows} rows, digest {dataset.digest}",
        flush=True,
    )
    outcomes = []
    for label, train, test, seed in parts:
        outcomes += run_split(args, config, dataset, label, train, test, budget, seed=seed)
    print()
    print(summarise(outcomes))


if __name__ == "__main__":
    main()
