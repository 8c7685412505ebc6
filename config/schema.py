"""The typed configuration model: one YAML file, strictly validated.

Every model forbids unknown keys, so a typo is an error that names its key path instead of a
setting silently ignored. Secrets never live in the YAML: a credential names an environment
variable (``password_env``) or a file (``password_file``).
"""

from __future__ import annotations

import ipaddress
import re
from datetime import date, time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from config.api import ApiSettings
from config.base import ENV_VAR_PATTERN, Provenance, Strict
from config.bundles import BundleSettings, RedactionSettings
from config.channels import ChannelName, DeviceChannel, ProfileChannels, SyslogSettings, TrapReceiverSettings
from config.commands import CommandSettings
from config.forwarding import ForwardingSettings
from config.incidents import IncidentSettings
from config.quiet import FirmwareUpdateSettings, FlappingSettings, QuietSettings, SiteNetworkSettings
from config.sla import SlaSettings
from config.ticketing import (
    EmailSettings,
    FreshdeskSettings,
    JiraSettings,
    RedmineSettings,
    ServiceNowSettings,
    WebhookSettings,
    ZendeskSettings,
)
from config.ymcs import YmcsSettings

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Model = Literal["A20", "A30", "MVC"]


class FieldProblem(ValueError):
    """A cross-field check that failed, naming the key (relative to the model) it is about.

    The loader appends ``key`` to the model's location, so the user reads
    ``contracts[0].end: ...`` instead of a message pinned on the whole contract.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def validate_host(value: str) -> str:
    """Accept an IPv4/IPv6 address or a DNS host name.

    Raises:
        ValueError: with the message the user sees after the key path.
    """
    text = value.strip()
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", text) or not _HOSTNAME.match(text):
        raise ValueError("not a valid host name or IP")
    return text


def validate_id(value: str) -> str:
    """Accept an identifier made of letters, digits, ``_``, ``.`` and ``-``.

    Raises:
        ValueError: naming the allowed characters.
    """
    if not _ID.match(value):
        raise ValueError("use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return value


Host = Annotated[str, Field(min_length=1)]
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
FIRMWARE_PATTERN = r"^\d+(\.\d+){3}$"


class AgentSettings(Strict):
    """How the agent itself runs: where it keeps data, how often and how patiently it polls."""

    data_dir: Path | None = Field(default=None, description="default: the platform's user data folder")
    profiles_dir: Path | None = Field(
        default=None, description="extra device profiles, searched before the built-in ones"
    )
    poll_interval_s: float = Field(default=60.0, gt=0, le=86400)
    jitter_s: float = Field(default=5.0, ge=0, le=3600)
    retry_interval_s: float = Field(default=10.0, gt=0, le=3600)
    timeout_s: float = Field(default=5.0, gt=0, le=300)
    down_after: int = Field(default=3, ge=1, le=100, description="k: consecutive failed polls before down")
    up_after: int = Field(default=2, ge=1, le=100, description="m: consecutive good polls before recovered")
    log_refresh_s: float = Field(
        default=900.0, gt=0, description="how often the last collected log is refreshed"
    )
    keep_alive_s: float = Field(
        default=90.0, ge=0, le=3600, description="a device's connection stays open this long between polls"
    )
    max_response_bytes: int = Field(default=2_000_000, ge=1024, le=1_000_000_000)
    max_log_bytes: int = Field(default=50_000_000, ge=1024, le=10_000_000_000)
    language: Literal["pl", "en"] = "pl"
    log_max_bytes: int = Field(
        default=10_000_000, ge=10_000, le=10_000_000_000, description="the agent's log rotates at this size"
    )
    log_backups: int = Field(default=5, ge=1, le=1000, description="rotated log files kept")


class Contact(Strict):
    """Who the service desk calls at a site."""

    name: str = Field(min_length=1)
    phone: str = Field(min_length=3)
    email: str = Field(pattern=EMAIL_PATTERN)


class BusinessHours(Strict):
    """The 8x5 window, in the site's time zone."""

    start: time = time(8, 0)
    end: time = time(16, 0)
    days: tuple[Weekday, ...] = Field(default=("mon", "tue", "wed", "thu", "fri"), min_length=1)

    @model_validator(mode="after")
    def _start_before_end(self) -> BusinessHours:
        if self.end <= self.start:
            raise FieldProblem("end", f"must be later than start {self.start:%H:%M}, got {self.end:%H:%M}")
        return self


