"""The embedded helpdesk: tickets in SQLite, attachments as files, for sites without a helpdesk.

Layout under ``root``: ``tickets.sqlite`` (WAL, ``synchronous=FULL``) and
``attachments/<ticket id>/<safe file name>``. The ticket key given at open is the idempotency
lookup, so opening the same key twice returns the first ticket.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from agent.clock import Clock, SystemClock
from uploader.base import BackendError, BackendRejected, TicketBackend
from uploader.models import Attachment, Comment, Priority, Ticket, TicketRef

AGENT_AUTHOR = "hezo-agent"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tickets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE,
    key TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    priority TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    resolved_at TEXT,
    fields TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS comments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id TEXT NOT NULL,
    author TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS comments_ticket ON comments(ticket_id, seq);
CREATE TABLE IF NOT EXISTS attachments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id TEXT NOT NULL,
    name TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attachments_ticket ON attachments(ticket_id, seq);
"""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{n}" for p in ("COM", "LPT") for n in range(1, 10)}
_MAX_NAME_CHARS = 120
_CHUNK_BYTES = 1 << 16


def safe_file_name(name: str) -> str:
    """Return ``name`` reduced to a plain file name that cannot leave its folder."""
    base = PurePosixPath(name.replace("\\", "/")).name
    base = _UNSAFE.sub("_", base).lstrip(".-")
    if not base:
        base = "attachment"
    stem, dot, suffix = base.partition(".")
    if stem.upper() in _WINDOWS_RESERVED:
        base = f"_{base}"
    if len(base) > _MAX_NAME_CHARS:
        keep = suffix[-20:] if dot else ""
        base = base[: _MAX_NAME_CHARS - len(keep) - 1] + ("." + keep if keep else "")
    return base


class StoredAttachment(NamedTuple):
    """An attachment as the local store keeps it: (name, size_bytes, sha256, path)."""

    name: str
    size_bytes: int
    sha256: str
    path: Path


