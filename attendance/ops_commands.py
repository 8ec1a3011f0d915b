"""Operations commands: ``attendance dq ...`` (data-quality exception reports) and ``attendance metrics ...``
(what the system exports, and a check that alert rules and dashboards only use metrics that exist).

Also the PromQL helpers those checks (and tests/unit/deploy) use: ``metric_names_in_promql`` and
``exported_metric_names``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from attendance.errors import UserFacingError
from attendance.settings import get_settings

# --- PromQL helpers --------------------------------------------------------------------------------------

#: PromQL words that look like identifiers but are not metric names.
PROMQL_KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "inf", "nan", "atan2",
})
#: Series Prometheus makes itself: per scrape target, and the state of alerting rules.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped",
                               "scrape_samples_post_metric_relabeling", "scrape_series_added",
                               "ALERTS", "ALERTS_FOR_STATE"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)")


def _strip_brackets(expr: str, open_: str, close: str) -> str:
    out, depth = [], 0
    for ch in expr:
        if ch == open_:
            depth += 1
        elif ch == close:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def promql_brackets_balanced(expr: str) -> bool:
    """Round, square and curly brackets nest properly (outside string literals)."""
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for ch in _STRING.sub('""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def metric_names_in_promql(expr: str) -> set[str]:
    """The metric names an expression selects (a light lexer, not a parser: strings, label matchers,
    range/subquery brackets and grouping label lists are removed; identifiers followed by "(" are
    functions or aggregations). Grafana variables ($__rate_interval, $job) are ignored."""
    text = _STRING.sub('""', expr)
    text = _strip_brackets(text, "{", "}")
    text = _strip_brackets(text, "[", "]")
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        name = match.group(1)
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def exported_metric_names() -> set[str]:
    """Every series name ``attendance.metrics.REGISTRY`` can export, with the suffixes Prometheus sees:
    counters ``_total`` (and ``_created``), histograms ``_bucket``, ``_count``, ``_sum``, ``_created``."""
    from attendance.metrics import REGISTRY

    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "count", "sum", "created")}
        elif family.type == "summary":
            names |= {family.name, f"{family.name}_count", f"{family.name}_sum", f"{family.name}_created"}
        else:
            names.add(family.name)
    return names


def rule_file_exprs(document: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(rule name, expr) of every rule of a Prometheus rule file."""
    for group in document.get("groups") or []:
        for rule in group.get("rules") or []:
            yield rule.get("alert") or rule.get("record") or "?", str(rule.get("expr", ""))