class Canary(Strict):
    """A network element (gateway, switch, DNS) that tells a site outage from a device outage."""

    name: str = Field(min_length=1)
    host: str
    port: int | None = Field(default=None, ge=1, le=65535)

    _host = field_validator("host")(classmethod(lambda cls, v: validate_host(v)))


class Site(Strict):
    """A customer site: where replacements are delivered and whom to call."""

    name: str
    address: str = Field(min_length=5, description="delivery address for replacements")
    contact: Contact
    timezone: str = "Europe/Warsaw"
    business_hours: BusinessHours = BusinessHours()
    canaries: tuple[Canary, ...] = ()
    site_network: SiteNetworkSettings = Field(
        default_factory=SiteNetworkSettings, description="what a site-wide network outage raises"
    )
    quiet: QuietSettings = Field(
        default_factory=QuietSettings, description="maintenance windows and power schedules of the site"
    )

    _name = field_validator("name")(classmethod(lambda cls, v: validate_id(v)))

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/Warsaw)") from err
        return value


class Contract(Strict):
    """A HEZO+ service contract covering a set of device serial numbers."""

    number: str = Field(min_length=1)
    start: date
    end: date
    serials: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _end_after_start(self) -> Contract:
        if self.end < self.start:
            raise FieldProblem("end", f"{self.end:%Y-%m-%d} is earlier than start {self.start:%Y-%m-%d}")
        return self


