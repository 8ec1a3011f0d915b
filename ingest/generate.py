"""``attendance generate``: realistic synthetic MIS extracts and a GIAS register, deterministic by seed.

Output (``docs/generator.md`` describes it in full)::

    OUT/register/edubasealldata.csv           GIAS-format register (Windows-1252), incl. out-of-scope/closed
    OUT/extracts/<YYYY-MM-DD>/<urn>.json.gz   one ExtractFile-shaped JSON object per school-day (.json if
                                              --no-compress)
    OUT/faults.jsonl                          one line per injected fault: file, kind, count, positions
    OUT/generate.json                         the parameters and counts of the run

Every value is a pure function of (seed, urn, pupil position, date, session, as-of date): a school's roster
from (seed, urn), a day's marks from (seed, urn, date). Nothing is carried from one day to the next, so
schools can be generated in any order by any number of worker processes and the bytes are the same.

Amendments: a mark may be changed once, ``k`` school days later (1 <= k <= 7). The extract of the mark's
own day carries the first version (usually N, "no reason yet"); the extract ``k`` school days later re-sends
the mark with its final code; extracts in between do not repeat it. Only marks of days inside the run are
re-sent.

Speed: per school the roster's static JSON (everything but ``sessions``) is built once; each day's JSON is
assembled from byte fragments chosen column-wise with numpy, so the per-pupil Python work is a
concatenation. Files are gzip level 1 (stdlib-readable).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import os
import shutil
import sys
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np
import orjson

from attendance.errors import UserFacingError
from ingest import calibration as cal
from schemas.codes import CODES_BY_MARK, Category
from schemas.reference import local_authorities
from schemas.upn import ALPHABET

# --- fault kinds --------------------------------------------------------------------------------------------

ALL_FAULT_KINDS: tuple[str, ...] = (
    "invalid_code",
    "bad_check_letter",
    "unknown_urn",
    "malformed_json",
    "duplicate_session",
    "missing_chunk",
    "out_of_window_date",
    "weekend_date",
    "bad_year_group",
    "duplicate_upn",
    "dob_implausible",
)

AMENDMENT_WINDOW = 7  # school days a changed mark may be re-sent after its date (SHARE: "within 7 days")

# --- register codes the generator emits ---------------------------------------------------------------------

REASON_CODES: tuple[str, ...] = tuple(cal.ABSENCE_REASON_RATES)
AEA_CODES: tuple[str, ...] = ("V", "B", "P", "W", "K")
MANAGEMENT_CODES: tuple[str, ...] = ("D", "X", "Y1", "Y7")
CODES: tuple[str, ...] = ("/", "\\", "L", *REASON_CODES, *AEA_CODES, *MANAGEMENT_CODES)
CODE_INDEX: dict[str, int] = {code: i for i, code in enumerate(CODES)}
_CATEGORY = [CODES_BY_MARK[c].category for c in CODES]
CODE_IS_POSSIBLE = np.array([CODES_BY_MARK[c].possible for c in CODES])
CODE_IS_PRESENT = np.array([cat == Category.PRESENT for cat in _CATEGORY])
CODE_IS_AEA = np.array([cat == Category.AEA for cat in _CATEGORY])
CODE_IS_AUTHORISED = np.array([cat == Category.AUTHORISED for cat in _CATEGORY])
CODE_IS_UNAUTHORISED = np.array([cat == Category.UNAUTHORISED for cat in _CATEGORY])
_CODE_JSON: tuple[bytes, ...] = tuple(orjson.dumps(c) for c in CODES)

_PRESENT_AM, _PRESENT_PM, _LATE = CODE_INDEX["/"], CODE_INDEX["\\"], CODE_INDEX["L"]
_N = CODE_INDEX["N"]

# Absence reasons: a pupil absent on a day has one reason for the day; some reasons are often half days.
_HALF_DAY = np.array([{"M": 0.7, "U": 1.0, "R": 0.3, "J1": 0.6}.get(c, 0.15) for c in REASON_CODES])
_REASON_SHARE = np.array([cal.ABSENCE_REASON_RATES[c] for c in REASON_CODES])
_REASON_SHARE = _REASON_SHARE / _REASON_SHARE.sum()
_REASON_DAY_WEIGHT = _REASON_SHARE / (2.0 - _HALF_DAY)  # sessions per absence day = 2 - half-day share
_REASON_DAY_CUM = np.cumsum(_REASON_DAY_WEIGHT / _REASON_DAY_WEIGHT.sum())
_REASON_CODE_IDX = np.array([CODE_INDEX[c] for c in REASON_CODES], dtype=np.uint8)
_U_REASON = REASON_CODES.index("U")
#: P(absent on a day) = theta * _DAY_FACTOR keeps the expected share of absent sessions equal to theta.
_DAY_FACTOR = 2.0 * float(_REASON_DAY_WEIGHT.sum())
#: Mon..Fri: Friday absence is highest (mean 1).
_WEEKDAY_FACTOR = (0.98, 0.94, 0.95, 0.99, 1.14)

_LATE_AM, _LATE_PM = 0.032, 0.006  # L: ~1.9% of present sessions (DfE 2022/23 1.93%)
_PRESENT_SHARE = 1 - cal.NATIONAL_ABSENCE_RATE
_TRIP_DAY = cal.AEA_RATES["V"] / 100 / _PRESENT_SHARE  # a year group's trip day: every present pupil gets V
_WORK_EXPERIENCE_DAY = 0.0016  # per Y10/Y12 year group and day
_SPORT_SESSION = cal.AEA_RATES["P"] / 100 / _PRESENT_SHARE
_OFF_SITE_PUPILS, _OFF_SITE_SESSIONS = 0.005, 0.5  # B: a few pupils part-time at approved off-site provision
_LA_PROVISION_PUPILS = 0.0003  # K every session
_DUAL_PUPILS, _DUAL_DAYS = 0.004, 0.6  # D: dual-registered pupils attend the other school on 60% of days
_X_RECEPTION_SESSION = 0.003
_Y1_SESSION, _Y7_SESSION = 0.00005, 0.00003

#: How many school days after the mark's day a change is re-sent (1..7), most within two days.
_OFFSET_CUM = np.cumsum([0.35, 0.2, 0.13, 0.1, 0.08, 0.07, 0.07])

_SEED_ROSTER, _SEED_DAY, _SEED_EXTRACT, _SEED_FAULT, _SEED_REGISTER = 11, 13, 17, 19, 23
_EXTRACT_NAMESPACE = uuid.UUID("6f1d7f1e-3c1b-4f2a-9a43-7c1b2d9e5a10")

# --- names and characteristics ------------------------------------------------------------------------------

# fmt: off
_FORENAMES_F = ("Olivia", "Amelia", "Isla", "Ava", "Ivy", "Freya", "Lily", "Florence", "Mia", "Willow",
                "Aisha", "Zoë", "Chloé", "Maryam", "Sophia", "Grace", "Evie", "Poppy", "Ella", "Ruby", "Nour",
                "Oliwia")
_FORENAMES_M = ("Muhammad", "Noah", "Oliver", "George", "Leo", "Arthur", "Oscar", "Theodore", "Freddie",
                "Archie", "Harry", "Jack", "Luca", "Alfie", "Henry", "Ibrahim", "Jakub", "Finley", "Yusuf",
                "Joshua", "Séan", "Kacper")
_SURNAMES = ("Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Thomas",
             "Johnson", "Roberts", "Robinson", "Thompson", "Wright", "Walker", "White", "Edwards", "Hughes",
             "Green", "Hall", "Khan", "Ahmed", "Ali", "Hussain", "Patel", "Begum", "Nowak", "Kowalski",
             "O’Brien", "Murphy", "Okafor", "Mensah", "Nguyen", "Chen", "Singh", "Kaur", "Lewis", "Clarke",
             "Jackson", "Wood")
# fmt: on
for _name in (*_FORENAMES_F, *_FORENAMES_M, *_SURNAMES):
    assert '"' not in _name and "\\" not in _name  # they go into JSON unescaped

#: School census ethnicity codes and approximate national shares of pupils [I: rounded from EES
#: school-pupils-and-their-characteristics 2024/25; only used to make the field realistic].
# fmt: off
_ETHNICITY = {
    "WBRI": 0.595, "WIRI": 0.002, "WIRT": 0.001, "WROM": 0.004, "WOTH": 0.07, "MWBC": 0.018, "MWBA": 0.009,
    "MWAS": 0.017, "MOTH": 0.025, "AIND": 0.037, "APKN": 0.048, "ABAN": 0.019, "AOTH": 0.02, "BCRB": 0.009,
    "BAFR": 0.04, "BOTH": 0.007, "CHNE": 0.005, "OOTH": 0.022, "REFU": 0.01, "NOBT": 0.042,
}
# fmt: on
_ETHNICITY_CODES = tuple(_ETHNICITY)
_ETHNICITY_CUM = np.cumsum(np.array(list(_ETHNICITY.values())) / sum(_ETHNICITY.values()))

#: Year-group labels and their offset from Reception (age at 31 August = offset + 4).
_YEAR_OFFSET = {"N1": -2, "N2": -1, "R": 0, **{str(n): n for n in range(1, 15)}}


def _years(first: str, last: str) -> tuple[str, ...]:
    order = ["N1", "N2", "R", *(str(n) for n in range(1, 15))]
    return tuple(order[order.index(first) : order.index(last) + 1])


# --- the register -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchoolSpec:
    """One school that sends extracts: everything its roster is drawn from."""

    urn: str
    laestab: str
    la_code: str
    establishment_number: int
    name: str
    attendance_phase: str  # Primary, Secondary, Special
    gias_phase: str  # PhaseOfEducation (name)
    type_name: str
    type_group: str
    year_groups: tuple[str, ...]
    year_weights: tuple[float, ...]
    roll: int
    absence_factor: float  # school effect on absence (mean 1)
    fsm_rate: float
    reports_child_in_need: bool
    trust_code: str = ""
    trust_name: str = ""
    status: str = "Open"
    open_date: str = ""  # dd-mm-yyyy


@dataclass(frozen=True)
class _Variant:
    gias_phase: str
    years: tuple[str, ...]
    weights: tuple[float, ...]
    kind: str  # word used in the school's name


def _variants(phase: str) -> list[tuple[float, _Variant]]:
    if phase == "Primary":
        return [
            (0.84, _Variant("Primary", _years("R", "6"), (1,) * 7, "Primary School")),
            (0.08, _Variant("Primary", _years("R", "2"), (1,) * 3, "Infant School")),
            (0.07, _Variant("Primary", _years("3", "6"), (1,) * 4, "Junior School")),
            (0.01, _Variant("Middle deemed primary", _years("4", "7"), (1,) * 4, "Middle School")),
        ]
    if phase == "Secondary":
        return [
            (0.40, _Variant("Secondary", _years("7", "11"), (1,) * 5, "Academy")),
            (0.54, _Variant("Secondary", _years("7", "13"), (1, 1, 1, 1, 1, 0.6, 0.55), "High School")),
            (
                0.05,
                _Variant(
                    "All-through",
                    _years("R", "13"),
                    (0.5,) * 7 + (1,) * 5 + (0.6, 0.55),
                    "All-through School",
                ),
            ),
            (0.01, _Variant("Middle deemed secondary", _years("5", "8"), (1,) * 4, "Middle School")),
        ]
    return [
        (
            0.75,
            _Variant(
                "Not applicable",
                _years("R", "14"),
                (0.3,) + (0.6,) * 6 + (1,) * 5 + (0.5, 0.4, 0.3),
                "Special School",
            ),
        ),
        (0.12, _Variant("Primary", _years("R", "6"), (0.5,) + (1,) * 6, "Special School")),
        (0.13, _Variant("Secondary", _years("7", "14"), (1,) * 5 + (0.6, 0.5, 0.4), "Special School")),
    ]


#: (type name, type group, probability) by attendance phase
#: [I: shares rounded from DfE's 2025 academies figures].
_TYPES: dict[str, list[tuple[str, str, float]]] = {
    "Primary": [
        ("Community school", "Local authority maintained schools", 0.31),
        ("Voluntary aided school", "Local authority maintained schools", 0.11),
        ("Voluntary controlled school", "Local authority maintained schools", 0.11),
        ("Foundation school", "Local authority maintained schools", 0.04),
        ("Academy converter", "Academies", 0.30),
        ("Academy sponsor led", "Academies", 0.09),
        ("Free schools", "Free Schools", 0.04),
    ],
    "Secondary": [
        ("Community school", "Local authority maintained schools", 0.09),
        ("Voluntary aided school", "Local authority maintained schools", 0.05),
        ("Foundation school", "Local authority maintained schools", 0.04),
        ("Academy converter", "Academies", 0.55),
        ("Academy sponsor led", "Academies", 0.20),
        ("Free schools", "Free Schools", 0.05),
        ("University technical college", "Free Schools", 0.01),
        ("Studio schools", "Free Schools", 0.01),
    ],
    "Special": [
        ("Community special school", "Special schools", 0.50),
        ("Foundation special school", "Special schools", 0.05),
        ("Academy special converter", "Academies", 0.25),
        ("Academy special sponsor led", "Academies", 0.10),
        ("Free schools special", "Free Schools", 0.10),
    ],
}

# fmt: off
_PLACES = ("Oakfield", "Riverside", "Hillcrest", "Meadowbank", "Ashgrove", "Beech Lane", "Castle View",
           "Elmwood", "Fairfield", "Greenacres", "Highfield", "Kingsmead", "Larkrise", "Millbrook",
           "Northgate", "Orchard", "Parkside", "Queensway", "Rosehill", "Southfields", "Thornbury", "Upton",
           "Westfield", "Willowbrook", "St Mary’s Church of England", "St John’s Catholic",
           "St Thérèse of Lisieux Catholic", "Our Lady’s Catholic", "Holy Trinity CofE", "Bishop’s")
_TRUST_WORDS = ("Horizon", "Unity", "Compass", "Oak", "Keystone", "Beacon", "Summit", "Evolve", "Aspire",
                "Harbour", "Pioneer", "Lighthouse", "Cathedral Schools", "Diocese of Northfield")
# fmt: on

#: Establishment-number ranges by kind of establishment (as GIAS uses them) [I].
_ESTAB_RANGE = {
    "Primary": (2000, 3999),
    "Secondary": (4000, 5999),
    "Special": (7000, 7999),
    "independent": (6000, 6999),
    "nursery": (1000, 1099),
    "pru": (1100, 1199),
}


def _la_weights(rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Old LA codes and a rough weight for how many schools each has (county > metropolitan > unitary)."""
    las = local_authorities()
    codes = sorted(las)
    base = {"E10": 4.0, "E08": 1.6, "E06": 1.0, "E09": 0.9}
    weights = np.array([base.get(las[c].new_la_code[:3], 1.0) for c in codes])
    weights = weights * rng.lognormal(0.0, 0.3, len(codes))
    for tiny in ("201", "906"):  # City of London, Isles of Scilly: one school each in reality
        if tiny in las:
            weights[codes.index(tiny)] = 0.01
    return codes, weights / weights.sum()


