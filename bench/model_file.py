"""Benchmark (not a test): writing the logged model's skops file, skops' own writer beside ours.

Fits a soft vote of a random forest and extra trees (``--trees`` each) on the configured data, then
writes it ``--rounds`` times with ``skops.io.dump`` and with
:func:`pipeline.tracking.model_io.write_estimator` (schema without indentation), alternating, and
reads each file back once. Prints the median seconds, the file sizes and the ratios.

    .venv/bin/python bench/model_file.py [--trees 300] [--rounds 5] [--config params.yaml]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import skops.io

from pipeline.config import load_config
from pipeline.data import load_dataset
from pipeline.models import TRUSTED_TYPES, build_ensemble, build_estimator
from pipeline.tracking.model_io import write_estimator

ROOT = Path(__file__).resolve().parents[1]


def seconds_to_write(writer, model, path: Path) -> float:
    started = time.perf_counter()
    writer(model, path)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=300, help="trees in each forest")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--config", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    config = load_config(args.config)
    dataset = load_dataset(config)
    members = [
        (
            family,
            build_estimator(family, {"n_estimators": args.trees}, dataset.categorical, dataset.numeric, 0),
        )
        for family in ("random_forest", "extra_trees")
    ]
    model = build_ensemble(members).fit(dataset.features, dataset.target)
    writers = {"skops.io.dump": skops.io.dump, "write_estimator": write_estimator}
    with tempfile.TemporaryDirectory(prefix="bench-model-file-") as folder:
        paths = {name: Path(folder) / f"{i}.skops" for i, name in enumerate(writers)}
        times: dict[str, list[float]] = {name: [] for name in writers}
        for _ in range(args.rounds):
            for name, writer in writers.items():
                times[name].append(seconds_to_write(writer, model, paths[name]))
        expected = model.predict_proba(dataset.features)
        for name, path in paths.items():
            loaded = skops.io.load(path, trusted=list(TRUSTED_TYPES))
            assert np.array_equal(loaded.predict_proba(dataset.features), expected), name
            print(
                f"{name:16s} median {statistics.median(times[name]):.2f} s over {args.rounds} writes, "
                f"{path.stat().st_size / 2**20:.1f} MiB"
            )
        medians = {name: statistics.median(seconds) for name, seconds in times.items()}
        ours, theirs = paths["write_estimator"], paths["skops.io.dump"]
        time_ratio = medians["write_estimator"] / medians["skops.io.dump"]
        size_ratio = ours.stat().st_size / theirs.stat().st_size
        print(f"write_estimator / skops.io.dump: time x{time_ratio:.2f}, size x{size_ratio:.2f}")


if __name__ == "__main__":
    main()
