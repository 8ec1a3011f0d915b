"""Each data-quality check fires on a crafted case and stays quiet on a clean one; reports are idempotent."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from dq import checks as c
from dq.checks import Thresholds

TUESDAY = dt.date(2026, 11, 17)
MONDAY = dt.date(2026, 11, 16)
UTC = dt.UTC


def school_days_before(day: dt.date, n: int) -> list[dt.date]:
    """The n weekdays before ``day`` (no bank holidays fall in the test periods), oldest first."""
    days, current = [], day
    while len(days) < n:
        current -= dt.timedelta(days=1)
        if current.weekday() < 5:
            days.append(current)
    return sorted(days)


def register(*rows: dict) -> pl.DataFrame:
    defaults = {
        "old_la_code": "373",
        "status": "Open",
        "attendance_phase": "Primary",
        "open_date": dt.date(2000, 1, 1),
        "close_date": None,
    }
    return pl.DataFrame(
        [{**defaults, **r} for r in rows], schema_overrides={"open_date": pl.Date, "close_date": pl.Date}
    )


def extracts(*rows: dict) -> pl.DataFrame:
    defaults = {
        "extract_id": None,
        "status": "complete",
        "pupil_count": 100,
        "generated_at": dt.datetime(2026, 11, 1, 9, 0, tzinfo=UTC),
    }
    out = [{**defaults, **r} for r in rows]
    for i, r in enumerate(out):
        r["extract_id"] = r["extract_id"] or f"e{i}"
    return pl.DataFrame(out, schema_overrides={"extract_date": pl.Date, "pupil_count": pl.Int32})


def mark_counts(rows: list[tuple[str, dt.date, str, str, int]]) -> pl.DataFrame:
    """(urn, date, session, code, marks) rows."""
    return pl.DataFrame(
        rows,
        schema={
            "urn": pl.String,
            "date": pl.Date,
            "session": pl.String,
            "code": pl.String,
            "marks": pl.Int64,
        },
        orient="row",
    )


def day_of_marks(urn: str, day: dt.date, codes: dict[str, int], session: str = "AM") -> list[tuple]:
    return [(urn, day, session, code, n) for code, n in codes.items()]


def urns(frame: pl.DataFrame) -> list[str]:
    return sorted(frame["urn"].to_list())


# --- calendar -------------------------------------------------------------------------------------------


def _easter_sunday(year: int) -> dt.date:
    """Anonymous Gregorian algorithm (Meeus/Jones/Butcher), independent of the table under test."""
    a, b, cc = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = cc // 4, cc % 4
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 19 * l_) // 433
    month = (h + l_ - 7 * m + 90) // 25
    return dt.date(year, month, (h + l_ - 7 * m + 33 * month + 19) % 32)


@pytest.mark.parametrize("year", [2024, 2025, 2026, 2027])
def test_bank_holidays_hold_easter_and_eight_weekdays_per_year(year):
    easter = _easter_sunday(year)
    holidays = [d for d in c.BANK_HOLIDAYS_ENGLAND_AND_WALES if d.year == year]
    assert easter - dt.timedelta(days=2) in holidays and easter + dt.timedelta(days=1) in holidays
    assert len(holidays) == 8
    assert all(d.weekday() < 5 for d in holidays)  # substitute days are the ones observed


def test_collection_days_exclude_weekends_and_bank_holidays():
    assert c.is_collection_day(TUESDAY)
    assert not c.is_collection_day(dt.date(2026, 11, 14))  # Saturday
    assert not c.is_collection_day(dt.date(2026, 12, 28))  # Boxing Day substitute, a Monday


def test_monday_report_checks_the_weekend_and_the_day_after_christmas_checks_four_days():
    assert c.non_school_days_since_previous_collection_day(MONDAY) == [
        dt.date(2026, 11, 14),
        dt.date(2026, 11, 15),
    ]
    assert c.non_school_days_since_previous_collection_day(TUESDAY) == []
    # Christmas Day 2026 is a Friday; Boxing Day (Saturday) is observed on Monday 28th.
    assert c.non_school_days_since_previous_collection_day(dt.date(2026, 12, 29)) == [
        dt.date(2026, 12, 25),
        dt.date(2026, 12, 26),
        dt.date(2026, 12, 27),
        dt.date(2026, 12, 28),
    ]


# --- missing_extract ------------------------------------------------------------------------------------


def test_missing_extract_names_expected_schools_without_a_complete_extract():
    schools = register(
        {"urn": "100001"},  # complete extract: fine
        {"urn": "100002", "attendance_phase": "Secondary"},  # only an incomplete one
        {"urn": "100003", "attendance_phase": "Special"},  # nothing
        {"urn": "100004", "status": "Closed"},  # closed: not expected
        {"urn": "100005", "attendance_phase": "Out of scope"},  # nursery etc.: not expected
        {"urn": "100006", "open_date": TUESDAY + dt.timedelta(days=1)},  # opens tomorrow
        {"urn": "100007", "status": "Open, but proposed to close"},  # still open: expected
    )
    received = extracts(
        {"urn": "100001", "extract_date": TUESDAY},
        {"urn": "100002", "extract_date": TUESDAY, "status": "incomplete"},
        {"urn": "100007", "extract_date": TUESDAY - dt.timedelta(days=1)},  # yesterday's does not count
    )
    found = c.missing_extracts(schools, received, TUESDAY)
    assert urns(found) == ["100002", "100003", "100007"]
    assert set(found["check"]) == {"missing_extract"}
    detail = dict(zip(found["urn"], found["detail"], strict=True))
    assert "incomplete" in detail["100002"] and "no extract received" in detail["100003"]


def test_missing_extract_quiet_when_every_school_sent_a_complete_extract():
    schools = register({"urn": "100001"}, {"urn": "100002"})
    received = extracts(
        {"urn": "100001", "extract_date": TUESDAY}, {"urn": "100002", "extract_date": TUESDAY}
    )
    assert c.missing_extracts(schools, received, TUESDAY).height == 0


# --- roll_change ----------------------------------------------------------------------------------------


def _rolls(urn: str, history: list[int], today: int) -> list[dict]:
    days = school_days_before(TUESDAY, len(history))
    rows = [{"urn": urn, "extract_date": d, "pupil_count": n} for d, n in zip(days, history, strict=True)]
    return [*rows, {"urn": urn, "extract_date": TUESDAY, "pupil_count": today}]


def test_roll_change_fires_on_a_drop_of_more_than_ten_percent_against_the_median():
    # median of (190, 200, 200, 210, 400) = 200; 178 is 11% below it, 181 only 9.5% below.
    found = c.roll_changes(
        extracts(
            *_rolls("100001", [190, 200, 200, 210, 400], 178),
            *_rolls("100002", [190, 200, 200, 210, 400], 181),
        ),
        TUESDAY,
    )
    assert urns(found) == ["100001"]
    assert found["observed"][0] == 178 and found["expected"][0] == 200
    assert "-11.0%" in found["detail"][0]


def test_roll_change_uses_only_the_last_five_school_days_and_the_days_latest_extract():
    # Six days of history: the oldest (1000) must be ignored; today's later extract (200) replaces 150.
    rows = _rolls("100001", [1000, 200, 200, 200, 200, 200], 150)
    rows.append(
        {
            "urn": "100001",
            "extract_date": TUESDAY,
            "pupil_count": 200,
            "generated_at": dt.datetime(2026, 11, 17, 15, 0, tzinfo=UTC),
        }
    )
    assert c.roll_changes(extracts(*rows), TUESDAY).height == 0


def test_roll_change_needs_enough_history_and_ignores_incomplete_extracts():
    short = extracts(*_rolls("100001", [200, 200], 100))
    assert c.roll_changes(short, TUESDAY).height == 0
    rows = _rolls("100002", [200] * 5, 200)
    rows.append(
        {
            "urn": "100002",
            "extract_date": TUESDAY,
            "pupil_count": 20,
            "status": "incomplete",
            "generated_at": dt.datetime(2026, 11, 17, 15, 0, tzinfo=UTC),
        }
    )
    assert c.roll_changes(extracts(*rows), TUESDAY).height == 0


# --- attendance_rate_outlier ----------------------------------------------------------------------------


def _rate_history(urn: str, present_per_100: list[int], today_present: int) -> list[tuple]:
    days = school_days_before(TUESDAY, len(present_per_100))
    rows: list[tuple] = []
    for d, p in zip([*days, TUESDAY], [*present_per_100, today_present], strict=True):
        rows += day_of_marks(urn, d, {"/": p, "I": 100 - p, "D": 7})  # D (dual) is not a possible session
    return rows


def test_attendance_rate_outlier_fires_on_a_fall_of_more_than_fifteen_points():
    found = c.attendance_rate_outliers(mark_counts(_rate_history("100001", [95] * 10, 70)), TUESDAY)
    assert urns(found) == ["100001"]
    assert found["observed"][0] == pytest.approx(70.0) and found["expected"][0] == pytest.approx(95.0)


def test_attendance_rate_outlier_fires_beyond_three_standard_deviations():
    # history 95, 96 alternating: mean 95.5, sample std 0.527 -> floored to 2.0 pp; today 88 is 7.5 pp
    # below: z = -3.75 (beyond 3), though under the 15-point limit.
    history = [95, 96] * 5
    found = c.attendance_rate_outliers(mark_counts(_rate_history("100001", history, 88)), TUESDAY)
    assert urns(found) == ["100001"]
    assert "z=-3.8" in found["detail"][0]


def test_attendance_rate_outlier_quiet_within_normal_variation():
    history = [95, 96] * 5
    assert c.attendance_rate_outliers(mark_counts(_rate_history("100001", history, 91)), TUESDAY).height == 0
    # and a school with too little history is not judged
    assert c.attendance_rate_outliers(mark_counts(_rate_history("100002", [95] * 3, 40)), TUESDAY).height == 0


def test_attendance_rate_counts_approved_educational_activity_as_attended():
    rates = c.school_day_rates(
        mark_counts(day_of_marks("100001", TUESDAY, {"/": 80, "V": 10, "N": 10, "Y4": 5}))
    )
    assert rates["possible_sessions"][0] == 100 and rates["attended_sessions"][0] == 90


# --- uniform_marks --------------------------------------------------------------------------------------


def _extract_marks(rows: list[tuple[str, str, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={"urn": pl.String, "extract_id": pl.String, "code": pl.String, "marks": pl.Int64},
        orient="row",
    )


def test_uniform_marks_fires_when_every_mark_of_an_extract_is_one_code():
    found = c.uniform_marks(_extract_marks([("100001", "x1", "N", 25)]), TUESDAY)
    assert urns(found) == ["100001"] and found["register_code"][0] == "N" and found["observed"][0] == 25


def test_uniform_marks_quiet_for_mixed_small_or_closure_extracts():
    clean = _extract_marks(
        [
            ("100001", "x1", "/", 24),
            ("100001", "x1", "I", 1),  # mixed
            ("100002", "x2", "/", 19),  # under 20 marks
            ("100003", "x3", "#", 300),  # a closure: the closed-session check's business
        ]
    )
    assert c.uniform_marks(clean, TUESDAY).height == 0


# --- marks_on_closed_session ----------------------------------------------------------------------------


def test_marks_on_closed_session_fires_on_attendance_marks_in_a_closed_session():
    marks = mark_counts(
        day_of_marks("100001", TUESDAY, {"#": 95, "/": 5})
        + day_of_marks("100001", TUESDAY, {"/": 100}, session="PM")
    )
    found = c.marks_on_closed_sessions(marks, TUESDAY)
    assert urns(found) == ["100001"] and found["observed"][0] == 5 and "AM" in found["detail"][0]


def test_marks_on_closed_session_quiet_for_partial_closures_and_clean_closures():
    marks = mark_counts(
        day_of_marks("100001", TUESDAY, {"#": 50, "/": 50})  # year groups closed
        + day_of_marks("100002", TUESDAY, {"Y4": 120, "-": 3})
    )  # all closed
    assert c.marks_on_closed_sessions(marks, TUESDAY).height == 0


# --- marks_on_non_school_day ----------------------------------------------------------------------------


def test_marks_on_non_school_day_fires_for_weekend_attendance_marks_in_mondays_report():
    saturday = dt.date(2026, 11, 14)
    marks = mark_counts(
        day_of_marks("100001", saturday, {"/": 30, "N": 2}) + day_of_marks("100002", saturday, {"#": 30})
    )  # closure marks on a Saturday: fine
    found = c.marks_on_non_school_days(marks, MONDAY)
    assert urns(found) == ["100001"] and found["observed"][0] == 32 and "Sat 2026-11-14" in found["detail"][0]
    assert c.marks_on_non_school_days(marks, TUESDAY).height == 0  # already Monday's business


def test_marks_on_non_school_day_fires_for_a_bank_holiday():
    marks = mark_counts(day_of_marks("100001", dt.date(2026, 12, 28), {"/": 10}))
    assert urns(c.marks_on_non_school_days(marks, dt.date(2026, 12, 29))) == ["100001"]


# --- marks_after_leaving --------------------------------------------------------------------------------


def _leaver_marks(rows: list[tuple[str, dt.date, str, dt.date | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={"urn": pl.String, "date": pl.Date, "code": pl.String, "leaving_date": pl.Date},
        orient="row",
    )


def test_marks_after_leaving_counts_marks_dated_after_the_leaving_date():
    left = TUESDAY - dt.timedelta(days=3)
    found = c.marks_after_leaving(
        _leaver_marks(
            [("100001", TUESDAY, "/", left), ("100001", TUESDAY, "N", left), ("100001", TUESDAY, "-", left)]
        ),
        TUESDAY,
    )
    assert urns(found) == ["100001"] and found["observed"][0] == 2


def test_marks_after_leaving_quiet_on_the_leaving_day_itself():
    assert (
        c.marks_after_leaving(
            _leaver_marks([("100001", TUESDAY, "/", TUESDAY), ("100002", TUESDAY, "/", None)]), TUESDAY
        ).height
        == 0
    )


# --- reason_code_spike ----------------------------------------------------------------------------------


def _la_marks(illness_history: list[int], illness_today: int) -> pl.DataFrame:
    """Two schools in LA 373, 1000 marks a day between them; school 100001 carries all the illness."""
    days = school_days_before(TUESDAY, len(illness_history))
    rows: list[tuple] = []
    for d, ill in zip([*days, TUESDAY], [*illness_history, illness_today], strict=True):
        rows += day_of_marks("100001", d, {"/": 500 - ill, "I": ill})
        rows += day_of_marks("100002", d, {"/": 490, "M": 10})
    return mark_counts(rows)


def test_reason_code_spike_fires_when_an_las_share_of_a_code_jumps():
    # illness shares 3.8% .. 4.2% (mean 4.0%, std 0.149 pp -> floored to 0.5 pp); today 12%: z = 16.
    history = [38, 42, 40, 39, 41, 40, 38, 42, 40, 40]
    found = c.reason_code_spikes(
        _la_marks(history, 120), register({"urn": "100001"}, {"urn": "100002"}), TUESDAY
    )
    assert found.height == 1
    row = found.row(0, named=True)
    assert row["urn"] is None and row["la_code"] == "373" and row["register_code"] == "I"
    assert row["observed"] == pytest.approx(12.0) and row["expected"] == pytest.approx(4.0)
    assert "100001 (120)" in row["detail"]


def test_reason_code_spike_quiet_on_an_ordinary_day_and_for_small_las():
    history = [38, 42, 40, 39, 41, 40, 38, 42, 40, 40]
    schools = register({"urn": "100001"}, {"urn": "100002"})
    assert c.reason_code_spikes(_la_marks(history, 41), schools, TUESDAY).height == 0
    small = Thresholds(spike_min_marks=5000)
    assert c.reason_code_spikes(_la_marks(history, 120), schools, TUESDAY, small).height == 0


# --- all together ---------------------------------------------------------------------------------------


def _empty_inputs(schools: pl.DataFrame, marks: pl.DataFrame | None = None) -> c.DqInputs:
    return c.DqInputs(
        schools=schools,
        extracts=extracts({"urn": "000000", "extract_date": dt.date(2000, 1, 1)}),
        mark_counts=marks if marks is not None else mark_counts([]),
        extract_mark_counts=_extract_marks([]),
        leaver_marks=_leaver_marks([]),
    )


def test_run_checks_fills_the_la_and_emits_only_school_level_columns():
    schools = register({"urn": "100001", "old_la_code": "201"})
    found = c.run_checks(_empty_inputs(schools), TUESDAY)
    assert found.columns == list(c.EXCEPTION_COLUMNS)
    assert found.select("check", "urn", "la_code").rows() == [("missing_extract", "100001", "201")]


def test_run_checks_skips_missing_extracts_on_a_saturday():
    assert c.run_checks(_empty_inputs(register({"urn": "100001"})), dt.date(2026, 11, 14)).height == 0


def test_count_by_check_reports_zero_for_checks_that_found_nothing():
    counts = c.count_by_check(c.run_checks(_empty_inputs(register({"urn": "1"}, {"urn": "2"})), TUESDAY))
    assert counts["missing_extract"] == 2 and counts["roll_change"] == 0 and set(counts) == set(c.CHECKS)


def test_threshold_overrides_are_typed_and_unknown_names_rejected():
    assert Thresholds.with_overrides(
        {"roll_change_fraction": "0.2", "uniform_min_marks": "30"}
    ) == Thresholds(roll_change_fraction=0.2, uniform_min_marks=30)
    with pytest.raises(ValueError, match="unknown threshold"):
        Thresholds.with_overrides({"roll_change": "0.2"})
    with pytest.raises(ValueError, match="must be a int"):
        Thresholds.with_overrides({"uniform_min_marks": "many"})


# --- the report over a small lake -----------------------------------------------------------------------


def _write_contract_table(lake: str, name: str, columns: dict[str, list]) -> None:
    """A Delta table of the named contract holding ``columns`` (other columns null)."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from storage.tables import table

    contract = table(name)
    n = len(next(iter(columns.values())))
    data = {
        f.name: pa.array(columns[f.name], f.type) if f.name in columns else pa.nulls(n, f.type)
        for f in contract.schema
    }
    write_deltalake(
        contract.path(lake),
        pa.table(data, schema=contract.schema),
        partition_by=list(contract.partition_by) or None,
    )


