"""The synthetic generator: determinism, contract, realism, amendments and fault injection."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from attendance.errors import UserFacingError
from ingest import calibration as cal
from ingest.generate import (
    ALL_FAULT_KINDS,
    build_register,
    generate,
    generate_command,
    make_upns,
)
from ingest.register import read_gias_csv
from schemas.codes import CODES_BY_MARK, Category
from schemas.contract import YEAR_GROUPS, ExtractFile
from schemas.upn import UPN_PATTERN, is_valid_upn, make_upn

MONDAY = dt.date(2026, 11, 16)
YEAR_OFFSET = {"N1": -2, "N2": -1, "R": 0, **{str(n): n for n in range(1, 15)}}


def read_extract(path: Path) -> dict:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return json.loads(raw)


def extract_files(out: Path) -> list[Path]:
    return sorted((out / "extracts").rglob("*.json*"))


def school_days_between(earlier: dt.date, later: dt.date) -> int:
    return int(np.busday_count(earlier, later))


def age_on_31_august(born: dt.date, academic_year: int) -> int:
    end = dt.date(academic_year, 8, 31)
    return end.year - born.year - ((end.month, end.day) < (born.month, born.day))


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """50 schools, one school week, no faults."""
    out = tmp_path_factory.mktemp("clean") / "out"
    summary = generate(out, schools=50, start_date=MONDAY, days=5, seed=5)
    return out, summary


@pytest.fixture(scope="module")
def clean_extracts(clean_run) -> dict[str, list[dict]]:
    out, _ = clean_run
    by_day: dict[str, list[dict]] = defaultdict(list)
    for path in extract_files(out):
        by_day[path.parent.name].append(read_extract(path))
    return by_day


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every extract gets one fault."""
    out = tmp_path_factory.mktemp("faulty") / "out"
    generate(out, schools=24, start_date=MONDAY, days=5, seed=9, fault_rate=1.0, compress=False)
    return out


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    kwargs = dict(schools=8, start_date=MONDAY, days=3, fault_rate=0.3)
    generate(tmp_path / "a", seed=3, **kwargs)
    generate(tmp_path / "b", seed=3, **kwargs)
    generate(tmp_path / "c", seed=4, **kwargs)
    a, b, c = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b"), tree_bytes(tmp_path / "c")
    assert len(a) > 8 * 3
    assert a == b
    assert a["register/edubasealldata.csv"] != c["register/edubasealldata.csv"]


def test_worker_processes_do_not_change_the_output(tmp_path: Path) -> None:
    kwargs = dict(schools=6, start_date=MONDAY, days=2, seed=2, fault_rate=0.5)
    generate(tmp_path / "one", workers=1, **kwargs)
    generate(tmp_path / "two", workers=2, **kwargs)
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "two")


def test_every_extract_follows_the_contract_and_carries_names_outside_it(clean_run, clean_extracts) -> None:
    out, summary = clean_run
    files = extract_files(out)
    assert len(files) == summary.extracts == 50 * 5
    for day, documents in clean_extracts.items():
        for document in documents:
            extract = ExtractFile.model_validate(document)
            assert extract.extract_date.isoformat() == day
            assert extract.pupil_count == len(extract.pupils)
            assert extract.laestab.startswith(read_register_la(out, extract.urn))
            assert extract.generated_at.utcoffset() == dt.timedelta(0)
            assert extract.generated_at.date() == extract.extract_date
            assert document["generated_at"].endswith("+00:00")
            first = document["pupils"][0]
            assert first["forename"] and first["surname"]
            assert {m["date"] for m in first["sessions"]} >= {day}


_LA_BY_URN: dict[str, str] = {}


def read_register_la(out: Path, urn: str) -> str:
    if not _LA_BY_URN:
        table = read_gias_csv(out / "register" / "edubasealldata.csv").table
        _LA_BY_URN.update(zip(table["urn"].to_pylist(), table["old_la_code"].to_pylist(), strict=True))
    return _LA_BY_URN[urn]


