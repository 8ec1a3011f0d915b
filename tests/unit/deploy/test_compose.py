"""docker-compose.yml and deploy/: the services run commands the CLI has, with settings that exist, and
Prometheus scrapes each of them where it serves /metrics. Also the endpoints those health checks and
scrapes rely on (attendance.http): /metrics, /healthz, /readyz."""

from __future__ import annotations

import json
import shlex
import urllib.error
import urllib.request
from pathlib import Path

import click
import pytest
import yaml

from attendance.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

#: The `attendance` commands the compose services run; worker and scheduler come from the streams and
#: statistics areas.
EXPECTED_COMMANDS = {("topics", "create"), ("worker",), ("scheduler",)}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


def command_of(service: dict) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def environment_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: str(v) for k, v in env.items()}


def attendance_services(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in services(compose).items() if command_of(s)[:1] == ["attendance"]}


def long_running(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in attendance_services(compose).items() if s.get("restart") != "no"}


def resolve(argv: list[str]) -> click.Command | None:
    """Follow ``attendance a b ...`` through the click groups; None when a name is not there."""
    from attendance.cli import main

    command: click.Command = main
    for token in argv:
        if token.startswith("-") or not isinstance(command, click.Group):
            break
        sub = command.commands.get(token)
        if sub is None:
            return None
        command = sub
    return command


def test_compose_file_has_the_platform_services(compose):
    names = set(services(compose))
    assert {"kafka", "topic-init", "scheduler", "prometheus", "grafana", "minio", "minio-init"} <= names
    workers = [n for n, s in attendance_services(compose).items() if command_of(s)[1:2] == ["worker"]]
    assert len(workers) >= 2, "at least two workers share the extracts topic's partitions"
    assert services(compose)["kafka"]["image"] == "apache/kafka:4.1.1"


def test_compose_runs_the_expected_attendance_commands(compose):
    used = {
        tuple(t for t in command_of(s)[1:] if not t.startswith("-"))
        for s in attendance_services(compose).values()
    }
    assert used == EXPECTED_COMMANDS


@pytest.mark.parametrize("argv", sorted(EXPECTED_COMMANDS), ids=" ".join)
def test_every_compose_command_exists_in_the_cli(argv):
    command = resolve(list(argv))
    assert command is not None, f"`attendance {' '.join(argv)}` is not a command of attendance.cli.main (yet)"
    assert not isinstance(command, click.Group), f"`attendance {' '.join(argv)}` needs a subcommand"


def test_cli_walker_rejects_a_missing_command():
    assert resolve(["topics", "no-such-command"]) is None
    assert resolve(["topics", "create"]) is not None


def test_every_attendance_variable_is_a_settings_field(compose):
    fields = {f"ATTENDANCE_{name.upper()}" for name in Settings.model_fields}
    used = {
        name
        for s in services(compose).values()
        for name in environment_of(s)
        if name.startswith("ATTENDANCE_")
    }
    assert used, "the services are configured through ATTENDANCE_* variables"
    assert used - fields == set()