def test_report_reads_the_lake_and_finds_school_level_exceptions(tmp_path):
    from dq.report import run_report

    lake = str(tmp_path / "lake")
    _write_contract_table(
        lake,
        "schools",
        {
            "urn": ["100001", "100002"],
            "old_la_code": ["373", "373"],
            "status": ["Open", "Open"],
            "attendance_phase": ["Primary", "Special"],
        },
    )
    _write_contract_table(
        lake,
        "extracts",
        {
            "extract_id": ["x1"],
            "urn": ["100001"],
            "extract_date": [TUESDAY],
            "status": ["complete"],
            "pupil_count": [25],
            "generated_at": [dt.datetime(2026, 11, 17, 9, 0, tzinfo=UTC)],
        },
    )
    upns = [f"P{i:012d}" for i in range(25)]  # opaque test identifiers; the report never returns them
    _write_contract_table(
        lake,
        "attendance_sessions",
        {
            "urn": ["100001"] * 25,
            "upn": upns,
            "date": [TUESDAY] * 25,
            "session": ["AM"] * 25,
            "code": ["N"] * 25,
            "extract_id": ["x1"] * 25,
        },
    )
    _write_contract_table(
        lake,
        "pupils",
        {
            "urn": ["100001"] * 25,
            "upn": upns,
            "leaving_date": [TUESDAY - dt.timedelta(days=7)] * 2 + [None] * 23,
        },
    )

    result = run_report(lake, TUESDAY, write=False)
    found = {(row["check"], row["urn"]) for row in result.exceptions.to_dicts()}
    assert found == {
        ("missing_extract", "100002"),
        ("uniform_marks", "100001"),
        ("marks_after_leaving", "100001"),
    }
    after_leaving = result.exceptions.filter(pl.col("check") == "marks_after_leaving")
    assert after_leaving["observed"][0] == 2
    text = " ".join(str(v) for row in result.exceptions.rows() for v in row)
    assert not any(upn in text for upn in upns)


