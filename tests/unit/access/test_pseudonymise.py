"""The keyed hash against Python's hmac module, age at 31 August, and the pseudonymised rows' columns."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

import pyarrow as pa
import pytest

from access.pseudonymise import (
    KEY_ENV,
    PupilKeyer,
    academic_year_label,
    academic_year_start,
    age_at_31_august,
    key_from_env,
    pseudonymise_pupils,
    pseudonymise_sessions,
    pupil_key,
)
from attendance.errors import UserFacingError
from storage.tables import ATTENDANCE_SESSIONS, PUPILS

KEY = "k" * 32
UPNS = ["B801200005001", "A123456789012", "Z99999999999Z", "B801200005001", "é-not-a-upn"]


@pytest.mark.parametrize("key", [KEY, "0123456789abcdef" * 4, "x" * 65, "a much longer key " * 10])
def test_pupil_keys_equal_python_hmac_sha256(key: str) -> None:
    got = PupilKeyer(key).keys(pa.array(UPNS)).to_pylist()
    want = [hmac.new(key.encode(), u.encode(), hashlib.sha256).hexdigest() for u in UPNS]
    assert got == want
    assert pupil_key(key, UPNS[0]) == want[0]


def test_pupil_keys_keep_nulls_and_chunking() -> None:
    chunked = pa.chunked_array([["B801200005001", None], ["B801200005001"]])
    got = PupilKeyer(KEY).keys(chunked).to_pylist()
    want = hmac.new(KEY.encode(), b"B801200005001", hashlib.sha256).hexdigest()
    assert got == [want, None, want]


def test_different_keys_give_unrelated_pupil_keys() -> None:
    assert pupil_key(KEY, "B801200005001") != pupil_key("j" * 32, "B801200005001")


def test_short_or_missing_key_is_refused() -> None:
    with pytest.raises(UserFacingError, match="at least 32"):
        PupilKeyer("short")
    with pytest.raises(UserFacingError, match=KEY_ENV):
        key_from_env({})
    assert key_from_env({KEY_ENV: KEY}) == KEY.encode()


@pytest.mark.parametrize(
    "day, start",
    [
        (dt.date(2025, 9, 1), 2025),
        (dt.date(2025, 8, 31), 2024),
        (dt.date(2026, 7, 20), 2025),
        (dt.date(2026, 1, 1), 2025),
        (dt.date(2025, 12, 31), 2025),
    ],
)
def test_academic_year_starts_on_1_september(day: dt.date, start: int) -> None:
    assert academic_year_start(pa.array([day])).to_pylist() == [start]


def test_academic_year_label_is_yyyyzz() -> None:
    assert academic_year_label(pa.array([2025, 1999], pa.int64())).to_pylist() == ["202526", "199900"]


@pytest.mark.parametrize(
    "born, year, age",
    [
        (dt.date(2015, 8, 31), 2025, 10),  # tenth birthday on 31 August itself
        (dt.date(2015, 9, 1), 2025, 9),  # born the day after: still 9 on 31 August
        (dt.date(2016, 2, 29), 2025, 9),
        (dt.date(2010, 12, 25), 2025, 14),
    ],
)
def test_age_at_31_august(born: dt.date, year: int, age: int) -> None:
    assert age_at_31_august(pa.array([born]), pa.array([year], pa.int64())).to_pylist() == [age]


def test_pseudonymised_pupils_have_no_upn_or_date_of_birth() -> None:
    at = dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC)
    pupils = pa.Table.from_pylist(
        [
            {
                "urn": "100000",
                "upn": "B801200005001",
                "date_of_birth": dt.date(2016, 9, 1),
                "sex": "F",
                "generated_at": at,
            }
        ],
        schema=PUPILS.schema,
    )
    out = pseudonymise_pupils(pupils, PupilKeyer(KEY), at)
    assert "upn" not in out.column_names and "date_of_birth" not in out.column_names
    row = out.to_pylist()[0]
    # 2 March 2026 is in academic year 2025/26; born 1 Sep 2016 -> 8 on 31 Aug 2025
    assert (row["academic_year"], row["age_at_31_august"], row["sex"]) == ("202526", 8, "F")
    assert row["pupil_key"] == hmac.new(KEY.encode(), b"B801200005001", hashlib.sha256).hexdigest()


def test_pseudonymised_sessions_keep_marks_and_replace_the_upn() -> None:
    at = dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC)
    sessions = pa.Table.from_pylist(
        [
            {
                "urn": "100000",
                "upn": "B801200005001",
                "date": dt.date(2026, 3, 2),
                "session": "AM",
                "code": "I",
            }
        ],
        schema=ATTENDANCE_SESSIONS.schema,
    )
    out = pseudonymise_sessions(sessions, PupilKeyer(KEY), at).to_pylist()[0]
    assert "upn" not in out and (out["code"], out["session"], out["pseudonymised_at"]) == ("I", "AM", at)