@dataclass(frozen=True)
class LocalTicket:
    """A ticket as the embedded helpdesk stores it, with its comments and attachments."""

    id: str
    key: str
    title: str
    body: str
    priority: Priority
    status: str
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    fields: dict[str, Any] = field(default_factory=dict)
    attachments: list[StoredAttachment] = field(default_factory=list)
    comments: list[Comment] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready summary for the CLI, the status page and the demo."""
        return {
            "id": self.id,
            "key": self.key,
            "title": self.title,
            "priority": str(self.priority),
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
            "device": self.fields.get("device"),
            "model": self.fields.get("model"),
            "serial": self.fields.get("serial"),
            "contract": self.fields.get("contract"),
            "problem": self.fields.get("problem"),
            "site": self.fields.get("site"),
            "attachments": [
                {"name": a.name, "size_bytes": a.size_bytes, "sha256": a.sha256} for a in self.attachments
            ],
            "comments": len(self.comments),
        }


class LocalBackend(TicketBackend):
    """The embedded helpdesk: SQLite tickets and comments, attachment files copied under ``root``."""

    name = "local"

    def __init__(self, root: Path, *, clock: Clock | None = None) -> None:
        self.root = Path(root)
        self.attachments_dir = self.root / "attachments"
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.RLock()
        try:
            self.attachments_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.root / "tickets.sqlite", timeout=10.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise BackendError(f"local ticket store at {self.root} unusable: {err}") from err

    # --- TicketBackend -------------------------------------------------------------------

    def find(self, key: str) -> TicketRef | None:
        """Return the ticket opened with ``key``, if any."""
        with self._guard():
            row = self._db.execute("SELECT id FROM tickets WHERE key = ?", (key,)).fetchone()
        return self._ref(row[0]) if row else None

    def open(self, ticket: Ticket, attachments: Sequence[Attachment] = ()) -> TicketRef:
        """Create the ticket (or return the one already opened with the same key).

        Raises:
            BackendRejected: an attachment file is missing.
            BackendError: the store failed.
        """
        self._check_files(attachments)
        with self._guard(), self._transaction():
            row = self._db.execute("SELECT id FROM tickets WHERE key = ?", (ticket.key,)).fetchone()
            if row:
                return self._ref(row[0])
            now = self._now()
            cur = self._db.execute(
                "INSERT INTO tickets (key, title, body, priority, status, created_at, updated_at, fields)"
                " VALUES (?, ?, ?, ?, 'open', ?, ?, ?)",
                (ticket.key, ticket.title, ticket.body, str(ticket.priority), now, now,
                 json.dumps(ticket.fields, default=str, ensure_ascii=False)),
            )
            ticket_id = f"HEZO-{cur.lastrowid:06d}"
            self._db.execute("UPDATE tickets SET id = ? WHERE seq = ?", (ticket_id, cur.lastrowid))
            copied: list[Path] = []
            try:
                for att in attachments:
                    copied.append(self._store_attachment(ticket_id, att))
            except BaseException:
                for path in copied:
                    path.unlink(missing_ok=True)
                raise
        return self._ref(ticket_id)

    def comment(self, ref: TicketRef, body: str) -> None:
        """Add an agent comment.

        Raises:
            BackendRejected: unknown ticket.
        """
        self.add_comment(ref.id, AGENT_AUTHOR, body)

    def attach(self, ref: TicketRef, attachment: Attachment) -> None:
        """Copy one more file onto the ticket.

        Raises:
            BackendRejected: unknown ticket or missing file.
        """
        self._check_files([attachment])
        with self._guard(), self._transaction():
            self._require(ref.id)
            self._store_attachment(ref.id, attachment)
            self._touch(ref.id)

    def set_priority(self, ref: TicketRef, priority: Priority, body: str) -> None:
        """Change the priority and explain it in a comment.

        Raises:
            BackendRejected: unknown ticket.
        """
        with self._guard(), self._transaction():
            old = self._require(ref.id)["priority"]
            self._db.execute("UPDATE tickets SET priority = ? WHERE id = ?", (str(priority), ref.id))
            self._insert_comment(ref.id, AGENT_AUTHOR, body or f"Priority changed: {old} -> {priority}")

    def resolve(self, ref: TicketRef, body: str) -> None:
        """Mark the ticket resolved with a closing comment.

        Raises:
            BackendRejected: unknown ticket.
        """
        with self._guard(), self._transaction():
            self._require(ref.id)
            self._db.execute(
                "UPDATE tickets SET status = 'resolved', resolved_at = ? WHERE id = ?", (self._now(), ref.id)
            )
            self._insert_comment(ref.id, AGENT_AUTHOR, body or "Resolved.")

    def reopen(self, ref: TicketRef, body: str) -> None:
        """Set the ticket back to open with a comment.

        Raises:
            BackendRejected: unknown ticket.
        """
        with self._guard(), self._transaction():
            self._require(ref.id)
            self._db.execute("UPDATE tickets SET status = 'open', resolved_at = NULL WHERE id = ?", (ref.id,))
            self._insert_comment(ref.id, AGENT_AUTHOR, body or "Reopened.")

    def list_comments(self, ref: TicketRef) -> list[Comment]:
        """Return the ticket's comments, oldest first.

        Raises:
            BackendRejected: unknown ticket.
        """
        with self._guard():
            self._require(ref.id)
            return self._comments(ref.id)

    def has_attachment(self, ref: TicketRef, name: str, sha256: str, size_bytes: int) -> bool | None:
        """Return True when the ticket already holds a file with this SHA-256 and size.

        Raises:
            BackendError: the store failed.
        """
        with self._guard():
            row = self._db.execute(
                "SELECT 1 FROM attachments WHERE ticket_id = ? AND sha256 = ? AND size_bytes = ?",
                (ref.id, sha256, size_bytes),
            ).fetchone()
        return row is not None

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    # --- local-only queries --------------------------------------------------------------

    def tickets(self, open_only: bool = False) -> list[LocalTicket]:
        """Return every ticket (or only those not resolved), oldest first."""
        sql = "SELECT * FROM tickets" + (" WHERE status != 'resolved'" if open_only else "") + " ORDER BY seq"
        with self._guard():
            rows = self._rows(sql)
            return [self._load(row) for row in rows]

    def ticket(self, ticket_id: str) -> LocalTicket:
        """Return one ticket with its comments and attachments.

        Raises:
            BackendRejected: unknown ticket id.
        """
        with self._guard():
            return self._load(self._require(ticket_id))

    def add_comment(self, ticket_id: str, author: str, body: str) -> Comment:
        """Add a comment as ``author`` (a human, or the agent) and return it.

        Raises:
            BackendRejected: unknown ticket id.
        """
        with self._guard(), self._transaction():
            self._require(ticket_id)
            return self._insert_comment(ticket_id, author, body)

    # --- internals -----------------------------------------------------------------------

    def _ref(self, ticket_id: str) -> TicketRef:
        return TicketRef(backend=self.name, id=ticket_id)

    def _now(self) -> str:
        return self._clock.now().isoformat()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Hold the lock and turn store failures into retryable BackendError."""
        with self._lock:
            try:
                yield
            except (sqlite3.Error, OSError) as err:
                raise BackendError(f"local ticket store failed: {err}") from err

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cur = self._db.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def _require(self, ticket_id: str) -> dict[str, Any]:
        rows = self._rows("SELECT * FROM tickets WHERE id = ?", (ticket_id,))
        if not rows:
            raise BackendRejected(f"unknown ticket {ticket_id!r}")
        return rows[0]

    def _touch(self, ticket_id: str) -> None:
        self._db.execute("UPDATE tickets SET updated_at = ? WHERE id = ?", (self._now(), ticket_id))

    def _insert_comment(self, ticket_id: str, author: str, body: str) -> Comment:
        created_at = self._clock.now()
        cur = self._db.execute(
            "INSERT INTO comments (ticket_id, author, body, created_at) VALUES (?, ?, ?, ?)",
            (ticket_id, author, body, created_at.isoformat()),
        )
        self._touch(ticket_id)
        return Comment(id=str(cur.lastrowid), author=author, body=body, created_at=created_at)

    def _comments(self, ticket_id: str) -> list[Comment]:
        rows = self._rows("SELECT * FROM comments WHERE ticket_id = ? ORDER BY seq", (ticket_id,))
        return [
            Comment(id=str(r["seq"]), author=r["author"], body=r["body"],
                    created_at=datetime.fromisoformat(r["created_at"]))
            for r in rows
        ]

    def _load(self, row: dict[str, Any]) -> LocalTicket:
        atts = self._rows("SELECT * FROM attachments WHERE ticket_id = ? ORDER BY seq", (row["id"],))
        return LocalTicket(
            id=row["id"],
            key=row["key"],
            title=row["title"],
            body=row["body"],
            priority=Priority(row["priority"]),
            status=row["status"],
            created_at=datetime.fromisoformat(row["created_at"]),
            updated_at=datetime.fromisoformat(row["updated_at"]),
            resolved_at=datetime.fromisoformat(row["resolved_at"]) if row["resolved_at"] else None,
            fields=json.loads(row["fields"]),
            attachments=[
                StoredAttachment(a["name"], a["size_bytes"], a["sha256"], self.root / a["path"]) for a in atts
            ],
            comments=self._comments(row["id"]),
        )

    @staticmethod
    def _check_files(attachments: Sequence[Attachment]) -> None:
        for att in attachments:
            if not Path(att.path).is_file():
                raise BackendRejected(f"attachment {att.name!r}: file not found: {att.path}")

    def _store_attachment(self, ticket_id: str, att: Attachment) -> Path:
        """Copy the file under the ticket's folder, record it, and return the copy's path."""
        folder = self.attachments_dir / ticket_id
        folder.mkdir(parents=True, exist_ok=True)
        name = safe_file_name(att.name)
        dest = folder / name
        counter = 1
        stem, dot, suffix = name.partition(".")
        while dest.exists():
            dest = folder / f"{stem}-{counter}{dot}{suffix}"
            counter += 1
        if dest.resolve().parent != folder.resolve():
            raise BackendRejected(f"attachment {att.name!r}: unsafe file name")
        digest = hashlib.sha256()
        size_bytes = 0
        part = dest.with_name(dest.name + ".part")
        try:
            with open(att.path, "rb") as src, open(part, "wb") as out:
                while chunk := src.read(_CHUNK_BYTES):
                    digest.update(chunk)
                    size_bytes += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(part, dest)
        except FileNotFoundError as err:
            part.unlink(missing_ok=True)
            raise BackendRejected(f"attachment {att.name!r}: file not found: {att.path}") from err
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        self._db.execute(
            "INSERT INTO attachments (ticket_id, name, size_bytes, sha256, path) VALUES (?, ?, ?, ?, ?)",
            (ticket_id, dest.name, size_bytes, digest.hexdigest(), dest.relative_to(self.root).as_posix()),
        )
        return dest
