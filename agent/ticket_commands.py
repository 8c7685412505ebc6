"""``/logs`` from a ticket: an engineer's comment on one of the agent's open tickets pulls logs.

Every ``commands.poll_s`` seconds :meth:`TicketCommandWatcher.run_once` reads the comments of
the agent's open tickets (at most ``commands.max_tickets`` per round, the next ones in the next
round) through the backend's :meth:`~uploader.base.TicketBackend.list_comments`. A comment
whose first line is ``/logs``, ``/logs 60m``, ``/logs DEVICE`` or ``/logs DEVICE 60m``, written
by one of ``commands.allowed_authors``, pulls a log bundle (:func:`agent.bundle.collect_bundle`,
audited as channel ``ticket``), attaches it to that ticket and answers with the file's name,
size and SHA-256: one ``ATTACH`` intent through the durable outbox. A wrong command of an
allowed author (``/log``, ``/logs a b c``, an unknown device, too long a range) gets a short
reply with the usage; a command of anyone else is only logged. Comments carrying the outbox's
``[hezo:…]`` marker are the agent's own and are never taken as commands.

Exactly once, also across restarts: each command comment gets a row in
``<data_dir>/ticket-commands.sqlite`` (WAL, ``synchronous=FULL``) before anything is done:
``running`` with its attempt count. Its answer (bundle and reply, or the usage) is one outbox
intent whose idempotency key names the comment, so the outbox takes at most one answer per
comment; then the row becomes ``done`` (or ``failed``). A ``running`` row found later means the
agent stopped mid-command: it is run once more, unless its answer already reached the outbox;
after :data:`MAX_ATTEMPTS` attempts it is answered with "did not finish" instead. A command is
thus pulled at most twice and answered at most once. Rows of authors not allowed (``ignored``)
and of commands older than ``commands.max_age_h`` (``stale``) are recorded too, so they are
logged once.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from agent.bundle_models import BundleError, BundleResult, Requester
from agent.clock import Clock
from agent.redact import RedactingSink
from agent.store import to_iso
from config.commands import CommandSettings
from uploader.base import BackendAuthError, BackendError, TicketBackend
from uploader.intents import Intent, IntentKind, TicketSink
from uploader.models import Attachment, Comment, Priority, TicketRef

if TYPE_CHECKING:
    from agent.daemon import Agent

__all__ = [
    "MAX_ATTEMPTS",
    "STATE_FILE",
    "USAGE",
    "CommandError",
    "CommandLedger",
    "LedgerRow",
    "LogsCommand",
    "OpenTicket",
    "Puller",
    "RoundReport",
    "TicketCommandWatcher",
    "answer_key",
    "is_agent_comment",
    "looks_like_command",
    "parse_command",
]

log = logging.getLogger("hezo.commands")

STATE_FILE = "ticket-commands.sqlite"
USAGE = "/logs [DEVICE] [DURATION]"
#: a command found ``running`` after this many attempts is answered "did not finish", not run again
MAX_ATTEMPTS = 2
#: bundles pulled in one round at most (the other commands wait for the next round)
MAX_PULLS_PER_ROUND = 3
MAX_LINE_CHARS = 200

State = Literal["running", "done", "failed", "ignored", "stale"]
_MARKER = re.compile(r"^\s*\[hezo:[0-9a-f]{16}\]\s*$", re.MULTILINE)
_DURATION = re.compile(r"^(\d{1,6})(m|min|h)?$", re.IGNORECASE)
_DEVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    backend TEXT NOT NULL,
    ticket_id TEXT NOT NULL,
    comment_id TEXT NOT NULL,
    ticket_key TEXT NOT NULL,
    author TEXT NOT NULL,
    line TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed', 'ignored', 'stale')),
    attempts INTEGER NOT NULL DEFAULT 0,
    seen_at TEXT NOT NULL,
    finished_at TEXT,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (backend, ticket_id, comment_id)
);
"""


# --- reading a comment ------------------------------------------------------------------------------


class CommandError(ValueError):
    """A command that cannot be run as written; the message says why (it goes into the reply)."""


@dataclass(frozen=True, slots=True)
class LogsCommand:
    """A parsed ``/logs``: the device (None: the ticket's) and the minutes back (None: the default)."""

    device_id: str | None = None
    minutes: int | None = None


def first_line(body: str) -> str:
    """The comment's first non-empty line, stripped (empty when it has none)."""
    return next((line.strip() for line in body.splitlines() if line.strip()), "")


def is_agent_comment(body: str) -> bool:
    """True when ``body`` carries the outbox's ``[hezo:…]`` marker line: the agent wrote it."""
    return _MARKER.search(body) is not None


