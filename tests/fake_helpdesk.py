"""A fake helpdesk on loopback, a tiny backend for it, and the outbox worker the crash test kills.

The server (``FakeHelpdesk``) is a real HTTP server on 127.0.0.1 with a small JSON API:

* ``POST /api/tickets`` creates a ticket with its attachments inline (base64), honours
  ``Idempotency-Key`` (a replay returns the first answer) and ``external_id`` uniqueness;
* ``GET /api/tickets?external_id=K`` looks a ticket up; ``GET /api/tickets/ID`` shows it;
* ``POST /api/tickets/ID/comments`` and ``POST /api/tickets/ID/attachments?name=N`` (raw bytes)
  have NO idempotency, like most helpdesks: the outbox's markers must prevent duplicates;
* ``PATCH /api/tickets/ID`` changes priority/status and adds its comment in one go.

It records every request (also those cut off mid-body), stores each attachment's SHA-256, can
answer 503 (``down``), fail the next requests with chosen answers, check a bearer token, read
bodies slowly, and call a ``hook`` at two points of a request ("headers": before the body is
read; "committed": after the change is stored, before the answer is sent) so a test can kill
the client at exactly that moment.

``python tests/fake_helpdesk.py worker ...`` runs the agent side in a subprocess: an
:class:`~uploader.outbox.Outbox` on :class:`FakeHelpdeskBackend` that queues one ticket with a
large attachment and its follow-ups, then drains.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from agent.clock import SystemClock
from uploader.base import BackendAuthError, BackendError, BackendRejected, TicketBackend
from uploader.intents import Intent, IntentKind
from uploader.models import Attachment, Comment, Priority, Ticket, TicketRef
from uploader.outbox import Outbox

Hook = Callable[[str, "Recorded"], None]
MARKER = re.compile(r"\[hezo:[0-9a-f]{16}\]")


@dataclass
class Recorded:
    """One request as the helpdesk saw it."""

    method: str
    path: str
    at: datetime
    idempotency_key: str | None = None
    body_bytes: int = 0
    complete: bool = False
    status: int | None = None


@dataclass
class StoredTicket:
    """A ticket in the fake helpdesk."""

    id: str
    external_id: str
    title: str
    body: str
    priority: str
    status: str = "open"
    comments: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the API's view of the ticket."""
        return {
            "id": self.id,
            "external_id": self.external_id,
            "title": self.title,
            "body": self.body,
            "priority": self.priority,
            "status": self.status,
            "attachments": self.attachments,
        }


