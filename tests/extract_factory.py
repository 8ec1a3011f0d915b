"""Small, valid extract documents for tests (the generator makes realistic ones at scale)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from schemas.upn import make_upn


def _year4_birth_date(day: dt.date) -> str:
    """A birthday that makes a pupil Year 4 (age 8 on 31 August before the academic year of ``day``)."""
    academic_year_start = day.year if day.month >= 9 else day.year - 1
    return dt.date(academic_year_start - 8, 3, 1).isoformat()


def make_extract(urn: str = "100001", laestab: str = "3732001", extract_date: dt.date = dt.date(2026, 11, 17),
                 pupils: int = 3, generated_at: str | None = None, codes: tuple[str, str] = ("/", "\\"),
                 extract_id: str | None = None, la_code: int = 373, establishment: int = 2001) -> dict[str, Any]:
    return {
        "schema_version": "1",
        "extract_id": extract_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{urn}/{extract_date}/{generated_at}")),
        "urn": urn,
        "laestab": laestab,
        "extract_date": extract_date.isoformat(),
        "generated_at": generated_at or f"{extract_date.isoformat()}T17:30:00+00:00",
        "pupil_count": pupils,
        "pupils": [
            {
                "upn": make_upn(la_code, establishment, 20, n),
                "date_of_birth": _year4_birth_date(extract_date),
                "sex": "F" if n % 2 else "M",
                "nc_year_group": "4",
                "ethnicity": "WBRI",
                "fsm_eligible": n % 4 == 0,
                "sen_provision": "N",
                "looked_after": False,
                "child_in_need": None,
                "child_protection_plan": None,
                "admission_date": "2021-09-01",
                "leaving_date": None,
                "forename": "Not-in-contract",
                "sessions": [
                    {"date": extract_date.isoformat(), "session": "AM", "code": codes[0]},
                    {"date": extract_date.isoformat(), "session": "PM", "code": codes[1]},
                ],
            }
            for n in range(pupils)
        ],
    }
