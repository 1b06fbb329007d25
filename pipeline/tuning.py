"""Optuna search: search spaces from config, the CV objective, study storage and naming.

No MLflow here: the stage passes a callback that records each finished trial.

Storage: the study lives in the tracking store's database, beside MLflow's tables but never
mixed with them. Both libraries version their schema with alembic in a table called
``alembic_version``, so sharing one namespace breaks Optuna (it reads MLflow's revision and
refuses to start). On PostgreSQL, Optuna gets its own schema (``optuna``) in the same
database; on SQLite, which has no schemas, a sibling file (``mlflow.db`` -> ``mlflow-optuna.db``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from pipeline import termination, trials
from pipeline.config import CostConfig, PipelineConfig, SearchParam
from pipeline.errors import ConfigError
from pipeline.models import build_estimator, validate_params
from pipeline.settings import OPTUNA_URL_ENV, optuna_url, redact_uri
from pipeline.tracking import store
from pipeline.training import CVResult, cross_validate

logger = logging.getLogger(__name__)

OPTUNA_SCHEMA = "optuna"
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
# Trial user attribute holding the CV summary (cv_<metric>_mean/_std, cv_threshold, seconds).
METRICS_ATTR = "metrics"
# Trial user attribute set when the time budget stopped the trial ("time").
STOPPED_ATTR = "stopped_by"


@dataclass(frozen=True)
class StorageLocation:
    url: str
    engine_kwargs: dict[str, Any]
    schema: str | None = None
    # Whether workers on other machines reach the same studies (a database server, not a file).
    shared: bool = False

    @property
    def safe_url(self) -> str:
        return redact_uri(self.url)


# --- Search spaces ---------------------------------------------------------------------------------


def validate_spaces(
    spaces: Mapping[str, Mapping[str, SearchParam]],
    families: Sequence[str],
    known: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> None:
    """Every family to tune has a space, and every space and known configuration names parameters
    its estimator takes."""
    missing = [f for f in families if not spaces.get(f)]
    if missing:
        raise ConfigError(f"optimize.search_spaces: no search space for {', '.join(missing)}")
    for family, space in spaces.items():
        validate_params(family, dict(space), f"optimize.search_spaces.{family}")
    for family, configurations in (known or {}).items():
        for position, configuration in enumerate(configurations):
            validate_params(family, configuration, f"optimize.known_configurations.{family}[{position}]")


def suggest(trial: optuna.Trial, space: Mapping[str, SearchParam]) -> dict[str, Any]:
    """Sample one set of parameters from a declared space."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if spec.type == "categorical":
            params[name] = trial.suggest_categorical(name, spec.choices)
        elif spec.type == "int":
            params[name] = trial.suggest_int(
                name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log
            )
        else:
            params[name] = trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
    return params


def space_digest(space: Mapping[str, SearchParam], **settings: Any) -> str:
    """Short hash of a search space and the settings that make its trials comparable."""
    payload = {
        "space": {name: spec.model_dump() for name, spec in sorted(space.items())},
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]


def study_name(
    dataset_digest: str,
    family: str,
    space: Mapping[str, SearchParam],
    cv_folds: int,
    seed: int,
    costs: CostConfig,
    sample_rows: int | None = None,
) -> str:
    """Same data, space, folds, seed and costs -> same study, so a rerun resumes it.

    Budgets (trial cap, timeout) are left out on purpose: raising them continues the study. A family
    tuned on a sample of the training part (``sample_rows``) has a study of its own per sample size,
    as its trials' figures are not comparable with those on other rows.
    """
    extra = {"sample_rows": sample_rows} if sample_rows is not None else {}
    digest = space_digest(space, cv_folds=cv_folds, seed=seed, costs=costs.model_dump(), **extra)
    return f"optimize-{dataset_digest}-{family}-{digest}"


# --- Storage ---------------------------------------------------------------------------------------


