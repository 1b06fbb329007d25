"""Every SQL query over MLflow's backend tables, returned as pandas DataFrames.

- ``tables``: the database, its tables (inventory, whole tables, COPY) and run look-ups
- ``history``: what the stages left: leaderboard, trials, champion history, gates, durations, lineage
"""
