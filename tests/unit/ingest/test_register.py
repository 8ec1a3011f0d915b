"""The GIAS register loader: parsing, row errors by line, phase mapping, Delta reload."""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from attendance.errors import UserFacingError
from ingest.register import (
    OUT_OF_SCOPE,
    attendance_phase,
    read_gias_csv,
    read_register,
    schools,
    write_register,
)
from schemas.reference import local_authorities
from storage.tables import SCHOOLS

HEADER = [
    "URN",
    "LA (code)",
    "LA (name)",
    "EstablishmentNumber",
    "EstablishmentName",
    "TypeOfEstablishment (code)",
    "TypeOfEstablishment (name)",
    "EstablishmentTypeGroup (name)",
    "EstablishmentStatus (name)",
    "ReasonEstablishmentOpened (name)",
    "OpenDate",
    "CloseDate",
    "PhaseOfEducation (name)",
    "StatutoryLowAge",
    "Trusts (code)",
    "Trusts (name)",
    "Postcode",
]
LOADED_AT = dt.datetime(2026, 11, 17, 7, 0, tzinfo=dt.UTC)


def row(
    urn: str = "100001",
    la: str = "373",
    number: str = "2001",
    name: str = "Oak Primary School",
    type_name: str = "Community school",
    group: str = "Local authority maintained schools",
    phase: str = "Primary",
    status: str = "Open",
    open_date: str = "01-09-1990",
    close_date: str = "",
    trust_code: str = "",
    trust_name: str = "",
) -> list[str]:
    return [
        urn,
        la,
        "Sheffield",
        number,
        name,
        "1",
        type_name,
        group,
        status,
        "Not applicable",
        open_date,
        close_date,
        phase,
        "4",
        trust_code,
        trust_name,
        "S1 1AA",
    ]


def write_csv(
    path: Path, rows: list[list[str]], header: list[str] = HEADER, encoding: str = "cp1252"
) -> Path:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(buffer.getvalue().encode(encoding))
    return path


def test_good_rows_become_the_schools_table_with_geography(tmp_path: Path) -> None:
    file = write_csv(
        tmp_path / "edubasealldata20261117.csv",
        [
            row(),
            row(
                urn="100002",
                la="886",
                number="4005",
                name="Kent High",
                type_name="Academy converter",
                group="Academies",
                phase="Secondary",
                trust_code="16745",
                trust_name="Weald Trust",
            ),
            row(
                urn="100003",
                la="373",
                number="7",
                name="Tiny Special",
                type_name="Community special school",
                group="Special schools",
                phase="Not applicable",
            ),
        ],
    )
    result = read_gias_csv(file, loaded_at=LOADED_AT)
    assert result.errors == []
    assert result.table.schema.equals(SCHOOLS.schema, check_metadata=True)
    rows = {r["urn"]: r for r in result.table.to_pylist()}
    sheffield, kent = local_authorities()["373"], local_authorities()["886"]
    assert rows["100001"]["laestab"] == "3732001"
    assert rows["100003"]["laestab"] == "3730007"  # establishment number zero-padded to 4 digits
    assert (rows["100001"]["new_la_code"], rows["100001"]["la_name"], rows["100001"]["region_code"]) == (
        sheffield.new_la_code,
        sheffield.la_name,
        sheffield.region_code,
    )
    assert rows["100002"]["region_name"] == kent.region_name
    assert rows["100002"]["trust_code"] == "16745"
    assert rows["100001"]["trust_code"] is None
    assert rows["100001"]["open_date"] == dt.date(1990, 9, 1)
    assert rows["100001"]["close_date"] is None
    assert [rows[u]["attendance_phase"] for u in ("100001", "100002", "100003")] == [
        "Primary",
        "Secondary",
        "Special",
    ]
    assert rows["100001"]["loaded_at"] == LOADED_AT


