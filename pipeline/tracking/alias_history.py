"""The alias history MLflow does not keep: every move of a registered model's aliases.

Each move (by register, deploy or rollback) is one tag on the registered model, written by
:func:`pipeline.tracking.registry.move_alias`: the key is ``keys.RMTAG_ALIAS_MOVE_PREFIX`` + UTC
time + alias + a random suffix (so keys sort by time and never collide), the value a JSON record.
Registered-model tags exist in every kind of store (PostgreSQL, SQLite, an MLflow server), travel
with a database dump, and are readable by SQL (:mod:`pipeline.queries.history`) and by the client.

Pure: records to and from tags, and the choices made from the history; no store access.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import pandas as pd

from pipeline.tracking import keys

COLUMNS = [
    "time",
    "alias",
    "from_version",
    "to_version",
    "actor",
    "reason",
    "git_commit",
    "ci_run_url",
    "run_id",
]
_MAX_REASON = 1000  # a tag value holds at most 5000 characters


@dataclass(frozen=True)
class AliasMove:
    """One move of one alias; ``to_version`` None means the alias was removed."""

    time: str  # ISO 8601, UTC
    alias: str
    from_version: str | None
    to_version: str | None
    actor: str  # the stage that moved it: register, deploy or rollback
    reason: str
    git_commit: str
    ci_run_url: str | None = None
    run_id: str | None = None

    @classmethod
    def now(cls, alias: str, from_version: str | None, to_version: str | None, **details: str | None):
        return cls(
            datetime.now(UTC).isoformat(timespec="microseconds"), alias, from_version, to_version, **details
        )

    def tag(self) -> tuple[str, str]:
        """The registered-model tag that records this move."""
        moment = datetime.fromisoformat(self.time).astimezone(UTC)
        key = f"{keys.RMTAG_ALIAS_MOVE_PREFIX}{moment:%Y%m%dT%H%M%S%f}Z.{self.alias}.{secrets.token_hex(3)}"
        record = {**asdict(self), "reason": self.reason[:_MAX_REASON]}
        return key, json.dumps(record, sort_keys=True)

    @classmethod
    def from_tag(cls, key: str, value: str) -> AliasMove | None:
        """The move a tag records; None for any other tag or an unreadable value."""
        if not key.startswith(keys.RMTAG_ALIAS_MOVE_PREFIX):
            return None
        try:
            record = json.loads(value)
            return cls(**{name: record.get(name) for name in COLUMNS})
        except (TypeError, ValueError):
            return None


def moves_from_tags(tags: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[AliasMove]:
    """Every move recorded in ``tags`` (a mapping or key-value pairs), oldest first."""
    pairs = tags.items() if isinstance(tags, Mapping) else tags
    found = [(key, AliasMove.from_tag(key, value)) for key, value in pairs]
    return [move for _, move in sorted(found, key=lambda item: item[0]) if move is not None]


def rollback_target(moves: list[AliasMove], alias: str, current: str) -> str | None:
    """The version ``alias`` held before ``current`` was deployed to it; None when there was none.

    A rollback steps back one deployment: from a version reached by rolling back, it goes to the
    version before that one's deployment, not back to where the rollback came from.
    """
    for move in reversed(moves):
        if move.alias == alias and move.to_version == current and move.actor == keys.STAGE_DEPLOY:
            return move.from_version
    return None


def history_frame(moves: list[AliasMove]) -> pd.DataFrame:
    """The moves as a table, newest first."""
    frame = pd.DataFrame([asdict(move) for move in moves], columns=COLUMNS)
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    return frame.iloc[::-1].reset_index(drop=True)
