"""A long-running worker scraped while a generated day streams in: /metrics, /healthz and /readyz of the real
process, and every stream counter checked against what the Delta tables hold afterwards.

What each counter means (attendance/metrics.py, computed in streams/app.py ``ExtractWorker._observe``):

- ``attendance_session_marks_accepted_total`` counts marks that passed validation and were handed to the
  sink, once per extract that carried them. ``attendance_sessions`` holds one row per (urn, upn, date,
  session): a re-sent mark (an amendment, a resent extract) is counted again but MERGEd over the stored row.
  So counter == table rows + marks that updated a stored row; for a day with no re-sends, counter == rows.
- ``attendance_pupil_records_accepted_total`` likewise against ``pupils`` (one row per (urn, upn)).
- ``attendance_rejections_total{reason_code}`` == ``quarantine`` rows per reason (one row per rejection).
- ``attendance_extracts_total{status}`` == ``extracts`` rows per status (one row per extract_id).
- ``attendance_messages_consumed_total`` == messages sent (each message judged once, none replayed).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from attendance.settings import Settings
from attendance.topics import create_topics
from ingest.generate import generate, most_recent_weekday
from ingest.producer import RefusedFile, chunk_extract, read_extract_file
from ingest.register import read_gias_csv, write_register
from storage.tables import ATTENDANCE_SESSIONS, EXTRACTS, PUPILS, QUARANTINE
from tests.conftest import settings_env
from tests.integration.test_worker import send_raw, table

pytestmark = pytest.mark.integration

SCHOOLS = 20
SEEDS = range(1, 41)  # the first of these seeds that injects one fault of each kind below is used
FAULT_KINDS = ("invalid_code", "bad_check_letter", "unknown_urn", "malformed_json", "duplicate_session",
               "missing_chunk")
CHUNK_BYTES = 16_000  # small chunks: several messages per school, so the day streams over many batches
STARTUP_TIMEOUT_S = 90.0
SETTLE_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0

Samples = dict[str, dict[frozenset[tuple[str, str]], float]]
Message = tuple[bytes, bytes]


# --- the ops endpoints ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    status, body = get(url)
    return status, json.loads(body)


def scrape(base: str) -> Samples:
    status, body = get(base + "/metrics")
    assert status == 200
    samples: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[sample.name][frozenset(sample.labels.items())] = sample.value
    return samples


def total(samples: Samples, name: str) -> float:
    return sum(samples.get(name, {}).values())


def by_label(samples: Samples, name: str, label: str) -> dict[str, int]:
    """Sample values of ``name`` summed by one label, zero series left out."""
    summed: dict[str, float] = defaultdict(float)
    for labels, value in samples.get(name, {}).items():
        summed[dict(labels)[label]] += value
    return {key: int(value) for key, value in summed.items() if value}


# --- the world ------------------------------------------------------------------------------------------------

def day_messages(extracts_dir: Path) -> tuple[list[Message], dict[str, list[Message]]]:
    """Every extract file as the messages a careless contractor would send: parseable files chunked (also
    those the reference producer would refuse), unreadable ones as their raw bytes in one message."""
    messages: list[Message] = []
    by_urn: dict[str, list[Message]] = {}
    for path in sorted(extracts_dir.rglob("*.json.gz")):
        urn = path.name.split(".")[0]
        try:
            document = read_extract_file(path)
            sent = [(c.key, c.value) for c in chunk_extract(document, CHUNK_BYTES)]
        except RefusedFile:
            sent = [(urn.encode(), gzip.decompress(path.read_bytes()))]
        by_urn[urn] = sent
        messages.extend(sent)
    return messages, by_urn


@pytest.fixture()
def generated_day(settings: Settings, tmp_path: Path) -> dict[str, Any]:
    create_topics(settings)
    # The generated day depends on the date (term calendar, ages), so the seed that injects every fault
    # kind is searched for, deterministically, rather than pinned.
    for seed in SEEDS:
        out = tmp_path / f"generated-{seed}"
        summary = generate(out, schools=SCHOOLS, start_date=most_recent_weekday(), days=1, seed=seed,
                           fault_rate=0.6, fault_kinds=FAULT_KINDS, amendment_rate=0.0)
        faults = [json.loads(line) for line in (out / "faults.jsonl").read_text().splitlines()]
        if {f["kind"] for f in faults} == set(FAULT_KINDS):
            break
        shutil.rmtree(out)
    load = read_gias_csv(out / "register" / "edubasealldata.csv")
    assert not load.errors
    write_register(load.table, settings.lake_uri)
    messages, by_urn = day_messages(out / "extracts")
    return {"summary": summary, "faults": faults, "messages": messages, "by_urn": by_urn}


class WorkerProcess:
    """``attendance worker`` (long-running, not --until-drained) with its ops port; logs go to files."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = settings_env(settings)
        env["ATTENDANCE_METRICS_PORT"] = str(self.port)
        env["ATTENDANCE_BATCH_MAX_MESSAGES"] = "8"
        self.stdout = (log_dir / "worker.out").open("wb")
        self.stderr_path = log_dir / "worker.err"
        self.stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "attendance", "worker"], env=env,
                                        stdout=self.stdout, stderr=self.stderr)

    def log_tail(self) -> str:
        self.stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-6000:]

    def assert_running(self) -> None:
        assert self.process.poll() is None, f"worker exited {self.process.returncode}:\n{self.log_tail()}"

    def wait_for(self, path: str, timeout: float) -> dict[str, Any]:
        """Poll an endpoint until it answers 200; returns its JSON body."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            self.assert_running()
            try:
                status, body = get_json(self.base + path)
                if status == 200:
                    return body
                last = (status, body)
            except OSError as exc:  # not listening yet
                last = exc
            time.sleep(0.2)
        raise AssertionError(f"{path} not 200 within {timeout:.0f}s (last: {last}):\n{self.log_tail()}")

    def scrape(self) -> Samples:
        try:
            return scrape(self.base)
        except OSError as exc:  # a failed scrape is a finding: show what the worker was doing
            raise AssertionError(f"scraping {self.base}/metrics failed: {exc!r}\n{self.log_tail()}") from exc

    def settle(self, expected_messages: int, timeout: float) -> tuple[Samples, list[float]]:
        """Scrape until every sent message is judged, lag is 0 and the worker has folded what it staged, or
        (if a counter is wrong) until the accepted counters and lag have not moved for 5 s. Returns the last
        scrape and every consumed value."""
        deadline = time.monotonic() + timeout
        consumed_seen: list[float] = []
        stable_since, last_key = time.monotonic(), None
        while time.monotonic() < deadline:
            self.assert_running()
            samples = self.scrape()
            consumed = total(samples, "attendance_messages_consumed_total")
            consumed_seen.append(consumed)
            lag = total(samples, "attendance_consumer_lag_messages")
            staged = total(samples, "attendance_staged_rows")  # folded into the tables once caught up
            key = (consumed, total(samples, "attendance_session_marks_accepted_total"),
                   total(samples, "attendance_pupil_records_accepted_total"), lag, staged)
            if key != last_key:
                stable_since, last_key = time.monotonic(), key
            settled = consumed >= expected_messages or time.monotonic() - stable_since >= 5.0
            if lag == 0 and staged == 0 and settled:
                return samples, consumed_seen
            time.sleep(0.25)
        raise AssertionError(f"worker did not settle within {timeout:.0f}s (last {last_key}):\n{self.log_tail()}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT_S)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.stdout.close()
        self.stderr.close()


def rows_by(frame: pl.DataFrame, column: str) -> dict[str, int]:
    return {key: int(n) for key, n in frame.group_by(column).len().iter_rows()}


# --- the test -------------------------------------------------------------------------------------------------

def test_scraped_counters_equal_what_the_lake_holds_and_the_worker_stops_cleanly(
        settings: Settings, generated_day: dict[str, Any], tmp_path: Path) -> None:
    faults = generated_day["faults"]
    messages: list[Message] = generated_day["messages"]
    kinds = {f["kind"] for f in faults}
    assert kinds == set(FAULT_KINDS), f"no seed in {SEEDS} injects every fault kind: {kinds}"
    by_kind = {kind: [f for f in faults if f["kind"] == kind] for kind in kinds}

    worker = WorkerProcess(settings, tmp_path)
    try:
        # --- started: live, then ready once it holds partitions and its (empty) topic is caught up
        health = worker.wait_for("/healthz", STARTUP_TIMEOUT_S)
        assert health["live"] is True
        ready = worker.wait_for("/readyz", STARTUP_TIMEOUT_S)
        assert ready["assigned_partitions"] == settings.extracts_partitions and ready["total_lag"] == 0
        before = worker.scrape()
        assert total(before, "attendance_messages_consumed_total") == 0
        assert total(before, "attendance_worker_assigned_partitions") == settings.extracts_partitions

        # --- the day streams in (one producer per school, so it arrives over a while) while we scrape
        def send_day() -> None:
            for sent in generated_day["by_urn"].values():
                send_raw(settings, sent)

        sender = threading.Thread(target=send_day, name="send-day")
        sender.start()
        during: list[float] = []
        while sender.is_alive():
            during.append(total(worker.scrape(), "attendance_messages_consumed_total"))
            time.sleep(0.2)
        sender.join()
        samples, consumed_seen = worker.settle(len(messages), SETTLE_TIMEOUT_S)
        seen = during + consumed_seen
        assert seen == sorted(seen), "a counter went down between scrapes"
        assert any(0 < v < len(messages) for v in seen), "no scrape saw the day part-way through"

        status, health = get_json(worker.base + "/healthz")
        assert status == 200 and health["live"] is True
        status, ready = get_json(worker.base + "/readyz")
        assert status == 200, ready
        assert ready["total_lag"] == 0 and ready["assigned_partitions"] == settings.extracts_partitions

        # --- every counter against the tables
        sessions, pupils = table(settings, ATTENDANCE_SESSIONS), table(settings, PUPILS)
        quarantine, extracts = table(settings, QUARANTINE), table(settings, EXTRACTS)
        assert total(samples, "attendance_messages_consumed_total") == len(messages)
        assert total(samples, "attendance_pupil_records_consumed_total") == sum(
            len(orjson.loads(value)["pupils"]) for _, value in messages if _readable(value))
        assert total(samples, "attendance_session_marks_accepted_total") == sessions.height
        assert sessions.height == extracts["marks_accepted"].sum()
        assert total(samples, "attendance_pupil_records_accepted_total") == pupils.height
        assert by_label(samples, "attendance_rejections_total", "reason_code") == rows_by(quarantine, "reason_code")
        assert by_label(samples, "attendance_extracts_total", "status") == rows_by(extracts, "status")
        assert total(samples, "attendance_delta_rows_written_total") > 0
        assert by_label(samples, "attendance_delta_rows_written_total", "table")["attendance_sessions"] \
            == sessions.height

        # --- and against the faults injected (worked out from the generator's fault log, not the worker)
        rejections = by_label(samples, "attendance_rejections_total", "reason_code")
        unreadable = len(by_kind["malformed_json"])
        assert rejections.get("MSG_NOT_JSON") == unreadable
        assert total(samples, "attendance_deadletter_messages_total") == unreadable
        unknown_urn_messages = sum(len(generated_day["by_urn"][f["urn"]]) for f in by_kind["unknown_urn"])
        assert rejections.get("MSG_UNKNOWN_URN") == unknown_urn_messages
        assert rejections.get("PUPIL_UPN_INVALID") == len(by_kind["bad_check_letter"])
        assert rejections.get("MARK_CODE_UNKNOWN") == len(by_kind["invalid_code"])
        statuses = by_label(samples, "attendance_extracts_total", "status")
        assert sum(statuses.values()) == len(generated_day["by_urn"]) - unreadable  # one per readable extract
        assert statuses.get("rejected", 0) >= len(by_kind["unknown_urn"])

        # --- a school resends its day later: every mark and pupil is accepted again and MERGEd over the
        # stored rows, so the counters move by the resend while the tables keep their row counts.
        clean = sorted(set(generated_day["by_urn"]) - {f["urn"] for f in faults})[0]
        document = orjson.loads(generated_day["by_urn"][clean][0][1])  # chunk 0 carries the header
        resend = _resent_day(generated_day["by_urn"][clean])
        send_raw(settings, resend)
        resent_marks = sum(len(p["sessions"]) for _, value in resend for p in orjson.loads(value)["pupils"])
        resent_pupils = document["pupil_count"]
        after, _ = worker.settle(len(messages) + len(resend), SETTLE_TIMEOUT_S)
        sessions2, pupils2, extracts2 = (table(settings, c) for c in (ATTENDANCE_SESSIONS, PUPILS, EXTRACTS))
        assert sessions2.height == sessions.height and pupils2.height == pupils.height
        assert total(after, "attendance_messages_consumed_total") == len(messages) + len(resend)
        assert total(after, "attendance_session_marks_accepted_total") == sessions2.height + resent_marks
        assert total(after, "attendance_session_marks_accepted_total") == extracts2["marks_accepted"].sum()
        assert total(after, "attendance_pupil_records_accepted_total") == pupils2.height + resent_pupils
        assert by_label(after, "attendance_extracts_total", "status") == rows_by(extracts2, "status")
        assert by_label(after, "attendance_delta_rows_written_total", "table")["attendance_sessions"] \
            == sessions2.height + resent_marks

        # --- SIGTERM: a clean exit, promptly
        started = time.monotonic()
        code = worker.stop()
        assert code == 0, worker.log_tail()
        assert time.monotonic() - started < STOP_TIMEOUT_S
    finally:
        worker.kill()


def _resent_day(chunks: list[Message]) -> list[Message]:
    """The same school-day again as a new extract generated an hour later (a contractor's resend)."""
    resent = []
    for key, value in chunks:
        message = orjson.loads(value)
        message["extract_id"] = str(uuid.uuid5(uuid.UUID(message["extract_id"]), "resent"))
        generated = dt.datetime.fromisoformat(message["generated_at"])
        message["generated_at"] = (generated + dt.timedelta(hours=1)).isoformat()
        resent.append((key, orjson.dumps(message)))
    return resent


def _readable(value: bytes) -> bool:
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return True