def test_bad_rows_are_reported_by_line_and_good_rows_kept(tmp_path: Path) -> None:
    file = write_csv(
        tmp_path / "gias.csv",
        [
            row(urn="100001"),  # line 2: good
            row(urn="12345"),  # line 3: URN not 6 digits
            row(urn="100003", la="999"),  # line 4: not an English LA, in scope
            row(urn="100004", open_date="31-02-2020"),  # line 5: no such date
            row(urn="100005", number="ABCDE"),  # line 6: bad establishment number
            row(urn="100001", number="2002"),  # line 7: duplicate of line 2
            row(urn="", number="2003"),  # line 8: URN missing
            row(urn="100008", number="", phase="Secondary"),  # line 9: in scope without establishment number
            row(urn="100009", close_date="2021-07-31"),  # line 10: wrong date format
            row(urn="100010", number="2010"),  # line 11: good
        ],
    )
    result = read_gias_csv(file)
    assert sorted(result.table["urn"].to_pylist()) == ["100001", "100010"]
    found = {(e.line, e.column) for e in result.errors}
    assert found == {
        (3, "URN"),
        (4, "LA (code)"),
        (5, "OpenDate"),
        (6, "EstablishmentNumber"),
        (7, "URN"),
        (8, "URN"),
        (9, "EstablishmentNumber"),
        (10, "CloseDate"),
    }
    by_line = {e.line: e for e in result.errors}
    assert "12345" in by_line[3].message and "6 digits" in by_line[3].message
    assert "999" in by_line[4].message
    assert "line 2" in by_line[7].message
    assert str(by_line[5]).startswith("line 5: OpenDate:")
    assert result.rejected_lines == [3, 4, 5, 6, 7, 8, 9, 10]


def test_line_numbers_count_physical_lines_with_embedded_newlines_and_blank_lines(tmp_path: Path) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(HEADER)
    writer.writerow(row(urn="100001", name="Two\r\nLine Name"))  # lines 2-3
    buffer.write("\r\n")  # line 4: blank
    writer.writerow(row(urn="BAD"))  # line 5
    writer.writerow(["100006", "373"])  # line 6: too few fields
    (tmp_path / "gias.csv").write_bytes(buffer.getvalue().encode("cp1252"))
    result = read_gias_csv(tmp_path / "gias.csv")
    assert [(e.line, e.column) for e in result.errors] == [(5, "URN"), (6, "(row)")]
    assert result.table["school_name"].to_pylist() == ["Two\r\nLine Name"]
    assert result.rows_read == 3


def test_a_file_without_the_gias_columns_is_refused_naming_them(tmp_path: Path) -> None:
    header = [h for h in HEADER if h not in ("URN", "OpenDate")]
    file = write_csv(
        tmp_path / "other.csv",
        [[c for h, c in zip(HEADER, row(), strict=True) if h in header]],
        header=header,
    )
    with pytest.raises(UserFacingError, match="missing column.*'URN'.*'OpenDate'"):
        read_gias_csv(file)


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(UserFacingError, match="empty"):
        read_gias_csv(tmp_path / "empty.csv")


def test_windows_1252_characters_survive(tmp_path: Path) -> None:
    names = ["St Thérèse’s Catholic Primary School", "Ysgol Gymraeg – Caerdydd"]
    file = write_csv(
        tmp_path / "gias.csv",
        [row(urn="100001", name=names[0]), row(urn="100002", number="2002", name=names[1])],
    )
    raw = file.read_bytes()
    assert b"\x92" in raw and b"\xe9" in raw  # really Windows-1252 bytes, as GIAS publishes
    result = read_gias_csv(file)
    assert result.encoding == "cp1252"
    assert result.table["school_name"].to_pylist() == names


def test_a_utf8_resaved_file_is_read_as_utf8(tmp_path: Path) -> None:
    file = write_csv(tmp_path / "gias.csv", [row(name="St Thérèse’s")], encoding="utf-8-sig")
    result = read_gias_csv(file)
    assert result.table["school_name"].to_pylist() == ["St Thérèse’s"]