def recorded_names(document: dict[str, Any]) -> set[str]:
    return {rule["record"] for group in document.get("groups") or [] for rule in group.get("rules") or []
            if "record" in rule}


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expr) of every Prometheus query in a Grafana dashboard (rows' nested panels too)."""
    def panels(items: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels") or [])

    for panel in panels(dashboard.get("panels") or []):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                yield panel.get("title", "?"), target["expr"]


def unknown_metrics(exprs: Iterable[tuple[str, str]], also_known: Iterable[str] = ()) -> list[str]:
    """Problems: expressions naming a metric nobody exports, or with unbalanced brackets."""
    known = exported_metric_names() | PROMETHEUS_SERIES | set(also_known)
    problems = []
    for where, expr in exprs:
        if not promql_brackets_balanced(expr):
            problems.append(f"{where}: unbalanced brackets in {expr!r}")
        for name in sorted(metric_names_in_promql(expr) - known):
            problems.append(f"{where}: metric {name} is not exported by attendance.metrics")
    return problems


# --- attendance metrics ----------------------------------------------------------------------------------

@click.group()
def metrics() -> None:
    """The Prometheus metrics the system exports."""


@metrics.command("list")
def metrics_list() -> None:
    """Every metric in attendance.metrics: name, type, labels and help."""
    from attendance.metrics import REGISTRY

    for family in sorted(REGISTRY.collect(), key=lambda f: f.name):
        suffix = "_total" if family.type == "counter" else ""
        collector = REGISTRY._names_to_collectors.get(family.name + suffix)  # noqa: SLF001
        labels = ",".join(getattr(collector, "_labelnames", ()) or ())
        click.echo(f"{family.name}{suffix}\t{family.type}\t{{{labels}}}\t{family.documentation}")


@metrics.command("check")
@click.option("--rules", "rule_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Prometheus rule file(s); default deploy/prometheus/alerts.yml.")
@click.option("--dashboard", "dashboards", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Grafana dashboard JSON file(s); default deploy/grafana/dashboards/*.json.")
def metrics_check(rule_files: tuple[Path, ...], dashboards: tuple[Path, ...]) -> None:
    """Check that alert rules and dashboards only query metrics attendance.metrics exports."""
    import yaml

    rule_files = rule_files or tuple(p for p in [Path("deploy/prometheus/alerts.yml")] if p.exists())
    dashboards = dashboards or tuple(sorted(Path("deploy/grafana/dashboards").glob("*.json")))
    if not rule_files and not dashboards:
        raise UserFacingError(
            "nothing to check: pass --rules and/or --dashboard (or run from the repository root)")
    problems: list[str] = []
    recorded: set[str] = set()
    rule_docs = []
    for path in rule_files:
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise UserFacingError(f"{path} is not valid YAML: {exc}") from exc
        rule_docs.append((path, document))
        recorded |= recorded_names(document)
    for path, document in rule_docs:
        problems += [f"{path}: {p}" for p in unknown_metrics(rule_file_exprs(document), recorded)]
    for path in dashboards:
        try:
            dashboard = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserFacingError(f"{path} is not valid JSON: {exc}") from exc
        problems += [f"{path}: {p}" for p in unknown_metrics(dashboard_exprs(dashboard), recorded)]
    for problem in problems:
        click.echo(problem)
    checked = ", ".join(str(p) for p in (*rule_files, *dashboards))
    if problems:
        click.echo(f"{len(problems)} problem(s) in {checked}", err=True)
        sys.exit(1)
    click.echo(f"ok: {checked}")


# --- attendance dq -------------------------------------------------------------------------------------

@click.group()
def dq() -> None:
    """Data-quality exception reports (per school; never a pupil)."""


@dq.command("checks")
def dq_checks() -> None:
    """List the checks and the thresholds with their defaults."""
    from dq.checks import CHECKS, Thresholds

    for name, meaning in CHECKS.items():
        click.echo(f"{name}: {meaning}")
    click.echo("")
    defaults = Thresholds()
    for f in fields(Thresholds):
        click.echo(f"{f.name} = {getattr(defaults, f.name)}")


def _parse_overrides(pairs: tuple[str, ...]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UserFacingError(f"--set takes NAME=VALUE, got {pair!r}")
        overrides[name.strip()] = value.strip()
    return overrides


def _echo_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    texts = [[("" if r[c] is None else str(r[c])) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(t[i]) for t in texts]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for t in texts:
        click.echo("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)).rstrip())


@dq.command("report")
@click.option("--date", "day", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Register day (YYYY-MM-DD); default today in the UK.")
@click.option("--format", "output_format", type=click.Choice(["table", "csv"]), default="table",
              show_default=True)
@click.option("--check", "checks", multiple=True,
              help="Run only this check (repeatable); nothing is stored then.")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help="Override a threshold, e.g. --set roll_change_fraction=0.2 (see `attendance dq checks`).")
@click.option("--no-write", is_flag=True, help="Print only; do not write the dq_exceptions table.")
def dq_report(day: dt.datetime | None, output_format: str, checks: tuple[str, ...],
              overrides: tuple[str, ...], no_write: bool) -> None:
    """Run the data-quality checks for a date: print the exceptions, store them in dq_exceptions
    (replacing that date's rows) and count them in attendance_dq_exceptions_total."""
    from zoneinfo import ZoneInfo

    from attendance.http import export_run_once_metrics
    from dq.checks import CHECKS, Thresholds
    from dq.report import run_report

    report_day = day.date() if day is not None else dt.datetime.now(ZoneInfo("Europe/London")).date()
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise UserFacingError(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    try:
        thresholds = Thresholds.with_overrides(_parse_overrides(overrides))
    except ValueError as exc:
        raise UserFacingError(str(exc)) from exc
    result = run_report(get_settings().lake_uri, report_day, thresholds, checks or None, write=not no_write)

    if output_format == "csv":
        click.echo(result.exceptions.write_csv(), nl=False)
    else:
        if result.exceptions.height:
            _echo_table(result.exceptions.to_dicts(), ["check", "la_code", "urn", "register_code", "detail"])
        else:
            click.echo(f"no data-quality exceptions for {report_day}")
    summary = ", ".join(f"{c} {n}" for c, n in result.counts.items())
    messages = [*result.notes, f"counts: {summary}"]
    messages += export_run_once_metrics("attendance-dq", prefixes=("attendance_dq_",))
    for message in messages:  # to stderr, so that --format csv stays a clean CSV on stdout
        click.echo(message, err=True)


COMMANDS: list[click.Command | click.Group] = [dq, metrics]
