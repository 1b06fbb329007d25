"""The logged model's Python side: reading its files, and the pyfunc MLflow serves.

A model is logged from code (MLflow's models-from-code): ``pipeline/tracking/model_code.py`` is
the model's code file and sets :class:`LoanScorer` as the model; the ``pipeline`` package ships with
it (``code/``), so ``mlflow models serve`` and ``build-docker`` need no installed repository.
Nothing is unpickled: :meth:`LoanScorer.load_context` reads the skops file trusting only
:data:`pipeline.models.TRUSTED_TYPES` (never a list stored with the model) and the scoring spec
(threshold and input columns) from JSON. The batch command reads the same two files with the
same functions (:func:`read_scorer`) and scores through the same :func:`pipeline.scoring.score`.
"""

import json
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from pipeline import scoring
from pipeline.errors import DataError, ModelSecurityError
from pipeline.models import TRUSTED_TYPES
from pipeline.tracking import keys


def read_estimator(path: Path, where: str) -> Any:
    """Rebuild a skops file trusting only the types listed in code; ModelSecurityError otherwise."""
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        return skops.io.load(path, trusted=list(TRUSTED_TYPES))
    except UntrustedTypesFoundException as error:
        raise ModelSecurityError(
            f"model {where} asks for types outside the trusted list: {str(error).splitlines()[0]}"
        ) from None
    except Exception as error:  # missing, corrupt or truncated file
        raise ModelSecurityError(f"model {where} cannot be read: {str(error).splitlines()[0]}") from None


def read_spec(path: Path, where: str) -> scoring.ScoringSpec:
    """The scoring spec (threshold and input columns) written beside the estimator."""
    try:
        return scoring.ScoringSpec.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError) as error:
        raise ModelSecurityError(f"model {where} has no readable scoring spec: {error}") from None


def read_scorer(estimator_path: Path, spec_path: Path, where: str) -> scoring.Scorer:
    return scoring.Scorer.of(read_estimator(estimator_path, where), read_spec(spec_path, where))


class LoanScorer(PythonModel):
    """``predict(raw applicants)`` -> ``default_probability``, ``decision``, ``threshold`` per row.

    An input the scoring path refuses raises MLflow's INVALID_PARAMETER_VALUE error, which the
    scoring server answers with HTTP 400 and the one-line reason (not a 500 with a traceback).
    """

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        self._scorer = read_scorer(
            Path(artifacts[keys.MODEL_ARTIFACT_ESTIMATOR]),
            Path(artifacts[keys.MODEL_ARTIFACT_SPEC]),
            "being loaded",
        )

    # No ``from __future__ import annotations`` here: MLflow reads this hint at logging time, and a
    # DataFrame hint means "validate against the logged signature" rather than infer one.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        try:
            return scoring.score(self._scorer, model_input).output
        except DataError as error:
            raise MlflowException.invalid_parameter_value(str(error)) from None