def test_extract_ids_are_distinct_per_school_day(clean_extracts) -> None:
    ids = [d["extract_id"] for docs in clean_extracts.values() for d in docs]
    assert len(ids) == len(set(ids))


def test_every_upn_is_valid_and_unique_within_its_school(clean_extracts) -> None:
    monday = clean_extracts[MONDAY.isoformat()]
    temporary = 0
    for document in monday:
        upns = [p["upn"] for p in document["pupils"]]
        assert all(is_valid_upn(u) for u in upns)
        assert len(set(upns)) == len(upns)
        temporary += sum(u[-1].isalpha() for u in upns)
    assert 0 < temporary < 0.02 * sum(len(d["pupils"]) for d in monday)


def test_vectorised_upns_match_the_reference_implementation() -> None:
    years = np.array([2019, 2019, 2020, 2019, 2020])
    temporary = np.array([False, False, False, True, True])
    upns = make_upns(373, 2001, years, temporary)
    # serials count within each admission year: 2019 -> 0, 1, 2; 2020 -> 0, 1
    assert upns[:3] == [make_upn(373, 2001, 19, 0), make_upn(373, 2001, 19, 1), make_upn(373, 2001, 20, 0)]
    assert upns[3:] == [
        make_upn(373, 2001, 19, 2, temporary=True),
        make_upn(373, 2001, 20, 1, temporary=True),
    ]


def test_dates_of_birth_fit_the_year_group(clean_extracts) -> None:
    academic_year = 2026  # the run is in November 2026
    for document in clean_extracts[MONDAY.isoformat()]:
        for pupil in document["pupils"]:
            born = dt.date.fromisoformat(pupil["date_of_birth"])
            assert age_on_31_august(born, academic_year) == YEAR_OFFSET[pupil["nc_year_group"]] + 4
            assert dt.date.fromisoformat(pupil["admission_date"]) <= MONDAY


def test_weekends_are_skipped(tmp_path: Path) -> None:
    thursday = dt.date(2026, 11, 19)
    summary = generate(tmp_path / "out", schools=2, start_date=thursday, days=4, seed=1)
    days = sorted(p.name for p in (tmp_path / "out" / "extracts").iterdir())
    assert days == ["2026-11-19", "2026-11-20", "2026-11-23", "2026-11-24"]
    assert list(summary.days) == days
    saturday = generate(tmp_path / "sat", schools=1, start_date=dt.date(2026, 11, 21), days=1, seed=1)
    assert saturday.days == ("2026-11-23",)


def test_amendments_change_a_mark_once_within_seven_school_days(clean_extracts) -> None:
    """A mark re-sent later was sent on its own day with another code, and is re-sent only once."""
    first_sent: dict[tuple, str] = {}
    for day in sorted(clean_extracts):
        for document in clean_extracts[day]:
            for pupil in document["pupils"]:
                for mark in pupil["sessions"]:
                    if mark["date"] == day:
                        first_sent[(document["urn"], pupil["upn"], mark["date"], mark["session"])] = mark[
                            "code"
                        ]
    resent: dict[tuple, str] = {}
    for day in sorted(clean_extracts):
        for document in clean_extracts[day]:
            for pupil in document["pupils"]:
                for mark in pupil["sessions"]:
                    if mark["date"] == day:
                        continue
                    key = (document["urn"], pupil["upn"], mark["date"], mark["session"])
                    assert (
                        1
                        <= school_days_between(
                            dt.date.fromisoformat(mark["date"]), dt.date.fromisoformat(day)
                        )
                        <= 7
                    )
                    assert key in first_sent, "amendments only for marks sent earlier in the run"
                    assert mark["code"] != first_sent[key]
                    assert key not in resent, "a mark is changed once"
                    resent[key] = mark["code"]
    total = len(first_sent)
    assert resent
    # 5% of marks change within 7 school days; in a 5-day run only changes due by Friday are seen.
    assert 0.02 * total < len(resent) < 0.06 * total
    first_codes = [first_sent[k] for k in resent]
    assert first_codes.count("N") > 0.5 * len(resent)  # mostly "no reason yet", resolved later


