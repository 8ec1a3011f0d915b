"""The ported eesyscreener checks (official_stats.screener), and our publication passing them.

Each check is pinned with a passing and a failing case taken from the rule in the R source
(dfe-analytical-services/eesyscreener, file and commit cited in official_stats/screener.py).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from official_stats import incremental, publication, screener, synthetic
from official_stats.disclosure import DisclosureRules


def good_data() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "time_period": ["202627"] * 4,
            "time_identifier": ["Academic year"] * 4,
            "geographic_level": ["National", "National", "Regional", "Local authority"],
            "country_code": ["E92000001"] * 4,
            "country_name": ["England"] * 4,
            "region_code": ["", "", "E12000004", "E12000004"],
            "region_name": ["", "", "East Midlands", "East Midlands"],
            "new_la_code": ["", "", "", "E10000007"],
            "la_name": ["", "", "", "Derbyshire"],
            "old_la_code": ["", "", "", "830"],
            "education_phase": ["Total", "Primary", "Total", "Total"],
            "possible_sessions": ["100", "60", "40", "c"],
            "attendance_perc": ["93.5", "94", "z", "c"],
        }
    )


def good_meta() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "col_name": ["education_phase", "possible_sessions", "attendance_perc"],
            "col_type": ["Filter", "Indicator", "Indicator"],
            "label": ["Education phase", "Possible sessions", "Attendance rate"],
            "indicator_grouping": ["", "Sessions", "Rates"],
            "indicator_unit": ["", "", "%"],
            "indicator_dp": ["", "0", "2"],
            "filter_hint": ["Phase", "", ""],
            "filter_grouping_column": ["", "", ""],
            "filter_default": ["Total", "", ""],
        }
    )


def result_of(
    check: str,
    data: pl.DataFrame | None = None,
    meta: pl.DataFrame | None = None,
    data_name: str = "attendance_ytd.csv",
    meta_name: str = "attendance_ytd.meta.csv",
) -> str:
    data = good_data() if data is None else data
    meta = good_meta() if meta is None else meta
    results = screener.screen_frames(data, meta, data_name, meta_name)
    found = results.by_check()
    assert check in found, f"{check} did not run (stopped at {results.results[-1].stage})"
    return found[check].result


def test_good_files_pass_every_check() -> None:
    results = screener.screen_frames(good_data(), good_meta(), "attendance_ytd.csv", "attendance_ytd.meta.csv")
    assert results.passed, results.failures
    assert results.results[-1].stage == "Check API"


@pytest.mark.parametrize(
    ("data_name", "meta_name", "check"),
    [
        ("attendance ytd.csv", "attendance ytd.meta.csv", "check_filename_data_spaces"),
        ("attendance+ytd.csv", "attendance+ytd.meta.csv", "check_filename_data_special"),
        ("attendance_ytd.csv", "attendance_ytd_meta.csv", "check_filenames_match"),
    ],
)
def test_filename_rules(data_name: str, meta_name: str, check: str) -> None:
    assert result_of(check, data_name=data_name, meta_name=meta_name) == "FAIL"


def test_upper_case_filename_is_a_warning() -> None:
    assert result_of("check_filename_data_lowercase", data_name="Attendance.csv", meta_name="Attendance.meta.csv") == (
        "WARNING"
    )


def test_meta_required_and_invalid_columns() -> None:
    assert result_of("precheck_col_req_meta", meta=good_meta().drop("label")) == "FAIL"
    assert result_of("precheck_col_invalid_meta", meta=good_meta().with_columns(pl.lit("").alias("notes"))) == "FAIL"
    assert result_of("precheck_col_req_data", data=good_data().drop("country_name")) == "FAIL"


def test_meta_rows_must_not_exceed_non_mandatory_columns() -> None:
    data = good_data().select(
        "time_period",
        "time_identifier",
        "geographic_level",
        "country_code",
        "country_name",
        "education_phase",
    )
    assert result_of("precheck_col_to_rows", data=data) == "FAIL"


def test_cross_file_variables() -> None:
    assert result_of("precheck_cross_meta_to_data", data=good_data().drop("attendance_perc")) == "FAIL"
    extra = good_data().with_columns(pl.Series("unexplained", ["1", "2", "3", "4"]))
    assert result_of("precheck_cross_data_to_meta", data=extra) == "WARNING"
    single = good_data().with_columns(pl.lit("same").alias("constant"))
    assert result_of("precheck_cross_data_to_meta", data=single) == "PASS"  # single-valued columns are fine


def test_column_naming_checks() -> None:
    data = good_data().rename({"attendance_perc": "Attendance_perc"})
    meta = good_meta().with_columns(pl.col("col_name").replace("attendance_perc", "Attendance_perc"))
    assert result_of("check_col_snake_case", data=data, meta=meta) == "WARNING"
    assert result_of("check_col_var_start", data=data, meta=meta) == "WARNING"
    smushed = good_meta().with_columns(pl.col("col_name").replace("attendance_perc", "female_attendance_perc"))
    assert (
        result_of(
            "check_col_ind_smushed",
            data=good_data().rename({"attendance_perc": "female_attendance_perc"}),
            meta=smushed,
        )
        == "FAIL"
    )


def test_meta_type_ob_unit_and_labels() -> None:
    assert (
        result_of(
            "precheck_meta_col_type",
            meta=good_meta().with_columns(pl.col("col_type").replace("Filter", "filter")),
        )
        == "FAIL"
    )
    with_ob = pl.concat(
        [
            good_meta(),
            good_meta().head(1).with_columns(pl.lit("la_name").alias("col_name"), pl.lit("LA").alias("label")),
        ]
    )
    assert result_of("precheck_meta_ob_unit", meta=with_ob) == "FAIL"
    dupe = good_meta().with_columns(pl.col("label").replace("Attendance rate", "Possible sessions"))
    assert result_of("check_meta_dupe_label", meta=dupe) == "FAIL"
    blank = good_meta().with_columns(pl.col("label").replace("Attendance rate", ""))
    assert result_of("check_meta_label", meta=blank) == "FAIL"


def test_meta_indicator_and_filter_fields() -> None:
    meta = good_meta()
    assert (
        result_of(
            "check_meta_filter_hint",
            meta=meta.with_columns(
                pl.when(pl.col("col_type") == "Indicator")
                .then(pl.lit("hint"))
                .otherwise(pl.col("filter_hint"))
                .alias("filter_hint")
            ),
        )
        == "FAIL"
    )
    assert result_of("check_meta_indicator_dp", meta=meta.with_columns(pl.lit("1").alias("indicator_dp"))) == "FAIL"
    assert result_of("check_meta_ind_unit", meta=meta.with_columns(pl.lit("%").alias("indicator_unit"))) == "FAIL"
    assert (
        result_of(
            "check_meta_ind_unit_validation",
            meta=meta.with_columns(pl.col("indicator_unit").replace("%", "percent")),
        )
        == "FAIL"
    )
    assert (
        result_of("check_meta_ind_dp_values", meta=meta.with_columns(pl.col("indicator_dp").replace("2", "-1")))
        == "FAIL"
    )
    assert result_of("check_meta_ind_dp_set", meta=meta.with_columns(pl.col("indicator_dp").replace("2", ""))) == (
        "WARNING"
    )
    assert (
        result_of(
            "check_meta_indicator_grouping",
            meta=meta.with_columns(pl.lit("Group").alias("indicator_grouping")),
        )
        == "FAIL"
    )


def test_geography_columns_must_not_be_filters() -> None:
    data = good_data().with_columns(pl.Series("la_code", ["a", "b", "a", "b"]))
    meta = pl.concat(
        [
            good_meta(),
            good_meta().head(1).with_columns(pl.lit("la_code").alias("col_name"), pl.lit("LA code").alias("label")),
        ]
    )
    assert result_of("check_meta_geog_catch", data=data, meta=meta) == "FAIL"


@pytest.mark.parametrize(("value", "expected"), [("NA", "FAIL"), ("NULL", "FAIL"), ("..", "WARNING"), ("-", "WARNING")])
def test_null_and_legacy_symbols(value: str, expected: str) -> None:
    data = good_data().with_columns(pl.Series("attendance_perc", ["93.5", value, "z", "c"]))
    assert result_of("check_general_null", data=data) == expected


def test_a_filter_needs_two_levels() -> None:
    data = good_data().with_columns(pl.lit("Total").alias("education_phase"))
    assert result_of("precheck_filter_not_singular", data=data) == "FAIL"


def test_time_identifiers() -> None:
    assert (
        result_of("precheck_time_period_num", data=good_data().with_columns(pl.lit("2026/27").alias("time_period")))
        == "FAIL"
    )
    assert (
        result_of(
            "precheck_time_id_valid",
            data=good_data().with_columns(pl.lit("Week 53").alias("time_identifier")),
        )
        == "FAIL"
    )
    mixed = good_data().with_columns(pl.Series("time_identifier", ["Academic year", "Autumn term"] * 2))
    assert result_of("precheck_time_id_mix", data=mixed) == "FAIL"
    weeks = good_data().with_columns(pl.lit("Week 47").alias("time_identifier"))
    assert result_of("check_time_period", data=weeks) == "FAIL"  # weeks need a 4-digit period
    assert result_of("check_time_period_six", data=good_data().with_columns(pl.lit("202620").alias("time_period"))) == (
        "FAIL"
    )


def test_filter_default_whitespace_and_blanks() -> None:
    no_total = good_data().with_columns(pl.Series("education_phase", ["Primary", "Secondary", "Primary", "Special"]))
    assert result_of("check_filter_defaults", data=no_total) == "WARNING"
    spaced = good_data().with_columns(pl.Series("education_phase", ["Total", "Primary ", "Total", "Total"]))
    assert result_of("check_filter_whitespace", data=spaced) == "FAIL"
    blank = good_data().with_columns(pl.Series("education_phase", ["Total", "", "Total", "Total"]))
    assert result_of("check_filter_blanks", data=blank) == "FAIL"


def test_total_in_an_observational_unit_column() -> None:
    data = good_data().with_columns(pl.Series("region_name", ["", "", "Total", "East Midlands"]))
    assert result_of("check_filter_ob_total", data=data) == "FAIL"


def test_duplicate_rows() -> None:
    data = pl.concat([good_data(), good_data().tail(1)])
    assert result_of("check_general_dupes", data=data) == "FAIL"


def test_geography_code_name_pairs_against_the_reference_lookups() -> None:
    assert (
        result_of(
            "check_geog_country_combos",
            data=good_data().with_columns(pl.lit("Englund").alias("country_name")),
        )
        == "FAIL"
    )
    assert (
        result_of(
            "check_geog_region_combos",
            data=good_data().with_columns(pl.Series("region_name", ["", "", "East Midlands", "West Midlands"])),
        )
        == "FAIL"
    )
    assert (
        result_of("check_geog_la_combos", data=good_data().with_columns(pl.Series("la_name", ["", "", "", "Derby"])))
        == "FAIL"
    )
    # the 2025 Sheffield code and the code DfE's files still use are both accepted
    for new_code in ("E08000039", "E08000019"):
        data = good_data().with_columns(
            pl.Series("new_la_code", ["", "", "", new_code]),
            pl.Series("la_name", ["", "", "", "Sheffield"]),
            pl.Series("old_la_code", ["", "", "", "373"]),
            pl.Series("region_code", ["", "", "E12000003", "E12000003"]),
            pl.Series("region_name", ["", "", "Yorkshire and The Humber"] * 1 + ["Yorkshire and The Humber"]),
        )
        assert result_of("check_geog_la_combos", data=data) == "PASS", new_code


def test_geography_completeness_and_over_completion() -> None:
    assert (
        result_of(
            "check_geog_level_completed",
            data=good_data().with_columns(pl.Series("la_name", ["", "", "", ""])),
        )
        == "FAIL"
    )
    assert (
        result_of(
            "check_geog_overcompleted_cols",
            data=good_data().with_columns(pl.Series("old_la_code", ["", "", "830", "830"])),
        )
        == "FAIL"
    )
    assert result_of(
        "check_geog_region_for_la",
        data=good_data().with_columns(pl.Series("region_code", ["", "", "E12000004", ""])),
    ) in ("WARNING", "FAIL")
    assert (
        result_of(
            "precheck_geog_level",
            data=good_data().with_columns(
                pl.Series("geographic_level", ["National", "National", "Region", "Local authority"])
            ),
        )
        == "FAIL"
    )
    assert result_of("precheck_geog_level_present", data=good_data().drop("old_la_code")) == "FAIL"


def test_indicator_blanks_and_legacy_symbols() -> None:
    for value in ("", "~", ":"):
        data = good_data().with_columns(pl.Series("possible_sessions", ["100", value, "40", "c"]))
        assert result_of("check_ind_invalid_entry", data=data) == "FAIL", value


def test_api_character_limits() -> None:
    long_name = "x" * 51
    data = good_data().rename({"attendance_perc": long_name})
    meta = good_meta().with_columns(pl.col("col_name").replace("attendance_perc", long_name))
    assert result_of("check_api_char_col_name", data=data, meta=meta) == "WARNING"


def test_screening_stops_after_a_failing_stage() -> None:
    results = screener.screen_frames(good_data(), good_meta().drop("label"), "a.csv", "a.meta.csv")
    assert results.results[-1].stage == "Precheck columns"
    assert not results.passed


# --- our publication, end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def published_week(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated week written to Delta, aggregated, disclosure-controlled and written as EES files."""
    lake = tmp_path_factory.mktemp("lake")
    roll = synthetic.make_roll(48, 30, 2026, la_codes=["201", "830", "831", "373", "872"])
    synthetic.write_reference(str(lake), roll)
    for offset in range(5):
        sessions, extracts = synthetic.make_day(roll, dt.date(2026, 11, 16) + dt.timedelta(days=offset))
        synthetic.append_day(str(lake), sessions, extracts)
    incremental.run_aggregation(str(lake))
    built = publication.build_release(str(lake), dt.date(2026, 11, 23), DisclosureRules())
    out = lake / "out"
    publication.write_release(built, out, screen=False)
    return out


