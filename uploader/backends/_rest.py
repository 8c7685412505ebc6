"""What the REST helpdesk backends share: one HTTP client with one error mapping, a small
journal of tickets being opened, and the open/attach flow (attachments are fitted to the
helpdesk's limits by :func:`uploader.attachments.plan_attachments`).

Error mapping (the only place a vendor's HTTP answer becomes our error):

* timeout, refused connection, 408, 409, 5xx → :class:`BackendError` (retry);
* 429 → :class:`BackendError` with ``retry_after_s`` from ``Retry-After`` (seconds or a date);
* 401, 403 → :class:`BackendAuthError` (hold the backend until a human fixes the token);
* any other 4xx → :class:`BackendRejected` quoting the vendor's error body.

Every message is scrubbed of the backend's secrets before it leaves this module.

``has_attachment`` (asked by the outbox only when an upload's answer was lost) lists the
ticket's files and matches them by name and size (:func:`match_listing`); the vendors give no
SHA-256, so the hash is compared only where a listing carries one. It answers ``None`` ("cannot
tell, send again") when the listing is refused (404 or another 4xx: the attach itself will get
the real answer) or has an unexpected shape, and for a file bigger than the total limit (trimmed
or left out, so its size says nothing). A retryable failure or rejected credentials raise as
everywhere else: resending blind while the helpdesk is down would risk a duplicate.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import requests

from agent.clock import Clock, SystemClock
from config.ticketing import AttachmentLimits, RestHelpdeskSettings
from uploader.attachments import AttachmentPiece, AttachmentPlan, plan_attachments
from uploader.base import BackendAuthError, BackendError, BackendRejected, TicketBackend
from uploader.models import Attachment, Ticket, TicketRef

log = logging.getLogger("hezo.backend")

#: a list that pages on forever is a helpdesk bug; stop there instead of looping
MAX_PAGES = 500
_QUOTE_CHARS = 600
_RETRYABLE_4XX = {408, 409, 423, 425}


def key_tag(key: str) -> str:
    """Return the label/tag/correlation id that marks the ticket opened for ``key``.

    A key holds site names (spaces, Polish letters, ``/``); helpdesk labels and tags do not
    allow all of that, so the tag is a stable hash: ``hz-`` + 24 hex digits.
    """
    return "hz-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


def parse_time(value: str | None) -> datetime:
    """Parse a helpdesk timestamp (ISO 8601, or ServiceNow's ``YYYY-MM-DD HH:MM:SS`` in UTC).

    Raises:
        BackendError: not a timestamp.
    """
    text = (value or "").strip().replace("Z", "+00:00")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        try:  # Jira: 2024-05-01T10:00:00.000+0200
            when = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")
        except ValueError as err:
            raise BackendError(f"helpdesk sent an unreadable timestamp {value!r}") from err
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Return the wait a ``Retry-After`` header asks for, in seconds (RFC 9110 §10.2.3)."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


# --- HTTP --------------------------------------------------------------------------------


class RestClient:
    """A ``requests.Session`` bound to one helpdesk, with timeouts and the shared error mapping."""

    def __init__(
        self,
        backend: str,
        base_url: str,
        *,
        headers: dict[str, str],
        secrets: Iterable[str],
        timeout_s: float,
        verify: bool | str = True,
        session: requests.Session | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.backend = backend
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._clock: Clock = clock or SystemClock()
        self.session = session or requests.Session()
        self.session.headers.update({"Accept": "application/json", "User-Agent": "hezo-agent"})
        self.session.headers.update(headers)
        self.session.verify = verify
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """Return ``text`` with every secret of this backend replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def url(self, path_or_url: str) -> str:
        """Return an absolute URL (vendor ``next`` links are already absolute)."""
        return path_or_url if "://" in path_or_url else self.base_url + path_or_url

    def request(self, method: str, path_or_url: str, **kwargs: Any) -> requests.Response:
        """Send one request; return the 2xx response.

        Raises:
            BackendError: timeout, network failure, 408/409/423/425, 429 (with
                ``retry_after_s``) or 5xx.
            BackendAuthError: 401 or 403.
            BackendRejected: any other 4xx, quoting the helpdesk's error body.
        """
        url = self.url(path_or_url)
        what = f"{self.backend}: {method} {url.split('?', 1)[0]}"
        try:
            resp = self.session.request(method, url, timeout=self.timeout_s, **kwargs)
        except requests.Timeout:
            raise BackendError(f"{what}: no answer within {self.timeout_s:g} s") from None
        except requests.RequestException as err:
            raise BackendError(self.redact(f"{what}: {type(err).__name__}: {err}")) from None
        if resp.status_code >= 300:
            raise self._error(what, resp)
        return resp

    def json(self, method: str, path_or_url: str, **kwargs: Any) -> Any:
        """Send one request and return its JSON body (``None`` for an empty 2xx body).

        Raises:
            BackendError: as :meth:`request`, or a 2xx body that is not JSON.
        """
        resp = self.request(method, path_or_url, **kwargs)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise BackendError(
                f"{self.backend}: {method} answered HTTP {resp.status_code} with a body that is not JSON: "
                f"{self.quote(resp)}"
            ) from None

    def page(self, path_or_url: str, **kwargs: Any) -> tuple[Any, str | None]:
        """GET one page of a list; return its JSON body and the ``Link: <…>; rel="next"`` URL.

        Raises:
            BackendError: as :meth:`json`.
        """
        resp = self.request("GET", path_or_url, **kwargs)
        try:
            body = resp.json()
        except ValueError:
            raise BackendError(f"{self.backend}: a list page that is not JSON: {self.quote(resp)}") from None
        return body, resp.links.get("next", {}).get("url")

    def quote(self, resp: requests.Response) -> str:
        """Return the response body, compact, shortened and scrubbed, for an error message."""
        try:
            text = json.dumps(resp.json(), ensure_ascii=False, separators=(",", ":"))
        except ValueError:
            text = " ".join(resp.text.split())
        if len(text) > _QUOTE_CHARS:
            text = text[:_QUOTE_CHARS] + "…"
        return self.redact(text or "(empty body)")

    def _error(self, what: str, resp: requests.Response) -> BackendError:
        code = resp.status_code
        message = f"{what} → HTTP {code}: {self.quote(resp)}"
        if code in (401, 403):
            return BackendAuthError(f"{message} (credentials rejected: check the token and its rights)")
        if code == 429:
            wait = parse_retry_after(resp.headers.get("Retry-After"), self._clock.now())
            return BackendError(f"{message} (rate limited, retry after {wait}s)", retry_after_s=wait)
        if code >= 500 or code in _RETRYABLE_4XX or code < 400:
            return BackendError(message)
        return BackendRejected(message)


class UnexpectedAnswer(BackendError):
    """A 2xx answer of an unexpected shape (missing key, wrong type); retryable like any BackendError."""


@contextmanager
def reading(backend: str, what: str) -> Iterator[None]:
    """Turn a helpdesk answer of an unexpected shape (missing key, wrong type) into a BackendError.

    Raises:
        UnexpectedAnswer: the body inside the block did not have the expected shape.
    """
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
        raise UnexpectedAnswer(
            f"{backend}: unexpected answer to {what}: {type(err).__name__}: {err}"
        ) from None


def client_for(
    backend: str,
    settings: RestHelpdeskSettings,
    headers: dict[str, str],
    secrets: Iterable[str],
    *,
    session: requests.Session | None = None,
    clock: Clock | None = None,
) -> RestClient:
    """Build the :class:`RestClient` a backend's settings describe."""
    return RestClient(
        backend,
        settings.url,
        headers=headers,
        secrets=secrets,
        timeout_s=settings.timeout_s,
        verify=str(settings.ca_file) if settings.ca_file else True,
        session=session,
        clock=clock,
    )


def read_token(backend: str, settings: RestHelpdeskSettings) -> str:
    """Read a backend's API token from its ``token_env`` variable or ``token_file``.

    Raises:
        ConfigError: the variable is unset or empty, or the file is missing, unreadable or empty.
    """
    from config.loader import read_secret  # config.loader imports the schema, which imports settings

    return read_secret(settings.token_env, settings.token_file, f"ticketing.{backend}.token", "config")


def journal_path(data_dir: Path, backend: str) -> Path:
    """Return where a backend keeps its open journal: ``<data_dir>/<backend>/journal.sqlite``."""
    return Path(data_dir) / backend / "journal.sqlite"


def basic_auth(user: str, password: str) -> tuple[str, str]:
    """Return the ``Authorization`` value for HTTP Basic and the encoded form to redact."""
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {encoded}", encoded


# --- attachment listings -----------------------------------------------------------------


_SHA256_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class ListedFile:
    """One file a helpdesk lists on a ticket: its name, size and SHA-256 (hex) if the vendor gives one."""

    name: str
    size: int
    sha256: str = ""

    @classmethod
    def of(cls, name: Any, size: Any, digest: Any = None) -> ListedFile:
        """Build one from a listing's raw values; a hash that is not a SHA-256 (e.g. MD5) is ignored.

        Raises:
            ValueError: ``size`` is not a whole number.
            TypeError: ``size`` is missing.
        """
        text = str(digest or "").strip().lower()
        sha = text if len(text) == 64 and set(text) <= _SHA256_HEX else ""
        return cls(str(name), int(size), sha)


def split_pieces(name: str, size_bytes: int, max_file_bytes: int) -> list[tuple[str, int]]:
    """Return the (name, size) of the parts :func:`~uploader.attachments.plan_attachments` cuts a file into.

    A file that fits ``max_file_bytes`` is one part under its own name; a bigger one becomes
    ``name.001``, ``name.002``, … of ``max_file_bytes`` each, the last one the rest.
    """
    if size_bytes <= max_file_bytes:
        return [(name, size_bytes)]
    parts = math.ceil(size_bytes / max_file_bytes)
    width = max(3, len(str(parts)))
    return [
        (f"{name}.{n:0{width}d}", min(max_file_bytes, size_bytes - (n - 1) * max_file_bytes))
        for n in range(1, parts + 1)
    ]


def match_listing(
    files: Iterable[ListedFile], name: str, sha256: str, size_bytes: int, max_file_bytes: int
) -> bool:
    """Return whether ``files`` hold this file, whole or as all the parts a split makes of it.

    A listed file matches by name and size; when both it and the caller carry a SHA-256, the
    hashes must agree too. Split parts are matched by each part's own name and size (their
    hashes are those of the parts, so they are not compared with the whole file's).
    """
    listed = list(files)
    want = sha256.strip().lower()

    def whole(f: ListedFile) -> bool:
        return f.name == name and f.size == size_bytes and (not want or not f.sha256 or f.sha256 == want)

    if any(whole(f) for f in listed):
        return True
    if size_bytes <= max_file_bytes:
        return False
    present = {(f.name, f.size) for f in listed}
    return all(piece in present for piece in split_pieces(name, size_bytes, max_file_bytes))


# --- open journal ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opening:
    """A ticket this agent created: its ref, how many attachment pieces went up, whether all did."""

    ref: TicketRef
    pieces_done: int
    complete: bool
    language: str


class OpenJournal:
    """Durable record of tickets being opened: key → ref, written the moment the helpdesk answers.

    It covers what vendor searches cannot: Jira's and Freshdesk's search indexes lag behind a
    new ticket, and a ticket created before its attachments went up must get the rest of them
    (not a second ticket) when the open is retried after a crash. SQLite, WAL, ``synchronous=FULL``.
    """

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS openings (key TEXT PRIMARY KEY, backend TEXT NOT NULL,"
                " ref_id TEXT NOT NULL, url TEXT, pieces_done INTEGER NOT NULL DEFAULT 0,"
                " complete INTEGER NOT NULL DEFAULT 0, language TEXT NOT NULL DEFAULT 'en')"
            )
        except (OSError, sqlite3.Error) as err:
            raise BackendError(f"ticket journal {path} unusable: {err}") from err
        self._lock = threading.Lock()

    def get(self, key: str) -> Opening | None:
        """Return what is known about opening ``key``."""
        return self._one("key = ?", key)

    def by_ref(self, ref_id: str) -> Opening | None:
        """Return the opening of the ticket ``ref_id``, if this agent created it."""
        return self._one("ref_id = ?", ref_id)

    def created(self, key: str, ref: TicketRef, pieces_done: int, language: str) -> None:
        """Record that the helpdesk created ``ref`` for ``key`` with its first ``pieces_done`` pieces."""
        self._run(
            "INSERT OR REPLACE INTO openings (key, backend, ref_id, url, pieces_done, language)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (key, ref.backend, ref.id, ref.url, pieces_done, language),
        )

    def progress(self, key: str, pieces_done: int) -> None:
        """Record that the first ``pieces_done`` attachment pieces are on the ticket."""
        self._run("UPDATE openings SET pieces_done = ? WHERE key = ?", (pieces_done, key))

    def complete(self, key: str) -> None:
        """Record that the ticket and all its attachments are in the helpdesk."""
        self._run("UPDATE openings SET complete = 1 WHERE key = ?", (key,))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _one(self, where: str, value: str) -> Opening | None:
        row = self._run(
            f"SELECT backend, ref_id, url, pieces_done, complete, language FROM openings WHERE {where}",
            (value,),
        ).fetchone()
        if row is None:
            return None
        return Opening(TicketRef(row[0], row[1], row[2]), int(row[3]), bool(row[4]), str(row[5]))

    def _run(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._db.execute(sql, params)
            except sqlite3.Error as err:
                raise BackendError(f"ticket journal failed: {err}") from err


# --- the shared open/attach flow ---------------------------------------------------------


class RestBackend(TicketBackend):
    """Base of the REST backends: journal-backed ``find``/``open`` and size-fitted attachments.

    A backend supplies :meth:`_lookup` (the vendor's own search for a key), :meth:`_create`
    (the ticket, possibly with some pieces) and :meth:`_attach_batch` (more pieces, possibly
    with a note); :meth:`_batches` groups pieces into uploads (default: all in one).
    """

    name = "rest"

    def __init__(self, client: RestClient, journal: OpenJournal, limits: AttachmentLimits) -> None:
        self.client = client
        self.journal = journal
        self.limits = limits

    def find(self, key: str) -> TicketRef | None:
        """Return the ticket opened for ``key``: journal first, then the vendor's own lookup.

        A ticket created but still missing attachments is reported as not found, so that the
        retried :meth:`open` finishes it instead of the caller skipping its attachments.

        Raises:
            BackendError: the lookup failed (retry), or a subclass of it.
        """
        known = self.journal.get(key)
        if known is not None:
            return known.ref if known.complete else None
        found = self._lookup(key)
        if found is not None:
            log.info("event=ticket_found backend=%s key=%s ref=%s", self.name, key, found.id)
        return found

    def open(self, ticket: Ticket, attachments: Sequence[Attachment] = ()) -> TicketRef:
        """Create the ticket with its attachments, or finish one a crash interrupted.

        Raises:
            BackendRejected: the helpdesk refused the ticket, or a file is missing.
            BackendAuthError: credentials rejected.
            BackendError: retryable failure (the journal keeps what already succeeded).
        """
        known = self.journal.get(ticket.key)
        if known is not None and known.complete:
            return known.ref
        language = str(ticket.fields.get("language") or "en")
        plan = self._plan(attachments, language)
        pieces = list(plan.pieces)
        if known is None:
            ref, done = self._create(ticket, pieces, plan)
            self.journal.created(ticket.key, ref, done, language)
            log.info("event=ticket_created backend=%s key=%s ref=%s", self.name, ticket.key, ref.id)
        else:
            ref, done = known.ref, known.pieces_done
            log.info(
                "event=ticket_open_resumed backend=%s key=%s ref=%s pieces_done=%d",
                self.name,
                ticket.key,
                ref.id,
                done,
            )
        self._after_create(ref, ticket)
        for batch in self._batches(pieces[done:]):
            self._attach_batch(ref, batch, None)
            done += len(batch)
            self.journal.progress(ticket.key, done)
        self.journal.complete(ticket.key)
        return ref

    def attach(self, ref: TicketRef, attachment: Attachment) -> None:
        """Attach one file (trimmed or split to fit the helpdesk, said in a note).

        Raises:
            BackendRejected: refused or file missing.
            BackendAuthError: credentials rejected.
            BackendError: retryable failure.
        """
        known = self.journal.by_ref(ref.id)
        plan = self._plan([attachment], known.language if known else "en")
        for n, batch in enumerate(self._batches(list(plan.pieces))):
            self._attach_batch(ref, batch, (plan.note_text() or None) if n == 0 else None)

    def has_attachment(self, ref: TicketRef, name: str, sha256: str, size_bytes: int) -> bool | None:
        """Return whether the ticket lists this file (whole or split), or None when it cannot tell.

        Matching is by name and size over :meth:`_listed_files` (see :func:`match_listing`).
        None: a file over the total limit (trimmed or left out), a listing refused with a 4xx
        other than 401/403/408/409/423/425/429, or a listing of an unexpected shape.

        Raises:
            BackendAuthError: credentials rejected.
            BackendError: timeout, network failure, 429 or 5xx while listing (retry later).
        """
        if size_bytes > self.limits.max_total_attachment_bytes:
            log.info(
                "event=attachment_check_unsure backend=%s ref=%s reason=over_total_limit", self.name, ref.id
            )
            return None
        try:
            files = self._listed_files(ref)
        except (BackendRejected, UnexpectedAnswer) as err:  # 401/403 are BackendAuthError: they raise
            log.warning(
                "event=attachment_check_unsure backend=%s ref=%s reason=%s", self.name, ref.id, err
            )
            return None
        found = match_listing(files, name, sha256, size_bytes, self.limits.max_attachment_bytes)
        log.info(
            "event=attachment_checked backend=%s ref=%s name=%s found=%s", self.name, ref.id, name, found
        )
        return found

    def close(self) -> None:
        """Close the HTTP session and the journal."""
        self.client.session.close()
        self.journal.close()

    def _plan(self, attachments: Sequence[Attachment], language: str) -> AttachmentPlan:
        return plan_attachments(
            attachments,
            max_file_bytes=self.limits.max_attachment_bytes,
            max_total_bytes=self.limits.max_total_attachment_bytes,
            language=language,
        )

    def _batches(self, pieces: list[AttachmentPiece]) -> list[list[AttachmentPiece]]:
        return [pieces] if pieces else []

    def _lookup(self, key: str) -> TicketRef | None:
        raise NotImplementedError

    def _create(
        self, ticket: Ticket, pieces: list[AttachmentPiece], plan: AttachmentPlan
    ) -> tuple[TicketRef, int]:
        """Create the ticket (its text ending with ``plan``'s notes); return it and the pieces sent along."""
        raise NotImplementedError

    def _after_create(self, ref: TicketRef, ticket: Ticket) -> None:
        """Finish a created ticket (idempotent: it runs again when an open is resumed)."""

    def _attach_batch(self, ref: TicketRef, batch: list[AttachmentPiece], note: str | None) -> None:
        raise NotImplementedError

    def _listed_files(self, ref: TicketRef) -> list[ListedFile]:
        """Return every file the helpdesk lists on the ticket (all pages).

        Raises:
            UnexpectedAnswer: the listing has an unexpected shape.
            BackendError: as :meth:`RestClient.request`.
        """
        raise UnexpectedAnswer(f"{self.name}: no attachment listing")


def collect(fetch: Callable[[Any], tuple[list[Any], Any]], start: Any) -> list[Any]:
    """Page through a list: ``fetch(cursor)`` returns (items, next cursor or ``None``).

    At most :data:`MAX_PAGES` pages are read; past that, a warning is logged and paging stops.
    """
    items: list[Any] = []
    cursor = start
    for _ in range(MAX_PAGES):
        page, cursor = fetch(cursor)
        items.extend(page)
        if cursor is None:
            return items
    log.warning("event=paging_stopped pages=%d reason=too_many_pages", MAX_PAGES)
    return items
