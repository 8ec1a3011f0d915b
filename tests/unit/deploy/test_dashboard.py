"""deploy/grafana: the dashboard is valid JSON, queries only exported metrics through the provisioned
datasource, has unique panel ids, shows every metric the system exports, and is provisioned where
docker-compose.yml mounts it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from attendance.ops_commands import dashboard_exprs, metric_names_in_promql, recorded_names, unknown_metrics

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "attendance.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
PROVIDERS = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
COMPOSE = ROOT / "docker-compose.yml"
RUNBOOK = ROOT / "docs" / "operations.md"

#: Series Prometheus makes itself, which a dashboard may show.
PROMETHEUS_SERIES = {"ALERTS", "up"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(items: list[dict]) -> Iterator[dict]:
    for panel in items:
        yield panel
        yield from all_panels(panel.get("panels") or [])


def provisioned_datasources() -> list[dict]:
    found = []
    for path in sorted(DATASOURCES.glob("*.yml")):
        found += yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]
    return found


def test_dashboard_has_a_uid_title_and_panels(dashboard):
    assert dashboard["uid"] and dashboard["title"]
    assert len(list(all_panels(dashboard["panels"]))) >= 20


def test_panel_ids_are_unique(dashboard):
    ids = [p["id"] for p in all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))


def test_panels_fit_the_24_column_grid_without_overlapping(dashboard):
    cells: set[tuple[int, int]] = set()
    for panel in all_panels(dashboard["panels"]):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        panel_cells = {
            (x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not panel_cells & cells, f"panel {panel['title']!r} overlaps another"
        cells |= panel_cells


def test_every_query_uses_the_provisioned_prometheus_datasource(dashboard):
    prometheus = [d for d in provisioned_datasources() if d["type"] == "prometheus"]
    assert len(prometheus) == 1
    uid = prometheus[0]["uid"]
    for panel in all_panels(dashboard["panels"]):
        if panel.get("type") == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == uid, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_every_query_names_only_exported_metrics(dashboard):
    recorded = recorded_names(yaml.safe_load(RULES.read_text(encoding="utf-8")))
    assert unknown_metrics(dashboard_exprs(dashboard), recorded | PROMETHEUS_SERIES) == []


def test_every_exported_metric_is_on_the_dashboard(dashboard):
    from attendance.metrics import REGISTRY

    shown = set().union(*(metric_names_in_promql(e) for _, e in dashboard_exprs(dashboard)))
    not_shown = []
    for family in REGISTRY.collect():
        if family.name == "attendance_uk_utc_offset_seconds":
            continue  # a clock for the alert rules, not something to watch
        series = {
            family.name,
            f"{family.name}_total",
            f"{family.name}_bucket",
            f"{family.name}_sum",
            f"{family.name}_count",
        }
        if not series & shown:
            not_shown.append(family.name)
    assert not not_shown, f"no panel shows {not_shown}"


def test_dashboards_are_provisioned_from_where_compose_mounts_them():
    providers = [
        p
        for path in sorted(PROVIDERS.glob("*.yml"))
        for p in yaml.safe_load(path.read_text(encoding="utf-8"))["providers"]
    ]
    paths = {p["options"]["path"] for p in providers}
    grafana = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["grafana"]
    mounts = dict(
        volume.rsplit(":", 1)[0].split(":", 1) for volume in grafana["volumes"] if volume.startswith("./")
    )
    assert mounts["./deploy/grafana/dashboards"] in paths
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert (ROOT / "deploy/grafana/dashboards").is_dir()


def test_every_panel_is_explained_in_the_runbook(dashboard):
    runbook = RUNBOOK.read_text(encoding="utf-8")
    missing = [
        p["title"]
        for p in all_panels(dashboard["panels"])
        if p.get("type") != "row" and f"**{p['title']}**" not in runbook
    ]
    assert not missing, f"docs/operations.md does not explain panels {missing}"
