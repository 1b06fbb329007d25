"""Scale benchmark: stages 1 and 2 on a seeded synthetic loan table of 100,000 and 1,000,000 rows.

The table has the column types real loan tables have: skewed amounts and incomes, numeric columns
with missing values, categoricals with rare levels (an employer column of about 20,000 names, most
of them seen a handful of times), an all-unique application id (dropped through ``dataset.drop``)
and a default flag driven by a plausible signal (grade, debt to income, loan to income,
delinquencies; about a quarter positive, as in high-risk lending). It is written to a temporary
folder, never into the project.

Each size runs in a fresh process (so peak memory is that size's own) against a temporary SQLite
tracking store: ``research.run`` then ``optimize.run``, with the config loaded from ``params.yaml``
(and ``--profile``) and the dataset pointed at the generated table. ``--budget`` is the config's
``budget_seconds`` (stages 1 and 2 together). Prints wall time per stage and in total against the budget,
and peak memory: the largest resident size of the process tree (this process and its workers,
sampled every 0.2 s), and ``getrusage``'s peaks of the process and of its largest worker.

    .venv/bin/python bench/scale.py [--rows 100000,1000000] [--budget 300] [--profile fast]
                                    [--use dummy_prior,logistic_regression,...] [--config params.yaml]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import yaml

from pipeline.config import PipelineConfig, config_from_mapping, deep_merge
from pipeline.settings import ARTIFACT_ROOT_ENV, TRACKING_URI_ENV, temporary_environment

ROOT = Path(__file__).resolve().parents[1]
TARGET = "default"
ID_COLUMN = "application_id"
GRADES = np.array(list("ABCDEFG"))
PURPOSES = np.array(
    [
        "debt_consolidation",
        "credit_card",
        "home_improvement",
        "other",
        "major_purchase",
        "car",
        "medical",
        "small_business",
        "moving",
        "vacation",
        "house",
        "wedding",
        "renewable_energy",
        "educational",
    ]
)
STATES = np.array([f"S{i:02d}" for i in range(50)])


def _zipf_choice(rng: np.random.Generator, levels: np.ndarray, size: int, exponent: float) -> np.ndarray:
    """Levels drawn with Zipf-like frequencies: a few common ones, a long tail of rare ones."""
    weights = 1.0 / np.arange(1, len(levels) + 1) ** exponent
    return levels[rng.choice(len(levels), size=size, p=weights / weights.sum())]


def synthetic_loans(n_rows: int, seed: int = 0) -> pd.DataFrame:
    """A seeded loan table of ``n_rows`` rows with realistic column types and a default signal."""
    rng = np.random.default_rng(seed)
    grade_index = np.minimum(rng.geometric(0.35, n_rows) - 1, 6)
    grade = GRADES[grade_index]
    income = np.round(rng.lognormal(10.9, 0.55, n_rows), -2)
    loan_amount = np.round(np.clip(rng.lognormal(9.3, 0.7, n_rows), 500, 40_000), -1)
    term = rng.choice([36, 60], n_rows, p=[0.72, 0.28])
    interest = np.round(6 + 3.1 * grade_index + rng.normal(0, 1.2, n_rows), 2)
    dti = np.clip(rng.gamma(4.0, 4.5, n_rows), 0, 60)
    delinquencies = rng.poisson(0.25 + 0.08 * grade_index)
    age = np.clip(np.round(rng.normal(41, 12, n_rows)), 18, 85)
    employment_years = np.clip(np.round(rng.exponential(6.0, n_rows), 1), 0, 45)
    history_years = np.clip(np.round(age - 18 - rng.exponential(4, n_rows), 1), 0, None)
    open_accounts = rng.poisson(9, n_rows)
    revolving_util = np.clip(rng.beta(2, 2.5, n_rows) * 100 + 4 * grade_index, 0, 150)
    home = rng.choice(
        ["MORTGAGE", "RENT", "OWN", "OTHER", "NONE"], n_rows, p=[0.49, 0.40, 0.108, 0.0015, 0.0005]
    )
    purpose = _zipf_choice(rng, PURPOSES, n_rows, 1.3)
    state = _zipf_choice(rng, STATES, n_rows, 0.9)
    employer = _zipf_choice(rng, np.array([f"employer_{i:05d}" for i in range(20_000)]), n_rows, 1.05)
    channel = rng.choice(["branch", "online", "broker"], n_rows, p=[0.3, 0.6, 0.1])

    logit = (
        -3.1
        + 0.42 * grade_index
        + 0.035 * (dti - 18)
        + 0.9 * np.log(loan_amount / income * 10 + 0.05)
        + 0.35 * delinquencies
        - 0.02 * (employment_years - 6)
        + 0.012 * (revolving_util - 50)
        + 0.25 * (term == 60)
        + 0.3 * np.isin(purpose, ["small_business", "medical"])
        + 0.2 * (channel == "broker")
        + 0.15 * (home == "RENT")
    )
    default = (rng.random(n_rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)

    frame = pd.DataFrame(
        {
            ID_COLUMN: np.char.add("APP", rng.permutation(n_rows).astype(str)),
            "age": age,
            "annual_income": income,
            "loan_amount": loan_amount,
            "term_months": term,
            "interest_rate": interest,
            "debt_to_income": np.round(dti, 2),
            "delinquencies_2y": delinquencies,
            "employment_years": employment_years,
            "credit_history_years": history_years,
            "open_accounts": open_accounts,
            "revolving_utilisation": np.round(revolving_util, 1),
            "grade": grade,
            "home_ownership": home,
            "purpose": purpose,
            "state": state,
            "employer": employer,
            "channel": channel,
            TARGET: default,
        }
    )
    # Missing values where applications leave them out.
    for column, share in (("annual_income", 0.04), ("employment_years", 0.07), ("debt_to_income", 0.02)):
        frame.loc[rng.random(n_rows) < share, column] = np.nan
    frame.loc[rng.random(n_rows) < 0.05, "employer"] = None
    return frame


def weak_signal_loans(n_rows: int, seed: int = 0) -> pd.DataFrame:
    """:func:`synthetic_loans`' columns with another default flag: a weak signal of thresholds and
    interactions (high debt to income, high utilisation in the lower grades, short employment, a few
    states), plus noise, that a linear model mostly misses (logistic regression about 0.57 ROC AUC,
    boosted trees about 0.67). About a quarter positive."""
    frame = synthetic_loans(n_rows, seed)
    rng = np.random.default_rng(seed + 1)
    grade_index = np.searchsorted(GRADES, frame["grade"].to_numpy())
    debt_to_income = frame["debt_to_income"].fillna(20).to_numpy()
    utilisation = frame["revolving_utilisation"].to_numpy()
    age = frame["age"].to_numpy()
    signal = (
        0.5 * (debt_to_income > 30)
        + 0.45 * ((utilisation > 80) & (grade_index >= 3))
        - 0.35 * ((age > 35) & (age < 55))
        + 0.3 * (frame["employment_years"].fillna(0).to_numpy() < 1)
        + 0.25 * frame["state"].isin(["S03", "S07", "S11", "S19"]).to_numpy()
        + 0.2 * np.sin(frame["loan_amount"].to_numpy() / 3000)
        + 0.15 * (frame["purpose"] == "small_business").to_numpy()
    )
    logit = -1.5 + 2.6 * signal + rng.normal(0, 1.0, n_rows)
    frame[TARGET] = (rng.random(n_rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return frame


def rare_default_loans(n_rows: int, seed: int = 0) -> pd.DataFrame:
    """:func:`synthetic_loans`' columns with a rarer default (about 4 % positive, as in prime books):
    the same kind of signal, a lower base rate, and a stronger pull of the few strong risk marks."""
    frame = synthetic_loans(n_rows, seed)
    rng = np.random.default_rng(seed + 2)
    grade_index = np.searchsorted(GRADES, frame["grade"].to_numpy())
    debt_to_income = frame["debt_to_income"].fillna(20).to_numpy()
    ratio = frame["loan_amount"].to_numpy() / frame["annual_income"].fillna(60_000).to_numpy()
    logit = (
        -5.5
        + 0.38 * grade_index
        + 0.04 * (debt_to_income - 18)
        + 2.2 * np.minimum(ratio, 1.5)
        + 0.6 * frame["delinquencies_2y"].to_numpy()
        + 0.5 * (frame["term_months"].to_numpy() == 60)
        + 0.4 * frame["purpose"].isin(["small_business", "medical"]).to_numpy()
        + rng.normal(0, 0.6, n_rows)
    )
    frame[TARGET] = (rng.random(n_rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return frame


WIDE_TARGET = "loan status"
WIDE_POSITIVE = "bad"


def wide_loans(n_rows: int, seed: int = 0, features: int = 60, positive_share: float = 0.02) -> pd.DataFrame:
    """A wide table unlike the others: ``features`` anonymised normal scores (bureau attributes, say),
    a heavy-tailed balance, a constant, a flag and a text column with gaps; column names with spaces
    and ``%``; a rare default (``positive_share``) labelled "bad"/"good". The signal has a threshold
    and an interaction that a linear model misses, spread thinly over a dozen columns."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_rows, features))
    balance = rng.lognormal(8.0, 1.6, n_rows)
    guarantor = rng.random(n_rows) < 0.15
    region = rng.choice(["north", "south", "east", "west", "islands"], n_rows, p=[0.3, 0.3, 0.2, 0.15, 0.05])
    signal = (
        0.55 * scores[:, 0]
        + 0.4 * scores[:, 1]
        - 0.35 * scores[:, 2]
        + 0.8 * (scores[:, 3] > 1.2)
        + 0.5 * scores[:, 4] * scores[:, 5]
        + 0.4 * np.tanh(2 * scores[:, 6])
        + scores[:, 7:15] @ np.linspace(0.25, 0.05, 8)
        + 0.25 * np.log1p(balance / 10_000)
        - 0.5 * guarantor
        + 0.3 * (region == "islands")
        + rng.normal(0, 0.7, n_rows)
    )
    # The intercept that gives the wanted share of defaults on average (bisection: the mean is monotone).
    low, high = -20.0, 20.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (
            (middle, high)
            if np.mean(1 / (1 + np.exp(-(middle + signal)))) < positive_share
            else (low, middle)
        )
    default = rng.random(n_rows) < 1 / (1 + np.exp(-(low + signal)))
    frame = pd.DataFrame(np.round(scores, 4), columns=[f"bureau score {i:02d}" for i in range(features)])
    frame["balance %"] = np.round(balance / balance.max() * 100, 3)
    frame["constant"] = 1
    frame["has guarantor"] = guarantor
    frame["region"] = region
    frame.loc[rng.random(n_rows) < 0.08, "region"] = None
    frame[WIDE_TARGET] = np.where(default, WIDE_POSITIVE, "good")
    return frame


