"""Network vs device: canary probes and the judge that tells a site outage from N device outages.

**Canaries** are probed with one TCP connect each (no ICMP: a raw socket needs administrator
rights on Linux and Windows). A canary with a ``port`` is up when it *accepts* a connection
there. A canary without a port is tried on :data:`FALLBACK_PORTS` (443, 80, 53, in that order)
and is up when it accepts *or refuses* one of them: a refusal (TCP reset) is an answer from
the host, so the network path to it works. Only silence (time-out, no route, unreachable) or
a name that does not resolve counts as down.

**The judge** is pure. For each site it takes the latest outcome of every device and canary
(True answered, False failed, None not known yet) and returns a :class:`SiteVerdict`:

* ``SITE_NETWORK_DOWN`` — the site has at least one device and one canary, and every one of
  them failed: raise one site-network incident instead of one ticket per device;
* ``AGENT_OFFLINE`` (for every site at once) — the agent's own uplink check fails and nothing
  anywhere answered, no device and no canary: raise nothing, judge incidents again once the
  agent is back;
* ``NORMAL`` — anything else: devices are judged one by one.

The uplink check is injectable (any ``Callable[[], bool]``). :class:`RouteUplink` is the
default: it asks the operating system for a route (a UDP ``connect``, which sends no packet)
towards the canaries' IP addresses and a documentation address standing for "the default
route", and reports an uplink when one of them leaves through a non-loopback address.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum

from config.schema import AgentConfig, Canary, Site

log = logging.getLogger("hezo.site_network")

#: ports tried, in order, for a canary configured without one
FALLBACK_PORTS: tuple[int, ...] = (443, 80, 53)
#: addresses whose route stands for "the default route" (TEST-NET-1, IPv6 documentation prefix)
DEFAULT_ROUTE_PROBES: tuple[str, ...] = ("192.0.2.1", "2001:db8::1")
#: most canaries probed at the same time
MAX_PARALLEL_PROBES = 16

#: opens (and closes) a TCP connection to host:port within timeout_s, or raises OSError
Connector = Callable[[str, int, float], None]
#: answers "does the agent itself have a network?"
UplinkCheck = Callable[[], bool]


class SiteVerdict(StrEnum):
    """What the latest outcomes at a site say about its network."""

    NORMAL = "normal"
    SITE_NETWORK_DOWN = "site_network_down"
    AGENT_OFFLINE = "agent_offline"


@dataclass(frozen=True, slots=True)
class CanaryResult:
    """One canary probe: ``ok``, the port that decided it, how long it took, and why."""

    name: str
    host: str
    port: int | None
    ok: bool
    latency_ms: float
    detail: str


@dataclass(frozen=True, slots=True)
class SiteObservation:
    """The latest outcome of every device and canary of one site (None = not known yet)."""

    devices: Mapping[str, bool | None]
    canaries: Mapping[str, bool | None]

    def all_failed(self) -> bool:
        """True when the site has devices and canaries and every one of them failed."""
        outcomes = [*self.devices.values(), *self.canaries.values()]
        return bool(self.devices) and bool(self.canaries) and all(o is False for o in outcomes)

    def any_answered(self) -> bool:
        """True when at least one device or canary of the site answered."""
        return any(o is True for o in (*self.devices.values(), *self.canaries.values()))


# --- the judge ---------------------------------------------------------------------------


def judge_site(observation: SiteObservation) -> SiteVerdict:
    """Judge one site on its own: SITE_NETWORK_DOWN when everything there failed, else NORMAL."""
    return SiteVerdict.SITE_NETWORK_DOWN if observation.all_failed() else SiteVerdict.NORMAL


def agent_offline(observations: Iterable[SiteObservation], uplink_ok: bool) -> bool:
    """Return whether the agent itself is offline: no uplink, and nothing at any site answered."""
    return not uplink_ok and not any(obs.any_answered() for obs in observations)


def judge_sites(observations: Mapping[str, SiteObservation], uplink_ok: bool) -> dict[str, SiteVerdict]:
    """Judge every site at one time; AGENT_OFFLINE for all of them when the agent lost the network."""
    if agent_offline(observations.values(), uplink_ok):
        return dict.fromkeys(observations, SiteVerdict.AGENT_OFFLINE)
    return {name: judge_site(obs) for name, obs in observations.items()}


# --- canary probes -----------------------------------------------------------------------


def tcp_connect(host: str, port: int, timeout_s: float) -> None:
    """Open and close a TCP connection to ``host``:``port``.

    Raises:
        OSError: refused, timed out, unreachable, or the name did not resolve.
    """
    with socket.create_connection((host, port), timeout=timeout_s):
        pass


def probe_canary(canary: Canary, timeout_s: float, *, connect: Connector = tcp_connect) -> CanaryResult:
    """Probe one canary (see the module docstring for what counts as up); never raises."""
    started = time.monotonic()

    def result(port: int | None, ok: bool, detail: str) -> CanaryResult:
        latency_ms = (time.monotonic() - started) * 1000.0
        return CanaryResult(canary.name, canary.host, port, ok, latency_ms, detail)

    if canary.port is not None:
        try:
            connect(canary.host, canary.port, timeout_s)
        except OSError as err:
            return result(canary.port, False, _describe(err))
        return result(canary.port, True, "connected")
    last = "no port tried"
    for port in FALLBACK_PORTS:
        try:
            connect(canary.host, port, timeout_s)
        except ConnectionRefusedError:
            return result(port, True, "refused (the host answered)")
        except socket.gaierror as err:
            return result(None, False, _describe(err))
        except OSError as err:
            last = f"port {port}: {_describe(err)}"
            continue
        return result(port, True, "connected")
    return result(None, False, last)


def probe_site(site: Site, *, connect: Connector = tcp_connect) -> dict[str, CanaryResult]:
    """Probe every canary of ``site`` in parallel with the site's canary timeout; keyed by name."""
    if not site.canaries:
        return {}
    timeout_s = site.site_network.canary_timeout_s
    workers = min(MAX_PARALLEL_PROBES, len(site.canaries))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="canary") as pool:
        results = list(pool.map(lambda c: probe_canary(c, timeout_s, connect=connect), site.canaries))
    for res in results:
        if not res.ok:
            log.info(
                "event=canary_failed site=%s canary=%s host=%s detail=%s",
                site.name,
                res.name,
                res.host,
                res.detail,
            )
    return {res.name: res for res in results}


