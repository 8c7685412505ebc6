"""The foundation's ticket sink: applies intents to one backend, in order per ticket, at least once.

State lives in a small SQLite file (WAL, ``synchronous=FULL``): the map ticket_key → TicketRef,
the set of applied idempotency keys, and a FIFO of pending (and rejected) intents. An intent is
durable before delivery is tried; a retryable failure keeps it, with capped exponential backoff
and jitter; a permanent failure (BackendRejected, BackendAuthError) marks it rejected with an
alert line and it is never retried. An OPEN first asks the backend for the ticket key, so a
crash between the backend's answer and the local record does not open a second ticket.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from agent.clock import Clock
from uploader.base import BackendError, TicketBackend
from uploader.intents import Intent, IntentKind
from uploader.models import Attachment, Priority, Ticket, TicketRef

log = logging.getLogger("hezo.dispatch")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS refs (
    ticket_key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    ref_id TEXT NOT NULL,
    url TEXT
);
CREATE TABLE IF NOT EXISTS applied (
    idempotency_key TEXT PRIMARY KEY,
    applied_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS intents (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key TEXT NOT NULL UNIQUE,
    ticket_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    priority TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    steps_done INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS intents_state ON intents(state, seq);
"""


@dataclass(frozen=True, slots=True)
class QueuedIntent:
    """An intent waiting in (or rejected from) the dispatcher, as the CLI shows it."""

    seq: int
    kind: IntentKind
    ticket_key: str
    idempotency_key: str
    priority: Priority
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime


def intent_to_json(intent: Intent) -> str:
    """Serialise an intent (attachments as paths, not bytes)."""
    ticket = intent.ticket
    return json.dumps(
        {
            "kind": str(intent.kind),
            "ticket_key": intent.ticket_key,
            "idempotency_key": intent.idempotency_key,
            "priority": str(intent.priority),
            "ticket": None
            if ticket is None
            else {
                "key": ticket.key,
                "title": ticket.title,
                "body": ticket.body,
                "priority": str(ticket.priority),
                "fields": ticket.fields,
            },
            "body": intent.body,
            "attachments": [
                {"name": a.name, "path": str(a.path), "content_type": a.content_type}
                for a in intent.attachments
            ],
        },
        default=str,
        ensure_ascii=False,
    )


def intent_from_json(text: str) -> Intent:
    """Rebuild an intent serialised by :func:`intent_to_json`."""
    data = json.loads(text)
    raw_ticket = data["ticket"]
    ticket = (
        None
        if raw_ticket is None
        else Ticket(
            key=raw_ticket["key"],
            title=raw_ticket["title"],
            body=raw_ticket["body"],
            priority=Priority(raw_ticket["priority"]),
            fields=raw_ticket["fields"],
        )
    )
    return Intent(
        kind=IntentKind(data["kind"]),
        ticket_key=data["ticket_key"],
        idempotency_key=data["idempotency_key"],
        priority=Priority(data["priority"]),
        ticket=ticket,
        body=data["body"],
        attachments=tuple(
            Attachment(name=a["name"], path=Path(a["path"]), content_type=a["content_type"])
            for a in data["attachments"]
        ),
    )


class _Rejected(Exception):
    """Raised inside the dispatcher when an intent cannot be delivered at all (no ticket)."""


