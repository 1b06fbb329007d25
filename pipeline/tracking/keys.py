"""The stage contract: every name one stage writes to MLflow and another stage (or the report) reads.

Tag keys, stage and role names, alias names, model-version tags, model metadata keys, artifact
paths and the metric names that cross a stage boundary. Stages hand over only through these, so
this is the one place their spelling lives. No imports, no logic.
"""

# --- Stages and run roles (tag ``pipeline.stage`` / ``pipeline.role``) -----------------------------
STAGE_RESEARCH = "research"
STAGE_OPTIMIZE = "optimize"
STAGE_REGISTER = "register"
STAGE_DEPLOY = "deploy"
STAGE_ROLLBACK = "rollback"
STAGE_MONITOR = "monitor"
ROLE_STAGE = "stage"  # the parent run of a stage
ROLE_CANDIDATE = "candidate"  # a research candidate's child run
ROLE_TRIAL = "trial"  # an Optuna trial's child run

# --- Tags every run carries ---------------------------------------------------------------------------
TAG_STAGE = "pipeline.stage"
TAG_ROLE = "pipeline.role"
TAG_VERSION = "pipeline.version"
TAG_GIT_COMMIT = "pipeline.git_commit"
TAG_PROFILE = "pipeline.profile"
TAG_FAILURE_REASON = "pipeline.failure_reason"
# Which process owns a run: the stale-run sweep never touches a live one.
TAG_HOST = "pipeline.host"
TAG_PID = "pipeline.pid"
TAG_DATASET_NAME = "dataset.name"
TAG_DATASET_DIGEST = "dataset.digest"
TAG_TRAIN_DIGEST = "dataset.train_digest"
TAG_TEST_DIGEST = "dataset.test_digest"
# On the experiment of a pull-request run: what main's store restored as the baseline (JSON).
TAG_BASELINE = "pipeline.baseline"
# MLflow's own tag for nested runs (mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID).
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
# MLflow's standard run tags (mlflow.utils.mlflow_tags): the UI shows them as the run's user and source.
TAG_MLFLOW_USER = "mlflow.user"
TAG_SOURCE_NAME = "mlflow.source.name"
TAG_SOURCE_TYPE = "mlflow.source.type"
TAG_SOURCE_GIT_COMMIT = "mlflow.source.git.commit"
TAG_SOURCE_GIT_REPO = "mlflow.source.git.repoURL"
SOURCE_TYPE_LOCAL = "LOCAL"
SOURCE_TYPE_JOB = "JOB"  # a CI job
TAG_CI_RUN_URL = "pipeline.ci_run_url"  # the GitHub Actions run that logged it

# --- The experiment ---------------------------------------------------------------------------------
# MLflow 3's UI opens an experiment in its GenAI view unless this tag says it holds model training.
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_MODEL_TRAINING = "custom_model_development"

# --- Child runs -----------------------------------------------------------------------------------
TAG_FAMILY = "model.family"
TAG_CANDIDATE = "model.candidate"
TAG_OPTUNA_STUDY = "optuna.study"
TAG_OPTUNA_TRIAL = "optuna.trial_number"
TAG_OPTUNA_STATE = "optuna.state"

# --- Stage 1, research ------------------------------------------------------------------------------
TAG_RANKED_FAMILIES = "research.ranked_families"
TAG_RANKED_CANDIDATES = "research.ranked_candidates"
TAG_BEST_CANDIDATE = "research.best_candidate"
# On a candidate's child run: cross-validated, raced out or skipped (pipeline.selection), and why.
TAG_CANDIDATE_STATUS = "research.status"
TAG_CANDIDATE_NOTE = "research.note"
# On the research run: JSON {family: seconds of one CV fold}, what stage 2 plans its shares from.
TAG_FOLD_SECONDS = "research.fold_seconds"
# On the research run: JSON {family: rows} for a family cross-validated on a sample of the training
# part (too slow for its share on every row); stage 2 tunes and refits it on the same sample.
TAG_FAMILY_ROWS = "research.family_rows"
TAG_FAMILY_SCORES = "research.family_scores"  # {family: [cv ROC AUC, its std, folds]} of its best candidate

