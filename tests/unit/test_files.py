"""Atomic writes: a failed write leaves the old file intact and no temporary file behind."""

import io
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from pipeline import files


def test_write_replaces_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "reports" / "summary.json"
    files.write_json_atomic(target, {"b": 2, "a": 1})
    files.write_json_atomic(target, {"a": 3})
    assert json.loads(target.read_text()) == {"a": 3}
    assert sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]


def test_csv_round_trip(tmp_path):
    frame = pd.DataFrame({"x": [1, 2], "name": ["O'Brien", 'say "hi"']})
    target = files.write_csv_atomic(tmp_path / "t.csv", frame)
    pd.testing.assert_frame_equal(pd.read_csv(target), frame)


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame(
            {
                "key": ["a,b", 'say "hi"', None, "line\nbreak"],
                "value": [0.1, float("nan"), 1e-300, 123456789.123],
                "step": [0, 1, 2, 3],
                "is_nan": [False, True, False, False],
            }
        ),
        pd.DataFrame({"mixed": [1, "a", None, 2.5]}),  # Arrow cannot type it: pandas writes it
        pd.DataFrame({"empty": pd.Series([], dtype=object)}),
    ],
    ids=["typed", "mixed", "empty"],
)
def test_frame_csv_reads_back_as_pandas_own_csv(tmp_path, frame):
    target = tmp_path / "t.csv"
    assert files.write_frame_csv_atomic(target, frame) == len(frame)
    pd.testing.assert_frame_equal(pd.read_csv(target), pd.read_csv(io.StringIO(frame.to_csv(index=False))))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    target.write_text("old complete report\n")

    def broken_replace(source, destination):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        files.write_text_atomic(target, "new report that never lands\n")
    assert target.read_text() == "old complete report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_crash_midway_through_writing_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "report.csv"
    target.write_text("a,b\n1,2\n")
    real_fsync = os.fsync

    def crash(fd):
        real_fsync(fd)
        raise KeyboardInterrupt  # e.g. Ctrl-C between writing and renaming

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        files.write_text_atomic(target, "a,b\n3,4\n" * 1000)
    assert target.read_text() == "a,b\n1,2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.csv"]


def test_serialisation_error_writes_nothing(tmp_path):
    target = tmp_path / "data.json"
    target.write_text('{"kept": true}\n')

    class Unprintable:
        def __str__(self):
            raise ValueError("cannot serialise")

    with pytest.raises(ValueError, match="cannot serialise"):
        files.write_json_atomic(target, {"x": Unprintable()})
    assert json.loads(target.read_text()) == {"kept": True}
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]


def test_new_file_is_not_visible_until_complete(tmp_path, monkeypatch):
    target = tmp_path / "fresh.txt"
    seen = []
    real_replace = os.replace

    def spy(source, destination):
        seen.append((os.path.exists(destination), Path(source).read_text()))
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", spy)
    files.write_text_atomic(target, "complete\n")
    assert seen == [(False, "complete\n")]
    assert target.read_text() == "complete\n"
