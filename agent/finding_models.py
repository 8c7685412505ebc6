"""The values the detectors produce and consume: problem kinds, findings, their context.

No logic beyond small properties: :mod:`agent.detectors` judges, :mod:`agent.finding_tracker`
debounces, :mod:`agent.findings` is the public face of all three.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from agent.models import PollOutcome
from collectors.models import HealthSample
from config.schema import Contract, Device, Profile
from uploader.models import Priority

if TYPE_CHECKING:
    from agent.incidents import Problem


class ProblemKind(StrEnum):
    """The problem a ticket is about, as tickets and ``demo --json`` name it."""

    OFFLINE = "offline"
    FLAPPING = "flapping"
    SITE_NETWORK = "site_network"
    PERIPHERAL = "peripheral"
    APP_RESTARTS = "app_restarts"
    LOG_ERRORS = "log_errors"
    SLOW = "slow"
    IDENTITY_CHANGED = "identity_changed"
    CHANNEL_DOWN = "channel_down"
    MTR_HEARTBEAT = "mtr_heartbeat"
    BOOT_LOOP = "boot_loop"
    FIRMWARE = "firmware"
    FIRMWARE_UPDATE_STUCK = "firmware_update_stuck"
    CONFIG_DRIFT = "config_drift"
    CONTRACT = "contract"
    CLOCK_SKEW = "clock_skew"
    CERT_EXPIRY = "cert_expiry"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem a detector sees now.

    ``subject`` tells apart several problems of one kind (``camera`` vs ``microphone``, channel
    ``ssh`` vs ``snmp``); the dedup key of its ticket is ``site/device/`` + :attr:`name`.
    """

    kind: ProblemKind
    priority: Priority
    subject: str = ""
    summary_en: str = ""
    summary_pl: str = ""
    details: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def name(self) -> str:
        """The problem part of the dedup key: ``kind`` or ``kind:subject``."""
        return f"{self.kind.value}:{self.subject}" if self.subject else self.kind.value

    def summary(self, language: str) -> str:
        """Return the one-line summary in ``language`` (``pl`` or ``en``; anything else: English)."""
        return self.summary_pl if language == "pl" else self.summary_en

    def to_problem(self, language: str, first_seen: datetime | None = None) -> Problem:
        """Return the :class:`agent.incidents.Problem` that opens this finding's ticket."""
        from agent.incidents import Problem

        return Problem(
            kind=self.kind.value,
            priority=self.priority,
            subject=self.subject,
            summary=self.summary(language),
            details=dict(self.details),
            first_seen=first_seen,
        )


@dataclass(frozen=True, slots=True)
class LogLine:
    """One black-box line reduced to what the error-rate detector needs."""

    at: datetime
    severity: int | None


@dataclass(frozen=True, slots=True)
class DeviceHistory:
    """The little a detector needs from earlier polls: boots and application restarts seen.

    ``boot_at`` is the newest estimate of when the device booted (poll time minus uptime);
    ``boots`` and ``app_restarts`` are the distinct instants seen, oldest first, pruned to the
    longest window a detector looks at.
    """

    boot_at: datetime | None = None
    boots: tuple[datetime, ...] = ()
    app_boot_at: datetime | None = None
    app_restarts: tuple[datetime, ...] = ()


@dataclass(frozen=True, slots=True)
class FindingContext:
    """Everything the detectors look at for one device after one poll.

    Optional inputs left at None mean "not known": the detectors that need them do not judge
    (their open findings neither raise nor clear). All datetimes are timezone-aware.

    Attributes:
        device: the device's configuration.
        outcome: this poll; its ``sample`` is None when the device did not answer.
        now: the evaluation time (normally ``outcome.at``).
        profile: the device's profile (``min_firmware``, expected peripherals).
        history: boots and app restarts so far (see :func:`observe`).
        contract: the HEZO+ contract that lists the device's serial, if any.
        site_firmwares: firmware of every device of this model at the site, this one included.
        site_timezone: the site's IANA zone (a contract's end date is a site date).
        log_lines: the black-box lines of the error window (see :func:`parse_blackbox_lines`).
        config: the configuration the device reports now, as a dict.
        config_baseline: the saved baseline of that configuration.
        device_time: the device's own clock reading, taken with this poll.
        cert_not_after: when the device's TLS certificate expires.
        updating_since: since when the device reports a firmware update.
        update_overdue: the update has run longer than ``firmware_update.max_update_minutes``.
    """

    device: Device
    outcome: PollOutcome
    now: datetime
    profile: Profile | None = None
    history: DeviceHistory = DeviceHistory()
    contract: Contract | None = None
    site_firmwares: tuple[str, ...] = ()
    site_timezone: str = "Europe/Warsaw"
    log_lines: tuple[LogLine, ...] | None = None
    config: Mapping[str, object] | None = None
    config_baseline: Mapping[str, object] | None = None
    device_time: datetime | None = None
    cert_not_after: datetime | None = None
    updating_since: datetime | None = None
    update_overdue: bool = False

    @property
    def sample(self) -> HealthSample | None:
        """What the poll learned, or None when the device did not answer."""
        return self.outcome.sample


@dataclass(frozen=True, slots=True)
class Assessment:
    """The findings active now, and the kinds that could be judged (the others keep their state)."""

    findings: tuple[Finding, ...]
    judged: frozenset[ProblemKind]


# --- inputs ------------------------------------------------------------------------------