def test_publication_of_a_generated_week_passes_the_screener(published_week: Path) -> None:
    data_files = sorted(p for p in published_week.glob("*.csv") if not p.name.endswith(".meta.csv"))
    assert {p.stem for p in data_files} == {
        "attendance_daily_weekly",
        "attendance_term",
        "attendance_ytd",
        "attendance_characteristics_daily_weekly",
        "attendance_characteristics_term",
        "attendance_characteristics_ytd",
    }
    for path in data_files:
        result = screener.screen_files(path, path.with_name(path.stem + ".meta.csv"))
        assert result.passed, (path.name, result.failures)
        assert result.results[-1].stage == "Check API", path.name
        assert not result.warnings, (path.name, result.warnings)


def test_publication_files_have_the_mandatory_columns_first_and_utf8(published_week: Path) -> None:
    raw = (published_week / "attendance_daily_weekly.csv").read_bytes()
    raw.decode("utf-8")
    assert not raw.startswith(b"\xef\xbb\xbf")
    header = raw.split(b"\n", 1)[0].decode().split(",")
    assert header[:10] == [
        "time_period",
        "time_identifier",
        "geographic_level",
        "country_code",
        "country_name",
        "region_code",
        "region_name",
        "new_la_code",
        "la_name",
        "old_la_code",
    ]
    data = screener.read_ees_csv(published_week / "attendance_daily_weekly.csv")
    assert set(data["time_frame"].unique()) == {
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Week",
    }
    assert set(data["time_identifier"].unique()) == {"Week 47"}
