"""SLA settings: the HEZO+ service window, reaction and communication times per priority,
next-business-day delivery, the return deadline of a swapped unit and the holiday calendar.

The defaults are the seed's table (``/work/shared/seed-hezo-plus.md``): critical counts 24x7
with a 1 h reaction and a 1 h communication cadence; medium 8x5 with 1 h / 2 h; low 8x5 with
4 h / 4 h. Business hours themselves belong to each site (``sites[].business_hours``); the
holidays here apply to every site.
"""

from __future__ import annotations

from datetime import date, time
from functools import cache
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from config.base import Strict

#: how a priority's clocks run: around the clock, or in business hours on business days only
Window = Literal["24x7", "8x5"]
#: a duration in minutes: at least one minute, at most one week
Minutes = Annotated[int, Field(ge=1, le=7 * 24 * 60)]


class PrioritySla(Strict):
    """The clocks of one priority: its window, reaction time and communication cadence."""

    window: Window
    reaction_minutes: Minutes
    communication_minutes: Minutes
    nbd_delivery: bool = Field(
        default=True, description="a confirmed failure gets a next-business-day delivery date"
    )


class CriticalSla(PrioritySla):
    """Critical: no access to the device. 24x7, reaction 1 h, then communication every 1 h."""

    window: Window = "24x7"
    reaction_minutes: Minutes = 60
    communication_minutes: Minutes = 60


class MediumSla(PrioritySla):
    """Medium: the device works unstably. 8x5, reaction 1 h, then communication every 2 h."""

    window: Window = "8x5"
    reaction_minutes: Minutes = 60
    communication_minutes: Minutes = 120


class LowSla(PrioritySla):
    """Low: configuration and advice. 8x5, reaction 4 h, communication every 4 h, no delivery."""

    window: Window = "8x5"
    reaction_minutes: Minutes = 240
    communication_minutes: Minutes = 240
    nbd_delivery: bool = False


class DeliverySettings(Strict):
    """Next-business-day (NBD) delivery of a replacement after a failure is confirmed."""

    cutoff: time = Field(
        default=time(14, 0),
        description="site time of day from which a confirmation counts as made on the next business day",
    )


class ReturnSettings(Strict):
    """The deadline for sending a swapped (failed) unit back, and the reminder before it."""

    days: int = Field(default=7, ge=1, le=365, description="calendar days after the swap")
    reminder_days: int = Field(default=1, ge=0, le=364, description="days before the deadline")

    @model_validator(mode="after")
    def _reminder_inside_deadline(self) -> ReturnSettings:
        from config.schema import FieldProblem

        if self.reminder_days >= self.days:
            raise FieldProblem(
                "reminder_days",
                f"must be less than days ({self.days}), got {self.reminder_days};"
                f" the reminder comes that many days before the deadline",
            )
        return self


@cache
def _supported() -> dict[str, list[str]]:
    import holidays

    return holidays.list_supported_countries()


class HolidaySettings(Strict):
    """Days on which no business hours run, besides the weekdays not in ``business_hours.days``."""

    country: str = Field(default="PL", description="ISO 3166-1 code of the public holidays")
    subdivision: str | None = Field(default=None, description="region code, if its holidays differ")
    closed_days: tuple[date, ...] = Field(default=(), description="extra closed days, YYYY-MM-DD")

    @field_validator("country")
    @classmethod
    def _known_country(cls, value: str) -> str:
        if value not in _supported():
            hint = f" (did you mean {value.upper()!r}?)" if value.upper() in _supported() else ""
            raise ValueError(
                f"unknown country {value!r}{hint}; give an ISO 3166-1 code that the holidays"
                " package knows, e.g. PL"
            )
        return value

    @model_validator(mode="after")
    def _known_subdivision(self) -> HolidaySettings:
        from config.schema import FieldProblem

        known = _supported().get(self.country, [])
        if self.subdivision is not None and self.subdivision not in known:
            allowed = ", ".join(known) or "none"
            raise FieldProblem(
                "subdivision",
                f"unknown subdivision {self.subdivision!r} of {self.country} (known: {allowed});"
                " leave the key out for the national holidays",
            )
        return self


class SlaSettings(Strict):
    """Every SLA rule; the whole section, and each key in it, is optional."""

    # default_factory, not instances: the validators import config.schema, which imports this module
    critical: CriticalSla = Field(default_factory=CriticalSla)
    medium: MediumSla = Field(default_factory=MediumSla)
    low: LowSla = Field(default_factory=LowSla)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    returns: ReturnSettings = Field(default_factory=ReturnSettings)
    holidays: HolidaySettings = Field(default_factory=HolidaySettings)

    def for_priority(self, priority: str) -> PrioritySla:
        """Return the clocks of ``priority`` (``critical``, ``medium`` or ``low``).

        Raises:
            KeyError: not one of the three priorities.
        """
        by_name: dict[str, PrioritySla] = {"critical": self.critical, "medium": self.medium, "low": self.low}
        return by_name[str(priority)]
