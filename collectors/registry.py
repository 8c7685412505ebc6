"""The one table of device drivers: a profile's ``driver`` key → the class that speaks to it."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from datetime import datetime
from typing import Any

from collectors.base import Collector
from collectors.known_hosts import KnownHosts
from collectors.mtr import MtrSource
from collectors.multi import ChannelProbe, MultiChannelCollector
from collectors.pins import PinStore
from collectors.transports.snmp import SnmpTransport, read_snmp_secrets
from collectors.transports.ssh import SshTransport, read_secrets
from collectors.transports.tcp import TcpConnectProbe, VcApiClient
from collectors.yealink import YealinkHttpCollector
from collectors.ymcs_channel import YmcsAccount
from config.schema import Device, Profile

DRIVERS: dict[str, type[Collector]] = {
    "yealink-http": YealinkHttpCollector,
}


def _ssh(host: str, settings: Any, known_hosts: KnownHosts | None, where: str) -> ChannelProbe:
    secrets = read_secrets(settings, where)
    return SshTransport.from_settings(host, settings, secrets, known_hosts or KnownHosts(None))


def _snmp(host: str, settings: Any, known_hosts: KnownHosts | None, where: str) -> ChannelProbe:
    return SnmpTransport.from_settings(host, settings, read_snmp_secrets(settings, where))


#: extra channels: a profile channel name → how to build its probe for one device
#: (host, the channel's settings, the agent's known_hosts, where for error messages)
PROBES: dict[str, Callable[[str, Any, KnownHosts | None, str], ChannelProbe]] = {
    "tcp": lambda host, settings, _kh, _where: TcpConnectProbe(host, settings),
    "tcp6024": lambda host, settings, _kh, _where: VcApiClient.from_settings(host, settings),
    "ssh": _ssh,
    "snmp": _snmp,
    # the Teams Rooms event log of the PC the agent runs on (an MVC's MCore), not a network channel
    "mtr": lambda _host, settings, _kh, _where: MtrSource(settings),
}

#: one pool runs every device's extra channel probes, alongside the poll thread's HTTP work. It is
#: sized for the scheduler's most concurrent polls (32) times the extra channels one device may have
#: (6), so probes hung on some devices never queue a healthy device's; threads start only when needed.
PROBE_WORKERS = 32 * 6
_PROBE_POOL = concurrent.futures.ThreadPoolExecutor(PROBE_WORKERS, thread_name_prefix="hezo-probe")


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
    known_hosts: KnownHosts | None = None,
    ymcs: YmcsAccount | None = None,
    keep_alive_s: float = 0.0,
) -> Collector:
    """Build the driver ``profile.driver`` names for ``device`` (``clock`` stamps samples, default UTC now).

    ``ymcs`` is the account's shared YMCS access, for devices that opt in to the ``ymcs`` channel;
    ``keep_alive_s`` keeps the device's connection open between polls (0: closed after each).

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
        keep_alive_s=keep_alive_s,
    )
    probes = build_probes(device, profile, known_hosts=known_hosts, ymcs=ymcs)
    if not probes:
        return primary
    return MultiChannelCollector(device.id, device.model, primary, probes, pool=_PROBE_POOL, clock=clock)


def build_probes(
    device: Device,
    profile: Profile,
    *,
    known_hosts: KnownHosts | None = None,
    ymcs: YmcsAccount | None = None,
) -> list[ChannelProbe]:
    """Build the extra channel probes ``device`` opted in to (ports overridden per device).

    ``ymcs`` is account-level, not a profile channel: its probe comes from the shared ``ymcs``.

    Raises:
        ValueError: the device names a channel its profile does not offer, or ``ymcs`` without
            the account's YMCS access.
        ConfigError: a channel's secret (SSH password or key, SNMP community or keys) cannot be read.
    """
    probes: list[ChannelProbe] = []
    for name, choice in device.channels.items():
        if name == "ymcs":
            if ymcs is None:
                raise ValueError(f"device {device.id}: channel ymcs needs the top-level ymcs: section")
            probes.append(ymcs.probe_for(device.id, ymcs_id=choice.ymcs_id, serial=choice.serial))
            continue
        settings = getattr(profile.channels, name)
        if settings is None:
            raise ValueError(f"device {device.id}: profile {profile.name} offers no {name} channel")
        if choice.port is not None:
            settings = settings.model_copy(update={"port": choice.port})
        where = f"device {device.id}, profile {profile.name}, channels"
        probes.append(PROBES[name](device.host, settings, known_hosts, where))
    return probes
