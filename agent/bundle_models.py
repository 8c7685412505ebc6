"""What the bundle routes pass in and get back: requester, progress, result, errors, parsing.

Kept apart from :mod:`agent.bundle` so the local API and the ``/logs`` handler can import the
small types (and :func:`parse_since` for ``/logs DEVICE 60m``) without the builder.
"""

from __future__ import annotations

import getpass
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from agent.audit import Channel, Outcome
from collectors.log_sources import SOURCE_NAMES

__all__ = [
    "SOURCE_NAMES",
    "BadRequest",
    "BundleError",
    "BundleResult",
    "ProgressEvent",
    "ProgressHook",
    "Requester",
    "UnknownDevice",
    "parse_since",
    "parse_sources",
]

MAX_SINCE = timedelta(days=30)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


class BundleError(Exception):
    """A pull was refused before any source ran (it is audited as ``rejected``)."""


class UnknownDevice(BundleError, KeyError):
    """No device with this id in the config."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown device"


class BadRequest(BundleError, ValueError):
    """Unknown source names, or a time range that cannot be read."""


@dataclass(frozen=True, slots=True)
class Requester:
    """Who or what asked for a bundle: ``channel`` cli|api|ticket, ``who`` (user, token id, comment
    author), ``ref`` (e.g. the ticket and comment, or the API job id)."""

    channel: Channel
    who: str
    ref: str = ""

    @classmethod
    def cli(cls) -> Requester:
        """The person running ``hezo-agent collect`` (OS user at this host)."""
        try:
            user = getpass.getuser()
        except (OSError, KeyError, ImportError):
            user = "unknown"
        return cls("cli", f"{user}@{socket.gethostname()}")


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One step of a build, for a progress display: a source's state or a build stage."""

    source: str
    state: Literal["start", "done", "failed", "skipped", "packing", "written"]
    detail: str = ""


ProgressHook = Callable[[ProgressEvent], None]


@dataclass(frozen=True, slots=True)
class BundleResult:
    """A written bundle: its file, SHA-256 and size, the manifest it holds, the audit outcome."""

    path: Path
    sha256: str
    size_bytes: int
    manifest: dict[str, Any]
    outcome: Outcome
    audit_id: int

    @property
    def failed(self) -> list[dict[str, str]]:
        """The sources that failed, with reason and message."""
        return list(self.manifest["failed"])


def parse_since(text: str, now: datetime) -> datetime:
    """``30m``, ``2h``, ``1d``, ``90s``, a bare number of minutes, or an ISO 8601 time → a moment.

    Raises:
        BadRequest: unreadable, in the future, or more than 30 days back.
    """
    found = _DURATION.match(text)
    if found:
        moment = now - timedelta(seconds=float(found.group(1)) * _UNITS[(found.group(2) or "m").lower()])
    else:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise BadRequest(f"since: {text[:40]!r} is not a duration (30m, 2h, 1d) or an ISO time") from None
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if moment > now:
        raise BadRequest("since: the time range must start in the past")
    if now - moment > MAX_SINCE:
        raise BadRequest(f"since: at most {MAX_SINCE.days} days back")
    return moment


def parse_sources(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"http,ssh"`` or ``["http", "ssh"]`` → a checked tuple; None or empty → every source.

    Raises:
        BadRequest: a name that is not a source (the message lists the known ones).
    """
    if value is None:
        return None
    names = [n.strip().lower() for n in (value.split(",") if isinstance(value, str) else value)]
    names = [n for n in dict.fromkeys(names) if n]
    unknown = [n for n in names if n not in SOURCE_NAMES]
    if unknown:
        raise BadRequest(f"unknown source {', '.join(unknown)} (sources: {', '.join(SOURCE_NAMES)})")
    return tuple(names) or None
