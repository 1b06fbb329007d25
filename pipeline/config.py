"""Typed configuration: the only reader of ``params.yaml``.

Every stage reads its own section. A profile (``profiles.<name>`` in the file,
chosen with ``--profile`` or ``PIPELINE_PROFILE``) is deep-merged over the base
before validation, so a profile can only set keys the schema knows.
Secrets and the tracking URI never come from this file: see :mod:`pipeline.settings`.
"""

from __future__ import annotations

import os
import posixpath
import unicodedata
import urllib.parse
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError
from pipeline.models import FAMILIES

DEFAULT_CONFIG_PATH = Path("params.yaml")
PROFILE_ENV = "PIPELINE_PROFILE"

Family = Literal[FAMILIES]  # the names defined in pipeline.models


def _check_name(value: str, what: str) -> str:
    """Names end up in MLflow filter strings and file paths: printable, trimmed, quotable."""
    if any(unicodedata.category(char) in {"Cc", "Cf", "Zl", "Zp"} for char in value):
        raise ValueError(f"the {what} name holds control characters")
    if value != value.strip():
        raise ValueError(f"the {what} name has leading or trailing whitespace")
    if "'" in value and '"' in value:
        raise ValueError(f"the {what} name holds both quote characters, which MLflow filters cannot express")
    if value.endswith("\\"):
        raise ValueError(f"the {what} name ends with a backslash, which MLflow filters cannot express")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrackingConfig(_Section):
    experiment: str = Field("loan-default", min_length=1, max_length=256)
    # Where a new experiment stores artifacts; relative paths are under the project root.
    artifact_location: str = "mlartifacts"
    # Bounded back-off for transient connection errors.
    connect_retries: int = Field(3, ge=0, le=20)
    connect_backoff_seconds: float = Field(1.0, ge=0, le=60)
    # RUNNING runs older than this (from another host, or with no owner tags) count as stale.
    stale_after_hours: float = Field(12.0, gt=0, le=24 * 365)
    # Connections per process to a PostgreSQL store (MLflow's pool); concurrent pipelines add up.
    pool_size: int = Field(2, ge=1, le=100)
    max_overflow: int = Field(2, ge=1, le=100)

    @field_validator("experiment")
    @classmethod
    def _experiment_name(cls, value: str) -> str:
        return _check_name(value, "experiment")


class DatasetConfig(_Section):
    name: str = Field("german_credit", min_length=1)
    path: Path | None = None
    # A SQL query run against the SQLAlchemy URL in PIPELINE_DATA_URL.
    query: str | None = None
    target: str = Field(min_length=1)
    positive_label: int | str | bool = 1
    drop: list[str] = []
    categorical: list[str] | None = None
    numeric: list[str] | None = None
    drop_duplicates: bool = False
    # Rules like {"person_age": {"min": 18, "max": 100}}: rows outside are removed.
    valid_ranges: dict[str, dict[Literal["min", "max"], float]] = {}

    @model_validator(mode="after")
    def _one_source(self) -> DatasetConfig:
        if (self.path is None) == (self.query is None):
            raise ValueError("give exactly one of 'path' or 'query'")
        overlap = set(self.categorical or []) & set(self.numeric or [])
        if overlap:
            raise ValueError(f"columns listed as both categorical and numeric: {sorted(overlap)}")
        return self


class SplitConfig(_Section):
    test_size: float = Field(0.25, gt=0.05, lt=0.9)


class CostConfig(_Section):
    """Cost per applicant of each wrong decision; correct decisions cost nothing."""

    false_negative: float = Field(5.0, gt=0, description="accepting an applicant who defaults")
    false_positive: float = Field(1.0, gt=0, description="rejecting an applicant who repays")


class CandidateConfig(_Section):
    family: Family
    params: dict[str, Any] = {}


class ResearchConfig(_Section):
    cv_folds: int = Field(5, ge=2, le=20)
    n_jobs: int = Field(2, ge=1, le=64)
    candidates: dict[str, CandidateConfig] = Field(min_length=1)
    # A subset of candidate names to run (all when absent); profiles use it to trim the portfolio.
    use: list[str] | None = None

    @model_validator(mode="after")
    def _portfolio(self) -> ResearchConfig:
        unknown = [name for name in self.use or [] if name not in self.candidates]
        if unknown:
            raise ValueError(f"'use' names unknown candidates: {', '.join(unknown)}")
        if not any(c.family == "dummy" for c in self.portfolio.values()):
            raise ValueError("the portfolio needs a 'dummy' baseline candidate")
        return self

    @property
    def portfolio(self) -> dict[str, CandidateConfig]:
        """The candidates this run uses, in config order."""
        if self.use is None:
            return dict(self.candidates)
        return {name: c for name, c in self.candidates.items() if name in self.use}


