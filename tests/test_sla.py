"""The SLA calendar: business time on Polish business days in Europe/Warsaw, DST-safe, and the clocks
each HEZO+ ticket states (reaction, communication, next-business-day delivery, return deadline).

Expected instants are written in UTC, with the site time in a comment. Warsaw is UTC+1 in winter
(CET) and UTC+2 in summer (CEST); in 2026 the clocks change on 29 March and 25 October, in 2027
on 28 March (Easter Sunday) and 31 October. The holiday facts come from the ``holidays`` package
(``holidays.countries.poland``), which cites the Polish statute; see the Christmas Eve test.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sla import BusinessCalendar, CalendarError, SlaCalendar, SlaClocks, SlaTicketLines
from agent.ticket_text import render_sla_block
from config.loader import ConfigError, load_config
from config.schema import BusinessHours, Site
from config.sla import HolidaySettings, SlaSettings
from uploader.models import Priority

WARSAW = ZoneInfo("Europe/Warsaw")
HOUR = timedelta(hours=1)


def utc(*parts: int) -> datetime:
    """An explicit UTC instant."""
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def make_site(hours: BusinessHours | None = None, timezone: str = "Europe/Warsaw") -> Site:
    return Site(
        name="warszawa",
        address="ul. Marszałkowska 142, 00-061 Warszawa",
        contact={"name": "Anna Kowalska", "phone": "+48 22 555 01 23", "email": "it@example.pl"},
        timezone=timezone,
        business_hours=hours or BusinessHours(),
    )


def make_sla(raw: dict[str, Any] | None = None, hours: BusinessHours | None = None) -> SlaCalendar:
    return SlaCalendar.for_site(make_site(hours), SlaSettings.model_validate(raw or {}))


SLA = make_sla()
CAL = SLA.calendar


# --- business days: the Polish calendar as the holidays package states it ----------------


@pytest.mark.parametrize(
    ("day", "business"),
    [
        (date(2026, 1, 9), True),  # Friday
        (date(2026, 1, 10), False),  # Saturday
        (date(2026, 1, 11), False),  # Sunday
        (date(2026, 11, 10), True),  # the day before Independence Day
        (date(2026, 11, 11), False),  # Independence Day (Narodowe Święto Niepodległości), a Wednesday
        (date(2026, 4, 3), True),  # Good Friday is a working day in Poland
        (date(2026, 4, 6), False),  # Easter Monday 2026 (Easter Sunday 5 April)
        (date(2027, 3, 29), False),  # Easter Monday 2027 (Easter Sunday 28 March, the DST switch)
        (date(2027, 3, 30), True),
        (date(2026, 6, 4), False),  # Corpus Christi 2026 (Easter + 60 days), a Thursday
        (date(2026, 1, 6), False),  # Epiphany
        (date(2026, 12, 23), True),
        (date(2026, 12, 31), True),  # New Year's Eve is a working day
    ],
)
def test_business_days_follow_the_polish_calendar(day: date, business: bool) -> None:
    assert CAL.is_business_day(day) is business


def test_christmas_eve_is_a_holiday_from_2025_as_the_holidays_package_says() -> None:
    # Source: the `holidays` package, holidays/countries/poland.py: "if self._year >= 2025: Christmas
    # Eve", citing Dz.U. 2024 poz. 1965 (the act that made 24 December a public holiday from 2025).
    # The package is the authority the agent uses, so the test checks the agent against it too.
    for year in (2024, 2025, 2026, 2027):
        assert (date(year, 12, 24) in holidays.country_holidays("PL", years=year)) is (year >= 2025)
    assert CAL.is_business_day(date(2024, 12, 24))  # a Tuesday, still a working day in 2024
    assert not CAL.is_business_day(date(2025, 12, 24))  # a Wednesday, a holiday
    assert not CAL.is_business_day(date(2026, 12, 24))  # a Thursday, a holiday


def test_easter_monday_is_computed_every_year() -> None:
    # Easter Monday moves; the package computes it (no list of dates kept by us).
    for monday in (date(2025, 4, 21), date(2026, 4, 6), date(2027, 3, 29), date(2028, 4, 17)):
        assert monday.weekday() == 0
        assert not CAL.is_business_day(monday)
        assert CAL.is_business_day(monday + timedelta(days=1))


def test_configured_closed_days_are_not_business_days() -> None:
    sla = make_sla({"holidays": {"closed_days": ["2026-01-12", "2026-01-13"]}})
    assert not sla.calendar.is_business_day(date(2026, 1, 12))
    assert sla.calendar.next_business_day(date(2026, 1, 9)) == date(2026, 1, 14)
    assert CAL.next_business_day(date(2026, 1, 9)) == date(2026, 1, 12)


def test_business_weekdays_are_the_sites_days() -> None:
    six_days = BusinessHours(days=("mon", "tue", "wed", "thu", "fri", "sat"))
    assert BusinessCalendar("Europe/Warsaw", six_days).is_business_day(date(2026, 1, 10))
    assert not CAL.is_business_day(date(2026, 1, 10))


@pytest.mark.parametrize(
    ("at", "inside"),
    [
        (utc(2026, 1, 9, 7, 0), True),  # Fri 08:00 CET: the opening instant counts
        (utc(2026, 1, 9, 6, 59, 59), False),  # Fri 07:59:59
        (utc(2026, 1, 9, 14, 59), True),  # Fri 15:59
        (utc(2026, 1, 9, 15, 0), False),  # Fri 16:00: the end is outside (half-open)
        (utc(2026, 7, 10, 6, 0), True),  # Fri 08:00 CEST (06:00 UTC in summer)
        (utc(2026, 7, 10, 14, 30), False),  # Fri 16:30 CEST
        (utc(2026, 11, 11, 9, 0), False),  # 11 November 10:00
        (utc(2026, 1, 10, 10, 0), False),  # Saturday
    ],
)
def test_is_business_time_uses_site_hours(at: datetime, inside: bool) -> None:
    assert CAL.is_business_time(at) is inside


# --- adding business time -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "start", "duration", "expected"),
    [
        # Friday after hours -> Monday: Fri 17:00 CET + 1 h = Mon 09:00 CET
        ("friday after hours", utc(2026, 1, 9, 16, 0), HOUR, utc(2026, 1, 12, 8, 0)),
        # Fri 15:30 + 1 h = 30 min Friday + 30 min Monday = Mon 08:30
        ("friday last half hour", utc(2026, 1, 9, 14, 30), HOUR, utc(2026, 1, 12, 7, 30)),
        # Saturday morning: the clock starts Monday 08:00
        ("weekend", utc(2026, 1, 10, 9, 0), 4 * HOUR, utc(2026, 1, 12, 11, 0)),
        # before opening on a weekday: starts at 08:00
        ("before opening", utc(2026, 1, 12, 5, 0), HOUR, utc(2026, 1, 12, 8, 0)),
        # ending exactly at closing stays on that day (16:00), not the next morning
        ("exact close", utc(2026, 1, 12, 14, 0), HOUR, utc(2026, 1, 12, 15, 0)),
        # the day before a public holiday: Tue 10 Nov 15:30 + 1 h -> Thu 12 Nov 08:30 (11 Nov skipped)
        ("day before holiday", utc(2026, 11, 10, 14, 30), HOUR, utc(2026, 11, 12, 7, 30)),
        # on 11 November itself: Wed 10:00 + 1 h -> Thu 09:00
        ("11 november", utc(2026, 11, 11, 9, 0), HOUR, utc(2026, 11, 12, 8, 0)),
        # Easter 2026: Fri 3 Apr 15:30 CEST + 1 h -> Tue 7 Apr 08:30 CEST (Easter Monday skipped)
        ("easter monday 2026", utc(2026, 4, 3, 13, 30), HOUR, utc(2026, 4, 7, 6, 30)),
        # Easter 2027 with DST on Easter Sunday: Fri 26 Mar 15:30 CET + 1 h -> Tue 30 Mar 08:30 CEST
        ("easter monday 2027 + dst", utc(2027, 3, 26, 14, 30), HOUR, utc(2027, 3, 30, 6, 30)),
        # Christmas Eve 2026 (Thu) and Christmas (Fri): Wed 23 Dec 15:30 + 1 h -> Mon 28 Dec 08:30
        ("christmas eve", utc(2026, 12, 23, 14, 30), HOUR, utc(2026, 12, 28, 7, 30)),
        # spring DST over a weekend: Fri 27 Mar 15:00 CET + 2 h = 1 h Friday + Mon 30 Mar 08:00-09:00 CEST
        ("spring dst weekend", utc(2026, 3, 27, 14, 0), 2 * HOUR, utc(2026, 3, 30, 7, 0)),
        # autumn DST over a weekend: Fri 23 Oct 15:00 CEST + 2 h = 1 h Friday + Mon 26 Oct 08:00-09:00 CET
        ("autumn dst weekend", utc(2026, 10, 23, 13, 0), 2 * HOUR, utc(2026, 10, 26, 8, 0)),
        # a multi-day duration: 20 h = Mon 8 h + Tue 8 h + Wed 4 h
        ("multi day", utc(2026, 1, 12, 7, 0), 20 * HOUR, utc(2026, 1, 14, 11, 0)),
    ],
)
def test_add_8x5_business_time(case: str, start: datetime, duration: timedelta, expected: datetime) -> None:
    result = CAL.add_business_time(start, duration, "8x5")
    assert result == expected, case
    assert result.tzinfo is UTC
    assert CAL.business_time_between(start, result) == duration


def test_8x5_over_the_dst_weekends_is_exact_in_utc() -> None:
    # The same Friday 15:00 -> Monday 09:00 local span is 65 real hours in March (one hour lost)
    # and 67 real hours in October (one hour gained); both hold exactly 2 h of business time.
    spring = CAL.add_business_time(utc(2026, 3, 27, 14, 0), 2 * HOUR)
    autumn = CAL.add_business_time(utc(2026, 10, 23, 13, 0), 2 * HOUR)
    assert spring - utc(2026, 3, 27, 14, 0) == timedelta(hours=65)
    assert autumn - utc(2026, 10, 23, 13, 0) == timedelta(hours=67)
    assert spring.astimezone(WARSAW).time() == autumn.astimezone(WARSAW).time() == time(9, 0)


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        # spring: Sun 29 Mar 01:30 CET + 1 h = 01:30 UTC = 03:30 CEST (02:30 local never exists)
        (utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 30)),
        # autumn: Sun 25 Oct 02:30 CEST + 1 h = 01:30 UTC = 02:30 CET (the second 02:30)
        (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30)),
        # Saturday night: 24x7 ignores weekends and holidays
        (utc(2026, 11, 11, 2, 0), utc(2026, 11, 11, 3, 0)),
    ],
)
def test_24x7_adds_real_time_across_dst_and_holidays(start: datetime, expected: datetime) -> None:
    assert CAL.add_business_time(start, HOUR, "24x7") == expected
    assert CAL.business_time_between(start, expected, "24x7") == HOUR


def test_24x7_versus_8x5_from_the_same_saturday() -> None:
    saturday = utc(2026, 1, 10, 9, 0)  # Sat 10:00 CET
    assert SLA.reaction_due(Priority.CRITICAL, saturday) == utc(2026, 1, 10, 10, 0)  # Sat 11:00
    assert SLA.reaction_due(Priority.MEDIUM, saturday) == utc(2026, 1, 12, 8, 0)  # Mon 09:00
    assert SLA.reaction_due(Priority.LOW, saturday) == utc(2026, 1, 12, 11, 0)  # Mon 12:00


def test_zero_duration_outside_hours_is_the_next_opening() -> None:
    assert CAL.add_business_time(utc(2026, 1, 9, 16, 0), timedelta(0)) == utc(2026, 1, 12, 7, 0)
    assert CAL.add_business_time(utc(2026, 1, 12, 9, 0), timedelta(0)) == utc(2026, 1, 12, 9, 0)


def test_business_hours_are_site_time_not_utc() -> None:
    # a site in New York, 09:00-17:00 local: Mon 12 Jan 2026 16:30 EST + 1 h -> Tue 09:30 EST
    site = make_site(BusinessHours(start=time(9, 0), end=time(17, 0)), timezone="America/New_York")
    cal = BusinessCalendar.for_site(site, SlaSettings())
    assert cal.add_business_time(utc(2026, 1, 12, 21, 30), HOUR) == utc(2026, 1, 13, 14, 30)


def test_naive_times_and_negative_durations_are_refused() -> None:
    with pytest.raises(CalendarError, match="timezone-aware"):
        CAL.add_business_time(datetime(2026, 1, 12, 9, 0), HOUR)
    with pytest.raises(CalendarError, match="negative"):
        CAL.add_business_time(utc(2026, 1, 12, 9, 0), -HOUR)
    with pytest.raises(CalendarError, match="before start"):
        CAL.business_time_between(utc(2026, 1, 12, 9, 0), utc(2026, 1, 12, 8, 0))
    with pytest.raises(CalendarError, match="timezone-aware"):
        SLA.nbd_delivery_date(datetime(2026, 1, 12, 9, 0))


# --- the HEZO+ clocks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("priority", "opened", "reaction", "communication"),
    [
        # critical 24x7: 1 h, then every 1 h, also on Friday night
        (Priority.CRITICAL, utc(2026, 1, 9, 20, 0), utc(2026, 1, 9, 21, 0), utc(2026, 1, 9, 21, 0)),
        # medium 8x5: 1 h, then every 2 h
        (Priority.MEDIUM, utc(2026, 1, 9, 14, 30), utc(2026, 1, 12, 7, 30), utc(2026, 1, 12, 7, 30)),
        # low 8x5: 4 h, then every 4 h; Tue 10 Nov 13:00 -> 3 h Tuesday + 1 h Thursday 12 Nov
        (Priority.LOW, utc(2026, 11, 10, 12, 0), utc(2026, 11, 12, 8, 0), utc(2026, 11, 12, 8, 0)),
    ],
)
def test_reaction_due_per_priority(
    priority: Priority, opened: datetime, reaction: datetime, communication: datetime
) -> None:
    assert SLA.reaction_due(priority, opened) == reaction
    clocks = SLA.clocks(priority, opened)
    assert clocks.reaction_due == reaction
    assert clocks.next_communication_due == communication  # the reaction is the first contact


@pytest.mark.parametrize(
    ("priority", "last", "expected"),
    [
        (Priority.CRITICAL, utc(2026, 1, 10, 23, 30), utc(2026, 1, 11, 0, 30)),  # Sat night + 1 h
        (Priority.MEDIUM, utc(2026, 1, 9, 14, 0), utc(2026, 1, 12, 8, 0)),  # Fri 15:00 + 2 h -> Mon 09:00
        (Priority.LOW, utc(2026, 1, 12, 13, 0), utc(2026, 1, 13, 9, 0)),  # Mon 14:00 + 4 h -> Tue 10:00
        ("medium", utc(2026, 1, 12, 7, 0), utc(2026, 1, 12, 9, 0)),  # a plain string works too
    ],
)
def test_next_communication_due_follows_the_cadence(
    priority: Priority | str, last: datetime, expected: datetime
) -> None:
    assert SLA.next_communication_due(priority, last) == expected


@pytest.mark.parametrize(
    ("case", "confirmed", "expected"),
    [
        ("monday before cut-off", utc(2026, 1, 12, 12, 59), date(2026, 1, 13)),  # Mon 13:59 CET
        ("monday at cut-off", utc(2026, 1, 12, 13, 0), date(2026, 1, 14)),  # Mon 14:00 CET
        ("monday after cut-off", utc(2026, 1, 12, 16, 0), date(2026, 1, 14)),
        ("friday before cut-off", utc(2026, 1, 9, 9, 0), date(2026, 1, 12)),  # -> Monday
        ("friday after cut-off", utc(2026, 1, 9, 14, 0), date(2026, 1, 13)),  # -> Tuesday
        ("saturday", utc(2026, 1, 10, 9, 0), date(2026, 1, 13)),  # counts from Monday -> Tuesday
        ("early morning counts that day", utc(2026, 1, 12, 5, 0), date(2026, 1, 13)),  # Mon 06:00
        # summer: 12:30 UTC is 14:30 CEST, after the cut-off in site time
        ("cut-off in site time", utc(2026, 7, 13, 12, 30), date(2026, 7, 15)),
        ("day before 11 november", utc(2026, 11, 10, 9, 0), date(2026, 11, 12)),
        ("day before 11 november late", utc(2026, 11, 10, 14, 0), date(2026, 11, 13)),
        ("on 11 november", utc(2026, 11, 11, 9, 0), date(2026, 11, 13)),
        ("before easter 2026", utc(2026, 4, 3, 8, 0), date(2026, 4, 7)),  # Good Friday 10:00 CEST
        ("before christmas eve", utc(2026, 12, 23, 9, 0), date(2026, 12, 28)),
        ("christmas eve 2024 was a working day", utc(2024, 12, 23, 9, 0), date(2024, 12, 24)),
    ],
)
def test_nbd_delivery_date(case: str, confirmed: datetime, expected: date) -> None:
    assert SLA.nbd_delivery_date(confirmed) == expected, case


def test_nbd_cutoff_and_closed_days_are_configuration() -> None:
    late = make_sla({"delivery": {"cutoff": "16:00"}})
    assert late.nbd_delivery_date(utc(2026, 1, 12, 14, 0)) == date(2026, 1, 13)  # Mon 15:00 < 16:00
    assert SLA.nbd_delivery_date(utc(2026, 1, 12, 14, 0)) == date(2026, 1, 14)  # default 14:00
    closed = make_sla({"holidays": {"closed_days": ["2026-01-13"]}})
    assert closed.nbd_delivery_date(utc(2026, 1, 12, 9, 0)) == date(2026, 1, 14)
    # and a closed day moves business time too: Fri 17:00 + 1 h -> Wed 09:00
    assert closed.calendar.add_business_time(utc(2026, 1, 9, 16, 0), HOUR) == utc(2026, 1, 12, 8, 0)
    closed2 = make_sla({"holidays": {"closed_days": ["2026-01-12"]}})
    assert closed2.reaction_due(Priority.MEDIUM, utc(2026, 1, 9, 16, 0)) == utc(2026, 1, 13, 8, 0)


def test_priority_windows_and_times_are_configuration() -> None:
    sla = make_sla({"critical": {"window": "8x5"}, "medium": {"reaction_minutes": 30}})
    assert sla.reaction_due("critical", utc(2026, 1, 10, 9, 0)) == utc(2026, 1, 12, 8, 0)
    assert sla.reaction_due("medium", utc(2026, 1, 12, 9, 0)) == utc(2026, 1, 12, 9, 30)
    assert sla.settings.medium.communication_minutes == 120  # the rest keeps the seed's default
    hours = BusinessHours(start=time(9, 0), end=time(17, 0))
    assert make_sla(hours=hours).reaction_due("medium", utc(2026, 1, 12, 7, 30)) == utc(2026, 1, 12, 9, 0)


@pytest.mark.parametrize(
    ("swapped", "due", "reminder"),
    [
        # Mon 12 Jan 10:00 CET -> Mon 19 Jan 10:00 CET, reminder Sun 18 Jan 10:00
        (utc(2026, 1, 12, 9, 0), utc(2026, 1, 19, 9, 0), utc(2026, 1, 18, 9, 0)),
        # across spring DST: Wed 25 Mar 10:00 CET -> Wed 1 Apr 10:00 CEST (same wall clock)
        (utc(2026, 3, 25, 9, 0), utc(2026, 4, 1, 8, 0), utc(2026, 3, 31, 8, 0)),
        # across autumn DST: Wed 21 Oct 10:00 CEST -> Wed 28 Oct 10:00 CET
        (utc(2026, 10, 21, 8, 0), utc(2026, 10, 28, 9, 0), utc(2026, 10, 27, 9, 0)),
    ],
)
def test_return_deadline_is_seven_calendar_days_with_a_reminder(
    swapped: datetime, due: datetime, reminder: datetime
) -> None:
    assert SLA.return_deadline(swapped) == due
    assert SLA.return_reminder_at(swapped) == reminder


def test_return_deadline_is_configuration() -> None:
    sla = make_sla({"returns": {"days": 14, "reminder_days": 3}})
    assert sla.return_deadline(utc(2026, 1, 12, 9, 0)) == utc(2026, 1, 26, 9, 0)
    assert sla.return_reminder_at(utc(2026, 1, 12, 9, 0)) == utc(2026, 1, 23, 9, 0)


def test_clocks_bundle_every_deadline_of_a_ticket() -> None:
    clocks = SLA.clocks(
        "medium",
        utc(2026, 12, 23, 14, 30),  # Wed 15:30 CET
        last_communication_at=utc(2026, 12, 23, 14, 45),
        confirmed_at=utc(2026, 12, 23, 14, 50),  # 15:50, after the cut-off
        swapped_at=utc(2026, 12, 28, 9, 0),
    )
    assert clocks == SlaClocks(
        priority=Priority.MEDIUM,
        window="8x5",
        opened_at=utc(2026, 12, 23, 14, 30),
        reaction_due=utc(2026, 12, 28, 7, 30),  # 30 min Wed, 24-27 Dec closed, 30 min Mon
        next_communication_due=utc(2026, 12, 28, 8, 45),  # 15 min Wed + 1 h 45 min Mon
        communication_every=timedelta(hours=2),
        nbd_delivery=True,
        confirmed_at=utc(2026, 12, 23, 14, 50),
        delivery_date=date(2026, 12, 29),  # counts from Mon 28 -> Tue 29
        swapped_at=utc(2026, 12, 28, 9, 0),
        return_due=utc(2027, 1, 4, 9, 0),
        return_reminder_at=utc(2027, 1, 3, 9, 0),
    )
    assert clocks.as_fields() == {
        "sla_window": "8x5",
        "sla_reaction_due": "2026-12-28T07:30:00+00:00",
        "sla_next_communication_due": "2026-12-28T08:45:00+00:00",
        "sla_delivery_date": "2026-12-29",
        "sla_return_due": "2027-01-04T09:00:00+00:00",
        "sla_return_reminder_at": "2027-01-03T09:00:00+00:00",
    }


def test_low_priority_has_no_delivery_even_when_confirmed() -> None:
    clocks = SLA.clocks(Priority.LOW, utc(2026, 1, 12, 9, 0), confirmed_at=utc(2026, 1, 12, 10, 0))
    assert clocks.delivery_date is None and not clocks.nbd_delivery
    with pytest.raises(ValueError):
        SLA.clocks("urgent", utc(2026, 1, 12, 9, 0))


# --- rendering -----------------------------------------------------------------------------


def _full_clocks() -> SlaClocks:
    return SLA.clocks(
        Priority.CRITICAL,
        utc(2026, 1, 9, 20, 0),
        confirmed_at=utc(2026, 1, 9, 21, 0),
        swapped_at=utc(2026, 1, 12, 9, 0),
    )


def test_sla_block_in_english_shows_utc_and_site_time() -> None:
    assert render_sla_block(_full_clocks(), "Europe/Warsaw", "en") == [
        "SLA clocks (service window 24x7 — every hour of every day):",
        "  Reaction due: 2026-01-09 21:00:00 UTC (2026-01-09 22:00:00 +01:00 Europe/Warsaw)",
        "  Next communication due: 2026-01-09 21:00:00 UTC (2026-01-09 22:00:00 +01:00 Europe/Warsaw),"
        " then every 1 h",
        "  Next-business-day delivery: 2026-01-13 (Tuesday), failure confirmed 2026-01-09 21:00:00 UTC"
        " (2026-01-09 22:00:00 +01:00 Europe/Warsaw)",
        "  Return of the failed unit due: 2026-01-19 09:00:00 UTC (2026-01-19 10:00:00 +01:00 Europe/Warsaw),"
        " swapped 2026-01-12 09:00:00 UTC (2026-01-12 10:00:00 +01:00 Europe/Warsaw)",
        "  Return reminder: 2026-01-18 09:00:00 UTC (2026-01-18 10:00:00 +01:00 Europe/Warsaw)",
    ]


def test_sla_block_in_polish_before_confirmation() -> None:
    clocks = SLA.clocks(Priority.MEDIUM, utc(2026, 7, 10, 13, 30))  # Fri 15:30 CEST
    assert render_sla_block(clocks, "Europe/Warsaw", "pl") == [
        "Terminy SLA (okno serwisowe 8x5 — godziny pracy w dni robocze, czas lokalny, bez świąt"
        " państwowych):",
        "  Reakcja do: 2026-07-13 06:30:00 UTC (2026-07-13 08:30:00 +02:00 Europe/Warsaw)",
        "  Następna komunikacja do: 2026-07-13 06:30:00 UTC (2026-07-13 08:30:00 +02:00 Europe/Warsaw),"
        " potem co 2 h",
        "  Dostawa w następnym dniu roboczym: po potwierdzeniu awarii (następny dzień roboczy po"
        " potwierdzeniu)",
    ]
    low = render_sla_block(SLA.clocks(Priority.LOW, utc(2026, 7, 10, 13, 30)), "Europe/Warsaw", "pl")
    assert len(low) == 3 and "potem co 4 h" in low[2]  # no delivery line for low
    with pytest.raises(ValueError, match="unknown language"):
        render_sla_block(clocks, "Europe/Warsaw", "de")


def test_ticket_lines_adapter_renders_per_site() -> None:
    lines = SlaTicketLines(SlaSettings())
    site = make_site()
    got = lines(Priority.CRITICAL, site, utc(2026, 1, 9, 20, 0), "en")
    assert got[1] == "  Reaction due: 2026-01-09 21:00:00 UTC (2026-01-09 22:00:00 +01:00 Europe/Warsaw)"
    assert lines.calendar(site) is lines.calendar(site)


# --- configuration -------------------------------------------------------------------------

BASE_YAML = """\
sites:
  - name: warszawa
    address: "ul. Marszałkowska 142, 00-061 Warszawa"
    contact: {name: Anna Kowalska, phone: "+48 22 555 01 23", email: it@example.pl}
