"""A real, local Apache Kafka broker (KRaft, single node) provisioned from Maven Central, without Docker.

``attendance kafka start`` resolves ``org.apache.kafka:kafka_2.13`` and its runtime dependencies with ``mvn``
into a cache outside the repository, formats a storage directory, starts the broker on 127.0.0.1 on a
free port, waits until it answers a metadata request, and records its address in ``<state>/kafka/broker.json``
where every other command finds it. ``stop`` stops only the process that ``start`` recorded.

Notes behind the choices are in ../shared/notes/kafka-local.md: static ``controller.quorum.voters`` so the
storage is formatted without ``--standalone``; SLF4J 1.7 binding ``log4j-slf4j-impl`` because no jar carries
Kafka's log4j2.yaml; rebalance delay 0 and a one-partition offsets topic so tests start fast.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from attendance.errors import UserFacingError
from attendance.settings import Settings

LOG4J_VERSION = "2.24.3"


class BrokerError(UserFacingError):
    """The local broker could not be provisioned, started, found or stopped; the message says why."""


@dataclass(frozen=True)
class BrokerInfo:
    pid: int
    bootstrap: str
    port: int
    controller_port: int
    data_dir: str
    log_file: str
    started_at: float
    kafka_version: str


# --- provisioning ------------------------------------------------------------------------------------

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.attendance</groupId><artifactId>kafka-broker-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>1.7.36</version></dependency>
  </dependencies>
  <build><plugins><plugin><groupId>org.apache.maven.plugins</groupId>
    <artifactId>maven-dependency-plugin</artifactId><version>3.8.1</version></plugin></plugins></build>
</project>
"""

_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.org.name = org.apache.kafka
logger.org.level = {level}
"""


def provision(settings: Settings) -> Path:
    """Return a directory of the broker's jars, resolving them with Maven on first use."""
    home = settings.kafka_cache_dir.expanduser() / settings.kafka_version
    lib = home / "lib"
    marker = home / ".complete"
    if marker.exists() and any(lib.glob("kafka_2.13-*.jar")):
        return lib
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is not on PATH: install Maven 3.6.3+ or set ATTENDANCE_KAFKA_BOOTSTRAP")
    if shutil.which("java") is None:
        raise BrokerError("Java is not on PATH: Kafka 4.x needs Java 17+, or set ATTENDANCE_KAFKA_BOOTSTRAP")
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(_POM.format(kafka=settings.kafka_version, log4j=LOG4J_VERSION))
    done = subprocess.run(
        ["mvn", "-q", "-B", "dependency:copy-dependencies", "-DincludeScope=runtime", "-DoutputDirectory=lib"],
        cwd=home, capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise BrokerError(f"mvn could not resolve kafka_2.13 {settings.kafka_version}:\n{done.stdout[-2000:]}")
    marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    return lib


# --- state -------------------------------------------------------------------------------------------

def _kafka_dir(state_dir: Path) -> Path:
    return state_dir.resolve() / "kafka"


def _info_path(state_dir: Path) -> Path:
    return _kafka_dir(state_dir) / "broker.json"


def read_info(state_dir: Path) -> BrokerInfo | None:
    path = _info_path(state_dir)
    if not path.exists():
        return None
    return BrokerInfo(**json.loads(path.read_text()))


def _pid_is_our_broker(pid: int, config_path: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline and str(config_path).encode() in cmdline


def is_running(state_dir: Path) -> BrokerInfo | None:
    """The recorded broker, if its process is still alive and is the one we started."""
    info = read_info(state_dir)
    if info and _pid_is_our_broker(info.pid, _kafka_dir(state_dir) / "server.properties"):
        return info
    return None


def bootstrap_servers(settings: Settings) -> str:
    """Where the brokers are: ATTENDANCE_KAFKA_BOOTSTRAP if set, otherwise the recorded local broker."""
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap
    info = is_running(settings.state_dir)
    if info is None:
        raise BrokerError(
            "no Kafka broker: run `attendance kafka start` (or set ATTENDANCE_KAFKA_BOOTSTRAP to your cluster)"
        )
    return info.bootstrap


# --- start / stop ------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM does: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cluster_id() -> str:
    # Kafka's Uuid: 16 random bytes, base64url without padding, never starting with '-'.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _server_properties(port: int, controller_port: int, data_dir: Path) -> str:
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "inter.broker.listener.name=PLAINTEXT",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={data_dir}",
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        # Compaction must really run in tests of the opt-outs topic.
        "log.cleaner.backoff.ms=1000",
        "",
    ])


