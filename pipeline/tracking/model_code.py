"""The code file logged with every model (MLflow's models-from-code): MLflow runs it when it loads
the model, and it names the pyfunc. The pipeline itself never imports it."""

from mlflow.models import set_model

from pipeline.tracking.scorer import LoanScorer

set_model(LoanScorer())
