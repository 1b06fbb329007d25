"""The MLflow tables the SQL reads, reduced to the columns it uses (for the queries tests)."""

MS = 1_700_000_000_000

# The MLflow tables the views read, reduced to the columns they use.
CORE_SCHEMA = """
            CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name TEXT, artifact_location TEXT,
                lifecycle_stage TEXT);
            CREATE TABLE runs (run_uuid TEXT PRIMARY KEY, name TEXT, status TEXT, start_time INTEGER,
                end_time INTEGER, lifecycle_stage TEXT, artifact_uri TEXT, experiment_id INTEGER);
            CREATE TABLE tags (key TEXT, value TEXT, run_uuid TEXT, PRIMARY KEY (key, run_uuid));
            CREATE TABLE latest_metrics (key TEXT, value REAL, timestamp INTEGER, step INTEGER,
                is_nan INTEGER, run_uuid TEXT, PRIMARY KEY (key, run_uuid));
"""