def test_report_writes_dq_exceptions_idempotently_and_counts_them(tmp_path):
    from deltalake import DeltaTable

    from attendance.metrics import REGISTRY
    from dq.report import DQ_EXCEPTIONS_TABLE, run_report

    lake = str(tmp_path / "lake")
    _write_contract_table(
        lake,
        "schools",
        {
            "urn": ["100001", "100002"],
            "old_la_code": ["373", "373"],
            "status": ["Open", "Open"],
            "attendance_phase": ["Primary", "Special"],
        },
    )

    def counted(metric: str) -> float:
        return REGISTRY.get_sample_value(metric, {"check": "missing_extract"}) or 0

    before = counted("attendance_dq_exceptions_total")
    first = run_report(lake, TUESDAY)
    second = run_report(lake, TUESDAY)
    assert first.counts["missing_extract"] == second.counts["missing_extract"] == 2
    stored = DeltaTable(DQ_EXCEPTIONS_TABLE.path(lake)).to_pyarrow_table()
    assert stored.num_rows == 2  # the second run replaced the first run's rows
    assert sorted(stored.column("urn").to_pylist()) == ["100001", "100002"]
    assert counted("attendance_dq_exceptions_total") - before == 4  # counted on each run
    assert counted("attendance_dq_exceptions_last_report") == 2
