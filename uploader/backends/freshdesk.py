"""Freshdesk v2: tickets with attachments, priority 1–4, notes, status resolved, tags.

Endpoints (docs: "Freshdesk API reference" Tickets, Conversations, Filter tickets, Rate limit,
Errors; summary in helpdesk-apis.md §4). Auth is Basic with the API key as user and ``X`` as
password:

* create: ``POST /api/v2/tickets``; with files it is ``multipart/form-data`` where every file is
  an ``attachments[]`` part, lists repeat ``tags[]`` and custom fields are
  ``custom_fields[cf_x]`` (github.com/freshdesk/fresh-samples wiki, "Create ticket with custom
  fields and attachments") → 201 ``id``. Status 2 Open, 4 Resolved; priority 1 Low .. 4 Urgent;
* notes: ``POST /api/v2/tickets/{id}/notes`` ``{"body","private"}`` (multipart with
  ``attachments[]`` for files). The files of one request stay under
  ``max_total_attachment_bytes`` (20 MB by default, Freshdesk's documented total);
* priority/resolve/reopen: ``PUT /api/v2/tickets/{id}`` ``{"priority"}`` / ``{"status":4}`` /
  ``{"status":2}``, then a note with the reason;
* comments: ``GET /api/v2/tickets/{id}/conversations?per_page=100``, following ``Link rel="next"``;
* attachment check: ``GET /api/v2/tickets/{id}`` → ``attachments[]`` (``name``, ``size``; no
  hash) plus the conversations' ``attachments[]``;
* dedupe: ``GET /api/v2/search/tickets?query="tag:'hz-…'"``. Search is an index that lags, so
  the open journal answers first.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import requests

from agent.clock import Clock
from config.ticketing import FreshdeskSettings
from uploader.attachments import AttachmentPiece, AttachmentPlan
from uploader.backends._rest import (
    ListedFile,
    OpenJournal,
    RestBackend,
    basic_auth,
    client_for,
    collect,
    journal_path,
    key_tag,
    parse_time,
    read_token,
    reading,
)
from uploader.models import Comment, Priority, Ticket, TicketRef

_OPEN, _RESOLVED = 2, 4
_SOURCE_PORTAL = 2
_PAGE = 100

Form = list[tuple[str, str]]
Files = list[tuple[str, tuple[str, bytes, str]]]


class FreshdeskBackend(RestBackend):
    """Tickets in Freshdesk, found again by their ``hz-…`` tag."""

    name = "freshdesk"

    def __init__(
        self,
        settings: FreshdeskSettings,
        token: str,
        *,
        journal_path: Path,
        session: requests.Session | None = None,
        clock: Clock | None = None,
    ) -> None:
        header, encoded = basic_auth(token, "X")
        client = client_for(
            self.name, settings, {"Authorization": header}, [token, encoded], session=session, clock=clock
        )
        super().__init__(client, OpenJournal(journal_path), settings)
        self.settings = settings

    @classmethod
    def from_settings(
        cls, settings: FreshdeskSettings, data_dir: Path, *, clock: Clock | None = None
    ) -> FreshdeskBackend:
        """Build the backend, reading the API token from its environment variable or file.

        Raises:
            ConfigError: the token variable is unset or its file unreadable.
            BackendError: the journal under ``data_dir`` cannot be opened.
        """
        token = read_token(cls.name, settings)
        return cls(settings, token, journal_path=journal_path(data_dir, cls.name), clock=clock)

    # --- TicketBackend -------------------------------------------------------------------

    def comment(self, ref: TicketRef, body: str) -> None:
        """Add a note (private unless ``public_comments``).

        Raises:
            BackendRejected, BackendAuthError, BackendError: see :class:`uploader.base.TicketBackend`.
        """
        self.client.json(
            "POST",
            f"/api/v2/tickets/{ref.id}/notes",
            json={"body": text_to_html(body), "private": not self.settings.public_comments},
        )

    def set_priority(self, ref: TicketRef, priority: Priority, body: str) -> None:
        """Change the priority (1–4), then add a note with the reason."""
        self._put(ref, {"priority": self._priority(priority)}, body)

    def resolve(self, ref: TicketRef, body: str) -> None:
        """Set status 4 (Resolved), then add the closing note."""
        self._put(ref, {"status": _RESOLVED}, body)

    def reopen(self, ref: TicketRef, body: str) -> None:
        """Set status 2 (Open), then add a note."""
        self._put(ref, {"status": _OPEN}, body)

    def list_comments(self, ref: TicketRef) -> list[Comment]:
        """Return the ticket's conversations (notes and replies), oldest first.

        Raises:
            BackendError: a page failed or had an unexpected shape.
        """
        with reading(self.name, "list conversations"):
            comments = [
                Comment(
                    id=str(c["id"]),
                    author=str(c.get("user_id")),
                    body=str(c.get("body_text") or c.get("body") or ""),
                    created_at=parse_time(c["created_at"]),
                )
                for c in self._conversations(ref)
            ]
        return sorted(comments, key=lambda c: c.created_at)

    # --- RestBackend hooks ---------------------------------------------------------------

    def _listed_files(self, ref: TicketRef) -> list[ListedFile]:
        ticket = self.client.json("GET", f"/api/v2/tickets/{ref.id}")
        conversations = self._conversations(ref)
        with reading(self.name, "ticket attachments"):
            attachments = list(ticket.get("attachments") or [])
            for c in conversations:
                attachments.extend(c.get("attachments") or [])
            return [ListedFile.of(a["name"], a["size"]) for a in attachments]

    def _lookup(self, key: str) -> TicketRef | None:
        query = f"\"tag:'{key_tag(key)}'\""
        data = self.client.json("GET", "/api/v2/search/tickets", params={"query": query})
        with reading(self.name, "search tickets"):
            results = data.get("results") or []
            return self._ref(min(int(t["id"]) for t in results)) if results else None

    def _create(
        self, ticket: Ticket, pieces: list[AttachmentPiece], plan: AttachmentPlan
    ) -> tuple[TicketRef, int]:
        s = self.settings
        custom = {
            cf: str(ticket.fields[f]) for f, cf in s.custom_fields.items() if ticket.fields.get(f) is not None
        }
        fields: dict[str, Any] = {
            "subject": ticket.title,
            "description": text_to_html(plan.append_to(ticket.body)),
            "email": s.requester_email,
            "priority": self._priority(ticket.priority),
            "status": _OPEN,
            "source": _SOURCE_PORTAL,
            "tags": [*s.tags, key_tag(ticket.key)],
        }
        if s.group_id is not None:
            fields["group_id"] = s.group_id
        if not pieces:
            data = self.client.json(
                "POST", "/api/v2/tickets", json=fields | ({"custom_fields": custom} if custom else {})
            )
        else:
            form: Form = [(k, str(v)) for k, v in fields.items() if k != "tags"]
            form += [("tags[]", t) for t in fields["tags"]]
            form += [(f"custom_fields[{k}]", v) for k, v in custom.items()]
            data = self.client.json("POST", "/api/v2/tickets", data=form, files=_files(pieces))
        with reading(self.name, "create ticket"):
            return self._ref(int(data["id"])), len(pieces)

    def _attach_batch(self, ref: TicketRef, batch: list[AttachmentPiece], note: str | None) -> None:
        body = note or "Attached: " + ", ".join(p.name for p in batch)
        form: Form = [
            ("body", text_to_html(body)),
            ("private", "false" if self.settings.public_comments else "true"),
        ]
        self.client.json("POST", f"/api/v2/tickets/{ref.id}/notes", data=form, files=_files(batch))

    # --- internals -----------------------------------------------------------------------

    def _ref(self, ticket_id: int) -> TicketRef:
        return TicketRef(self.name, str(ticket_id), f"{self.client.base_url}/a/tickets/{ticket_id}")

    def _conversations(self, ref: TicketRef) -> list[dict[str, Any]]:
        """Return the ticket's raw conversations, following ``Link rel="next"``."""
        first = f"/api/v2/tickets/{ref.id}/conversations"

        def fetch(url: str) -> tuple[list[Any], str | None]:
            data, next_url = self.client.page(url, params={"per_page": _PAGE} if url == first else None)
            with reading(self.name, "list conversations"):
                rows = list(data)
            return rows, next_url if rows else None

        return collect(fetch, first)

    def _priority(self, priority: Priority) -> int:
        return int(getattr(self.settings.priorities, priority.value))

    def _put(self, ref: TicketRef, fields: dict[str, Any], body: str) -> None:
        self.client.json("PUT", f"/api/v2/tickets/{ref.id}", json=fields)
        if body:
            self.comment(ref, body)


def _files(pieces: list[AttachmentPiece]) -> Files:
    return [("attachments[]", (p.name, p.read(), p.content_type)) for p in pieces]


def text_to_html(text: str) -> str:
    """Return plain text as HTML that keeps its line breaks (Freshdesk bodies are HTML)."""
    return html.escape(text).replace("\r\n", "\n").replace("\n", "<br>\n")