class Credentials(Strict):
    """A device login; the password comes from an environment variable or a file, never inline."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    username: str = Field(default="admin", min_length=1)
    password_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    password_file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Credentials:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give only one of password_env or password_file, not both")
        if self.password_env is None and self.password_file is None:
            raise ValueError(
                "give password_env (the name of an environment variable) "
                "or password_file (a file holding only the password)"
            )
        return self


class Device(Strict):
    """One monitored video bar."""

    id: str
    room: str = Field(min_length=1)
    site: str
    model: Model
    host: str
    port: int | None = Field(default=None, ge=1, le=65535, description="overrides the profile's port")
    profile: str | None = Field(default=None, description="profile name; default by model")
    credentials: Credentials | None = None
    channels: dict[ChannelName, DeviceChannel] = Field(
        default_factory=dict, description="extra channels of the profile this device's site offers"
    )
    quiet: QuietSettings = Field(
        default_factory=QuietSettings, description="quiet periods of this device, besides its site's"
    )

    _id = field_validator("id")(classmethod(lambda cls, v: validate_id(v)))
    _host = field_validator("host")(classmethod(lambda cls, v: validate_host(v)))


class LocalBackendSettings(Strict):
    """The embedded ticket store: SQLite plus attachment files under the data dir."""

    path: Path | None = Field(
        default=None, description="folder for the ticket store; default <data_dir>/tickets"
    )


class OutboxSettings(Strict):
    """The durable ticket outbox: attachment spool quota, retry backoff, when to give up."""

    quota_mb: int = Field(default=512, ge=1, le=1_048_576, description="disk quota of spooled attachments")
    max_attempts: int | None = Field(default=None, ge=1, description="reject after this many; default never")
    backoff_base_s: float = Field(default=5.0, gt=0, le=3600, description="first retry wait")
    backoff_cap_s: float = Field(default=600.0, gt=0, le=86400, description="longest retry wait")

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> OutboxSettings:
        if self.backoff_cap_s < self.backoff_base_s:
            raise FieldProblem("backoff_cap_s", f"must be at least backoff_base_s ({self.backoff_base_s:g})")
        return self


class Ticketing(Strict):
    """Which helpdesk receives tickets, and its settings."""

    backend: Literal["local", "email", "webhook", "jira", "zendesk", "servicenow", "freshdesk", "redmine"] = (
        "local"
    )
    local: LocalBackendSettings = LocalBackendSettings()
    email: EmailSettings | None = Field(default=None, description="required when backend is email")
    webhook: WebhookSettings | None = Field(default=None, description="required when backend is webhook")
    jira: JiraSettings | None = Field(default=None, description="required when backend is jira")
    zendesk: ZendeskSettings | None = Field(default=None, description="required when backend is zendesk")
    servicenow: ServiceNowSettings | None = Field(default=None, description="when backend is servicenow")
    freshdesk: FreshdeskSettings | None = Field(default=None, description="when backend is freshdesk")
    redmine: RedmineSettings | None = Field(default=None, description="when backend is redmine")
    outbox: OutboxSettings = Field(default_factory=OutboxSettings, description="delivery queue and spool")

    @model_validator(mode="after")
    def _chosen_backend_configured(self) -> Ticketing:
        if getattr(self, self.backend, None) is None:
            problem = f"required when backend is {self.backend}: add a ticketing.{self.backend} section"
            raise FieldProblem(self.backend, problem)
        return self


class AgentConfig(Strict):
    """The whole agent configuration file."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    agent: AgentSettings = AgentSettings()
    sites: tuple[Site, ...]
    contracts: tuple[Contract, ...] = ()
    devices: tuple[Device, ...]
    ticketing: Ticketing = Ticketing()
    syslog: SyslogSettings | None = Field(None, description="receive the devices' syslog into black boxes")
    traps: TrapReceiverSettings | None = Field(None, description="SNMP v2c traps trigger a confirm poll")
    ymcs: YmcsSettings | None = Field(None, description="the account's YMCS cloud access (channel ymcs)")
    sla: SlaSettings = Field(default_factory=SlaSettings, description="HEZO+ SLA clocks on every ticket")
    flapping: FlappingSettings = Field(default_factory=FlappingSettings, description="flap detection")
    firmware_update: FirmwareUpdateSettings = Field(
        default_factory=FirmwareUpdateSettings, description="how long an update keeps a device quiet"
    )
    incidents: IncidentSettings = Field(
        default_factory=IncidentSettings, description="priority, thresholds and debounce of every problem"
    )
    bundles: BundleSettings = Field(
        default_factory=BundleSettings, description="log bundles: size and time caps, the MVC log ZIP"
    )
    redaction: RedactionSettings = Field(
        default_factory=RedactionSettings, description="extra secret patterns masked everywhere"
    )
    api: ApiSettings = Field(
        default_factory=ApiSettings, description="local API, status page and /metrics (loopback by default)"
    )
    forwarding: ForwardingSettings | None = Field(
        None, description="forward device syslog and agent events to a central collector (RFC 5424/TCP)"
    )
    commands: CommandSettings = Field(
        default_factory=CommandSettings, description="/logs in ticket comments: who may, how often"
    )

    def site(self, name: str) -> Site:
        """Return the site called ``name`` (validated to exist)."""
        return next(s for s in self.sites if s.name == name)

    def contract_for(self, serial: str) -> Contract | None:
        """Return the contract that lists ``serial``, or None."""
        return next((c for c in self.contracts if serial in c.serials), None)

    _device_index: tuple[tuple[Device, ...], dict[str, Device]] | None = PrivateAttr(default=None)

    def device(self, device_id: str) -> Device:
        """Return the device with ``device_id`` (an index built on first use: every poll asks).

        Raises:
            KeyError: no such device.
        """
        cached = self._device_index
        if cached is None or cached[0] is not self.devices:  # a tuple: same object, same devices
            cached = self._device_index = (self.devices, {dev.id: dev for dev in self.devices})
        return cached[1][device_id]


