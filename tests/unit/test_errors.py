"""One-line error messages."""

import pytest
import sqlalchemy

from pipeline.errors import DataError, first_line


@pytest.mark.parametrize(
    ("error", "default", "expected"),
    [
        (ValueError("  first\nsecond"), "?", "first"),
        (ValueError(""), "?", "?"),
        (KeyError(), "", ""),
        # SQLAlchemy's own text adds the statement and a link: the driver's message is the reason.
        (
            sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused\nis it up?")),
            "?",
            "connection refused",
        ),
    ],
)
def test_first_line(error, default, expected):
    assert first_line(error, default=default) == expected


def test_pipeline_errors_print_on_one_line():
    assert str(DataError("bad\n  column   x")) == "bad column x"
