"""Quiet periods: maintenance windows, room power schedules and firmware updates, DST-safe."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.quiet import QuietJudge
from config.loader import ConfigError, load_config
from config.schema import AgentConfig

WARSAW = ZoneInfo("Europe/Warsaw")
NEW_YORK = ZoneInfo("America/New_York")


def site(name: str, quiet: dict[str, Any] | None = None, timezone: str = "Europe/Warsaw") -> dict[str, Any]:
    return {
        "name": name,
        "address": "ul. Testowa 1, Warszawa",
        "contact": {"name": "A", "phone": "123", "email": "a@example.pl"},
        "timezone": timezone,
        "quiet": quiet or {},
    }


def device(device_id: str, site_name: str, quiet: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": device_id,
        "room": device_id,
        "site": site_name,
        "model": "A20",
        "host": "127.0.0.1",
        "quiet": quiet or {},
    }


def judge(sites: list[dict[str, Any]], devices: list[dict[str, Any]], max_update: int = 60) -> QuietJudge:
    config = AgentConfig.model_validate(
        {"sites": sites, "devices": devices, "firmware_update": {"max_update_minutes": max_update}}
    )
    return QuietJudge(config)


def local(text: str, zone: ZoneInfo = WARSAW, fold: int = 0) -> datetime:
    """A wall-clock time in ``zone`` as an aware datetime (fold picks the repeated hour)."""
    return datetime.fromisoformat(text).replace(tzinfo=zone, fold=fold)


def quiet_minutes(j: QuietJudge, device_id: str, start_utc: datetime, hours: int) -> int:
    """Count the real (UTC) minutes in which ``device_id`` is quiet, from ``start_utc``."""
    return sum(
        j.quiet_reason(device_id, start_utc + timedelta(minutes=m)) is not None for m in range(hours * 60)
    )


TUESDAY_PATCHING = {
    "maintenance": [
        {"name": "Tuesday patching", "weekly": {"days": ["tue"], "start": "22:00", "end": "02:00"}}
    ]
}


# --- weekly maintenance windows ------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "quiet"),
    [
        ("2026-01-13 21:59", False),  # Tuesday, before the window
        ("2026-01-13 22:00", True),  # Tuesday, the window opens
        ("2026-01-13 23:59", True),
        ("2026-01-14 00:00", True),  # past midnight: Wednesday, still Tuesday's window
        ("2026-01-14 01:59", True),
        ("2026-01-14 02:00", False),  # the end is not included
        ("2026-01-14 22:30", False),  # Wednesday evening: not a window day
        ("2026-01-13 01:00", False),  # Tuesday 01:00 belongs to Monday night: no window
        ("2026-01-12 23:00", False),  # Monday
    ],
)
def test_weekly_window_across_midnight(when: str, quiet: bool) -> None:
    j = judge([site("s1", TUESDAY_PATCHING)], [device("d1", "s1")])
    reason = j.quiet_reason("d1", local(when))
    assert reason == ("maintenance window 'Tuesday patching'" if quiet else None)


def test_a_window_across_midnight_wraps_from_sunday_to_monday() -> None:
    sunday_night = {
        "maintenance": [{"name": "n", "weekly": {"days": ["sun"], "start": "23:00", "end": "01:00"}}]
    }
    j = judge([site("s1", sunday_night)], [device("d1", "s1")])
    assert j.quiet_reason("d1", local("2026-01-12 00:30")) is not None  # Monday 00:30
    assert j.quiet_reason("d1", local("2026-01-12 01:00")) is None
    assert j.quiet_reason("d1", local("2026-01-11 22:59")) is None  # Sunday, before


def test_times_are_the_site_time_zone_whatever_zone_the_instant_is_given_in() -> None:
    j = judge([site("s1", TUESDAY_PATCHING)], [device("d1", "s1")])
    assert j.quiet_reason("d1", datetime(2026, 1, 13, 21, 0, tzinfo=UTC)) is not None  # 22:00 CET
    assert j.quiet_reason("d1", datetime(2026, 1, 13, 20, 59, tzinfo=UTC)) is None
    assert j.quiet_reason("d1", datetime(2026, 7, 14, 20, 0, tzinfo=UTC)) is not None  # 22:00 CEST
    assert j.quiet_reason("d1", datetime(2026, 7, 14, 19, 59, tzinfo=UTC)) is None


def test_each_site_uses_its_own_time_zone() -> None:
    j = judge(
        [site("waw", TUESDAY_PATCHING), site("nyc", TUESDAY_PATCHING, timezone="America/New_York")],
        [device("d-waw", "waw"), device("d-nyc", "nyc")],
    )
    at = local("2026-01-13 22:30", NEW_YORK)  # Wednesday 04:30 in Warsaw
    assert j.quiet_reason("d-nyc", at) is not None
    assert j.quiet_reason("d-waw", at) is None


# --- daylight saving ------------------------------------------------------------------------

SATURDAY_NIGHT = {
    "maintenance": [{"name": "n", "weekly": {"days": ["sat"], "start": "22:00", "end": "04:00"}}]
}


def test_spring_forward_night_window_keeps_wall_clock_hours_and_is_one_hour_shorter() -> None:
    """Sunday 2026-03-29: 02:00 CET becomes 03:00 CEST; a 22:00-04:00 window lasts 5 real hours."""
    j = judge([site("s1", SATURDAY_NIGHT)], [device("d1", "s1")])
    assert quiet_minutes(j, "d1", datetime(2026, 3, 28, 18, 0, tzinfo=UTC), 12) == 5 * 60
    assert j.quiet_reason("d1", local("2026-03-29 03:30")) is not None  # exists only as CEST
    assert j.quiet_reason("d1", datetime(2026, 3, 29, 1, 59, tzinfo=UTC)) is not None  # 03:59 CEST
    assert j.quiet_reason("d1", datetime(2026, 3, 29, 2, 0, tzinfo=UTC)) is None  # 04:00 CEST


def test_fall_back_night_window_keeps_wall_clock_hours_and_is_one_hour_longer() -> None:
    """Sunday 2026-10-25: 03:00 CEST becomes 02:00 CET; the hour 02:00-03:00 happens twice."""
    j = judge([site("s1", SATURDAY_NIGHT)], [device("d1", "s1")])
    assert quiet_minutes(j, "d1", datetime(2026, 10, 24, 18, 0, tzinfo=UTC), 12) == 7 * 60
    assert j.quiet_reason("d1", local("2026-10-25 02:30", fold=0)) is not None  # first 02:30 (CEST)
    assert j.quiet_reason("d1", local("2026-10-25 02:30", fold=1)) is not None  # second 02:30 (CET)
    assert j.quiet_reason("d1", datetime(2026, 10, 25, 3, 0, tzinfo=UTC)) is None  # 04:00 CET


def test_a_window_inside_the_skipped_hour_never_happens() -> None:
    skipped = {"maintenance": [{"name": "n", "weekly": {"days": ["sun"], "start": "02:15", "end": "02:45"}}]}
    j = judge([site("s1", skipped)], [device("d1", "s1")])
    assert quiet_minutes(j, "d1", datetime(2026, 3, 28, 23, 0, tzinfo=UTC), 4) == 0
    assert quiet_minutes(j, "d1", datetime(2026, 3, 21, 23, 0, tzinfo=UTC), 4) == 30  # a week before


# --- one-off windows ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "at", "quiet"),
    [
        ("2026-03-14 07:00", "2026-03-14 19:00", datetime(2026, 3, 14, 6, 0, tzinfo=UTC), True),  # 07:00 CET
        ("2026-03-14 07:00", "2026-03-14 19:00", datetime(2026, 3, 14, 5, 59, tzinfo=UTC), False),
        ("2026-03-14 07:00", "2026-03-14 19:00", datetime(2026, 3, 14, 17, 59, tzinfo=UTC), True),
        ("2026-03-14 07:00", "2026-03-14 19:00", datetime(2026, 3, 14, 18, 0, tzinfo=UTC), False),
        ("2026-03-14 07:00Z", "2026-03-14 19:00Z", datetime(2026, 3, 14, 18, 30, tzinfo=UTC), True),
        ("2026-03-14 07:00+05:00", "2026-03-14 08:00+05:00", datetime(2026, 3, 14, 2, 0, tzinfo=UTC), True),
        ("2026-03-14 07:00", "2026-03-15 07:00", local("2026-03-15 06:59"), True),  # across midnight
        ("2026-03-14 07:00", "2026-03-15 07:00", local("2026-03-16 06:59"), False),
    ],
)
def test_one_off_window(start: str, end: str, at: datetime, quiet: bool) -> None:
    once = {"maintenance": [{"name": "Network upgrade", "once": {"start": start, "end": end}}]}
    j = judge([site("s1", once)], [device("d1", "s1")])
    assert j.quiet_reason("d1", at) == ("maintenance window 'Network upgrade'" if quiet else None)


def test_one_off_window_across_the_fall_back_switch_lasts_its_real_length() -> None:
    once = {"maintenance": [{"name": "n", "once": {"start": "2026-10-25 01:00", "end": "2026-10-25 04:00"}}]}
    j = judge([site("s1", once)], [device("d1", "s1")])
    assert quiet_minutes(j, "d1", datetime(2026, 10, 24, 20, 0, tzinfo=UTC), 10) == 4 * 60


# --- room power schedules -------------------------------------------------------------------

NIGHTS_AND_WEEKENDS = {
    "power_schedules": [
        {
            "name": "Nights and weekends",
            "expected_off": [
                {"days": ["sun", "mon", "tue", "wed", "thu", "fri"], "start": "20:00", "end": "07:00"},
                {"days": ["sat", "sun"], "start": "00:00", "end": "00:00"},
            ],
        }
    ]
}


@pytest.mark.parametrize(
    ("when", "quiet"),
    [
        ("2026-01-14 19:59", False),  # Wednesday evening
        ("2026-01-14 20:00", True),
        ("2026-01-15 06:59", True),  # Thursday morning, still the night
        ("2026-01-15 07:00", False),
        ("2026-01-15 12:00", False),
        ("2026-01-16 21:00", True),  # Friday night
        ("2026-01-17 12:00", True),  # Saturday noon
        ("2026-01-18 23:59", True),  # Sunday night
        ("2026-01-19 06:59", True),  # Monday morning: Sunday's night
        ("2026-01-19 07:00", False),  # Monday, rooms on
    ],
)
def test_room_power_schedule(when: str, quiet: bool) -> None:
    j = judge([site("s1", NIGHTS_AND_WEEKENDS)], [device("d1", "s1")])
    reason = j.quiet_reason("d1", local(when))
    assert reason == ("room power schedule 'Nights and weekends'" if quiet else None)


def test_a_device_schedule_applies_to_that_device_only_and_site_windows_to_all() -> None:
    fridays = {
        "power_schedules": [
            {"name": "closed Fridays", "expected_off": [{"days": ["fri"], "start": "16:00", "end": "00:00"}]}
        ]
    }
    j = judge(
        [site("s1", TUESDAY_PATCHING), site("s2")],
        [device("d1", "s1", fridays), device("d2", "s1"), device("d3", "s2")],
    )
    friday = local("2026-01-16 17:00")
    assert j.quiet_reason("d1", friday) == "room power schedule 'closed Fridays'"
    assert j.quiet_reason("d2", friday) is None
    tuesday = local("2026-01-13 23:00")
    assert (
        j.quiet_reason("d1", tuesday)
        == j.quiet_reason("d2", tuesday)
        == "maintenance window 'Tuesday patching'"
    )
    assert j.quiet_reason("d3", tuesday) is None


def test_maintenance_is_named_before_a_power_schedule() -> None:
    both = {**TUESDAY_PATCHING, **NIGHTS_AND_WEEKENDS}
    j = judge([site("s1", both)], [device("d1", "s1")])
    assert j.quiet_reason("d1", local("2026-01-13 23:00")) == "maintenance window 'Tuesday patching'"
    assert j.quiet_reason("d1", local("2026-01-14 23:00")) == "room power schedule 'Nights and weekends'"


# --- firmware updates -----------------------------------------------------------------------


def test_a_firmware_update_is_quiet_until_it_takes_too_long() -> None:
    j = judge([site("s1")], [device("d1", "s1")], max_update=45)
    since = datetime(2026, 1, 14, 10, 0, tzinfo=UTC)
    during = since + timedelta(minutes=30)
    reason = j.quiet_reason("d1", during, updating_since=since)
    assert reason == "firmware update in progress since 2026-01-14 11:00 CET"
    assert not j.update_overdue(during, since)
    limit = since + timedelta(minutes=45)
    assert j.quiet_reason("d1", limit, since) is not None and not j.update_overdue(limit, since)
    late = limit + timedelta(seconds=1)
    assert j.quiet_reason("d1", late, since) is None
    assert j.update_overdue(late, since)
    assert not j.update_overdue(late, None)
    assert j.quiet_reason("d1", during) is None  # no update reported: not quiet


def test_an_overdue_update_counts_real_time_across_a_dst_switch() -> None:
    j = judge([site("s1")], [device("d1", "s1")], max_update=60)
    since = local("2026-10-25 02:30", fold=0)  # CEST
    assert j.update_overdue(local("2026-10-25 02:31", fold=1), since)  # 61 real minutes later (CET)
    assert not j.update_overdue(local("2026-10-25 02:29", fold=1), since)


def test_naive_times_and_unknown_devices_are_rejected() -> None:
    j = judge([site("s1")], [device("d1", "s1")])
    with pytest.raises(ValueError, match="timezone-aware"):
        j.quiet_reason("d1", datetime(2026, 1, 14, 10, 0))
    with pytest.raises(ValueError, match="updating_since"):
        j.update_overdue(datetime(2026, 1, 14, 10, 0, tzinfo=UTC), datetime(2026, 1, 14, 9, 0))
    with pytest.raises(KeyError):
        j.quiet_reason("nope", datetime(2026, 1, 14, 10, 0, tzinfo=UTC))


# --- configuration errors -------------------------------------------------------------------

MINIMAL = """\
sites:
  - name: s1
    address: "ul. Testowa 1, Warszawa"
    contact: {{name: A, phone: "123", email: a@example.pl}}
    quiet:
{quiet}
devices:
  - {{id: d1, room: R1, site: s1, model: A20, host: 127.0.0.1}}
