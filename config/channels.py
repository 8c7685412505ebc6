"""Settings of the channels a profile may offer besides its HTTP interface.

A profile lists the channels its model has (``channels:``); a device opts in to the ones its
site really offers (``devices[].channels:``), optionally overriding the port. Every item says
whether the interface is ``documented`` or ``assumed``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from config.base import ENV_VAR_PATTERN, Provenance, Strict

VCAPI_PORT = 6024
MiB = 1024 * 1024
TRAP_PORT = 162
ChannelName = Literal["tcp", "tcp6024", "ssh", "snmp", "mtr", "ymcs"]
#: channels configured once per account (a top-level section), never offered by a profile
ACCOUNT_CHANNELS = frozenset({"ymcs"})


class TcpChannel(Strict):
    """Plain TCP reachability of one port (connect latency only)."""

    port: int = Field(ge=1, le=65535)
    timeout_s: float = Field(default=3.0, gt=0, le=60)
    status: Provenance = "assumed"


class VcApiChannel(Strict):
    """The VC control API on TCP 6024: documented for VC110–VC880, ``assumed`` for A20/A30/MVC."""

    port: int = Field(default=VCAPI_PORT, ge=1, le=65535)
    query_status: bool = False
    timeout_s: float = Field(default=3.0, gt=0, le=60)
    max_line_bytes: int = Field(default=4096, ge=64, le=1_048_576)
    max_bytes: int = Field(default=65_536, ge=64, le=16_777_216)
    status: Provenance = "assumed"


class ProfileChannels(Strict):
    """The extra channels a model offers (none by default)."""

    tcp: TcpChannel | None = None
    tcp6024: VcApiChannel | None = None
    ssh: SshChannel | None = None
    snmp: SnmpChannel | None = None
    mtr: MtrChannel | None = None


class DeviceChannel(Strict):
    """A device's use of one of its channels; ``port`` overrides the profile's.

    ``ymcs`` is an account-level channel (the top-level ``ymcs:`` section, no profile): it takes
    no ``port``, and may name the device's YMCS id or serial when the agent cannot learn them
    (``ymcs_id`` and ``serial`` are for ``ymcs`` only; the loader checks both rules).
    """

    port: int | None = Field(None, ge=1, le=65535)
    ymcs_id: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[^/?#%\\\s]+$")
    serial: str | None = Field(None, min_length=1, max_length=64)


class SyslogSettings(Strict):
    """Receiver and black-box settings.

    That the bars send syslog at all is ASSUMED (``status: assumed``): Yealink documents remote
    syslog only for its phones (parameters in :data:`DEVICE_SYSLOG_PARAMETERS`, facility local0,
    levels 0-7); see /work/shared/yealink-facts.md.
    """

    host: str = "0.0.0.0"
    udp_port: int | None = Field(default=5514, ge=0, le=65535)
    tcp_port: int | None = Field(default=5514, ge=0, le=65535)
    max_message_bytes: int = Field(default=8192, ge=480, le=65535)
    blackbox_max_bytes: int = Field(default=8 * MiB, ge=512)
    segment_bytes: int = Field(default=1 * MiB, ge=256)
    max_tcp_connections: int = Field(default=256, ge=1, le=100_000)
    tcp_idle_timeout_s: float = Field(default=600.0, gt=0)
    tcp_message_timeout_s: float = Field(default=30.0, gt=0)
    attach_minutes: float = Field(default=30.0, gt=0, le=1440, description="black box minutes per ticket")
    status: Provenance = "assumed"

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError("listen host must be an IP address (0.0.0.0, ::, 127.0.0.1, ...)") from None

    @model_validator(mode="after")
    def _caps(self) -> SyslogSettings:
        if self.blackbox_max_bytes < 2 * self.segment_bytes:
            raise ValueError("blackbox_max_bytes must hold at least two segments (2 * segment_bytes)")
        if self.udp_port is None and self.tcp_port is None:
            raise ValueError("enable at least one of udp_port and tcp_port")
        return self


class TrapReceiverSettings(Strict):
    """Where the agent listens for v2c traps, and the communities it accepts."""

    model_config = Strict.model_config | {"hide_input_in_errors": True}

    host: str = "127.0.0.1"
    port: int = Field(default=TRAP_PORT, ge=0, le=65535)
    community_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    community_file: Path | None = None
    max_datagram_bytes: int = Field(default=8192, ge=484, le=65_535)
    status: Provenance = "assumed"

    @model_validator(mode="after")
    def _one_source(self) -> TrapReceiverSettings:
        if (self.community_env is None) == (self.community_file is None):
            raise ValueError("give exactly one of community_env or community_file")
        return self


SSH_PORT = 22


class SshCommand(Strict):
    """A status command a profile runs over SSH; its stdout text lands in ``fields[name]``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    command: str = Field(min_length=1)
    status: Provenance = "assumed"


