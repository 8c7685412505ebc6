"""Typed, frozen values that cross the collector boundary.

Units are in the names (``uptime_s``, ``latency_ms``). Everything here is immutable so a
sample can be handed to the state machine, the store and a ticket without copying.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

PERIPHERAL_KINDS = ("camera", "microphone", "speaker", "touch_panel")
#: channel reasons that say nothing about the device: a cloud outage, a device the cloud cannot
#: match, a status the cloud does not know. Such a channel is neither ok nor failing.
NEUTRAL_REASONS = frozenset({"cloud_unreachable", "not_matched", "status_unknown"})


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """Identity of a device as it reports itself."""

    model: str
    firmware: str
    serial: str
    mac: str
    hostname: str | None = None


@dataclass(frozen=True, slots=True)
class Peripheral:
    """One peripheral (camera, microphone, speaker, touch panel) and whether it is connected."""

    kind: str
    name: str
    connected: bool


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One service test within a poll: what was checked, whether it passed, how long it took."""

    check: str
    ok: bool
    latency_ms: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ChannelResult:
    """What one channel (http, ssh, snmp, tcp, syslog, mtr, ymcs) saw during one poll.

    ``reason`` is ``ok``, a :mod:`collectors.errors` reason tag, or one of
    :data:`NEUTRAL_REASONS` (then ``ok`` is False but the channel does not count as failing);
    ``fields`` carries what the channel learned (e.g. ``{"sys_uptime_s": 1234}``) for the poll
    to merge into the sample.
    """

    channel: str
    ok: bool
    reason: str
    latency_ms: float
    detail: str = ""
    fields: dict[str, object] = field(default_factory=dict)

    @property
    def neutral(self) -> bool:
        """True when the channel could not judge the device (e.g. its cloud is unreachable)."""
        return not self.ok and self.reason in NEUTRAL_REASONS


@dataclass(frozen=True, slots=True)
class HealthSample:
    """Everything one successful poll learned about a device."""

    device_id: str
    taken_at: datetime
    facts: DeviceFacts
    uptime_s: int | None = None
    call_state: str | None = None
    peripherals: tuple[Peripheral, ...] = ()
    checks: tuple[CheckResult, ...] = ()
    latency_ms: float = 0.0
    channels: tuple[ChannelResult, ...] = ()
    #: True while the device reports a firmware update in progress, False when it reports none,
    #: None when nothing said (its profile maps no update state, or only side channels answered)
    updating: bool | None = None
    #: the device's own clock at ``taken_at`` (``taken_at`` + the offset its HTTP ``Date`` header
    #: showed, an ASSUMED signal); None when the device sent no usable Date header
    device_time: datetime | None = None
    #: when the TLS certificate the device presented expires; None over plain HTTP
    cert_not_after: datetime | None = None

    @property
    def failing_channels(self) -> tuple[str, ...]:
        """Names of the channels that failed while the device still answered on others (not neutral ones)."""
        return tuple(c.channel for c in self.channels if not c.ok and not c.neutral)


@dataclass(frozen=True, slots=True)
class LogBundle:
    """A log archive pulled from a device and stored on disk."""

    device_id: str
    taken_at: datetime
    path: Path
    size_bytes: int
    sha256: str
    sources: tuple[str, ...] = field(default_factory=tuple)
