"""A generated week through the real broker, worker, aggregation and publication: the EES files pass the
screener and no published cell reveals a Local authority built from one school.

The CI-sized twin of bench/screen_generated_week.py (2,000 schools): 30 schools x 5 school days with 1% of
extracts faulty, every step the `attendance` CLI in a subprocess, as an operator would run it.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from access.leakscan import scan_frame, scan_outputs
from attendance.settings import Settings
from official_stats.disclosure import DisclosureRules
from official_stats.ees import DESCRIPTIVE_COLUMNS, UNSUPPRESSED_INDICATORS
from official_stats.periods import school_days_ending
from official_stats.screener import screen_files
from tests.conftest import settings_env

pytestmark = pytest.mark.integration


def attendance(
    settings: Settings, cwd: Path, *args: str, allowed: tuple[int, ...] = (0,), also: str | None = None
) -> str:
    """Run one CLI step; exit codes other than 0 are accepted when in ``allowed`` and the output says
    ``also``."""
    env = settings_env(settings)
    env["ATTENDANCE_METRICS_PORT"] = "0"
    done = subprocess.run(
        [sys.executable, "-m", "attendance", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    ok = done.returncode == 0 or (done.returncode in allowed and (also is None or also in done.stdout + done.stderr))
    assert ok, f"attendance {' '.join(args[:2])}: exit {done.returncode}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def published(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path, list[dt.date]]:
    """Run the week once for every test of this module; returns (settings, output directory, days)."""
    import uuid

    root = tmp_path_factory.mktemp("e2e")
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap,
        lake_uri=str(root / "lake"),
        state_dir=root / "state",
        topic_extracts=f"test.extracts.{suffix}",
        topic_optouts=f"test.optouts.{suffix}",
        topic_deadletter=f"test.deadletter.{suffix}",
        consumer_group=f"test-worker-{suffix}",
        extracts_partitions=4,
    )
    days = school_days_ending(dt.date.today(), 5)
    data, out = root / "generated", root / "published"
    attendance(settings, root, "topics", "create")
    attendance(
        settings,
        root,
        "generate",
        "--out",
        str(data),
        "--schools",
        "30",
        "--start-date",
        days[0].isoformat(),
        "--days",
        "5",
        "--fault-rate",
        "0.01",
        "--seed",
        "5",
        "--workers",
        "1",
    )
    # exit 1: the generator plants a few bad register rows, which are reported and left out
    attendance(settings, root, "schools", "load", str(data / "register" / "edubasealldata.csv"), allowed=(0, 1))
    # exit 1 with "0 not delivered": files the generator made malformed are refused, the rest are sent
    attendance(
        settings,
        root,
        "send",
        "--no-progress",
        *[str(data / "extracts" / d.isoformat()) for d in days],
        allowed=(0, 1),
        also=" refused, 0 not delivered",
    )
    attendance(settings, root, "worker", "--until-drained")
    attendance(settings, root, "aggregate", "--full")
    attendance(settings, root, "publish", "--release", days[-1].isoformat(), "--out", str(out), "--now")
    return settings, out, days


def data_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.csv") if not p.name.endswith(".meta.csv"))


def test_every_published_file_passes_the_screener(published: tuple[Settings, Path, list[dt.date]]) -> None:
    _, out, _ = published
    names = {p.name for p in data_files(out)}
    assert {"attendance_term.csv", "attendance_ytd.csv", "attendance_characteristics_ytd.csv"} <= names
    for path in data_files(out):
        result = screen_files(path, path.with_name(path.name[: -len(".csv")] + ".meta.csv"))
        assert result.passed, f"{path.name}: " + "; ".join(f"{f.check}: {f.message}" for f in result.failures)


def test_the_screen_command_passes_a_published_file(published: tuple[Settings, Path, list[dt.date]]) -> None:
    settings, out, _ = published
    output = attendance(settings, out, "screen", str(out / "attendance_ytd.csv"), str(out / "attendance_ytd.meta.csv"))
    assert output.strip().splitlines()[-1].startswith("PASSED")


def test_no_published_cell_reveals_a_local_authority_of_one_school(
    published: tuple[Settings, Path, list[dt.date]],
) -> None:
    _, out, _ = published
    rules = DisclosureRules.from_config()
    lone_rows = 0
    for path in data_files(out):
        frame = pl.read_csv(path, infer_schema=False)
        assert scan_frame(path.name, frame, single_school_max=1, min_pupil_count=rules.min_pupil_count) == []
        la = frame.filter(pl.col("geographic_level") == "Local authority")
        if la.height == 0:
            continue
        lone = la.filter(
            (pl.col("school_submitted_count").cast(pl.Int64) <= 1)
            | (pl.col("num_schools").cast(pl.Float64).round(0) <= 1)
        )
        figures = [c for c in frame.columns if c not in DESCRIPTIVE_COLUMNS | UNSUPPRESSED_INDICATORS]
        shown = {c: lone.filter(pl.col(c) != "c").height for c in figures}
        assert {c: n for c, n in shown.items() if n} == {}, path.name
        lone_rows += lone.height
    # 30 schools over England's 153 LAs: many LAs have one school, so the rule had rows to apply to
    assert lone_rows > 0


def test_the_la_and_above_zone_of_the_lake_holds_only_controlled_rows(
    published: tuple[Settings, Path, list[dt.date]],
) -> None:
    settings, _, _ = published
    findings = scan_outputs(settings.lake_uri, storage_options={})
    assert [f for f in findings if f.location.startswith("la_aggregates/")] == []
    stored = pl.read_delta(str(Path(settings.lake_uri) / "la_aggregates" / "stats_attendance_views"))
    lone = stored.filter((pl.col("geographic_level") == "Local authority") & (pl.col("school_submitted_count") <= 1))
    assert lone.height > 0 and lone["suppressed"].all() and lone["possible_sessions"].null_count() == lone.height
