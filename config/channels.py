"""Settings of the channels a profile may offer besides its HTTP interface.

A profile lists the channels its model has (``channels:``); a device opts in to the ones its
site really offers (``devices[].channels:``), optionally overriding the port. Every item says
whether the interface is ``documented`` or ``assumed``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from config.base import Provenance, Strict

VCAPI_PORT = 6024
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
