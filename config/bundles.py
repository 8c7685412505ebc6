"""Settings of log bundles (``bundles:``) and of redaction (``redaction:``).

A log bundle is a tar.gz of one device's logs from every source its profile and channels offer
(see :mod:`agent.bundle`); these settings bound it in bytes and time and say where an MVC's
``CollectSrsV2Logs.ps1`` ZIP is found. Redaction (:mod:`agent.redact`) masks secrets in every
bundle file, ticket text and log line; ``redaction.patterns`` adds site-specific regexes.
"""

from __future__ import annotations

import re
from pathlib import Path, PureWindowsPath

from pydantic import Field, field_validator

from config.base import Strict

__all__ = ["DEFAULT_MVC_SCRIPT", "BundleSettings", "ExtractSettings", "MvcLogSettings", "RedactionSettings"]

MiB = 1024 * 1024
#: Microsoft: in Admin mode, ScriptLaunch.ps1 runs CollectSrsV2Logs.ps1, which writes a ZIP to C:\Rigel
DEFAULT_MVC_SCRIPT = r"C:\Rigel\x64\Scripts\Provisioning\ScriptLaunch.ps1"
DEFAULT_MVC_ZIP_DIR = r"C:\Rigel"


class ExtractSettings(Strict):
    """Bounds for taking apart an archive a device (or its cloud) produced."""

    max_files: int = Field(default=2000, ge=1, le=1_000_000, description="entries per archive")
    max_bytes: int = Field(default=512 * MiB, ge=1024, description="bytes written per archive")
    max_ratio: float = Field(default=200.0, ge=2, le=100_000, description="uncompressed / compressed")
    timeout_s: float = Field(default=60.0, gt=0, le=3600)


class MvcLogSettings(Strict):
    """Where an MVC's Teams Rooms log ZIP comes from (Microsoft documents the script and folder).

    On Windows (the agent runs on the MVC's MCore PC) the agent runs ``script`` with
    ``CollectSrsV2Logs.ps1`` through PowerShell and takes the ZIP it writes to ``zip_dir``
    (default ``C:\\Rigel``). Elsewhere it takes the newest ``*.zip`` in ``zip_dir`` (e.g. copied
    off the MVC); without ``zip_dir`` the source is not available.
    """

    script: str = Field(default=DEFAULT_MVC_SCRIPT, min_length=3, description="ScriptLaunch.ps1 (Windows)")
    zip_dir: Path | None = Field(default=None, description="folder of the ZIPs; Windows default C:\\Rigel")
    timeout_s: float = Field(default=600.0, gt=0, le=3600, description="PowerShell run limit")
    max_zip_bytes: int = Field(default=512 * MiB, ge=1024)

    @field_validator("zip_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not (value.is_absolute() or PureWindowsPath(str(value)).is_absolute()):
            raise ValueError("use an absolute folder path (e.g. C:\\Rigel or /srv/mvc-logs)")
        return value


class BundleSettings(Strict):
    """Bounds and defaults of log bundles (``hezo-agent collect``, the local API, ``/logs``)."""

    max_bytes: int = Field(default=200 * MiB, ge=64 * 1024, description="all files of one bundle")
    timeout_s: float = Field(default=90.0, gt=0, le=3600, description="one bundle, every source")
    default_since_s: float = Field(default=1800.0, gt=0, le=30 * 86400, description="default --since")
    keep_per_device: int = Field(default=5, ge=1, le=1000, description="bundles kept in the data dir")
    extract: ExtractSettings = Field(default_factory=ExtractSettings, description="device archive bounds")
    mvc: MvcLogSettings = Field(default_factory=MvcLogSettings, description="the MVC log ZIP")


class RedactionSettings(Strict):
    """Extra secret patterns of the site, on top of the built-in ones.

    Each pattern is a Python regular expression. Without groups the whole match is masked; with
    groups, only what the groups matched (``token=(\\w+)`` keeps ``token=``).
    """

    patterns: tuple[str, ...] = Field(default=(), description="regexes whose matches are masked")

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, pattern in enumerate(value):
            try:
                compiled = re.compile(pattern)
            except re.error as err:
                raise ValueError(
                    f"pattern {i + 1} is not a valid regular expression ({err}); write Python regex syntax,"
                    " e.g. 'pin=([0-9]+)'"
                ) from None
            if compiled.search("") is not None:
                raise ValueError(f"pattern {i + 1} matches empty text; it would mask nothing useful")
        return value
