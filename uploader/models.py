"""What the incident side hands to the ticket side: tickets, attachments, comments."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any


class Priority(StrEnum):
    """HEZO+ priorities, as the seed names them."""

    CRITICAL = "critical"
    MEDIUM = "medium"
    LOW = "low"


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file to attach to a ticket."""

    name: str
    path: Path
    content_type: str = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Ticket:
    """A ticket as rendered by the agent, ready for any backend.

    ``fields`` holds the structured facts (device, model, serial, contract, problem, site, ...)
    so that a backend can map them onto its own custom fields; ``body`` is the human text.
    """

    key: str
    title: str
    body: str
    priority: Priority
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TicketRef:
    """Where a ticket lives in a backend."""

    backend: str
    id: str
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Comment:
    """A comment on a ticket, as a backend lists it."""

    id: str
    author: str
    body: str
    created_at: datetime
