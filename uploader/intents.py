"""Ticket intents: what the incident manager wants done to a ticket.

The incident side never calls a backend; it submits intents to a :class:`TicketSink`. The
foundation's sink is :class:`uploader.dispatcher.Dispatcher`; the durable outbox replaces it
without the incident side changing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from uploader.models import Attachment, Priority, Ticket


class IntentKind(StrEnum):
    """What to do to the ticket."""

    OPEN = "open"
    COMMENT = "comment"
    ATTACH = "attach"
    SET_PRIORITY = "set_priority"
    RESOLVE = "resolve"
    REOPEN = "reopen"


@dataclass(frozen=True, slots=True)
class Intent:
    """One change to one ticket.

    ``ticket_key`` is the dedup key of the incident (site/device/problem/sequence) and names the
    ticket; ``idempotency_key`` is unique per intent, so delivering it twice does nothing twice.
    """

    kind: IntentKind
    ticket_key: str
    idempotency_key: str
    priority: Priority
    ticket: Ticket | None = None
    body: str = ""
    attachments: tuple[Attachment, ...] = field(default_factory=tuple)


class TicketSink(Protocol):
    """Accepts intents for delivery."""

    def submit(self, intent: Intent) -> None:
        """Queue ``intent``; it is delivered in order per ticket."""
        ...
