"""The candidate portfolio: one scikit-learn Pipeline per family, preprocessing included.

Pure: builds unfitted estimators from config values; no I/O, no tracking.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sklearn.base import ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import (
    ExtraTreesClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    VotingClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from pipeline.errors import ConfigError

# Families that are baselines rather than contenders for stage 2.
BASELINE_FAMILIES = frozenset({"dummy"})


def _lightgbm(**params: Any) -> ClassifierMixin:
    from lightgbm import LGBMClassifier  # imported lazily: slow, and optional at import time

    return LGBMClassifier(verbose=-1, **params)


# family -> (estimator factory, preprocessing kind, whether it takes random_state / n_jobs)
_FAMILIES: dict[str, tuple[Any, str, bool, bool]] = {
    "dummy": (DummyClassifier, "onehot", True, False),
    "logistic_regression": (LogisticRegression, "onehot", True, False),
    "decision_tree": (DecisionTreeClassifier, "ordinal", True, False),
    "random_forest": (RandomForestClassifier, "ordinal", True, True),
    "extra_trees": (ExtraTreesClassifier, "ordinal", True, True),
    "hist_gradient_boosting": (HistGradientBoostingClassifier, "native", True, False),
    "knn": (KNeighborsClassifier, "onehot", False, True),
    "naive_bayes": (GaussianNB, "onehot", False, False),
    "lightgbm": (_lightgbm, "ordinal", True, True),
}

FAMILIES = tuple(_FAMILIES)

# The only non-primitive types a logged model may ask skops to rebuild. Kept in code, not read from
# the model's files, so a tampered model cannot widen it (MLflow itself trusts the list in MLmodel).
TRUSTED_TYPES: tuple[str, ...] = (
    "collections.OrderedDict",
    "functools.partial",
    "lightgbm.basic.Booster",
    "lightgbm.sklearn.LGBMClassifier",
    "numpy.dtype",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.model_selection._split.StratifiedKFold",
    "sklearn.tree._tree.Tree",
    "sklearn.utils._bunch.Bunch",
    "sklearn.utils.validation.check_array",
)

# Defaults that differ from the library's because of the preprocessing or the data size.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "dummy": {"strategy": "prior"},
    "logistic_regression": {"max_iter": 2000},
}


def _preprocessor(kind: str, categorical: list[str], numeric: list[str]) -> ColumnTransformer:
    if kind == "onehot":
        numeric_steps = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
        categorical_steps = Pipeline(
            [
                ("impute", SimpleImputer(strategy="most_frequent")),
                ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
            ]
        )
    else:
        # Trees need no scaling; unseen or missing categories map to -1.
        numeric_steps = "passthrough" if kind == "native" else SimpleImputer(strategy="median")
        categorical_steps = OrdinalEncoder(
            handle_unknown="use_encoded_value",
            unknown_value=-1,
            encoded_missing_value=-1,
        )
    return ColumnTransformer(
        [("categorical", categorical_steps, categorical), ("numeric", numeric_steps, numeric)],
        remainder="drop",
        verbose_feature_names_out=False,
    )


def build_estimator(
    family: str,
    params: Mapping[str, Any],
    categorical: list[str],
    numeric: list[str],
    seed: int,
    n_jobs: int = 1,
) -> Pipeline:
    """An unfitted ``Pipeline(preprocess, model)`` for one family and its settings."""
    if family not in _FAMILIES:
        raise ConfigError(f"unknown model family '{family}' (known: {', '.join(FAMILIES)})")
    factory, kind, seeded, parallel = _FAMILIES[family]
    settings: dict[str, Any] = {**_DEFAULTS.get(family, {})}
    if seeded:
        settings["random_state"] = seed
    if parallel:
        settings["n_jobs"] = n_jobs
    if kind == "native":
        # Ordinal-encoded categoricals come first in the ColumnTransformer output.
        settings["categorical_features"] = list(range(len(categorical))) or None
    settings.update(params)
    try:
        model = factory(**settings)
    except TypeError as error:
        raise ConfigError(f"invalid parameters for {family}: {error}") from None
    return Pipeline([("preprocess", _preprocessor(kind, categorical, numeric)), ("model", model)])


def validate_params(family: str, params: Mapping[str, Any], where: str) -> None:
    """Fail early, before any run starts, on parameter names the estimator does not take."""
    estimator = build_estimator(family, {}, [], [], seed=0)
    known = estimator.named_steps["model"].get_params(deep=False)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown parameter(s) for {family}: {', '.join(unknown)}")


def build_ensemble(members: list[tuple[str, Any]]) -> VotingClassifier:
    """Average the probabilities of several fitted-to-be pipelines (each keeps its own preprocessing)."""
    if len(members) < 2:
        raise ConfigError("an ensemble needs at least two members")
    return VotingClassifier(estimators=members, voting="soft", n_jobs=1)
