"""On-time release: embargo, publication at 09:30 (Europe/London) on a weekday, verification,
pre-release access.

Directories (the PUBLISHED zone, ``<lake>/published``):

- ``embargo/<YYYY-MM-DD>/``: the prepared files and ``manifest.json`` (sha256 and size of every file),
  written to a temporary directory and renamed into place (atomic: a reader sees all files or none);
- ``releases/<YYYY-MM-DD>/``: the public copy, made visible at release time by renaming a verified copy
  into place; the embargo copy is then removed;
- ``pre_release_access.csv``: who may see embargoed files (``release_date, user, role``; role
  ``pre_release`` = the 24 hours before release, ``producer`` = any time while it is prepared);
- ``alerts.jsonl``: late or incomplete releases (also ``attendance_release_status`` 3 or 4);
- ``publications.jsonl``: one line per publication (``release``, ``published_at``, ``late``), from which a
  restarted scheduler reads its last publication time.

Every embargoed-file access decision is logged to ``<lake>/audit/embargo_access.jsonl``.

Everything takes an injectable ``now`` (or clock) so tests do not wait; re-running a step is idempotent:
preparing a release that is already prepared or published, or publishing one already published, changes
nothing.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from attendance import metrics
from attendance.errors import UserFacingError
from official_stats.config import StatsConfig, get_stats_config
from official_stats.disclosure import DisclosureRules
from storage.tables import Zone

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
NOT_PREPARED, EMBARGOED, PUBLISHED, LATE, INCOMPLETE = 0, 1, 2, 3, 4
MANIFEST = "manifest.json"
PRODUCER, PRE_RELEASE = "producer", "pre_release"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ReleaseError(UserFacingError):
    """A release step that cannot go ahead (bad date, missing embargo copy, failed checks)."""


# --- where and when ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleasePaths:
    root: Path  # the published zone
    audit: Path  # the audit zone

    @classmethod
    def for_lake(cls, lake_uri: str) -> ReleasePaths:
        if "://" in lake_uri and not lake_uri.startswith("file://"):
            raise UserFacingError(
                "release files are written to a local published zone; "
                f"ATTENDANCE_LAKE_URI={lake_uri} is not a local path"
            )
        base = Path(lake_uri.removeprefix("file://"))
        return cls(base / Zone.PUBLISHED.value, base / Zone.AUDIT.value)

    def embargo(self, release: dt.date) -> Path:
        return self.root / "embargo" / release.isoformat()

    def public(self, release: dt.date) -> Path:
        return self.root / "releases" / release.isoformat()

    @property
    def access_list(self) -> Path:
        return self.root / "pre_release_access.csv"

    @property
    def access_log(self) -> Path:
        return self.audit / "embargo_access.jsonl"

    @property
    def alerts(self) -> Path:
        return self.root / "alerts.jsonl"

    @property
    def publications(self) -> Path:
        return self.root / "publications.jsonl"


def release_at(release: dt.date, config: StatsConfig | None = None) -> dt.datetime:
    """Release time (UTC) of ``release``: ``release_time`` local (09:30 Europe/London); weekdays only."""
    config = config or get_stats_config()
    if release.weekday() >= 5:
        raise ReleaseError(f"{release} is a {release.strftime('%A')}: releases are on weekdays")
    hour, minute = (int(p) for p in config.release_time.split(":"))
    local = dt.datetime.combine(release, dt.time(hour, minute), tzinfo=ZoneInfo(config.timezone))
    return local.astimezone(dt.UTC)


# --- manifest ------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, info: dict) -> dict:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {
        **info,
        "files": [{"name": p.name, "bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files],
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    return manifest


def verify(directory: Path) -> list[str]:
    """Problems with a release directory (empty list: every manifest file is there, same size and checksum,
    every data file has its meta file, and no file is empty)."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return [f"{directory}: no {MANIFEST}"]
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    problems: list[str] = []
    names = {f["name"] for f in manifest.get("files", [])}
    if not names:
        problems.append("manifest lists no files")
    for entry in manifest.get("files", []):
        path = directory / entry["name"]
        if not path.is_file():
            problems.append(f"missing {entry['name']}")
        elif path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
            problems.append(f"{entry['name']} differs from the manifest")
        elif entry["bytes"] == 0:
            problems.append(f"{entry['name']} is empty")
    for name in names:
        if name.endswith(".csv") and not name.endswith(".meta.csv") and name.replace(".csv", ".meta.csv") not in names:
            problems.append(f"{name} has no meta file")
    return problems


