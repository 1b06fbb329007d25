"""loan-mlops: research, optimize, register and report loan-default models with MLflow."""

__version__ = "0.1.0"
