"""pipeline.tracking.alias_history: alias moves to and from registered-model tags, the rollback target."""

from __future__ import annotations

import json

from pipeline.tracking import keys
from pipeline.tracking.alias_history import AliasMove, history_frame, moves_from_tags, rollback_target


def move(time: str, alias: str, before: str | None, after: str | None, actor: str = "deploy") -> AliasMove:
    return AliasMove(time, alias, before, after, actor, f"{actor} moved it", "abc123", None, "run-1")


def test_a_move_round_trips_through_its_tag_and_keys_sort_by_time():
    first = move("2026-01-02T03:04:05.000001+00:00", "champion", None, "1", "register")
    later = move("2026-01-02T03:04:05.000002+00:00", "production", None, "1")
    (key_first, value_first), (key_later, value_later) = first.tag(), later.tag()
    assert key_first.startswith(keys.RMTAG_ALIAS_MOVE_PREFIX + "20260102T030405000001Z.champion.")
    assert key_first < key_later
    assert AliasMove.from_tag(key_first, value_first) == first
    # Given in any order, mixed with other tags and an unreadable record: the moves, oldest first.
    tags = {
        key_later: value_later,
        "owner": "team",
        key_first: value_first,
        keys.RMTAG_ALIAS_MOVE_PREFIX + "x": "{",
    }
    assert moves_from_tags(tags) == [first, later]


def test_two_moves_in_the_same_microsecond_get_distinct_keys():
    same = move("2026-01-02T03:04:05+00:00", "champion", "1", "2")
    assert same.tag()[0] != same.tag()[0]


def test_a_long_reason_is_cut_to_fit_a_tag():
    long = AliasMove("2026-01-02T03:04:05+00:00", "champion", "1", "2", "register", "x" * 9000, "c")
    _, value = long.tag()
    assert len(value) < 5000
    assert len(json.loads(value)["reason"]) == 1000


def test_rollback_steps_back_one_deployment_at_a_time():
    moves = [
        move("2026-01-01T00:00:00+00:00", "production", None, "1"),
        move("2026-01-02T00:00:00+00:00", "champion", "1", "2", "register"),
        move("2026-01-02T00:01:00+00:00", "production", "1", "2"),
        move("2026-01-03T00:01:00+00:00", "production", "2", "3"),
    ]
    assert rollback_target(moves, "production", "3") == "2"
    moves.append(move("2026-01-04T00:00:00+00:00", "production", "3", "2", "rollback"))
    # From a version reached by rolling back: the one before its deployment, not back to 3.
    assert rollback_target(moves, "production", "2") == "1"
    assert rollback_target(moves, "production", "1") is None  # the first deployment
    assert rollback_target(moves, "production", "9") is None


def test_history_frame_is_newest_first_with_times():
    frame = history_frame(
        [
            move("2026-01-01T00:00:00+00:00", "production", None, "1"),
            move("2026-01-02T00:00:00+00:00", "production", "1", "2"),
        ]
    )
    assert frame["to_version"].tolist() == ["2", "1"]
    assert str(frame["time"].dt.tz) == "UTC"
    assert history_frame([]).empty