def storage_location(tracking_uri: str, root: Path) -> StorageLocation:
    """Where the Optuna studies live, derived from the tracking store (or PIPELINE_OPTUNA_URL)."""
    url = optuna_url() or tracking_uri
    if store.is_postgres(url):
        # One connection for trials and one for the heartbeat thread, per process.
        options = store.engine_options(
            url, connect_args={"options": f"-csearch_path={OPTUNA_SCHEMA}"}, pool_size=1, max_overflow=1
        )
        return StorageLocation(
            url=store.sqlalchemy_url(url), engine_kwargs=options, schema=OPTUNA_SCHEMA, shared=True
        )
    database = store.sqlite_file(url)
    if database is not None:
        if url == tracking_uri:
            sibling = database.with_name(f"{database.stem}-optuna{database.suffix or '.db'}")
            url = f"sqlite:///{sibling}"
        return StorageLocation(url=url, engine_kwargs={})
    if store.is_database(url) and store.scheme(url) != "sqlite":
        raise ConfigError(
            f"cannot share a {store.scheme(url)} tracking database with Optuna safely; set {OPTUNA_URL_ENV}"
        )
    # A tracking server (http) or file store: keep studies in a local SQLite file.
    return StorageLocation(url=f"sqlite:///{(root / 'optuna.db').resolve()}", engine_kwargs={})


def _create_schema(location: StorageLocation) -> None:
    import sqlalchemy
    from sqlalchemy.schema import CreateSchema

    creator = store.engine(location.url)
    try:
        with creator.begin() as connection:
            connection.execute(CreateSchema(location.schema, if_not_exists=True))
    except sqlalchemy.exc.IntegrityError:
        pass  # another worker created it at the same moment
    finally:
        creator.dispose()


