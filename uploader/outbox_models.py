"""What the outbox stores and shows: queued intents and files, backend health, alerts, and text.

Also the two pieces of text the outbox writes: the idempotency marker that ends every body it
sends (:func:`intent_marker`), and :func:`redact`, which takes anything that looks like a
credential out of a helpdesk's answer before it is stored, logged or shown.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from uploader.intents import Intent, IntentKind
from uploader.models import Attachment, Priority, Ticket

RANKS: dict[Priority, int] = {Priority.CRITICAL: 0, Priority.MEDIUM: 1, Priority.LOW: 2}
_QUOTE_CHARS = 400
_SECRET_PATTERNS = (
    (
        re.compile(
            r"(?i)\b(authorization|proxy-authorization|cookie|set-cookie)(\"?\s*[:=]\s*\"?)"
            r"(?:(?:bearer|basic|token|digest|negotiate)\s+)?[^\s,;}\"]+"
        ),
        r"\1\2***",
    ),
    (re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 ***"),
    (
        re.compile(
            r"(?i)(\"?\b(?:password|passwd|pwd|secret|client_secret|token|access_token|refresh_token"
            r"|api[_-]?key|apikey|api[_-]?token)\b\"?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s,&;}]+)"
        ),
        r"\1***",
    ),
    (
        re.compile(r"(?i)([?&](?:password|token|api[_-]?key|apikey|sig|signature|access_token)=)[^&\s]+"),
        r"\1***",
    ),
    (re.compile(r"://[^/\s:@]+:[^/\s@]+@"), "://***@"),
)


def redact(text: str) -> str:
    """Return ``text`` without anything that looks like a credential, at most 400 characters."""
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    text = " ".join(text.split())
    return text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "…"


def intent_marker(idempotency_key: str) -> str:
    """Return the marker that ends every body the outbox sends for this intent."""
    return "[hezo:" + hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:16] + "]"


def with_marker(body: str, idempotency_key: str) -> str:
    """Return ``body`` with the intent's marker on a line of its own at the end."""
    marker = intent_marker(idempotency_key)
    return f"{body.rstrip()}\n\n{marker}" if body.strip() else marker


def intent_to_json(intent: Intent) -> str:
    """Serialise an intent (attachments as paths, not bytes)."""
    ticket = intent.ticket
    return json.dumps(
        {
            "kind": str(intent.kind),
            "ticket_key": intent.ticket_key,
            "idempotency_key": intent.idempotency_key,
            "priority": str(intent.priority),
            "ticket": None
            if ticket is None
            else {
                "key": ticket.key,
                "title": ticket.title,
                "body": ticket.body,
                "priority": str(ticket.priority),
                "fields": ticket.fields,
            },
            "body": intent.body,
            "attachments": [
                {"name": a.name, "path": str(a.path), "content_type": a.content_type}
                for a in intent.attachments
            ],
        },
        default=str,
        ensure_ascii=False,
    )


def intent_from_json(text: str) -> Intent:
    """Rebuild an intent serialised by :func:`intent_to_json`.

    Raises:
        ValueError: not JSON, or a field is missing or has a wrong value (``KeyError`` and
            ``TypeError`` are turned into this too).
    """
    try:
        data = json.loads(text)
        raw_ticket = data["ticket"]
        ticket = (
            None
            if raw_ticket is None
            else Ticket(
                key=str(raw_ticket["key"]),
                title=str(raw_ticket["title"]),
                body=str(raw_ticket["body"]),
                priority=Priority(raw_ticket["priority"]),
                fields=dict(raw_ticket["fields"]),
            )
        )
        return Intent(
            kind=IntentKind(data["kind"]),
            ticket_key=str(data["ticket_key"]),
            idempotency_key=str(data["idempotency_key"]),
            priority=Priority(data["priority"]),
            ticket=ticket,
            body=str(data["body"]),
            attachments=tuple(
                Attachment(name=a["name"], path=Path(a["path"]), content_type=a["content_type"])
                for a in data["attachments"]
            ),
        )
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{type(err).__name__}: {err}") from None


@dataclass(frozen=True, slots=True)
class QueuedFile:
    """One attachment of a queued intent: spooled, or why it will not be sent."""

    name: str
    content_type: str
    sha256: str | None
    size_bytes: int
    state: str
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "state": self.state,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class QueuedIntent:
    """An intent waiting in (or rejected or quarantined from) the outbox, as the CLI shows it."""

    seq: int
    kind: IntentKind
    ticket_key: str
    idempotency_key: str
    priority: Priority
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    inflight: bool = False
    files: tuple[QueuedFile, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict for ``hezo-agent outbox --json``."""
        return {
            "id": self.seq,
            "kind": str(self.kind),
            "ticket_key": self.ticket_key,
            "idempotency_key": self.idempotency_key,
            "priority": str(self.priority),
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at.isoformat(),
            "in_flight": self.inflight,
            "reason": self.last_error,
            "created_at": self.created_at.isoformat(),
            "files": [f.to_json() for f in self.files],
        }


@dataclass(frozen=True, slots=True)
class BackendHealth:
    """A backend's delivery health: consecutive failures, its retry gate, a credentials hold."""

    name: str
    failures: int = 0
    next_attempt_at: float = 0.0
    held: bool = False
    hold_reason: str | None = None
    held_since: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "backend": self.name,
            "held": self.held,
            "reason": self.hold_reason,
            "held_since": self.held_since.isoformat() if self.held_since else None,
            "failures": self.failures,
            "next_attempt_at": datetime.fromtimestamp(self.next_attempt_at, UTC).isoformat(),
        }


@dataclass(frozen=True, slots=True)
class OutboxAlert:
    """A local alert raised by the outbox."""

    id: int
    at: datetime
    kind: str
    ticket_key: str | None
    intent_seq: int | None
    message: str

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "kind": self.kind,
            "ticket_key": self.ticket_key,
            "intent_id": self.intent_seq,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class IntentRow:
    """The columns delivery needs from one ``intents`` row."""

    seq: int
    idempotency_key: str
    ticket_key: str
    kind: str
    rank: int
    payload: str
    state: str
    attempts: int
    steps_done: int
    inflight_step: int | None
    next_attempt_at: float
