"""The optimization stage killed mid-study (SIGTERM and SIGKILL) resumes its Optuna study on rerun
without losing or repeating finished trials, and leaves no trial RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from pipeline import trials, tuning
from pipeline.stages import research
from pipeline.tracking import keys
from tests.conftest import PROJECT_ROOT, make_config, small_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_TRIALS = 6  # more than can finish between the poll and the signal (a trial takes about a second)


def _params() -> dict:
    raw = small_params()
    raw["dataset"]["path"] = str(PROJECT_ROOT / raw["dataset"]["path"])
    raw["research"]["use"] = ["dummy_prior", "logistic_regression"]
    raw["budget_seconds"] = 600  # the trial cap, not time, must be what is left when the signal comes
    raw["optimize"].update({"top_k": 1, "n_trials": N_TRIALS, "pruning": False})
    return raw


def _finished(storage_url: str) -> int:
    try:
        summaries = optuna.get_all_study_summaries(storage_url)
    except Exception:  # the storage is not created yet
        return 0
    storage = optuna.storages.RDBStorage(storage_url)
    return sum(len(storage.get_all_trials(s._study_id, states=tuning.DONE_STATES)) for s in summaries)


def _trials(storage_url: str, state: TrialState) -> list:
    storage = optuna.storages.RDBStorage(storage_url)
    return [
        t
        for s in optuna.get_all_study_summaries(storage_url)
        for t in storage.get_all_trials(s._study_id, states=(state,))
    ]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_study_resumes_without_lost_or_repeated_trials(signum, sqlite_store, tmp_path):
    raw = _params()
    config_path = tmp_path / "params.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    config = make_config(raw, root=tmp_path)
    research.run(config)

    storage_url = tuning.storage_location(sqlite_store, tmp_path).url
    command = [sys.executable, "-m", "pipeline", "optimize", "--quiet", "--config", str(config_path)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    # Output to files, not pipes: after SIGKILL, orphaned joblib workers would hold pipes open.
    out, err = (tmp_path / "stdout.txt").open("w"), (tmp_path / "stderr.txt").open("w")
    process = subprocess.Popen(command, env=env, stdout=out, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while _finished(storage_url) < 2:
            assert process.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.2)
        if signum == signal.SIGKILL:
            os.killpg(process.pid, signal.SIGKILL)  # as a cancelled job or the OOM killer would
        else:
            process.send_signal(signum)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        out.close()
        err.close()
    stderr = (tmp_path / "stderr.txt").read_text()
    expected_code = 143 if signum == signal.SIGTERM else -signal.SIGKILL
    assert process.returncode == expected_code, stderr
    interrupted = _finished(storage_url)
    assert 2 <= interrupted < N_TRIALS
    # SIGKILL leaves the trial it cut short RUNNING; SIGTERM's is failed by Optuna as it unwinds.
    left_running = _trials(storage_url, TrialState.RUNNING)
    assert signum == signal.SIGKILL or left_running == []

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr

    (summary,) = optuna.get_all_study_summaries(storage_url)
    study = optuna.load_study(study_name=summary.study_name, storage=storage_url)
    done = [t.number for t in study.get_trials(states=tuning.DONE_STATES)]
    assert len(done) == N_TRIALS  # the cap counts the trials finished before the kill
    assert len(set(done)) == len(done)
    # The rerun came well within the heartbeat grace period, yet closed the killed process's trial.
    assert _trials(storage_url, TrialState.RUNNING) == []
    reasons = {t.number: t.user_attrs.get(trials.FAILURE_ATTR) for t in _trials(storage_url, TrialState.FAIL)}
    for trial in left_running:
        assert reasons[trial.number].startswith(f"stale: process {process.pid} on ")

    client = MlflowClient(sqlite_store)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    trial_runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{keys.TAG_OPTUNA_STUDY}` = '{summary.study_name}'",
    )
    logged = Counter(int(r.data.tags[keys.TAG_OPTUNA_TRIAL]) for r in trial_runs if r.info.status != "FAILED")
    assert sorted(logged) == sorted(done)  # every finished trial logged, none lost ...
    assert set(logged.values()) == {1}  # ... and none twice
    # At most the record the signal cut short is left, ended FAILED; its trial was recorded again.
    assert sum(r.info.status == "FAILED" for r in trial_runs) <= 1

    stages = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`pipeline.stage` = 'optimize' and tags.`pipeline.role` = 'stage'",
    )
    statuses = sorted(run.info.status for run in stages)
    # The killed run ends KILLED (SIGTERM) or is swept FAILED as stale on the rerun (SIGKILL).
    assert statuses == sorted(["FINISHED", "KILLED" if signum == signal.SIGTERM else "FAILED"])
