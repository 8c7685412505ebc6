"""Turn one poll of one device into a :class:`PollOutcome`, whatever happens.

This module holds the agent's only catch-all: a collector bug must become an outcome with a
reason, never a dead polling thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.clock import Clock
from agent.models import PollOutcome
from collectors.base import Collector
from collectors.errors import CollectorError

log = logging.getLogger("hezo.poller")


class Poller:
    """Polls devices through their collectors and reports outcomes."""

    def __init__(self, collector_for: Callable[[str], Collector], clock: Clock) -> None:
        self._collector_for = collector_for
        self._clock = clock

    def poll(self, device_id: str) -> PollOutcome:
        """Poll ``device_id`` once; never raises."""
        started = self._clock.monotonic()
        at = self._clock.now()
        try:
            sample = self._collector_for(device_id).collect_health()
        except CollectorError as err:
            return PollOutcome(
                device_id=device_id,
                at=at,
                ok=False,
                reason=err.reason,
                duration_s=self._clock.monotonic() - started,
                detail=str(err),
            )
        except Exception as err:  # the one catch-all: a bug must not stop polling
            log.exception("event=poll_crashed device=%s", device_id)
            return PollOutcome(
                device_id=device_id,
                at=at,
                ok=False,
                reason="internal_error",
                duration_s=self._clock.monotonic() - started,
                detail=f"{type(err).__name__}: {err}",
            )
        return PollOutcome(
            device_id=device_id,
            at=at,
            ok=True,
            reason="ok",
            duration_s=self._clock.monotonic() - started,
            sample=sample,
            checks=sample.checks,
        )