def _java_cmd(settings: Settings, lib: Path, main: str, *args: str, log_config: Path | None = None) -> list[str]:
    cmd = ["java", f"-Xmx{settings.kafka_heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true"]
    if log_config is not None:
        cmd.append(f"-Dlog4j2.configurationFile={log_config}")
    return [*cmd, "-cp", str(lib / "*"), main, *args]


def wait_until_ready(bootstrap: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """Block until the broker answers a metadata request, or raise BrokerError."""
    from kafka import KafkaAdminClient  # local import: kafka-python is slow to import

    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # refused connections are expected while it starts
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"the broker exited during start-up with code {process.returncode}")
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
            try:
                admin.describe_cluster()
                return
            finally:
                admin.close()
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last_error = exc
            time.sleep(0.5)
    raise BrokerError(f"the broker at {bootstrap} did not answer within {timeout_s:.0f}s: {last_error}")


def start(settings: Settings, *, state_dir: Path | None = None, log_level: str = "WARN") -> BrokerInfo:
    """Start the local broker (idempotent: a running one is returned as is)."""
    state_dir = state_dir or settings.state_dir
    running = is_running(state_dir)
    if running:
        return running
    lib = provision(settings)
    kdir = _kafka_dir(state_dir)
    data_dir = kdir / "data"
    config = kdir / "server.properties"
    kdir.mkdir(parents=True, exist_ok=True)
    previous = read_info(state_dir)
    formatted = (data_dir / "meta.properties").exists()
    if formatted and previous and _port_free(previous.port) and _port_free(previous.controller_port):
        port, controller_port = previous.port, previous.controller_port  # restart on the same address
    else:
        if formatted:  # the old address is taken: start afresh
            shutil.rmtree(data_dir)
            formatted = False
        port, controller_port = _free_port(), _free_port()
        while controller_port == port:
            controller_port = _free_port()
    config.write_text(_server_properties(port, controller_port, data_dir))
    log_file = kdir / "broker.log"
    log_config = kdir / "log4j2.properties"
    log_config.write_text(_LOG4J2.format(log=log_file, level=log_level))
    if not formatted:
        fmt = subprocess.run(
            _java_cmd(settings, lib, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config),
                      log_config=log_config),
            capture_output=True, text=True, check=False,
        )
        if fmt.returncode != 0:
            raise BrokerError(f"formatting the broker's storage failed:\n{fmt.stderr[-2000:] or fmt.stdout[-2000:]}")
    stdout = open(kdir / "broker.stdout", "ab")  # noqa: SIM115 - handed to the child process
    process = subprocess.Popen(
        _java_cmd(settings, lib, "kafka.Kafka", str(config), log_config=log_config),
        stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    stdout.close()
    bootstrap = f"127.0.0.1:{port}"
    info = BrokerInfo(pid=process.pid, bootstrap=bootstrap, port=port, controller_port=controller_port,
                      data_dir=str(data_dir), log_file=str(log_file), started_at=time.time(),
                      kafka_version=settings.kafka_version)
    _info_path(state_dir).write_text(json.dumps(asdict(info), indent=2))
    try:
        wait_until_ready(bootstrap, settings.kafka_start_timeout_s, process)
    except BrokerError:
        _terminate(process.pid, grace_s=5)
        raise
    return info


def _terminate(pid: int, grace_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def stop(settings: Settings, *, state_dir: Path | None = None, wipe: bool = False, grace_s: float = 30.0) -> bool:
    """Stop the broker that ``start`` recorded; True if one was running. ``wipe`` deletes its data too."""
    state_dir = state_dir or settings.state_dir
    info = is_running(state_dir)
    if info is not None:
        _terminate(info.pid, grace_s)
    if wipe:
        shutil.rmtree(_kafka_dir(state_dir), ignore_errors=True)
    return info is not None


def kill(settings: Settings, *, state_dir: Path | None = None) -> None:
    """SIGKILL the recorded broker (fault tests: a crash, not a clean stop). Data stays for a restart."""
    info = is_running(state_dir or settings.state_dir)
    if info is not None:
        os.kill(info.pid, signal.SIGKILL)
        try:
            os.waitpid(info.pid, 0)
        except ChildProcessError:
            time.sleep(0.5)
