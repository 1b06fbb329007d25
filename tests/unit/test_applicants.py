"""pipeline.applicants: reading an applicant file, and saying what the input check found."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from pipeline.applicants import log_check, read_applicants
from pipeline.errors import DataError
from pipeline.scoring import InputCheck


def test_a_csv_is_read_as_text_so_the_output_repeats_it(tmp_path):
    path = tmp_path / "applicants.csv"
    path.write_text("age,amount\n030,1.50\n,7\n")
    frame = read_applicants(path)
    assert frame["age"].tolist()[0] == "030" and frame["amount"].tolist()[0] == "1.50"
    assert pd.isna(frame["age"].iloc[1])


def test_parquet_keeps_its_types(tmp_path):
    path = tmp_path / "applicants.parquet"
    pd.DataFrame({"age": [30, 41]}).to_parquet(path)
    assert read_applicants(path)["age"].tolist() == [30, 41]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "input file not found"),
        ("empty.csv", "", "is empty"),
        ("bad.csv", b"\xff\xfe\x00", "cannot read"),
    ],
)
def test_unreadable_files_are_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_applicants(path)


def test_the_check_is_said_in_the_log(caplog):
    check = InputCheck(extra_columns=["default"], unseen_categories={"purpose": 3}, absent_optional=["phone"])
    with caplog.at_level(logging.INFO, logger="pipeline.applicants"):
        log_check(check)
    assert "ignoring 1 input column(s) the model does not use: default" in caplog.text
    assert "optional column(s) not given, scored as missing: phone" in caplog.text
    assert (
        "3 value(s) in 1 column(s) were not seen in training" in caplog.text and "purpose (3)" in caplog.text
    )
