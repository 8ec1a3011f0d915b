"""The gateway serves a table that stores its disclosure control without its suppressed rows, failing closed."""

from __future__ import annotations

import polars as pl
import pytest

from access.gateway import _disclosure_controlled
from access.policy import AccessRefused


def test_rows_flagged_suppressed_or_with_no_flag_are_not_served() -> None:
    stored = pl.LazyFrame(
        {
            "geographic_level": ["National", "Local authority", "Local authority"],
            "old_la_code": ["", "201", "373"],
            "possible_sessions": [400, None, 96],
            "suppressed": [False, True, None],
        }
    )
    served = _disclosure_controlled(stored, "la_aggregates/stats_attendance_views", 3).collect()
    # 201 is suppressed; 373's flag is missing, which counts as suppressed
    assert served["old_la_code"].to_list() == [""]


def test_a_suppressed_column_that_is_not_a_flag_refuses_the_query() -> None:
    stored = pl.LazyFrame({"geographic_level": ["National"], "suppressed": ["no"]})
    with pytest.raises(AccessRefused) as info:
        _disclosure_controlled(stored, "la_aggregates/odd", 1)
    assert info.value.rule == "disclosure-unavailable"
