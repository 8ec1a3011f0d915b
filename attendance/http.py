"""The operations endpoints of a long-running process: ``/metrics``, ``/healthz`` and ``/readyz``.

A stdlib ``ThreadingHTTPServer`` in a daemon thread, so it keeps answering while the process's own loop is
busy (or stuck: that is what ``/healthz`` is for)::

    readiness = Readiness()        # a worker; Readiness(needs_partitions=False) for the scheduler
    server = start_http_server(settings.metrics_port, readiness)
    ...
    readiness.heartbeat()                        # every turn of the process loop
    readiness.set_assignment(len(assigned))      # on every rebalance
    readiness.set_lag(total_lag)                 # after every lag measurement

- ``/metrics``: the one registry, ``attendance.metrics.REGISTRY`` (text or OpenMetrics by Accept header).
- ``/healthz`` (liveness): 200 while the loop has sent a heartbeat within ``heartbeat_timeout_s``; else 503.
  A restart is the cure for a 503 here (the loop is stuck or dead).
- ``/readyz`` (readiness): 200 when live and, for a Kafka consumer, it holds at least one partition and its
  total lag is measured and at most ``max_lag``; else 503 with a JSON ``reason``. Not ready is not broken:
  a worker catching up after an outage is not ready until its lag is back under the threshold.

Run-once commands (aggregate, publish, ``dq report``) have no server to be scraped: they call
``export_run_once_metrics(job)``, which writes a node-exporter textfile and/or pushes to a Pushgateway when
the settings ``metrics_textfile`` / ``pushgateway_url`` (``ATTENDANCE_METRICS_TEXTFILE`` /
``ATTENDANCE_PUSHGATEWAY_URL``) are set (see ``run_once_outputs``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, push_to_gateway, write_to_textfile
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from attendance.metrics import PROCESS_HEARTBEAT_TIMESTAMP, REGISTRY
from attendance.settings import Settings, get_settings

log = logging.getLogger(__name__)


@dataclass
class Readiness:
    """Liveness and readiness state, written by the process loop and read by the HTTP threads.

    Thresholds:
    - ``heartbeat_timeout_s`` (default 60 s): no heartbeat for longer than this means the loop is stuck.
      The clock starts when the object is created, so a process has this long to send its first one.
    - ``max_lag`` (default 100,000 messages): total consumer lag above this means "not caught up".
    - ``needs_partitions`` (default True): a Kafka consumer is ready only with partitions assigned and a
      measured lag; set False for processes that consume nothing (the scheduler): then ready == live.
    """

    heartbeat_timeout_s: float = 60.0
    max_lag: int = 100_000
    needs_partitions: bool = True
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    assigned_partitions: int = field(default=0, init=False)
    total_lag: int | None = field(default=None, init=False)
    last_heartbeat: float = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.last_heartbeat = self.clock()

    # --- written by the process loop ---------------------------------------------------------------
    def heartbeat(self) -> None:
        """Record that the process loop is alive (call it every turn of the loop)."""
        with self._lock:
            self.last_heartbeat = self.clock()
        PROCESS_HEARTBEAT_TIMESTAMP.set(time.time())

    def set_assignment(self, n: int) -> None:
        """Record how many partitions this consumer holds (call it after every rebalance)."""
        with self._lock:
            self.assigned_partitions = int(n)
            if n == 0:
                self.total_lag = None  # lag of partitions we no longer hold means nothing

    def set_lag(self, total: int) -> None:
        """Record the consumer's total lag over its partitions, in messages."""
        with self._lock:
            self.total_lag = int(total)

    # --- read by the HTTP threads ----------------------------------------------------------------------
    def heartbeat_age_s(self) -> float:
        with self._lock:
            return self.clock() - self.last_heartbeat

    def is_live(self) -> bool:
        return self.heartbeat_age_s() <= self.heartbeat_timeout_s

    def is_ready(self) -> bool:
        return self.ready_report()[0]

    def live_report(self) -> tuple[bool, dict[str, Any]]:
        age = self.heartbeat_age_s()
        live = age <= self.heartbeat_timeout_s
        body: dict[str, Any] = {
            "live": live, "heartbeat_age_s": round(age, 3), "heartbeat_timeout_s": self.heartbeat_timeout_s}
        if not live:
            body["reason"] = f"no heartbeat for {age:.0f} s (limit {self.heartbeat_timeout_s:.0f} s)"
        return live, body

    def ready_report(self) -> tuple[bool, dict[str, Any]]:
        live, live_body = self.live_report()
        with self._lock:
            partitions, lag = self.assigned_partitions, self.total_lag
        body: dict[str, Any] = {"ready": False, "live": live}
        if self.needs_partitions:
            body.update(assigned_partitions=partitions, total_lag=lag, max_lag=self.max_lag)
        if not live:
            body["reason"] = "not live: " + live_body["reason"]
        elif self.needs_partitions and partitions <= 0:
            body["reason"] = "no partitions assigned"
        elif self.needs_partitions and lag is None:
            body["reason"] = "consumer lag not measured yet"
        elif self.needs_partitions and lag is not None and lag > self.max_lag:
            body["reason"] = f"consumer lag {lag} messages is above {self.max_lag}"
        else:
            body["ready"] = True
        return body["ready"], body


