"""Quiet periods: when a device that is down is not an incident (yet).

Three reasons keep a device quiet, checked in this order:

1. a maintenance window of its site or of the device (weekly or one-off);
2. a room power schedule of its site or of the device (the room is expected to be off);
3. a firmware update in progress, reported by the device (``updating_since``), but only for
   ``firmware_update.max_update_minutes``: after that :meth:`QuietJudge.update_overdue` is
   true and the caller raises a ``firmware_update_stuck`` incident instead.

Everything here is pure: the caller passes the time. Weekly slots are wall-clock times in the
site's time zone (:mod:`zoneinfo`), so "22:00-02:00" keeps its local hours across daylight
saving switches; on the night the clocks jump forward such a slot is one hour shorter, on the
night they fall back one hour longer. Windows are half-open: quiet from ``start`` up to, not
including, ``end``. A one-off time without an offset that a clock change makes ambiguous
(or skips) is read with ``fold=0``: the first of the two, or the offset before the jump.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from config.quiet import WEEKDAYS, MaintenanceWindow, OneOffWindow, QuietSettings, WeeklyWindow
from config.schema import AgentConfig, Device

#: the problem kind of an update that took longer than ``max_update_minutes``
PROBLEM_FIRMWARE_STUCK = "firmware_update_stuck"


def in_weekly(window: WeeklyWindow, local: datetime) -> bool:
    """Return whether the wall-clock time ``local`` (in the site's zone) falls inside ``window``."""
    day = WEEKDAYS[local.weekday()]
    clock = local.time().replace(tzinfo=None)
    if not window.crosses_midnight:
        return day in window.days and window.start <= clock < window.end
    previous_day = WEEKDAYS[(local.weekday() - 1) % 7]
    return (day in window.days and clock >= window.start) or (
        previous_day in window.days and clock < window.end
    )


def in_once(window: OneOffWindow, at: datetime, zone: ZoneInfo) -> bool:
    """Return whether the instant ``at`` falls inside the one-off ``window`` (naive = site time)."""
    start = (window.start if window.start.tzinfo else window.start.replace(tzinfo=zone)).astimezone(UTC)
    end = (window.end if window.end.tzinfo else window.end.replace(tzinfo=zone)).astimezone(UTC)
    return start <= at.astimezone(UTC) < end


def in_maintenance(window: MaintenanceWindow, at: datetime, zone: ZoneInfo) -> bool:
    """Return whether ``at`` falls inside the maintenance ``window`` of a site in ``zone``."""
    if window.weekly is not None:
        return in_weekly(window.weekly, at.astimezone(zone))
    return window.once is not None and in_once(window.once, at, zone)


class QuietJudge:
    """Answers "is this device quiet now, and why?" from the configuration."""

    def __init__(self, config: AgentConfig) -> None:
        self._config = config
        self._max_update = timedelta(minutes=config.firmware_update.max_update_minutes)
        self._zones = {site.name: ZoneInfo(site.timezone) for site in config.sites}

    def quiet_reason(
        self, device_id: str, at: datetime, updating_since: datetime | None = None
    ) -> str | None:
        """Return why ``device_id`` is quiet at ``at`` (e.g. ``maintenance window 'patching'``), or None.

        ``updating_since`` is when the device started reporting a firmware update (None: no
        update); an update past ``max_update_minutes`` no longer keeps the device quiet.

        Raises:
            KeyError: no device ``device_id`` in the configuration.
            ValueError: ``at`` or ``updating_since`` has no time zone.
        """
        _require_aware(at, "at")
        device = self._config.device(device_id)
        zone = self._zones[device.site]
        for settings in self._settings(device):
            for window in settings.maintenance:
                if in_maintenance(window, at, zone):
                    return f"maintenance window '{window.name}'"
        local = at.astimezone(zone)
        for settings in self._settings(device):
            for schedule in settings.power_schedules:
                if any(in_weekly(slot, local) for slot in schedule.expected_off):
                    return f"room power schedule '{schedule.name}'"
        if updating_since is not None and not self.update_overdue(at, updating_since):
            since = updating_since.astimezone(zone)
            return f"firmware update in progress since {since:%Y-%m-%d %H:%M} {since.tzname()}"
        return None

    def update_overdue(self, at: datetime, updating_since: datetime | None) -> bool:
        """Return whether an update reported since ``updating_since`` has run longer than allowed.

        Raises:
            ValueError: ``at`` or ``updating_since`` has no time zone.
        """
        if updating_since is None:
            return False
        _require_aware(at, "at")
        _require_aware(updating_since, "updating_since")
        return at.astimezone(UTC) - updating_since.astimezone(UTC) > self._max_update

    def _settings(self, device: Device) -> Iterator[QuietSettings]:
        yield self._config.site(device.site).quiet
        yield device.quiet


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value.isoformat()}")