def test_out_of_scope_establishments_outside_england_are_kept_without_geography(tmp_path: Path) -> None:
    file = write_csv(
        tmp_path / "gias.csv",
        [
            row(
                urn="100001", la="681", number="2001", type_name="Welsh establishment", group="Welsh schools"
            ),
            row(
                urn="100002",
                la="000",
                number="",
                type_name="Higher education institutions",
                group="Universities",
                phase="16 plus",
            ),
        ],
    )
    result = read_gias_csv(file)
    assert result.errors == []
    rows = result.table.to_pylist()
    assert [r["attendance_phase"] for r in rows] == [OUT_OF_SCOPE, OUT_OF_SCOPE]
    assert [r["new_la_code"] for r in rows] == [None, None]
    assert rows[0]["la_name"] == "Sheffield"  # the name GIAS gave, since the reference has none
    assert rows[1]["laestab"] is None


def test_a_school_in_an_abolished_la_gets_that_las_geography(tmp_path: Path) -> None:
    file = write_csv(
        tmp_path / "gias.csv", [row(urn="100001", la="909", status="Closed", close_date="31-03-2023")]
    )
    result = read_gias_csv(file)
    assert result.errors == []
    school = result.table.to_pylist()[0]
    # las.csv: E10000006 Cumbria, North West (E12000002), terminated 31/03/2023
    assert (school["new_la_code"], school["la_name"], school["region_code"]) == (
        "E10000006",
        "Cumbria",
        "E12000002",
    )
    assert school["close_date"] == dt.date(2023, 3, 31)


@pytest.mark.parametrize(
    ("group", "type_name", "phase", "expected"),
    [
        ("Local authority maintained schools", "Community school", "Primary", "Primary"),
        ("Local authority maintained schools", "Voluntary aided school", "Middle deemed primary", "Primary"),
        ("Local authority maintained schools", "Foundation school", "Middle deemed secondary", "Secondary"),
        ("Academies", "Academy converter", "Secondary", "Secondary"),
        ("Academies", "Academy sponsor led", "All-through", "Secondary"),
        ("Free Schools", "Free schools", "All-through", "Secondary"),
        ("Free Schools", "University technical college", "Secondary", "Secondary"),
        ("Free Schools", "Studio schools", "Secondary", "Secondary"),
        ("Special schools", "Community special school", "Not applicable", "Special"),
        ("Special schools", "Foundation special school", "Primary", "Special"),
        ("Academies", "Academy special converter", "Secondary", "Special"),
        ("Free Schools", "Free schools special", "All-through", "Special"),
        ("Special schools", "Non-maintained special school", "Not applicable", OUT_OF_SCOPE),
        ("Independent schools", "Other independent school", "All-through", OUT_OF_SCOPE),
        ("Independent schools", "Other independent special school", "Not applicable", OUT_OF_SCOPE),
        ("Local authority maintained schools", "Pupil referral unit", "Not applicable", OUT_OF_SCOPE),
        ("Academies", "Academy alternative provision converter", "Not applicable", OUT_OF_SCOPE),
        ("Free Schools", "Free schools alternative provision", "Secondary", OUT_OF_SCOPE),
        ("Local authority maintained schools", "LA nursery school", "Nursery", OUT_OF_SCOPE),
        ("Academies", "Academy 16-19 converter", "16 plus", OUT_OF_SCOPE),
        ("Free Schools", "Free schools 16 to 19", "16 plus", OUT_OF_SCOPE),
        ("Academies", "Academy converter", "16 plus", OUT_OF_SCOPE),
        ("Local authority maintained schools", "Community school", "Nursery", OUT_OF_SCOPE),
        ("Colleges", "Further education", "16 plus", OUT_OF_SCOPE),
        ("Universities", "Higher education institutions", "Not applicable", OUT_OF_SCOPE),
        ("Welsh schools", "Welsh establishment", "Primary", OUT_OF_SCOPE),
        ("Other types", "Secure units", "Not applicable", OUT_OF_SCOPE),
        ("Online provider", "Online provider", "Not applicable", OUT_OF_SCOPE),
        ("Academies", "Academy converter", "", OUT_OF_SCOPE),
    ],
)
def test_attendance_phase(group: str, type_name: str, phase: str, expected: str) -> None:
    assert attendance_phase(group, type_name, phase) == expected


