"""Settings of central log forwarding (``forwarding:``): RFC 5424 over TCP, TLS when configured.

The agent forwards every device's syslog stream (what the ``syslog:`` receiver accepts) and its
own events to one central collector (rsyslog, syslog-ng, Graylog, Loki's syslog receiver, ...),
with octet-counting framing (RFC 6587) and, with ``tls:``, over TLS (RFC 5425). While the
collector is away, messages wait in a bounded folder on disk and are sent, oldest first, when it
answers again.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from config.base import Strict

__all__ = ["ForwardTls", "ForwardingSettings"]

MiB = 1024 * 1024


class ForwardTls(Strict):
    """TLS towards the collector: the server certificate is always verified."""

    ca_file: Path | None = Field(default=None, description="PEM CA bundle; default the system's CAs")
    server_name: str | None = Field(default=None, description="name expected in the certificate")
    cert_file: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(default=None, description="its private key (a file, never inline)")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> ForwardTls:
        from config.schema import FieldProblem

        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise FieldProblem(missing, "give cert_file and key_file together (mutual TLS), or neither")
        return self


class ForwardingSettings(Strict):
    """Where and what to forward, and how much may wait on disk while the collector is away."""

    host: str = Field(min_length=1, description="the central collector")
    port: int | None = Field(default=None, ge=1, le=65535, description="default 514, or 6514 with tls")
    tls: ForwardTls | None = None
    devices: bool = Field(default=True, description="forward the devices' syslog (needs syslog:)")
    agent_events: bool = Field(default=True, description="forward the agent's own events")
    hostname: str | None = Field(default=None, description="HOSTNAME of agent events; default this PC")
    buffer_dir: Path | None = Field(default=None, description="default <data_dir>/forward-buffer")
    buffer_max_bytes: int = Field(default=64 * MiB, ge=64 * 1024, le=64 * 1024 * MiB)
    queue_max_messages: int = Field(default=10_000, ge=100, le=1_000_000)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    retry_min_s: float = Field(default=1.0, gt=0, le=3600, description="first reconnect wait")
    retry_max_s: float = Field(default=60.0, gt=0, le=86400, description="longest reconnect wait")

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str) -> str:
        from config.schema import validate_host

        return validate_host(value)

    @model_validator(mode="after")
    def _retry_order(self) -> ForwardingSettings:
        from config.schema import FieldProblem

        if self.retry_max_s < self.retry_min_s:
            raise FieldProblem("retry_max_s", f"must be at least retry_min_s ({self.retry_min_s:g})")
        return self

    @property
    def effective_port(self) -> int:
        """The port to connect to: the configured one, else 6514 with TLS and 514 without."""
        if self.port is not None:
            return self.port
        return 6514 if self.tls is not None else 514
