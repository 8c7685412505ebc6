"""Per-device poll scheduling on APScheduler 3.

Each device has one job that reschedules itself when its poll finishes, so polls of one device
never overlap, and the state machine chooses the next delay (the normal interval, or fast
retries while a failure is being confirmed). A small random jitter spreads the fleet out.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger("hezo.scheduler")


class PollScheduler:
    """Runs ``run_poll(device_id) -> next_delay_s`` for every device, forever, without overlap."""

    def __init__(
        self,
        device_ids: Iterable[str],
        run_poll: Callable[[str], float],
        *,
        jitter_s: float,
        max_workers: int = 16,
        rng: random.Random | None = None,
    ) -> None:
        self._device_ids = list(device_ids)
        self._run_poll = run_poll
        self._jitter_s = jitter_s
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._urgent: set[str] = set()
        self._running = False
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=max_workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )

    def start(self) -> None:
        """Start polling; first polls are spread over the jitter window."""
        self._running = True
        self._scheduler.start()
        for device_id in self._device_ids:
            self._schedule(device_id, self._rng.uniform(0, self._jitter_s))

    def add_periodic(self, func: Callable[[], object], every_s: float, job_id: str) -> None:
        """Run ``func`` every ``every_s`` seconds (housekeeping such as ticket delivery)."""
        self._scheduler.add_job(func, "interval", seconds=every_s, id=job_id, replace_existing=True)

    def poll_now(self, device_id: str) -> None:
        """Poll ``device_id`` as soon as possible (after a running poll of it, if any)."""
        with self._lock:
            job = self._scheduler.get_job(device_id)
            if job is None:  # its poll is running right now: run again when it ends
                self._urgent.add(device_id)
                return
        job.modify(next_run_time=datetime.now(UTC))

    def stop(self) -> None:
        """Stop scheduling and wait for running polls to finish."""
        self._running = False
        self._scheduler.shutdown(wait=True)

    def _schedule(self, device_id: str, delay_s: float) -> None:
        run_at = datetime.now(UTC) + timedelta(seconds=max(0.0, delay_s))
        self._scheduler.add_job(
            self._job, "date", run_date=run_at, args=[device_id], id=device_id, replace_existing=True
        )

    def _job(self, device_id: str) -> None:
        delay_s = 0.0
        try:
            delay_s = self._run_poll(device_id)
        finally:
            with self._lock:
                urgent = device_id in self._urgent
                self._urgent.discard(device_id)
                if self._running:
                    # jitter spreads regular polls; fast confirmation retries stay nearly on time
                    jitter = 0.0 if urgent else self._rng.uniform(0, min(self._jitter_s, delay_s * 0.1))
                    self._schedule(device_id, 0.0 if urgent else delay_s + jitter)
