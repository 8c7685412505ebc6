"""The agent's own memory: device states, last known identity, recent polls, logs, incidents.

One SQLite file in WAL mode. Incidents (and the audit, through its own connection) are written
with ``synchronous=FULL``, so what was written survives a crash or a power cut; the per-poll
memory (:meth:`Store.record_poll`: outcome, state, identity, flapping, finding tracks) is one
transaction per poll with ``synchronous=NORMAL`` (see :data:`POLL_SYNC` for why that is safe).
One connection shared across threads behind a lock. Datetimes are stored as ISO 8601 UTC
strings and returned timezone-aware. ``PRAGMA user_version`` records the schema version for
migrations.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.finding_tracker import FindingTracker, tracker_from_json, tracker_to_json
from agent.flapping import FlapState
from agent.models import ANSWERED_REASONS, PollOutcome
from agent.state import DeviceState, Health
from collectors.models import CheckResult, DeviceFacts

SCHEMA_VERSION = 4
DEFAULT_KEEP_OUTCOMES = 500

#: ``synchronous`` of the per-poll transaction (issue 9: the fsync of every poll's commit was most
#: of the agent's store CPU). Safe because in WAL mode with NORMAL a commit is complete once its
#: frames are in the WAL file, only not yet fsynced: a killed agent (kill -9, a crash, a service
#: stop) loses nothing that was committed, since the OS still writes the file. Only an OS crash
#: or a power cut can lose the newest such transactions, and the WAL's chained checksums make
#: recovery stop at the first lost frame, so the file is always a consistent earlier state: the
#: polls lost are re-derived by the next polls (and :meth:`agent.daemon.Agent.reconcile` squares
#: the tickets with them at start). Incidents stay FULL: the outbox (another file,
#: ``uploader/outbox_store.py``, always FULL) holds intents naming an incident's ticket key, so an
#: incident row must be as durable as they are or a lost row could mean a second ticket. Every
#: FULL commit fsyncs the WAL, and with it every earlier NORMAL commit: the state a poll saved
#: before acting on a ticket is durable once that ticket's incident is.
POLL_SYNC = "NORMAL"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    health TEXT NOT NULL,
    failures INTEGER NOT NULL,
    successes INTEGER NOT NULL,
    changed_at TEXT,
    first_failure_at TEXT,
    down_since TEXT,
    last_ok_at TEXT,
    last_reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS facts (
    device_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    firmware TEXT NOT NULL,
    serial TEXT NOT NULL,
    mac TEXT NOT NULL,
    hostname TEXT,
    seen_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    at TEXT NOT NULL,
    ok INTEGER NOT NULL,
    reason TEXT NOT NULL,
    duration_s REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    checks TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS outcomes_device ON outcomes(device_id, id);
CREATE TABLE IF NOT EXISTS logs (
    device_id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    taken_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    device_id TEXT NOT NULL,
    site TEXT NOT NULL,
    problem TEXT NOT NULL,
    priority TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'resolved')),
    opened_at TEXT NOT NULL,
    resolved_at TEXT,
    ticket_key TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS incidents_one_open ON incidents(key) WHERE status = 'open';
"""

#: schema changes by the version that introduced them (applied in order to older files)
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "ALTER TABLE incidents ADD COLUMN serial TEXT",
        "ALTER TABLE incidents ADD COLUMN reopen_count INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE incidents ADD COLUMN last_comm_at TEXT",
        "ALTER TABLE incidents ADD COLUMN replaced_by TEXT",
        "ALTER TABLE incidents ADD COLUMN return_due TEXT",
        "ALTER TABLE incidents ADD COLUMN return_reminded INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX IF NOT EXISTS incidents_key ON incidents(key, id)",
    ),
    # the audit of log pulls (agent/audit.py): append-only, enforced by the database itself
    3: (
        "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL,"
        " channel TEXT NOT NULL, requester TEXT NOT NULL, ref TEXT NOT NULL DEFAULT '',"
        " device_id TEXT NOT NULL, since TEXT, until TEXT, sources TEXT NOT NULL DEFAULT '',"
        " size_bytes INTEGER, sha256 TEXT, outcome TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '',"
        " bundle TEXT)",
        "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit"
        " BEGIN SELECT RAISE(ABORT, 'the audit table is append-only'); END",
        "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit"
        " BEGIN SELECT RAISE(ABORT, 'the audit table is append-only'); END",
    ),
    # what flap detection and the finding tracker remember per device (issue 5: kept across restarts)
    4: (
        "CREATE TABLE IF NOT EXISTS flaps (device_id TEXT PRIMARY KEY, history TEXT NOT NULL,"
        " flapping INTEGER NOT NULL, percent REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS finding_tracks (device_id TEXT PRIMARY KEY, tracks TEXT NOT NULL)",
    ),
}