def looks_like_command(body: str) -> bool:
    """True when the first line starts with ``/log`` (``/logs``, and mistakes such as ``/log``)."""
    words = first_line(body).split()
    return bool(words) and words[0].lower().startswith("/log")


def parse_command(line: str, *, max_minutes: int) -> LogsCommand:
    """Read ``/logs [DEVICE] [DURATION]``; DURATION is ``60m``, ``60`` (minutes) or ``2h``.

    Raises:
        CommandError: not ``/logs``, too many words, a word that is neither a device id nor a
            duration where one is expected, or a duration of zero or above ``max_minutes``.
    """
    words = line.split()
    if not words or words[0].lower() != "/logs":
        shown = words[0][:40] if words else line[:40]
        raise CommandError(f"unknown command {shown!r} (the command is /logs)")
    args = words[1:]
    if len(args) > 2:
        raise CommandError(f"too many words after /logs ({len(args)}; at most a device and a duration)")
    if not args:
        return LogsCommand()
    if len(args) == 1 and _DURATION.match(args[0]):
        return LogsCommand(minutes=_minutes(args[0], max_minutes))
    device = args[0]
    if not _DEVICE.match(device):
        raise CommandError(f"{device[:40]!r} is not a device id")
    return LogsCommand(device, _minutes(args[1], max_minutes) if len(args) == 2 else None)


def _minutes(word: str, max_minutes: int) -> int:
    found = _DURATION.match(word)
    if not found:
        raise CommandError(f"{word[:40]!r} is not a duration such as 60m, 90 or 2h")
    minutes = int(found.group(1)) * (60 if (found.group(2) or "m").lower() == "h" else 1)
    if minutes < 1:
        raise CommandError("the duration must be at least 1 minute")
    if minutes > max_minutes:
        raise CommandError(f"{word} is longer than the {max_minutes} minutes allowed")
    return minutes


# --- the durable record of handled comments ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One command comment as recorded: where it is, who wrote it, and how far it got."""

    backend: str
    ticket_id: str
    comment_id: str
    ticket_key: str
    author: str
    line: str
    state: str
    attempts: int
    seen_at: datetime
    finished_at: datetime | None
    detail: str


class CommandLedger:
    """The command comments seen, in their own SQLite file; thread-safe.

    Raises:
        sqlite3.Error: from any method when the file cannot be read or written.
    """

    def __init__(self, path: Path) -> None:
        """Open (creating) the ledger at ``path``."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()
            raise

    def get(self, backend: str, ticket_id: str, comment_id: str) -> LedgerRow | None:
        """Return the row of this comment, if it was seen."""
        with self._lock:
            cursor = self._db.execute(
                "SELECT * FROM commands WHERE backend = ? AND ticket_id = ? AND comment_id = ?",
                (backend, ticket_id, comment_id),
            )
            cursor.row_factory = sqlite3.Row
            row = cursor.fetchone()
        return None if row is None else _row(row)

    def rows(self) -> list[LedgerRow]:
        """Return every row, in the order they were first seen."""
        with self._lock:
            cursor = self._db.execute("SELECT * FROM commands ORDER BY rowid")
            cursor.row_factory = sqlite3.Row
            rows = cursor.fetchall()
        return [_row(row) for row in rows]

    def begin(
        self, ticket: OpenTicket, comment: Comment, line: str, now: datetime, *, state: State = "running"
    ) -> int:
        """Record an attempt at ``comment`` (a new row, or one more attempt); return its attempt number.

        A row recorded as ``ignored`` or ``stale`` counts no attempt (0).
        """
        attempt = 1 if state == "running" else 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO commands (backend, ticket_id, comment_id, ticket_key, author, line, state,"
                    " attempts, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (backend, ticket_id, comment_id) DO UPDATE SET attempts = attempts + 1"
                    " WHERE state = 'running'",
                    (ticket.ref.backend, ticket.ref.id, comment.id, ticket.ticket_key,
                     comment.author[:MAX_LINE_CHARS], line[:MAX_LINE_CHARS], state, attempt, to_iso(now)),
                )  # fmt: skip
                found = self._db.execute(
                    "SELECT attempts FROM commands WHERE backend = ? AND ticket_id = ? AND comment_id = ?",
                    (ticket.ref.backend, ticket.ref.id, comment.id),
                ).fetchone()
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return int(found[0])

    def finish(self, ticket: OpenTicket, comment: Comment, state: State, detail: str, now: datetime) -> None:
        """Mark the comment's command finished as ``state`` (``done`` or ``failed``)."""
        with self._lock:
            self._db.execute(
                "UPDATE commands SET state = ?, finished_at = ?, detail = ?"
                " WHERE backend = ? AND ticket_id = ? AND comment_id = ?",
                (
                    state,
                    to_iso(now),
                    detail[: MAX_LINE_CHARS * 5],
                    ticket.ref.backend,
                    ticket.ref.id,
                    comment.id,
                ),
            )

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()


