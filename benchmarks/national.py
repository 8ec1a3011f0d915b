"""``attendance bench national``: one national school day through the whole platform, timed stage by stage.

What one run does (docs/benchmarks.md explains each figure):

1. **generate** two school days for ``--schools`` schools (``ingest.generate.generate``, 2 processes): the
   day before (the *history*) and the measured day, whose extracts also re-send the previous day's amended
   marks. Timed, but not part of the pipeline.
2. **history** (not timed as a stage): day 1 is sent, processed by one worker and aggregated, so the measured
   day lands on a lake that already holds the previous day, as in production. Each pipeline run starts from a
   copy of this lake, whose Delta offsets point at the first message of day 2.
3. **produce**: ``send_files`` of day 2 to a fresh extracts topic (``max(8, 2 x max(--workers))`` partitions).
4. **bare consume**: the physical reference: one aiokafka consumer, no group, every partition assigned, read
   to the end offsets, ``orjson.loads`` of every value, pupils counted.
5. **pipeline**: ``attendance worker --until-drained`` subprocess(es): consume, decode, validate, Delta
   write; from the first assignment (fetching starts) to the last commit, read from the worker's log: the
   last batch, or a fold if the worker ran one on its own (staged rows past ``ATTENDANCE_FOLD_MAX_STAGED_ROWS``,
   or idle). A drained worker does not fold: what it staged is committed, and read with its table until a
   fold (``storage.current``); ``attendance aggregate`` folds before it reads, inside the **total**.
6. **aggregate** (``attendance aggregate``, the daily incremental run) and **publish**
   (``attendance publish --release D --out ... --now``) on the reference run's lake; **total** = first
   message consumed to statistics published.
7. **scale-out**: the pipeline stage again with each ``--workers`` count (one consumer group per run, a fresh
   copy of the history lake each), checking that every run's tables equal the reference run's.

Pure helpers (report arithmetic, log parsing, content hash, the table) come first; the I/O edge follows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from attendance.errors import UserFacingError
from attendance.procfs import memory_kib
from attendance.settings import Settings

NATIONAL_SCHOOLS = 21_292  # state-funded schools in England sending daily attendance (brief; GIAS 2025/26)
PIPELINE_RATIO_TARGET = 0.5  # pipeline records/s over bare-consumer records/s
TOTAL_TARGET_S = 300.0  # first message consumed -> statistics published, national day
#: Share of changed marks that the generator re-sends on the very next school day
#: (ingest/generate.py ``_OFFSET_CUM[0]``; pinned by tests/unit/benchmarks/test_national.py).
NEXT_DAY_RESEND_SHARE = 0.35
#: Fault kinds injected into the benchmark's extracts. ``missing_chunk`` is left out on purpose: an extract
#: missing a chunk holds its partition's committed offset until the 1-hour incomplete timeout, so every
#: pipeline run would re-read part of the history day and the stages would not measure the same messages.
BENCH_FAULT_KINDS: tuple[str, ...] = (
    "invalid_code", "bad_check_letter", "unknown_urn", "malformed_json", "duplicate_session",
    "out_of_window_date", "weekend_date", "bad_year_group", "duplicate_upn", "dob_implausible",
)
SESSIONS_KEY = ("urn", "upn", "date", "session")
#: Columns left out of the sessions content hash: when the row was committed differs from run to run.
SESSIONS_HASH_EXCLUDED = ("ingested_at",)

_LOG_LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ streams\.app: (.*)$")
_ASSIGNED = re.compile(r"^assigned (\d+) extract partitions")
_STAGE = re.compile(r"\b(gather|barrier|process|wait|write) ([\d.]+)s\b")
_BY_TABLE = re.compile(r"\(by table: ([^)]*)\)")
_TABLE_SECONDS = re.compile(r"(\w+) ([\d.]+)s")
_FOLD_SECONDS = re.compile(r" in ([\d.]+) ?s\b")


# --- pure helpers -------------------------------------------------------------------------------------------


def parse_workers(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``: distinct positive worker counts in the order given."""
    counts: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise UserFacingError(f"--workers: {part!r} is not a positive whole number (e.g. --workers 1,2,4)")
        if int(part) not in counts:
            counts.append(int(part))
    if not counts:
        raise UserFacingError("--workers: give at least one worker count, e.g. --workers 1,2,4")
    return tuple(counts)


def partitions_for(workers: Sequence[int]) -> int:
    """Extracts-topic partitions for a run: two per worker of the largest run, and at least the default 8."""
    return max(8, 2 * max(workers))


def _ratio(reference_s: float | None, seconds: float | None, digits: int = 3) -> float | None:
    """How much faster than the reference (reference seconds / these seconds); None when either is unknown."""
    return round(reference_s / seconds, digits) if reference_s and seconds else None


def per_second(count: float, seconds: float | None) -> float | None:
    """A rate, or None when there is no positive duration to divide by."""
    if seconds is None or seconds <= 0:
        return None
    return count / seconds


