"""Findings: everything wrong with a device besides "down", as prioritized, debounced problems.

The pipeline, all pure (no I/O, no clock reads):

1. :func:`observe` folds each poll into a small per-device :class:`DeviceHistory` (boots and
   application restarts seen);
2. the caller builds a :class:`FindingContext` and calls :func:`evaluate` (or :func:`assess`,
   which also returns the kinds that could be judged);
3. :func:`track` debounces: a finding raises after ``raise_after`` consecutive evaluations,
   clears after ``clear_after`` without it, and a priority change while open (escalation) is
   reported as such, not as a new raise.

"Device down", flapping and site network outages are judged elsewhere (:mod:`agent.state`,
:mod:`agent.flapping`, :mod:`agent.site_network`); their kinds are in :class:`ProblemKind` so
every ticket names its problem the same way. The detectors are in :mod:`agent.detectors`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta

from agent.detectors import (
    DETECTED_KINDS,
    DETECTORS,
    channel_fields,
    config_hash,
    firmware_version,
    parse_iso,
    site_majority,
)
from agent.finding_models import (
    Assessment,
    DeviceHistory,
    Finding,
    FindingContext,
    LogLine,
    ProblemKind,
)
from agent.finding_tracker import FindingTracker, PriorityChange, Track, TrackResult, track
from agent.models import PollOutcome
from collectors.models import HealthSample
from config.incidents import IncidentSettings

__all__ = [
    "BOOT_JITTER_S",
    "DETECTED_KINDS",
    "Assessment",
    "DeviceHistory",
    "Finding",
    "FindingContext",
    "FindingTracker",
    "LogLine",
    "PriorityChange",
    "ProblemKind",
    "Track",
    "TrackResult",
    "assess",
    "config_hash",
    "evaluate",
    "firmware_version",
    "observe",
    "parse_blackbox_line",
    "parse_blackbox_lines",
    "site_majority",
    "track",
]

#: two boot-time estimates (poll time minus uptime) closer than this are the same boot
BOOT_JITTER_S = 60.0
_PRI = re.compile(r"^\s*<(\d{1,3})>")
_STAMP_LEN = len("2026-01-05T09:00:00.000000Z")


def parse_blackbox_line(line: str) -> LogLine | None:
    """Parse one black-box line (``<ISO UTC time> <raw syslog record>``); None if it is not one.

    The severity is the low three bits of the record's ``<PRI>``; None when it has none.
    """
    try:
        at = datetime.fromisoformat(line[:_STAMP_LEN])
    except ValueError:
        return None
    if at.tzinfo is None:
        return None
    match = _PRI.match(line[_STAMP_LEN + 1 :])
    return LogLine(at, int(match.group(1)) % 8 if match else None)


def parse_blackbox_lines(lines: Iterable[str]) -> tuple[LogLine, ...]:
    """Parse black-box lines (e.g. ``BlackBox.read_since(now - window)``), skipping others."""
    return tuple(parsed for line in lines if (parsed := parse_blackbox_line(line)) is not None)


def _uptime(sample: HealthSample, names: tuple[str, ...]) -> float | None:
    """The first of the fields ``names`` an answering channel reports, as seconds."""
    for channel in sample.channels:
        if not channel.ok:
            continue
        for name in names:
            value = channel.fields.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                return float(value)
    return None


def _new_boot(known: datetime | None, boot: datetime) -> bool:
    return known is None or (boot - known).total_seconds() > BOOT_JITTER_S


def observe(history: DeviceHistory, outcome: PollOutcome, settings: IncidentSettings) -> DeviceHistory:
    """Add what ``outcome`` shows about boots and application restarts to ``history``.

    A boot is poll time minus uptime (``sample.uptime_s``, else a channel's ``uptime_s`` or
    ``sys_uptime_s``); a boot estimate later than the last one by more than
    :data:`BOOT_JITTER_S` is a new boot. Application restarts are the distinct
    ``mtr_last_restart_at`` values of the Teams Rooms channel, plus resets of a channel's
    ``app_uptime_s``. Entries older than the longest detector window are dropped.
    """
    keep = timedelta(minutes=max(settings.boot_loop.window_minutes, settings.app_restarts.window_minutes))
    floor = outcome.at - keep
    boot_at, boots = history.boot_at, history.boots
    app_boot_at, restarts = history.app_boot_at, history.app_restarts
    sample = outcome.sample
    if sample is not None:
        uptime = (
            sample.uptime_s if sample.uptime_s is not None else _uptime(sample, ("uptime_s", "sys_uptime_s"))
        )
        if uptime is not None:
            boot = sample.taken_at - timedelta(seconds=uptime)
            boots = (*boots, boot) if _new_boot(boot_at, boot) else boots
            boot_at = boot
        app_uptime = _uptime(sample, ("app_uptime_s",))
        if app_uptime is not None:
            app_boot = sample.taken_at - timedelta(seconds=app_uptime)
            restarts = (*restarts, app_boot) if _new_boot(app_boot_at, app_boot) else restarts
            app_boot_at = app_boot
        mtr_restart = parse_iso((channel_fields(sample, "mtr") or {}).get("mtr_last_restart_at"))
        if mtr_restart is not None and mtr_restart not in restarts:
            restarts = tuple(sorted((*restarts, mtr_restart)))
    return DeviceHistory(
        boot_at=boot_at,
        boots=tuple(b for b in boots if b > floor),
        app_boot_at=app_boot_at,
        app_restarts=tuple(r for r in restarts if r > floor),
    )


# --- evaluation --------------------------------------------------------------------------


def assess(ctx: FindingContext, settings: IncidentSettings) -> Assessment:
    """Run every enabled detector on ``ctx``: the findings active now and the kinds judged.

    A disabled kind counts as judged with nothing found, so its open findings clear.
    """
    findings: list[Finding] = []
    judged: set[ProblemKind] = set()
    for kind, detect in DETECTORS.items():
        block = settings.detector(kind)
        if block is None:
            continue
        if not block.enabled:
            judged.add(kind)
            continue
        found = detect(ctx, settings)
        if found is not None:
            judged.add(kind)
            findings.extend(found)
    return Assessment(tuple(findings), frozenset(judged))


def evaluate(ctx: FindingContext, settings: IncidentSettings) -> list[Finding]:
    """Return the findings active for ``ctx`` (see :func:`assess` for the kinds judged)."""
    return list(assess(ctx, settings).findings)
