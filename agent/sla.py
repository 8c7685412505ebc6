"""The HEZO+ SLA calendar: business time, reaction and communication deadlines, NBD delivery.

Pure and clock-free: every function takes the instants it needs and returns UTC datetimes (or
a local :class:`~datetime.date` for the delivery day). Nothing here reads the time itself.

How time is counted (DST-safe): a business day ``D`` contributes one interval, the site's
``business_hours.start``–``end`` on ``D`` in local time, converted to UTC with zoneinfo; all
arithmetic is then done in UTC over those intervals. So an 8-hour business day is 8 real hours
on the days the clocks change, and a duration crossing a weekend with the change is exact in
UTC. A local time that does not exist (spring forward) is taken as the instant it would have
been on the old offset, i.e. moved forward by the gap; an ambiguous one (fall back) as its
first occurrence.

Business days are the weekdays in ``business_hours.days`` that are neither a public holiday of
the configured country (the ``holidays`` package; Poland by default, which includes Christmas
Eve from 2025 on) nor a configured extra closed day. The ``24x7`` window counts every instant.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

from agent.ticket_text import render_sla_block
from agent.ticket_words import SLA_WORDS, WEEKDAY_NAMES
from config.schema import BusinessHours, Site
from config.sla import HolidaySettings, PrioritySla, SlaSettings, Window
from uploader.models import Priority

__all__ = [
    "MAX_SEARCH_DAYS",
    "BusinessCalendar",
    "CalendarError",
    "SlaCalendar",
    "SlaClocks",
    "SlaTicketLines",
]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: how far ahead (in days) the calendar looks for business time before giving up
MAX_SEARCH_DAYS = 3660


class CalendarError(ValueError):
    """The calendar cannot answer: a naive datetime, a negative duration, or no business day ahead."""


def _utc(at: datetime, name: str) -> datetime:
    """Return ``at`` in UTC.

    Raises:
        CalendarError: ``at`` is naive (a time without a zone is ambiguous for an SLA).
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise CalendarError(f"{name} must be timezone-aware, got naive {at.isoformat()}")
    return at.astimezone(UTC)