def bench_config(args, table: Path) -> PipelineConfig:
    """``params.yaml`` (and the profile) with the dataset pointed at ``table`` and the budget set."""
    raw = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    overrides: dict = {
        "dataset": {
            "name": f"synthetic_loans_{table.stem}",
            "path": str(table),
            "target": TARGET,
            "positive_label": 1,
            "drop": [ID_COLUMN],
            "valid_ranges": {},
        },
    }
    if args.use:
        overrides["research"] = {"use": args.use.split(",")}
    if args.profile:
        profile = (raw.get("profiles") or {}).get(args.profile)
        if profile is None:
            raise SystemExit(f"profile {args.profile!r} is not in {args.config}")
        raw = deep_merge(raw, profile)
    raw.pop("profiles", None)
    raw = deep_merge(raw, overrides)
    raw["budget_seconds"] = args.budget
    for key in ("categorical", "numeric"):
        raw["dataset"].pop(key, None)  # inferred from the generated table's types
    return config_from_mapping(raw, root=ROOT, source=Path(args.config).resolve())


class TreeMemory:
    """Samples the resident size of this process and all its descendants; keeps the largest sum."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        shown = 0
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a worker that just ended
                    total += process.memory_info().rss
            if total > shown + 512 * 2**20:  # as it happens, for a run stopped before its end
                print(f"peak memory {total / 2**20:,.0f} MiB", file=sys.stderr, flush=True)
                shown = total
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_size(args, n_rows: int) -> dict:
    """Generate, then run stages 1 and 2 on ``n_rows`` rows; the figures as a mapping."""
    from pipeline.stages import optimize, research

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
        started = time.perf_counter()
        table = Path(folder) / f"{n_rows}.parquet"
        synthetic_loans(n_rows, seed=args.seed).to_parquet(table, index=False)
        generated = time.perf_counter() - started
        config = bench_config(args, table)
        figures: dict = {
            "rows": n_rows,
            "budget_seconds": args.budget,
            "candidates": list(config.research.portfolio),
            "generate_seconds": round(generated, 1),
            "table_mib": round(table.stat().st_size / 2**20, 1),
        }
        environment = {
            TRACKING_URI_ENV: f"sqlite:///{folder}/mlflow.db",
            ARTIFACT_ROOT_ENV: f"{folder}/artifacts",
        }
        with temporary_environment(**environment), TreeMemory() as memory:
            started = time.perf_counter()
            found = research.run(config)
            figures["research_seconds"] = round(time.perf_counter() - started, 1)
            figures["ranked_families"] = found.ranked_families
            notes = found.leaderboard.set_index("candidate")["note"]
            figures["notes"] = {name: note for name, note in notes.items() if isinstance(note, str) and note}
            # On stderr as it happens: a long run that is stopped still leaves its first figures.
            print(
                f"rows {n_rows:,}: research {figures['research_seconds']} s, "
                f"peak memory so far {memory.peak / 2**20:,.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
            started = time.perf_counter()
            tuned = optimize.run(config, research_run_id=found.run_id)
            figures["optimize_seconds"] = round(time.perf_counter() - started, 1)
        figures["total_seconds"] = round(figures["research_seconds"] + figures["optimize_seconds"], 1)
        figures["winner"] = tuned.best_family
        figures["test_roc_auc"] = round(tuned.test_metrics["test_roc_auc"], 4)
        figures["trials"] = {f.family: f"{f.trials_done} ({f.stopped_by})" for f in tuned.families}
        figures["peak_tree_mib"] = round(memory.peak / 2**20)
    # ru_maxrss is in KiB on Linux; the children figure is the largest single worker, not a sum.
    figures["maxrss_self_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    figures["maxrss_worker_mib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    return figures


def report(figures: dict) -> str:
    ratio = figures["total_seconds"] / figures["budget_seconds"]
    within = figures["total_seconds"] <= figures["budget_seconds"] + max(0.1 * figures["budget_seconds"], 15)
    ranked = ", ".join(figures["ranked_families"])
    return "\n".join(
        [
            f"rows {figures['rows']:,} (parquet {figures['table_mib']} MiB, generated in "
            f"{figures['generate_seconds']} s); candidates: {', '.join(figures['candidates'])}",
            f"  budget_seconds {figures['budget_seconds']:g} s (stages 1 and 2)",
            f"  research {figures['research_seconds']:8.1f} s   (ranked: {ranked})",
            *(f"    {name}: {note}" for name, note in figures.get("notes", {}).items()),
            f"  optimize {figures['optimize_seconds']:8.1f} s   (trials: {figures['trials']})",
            f"  total    {figures['total_seconds']:8.1f} s   = {ratio:.2f} x budget "
            f"({'within' if within else 'OVER'} the rule: 10 % or 15 s)",
            f"  winner {figures['winner']}, test ROC AUC {figures['test_roc_auc']}",
            f"  peak memory: process tree {figures['peak_tree_mib']:,} MiB (target < 4,096); "
            f"maxrss self {figures['maxrss_self_mib']:,} MiB, "
            f"largest ended worker {figures['maxrss_worker_mib']:,} MiB",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated table sizes")
    parser.add_argument("--budget", type=float, default=300.0, help="wall seconds for stages 1 and 2")
    parser.add_argument("--config", default=str(ROOT / "params.yaml"))
    parser.add_argument("--profile", default=None)
    parser.add_argument("--use", default=None, help="comma-separated candidates (research.use)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated table")
    parser.add_argument("--json", action="store_true", help="one size in this process, figures as JSON")
    args = parser.parse_args()
    sizes = [int(size.replace("_", "")) for size in args.rows.split(",")]

    if args.json:  # a child: one size, in this process
        warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")  # schema and source hints
        logging.basicConfig(
            level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
        print(json.dumps(run_size(args, sizes[0])))
        return

    print(f"cores: {os.cpu_count()}, memory: {psutil.virtual_memory().total / 2**30:.1f} GiB")
    for size in sizes:
        command = [sys.executable, __file__, *sys.argv[1:], "--rows", str(size), "--json"]
        quiet = {**os.environ, "TQDM_DISABLE": "1"}  # no progress bars between the figures
        completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False, env=quiet)
        if completed.returncode != 0:
            print(f"rows {size:,}: failed (exit {completed.returncode}; its log is above)")
            continue
        print(report(json.loads(completed.stdout.strip().splitlines()[-1])), flush=True)


if __name__ == "__main__":
    main()
