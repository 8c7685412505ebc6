"""The one table of device drivers: a profile's ``driver`` key → the class that speaks to it."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from datetime import datetime

from collectors.base import Collector
from collectors.multi import ChannelProbe, MultiChannelCollector
from collectors.pins import PinStore
from collectors.transports.tcp import TcpConnectProbe, VcApiClient
from collectors.yealink import YealinkHttpCollector
from config.schema import Device, Profile

DRIVERS: dict[str, type[Collector]] = {
    "yealink-http": YealinkHttpCollector,
}


#: extra channels: a profile channel name → how to build its probe for one device
PROBES: dict[str, Callable[[str, object], ChannelProbe]] = {
    "tcp": lambda host, settings: TcpConnectProbe(host, settings),  # type: ignore[arg-type]
    "tcp6024": lambda host, settings: VcApiClient.from_settings(host, settings),  # type: ignore[arg-type]
}

#: one pool runs every device's extra channel probes, alongside the poll thread's HTTP work
_PROBE_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="hezo-probe")


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
    primary = factory(
        device,
        profile,
        password=password,
        pins=pins,
        timeout_s=timeout_s,
        max_response_bytes=max_response_bytes,
        max_log_bytes=max_log_bytes,
        clock=clock,
    )
    probes = build_probes(device, profile)
    if not probes:
        return primary
    return MultiChannelCollector(device.id, device.model, primary, probes, pool=_PROBE_POOL, clock=clock)


def build_probes(device: Device, profile: Profile) -> list[ChannelProbe]:
    """Build the extra channel probes ``device`` opted in to (ports overridden per device).

    Raises:
        ValueError: the device names a channel its profile does not offer.
    """
    probes = []
    for name, choice in device.channels.items():
        settings = getattr(profile.channels, name)
        if settings is None:
            raise ValueError(f"device {device.id}: profile {profile.name} offers no {name} channel")
        if choice.port is not None:
            settings = settings.model_copy(update={"port": choice.port})
        probes.append(PROBES[name](device.host, settings))
    return probes
