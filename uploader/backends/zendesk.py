"""Zendesk Support: tickets with ``external_id``, uploads → tokens, comments, status changes.

Endpoints (docs: "Zendesk API reference" Tickets, Ticket Comments, Ticket Attachments,
"Ticketing API introduction › Idempotency", Pagination; summary in helpdesk-apis.md §2):

* upload: ``POST /api/v2/uploads?filename=…`` with the raw file, ``&token=`` adds more files to
  the same upload → 201 ``upload.token`` (files attach to comments only; a token lives 60 min);
* create: ``POST /api/v2/tickets`` with ``external_id``, ``priority`` (urgent/high/normal/low),
  ``tags`` and the first comment (the description, with the upload token) → 201 ``ticket.id``.
  The ``Idempotency-Key`` header makes a replay return the first ticket; the same key with
  another body answers 400 ``IdempotentRequestError``. Upload tokens are kept per key for the
  life of this object so a retry in the same process sends the same body;
* comment/priority/status: ``PUT /api/v2/tickets/{id}`` with ``comment`` (``public:false`` =
  internal note), ``priority``, ``status: solved|open``;
* comments: ``GET /api/v2/tickets/{id}/comments?page[size]=100``, cursor pages through
  ``meta.has_more`` and ``links.next`` (developer.zendesk.com, "Pagination › cursor pagination");
* attachment check: the comments' ``attachments[]`` (``file_name``, ``size``; no hash), from
  the same cursor pages;
* dedupe: ``GET /api/v2/tickets?external_id=…`` (a database read, unlike search, which lags).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from agent.clock import Clock
from config.ticketing import ZendeskSettings
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
from uploader.base import BackendRejected
from uploader.models import Comment, Priority, Ticket, TicketRef

_PAGE = 100


class ZendeskBackend(RestBackend):
    """Tickets in Zendesk Support, deduplicated by ``external_id``."""

    name = "zendesk"

    def __init__(
        self,
        settings: ZendeskSettings,
        token: str,
        *,
        journal_path: Path,
        session: requests.Session | None = None,
        clock: Clock | None = None,
    ) -> None:
        if settings.auth == "basic":
            header, encoded = basic_auth(f"{settings.email}/token", token)
            secrets = [token, encoded]
        else:
            header, secrets = f"Bearer {token}", [token]
        client = client_for(
            self.name, settings, {"Authorization": header}, secrets, session=session, clock=clock
        )
        super().__init__(client, OpenJournal(journal_path), settings)
        self.settings = settings
        self._upload_tokens: dict[str, list[str]] = {}

    @classmethod
    def from_settings(
        cls, settings: ZendeskSettings, data_dir: Path, *, clock: Clock | None = None
    ) -> ZendeskBackend:
        """Build the backend, reading the API token from its environment variable or file.

        Raises:
            ConfigError: the token variable is unset or its file unreadable.
            BackendError: the journal under ``data_dir`` cannot be opened.
        """
        token = read_token(cls.name, settings)
        return cls(settings, token, journal_path=journal_path(data_dir, cls.name), clock=clock)

    # --- TicketBackend -------------------------------------------------------------------

    def comment(self, ref: TicketRef, body: str) -> None:
        """Add a comment (an internal note unless ``public_comments``).

        Raises:
            BackendRejected, BackendAuthError, BackendError: see :class:`uploader.base.TicketBackend`.
        """
        self._update(ref, {}, body)

    def set_priority(self, ref: TicketRef, priority: Priority, body: str) -> None:
        """Change the priority and comment why, in one update."""
        self._update(ref, {"priority": self._priority(priority)}, body)

    def resolve(self, ref: TicketRef, body: str) -> None:
        """Set status ``solved`` with the closing comment, in one update.

        Raises:
            BackendRejected: e.g. 422 when the account requires an assignee to solve.
        """
        self._update(ref, {"status": "solved"}, body)

    def reopen(self, ref: TicketRef, body: str) -> None:
        """Set status ``open`` with a comment (a *closed* ticket is frozen: 422, rejected)."""
        self._update(ref, {"status": "open"}, body)

    def list_comments(self, ref: TicketRef) -> list[Comment]:
        """Return every comment, oldest first, following the cursor pages.

        Raises:
            BackendError: a page failed or had an unexpected shape.
        """
        with reading(self.name, "list comments"):
            return [
                Comment(
                    id=str(c["id"]),
                    author=str(c.get("author_id")),
                    body=str(c.get("plain_body") or c.get("body") or ""),
                    created_at=parse_time(c["created_at"]),
                )
                for c in self._comment_pages(ref)
            ]

    # --- RestBackend hooks ---------------------------------------------------------------

    def _listed_files(self, ref: TicketRef) -> list[ListedFile]:
        comments = self._comment_pages(ref)
        with reading(self.name, "comment attachments"):
            return [
                ListedFile.of(a["file_name"], a["size"])
                for c in comments
                for a in c.get("attachments") or []
            ]

    def _lookup(self, key: str) -> TicketRef | None:
        data = self.client.json("GET", "/api/v2/tickets", params={"external_id": key_tag(key)})
        with reading(self.name, "tickets by external_id"):
            tickets = data.get("tickets") or []
            return self._ref(min(int(t["id"]) for t in tickets)) if tickets else None

    def _create(
        self, ticket: Ticket, pieces: list[AttachmentPiece], plan: AttachmentPlan
    ) -> tuple[TicketRef, int]:
        s = self.settings
        tag = key_tag(ticket.key)
        tokens = self._upload_tokens.get(ticket.key)
        if tokens is None:
            tokens = self._upload_tokens[ticket.key] = self._upload(pieces)
        comment: dict[str, Any] = {"body": plan.append_to(ticket.body), "public": True}
        if tokens:
            comment["uploads"] = tokens
        fields: dict[str, Any] = {
            "subject": ticket.title,
            "comment": comment,
            "priority": self._priority(ticket.priority),
            "tags": [*s.tags, tag],
            "external_id": tag,
        }
        custom = [
            {"id": fid, "value": _plain(ticket.fields[f])}
            for f, fid in s.custom_fields.items()
            if ticket.fields.get(f) is not None
        ]
        if custom:
            fields["custom_fields"] = custom
        if s.requester_email:
            fields["requester"] = {"email": s.requester_email, "name": s.requester_name or s.requester_email}
        try:
            data = self.client.json(
                "POST", "/api/v2/tickets", json={"ticket": fields}, headers={"Idempotency-Key": f"{tag}-open"}
            )
        except BackendRejected as err:
            found = self._lookup(ticket.key) if "IdempotentRequestError" in str(err) else None
            if found is None:
                raise
            return found, len(pieces)
        self._upload_tokens.pop(ticket.key, None)
        with reading(self.name, "create ticket"):
            return self._ref(int(data["ticket"]["id"])), len(pieces)

    def _attach_batch(self, ref: TicketRef, batch: list[AttachmentPiece], note: str | None) -> None:
        body = note or "Attached: " + ", ".join(p.name for p in batch)
        self._update(ref, {}, body, uploads=self._upload(batch))

    # --- internals -----------------------------------------------------------------------

    def _ref(self, ticket_id: int) -> TicketRef:
        return TicketRef(self.name, str(ticket_id), f"{self.client.base_url}/agent/tickets/{ticket_id}")

    def _comment_pages(self, ref: TicketRef) -> list[dict[str, Any]]:
        """Return the ticket's raw comments, following the cursor pages."""
        first = f"/api/v2/tickets/{ref.id}/comments"

        def fetch(url: str) -> tuple[list[Any], str | None]:
            params = {"page[size]": _PAGE} if url == first else None
            data = self.client.json("GET", url, params=params)
            with reading(self.name, "list comments"):
                more = bool((data.get("meta") or {}).get("has_more"))
                return list(data["comments"]), (data.get("links") or {}).get("next") if more else None

        return collect(fetch, first)

    def _priority(self, priority: Priority) -> str:
        return str(getattr(self.settings.priorities, priority.value))

    def _upload(self, pieces: list[AttachmentPiece]) -> list[str]:
        """Upload ``pieces`` into one upload; return its token (none for no pieces)."""
        token: str | None = None
        for piece in pieces:
            params = {"filename": piece.name} | ({"token": token} if token else {})
            data = self.client.json(
                "POST",
                "/api/v2/uploads",
                params=params,
                data=piece.read(),
                headers={"Content-Type": piece.content_type},
            )
            with reading(self.name, "upload"):
                token = str(data["upload"]["token"])
        return [token] if token else []

    def _update(
        self, ref: TicketRef, fields: dict[str, Any], body: str, uploads: list[str] | None = None
    ) -> None:
        ticket = dict(fields)
        if body or uploads:
            comment: dict[str, Any] = {"body": body, "public": self.settings.public_comments}
            if uploads:
                comment["uploads"] = uploads
            ticket["comment"] = comment
        if ticket:
            self.client.json("PUT", f"/api/v2/tickets/{ref.id}", json={"ticket": ticket})


def _plain(value: Any) -> Any:
    """Return ``value`` as JSON can carry it: numbers and booleans as they are, the rest as text."""
    return value if isinstance(value, (str, int, float, bool)) else str(value)
