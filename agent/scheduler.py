"""Per-device poll scheduling on APScheduler 3.

Each device has one APScheduler job on an interval trigger (one instance at most, so polls of
one device never overlap); the state machine chooses the next delay (the normal interval, or fast
retries while a failure is being confirmed), and the job's next run is moved only when that
differs from what the trigger already has (issue 9: re-adding a job after every poll was a third
of the scheduling CPU).

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

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

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


class _OverlapSkipped(logging.Filter):
    """Drops APScheduler's warning that a device's poll was still running when its next one came
    due (so that one was skipped): polls of a device never overlap by design, and the poll that
    overran is followed at once by the next (see :func:`next_due_s`)."""

    def __init__(self, device_ids: Iterable[str]) -> None:
        super().__init__()
        self.device_ids = frozenset(device_ids)

    def filter(self, record: logging.LogRecord) -> bool:
        job = record.args[0] if isinstance(record.args, tuple) and record.args else None
        overlap = "maximum number of running instances" in str(record.msg)
        return not (overlap and getattr(job, "id", None) in self.device_ids)


class PollScheduler:
    """Runs ``run_poll(device_id) -> next_delay_s`` for every device, forever, without overlap.

    Each device is one APScheduler job with an interval trigger, added once: a regular poll
    needs no scheduling work of its own (the trigger has the next one due an interval after
    this one was due). Only a change of plan moves the job's next run time: a retry, the first
    regular poll after retries, a poll that overran its interval, or :meth:`poll_now`.
    """

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
        self._polling: set[str] = set()  # devices whose poll runs now (until APScheduler ends it)
        self._running = False
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=max_workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        self._scheduler.add_listener(self._after_run, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        self._quiet = _OverlapSkipped(self._device_ids)

    def start(self) -> None:
        """Start polling; first polls are spread over :func:`first_poll_window_s`."""
        self._running = True
        logging.getLogger("apscheduler.scheduler").addFilter(self._quiet)
        self._scheduler.start()
        window = first_poll_window_s(
            len(self._device_ids), interval_s=self._interval_s, jitter_s=self._jitter_s
        )
        for device_id in self._device_ids:
            delay_s = self._rng.uniform(0, window)
            self._note_due(device_id, time.monotonic() + delay_s)
            first = datetime.now(UTC) + timedelta(seconds=delay_s)
            self._scheduler.add_job(
                self._job,
                IntervalTrigger(seconds=self._interval_s, start_date=first, timezone=UTC),
                args=[device_id],
                id=device_id,
                replace_existing=True,
                next_run_time=first,
            )

    def add_periodic(self, func: Callable[[], object], every_s: float, job_id: str) -> None:
        """Run ``func`` every ``every_s`` seconds (housekeeping such as ticket delivery)."""
        self._scheduler.add_job(func, "interval", seconds=every_s, id=job_id, replace_existing=True)

    def poll_now(self, device_id: str) -> None:
        """Poll ``device_id`` as soon as possible (after a running poll of it, if any)."""
        with self._lock:
            if device_id in self._polling:  # run again when it ends
                self._urgent.add(device_id)
                return
            self._note_due(device_id, time.monotonic())  # the phase moves to now
        self._move(device_id, 0.0)

    def stop(self) -> None:
        """Stop scheduling and wait for running polls to finish."""
        self._running = False
        self._scheduler.shutdown(wait=True)
        logging.getLogger("apscheduler.scheduler").removeFilter(self._quiet)

    def _note_due(self, device_id: str, due_s: float) -> None:
        """Note when ``device_id``'s next poll is due (``time.monotonic()``)."""
        self._due[device_id] = due_s

    def _move(self, device_id: str, delay_s: float) -> None:
        """Move the device's next poll to ``delay_s`` from now (its interval runs on from there)."""
        run_at = datetime.now(UTC) + timedelta(seconds=max(0.0, delay_s))
        with contextlib.suppress(JobLookupError):  # stopped meanwhile
            self._scheduler.modify_job(device_id, next_run_time=run_at)

    def _job(self, device_id: str) -> None:
        delay_s = self._interval_s  # a poll that raised (a bug) comes back at the regular interval
        due_s = self._due.get(device_id, time.monotonic())
        with self._lock:
            self._polling.add(device_id)
        try:
            delay_s = self._run_poll(device_id)
        finally:
            with self._lock:
                was_retry = device_id in self._retrying
                if delay_s < self._interval_s:
                    self._retrying.add(device_id)
                else:
                    self._retrying.discard(device_id)
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
                self._note_due(device_id, due)
                # on plan: the trigger already has the next poll one interval after this one was due
                on_plan = delay_s == self._interval_s and not was_retry
                at_once = due <= ended_s or device_id in self._urgent
                if at_once:
                    self._urgent.add(device_id)  # moved by _after_run, once APScheduler ends this run
            if self._running and not at_once and not on_plan:
                self._move(device_id, due - ended_s)  # a retry or a fresh phase: seconds away

    def _after_run(self, event: JobExecutionEvent) -> None:
        """A device's poll has ended for APScheduler too (its instance count is down): a poll asked
        for meanwhile (:meth:`poll_now`), or one due already, is moved to now by a one-off job.

        Not by moving it here: APScheduler may call this in its own thread, inside its job
        processing, before it sets the job's next run time from the trigger (over ours).
        """
        with self._lock:
            device_id = event.job_id
            if device_id not in self._polling:  # housekeeping, or a mover job
                return
            self._polling.discard(device_id)
            if device_id not in self._urgent:
                return
            self._urgent.discard(device_id)
            self._note_due(device_id, time.monotonic())
        if self._running:
            self._scheduler.add_job(
                self._move, args=[device_id, 0.0], id=f"{device_id}\0now", replace_existing=True
            )
