"""Values the agent's pipeline passes along: what one poll produced."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from collectors.models import CheckResult, HealthSample

#: Failure reasons that still prove the device is alive on the network (it answered).
ANSWERED_REASONS = frozenset({"auth_failed", "identity_changed", "unexpected_response"})


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """The result of polling one device once; ``reason`` is ``ok`` or a collector error tag."""

    device_id: str
    at: datetime
    ok: bool
    reason: str
    duration_s: float
    sample: HealthSample | None = None
    detail: str = ""
    checks: tuple[CheckResult, ...] = field(default_factory=tuple)

    @property
    def reachable(self) -> bool:
        """True when the device answered at all, even if the answer was an error."""
        return self.ok or self.reason in ANSWERED_REASONS