def test_attendance_services_share_broker_lake_and_s3_settings(compose):
    for name, service in attendance_services(compose).items():
        env = environment_of(service)
        assert env["ATTENDANCE_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        assert env["ATTENDANCE_LAKE_URI"] == "s3://attendance-lake", name
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000", name
        assert env["AWS_ACCESS_KEY_ID"] == environment_of(services(compose)["minio"])["MINIO_ROOT_USER"], name
    assert "attendance-lake" in " ".join(command_of(services(compose)["minio-init"]))


def scrape_targets() -> dict[str, set[str]]:
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    return {
        job["job_name"]: {t for sc in job.get("static_configs", []) for t in sc["targets"]}
        for job in config["scrape_configs"]
    }


def test_prometheus_scrapes_every_long_running_service_on_its_metrics_port(compose):
    targets = {t for ts in scrape_targets().values() for t in ts}
    default_port = Settings.model_fields["metrics_port"].default
    for name, service in long_running(compose).items():
        port = environment_of(service).get("ATTENDANCE_METRICS_PORT", str(default_port))
        assert f"{name}:{port}" in targets, f"Prometheus does not scrape {name}:{port}"
        healthcheck = " ".join(service["healthcheck"]["test"])
        assert f":{port}/healthz" in healthcheck, name


def test_every_scrape_target_is_a_compose_service(compose):
    for job, targets in scrape_targets().items():
        for target in targets:
            host, port = target.rsplit(":", 1)
            assert host == "localhost" or host in services(compose), f"{job}: {host} is not a service"
            assert port.isdigit()


def test_prometheus_loads_the_rule_file_compose_mounts(compose):
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    volumes = services(compose)["prometheus"]["volumes"]
    for rule_file in config["rule_files"]:
        mount = next(v for v in volumes if v.split(":")[1] == rule_file)
        assert (ROOT / mount.split(":")[0]).is_file()


def test_the_image_is_built_from_python_311_slim_with_pip_install(compose):
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "FROM python:3.11-slim" in text and "pip install ." in text
    build = services(compose)["worker-1"]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


# --- the endpoints behind those health checks and scrapes -----------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def served(clock):
    from attendance.http import Readiness, start_http_server

    readiness = Readiness(heartbeat_timeout_s=60, max_lag=1000, clock=clock)
    server = start_http_server(0, readiness, host="127.0.0.1")
    yield readiness, server
    server.stop()


def test_port_zero_binds_a_free_port_and_metrics_serves_the_registry(served):
    _, server = served
    assert server.port > 0
    status, body = get(server.url + "/metrics")
    assert status == 200 and "attendance_messages_consumed_total" in body


def test_healthz_fails_once_the_heartbeat_is_older_than_the_timeout(served, clock):
    readiness, server = served
    assert get(server.url + "/healthz")[0] == 200
    clock.now += 61
    status, body = get(server.url + "/healthz")
    assert status == 503 and "no heartbeat" in json.loads(body)["reason"]
    readiness.heartbeat()
    assert get(server.url + "/healthz")[0] == 200


def test_readyz_needs_partitions_and_a_measured_lag_within_the_threshold(served, clock):
    readiness, server = served
    status, body = get(server.url + "/readyz")
    assert status == 503 and json.loads(body)["reason"] == "no partitions assigned"
    readiness.set_assignment(4)
    assert json.loads(get(server.url + "/readyz")[1])["reason"] == "consumer lag not measured yet"
    readiness.set_lag(1001)
    assert "above 1000" in json.loads(get(server.url + "/readyz")[1])["reason"]
    readiness.set_lag(1000)
    assert get(server.url + "/readyz")[0] == 200
    clock.now += 61  # a stuck process is not ready either
    assert get(server.url + "/readyz")[0] == 503


def test_a_process_without_partitions_is_ready_when_live(clock):
    from attendance.http import Readiness

    scheduler = Readiness(needs_partitions=False, clock=clock)
    assert scheduler.is_ready()
    clock.now += 3600
    assert not scheduler.is_live() and not scheduler.is_ready()


def test_heartbeat_is_exported_as_a_timestamp(served):
    from attendance.metrics import REGISTRY

    readiness, _ = served
    readiness.heartbeat()
    assert REGISTRY.get_sample_value("attendance_process_heartbeat_timestamp_seconds") > 1.7e9


def test_run_once_outputs_come_from_the_settings_and_empty_variables_mean_unset(tmp_path, monkeypatch):
    from attendance.http import RunOnceOutputs, run_once_outputs
    from attendance.settings import Settings

    monkeypatch.setenv("ATTENDANCE_METRICS_TEXTFILE", str(tmp_path / "m.prom"))
    monkeypatch.setenv("ATTENDANCE_PUSHGATEWAY_URL", "http://pushgateway:9091")
    assert run_once_outputs(Settings()) == RunOnceOutputs(tmp_path / "m.prom", "http://pushgateway:9091")
    monkeypatch.setenv("ATTENDANCE_METRICS_TEXTFILE", "")
    monkeypatch.setenv("ATTENDANCE_PUSHGATEWAY_URL", "")
    assert run_once_outputs(Settings()) == RunOnceOutputs(None, None)
    monkeypatch.delenv("ATTENDANCE_METRICS_TEXTFILE")
    monkeypatch.delenv("ATTENDANCE_PUSHGATEWAY_URL")
    assert run_once_outputs(Settings()) == RunOnceOutputs(None, None)


def test_run_once_metrics_written_to_a_textfile_hold_only_the_named_families(tmp_path):
    from attendance.http import RunOnceOutputs, export_run_once_metrics

    done = export_run_once_metrics(
        "attendance-dq", ("attendance_dq_",), RunOnceOutputs(tmp_path / "m.prom", None)
    )
    text = (tmp_path / "m.prom").read_text()
    assert done and "attendance_dq_last_report_timestamp_seconds" in text
    assert "attendance_release_status" not in text