class SearchParam(_Section):
    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _coherent(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical search parameter needs non-empty 'choices'")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical search parameter takes no 'low'/'high'")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"an {self.type} search parameter needs 'low' and 'high'")
        if self.low >= self.high:
            raise ValueError(f"'low' ({self.low}) must be below 'high' ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs 'low' > 0")
        if self.log and self.step is not None:
            raise ValueError("'step' and 'log' cannot be combined")
        if self.step is not None and self.step <= 0:
            raise ValueError("'step' must be positive")
        if self.type == "int" and not all(
            float(v).is_integer() for v in (self.low, self.high, self.step or 1)
        ):
            raise ValueError("an int search parameter needs whole-number bounds and step")
        return self


class OptimizeConfig(_Section):
    top_k: int = Field(3, ge=1, le=9)
    cv_folds: int = Field(5, ge=2, le=20)
    # A cap: the time each family gets is planned from budget_seconds (pipeline.budget).
    n_trials: int = Field(40, ge=1, le=10_000, description="trial cap per family")
    n_jobs: int = Field(2, ge=1, le=64)
    pruning: bool = True
    calibration_methods: list[Literal["sigmoid", "isotonic"]] = ["sigmoid", "isotonic"]
    # A calibration that lowers the out-of-fold ROC AUC by more than this is not used.
    calibration_max_auc_loss: float = Field(0.001, ge=0, le=1)
    permutation_repeats: int = Field(3, ge=1, le=100)
    # Permutation importance and the reason-code counts take this many test rows at most (a seeded
    # sample): they are reporting, and their cost grows with the rows (repeats x features x rows,
    # and about 160 scorings per rejected applicant).
    report_max_rows: int = Field(10_000, ge=100)
    # The final model is the soft vote of the tuned families' best models, unless a smaller vote or
    # one family beats it fold by fold by more than ensemble_min_gain and one standard error.
    ensemble: bool = True
    ensemble_min_gain: float = Field(0.001, ge=0, le=1)
    search_spaces: dict[Family, dict[str, SearchParam]] = {}
    # Queued as a new study's first trials, after the research candidate's own configuration, so that
    # even a family given time for two or three trials tries configurations known to do well.
    known_configurations: dict[Family, list[dict[str, Any]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "timeout_seconds" in data:
            raise ValueError(
                "timeout_seconds: replaced by budget_seconds at the top of the file, "
                "the wall time of research and optimize together"
            )
        return data


class RegisterConfig(_Section):
    model_name: str = Field("loan-default-classifier", min_length=1, max_length=256)

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        value = _check_name(value, "registered model")
        # MLflow's own rules (mlflow.utils.validation._validate_model_name), checked before any run.
        if "/" in value or ":" in value:
            raise ValueError("a registered model name cannot contain '/' or ':'")
        normal = posixpath.normpath(value)
        if normal != value or normal == "." or normal.startswith(".."):
            raise ValueError(f"a registered model name must not read as a path (it resolves to {normal!r})")
        return value

    min_test_roc_auc: float = Field(0.70, ge=0, le=1)
    roc_auc_margin: float = Field(0.0, ge=0, le=1)
    cost_margin: float = Field(0.0, ge=0)
    min_probability_of_improvement: float = Field(0.9, gt=0, le=1)
    bootstrap_samples: int = Field(1000, ge=100, le=100_000)
    mirror_stages: bool = False
    fail_on_reject: bool = False


class DeployConfig(_Section):
    """The smoke test a version passes before ``@production`` moves to it (deploy and rollback)."""

    # The scoring server must answer /ping within this (it loads the model and its libraries).
    startup_timeout_seconds: float = Field(180.0, gt=0, le=3600)
    request_timeout_seconds: float = Field(60.0, gt=0, le=3600)
    # Held-out test rows sent to the server and compared with batch scoring.
    smoke_rows: int = Field(500, ge=1, le=1_000_000)
    # Largest difference allowed between a served and a batch-scored probability.
    tolerance: float = Field(1e-9, ge=0, le=1)


class ResultsConfig(_Section):
    output_dir: Path = Path("reports")
    notebook: Path = Path("notebooks/results.ipynb")
    # The MLflow UI's address (e.g. https://mlflow.example.com): the report links runs to it.
    mlflow_ui_url: str | None = None


class ScorecardConfig(_Section):
    """Points of a ``woe_scorecard``: ``base_points`` at good:bad odds ``base_odds``, ``pdo`` per doubling."""

    base_points: float = 600.0
    base_odds: float = Field(50.0, gt=0)
    pdo: float = Field(20.0, gt=0)


class ReasonCodesConfig(_Section):
    count: int = Field(4, ge=1, le=20, description="reasons per applicant, most important first")


class MonitorConfig(_Section):
    """Population stability of new applicants against the model's training part."""

    watch: float = Field(0.10, gt=0, description="an index at or above this is worth watching")
    shift: float = Field(0.25, gt=0, description="an index above this means the population shifted")
    fail_on_shift: bool = True  # exit 3 when the score or any characteristic shifted
    bins: int = Field(10, ge=2, le=50, description="quantile bins of the score and numeric characteristics")
    max_categories: int = Field(
        20, ge=1, le=500, description="categories kept per characteristic, the rest pooled"
    )
    output_dir: Path = Path("reports/monitor")

    @model_validator(mode="after")
    def _ordered(self) -> MonitorConfig:
        if self.watch >= self.shift:
            raise ValueError(f"'watch' ({self.watch}) must be below 'shift' ({self.shift})")
        return self


class PipelineConfig(_Section):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    seed: int = Field(42, ge=0, le=2**32 - 1)
    # Wall time of stages 1 and 2 together (research, tuning, the final refit, calibration, test
    # scoring); pipeline.budget splits it.
    budget_seconds: float = Field(600.0, ge=10, le=7 * 24 * 3600)
    tracking: TrackingConfig = TrackingConfig()
    dataset: DatasetConfig
    split: SplitConfig = SplitConfig()
    costs: CostConfig = CostConfig()
    research: ResearchConfig
    optimize: OptimizeConfig = OptimizeConfig()
    # "register" would shadow BaseModel's ABC method; the YAML key stays "register".
    registration: RegisterConfig = Field(RegisterConfig(), alias="register")
    deploy: DeployConfig = DeployConfig()
    results: ResultsConfig = ResultsConfig()
    scorecard: ScorecardConfig = ScorecardConfig()
    reason_codes: ReasonCodesConfig = ReasonCodesConfig()
    monitor: MonitorConfig = MonitorConfig()
    # Directory relative paths resolve against (the config file's folder); not a YAML key.
    root: Path = Field(Path("."), exclude=True)
    profile: str | None = Field(None, exclude=True)
    # The file it was read from (None when built from a mapping); not a YAML key.
    source: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _outputs_inside_root(self) -> PipelineConfig:
        # Outputs the pipeline writes must stay inside the project (the config file's folder).
        outputs = {
            "results.output_dir": str(self.results.output_dir),
            "monitor.output_dir": str(self.monitor.output_dir),
        }
        location = self.tracking.artifact_location
        if location.startswith("file:"):
            outputs["tracking.artifact_location"] = urllib.parse.urlparse(location).path
        elif "://" not in location:
            outputs["tracking.artifact_location"] = location
        root = self.root.resolve()
        for key, value in outputs.items():
            if not self.resolve(value).is_relative_to(root):
                raise ValueError(f"{key}: {value} is outside the project folder {root}")
        return self

    def resolve(self, path: Path | str) -> Path:
        """Absolute path for a config value given relative to the project root."""
        path = Path(path)
        return path if path.is_absolute() else (self.root / path).resolve()


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged into ``base``, mappings key by key (profiles, benchmark overrides)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_validation_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "<root>"
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"] and first["type"] == "value_error":
        where, _, message = message.partition(": ")  # the validator names the key itself
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {message}{more}"


def config_from_mapping(
    raw: dict[str, Any], *, root: Path = Path("."), profile: str | None = None, source: Path | None = None
) -> PipelineConfig:
    """Validate a parsed ``params.yaml`` mapping, applying ``profile`` if given."""
    if not isinstance(raw, dict):
        raise ConfigError("the config file must hold a mapping of sections")
    raw = dict(raw)
    profiles = raw.pop("profiles", {}) or {}
    if not isinstance(profiles, dict):
        raise ConfigError("profiles: must be a mapping of profile names to overrides")
    if profile:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise ConfigError(f"profile '{profile}' is not defined in the config (known: {known})")
        raw = deep_merge(raw, profiles[profile] or {})
    try:
        return PipelineConfig.model_validate(
            {**raw, "root": root.resolve(), "profile": profile, "source": source}
        )
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error)) from None


def load_config(path: Path | str = DEFAULT_CONFIG_PATH, profile: str | None = None) -> PipelineConfig:
    """Read, merge and validate the config file; relative paths resolve against its folder."""
    path = Path(path)
    profile = profile or os.environ.get(PROFILE_ENV) or None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}") from None
    return config_from_mapping(raw or {}, root=path.resolve().parent, profile=profile, source=path.resolve())