def amendment_rate_for(resent_share: float) -> float:
    """The generator's ``amendment_rate`` that makes day 2 re-send ``resent_share`` of day 1's marks.

    Of the marks changed on a day, the generator re-sends ``NEXT_DAY_RESEND_SHARE`` the next school day; in a
    two-day run only those reach day 2, so the rate is scaled up to give the wanted share on the day measured.
    """
    if not 0.0 <= resent_share <= NEXT_DAY_RESEND_SHARE:
        raise UserFacingError(
            f"--amendments must be between 0 and {NEXT_DAY_RESEND_SHARE} (a share of a day's marks)")
    return resent_share / NEXT_DAY_RESEND_SHARE


def benchmark_days(today: dt.date) -> tuple[dt.date, dt.date]:
    """(history day, measured day): the most recent weekday up to ``today`` and the weekday before it."""
    day = today
    while day.weekday() >= 5:
        day -= dt.timedelta(days=1)
    previous = day - dt.timedelta(days=1)
    while previous.weekday() >= 5:
        previous -= dt.timedelta(days=1)
    return previous, day


def default_stage_timeout(schools: int) -> float:
    """Seconds any one stage may take before the benchmark gives up: generous for a 2-core shared machine."""
    return 300.0 + 0.08 * schools


@dataclass(frozen=True)
class WorkerLog:
    """What a worker's log says about a run (epoch seconds, local clock)."""

    first_assigned: float | None = None  # first assignment with partitions: fetching starts right after
    last_commit: float | None = None  # the last batch (or fold of staged rows) committed to Delta
    batches: int = 0
    replays_skipped: int = 0
    #: Seconds summed over committed batches, per worker stage (process, wait, write; write.TABLE: the part
    #: of the write spent on that Delta table, retries included, nested commits counted in both), and folds.
    stage_seconds: dict[str, float] = field(default_factory=dict)
    last_batch: float | None = None  # the last batch committed (staged rows not yet folded)


def parse_worker_log(lines: Iterable[str]) -> WorkerLog:
    """Read the ``streams.app`` INFO lines of ``attendance worker`` (format of ``attendance.cli``)."""
    first: float | None = None
    last: float | None = None
    batches = skipped = 0
    last_batch: float | None = None
    stages: dict[str, float] = {}
    for line in lines:
        match = _LOG_LINE.search(line.rstrip("\n"))  # a line may start with a terminal escape
        if not match:
            continue
        moment = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        message = match.group(2)
        assigned = _ASSIGNED.match(message)
        if assigned and int(assigned.group(1)) > 0:
            first = moment if first is None else min(first, moment)
        elif message.startswith("batch:"):
            if message.endswith("(committed)"):
                batches += 1
                last = moment if last is None else max(last, moment)
                last_batch = moment if last_batch is None else max(last_batch, moment)
                by_table = _BY_TABLE.search(message)
                for stage, seconds in _STAGE.findall(_BY_TABLE.sub("", message)):
                    stages[stage] = stages.get(stage, 0.0) + float(seconds)
                for table, seconds in _TABLE_SECONDS.findall(by_table.group(1) if by_table else ""):
                    stages[f"write.{table}"] = stages.get(f"write.{table}", 0.0) + float(seconds)
            else:
                skipped += 1
        elif message.startswith("fold (") and "failed" not in message:
            last = moment if last is None else max(last, moment)  # staged rows land in their tables
            timed = _FOLD_SECONDS.search(message)
            if timed:
                stages["fold"] = stages.get("fold", 0.0) + float(timed.group(1))
    return WorkerLog(first, last, batches, skipped, {k: round(v, 2) for k, v in stages.items()}, last_batch)


def merge_worker_logs(logs: Iterable[WorkerLog]) -> WorkerLog:
    """Several workers of one run: earliest start, latest commit, batches summed."""
    logs = list(logs)
    firsts = [w.first_assigned for w in logs if w.first_assigned is not None]
    lasts = [w.last_commit for w in logs if w.last_commit is not None]
    stages: dict[str, float] = {}
    for w in logs:
        for stage, seconds in w.stage_seconds.items():
            stages[stage] = round(stages.get(stage, 0.0) + seconds, 2)
    last_batches = [w.last_batch for w in logs if w.last_batch is not None]
    return WorkerLog(min(firsts) if firsts else None, max(lasts) if lasts else None,
                     sum(w.batches for w in logs), sum(w.replays_skipped for w in logs), stages,
                     max(last_batches) if last_batches else None)


def sessions_content_hash(batches: Iterable[pa.Table | pa.RecordBatch]) -> str:
    """A content hash of every session row, ``ingested_at`` left out, independent of row order and of how
    the rows are split into batches or files: the row count and the sum and XOR (mod 2**64) of each row's
    hash. Keys are unique, so this equals hashing the rows sorted by key, but streams batch by batch in
    bounded memory (a national lake holds over 30 million session rows)."""
    rows = total = xor = 0
    for batch in batches:
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        frame = frame.drop([c for c in SESSIONS_HASH_EXCLUDED if c in frame.columns])
        if not frame.height:
            continue
        hashes = frame.select(sorted(frame.columns)).hash_rows(seed=0).to_numpy().astype(np.uint64)
        rows += len(hashes)
        total = (total + int(hashes.sum(dtype=np.uint64))) % 2**64
        xor ^= int(np.bitwise_xor.reduce(hashes))
    return hashlib.sha256(f"{rows}:{total}:{xor}".encode()).hexdigest()


