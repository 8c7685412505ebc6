"""Settings of the agent's local HTTP server (``api:``): local API, status page and ``/metrics``.

The server listens on loopback by default. Another address is refused unless
``allow_remote: true`` says so on purpose; the API always needs the bearer token, and the status
page and ``/metrics`` need it too for clients that are not on this machine (unless
``public_pages: true``).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, model_validator

from config.base import Strict

__all__ = ["DEFAULT_API_PORT", "ApiRateLimits", "ApiSettings", "is_loopback_host"]

DEFAULT_API_PORT = 8470


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and for every address in 127.0.0.0/8 or ``::1``."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False


class ApiRateLimits(Strict):
    """Per-token limits: a token bucket for log pulls and one for every other API request."""

    pulls_per_minute: float = Field(default=2.0, gt=0, le=600, description="sustained log pulls per token")
    pull_burst: int = Field(default=3, ge=1, le=100, description="log pulls a token may make at once")
    requests_per_minute: float = Field(default=600.0, gt=0, le=60_000, description="other API requests")
    request_burst: int = Field(default=60, ge=1, le=10_000)


class ApiSettings(Strict):
    """The local HTTP server: where it listens, the token file, limits of log-pull jobs."""

    enabled: bool = True
    host: str = Field(default="127.0.0.1", min_length=1, description="an IP address or localhost")
    port: int = Field(default=DEFAULT_API_PORT, ge=0, le=65535, description="0: any free port (tests)")
    allow_remote: bool = Field(default=False, description="required to listen on a non-loopback address")
    public_pages: bool = Field(
        default=False, description="status page and /metrics without the token for remote clients too"
    )
    token_file: Path | None = Field(default=None, description="default <data_dir>/api-token, made 0600")
    rate_limits: ApiRateLimits = Field(default_factory=ApiRateLimits)
    job_workers: int = Field(default=2, ge=1, le=16, description="log bundles built at the same time")
    keep_jobs: int = Field(default=100, ge=1, le=10_000, description="finished jobs remembered")
    refresh_s: int = Field(default=30, ge=5, le=3600, description="status page reloads itself this often")

    @model_validator(mode="after")
    def _loopback_unless_allowed(self) -> ApiSettings:
        from config.schema import FieldProblem

        host = self.host.strip()
        if host.lower() != "localhost":
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise FieldProblem("host", f"{host!r} is not an IP address (use 127.0.0.1 or ::1)") from None
        if not is_loopback_host(host) and not self.allow_remote:
            raise FieldProblem(
                "host",
                f"{host} is not a loopback address: set api.allow_remote: true to let other machines "
                "connect (the API still needs the token), or use 127.0.0.1",
            )
        return self