"""
WINDOW = "      maintenance:\n        - name: x\n"
WEEKLY = WINDOW + "          weekly: {{days: [{days}], start: '22:00', end: '23:00'}}\n"
ONCE = WINDOW + "          once: {{start: '{start}', end: '{end}'}}\n"
POWER = "      power_schedules:\n        - name: x\n          expected_off:"
WHERE = "sites[0].quiet.maintenance[0]"
DATETIME_FIX = 'write "YYYY-MM-DD HH:MM" in the site\'s time, or add an offset, e.g. "2026-03-14 18:00+01:00"'


@pytest.mark.parametrize(
    ("quiet", "line"),
    [
        (
            WEEKLY.format(days="tue")
            + "          once: {start: '2026-03-14 07:00', end: '2026-03-14 19:00'}",
            f"{WHERE}: give exactly one of weekly (a repeating slot) or once (start and end)",
        ),
        (
            ONCE.format(start="2026-13-14 07:00", end="2026-03-14 19:00"),
            f"{WHERE}.once.start: not a valid date and time, got '2026-13-14 07:00'; {DATETIME_FIX}",
        ),
        (
            ONCE.format(start="2026-03-14 19:00", end="2026-03-14 07:00"),
            f"{WHERE}.once.end: must be later than start 2026-03-14 19:00:00",
        ),
        (
            ONCE.format(start="2026-03-14 07:00Z", end="2026-03-14 09:00"),
            f"{WHERE}.once.end: give both start and end with an offset, or both without one",
        ),
        (POWER + " []", "sites[0].quiet.power_schedules[0].expected_off: list at least one slot"),
        (
            POWER + "\n            - {days: [tue], start: '25:00', end: '07:00'}",
            "sites[0].quiet.power_schedules[0].expected_off[0].start: not a valid time, got '25:00';"
            " write HH:MM on the 24-hour clock, e.g. 08:00 or 16:30",
        ),
        (
            WEEKLY.format(days="tues"),
            f"{WHERE}.weekly.days[0]: must be one of mon, tue, wed, thu, fri, sat, sun, got 'tues'",
        ),
        (WEEKLY.format(days=""), f"{WHERE}.weekly.days: list at least one day"),
    ],
    ids=[
        "both-kinds",
        "bad-datetime",
        "end-before-start",
        "mixed-offsets",
        "no-slot",
        "bad-time",
        "bad-day",
        "no-day",
    ],
)
def test_bad_quiet_settings_name_the_key_and_the_fix(tmp_path: Path, quiet: str, line: str) -> None:
    path = tmp_path / "hezo.yaml"
    path.write_text(MINIMAL.format(quiet=quiet), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.lines == [line]


def test_the_example_config_has_quiet_periods_that_work() -> None:
    config = load_config(Path(__file__).resolve().parents[1] / "config" / "example.yaml")
    j = QuietJudge(config)
    site_device = next(d.id for d in config.devices if d.site == config.sites[0].name)
    assert j.quiet_reason(site_device, local("2026-01-13 23:00")) == "maintenance window 'Tuesday patching'"
    assert (
        j.quiet_reason(site_device, local("2026-01-17 12:00")) == "room power schedule 'Nights and weekends'"
    )
    assert j.quiet_reason(site_device, local("2026-03-14 12:00")) == "maintenance window 'Network upgrade'"
    assert j.quiet_reason(site_device, local("2026-01-14 12:00")) is None
