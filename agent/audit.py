"""The audit of log pulls: who asked for which device's logs, how, and what they got.

Every pull (``hezo-agent collect``, the local API, a ``/logs`` ticket comment) appends one row
to the ``audit`` table of the agent's store (``agent.sqlite``, created by
:mod:`agent.store`'s schema migration 3). The table is append-only: this module has no update
or delete path, and SQLite triggers abort any UPDATE or DELETE, whoever runs it. Text that
goes in is redacted first (an error message may quote a device's answer).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

from agent.redact import Redactor
from agent.store import Store, from_iso, to_iso

__all__ = ["CHANNELS", "OUTCOMES", "AuditEntry", "AuditLog", "Channel", "Outcome"]

Channel = Literal["cli", "api", "ticket"]
#: ok: every source delivered; partial: some failed; failed: none did; rejected: refused before pulling
Outcome = Literal["ok", "partial", "failed", "rejected"]
CHANNELS: tuple[str, ...] = get_args(Channel)
OUTCOMES: tuple[str, ...] = get_args(Outcome)
MAX_DETAIL = 2000


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited pull."""

    id: int
    at: datetime
    channel: str
    requester: str
    ref: str
    device_id: str
    since: datetime | None
    until: datetime | None
    sources: tuple[str, ...]
    size_bytes: int | None
    sha256: str | None
    outcome: str
    detail: str
    bundle: str | None

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict (times in ISO 8601 UTC)."""
        return {
            "id": self.id,
            "at": to_iso(self.at),
            "channel": self.channel,
            "requester": self.requester,
            "ref": self.ref,
            "device": self.device_id,
            "since": to_iso(self.since) if self.since else None,
            "until": to_iso(self.until) if self.until else None,
            "sources": list(self.sources),
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "outcome": self.outcome,
            "detail": self.detail,
            "bundle": self.bundle,
        }


class AuditLog:
    """Append-only access to the ``audit`` table; thread-safe.

    Raises:
        sqlite3.Error: from any method when the store cannot be read or written.
    """

    def __init__(self, db_path: Path, *, redactor: Redactor | None = None) -> None:
        """Open the audit table of the store at ``db_path`` (its schema must be migrated).

        Raises:
            sqlite3.DatabaseError: the file has no audit table (open a :class:`Store` first).
        """
        self.path = Path(db_path)
        self._redactor = redactor or Redactor()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            found = self._db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='audit'")
            if found.fetchone() is None:
                raise sqlite3.DatabaseError(f"{self.path} has no audit table (schema older than version 3)")
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def open(cls, data_dir: Path, *, redactor: Redactor | None = None) -> AuditLog:
        """Open the audit of the agent whose data folder is ``data_dir`` (migrating its store).

        Raises:
            sqlite3.Error: the store cannot be opened or migrated.
        """
        Store(Path(data_dir) / "agent.sqlite").close()
        return cls(Path(data_dir) / "agent.sqlite", redactor=redactor)

    def record(
        self,
        *,
        at: datetime,
        channel: Channel,
        requester: str,
        device_id: str,
        outcome: Outcome,
        ref: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        sources: Sequence[str] = (),
        size_bytes: int | None = None,
        sha256: str | None = None,
        detail: str = "",
        bundle: str | None = None,
    ) -> int:
        """Append one pull and return its id; ``detail`` (free text) is redacted, text is shortened.

        Raises:
            ValueError: an unknown channel or outcome, or a naive time.
        """
        if channel not in CHANNELS:
            raise ValueError(f"audit channel must be one of {', '.join(CHANNELS)}, not {channel!r}")
        if outcome not in OUTCOMES:
            raise ValueError(f"audit outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        clean = self._redactor.redact
        row = (
            to_iso(at), channel, requester[:200], ref[:200], device_id,
            to_iso(since) if since else None, to_iso(until) if until else None, ",".join(sources),
            size_bytes, sha256, outcome, clean(detail)[:MAX_DETAIL], bundle,
        )  # fmt: skip
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO audit (at, channel, requester, ref, device_id, since, until, sources,"
                f" size_bytes, sha256, outcome, detail, bundle) VALUES ({', '.join('?' * len(row))})",
                row,
            )
            entry_id = cursor.lastrowid
        assert entry_id is not None
        return entry_id

    def entries(self, *, device_id: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Return audited pulls, newest first; of one device when ``device_id`` is given."""
        args: list[Any] = [device_id] if device_id is not None else []
        where = "WHERE device_id = ?" if device_id is not None else ""
        sql = f"SELECT * FROM audit {where} ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(max(0, limit))
        with self._lock:
            cursor = self._db.execute(sql, args)
            cursor.row_factory = sqlite3.Row
            rows = cursor.fetchall()
        return [_entry(row) for row in rows]

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


def _entry(row: sqlite3.Row) -> AuditEntry:
    at = from_iso(row["at"])
    assert at is not None
    return AuditEntry(
        id=row["id"],
        at=at,
        channel=row["channel"],
        requester=row["requester"],
        ref=row["ref"],
        device_id=row["device_id"],
        since=from_iso(row["since"]),
        until=from_iso(row["until"]),
        sources=tuple(s for s in row["sources"].split(",") if s),
        size_bytes=row["size_bytes"],
        sha256=row["sha256"],
        outcome=row["outcome"],
        detail=row["detail"],
        bundle=row["bundle"],
    )
