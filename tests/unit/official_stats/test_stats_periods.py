"""Calendar helpers of the statistics: school days."""

from __future__ import annotations

import datetime as dt

from official_stats.periods import school_days_ending


def test_school_days_ending_a_weekday_are_the_weekdays_up_to_it_oldest_first() -> None:
    wednesday = dt.date(2026, 12, 2)
    assert school_days_ending(wednesday, 5) == [dt.date(2026, 11, d) for d in (26, 27, 30)] + [
        dt.date(2026, 12, 1), wednesday]


def test_school_days_ending_a_weekend_end_on_the_friday_before() -> None:
    sunday = dt.date(2026, 12, 6)
    assert school_days_ending(sunday, 2) == [dt.date(2026, 12, 3), dt.date(2026, 12, 4)]
