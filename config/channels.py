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
ChannelName = Literal["tcp", "tcp6024"]


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


class DeviceChannel(Strict):
    """A device's use of one of its profile's channels; ``port`` overrides the profile's."""

    port: int | None = Field(None, ge=1, le=65535)


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