# --- device profiles ---------------------------------------------------------------------


class Endpoint(Strict):
    """One HTTP resource on the device."""

    path: str = Field(pattern=r"^/")
    method: Literal["GET", "POST"] = "GET"
    status: Provenance


class FieldMap(Strict):
    """Where a sample field comes from: an endpoint and a dotted JSON path inside its answer."""

    endpoint: str
    path: str = Field(min_length=1)
    status: Provenance


class HttpSettings(Strict):
    """How to reach the device's web interface."""

    scheme: Literal["https", "http"] = "https"
    port: int = Field(default=443, ge=1, le=65535)
    tls: Literal["pin", "verify", "insecure"] = Field(
        default="pin", description="pin: trust the first certificate seen and alarm on change (TOFU)"
    )
    status: Provenance


class AuthSettings(Strict):
    """How the driver logs in."""

    kind: Literal["token", "none"] = "token"
    login: Endpoint | None = None
    username_field: str = "username"
    password_field: str = "password"
    token_path: str = "data.token"
    token_header: str = "X-Auth-Token"
    status: Provenance


class PeripheralMap(Strict):
    """How to read one item of the peripherals list, and which kinds the model must have."""

    kind: str = "type"
    name: str = "name"
    connected: str = "connected"
    connected_value: bool | str = Field(default=True, description="value of `connected` that means connected")
    expected: tuple[Literal["camera", "microphone", "speaker", "touch_panel"], ...] = ()
    status: Provenance


#: what ``fields.update_state`` reads as "an update is running" when a profile names no values
UPDATING_VALUES = ("upgrading", "updating", "downloading", "installing")


class UpdateStateMap(Strict):
    """Which values of the ``update_state`` field mean a firmware update is in progress."""

    updating_values: tuple[bool | Annotated[str, Field(min_length=1)], ...] = Field(
        default=UPDATING_VALUES,
        min_length=1,
        description="values meaning an update is running (text compared case-insensitively)",
    )
    status: Provenance


class Profile(Strict):
    """A device profile: endpoints, auth and the response → field mapping for one model family."""

    name: str
    description: str = ""
    models: tuple[Model, ...] = Field(min_length=1)
    driver: str = Field(default="yealink-http", description="registry key of the driver")
    min_firmware: str | None = Field(default=None, pattern=FIRMWARE_PATTERN)
    http: HttpSettings
    auth: AuthSettings
    endpoints: dict[str, Endpoint]
    fields: dict[
        Literal[
            "model", "firmware", "serial", "mac", "hostname", "uptime_s", "call_state", "peripherals",
            "update_state", "config",
        ],
        FieldMap,
    ]
    peripherals: PeripheralMap | None = None
    update_state: UpdateStateMap | None = Field(
        default=None, description="how to read fields.update_state (default: UPDATING_VALUES)"
    )
    channels: ProfileChannels = ProfileChannels()

    @model_validator(mode="after")
    def _fields_use_known_endpoints(self) -> Profile:
        for key, fmap in self.fields.items():
            if fmap.endpoint not in self.endpoints:
                known = ", ".join(sorted(self.endpoints))
                problem = f"unknown endpoint {fmap.endpoint!r} (endpoints defined: {known})"
                raise FieldProblem(f"fields.{key}.endpoint", problem)
        if self.auth.kind == "token" and self.auth.login is None:
            raise FieldProblem(
                "auth.login", "required when auth.kind is token: the endpoint that answers the login"
            )
        for required in ("model", "firmware", "serial", "mac"):
            if required not in self.fields:
                problem = "required key is missing (every profile maps model, firmware, serial, mac)"
                raise FieldProblem(f"fields.{required}", problem)
        return self
