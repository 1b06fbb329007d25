"""The candidate portfolio: one scikit-learn Pipeline per family, preprocessing included.

Pure: builds unfitted estimators from config values; no I/O, no tracking.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import VotingClassifier
    from sklearn.pipeline import Pipeline

# Families that are baselines rather than contenders for stage 2.
BASELINE_FAMILIES = frozenset({"dummy"})
# Families whose fit is light and grows linearly: on a small training part (budget.CHEAP_ROWS) stage 1
# ranks them even once its share is spent, as their folds cost less than a second.
CHEAP_FAMILIES = frozenset({"dummy", "logistic_regression", "naive_bayes", "decision_tree"})
# Families whose fitted model is a points scorecard (pipeline.scorecard reads it).
SCORECARD_FAMILIES = frozenset({"woe_scorecard"})

# The one list of model families. family -> (estimator class as "module:Name", preprocessing kind,
# whether it takes random_state, whether it takes n_jobs). Classes are imported when first built,
# so the config can validate family names without importing scikit-learn or LightGBM.
_FAMILIES: dict[str, tuple[str, str, bool, bool]] = {
    "dummy": ("sklearn.dummy:DummyClassifier", "onehot", True, False),
    "logistic_regression": ("sklearn.linear_model:LogisticRegression", "onehot", True, False),
    "decision_tree": ("sklearn.tree:DecisionTreeClassifier", "ordinal", True, False),
    "random_forest": ("sklearn.ensemble:RandomForestClassifier", "ordinal", True, True),
    "extra_trees": ("sklearn.ensemble:ExtraTreesClassifier", "ordinal", True, True),
    "hist_gradient_boosting": ("sklearn.ensemble:HistGradientBoostingClassifier", "native", True, False),
    "knn": ("sklearn.neighbors:KNeighborsClassifier", "onehot", False, True),
    "naive_bayes": ("sklearn.naive_bayes:GaussianNB", "onehot", False, False),
    "lightgbm": ("lightgbm:LGBMClassifier", "ordinal", True, True),
    # Optimal binning of every characteristic, its weight of evidence, a logistic regression on it.
    "woe_scorecard": ("sklearn.linear_model:LogisticRegression", "woe", True, False),
}

FAMILIES = tuple(_FAMILIES)

# What every family's pipeline is built from, besides its estimator's own module.
_PREPROCESSING_MODULES = ("sklearn.pipeline", "sklearn.compose", "sklearn.impute", "sklearn.preprocessing")


def modules_of(families: Iterable[str]) -> list[str]:
    """The modules a process imports to build, unpickle and fit these families' pipelines."""
    wanted = set(families)
    estimators = {_FAMILIES[f][0].split(":")[0] for f in wanted if f in _FAMILIES}
    binning = ["optbinning"] if any(_FAMILIES[f][1] == "woe" for f in wanted if f in _FAMILIES) else []
    return [*_PREPROCESSING_MODULES, *sorted(estimators), *binning]


# Families whose estimator refuses a sparse matrix: their one-hot encoding stays dense.
DENSE_INPUT_FAMILIES = frozenset({"naive_bayes"})

# Families whose cost grows faster than the rows, left out of a portfolio above this many training
# rows: k-nearest neighbours compares every scored row with every training row (brute force on
# one-hot data), so one 5-fold CV of 100,000 rows is 8 x 10^9 distances.
ROW_LIMITS: dict[str, int] = {"knn": 50_000}


# One-hot encoding at any size: a level seen in fewer than this share of the training rows, or
# beyond a column's most frequent ONEHOT_MAX_LEVELS - 1, joins the column's one "infrequent" level
# (new levels at scoring time too). The share is of the rows, so a table of a few thousand rows
# keeps every level it has, while at a million rows a level needs 1,000 rows of its own; a column
# of 10,000 employers then costs at most 64 columns instead of 10,000.
ONEHOT_MIN_FREQUENCY = 0.001
ONEHOT_MAX_LEVELS = 64
NATIVE_MAX_LEVELS = 255


# Forests keep every node of every tree: measured 1.8 MB a tree at 75,000 rows (random forest,
# min_samples_leaf 2; 2.8 MB for extra trees), growing with the rows, so 300 trees at 500,000 rows
# would hold about 3.6 GB per fitted model, one per parallel fold. Above this many rows each tree is
# grown on a sample of this size (``max_samples``; extra trees then draw bootstrap samples too),
# unless the parameters set ``max_samples`` themselves. Below it nothing changes.
FOREST_MAX_SAMPLES = 100_000
# Above FOREST_MAX_SAMPLES a fitted forest is also kept under this size: each tree gets at most as
# many leaves as fit (``max_leaf_nodes``, a leaf and its parent split at FOREST_NODE_BYTES each),
# unless the parameters set it. On samples of 100,000 rows, 300 trees at min_samples_leaf 1 would
# hold about 1.4 GB (2 GB for extra trees), two parallel folds twice that: over 4 GB with the data.
FOREST_MAX_BYTES = 512 * 2**20
FOREST_NODE_BYTES = 80  # scikit-learn's node record (64 bytes) and its two class values
_FORESTS = frozenset({"random_forest", "extra_trees"})
_FOREST_DEFAULT_TREES = 100  # scikit-learn's n_estimators