def table_differences(reference: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    """Names of the lake summary entries that differ (empty: the two lakes hold the same data)."""
    return sorted(k for k in set(reference) | set(other) if reference.get(k) != other.get(k))


def throughput(seconds: float | None, *, messages: int, pupil_records: int, marks: int, value_bytes: int
               ) -> dict[str, Any]:
    """One stage's volumes and rates (records = pupil records; MB = uncompressed message values)."""
    return {
        "seconds": _round(seconds),
        "messages": messages,
        "pupil_records": pupil_records,
        "marks": marks,
        "megabytes": round(value_bytes / 1e6, 1),
        "pupil_records_per_s": _round(per_second(pupil_records, seconds), 0),
        "marks_per_s": _round(per_second(marks, seconds), 0),
        "megabytes_per_s": _round(per_second(value_bytes / 1e6, seconds), 1),
    }


def scale_out_summary(runs: Sequence[Mapping[str, Any]], cpu_count: int | None) -> dict[str, Any]:
    """Speed-up of each run over the one with the fewest workers (the reference); ``runs`` carry
    ``workers``, ``seconds`` and ``equal_to_reference``."""
    if not runs:
        return {"cpu_count": cpu_count, "runs": [], "all_equal": True}
    reference = min(runs, key=lambda r: r["workers"])
    out = []
    for run in runs:
        out.append({**run, "speedup": _ratio(reference.get("seconds"), run.get("seconds"), digits=2)})
    return {
        "cpu_count": cpu_count,
        "reference_workers": reference["workers"],
        "runs": out,
        "all_equal": all(r.get("equal_to_reference", False) for r in runs),
    }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return f"{text}{unit}"


def format_table(report: Mapping[str, Any]) -> str:
    """The report as a readable table (every figure is also in the JSON file)."""
    stages = report["stages"]
    data = report["data"]
    machine = report["machine"]
    lines = [
        f"national-day benchmark: {report['parameters']['schools']:,} schools, day {report['parameters']['day']}"
        f" ({data['pupil_records']:,} pupil records, {data['marks']:,} marks incl. {data['amended_marks']:,}"
        f" amended, {data['messages']:,} messages, {data['megabytes']:,.0f} MB)",
        f"machine: {machine['cpu_count']} CPUs, {machine['memory_gib']} GiB RAM, load average at start "
        f"{machine['load_average_start']}, shared with the Kafka broker",
        "",
        f"{'stage':<26} {'seconds':>9} {'records/s':>11} {'marks/s':>11} {'MB/s':>8}  note",
    ]

    def row(name: str, stage: Mapping[str, Any] | None, note: str = "") -> None:
        if not stage:
            return
        lines.append(f"{name:<26} {_fmt(stage.get('seconds')):>9} {_fmt(stage.get('pupil_records_per_s')):>11} "
                     f"{_fmt(stage.get('marks_per_s')):>11} {_fmt(stage.get('megabytes_per_s')):>8}  {note}")

    gen = stages.get("generate")
    if gen:
        row("generate (2 days)", gen, "not part of the pipeline")
    row("produce (send_files)", stages.get("produce"))
    row("bare consume (aiokafka)", stages.get("bare_consume"), "physical reference")
    pipe = stages.get("pipeline")
    if pipe:
        ratio = pipe.get("ratio_to_bare")
        row(f"pipeline ({pipe['workers']} worker{'s' if pipe['workers'] > 1 else ''})", pipe,
            f"ratio to bare {_fmt(ratio)} (target >= {PIPELINE_RATIO_TARGET}); peak RSS "
            f"{_fmt(pipe.get('peak_rss_mib'), ' MiB')}")
        if pipe.get("seconds_to_last_batch") and (pipe.get("seconds") or 0) - pipe["seconds_to_last_batch"] > 0.5:
            lines.append(f"{'  of which batches':<26} {_fmt(pipe['seconds_to_last_batch']):>9} "
                         f"{'':>11} {'':>11} {'':>8}  then a fold the worker ran; ratio to bare before it "
                         f"{_fmt(pipe.get('ratio_to_bare_before_fold'))}")
    for name in ("aggregate", "publish"):
        if stages.get(name):
            lines.append(f"{name:<26} {_fmt(stages[name].get('seconds')):>9}")
    total = stages.get("total")
    if total:
        verdict = "meets" if total.get("meets_target") else "misses"
        lines.append(f"{'total':<26} {_fmt(total.get('seconds')):>9}  first message consumed -> statistics "
                     f"published ({verdict} the {TOTAL_TARGET_S:.0f} s target)")
    scale = report.get("scale_out")
    if scale and scale.get("runs"):
        lines += ["", f"scale-out ({scale['cpu_count']} CPUs, broker on the same machine):",
                  f"{'workers':>7} {'seconds':>9} {'records/s':>11} {'speed-up':>9} {'peak RSS/worker':>16} "
                  f"{'wall s':>8}  tables"]
        for run in scale["runs"]:
            lines.append(
                f"{run['workers']:>7} {_fmt(run.get('seconds')):>9} {_fmt(run.get('pupil_records_per_s')):>11} "
                f"{_fmt(run.get('speedup')):>9} {_fmt(run.get('peak_rss_mib_max')):>16} "
                f"{_fmt(run.get('wall_seconds')):>8}  "
                + ("equal to reference" if run.get("equal_to_reference") else
                   "DIFFER: " + ", ".join(run.get("differences", [])))
                + (f"; {run['stopped_after_drained']} stopped after draining (did not exit)"
                   if run.get("stopped_after_drained") else ""))
    return "\n".join(lines)


# --- the I/O edge -------------------------------------------------------------------------------------------


class BenchmarkError(UserFacingError):
    """A stage failed or overran its time limit; the message says which and where its log is."""


@dataclass(frozen=True)
class BenchOptions:
    schools: int = NATIONAL_SCHOOLS
    workers: tuple[int, ...] = (1, 2, 4)
    out: Path = Path("bench-results/national.json")
    keep: bool = False
    work_parent: Path | None = None
    seed: int = 1
    fault_rate: float = 0.005
    amendments: float = 0.05
    stage_timeout_s: float | None = None
    command: str = ""


@dataclass
class _Run:
    """Everything created by one benchmark run, to clean up afterwards."""

    work: Path
    settings: Settings
    bootstrap: str
    groups: list[str] = field(default_factory=list)
    started_broker: bool = False


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        return None
    return None


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _env(settings: Settings, **overrides: str) -> dict[str, str]:
    """Environment for an ``attendance`` subprocess that reproduces ``settings`` (plus overrides)."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"ATTENDANCE_{name.upper()}"] = str(value)
    for name, value in overrides.items():
        env[f"ATTENDANCE_{name.upper()}"] = value
    env["ATTENDANCE_METRICS_PORT"] = "0"
    env["ATTENDANCE_LOG_LEVEL"] = "INFO"
    return env


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _run_command(args: list[str], env: dict[str, str], log: Path, timeout_s: float) -> tuple[float, str]:
    """``python -m attendance ARGS``; (wall seconds, output). A failure or overrun raises BenchmarkError."""
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "attendance", *args], env=env, capture_output=True,
                              text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(f"`attendance {' '.join(args)}` took longer than {timeout_s:.0f}s") from exc
    seconds = time.perf_counter() - started
    output = done.stdout + done.stderr
    log.write_text(output)
    if done.returncode != 0:
        raise BenchmarkError(f"`attendance {' '.join(args)}` exited {done.returncode} (log {log}):\n"
                             + "\n".join(output.splitlines()[-10:]))
    return seconds, output


def _reap(pid: int, block: bool) -> tuple[int, int] | None:
    """(exit code, peak RSS KiB) of a finished child, from ``wait4`` (None: still running)."""
    reaped, status, usage = os.wait4(pid, 0 if block else os.WNOHANG)
    return (os.waitstatus_to_exitcode(status), usage.ru_maxrss) if reaped else None


def _stop(process: subprocess.Popen, grace_s: float = 20.0) -> tuple[int, int] | None:
    """SIGTERM, then SIGKILL after ``grace_s``; (exit code, peak RSS KiB)."""
    try:
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            done = _reap(process.pid, block=False)
            if done:
                return done
            time.sleep(0.2)
        process.kill()
        return _reap(process.pid, block=True)
    except (ProcessLookupError, ChildProcessError):
        return None


def delta_caught_up(lake: Path, topic: str, ends: Mapping[int, int]) -> Callable[[], bool]:
    """A check that the lake's Delta offsets (the worker's truth) cover every message up to ``ends``."""
    from storage.sink import DeltaSink

    sink = DeltaSink(str(lake))

    def check() -> bool:
        for partition, end in ends.items():
            if end > 0 and (sink.committed_offset(topic, partition) or -1) < end - 1:
                return False
        return True

    return check


def run_workers(settings: Settings, *, count: int, lake: Path, group: str, logs: Path, timeout_s: float,
                caught_up: Callable[[], bool] | None = None, exit_grace_s: float = 120.0) -> dict[str, Any]:
    """``count`` ``attendance worker --until-drained`` processes in one consumer group on ``lake``.

    Peak RSS is each worker's ``VmHWM`` (the kernel's high-water mark of its resident set). When
    ``caught_up`` says Delta holds every offset, workers still running ``exit_grace_s`` later (time for the
    final fold of staged rows, and for the worker's own 20 s stop watchdog) are stopped
    and counted in ``stopped_after_drained`` (a worker that does not exit after draining is a bug to
    report, but its data is complete and the figures stand)."""
    env = _env(settings, lake_uri=str(lake), consumer_group=group)
    logs.mkdir(parents=True, exist_ok=True)
    processes: list[tuple[subprocess.Popen, Path]] = []
    started = time.time()
    for index in range(count):
        log_path = logs / f"worker-{group}-{index}.log"
        with log_path.open("wb") as handle:
            processes.append((subprocess.Popen(
                [sys.executable, "-m", "attendance", "worker", "--until-drained"], env=env,
                stdout=handle, stderr=subprocess.STDOUT), log_path))
    remaining = {p.pid: (p, path) for p, path in processes}
    results: dict[int, tuple[int, int]] = {}  # pid -> (exit code, max RSS KiB)
    stopped: set[int] = set()
    deadline = time.monotonic() + timeout_s
    drained_at: float | None = None
    next_check = time.monotonic() + 2.0
    polled: dict[int, int] = {}  # pid -> highest VmHWM seen (KiB): a cross-check of wait4's figure
    try:
        while remaining:
            for pid in list(remaining):
                polled[pid] = max(polled.get(pid, 0), memory_kib(pid).get("VmHWM", 0))
                done = _reap(pid, block=False)
                if done:
                    remaining.pop(pid)[0].returncode = done[0]
                    results[pid] = done
            now = time.monotonic()
            if remaining and caught_up is not None and drained_at is None and now >= next_check:
                next_check = now + 2.0
                if caught_up():
                    drained_at = now
            if remaining and drained_at is not None and now - drained_at > exit_grace_s:
                for pid, (process, _) in list(remaining.items()):
                    done = _stop(process)
                    remaining.pop(pid)
                    results[pid] = (0, done[1]) if done else (0, 0)
                    stopped.add(pid)
            if remaining and now > deadline:
                raise BenchmarkError(
                    f"{count} worker(s) not drained after {timeout_s:.0f}s; logs: {logs}\n"
                    + _tail(next(iter(remaining.values()))[1]))
            time.sleep(0.1)
    finally:
        for process, _ in remaining.values():
            _stop(process)
    ended = time.time()
    failed = [(p, path) for p, path in processes if results[p.pid][0] != 0]
    if failed:
        raise BenchmarkError(f"worker exited {results[failed[0][0].pid][0]} (log {failed[0][1]}):\n"
                             + _tail(failed[0][1]))
    parsed = merge_worker_logs(parse_worker_log(path.read_text(errors="replace").splitlines())
                               for _, path in processes)
    seconds = None
    if parsed.first_assigned is not None and parsed.last_commit is not None:
        seconds = parsed.last_commit - parsed.first_assigned
    # VmHWM polled every 0.1 s is the figure: wait4's ru_maxrss also counts the parent's resident set at spawn
    # (Linux records the pre-exec mm's high-water mark), so it over-states workers spawned by a large parent.
    # Polling can only miss a peak in the last 0.1 s, and a worker spends over a second draining and stopping.
    rss = [polled.get(p.pid, 0) / 1024 for p, _ in processes]
    return {
        "workers": count,
        "seconds": seconds,
        "wall_seconds": round(ended - started, 2),
        "first_consumed_at": parsed.first_assigned,
        "last_commit_at": parsed.last_commit,
        "batches": parsed.batches,
        "replays_skipped": parsed.replays_skipped,
        "stage_seconds_summed": parsed.stage_seconds,
        # First assignment to the last batch committed: every offset and row in Delta, amendments and pupil
        # records still staged (the fold after it is in "seconds", which the targets use).
        "seconds_to_last_batch": (round(parsed.last_batch - parsed.first_assigned, 2)
                                  if parsed.last_batch is not None and parsed.first_assigned is not None else None),
        "stopped_after_drained": len(stopped),
        "peak_rss_mib": [round(r, 1) for r in rss],
        "peak_rss_mib_max": round(max(rss), 1),
        "peak_rss_mib_sum": round(sum(rss), 1),
    }


async def _bare_consume_async(bootstrap: str, topic: str, start: Mapping[int, int], fetch_bytes: int,
                              timeout_s: float) -> dict[str, Any]:
    import orjson
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=fetch_bytes, fetch_max_bytes=max(fetch_bytes * 4,
                                                                                           52_428_800))
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(start)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start[tp.partition])
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > start[tp.partition]}
        messages = pupils = value_bytes = unreadable = 0
        first: float | None = None
        fetch_started = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise BenchmarkError(f"bare consumer: not at the end offsets after {timeout_s:.0f}s")
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    if first is None:
                        first = time.perf_counter()
                    messages += 1
                    value_bytes += len(record.value or b"")
                    try:
                        document = orjson.loads(record.value)
                        pupils += len(document.get("pupils") or ())
                    except (orjson.JSONDecodeError, AttributeError, TypeError):
                        unreadable += 1
                    if record.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
        last = time.perf_counter()
    finally:
        await consumer.stop()
    return {"seconds": None if first is None else last - first, "seconds_from_fetch": last - fetch_started,
            "messages": messages, "pupil_records": pupils, "value_bytes": value_bytes, "unreadable": unreadable}


def bare_consume(bootstrap: str, topic: str, start: Mapping[int, int], fetch_bytes: int, timeout_s: float
                 ) -> dict[str, Any]:
    """The physical reference: read every message from ``start`` to the end offsets and parse it."""
    return asyncio.run(_bare_consume_async(bootstrap, topic, start, fetch_bytes, timeout_s))


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def lake_summary(lake_uri: str) -> dict[str, Any]:
    """What the equality check compares between runs: row counts, statuses, reasons, sessions hash. Folds
    what the run left staged first (an aggregated lake has nothing staged): the tables' current state."""
    from deltalake import DeltaTable

    from storage.sink import fold_staged
    from storage.tables import ATTENDANCE_SESSIONS, EXTRACTS, PUPILS, QUARANTINE

    fold_staged(lake_uri)

    def column(contract, name: str) -> pl.Series:
        return pl.from_arrow(DeltaTable(contract.path(lake_uri)).to_pyarrow_table(columns=[name]))[name]

    sessions = DeltaTable(ATTENDANCE_SESSIONS.path(lake_uri)).to_pyarrow_dataset()
    columns = [c for c in sessions.schema.names if c not in SESSIONS_HASH_EXCLUDED]
    session_rows = sessions.count_rows()
    hashed = sessions_content_hash(sessions.to_batches(columns=columns, batch_size=1_000_000))
    statuses = column(EXTRACTS, "status").value_counts()
    reasons = column(QUARANTINE, "reason_code").value_counts()
    return {
        "attendance_sessions": session_rows,
        "pupils": len(column(PUPILS, "urn")),
        "extracts": int(statuses["count"].sum()) if len(statuses) else 0,
        "extracts_by_status": dict(sorted(statuses.iter_rows())),
        "quarantine": int(reasons["count"].sum()) if len(reasons) else 0,
        "quarantine_by_reason": dict(sorted(reasons.iter_rows())),
        "sessions_sha256": hashed,
    }


def _start_broker_if_needed(settings: Settings) -> tuple[str, bool]:
    from attendance import broker

    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap, False
    info = broker.is_running(settings.state_dir)
    if info is not None:
        return info.bootstrap, False
    return broker.start(settings).bootstrap, True


def _cleanup(run: _Run, keep: bool, echo: Callable[[str], None], *, failed: bool = False,
             logs_to: Path | None = None) -> None:
    """Delete the run's topics, groups and work directory unless ``keep``; after a failure the logs are
    moved to ``logs_to`` first, so the cause can be read."""
    if keep:
        echo(f"kept: topics {run.settings.topic_extracts}, {run.settings.topic_optouts}, "
             f"{run.settings.topic_deadletter}; work directory {run.work}")
    else:
        try:
            from kafka import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=run.bootstrap, request_timeout_ms=15_000)
            try:
                existing = set(admin.list_topics())
                names = [t for t in (run.settings.topic_extracts, run.settings.topic_optouts,
                                     run.settings.topic_deadletter) if t in existing]
                if names:
                    admin.delete_topics(names)
                listed = {g["group_id"] for g in admin.list_groups()}
                mine = [g for g in run.groups if g in listed]
                if mine:
                    admin.delete_groups(mine)
            finally:
                admin.close()
        except Exception as exc:  # noqa: BLE001 - clean-up is best effort; say what was left behind
            echo(f"could not delete the benchmark's topics/groups ({type(exc).__name__}: {exc})")
        if failed and logs_to is not None and (run.work / "logs").is_dir():
            logs_to.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(run.work / "logs"), logs_to)
            echo(f"logs of the failed run: {logs_to}")
        shutil.rmtree(run.work, ignore_errors=True)
    if run.started_broker:
        from attendance import broker

        broker.stop(run.settings.model_copy(update={"kafka_bootstrap": None}))
        echo("stopped the local broker the benchmark started")


