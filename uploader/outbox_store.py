"""The outbox's SQLite file: intents, their spooled files, ticket refs, backend holds and alerts.

One file (WAL, ``synchronous=FULL``) is shared by the running agent and the ``hezo-agent outbox``
commands, so both see the same queue. Tables:

* ``intents``: every queued intent (``pending``), and those ``rejected`` or ``quarantined`` for
  good, with attempts, backoff, delivery progress (``steps_done``) and the step whose request
  may have reached the helpdesk without an answer (``inflight_step``).
* ``intent_files``: an intent's attachments as spooled files (SHA-256, size, ``spooled`` or
  ``evicted``/``missing``/``dropped`` with a note).
* ``refs`` and ``applied``: where each ticket lives, and which idempotency keys are done.
* ``backends``: consecutive failures, the backend-wide retry gate and a credentials hold.
* ``alerts``: local alerts (quota evictions, rejections, held credentials) the CLI shows.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from uploader.intents import Intent, IntentKind
from uploader.models import Priority, TicketRef
from uploader.outbox_models import RANKS, BackendHealth, IntentRow, OutboxAlert, QueuedFile, QueuedIntent
from uploader.spool import SpoolEntry

#: files of rejected or quarantined intents are evicted before those of any pending one
_STALE_RANK = 9
_KEEP_ALERTS = 500

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
    rank INTEGER NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    steps_done INTEGER NOT NULL DEFAULT 0,
    inflight_step INTEGER,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS intents_state ON intents(state, seq);
CREATE TABLE IF NOT EXISTS intent_files (
    intent_seq INTEGER NOT NULL,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    sha256 TEXT,
    size_bytes INTEGER NOT NULL,
    state TEXT NOT NULL,
    note TEXT,
    PRIMARY KEY (intent_seq, position)
);
CREATE INDEX IF NOT EXISTS intent_files_sha ON intent_files(sha256, state);
CREATE TABLE IF NOT EXISTS backends (
    name TEXT PRIMARY KEY,
    failures INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    held INTEGER NOT NULL DEFAULT 0,
    hold_reason TEXT,
    held_since TEXT
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    ticket_key TEXT,
    intent_seq INTEGER,
    message TEXT NOT NULL
);
"""