# Families cross-validated, tuned and fitted on a stratified sample of at most this many rows (the
# same sample in stages 1 and 2), whatever their time, and why. A dense one-hot encoding holds rows
# x encoded columns x 8 bytes, copied a few times in each fold worker (at 600,000 fold rows and about
# 150 columns, 5 GB for the process tree); Gaussian naive Bayes estimates a mean and a variance per
# class and column, which 100,000 rows already fix. A forest's tree grows on at most
# FOREST_MAX_SAMPLES rows but pays for every row of the fold it draws them from (scikit-learn encodes
# the labels and scans the rows once per tree): 10 trees of extra trees on 80,000 rows each took
# 0.9 s drawn from 100,000 rows and 4.0 s drawn from 600,000, which a probe of 2,000 rows cannot see.
SAMPLE_ROWS: dict[str, tuple[int, str]] = {
    **{family: (100_000, "its dense encoding holds every row in memory") for family in DENSE_INPUT_FAMILIES},
    **{
        family: (2 * FOREST_MAX_SAMPLES, "each tree pays for every row it is drawn from")
        for family in _FORESTS
    },
}


def size_settings(family: str, n_rows: int | None, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Settings a family gets for fitting on ``n_rows`` rows with ``params`` (which win), see
    FOREST_MAX_SAMPLES and FOREST_MAX_BYTES."""
    if family not in _FORESTS or n_rows is None or n_rows <= FOREST_MAX_SAMPLES:
        return {}
    params = params or {}
    trees = int(params.get("n_estimators", _FOREST_DEFAULT_TREES))
    leaves = FOREST_MAX_BYTES // (max(1, trees) * 2 * FOREST_NODE_BYTES)
    settings = {"bootstrap": True, "max_samples": FOREST_MAX_SAMPLES / n_rows, "max_leaf_nodes": int(leaves)}
    return {key: value for key, value in settings.items() if key not in params}


def forest_trees(family: str, params: Mapping[str, Any] | None = None) -> int | None:
    """How many trees a forest of ``family`` with ``params`` grows; None for other families."""
    if family not in _FORESTS:
        return None
    return int((params or {}).get("n_estimators", _FOREST_DEFAULT_TREES))


def fit_rows_cap(family: str, params: Mapping[str, Any] | None = None) -> int | None:
    """The most rows of its part one of the family's models is fitted on once sized for the part
    (``size_settings``: a forest's tree above FOREST_MAX_SAMPLES), or None: every row."""
    if family not in _FORESTS or "max_samples" in (params or {}):
        return None
    return FOREST_MAX_SAMPLES


def row_limit_reason(family: str, n_rows: int) -> str | None:
    """Why ``family`` is left out at ``n_rows`` training rows, or None when it is not."""
    limit = ROW_LIMITS.get(family)
    if limit is None or n_rows <= limit:
        return None
    return f"{n_rows:,} training rows are more than the {limit:,} {family} is run on (its cost grows faster)"


# The only non-primitive types a logged model may ask skops to rebuild. Kept in code, not read from
# the model's files, so a tampered model cannot widen it (MLflow itself trusts the list in MLmodel).
TRUSTED_TYPES: tuple[str, ...] = (
    "collections.OrderedDict",
    "functools.partial",
    "lightgbm.basic.Booster",
    "lightgbm.sklearn.LGBMClassifier",
    "numpy.dtype",
    "optbinning.binning.binning.OptimalBinning",
    "optbinning.binning.binning_process.BinningProcess",
    "optbinning.binning.binning_statistics.BinningTable",
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
    "lightgbm": {"verbose": -1},
    "woe_scorecard": {"max_iter": 2000},
}

# Settings of the binning step rather than the estimator (the ``woe`` preprocessing), with their
# defaults: at most 5 bins of at least 5 % of the rows each, event rates monotonic in each numeric
# characteristic (direction chosen per characteristic), characteristics kept when their
# information value is at least 0.02 (the usual "weak" floor).
BINNING_DEFAULTS: dict[str, Any] = {
    "max_n_bins": 5,
    "min_bin_size": 0.05,
    "monotonic_trend": "auto_asc_desc",
    "min_iv": 0.02,
}


def _estimator_class(family: str) -> Any:
    module, name = _FAMILIES[family][0].split(":")
    return getattr(importlib.import_module(module), name)


def _binning(categorical: list[str], numeric: list[str], settings: Mapping[str, Any]):
    """optbinning's ``BinningProcess`` over the ``woe`` encoder's columns (categorical codes first).

    Categories reach it as ordinal codes, never as text: on pandas' string arrays it would keep
    ``ArrowStringArray`` objects, which a pickle-free model cannot hold without trusting pyarrow.
    Missing values get their own bin's empirical WoE (0 when training had none); unseen categories
    (code -1) get a WoE of 0, the weight of no evidence.
    """
    from optbinning import BinningProcess

    names = [*categorical, *numeric]
    return BinningProcess(
        variable_names=names,
        categorical_variables=list(categorical),
        max_n_bins=int(settings["max_n_bins"]),
        min_bin_size=float(settings["min_bin_size"]),
        selection_criteria={"iv": {"min": float(settings["min_iv"])}} if settings["min_iv"] > 0 else None,
        binning_fit_params={name: {"monotonic_trend": settings["monotonic_trend"]} for name in numeric},
        binning_transform_params={name: {"metric_missing": "empirical"} for name in names},
        n_jobs=1,
    )


def _preprocessor(
    kind: str, categorical: list[str], numeric: list[str], sparse: bool = True
) -> ColumnTransformer:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    if kind == "woe":
        # Codes for the binning step; missing stays missing (its own bin), unseen becomes -1.
        numeric_steps = "passthrough"
        categorical_steps = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
    elif kind == "onehot":
        numeric_steps = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
        categorical_steps = Pipeline(
            [
                ("impute", SimpleImputer(strategy="most_frequent")),
                (
                    "encode",
                    OneHotEncoder(
                        handle_unknown="infrequent_if_exist",
                        min_frequency=ONEHOT_MIN_FREQUENCY,
                        max_categories=ONEHOT_MAX_LEVELS,
                        sparse_output=sparse,
                    ),
                ),
            ]
        )
    else:
        # Trees need no scaling; unseen or missing categories map to -1. A native categorical
        # feature takes at most 255 levels (HistGradientBoosting's bins), so rare levels are
        # grouped there as for one-hot (a 1,000-row table keeps every level).
        numeric_steps = "passthrough" if kind == "native" else SimpleImputer(strategy="median")
        grouping = (
            {"min_frequency": ONEHOT_MIN_FREQUENCY, "max_categories": NATIVE_MAX_LEVELS}
            if kind == "native"
            else {}
        )
        categorical_steps = OrdinalEncoder(
            handle_unknown="use_encoded_value",
            unknown_value=-1,
            encoded_missing_value=-1,
            **grouping,
        )
    # Sparse output only when most of the matrix is zeros (scikit-learn's default of 30 % filled);
    # a few one-hot columns stay dense, as before.
    return ColumnTransformer(
        [("categorical", categorical_steps, categorical), ("numeric", numeric_steps, numeric)],
        remainder="drop",
        sparse_threshold=0.3 if sparse else 0.0,
        verbose_feature_names_out=False,
    )


def build_estimator(
    family: str,
    params: Mapping[str, Any],
    categorical: list[str],
    numeric: list[str],
    seed: int,
    n_jobs: int = 1,
    n_rows: int | None = None,
) -> Pipeline:
    """An unfitted ``Pipeline(preprocess, model)`` for one family and its settings, sized for
    ``n_rows`` training rows when given (see ``size_settings``)."""
    if family not in _FAMILIES:
        raise ConfigError(f"unknown model family '{family}' (known: {', '.join(FAMILIES)})")
    from sklearn.pipeline import Pipeline

    _, kind, seeded, parallel = _FAMILIES[family]
    factory = _estimator_class(family)
    settings: dict[str, Any] = {**_DEFAULTS.get(family, {})}
    if seeded:
        settings["random_state"] = seed
    if parallel:
        settings["n_jobs"] = n_jobs
    if kind == "native":
        # Ordinal-encoded categoricals come first in the ColumnTransformer output.
        settings["categorical_features"] = list(range(len(categorical))) or None
    settings.update(size_settings(family, n_rows, params))
    settings.update(params)
    binning = (
        {key: settings.pop(key, default) for key, default in BINNING_DEFAULTS.items()}
        if kind == "woe"
        else {}
    )
    try:
        model = factory(**settings)
    except TypeError as error:
        raise ConfigError(f"invalid parameters for {family}: {error}") from None
    sparse = family not in DENSE_INPUT_FAMILIES
    steps = [("preprocess", _preprocessor(kind, categorical, numeric, sparse=sparse))]
    if kind == "woe":
        steps.append(("binning", _binning(categorical, numeric, binning)))
    return Pipeline([*steps, ("model", model)])


def validate_params(family: str, params: Mapping[str, Any], where: str) -> None:
    """Fail early, before any run starts, on parameter names the estimator does not take."""
    estimator = build_estimator(family, {}, [], [], seed=0)
    known = estimator.named_steps["model"].get_params(deep=False)
    if "binning" in estimator.named_steps:
        known = {**known, **BINNING_DEFAULTS}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown parameter(s) for {family}: {', '.join(unknown)}")


def build_ensemble(members: list[tuple[str, Any]]) -> VotingClassifier:
    """Average the probabilities of several fitted-to-be pipelines (each keeps its own preprocessing)."""
    from sklearn.ensemble import VotingClassifier

    if len(members) < 2:
        raise ConfigError("an ensemble needs at least two members")
    return VotingClassifier(estimators=members, voting="soft", n_jobs=1)
