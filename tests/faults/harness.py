"""Shared pieces of the fault suite: a generated world, a streaming sender, worker processes, and an
independent oracle computed from the extract files themselves (not from the pipeline)."""

from __future__ import annotations

import datetime as dt
import gzip
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import polars as pl

from attendance.settings import Settings
from attendance.topics import create_topics
from ingest.generate import generate
from ingest.producer import find_extract_files, send_files
from ingest.register import read_gias_csv, write_register
from storage.current import read_current
from storage.tables import ATTENDANCE_SESSIONS, EXTRACTS, PUPILS, QUARANTINE
from tests.conftest import settings_env

# A recent Monday, so that every generated day is a weekday within the rules' age window.
START = dt.date.today() - dt.timedelta(days=dt.date.today().weekday() + 7)


@dataclass
class World:
    settings: Settings
    extracts_dir: Path
    days: list[str]

    def files(self, day: str | None = None) -> list[Path]:
        folder = self.extracts_dir / day if day else self.extracts_dir
        return find_extract_files([folder])


def make_world(settings: Settings, root: Path, *, schools: int = 24, days: int = 2, seed: int = 11,
               fault_rate: float = 0.0) -> World:
    create_topics(settings)
    generate(root, schools=schools, start_date=START, days=days, seed=seed, fault_rate=fault_rate)
    write_register(read_gias_csv(root / "register" / "edubasealldata.csv").table, settings.lake_uri)
    day_names = sorted(p.name for p in (root / "extracts").iterdir() if p.is_dir())
    return World(settings, root / "extracts", day_names)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(settings: Settings, **overrides: str) -> dict[str, str]:
    env = settings_env(settings)
    env["ATTENDANCE_METRICS_PORT"] = "0"
    env.update(overrides)
    return env


def start_worker(settings: Settings, *, until_drained: bool = False, **overrides: str) -> subprocess.Popen:
    """A worker process whose log goes to a file beside the lake (a pipe nobody reads would fill and block it)."""
    args = [sys.executable, "-m", "attendance", "worker"] + (["--until-drained"] if until_drained else [])
    log_path = Path(settings.lake_uri).parent / f"worker-{time.monotonic_ns()}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(args, env=worker_env(settings, **overrides), stdout=log_file,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    process.log_path = log_path  # type: ignore[attr-defined]
    return process


def worker_log(process: subprocess.Popen, tail: int = 3000) -> str:
    return process.log_path.read_text(errors="replace")[-tail:]  # type: ignore[attr-defined]


def wait(process: subprocess.Popen, timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(process)
        raise AssertionError(f"worker still running after {timeout:.0f}s:\n{worker_log(process)}") from None


def run_until_drained(settings: Settings, timeout: float = 240, **overrides: str) -> None:
    process = start_worker(settings, until_drained=True, **overrides)
    code = wait(process, timeout)
    assert code == 0, worker_log(process)


def kill(process: subprocess.Popen) -> None:
    """SIGKILL a worker we started (its whole session), and reap it."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


class Sender(threading.Thread):
    """Sends files one at a time with a pause, so the day streams while workers come and go."""

    def __init__(self, settings: Settings, files: list[Path], pause_s: float = 0.05):
        super().__init__(daemon=True)
        self.settings, self.files, self.pause_s = settings, files, pause_s
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for path in self.files:
                summary = send_files([path], self.settings, self.settings.kafka_bootstrap)
                assert summary.ok, summary
                time.sleep(self.pause_s)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def read(settings: Settings, contract) -> pl.DataFrame:
    """The table's current state: rows the sink staged and nobody folded yet included (storage.current)."""
    return read_current(contract, settings.lake_uri)


def expected_sessions(files: list[Path]) -> pl.DataFrame:
    """The oracle: the newest mark per (urn, upn, date, session) across every extract file."""
    rows = []
    for path in files:
        document = orjson.loads(gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes())
        generated_at = document["generated_at"]
        for pupil in document["pupils"]:
            for mark in pupil["sessions"]:
                rows.append((document["urn"], pupil["upn"], mark["date"], mark["session"], mark["code"], generated_at))
    frame = pl.DataFrame(rows, schema=["urn", "upn", "date", "session", "code", "generated_at"], orient="row")
    return (frame.sort("generated_at").group_by("urn", "upn", "date", "session").agg(pl.col("code").last())
            .with_columns(pl.col("date").str.to_date()).sort("urn", "upn", "date", "session"))


def snapshot(settings: Settings) -> dict[str, pl.DataFrame]:
    """Table contents without the columns that legitimately differ between runs (times of ingestion)."""
    sessions = read(settings, ATTENDANCE_SESSIONS).drop("ingested_at").sort("urn", "upn", "date", "session")
    pupils = read(settings, PUPILS).drop("current_since").sort("urn", "upn")
    extracts = read(settings, EXTRACTS).select("extract_id", "urn", "status", "chunk_count", "pupils_accepted",
                                                "marks_accepted").sort("extract_id")
    quarantine = read(settings, QUARANTINE).select("extract_id", "reason_code", "pupil_position",
                                                    "mark_position").sort(pl.all())
    return {"sessions": sessions, "pupils": pupils, "extracts": extracts, "quarantine": quarantine}


def assert_exactly_expected(settings: Settings, files: list[Path]) -> None:
    """None lost, none doubled: the sessions table equals the oracle, key for key and code for code."""
    sessions = read(settings, ATTENDANCE_SESSIONS)
    assert sessions.select("urn", "upn", "date", "session").is_duplicated().sum() == 0, "doubled marks"
    got = sessions.select("urn", "upn", "date", "session", "code").sort("urn", "upn", "date", "session")
    want = expected_sessions(files)
    assert got.height == want.height, f"{got.height} rows stored, {want.height} expected"
    assert got.equals(want), "stored marks differ from the newest marks in the files"
    pupils = read(settings, PUPILS)
    assert pupils.select("urn", "upn").is_duplicated().sum() == 0, "doubled pupils"
    assert pupils.height == want.select("urn", "upn").unique().height
    file_ids = {_extract_id(path) for path in files}
    extracts = read(settings, EXTRACTS).filter(pl.col("extract_id").is_in(list(file_ids)))
    assert extracts.height == len(file_ids) and set(extracts["status"]) == {"complete"}


def _extract_id(path: Path) -> str:
    raw = path.read_bytes()
    return orjson.loads(gzip.decompress(raw) if path.name.endswith(".gz") else raw)["extract_id"]