# --- prepare (embargo) ----------------------------------------------------------------------------------


@dataclass
class ReleaseOutcome:
    release: dt.date
    status: int
    directory: Path | None
    messages: list[str] = field(default_factory=list)


def prepare(
    lake_uri: str,
    release: dt.date,
    now: dt.datetime,
    *,
    config: StatsConfig | None = None,
    rules: DisclosureRules | None = None,
    storage_options: dict[str, str] | None = None,
    include_release_date: bool = False,
) -> ReleaseOutcome:
    """Build, screen and place the release's files under embargo (idempotent)."""
    from official_stats.publication import build_release, write_release

    config = config or get_stats_config()
    paths = ReleasePaths.for_lake(lake_uri)
    at = release_at(release, config)
    public, embargo = paths.public(release), paths.embargo(release)
    if public.is_dir() and not verify(public):
        return ReleaseOutcome(release, PUBLISHED, public, ["already published"])
    if embargo.is_dir() and not verify(embargo):
        metrics.RELEASE_STATUS.set(EMBARGOED)
        return ReleaseOutcome(release, EMBARGOED, embargo, ["already prepared"])
    built = build_release(lake_uri, release, rules, storage_options, include_release_date=include_release_date)
    staging = embargo.parent / f".{release.isoformat()}.{uuid.uuid4().hex}.tmp"
    staging.mkdir(parents=True)
    try:
        write_release(built, staging, screen=True)
        write_manifest(
            staging,
            {
                "release_date": release.isoformat(),
                "release_at": at.isoformat(),
                "data_end": built.data_end.isoformat(),
                "academic_year": built.academic_year,
                "prepared_at": now.isoformat(),
                "persistent_absence_available": built.pa_available,
                "rows_suppressed": built.suppressed_rows,
                "rows_secondary_suppressed": built.secondary_suppressed_rows,
            },
        )
        if embargo.exists():  # a broken earlier attempt: keep it aside for inspection
            embargo.rename(embargo.with_name(f".{release.isoformat()}.broken.{uuid.uuid4().hex}"))
        os.replace(staging, embargo)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    metrics.RELEASE_STATUS.set(EMBARGOED)
    late = now >= at
    messages = [f"prepared {len(built.files)} file pair(s) under embargo (data to {built.data_end})"]
    if late:
        messages.append("prepared after release time")
    return ReleaseOutcome(release, EMBARGOED, embargo, messages)


# --- publish -------------------------------------------------------------------------------------------


def _alert(paths: ReleasePaths, release: dt.date, status: int, now: dt.datetime, detail: str) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    record = {
        "at": now.isoformat(),
        "release": release.isoformat(),
        "status": {LATE: "late", INCOMPLETE: "incomplete"}.get(status, str(status)),
        "detail": detail,
    }
    with paths.alerts.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    log.error("release %s %s: %s", release, record["status"], detail)


