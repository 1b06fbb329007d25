"""Reason codes benchmark: what explaining a batch costs next to scoring it, per method and model.

Fits a few families on the default data's training part (default parameters), builds each one's
training profile as stage 2 does, then times scoring alone and ``reasons.explain`` on the test part
resampled to ``--rows`` applicants. The scorecard's exact method reads its own table; every other
model is asked once per candidate value of each characteristic (best-value substitution).

    .venv/bin/python bench/reasons.py [--rows 5000] [--families woe_scorecard random_forest lightgbm]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline import reasons, stability
from pipeline.config import load_config
from pipeline.data import load_dataset, split_dataset
from pipeline.models import build_estimator
from pipeline.tracking import keys

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "params.yaml"))
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument(
        "--families", nargs="+", default=["woe_scorecard", "logistic_regression", "random_forest", "lightgbm"]
    )
    args = parser.parse_args()
    config = load_config(args.config)
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    train_x, train_y = dataset.features.iloc[split.train_index], dataset.target.iloc[split.train_index]
    batch = dataset.features.iloc[split.test_index].sample(args.rows, replace=True, random_state=config.seed)
    print(
        f"{len(batch)} applicants, {batch.shape[1]} characteristics, {config.reason_codes.count} reasons each"
    )
    print(f"{'family':<22}{'method':<34}{'score s':>9}{'reasons s':>11}{'applicants/s':>14}")
    for family in args.families:
        model = build_estimator(family, {}, dataset.categorical, dataset.numeric, config.seed, n_jobs=1)
        model.fit(train_x, train_y)
        profile = stability.build_profile(
            train_x, model.predict_proba(train_x)[:, 1], dataset.categorical, dataset.numeric
        )
        metadata = {
            keys.META_TRAINING_PROFILE: profile,
            keys.META_SCORECARD_SCALING: config.scorecard.model_dump(),
        }
        started = time.perf_counter()
        model.predict_proba(batch)
        scored = time.perf_counter() - started
        started = time.perf_counter()
        given = reasons.explain(model, batch, metadata, config.reason_codes.count)
        explained = time.perf_counter() - started
        print(
            f"{family:<22}{given.method:<34}{scored:>9.3f}{explained:>11.2f}{len(batch) / explained:>14.0f}"
        )


if __name__ == "__main__":
    main()
