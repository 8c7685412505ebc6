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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Model = Literal["A20", "A30", "MVC"]
Provenance = Literal["documented", "assumed"]


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


class AgentSettings(Strict):
    """How the agent itself runs: where it keeps data, how often and how patiently it polls."""

    data_dir: Path | None = Field(None, description="default: the platform's user data folder")
    profiles_dir: Path | None = Field(None, description="extra device profiles, searched before the built-in ones")
    poll_interval_s: float = Field(60.0, gt=0, le=86400)
    jitter_s: float = Field(5.0, ge=0, le=3600)
    retry_interval_s: float = Field(10.0, gt=0, le=3600)
    timeout_s: float = Field(5.0, gt=0, le=300)
    down_after: int = Field(3, ge=1, le=100, description="k: consecutive failed polls before down")
    up_after: int = Field(2, ge=1, le=100, description="m: consecutive good polls before recovered")
    log_refresh_s: float = Field(900.0, gt=0, description="how often the last collected log is refreshed")
    max_response_bytes: int = Field(2_000_000, ge=1024, le=1_000_000_000)
    max_log_bytes: int = Field(50_000_000, ge=1024, le=10_000_000_000)
    language: Literal["pl", "en"] = "pl"


class Contact(Strict):
    """Who the service desk calls at a site."""

    name: str = Field(min_length=1)
    phone: str = Field(min_length=3)
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class BusinessHours(Strict):
    """The 8x5 window, in the site's time zone."""

    start: time = time(8, 0)
    end: time = time(16, 0)
    days: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri")

    @model_validator(mode="after")
    def _start_before_end(self) -> BusinessHours:
        if self.end <= self.start:
            raise ValueError("end must be later than start")
        return self


class Canary(Strict):
    """A network element (gateway, switch, DNS) that tells a site outage from a device outage."""

    name: str = Field(min_length=1)
    host: str
    port: int | None = Field(None, ge=1, le=65535)

    _host = field_validator("host")(classmethod(lambda cls, v: validate_host(v)))


class Site(Strict):
    """A customer site: where replacements are delivered and whom to call."""

    name: str
    address: str = Field(min_length=5, description="delivery address for replacements")
    contact: Contact
    timezone: str = "Europe/Warsaw"
    business_hours: BusinessHours = BusinessHours()
    canaries: tuple[Canary, ...] = ()

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
            raise ValueError("end must not be earlier than start")
        return self


class Credentials(Strict):
    """A device login; the password comes from an environment variable or a file, never inline."""

    username: str = "admin"
    password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    password_file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Credentials:
        if (self.password_env is None) == (self.password_file is None):
            raise ValueError("give exactly one of password_env or password_file")
        return self


class Device(Strict):
    """One monitored video bar."""

    id: str
    room: str = Field(min_length=1)
    site: str
    model: Model
    host: str
    port: int | None = Field(None, ge=1, le=65535, description="overrides the profile's port")
    profile: str | None = Field(None, description="profile name; default by model")
    credentials: Credentials | None = None

    _id = field_validator("id")(classmethod(lambda cls, v: validate_id(v)))
    _host = field_validator("host")(classmethod(lambda cls, v: validate_host(v)))


class LocalBackendSettings(Strict):
    """The embedded ticket store: SQLite plus attachment files under the data dir."""

    path: Path | None = Field(None, description="folder for the ticket store; default <data_dir>/tickets")


class Ticketing(Strict):
    """Which helpdesk receives tickets, and its settings."""

    backend: Literal["local"] = "local"
    local: LocalBackendSettings = LocalBackendSettings()


class AgentConfig(Strict):
    """The whole agent configuration file."""

    agent: AgentSettings = AgentSettings()
    sites: tuple[Site, ...]
    contracts: tuple[Contract, ...] = ()
    devices: tuple[Device, ...]
    ticketing: Ticketing = Ticketing()

    def site(self, name: str) -> Site:
        """Return the site called ``name`` (validated to exist)."""
        return next(s for s in self.sites if s.name == name)

    def contract_for(self, serial: str) -> Contract | None:
        """Return the contract that lists ``serial``, or None."""
        return next((c for c in self.contracts if serial in c.serials), None)

    def device(self, device_id: str) -> Device:
        """Return the device with ``device_id``.

        Raises:
            KeyError: no such device.
        """
        for dev in self.devices:
            if dev.id == device_id:
                return dev
        raise KeyError(device_id)


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
    port: int = Field(443, ge=1, le=65535)
    tls: Literal["pin", "verify", "insecure"] = Field(
        "pin", description="pin: trust the first certificate seen and alarm on change (TOFU)"
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
    connected_value: bool | str = Field(True, description="value of `connected` that means connected")
    expected: tuple[Literal["camera", "microphone", "speaker", "touch_panel"], ...] = ()
    status: Provenance


class Profile(Strict):
    """A device profile: endpoints, auth and the response → field mapping for one model family."""

    name: str
    description: str = ""
    models: tuple[Model, ...] = Field(min_length=1)
    driver: str = Field("yealink-http", description="registry key of the driver")
    min_firmware: str | None = Field(None, pattern=r"^\d+(\.\d+){3}$")
    http: HttpSettings
    auth: AuthSettings
    endpoints: dict[str, Endpoint]
    fields: dict[
        Literal["model", "firmware", "serial", "mac", "hostname", "uptime_s", "call_state", "peripherals"],
        FieldMap,
    ]
    peripherals: PeripheralMap | None = None

    @model_validator(mode="after")
    def _fields_use_known_endpoints(self) -> Profile:
        for key, fmap in self.fields.items():
            if fmap.endpoint not in self.endpoints:
                known = ", ".join(sorted(self.endpoints))
                raise ValueError(f"fields.{key}.endpoint: unknown endpoint {fmap.endpoint!r} (known: {known})")
        for required in ("model", "firmware", "serial", "mac"):
            if required not in self.fields:
                raise ValueError(f"fields.{required}: required (identity fields model, firmware, serial, mac)")
        return self
