"""What a send-only backend (email, webhook) has sent: the memory that stands in for ``find``.

A mailbox or a plain webhook cannot be asked "did you already get this ticket?", so the backend
keeps one row per ticket thread (key → ref, title, language, current priority) and one row per
message sent in it, in SQLite (WAL, ``synchronous=FULL``). A row is written only after the
server accepted the message.

Message ids are deterministic, so a resend after a crash carries the same id as the first try:

* the opening message's id depends only on the ticket key (:func:`hezo_id`, :func:`digest`);
* a follow-up's id depends on the thread, the kind, the body and the message it follows
  (:meth:`SentLog.next_follow_up`). If the thread's last recorded message already is the same
  kind with the same body, the follow-up was sent and is not sent again.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.clock import Clock, SystemClock
from uploader.base import BackendError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    thread_id TEXT PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    ref_id TEXT NOT NULL,
    url TEXT,
    title TEXT NOT NULL,
    language TEXT NOT NULL,
    priority TEXT NOT NULL,
    opened_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS threads_ref ON threads(ref_id);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    thread_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    digest TEXT NOT NULL,
    sent_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_thread ON messages(thread_id, seq);
"""
_HEZO_ID_HEX = 10


def hezo_id(key: str) -> str:
    """Return the short ticket id of subjects and payloads: ``HEZO-`` + 10 hex digits of SHA-256(key)."""
    return "HEZO-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:_HEZO_ID_HEX].upper()


def digest(*parts: str | bytes) -> str:
    """Return the hex SHA-256 over ``parts``, each length-prefixed so no two part lists collide."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Thread:
    """One ticket as the backend opened it."""

    thread_id: str
    key: str
    ref_id: str
    url: str | None
    title: str
    language: str
    priority: str


@dataclass(frozen=True, slots=True)
class SentMessage:
    """One message the server accepted."""

    seq: int
    thread_id: str
    kind: str
    message_id: str
    digest: str


@dataclass(frozen=True, slots=True)
class FollowUp:
    """What to send next in a thread: its id, the message it answers, and the thread so far."""

    token: str
    parent: str | None
    history: tuple[str, ...]
    #: the id under which this same follow-up was already sent, if it was
    sent_as: str | None = None


class SentLog:
    """The local record of threads and messages; every method raises only :class:`BackendError`."""

    def __init__(self, path: Path, *, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise BackendError(f"sent log {self.path} unusable: {err}") from err

    @contextmanager
    def _guard(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except (OSError, sqlite3.Error) as err:
                raise BackendError(f"sent log {self.path} failed: {err}") from err

    def thread_for_key(self, key: str) -> Thread | None:
        """Return the thread opened for ticket ``key``, if its opening message was sent."""
        return self._thread("key", key)

    def thread_for_ref(self, ref_id: str) -> Thread | None:
        """Return the thread whose ref id (the helpdesk's id, or the HEZO id) is ``ref_id``."""
        return self._thread("ref_id", ref_id)

    def _thread(self, column: str, value: str) -> Thread | None:
        with self._guard() as db:
            row = db.execute(
                "SELECT thread_id, key, ref_id, url, title, language, priority FROM threads"
                f" WHERE {column} = ?",
                (value,),
            ).fetchone()
        return Thread(*row) if row else None

    def record_open(self, thread: Thread, message_id: str, message_digest: str) -> None:
        """Record the thread and its opening message in one transaction (a repeat changes nothing)."""
        with self._guard() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT OR IGNORE INTO threads"
                    " (thread_id, key, ref_id, url, title, language, priority, opened_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        thread.thread_id,
                        thread.key,
                        thread.ref_id,
                        thread.url,
                        thread.title,
                        thread.language,
                        thread.priority,
                        self._clock.now().isoformat(),
                    ),
                )
                self._insert(db, thread.thread_id, "open", message_id, message_digest)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def record(
        self, thread_id: str, kind: str, message_id: str, message_digest: str, *, priority: str | None = None
    ) -> None:
        """Record a sent follow-up; ``priority`` updates the thread's current priority."""
        with self._guard() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._insert(db, thread_id, kind, message_id, message_digest)
                if priority is not None:
                    db.execute("UPDATE threads SET priority = ? WHERE thread_id = ?", (priority, thread_id))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _insert(self, db: sqlite3.Connection, thread_id: str, kind: str, message_id: str, d: str) -> None:
        db.execute(
            "INSERT OR IGNORE INTO messages (thread_id, kind, message_id, digest, sent_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (thread_id, kind, message_id, d, self._clock.now().isoformat()),
        )

    def messages(self, thread_id: str) -> list[SentMessage]:
        """Return the thread's sent messages, oldest first."""
        with self._guard() as db:
            rows = db.execute(
                "SELECT seq, thread_id, kind, message_id, digest FROM messages"
                " WHERE thread_id = ? ORDER BY seq",
                (thread_id,),
            ).fetchall()
        return [SentMessage(*row) for row in rows]

    def next_follow_up(self, thread_id: str, kind: str, message_digest: str, first: str | None) -> FollowUp:
        """Work out the next follow-up of ``thread_id``.

        ``first`` is the opening message's id, used as the parent when the log has no row for
        the thread (e.g. the data folder was lost). ``token`` is a deterministic hex id for the
        follow-up; ``already_sent`` is true when the thread's last message is this same one.
        """
        sent = self.messages(thread_id)
        last = sent[-1] if sent else None
        if last is not None and last.kind == kind and last.digest == message_digest:
            return FollowUp("", None, (), sent_as=last.message_id)
        history = tuple(m.message_id for m in sent) or ((first,) if first else ())
        parent = history[-1] if history else None
        token = digest(thread_id, kind, message_digest, parent or "")[:24]
        return FollowUp(token, parent, history)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
