"""bench/quality.py: the suite's parts (data specs, the budget split, the summary) and FLAML's threshold."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from pipeline.config import DatasetConfig
from pipeline.data import prepare
from tests.conftest import PROJECT_ROOT, german_like, make_config, small_params

spec = importlib.util.spec_from_file_location("bench_quality", PROJECT_ROOT / "bench" / "quality.py")
quality = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = quality  # its dataclasses look their module up
spec.loader.exec_module(quality)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("loans.csv:status", ("loans.csv", "status", None)),
        ("loans.csv:status:bad", ("loans.csv", "status", "bad")),
        ("/d/loans.csv:defaulted:1", ("/d/loans.csv", "defaulted", 1)),
    ],
)
def test_data_specs(text, expected):
    path, target, label = quality.parse_data(text)
    assert (str(path), target, label) == expected


def test_a_data_spec_without_target_is_refused():
    with pytest.raises(SystemExit, match=r"path\.csv:target"):
        quality.parse_data("loans.csv")


def test_another_table_keeps_every_setting_but_the_dataset(tmp_path):
    config = make_config(small_params())
    other = quality.with_data(config, tmp_path / "loans.csv", "status", "bad")
    assert other.dataset.path == (tmp_path / "loans.csv").resolve() and other.dataset.name == "loans"
    assert (other.dataset.target, other.dataset.positive_label) == ("status", "bad")
    assert other.optimize == config.optimize and other.research == config.research


def test_generated_tables_load_as_loan_tables_without_the_id(tmp_path):
    from pipeline.data import load_dataset

    config = make_config(small_params())
    specs = quality.synthetic_tables(2000, tmp_path)
    assert [quality.parse_data(s)[0].name for s in specs] == [
        "synthetic_loans_2000.csv",
        "weak_signal_loans_2000.csv",
        "rare_default_loans_2000.csv",
        "wide_loans_2000.csv",
    ]
    linear, weak, rare, wide = (
        load_dataset(quality.with_data(config, *quality.parse_data(s))) for s in specs
    )
    for dataset in (linear, weak, rare):
        assert dataset.n_rows == 2000 and "application_id" not in dataset.features.columns
        assert "employer" in dataset.categorical
    assert 0.1 < linear.target.mean() < 0.4 and 0.1 < weak.target.mean() < 0.4
    assert 0.02 < rare.target.mean() < 0.08
    # The same columns, other signals.
    assert linear.features.equals(weak.features) and linear.features.equals(rare.features)
    assert not linear.target.equals(weak.target) and not linear.target.equals(rare.target)
    # The wide table: other columns, "bad" as the positive label, about 2 % of it.
    assert wide.n_rows == 2000 and len(wide.numeric) >= 60 and "region" in wide.categorical
    assert 0.01 < wide.target.mean() < 0.035 and set(wide.target.unique()) == {0, 1}


def test_tuning_shares_what_is_left_after_the_reserve():
    reserve = quality.FINAL_RESERVE_SECONDS
    assert quality.tuning_seconds(120, elapsed=15, families_left=3) == pytest.approx((105 - reserve) / 3)
    assert quality.tuning_seconds(60, elapsed=70, families_left=2) == 1.0  # stage 1 ate B: the floor


def test_suite_summary_gives_means_and_ratios_per_dataset_and_budget():
    outcome = quality.Outcome
    outcomes = [
        outcome(method, f"seed {seed}", auc, cost, seconds, "", "loans", 60.0)
        for seed in (1, 2)
        for method, auc, cost, seconds in [
            ("logistic regression", 0.70, 0.60, 1.0),
            (quality.OURS, 0.80 + seed / 100, 0.50, 54.0 + 12 * seed),
            ("FLAML", 0.75, 0.55, 60.0),
        ]
    ]
    text = quality.summarise_suite(outcomes)
    last = text.splitlines()[-1].split()
    # data, B, splits, ours AUC, ours cost, ours wall/B, max, LR AUC, FLAML AUC, cost, wall/B, ratios
    assert last[:3] == ["loans", "60.0000", "2"]
    assert [float(v) for v in last[3:]] == pytest.approx(
        [0.815, 0.5, 1.2, 1.3, 0.7, 0.75, 0.55, 1.0, 0.815 / 0.75, 0.5 / 0.55], abs=1e-4
    )


@pytest.mark.slow
def test_flaml_is_scored_at_its_own_out_of_fold_threshold(monkeypatch):
    pytest.importorskip("flaml")
    calls = []
    original = quality.best_threshold

    def spy(y_true, scores, costs):
        calls.append((len(y_true), bool(np.isnan(scores).any())))
        return original(y_true, scores, costs)

    monkeypatch.setattr(quality, "best_threshold", spy)
    config = make_config(small_params())
    dataset = prepare(german_like(400), DatasetConfig(path="x.csv", target="default"))
    train, test = np.arange(300), np.arange(300, 400)
    scores, threshold, estimator = quality.flaml_scores(config, dataset, train, test, budget=3)
    assert calls == [(300, False)]  # every training row scored out of fold, once
    assert len(scores) == 100 and 0 <= threshold <= 1 and estimator
