"""The per-device health state machine: a pure function of (state, outcome, policy).

No I/O and no clock reads: the time of every transition is the outcome's ``at``. A device is
declared DOWN only after ``down_after`` (k) consecutive failed polls and UP again only after
``up_after`` (m) consecutive good ones, so one lost packet never opens a ticket and one lucky
answer never closes it. Each outage emits exactly one :class:`WentDown` and, when it ends,
exactly one :class:`Recovered`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from agent.models import PollOutcome


class Health(StrEnum):
    """What the agent believes about a device."""

    UNKNOWN = "unknown"
    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"
    RECOVERING = "recovering"


@dataclass(frozen=True, slots=True)
class DeviceState:
    """Everything the state machine remembers about one device.

    ``failures`` and ``successes`` count consecutive polls; ``down_since`` is the first failed
    poll of the current outage (set while DOWN or RECOVERING).
    """

    health: Health
    failures: int
    successes: int
    changed_at: datetime | None
    first_failure_at: datetime | None
    down_since: datetime | None
    last_ok_at: datetime | None
    last_reason: str = ""

    @classmethod
    def initial(cls) -> DeviceState:
        """Return the state of a device never polled."""
        return cls(Health.UNKNOWN, 0, 0, None, None, None, None, "")


@dataclass(frozen=True, slots=True)
class Policy:
    """The timing rules: k failures to go down, m successes to come back, poll spacing."""

    down_after: int = 3
    up_after: int = 2
    poll_interval_s: float = 60.0
    retry_interval_s: float = 10.0

    def __post_init__(self) -> None:
        if self.down_after < 1 or self.up_after < 1:
            raise ValueError("down_after and up_after must be at least 1")
        if self.poll_interval_s <= 0 or self.retry_interval_s <= 0:
            raise ValueError("poll_interval_s and retry_interval_s must be positive")


@dataclass(frozen=True, slots=True)
class WentDown:
    """The device failed ``failures`` consecutive polls: an outage is confirmed at ``at``."""

    at: datetime
    first_failure_at: datetime
    reason: str
    failures: int


@dataclass(frozen=True, slots=True)
class Recovered:
    """The device answered ``up_after`` consecutive polls; it was down ``downtime_s`` seconds."""

    at: datetime
    down_since: datetime
    downtime_s: float


Event = WentDown | Recovered


def step(state: DeviceState, outcome: PollOutcome, policy: Policy) -> tuple[DeviceState, list[Event]]:
    """Advance ``state`` by one poll ``outcome``; return the new state and what happened."""
    if outcome.ok:
        return _on_ok(state, outcome, policy)
    return _on_fail(state, outcome, policy)


def next_delay_s(state: DeviceState, policy: Policy) -> float:
    """Return how long to wait before polling again: fast retries while a change is unconfirmed."""
    if state.health in (Health.SUSPECT, Health.RECOVERING):
        return policy.retry_interval_s
    return policy.poll_interval_s


def _moved(state: DeviceState, health: Health, at: datetime, **changes: object) -> DeviceState:
    """Return ``state`` with ``changes``, stamping ``changed_at`` when the health changes."""
    changed_at = at if health != state.health else state.changed_at
    return dataclasses.replace(state, health=health, changed_at=changed_at, **changes)  # type: ignore[arg-type]


def _on_fail(state: DeviceState, outcome: PollOutcome, policy: Policy) -> tuple[DeviceState, list[Event]]:
    at = outcome.at
    failures = state.failures + 1
    first = state.first_failure_at if state.failures and state.first_failure_at else at
    common = {"failures": failures, "successes": 0, "last_reason": outcome.reason}
    if state.health in (Health.DOWN, Health.RECOVERING):
        # Still (or again) down: the outage that started at down_since goes on; no new WentDown.
        return _moved(state, Health.DOWN, at, first_failure_at=first, **common), []
    if failures >= policy.down_after:
        down = _moved(state, Health.DOWN, at, first_failure_at=first, down_since=first, **common)
        return down, [WentDown(at=at, first_failure_at=first, reason=outcome.reason, failures=failures)]
    return _moved(state, Health.SUSPECT, at, first_failure_at=first, **common), []


def _on_ok(state: DeviceState, outcome: PollOutcome, policy: Policy) -> tuple[DeviceState, list[Event]]:
    at = outcome.at
    successes = state.successes + 1
    common = {"failures": 0, "successes": successes, "last_ok_at": at, "last_reason": outcome.reason}
    if state.health in (Health.DOWN, Health.RECOVERING):
        down_since = state.down_since or state.first_failure_at or at
        if successes >= policy.up_after:
            up = _moved(state, Health.UP, at, first_failure_at=None, down_since=None, **common)
            downtime_s = max(0.0, (at - down_since).total_seconds())
            return up, [Recovered(at=at, down_since=down_since, downtime_s=downtime_s)]
        return _moved(state, Health.RECOVERING, at, **common), []
    return _moved(state, Health.UP, at, first_failure_at=None, down_since=None, **common), []