class SshLogFile(Strict):
    """A remote log file a profile fetches over SFTP."""

    path: str = Field(min_length=1)
    status: Provenance = "assumed"


class SshChannel(Strict):
    """How a model offers SSH: port, login, status commands, log files, time and byte bounds.

    Secrets are never inline: a password comes from ``password_env``/``password_file``, a
    private key from ``key_file``/``key_env`` (OpenSSH or PEM text); give a password, a key, or both.
    """

    model_config = Strict.model_config | {"hide_input_in_errors": True}

    port: int = Field(default=SSH_PORT, ge=1, le=65535)
    username: str = Field(default="admin", min_length=1)
    password_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    password_file: Path | None = None
    key_file: Path | None = None
    key_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    key_passphrase_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    commands: tuple[SshCommand, ...] = ()
    log_files: tuple[SshLogFile, ...] = ()
    timeout_s: float = Field(default=5.0, gt=0, le=300)
    max_bytes: int = Field(default=1_000_000, ge=1024, le=1_000_000_000, description="per command")
    max_file_bytes: int = Field(default=50_000_000, ge=1024, le=10_000_000_000, description="per file")
    status: Provenance = "assumed"

    @model_validator(mode="after")
    def _one_source_each(self) -> SshChannel:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give only one of password_env or password_file, not both")
        if self.key_file is not None and self.key_env is not None:
            raise ValueError("give only one of key_file or key_env, not both")
        if (
            self.password_env is None
            and self.password_file is None
            and self.key_file is None
            and (self.key_env is None)
        ):
            raise ValueError("give password_env, password_file, key_file or key_env")
        names = [c.name for c in self.commands]
        if len(names) != len(set(names)):
            raise ValueError("commands: each name must be unique")
        return self


SNMP_PORT = 161


class SnmpChannel(Strict):
    """How a device offers SNMP (``assumed``: no Yealink document describes it).

    Secrets are never inline: the v2c community comes from ``community_env``/``community_file``,
    the v3 keys from ``auth_key_env``/``auth_key_file`` and ``priv_key_env``/``priv_key_file``.
    """

    model_config = Strict.model_config | {"hide_input_in_errors": True}

    port: int = Field(default=SNMP_PORT, ge=1, le=65535)
    version: Literal["2c", "3"] = "2c"
    community_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    community_file: Path | None = None
    user: str | None = Field(default=None, min_length=1, max_length=32)
    auth_key_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    auth_key_file: Path | None = None
    priv_key_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    priv_key_file: Path | None = None
    timeout_s: float = Field(default=2.0, gt=0, le=60, description="per request attempt")
    retries: int = Field(default=1, ge=0, le=5)
    max_rows: int = Field(default=256, ge=1, le=10_000, description="per walk")
    status: Provenance = "assumed"

    @model_validator(mode="after")
    def _sources(self) -> SnmpChannel:
        pairs = (("community_env", "community_file"), ("auth_key_env", "auth_key_file"),
                 ("priv_key_env", "priv_key_file"))  # fmt: skip
        for env, file in pairs:
            if getattr(self, env) is not None and getattr(self, file) is not None:
                raise ValueError(f"give only one of {env} or {file}, not both")
        if self.version == "2c" and self.community_env is None and self.community_file is None:
            raise ValueError("version 2c: give community_env or community_file")
        if self.version == "3" and (
            self.user is None or (self.auth_key_env is None and self.auth_key_file is None)
        ):
            raise ValueError("version 3: give user and auth_key_env or auth_key_file")
        return self


class MtrChannel(Strict):
    """Where to read an MVC's Teams Rooms event log (the log is documented by Microsoft)."""

    log_name: str = Field(default="Skype Room System", pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.\-/]{0,127}$")
    max_events: int = Field(default=600, ge=1, le=5000)
    xml_file: Path | None = None
    timeout_s: float = Field(default=15.0, gt=0, le=300)
    max_bytes: int = Field(default=4 * MiB, ge=1024, le=64 * 1024 * 1024)
    window_s: int = Field(default=86_400, ge=60)
    max_heartbeat_age_s: int = Field(default=900, ge=60)
    status: Provenance = "documented"