devices:
  - {id: a30-zarzad, room: Sala Zarząd, site: warszawa, model: A30, host: 127.0.0.1}
"""


def _load(tmp_path: Path, sla_yaml: str) -> Any:
    path = tmp_path / "hezo.yaml"
    path.write_text(BASE_YAML + sla_yaml, encoding="utf-8")
    return load_config(path)


def test_config_without_sla_uses_the_seed_defaults(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "")
    assert cfg.sla == SlaSettings()
    assert (cfg.sla.critical.window, cfg.sla.critical.reaction_minutes) == ("24x7", 60)
    assert (cfg.sla.medium.window, cfg.sla.medium.communication_minutes) == ("8x5", 120)
    assert (cfg.sla.low.reaction_minutes, cfg.sla.low.nbd_delivery) == (240, False)
    assert cfg.sla.delivery.cutoff == time(14, 0)
    assert (cfg.sla.returns.days, cfg.sla.returns.reminder_days) == (7, 1)
    assert cfg.sla.holidays == HolidaySettings(country="PL", subdivision=None, closed_days=())


def test_config_sla_section_is_read(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        'sla:\n  medium:\n    window: 24x7\n  delivery:\n    cutoff: "12:30"\n'
        "  holidays:\n    closed_days: [2026-12-31]\n",
    )
    assert cfg.sla.medium.window == "24x7" and cfg.sla.medium.reaction_minutes == 60
    assert cfg.sla.delivery.cutoff == time(12, 30)
    assert cfg.sla.holidays.closed_days == (date(2026, 12, 31),)


@pytest.mark.parametrize(
    ("sla_yaml", "line"),
    [
        ("sla:\n  medium:\n    window: 9x5\n", "sla.medium.window: must be one of 24x7, 8x5, got '9x5'"),
        (
            "sla:\n  low:\n    reaction_minute: 5\n",
            "sla.low.reaction_minute: unknown key, did you mean 'reaction_minutes'? (allowed here: window,"
            " reaction_minutes, communication_minutes, nbd_delivery)",
        ),
        (
            "sla:\n  critical:\n    reaction_minutes: 0\n",
            "sla.critical.reaction_minutes: must be at least 1, got 0",
        ),
        (
            'sla:\n  delivery:\n    cutoff: "25:00"\n',
            "sla.delivery.cutoff: not a valid time, got '25:00'; write HH:MM on the 24-hour clock,"
            " e.g. 08:00 or 16:30",
        ),
        (
            "sla:\n  returns:\n    days: 3\n    reminder_days: 3\n",
            "sla.returns.reminder_days: must be less than days (3), got 3; the reminder comes that many"
            " days before the deadline",
        ),
        (
            "sla:\n  holidays:\n    country: pl\n",
            "sla.holidays.country: unknown country 'pl' (did you mean 'PL'?); give an ISO 3166-1 code that"
            " the holidays package knows, e.g. PL",
        ),
        (
            'sla:\n  holidays:\n    subdivision: "99"\n',
            "sla.holidays.subdivision: unknown subdivision '99' of PL (known: 02, 04, 06, 08, 10, 12, 14,"
            " 16, 18, 20, 22, 24, 26, 28, 30, 32); leave the key out for the national holidays",
        ),
        (
            "sla:\n  holidays:\n    closed_days: [2026-13-01]\n",
            "sla.holidays.closed_days[0]: not a valid date, got '2026-13-01'; write YYYY-MM-DD,"
            " e.g. 2025-01-31",
        ),
    ],
)
def test_bad_sla_config_names_the_key_and_the_fix(tmp_path: Path, sla_yaml: str, line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, sla_yaml)
    assert caught.value.lines == [line]


# --- properties ----------------------------------------------------------------------------

INSTANTS = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
)
DURATIONS = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10))
PRIORITIES = st.sampled_from(list(Priority))


@st.composite
def business_hours(draw: st.DrawFn) -> BusinessHours:
    """Any window of at least an hour, including ones that straddle the 02:00-03:00 DST gap, on any
    weekdays (an hour a week covers the longest duration drawn within the calendar's search bound)."""
    start = draw(st.integers(0, 22 * 60 + 59))
    end = draw(st.integers(start + 60, 23 * 60 + 59))
    days = draw(st.sets(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]), min_size=1))
    return BusinessHours(
        start=time(start // 60, start % 60), end=time(end // 60, end % 60), days=tuple(sorted(days))
    )


def _inside_or_at_end(cal: BusinessCalendar, at: datetime) -> bool:
    interval = cal.business_interval(at.astimezone(WARSAW).date())
    return interval is not None and interval[0] <= at <= interval[1]


PROPERTY = settings(max_examples=150, deadline=None, database=None)


@PROPERTY
@given(priority=PRIORITIES, opened=INSTANTS)
def test_property_reaction_due_is_never_before_opening(priority: Priority, opened: datetime) -> None:
    due = SLA.reaction_due(priority, opened)
    assert due >= opened
    assert SLA.next_communication_due(priority, opened) >= opened


@PROPERTY
@given(first=INSTANTS, second=INSTANTS, duration=DURATIONS)
def test_property_adding_business_time_is_monotonic_in_the_start(
    first: datetime, second: datetime, duration: timedelta
) -> None:
    early, late = sorted((first, second))
    assert CAL.add_business_time(early, duration) <= CAL.add_business_time(late, duration)


@PROPERTY
@given(start=INSTANTS, one=DURATIONS, two=DURATIONS)
def test_property_adding_business_time_is_monotonic_in_the_duration(
    start: datetime, one: timedelta, two: timedelta
) -> None:
    short, long = sorted((one, two))
    assert CAL.add_business_time(start, short) <= CAL.add_business_time(start, long)


@PROPERTY
@given(hours=business_hours(), start=INSTANTS, duration=DURATIONS)
def test_property_8x5_result_is_in_business_hours_or_at_their_end(
    hours: BusinessHours, start: datetime, duration: timedelta
) -> None:
    cal = BusinessCalendar("Europe/Warsaw", hours)
    result = cal.add_business_time(start, duration)
    assert result >= start
    assert _inside_or_at_end(cal, result)
    assert cal.business_time_between(start, result) == duration