class IncidentAlreadyOpen(ValueError):
    """An incident with this key is already open (at most one open incident per key)."""


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    """One recorded poll, as the store gives it back."""

    device_id: str
    at: datetime
    ok: bool
    reason: str
    duration_s: float
    detail: str = ""
    checks: tuple[CheckResult, ...] = ()

    @property
    def reachable(self) -> bool:
        """True when the device answered at all (as :attr:`PollOutcome.reachable`)."""
        return self.ok or self.reason in ANSWERED_REASONS


@dataclass(frozen=True, slots=True)
class LogRecord:
    """The last log collected from a device."""

    device_id: str
    path: Path
    size_bytes: int
    sha256: str
    taken_at: datetime


@dataclass(frozen=True, slots=True)
class Incident:
    """One problem of one device; ``status`` is ``open`` or ``resolved``."""

    id: int
    key: str
    device_id: str
    site: str
    problem: str
    priority: str
    status: str
    opened_at: datetime
    resolved_at: datetime | None
    ticket_key: str
    serial: str | None = None
    reopen_count: int = 0
    last_comm_at: datetime | None = None
    replaced_by: str | None = None
    return_due: datetime | None = None
    return_reminded: bool = False


def to_iso(value: datetime) -> str:
    """Return ``value`` as an ISO 8601 UTC string.

    Raises:
        ValueError: ``value`` is naive (no time zone).
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("naive datetime: the store keeps timezone-aware times only")
    return value.astimezone(UTC).isoformat()


def from_iso(text: str | None) -> datetime | None:
    """Return the timezone-aware datetime stored as ``text`` (None stays None)."""
    if text is None:
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _opt_iso(value: datetime | None) -> str | None:
    return None if value is None else to_iso(value)


def _at(text: str) -> datetime:
    value = from_iso(text)
    assert value is not None
    return value


class Store:
    """SQLite-backed memory of the agent; every method is thread-safe.

    Raises:
        sqlite3.Error: from any method when the file cannot be read or written.
    """

    def __init__(self, path: Path, *, keep_outcomes: int = DEFAULT_KEEP_OUTCOMES) -> None:
        if keep_outcomes < 1:
            raise ValueError("keep_outcomes must be at least 1")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._keep = keep_outcomes
        self._lock = threading.Lock()
        #: write transactions committed through this connection (tests check one per poll)
        self.commits = 0
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._sync = "FULL"
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        """Create the schema, or refuse a file written by a newer agent."""
        with self._tx():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"{self.path} has schema version {version}; this agent knows up to {SCHEMA_VERSION}"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            for target in sorted(_MIGRATIONS):
                if version < target:
                    for statement in _MIGRATIONS[target]:
                        self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _tx(self, sync: str = "FULL") -> Iterator[sqlite3.Connection]:
        """Hold the lock and run the block as one transaction committed with ``synchronous=sync``.

        The pragma is per connection and cannot change inside a transaction, so it is switched
        before BEGIN, and only when it differs (a run of polls costs no pragma at all).
        """
        with self._lock:
            if sync != self._sync:
                self._db.execute(f"PRAGMA synchronous={sync}")
                self._sync = sync
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self.commits += 1

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cursor = self._db.execute(sql, args)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()

    def close(self) -> None:
        """Close the file; the store is unusable afterwards."""
        with self._lock:
            self._db.close()

    # --- device state ---------------------------------------------------------------------

    def save_state(self, device_id: str, state: DeviceState) -> None:
        """Remember ``state`` as the device's current state."""
        with self._tx() as db:
            _write_state(db, device_id, state)

    def record_poll(
        self,
        outcome: PollOutcome,
        state: DeviceState,
        *,
        facts: DeviceFacts | None = None,
        flap: FlapState | None = None,
        tracker: FindingTracker | None = None,
    ) -> None:
        """Remember everything one poll of ``outcome.device_id`` changed, in ONE transaction.

        The outcome (as :meth:`record_outcome`), the new ``state``, the identity seen (``facts``,
        at ``outcome.at``), the flap state and the finding tracks; None leaves that part as it
        was (the caller passes only what changed). Committed with :data:`POLL_SYNC`.
        """
        device_id = outcome.device_id
        with self._tx(POLL_SYNC) as db:
            self._write_outcome(db, outcome)
            _write_state(db, device_id, state)
            if facts is not None:
                _write_facts(db, device_id, facts, outcome.at)
            if flap is not None:
                _write_flap(db, device_id, flap)
            if tracker is not None:
                db.execute(
                    "INSERT OR REPLACE INTO finding_tracks (device_id, tracks) VALUES (?, ?)",
                    (device_id, tracker_to_json(tracker)),
                )

    # --- flapping and finding tracks (remembered across restarts) -------------------------

    def save_flap(self, device_id: str, flap: FlapState) -> None:
        """Remember the device's flap state (outside a poll: a repair at start)."""
        with self._tx() as db:
            _write_flap(db, device_id, flap)

    def flap_states(self) -> dict[str, FlapState]:
        """Every saved flap state by device id (devices never saved are absent)."""
        return {
            row["device_id"]: FlapState(
                history=tuple(ch == "1" for ch in row["history"]),
                flapping=bool(row["flapping"]),
                percent=float(row["percent"]),
            )
            for row in self._query("SELECT * FROM flaps")
        }

    def finding_trackers(self) -> dict[str, FindingTracker]:
        """Every saved finding tracker by device id (unreadable tracks are dropped and logged)."""
        rows = self._query("SELECT * FROM finding_tracks")
        return {row["device_id"]: tracker_from_json(row["tracks"]) for row in rows}

    def load_state(self, device_id: str) -> DeviceState | None:
        """Return the device's last saved state, or None if it was never saved."""
        rows = self._query("SELECT * FROM devices WHERE device_id = ?", (device_id,))
        if not rows:
            return None
        row = rows[0]
        return DeviceState(
            health=Health(row["health"]),
            failures=row["failures"],
            successes=row["successes"],
            changed_at=from_iso(row["changed_at"]),
            first_failure_at=from_iso(row["first_failure_at"]),
            down_since=from_iso(row["down_since"]),
            last_ok_at=from_iso(row["last_ok_at"]),
            last_reason=row["last_reason"],
        )

    # --- identity -------------------------------------------------------------------------

    def save_facts(self, device_id: str, facts: DeviceFacts, seen_at: datetime) -> None:
        """Remember the device's identity as seen at ``seen_at`` (a good poll)."""
        with self._tx() as db:
            _write_facts(db, device_id, facts, seen_at)

    def facts(self, device_id: str) -> tuple[DeviceFacts, datetime] | None:
        """Return the last known identity of the device and when it was last seen, or None."""
        rows = self._query("SELECT * FROM facts WHERE device_id = ?", (device_id,))
        if not rows:
            return None
        row = rows[0]
        facts = DeviceFacts(
            model=row["model"], firmware=row["firmware"], serial=row["serial"], mac=row["mac"],
            hostname=row["hostname"],
        )
        return facts, _at(row["seen_at"])

    # --- poll outcomes --------------------------------------------------------------------

    def record_outcome(self, outcome: PollOutcome) -> None:
        """Append one poll outcome, keeping only the newest ``keep_outcomes`` per device."""
        with self._tx() as db:
            self._write_outcome(db, outcome)

    def _write_outcome(self, db: sqlite3.Connection, outcome: PollOutcome) -> None:
        checks = json.dumps(
            [{"check": c.check, "ok": c.ok, "latency_ms": c.latency_ms, "detail": c.detail}
             for c in outcome.checks]
        )
        db.execute(
            "INSERT INTO outcomes (device_id, at, ok, reason, duration_s, detail, checks)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (outcome.device_id, to_iso(outcome.at), int(outcome.ok), outcome.reason, outcome.duration_s,
             outcome.detail, checks),
        )
        db.execute(
            "DELETE FROM outcomes WHERE device_id = ? AND id <= (SELECT id FROM outcomes"
            " WHERE device_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (outcome.device_id, outcome.device_id, self._keep),
        )

    def recent_outcomes(self, device_id: str, limit: int = 20) -> list[OutcomeRecord]:
        """Return up to ``limit`` recorded polls of the device, newest first."""
        rows = self._query(
            "SELECT * FROM outcomes WHERE device_id = ? ORDER BY id DESC LIMIT ?", (device_id, max(0, limit))
        )
        return [
            OutcomeRecord(
                device_id=row["device_id"],
                at=_at(row["at"]),
                ok=bool(row["ok"]),
                reason=row["reason"],
                duration_s=row["duration_s"],
                detail=row["detail"],
                checks=tuple(
                    CheckResult(check=c["check"], ok=bool(c["ok"]), latency_ms=float(c["latency_ms"]),
                                detail=c.get("detail", ""))
                    for c in json.loads(row["checks"])
                ),
            )
            for row in rows
        ]

    # --- logs -----------------------------------------------------------------------------

    def save_log(self, device_id: str, path: Path, size_bytes: int, sha256: str, taken_at: datetime) -> None:
        """Remember the device's last collected log file."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO logs (device_id, path, size_bytes, sha256, taken_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (device_id, str(path), size_bytes, sha256, to_iso(taken_at)),
            )

    def last_log(self, device_id: str) -> LogRecord | None:
        """Return the device's last collected log, or None."""
        rows = self._query("SELECT * FROM logs WHERE device_id = ?", (device_id,))
        if not rows:
            return None
        row = rows[0]
        return LogRecord(
            device_id=row["device_id"], path=Path(row["path"]), size_bytes=row["size_bytes"],
            sha256=row["sha256"], taken_at=_at(row["taken_at"]),
        )

    # --- incidents ------------------------------------------------------------------------

    def open_incident(
        self,
        key: str,
        device_id: str,
        site: str,
        problem: str,
        priority: str,
        opened_at: datetime,
        ticket_key: str | None = None,
        serial: str | None = None,
    ) -> int:
        """Open an incident and return its id; ``ticket_key`` None means ``f"{key}#{id}"``.

        Raises:
            IncidentAlreadyOpen: an incident with ``key`` is open already.
        """
        try:
            with self._tx() as db:
                cursor = db.execute(
                    "INSERT INTO incidents (key, device_id, site, problem, priority, status, opened_at,"
                    " ticket_key, serial, last_comm_at) VALUES (?, ?, ?, ?, ?, 'open', ?, ?, ?, ?)",
                    (key, device_id, site, problem, str(priority), to_iso(opened_at), ticket_key, serial,
                     to_iso(opened_at)),
                )
                incident_id = cursor.lastrowid
                assert incident_id is not None
                if ticket_key is None:
                    db.execute(
                        "UPDATE incidents SET ticket_key = ? WHERE id = ?",
                        (f"{key}#{incident_id}", incident_id),
                    )
        except sqlite3.IntegrityError as err:
            raise IncidentAlreadyOpen(f"incident {key} is already open") from err
        return incident_id

    def open_incident_for(self, key: str) -> Incident | None:
        """Return the open incident with ``key``, or None."""
        rows = self._query("SELECT * FROM incidents WHERE key = ? AND status = 'open'", (key,))
        return _incident(rows[0]) if rows else None

    def incident(self, incident_id: int) -> Incident | None:
        """Return the incident with ``incident_id``, or None."""
        rows = self._query("SELECT * FROM incidents WHERE id = ?", (incident_id,))
        return _incident(rows[0]) if rows else None

    def resolve_incident(self, incident_id: int, resolved_at: datetime) -> None:
        """Mark the incident resolved at ``resolved_at`` (resolving twice keeps the first time)."""
        with self._tx() as db:
            db.execute(
                "UPDATE incidents SET status = 'resolved', resolved_at = ? WHERE id = ? AND status = 'open'",
                (to_iso(resolved_at), incident_id),
            )

    def last_incident_for(self, key: str) -> Incident | None:
        """Return the newest incident with ``key`` (open or resolved), or None."""
        rows = self._query("SELECT * FROM incidents WHERE key = ? ORDER BY id DESC LIMIT 1", (key,))
        return _incident(rows[0]) if rows else None

    def reopen_incident(self, incident_id: int, at: datetime) -> None:
        """Open a resolved incident again (its ticket is reopened, not replaced).

        Raises:
            IncidentAlreadyOpen: another incident with the same key is open.
        """
        try:
            with self._tx() as db:
                db.execute(
                    "UPDATE incidents SET status = 'open', resolved_at = NULL,"
                    " reopen_count = reopen_count + 1, last_comm_at = ?"
                    " WHERE id = ? AND status = 'resolved'",
                    (to_iso(at), incident_id),
                )
        except sqlite3.IntegrityError as err:
            raise IncidentAlreadyOpen(f"incident {incident_id} has an open twin") from err

    def update_incident(self, incident_id: int, **values: Any) -> None:
        """Set some of the incident's mutable columns (priority, clocks, replacement)."""
        allowed = {"priority", "last_comm_at", "replaced_by", "return_due", "return_reminded"}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        if not values:
            return
        columns = ", ".join(f"{name} = ?" for name in values)
        args = [to_iso(v) if isinstance(v, datetime) else v for v in values.values()]
        with self._tx() as db:
            db.execute(f"UPDATE incidents SET {columns} WHERE id = ?", (*args, incident_id))

    def incidents(self, open_only: bool = False) -> list[Incident]:
        """Return incidents, oldest first; only the open ones when ``open_only``."""
        where = " WHERE status = 'open'" if open_only else ""
        return [_incident(row) for row in self._query(f"SELECT * FROM incidents{where} ORDER BY id")]