class OutboxStore:
    """Access to the outbox file; every method takes the store's lock (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        """Open (creating if needed) the outbox file.

        Raises:
            sqlite3.Error: the file cannot be opened or is not an outbox.
        """
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the file."""
        with self.lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and run the block as one durable transaction."""
        with self.lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Run one statement (autocommit) and return its rows."""
        with self.lock:
            return self._db.execute(sql, params).fetchall()

    # --- intents -------------------------------------------------------------------------

    def is_known(self, key: str) -> bool:
        """Return True when ``key`` was applied (or dropped) or is in the queue in any state."""
        return bool(
            self.execute("SELECT 1 FROM applied WHERE idempotency_key = ?", (key,))
            or self.execute("SELECT 1 FROM intents WHERE idempotency_key = ?", (key,))
        )

    def is_applied(self, key: str) -> bool:
        """Return True when ``key`` was applied (or dropped by a person)."""
        return bool(self.execute("SELECT 1 FROM applied WHERE idempotency_key = ?", (key,)))

    def insert_intent(self, db: sqlite3.Connection, intent: Intent, payload: str, now: datetime) -> int:
        """Insert a pending intent inside an open transaction and return its id."""
        cur = db.execute(
            "INSERT INTO intents (idempotency_key, ticket_key, kind, priority, rank, payload,"
            " next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                intent.idempotency_key,
                intent.ticket_key,
                str(intent.kind),
                str(intent.priority),
                RANKS[intent.priority],
                payload,
                now.timestamp(),
                now.isoformat(),
            ),
        )
        return int(cur.lastrowid or 0)

    def pending_plan(self) -> list[tuple[str, list[int]]]:
        """Return the pending intents grouped per ticket: most urgent ticket first, each in causal order."""
        rows = self.execute("SELECT seq, ticket_key, rank FROM intents WHERE state = 'pending' ORDER BY seq")
        tickets: dict[str, list[int]] = {}
        best: dict[str, tuple[int, int]] = {}
        for seq, ticket_key, rank in rows:
            tickets.setdefault(ticket_key, []).append(seq)
            first = best.get(ticket_key, (rank, seq))
            best[ticket_key] = (min(first[0], rank), first[1])
        return sorted(tickets.items(), key=lambda item: best[item[0]])

    def row(self, seq: int) -> IntentRow | None:
        """Return one intent row, or None when it is gone (applied or dropped meanwhile)."""
        found = self.execute(
            "SELECT seq, idempotency_key, ticket_key, kind, rank, payload, state, attempts, steps_done,"
            " inflight_step, next_attempt_at FROM intents WHERE seq = ?",
            (seq,),
        )
        return IntentRow(*found[0]) if found else None

    def files(self, seq: int) -> list[QueuedFile]:
        """Return an intent's attachments in their original order."""
        rows = self.execute(
            "SELECT name, content_type, sha256, size_bytes, state, note FROM intent_files"
            " WHERE intent_seq = ? ORDER BY position",
            (seq,),
        )
        return [QueuedFile(*r) for r in rows]

    def set_file_state(self, seq: int, sha256: str, state: str, note: str) -> None:
        """Mark one spooled file of an intent as not deliverable (``state``) with ``note``."""
        self.execute(
            "UPDATE intent_files SET state = ?, note = ? WHERE intent_seq = ? AND sha256 = ?",
            (state, note, seq, sha256),
        )

    def set_inflight(self, seq: int, step: int) -> None:
        """Record that step ``step`` of intent ``seq`` is being sent (its outcome is unknown until acked)."""
        self.execute("UPDATE intents SET inflight_step = ? WHERE seq = ?", (step, seq))

    def step_done(self, seq: int, steps_done: int) -> None:
        """Record that the first ``steps_done`` steps of intent ``seq`` reached the helpdesk."""
        self.execute(
            "UPDATE intents SET steps_done = ?, inflight_step = NULL WHERE seq = ?", (steps_done, seq)
        )

    def finish(self, seq: int, key: str, ticket_key: str, ref: TicketRef | None, now: datetime) -> list[str]:
        """Record intent ``seq`` as applied (and the ticket's ref); return spool files nobody needs now."""
        with self.transaction() as db:
            if ref is not None:
                self.save_ref(db, ticket_key, ref)
            db.execute(
                "INSERT OR IGNORE INTO applied (idempotency_key, applied_at) VALUES (?, ?)",
                (key, now.isoformat()),
            )
            return self._delete_intent(db, seq)

    def save_ref(self, db: sqlite3.Connection | None, ticket_key: str, ref: TicketRef) -> None:
        """Remember where the ticket of ``ticket_key`` lives."""
        sql = "INSERT OR REPLACE INTO refs (ticket_key, backend, ref_id, url) VALUES (?, ?, ?, ?)"
        params = (ticket_key, ref.backend, ref.id, ref.url)
        if db is None:
            self.execute(sql, params)
        else:
            db.execute(sql, params)

    def ref_for(self, ticket_key: str) -> TicketRef | None:
        """Return where the ticket of ``ticket_key`` lives, once it was opened."""
        row = self.execute("SELECT backend, ref_id, url FROM refs WHERE ticket_key = ?", (ticket_key,))
        return TicketRef(backend=row[0][0], id=row[0][1], url=row[0][2]) if row else None

    def open_failed(self, ticket_key: str) -> bool:
        """Return True when the ticket's open intent was rejected or quarantined."""
        return bool(
            self.execute(
                "SELECT 1 FROM intents WHERE ticket_key = ? AND kind = ?"
                " AND state IN ('rejected', 'quarantined')",
                (ticket_key, str(IntentKind.OPEN)),
            )
        )

    def set_state(self, seq: int, state: str, reason: str) -> None:
        """Move intent ``seq`` to ``rejected`` or ``quarantined`` with ``reason``."""
        self.execute("UPDATE intents SET state = ?, last_error = ? WHERE seq = ?", (state, reason, seq))

    def note_error(self, seq: int, reason: str) -> None:
        """Record why intent ``seq`` is waiting, without changing its schedule."""
        self.execute("UPDATE intents SET last_error = ? WHERE seq = ?", (reason, seq))

    def retry_at(self, seq: int, attempts: int, next_at: float, reason: str) -> None:
        """Schedule intent ``seq`` again at ``next_at`` after ``attempts`` attempts."""
        self.execute(
            "UPDATE intents SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE seq = ?",
            (attempts, next_at, reason, seq),
        )

    def listing(self, state: str) -> list[QueuedIntent]:
        """Return the intents in ``state`` (pending, rejected, quarantined), oldest first."""
        rows = self.execute(
            "SELECT seq, kind, ticket_key, idempotency_key, priority, state, attempts, next_attempt_at,"
            " last_error, created_at, inflight_step FROM intents WHERE state = ? ORDER BY seq",
            (state,),
        )
        out = []
        for r in rows:
            try:
                kind, priority = IntentKind(r[1]), Priority(r[4])
            except ValueError:  # a damaged row is shown as what it most likely was
                kind, priority = IntentKind.COMMENT, Priority.LOW
            out.append(
                QueuedIntent(
                    seq=r[0],
                    kind=kind,
                    ticket_key=r[2],
                    idempotency_key=r[3],
                    priority=priority,
                    state=r[5],
                    attempts=r[6],
                    next_attempt_at=datetime.fromtimestamp(r[7], UTC),
                    last_error=r[8],
                    created_at=_parse_time(r[9]),
                    inflight=r[10] is not None,
                    files=tuple(self.files(r[0])),
                )
            )
        return out

    def find_intent(self, ident: str) -> int:
        """Return the id of the intent named by its number or its idempotency key.

        Raises:
            KeyError: no such intent in the outbox.
        """
        rows = self.execute("SELECT seq FROM intents WHERE idempotency_key = ?", (ident,))
        if not rows and ident.isdigit():
            rows = self.execute("SELECT seq FROM intents WHERE seq = ?", (int(ident),))
        if not rows:
            raise KeyError(ident)
        return int(rows[0][0])

    def requeue(self, seq: int, now: float) -> None:
        """Make intent ``seq`` pending and due now, with a fresh attempt count."""
        self.execute(
            "UPDATE intents SET state = 'pending', attempts = 0, next_attempt_at = ? WHERE seq = ?",
            (now, seq),
        )

    def make_all_due(self, now: float) -> int:
        """Make every pending intent due now; return how many."""
        with self.lock:
            cur = self._db.execute(
                "UPDATE intents SET next_attempt_at = ? WHERE state = 'pending' AND next_attempt_at > ?",
                (now, now),
            )
            return cur.rowcount

    def drop(self, seq: int, now: datetime) -> list[str]:
        """Delete intent ``seq`` for good (its key counts as done); return spool files nobody needs now."""
        with self.transaction() as db:
            row = db.execute("SELECT idempotency_key FROM intents WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return []
            db.execute(
                "INSERT OR IGNORE INTO applied (idempotency_key, applied_at) VALUES (?, ?)",
                (row[0], now.isoformat()),
            )
            return self._delete_intent(db, seq)

    def _delete_intent(self, db: sqlite3.Connection, seq: int) -> list[str]:
        shas = [
            r[0]
            for r in db.execute(
                "SELECT DISTINCT sha256 FROM intent_files WHERE intent_seq = ? AND state = 'spooled'", (seq,)
            )
        ]
        db.execute("DELETE FROM intent_files WHERE intent_seq = ?", (seq,))
        db.execute("DELETE FROM intents WHERE seq = ?", (seq,))
        return [sha for sha in shas if not self._sha_used(db, sha)]

    @staticmethod
    def _sha_used(db: sqlite3.Connection, sha256: str) -> bool:
        return (
            db.execute(
                "SELECT 1 FROM intent_files WHERE sha256 = ? AND state = 'spooled' LIMIT 1", (sha256,)
            ).fetchone()
            is not None
        )

    # --- spool bookkeeping ---------------------------------------------------------------

    def sha_used(self, db: sqlite3.Connection, sha256: str) -> bool:
        """Return True when a queued intent still uses the spooled file ``sha256``."""
        return self._sha_used(db, sha256)

    def spool_entries(self, db: sqlite3.Connection, exclude_seq: int | None) -> list[SpoolEntry]:
        """Return every spooled file with the rank of its most urgent user (files of ``exclude_seq``,
        the intent being sent right now, are left out: they cannot be evicted)."""
        rows = db.execute(
            "SELECT f.sha256, MAX(f.size_bytes),"
            f" MIN(CASE WHEN i.state = 'pending' THEN i.rank ELSE {_STALE_RANK} END), MIN(i.seq),"
            " SUM(CASE WHEN i.seq = ? THEN 1 ELSE 0 END)"
            " FROM intent_files f JOIN intents i ON i.seq = f.intent_seq"
            " WHERE f.state = 'spooled' GROUP BY f.sha256",
            (-1 if exclude_seq is None else exclude_seq,),
        ).fetchall()
        return [
            SpoolEntry(sha256=r[0], size_bytes=r[1], rank=-1 if r[4] else r[2], age_key=float(r[3]))
            for r in rows
        ]

    def evict(self, db: sqlite3.Connection, sha256: str, note: str) -> list[tuple[int, str, str]]:
        """Mark every use of the spooled file ``sha256`` evicted; return (intent id, ticket key, name)."""
        users = db.execute(
            "SELECT f.intent_seq, i.ticket_key, f.name FROM intent_files f"
            " JOIN intents i ON i.seq = f.intent_seq WHERE f.sha256 = ? AND f.state = 'spooled'",
            (sha256,),
        ).fetchall()
        db.execute(
            "UPDATE intent_files SET state = 'evicted', note = ? WHERE sha256 = ? AND state = 'spooled'",
            (note, sha256),
        )
        return [(int(u[0]), str(u[1]), str(u[2])) for u in users]

    @staticmethod
    def add_file(db: sqlite3.Connection, seq: int, position: int, file: QueuedFile) -> None:
        """Record one attachment of intent ``seq``."""
        db.execute(
            "INSERT INTO intent_files (intent_seq, position, name, content_type, sha256, size_bytes,"
            " state, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                position,
                file.name,
                file.content_type,
                file.sha256,
                file.size_bytes,
                file.state,
                file.note,
            ),
        )

    def spooled_shas(self) -> set[str]:
        """Return the SHA-256 of every file a queued intent still uses."""
        return {
            r[0] for r in self.execute("SELECT DISTINCT sha256 FROM intent_files WHERE state = 'spooled'")
        }

    def spool_used_bytes(self) -> int:
        """Return the bytes the spooled files take (each distinct file counted once)."""
        rows = self.execute(
            "SELECT COALESCE(SUM(size), 0) FROM (SELECT MAX(size_bytes) AS size FROM intent_files"
            " WHERE state = 'spooled' GROUP BY sha256)"
        )
        return int(rows[0][0])

    # --- backends ------------------------------------------------------------------------

    def health(self, name: str) -> BackendHealth:
        """Return the backend's delivery health (healthy when never seen)."""
        rows = self.execute(
            "SELECT failures, next_attempt_at, held, hold_reason, held_since FROM backends WHERE name = ?",
            (name,),
        )
        if not rows:
            return BackendHealth(name)
        f, nxt, held, reason, since = rows[0]
        return BackendHealth(name, f, nxt, bool(held), reason, _parse_time(since) if since else None)

    def set_health(self, name: str, failures: int, next_attempt_at: float) -> None:
        """Record the backend's consecutive failures and the time before which it is not tried."""
        self.execute(
            "INSERT INTO backends (name, failures, next_attempt_at) VALUES (?, ?, ?) ON CONFLICT(name)"
            " DO UPDATE SET failures = excluded.failures, next_attempt_at = excluded.next_attempt_at",
            (name, failures, next_attempt_at),
        )

    def hold(self, name: str, reason: str, now: datetime) -> None:
        """Hold the backend (its credentials were rejected) until released."""
        self.execute(
            "INSERT INTO backends (name, held, hold_reason, held_since) VALUES (?, 1, ?, ?) ON CONFLICT(name)"
            " DO UPDATE SET held = 1, hold_reason = excluded.hold_reason, held_since = excluded.held_since",
            (name, reason, now.isoformat()),
        )

    def release_holds(self) -> list[str]:
        """Release every held backend and clear every retry gate; return the names that were held."""
        with self.transaction() as db:
            held = [r[0] for r in db.execute("SELECT name FROM backends WHERE held = 1")]
            db.execute(
                "UPDATE backends SET held = 0, hold_reason = NULL, held_since = NULL, failures = 0,"
                " next_attempt_at = 0"
            )
        return held

    def held(self) -> list[BackendHealth]:
        """Return the backends on hold."""
        names = [r[0] for r in self.execute("SELECT name FROM backends WHERE held = 1 ORDER BY name")]
        return [self.health(n) for n in names]

    # --- alerts --------------------------------------------------------------------------

    def alert(
        self,
        kind: str,
        message: str,
        now: datetime,
        *,
        ticket_key: str | None = None,
        seq: int | None = None,
        db: sqlite3.Connection | None = None,
    ) -> None:
        """Record a local alert (the oldest beyond the last 500 are forgotten)."""
        conn = db or self._db
        with self.lock:
            conn.execute(
                "INSERT INTO alerts (at, kind, ticket_key, intent_seq, message) VALUES (?, ?, ?, ?, ?)",
                (now.isoformat(), kind, ticket_key, seq, message),
            )
            conn.execute("DELETE FROM alerts WHERE id <= (SELECT MAX(id) FROM alerts) - ?", (_KEEP_ALERTS,))

    def alerts(self, limit: int = 20) -> list[OutboxAlert]:
        """Return the newest alerts, newest first."""
        rows = self.execute(
            "SELECT id, at, kind, ticket_key, intent_seq, message FROM alerts ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [OutboxAlert(r[0], _parse_time(r[1]), r[2], r[3], r[4], r[5]) for r in rows]


def _parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return datetime.fromtimestamp(0, UTC)
