"""Geography reference data: local authorities, regions, country.

The CSVs beside this module are copied from dfe-analytical-services/dfe-published-data-qa data/*.csv
(@bcc7ca5, MIT licence), the lookups DfE's EES screener checks geography against.
Live LAs are those with ``status == live`` and a 3-digit old code (153 in England); combined pseudo-LAs
and BFPO (702, code ``z``) are excluded.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

ENGLAND_CODE = "E92000001"
ENGLAND_NAME = "England"


@dataclass(frozen=True, slots=True)
class LocalAuthority:
    old_la_code: str  # 3 digits, e.g. "373"
    new_la_code: str  # 9-character GSS code, e.g. "E08000039"
    la_name: str
    region_code: str
    region_name: str


def _rows(name: str) -> list[dict[str, str]]:
    text = resources.files("schemas").joinpath("reference", name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


@lru_cache(maxsize=1)
def regions() -> dict[str, str]:
    """Region code -> name for the nine English regions (E12...)."""
    return {r["region_code"]: r["region_name"] for r in _rows("regions.csv") if r["region_code"].startswith("E12")}


@lru_cache(maxsize=1)
def local_authorities() -> dict[str, LocalAuthority]:
    """Live LAs keyed by old 3-digit code."""
    region_names = regions()
    result: dict[str, LocalAuthority] = {}
    for row in _rows("las.csv"):
        old = row["old_la_code"]
        if row["status"] != "live" or not old.isdigit() or row["parent_geography_code"] not in region_names:
            continue
        result[old] = LocalAuthority(
            old_la_code=old,
            new_la_code=row["new_la_code"],
            la_name=row["la_name"],
            region_code=row["parent_geography_code"],
            region_name=region_names[row["parent_geography_code"]],
        )
    return result


@lru_cache(maxsize=1)
def valid_la_code_name_pairs() -> frozenset[tuple[str, str, str]]:
    """(old_la_code, new_la_code, la_name) combinations the screener accepts, historic codes included."""
    return frozenset(
        (r["old_la_code"], r["new_la_code"], r["la_name"]) for r in _rows("region_la_hierarchy.csv")
    ) | frozenset((la.old_la_code, la.new_la_code, la.la_name) for la in local_authorities().values())