# --- The time budget (pipeline.budget): metrics prefix + step, on the research and optimize runs ------
PARAM_BUDGET_SECONDS = "budget_seconds"
METRIC_BUDGET_PLANNED = "budget.planned."  # + step
METRIC_BUDGET_SPENT = "budget.spent."  # + step; stage 1's step is STAGE_RESEARCH
TAG_BUDGET_STOPPED = "budget.stopped_by."  # + step: "time" or "skipped" when the budget ended it
BUDGET_STEP_TUNE = "tune."  # + family
BUDGET_STEP_FINAL = "final"
METRIC_SPEED_PROBE = "budget.speed_probe_seconds"  # what a stage scaled its fixed costs by (pipeline.speed)
METRIC_FINAL_OVERHEAD = "budget.final_overhead_seconds"  # optimize: the final step's fixed part so scaled
BUDGET_STEP_TOTAL = "total"  # stages 1 and 2 together, against budget_seconds
BUDGET_STOPPED_TIME = "time"  # a step its share of the budget ended
BUDGET_STOPPED_SKIPPED = "skipped"  # a family whose one trial could not fit its share
# Candidates not run at this data size, each with the reason (JSON object; models.ROW_LIMITS).
TAG_LEFT_OUT_CANDIDATES = "research.left_out_candidates"

# --- Stage 2, optimize ------------------------------------------------------------------------------
TAG_RESEARCH_RUN = "optimize.research_run_id"
TAG_TUNED_FAMILIES = "optimize.families"
TAG_BEST_FAMILY = "optimize.best_family"
TAG_CALIBRATION = "optimize.calibration"
TAG_THRESHOLD = "optimize.threshold"
TAG_MODEL_ID = "optimize.model_id"
TAG_MODEL_URI = "optimize.model_uri"
TAG_STUDY_PREFIX = "optimize.study."  # + family: the Optuna study a family was tuned in
TAG_OPTUNA_STORAGE = "optimize.optuna_storage"  # where the studies are (password masked)
TAG_OPTUNA_SHARED = "optimize.optuna_shared"  # "true" when workers on other machines reach them

# --- Stage 3, register (tags of the register run) ---------------------------------------------------
TAG_REGISTER_OPTIMIZE_RUN = "register.optimize_run_id"
TAG_REGISTER_MODEL_NAME = "register.model_name"
TAG_REGISTER_VERSION = "register.version"
TAG_REGISTER_DECISION = "register.decision"
TAG_REGISTER_REASON = "register.reason"
TAG_REGISTER_RESUMED = "register.resumed_pending"
TAG_REGISTER_CHAMPION = "register.champion_version"
TAG_REGISTER_OTHER_DATA = "register.champion_compared_on_other_data"

# --- Deploy and rollback (tags of their runs) -------------------------------------------------------
TAG_DEPLOY_MODEL_NAME = "deploy.model_name"
TAG_DEPLOY_VERSION = "deploy.version"  # the version smoke-tested (and, when it passed, put in production)
TAG_DEPLOY_FROM_VERSION = "deploy.from_version"  # @production before the run ("" when there was none)
TAG_DEPLOY_OUTCOME = "deploy.outcome"
TAG_DEPLOY_REASON = "deploy.reason"
DEPLOY_DEPLOYED = "deployed"
DEPLOY_FAILED = "failed"
ARTIFACT_SMOKE_TEST = "deploy/smoke_test.json"
ARTIFACT_SERVER_LOG = "deploy/scoring_server.log"
# --- Monitor (tags of a monitor run: which model version it watched) -------------------------------
TAG_MONITOR_MODEL_URI = "monitor.model_uri"
TAG_MONITOR_MODEL_NAME = "monitor.model_name"
TAG_MONITOR_VERSION = "monitor.version"
TAG_MONITOR_MODEL_ID = "monitor.model_id"
TAG_MONITOR_STATUS = "monitor.status"  # stable, watch or shifted: the worst of the score and characteristics
TAG_MONITOR_INPUT = "monitor.input"
METRIC_SCORE_PSI = "score_psi"
METRIC_MAX_CSI = "max_csi"

# --- Metrics read across stages ---------------------------------------------------------------------
METRIC_CV_ROC_AUC_MEAN = "cv_roc_auc_mean"  # research candidates; register's baseline floors
# Training rows a research candidate was cross-validated on, and the final model was fitted on.
METRIC_TRAIN_ROWS = "train_rows"
METRIC_TEST_ROC_AUC = "test_roc_auc"
METRIC_TEST_EXPECTED_COST = "test_expected_cost"

