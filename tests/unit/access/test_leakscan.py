"""The scan of outgoing zones: pupil columns, UPN-shaped text and unsuppressed single-school or small rows."""

from __future__ import annotations

import polars as pl

from access.leakscan import scan_frame


def checks(frame: pl.DataFrame, **kwargs) -> set[str]:
    return {f.check for f in scan_frame("zone/t", frame, **kwargs)}


def test_clean_la_level_frame_has_no_findings() -> None:
    frame = pl.DataFrame(
        {
            "geographic_level": ["National", "Local authority", "Local authority"],
            "old_la_code": [None, "373", "201"],
            "num_schools": [10, 9, 1],
            "possible_sessions": [100, 90, None],
            "overall_absence": [5.0, 4.0, None],
        }
    )
    assert checks(frame) == set()


def test_upn_shaped_text_and_pupil_columns_are_found() -> None:
    frame = pl.DataFrame(
        {"note": ["ok", "see B801200005001 here"], "pupil_key": ["a", "b"], "DateOfBirth": [1, 2]}
    )
    findings = scan_frame("zone/t", frame)
    assert {f.check for f in findings} == {"upn-text", "pupil-column", "date-of-birth-column"}
    assert all("B801200005001" not in f.detail for f in findings)


def test_unsuppressed_single_school_la_row_is_found_in_numbers_and_in_text() -> None:
    numeric = pl.DataFrame(
        {"geographic_level": ["Local authority"], "num_schools": [1], "possible_sessions": [40]}
    )
    assert checks(numeric) == {"disclosure"}
    text = pl.DataFrame(
        {
            "geographic_level": ["Local authority", "Local authority"],
            "num_schools": ["1", "3"],
            "attendance_perc": ["93.10", "92.00"],
        }
    )
    assert checks(text) == {"disclosure"}
    suppressed = text.with_columns(
        pl.when(pl.col("num_schools") == "1")
        .then(pl.lit("c"))
        .otherwise(pl.col("attendance_perc"))
        .alias("attendance_perc")
    )
    assert checks(suppressed) == set()


def test_small_pupil_counts_are_found_when_the_rule_applies() -> None:
    frame = pl.DataFrame(
        {"geographic_level": ["National"], "num_schools": [3], "enrolments": [4], "possible_sessions": [8]}
    )
    assert checks(frame) == set()
    assert checks(frame, min_pupil_count=10) == {"disclosure"}


def test_a_school_named_inside_json_text_is_found() -> None:
    frame = pl.DataFrame({"optouts_fingerprint": ['[{"urn": "100000", "status": "opted_out"}]']})
    assert checks(frame) == {"school-in-text"}