def final_codes(clean_extracts) -> dict[tuple, str]:
    """The latest version of every mark, as DfE would count it after amendments."""
    latest: dict[tuple, str] = {}
    for day in sorted(clean_extracts):
        for document in clean_extracts[day]:
            for pupil in document["pupils"]:
                for mark in pupil["sessions"]:
                    latest[(document["urn"], pupil["upn"], mark["date"], mark["session"])] = mark["code"]
    return latest


def test_code_mix_is_close_to_the_published_national_rates(tmp_path: Path) -> None:
    """50 schools, 5 days, marks as settled (no amendment still pending: amendment rate 0)."""
    out = tmp_path / "out"
    generate(out, schools=50, start_date=MONDAY, days=5, seed=6, amendment_rate=0.0, compress=False)
    extracts: dict[str, list[dict]] = defaultdict(list)
    for path in extract_files(out):
        extracts[path.parent.name].append(read_extract(path))
    table = read_gias_csv(out / "register" / "edubasealldata.csv").table.to_pylist()
    phase_of = {r["urn"]: r["attendance_phase"] for r in table}
    marks = final_codes(extracts)
    counts: dict[str, int] = defaultdict(int)
    possible_by_phase: dict[str, int] = defaultdict(int)
    for (urn, *_), code in marks.items():
        counts[code] += 1
        if CODES_BY_MARK[code].possible:
            possible_by_phase[phase_of[urn]] += 1
    category = {c: CODES_BY_MARK[c].category for c in counts}
    possible = sum(n for c, n in counts.items() if CODES_BY_MARK[c].possible)
    authorised = sum(n for c, n in counts.items() if category[c] == Category.AUTHORISED)
    unauthorised = sum(n for c, n in counts.items() if category[c] == Category.UNAUTHORISED)
    present = sum(n for c, n in counts.items() if category[c] == Category.PRESENT)
    # Expected overall absence for this sample's phase mix, from DfE's 2025/26 phase rates.
    expected = sum(n * cal.PHASE_ABSENCE_RATE[p] for p, n in possible_by_phase.items()) / possible
    overall = (authorised + unauthorised) / possible
    assert overall == pytest.approx(expected, rel=0.25)
    assert authorised / (authorised + unauthorised) == pytest.approx(4.9 / 6.9, abs=0.05)
    assert counts["I"] / (authorised + unauthorised) == pytest.approx(3.3 / 6.9, abs=0.05)
    assert counts["L"] / present == pytest.approx(0.019, abs=0.004)
    aea = sum(n for c, n in counts.items() if category[c] == Category.AEA)
    assert 0.001 < aea / possible < 0.02
    assert 0 < sum(counts[c] for c in ("D", "X", "Y1", "Y7")) < 0.01 * len(marks)
    assert set(counts) <= set(CODES_BY_MARK)


def test_persistent_absence_over_a_term_is_near_the_published_share() -> None:
    term = cal.simulate_term(schools=40, days=65, seed=11)
    assert 0.15 < term.persistent_absence_share < 0.24  # DfE: 19.2% autumn 2024/25, 18.7% 2024/25
    assert 0.055 < term.overall_absence_rate < 0.085
    assert 0.005 < term.severe_absence_share < 0.05