def publish(
    lake_uri: str,
    release: dt.date,
    now: dt.datetime,
    *,
    config: StatsConfig | None = None,
    not_before_release_time: bool = True,
) -> ReleaseOutcome:
    """Make the embargoed files public (at or after release time), verify them, set the release metrics.

    Idempotent: a release already public and intact is left as it is. ``not_before_release_time=False``
    is for an ad hoc publication (``attendance publish --now``): public at once, never reported late.
    """
    config = config or get_stats_config()
    paths = ReleasePaths.for_lake(lake_uri)
    at = release_at(release, config)
    if not not_before_release_time:
        at = min(at, now)
    if now < at:
        raise ReleaseError(f"release {release} is embargoed until {at.isoformat()} (now {now.isoformat()})")
    public, embargo = paths.public(release), paths.embargo(release)
    if public.is_dir():
        problems = verify(public)
        if not problems:
            metrics.RELEASE_STATUS.set(PUBLISHED)
            return ReleaseOutcome(release, PUBLISHED, public, ["already published"])
    elif not embargo.is_dir():
        metrics.RELEASE_STATUS.set(INCOMPLETE if now > at else NOT_PREPARED)
        _alert(paths, release, INCOMPLETE, now, "nothing prepared under embargo")
        return ReleaseOutcome(release, INCOMPLETE, None, ["nothing prepared under embargo"])
    else:
        problems = verify(embargo)
        if problems:
            metrics.RELEASE_STATUS.set(INCOMPLETE)
            _alert(paths, release, INCOMPLETE, now, "; ".join(problems))
            return ReleaseOutcome(release, INCOMPLETE, embargo, problems)
        staging = public.parent / f".{release.isoformat()}.{uuid.uuid4().hex}.tmp"
        public.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(embargo, staging)
        if public.exists():  # an intact-looking but failing public copy: replace it
            public.rename(public.with_name(f".{release.isoformat()}.broken.{uuid.uuid4().hex}"))
        os.replace(staging, public)  # atomic: the public directory appears complete or not at all
        problems = verify(public)
    if problems:
        metrics.RELEASE_STATUS.set(INCOMPLETE)
        _alert(paths, release, INCOMPLETE, now, "; ".join(problems))
        return ReleaseOutcome(release, INCOMPLETE, public, problems)
    if embargo.is_dir():
        shutil.rmtree(embargo)
    late = now > at + dt.timedelta(minutes=config.late_grace_minutes)
    metrics.LAST_PUBLICATION_TIMESTAMP.set(now.timestamp())
    with paths.publications.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"release": release.isoformat(), "published_at": now.isoformat(), "late": late}) + "\n")
    if late:
        metrics.RELEASE_STATUS.set(LATE)
        _alert(paths, release, LATE, now, f"published at {now.isoformat()}, due {at.isoformat()}")
        return ReleaseOutcome(release, LATE, public, ["published late"])
    metrics.RELEASE_STATUS.set(PUBLISHED)
    return ReleaseOutcome(release, PUBLISHED, public, ["published"])


