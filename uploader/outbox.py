"""The durable outbox: every ticket intent reaches the helpdesk exactly once, whatever happens.

* Durable first: :meth:`Outbox.submit` copies the intent's attachments into the spool
  (:mod:`uploader.spool`, content-addressed by SHA-256, under a disk quota) and commits the
  intent to SQLite (WAL, ``synchronous=FULL``) before it logs ``event=intent_queued``. When the
  quota is full, attachments of the lowest priority go first, with a local alert; the ticket
  still goes out and says which file is missing.
* Order: the most urgent ticket first (critical before medium before low), each ticket's
  intents in the order they were queued: a comment never overtakes its ticket's open.
* Outcomes: done → forgotten; a retryable :class:`~uploader.base.BackendError` (5xx, timeout,
  refused, 429) → capped exponential backoff with jitter, per intent and, once two failures
  follow each other, for the whole backend (one probe per window, never a hot loop);
  :class:`~uploader.base.BackendAuthError` → the backend is held with the alert "credentials
  rejected" until ``hezo-agent outbox retry`` or a restart; :class:`~uploader.base.BackendRejected`
  → rejected for good with an alert quoting the (redacted) answer. An unreadable row is
  quarantined; it never blocks the queue.
* Exactly once: an open asks the backend for the ticket key first (:meth:`TicketBackend.find`).
  Every other intent is sent in steps (each attachment, then the action); each step is marked
  in flight before its request, and a step whose answer never came is checked before it is sent
  again: the action's body ends with the marker ``[hezo:<digest of the idempotency key>]``,
  looked for in :meth:`TicketBackend.list_comments`; an attachment is looked for with
  :meth:`TicketBackend.has_attachment`. Backends with their own idempotency (Idempotency-Key,
  Message-ID) get byte-identical retries.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.clock import Clock
from uploader.base import BackendAuthError, BackendError, TicketBackend
from uploader.intents import Intent, IntentKind
from uploader.models import Attachment, TicketRef
from uploader.outbox_admin import drop_intent, outbox_paths, retry_intents
from uploader.outbox_intake import Intake
from uploader.outbox_models import (
    BackendHealth,
    IntentRow,
    OutboxAlert,
    QueuedFile,
    QueuedIntent,
    intent_from_json,
    intent_marker,
    intent_to_json,
    redact,
    with_marker,
)
from uploader.outbox_store import OutboxStore
from uploader.spool import Spool

if TYPE_CHECKING:
    from config.schema import OutboxSettings

__all__ = [
    "BackendHealth",
    "Outbox",
    "OutboxAlert",
    "QueuedFile",
    "QueuedIntent",
    "intent_from_json",
    "intent_marker",
    "intent_to_json",
    "outbox_paths",
    "redact",
]

log = logging.getLogger("hezo.outbox")

MiB = 1024 * 1024
DEFAULT_QUOTA_BYTES = 512 * MiB
MAX_RETRY_AFTER_S = 3600.0


class _Outcome(Enum):
    APPLIED = "applied"
    SKIPPED = "skipped"
    REJECTED = "rejected"
    RETRY = "retry"
    HELD = "held"


class _Rejected(Exception):
    """An intent that cannot be delivered at all (its ticket was never opened)."""


@dataclass(frozen=True, slots=True)
class _Step:
    """One request of an intent: ``landed`` tells, after a crash, whether it reached the helpdesk."""

    what: str
    send: Callable[[], None]
    landed: Callable[[], bool]


class Outbox:
    """Durable ticket outbox and dispatcher for one backend (see the module docstring)."""

    def __init__(
        self,
        backend: TicketBackend,
        state_path: Path,
        *,
        clock: Clock,
        spool_dir: Path | None = None,
        quota_bytes: int = DEFAULT_QUOTA_BYTES,
        max_attempts: int | None = None,
        base_backoff_s: float = 5.0,
        max_backoff_s: float = 600.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        """Open the outbox, sweep what a crash left in the spool and release any credentials hold.

        Raises:
            sqlite3.Error: the outbox file cannot be opened.
            OSError: the spool folder cannot be created.
        """
        self.backend = backend
        self._clock = clock
        self.quota_bytes = quota_bytes
        self.max_attempts = max_attempts
        self._base_backoff_s = base_backoff_s
        self._max_backoff_s = max_backoff_s
        self._jitter = jitter
        self._rng = rng or random.Random()
        state_path = Path(state_path)
        self.store = OutboxStore(state_path)
        self.spool = Spool(spool_dir or state_path.parent / f"{state_path.stem}-spool")
        self._intake = Intake(self.store, self.spool, clock, quota_bytes)
        self._deliver_lock = threading.Lock()
        self._active_seq: int | None = None
        self._held_logged = False
        with self.store.lock:
            swept = self.spool.sweep(self.store.spooled_shas())
        if swept:
            log.info("event=spool_swept files=%d", swept)
        released = self.store.release_holds()
        if released:
            log.info("event=backend_hold_released backends=%s reason=restart", ",".join(released))

    @classmethod
    def from_settings(
        cls, backend: TicketBackend, data_dir: Path, settings: OutboxSettings, *, clock: Clock
    ) -> Outbox:
        """Build the agent's outbox under ``data_dir`` from ``ticketing.outbox`` settings.

        Raises:
            sqlite3.Error, OSError: see :meth:`__init__`.
        """
        db_path, spool_dir = outbox_paths(data_dir)
        return cls(
            backend,
            db_path,
            clock=clock,
            spool_dir=spool_dir,
            quota_bytes=int(settings.quota_mb * MiB),
            max_attempts=settings.max_attempts,
            base_backoff_s=settings.backoff_base_s,
            max_backoff_s=settings.backoff_cap_s,
        )

    # --- TicketSink ------------------------------------------------------------------------

    def submit(self, intent: Intent) -> None:
        """Spool the attachments and store ``intent`` durably, then deliver what is due.

        A key already applied or already queued is ignored (delivering twice does nothing twice).

        Raises:
            sqlite3.Error: the outbox file could not be written (the intent was not accepted).
        """
        key = intent.idempotency_key
        if self.store.is_known(key):
            log.info("event=intent_duplicate key=%s ticket_key=%s", key, intent.ticket_key)
            return
        staged = self._intake.stage(intent)
        try:
            with self.store.lock:
                if self.store.is_known(key):
                    log.info("event=intent_duplicate key=%s ticket_key=%s", key, intent.ticket_key)
                    return
                seq = self._intake.commit(intent, staged, self._active_seq)
        finally:
            self._intake.discard(staged)
        log.info(
            "event=intent_queued id=%d kind=%s ticket_key=%s priority=%s key=%s attachments=%d",
            seq,
            intent.kind,
            intent.ticket_key,
            intent.priority,
            key,
            len(intent.attachments),
        )
        try:
            self._try_flush()
        except (sqlite3.Error, OSError) as err:  # queued is queued: the next flush tries again
            log.error("event=outbox_flush_failed error=%s", err)

    # --- delivery --------------------------------------------------------------------------

    def _try_flush(self) -> None:
        """Deliver now unless another thread is already delivering (it or the next flush will)."""
        if self._deliver_lock.acquire(blocking=False):
            try:
                self._pass()
            finally:
                self._deliver_lock.release()

    def flush(self) -> int:
        """Deliver every due intent that can go now; return how many were applied."""
        with self._deliver_lock:
            return self._pass()

    def _pass(self) -> int:
        health = self.store.health(self.backend.name)
        if health.held:
            if not self._held_logged:
                log.warning("event=outbox_held backend=%s reason=%s", health.name, health.hold_reason)
                self._held_logged = True
            return 0
        self._held_logged = False
        now_ts = self._clock.now().timestamp()
        if now_ts < health.next_attempt_at:
            return 0
        applied = 0
        for _ticket_key, seqs in self.store.pending_plan():
            for seq in seqs:
                row = self.store.row(seq)
                if row is None or row.state != "pending":
                    continue
                if row.next_attempt_at > now_ts:
                    break  # this ticket waits: its later intents must not overtake
                outcome = self._deliver(row)
                if outcome is _Outcome.APPLIED:
                    applied += 1
                elif outcome in (_Outcome.RETRY, _Outcome.HELD):
                    return applied  # the backend is failing: stop this pass
        return applied

    def _deliver(self, row: IntentRow) -> _Outcome:
        """Try one intent once."""
        try:
            intent = intent_from_json(row.payload)
            if intent.idempotency_key != row.idempotency_key or intent.ticket_key != row.ticket_key:
                raise ValueError("payload does not match its row")
        except ValueError as err:
            self._quarantine(row, f"unreadable intent: {err}")
            return _Outcome.REJECTED
        if self.store.is_applied(intent.idempotency_key):
            with self.store.lock:
                for sha in self.store.finish(
                    row.seq, intent.idempotency_key, intent.ticket_key, None, self._clock.now()
                ):
                    self.spool.remove(sha)
            return _Outcome.SKIPPED
        self._active_seq = row.seq
        try:
            ref = self._apply(row, intent)
        except _Rejected as err:
            self._reject(row, intent, str(err))
            return _Outcome.REJECTED
        except BackendAuthError as err:
            self._hold(row, intent, err)
            return _Outcome.HELD
        except BackendError as err:
            if not err.retryable:
                self._reject(row, intent, f"{type(err).__name__}: {err}")
                self._healthy()
                return _Outcome.REJECTED
            return self._retry_later(row, intent, f"{type(err).__name__}: {err}", err.retry_after_s)
        except Exception as err:  # a backend bug must not take the agent down; keep and retry
            log.exception(
                "event=intent_failed_unexpectedly kind=%s ticket_key=%s", intent.kind, intent.ticket_key
            )
            return self._retry_later(row, intent, f"{type(err).__name__}: {err}", None)
        finally:
            self._active_seq = None
        with self.store.lock:  # remove files before a concurrent submit can see them as stored
            for sha in self.store.finish(
                row.seq, intent.idempotency_key, intent.ticket_key, ref, self._clock.now()
            ):
                self.spool.remove(sha)
        self._healthy()
        log.info(
            "event=intent_applied kind=%s ticket_key=%s key=%s",
            intent.kind,
            intent.ticket_key,
            intent.idempotency_key,
        )
        return _Outcome.APPLIED

    def _apply(self, row: IntentRow, intent: Intent) -> TicketRef | None:
        """Send the intent's requests; return the ticket's ref for an open."""
        files, notes = self._files(row.seq)
        if intent.kind is IntentKind.OPEN:
            return self._open(intent, files, notes)
        ref = self._ref_or_reject(intent)
        for step_no, step in enumerate(self._steps(intent, ref, files, notes)):
            if step_no < row.steps_done:
                continue
            if row.inflight_step == step_no and step.landed():
                log.info(
                    "event=intent_step_already_delivered ticket_key=%s key=%s step=%s",
                    intent.ticket_key,
                    intent.idempotency_key,
                    step.what,
                )
            else:
                self.store.set_inflight(row.seq, step_no)
                step.send()
            self.store.step_done(row.seq, step_no + 1)
        return None

    def _files(self, seq: int) -> tuple[list[tuple[Attachment, QueuedFile]], list[str]]:
        """Return the intent's intact spooled files, and a note line for each one left out."""
        files: list[tuple[Attachment, QueuedFile]] = []
        notes: list[str] = []
        for f in self.store.files(seq):
            if f.state == "spooled" and f.sha256:
                problem = self.spool.verify(f.sha256)
                if problem is None:
                    path = self.spool.path_for(f.sha256)
                    files.append((Attachment(name=f.name, path=path, content_type=f.content_type), f))
                    continue
                self.store.set_file_state(seq, f.sha256, "lost", problem)
                log.error("alert=outbox_attachment_lost id=%d name=%s problem=%s", seq, f.name, problem)
                self.store.alert(
                    "attachment_lost", f"attachment {f.name}: {problem}", self._clock.now(), seq=seq
                )
                f = replace(f, note=problem)
            notes.append(f"[hezo-agent] attachment {f.name} was not sent: {f.note or f.state}.")
        return files, notes

    def _open(
        self, intent: Intent, files: list[tuple[Attachment, QueuedFile]], notes: list[str]
    ) -> TicketRef:
        existing = self.store.ref_for(intent.ticket_key)
        if existing is not None:
            return existing
        if intent.ticket is None:
            raise _Rejected("open intent carries no ticket")
        found = self.backend.find(intent.ticket.key)
        if found is not None:
            log.info("event=ticket_already_in_backend ticket_key=%s ref=%s", intent.ticket_key, found.id)
            return found
        ticket = intent.ticket
        if notes:
            ticket = replace(ticket, body=ticket.body.rstrip() + "\n\n" + "\n".join(notes))
        return self.backend.open(ticket, [att for att, _f in files])

    def _ref_or_reject(self, intent: Intent) -> TicketRef:
        ref = self.store.ref_for(intent.ticket_key)
        if ref is not None:
            return ref
        if self.store.open_failed(intent.ticket_key):
            raise _Rejected(f"ticket {intent.ticket_key} was never opened: its open intent was rejected")
        found = self.backend.find(intent.ticket_key)
        if found is None:
            raise _Rejected(f"no ticket for key {intent.ticket_key}: no open intent was submitted")
        self.store.save_ref(None, intent.ticket_key, found)
        return found

    def _steps(
        self, intent: Intent, ref: TicketRef, files: list[tuple[Attachment, QueuedFile]], notes: list[str]
    ) -> list[_Step]:
        """The requests of a non-open intent: its files first, then the action with the marker."""
        backend = self.backend
        steps = [
            _Step(
                f"attach {att.name}",
                _bind(backend.attach, ref, att),
                _bind(self._has_attachment, ref, att, f),
            )
            for att, f in files
        ]
        body = intent.body
        if notes:
            body = (body.rstrip() + "\n\n" if body.strip() else "") + "\n".join(notes)
        kind = intent.kind
        if kind is IntentKind.ATTACH and not body:
            return steps
        text = with_marker(body, intent.idempotency_key)
        send: Callable[[], None]
        if kind is IntentKind.SET_PRIORITY:
            send = _bind(backend.set_priority, ref, intent.priority, text)
        elif kind is IntentKind.RESOLVE:
            send = _bind(backend.resolve, ref, text)
        elif kind is IntentKind.REOPEN:
            send = _bind(backend.reopen, ref, text)
        else:
            send = _bind(backend.comment, ref, text)
        steps.append(_Step(str(kind), send, _bind(self._has_marker, ref, intent.idempotency_key)))
        return steps

    def _has_marker(self, ref: TicketRef, key: str) -> bool:
        marker = intent_marker(key)
        return any(marker in c.body for c in self.backend.list_comments(ref))

    def _has_attachment(self, ref: TicketRef, att: Attachment, f: QueuedFile) -> bool:
        return bool(self.backend.has_attachment(ref, att.name, f.sha256 or "", f.size_bytes))

    # --- outcomes --------------------------------------------------------------------------

    def _healthy(self) -> None:
        health = self.store.health(self.backend.name)
        if health.failures or health.next_attempt_at:
            self.store.set_health(self.backend.name, 0, 0.0)
            if health.failures >= 2:
                log.info("event=backend_recovered backend=%s after_failures=%d", health.name, health.failures)

    def _quarantine(self, row: IntentRow, reason: str) -> None:
        self.store.set_state(row.seq, "quarantined", reason)
        log.error(
            "alert=outbox_intent_quarantined id=%d ticket_key=%s key=%s reason=%s",
            row.seq,
            row.ticket_key,
            row.idempotency_key,
            reason,
        )
        self.store.alert(
            "intent_quarantined",
            f"intent {row.seq} ({row.kind}) quarantined: {reason}",
            self._clock.now(),
            ticket_key=row.ticket_key,
            seq=row.seq,
        )

    def _reject(self, row: IntentRow, intent: Intent, reason: str) -> None:
        reason = redact(reason)
        self.store.set_state(row.seq, "rejected", reason)
        log.error(
            "alert=ticket_intent_rejected kind=%s ticket_key=%s key=%s backend=%s reason=%s",
            intent.kind,
            intent.ticket_key,
            intent.idempotency_key,
            self.backend.name,
            reason,
        )
        self.store.alert(
            "intent_rejected",
            f"{self.backend.name} rejected {intent.kind} of {intent.ticket_key}: {reason}",
            self._clock.now(),
            ticket_key=intent.ticket_key,
            seq=row.seq,
        )

    def _hold(self, row: IntentRow, intent: Intent, err: BackendAuthError) -> None:
        reason = redact(f"{type(err).__name__}: {err}")
        name = self.backend.name
        self.store.hold(name, reason, self._clock.now())
        self.store.note_error(row.seq, f"credentials rejected: {reason}")
        log.error(
            "alert=credentials_rejected backend=%s ticket_key=%s reason=%s", name, intent.ticket_key, reason
        )
        self.store.alert(
            "credentials_rejected",
            f"credentials rejected by {name}: {reason}. Delivery is held: fix the credentials, then run"
            " 'hezo-agent outbox retry' or restart the agent.",
            self._clock.now(),
            ticket_key=intent.ticket_key,
            seq=row.seq,
        )
        self._held_logged = True

    def _retry_later(self, row: IntentRow, intent: Intent, reason: str, hint_s: float | None) -> _Outcome:
        """Back off this intent and, from the second failure in a row, the whole backend."""
        reason = redact(reason)
        now = self._clock.now().timestamp()
        health = self.store.health(self.backend.name)
        failures = health.failures + 1
        hint = min(max(hint_s or 0.0, 0.0), MAX_RETRY_AFTER_S)
        attempts = row.attempts + 1
        if failures >= 2:  # failing across attempts: one probe per backend window
            gate = now + max(self.backoff_s(failures), hint)
            next_at = gate
        else:
            gate = now + hint if hint else 0.0
            next_at = now + max(self.backoff_s(attempts), hint)
        self.store.set_health(self.backend.name, failures, gate)
        if self.max_attempts is not None and attempts >= self.max_attempts:
            self._reject(row, intent, f"gave up after {attempts} attempts: {reason}")
            return _Outcome.RETRY
        self.store.retry_at(row.seq, attempts, next_at, reason)
        log.warning(
            "event=intent_retry kind=%s ticket_key=%s attempts=%d retry_in_s=%.1f backend_failures=%d"
            " reason=%s",
            intent.kind,
            intent.ticket_key,
            attempts,
            next_at - now,
            failures,
            reason,
        )
        return _Outcome.RETRY

    def backoff_s(self, attempts: int) -> float:
        """Return the wait after ``attempts`` failures: capped doubling, minus up to ``jitter`` of it."""
        exponent = min(max(attempts - 1, 0), 32)
        delay_s = min(self._max_backoff_s, self._base_backoff_s * (2**exponent))
        return delay_s * (1.0 - self._jitter * self._rng.random())

    # --- queries and admin -----------------------------------------------------------------

    def ref_for(self, ticket_key: str) -> TicketRef | None:
        """Return where the ticket for ``ticket_key`` lives, once it was opened."""
        return self.store.ref_for(ticket_key)

    def pending(self) -> list[QueuedIntent]:
        """Return intents still waiting for delivery, in submission order."""
        return self.store.listing("pending")

    def rejected(self) -> list[QueuedIntent]:
        """Return intents rejected for good, with the reason in ``last_error``."""
        return self.store.listing("rejected")

    def quarantined(self) -> list[QueuedIntent]:
        """Return intents whose stored row could not be read, with the reason in ``last_error``."""
        return self.store.listing("quarantined")

    def held(self) -> list[BackendHealth]:
        """Return the backends held because their credentials were rejected."""
        return self.store.held()

    def alerts(self, limit: int = 20) -> list[OutboxAlert]:
        """Return the newest local alerts, newest first."""
        return self.store.alerts(limit)

    def spool_used_bytes(self) -> int:
        """Return the bytes the spooled attachments take."""
        return self.store.spool_used_bytes()

    def retry(self, ident: str | None = None) -> list[int]:
        """Release holds and make intents due now: one (by id or key, also a rejected one) or all pending.

        Raises:
            KeyError: ``ident`` names no intent in the outbox.
        """
        return retry_intents(self.store, ident, self._clock.now().timestamp())

    def drop(self, ident: str) -> QueuedIntent:
        """Remove one intent for good (it will not be sent, and queuing its key again is ignored).

        Raises:
            KeyError: ``ident`` names no intent in the outbox.
        """
        return drop_intent(self.store, self.spool, ident, self._clock.now())

    def close(self) -> None:
        """Close the outbox file (the backend is closed by its owner)."""
        with self._deliver_lock:
            self.store.close()


def _bind(func: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    def call() -> Any:
        return func(*args)

    return call
