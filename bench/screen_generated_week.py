"""Run the real pipeline on a generated week and screen the publication with the EES screener.

    .venv/bin/python bench/screen_generated_week.py [--schools 2000] [--days 5] [--fault-rate 0.01]
                                                    [--work DIR] [--keep]

Every step is the `attendance` CLI in a subprocess, as an operator would run it, against a broker and a
lake of this run's own (``ATTENDANCE_STATE_DIR`` and ``ATTENDANCE_LAKE_URI`` under ``--work``; nothing
else is touched; the broker this script starts is stopped and wiped at the end):

    attendance kafka start
    attendance topics create
    attendance generate --schools N --days D --fault-rate F --start-date <D school days ending today>
    attendance schools load <register>
    attendance send <each day's extracts>
    attendance worker --until-drained
    attendance aggregate --full
    attendance publish --release <last day> --out <work>/published --now
    attendance screen <file>.csv <file>.meta.csv     (every file pair)

then checks that no published Local authority row built from one school shows a figure, and that the
LA-and-above zone of the lake holds no cell the disclosure rules suppress (``access.leakscan``). Prints
each step's time and each file's screener result; exits 1 if a step or a check failed. Prints no pupil
value (the CLI's own output is kept in ``<work>/steps.log``).

Too slow for CI at 2,000 schools; tests/integration/test_publication_end_to_end.py runs the same flow on
30 schools.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from official_stats.ees import DESCRIPTIVE_COLUMNS, UNSUPPRESSED_INDICATORS
from official_stats.periods import school_days_ending


def lone_school_cells(data: pl.DataFrame) -> int:
    """Figures shown in published Local authority rows built from one school (should be 0)."""
    if "geographic_level" not in data.columns:
        return 0
    schools = [c for c in ("school_submitted_count", "num_schools") if c in data.columns]
    if not schools:
        return 0
    lone = pl.any_horizontal([pl.col(c).cast(pl.Float64, strict=False).round(0) <= 1 for c in schools])
    rows = data.filter((pl.col("geographic_level") == "Local authority") & lone.fill_null(False))
    figures = [c for c in data.columns if c not in DESCRIPTIVE_COLUMNS and c not in UNSUPPRESSED_INDICATORS]
    if rows.height == 0 or not figures:
        return 0
    shown = rows.select(
        [((pl.col(c).fill_null("") != "c") & (pl.col(c).fill_null("") != "")).sum().alias(c) for c in figures]
    )
    return int(sum(shown.row(0)))


class Runner:
    def __init__(self, work: Path, env: dict[str, str]):
        self.work, self.env = work, env
        self.log = (work / "steps.log").open("a", encoding="utf-8")
        self.failed: list[str] = []
        self.timings: list[tuple[str, float, int]] = []

    def run(
        self, step: str, *args: str, allowed: tuple[int, ...] = (0,), also: str | None = None
    ) -> subprocess.CompletedProcess:
        """Run one CLI step; it fails unless its exit code is in ``allowed`` and, for a non-zero exit code,
        its output contains ``also``."""
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "attendance", *args],
            env=self.env,
            cwd=self.work,
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - started
        self.log.write(f"$ attendance {' '.join(args)}\n{done.stdout}{done.stderr}[exit {done.returncode}]\n")
        self.log.flush()
        self.timings.append((step, elapsed, done.returncode))
        ok = done.returncode in allowed and (done.returncode == 0 or also is None or also in done.stdout + done.stderr)
        print(f"  {step:<10} {elapsed:7.1f}s  exit {done.returncode}{'' if ok else '  FAILED'}", flush=True)
        if not ok:
            self.failed.append(step)
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            print("    " + "\n    ".join(tail), flush=True)
        return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schools", type=int, default=2000)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--fault-rate", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="Working directory (default: a new temp dir).")
    parser.add_argument("--keep", action="store_true", help="Keep the working directory (lake, files, log).")
    args = parser.parse_args()

    work = (args.work or Path(tempfile.mkdtemp(prefix="screen_week_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTENDANCE_")}
    env.update(
        {
            "ATTENDANCE_STATE_DIR": str(work / "state"),
            "ATTENDANCE_LAKE_URI": str(work / "lake"),
            "ATTENDANCE_METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    days = school_days_ending(dt.date.today(), args.days)
    data, published = work / "generated", work / "published"
    print(
        f"{args.schools} schools x {args.days} days ({days[0]} to {days[-1]}), fault rate {args.fault_rate}; "
        f"work dir {work}",
        flush=True,
    )
    runner = Runner(work, env)
    started = time.perf_counter()
    broker_started = False
    results: list[tuple[str, bool, str]] = []
    try:
        broker_started = runner.run("kafka", "kafka", "start").returncode == 0
        if broker_started:
            runner.run("topics", "topics", "create")
            runner.run(
                "generate",
                "generate",
                "--out",
                str(data),
                "--schools",
                str(args.schools),
                "--start-date",
                days[0].isoformat(),
                "--days",
                str(args.days),
                "--fault-rate",
                str(args.fault_rate),
                "--seed",
                str(args.seed),
            )
            # exit 1 = some register rows were rejected and reported (the generator plants a few)
            runner.run("register", "schools", "load", str(data / "register" / "edubasealldata.csv"), allowed=(0, 1))
            # exit 1 with "0 not delivered": the files the generator made malformed were refused, the rest sent
            runner.run(
                "send",
                "send",
                "--no-progress",
                *[str(data / "extracts" / d.isoformat()) for d in days],
                allowed=(0, 1),
                also=" refused, 0 not delivered",
            )
            runner.run("worker", "worker", "--until-drained")
            runner.run("aggregate", "aggregate", "--full")
            runner.run("publish", "publish", "--release", days[-1].isoformat(), "--out", str(published), "--now")
            for data_csv in sorted(published.glob("*.csv")):
                if data_csv.name.endswith(".meta.csv"):
                    continue
                meta_csv = data_csv.with_name(data_csv.name[: -len(".csv")] + ".meta.csv")
                done = runner.run("screen", "screen", str(data_csv), str(meta_csv), allowed=(0, 1))
                verdict = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "no output"
                results.append((data_csv.name, done.returncode == 0, verdict))
    finally:
        if broker_started:
            runner.run("kafka stop", "kafka", "stop", "--wipe")
    total = time.perf_counter() - started

    print("\nscreener (attendance screen, a port of DfE's eesyscreener):")
    for name, passed, verdict in results:
        print(f"  {'PASS' if passed else 'FAIL'}  {name}: {verdict}")
    from access.leakscan import scan_frame, scan_outputs
    from official_stats.disclosure import DisclosureRules

    rules = DisclosureRules.from_config()
    lone_cells, file_findings = 0, 0
    files = sorted(p for p in published.glob("*.csv") if not p.name.endswith(".meta.csv")) if published.exists() else []
    print("published files (one-school LA rows; access.leakscan: UPN text, pupil columns, unsuppressed cells):")
    for path in files:
        frame = pl.read_csv(path, infer_schema=False)
        cells = lone_school_cells(frame)
        lone_cells += cells
        scanned = scan_frame(
            path.name, frame, single_school_max=rules.single_school_max, min_pupil_count=rules.min_pupil_count
        )
        file_findings += len(scanned)
        la = frame.filter(pl.col("geographic_level") == "Local authority")
        hidden = la.filter(pl.col("possible_sessions") == "c").height if "possible_sessions" in la.columns else 0
        print(
            f"  {path.name}: {frame.height} rows, {la.height} LA rows of which {hidden} suppressed; "
            f"one-school LA figures shown: {cells}; leak-scan findings: {len(scanned)}"
        )
        for finding in scanned:
            print(f"    {finding.check}: {finding.detail}")

    findings = scan_outputs(str(work / "lake"), storage_options={}) if (work / "lake").exists() else []
    la_findings = [f for f in findings if f.location.startswith("la_aggregates/")]
    for finding in la_findings:
        print(f"  leak scan: {finding.location}: {finding.check}: {finding.detail}")
    print(f"  leak scan of the LA-and-above zone: {len(la_findings)} finding(s)")

    all_passed = bool(results) and all(p for _, p, _ in results)
    ok = not runner.failed and all_passed and lone_cells == 0 and file_findings == 0 and not la_findings
    print(
        f"\n{'OK' if ok else 'FAILED'}: {len(results)} file(s) screened, "
        f"{sum(p for _, p, _ in results)} passed; steps failed: {', '.join(runner.failed) or 'none'}; "
        f"total {total:.0f}s"
    )
    if args.keep:
        print(f"kept {work} (steps.log has every command's output)")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