def run_national(options: BenchOptions, settings: Settings, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole benchmark; returns the report (also written to ``options.out``)."""
    from ingest.generate import generate
    from ingest.producer import send_files
    from ingest.register import read_gias_csv, write_register

    if options.schools < 10:
        raise UserFacingError("--schools must be at least 10")
    timeout_s = options.stage_timeout_s or default_stage_timeout(options.schools)
    suffix = uuid.uuid4().hex[:8]
    started_at = dt.datetime.now(dt.UTC)
    load_start = _load()
    bootstrap, started_broker = _start_broker_if_needed(settings)
    partitions = partitions_for(options.workers)
    parent = options.work_parent or Path(tempfile.gettempdir())
    work = parent / f"attendance-bench-{suffix}"
    work.mkdir(parents=True)
    bench = settings.model_copy(update={
        "kafka_bootstrap": bootstrap,
        "topic_extracts": f"bench.extracts.{suffix}",
        "topic_optouts": f"bench.optouts.{suffix}",
        "topic_deadletter": f"bench.deadletter.{suffix}",
        "extracts_partitions": partitions,
        "consumer_group": f"bench-{suffix}-history",
        "lake_uri": str(work / "lake-history"),
        "metrics_port": 0,
    })
    run = _Run(work=work, settings=bench, bootstrap=bootstrap, started_broker=started_broker)
    history_day, day = benchmark_days(dt.date.today())
    amendment_rate = amendment_rate_for(options.amendments)
    stages: dict[str, Any] = {}
    logs = work / "logs"
    logs.mkdir()
    try:
        # 1. generate --------------------------------------------------------------------------------------
        echo(f"generating {options.schools:,} schools x 2 days ({history_day}, {day}) into {work}/data ...")
        generated = generate(work / "data", schools=options.schools, start_date=history_day, days=2,
                             seed=options.seed, fault_rate=options.fault_rate, fault_kinds=BENCH_FAULT_KINDS,
                             amendment_rate=amendment_rate, workers=2)
        stages["generate"] = {
            "seconds": round(generated.seconds, 2), "workers": 2, "days": 2, "extracts": generated.extracts,
            "pupil_records": generated.pupils, "marks": generated.marks,
            "marks_per_s": _round(per_second(generated.marks, generated.seconds), 0),
            "pupil_records_per_s": _round(per_second(generated.pupils, generated.seconds), 0),
            "megabytes_on_disk": round(generated.bytes / 1e6, 1),
            "megabytes_per_s": _round(per_second(generated.bytes / 1e6, generated.seconds), 1),
            "faults": generated.faults,
        }
        echo(f"  {generated.lines()[2]}; {generated.seconds:.1f}s")

        # 2. history: topics, register, day 1 through one worker and the aggregation -----------------------
        from attendance.topics import create_topics

        create_topics(bench)
        history_started = time.perf_counter()
        loaded = read_gias_csv(work / "data" / "register" / "edubasealldata.csv")
        write_register(loaded.table, bench.lake_uri)
        sent_history = send_files([work / "data" / "extracts" / history_day.isoformat()], bench, bootstrap)
        run.groups.append(bench.consumer_group)
        echo(f"history day {history_day}: sent {sent_history.pupils_sent:,} pupil records; processing ...")
        history_ends = end_offsets(bootstrap, bench.topic_extracts, partitions)
        history_run = run_workers(bench, count=1, lake=Path(bench.lake_uri), group=bench.consumer_group,
                                  logs=logs, timeout_s=timeout_s,
                                  caught_up=delta_caught_up(Path(bench.lake_uri), bench.topic_extracts,
                                                            history_ends))
        _run_command(["aggregate"], _env(bench), logs / "aggregate-history.log", timeout_s)
        stages["history"] = {"day": history_day.isoformat(), "pupil_records": sent_history.pupils_sent,
                             "seconds": round(time.perf_counter() - history_started, 2),
                             "worker_seconds": _round(history_run["seconds"]), "note": "not timed as a stage"}

        # 3. produce ---------------------------------------------------------------------------------------
        start = end_offsets(bootstrap, bench.topic_extracts, partitions)
        echo(f"producing day {day} to {bench.topic_extracts} ({partitions} partitions) ...")
        sent = send_files([work / "data" / "extracts" / day.isoformat()], bench, bootstrap)
        if sent.undelivered:
            raise BenchmarkError(f"{len(sent.undelivered)} extract file(s) not delivered: {sent.undelivered[0]}")
        stages["produce"] = throughput(sent.seconds, messages=sent.messages_sent, pupil_records=sent.pupils_sent,
                                       marks=sent.marks_sent, value_bytes=sent.bytes_sent)
        stages["produce"]["files_refused"] = len(sent.refused)
        day_ends = end_offsets(bootstrap, bench.topic_extracts, partitions)
        echo(f"  {sent.pupils_sent:,} pupil records in {sent.seconds:.1f}s")
        amended = sent.marks_sent - 2 * sent.pupils_sent  # every pupil has its AM and PM mark of the day
        data = {"day": day.isoformat(), "extracts": sent.files_sent, "messages": sent.messages_sent,
                "pupil_records": sent.pupils_sent, "marks": sent.marks_sent, "amended_marks": max(0, amended),
                "megabytes": round(sent.bytes_sent / 1e6, 1), "files_refused_by_producer": len(sent.refused)}

        # 4. bare consumer ---------------------------------------------------------------------------------
        echo("bare consumer ...")
        fetch_bytes = max(bench.max_message_bytes * 4, 4 * 1024 * 1024)  # as the worker (streams/app.py)
        bare = bare_consume(bootstrap, bench.topic_extracts, start, fetch_bytes, timeout_s)
        stages["bare_consume"] = throughput(bare["seconds"], messages=bare["messages"],
                                            pupil_records=bare["pupil_records"], marks=sent.marks_sent,
                                            value_bytes=bare["value_bytes"])
        stages["bare_consume"].update(seconds_from_fetch=round(bare["seconds_from_fetch"], 2),
                                      unreadable_messages=bare["unreadable"], client="aiokafka")
        echo(f"  {bare['pupil_records']:,} pupil records in {bare['seconds'] or 0:.1f}s")

        # 5-7. pipeline runs: the reference (first count) then aggregate/publish, then the other counts -----
        runs: list[dict[str, Any]] = []
        reference_summary: dict[str, Any] | None = None
        for position, count in enumerate(options.workers):
            lake = work / f"lake-w{count}"
            shutil.copytree(bench.lake_uri, lake)
            group = f"bench-{suffix}-w{count}"
            run.groups.append(group)
            echo(f"pipeline with {count} worker(s) ...")
            result = run_workers(bench, count=count, lake=lake, group=group, logs=logs, timeout_s=timeout_s,
                                 caught_up=delta_caught_up(lake, bench.topic_extracts, day_ends))
            rates = throughput(result["seconds"], messages=sent.messages_sent, pupil_records=sent.pupils_sent,
                               marks=sent.marks_sent, value_bytes=sent.bytes_sent)
            result.update({k: rates[k] for k in ("pupil_records_per_s", "marks_per_s", "megabytes_per_s")})
            result["seconds"] = _round(result["seconds"])
            echo(f"  {result['seconds']}s from first message to last commit ({result['wall_seconds']}s wall), "
                 f"peak RSS {result['peak_rss_mib_max']} MiB per worker ({result['peak_rss_mib_sum']} MiB all workers)")
            if result["stopped_after_drained"]:
                echo(f"  {result['stopped_after_drained']} worker(s) had not exited 120 s after Delta held every "
                     "offset: stopped (a worker bug; the figures stand)")
            if position == 0:
                ratio = _ratio(stages["bare_consume"]["seconds"], result["seconds"])
                batches_ratio = _ratio(stages["bare_consume"]["seconds"], result["seconds_to_last_batch"])
                stages["pipeline"] = {
                    **rates, **{k: result[k] for k in ("workers", "wall_seconds", "batches", "peak_rss_mib_max",
                                                "stopped_after_drained", "stage_seconds_summed",
                                                "seconds_to_last_batch")},
                    "peak_rss_mib": result["peak_rss_mib_sum"], "ratio_to_bare": ratio,
                    # Informational: the same ratio up to the last batch commit (before a fold the worker ran).
                    "ratio_to_bare_before_fold": batches_ratio,
                    "ratio_target": PIPELINE_RATIO_TARGET,
                    "meets_ratio_target": ratio is not None and ratio >= PIPELINE_RATIO_TARGET,
                }
                env = _env(bench, lake_uri=str(lake))
                echo("aggregate ...")
                seconds, _ = _run_command(["aggregate"], env, logs / "aggregate.log", timeout_s)
                stages["aggregate"] = {"seconds": round(seconds, 2), "command": "attendance aggregate"}
                published = work / "published"
                echo("publish ...")
                seconds, _ = _run_command(["publish", "--release", day.isoformat(), "--out", str(published),
                                           "--now"], env, logs / "publish.log", timeout_s)
                published_at = time.time()
                stages["publish"] = {"seconds": round(seconds, 2),
                                     "command": f"attendance publish --release {day} --out DIR --now",
                                     "files": len(list(published.rglob("*.csv")))}
                total = None if result["first_consumed_at"] is None else published_at - result["first_consumed_at"]
                stages["total"] = {"seconds": _round(total), "target_seconds": TOTAL_TARGET_S,
                                   "meets_target": total is not None and total <= TOTAL_TARGET_S,
                                   "workers": count,
                                   "from": "first message consumed by the pipeline",
                                   "to": "EES files published"}
                reference_summary = lake_summary(str(lake))
                result["tables"] = reference_summary
                result["equal_to_reference"] = True
            else:
                summary = lake_summary(str(lake))
                result["tables"] = summary
                assert reference_summary is not None
                result["differences"] = table_differences(reference_summary, summary)
                result["equal_to_reference"] = not result["differences"]
            for key in ("first_consumed_at", "last_commit_at"):
                result.pop(key)
            runs.append(result)
            if not options.keep and position > 0:
                shutil.rmtree(lake, ignore_errors=True)  # bound disk: keep only the reference lake
        scale = scale_out_summary(runs, os.cpu_count())
        report = {
            "benchmark": "national-day",
            "command": options.command,
            "started_at": started_at.isoformat(timespec="seconds"),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpu_count": os.cpu_count(), "memory_gib": _memory_gib(), "platform": platform.platform(),
                "python": platform.python_version(), "load_average_start": load_start,
                "load_average_end": _load(),
                "kafka": "local broker (same machine)" if not settings.kafka_bootstrap else "external cluster",
            },
            "parameters": {
                "schools": options.schools, "workers": list(options.workers), "partitions": partitions,
                "seed": options.seed, "fault_rate": options.fault_rate, "fault_kinds": list(BENCH_FAULT_KINDS),
                "amendments_share": options.amendments, "generator_amendment_rate": round(amendment_rate, 4),
                "history_day": history_day.isoformat(), "day": day.isoformat(),
                "batch_max_messages": bench.batch_max_messages, "batch_max_bytes": bench.batch_max_bytes,
                "batch_max_latency_s": bench.batch_max_latency_s, "max_message_bytes": bench.max_message_bytes,
            },
            "data": data,
            "stages": stages,
            "scale_out": scale,
        }
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps(report, indent=2) + "\n")
    except BaseException:
        _cleanup(run, options.keep, echo, failed=True, logs_to=options.out.parent / f"logs-{suffix}")
        raise
    _cleanup(run, options.keep, echo)
    return report
