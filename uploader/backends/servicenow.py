"""ServiceNow: Table API ``incident`` with ``correlation_id``, Attachment API, work notes.

Endpoints (docs: "REST API reference: Table API", "Attachment API", "Inbound REST API rate
limiting"; summary in helpdesk-apis.md §3). Bodies are wrapped in ``result``; errors are
``{"error":{"message","detail"},"status":"failure"}``:

* create: ``POST /api/now/table/incident?sysparm_exclude_reference_link=true`` with
  ``impact``/``urgency`` (the priority is computed from them, read-only) and ``correlation_id``
  → 201 ``result.sys_id``, ``result.number``;
* attach: ``POST /api/now/attachment/file?table_name=incident&table_sys_id=…&file_name=…`` with
  the raw file and its MIME type as Content-Type (mandatory), one file per request;
* comment/priority/resolve/reopen: ``PATCH /api/now/table/incident/{sys_id}`` with ``work_notes``
  (internal) or ``comments`` (customer-visible), ``impact``/``urgency``, ``state`` 6 +
  ``close_code`` + ``close_notes``, ``state`` 2;
* comments: ``GET /api/now/table/sys_journal_field?sysparm_query=element_id=…^elementINcomments,
  work_notes^ORDERBYsys_created_on``, paged with ``sysparm_limit``/``sysparm_offset`` and the
  ``Link: <…>;rel="next"`` header; timestamps are UTC ``YYYY-MM-DD HH:MM:SS``;
* attachment check: ``GET /api/now/attachment?sysparm_query=table_sys_id=…`` → ``file_name``,
  ``size_bytes`` (a string) and ``hash`` (compared only when it is a SHA-256; older releases
  give an MD5), paged like the journal;
* dedupe: ``GET …/incident?sysparm_query=correlation_id=…`` (a database read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from agent.clock import Clock
from config.ticketing import ServiceNowSettings
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

_TABLE = "/api/now/table/incident"
_JOURNAL = "/api/now/table/sys_journal_field"
_ATTACHMENTS = "/api/now/attachment"
_PAGE = 100
_SHORT_CHARS = 160


class ServiceNowBackend(RestBackend):
    """Tickets as ServiceNow incidents, deduplicated by ``correlation_id``."""

    name = "servicenow"

    def __init__(
        self,
        settings: ServiceNowSettings,
        token: str,
        *,
        journal_path: Path,
        session: requests.Session | None = None,
        clock: Clock | None = None,
    ) -> None:
        if settings.auth == "basic":
            header, encoded = basic_auth(settings.username or "", token)
            headers, secrets = {"Authorization": header}, [token, encoded]
        elif settings.auth == "bearer":
            headers, secrets = {"Authorization": f"Bearer {token}"}, [token]
        else:  # API Key plugin
            headers, secrets = {"x-sn-apikey": token}, [token]
        client = client_for(self.name, settings, headers, secrets, session=session, clock=clock)
        super().__init__(client, OpenJournal(journal_path), settings)
        self.settings = settings

    @classmethod
    def from_settings(
        cls, settings: ServiceNowSettings, data_dir: Path, *, clock: Clock | None = None
    ) -> ServiceNowBackend:
        """Build the backend, reading the API token from its environment variable or file.

        Raises:
            ConfigError: the token variable is unset or its file unreadable.
            BackendError: the journal under ``data_dir`` cannot be opened.
        """
        token = read_token(cls.name, settings)
        return cls(settings, token, journal_path=journal_path(data_dir, cls.name), clock=clock)

    # --- TicketBackend -------------------------------------------------------------------

    def comment(self, ref: TicketRef, body: str) -> None:
        """Add a work note (or a customer-visible comment with ``public_comments``).

        Raises:
            BackendRejected, BackendAuthError, BackendError: see :class:`uploader.base.TicketBackend`.
        """
        self._patch(ref, {}, body)

    def set_priority(self, ref: TicketRef, priority: Priority, body: str) -> None:
        """Set impact and urgency (ServiceNow derives the priority) with a note, in one update."""
        self._patch(ref, self._levels(priority), body)

    def resolve(self, ref: TicketRef, body: str) -> None:
        """Set state 6 (Resolved) with ``close_code`` and ``close_notes``.

        Raises:
            BackendRejected: e.g. a data policy that needs another mandatory field.
        """
        notes = body or "Resolved by hezo-agent."
        self._patch(ref, {"state": "6", "close_code": self.settings.close_code, "close_notes": notes}, "")

    def reopen(self, ref: TicketRef, body: str) -> None:
        """Set the incident back to ``reopen_state`` (default 2, In Progress) with a note."""
        self._patch(ref, {"state": self.settings.reopen_state}, body)

    def list_comments(self, ref: TicketRef) -> list[Comment]:
        """Return comments and work notes from ``sys_journal_field``, oldest first.

        Raises:
            BackendAuthError: the journal table needs an ACL the integration user lacks.
            BackendError: a page failed or had an unexpected shape.
        """
        params = {
            "sysparm_query": f"element_id={ref.id}^elementINcomments,work_notes^ORDERBYsys_created_on",
            "sysparm_fields": "sys_id,element,value,sys_created_by,sys_created_on",
            "sysparm_limit": _PAGE,
            "sysparm_offset": 0,
        }

        def fetch(url: str) -> tuple[list[Any], str | None]:
            data, next_url = self.client.page(url, params=params if url == _JOURNAL else None)
            with reading(self.name, "list journal entries"):
                rows = list(data["result"])
            return rows, next_url if rows else None

        with reading(self.name, "list journal entries"):
            return [
                Comment(
                    id=str(r["sys_id"]),
                    author=str(r.get("sys_created_by") or "unknown"),
                    body=str(r.get("value") or ""),
                    created_at=parse_time(r["sys_created_on"]),
                )
                for r in collect(fetch, _JOURNAL)
            ]

    # --- RestBackend hooks ---------------------------------------------------------------

    def _lookup(self, key: str) -> TicketRef | None:
        params = {
            "sysparm_query": f"correlation_id={key_tag(key)}^ORDERBYsys_created_on",
            "sysparm_fields": "sys_id,number",
            "sysparm_limit": 1,
        }
        data = self.client.json("GET", _TABLE, params=params)
        with reading(self.name, "incident by correlation_id"):
            rows = data["result"]
            return self._ref(str(rows[0]["sys_id"])) if rows else None

    def _create(
        self, ticket: Ticket, pieces: list[AttachmentPiece], plan: AttachmentPlan
    ) -> tuple[TicketRef, int]:
        s = self.settings
        record: dict[str, Any] = {
            "short_description": ticket.title[:_SHORT_CHARS],
            "description": plan.append_to(ticket.body),
            "correlation_id": key_tag(ticket.key),
            "correlation_display": "hezo-agent",
            **self._levels(ticket.priority),
        }
        for column, value in (
            ("caller_id", s.caller_id),
            ("assignment_group", s.assignment_group),
            ("category", s.category),
        ):
            if value:
                record[column] = value
        for fact, column in s.fields.items():
            if ticket.fields.get(fact) is not None:
                record[column] = str(ticket.fields[fact])
        data = self.client.json(
            "POST", _TABLE, params={"sysparm_exclude_reference_link": "true"}, json=record
        )
        with reading(self.name, "create incident"):
            return self._ref(str(data["result"]["sys_id"])), 0

    def _listed_files(self, ref: TicketRef) -> list[ListedFile]:
        params = {
            "sysparm_query": f"table_sys_id={ref.id}",
            "sysparm_limit": _PAGE,
            "sysparm_offset": 0,
        }

        def fetch(url: str) -> tuple[list[Any], str | None]:
            data, next_url = self.client.page(url, params=params if url == _ATTACHMENTS else None)
            with reading(self.name, "list attachments"):
                rows = list(data["result"])
            return rows, next_url if rows else None

        rows = collect(fetch, _ATTACHMENTS)
        with reading(self.name, "list attachments"):
            return [ListedFile.of(r["file_name"], r["size_bytes"], r.get("hash")) for r in rows]

    def _batches(self, pieces: list[AttachmentPiece]) -> list[list[AttachmentPiece]]:
        return [[p] for p in pieces]  # the Attachment API takes one file per request

    def _attach_batch(self, ref: TicketRef, batch: list[AttachmentPiece], note: str | None) -> None:
        for piece in batch:
            self.client.json(
                "POST",
                "/api/now/attachment/file",
                params={"table_name": "incident", "table_sys_id": ref.id, "file_name": piece.name},
                data=piece.read(),
                headers={"Content-Type": piece.content_type},
            )
        if note:
            self._patch(ref, {}, note)

    # --- internals -----------------------------------------------------------------------

    def _ref(self, sys_id: str) -> TicketRef:
        return TicketRef(
            self.name, sys_id, f"{self.client.base_url}/nav_to.do?uri=incident.do?sys_id={sys_id}"
        )

    def _levels(self, priority: Priority) -> dict[str, str]:
        level = getattr(self.settings.priorities, priority.value)
        return {"impact": str(level.impact), "urgency": str(level.urgency)}

    def _patch(self, ref: TicketRef, record: dict[str, Any], body: str) -> None:
        record = dict(record)
        if body:
            record["comments" if self.settings.public_comments else "work_notes"] = body
        if record:
            self.client.json(
                "PATCH", f"{_TABLE}/{ref.id}", params={"sysparm_exclude_reference_link": "true"}, json=record
            )