# --- Model versions: tags, and the gate's bookkeeping -----------------------------------------------
VTAG_OPTIMIZE_RUN = "optimize_run_id"  # unique per registration: reruns find their version by it
VTAG_RESEARCH_RUN = "research_run_id"
VTAG_THRESHOLD = "threshold"
VTAG_TEST_ROC_AUC = METRIC_TEST_ROC_AUC
VTAG_TEST_EXPECTED_COST = METRIC_TEST_EXPECTED_COST
VTAG_STATUS = "gate.status"
VTAG_DECISION = "gate.decision"
VTAG_REASON = "gate.reason"
VTAG_GATE_PREFIX = "gate."  # + a figure of the comparison (roc_auc_gain, cost_saving, ...)
VTAG_CHAMPION_VERSION = "gate.champion_version"
VTAG_OTHER_DATA = "gate.compared_on_other_data"
VTAG_ARCHIVED = "archived"
STATUS_PENDING = "pending"  # created, aliases not yet moved
STATUS_DONE = "done"  # written last: the registration is complete

# --- Aliases ----------------------------------------------------------------------------------------
ALIAS_CHAMPION = "champion"
ALIAS_CHALLENGER = "challenger"
ALIAS_PREVIOUS = "previous"
ALIAS_PRODUCTION = "production"  # what the scoring service runs: moved only by deploy and rollback
# Every move of an alias is one registered-model tag: this prefix + UTC time + alias + a random suffix,
# its value a JSON record (pipeline.tracking.alias_history). MLflow keeps no alias history itself.
RMTAG_ALIAS_MOVE_PREFIX = "pipeline.alias_move."

# --- The logged model -------------------------------------------------------------------------------
MODEL_NAME_IN_RUN = "model"
# MLflow's logged-model tag listing its registered versions: the UI's "Registered" badge reads it.
TAG_MODEL_VERSIONS = "mlflow.modelVersions"
META_THRESHOLD = VTAG_THRESHOLD
META_RESEARCH_RUN = VTAG_RESEARCH_RUN
META_FAMILIES = "families"
META_BEST_FAMILY = "best_family"
META_CALIBRATION = "calibration"
META_DATASET_DIGEST = "dataset_digest"
# Models-from-code: the pyfunc's artifacts (names in MLmodel) and the files they are written from.
MODEL_ARTIFACT_ESTIMATOR = "estimator"
MODEL_ARTIFACT_SPEC = "scoring_spec"
MODEL_ESTIMATOR_FILE = "model.skops"
MODEL_SPEC_FILE = "scoring_spec.json"
META_TRAINING_PROFILE = "training_profile"  # pipeline.stability: bins and shares of the training part
META_REASON_COUNT = "reason_codes_count"  # how many reasons per applicant the scoring path gives
META_SCORECARD_SCALING = "scorecard_scaling"  # a scorecard's points scaling (base_points, base_odds, pdo)

# --- Artifact paths ---------------------------------------------------------------------------------
ARTIFACT_SPLIT = "split/indices.json"  # research and optimize: train and test rows (runs.split_record)
ARTIFACT_LEADERBOARD = "leaderboard"  # research: .csv and .md
ARTIFACT_RESEARCH_CHART = "cv_roc_auc.png"
ARTIFACT_FAMILIES = "families"  # optimize: .csv and .md
ARTIFACT_BUDGET = "budget/steps"  # optimize: .csv and .md, planned and spent seconds per step
ARTIFACT_TEST_SCORES = "evaluation/test_scores.csv"  # optimize: row_index, y_true, score
ARTIFACT_IMPORTANCE = "evaluation/permutation_importance"  # optimize: .csv and .md
PLOT_ROC = "plots/roc_curve.png"
PLOT_PRECISION_RECALL = "plots/precision_recall.png"
PLOT_CALIBRATION = "plots/calibration.png"
PLOT_CONFUSION = "plots/confusion_matrix.png"
PLOT_COST = "plots/cost_vs_threshold.png"
PLOT_SCORES = "plots/score_distribution.png"
PLOT_IMPORTANCE = "plots/permutation_importance.png"
ARTIFACT_SCORECARD = "scorecard/table"  # optimize and research: .csv and .md, when a model is a scorecard
ARTIFACT_REASON_FREQUENCIES = "evaluation/reason_codes"  # optimize: .csv and .md, rejected test applicants
ARTIFACT_MONITOR_SUMMARY = "monitor/stability"  # monitor: .csv and .md, PSI and CSI with their status
ARTIFACT_MONITOR_BINS = "monitor/bins.csv"  # monitor: expected and actual share of every bin
PLOT_MONITOR = "monitor/stability.png"
ARTIFACT_GATE_DECISION = "gate/decision.json"  # register
ARTIFACT_BOOTSTRAP = "gate/bootstrap.csv"
ARTIFACT_COMPARISON = "gate/comparison.csv"  # champion vs challenger, every metric with its interval
ARTIFACT_CONFUSION = "gate/confusion.csv"  # both confusion matrices at their thresholds
PLOT_BOOTSTRAP = "plots/bootstrap.png"
