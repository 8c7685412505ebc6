"""Incident settings: the priority, thresholds and debounce of every problem kind.

The section ``incidents:`` of the config file. Each problem kind that a detector in
:mod:`agent.findings` raises has its own block with ``enabled``, ``priority``, ``raise_after``
(consecutive evaluations the problem must be seen before it opens a ticket), ``clear_after``
(consecutive evaluations without it before its ticket gets a recovery note), an optional
``escalate`` rule, and the thresholds of its detector. ``offline``, ``flapping`` and
``site_network`` are judged elsewhere (``agent.down_after``, ``flapping:``, canaries): here they
only take a priority. The defaults are the incident policy of the design (HEZO+ seed).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from config.base import Strict

#: a HEZO+ priority as the config writes it (``uploader.models.Priority`` values)
PriorityName = Literal["critical", "medium", "low"]
PeripheralKind = Literal["camera", "microphone", "speaker", "touch_panel"]
RecoveryAction = Literal["resolve", "comment"]

#: consecutive evaluations with the problem before it opens a ticket
RaiseAfter = Annotated[int, Field(ge=1, le=1000)]
#: consecutive evaluations without the problem before its ticket gets a recovery note
ClearAfter = Annotated[int, Field(ge=1, le=1000)]


class EscalationSettings(Strict):
    """Move an open problem's ticket to a higher priority once it has lasted ``after_hours``."""

    after_hours: float = Field(gt=0, le=24 * 365, description="hours the problem must be open first")
    to: PriorityName = Field(description="the priority it moves to (never lowers it)")


class KindPriority(Strict):
    """A problem kind judged elsewhere: only its priority is set here."""

    priority: PriorityName


class DetectorSettings(Strict):
    """What every detector shares: on/off, priority, debounce and escalation."""

    enabled: bool = True
    priority: PriorityName = "medium"
    raise_after: RaiseAfter = 1
    clear_after: ClearAfter = 1
    escalate: EscalationSettings | None = Field(default=None, description="default: never escalate")


class MtrHeartbeatSettings(DetectorSettings):
    """Teams Rooms (MVC) heartbeat error (SRS-App event 2001) that persists."""

    priority: PriorityName = "critical"
    clear_after: ClearAfter = 2
    persist_minutes: float = Field(
        default=15.0, ge=0, le=24 * 60, description="how long the heartbeat must be in error"
    )
    stale_is_error: bool = Field(default=False, description="no fresh heartbeat counts as an error")


class BootLoopSettings(DetectorSettings):
    """A device that keeps rebooting: ``reboots`` uptime resets within ``window_minutes``."""

    priority: PriorityName = "critical"
    reboots: int = Field(default=3, ge=2, le=100)
    window_minutes: float = Field(default=30.0, gt=0, le=24 * 60)


class PeripheralSettings(DetectorSettings):
    """A camera, microphone, speaker or touch panel disconnected (one ticket per kind)."""

    raise_after: RaiseAfter = 2
    clear_after: ClearAfter = 2
    kinds: tuple[PeripheralKind, ...] = ("camera", "microphone", "speaker", "touch_panel")
    missing_expected: bool = Field(
        default=True, description="a kind the profile expects but the device does not list is disconnected"
    )


class AppRestartsSettings(DetectorSettings):
    """The Teams Rooms application (MTR event 4000) or the app uptime restarting repeatedly."""

    restarts: int = Field(default=3, ge=1, le=1000)
    window_minutes: float = Field(default=60.0, gt=0, le=7 * 24 * 60)


class LogErrorsSettings(DetectorSettings):
    """An error spike in the device's black-box syslog."""

    clear_after: ClearAfter = 2
    threshold: int = Field(default=20, ge=1, le=1_000_000, description="error lines in the window")
    window_minutes: float = Field(default=15.0, gt=0, le=24 * 60)
    max_severity: int = Field(default=3, ge=0, le=7, description="3 = err and worse (RFC 5424)")


class SlowSettings(DetectorSettings):
    """The device answers, but slower than ``threshold_ms`` for ``raise_after`` polls in a row."""

    raise_after: RaiseAfter = 3
    clear_after: ClearAfter = 3
    threshold_ms: float = Field(default=3000.0, gt=0, le=600_000)


class ChannelDownSettings(DetectorSettings):
    """One channel (ssh, snmp, tcp6024, ...) fails while the others answer (one ticket each)."""

    raise_after: RaiseAfter = 3
    clear_after: ClearAfter = 2


