"""Log-pull jobs of the local API: ``POST .../logs`` starts one, ``GET /jobs/{id}`` follows it.

A job runs the bundle builder (:class:`agent.bundle.BundleBuilder`, or any object with the same
``build`` method, injected for tests) on a small thread pool. The runner keeps at most
``keep`` finished jobs (the oldest finished ones are forgotten first); each job keeps its last
progress steps. Job ids are random and unguessable, but reading a job still needs the token.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, Protocol

from agent.bundle_models import BundleResult, ProgressEvent, ProgressHook, Requester
from agent.clock import Clock
from uploader.outbox_models import redact

__all__ = ["BundleMaker", "Job", "JobRunner", "JobState"]

log = logging.getLogger("hezo.api")

JobState = Literal["queued", "running", "done", "failed"]
MAX_PROGRESS = 50


class BundleMaker(Protocol):
    """What builds a bundle (``BundleBuilder`` has this method)."""

    def build(
        self,
        device_id: str,
        *,
        requester: Requester,
        since: str | None = None,
        sources: Sequence[str] | None = None,
        progress: ProgressHook | None = None,
    ) -> BundleResult:
        """Pull ``device_id``'s logs into one bundle."""
        ...


@dataclass
class Job:
    """One log pull asked through the API."""

    id: str
    device_id: str
    requester: str
    created_at: datetime
    since: str | None
    sources: tuple[str, ...] | None
    state: JobState = "queued"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    result: BundleResult | None = None
    progress: deque[ProgressEvent] = field(default_factory=lambda: deque(maxlen=MAX_PROGRESS))

    def to_json(self) -> dict[str, Any]:
        """The job as ``GET /api/v1/jobs/{id}`` returns it."""
        result = self.result
        steps = list(self.progress)  # one copy in one step: the worker thread may append meanwhile
        return {
            "id": self.id,
            "device_id": self.device_id,
            "state": self.state,
            "requested_by": self.requester,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "since": self.since,
            "sources": list(self.sources) if self.sources is not None else None,
            "progress": [{"source": p.source, "state": p.state, "detail": p.detail} for p in steps],
            "error": self.error,
            "bundle": None
            if result is None
            else {
                "name": result.path.name,
                "size_bytes": result.size_bytes,
                "sha256": result.sha256,
                "outcome": result.outcome,
                "failed_sources": result.failed,
                "audit_id": result.audit_id,
                "url": f"/api/v1/jobs/{self.id}/bundle",
            },
        }


class JobRunner:
    """Runs bundle jobs on a thread pool and remembers the latest ones."""

    def __init__(
        self, maker: Callable[[], BundleMaker], *, clock: Clock, workers: int = 2, keep: int = 100
    ) -> None:
        """``maker`` returns the bundle builder (called once, on the first job)."""
        self._make = maker
        self._maker: BundleMaker | None = None
        self._clock = clock
        self._keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="api-job")

    def submit(
        self, device_id: str, requester: Requester, since: str | None, sources: tuple[str, ...] | None
    ) -> Job:
        """Queue one pull and return its job (already visible through :meth:`get`).

        Raises:
            RuntimeError: the runner was closed.
        """
        job = Job(
            id=secrets.token_urlsafe(9),
            device_id=device_id,
            requester=requester.who,
            created_at=self._clock.now(),
            since=since,
            sources=sources,
        )
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old()
        self._pool.submit(self._run, job, replace(requester, ref=requester.ref or f"job {job.id}"))
        log.info("event=api_job_queued job=%s device=%s requester=%s", job.id, device_id, requester.who)
        return job

    def get(self, job_id: str) -> Job | None:
        """The job ``job_id``, or None (unknown or forgotten)."""
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        """Every remembered job, oldest first."""
        with self._lock:
            return list(self._jobs.values())

    def close(self, wait: bool = True) -> None:
        """Stop taking jobs; with ``wait``, let running ones finish."""
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def _forget_old(self) -> None:
        finished = [j.id for j in self._jobs.values() if j.state in ("done", "failed")]
        while len(self._jobs) > self._keep and finished:
            self._jobs.pop(finished.pop(0), None)

    def _builder(self) -> BundleMaker:
        with self._lock:
            if self._maker is None:
                self._maker = self._make()
            return self._maker

    def _run(self, job: Job, requester: Requester) -> None:
        job.state, job.started_at = "running", self._clock.now()
        try:
            job.result = self._builder().build(
                job.device_id,
                requester=requester,
                since=job.since,
                sources=job.sources,
                progress=job.progress.append,
            )
        except Exception as err:  # every failure becomes the job's error; the builder audited it
            job.error = redact(f"{type(err).__name__}: {err}")
            job.finished_at = self._clock.now()
            job.state = "failed"
            log.warning("event=api_job_failed job=%s device=%s error=%s", job.id, job.device_id, job.error)
        else:
            job.finished_at = self._clock.now()
            job.state = "done"
            log.info(
                "event=api_job_done job=%s device=%s outcome=%s size=%d",
                job.id, job.device_id, job.result.outcome, job.result.size_bytes,
            )  # fmt: skip