def test_pupil_characteristics_are_near_national_shares(clean_extracts) -> None:
    pupils = [p for d in clean_extracts[MONDAY.isoformat()] for p in d["pupils"]]
    n = len(pupils)
    assert sum(p["fsm_eligible"] for p in pupils) / n == pytest.approx(0.25, abs=0.06)
    assert sum(p["sen_provision"] == "K" for p in pupils) / n == pytest.approx(0.13, abs=0.03)
    assert sum(p["sen_provision"] == "E" for p in pupils) / n == pytest.approx(0.048, abs=0.025)
    assert sum(p["looked_after"] for p in pupils) / n < 0.02
    assert {p["sex"] for p in pupils} == {"F", "M"}


def test_register_mix_follows_dfe_school_counts_and_roll_sizes() -> None:
    specs, extras = build_register(2000, seed=1, academic_year=2026)
    phases = [s.attendance_phase for s in specs]
    assert phases.count("Primary") == pytest.approx(2000 * 16_677 / 21_292, abs=1)
    assert phases.count("Secondary") == pytest.approx(2000 * 3_494 / 21_292, abs=1)
    for phase, mean in (("Primary", 280), ("Secondary", 1000), ("Special", 110)):
        rolls = [s.roll for s in specs if s.attendance_phase == phase]
        assert np.mean(rolls) == pytest.approx(mean, rel=0.15)
    assert len({s.urn for s in specs} | {e["URN"] for e in extras}) == len(specs) + len(extras)
    assert len({s.laestab for s in specs}) == len(specs)
    assert len({s.la_code for s in specs}) > 120  # spread over England's 153 LAs


def test_register_loads_cleanly_with_out_of_scope_and_closed_establishments(clean_run) -> None:
    out, summary = clean_run
    raw = (out / "register" / "edubasealldata.csv").read_bytes()
    assert b"\x92" in raw  # the ’ of "St Mary’s" in Windows-1252, as GIAS publishes
    result = read_gias_csv(out / "register" / "edubasealldata.csv")
    assert result.errors == []
    rows = result.table.to_pylist()
    sending = {r["urn"] for r in rows if r["attendance_phase"] != "Out of scope" and r["status"] != "Closed"}
    assert len(sending) == summary.schools == 50
    assert any(r["attendance_phase"] == "Out of scope" for r in rows)
    assert any(r["status"] == "Closed" for r in rows)
    monday = {p.name.split(".")[0] for p in (out / "extracts" / MONDAY.isoformat()).iterdir()}
    assert monday == sending


def load_faults(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "faults.jsonl").read_text().splitlines()]


def test_every_fault_kind_is_where_faults_jsonl_says(faulty_run: Path) -> None:
    out = faulty_run
    faults = load_faults(out)
    assert {f["kind"] for f in faults} == set(ALL_FAULT_KINDS)
    files = extract_files(out)
    assert len(faults) == len(files) == 24 * 5  # fault rate 1: one fault per extract
    register_urns = set(read_gias_csv(out / "register" / "edubasealldata.csv").table["urn"].to_pylist())
    for fault in faults:
        path = out / fault["file"]
        kind = fault["kind"]
        if kind == "malformed_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(path.read_bytes())
            continue
        document = json.loads(path.read_bytes())
        day = dt.date.fromisoformat(document["extract_date"])
        if kind == "unknown_urn":
            assert document["urn"] not in register_urns and path.stem.split(".")[0] == document["urn"]
            continue
        if kind == "missing_chunk":
            assert document["pupil_count"] - len(document["pupils"]) == fault["count"] > 0
            continue
        pupils = [document["pupils"][i] for i in fault["pupil_positions"]]
        marks = [pupils[0]["sessions"][m] for m in fault.get("mark_positions", [])]
        if kind == "invalid_code":
            assert marks[0]["code"] not in CODES_BY_MARK
        elif kind == "bad_check_letter":
            assert UPN_PATTERN.match(pupils[0]["upn"]) and not is_valid_upn(pupils[0]["upn"])
        elif kind == "duplicate_session":
            first, second = marks
            assert (first["date"], first["session"]) == (second["date"], second["session"])
            assert first["code"] != second["code"]
        elif kind == "out_of_window_date":
            assert school_days_between(dt.date.fromisoformat(marks[0]["date"]), day) > 7
        elif kind == "weekend_date":
            assert dt.date.fromisoformat(marks[0]["date"]).weekday() >= 5
        elif kind == "bad_year_group":
            assert pupils[0]["nc_year_group"] not in YEAR_GROUPS
        elif kind == "duplicate_upn":
            assert pupils[0]["upn"] == pupils[1]["upn"]
            assert [p["upn"] for p in document["pupils"]].count(pupils[0]["upn"]) == 2
        elif kind == "dob_implausible":
            age = age_on_31_august(dt.date.fromisoformat(pupils[0]["date_of_birth"]), 2026)
            assert age - (YEAR_OFFSET[pupils[0]["nc_year_group"]] + 4) >= 20
        else:
            pytest.fail(f"untested fault kind {kind}")


