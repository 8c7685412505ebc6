"""Injected time: the agent asks a clock, so every timing rule is testable without sleeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Where the agent gets the time from."""

    def now(self) -> datetime:
        """Return the current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Return seconds from an arbitrary origin that never goes backwards."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        """Return the current UTC time."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """Return :func:`time.monotonic`."""
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to (tests, false-alarm benchmarks)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        self._mono = 0.0

    def now(self) -> datetime:
        """Return the fake current time."""
        return self._now

    def monotonic(self) -> float:
        """Return fake monotonic seconds."""
        return self._mono

    def advance(self, seconds: float) -> datetime:
        """Move time forward by ``seconds`` and return the new now."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now += timedelta(seconds=seconds)
        self._mono += seconds
        return self._now