def _largest_remainder(total: int, shares: Sequence[float]) -> list[int]:
    raw = [total * s for s in shares]
    counts = [int(math.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _pick(rng: np.random.Generator, options: Sequence[tuple], weight_at: int = 0):
    probs = np.array([o[weight_at] for o in options], dtype=float)
    return options[int(rng.choice(len(options), p=probs / probs.sum()))]


def _date_text(day: dt.date) -> str:
    return day.strftime("%d-%m-%Y")


def build_register(
    schools: int, *, seed: int, academic_year: int
) -> tuple[list[SchoolSpec], list[dict[str, str]]]:
    """The schools that send extracts, and extra register rows (out-of-scope and closed establishments)."""
    if schools < 1:
        raise UserFacingError("--schools must be at least 1")
    if schools > 60_000:
        raise UserFacingError("--schools must be at most 60,000 (England has about 21,300 in scope)")
    rng = np.random.default_rng([seed, _SEED_REGISTER])
    extras_count = max(6, round(schools * 0.03))
    urns = rng.choice(np.arange(100_000, 200_000), size=schools + extras_count, replace=False)
    la_codes, la_p = _la_weights(rng)
    las = local_authorities()
    used_numbers: dict[str, set[int]] = {}

    def establishment_number(la: str, kind: str) -> int:
        used = used_numbers.setdefault(la, set())
        low, high = _ESTAB_RANGE[kind]
        start = low + int(rng.integers(0, 40))
        for candidate in itertools.chain(range(start, high + 1), range(low, start), range(1000, 10_000)):
            if candidate not in used:
                used.add(candidate)
                return candidate
        raise UserFacingError(f"too many schools for LA {la}")

    phases = list(cal.PHASE_SCHOOL_COUNTS)
    total = sum(cal.PHASE_SCHOOL_COUNTS.values())
    counts = _largest_remainder(schools, [cal.PHASE_SCHOOL_COUNTS[p] / total for p in phases])
    phase_of = np.array([p for p, c in zip(phases, counts, strict=True) for _ in range(c)])
    rng.shuffle(phase_of)
    trusts = [
        (
            str(int(rng.integers(2000, 20000))),
            f"{_TRUST_WORDS[i % len(_TRUST_WORDS)]} "
            f"{('Learning', 'Academy', 'Education', 'Multi Academy')[i % 4]} Trust",
        )
        for i in range(max(3, schools // 8))
    ]
    specs: list[SchoolSpec] = []
    sigma = {"Primary": 0.45, "Secondary": 0.35, "Special": 0.45}
    roll_bounds = {"Primary": (20, 1000), "Secondary": (150, 2400), "Special": (15, 450)}
    for i in range(schools):
        phase = str(phase_of[i])
        la = la_codes[int(rng.choice(len(la_codes), p=la_p))]
        variant = _pick(rng, _variants(phase))[1]
        type_name, type_group, _ = _pick(rng, _TYPES[phase], weight_at=2)
        number = establishment_number(la, phase)
        roll = int(
            np.clip(round(rng.lognormal(math.log(cal.ROLL_MEDIAN[phase]), sigma[phase])), *roll_bounds[phase])
        )
        roll = max(roll, 2 * len(variant.years))
        fsm_mean = 0.42 if phase == "Special" else cal.FSM_SHARE
        academy = type_group in ("Academies", "Free Schools")
        trust_code, trust_name = trusts[int(rng.integers(0, len(trusts)))] if academy else ("", "")
        opened = (
            dt.date(int(rng.integers(2011, academic_year + 1)), 9, 1)
            if academy
            else dt.date(int(rng.integers(1950, 2000)), 1, 1)
        )
        place = _PLACES[int(rng.integers(0, len(_PLACES)))]
        status = "Open, but proposed to close" if rng.random() < 0.005 else "Open"
        specs.append(
            SchoolSpec(
                urn=str(int(urns[i])),
                laestab=f"{la}{number:04d}",
                la_code=la,
                establishment_number=number,
                name=f"{place} {variant.kind}",
                attendance_phase=phase,
                gias_phase=variant.gias_phase,
                type_name=type_name,
                type_group=type_group,
                year_groups=variant.years,
                year_weights=variant.weights,
                roll=roll,
                absence_factor=float(rng.lognormal(-(0.25**2) / 2, 0.25)),
                fsm_rate=float(rng.beta(fsm_mean * 8, (1 - fsm_mean) * 8)),
                reports_child_in_need=bool(rng.random() < 0.6),
                trust_code=trust_code,
                trust_name=trust_name,
                status=status,
                open_date=_date_text(opened),
            )
        )
    extras = _extra_rows(
        rng, [str(int(u)) for u in urns[schools:]], la_codes, la_p, establishment_number, academic_year, las
    )
    return specs, extras


def _extra_rows(rng, urns, la_codes, la_p, establishment_number, academic_year, las) -> list[dict[str, str]]:
    """Out-of-scope and closed establishments: the register holds more than the schools that send data."""
    closed_on = _date_text(dt.date(academic_year, 8, 31))
    templates = [
        (
            "Other independent school",
            "Independent schools",
            "All-through",
            "independent",
            "Open",
            "",
            "College",
        ),
        (
            "Pupil referral unit",
            "Local authority maintained schools",
            "Not applicable",
            "pru",
            "Open",
            "",
            "Pupil Referral Unit",
        ),
        (
            "LA nursery school",
            "Local authority maintained schools",
            "Nursery",
            "nursery",
            "Open",
            "",
            "Nursery School",
        ),
        (
            "Community school",
            "Local authority maintained schools",
            "Primary",
            "Primary",
            "Closed",
            closed_on,
            "Primary School",
        ),
        (
            "Non-maintained special school",
            "Special schools",
            "Not applicable",
            "Special",
            "Open",
            "",
            "School for the Deaf",
        ),
        ("Further education", "Colleges", "16 plus", "", "Open", "", "College of Further Education"),
        ("Welsh establishment", "Welsh schools", "Primary", "Primary", "Open", "", "Ysgol Gynradd"),
        (
            "Academy alternative provision converter",
            "Academies",
            "Not applicable",
            "pru",
            "Open",
            "",
            "Alternative Provision Academy",
        ),
        ("Academy converter", "Academies", "Secondary", "Secondary", "Closed", closed_on, "Academy"),
    ]
    rows = []
    for i, urn in enumerate(urns):
        type_name, group, gias_phase, kind, status, close, word = templates[i % len(templates)]
        if type_name == "Welsh establishment":
            la, la_name = "681", "Cardiff"  # outside England: not one of the 153 English LAs
        elif type_name == "Community school" and i % 2 == 1 and "909" not in las:
            la, la_name = "909", "Cumbria"  # a school closed before its LA was abolished (2023)
        else:
            la = la_codes[int(rng.choice(len(la_codes), p=la_p))]
            la_name = las[la].la_name
        number = "" if not kind else str(establishment_number(la, kind))
        place = _PLACES[int(rng.integers(0, len(_PLACES)))]
        rows.append(
            {
                "URN": urn,
                "LA (code)": la,
                "LA (name)": la_name,
                "EstablishmentNumber": number,
                "EstablishmentName": f"{place} {word}",
                "TypeOfEstablishment (name)": type_name,
                "EstablishmentTypeGroup (name)": group,
                "EstablishmentStatus (name)": status,
                "PhaseOfEducation (name)": gias_phase,
                "OpenDate": _date_text(dt.date(1990 + i % 30, 9, 1)),
                "CloseDate": close,
                "NumberOfPupils": str(int(rng.integers(20, 600))),
            }
        )
    return rows


_STATUS_CODE = {"Open": "1", "Closed": "2", "Open, but proposed to close": "3", "Proposed to open": "4"}
_PHASE_CODE = {
    "Not applicable": "0",
    "Nursery": "1",
    "Primary": "2",
    "Middle deemed primary": "3",
    "Secondary": "4",
    "Middle deemed secondary": "5",
    "16 plus": "6",
    "All-through": "7",
}
REGISTER_COLUMNS: tuple[str, ...] = (
    "URN",
    "LA (code)",
    "LA (name)",
    "EstablishmentNumber",
    "EstablishmentName",
    "TypeOfEstablishment (name)",
    "EstablishmentTypeGroup (name)",
    "EstablishmentStatus (code)",
    "EstablishmentStatus (name)",
    "OpenDate",
    "CloseDate",
    "PhaseOfEducation (code)",
    "PhaseOfEducation (name)",
    "StatutoryLowAge",
    "StatutoryHighAge",
    "Gender (name)",
    "NumberOfPupils",
    "Trusts (code)",
    "Trusts (name)",
    "Street",
    "Town",
    "Postcode",
    "GOR (name)",
)


def _spec_row(spec: SchoolSpec) -> dict[str, str]:
    la = local_authorities()[spec.la_code]
    return {
        "URN": spec.urn,
        "LA (code)": spec.la_code,
        "LA (name)": la.la_name,
        "EstablishmentNumber": str(spec.establishment_number),
        "EstablishmentName": spec.name,
        "TypeOfEstablishment (name)": spec.type_name,
        "EstablishmentTypeGroup (name)": spec.type_group,
        "EstablishmentStatus (name)": spec.status,
        "PhaseOfEducation (name)": spec.gias_phase,
        "OpenDate": spec.open_date,
        "CloseDate": "",
        "NumberOfPupils": str(spec.roll),
        "StatutoryLowAge": str(_YEAR_OFFSET[spec.year_groups[0]] + 4),
        "StatutoryHighAge": str(_YEAR_OFFSET[spec.year_groups[-1]] + 5),
        "Trusts (code)": spec.trust_code,
        "Trusts (name)": spec.trust_name,
        "GOR (name)": la.region_name,
    }


def write_register_csv(path: Path, specs: Sequence[SchoolSpec], extras: Sequence[dict[str, str]]) -> None:
    """GIAS-format CSV, Windows-1252 and CRLF line ends as GIAS publishes it."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="cp1252", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=REGISTER_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for n, row in enumerate([*(_spec_row(s) for s in specs), *extras]):
            row = dict(row)
            row["EstablishmentStatus (code)"] = _STATUS_CODE[row["EstablishmentStatus (name)"]]
            row["PhaseOfEducation (code)"] = _PHASE_CODE[row["PhaseOfEducation (name)"]]
            row.setdefault("Gender (name)", "Mixed")
            row["Street"] = (
                f"{1 + n % 120} {('School Lane', 'Church Road', 'High Street', 'Park Avenue')[n % 4]}"
            )
            row["Town"] = row["LA (name)"].split(",")[0]
            row["Postcode"] = (
                f"{'ABCDEFGHKLMNPRSTW'[n % 17]}{'ABCDEFGHKLMNPRSTW'[n // 17 % 17]}{1 + n % 29} "
                f"{n % 10}{'ABDEFGHJLNPQRSTUWXYZ'[n % 20]}{'ABDEFGHJLNPQRSTUWXYZ'[n // 20 % 20]}"
            )
            writer.writerow(row)


# --- rosters ------------------------------------------------------------------------------------------------


@dataclass
class Roster:
    """One school's pupils as columns, plus each pupil's JSON up to its ``sessions`` list."""

    urn: str
    n: int
    year_group: list[str]
    year_group_local: np.ndarray  # index into the school's year groups (for year-group-wide events)
    year_group_count: int
    work_experience_year: np.ndarray  # bool per school year group: Y10 or Y12
    reception: np.ndarray
    day_absence_prob: np.ndarray
    off_site: np.ndarray
    la_provision: np.ndarray
    dual: np.ndarray
    columns: PupilColumns  # the JSON text of each field, for rebuilding a pupil (faults)
    prefix: np.ndarray  # object array of bytes: '{"upn":...,"sessions":['


@dataclass
class PupilColumns:
    """Each pupil field as JSON-ready text, one list per field (strings quoted by the template)."""

    upn: list[str]
    forename: list[str]
    surname: list[str]
    date_of_birth: list[str]
    sex: list[str]
    nc_year_group: list[str]
    ethnicity: list[str]  # already JSON: '"WBRI"' or 'null'
    fsm_eligible: list[str]  # 'true' / 'false'
    sen_provision: list[str]
    looked_after: list[str]
    child_in_need: list[str]  # 'true' / 'false' / 'null'
    child_protection_plan: list[str]
    admission_date: list[str]

    def row(self, i: int) -> dict[str, str]:
        return {name: getattr(self, name)[i] for name in self.__dataclass_fields__}


def _pupil_prefixes(c: PupilColumns) -> list[bytes]:
    """Each pupil's JSON object up to and including ``"sessions":[`` (extra fields: forename, surname)."""
    return [
        f'{{"upn":"{upn}","forename":"{fn}","surname":"{sn}","date_of_birth":"{dob}","sex":"{sex}",'
        f'"nc_year_group":"{yg}","ethnicity":{eth},"fsm_eligible":{fsm},"sen_provision":"{sen}",'
        f'"looked_after":{lac},"child_in_need":{cin},"child_protection_plan":{cpp},"admission_date":"{adm}",'
        f'"leaving_date":null,"sessions":['.encode()
        for upn, fn, sn, dob, sex, yg, eth, fsm, sen, lac, cin, cpp, adm in zip(
            c.upn,
            c.forename,
            c.surname,
            c.date_of_birth,
            c.sex,
            c.nc_year_group,
            c.ethnicity,
            c.fsm_eligible,
            c.sen_provision,
            c.looked_after,
            c.child_in_need,
            c.child_protection_plan,
            c.admission_date,
            strict=True,
        )
    ]


def _pupil_prefix(row: dict[str, str]) -> bytes:
    return _pupil_prefixes(PupilColumns(**{k: [v] for k, v in row.items()}))[0]


def _check_letters(body: np.ndarray) -> np.ndarray:
    """Vectorised UPN check letter (schemas.upn.check_letter) for an (n, 12) array of character values."""
    weights = np.arange(2, 14)
    return np.array(list(ALPHABET))[(body * weights).sum(axis=1) % 23]


def make_upns(
    la_code: int, establishment: int, admission_year: np.ndarray, temporary: np.ndarray
) -> list[str]:
    """Unique UPNs for one school: LA + establishment + admission year + a serial within that year."""
    n = len(admission_year)
    yy = admission_year % 100
    order = np.lexsort((np.arange(n), yy))
    rank = np.empty(n, dtype=np.int64)
    sorted_yy = yy[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_yy)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank[order] = np.arange(n) - group_start
    yy = np.where(rank >= 1000, (yy + 50) % 100, yy)  # never in practice: < 1,000 admissions a year
    serial = rank % 1000
    body = np.zeros((n, 12), dtype=np.int64)
    for pos, value in (
        (0, la_code // 100),
        (1, la_code // 10 % 10),
        (2, la_code % 10),
        (3, establishment // 1000),
        (4, establishment // 100 % 10),
        (5, establishment // 10 % 10),
        (6, establishment % 10),
    ):
        body[:, pos] = value
    body[:, 7], body[:, 8] = yy // 10, yy % 10
    # Permanent: a 3-digit serial. Temporary: 2 digits and a letter (as schemas.upn.make_upn), never equal
    # to a permanent UPN because the last character is a letter.
    body[:, 9] = np.where(temporary, serial // 23 % 100 // 10, serial // 100)
    body[:, 10] = np.where(temporary, serial // 23 % 10, serial // 10 % 10)
    body[:, 11] = np.where(temporary, serial % 23, serial % 10)  # a letter's value is its ALPHABET index
    letters = _check_letters(body).tolist()
    last = np.where(temporary, np.array(list(ALPHABET))[body[:, 11] % 23], body[:, 11].astype(str)).tolist()
    head = f"{la_code:03d}{establishment:04d}"
    middle = (yy * 100 + body[:, 9] * 10 + body[:, 10]).tolist()  # year (2 digits) and serial's first two
    return [f"{c}{head}{m:04d}{e}" for c, m, e in zip(letters, middle, last, strict=True)]


def build_roster(spec: SchoolSpec, *, seed: int, academic_year: int, as_of: dt.date) -> Roster:
    """The school's pupils, drawn from (seed, urn). ``academic_year`` is the year the autumn term starts."""
    rng = np.random.default_rng([seed, int(spec.urn), _SEED_ROSTER])
    weights = np.array(spec.year_weights, dtype=float)
    per_year = rng.multinomial(spec.roll, weights / weights.sum())
    year_local = np.repeat(np.arange(len(spec.year_groups)), per_year)
    n = len(year_local)
    labels = np.array(spec.year_groups)[year_local]
    offset = np.array([_YEAR_OFFSET[y] for y in spec.year_groups])[year_local]
    age = offset + 4  # age at 31 August
    sept_first = np.array([dt.date(academic_year - int(a) - 1, 9, 1).toordinal() for a in range(-2, 20)])
    birth = sept_first[age + 2] + rng.integers(0, 365, n)
    special = spec.attendance_phase == "Special"
    female = rng.random(n) < (0.30 if special else 0.49)
    sen_draw = rng.random(n)
    if special:
        sen = np.where(sen_draw < 0.97, "E", "K")
    else:
        ehc_mainstream, support = 0.034, cal.SEN_SUPPORT_SHARE + 0.002
        sen = np.where(
            sen_draw < ehc_mainstream, "E", np.where(sen_draw < ehc_mainstream + support, "K", "N")
        )
    fsm = rng.random(n) < spec.fsm_rate
    looked_after = rng.random(n) < (0.02 if special else cal.LOOKED_AFTER_SHARE)
    eth_draw = rng.random(n)
    ethnicity = np.array(_ETHNICITY_CODES)[np.minimum(np.searchsorted(_ETHNICITY_CUM, eth_draw), 19)]
    eth_missing = rng.random(n) < 0.005
    cin = rng.random(n) < 0.03
    cpp = cin & (rng.random(n) < 0.3)
    # Admission: most at the start of the school's entry year group; some joined mid-phase.
    entry_offset = _YEAR_OFFSET[spec.year_groups[0]]
    years_in_school = offset - entry_offset
    admitted = np.array([dt.date(academic_year - int(y), 9, 1).toordinal() for y in range(0, 20)])[
        years_in_school
    ]
    movers = rng.random(n) < 0.12
    mover_day = admitted + (rng.random(n) * np.maximum(as_of.toordinal() - admitted, 0)).astype(np.int64)
    admission = np.where(movers, mover_day, admitted)
    admission = np.minimum(admission, as_of.toordinal())
    admission_year = (_EPOCH + (admission - 1)).astype("datetime64[Y]").astype(np.int64) + 1970
    temporary = rng.random(n) < 0.005
    upns = make_upns(int(spec.la_code), spec.establishment_number, admission_year, temporary)
    forename_pick = rng.integers(0, 10_000, n)
    surname_pick = rng.integers(0, len(_SURNAMES), n)
    # Absence propensity: skewed (gamma) around the phase rate, raised for FSM and SEN pupils.
    base = rng.gamma(_ABSENCE_SHAPE, 1 / _ABSENCE_SHAPE, n)
    multiplier = np.where(fsm, _FSM_FACTOR, 1.0) * np.select([sen == "K", sen == "E"], [1.3, 1.4], 1.0)
    if spec.attendance_phase == "Secondary":
        multiplier = (
            multiplier * np.array([_SECONDARY_YEAR_FACTOR.get(y, 1.0) for y in spec.year_groups])[year_local]
        )
    theta = cal.PHASE_ABSENCE_RATE[spec.attendance_phase] * spec.absence_factor * base * multiplier
    theta = np.minimum(theta * _CLIP_CORRECTION / _MULTIPLIER_MEAN[spec.attendance_phase], 0.9)
    years = list(spec.year_groups)
    names = np.array(_FORENAMES_F + _FORENAMES_M)[forename_pick % 22 + np.where(female, 0, 22)]
    json_bool = np.array(["false", "true"])
    if spec.reports_child_in_need:
        cin_text, cpp_text = json_bool[cin.astype(int)].tolist(), json_bool[cpp.astype(int)].tolist()
    else:
        cin_text = cpp_text = ["null"] * n
    columns = PupilColumns(
        upn=upns,
        forename=names.tolist(),
        surname=np.array(_SURNAMES)[surname_pick].tolist(),
        date_of_birth=_iso_dates(birth),
        sex=np.where(female, "F", "M").tolist(),
        nc_year_group=labels.tolist(),
        ethnicity=np.where(eth_missing, "null", np.char.add(np.char.add('"', ethnicity), '"')).tolist(),
        fsm_eligible=json_bool[fsm.astype(int)].tolist(),
        sen_provision=sen.tolist(),
        looked_after=json_bool[looked_after.astype(int)].tolist(),
        child_in_need=cin_text,
        child_protection_plan=cpp_text,
        admission_date=_iso_dates(admission),
    )
    prefix = np.empty(n, dtype=object)
    prefix[:] = _pupil_prefixes(columns)
    return Roster(
        urn=spec.urn,
        n=n,
        year_group=labels.tolist(),
        year_group_local=year_local,
        year_group_count=len(years),
        work_experience_year=np.array([y in ("10", "12") for y in years]),
        reception=labels == "R",
        day_absence_prob=np.minimum(theta * _DAY_FACTOR, 1.0),
        off_site=rng.random(n) < _OFF_SITE_PUPILS,
        la_provision=rng.random(n) < _LA_PROVISION_PUPILS,
        dual=rng.random(n) < _DUAL_PUPILS,
        columns=columns,
        prefix=prefix,
    )


_ISO_DATES: dict[int, str] = {}
_EPOCH = np.datetime64("0001-01-01", "D")  # proleptic ordinal 1


def _iso_dates(ordinals: np.ndarray) -> list[str]:
    cache = _ISO_DATES
    result = []
    for o in ordinals.tolist():
        text = cache.get(o)
        if text is None:
            text = cache[o] = dt.date.fromordinal(o).isoformat()
        result.append(text)
    return result


#: Shape of the gamma distribution of pupils' absence propensity (mean 1): tuned so that ~19% of pupils miss
#: >= 10% of a term's sessions (ingest/calibration.py simulate_term; test_generate pins it).
_ABSENCE_SHAPE = 0.25
#: Makes up for the propensities cut at 0.9 (a heavy tail): keeps the mean at the phase rate.
_CLIP_CORRECTION = 1.035
_FSM_FACTOR = 1.9
_SECONDARY_YEAR_FACTOR = {"7": 0.8, "8": 0.93, "9": 1.05, "10": 1.1, "11": 1.12, "12": 1.0, "13": 1.0}


def _multiplier_mean(fsm: float, support: float, ehc: float) -> float:
    return (1 + fsm * (_FSM_FACTOR - 1)) * (1 + support * 0.3 + ehc * 0.4)


_MULTIPLIER_MEAN = {
    "Primary": _multiplier_mean(cal.FSM_SHARE, cal.SEN_SUPPORT_SHARE + 0.002, 0.034),
    "Secondary": _multiplier_mean(cal.FSM_SHARE, cal.SEN_SUPPORT_SHARE + 0.002, 0.034),
    "Special": _multiplier_mean(0.42, 0.03, 0.97),
}


# --- marks --------------------------------------------------------------------------------------------------


@dataclass
class DayMarks:
    """One school-day's marks: final code, first-sent code and re-send offset, each shaped (2, n) (AM, PM)."""

    final: np.ndarray
    initial: np.ndarray
    offset: np.ndarray  # 0: never changed; k: changed, re-sent k school days later


def amendment_probabilities(amendment_rate: float) -> np.ndarray:
    """P(a mark is later changed) by its final code, so that ``amendment_rate`` of all marks change.

    Most changes resolve an absence first recorded as N ("no reason yet"); the rest correct a pupil first
    marked absent who was present (DfE: a day's absence rate falls ~1 pp as registers are amended).
    """
    absent_share = cal.NATIONAL_ABSENCE_RATE
    p_absent = min(0.9, 0.8 * amendment_rate / absent_share)
    p_present = max(0.0, (amendment_rate - p_absent * absent_share) / (1 - absent_share))
    p = np.zeros(len(CODES))
    p[CODE_IS_AUTHORISED | CODE_IS_UNAUTHORISED] = p_absent
    p[CODE_IS_PRESENT | CODE_IS_AEA] = min(p_present, 1.0)
    p[_N] = 0.0
    return p


def day_marks(
    roster: Roster, day: dt.date, *, seed: int, amendment_rate: float, amend_p: np.ndarray | None = None
) -> DayMarks:
    """Every pupil's AM and PM mark for ``day``: a pure function of (seed, urn, day)."""
    n = roster.n
    rng = np.random.default_rng([seed, int(roster.urn), day.toordinal(), _SEED_DAY])
    u = rng.random((20, n))
    events = rng.random((2, roster.year_group_count))
    absent_day = u[0] < roster.day_absence_prob * _WEEKDAY_FACTOR[day.weekday()]
    reason = np.minimum(np.searchsorted(_REASON_DAY_CUM, u[1], side="right"), len(REASON_CODES) - 1)
    is_u = reason == _U_REASON
    half = (u[2] < _HALF_DAY[reason]) | is_u
    am_only = (u[3] < 0.5) | is_u
    absent_am = absent_day & (~half | am_only)
    absent_pm = absent_day & (~half | ~am_only)
    reason_code = _REASON_CODE_IDX[reason]
    am = np.where(absent_am, reason_code, np.where(u[4] < _LATE_AM, _LATE, _PRESENT_AM)).astype(np.uint8)
    pm = np.where(absent_pm, reason_code, np.where(u[5] < _LATE_PM, _LATE, _PRESENT_PM)).astype(np.uint8)
    present_am, present_pm = ~absent_am, ~absent_pm
    # Approved educational activity replaces a present mark.
    trip = (events[0] < _TRIP_DAY)[roster.year_group_local]
    work = ((events[1] < _WORK_EXPERIENCE_DAY) & roster.work_experience_year)[roster.year_group_local]
    for marks, present, row in ((am, present_am, 6), (pm, present_pm, 7)):
        marks[present & (u[row] < _SPORT_SESSION)] = CODE_INDEX["P"]
        marks[present & work] = CODE_INDEX["W"]
        marks[present & trip] = CODE_INDEX["V"]
        marks[roster.off_site & (u[row + 2] < _OFF_SITE_SESSIONS) & present] = CODE_INDEX["B"]
        marks[roster.la_provision] = CODE_INDEX["K"]
        # Not possible sessions: management codes replace whatever the pupil would have had.
        marks[roster.reception & (u[row + 4] < _X_RECEPTION_SESSION)] = CODE_INDEX["X"]
        marks[u[row + 6] < _Y1_SESSION] = CODE_INDEX["Y1"]
        marks[(u[row + 6] >= _Y1_SESSION) & (u[row + 6] < _Y1_SESSION + _Y7_SESSION)] = CODE_INDEX["Y7"]
    dual_day = roster.dual & (u[12] < _DUAL_DAYS)
    am[dual_day] = CODE_INDEX["D"]
    pm[dual_day] = CODE_INDEX["D"]
    final = np.stack([am, pm])
    if amend_p is None:
        amend_p = amendment_probabilities(amendment_rate)
    amended = u[13:15] < amend_p[final]
    offset = np.where(amended, 1 + np.searchsorted(_OFFSET_CUM, u[15:17], side="right").clip(0, 6), 0)
    present_code = np.array([[_PRESENT_AM], [_PRESENT_PM]], dtype=np.uint8)
    first = np.where((final == _LATE) & (u[17:19] < 0.5), present_code, _N).astype(np.uint8)
    initial = np.where(amended, first, final).astype(np.uint8)
    return DayMarks(final=final, initial=initial, offset=offset.astype(np.uint8))


def school_days_from(start: dt.date, days: int) -> list[dt.date]:
    """``days`` weekdays from ``start`` (a weekend start moves to the Monday)."""
    result: list[dt.date] = []
    day = start
    while len(result) < days:
        if day.weekday() < 5:
            result.append(day)
        day += dt.timedelta(days=1)
    return result


def most_recent_weekday(today: dt.date | None = None) -> dt.date:
    day = today or dt.date.today()
    while day.weekday() >= 5:
        day -= dt.timedelta(days=1)
    return day


def academic_year_of(day: dt.date) -> int:
    return day.year if day.month >= 9 else day.year - 1


# --- extracts -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunParams:
    out_dir: str
    seed: int
    school_days: tuple[dt.date, ...]
    academic_year: int
    fault_rate: float
    fault_kinds: tuple[str, ...]
    amendment_rate: float
    compress: bool


@dataclass
class _Stats:
    extracts: int = 0
    pupils: int = 0
    marks: int = 0
    amendments: int = 0
    bytes: int = 0
    faults: Counter = field(default_factory=Counter)

    def add(self, other: _Stats) -> None:
        self.extracts += other.extracts
        self.pupils += other.pupils
        self.marks += other.marks
        self.amendments += other.amendments
        self.bytes += other.bytes
        self.faults.update(other.faults)


def _mark_json(date_text: str, session: str, code_json: bytes) -> bytes:
    return (
        b'{"date":"'
        + date_text.encode()
        + b'","session":"'
        + session.encode()
        + b'","code":'
        + code_json
        + b"}"
    )


def extract_id(seed: int, urn: str, day: dt.date) -> str:
    return str(uuid.uuid5(_EXTRACT_NAMESPACE, f"{seed}/{urn}/{day.isoformat()}"))


def _generated_at(rng: np.random.Generator, day: dt.date) -> str:
    moment = dt.datetime(day.year, day.month, day.day, 17, 30, tzinfo=dt.UTC) + dt.timedelta(
        seconds=int(rng.integers(0, 5400))
    )
    return moment.isoformat()


class _SchoolWriter:
    """Writes one school's extract for each day of the run."""

    def __init__(self, spec: SchoolSpec, params: RunParams):
        self.spec = spec
        self.params = params
        self.roster = build_roster(
            spec, seed=params.seed, academic_year=params.academic_year, as_of=params.school_days[0]
        )
        self.amend_p = amendment_probabilities(params.amendment_rate)
        self.cache: dict[int, DayMarks] = {}

    def marks(self, index: int) -> DayMarks:
        if index not in self.cache:
            self.cache[index] = day_marks(
                self.roster,
                self.params.school_days[index],
                seed=self.params.seed,
                amendment_rate=self.params.amendment_rate,
                amend_p=self.amend_p,
            )
            for old in [k for k in self.cache if k < index - AMENDMENT_WINDOW]:
                del self.cache[old]
        return self.cache[index]

    def write_day(self, index: int) -> tuple[_Stats, list[dict]]:
        params, roster, spec = self.params, self.roster, self.spec
        day = params.school_days[index]
        day_text = day.isoformat()
        today = self.marks(index)
        am = np.where(today.offset[0] > 0, today.initial[0], today.final[0])
        pm = np.where(today.offset[1] > 0, today.initial[1], today.final[1])
        # Today's two marks per pupil, as bytes chosen per distinct (AM, PM) pair.
        pair = am.astype(np.int64) * len(CODES) + pm
        distinct, inverse = np.unique(pair, return_inverse=True)
        today_json = [
            _mark_json(day_text, "AM", _CODE_JSON[p // len(CODES)])
            + b","
            + _mark_json(day_text, "PM", _CODE_JSON[p % len(CODES)])
            for p in distinct.tolist()
        ]
        closing = np.empty(len(distinct), dtype=object)
        closing[:] = [t + b"]}" for t in today_json]
        pupils = roster.prefix + closing[inverse] if roster.n else np.empty(0, dtype=object)
        # Amendments: marks of the previous school days whose change is due today.
        extra: dict[int, list[tuple[str, str, int]]] = {}
        amendments = 0
        for k in range(AMENDMENT_WINDOW, 0, -1):
            if index - k < 0:
                continue
            earlier = self.marks(index - k)
            earlier_text = params.school_days[index - k].isoformat()
            for s, session in enumerate(("AM", "PM")):
                for i in np.flatnonzero(earlier.offset[s] == k).tolist():
                    extra.setdefault(i, []).append((earlier_text, session, int(earlier.final[s][i])))
                    amendments += 1
        pupil_list = pupils.tolist()
        for i, changes in extra.items():
            pupil_list[i] = (
                roster.prefix[i]
                + today_json[inverse[i]]
                + b"".join(b"," + _mark_json(d, s, _CODE_JSON[c]) for d, s, c in changes)
                + b"]}"
            )
        rng = np.random.default_rng([params.seed, int(spec.urn), day.toordinal(), _SEED_EXTRACT])
        header = {
            "schema_version": "1",
            "extract_id": extract_id(params.seed, spec.urn, day),
            "urn": spec.urn,
            "laestab": spec.laestab,
            "extract_date": day_text,
            "generated_at": _generated_at(rng, day),
            "pupil_count": roster.n,
        }
        file_urn = spec.urn
        faults: list[dict] = []
        marks_count = 2 * roster.n + amendments
        malformed = False
        fault_rng = np.random.default_rng([params.seed, int(spec.urn), day.toordinal(), _SEED_FAULT])
        if params.fault_kinds and fault_rng.random() < params.fault_rate:
            kind = params.fault_kinds[int(fault_rng.integers(0, len(params.fault_kinds)))]
            record, marks_delta = _inject(kind, fault_rng, header, pupil_list, roster, extra, am, pm, day)
            marks_count += marks_delta
            file_urn = header["urn"]
            malformed = kind == "malformed_json"
            faults.append(record)
        body = orjson.dumps(header)[:-1] + b',"pupils":[' + b",".join(pupil_list) + b"]}"
        if malformed:
            body = body[: max(10, len(body) * 3 // 5)]  # cut off mid-stream
        suffix = ".json.gz" if params.compress else ".json"
        relative = f"extracts/{day_text}/{file_urn}{suffix}"
        if params.compress:
            packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip container, mtime 0: same bytes every run
            body = packer.compress(body) + packer.flush()
        (Path(params.out_dir) / relative).write_bytes(body)
        for record in faults:
            record["file"] = relative
        stats = _Stats(
            extracts=1,
            pupils=0 if malformed else len(pupil_list),
            marks=0 if malformed else marks_count,
            amendments=0 if malformed else amendments,
            bytes=len(body),
            faults=Counter(r["kind"] for r in faults),
        )
        return stats, faults


def _inject(
    kind: str,
    rng: np.random.Generator,
    header: dict,
    pupils: list[bytes],
    roster: Roster,
    extra: dict[int, list[tuple[str, str, int]]],
    am: np.ndarray,
    pm: np.ndarray,
    day: dt.date,
) -> tuple[dict, int]:
    """Apply one fault to an extract in place; returns its faults.jsonl record and the change in mark count.

    Positions in the record are 0-based: ``pupil_positions`` in the file's ``pupils`` list,
    ``mark_positions`` in that pupil's ``sessions`` list.
    """
    n = len(pupils)
    day_text = day.isoformat()
    record: dict = {"kind": kind, "count": 1, "urn": header["urn"], "extract_date": day_text}

    def marks_of(p: int) -> list[bytes]:
        return [
            _mark_json(day_text, "AM", _CODE_JSON[am[p]]),
            _mark_json(day_text, "PM", _CODE_JSON[pm[p]]),
            *(_mark_json(d, s, _CODE_JSON[c]) for d, s, c in extra.get(p, [])),
        ]

    def rebuild(p: int, fields: dict[str, str] | None = None, marks: Sequence[bytes] | None = None) -> None:
        prefix = _pupil_prefix(fields) if fields is not None else roster.prefix[p]
        pupils[p] = prefix + b",".join(marks if marks is not None else marks_of(p)) + b"]}"

    if kind == "unknown_urn":
        record["school_urn"] = header["urn"]
        header["urn"] = "9" + header["urn"][1:]  # register URNs are 1xxxxx: a 9xxxxx URN is never in it
        record["urn"] = header["urn"]
        return record, 0
    if kind == "malformed_json":
        return record, 0
    if kind == "missing_chunk":
        missing = min(n - 1, max(1, n // 3)) if n > 1 else 0
        del pupils[n - missing :]
        record["count"] = missing
        record["pupils_sent"] = n - missing
        return record, -sum(2 + len(extra.get(p, [])) for p in range(n - missing, n))
    if kind == "duplicate_upn" and n < 2:
        kind = record["kind"] = "bad_year_group"
    i = int(rng.integers(0, n))
    record["pupil_positions"] = [i]
    fields = roster.columns.row(i)
    if kind == "invalid_code":
        marks = marks_of(i)
        bad = ("ZZ", "A", "9", "H1")[int(rng.integers(0, 4))]
        marks[0] = _mark_json(day_text, "AM", orjson.dumps(bad))
        rebuild(i, marks=marks)
        record["mark_positions"] = [0]
        return record, 0
    if kind == "bad_check_letter":
        upn = fields["upn"]
        wrong = ALPHABET[(ALPHABET.index(upn[0]) + 1 + int(rng.integers(0, 21))) % 23]
        fields["upn"] = wrong + upn[1:]
        rebuild(i, fields=fields)
        return record, 0
    if kind == "duplicate_session":
        other = CODE_INDEX["O"] if int(am[i]) != CODE_INDEX["O"] else _PRESENT_AM
        marks = [*marks_of(i), _mark_json(day_text, "AM", _CODE_JSON[other])]
        rebuild(i, marks=marks)
        record["mark_positions"] = [0, len(marks) - 1]
        return record, 1
    if kind in ("out_of_window_date", "weekend_date"):
        if kind == "weekend_date":
            bad_day = day - dt.timedelta(days=day.weekday() + 2)  # the Saturday before the extract's week
        else:
            bad_day = school_days_from(day - dt.timedelta(days=30), 1)[0]  # ~21 school days earlier
        marks = [*marks_of(i), _mark_json(bad_day.isoformat(), "AM", _CODE_JSON[_PRESENT_AM])]
        rebuild(i, marks=marks)
        record["mark_positions"] = [len(marks) - 1]
        record["mark_date"] = bad_day.isoformat()
        return record, 1
    if kind == "bad_year_group":
        fields["nc_year_group"] = ("15", "Y7", "0", "Reception")[int(rng.integers(0, 4))]
        rebuild(i, fields=fields)
        return record, 0
    if kind == "duplicate_upn":
        j = (i + 1 + int(rng.integers(0, n - 1))) % n
        other_fields = roster.columns.row(j)
        other_fields["upn"] = fields["upn"]
        rebuild(j, fields=other_fields)
        record["pupil_positions"] = sorted([i, j])
        return record, 0
    if kind == "dob_implausible":
        born = dt.date.fromisoformat(fields["date_of_birth"])
        fields["date_of_birth"] = dt.date(
            born.year - 30, born.month, min(born.day, 28)
        ).isoformat()  # 30 y old
        rebuild(i, fields=fields)
        return record, 0
    raise ValueError(f"unknown fault kind {kind!r}")


def _run_task(task: tuple[Sequence[SchoolSpec], RunParams]) -> tuple[_Stats, list[dict], int]:
    specs, params = task
    stats = _Stats()
    faults: list[dict] = []
    for spec in specs:
        writer = _SchoolWriter(spec, params)
        for index in range(len(params.school_days)):
            day_stats, day_faults = writer.write_day(index)
            stats.add(day_stats)
            faults.extend(day_faults)
    return stats, faults, len(specs)


# --- the run ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerateSummary:
    out_dir: str
    schools: int  # schools that sent extracts
    register_rows: int  # establishments in the register file (incl. out-of-scope and closed)
    days: tuple[str, ...]
    extracts: int
    pupils: int  # pupil records written, summed over extracts
    marks: int  # marks written, incl. amendments and injected duplicates
    amendments: int
    faults: dict[str, int]  # extracts that got each fault kind
    bytes: int  # bytes of extract files on disk
    seconds: float

    def lines(self) -> list[str]:
        rate = self.marks / self.seconds if self.seconds else 0.0
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        return [
            f"wrote {self.extracts:,} extracts for {self.schools:,} schools over {len(self.days)} "
            f"school day(s) "
            f"({self.days[0]} to {self.days[-1]}) into {self.out_dir}",
            f"register: {self.register_rows:,} establishments in register/edubasealldata.csv",
            f"{self.pupils:,} pupil records, {self.marks:,} marks ({self.amendments:,} amendments), "
            f"{self.bytes / 1e6:,.1f} MB",
            f"faults: {faults}",
            f"{self.seconds:,.1f} s ({rate:,.0f} marks/s)",
        ]


_MANIFEST = "generate.json"


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserFacingError(f"{out_dir} is a file; --out must be a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / _MANIFEST).is_file():
            raise UserFacingError(
                f"{out_dir} is not empty and was not written by `attendance generate`; "
                "choose an empty or new directory"
            )
        for name in ("extracts", "register"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in ("faults.jsonl", _MANIFEST):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def _chunks(items: Sequence[SchoolSpec], size: int) -> Iterable[Sequence[SchoolSpec]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def generate(
    out_dir: Path,
    *,
    schools: int,
    start_date: dt.date,
    days: int,
    seed: int = 1,
    fault_rate: float = 0.0,
    fault_kinds: tuple[str, ...] = ALL_FAULT_KINDS,
    amendment_rate: float = 0.05,
    workers: int = 1,
    compress: bool = True,
    progress: bool = False,
) -> GenerateSummary:
    """Write a register and ``days`` school days of extracts for ``schools`` schools into ``out_dir``."""
    started = time.perf_counter()
    if days < 1:
        raise UserFacingError("--days must be at least 1")
    if not 0.0 <= fault_rate <= 1.0:
        raise UserFacingError("--fault-rate must be between 0 and 1")
    if not 0.0 <= amendment_rate <= 1.0:
        raise UserFacingError("--amendment-rate must be between 0 and 1")
    unknown = [k for k in fault_kinds if k not in ALL_FAULT_KINDS]
    if unknown:
        raise UserFacingError(
            f"unknown fault kind(s): {', '.join(unknown)}; known: {', '.join(ALL_FAULT_KINDS)}"
        )
    if fault_rate > 0 and not fault_kinds:
        raise UserFacingError("--fault-rate is above 0 but no fault kinds were chosen")
    if workers < 1:
        raise UserFacingError("--workers must be at least 1")
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir)
    school_days = tuple(school_days_from(start_date, days))
    academic_year = academic_year_of(school_days[0])
    specs, extras = build_register(schools, seed=seed, academic_year=academic_year)
    write_register_csv(out_dir / "register" / "edubasealldata.csv", specs, extras)
    for day in school_days:
        (out_dir / "extracts" / day.isoformat()).mkdir(parents=True, exist_ok=True)
    params = RunParams(
        out_dir=str(out_dir),
        seed=seed,
        school_days=school_days,
        academic_year=academic_year,
        fault_rate=fault_rate,
        fault_kinds=tuple(fault_kinds),
        amendment_rate=amendment_rate,
        compress=compress,
    )
    stats = _Stats()
    faults: list[dict] = []
    from tqdm import tqdm

    bar = tqdm(total=len(specs), unit="school", disable=not progress, file=sys.stderr)
    if workers == 1:
        for chunk in _chunks(specs, 16):
            chunk_stats, chunk_faults, done = _run_task((chunk, params))
            stats.add(chunk_stats)
            faults.extend(chunk_faults)
            bar.update(done)
    else:
        import multiprocessing

        size = max(1, min(64, math.ceil(len(specs) / (workers * 8))))
        tasks = [(chunk, params) for chunk in _chunks(specs, size)]
        # spawn, not fork: a forked deltalake/tokio runtime panics (shared/notes/stack.md).
        with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
            for chunk_stats, chunk_faults, done in pool.imap_unordered(_run_task, tasks):
                stats.add(chunk_stats)
                faults.extend(chunk_faults)
                bar.update(done)
    bar.close()
    faults.sort(key=lambda r: (r["file"], r["kind"]))
    with (out_dir / "faults.jsonl").open("wb") as handle:
        for record in faults:
            handle.write(orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n")
    summary = GenerateSummary(
        out_dir=str(out_dir),
        schools=len(specs),
        register_rows=len(specs) + len(extras),
        days=tuple(d.isoformat() for d in school_days),
        extracts=stats.extracts,
        pupils=stats.pupils,
        marks=stats.marks,
        amendments=stats.amendments,
        faults=dict(sorted(stats.faults.items())),
        bytes=stats.bytes,
        seconds=time.perf_counter() - started,
    )
    manifest = {
        "parameters": {
            "schools": schools,
            "start_date": school_days[0].isoformat(),
            "days": days,
            "seed": seed,
            "fault_rate": fault_rate,
            "fault_kinds": list(fault_kinds),
            "amendment_rate": amendment_rate,
            "compress": compress,
        },
        "summary": {k: v for k, v in asdict(summary).items() if k not in ("seconds", "out_dir")},
    }
    (out_dir / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return summary


# --- command line -------------------------------------------------------------------------------------------


def _parse_faults(_ctx, _param, value: str | None) -> tuple[str, ...]:
    if value is None or value.strip().lower() == "all":
        return ALL_FAULT_KINDS
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    unknown = [k for k in kinds if k not in ALL_FAULT_KINDS]
    if unknown:
        raise click.BadParameter(
            f"unknown fault kind(s) {', '.join(unknown)}; known: {', '.join(ALL_FAULT_KINDS)}"
        )
    return kinds


@click.command("generate")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write into (new, empty, or an earlier `generate` output, which is replaced).",
)
@click.option(
    "--schools",
    default=100,
    show_default=True,
    type=click.IntRange(1, 60_000),
    help="Schools that send extracts (England: about 21,300).",
)
@click.option(
    "--start-date",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="First school day, YYYY-MM-DD  [default: the most recent weekday]",
)
@click.option(
    "--days",
    default=1,
    show_default=True,
    type=click.IntRange(1, 400),
    help="School days (weekdays) to generate.",
)
@click.option("--seed", default=1, show_default=True, type=int)
@click.option(
    "--fault-rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of extracts that get one injected fault.",
)
@click.option(
    "--faults",
    "fault_kinds",
    default=None,
    callback=_parse_faults,
    help="Comma-separated fault kinds to draw from  [default: all: " + ",".join(ALL_FAULT_KINDS) + "]",
)
@click.option(
    "--amendment-rate",
    default=0.05,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of marks changed and re-sent within the next 7 school days.",
)
@click.option(
    "--workers",
    default=max(1, min(4, os.cpu_count() or 1)),
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes.",
)
@click.option("--no-compress", is_flag=True, help="Write .json instead of .json.gz.")
def generate_command(
    out_dir: Path,
    schools: int,
    start_date: dt.datetime | None,
    days: int,
    seed: int,
    fault_rate: float,
    fault_kinds: tuple[str, ...],
    amendment_rate: float,
    workers: int,
    no_compress: bool,
) -> None:
    """Write synthetic MIS extracts and a GIAS school register (deterministic by --seed)."""
    start = start_date.date() if start_date else most_recent_weekday()
    summary = generate(
        out_dir,
        schools=schools,
        start_date=start,
        days=days,
        seed=seed,
        fault_rate=fault_rate,
        fault_kinds=fault_kinds,
        amendment_rate=amendment_rate,
        workers=workers,
        compress=not no_compress,
        progress=sys.stderr.isatty(),
    )
    for line in summary.lines():
        click.echo(line)


GENERATE_COMMANDS: list[click.Command] = [generate_command]