def test_extracts_without_a_fault_are_clean(tmp_path: Path) -> None:
    generate(tmp_path / "out", schools=20, start_date=MONDAY, days=2, seed=4, fault_rate=0.5)
    faulty = {f["file"] for f in load_faults(tmp_path / "out")}
    clean = [p for p in extract_files(tmp_path / "out") if str(p.relative_to(tmp_path / "out")) not in faulty]
    assert faulty and clean
    for path in clean:
        extract = ExtractFile.model_validate(read_extract(path))
        assert all(is_valid_upn(p.upn) for p in extract.pupils)
        assert all(m.code in CODES_BY_MARK for p in extract.pupils for m in p.sessions)
        assert extract.pupil_count == len(extract.pupils)


def test_fault_kinds_can_be_limited(tmp_path: Path) -> None:
    summary = generate(
        tmp_path / "out",
        schools=5,
        start_date=MONDAY,
        days=2,
        seed=1,
        fault_rate=1.0,
        fault_kinds=("weekend_date", "unknown_urn"),
    )
    assert set(summary.faults) <= {"weekend_date", "unknown_urn"}
    assert sum(summary.faults.values()) == 10
    assert {f["kind"] for f in load_faults(tmp_path / "out")} <= {"weekend_date", "unknown_urn"}


def test_bad_arguments_are_user_facing_errors(tmp_path: Path) -> None:
    with pytest.raises(UserFacingError, match="fault kind"):
        generate(tmp_path / "a", schools=1, start_date=MONDAY, days=1, fault_kinds=("nope",))
    with pytest.raises(UserFacingError, match="days"):
        generate(tmp_path / "b", schools=1, start_date=MONDAY, days=0)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(UserFacingError, match="not empty"):
        generate(tmp_path / "mine", schools=1, start_date=MONDAY, days=1)
    assert (tmp_path / "mine" / "precious.txt").exists()


def test_rerunning_into_an_earlier_output_replaces_it(tmp_path: Path) -> None:
    generate(tmp_path / "out", schools=3, start_date=MONDAY, days=3, seed=1)
    generate(tmp_path / "out", schools=3, start_date=MONDAY, days=1, seed=1)
    assert sorted(p.name for p in (tmp_path / "out" / "extracts").iterdir()) == [MONDAY.isoformat()]


def test_generate_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        generate_command,
        [
            "--out",
            str(tmp_path / "out"),
            "--schools",
            "3",
            "--start-date",
            "2026-11-16",
            "--days",
            "2",
            "--fault-rate",
            "0.5",
            "--faults",
            "weekend_date,invalid_code",
            "--workers",
            "1",
            "--no-compress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 6 extracts for 3 schools" in result.output
    assert len(list((tmp_path / "out" / "extracts").rglob("*.json"))) == 6
    bad = CliRunner().invoke(generate_command, ["--out", str(tmp_path / "x"), "--faults", "nope"])
    assert bad.exit_code == 2
    assert "unknown fault kind" in bad.output
