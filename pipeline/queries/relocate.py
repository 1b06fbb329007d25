"""Moving a restored store's artifacts: rewrite every artifact location from one root to another (SQL).

A store restored from another machine's dump still points at that machine's artifact folder; after
the files are copied here, the locations are rewritten so MLflow finds them.
"""

from __future__ import annotations

import sqlalchemy as sa

from pipeline.tracking import store

# Every column of MLflow's schema that holds an artifact location.
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)


def relocate_artifacts(uri: str, old_root: str, new_root: str) -> dict[str, int]:
    """Replace the prefix ``old_root`` by ``new_root`` (as paths and as ``file://`` URIs) in every
    artifact location; returns the rows changed per ``table.column``. One transaction."""
    old_root, new_root = old_root.rstrip("/"), new_root.rstrip("/")
    prefixes = [(f"file://{old_root}", f"file://{new_root}"), (old_root, new_root)]
    changed: dict[str, int] = {}
    database = store.engine(uri)
    try:
        present = set(sa.inspect(database).get_table_names())
        with database.begin() as connection:
            for table_name, column_name in LOCATION_COLUMNS:
                if table_name not in present:
                    continue
                table = sa.Table(table_name, sa.MetaData(), autoload_with=connection)
                column = table.c[column_name]
                count = 0
                for old, new in prefixes:
                    statement = (
                        sa.update(table)
                        .where(sa.or_(column == old, column.startswith(f"{old}/", autoescape=True)))
                        .values({column_name: sa.literal(new) + sa.func.substr(column, len(old) + 1)})
                    )
                    count += connection.execute(statement).rowcount
                changed[f"{table_name}.{column_name}"] = count
    finally:
        database.dispose()
    return changed
