"""Account-level settings of the Yealink Management Cloud (YMCS) channel: the top-level ``ymcs:``.

YMCS belongs to the customer's enterprise account, not to a device model, so its access is
configured once per agent config (``ymcs:``), never in a profile; a device opts in with
``devices[].channels: {ymcs: {}}`` (optionally naming its ``ymcs_id`` or ``serial``). The
YMCS Open API is third-party documented (two open-source clients built on Yealink's API PDFs,
see ``/work/shared/yealink-facts.md``), so ``status`` defaults to ``assumed``. The client
secret is never inline: ``client_secret_env`` or ``client_secret_file`` (read with
:func:`config.loader.read_secret`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from config.base import ENV_VAR_PATTERN, Provenance, Strict

__all__ = ["DEVICES_PAGE_MAX", "EXPORT_SYSLOG_PATH", "REGIONS", "YmcsSettings"]

REGIONS = {
    "us": "https://us-api.ymcs.yealink.com",
    "eu": "https://eu-api.ymcs.yealink.com",
    "au": "https://au-api.ymcs.yealink.com",
}
#: assumed: the two clients name the exportSyslog operation but not one agreed path
EXPORT_SYSLOG_PATH = "/v2/dm/diagnosis/exportSyslog"
#: listDevices accepts at most 100 items per page
DEVICES_PAGE_MAX = 100


class YmcsSettings(Strict):
    """Access to the YMCS Open API for one enterprise (``status: assumed``, third-party documented)."""

    model_config = Strict.model_config | {"hide_input_in_errors": True}

    region: Literal["us", "eu", "au"] | None = None
    base_url: str | None = Field(default=None, pattern=r"^https://[^/?#\s]+$")  # secrets travel: TLS only
    client_id: str = Field(min_length=1, max_length=200)
    client_secret_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    client_secret_file: Path | None = None
    ca_bundle: Path | None = None  # verify the cloud against this CA file instead of the system store
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="per request")
    page_size: int = Field(default=DEVICES_PAGE_MAX, ge=1, le=DEVICES_PAGE_MAX, description="listDevices")
    max_pages: int = Field(default=50, ge=1, le=1000)
    cache_s: float = Field(default=55.0, ge=0, le=3600, description="one device listing per poll round")
    max_attempts: int = Field(default=4, ge=1, le=10, description="per request, on 429/502/503/504")
    max_backoff_s: float = Field(default=30.0, ge=0, le=300)
    export_syslog_path: str = Field(default=EXPORT_SYSLOG_PATH, pattern=r"^/[^?#\s]*$")
    export_poll_every_s: float = Field(default=5.0, gt=0, le=300)
    export_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    export_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=2**31)
    status: Provenance = "assumed"

    @model_validator(mode="after")
    def _one_of_each(self) -> YmcsSettings:
        if (self.region is None) == (self.base_url is None):
            raise ValueError("give exactly one of region (us, eu, au) or base_url")
        if (self.client_secret_env is None) == (self.client_secret_file is None):
            raise ValueError("give exactly one of client_secret_env or client_secret_file")
        return self

    @property
    def url(self) -> str:
        """The API base URL (``base_url``, else the region's)."""
        return self.base_url or REGIONS[self.region or "us"]