def _write_state(db: sqlite3.Connection, device_id: str, state: DeviceState) -> None:
    db.execute(
        "INSERT OR REPLACE INTO devices (device_id, health, failures, successes, changed_at,"
        " first_failure_at, down_since, last_ok_at, last_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (device_id, str(state.health), state.failures, state.successes, _opt_iso(state.changed_at),
         _opt_iso(state.first_failure_at), _opt_iso(state.down_since), _opt_iso(state.last_ok_at),
         state.last_reason),
    )


def _write_facts(db: sqlite3.Connection, device_id: str, facts: DeviceFacts, seen_at: datetime) -> None:
    db.execute(
        "INSERT OR REPLACE INTO facts (device_id, model, firmware, serial, mac, hostname, seen_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (device_id, facts.model, facts.firmware, facts.serial, facts.mac, facts.hostname, to_iso(seen_at)),
    )


def _write_flap(db: sqlite3.Connection, device_id: str, flap: FlapState) -> None:
    db.execute(
        "INSERT OR REPLACE INTO flaps (device_id, history, flapping, percent) VALUES (?, ?, ?, ?)",
        (device_id, "".join("1" if ok else "0" for ok in flap.history), int(flap.flapping), flap.percent),
    )


def _incident(row: sqlite3.Row) -> Incident:
    return Incident(
        id=row["id"],
        key=row["key"],
        device_id=row["device_id"],
        site=row["site"],
        problem=row["problem"],
        priority=row["priority"],
        status=row["status"],
        opened_at=_at(row["opened_at"]),
        resolved_at=from_iso(row["resolved_at"]),
        ticket_key=row["ticket_key"] or f"{row['key']}#{row['id']}",
        serial=row["serial"],
        reopen_count=row["reopen_count"],
        last_comm_at=from_iso(row["last_comm_at"]),
        replaced_by=row["replaced_by"],
        return_due=from_iso(row["return_due"]),
        return_reminded=bool(row["return_reminded"]),
    )