def _row(row: sqlite3.Row) -> LedgerRow:
    seen = datetime.fromisoformat(row["seen_at"])
    done = datetime.fromisoformat(row["finished_at"]) if row["finished_at"] else None
    return LedgerRow(
        backend=row["backend"],
        ticket_id=row["ticket_id"],
        comment_id=row["comment_id"],
        ticket_key=row["ticket_key"],
        author=row["author"],
        line=row["line"],
        state=row["state"],
        attempts=row["attempts"],
        seen_at=seen,
        finished_at=done,
        detail=row["detail"],
    )


# --- the watcher ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenTicket:
    """An open ticket of the agent: its key, where it lives, its device (None: not one device)."""

    ticket_key: str
    ref: TicketRef
    device_id: str | None
    priority: Priority


#: pulls one bundle: (device id, who asked, how far back) → the written bundle
Puller = Callable[[str, Requester, timedelta], BundleResult]


@dataclass
class RoundReport:
    """What one round did (for logs and tests)."""

    tickets: int = 0
    commands: int = 0
    pulls: int = 0
    answered: int = 0
    ignored: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Answer:
    state: State
    detail: str
    body: str
    bundle: BundleResult | None = None


def answer_key(ref: TicketRef, comment_id: str) -> str:
    """The outbox idempotency key of the one answer to a command comment."""
    return f"ticket-command:{ref.backend}:{ref.id}:{comment_id}"


