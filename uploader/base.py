"""The interface every helpdesk backend implements.

Only the dispatcher calls a backend. Methods raise :class:`BackendError` (or a subclass) and
nothing else, so the dispatcher can decide between retry, hold and reject.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from uploader.models import Attachment, Comment, Priority, Ticket, TicketRef


class BackendError(Exception):
    """A backend call failed; ``retryable`` says whether trying again may help.

    ``retry_after_s`` is the helpdesk's own wait hint (a 429's ``Retry-After``), if it gave one.
    """

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BackendRejected(BackendError):
    """The helpdesk refused the request for good (validation error): do not retry."""

    retryable = False


class BackendAuthError(BackendError):
    """The helpdesk rejected our credentials: hold the backend until a human fixes them."""

    retryable = False


class TicketBackend(ABC):
    """A helpdesk the agent can open, update and resolve tickets in."""

    name: str

    @abstractmethod
    def find(self, key: str) -> TicketRef | None:
        """Return the ticket previously opened with idempotency ``key``, if any."""

    @abstractmethod
    def open(self, ticket: Ticket, attachments: Sequence[Attachment] = ()) -> TicketRef:
        """Create a ticket with its attachments and return where it lives."""

    @abstractmethod
    def comment(self, ref: TicketRef, body: str) -> None:
        """Add a comment to the ticket."""

    @abstractmethod
    def attach(self, ref: TicketRef, attachment: Attachment) -> None:
        """Attach one more file to the ticket."""

    @abstractmethod
    def set_priority(self, ref: TicketRef, priority: Priority, body: str) -> None:
        """Change the ticket's priority, explaining why in a comment."""

    @abstractmethod
    def resolve(self, ref: TicketRef, body: str) -> None:
        """Resolve the ticket with a closing comment."""

    @abstractmethod
    def reopen(self, ref: TicketRef, body: str) -> None:
        """Reopen a resolved ticket with a comment."""

    @abstractmethod
    def list_comments(self, ref: TicketRef) -> list[Comment]:
        """Return the ticket's comments, oldest first."""

    def has_attachment(self, ref: TicketRef, name: str, sha256: str, size_bytes: int) -> bool | None:
        """Return whether the ticket already has this file, or None when the backend cannot tell.

        The outbox asks only after a crash or a lost answer left an upload's outcome unknown;
        None (the default) means "send it again" (at least once). Optional to implement.

        Raises:
            BackendError: the lookup failed.
        """
        return None

    def close(self) -> None:
        """Release connections; the default has nothing to release."""
