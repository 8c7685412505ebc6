"""The one table of device drivers: a profile's ``driver`` key → the class that speaks to it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from collectors.base import Collector
from collectors.pins import PinStore
from collectors.yealink import YealinkHttpCollector
from config.schema import Device, Profile

DRIVERS: dict[str, type[Collector]] = {
    "yealink-http": YealinkHttpCollector,
}


class UnknownDriver(KeyError):
    """A profile names a driver that is not in :data:`DRIVERS`."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown driver"


def build_collector(
    device: Device,
    profile: Profile,
    *,
    password: str | None,
    pins: PinStore | None,
    timeout_s: float,
    max_response_bytes: int,
    max_log_bytes: int,
    clock: Callable[[], datetime] | None = None,
) -> Collector:
    """Build the driver ``profile.driver`` names for ``device`` (``clock`` stamps samples, default UTC now).

    Raises:
        UnknownDriver: (a KeyError) the profile's driver is not registered; the message lists those that are.
        ValueError: the driver rejects the profile (e.g. token auth without a login endpoint).
    """
    try:
        factory: Callable[..., Collector] = DRIVERS[profile.driver]
    except KeyError:
        supported = ", ".join(sorted(DRIVERS))
        raise UnknownDriver(
            f"profile {profile.name}: unknown driver {profile.driver!r} (supported: {supported})"
        ) from None
    return factory(
        device,
        profile,
        password=password,
        pins=pins,
        timeout_s=timeout_s,
        max_response_bytes=max_response_bytes,
        max_log_bytes=max_log_bytes,
        clock=clock,
    )