def test_attendance_phase_ignores_case_spacing_and_hyphens() -> None:
    assert attendance_phase(" academies ", "ACADEMY  CONVERTER", "All through") == "Secondary"


def test_reloading_a_newer_register_replaces_the_old_one(tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    first = read_gias_csv(
        write_csv(tmp_path / "a.csv", [row(urn="100001"), row(urn="100002", number="2002")])
    )
    second = read_gias_csv(write_csv(tmp_path / "b.csv", [row(urn="100003", number="2003", name="New")]))
    v1 = write_register(first.table, lake)
    v2 = write_register(second.table, lake)
    assert v2 == v1 + 1
    current = read_register(lake)
    assert current.schema.equals(SCHOOLS.schema, check_metadata=True)
    assert current["urn"].to_pylist() == ["100003"]
    assert current["school_name"].to_pylist() == ["New"]


def test_reading_a_missing_register_says_how_to_load_one(tmp_path: Path) -> None:
    with pytest.raises(UserFacingError, match="attendance schools load FILE"):
        read_register(str(tmp_path / "nolake"))


@pytest.fixture
def lake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    from attendance.settings import get_settings

    lake = str(tmp_path / "lake")
    monkeypatch.setenv("ATTENDANCE_LAKE_URI", lake)
    get_settings.cache_clear()
    yield lake
    get_settings.cache_clear()


def test_load_command_loads_good_rows_lists_rejected_lines_and_exits_1(tmp_path: Path, lake_env: str) -> None:
    bad = [row(urn=f"9{i:04d}", number=str(3000 + i)) for i in range(55)]  # 5-digit URNs: lines 3..57
    file = write_csv(tmp_path / "gias.csv", [row(urn="100001"), *bad])
    result = CliRunner().invoke(schools, ["load", str(file)])
    assert result.exit_code == 1
    assert "loaded 1 establishments" in result.output
    assert "open, in scope: 1 primary, 0 secondary, 0 special" in result.output
    assert "rejected 55 row(s)" in result.output
    assert "line 3: URN:" in result.output and "line 52: URN:" in result.output
    assert "line 53:" not in result.output  # at most 50 shown
    assert "... and 5 more" in result.output
    assert read_register(lake_env)["urn"].to_pylist() == ["100001"]


def test_load_command_exits_0_when_every_row_is_good(tmp_path: Path, lake_env: str) -> None:
    file = write_csv(tmp_path / "gias.csv", [row(urn="100001")])
    result = CliRunner().invoke(schools, ["load", str(file)])
    assert result.exit_code == 0, result.output
    assert "rejected" not in result.output


def test_load_command_keeps_the_old_register_when_no_row_is_usable(tmp_path: Path, lake_env: str) -> None:
    write_register(read_gias_csv(write_csv(tmp_path / "a.csv", [row(urn="100001")])).table, lake_env)
    file = write_csv(tmp_path / "b.csv", [row(urn="1")])
    result = CliRunner().invoke(schools, ["load", str(file)])
    assert result.exit_code != 0
    assert isinstance(result.exception, UserFacingError)
    assert read_register(lake_env)["urn"].to_pylist() == ["100001"]


def test_table_is_a_pyarrow_table_even_when_every_row_is_bad(tmp_path: Path) -> None:
    result = read_gias_csv(write_csv(tmp_path / "a.csv", [row(urn="x")]))
    assert isinstance(result.table, pa.Table)
    assert result.table.num_rows == 0
    assert result.table.schema.equals(SCHOOLS.schema, check_metadata=True)