def _describe(err: OSError) -> str:
    if isinstance(err, socket.gaierror):
        return "name not resolved"
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, ConnectionRefusedError):
        return "refused"
    return err.strerror or type(err).__name__


# --- the agent's own uplink --------------------------------------------------------------


def local_address_towards(address: str) -> str | None:
    """Return the local address the OS would send from towards ``address`` (None: no route).

    A UDP ``connect`` only looks the route up; no packet leaves the machine.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((address, 9))
            return str(sock.getsockname()[0])
    except OSError:
        return None


class RouteUplink:
    """The default uplink check: is there a route, through a real interface, towards the sites?"""

    def __init__(
        self,
        targets: Iterable[str],
        *,
        local_address: Callable[[str], str | None] = local_address_towards,
    ) -> None:
        self.targets = tuple(dict.fromkeys(targets))
        self._local_address = local_address

    @classmethod
    def for_config(cls, config: AgentConfig) -> RouteUplink:
        """Check routes towards every canary given as an IP address, and the default route."""
        literal = [c.host for site in config.sites for c in site.canaries if _is_ip(c.host)]
        return cls([*literal, *DEFAULT_ROUTE_PROBES])

    def __call__(self) -> bool:
        """Return True when some target is routed through a non-loopback local address."""
        for target in self.targets:
            local = self._local_address(target)
            if local is not None and _usable_source(local):
                return True
        return False


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _usable_source(local: str) -> bool:
    try:
        addr = ipaddress.ip_address(local.split("%", 1)[0])
    except ValueError:
        return False
    return not (addr.is_loopback or addr.is_unspecified)