class OpsServer:
    """A running operations HTTP server; ``port`` is the bound port (useful when started on port 0)."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host, self.port = httpd.server_address[:2]

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> OpsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler(readiness: Readiness, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "attendance-ops/1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._respond(send_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._respond(send_body=False)

        def _respond(self, send_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, encoder(registry), content_type, send_body)
            elif path == "/healthz":
                ok, body = readiness.live_report()
                self._send_json(200 if ok else 503, body, send_body)
            elif path == "/readyz":
                ok, body = readiness.ready_report()
                self._send_json(200 if ok else 503, body, send_body)
            elif path == "/":
                self._send_json(200, {"endpoints": ["/metrics", "/healthz", "/readyz"]}, send_body)
            else:
                self._send_json(404, {"error": f"no such endpoint {path}"}, send_body)

        def _send_json(self, status: int, body: dict[str, Any], send_body: bool) -> None:
            self._send(status, (json.dumps(body) + "\n").encode(), "application/json", send_body)

        def _send(self, status: int, payload: bytes, content_type: str, send_body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if send_body:
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
            log.debug("ops http: " + format, *args)  # scrapes every 15 s: keep them out of INFO logs

    return Handler


def start_http_server(port: int, readiness: Readiness, host: str = "0.0.0.0",
                      registry: CollectorRegistry = REGISTRY) -> OpsServer:
    """Serve /metrics, /healthz and /readyz on ``host:port`` from a daemon thread; port 0 picks a free one."""
    httpd = ThreadingHTTPServer((host, port), _handler(readiness, registry))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name=f"ops-http-{port}", daemon=True)
    thread.start()
    server = OpsServer(httpd, thread)
    log.info("serving /metrics, /healthz, /readyz on %s:%s", server.host, server.port)
    return server


# --- run-once commands: textfile and Pushgateway -----------------------------------------------------------

@dataclass(frozen=True)
class RunOnceOutputs:
    textfile: Path | None
    pushgateway_url: str | None


def run_once_outputs(settings: Settings | None = None) -> RunOnceOutputs:
    """Where a run-once command exports its metrics: ``settings.metrics_textfile`` (a node-exporter
    textfile-collector path, ``ATTENDANCE_METRICS_TEXTFILE``) and ``settings.pushgateway_url`` (e.g.
    http://pushgateway:9091, ``ATTENDANCE_PUSHGATEWAY_URL``); the process's settings by default.

    A variable set to the empty string counts as unset (pydantic would read it as the path ``.``).
    """
    settings = settings if settings is not None else get_settings()
    textfile = settings.metrics_textfile
    if textfile is not None and str(textfile) in ("", "."):
        textfile = None
    return RunOnceOutputs(textfile, settings.pushgateway_url or None)


class _OnlyPrefixes(Collector):
    """The families of a registry whose names start with one of ``prefixes``."""

    def __init__(self, registry: CollectorRegistry, prefixes: tuple[str, ...]) -> None:
        self._registry, self._prefixes = registry, prefixes

    def collect(self) -> Iterator[Any]:
        for family in self._registry.collect():
            if family.name.startswith(self._prefixes):
                yield family


def _selected(registry: CollectorRegistry, prefixes: Iterable[str] | None) -> CollectorRegistry:
    if prefixes is None:
        return registry
    selected = CollectorRegistry(auto_describe=False)
    selected.register(_OnlyPrefixes(registry, tuple(prefixes)))
    return selected


def write_textfile(path: str | Path, prefixes: Iterable[str] | None = None,
                   registry: CollectorRegistry = REGISTRY) -> None:
    """Write the registry (or only the families named ``prefixes*``) to ``path`` atomically.

    Export only what the command owns: every process holds the whole registry, and a run-once command's
    untouched gauges (release status 0, ...) would otherwise overwrite the real values in Prometheus.
    """
    write_to_textfile(str(path), _selected(registry, prefixes))


def push_metrics(gateway_url: str, job: str, prefixes: Iterable[str] | None = None,
                 registry: CollectorRegistry = REGISTRY) -> None:
    """Push the registry (or only families named ``prefixes*``) to a Pushgateway, replacing job's group."""
    push_to_gateway(gateway_url, job=job, registry=_selected(registry, prefixes))


def export_run_once_metrics(job: str, prefixes: Iterable[str] | None = None,
                            outputs: RunOnceOutputs | None = None) -> list[str]:
    """Export a run-once command's metrics wherever configured; return what was done (for the command's
    output). A Pushgateway that cannot be reached is logged, not raised: the command's work is done."""
    outputs = outputs or run_once_outputs()
    prefixes = tuple(prefixes) if prefixes is not None else None
    done: list[str] = []
    if outputs.textfile is not None:
        outputs.textfile.parent.mkdir(parents=True, exist_ok=True)
        write_textfile(outputs.textfile, prefixes)
        done.append(f"metrics written to {outputs.textfile}")
    if outputs.pushgateway_url:
        try:
            push_metrics(outputs.pushgateway_url, job, prefixes)
            done.append(f"metrics pushed to {outputs.pushgateway_url} (job {job})")
        except OSError as exc:
            log.warning("could not push metrics to %s: %s", outputs.pushgateway_url, exc)
            done.append(f"metrics NOT pushed to {outputs.pushgateway_url}: {exc}")
    return done
