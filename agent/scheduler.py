"""Per-device poll scheduling on APScheduler 3.

Each device has one job that reschedules itself when its poll finishes, so polls of one device
never overlap, and the state machine chooses the next delay (the normal interval, or fast
retries while a failure is being confirmed).

Regular polls keep each device's phase: the next one is due one interval after the previous one
was *due*, not after it ended, so a slow poll does not push the device later and a fault is seen
at most one interval after the last good poll (the detection bound in ``bench/detection.py``
rests on this). The first polls are spread over the jitter window, or longer for a big fleet
(see :func:`first_poll_window_s`), and that spread then holds; a device coming back to the
regular interval after fast retries gets a fresh random phase within the jitter, so devices that
failed together (a site outage) do not stay in step. Retries run ``delay`` after the poll ended,
with at most 10 % jitter.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger("hezo.scheduler")


START_RATE_PER_S = 20.0  # first polls started per second at most, on average


def first_poll_window_s(devices: int, *, interval_s: float, jitter_s: float) -> float:
    """The window the first polls are spread over: ``jitter_s``, widened so a big fleet starts at
    no more than :data:`START_RATE_PER_S` polls a second, never wider than one interval. Since
    regular polls keep their phase, this spread is the fleet's spread for good."""
    return min(interval_s, max(jitter_s, devices / START_RATE_PER_S))


def next_due_s(
    *,
    due_s: float,
    ended_s: float,
    delay_s: float,
    interval_s: float,
    was_retry: bool,
    jitter_s: float,
    rng: random.Random,
) -> float:
    """When a device's next poll is due, on the same clock as ``due_s`` and ``ended_s``.

    Args:
        due_s: when the poll that just ended was due.
        ended_s: when it ended.
        delay_s: what the state machine asks for (the regular interval, or a retry delay).
        interval_s: the regular poll interval.
        was_retry: the poll that just ended was itself a fast retry.
        jitter_s: the spreading window.
        rng: source of jitter.
    """
    if delay_s < interval_s:  # a retry while a change is being confirmed: soon, nearly on time
        return ended_s + delay_s + rng.uniform(0, min(jitter_s, delay_s * 0.1))
    if was_retry:  # back to the regular interval: a fresh phase, so a fleet that failed together spreads
        return ended_s + delay_s + rng.uniform(0, min(jitter_s, delay_s))
    return max(due_s + delay_s, ended_s)  # keep the phase; a poll that overran runs at once


class PollScheduler:
    """Runs ``run_poll(device_id) -> next_delay_s`` for every device, forever, without overlap."""

    def __init__(
        self,
        device_ids: Iterable[str],
        run_poll: Callable[[str], float],
        *,
        interval_s: float,
        jitter_s: float,
        max_workers: int = 16,
        rng: random.Random | None = None,
    ) -> None:
        self._device_ids = list(device_ids)
        self._run_poll = run_poll
        self._interval_s = interval_s
        self._jitter_s = jitter_s
        self._due: dict[str, float] = {}  # time.monotonic() when each device's next poll is due
        self._retrying: set[str] = set()
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
        """Start polling; first polls are spread over :func:`first_poll_window_s`."""
        self._running = True
        self._scheduler.start()
        window = first_poll_window_s(
            len(self._device_ids), interval_s=self._interval_s, jitter_s=self._jitter_s
        )
        for device_id in self._device_ids:
            self._schedule(device_id, self._rng.uniform(0, window))

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
            self._due[device_id] = time.monotonic()  # the phase moves to now
        job.modify(next_run_time=datetime.now(UTC))

    def stop(self) -> None:
        """Stop scheduling and wait for running polls to finish."""
        self._running = False
        self._scheduler.shutdown(wait=True)

    def _schedule(self, device_id: str, delay_s: float) -> None:
        self._due[device_id] = time.monotonic() + max(0.0, delay_s)
        run_at = datetime.now(UTC) + timedelta(seconds=max(0.0, delay_s))
        self._scheduler.add_job(
            self._job, "date", run_date=run_at, args=[device_id], id=device_id, replace_existing=True
        )

    def _job(self, device_id: str) -> None:
        delay_s = 0.0
        due_s = self._due.get(device_id, time.monotonic())
        try:
            delay_s = self._run_poll(device_id)
        finally:
            with self._lock:
                urgent = device_id in self._urgent
                self._urgent.discard(device_id)
                was_retry = device_id in self._retrying
                if delay_s < self._interval_s:
                    self._retrying.add(device_id)
                else:
                    self._retrying.discard(device_id)
                if self._running:
                    ended_s = time.monotonic()
                    due = next_due_s(
                        due_s=due_s,
                        ended_s=ended_s,
                        delay_s=delay_s,
                        interval_s=self._interval_s,
                        was_retry=was_retry,
                        jitter_s=self._jitter_s,
                        rng=self._rng,
                    )
                    self._schedule(device_id, 0.0 if urgent else due - ended_s)