class FakeHelpdesk:
    """The server and its state (see the module docstring)."""

    def __init__(
        self,
        *,
        token: str = "s3cret-token",
        now: Callable[[], datetime] | None = None,
        read_chunk_bytes: int = 1 << 20,
        read_delay_s: float = 0.0,
    ) -> None:
        self.token = token
        self.now = now or (lambda: datetime.now(UTC))
        self.read_chunk_bytes = read_chunk_bytes
        self.read_delay_s = read_delay_s
        self.lock = threading.RLock()
        self.tickets: dict[str, StoredTicket] = {}
        self.idempotent: dict[str, tuple[int, dict[str, Any]]] = {}
        self.requests: list[Recorded] = []
        self.down = False
        self.fail_next: list[tuple[int, dict[str, Any], dict[str, str]]] = []
        self.hook: Hook | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-helpdesk", daemon=True)

    @property
    def url(self) -> str:
        """Return the base URL."""
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def start(self) -> FakeHelpdesk:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        """Forget every ticket, key and request (a fresh helpdesk on the same port)."""
        with self.lock:
            self.tickets.clear()
            self.idempotent.clear()
            self.requests.clear()
            self.fail_next.clear()
            self.down = False
            self.hook = None

    def creates(self) -> list[Recorded]:
        """Return the ticket-create requests that created a ticket (not replays)."""
        with self.lock:
            return [r for r in self.requests if (r.method, r.path, r.status) == ("POST", "/api/tickets", 201)]

    # --- request handling (called by the handler thread) ----------------------------------

    def handle(self, req: Recorded, body: bytes, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """Apply one complete request and return (status, JSON answer)."""
        parts = [p for p in req.path.split("/") if p]
        if parts[:2] != ["api", "tickets"]:
            return 404, {"error": "not found"}
        if len(parts) == 2 and req.method == "GET":
            ext = query.get("external_id", [""])[0]
            return 200, {"tickets": [t.to_json() for t in self.tickets.values() if t.external_id == ext]}
        if len(parts) == 2 and req.method == "POST":
            return self._create(req, body)
        ticket = self.tickets.get(parts[2]) if len(parts) >= 3 else None
        if ticket is None:
            return 404, {"error": f"no ticket {parts[2] if len(parts) > 2 else ''}"}
        tail = parts[3] if len(parts) > 3 else None
        if tail is None and req.method == "GET":
            return 200, ticket.to_json()
        if tail is None and req.method == "PATCH":
            data = json.loads(body)
            ticket.priority = data.get("priority", ticket.priority)
            ticket.status = data.get("status", ticket.status)
            self._comment(ticket, str(data.get("comment", "")))
            return 200, ticket.to_json()
        if tail == "comments" and req.method == "GET":
            return 200, {"comments": ticket.comments}
        if tail == "comments" and req.method == "POST":
            data = json.loads(body)
            if not str(data.get("body", "")).strip():
                return 422, {"error": "body: can't be blank"}
            return 201, self._comment(ticket, str(data["body"]))
        if tail == "attachments" and req.method == "POST":
            name = query.get("name", ["file"])[0]
            ticket.attachments.append(_stored_file(name, body))
            return 201, ticket.attachments[-1]
        return 405, {"error": "method not allowed"}

    def _create(self, req: Recorded, body: bytes) -> tuple[int, dict[str, Any]]:
        key = req.idempotency_key
        if key and key in self.idempotent:
            return self.idempotent[key]
        data = json.loads(body)
        if not str(data.get("title", "")).strip():
            return 422, {"error": "title: can't be blank"}
        if any(t.external_id == data["external_id"] for t in self.tickets.values()):
            return 409, {"error": "external_id already used"}
        ticket = StoredTicket(
            id=str(1000 + len(self.tickets)),
            external_id=data["external_id"],
            title=data["title"],
            body=data["body"],
            priority=data["priority"],
        )
        for att in data.get("attachments", []):
            ticket.attachments.append(_stored_file(att["name"], base64.b64decode(att["data_b64"])))
        self.tickets[ticket.id] = ticket
        answer = (201, ticket.to_json())
        if key:
            self.idempotent[key] = (200, ticket.to_json())
        return answer

    def _comment(self, ticket: StoredTicket, body: str) -> dict[str, Any]:
        comment = {"id": str(len(ticket.comments) + 1), "body": body, "created_at": self.now().isoformat()}
        ticket.comments.append(comment)
        return comment


def _stored_file(name: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _handler_for(desk: FakeHelpdesk) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _serve(self) -> None:
            split = urlsplit(self.path)
            req = Recorded(self.command, split.path, desk.now(), self.headers.get("Idempotency-Key"))
            with desk.lock:
                desk.requests.append(req)
            if desk.hook:
                desk.hook("headers", req)
            body = self._read_body(int(self.headers.get("Content-Length") or 0), req)
            if body is None:  # the client went away mid-body: nothing happened
                self.close_connection = True
                return
            req.complete = True
            status, answer, extra = self._answer(req, body, parse_qs(split.query))
            req.status = status
            if desk.hook:
                desk.hook("committed", req)
            self._send(status, answer, extra)

        def _answer(
            self, req: Recorded, body: bytes, query: dict[str, list[str]]
        ) -> tuple[int, dict[str, Any], dict[str, str]]:
            if self.headers.get("Authorization") != f"Bearer {desk.token}":
                return 401, {"error": "invalid token", "token": self.headers.get("Authorization", "")}, {}
            with desk.lock:
                if desk.down:
                    return 503, {"error": "maintenance"}, {}
                if desk.fail_next:
                    return desk.fail_next.pop(0)
                try:
                    status, answer = desk.handle(req, body, query)
                except (ValueError, KeyError, TypeError) as err:
                    status, answer = 400, {"error": f"bad request: {err}"}
            return status, answer, {}

        def _read_body(self, length: int, req: Recorded) -> bytes | None:
            chunks: list[bytes] = []
            left = length
            while left > 0:
                try:
                    chunk = self.rfile.read(min(left, desk.read_chunk_bytes))
                except OSError:
                    return None
                if not chunk:
                    return None
                chunks.append(chunk)
                left -= len(chunk)
                req.body_bytes += len(chunk)
                if desk.read_delay_s and left:
                    time.sleep(desk.read_delay_s)
            return b"".join(chunks)

        def _send(self, status: int, answer: dict[str, Any], extra: dict[str, str]) -> None:
            data = json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                self.close_connection = True

        do_GET = do_POST = do_PATCH = _serve

    return Handler


# --- the backend --------------------------------------------------------------------------

_RETRY = {408, 409, 425, 429}


class FakeHelpdeskBackend(TicketBackend):
    """A :class:`TicketBackend` for :class:`FakeHelpdesk` (a REST shape like Zendesk's, simplified)."""

    name = "fakedesk"

    def __init__(self, url: str, token: str, *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.session.request(method, self.url + path, timeout=self.timeout_s, **kwargs)
        except requests.RequestException as err:
            raise BackendError(f"{method} {path}: {type(err).__name__}") from None
        if resp.status_code < 300:
            return resp.json()
        text = resp.text[:300]  # not redacted here on purpose: the outbox must redact what it stores
        message = f"{method} {path} → HTTP {resp.status_code}: {text}"
        if resp.status_code in (401, 403):
            raise BackendAuthError(message)
        if resp.status_code >= 500 or resp.status_code in _RETRY:
            after = resp.headers.get("Retry-After")
            raise BackendError(message, retry_after_s=float(after) if after else None)
        raise BackendRejected(message)

    def find(self, key: str) -> TicketRef | None:
        """Look the ticket up by its external id."""
        found = self._call("GET", "/api/tickets", params={"external_id": key})["tickets"]
        return TicketRef(self.name, found[0]["id"]) if found else None

    def open(self, ticket: Ticket, attachments: Sequence[Attachment] = ()) -> TicketRef:
        """Create the ticket and its attachments in one request, with an Idempotency-Key."""
        files = [
            {"name": a.name, "data_b64": base64.b64encode(Path(a.path).read_bytes()).decode()}
            for a in attachments
        ]
        payload = {
            "external_id": ticket.key,
            "title": ticket.title,
            "body": ticket.body,
            "priority": str(ticket.priority),
            "attachments": files,
        }
        key = '"open-' + hashlib.sha256(ticket.key.encode()).hexdigest()[:24] + '"'
        answer = self._call("POST", "/api/tickets", json=payload, headers={"Idempotency-Key": key})
        return TicketRef(self.name, answer["id"])

    def comment(self, ref: TicketRef, body: str) -> None:
        """Add a comment."""
        self._call("POST", f"/api/tickets/{ref.id}/comments", json={"body": body})

    def attach(self, ref: TicketRef, attachment: Attachment) -> None:
        """Upload one file."""
        data = Path(attachment.path).read_bytes()
        self._call(
            "POST",
            f"/api/tickets/{ref.id}/attachments",
            params={"name": attachment.name},
            data=data,
            headers={"Content-Type": attachment.content_type},
        )

    def set_priority(self, ref: TicketRef, priority: Priority, body: str) -> None:
        """Change the priority with a comment."""
        self._call("PATCH", f"/api/tickets/{ref.id}", json={"priority": str(priority), "comment": body})

    def resolve(self, ref: TicketRef, body: str) -> None:
        """Resolve with a comment."""
        self._call("PATCH", f"/api/tickets/{ref.id}", json={"status": "resolved", "comment": body})

    def reopen(self, ref: TicketRef, body: str) -> None:
        """Reopen with a comment."""
        self._call("PATCH", f"/api/tickets/{ref.id}", json={"status": "open", "comment": body})

    def list_comments(self, ref: TicketRef) -> list[Comment]:
        """Return the comments, oldest first."""
        rows = self._call("GET", f"/api/tickets/{ref.id}/comments")["comments"]
        return [Comment(r["id"], "agent", r["body"], datetime.fromisoformat(r["created_at"])) for r in rows]

    def has_attachment(self, ref: TicketRef, name: str, sha256: str, size_bytes: int) -> bool | None:
        """Return whether the ticket holds this exact file."""
        files = self._call("GET", f"/api/tickets/{ref.id}")["attachments"]
        return any(f["sha256"] == sha256 and f["size"] == size_bytes for f in files)

    def close(self) -> None:
        """Close the HTTP session."""
        self.session.close()


# --- the crash worker ---------------------------------------------------------------------

CRASH_TICKET = "site1/bar1/offline/1"


def crash_intents(big: Path, small: Path) -> list[Intent]:
    """The upload the crash test repeats: a ticket with a big file, then its follow-ups."""
    ticket = Ticket(
        CRASH_TICKET, "[P1] A30 offline", "The bar stopped answering.", Priority.CRITICAL, {"device": "bar1"}
    )
    k, p = CRASH_TICKET, Priority.CRITICAL
    return [
        Intent(
            IntentKind.OPEN,
            k,
            f"{k}:open",
            p,
            ticket=ticket,
            attachments=(Attachment("bundle.tar.gz", big, "application/gzip"),),
        ),
        Intent(IntentKind.COMMENT, k, f"{k}:note-1", p, body="Still down after 10 minutes."),
        Intent(
            IntentKind.ATTACH,
            k,
            f"{k}:attach-1",
            p,
            body="Black box attached.",
            attachments=(Attachment("blackbox.log", small, "text/plain"),),
        ),
        Intent(IntentKind.SET_PRIORITY, k, f"{k}:priority-medium", Priority.MEDIUM, body="Partly back."),
        Intent(IntentKind.RESOLVE, k, f"{k}:recovered", p, body="Recovered."),
    ]


def _worker(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    backend = FakeHelpdeskBackend(args.url, args.token, timeout_s=10.0)
    data = Path(args.data)
    outbox = Outbox(
        backend,
        data / "outbox.sqlite",
        clock=SystemClock(),
        spool_dir=data / "spool",
        base_backoff_s=0.05,
        max_backoff_s=0.2,
    )
    for intent in crash_intents(Path(args.big), Path(args.small)):
        outbox.submit(intent)
    deadline = time.monotonic() + args.deadline_s
    while outbox.pending() and time.monotonic() < deadline:
        if not outbox.flush():
            time.sleep(0.02)
    left = len(outbox.pending())
    print(f"worker done pending={left}", flush=True)
    outbox.close()
    backend.close()
    return 0 if left == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``worker``: run the outbox side of the crash test (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="fake_helpdesk")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker")
    worker.add_argument("--url", required=True)
    worker.add_argument("--token", required=True)
    worker.add_argument("--data", required=True)
    worker.add_argument("--big", required=True)
    worker.add_argument("--small", required=True)
    worker.add_argument("--deadline-s", type=float, default=20.0)
    args = parser.parse_args(argv)
    return _worker(args)


if __name__ == "__main__":
    sys.exit(main())
