# Each target bootstraps .venv itself, so `make run` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= params.yaml
PROFILE ?=
STAGE_FLAGS := --config $(CONFIG) $(if $(PROFILE),--profile $(PROFILE))

.PHONY: help install run research optimize register results report lint test test-unit bench bench-quality bench-results bench-reasons bench-load bench-serving bench-scale bench-model-file actionlint ui status clean

help:
	@echo "make run    - the whole pipeline on the embedded SQLite store and shipped data"
	@echo "make test   - lint and the test suite"
	@echo "make ui     - the MLflow UI on the configured store"

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

run: research optimize register results report

research: $(STAMP)
	$(BIN)/mlflow-loan-rm $(STAGE_FLAGS)

optimize: $(STAMP)
	$(BIN)/mlflow-loan-om $(STAGE_FLAGS)

register: $(STAMP)
	$(BIN)/mlflow-loan-register $(STAGE_FLAGS)

results: $(STAMP)
	$(BIN)/mlflow-results $(STAGE_FLAGS)

report: $(STAMP)
	$(BIN)/python -m pipeline report $(STAGE_FLAGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

TEST_WORKERS ?= 2

test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

bench: $(STAMP)
	$(BIN)/python bench/research.py

bench-quality: $(STAMP)
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	$(BIN)/python bench/quality.py

bench-results: $(STAMP)
	$(BIN)/python bench/results_scale.py

bench-reasons: $(STAMP)
	$(BIN)/python bench/reasons.py

bench-load: $(STAMP)
	$(BIN)/python bench/load.py

bench-serving: $(STAMP)
	$(BIN)/python bench/serving.py

bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py

bench-model-file: $(STAMP)
	$(BIN)/python bench/model_file.py

actionlint: $(STAMP)
	$(BIN)/actionlint

ui: $(STAMP)
	bash scripts/launch_mlflow.sh

status: $(STAMP)
	$(BIN)/python scripts/check_mlflow_status.py

clean:
	rm -rf mlflow.db mlflow-optuna.db *.db.*.lock mlartifacts reports backups