@lru_cache(maxsize=256)
def _public_holidays(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    """Return the public holidays of ``country`` (and ``subdivision``) in ``year``."""
    return frozenset(holidays.country_holidays(country, subdiv=subdivision, years=year))


class BusinessCalendar:
    """Business days and hours of one site: its time zone, business hours and closed days."""

    def __init__(self, timezone: str, hours: BusinessHours, closed: HolidaySettings | None = None) -> None:
        """Build the calendar of a site.

        Args:
            timezone: IANA zone of the site, e.g. ``Europe/Warsaw``.
            hours: the 8x5 window (start, end, weekdays) in that zone.
            closed: public holidays (country, subdivision) and extra closed days; default Poland.

        Raises:
            zoneinfo.ZoneInfoNotFoundError: unknown time zone (the config validates it first).
        """
        self.timezone = timezone
        self.hours = hours
        self.closed = closed if closed is not None else HolidaySettings()
        self._tz = ZoneInfo(timezone)
        self._weekdays = frozenset(WEEKDAYS.index(day) for day in hours.days)
        self._extra = frozenset(self.closed.closed_days)

    @classmethod
    def for_site(cls, site: Site, settings: SlaSettings) -> BusinessCalendar:
        """Return the calendar of ``site`` with the holidays of ``settings``."""
        return cls(site.timezone, site.business_hours, settings.holidays)

    def local(self, at: datetime) -> datetime:
        """Return ``at`` in the site's time zone.

        Raises:
            CalendarError: ``at`` is naive.
        """
        return _utc(at, "at").astimezone(self._tz)

    def is_holiday(self, day: date) -> bool:
        """Return True when ``day`` is a public holiday or a configured extra closed day."""
        subdivision = self.closed.subdivision
        return day in self._extra or day in _public_holidays(self.closed.country, subdivision, day.year)

    def is_business_day(self, day: date) -> bool:
        """Return True when ``day`` is one of the business weekdays and not a holiday or closed day."""
        return day.weekday() in self._weekdays and not self.is_holiday(day)

    def next_business_day(self, day: date) -> date:
        """Return the first business day strictly after ``day``.

        Raises:
            CalendarError: none within :data:`MAX_SEARCH_DAYS` (every day closed).
        """
        for offset in range(1, MAX_SEARCH_DAYS + 1):
            candidate = day + timedelta(days=offset)
            if self.is_business_day(candidate):
                return candidate
        raise CalendarError(f"no business day within {MAX_SEARCH_DAYS} days after {day.isoformat()}")

    def business_interval(self, day: date) -> tuple[datetime, datetime] | None:
        """Return the business hours of ``day`` as a UTC ``(start, end)``, or None on a closed day."""
        if not self.is_business_day(day):
            return None
        start = datetime.combine(day, self.hours.start, tzinfo=self._tz).astimezone(UTC)
        end = datetime.combine(day, self.hours.end, tzinfo=self._tz).astimezone(UTC)
        return (start, end) if end > start else None

    def is_business_time(self, at: datetime) -> bool:
        """Return True when ``at`` lies inside business hours (start inclusive, end exclusive).

        Raises:
            CalendarError: ``at`` is naive.
        """
        instant = _utc(at, "at")
        interval = self.business_interval(instant.astimezone(self._tz).date())
        return interval is not None and interval[0] <= instant < interval[1]

    def _intervals_from(self, start: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Yield the business intervals that end after ``start``, the first clipped to begin at it."""
        first_day = start.astimezone(self._tz).date()
        for offset in range(MAX_SEARCH_DAYS + 1):
            interval = self.business_interval(first_day + timedelta(days=offset))
            if interval is not None and interval[1] > start:
                yield max(interval[0], start), interval[1]

    def add_business_time(self, start: datetime, duration: timedelta, window: Window = "8x5") -> datetime:
        """Return when ``duration`` of ``window`` time has run from ``start`` (UTC).

        ``24x7`` adds real time. ``8x5`` counts only business hours: the result is the earliest
        instant by which ``duration`` of business time has passed, so it lies inside business
        hours or exactly at their end (a zero duration started outside them gives the next
        opening).

        Raises:
            CalendarError: ``start`` is naive, ``duration`` is negative, or no business time ahead.
        """
        begin = _utc(start, "start")
        if duration < timedelta(0):
            raise CalendarError(f"duration must not be negative, got {duration}")
        if window == "24x7":
            return begin + duration
        remaining = duration
        for open_at, close_at in self._intervals_from(begin):
            span = close_at - open_at
            if remaining <= span:
                return open_at + remaining
            remaining -= span
        raise CalendarError(f"no business time within {MAX_SEARCH_DAYS} days after {begin.isoformat()}")

    def business_time_between(self, start: datetime, end: datetime, window: Window = "8x5") -> timedelta:
        """Return how much ``window`` time lies between ``start`` and ``end``.

        Raises:
            CalendarError: a naive datetime, or ``end`` before ``start``.
        """
        begin, finish = _utc(start, "start"), _utc(end, "end")
        if finish < begin:
            raise CalendarError(f"end {finish.isoformat()} is before start {begin.isoformat()}")
        if window == "24x7":
            return finish - begin
        total = timedelta(0)
        day, last = begin.astimezone(self._tz).date(), finish.astimezone(self._tz).date()
        while day <= last:
            interval = self.business_interval(day)
            if interval is not None:
                total += max(timedelta(0), min(interval[1], finish) - max(interval[0], begin))
            day += timedelta(days=1)
        return total


@dataclass(frozen=True, slots=True)
class SlaClocks:
    """The SLA clocks of one ticket; every instant is UTC, ``delivery_date`` is a site-local day.

    ``confirmed_at``/``delivery_date`` are set once a failure is confirmed (and only for
    priorities with NBD delivery); ``swapped_at``/``return_due``/``return_reminder_at`` once a
    replacement has been swapped in.
    """

    priority: Priority
    window: Window
    opened_at: datetime
    reaction_due: datetime
    next_communication_due: datetime
    communication_every: timedelta
    nbd_delivery: bool
    confirmed_at: datetime | None = None
    delivery_date: date | None = None
    swapped_at: datetime | None = None
    return_due: datetime | None = None
    return_reminder_at: datetime | None = None

    def as_fields(self) -> dict[str, str | None]:
        """Return the clocks as ISO 8601 strings (``sla_*`` keys) for a ticket's structured fields."""

        def iso(value: datetime | date | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "sla_window": self.window,
            "sla_reaction_due": iso(self.reaction_due),
            "sla_next_communication_due": iso(self.next_communication_due),
            "sla_delivery_date": iso(self.delivery_date),
            "sla_return_due": iso(self.return_due),
            "sla_return_reminder_at": iso(self.return_reminder_at),
        }


class SlaCalendar:
    """The HEZO+ rules on top of a site's business calendar: one instance per site."""

    def __init__(self, calendar: BusinessCalendar, settings: SlaSettings) -> None:
        """Combine a site's ``calendar`` with the SLA ``settings``."""
        self.calendar = calendar
        self.settings = settings

    @classmethod
    def for_site(cls, site: Site, settings: SlaSettings) -> SlaCalendar:
        """Return the SLA calendar of ``site`` (its time zone and business hours, the holidays)."""
        return cls(BusinessCalendar.for_site(site, settings), settings)

    def rules(self, priority: Priority | str) -> PrioritySla:
        """Return the configured clocks of ``priority``.

        Raises:
            ValueError: not critical, medium or low.
        """
        return self.settings.for_priority(Priority(priority))

    def reaction_due(self, priority: Priority | str, opened_at: datetime) -> datetime:
        """Return when the reaction to a ticket opened at ``opened_at`` is due (UTC).

        Raises:
            CalendarError: ``opened_at`` is naive.
            ValueError: unknown priority.
        """
        rules = self.rules(priority)
        return self.calendar.add_business_time(
            opened_at, timedelta(minutes=rules.reaction_minutes), rules.window
        )

    def next_communication_due(self, priority: Priority | str, last_communication_at: datetime) -> datetime:
        """Return when the next communication with the user is due after the last one (UTC).

        Raises:
            CalendarError: ``last_communication_at`` is naive.
            ValueError: unknown priority.
        """
        rules = self.rules(priority)
        return self.calendar.add_business_time(
            last_communication_at, timedelta(minutes=rules.communication_minutes), rules.window
        )

    def nbd_delivery_date(self, confirmed_at: datetime) -> date:
        """Return the site-local day a replacement is due after a failure confirmed at ``confirmed_at``.

        A confirmation on a business day before the cut-off (``sla.delivery.cutoff``, site time)
        gets the next business day; one at or after the cut-off, or on a closed day, counts as
        made on the next business day and gets the business day after that.

        Raises:
            CalendarError: ``confirmed_at`` is naive, or no business day ahead.
        """
        local = self.calendar.local(confirmed_at)
        day = local.date()
        if not self.calendar.is_business_day(day) or local.time() >= self.settings.delivery.cutoff:
            day = self.calendar.next_business_day(day)
        return self.calendar.next_business_day(day)

    def _wall_clock_shift(self, at: datetime, days: int) -> datetime:
        """Return ``at`` moved by ``days`` calendar days at the same site wall-clock time (UTC)."""
        local = self.calendar.local(at).replace(tzinfo=None, fold=0)
        return (local + timedelta(days=days)).replace(tzinfo=ZoneInfo(self.calendar.timezone)).astimezone(UTC)

    def return_deadline(self, swapped_at: datetime) -> datetime:
        """Return when the failed unit swapped at ``swapped_at`` must be sent back (UTC).

        ``sla.returns.days`` calendar days later at the same site wall-clock time.

        Raises:
            CalendarError: ``swapped_at`` is naive.
        """
        return self._wall_clock_shift(swapped_at, self.settings.returns.days)

    def return_reminder_at(self, swapped_at: datetime) -> datetime:
        """Return when to remind the user of the return: ``sla.returns.reminder_days`` before the deadline.

        Raises:
            CalendarError: ``swapped_at`` is naive.
        """
        returns = self.settings.returns
        return self._wall_clock_shift(swapped_at, returns.days - returns.reminder_days)

    def clocks(
        self,
        priority: Priority | str,
        opened_at: datetime,
        *,
        last_communication_at: datetime | None = None,
        confirmed_at: datetime | None = None,
        swapped_at: datetime | None = None,
    ) -> SlaClocks:
        """Return every clock of a ticket.

        Until the first communication the next one is due with the reaction (the reaction is the
        first contact); after it, one cadence after ``last_communication_at``. The delivery day is
        given only when ``confirmed_at`` is set and the priority has NBD delivery.

        Raises:
            CalendarError: a naive datetime.
            ValueError: unknown priority.
        """
        prio = Priority(priority)
        rules = self.rules(prio)
        reaction = self.reaction_due(prio, opened_at)
        communication = (
            reaction
            if last_communication_at is None
            else self.next_communication_due(prio, last_communication_at)
        )
        delivery = (
            self.nbd_delivery_date(confirmed_at) if confirmed_at is not None and rules.nbd_delivery else None
        )
        return SlaClocks(
            priority=prio,
            window=rules.window,
            opened_at=_utc(opened_at, "opened_at"),
            reaction_due=reaction,
            next_communication_due=communication,
            communication_every=timedelta(minutes=rules.communication_minutes),
            nbd_delivery=rules.nbd_delivery,
            confirmed_at=_utc(confirmed_at, "confirmed_at") if confirmed_at is not None else None,
            delivery_date=delivery,
            swapped_at=_utc(swapped_at, "swapped_at") if swapped_at is not None else None,
            return_due=self.return_deadline(swapped_at) if swapped_at is not None else None,
            return_reminder_at=self.return_reminder_at(swapped_at) if swapped_at is not None else None,
        )


class SlaTicketLines:
    """The SLA block of a new ticket, for any site: ``lines(priority, site, opened_at, language)``.

    Fits ``IncidentManager(sla_lines=...)``; keeps one :class:`SlaCalendar` per site.
    """

    def __init__(self, settings: SlaSettings) -> None:
        """Use ``settings`` (``AgentConfig.sla``) for every site."""
        self.settings = settings
        self._calendars: dict[Site, SlaCalendar] = {}

    def calendar(self, site: Site) -> SlaCalendar:
        """Return the SLA calendar of ``site``."""
        found = self._calendars.get(site)
        if found is None:
            found = self._calendars[site] = SlaCalendar.for_site(site, self.settings)
        return found

    def __call__(self, priority: Priority, site: Site, opened_at: datetime, language: str) -> list[str]:
        """Return the SLA lines of a ticket of ``priority`` opened at ``opened_at`` at ``site``.

        Raises:
            CalendarError: ``opened_at`` is naive.
            ValueError: unknown priority or language.
        """
        calendar = self.calendar(site)
        clocks = calendar.clocks(priority, opened_at)
        lines = render_sla_block(clocks, site.timezone, language)
        if clocks.nbd_delivery and clocks.delivery_date is None:
            day = calendar.nbd_delivery_date(opened_at)
            hint = SLA_WORDS[language]["delivery_if_now"].format(
                day=day.isoformat(), weekday=WEEKDAY_NAMES[language][day.weekday()]
            )
            lines.append(f"    {hint}")
        return lines