def last_publication_time(lake_uri: str) -> dt.datetime | None:
    """When a release was last published (``publications.jsonl``), or None if never."""
    path = ReleasePaths.for_lake(lake_uri).publications
    if not path.is_file():
        return None
    times = [dt.datetime.fromisoformat(json.loads(line)["published_at"])
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return max(times, default=None)


def next_release(releases: list[dt.date], now: dt.datetime, config: StatsConfig | None = None) -> dt.date | None:
    """The release of today (UK date, all day, also once published) or else the first one after today."""
    config = config or get_stats_config()
    today = now.astimezone(ZoneInfo(config.timezone)).date()
    return min((r for r in releases if r >= today), default=None)


# --- pre-release access --------------------------------------------------------------------------------


def read_access_list(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        if set(row) < {"release_date", "user", "role"}:
            raise UserFacingError(f"{path}: columns must be release_date, user, role")
    return rows


def grant_access(lake_uri: str, release: dt.date, user: str, role: str = PRE_RELEASE) -> None:
    """Add ``user`` to the pre-release access list of ``release`` (idempotent)."""
    if role not in (PRODUCER, PRE_RELEASE):
        raise UserFacingError(f"role must be {PRODUCER} or {PRE_RELEASE}, not {role!r}")
    paths = ReleasePaths.for_lake(lake_uri)
    rows = read_access_list(paths.access_list)
    if any(r["release_date"] == release.isoformat() and r["user"] == user and r["role"] == role for r in rows):
        return
    paths.root.mkdir(parents=True, exist_ok=True)
    new = not paths.access_list.exists()
    with paths.access_list.open("a", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["release_date", "user", "role"])
        if new:
            writer.writeheader()
        writer.writerow({"release_date": release.isoformat(), "user": user, "role": role})


def can_view_embargoed(
    user: str,
    release: dt.date,
    now: dt.datetime,
    *,
    lake_uri: str | None = None,
    config: StatsConfig | None = None,
    what: str = "",
) -> bool:
    """May ``user`` see release ``release``'s files at ``now``? Every decision is logged (audit zone).

    After release time everyone may (the files are public). Before it: a ``producer`` on the list may; a
    ``pre_release`` user on the list may during the ``pre_release_hours`` (24) before release time; nobody
    else may.
    """
    from attendance.settings import get_settings

    config = config or get_stats_config()
    paths = ReleasePaths.for_lake(lake_uri or get_settings().lake_uri)
    at = release_at(release, config)
    roles = {
        r["role"]
        for r in read_access_list(paths.access_list)
        if r["release_date"] == release.isoformat() and r["user"] == user
    }
    if now >= at:
        allowed, reason = True, "released"
    elif PRODUCER in roles:
        allowed, reason = True, "producer"
    elif PRE_RELEASE in roles and now >= at - dt.timedelta(hours=config.pre_release_hours):
        allowed, reason = True, "pre-release access window"
    elif PRE_RELEASE in roles:
        allowed, reason = False, "before the pre-release access window"
    else:
        allowed, reason = False, "not on the pre-release access list"
    paths.audit.mkdir(parents=True, exist_ok=True)
    with paths.access_log.open("a", encoding="utf-8") as handle:
        handle.write(
            json.dumps(
                {
                    "at": now.isoformat(),
                    "user": user,
                    "release": release.isoformat(),
                    "what": what,
                    "allowed": allowed,
                    "reason": reason,
                }
            )
            + "\n"
        )
    return allowed


def open_embargoed(
    user: str,
    release: dt.date,
    name: str,
    now: dt.datetime,
    *,
    lake_uri: str | None = None,
    config: StatsConfig | None = None,
) -> bytes:
    """Read one file of a release as ``user``, enforcing :func:`can_view_embargoed` (and logging it)."""
    from attendance.settings import get_settings

    lake_uri = lake_uri or get_settings().lake_uri
    if not can_view_embargoed(user, release, now, lake_uri=lake_uri, config=config, what=name):
        raise PermissionError(f"{user} may not see release {release} files now")
    paths = ReleasePaths.for_lake(lake_uri)
    for directory in (paths.public(release), paths.embargo(release)):
        candidate = directory / Path(name).name
        if candidate.is_file():
            return candidate.read_bytes()
    raise FileNotFoundError(name)


# --- scheduler ------------------------------------------------------------------------------------------


class ReleaseScheduler:
    """A plain asyncio loop: prepares each release under embargo ``prepare_lead_hours`` before it,
    publishes at release time, and reports late or incomplete ones. ``clock`` and ``sleep`` are injectable."""

    def __init__(
        self,
        lake_uri: str,
        releases: list[dt.date],
        *,
        clock: Clock = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        config: StatsConfig | None = None,
        rules: DisclosureRules | None = None,
        before_prepare: Callable[[], None] | None = None,
        on_tick: Callable[[], None] | None = None,
        after_tick: Callable[[], None] | None = None,
        keep_running: bool = False,
    ):
        self.lake_uri = lake_uri
        self.config = config or get_stats_config()
        for release in releases:
            release_at(release, self.config)  # weekday check up front
        self.releases = sorted(set(releases))
        self.clock, self.sleep, self.rules = clock, sleep, rules
        self.before_prepare = before_prepare
        self.on_tick = on_tick  # e.g. the ops server's heartbeat
        self.after_tick = after_tick  # e.g. the daily data-quality report (after the releases' work)
        self.keep_running = keep_running  # a service: keep ticking once every release is published
        self.done: dict[dt.date, ReleaseOutcome] = {}
        self._reported_missing: set[dt.date] = set()
        self.events: list[ReleaseOutcome] = []

    def pending(self) -> list[dt.date]:
        return [r for r in self.releases if r not in self.done]

    def tick(self) -> list[ReleaseOutcome]:
        """One pass: prepare what is due, publish what is due. Returns what happened."""
        now = self.clock()
        if self.on_tick is not None:
            self.on_tick()
        happened: list[ReleaseOutcome] = []
        for release in self.pending():
            paths = ReleasePaths.for_lake(self.lake_uri)
            at = release_at(release, self.config)
            prepared = paths.embargo(release).is_dir() or paths.public(release).is_dir()
            if not prepared and now >= at - dt.timedelta(hours=self.config.prepare_lead_hours):
                try:
                    if self.before_prepare is not None:
                        self.before_prepare()
                    happened.append(prepare(self.lake_uri, release, now, config=self.config, rules=self.rules))
                except UserFacingError as exc:
                    log.error("could not prepare release %s: %s", release, exc)
                    if now >= at:
                        metrics.RELEASE_STATUS.set(INCOMPLETE)
                        _alert(paths, release, INCOMPLETE, now, str(exc))
            prepared = paths.embargo(release).is_dir() or paths.public(release).is_dir()
            if now >= at and (prepared or release not in self._reported_missing):
                outcome = publish(self.lake_uri, release, self.clock(), config=self.config)
                happened.append(outcome)
                if outcome.status in (PUBLISHED, LATE):
                    self.done[release] = outcome
                elif not prepared:
                    self._reported_missing.add(release)  # alert once; retry when something is prepared
        self.events += happened
        self.observe(now)
        if self.after_tick is not None:
            self.after_tick()
        return happened

    def observe(self, now: dt.datetime) -> None:
        """Set the release gauges for the next (or today's) release: its status and scheduled time.
        No release today or later: both 0 (nothing is due, so nothing can be late)."""
        release = next_release(self.releases, now, self.config)
        if release is None:
            metrics.RELEASE_STATUS.set(NOT_PREPARED)
            metrics.RELEASE_SCHEDULED_TIMESTAMP.set(0)
            return
        at = release_at(release, self.config)
        metrics.RELEASE_SCHEDULED_TIMESTAMP.set(at.timestamp())
        metrics.RELEASE_STATUS.set(self.status_of(release, now))

    def status_of(self, release: dt.date, now: dt.datetime) -> int:
        """What this scheduler did with ``release``, else what the published zone shows."""
        if release in self.done:
            return self.done[release].status  # published or late
        outcomes = [e.status for e in self.events if e.release == release]
        if outcomes and outcomes[-1] == INCOMPLETE:
            return INCOMPLETE
        paths = ReleasePaths.for_lake(self.lake_uri)
        if paths.public(release).is_dir():
            return PUBLISHED
        if paths.embargo(release).is_dir():
            return EMBARGOED
        return INCOMPLETE if now > release_at(release, self.config) else NOT_PREPARED

    async def run(self, stop: asyncio.Event | None = None, max_ticks: int | None = None) -> None:
        """Tick until every release is published (with ``keep_running``: for ever), or until ``stop`` is
        set or ``max_ticks`` passes."""
        ticks = 0
        while (self.pending() or self.keep_running) and not (stop is not None and stop.is_set()):
            self.tick()
            ticks += 1
            if (not self.pending() and not self.keep_running) or (max_ticks is not None and ticks >= max_ticks):
                return
            await self.sleep(self.config.scheduler_tick_seconds)