def open_storage(tracking_uri: str, root: Path) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage beside the tracking store; creates its schema or file on first use."""
    location = storage_location(tracking_uri, root)
    if location.shared or not store.is_server(tracking_uri):
        logger.info("optuna studies in %s", location.safe_url)
    else:
        logger.warning(
            "optuna studies in %s, on this machine only: workers elsewhere do not share them "
            "(set %s to a PostgreSQL URL to share them)",
            location.safe_url,
            OPTUNA_URL_ENV,
        )
    # Workers starting together would race to create Optuna's tables: one at a time.
    with store.cross_process_lock(location.url, "optuna-storage-setup"), warnings.catch_warnings():
        if location.schema:
            _create_schema(location)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            location.url,
            engine_kwargs=location.engine_kwargs,
            # A worker that dies mid-trial stops beating; another worker (or a rerun) marks it failed.
            heartbeat_interval=trials.HEARTBEAT_SECONDS,
            grace_period=trials.GRACE_SECONDS,
        )


def open_study(
    storage: optuna.storages.BaseStorage, name: str, seed: int, pruning: bool = True
) -> optuna.Study:
    """Create the study or load it to resume; seeded TPE, median pruning on fold reports."""
    # Optuna's records join ours (one format) instead of its own handler's line per trial, which the
    # progress bar says. Its warnings repeat what the stage reports itself (a trial's error, a lost
    # database, in several lines), so only its errors show unless debugging.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(logging.INFO if logger.isEnabledFor(logging.DEBUG) else logging.ERROR)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
        if pruning
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruner,
        load_if_exists=True,
    )
    trials.fail_stale_trials(study)
    return study


def done_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=DONE_STATES)


def remaining_trials(study: optuna.Study, n_trials: int) -> int:
    """Trials still to run for the cap ``n_trials`` (finished and pruned ones count)."""
    return max(0, n_trials - len(done_trials(study)))


# --- Objective -------------------------------------------------------------------------------------


def make_objective(
    family: str,
    space: Mapping[str, SearchParam],
    features: pd.DataFrame,
    target: pd.Series,
    splits: list[tuple[np.ndarray, np.ndarray]],
    categorical: list[str],
    numeric: list[str],
    costs: CostConfig,
    seed: int,
    n_jobs: int = 1,
    pruning: bool = True,
    deadline: float | None = None,
    fold_seconds: float = 0.0,
    keep: BestCV | None = None,
) -> Callable[[optuna.Trial], float]:
    """Mean CV ROC AUC of one sampled configuration, reported fold by fold for pruning.

    ``features`` must be the training part only: the objective never sees the test part.
    With a ``deadline`` (``time.monotonic()``), a trial whose next fold (predicted from its own
    folds, or ``fold_seconds`` before the first) would end past it is stopped (pruned) and the study
    stopped: Optuna's timeout is only checked between trials. A study's first complete trial is never
    stopped, so every tuned family has one model. ``keep`` holds the best trial's CV result.
    """
    complete = {"seen": False}

    def time_is_up(study: optuna.Study, next_fold: float) -> bool:
        if deadline is None or time.monotonic() + next_fold <= deadline:
            return False
        if not complete["seen"]:
            complete["seen"] = bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        return complete["seen"]

    def stop(trial: optuna.Trial, folds_done: int) -> None:
        trial.set_user_attr(STOPPED_ATTR, "time")
        trial.study.stop()
        raise optuna.TrialPruned(f"stopped by the time budget after {folds_done} folds")

    # The cores go to the model when folds run one by one (pruning and the deadline look after each),
    # to the folds when they run at once: never both, which would ask for n_jobs x n_jobs threads.
    one_by_one = pruning or deadline is not None
    model_jobs, fold_jobs = (n_jobs, 1) if one_by_one else (1, n_jobs)

    def objective(trial: optuna.Trial) -> float:
        if time_is_up(trial.study, fold_seconds):
            stop(trial, 0)
        params = suggest(trial, space)
        estimator = build_estimator(
            family, params, categorical, numeric, seed, n_jobs=model_jobs, n_rows=len(target)
        )
        started = time.monotonic()

        def on_fold(fold: int, mean_auc: float) -> None:
            trial.report(mean_auc, fold)
            trial.set_user_attr("folds_done", fold + 1)
            if pruning and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {fold + 1}: mean ROC AUC {mean_auc:.4f}")
            per_fold = (time.monotonic() - started) / (fold + 1)
            if fold + 1 < len(splits) and time_is_up(trial.study, per_fold):
                stop(trial, fold + 1)

        result = cross_validate(
            estimator,
            features,
            target,
            splits,
            costs,
            n_jobs=fold_jobs,
            on_fold=on_fold if one_by_one else None,
        )
        summary = result.summary()
        trial.set_user_attr(METRICS_ATTR, summary)
        if keep is not None:
            keep.offer(trial.number, result)
        return summary["cv_roc_auc_mean"]

    return objective


class BestCV:
    """The best trial's CV result in this process (out-of-fold scores included), so the final step
    reuses it instead of cross-validating the winner again. Same order as :func:`best_trial`."""

    def __init__(self) -> None:
        self.number: int | None = None
        self.result: CVResult | None = None
        self._key: tuple | None = None

    def offer(self, number: int, result: CVResult) -> None:
        key = (rank_key(with_short_names(result.summary())), number)
        if self._key is None or key < self._key:
            self.number, self.result, self._key = number, result, key

    def result_of(self, trial: FrozenTrial | None) -> CVResult | None:
        return self.result if trial is not None and trial.number == self.number else None


class FirstTrials(NamedTuple):
    """What a new study of a family starts from."""

    reference: dict[str, Any]  # the research candidate's configuration stage 1 timed ({} without one)
    queued: list[dict[str, Any]]  # every research candidate's of the family, then the known ones


def first_configurations(config: PipelineConfig, family: str) -> FirstTrials:
    """The configurations a family's new study queues first, so even a couple of trials are good
    ones, and the one among them stage 1 timed."""
    research = config.research
    timed = [c.params for c in research.portfolio.values() if c.family == family]
    candidates = [dict(c.params) for c in research.candidates.values() if c.family == family]
    known = [dict(c) for c in config.optimize.known_configurations.get(family, [])]
    return FirstTrials(dict((timed or candidates or [{}])[0]), candidates + known)


def enqueue_known(study: optuna.Study, configurations: Sequence[Mapping[str, Any]], space) -> int:
    """Queue known good configurations as a new study's first trials; returns how many.

    Only a study without trials gets them (a resumed one has its history). Values outside the
    space are left to the sampler.
    """
    if study.get_trials(deepcopy=False):
        return 0
    queued = 0
    for configuration in configurations:
        params = {k: v for k, v in configuration.items() if k in space and _inside(space[k], v)}
        if params:
            study.enqueue_trial(params, skip_if_exists=True)
            queued += 1
    return queued


def requeue_stopped_by_time(study: optuna.Study) -> int:
    """Queue again each configuration the time budget cut short, unless it completed or waits already;
    returns how many. A family given more time then finishes what its deadline interrupted: most
    often a known configuration, as the dearest of the first trials is the one the clock stops."""
    trials = study.get_trials(deepcopy=False)
    settled = {_params_key(t) for t in trials if t.state in (TrialState.COMPLETE, TrialState.WAITING)}
    queued = 0
    for trial in trials:
        key = _params_key(trial)
        stopped = trial.state == TrialState.PRUNED and trial.user_attrs.get(STOPPED_ATTR) == "time"
        if stopped and key and key not in settled:
            study.enqueue_trial(dict(key))
            settled.add(key)
            queued += 1
    return queued


def _params_key(trial: FrozenTrial) -> tuple:
    """A trial's configuration, also when it stopped before asking for it (an enqueued one's is fixed)."""
    params = trial.params or trial.system_attrs.get("fixed_params") or {}
    return tuple(sorted(params.items()))


def _inside(spec: SearchParam, value: Any) -> bool:
    if spec.type == "categorical":
        return value in spec.choices
    return isinstance(value, (int, float)) and not isinstance(value, bool) and spec.low <= value <= spec.high


def tune(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    n_trials: int,
    timeout_seconds: float | None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
) -> int:
    """Run the trials still missing for the cap ``n_trials``; returns how many this call ran.

    Several processes may call this on one study at once: the shared cap stops them all
    once ``n_trials`` trials are finished in the storage.
    """
    remaining = remaining_trials(study, n_trials)
    if remaining == 0:
        return 0
    ran = 0

    def count(_study: optuna.Study, _trial: FrozenTrial) -> None:
        nonlocal ran
        ran += 1

    with trials.no_trial_left_running(study):
        study.optimize(
            trials.owned(objective),
            n_trials=remaining,
            timeout=timeout_seconds,
            callbacks=[
                optuna.study.MaxTrialsCallback(n_trials, states=DONE_STATES),
                count,
                *callbacks,
            ],
            gc_after_trial=False,
            show_progress_bar=False,
        )
        termination.raise_if_received()  # deferred while the last trial closed
    return ran


def with_short_names(summary: Mapping[str, float]) -> dict[str, float]:
    """A CV summary plus the short names the contract ranks by (``cv_roc_auc``, ``cv_expected_cost``)."""
    return {
        **summary,
        "cv_roc_auc": summary["cv_roc_auc_mean"],
        "cv_expected_cost": summary["cv_expected_cost_mean"],
    }


def trial_metrics(trial: FrozenTrial) -> dict[str, float]:
    """The CV summary of a finished trial, with the short names the contract uses."""
    metrics = dict(trial.user_attrs.get(METRICS_ATTR) or {})
    if "cv_roc_auc_mean" in metrics:
        metrics = with_short_names(metrics)
    elif trial.intermediate_values:
        metrics["cv_roc_auc_partial"] = trial.intermediate_values[max(trial.intermediate_values)]
    return {k: float(v) for k, v in metrics.items()}


def rank_key(metrics: Mapping[str, float]) -> tuple[float, float]:
    """Sort key, smallest best: highest CV ROC AUC, then lowest expected cost."""
    return (-metrics["cv_roc_auc"], metrics["cv_expected_cost"])


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The completed trial with the best CV ROC AUC (ties: lower expected cost)."""
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if METRICS_ATTR in t.user_attrs
    ]
    if not complete:
        return None
    return min(complete, key=lambda t: (rank_key(trial_metrics(t)), t.number))
