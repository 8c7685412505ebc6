"""Settings that keep the agent quiet when nothing is wrong: no storms, no false alarms.

* :class:`FlappingSettings` — Nagios-style flap detection over the last checks of a device.
* :class:`QuietSettings` — maintenance windows (weekly or one-off) and room power schedules, per
  site (``sites[].quiet``) or per device (``devices[].quiet``).
* :class:`FirmwareUpdateSettings` — how long a firmware update may keep a device quiet.
* :class:`SiteNetworkSettings` — what a site-wide network outage raises, and the canary timeout.

Times of day are wall-clock times in the site's time zone. A weekly window whose ``end`` is at
or before its ``start`` runs past midnight into the next day (``start: "00:00"`` with
``end: "00:00"`` is the whole day). A one-off window's date-times without an offset are site
time; with an offset (``+01:00``, ``Z``) they are that instant.
"""

from __future__ import annotations

from datetime import datetime, time
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from config.base import Strict

#: a day of the week, as ``sites[].business_hours.days`` writes it
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_DATETIME_HINT = (
    'write "YYYY-MM-DD HH:MM" in the site\'s time, or add an offset, e.g. "2026-03-14 18:00+01:00"'
)


def parse_local_datetime(value: Any) -> datetime:
    """Parse ``YYYY-MM-DD HH:MM[:SS][offset]`` (or a datetime YAML already built).

    Raises:
        ValueError: with the message the user sees after the key path.
    """
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or len(value.strip()) < 16:
        raise ValueError(f"not a valid date and time, got {value!r}; {_DATETIME_HINT}")
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError as err:
        raise ValueError(f"not a valid date and time, got {value!r}; {_DATETIME_HINT}") from err


def _not_empty(value: tuple[Any, ...], what: str) -> tuple[Any, ...]:
    """Reject an empty list.

    Raises:
        ValueError: the list is empty.
    """
    if not value:
        raise ValueError(f"list at least one {what}")
    return value


class FlappingSettings(Strict):
    """Flap detection: the weighted percent state change over the last ``checks`` poll results.

    A device starts flapping when the percentage rises above ``high_threshold_pct`` and stops
    when it falls below ``low_threshold_pct`` (the gap between them is the hysteresis).
    """

    enabled: bool = True
    checks: int = Field(default=21, ge=5, le=100, description="poll results kept per device")
    high_threshold_pct: float = Field(default=50.0, gt=0, le=100, description="start flapping above this")
    low_threshold_pct: float = Field(default=25.0, ge=0, lt=100, description="stop flapping below this")
    blips_threshold_pct: float = Field(
        default=70.0,
        gt=0,
        le=100,
        description="start flapping above this when the checks hold no confirmed outage"
        " (agent.down_after failed polls in a row), only one- and two-poll failures",
    )

    @model_validator(mode="after")
    def _low_below_high(self) -> FlappingSettings:
        from config.schema import FieldProblem

        if self.low_threshold_pct >= self.high_threshold_pct:
            raise FieldProblem(
                "low_threshold_pct",
                f"must be less than high_threshold_pct ({self.high_threshold_pct:g}),"
                f" got {self.low_threshold_pct:g}",
            )
        if self.blips_threshold_pct < self.high_threshold_pct:
            raise FieldProblem(
                "blips_threshold_pct",
                f"must be at least high_threshold_pct ({self.high_threshold_pct:g}),"
                f" got {self.blips_threshold_pct:g}",
            )
        return self


class WeeklyWindow(Strict):
    """A slot that repeats every week: on ``days``, from ``start`` to ``end`` (site time)."""

    days: tuple[Weekday, ...]
    start: time
    end: time

    # not Field(min_length=1): that would add "list at least 1 item" below every misspelt day
    _days = field_validator("days")(classmethod(lambda cls, v: _not_empty(v, "day")))

    @property
    def crosses_midnight(self) -> bool:
        """True when the slot ends on the next day (``end`` at or before ``start``)."""
        return self.end <= self.start


class OneOffWindow(Strict):
    """A single period from ``start`` to ``end``; without an offset the times are site time."""

    start: datetime
    end: datetime

    _parse = field_validator("start", "end", mode="before")(
        classmethod(lambda cls, v: parse_local_datetime(v))
    )

    @model_validator(mode="after")
    def _end_after_start(self) -> OneOffWindow:
        from config.schema import FieldProblem

        if (self.start.tzinfo is None) != (self.end.tzinfo is None):
            raise FieldProblem("end", "give both start and end with an offset, or both without one")
        if self.end <= self.start:
            raise FieldProblem("end", f"must be later than start {self.start.isoformat(' ')}")
        return self


class MaintenanceWindow(Strict):
    """A named maintenance window: weekly or one-off (exactly one of ``weekly`` and ``once``)."""

    name: str = Field(min_length=1)
    weekly: WeeklyWindow | None = None
    once: OneOffWindow | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> MaintenanceWindow:
        if (self.weekly is None) == (self.once is None):
            raise ValueError("give exactly one of weekly (a repeating slot) or once (start and end)")
        return self


class PowerSchedule(Strict):
    """A named room power schedule: the slots in which the device is expected to be off."""

    name: str = Field(min_length=1)
    expected_off: tuple[WeeklyWindow, ...]

    _slots = field_validator("expected_off")(classmethod(lambda cls, v: _not_empty(v, "slot")))


class QuietSettings(Strict):
    """Quiet periods of a site or a device: a device that is down during one is no incident."""

    maintenance: tuple[MaintenanceWindow, ...] = ()
    power_schedules: tuple[PowerSchedule, ...] = ()


class FirmwareUpdateSettings(Strict):
    """A device reporting a firmware update is quiet, but only for so long."""

    max_update_minutes: int = Field(
        default=60, ge=1, le=24 * 60, description="an update running longer is an incident"
    )


SiteNetworkAction = Literal["ticket", "local_alert"]


class SiteNetworkSettings(Strict):
    """What a site-wide network outage raises, and how long a canary probe may take."""

    action: SiteNetworkAction = "ticket"
    canary_timeout_s: float = Field(default=2.0, gt=0, le=60)