class TicketCommandWatcher:
    """Reads comments of open tickets and runs ``/logs`` (see the module docstring); one round at a time."""

    def __init__(
        self,
        settings: CommandSettings,
        *,
        backend: TicketBackend,
        sink: TicketSink,
        tickets: Callable[[], Sequence[OpenTicket]],
        pull: Puller,
        state_path: Path,
        clock: Clock,
        default_minutes: int,
        answered: Callable[[str], bool] | None = None,
    ) -> None:
        """Watch ``tickets()`` through ``backend``; answers go to ``sink`` (the outbox).

        ``answered(key)`` tells whether an answer with this idempotency key is already in the
        outbox (a command resumed after a crash is then not pulled again).

        Raises:
            sqlite3.Error: the ledger file cannot be created.
        """
        self.settings = settings
        self.backend = backend
        self.state_path = Path(state_path)
        self.default_minutes = max(1, min(default_minutes, settings.max_minutes))
        self._sink = sink
        self._tickets = tickets
        self._pull = pull
        self._clock = clock
        self._answered = answered or (lambda _key: False)
        self._offset = 0
        self._round_lock = threading.Lock()
        if settings.active:
            CommandLedger(self.state_path).close()  # a data folder that cannot hold it fails now

    @classmethod
    def for_agent(cls, agent: Agent) -> TicketCommandWatcher:
        """The watcher of a running agent: its open incidents' tickets, its outbox, its bundles.

        Raises:
            sqlite3.Error: the ledger file cannot be created in the agent's data folder.
        """
        config = agent.config
        known = {dev.id for dev in config.devices}

        def tickets() -> list[OpenTicket]:
            found: dict[str, OpenTicket] = {}
            for incident in agent.store.incidents(open_only=True):
                key = incident.ticket_key
                if not key or key in found:
                    continue
                ref = agent.dispatcher.ref_for(key)
                if ref is None:  # held back, or its open is still in the outbox
                    continue
                device = incident.device_id if incident.device_id in known else None
                found[key] = OpenTicket(key, ref, device, _priority(incident.priority))
            return list(found.values())

        def pull(device_id: str, requester: Requester, span: timedelta) -> BundleResult:
            from agent.bundle import collect_bundle

            return collect_bundle(agent, device_id, requester=requester, since=span)

        return cls(
            config.commands,
            backend=agent.backend,
            sink=RedactingSink(agent.dispatcher, agent.redactor),
            tickets=tickets,
            pull=pull,
            state_path=agent.data_dir / STATE_FILE,
            clock=agent.clock,
            default_minutes=round(config.bundles.default_since_s / 60),
            answered=agent.dispatcher.store.is_known,
        )

    @property
    def active(self) -> bool:
        """True when rounds read comments (enabled, and someone is allowed)."""
        return self.settings.active

    def run_once(self) -> RoundReport:
        """One round over the open tickets (the periodic job); errors are logged, never raised."""
        report = RoundReport()
        if not self.active:
            return report
        if not self._round_lock.acquire(blocking=False):
            log.info("event=ticket_commands_round_skipped reason=previous_round_running")
            return report
        try:
            with self._ledger() as ledger:
                self._round(ledger, report)
        except (sqlite3.Error, OSError) as err:
            log.error("event=ticket_commands_round_failed error=%s", err)
            report.errors.append(f"{type(err).__name__}: {err}")
        finally:
            self._round_lock.release()
        if report.commands or report.errors:
            log.info(
                "event=ticket_commands_round tickets=%d commands=%d pulls=%d answered=%d ignored=%d"
                " errors=%d",
                report.tickets, report.commands, report.pulls, report.answered, report.ignored,
                len(report.errors),
            )  # fmt: skip
        return report

    @contextmanager
    def _ledger(self) -> Iterator[CommandLedger]:
        with closing(CommandLedger(self.state_path)) as ledger:
            yield ledger

    def _round(self, ledger: CommandLedger, report: RoundReport) -> None:
        tickets = list(self._tickets())
        if not tickets:
            return
        start = self._offset % len(tickets)
        rotated = tickets[start:] + tickets[:start]
        read = 0
        for ticket in rotated[: self.settings.max_tickets]:
            if report.pulls >= MAX_PULLS_PER_ROUND:
                break
            read += 1
            try:
                comments = self.backend.list_comments(ticket.ref)
            except BackendAuthError as err:
                log.error("event=ticket_comments_unreadable backend=%s reason=credentials error=%s",
                          self.backend.name, err)  # fmt: skip
                report.errors.append(f"{ticket.ticket_key}: {err}")
                break
            except BackendError as err:
                log.warning("event=ticket_comments_unreadable ticket_key=%s ref=%s error=%s",
                            ticket.ticket_key, ticket.ref.id, err)  # fmt: skip
                report.errors.append(f"{ticket.ticket_key}: {err}")
                continue
            report.tickets += 1
            for comment in comments:
                if report.pulls >= MAX_PULLS_PER_ROUND:
                    break
                self._consider(ledger, ticket, comment, report)
        self._offset = (start + read) % len(tickets)

    def _consider(
        self, ledger: CommandLedger, ticket: OpenTicket, comment: Comment, report: RoundReport
    ) -> None:
        """Run ``comment`` if it is a command not handled yet (recording it first)."""
        if is_agent_comment(comment.body) or not looks_like_command(comment.body):
            return
        row = ledger.get(ticket.ref.backend, ticket.ref.id, comment.id)
        if row is not None and row.state != "running":
            return
        line = first_line(comment.body)[:MAX_LINE_CHARS]
        now = self._clock.now()
        if row is None and not self._admissible(ledger, ticket, comment, line, now, report):
            return
        report.commands += 1
        key = answer_key(ticket.ref, comment.id)
        if row is not None and row.attempts >= MAX_ATTEMPTS:
            self._give_up(ledger, ticket, comment, row.attempts, report)
            return
        attempt = ledger.begin(ticket, comment, line, now)  # durable before anything is done
        if attempt > 1:
            log.warning("event=ticket_command_resumed ticket_key=%s comment=%s attempt=%d",
                        ticket.ticket_key, comment.id, attempt)  # fmt: skip
            if self._answered(key):  # the agent stopped after queuing the answer: nothing to redo
                ledger.finish(ticket, comment, "done", "answer already in the outbox", self._clock.now())
                return
        answer = self._run(ticket, comment, line, report)
        self._submit(ticket, key, answer)
        ledger.finish(ticket, comment, answer.state, answer.detail, self._clock.now())
        report.answered += 1

    def _admissible(
        self,
        ledger: CommandLedger,
        ticket: OpenTicket,
        comment: Comment,
        line: str,
        now: datetime,
        report: RoundReport,
    ) -> bool:
        """A new command: record and log (once) one that is not allowed or too old."""
        if not self.settings.allows(comment.author):
            ledger.begin(ticket, comment, line, now, state="ignored")
            report.ignored += 1
            log.warning(
                "event=ticket_command_ignored reason=author_not_allowed ticket_key=%s comment=%s author=%s",
                ticket.ticket_key, comment.id, comment.author[:80],
            )  # fmt: skip
            return False
        created = comment.created_at if comment.created_at.tzinfo else comment.created_at.replace(tzinfo=UTC)
        if now - created > timedelta(hours=self.settings.max_age_h):
            ledger.begin(ticket, comment, line, now, state="stale")
            report.ignored += 1
            log.warning(
                "event=ticket_command_ignored reason=too_old ticket_key=%s comment=%s written_at=%s",
                ticket.ticket_key, comment.id, created.isoformat(),
            )  # fmt: skip
            return False
        log.info("event=ticket_command ticket_key=%s comment=%s author=%s command=%r",
                 ticket.ticket_key, comment.id, comment.author[:80], line)  # fmt: skip
        return True

    def _run(self, ticket: OpenTicket, comment: Comment, line: str, report: RoundReport) -> _Answer:
        """Parse and pull; return the answer to give (never raises for a bad command or a failed pull)."""
        try:
            command = parse_command(line, max_minutes=self.settings.max_minutes)
        except CommandError as err:
            return self._usage(ticket, str(err))
        device_id = command.device_id or ticket.device_id
        if device_id is None:
            return self._usage(ticket, "this ticket is not about one device: name it, e.g. /logs DEVICE 60m")
        minutes = command.minutes or self.default_minutes
        requester = Requester("ticket", comment.author, f"{ticket.ticket_key} comment {comment.id}")
        report.pulls += 1
        try:
            result = self._pull(device_id, requester, timedelta(minutes=minutes))
        except BundleError as err:  # unknown device or a bad range: refused (and audited) before pulling
            return self._usage(ticket, str(err))
        except Exception as err:  # a failed pull is answered, never retried in a loop
            log.exception("event=ticket_command_pull_failed ticket_key=%s comment=%s device=%s",
                          ticket.ticket_key, comment.id, device_id)  # fmt: skip
            text = f"{type(err).__name__}: {err}"
            body = (
                f"[hezo-agent] /logs for {device_id} failed: {text[:300]}.\n"
                "Nothing was attached. Write /logs again in a new comment to retry."
            )
            return _Answer("failed", text, body)
        return _Answer("done", f"sha256={result.sha256} audit={result.audit_id}",
                       _attached_text(result, device_id, minutes, comment), result)  # fmt: skip

    def _usage(self, ticket: OpenTicket, problem: str) -> _Answer:
        default = f" ({ticket.device_id})" if ticket.device_id else ""
        body = (
            f"[hezo-agent] /logs: {problem.rstrip('.')}. Nothing was pulled.\n"
            f'Usage: {USAGE} on the first line of a comment, e.g. "/logs" (this ticket\'s device{default},'
            f' the last {self.default_minutes} min) or "/logs a30-sala 60m". DURATION: minutes (60m, 90)'
            f" or hours (2h), at most {self.settings.max_minutes} min."
        )
        return _Answer("done", f"usage: {problem}", body)

    def _give_up(
        self, ledger: CommandLedger, ticket: OpenTicket, comment: Comment, attempts: int, report: RoundReport
    ) -> None:
        key = answer_key(ticket.ref, comment.id)
        if not self._answered(key):
            body = (
                f"[hezo-agent] /logs (comment {comment.id}) did not finish after {attempts} attempts"
                " (the agent stopped during the pull). Write /logs again in a new comment to retry."
            )
            self._submit(ticket, key, _Answer("failed", "gave up", body))
            report.answered += 1
        log.error("event=ticket_command_given_up ticket_key=%s comment=%s attempts=%d",
                  ticket.ticket_key, comment.id, attempts)  # fmt: skip
        ledger.finish(ticket, comment, "failed", f"gave up after {attempts} attempts", self._clock.now())

    def _submit(self, ticket: OpenTicket, key: str, answer: _Answer) -> None:
        bundle = answer.bundle
        attachments = (
            (Attachment(bundle.path.name, bundle.path, "application/gzip"),) if bundle is not None else ()
        )
        self._sink.submit(
            Intent(
                kind=IntentKind.ATTACH if attachments else IntentKind.COMMENT,
                ticket_key=ticket.ticket_key,
                idempotency_key=key,
                priority=ticket.priority,
                body=answer.body,
                attachments=attachments,
            )
        )


def _attached_text(result: BundleResult, device_id: str, minutes: int, comment: Comment) -> str:
    failed = ", ".join(f"{f['source']} ({f['reason']})" for f in result.failed)
    return (
        f"[hezo-agent] /logs: {result.path.name} attached, {result.size_bytes} bytes,"
        f" SHA-256 {result.sha256}.\n"
        f"Device {device_id}, the last {minutes} min; outcome {result.outcome}"
        + (f"; failed sources: {failed}" if failed else "")
        + f".\nAsked by {comment.author} in comment {comment.id}; audit entry {result.audit_id}."
    )


def _priority(value: str) -> Priority:
    try:
        return Priority(value)
    except ValueError:
        return Priority.MEDIUM
