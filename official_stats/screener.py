"""A Python port of DfE's EES screener checks (``eesyscreener``), run on our files before every release.

Source: ``dfe-analytical-services/eesyscreener`` (the R package that is the "single source of truth" for
EES uploads), ``R/screen_dfs.R@00118fb`` for the stage order and each ``R/<check>.R`` for the rule; the commit
read is cited beside each check below. Results mirror the R package: one row per check with ``result`` in
PASS / FAIL / WARNING, and screening stops after the first stage that has a FAIL (``run_and_log_check``'s
early return).

Reading mirrors ``read_ees_files()`` (R/utils.R@00bd1d9): every data column is read as text (indicators may
hold symbols). Empty cells are kept as empty strings.

Ported: filename, precheck columns, cross-file, columns, meta, general (null symbols, duplicates), filters,
time, geography (country, region and LA code/name combinations against this project's copy of the DfE
lookups in ``schemas/reference``; completeness, over-completion, region for LA, ``x`` names), indicators and
the API character limits. Not ported: the data-dictionary check (``check_api_dict_col_names``, needs DfE's
dictionary), ward/PCON/LAD/LEP/LSIP/EDA lookups (we publish none of those levels), harmonised
ethnicity/sex values (not published), and zip-upload checks.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import polars as pl

from schemas.reference import valid_la_code_name_pairs

PASS, FAIL, WARNING = "PASS", "FAIL", "WARNING"

# data-raw/req_values.R@9265d9e
REQ_META_COLS = (
    "col_name",
    "col_type",
    "label",
    "indicator_grouping",
    "indicator_unit",
    "indicator_dp",
    "filter_hint",
    "filter_grouping_column",
)
OPTIONAL_META_COLS = ("filter_default",)
REQ_DATA_COLS = ("time_period", "time_identifier", "geographic_level", "country_code", "country_name")

# data-raw/acceptable_values.R@15ba45c
TERMS = ("Spring term", "Autumn term", "Summer term")
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
WEEKS = tuple(f"Week {n}" for n in range(1, 53))
FINANCIAL_QUARTERS = tuple(f"Financial year Q{n}" for n in range(1, 5))
FINANCIAL_HALVES = ("Part 1 (April to September)", "Part 2 (October to March)")
ACCEPTABLE_TIME_IDS: tuple[tuple[str, ...], ...] = (
    ("Autumn and spring term",),
    ("Calendar year",),
    ("Financial year",),
    ("Academic year",),
    ("Tax year",),
    ("Reporting year",),
    TERMS,
    WEEKS,
    MONTHS,
    FINANCIAL_QUARTERS,
    FINANCIAL_HALVES,
)
FOUR_DIGIT_IDS = frozenset(("Calendar year", "Reporting year", *WEEKS, *MONTHS))
SIX_DIGIT_IDS = frozenset(
    (
        "Autumn and spring term",
        *TERMS,
        "Financial year",
        "Academic year",
        "Tax year",
        *FINANCIAL_QUARTERS,
        *FINANCIAL_HALVES,
    )
)
ACCEPTABLE_INDICATOR_UNITS = ("%", "pp", "£", "£m", "numberstring")
FILTER_ITEM_LIMIT = 25000

# data-raw/geography_df.R@5ef46db: level -> (code_field, name_field, code_field_secondary)
GEOGRAPHY_DF: dict[str, tuple[str | None, str, str | None]] = {
    "National": ("country_code", "country_name", None),
    "Regional": ("region_code", "region_name", None),
    "Local authority": ("new_la_code", "la_name", "old_la_code"),
    "Local authority district": ("lad_code", "lad_name", None),
    "RSC region": (None, "rsc_region_lead_name", None),
    "Parliamentary constituency": ("pcon_code", "pcon_name", None),
    "Local skills improvement plan area": ("lsip_code", "lsip_name", None),
    "Local enterprise partnership": (
        "local_enterprise_partnership_code",
        "local_enterprise_partnership_name",
        None,
    ),
    "English devolved area": ("english_devolved_area_code", "english_devolved_area_name", None),
    "Opportunity area": ("opportunity_area_code", "opportunity_area_name", None),
    "Ward": ("ward_code", "ward_name", None),
    "MAT": ("trust_id", "trust_name", None),
    "Sponsor": ("sponsor_id", "sponsor_name", None),
    "School": ("school_urn", "school_name", "school_laestab"),
    "Provider": ("provider_ukprn", "provider_name", None),
    "Institution": ("institution_id", "institution_name", None),
    "Planning area": ("planning_area_code", "planning_area_name", None),
    "Police force area": ("pfa_code", "pfa_name", None),
}
# R/check_geog_overcompleted_cols.R@2786450: levels whose rows may carry another level's columns
_LOW_LEVELS = ("School", "Provider", "Institution")
COMPATIBLE_LEVELS: dict[str, tuple[str, ...]] = {
    "Regional": (
        "Regional",
        "Local skills improvement plan area",
        "Local authority",
        "Local enterprise partnership",
        "Opportunity area",
        "Local authority district",
        "Parliamentary constituency",
        "English devolved area",
        "Ward",
        *_LOW_LEVELS,
        "Planning area",
        "Police force area",
    ),
    "Local authority": (
        "Local authority",
        "Parliamentary constituency",
        "Local authority district",
        "Ward",
        *_LOW_LEVELS,
        "Planning area",
        "Police force area",
    ),
    "Local authority district": ("Local authority district", "Ward", *_LOW_LEVELS, "Police force area"),
    "Local skills improvement plan area": (
        "Local skills improvement plan area",
        "Local authority district",
        *_LOW_LEVELS,
        "Planning area",
    ),
    "RSC region": ("RSC region", *_LOW_LEVELS),
    "Parliamentary constituency": ("Parliamentary constituency", *_LOW_LEVELS),
    "Local enterprise partnership": ("Local enterprise partnership", *_LOW_LEVELS),
    "English devolved area": ("English devolved area", *_LOW_LEVELS),
    "Opportunity area": ("Opportunity area", *_LOW_LEVELS),
    "Ward": ("Ward", *_LOW_LEVELS),
    "MAT": ("MAT", *_LOW_LEVELS),
    "Sponsor": ("Sponsor", *_LOW_LEVELS),
    "Planning area": ("Planning area", *_LOW_LEVELS),
    "Police force area": ("Police force area", *_LOW_LEVELS),
    "School": ("School",),
    "Provider": ("Provider",),
    "Institution": ("Institution",),
}
# R/check_general_null.R@0d4483e
NULL_SYMBOLS = ("NULL", "Null", "null", "NA", "na")
LEGACY_NODATA_SYMBOLS = ("N/A", "n/a", ".", "..", "-")
# legacy_gss_symbols used by R/check_ind_invalid_entry.R@0316520 (defined with the GSS symbols c, x, z, low)
LEGACY_GSS_SYMBOLS = ("~", ":")
# R/check_col_ind_smushed.R@d0f6ccc
COMMON_FILTER_SUBSTRINGS = (
    "male",
    "female",
    "asian",
    "chinese",
    "indian",
    "pakistani",
    "bangladeshi",
    "black",
    "african",
    "caribbean",
    "white",
    "roma",
    "irish",
    "english",
    "british",
    "scottish",
    "welsh",
    "northern irish",
    "arab",
)
# data-raw/potential_ob_units_regex.R@4305ea0
POTENTIAL_OB_UNITS_REGEX = re.compile(
    r"(^(country|sch|prov|inst|estab|reg|la|local|rsc|pfa|pcon|lep|mca|oa|ward|mat).*(name|code|urn|ukprn|number"
    r"|upin|id)$)|(^(laestab|estab|sch|school|schools|prov|provider|providers|inst|institution|institutions|name"
    r"|code|urn|ukprn|number|upin|id|region|la|lad|rsc|pcon|lep|mca|oa|ward|mat)$)",
    re.IGNORECASE,
)
# R/check_meta_geog_catch.R@0c952cc (its own copy of the regex, without "country")
GEOG_CATCH_REGEX = re.compile(
    r"(^(sch|prov|inst|estab|reg|la|local|rsc|pfa|pcon|lep|mca|oa|ward|mat).*(name|code|urn|ukprn|number|upin|id)$)"
    r"|(^(laestab|estab|sch|school|schools|prov|provider|providers|inst|institution|institutions|name|code|urn"
    r"|ukprn|number|upin|id|region|la|lad|rsc|pcon|lep|mca|oa|ward|mat)$)",
    re.IGNORECASE,
)
# data-raw/char_limits.R@1217d97
API_CHAR_LIMITS = {"location-code": 30, "column-name": 50, "column-label": 100, "column-item": 120}
# dfe-published-data-qa data/universal_geog_options.csv (code "z"): accepted with any geography name column
UNIVERSAL_Z_NAMES = (
    "Not applicable",
    "Unknown",
    "Outside of England",
    "Outside of the United Kingdom",
    "Outside of England and unknown",
    "Not available",
)


@dataclass(frozen=True)
class CheckResult:
    check: str
    result: str
    message: str
    stage: str


@dataclass
class ScreenResult:
    results: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(r.result != FAIL for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.result == FAIL]

    @property
    def warnings(self) -> list[CheckResult]:
        return [r for r in self.results if r.result == WARNING]

    def by_check(self) -> dict[str, CheckResult]:
        return {r.check: r for r in self.results}


def _r(check: str, ok: bool, message_ok: str, message_bad: str, stage: str, severity: str = FAIL) -> CheckResult:
    return CheckResult(check, PASS if ok else severity, message_ok if ok else message_bad, stage)


# --- helpers (R/utils.R@00bd1d9) -----------------------------------------------------------------------


def acceptable_ob_units() -> list[str]:
    cols = ["time_period", "time_identifier", "geographic_level"]
    for code, name, secondary in GEOGRAPHY_DF.values():
        cols += [c for c in (code, name, secondary) if c]
    return cols


def _blank(value: object) -> bool:
    return value is None or str(value).strip() == ""


def _meta_values(meta: pl.DataFrame, column: str) -> list[str]:
    return [("" if v is None else str(v)) for v in meta[column].to_list()] if column in meta.columns else []


def cols_meta(meta: pl.DataFrame, grouping_cols: bool = False) -> list[str]:
    cols = _meta_values(meta, "col_name")
    if grouping_cols:
        cols += _meta_values(meta, "filter_grouping_column")
    return list(dict.fromkeys(c for c in cols if c))


def filters_of(meta: pl.DataFrame, include_filter_groups: bool = False) -> list[str]:
    filters = [
        n for n, t in zip(_meta_values(meta, "col_name"), _meta_values(meta, "col_type"), strict=True) if t == "Filter"
    ]
    if include_filter_groups:
        filters += [g for g in _meta_values(meta, "filter_grouping_column") if g]
    return list(dict.fromkeys(filters))


def filter_groups_of(meta: pl.DataFrame) -> list[str]:
    return list(dict.fromkeys(g for g in _meta_values(meta, "filter_grouping_column") if g))


def indicators_of(meta: pl.DataFrame) -> list[str]:
    return [
        n
        for n, t in zip(_meta_values(meta, "col_name"), _meta_values(meta, "col_type"), strict=True)
        if t == "Indicator"
    ]


def _distinct(data: pl.DataFrame, column: str) -> list[str | None]:
    return data[column].unique().to_list()


# --- reference lookups -----------------------------------------------------------------------------------


def _reference_rows(name: str) -> list[dict[str, str]]:
    text = resources.files("schemas").joinpath("reference", name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def acceptable_countries() -> set[tuple[str, str]]:
    combos = {(r["country_code"], r["country_name"]) for r in _reference_rows("country.csv")}
    return combos | {("z", name) for name in UNIVERSAL_Z_NAMES}


def acceptable_regions() -> set[tuple[str, str]]:
    combos = {(r["region_code"], r["region_name"]) for r in _reference_rows("regions.csv")}
    return combos | {("z", name) for name in UNIVERSAL_Z_NAMES}


def acceptable_las() -> set[tuple[str, str, str]]:
    """(old_la_code, new_la_code, la_name); ``z`` universal options with old code ``z``."""
    return set(valid_la_code_name_pairs()) | {("z", "z", name) for name in UNIVERSAL_Z_NAMES}


# --- filename (R/check_filename_spaces.R@0bba9f5, check_filename_special.R@27f751b,
#     check_filenames_match.R@1217d97) ------------------------------------------------------------------


def check_filenames(data_name: str, meta_name: str) -> list[CheckResult]:
    stage = "Check filenames"
    out = []
    for kind, name in (("data", data_name), ("meta", meta_name)):
        out.append(
            _r(
                f"check_filename_{kind}_spaces",
                " " not in name,
                f"The {kind} filename does not have spaces.",
                f"There are spaces that need removing in filename of the {kind} file.",
                stage,
            )
        )
        stem = re.sub(r"\.meta$", "", Path(name).stem if name.endswith(".csv") else name)
        special = sorted(set(re.sub(r"[A-Za-z0-9]|-|_|\s", "", stem)))
        out.append(
            _r(
                f"check_filename_{kind}_special",
                not special,
                f"'{name}' does not contain any special characters.",
                f"The following special characters need removing from {name} (filename): {' '.join(special)}."
                " Filenames must only contain numbers, letters, hyphens or underscores.",
                stage,
            )
        )
        # DfE open data standards (analysts-guide ud.qmd): file names in lower case
        out.append(
            _r(
                f"check_filename_{kind}_lowercase",
                name == name.lower(),
                f"'{name}' is lower case.",
                f"'{name}' should be lower case (DfE open data standards).",
                stage,
                WARNING,
            )
        )
    expected = data_name.replace(".csv", ".meta.csv", 1)
    out.append(
        _r(
            "check_filenames_match",
            meta_name == expected,
            "The names of the files follow the recommended naming convention.",
            f"The filenames do not follow the recommended naming convention. Based on the given data "
            f"filename, the metadata filename is expected to be '{expected}'.",
            stage,
        )
    )
    return out


# --- precheck columns ----------------------------------------------------------------------------------


def precheck_columns(data: pl.DataFrame, meta: pl.DataFrame) -> list[CheckResult]:
    stage = "Precheck columns"
    missing_meta = [c for c in REQ_META_COLS if c not in meta.columns]  # precheck_col_req_meta.R@1217d97
    invalid_meta = [
        c for c in meta.columns if c not in REQ_META_COLS + OPTIONAL_META_COLS
    ]  # ..._invalid_meta.R@418d460
    missing_data = [c for c in REQ_DATA_COLS if c not in data.columns]  # precheck_col_req_data.R@1217d97
    data_cols, meta_rows = data.width - 5, meta.height  # precheck_col_to_rows.R@1217d97
    return [
        _r(
            "precheck_col_req_meta",
            not missing_meta,
            "All of the required columns are present in the metadata file.",
            f"The following required columns are missing from the metadata file: '{', '.join(missing_meta)}'.",
            stage,
        ),
        _r(
            "precheck_col_invalid_meta",
            not invalid_meta,
            "There are no invalid columns in the metadata file.",
            f"These are invalid columns in the metadata file: {', '.join(invalid_meta)}",
            stage,
        ),
        _r(
            "precheck_col_req_data",
            not missing_data,
            "All of the required columns are present in the data file.",
            f"The following required columns are missing from the data file: '{', '.join(missing_data)}'.",
            stage,
        ),
        _r(
            "precheck_col_to_rows",
            data_cols >= meta_rows,
            f"There are no more rows in the metadata file ({meta_rows}) than non-mandatory data columns ({data_cols}).",
            f"There are more rows in the metadata file ({meta_rows}) than the number of non-mandatory "
            "columns in "
            f"the data file ({data_cols}).",
            stage,
        ),
    ]


def precheck_cross(data: pl.DataFrame, meta: pl.DataFrame) -> list[CheckResult]:
    stage = "Precheck cross-file"
    # precheck_cross_meta_to_data.R@6f20677
    meta_vars = cols_meta(meta, grouping_cols=True)
    missing = [c for c in meta_vars if c not in data.columns]
    # precheck_cross_data_to_meta.R@9ac3f0e: every data column is an ob unit, single-valued, or in meta
    ob_units = set(acceptable_ob_units())
    non_ob = [c for c in data.columns if c not in ob_units]
    single = {c for c in non_ob if data[c].n_unique() == 1}
    not_in_meta = [c for c in non_ob if c not in single and c not in set(meta_vars)]
    return [
        _r(
            "precheck_cross_meta_to_data",
            not missing,
            "All variables from the metadata were found in the data file.",
            "The following variables were found in the metadata file, but could not be found in the data "
            "file: "
            f"'{', '.join(missing)}'.",
            stage,
        ),
        _r(
            "precheck_cross_data_to_meta",
            not not_in_meta,
            "All variables in the data file are observational units or are represented in the metadata file.",
            "The following variables in the data file are not observational units, do not have a single "
            "level, and "
            f"are not represented in the metadata: '{', '.join(not_in_meta)}'.",
            stage,
            WARNING,
        ),
    ]


# --- columns -------------------------------------------------------------------------------------------


def check_columns(data: pl.DataFrame, meta: pl.DataFrame) -> list[CheckResult]:
    stage = "Check columns"
    spaces = [c for c in data.columns if " " in c]  # check_col_names_spaces.R@a0b3e0a
    bad_chars = sorted(
        set("".join(re.sub(r"[a-z0-9]|_", "", c) for c in data.columns))
    )  # check_col_snake_case.R@1217d97
    bad_start = [c for c in data.columns if not re.match(r"^[a-z]", c)]  # check_col_var_start.R@da1026f
    pattern = re.compile("|".join(COMMON_FILTER_SUBSTRINGS), re.IGNORECASE)  # check_col_ind_smushed.R@d0f6ccc
    smushed = [c for c in indicators_of(meta) if pattern.search(c)]
    characteristic = (
        "characteristic" in _meta_values(meta, "col_name")  # check_col_var_characteristic.R@9ac3f0e
        or "characteristic_group" in _meta_values(meta, "col_name")
        or "characteristic_group" in _meta_values(meta, "filter_grouping_column")
    )
    return [
        _r(
            "check_col_names_spaces",
            not spaces,
            "There are no spaces in the variable names in the data file.",
            f"The following variable names in the data file have spaces: '{', '.join(spaces)}'.",
            stage,
        ),
        _r(
            "check_col_snake_case",
            not bad_chars,
            "The variable names in the data file follow the snake_case convention.",
            f"The following invalid characters were found in the variable names of the data file: {bad_chars}.",
            stage,
            WARNING,
        ),
        _r(
            "check_col_var_start",
            not bad_start,
            "All variable names in the data file start with a lowercase letter.",
            f"The following variable names start with a character that isn't a lowercase letter: '{bad_start}'.",
            stage,
            WARNING,
        ),
        _r(
            "check_col_ind_smushed",
            not smushed,
            "No indicators found containing typical filter entries.",
            f"The following indicators appear to not conform to tidy data principles: '{', '.join(smushed)}'.",
            stage,
        ),
        _r(
            "check_col_var_characteristic",
            not characteristic,
            "Neither 'characteristic' nor 'characteristic_group' were found as listed fields in the metadata file.",
            "The fields 'characteristic' and / or 'characteristic_group' have been included in the data.",
            stage,
            WARNING,
        ),
    ]


# --- meta ----------------------------------------------------------------------------------------------


def precheck_meta(meta: pl.DataFrame) -> list[CheckResult]:
    stage = "Precheck meta"
    invalid_types = sorted(
        set(_meta_values(meta, "col_type")) - {"Filter", "Indicator"}
    )  # precheck_meta_col_type.R@16c8402
    ob = set(acceptable_ob_units()) - {"school_name", "provider_name"}  # precheck_meta_ob_unit.R@1217d97
    ob_in_meta = [c for c in cols_meta(meta, grouping_cols=True) if c in ob]
    blank_names = sum(1 for v in _meta_values(meta, "col_name") if _blank(v))  # precheck_meta_col_name.R@418d460
    return [
        _r(
            "precheck_meta_col_type",
            not invalid_types,
            "col_type is always 'Filter' or 'Indicator'.",
            f"The following invalid col_type values were found in the metadata file: '{', '.join(invalid_types)}'",
            stage,
        ),
        _r(
            "precheck_meta_ob_unit",
            not ob_in_meta,
            "No observational units have been included in the metadata file.",
            f"The following observational units need removing from the metadata file: '{', '.join(ob_in_meta)}'.",
            stage,
        ),
        _r(
            "precheck_meta_col_name",
            blank_names == 0,
            "The col_name column is completed for every row in the metadata.",
            f"There are col_name values missing in {blank_names} rows of the metadata file.",
            stage,
        ),
    ]


def check_meta(data: pl.DataFrame, meta: pl.DataFrame) -> list[CheckResult]:
    stage = "Check meta"
    names, types = _meta_values(meta, "col_name"), _meta_values(meta, "col_type")
    labels = _meta_values(meta, "label")
    groups = _meta_values(meta, "filter_grouping_column")
    hints, dps = _meta_values(meta, "filter_hint"), _meta_values(meta, "indicator_dp")
    units, ind_groups = _meta_values(meta, "indicator_unit"), _meta_values(meta, "indicator_grouping")
    rows = list(zip(names, types, labels, groups, hints, dps, units, ind_groups, strict=True))
    dupe_labels = sorted({x for x in labels if labels.count(x) > 1})  # check_meta_dupe_label.R@1217d97
    ind_with_group = [n for n, t, _, g, *_ in rows if t == "Indicator" and g]  # check_meta_fil_grp.R@418d460
    group_dupes = sorted({g for g in groups if g and groups.count(g) > 1})  # check_meta_fil_grp_dupe
    group_is_filter = [g for g in filter_groups_of(meta) if g in names]  # check_meta_fil_grp_is_fil
    group_missing = [g for g in filter_groups_of(meta) if g not in data.columns]  # check_meta_fil_grp_match.R@418d460
    blank_labels = sum(1 for x in labels if _blank(x))  # check_meta_label.R@1016454
    ind_hints = [n for n, t, _, _, h, *_ in rows if t == "Indicator" and h]  # check_meta_filter_hint.R@1217d97
    filters = [n for n, t, *_ in rows if t == "Filter"]  # check_meta_geog_catch.R@0c952cc
    filter_groups = filter_groups_of(meta)
    candidates = filters + filter_groups
    if len(filters) == 1 and (
        filters[0] in ("school_name", "provider_name")
        or (filter_groups and filter_groups[0] in ("school_name", "provider_name"))
    ):
        candidates = [c for c in candidates if c not in ("school_name", "provider_name")]
    geog_filters = [c for c in candidates if GEOG_CATCH_REGEX.search(c)]
    filter_dps = [n for n, t, _, _, _, d, *_ in rows if t == "Filter" and d]  # check_meta_indicator_dp.R@39a8233
    name_spaces = [n for n in names if " " in n]  # check_meta_col_name_spaces
    name_dupes = sorted({n for n in names if names.count(n) > 1})  # check_meta_col_name_dupe
    blank_dp = [n for n, t, _, _, _, d, *_ in rows if t == "Indicator" and _blank(d)]  # check_meta_ind_dp_set.R@418d460
    bad_dp = [d for d in dps if d and not re.fullmatch(r"\d+", d.strip())]  # check_meta_ind_dp_values.R@0684ddd
    filter_units = [n for n, t, _, _, _, _, u, _ in rows if t == "Filter" and u]  # check_meta_ind_unit.R@1217d97
    bad_units = sorted(
        {
            u
            for _, t, _, _, _, _, u, _ in rows  # check_meta_ind_unit_validation.R@0d4cd0b
            if t == "Indicator" and u and u not in ACCEPTABLE_INDICATOR_UNITS
        }
    )
    filter_ind_groups = [n for n, t, *_, g in rows if t == "Filter" and g]  # check_meta_indicator_grouping.R@1217d97
    return [
        _r(
            "check_meta_dupe_label",
            not dupe_labels,
            "All labels are unique.",
            f"The following labels are duplicated in the metadata file: '{', '.join(dupe_labels)}'.",
            stage,
        ),
        _r(
            "check_meta_fil_grp",
            not ind_with_group,
            "No indicators have a filter_grouping_column value.",
            f"Indicators should not have a filter_grouping_column value: '{', '.join(ind_with_group)}'.",
            stage,
        ),
        _r(
            "check_meta_fil_grp_dupe",
            not group_dupes,
            "No filter group is used twice.",
            f"Filter groups used for more than one filter: '{', '.join(group_dupes)}'.",
            stage,
        ),
        _r(
            "check_meta_fil_grp_is_fil",
            not group_is_filter,
            "No filter group is itself a filter.",
            f"Filter groups that are also filters: '{', '.join(group_is_filter)}'.",
            stage,
        ),
        _r(
            "check_meta_fil_grp_match",
            not group_missing,
            "All filter groups from the metadata were found in the data.",
            f"Filter groups not found as variables in the data file: '{', '.join(group_missing)}'.",
            stage,
        ),
        _r(
            "check_meta_label",
            blank_labels == 0,
            "The label column is completed for every row in the metadata.",
            f"There are labels missing in {blank_labels} rows of the metadata file.",
            stage,
        ),
        _r(
            "check_meta_filter_hint",
            not ind_hints,
            "No indicators have a filter_hint value.",
            f"Indicators should not have a filter_hint value: '{', '.join(ind_hints)}'.",
            stage,
        ),
        _r(
            "check_meta_geog_catch",
            not geog_filters,
            "No filters appear to be mislabelled geography columns.",
            f"The following filters appear to be geographic columns: '{', '.join(geog_filters)}'.",
            stage,
        ),
        _r(
            "check_meta_indicator_dp",
            not filter_dps,
            "No filters have an indicator_dp value.",
            "Filters should not have an indicator_dp value in the metadata file.",
            stage,
        ),
        _r(
            "check_meta_col_name_spaces",
            not name_spaces,
            "No col_name has spaces.",
            f"col_name values with spaces: '{', '.join(name_spaces)}'.",
            stage,
        ),
        _r(
            "check_meta_col_name_dupe",
            not name_dupes,
            "All col_name values are unique.",
            f"Duplicated col_name values: '{', '.join(name_dupes)}'.",
            stage,
        ),
        _r(
            "check_meta_ind_dp_set",
            not blank_dp,
            "The indicator_dp column is completed for all indicators.",
            f"The following indicators do not have a specified number of decimal places: '{', '.join(blank_dp)}'",
            stage,
            WARNING,
        ),
        _r(
            "check_meta_ind_dp_values",
            not bad_dp,
            "The indicator_dp column only contains blanks or positive integer values.",
            "The indicator_dp column must only contain blanks or positive integer values.",
            stage,
        ),
        _r(
            "check_meta_ind_unit",
            not filter_units,
            "No filters have an indicator_unit value.",
            f"Filters should not have an indicator_unit value: {', '.join(filter_units)}.",
            stage,
        ),
        _r(
            "check_meta_ind_unit_validation",
            not bad_units,
            "The indicator_unit values are valid",
            f"The following invalid indicator units are present in the meta data file: {', '.join(bad_units)}.",
            stage,
        ),
        _r(
            "check_meta_indicator_grouping",
            not filter_ind_groups,
            "No filters have an indicator_grouping value.",
            "Filters should not have an indicator_grouping value in the metadata file.",
            stage,
        ),
    ]


# --- general -------------------------------------------------------------------------------------------


def check_general_null(data: pl.DataFrame, meta: pl.DataFrame) -> CheckResult:
    """R/check_general_null.R@0d4483e: null-like symbols FAIL, legacy no-data symbols WARNING."""
    stage = "Check general"
    values = set()
    for column in data.columns:
        values.update(v for v in data[column].unique().to_list() if v is not None)
    meta_values = {v for c in meta.columns for v in _meta_values(meta, c)}
    null_in_data = bool(values & set(NULL_SYMBOLS))
    null_in_meta = sorted(set(NULL_SYMBOLS) & meta_values)
    if null_in_data or null_in_meta:
        return CheckResult(
            "check_general_null",
            FAIL,
            f"Problematic null or NA symbols were found (data: {null_in_data}; meta: {null_in_meta}).",
            stage,
        )
    if values & set(LEGACY_NODATA_SYMBOLS):
        return CheckResult("check_general_null", WARNING, "Legacy no-data symbols were found in the data file.", stage)
    return CheckResult("check_general_null", PASS, "No problematic null or legacy no-data symbols were found.", stage)


def check_general_dupes(data: pl.DataFrame, meta: pl.DataFrame) -> CheckResult:
    """R/check_general_dupes.R@1b6a994: duplicates across ob-unit and filter columns (School etc.
    excluded)."""
    check_cols = [c for c in dict.fromkeys(acceptable_ob_units() + filters_of(meta, True)) if c in data.columns]
    levels = _distinct(data, "geographic_level")
    exclude = (
        ["Institution", "Planning area"]
        if len(levels) == 1 and levels[0] in ("School", "Provider")
        else ["School", "Provider", "Institution", "Planning area"]
    )
    subset = data.filter(~pl.col("geographic_level").is_in(exclude)).select(check_cols)
    dupes = subset.height - subset.unique().height
    return _r(
        "check_general_dupes",
        dupes == 0,
        "There are no duplicate rows in the data file.",
        f"There are {dupes} duplicate rows in the data file.",
        "Check general",
    )


# --- filters -------------------------------------------------------------------------------------------


def precheck_filter_not_singular(data: pl.DataFrame, meta: pl.DataFrame) -> CheckResult:
    """R/precheck_filter_not_singular.R@99702df."""
    singular = [f for f in filters_of(meta) if f in data.columns and data[f].n_unique() < 2]
    return _r(
        "precheck_filter_not_singular",
        not singular,
        "All filters have two or more levels.",
        f"The following filters have fewer than two levels and should be removed from the metadata: "
        f"'{', '.join(singular)}'.",
        "Precheck filters",
    )


def check_filters(data: pl.DataFrame, meta: pl.DataFrame) -> list[CheckResult]:
    stage = "Check filters"
    filters = filters_of(meta)
    # check_filter_defaults.R@1217d97: default (filter_default or "Total") present, WARNING otherwise
    defaults = {}
    for name, kind, default in zip(
        _meta_values(meta, "col_name"),
        _meta_values(meta, "col_type"),
        _meta_values(meta, "filter_default") or [""] * meta.height,
        strict=True,
    ):
        if kind == "Filter":
            defaults[name] = default or "Total"
    for group in filter_groups_of(meta):
        defaults.setdefault(group, "Total")
    missing_default = [c for c, d in defaults.items() if c in data.columns and d not in set(_distinct(data, c))]
    # check_filter_group_level.R@9923f26: a filter group has no more levels than its filter
    bad_groups = []
    for name, group in zip(_meta_values(meta, "col_name"), _meta_values(meta, "filter_grouping_column"), strict=True):
        if group and name in data.columns and group in data.columns and data[group].n_unique() > data[name].n_unique():
            bad_groups.append(group)
    # check_filter_item_limit.R@020b492
    over_limit = [c for c in cols_meta(meta, True) if c in data.columns and data[c].n_unique() > FILTER_ITEM_LIMIT]
    # check_filter_whitespace.R@1cf3b4e: filters and geography columns
    geo_cols = [c for spec in GEOGRAPHY_DF.values() for c in spec if c]
    ws = []
    for column in [c for c in dict.fromkeys(filters + geo_cols) if c in data.columns]:
        ws += [v for v in _distinct(data, column) if v is not None and v != v.strip()]
    # check_filter_ob_total.R@4305ea0: no Total/All in observational unit columns
    ob_cols = [c for c in acceptable_ob_units() if c in data.columns and c not in ("school_name", "provider_name")]
    ob_cols += [c for c in data.columns if POTENTIAL_OB_UNITS_REGEX.search(c) and c not in ob_cols]
    groups = filter_groups_of(meta)
    if len(filters) == 1 and (
        filters[0] in ("school_name", "provider_name") or (groups and groups[0] in ("school_name", "provider_name"))
    ):
        ob_cols = [c for c in ob_cols if c not in ("school_name", "provider_name")]
    with_total = [c for c in ob_cols if set(_distinct(data, c)) & {"Total", "total", "All", "all"}]
    # check_filter_blanks.R@1068800
    blanks = [
        c for c in filters_of(meta, True) if c in data.columns and any(v is None or v == "" for v in _distinct(data, c))
    ]
    return [
        _r(
            "check_filter_defaults",
            not missing_default,
            "All filters and groups have a default filter item present.",
            f"A 'Total' entry or default filter item should be specified for: '{', '.join(missing_default)}'.",
            stage,
            WARNING,
        ),
        _r(
            "check_filter_group_level",
            not bad_groups,
            "Filter groups have no more levels than their filters.",
            f"Filter groups with more levels than their filter: '{', '.join(bad_groups)}'.",
            stage,
        ),
        _r(
            "check_filter_item_limit",
            not over_limit,
            f"All filters have fewer than {FILTER_ITEM_LIMIT} items.",
            f"Filters over the advised maximum number of items: '{', '.join(over_limit)}'.",
            stage,
        ),
        _r(
            "check_filter_whitespace",
            not ws,
            "No filter labels contain leading or trailing whitespace.",
            f"{len(ws)} filter label(s) contain leading or trailing whitespace.",
            stage,
        ),
        _r(
            "check_filter_ob_total",
            not with_total,
            "There are no Total or All values in the observational unit columns.",
            f"There are Total or All rows in the following observational unit columns: '{', '.join(with_total)}'.",
            stage,
        ),
        _r(
            "check_filter_blanks",
            not blanks,
            "There are no blank values in any filter or filter group columns.",
            f"There is at least one blank value in the following filter columns: '{', '.join(blanks)}'.",
            stage,
        ),
    ]


# --- time ----------------------------------------------------------------------------------------------


def precheck_time(data: pl.DataFrame) -> list[CheckResult]:
    stage = "Precheck time"
    periods = [p for p in _distinct(data, "time_period")]
    non_numeric = [str(p) for p in periods if p is None or not re.fullmatch(r"\d{4}(\d{2})?", str(p))]  # _num.R@1cf3b4e
    all_ids = {i for group in ACCEPTABLE_TIME_IDS for i in group}
    ids = [i for i in data["time_identifier"].unique(maintain_order=True).to_list()]
    invalid = sorted(str(i) for i in ids if i not in all_ids)  # precheck_time_id_valid.R@022a95b
    base = ids[0] if ids else None  # precheck_time_id_mix.R@1cf3b4e: one group of identifiers per file
    base_group = next((g for g in ACCEPTABLE_TIME_IDS if base in g), ())
    mixed = [i for i in ids if i not in base_group]
    return [
        _r(
            "precheck_time_period_num",
            not non_numeric,
            "The time_period column only contains numeric values.",
            f"Invalid time_period values: '{', '.join(non_numeric)}'; time_period must be a 4 or 6 digit number.",
            stage,
        ),
        _r(
            "precheck_time_id_valid",
            not invalid,
            "The time_identifier values are all valid.",
            f"The following invalid time_identifiers were found: '{', '.join(invalid)}'.",
            stage,
        ),
        _r(
            "precheck_time_id_mix",
            not mixed,
            "The time_identifier values are mixed appropriately.",
            f"The datafile is mixing incompatible time identifiers with '{base}': '{', '.join(map(str, mixed))}'.",
            stage,
        ),
    ]


def check_time(data: pl.DataFrame) -> list[CheckResult]:
    stage = "Check time"
    base = data["time_identifier"].unique(maintain_order=True).to_list()[0]
    lengths = {len(str(p)) for p in _distinct(data, "time_period")}
    want = 4 if base in FOUR_DIGIT_IDS else 6 if base in SIX_DIGIT_IDS else None  # check_time_period.R@1217d97
    ok_length = want is None or lengths == {want}

    def consecutive(period: str) -> bool:  # check_time_period_six.R@022a95b
        current, nxt = int(period[2:4]), int(period[4:6])
        return (current == 99 and nxt == 0) or current + 1 == nxt

    six = [str(p) for p in _distinct(data, "time_period") if p is not None and len(str(p)) == 6]
    bad_six = [p for p in six if not consecutive(p)]
    return [
        _r(
            "check_time_period",
            ok_length,
            "The time_period length matches the time_identifier values.",
            f"The time_period length for '{base}' must always be a {want} digit number.",
            stage,
        ),
        _r(
            "check_time_period_six",
            not bad_six,
            "The six digit time_period values refer to consecutive years.",
            "When the time period is six digits, the years must be consecutive such as 201920.",
            stage,
        ),
    ]


# --- geography -----------------------------------------------------------------------------------------


def precheck_geography(data: pl.DataFrame) -> list[CheckResult]:
    stage = "Precheck geography"
    levels = _distinct(data, "geographic_level")
    invalid = [str(level) for level in levels if level not in GEOGRAPHY_DF]  # precheck_geog_level.R@1217d97
    missing: list[str] = []  # precheck_geog_level_present.R@1217d97
    if not all(level == "National" for level in levels):
        for level in levels:
            if level in GEOGRAPHY_DF and level != "Planning area":
                missing += [c for c in GEOGRAPHY_DF[level] if c and c not in data.columns]
    return [
        _r(
            "precheck_geog_level",
            not invalid,
            "The geographic_level values are all valid.",
            f"The following invalid geographic level(s) were found in the file: {', '.join(invalid)}.",
            stage,
        ),
        _r(
            "precheck_geog_level_present",
            not missing,
            "The geography columns are present as expected for the geographic_level values in the file.",
            f"The following columns are missing from the file: {', '.join(sorted(set(missing)))}.",
            stage,
        ),
    ]


def _rows_of(data: pl.DataFrame, columns: list[str]) -> list[tuple]:
    return data.select(columns).unique().rows()


def check_geography(data: pl.DataFrame, meta: pl.DataFrame) -> list[CheckResult]:
    stage = "Check geography"
    out: list[CheckResult] = []
    cols = data.columns
    # check_geog_country_combos.R@8f10491: rows with country_code "x" excluded
    bad = [
        r
        for r in _rows_of(data.filter(pl.col("country_code") != "x"), ["country_code", "country_name"])
        if r not in acceptable_countries()
    ]
    out.append(
        _r(
            "check_geog_country_combos",
            not bad,
            "All country_code and country_name combinations are valid.",
            f"Invalid country_code / country_name combinations: {bad}.",
            stage,
        )
    )
    # check_geog_combos.R@15212ea (region: Regional rows strictly, others when code not blank/x)
    if {"region_code", "region_name"} <= set(cols):
        regional = _rows_of(data.filter(pl.col("geographic_level") == "Regional"), ["region_code", "region_name"])
        others = _rows_of(
            data.filter(
                (pl.col("geographic_level") != "Regional")
                & pl.col("region_code").is_not_null()
                & (pl.col("region_code") != "")
                & (pl.col("region_code") != "x")
            ),
            ["region_code", "region_name"],
        )
        bad = sorted({r for r in regional + others if r not in acceptable_regions()}, key=str)
        out.append(
            _r(
                "check_geog_region_combos",
                not bad,
                "All region_code / region_name combinations are valid.",
                f"Invalid region_code / region_name combinations: {bad}.",
                stage,
            )
        )
    # LA: (old_la_code, new_la_code, la_name); rows with new_la_code "x" or old_la_code null excluded
    if {"new_la_code", "la_name", "old_la_code"} <= set(cols):
        la_rows = data.filter(
            (pl.col("new_la_code") != "x") & pl.col("old_la_code").is_not_null() & (pl.col("old_la_code") != "")
        )
        bad = [r for r in _rows_of(la_rows, ["old_la_code", "new_la_code", "la_name"]) if r not in acceptable_las()]
        out.append(
            _r(
                "check_geog_la_combos",
                not bad,
                "All old_la_code / new_la_code / la_name combinations are valid.",
                f"Invalid old_la_code / new_la_code / la_name combinations: {bad}.",
                stage,
            )
        )
    # check_geog_level_completed.R@2786450 (new_la_code may be blank for old LAs)
    incomplete: list[str] = []
    for level in _distinct(data, "geographic_level"):
        if level not in GEOGRAPHY_DF or level == "Planning area":
            continue
        code, name, secondary = GEOGRAPHY_DF[level]
        expected = [c for c in (None if code == "new_la_code" else code, name, secondary) if c and c in cols]
        rows = data.filter(pl.col("geographic_level") == level)
        incomplete += [c for c in expected if rows.filter(pl.col(c).is_null() | (pl.col(c) == "")).height]
    out.append(
        _r(
            "check_geog_level_completed",
            not incomplete,
            "All geographic level columns are completed.",
            f"Columns incomplete for their geographic level: '{', '.join(sorted(set(incomplete)))}'.",
            stage,
        )
    )
    # check_geog_ignored_rows: School / Provider / Institution / Planning area rows are flagged
    ignored = [str(level) for level in _distinct(data, "geographic_level") if level in ("Institution", "Planning area")]
    out.append(
        _r(
            "check_geog_ignored_rows",
            not ignored,
            "No rows at levels the table tool ignores.",
            f"Rows at levels the table tool ignores: {', '.join(ignored)}.",
            stage,
            WARNING,
        )
    )
    # check_geog_la_col_present.R@6dd7a92
    la_cols = ["new_la_code", "la_name", "old_la_code"]
    present = [c for c in la_cols if c in cols]
    out.append(
        _r(
            "check_geog_la_col_present",
            not present or len(present) == 3,
            "Where local authority columns are present, all three are present.",
            f"Missing local authority columns: {', '.join(c for c in la_cols if c not in cols)}.",
            stage,
        )
    )
    # check_geog_region_for_la.R@044f768 (WARNING)
    la_rows = data.filter(pl.col("geographic_level") == "Local authority")
    region_ok = True
    if la_rows.height:
        region_ok = {"region_code", "region_name"} <= set(cols) and la_rows.filter(
            pl.col("region_code").is_null()
            | (pl.col("region_code") == "")
            | pl.col("region_name").is_null()
            | (pl.col("region_name") == "")
        ).height == 0
    out.append(
        _r(
            "check_geog_region_for_la",
            region_ok,
            "Region columns are completed for all Local authority rows.",
            "region_code and/or region_name are missing for Local authority rows.",
            stage,
            WARNING,
        )
    )
    # check_geog_na.R@2786450: a code "x" must come with the name "Not available" (other levels)
    na_bad = []
    for level in _distinct(data, "geographic_level"):
        if level in ("MAT", "Sponsor", "School", "Provider", "Opportunity area", "Police force area"):
            code, name, _ = GEOGRAPHY_DF[level]
            if (
                code in cols
                and name in cols
                and data.filter((pl.col(code) == "x") & (pl.col(name) != "Not available")).height
            ):
                na_bad.append(level)
    out.append(
        _r(
            "check_geog_na",
            not na_bad,
            "No location has a code 'x' without the name 'Not available'.",
            f"Levels with code 'x' but not 'Not available': {na_bad}.",
            stage,
        )
    )
    # check_geog_other_code_dupes.R@509c39d: a code has one name (Opportunity area, MAT, Sponsor)
    multi = []
    for level in ("Opportunity area", "MAT", "Sponsor"):
        code, name, _ = GEOGRAPHY_DF[level]
        if level in _distinct(data, "geographic_level") and code in cols and name in cols:
            counts = data.filter(pl.col(code).is_not_null() & (pl.col(code) != "")).select(code, name).unique()
            multi += counts.group_by(code).len().filter(pl.col("len") > 1)[code].to_list()
    out.append(
        _r(
            "check_geog_other_code_dupes",
            not multi,
            "Every geography code has one assigned geography.",
            f"Codes with several names: {multi}.",
            stage,
        )
    )
    # check_geog_overcompleted_cols.R@2786450
    levels = set(_distinct(data, "geographic_level"))
    over: list[str] = []
    for level, spec in GEOGRAPHY_DF.items():
        if level == "National" or level not in COMPATIBLE_LEVELS:
            continue
        incompatible = levels - set(COMPATIBLE_LEVELS[level])
        if not incompatible:
            continue
        rows = data.filter(pl.col("geographic_level").is_in(sorted(incompatible)))
        for column in (c for c in spec if c and c in cols):
            if rows.filter(pl.col(column).is_not_null() & (pl.col(column) != "")).height:
                over.append(column)
    out.append(
        _r(
            "check_geog_overcompleted_cols",
            not over,
            "All geographic columns are empty where expected.",
            f"Geographic columns completed for unexpected geographic_level rows: {sorted(set(over))}.",
            stage,
        )
    )
    return out


# --- indicators and API --------------------------------------------------------------------------------


def check_ind_invalid_entry(data: pl.DataFrame, meta: pl.DataFrame) -> CheckResult:
    """R/check_ind_invalid_entry.R@0316520: no blank or legacy GSS symbol in any indicator."""
    bad = [
        c
        for c in indicators_of(meta)
        if c in data.columns and data.filter(pl.col(c).is_null() | pl.col(c).is_in(["", *LEGACY_GSS_SYMBOLS])).height
    ]
    return _r(
        "check_ind_invalid_entry",
        not bad,
        "There are no blank values or GSS legacy symbols in any indicators.",
        f"{len(bad)} indicators with invalid entries: {', '.join(bad)}.",
        "Check indicators",
    )


def check_api(data: pl.DataFrame, meta: pl.DataFrame) -> list[CheckResult]:
    """R/check_api_char_limit.R@00bd1d9 with data-raw/char_limits.R@1217d97 (WARNING: not API-suitable)."""
    stage = "Check API"
    geo_codes = [c for spec in GEOGRAPHY_DF.values() for c in (spec[0], spec[2]) if c and c in data.columns]
    geo_names = [spec[1] for spec in GEOGRAPHY_DF.values() if spec[1] in data.columns]
    codes = {v for c in geo_codes for v in _distinct(data, c) if v}
    items = {
        v
        for c in dict.fromkeys(filters_of(meta, True) + geo_names)
        if c in data.columns
        for v in _distinct(data, c)
        if v
    }
    checks = (
        ("check_api_char_col_name", data.columns, "column-name"),
        ("check_api_char_col_label", _meta_values(meta, "label"), "column-label"),
        ("check_api_char_loc_code", codes, "location-code"),
        ("check_api_char_filter_items", items, "column-item"),
    )
    out = []
    for name, values, kind in checks:
        limit = API_CHAR_LIMITS[kind]
        over = sorted(v for v in values if len(v) > limit)
        out.append(
            _r(
                name,
                not over,
                f"All {kind} values are within {limit} characters.",
                f"Values over the {limit}-character limit for '{kind}': {over}.",
                stage,
                WARNING,
            )
        )
    return out


# --- driver --------------------------------------------------------------------------------------------


def screen_frames(
    data: pl.DataFrame, meta: pl.DataFrame, data_name: str = "data.csv", meta_name: str = "data.meta.csv"
) -> ScreenResult:
    """Run every ported check in eesyscreener's order; stop after the first stage with a FAIL."""
    stages = [
        lambda: check_filenames(data_name, meta_name),
        lambda: precheck_columns(data, meta),
        lambda: precheck_cross(data, meta),
        lambda: check_columns(data, meta),
        lambda: precheck_meta(meta),
        lambda: check_meta(data, meta),
        lambda: [check_general_null(data, meta)],
        lambda: [precheck_filter_not_singular(data, meta)],
        lambda: precheck_time(data),
        lambda: precheck_geography(data),
        lambda: check_time(data),
        lambda: check_filters(data, meta),
        lambda: [check_general_dupes(data, meta)],
        lambda: check_geography(data, meta),
        lambda: [check_ind_invalid_entry(data, meta)],
        lambda: check_api(data, meta),
    ]
    results: list[CheckResult] = []
    for stage in stages:
        batch = stage()
        results += batch
        if any(r.result == FAIL for r in batch):
            break
    return ScreenResult(results)


def read_ees_csv(path: Path) -> pl.DataFrame:
    """Every column as text, empty cells as empty strings (indicators may hold symbols)."""
    return pl.read_csv(path, infer_schema=False, encoding="utf8").with_columns(pl.all().fill_null(""))


def screen_files(data_path: Path, meta_path: Path) -> ScreenResult:
    data_path, meta_path = Path(data_path), Path(meta_path)
    return screen_frames(read_ees_csv(data_path), read_ees_csv(meta_path), data_path.name, meta_path.name)