class FirmwareSettings(DetectorSettings):
    """Firmware below the profile's ``min_firmware`` or behind the site's majority."""

    priority: PriorityName = "low"
    check_minimum: bool = True
    check_site_majority: bool = True
    majority_min_devices: int = Field(
        default=3, ge=2, le=10_000, description="devices of one model at a site before a majority counts"
    )


class ConfigDriftSettings(DetectorSettings):
    """The configuration a device reports differs from its saved baseline."""

    priority: PriorityName = "low"
    ignore_keys: tuple[str, ...] = Field(
        default=(), description="settings that may change freely (a dotted key, or a prefix of keys)"
    )
    check_every_minutes: float = Field(
        default=360.0, gt=0, le=7 * 24 * 60, description="how often the configuration is read from the device"
    )


class ContractSettings(DetectorSettings):
    """The device's HEZO+ contract ends soon or has ended."""

    priority: PriorityName = "low"
    warn_days: int = Field(default=60, ge=0, le=3650)
    uncovered: bool = Field(default=False, description="also raise for a device in no contract")


class ClockSkewSettings(DetectorSettings):
    """The device's clock differs from the agent's by more than ``max_skew_s``."""

    priority: PriorityName = "low"
    raise_after: RaiseAfter = 3
    clear_after: ClearAfter = 2
    max_skew_s: float = Field(default=120.0, gt=0, le=365 * 86400)


class CertExpirySettings(DetectorSettings):
    """The device's TLS certificate expires within ``warn_days`` (or has expired)."""

    priority: PriorityName = "low"
    warn_days: int = Field(default=30, ge=0, le=3650)


class IncidentSettings(Strict):
    """The ``incidents:`` section: ticket life cycle, and every problem kind's rules."""

    reopen_window_hours: float = Field(
        default=24.0, ge=0, le=24 * 365, description="a recurrence this soon reopens the same ticket"
    )
    on_recovery: RecoveryAction = Field(
        default="resolve", description="resolve the ticket, or only comment on it"
    )
    offline: KindPriority = Field(default_factory=lambda: KindPriority(priority="critical"))
    flapping: KindPriority = Field(default_factory=lambda: KindPriority(priority="medium"))
    site_network: KindPriority = Field(default_factory=lambda: KindPriority(priority="critical"))
    mtr_heartbeat: MtrHeartbeatSettings = Field(default_factory=MtrHeartbeatSettings)
    boot_loop: BootLoopSettings = Field(default_factory=BootLoopSettings)
    peripheral: PeripheralSettings = Field(default_factory=PeripheralSettings)
    app_restarts: AppRestartsSettings = Field(default_factory=AppRestartsSettings)
    log_errors: LogErrorsSettings = Field(default_factory=LogErrorsSettings)
    slow: SlowSettings = Field(default_factory=SlowSettings)
    identity_changed: DetectorSettings = Field(default_factory=DetectorSettings)
    channel_down: ChannelDownSettings = Field(default_factory=ChannelDownSettings)
    firmware: FirmwareSettings = Field(default_factory=FirmwareSettings)
    firmware_update_stuck: DetectorSettings = Field(default_factory=DetectorSettings)
    config_drift: ConfigDriftSettings = Field(default_factory=ConfigDriftSettings)
    contract: ContractSettings = Field(default_factory=ContractSettings)
    clock_skew: ClockSkewSettings = Field(default_factory=ClockSkewSettings)
    cert_expiry: CertExpirySettings = Field(default_factory=CertExpirySettings)

    @model_validator(mode="after")
    def _escalation_goes_up(self) -> IncidentSettings:
        from config.schema import FieldProblem

        rank = {"low": 0, "medium": 1, "critical": 2}
        for name in type(self).model_fields:
            block = getattr(self, name)
            rule = block.escalate if isinstance(block, DetectorSettings) else None
            if rule is not None and rank[rule.to] <= rank[block.priority]:
                raise FieldProblem(
                    f"{name}.escalate.to",
                    f"must be a higher priority than {name}.priority ({block.priority}), got {rule.to}",
                )
        return self

    def detector(self, kind: str) -> DetectorSettings | None:
        """Return the settings block of detector ``kind`` (None for offline, flapping, site_network)."""
        block = getattr(self, kind, None)
        return block if isinstance(block, DetectorSettings) else None

    def priority_of(self, kind: str) -> PriorityName:
        """Return the configured priority of problem ``kind``.

        Raises:
            KeyError: ``kind`` is not a problem kind.
        """
        block = getattr(self, kind, None) if kind in type(self).model_fields else None
        if not isinstance(block, DetectorSettings | KindPriority):
            raise KeyError(kind)
        return block.priority
