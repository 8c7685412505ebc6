"""Settings of commands engineers write in ticket comments (``commands:``), today ``/logs``.

The agent reads new comments on its open tickets every ``poll_s`` seconds. A comment whose first
line is ``/logs`` (or ``/logs DEVICE 60m``) from an author in ``allowed_authors`` pulls a log
bundle and attaches it to that ticket (see :mod:`agent.ticket_commands`). Authors are compared
as whole strings (case-insensitive, surrounding spaces ignored), never as patterns: write them
exactly as the helpdesk reports a comment's author. An empty list allows nobody, and then the
agent does not read comments at all.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from config.base import Strict

__all__ = ["CommandSettings"]

MAX_MINUTES = 30 * 24 * 60  # a bundle's time range is at most 30 days back (agent.bundle_models)


class CommandSettings(Strict):
    """Ticket-comment commands: who may give them, how often comments are read, how far back."""

    enabled: bool = Field(default=True, description="read ticket comments for commands")
    poll_s: float = Field(default=60.0, ge=15, le=3600, description="one round over the open tickets")
    allowed_authors: tuple[str, ...] = Field(
        default=(), description="exact comment authors allowed to give commands; empty = nobody"
    )
    max_minutes: int = Field(default=240, ge=1, le=MAX_MINUTES, description="longest time range of /logs")
    max_tickets: int = Field(default=20, ge=1, le=500, description="open tickets read per round")
    max_age_h: float = Field(
        default=24.0, gt=0, le=24 * 30, description="older commands are not run (e.g. after an upgrade)"
    )

    @field_validator("allowed_authors")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(name.strip() for name in value)
        for i, name in enumerate(names):
            if not name:
                raise ValueError(
                    f"author {i + 1} is empty; write a name, e-mail or user id as the helpdesk shows it"
                )
            if len(name) > 200:
                raise ValueError(f"author {i + 1} is longer than 200 characters")
        return names

    @property
    def active(self) -> bool:
        """True when comments are read: enabled and at least one author is allowed."""
        return self.enabled and bool(self.allowed_authors)

    def allows(self, author: str) -> bool:
        """True when ``author`` is one of ``allowed_authors`` (whole string, case-insensitive)."""
        wanted = author.strip().casefold()
        return bool(wanted) and any(wanted == name.casefold() for name in self.allowed_authors)
