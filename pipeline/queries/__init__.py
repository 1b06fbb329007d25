"""Every SQL query over MLflow's backend tables, returned as pandas DataFrames.

- ``tables``: the database, its tables (inventory, whole tables, COPY) and run look-ups
- ``history``: what the stages left: leaderboard, trials, champion history, gates, durations, lineage
- ``mirror``: a local SQLite copy of a tracking server's core tables, read through its API
"""