class Dispatcher:
    """Delivers ticket intents to a backend: durable queue, per-ticket order, backoff, reject."""

    def __init__(
        self,
        backend: TicketBackend,
        state_path: Path,
        *,
        clock: Clock,
        base_backoff_s: float = 5.0,
        max_backoff_s: float = 600.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        self.backend = backend
        self._clock = clock
        self._base_backoff_s = base_backoff_s
        self._max_backoff_s = max_backoff_s
        self._jitter = jitter
        self._rng = rng or random.Random()
        self._lock = threading.RLock()
        state_path = Path(state_path)
        state_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(state_path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    # --- TicketSink ------------------------------------------------------------------------

    def submit(self, intent: Intent) -> None:
        """Store ``intent`` durably, then try to deliver what is due.

        A key already applied or already queued is ignored (delivering twice does nothing twice).

        Raises:
            sqlite3.Error: the state file could not be written (the intent was not accepted).
        """
        with self._lock:
            key = intent.idempotency_key
            if self._is_applied(key) or self._db.execute(
                "SELECT 1 FROM intents WHERE idempotency_key = ?", (key,)
            ).fetchone():
                log.info("intent duplicate ignored key=%s ticket_key=%s", key, intent.ticket_key)
                return
            now = self._clock.now()
            self._db.execute(
                "INSERT INTO intents (idempotency_key, ticket_key, kind, priority, payload, next_attempt_at,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, intent.ticket_key, str(intent.kind), str(intent.priority), intent_to_json(intent),
                 now.timestamp(), now.isoformat()),
            )
            log.info("intent queued kind=%s ticket_key=%s key=%s", intent.kind, intent.ticket_key, key)
            self.flush()

    # --- delivery --------------------------------------------------------------------------

    def flush(self) -> int:
        """Deliver every due intent that can go now; return how many were applied."""
        applied = 0
        with self._lock:
            now_ts = self._clock.now().timestamp()
            blocked: set[str] = set()
            rows = self._db.execute(
                "SELECT seq, ticket_key, payload, attempts, steps_done, next_attempt_at FROM intents"
                " WHERE state = 'pending' ORDER BY seq"
            ).fetchall()
            for seq, ticket_key, payload, attempts, steps_done, next_at in rows:
                if ticket_key in blocked:
                    continue
                if next_at > now_ts:
                    blocked.add(ticket_key)
                    continue
                if self._deliver(seq, intent_from_json(payload), attempts, steps_done):
                    applied += 1
                elif self._state_of(seq) == "pending":
                    blocked.add(ticket_key)
        return applied

    def _deliver(self, seq: int, intent: Intent, attempts: int, steps_done: int) -> bool:
        """Try one intent; return True when applied, False when kept for retry or rejected."""
        if self._is_applied(intent.idempotency_key):
            self._db.execute("DELETE FROM intents WHERE seq = ?", (seq,))
            return False
        try:
            if intent.kind is IntentKind.OPEN:
                ref = self._open(intent)
                self._mark_applied(seq, intent, ref)
            else:
                ref = self._ref_or_reject(intent)
                for step_no, step in enumerate(self._steps(intent, ref)):
                    if step_no < steps_done:
                        continue
                    step()
                    self._db.execute("UPDATE intents SET steps_done = ? WHERE seq = ?", (step_no + 1, seq))
                self._mark_applied(seq, intent, None)
        except _Rejected as err:
            self._reject(seq, intent, str(err))
            return False
        except BackendError as err:
            if not err.retryable:
                self._reject(seq, intent, f"{type(err).__name__}: {err}")
                return False
            self._retry_later(seq, intent, attempts + 1, f"{type(err).__name__}: {err}")
            return False
        except Exception as err:  # a backend bug must not take the agent down; keep and retry
            log.exception("intent failed unexpectedly kind=%s ticket_key=%s", intent.kind, intent.ticket_key)
            self._retry_later(seq, intent, attempts + 1, f"{type(err).__name__}: {err}")
            return False
        log.info("intent applied kind=%s ticket_key=%s key=%s", intent.kind, intent.ticket_key,
                 intent.idempotency_key)
        return True

    def _open(self, intent: Intent) -> TicketRef:
        existing = self.ref_for(intent.ticket_key)
        if existing is not None:
            return existing
        if intent.ticket is None:
            raise _Rejected("open intent carries no ticket")
        found = self.backend.find(intent.ticket.key)
        if found is not None:
            log.info("ticket already in backend ticket_key=%s ref=%s", intent.ticket_key, found.id)
            return found
        return self.backend.open(intent.ticket, intent.attachments)

    def _ref_or_reject(self, intent: Intent) -> TicketRef:
        ref = self.ref_for(intent.ticket_key)
        if ref is not None:
            return ref
        rejected_open = self._db.execute(
            "SELECT 1 FROM intents WHERE ticket_key = ? AND kind = ? AND state = 'rejected'",
            (intent.ticket_key, str(IntentKind.OPEN)),
        ).fetchone()
        if rejected_open:
            raise _Rejected(f"ticket {intent.ticket_key} was never opened: its open intent was rejected")
        found = self.backend.find(intent.ticket_key)
        if found is None:
            raise _Rejected(f"no ticket for key {intent.ticket_key}: no open intent was submitted")
        self._save_ref(intent.ticket_key, found)
        return found

    def _steps(self, intent: Intent, ref: TicketRef) -> list[Callable[[], None]]:
        """Backend calls for a non-OPEN intent: attach its files first, then the action itself."""
        backend = self.backend
        steps: list[Callable[[], None]] = [partial(backend.attach, ref, att) for att in intent.attachments]
        kind, body = intent.kind, intent.body
        if kind is IntentKind.COMMENT or (kind is IntentKind.ATTACH and body):
            steps.append(lambda: backend.comment(ref, body))
        elif kind is IntentKind.SET_PRIORITY:
            steps.append(lambda: backend.set_priority(ref, intent.priority, body))
        elif kind is IntentKind.RESOLVE:
            steps.append(lambda: backend.resolve(ref, body))
        elif kind is IntentKind.REOPEN:
            steps.append(lambda: backend.reopen(ref, body))
        return steps

    def _mark_applied(self, seq: int, intent: Intent, ref: TicketRef | None) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if ref is not None:
                self._save_ref(intent.ticket_key, ref)
            self._db.execute(
                "INSERT OR IGNORE INTO applied (idempotency_key, applied_at) VALUES (?, ?)",
                (intent.idempotency_key, self._clock.now().isoformat()),
            )
            self._db.execute("DELETE FROM intents WHERE seq = ?", (seq,))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _save_ref(self, ticket_key: str, ref: TicketRef) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO refs (ticket_key, backend, ref_id, url) VALUES (?, ?, ?, ?)",
            (ticket_key, ref.backend, ref.id, ref.url),
        )

    def _reject(self, seq: int, intent: Intent, reason: str) -> None:
        self._db.execute("UPDATE intents SET state = 'rejected', last_error = ? WHERE seq = ?", (reason, seq))
        log.error(
            "alert=ticket_intent_rejected kind=%s ticket_key=%s key=%s backend=%s reason=%s",
            intent.kind, intent.ticket_key, intent.idempotency_key, self.backend.name, reason,
        )

    def _retry_later(self, seq: int, intent: Intent, attempts: int, reason: str) -> None:
        delay_s = self.backoff_s(attempts)
        next_at = self._clock.now().timestamp() + delay_s
        self._db.execute(
            "UPDATE intents SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE seq = ?",
            (attempts, next_at, reason, seq),
        )
        log.warning(
            "intent retry kind=%s ticket_key=%s attempts=%d retry_in_s=%.1f reason=%s",
            intent.kind, intent.ticket_key, attempts, delay_s, reason,
        )

    def backoff_s(self, attempts: int) -> float:
        """Return the wait after ``attempts`` failures: capped doubling, minus up to ``jitter`` of it."""
        exponent = min(max(attempts - 1, 0), 32)
        delay_s = min(self._max_backoff_s, self._base_backoff_s * (2**exponent))
        return delay_s * (1.0 - self._jitter * self._rng.random())

    # --- queries ---------------------------------------------------------------------------

    def ref_for(self, ticket_key: str) -> TicketRef | None:
        """Return where the ticket for ``ticket_key`` lives, once it was opened."""
        with self._lock:
            row = self._db.execute(
                "SELECT backend, ref_id, url FROM refs WHERE ticket_key = ?", (ticket_key,)
            ).fetchone()
        return TicketRef(backend=row[0], id=row[1], url=row[2]) if row else None

    def pending(self) -> list[QueuedIntent]:
        """Return intents still waiting for delivery, in submission order."""
        return self._queued("pending")

    def rejected(self) -> list[QueuedIntent]:
        """Return intents rejected for good, with the reason in ``last_error``."""
        return self._queued("rejected")

    def close(self) -> None:
        """Close the state file (the backend is closed by its owner)."""
        with self._lock:
            self._db.close()

    def _queued(self, state: str) -> list[QueuedIntent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, ticket_key, idempotency_key, priority, state, attempts, next_attempt_at,"
                " last_error, created_at FROM intents WHERE state = ? ORDER BY seq",
                (state,),
            ).fetchall()
        return [
            QueuedIntent(
                seq=r[0],
                kind=IntentKind(r[1]),
                ticket_key=r[2],
                idempotency_key=r[3],
                priority=Priority(r[4]),
                state=r[5],
                attempts=r[6],
                next_attempt_at=datetime.fromtimestamp(r[7], UTC),
                last_error=r[8],
                created_at=datetime.fromisoformat(r[9]),
            )
            for r in rows
        ]

    def _is_applied(self, key: str) -> bool:
        row = self._db.execute("SELECT 1 FROM applied WHERE idempotency_key = ?", (key,)).fetchone()
        return row is not None

    def _state_of(self, seq: int) -> str | None:
        row = self._db.execute("SELECT state FROM intents WHERE seq = ?", (seq,)).fetchone()
        return row[0] if row else None
