"""Jira Service Management Cloud: customer requests, temporary attachments, comments, transitions.

Endpoints (docs: "JSM Cloud REST API" Request/Servicedesk, "Jira Cloud platform REST API" v3
Issues/Issue search; summary in /work/shared/helpdesk-apis.md §1):

* create: ``POST /rest/servicedeskapi/request`` → 201 ``issueKey``, ``_links.web``;
* labels, priority: ``PUT /rest/api/3/issue/{key}`` → 204 (labels are rarely request-type fields);
* attachments: ``POST /rest/servicedeskapi/servicedesk/{id}/attachTemporaryFile`` (multipart part
  ``file``, header ``X-Atlassian-Token: no-check``) → ``temporaryAttachments[].temporaryAttachmentId``,
  then ``POST /rest/servicedeskapi/request/{key}/attachment`` with ``temporaryAttachmentIds``,
  ``public`` and ``additionalComment`` (developer.atlassian.com, "Request › Add attachment");
* comments: ``POST``/``GET /rest/servicedeskapi/request/{key}/comment`` (``public:false`` =
  internal; pages by ``start``/``limit`` until ``isLastPage``);
* resolve/reopen: ``GET /rest/api/3/issue/{key}/transitions?expand=transitions.fields``, then
  ``POST`` ``{"transition":{"id"},"fields":{"resolution":{"name"}}}`` → 204; transitions are
  looked up by name because their ids vary per workflow;
* attachment check: ``GET /rest/api/3/issue/{key}?fields=attachment`` → ``fields.attachment[]``
  with ``filename`` and ``size`` (no hash);
* dedupe: ``GET /rest/api/3/search/jql`` with ``labels = "hz-…"`` (the old ``/search`` answers
  410). The index lags behind a new issue, so the open journal answers first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from agent.clock import Clock
from config.ticketing import JiraSettings
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

_SD = "/rest/servicedeskapi"
_ISSUE = "/rest/api/3/issue"
_PAGE = 50
_SUMMARY_CHARS = 255


class JiraBackend(RestBackend):
    """Tickets as Jira Service Management customer requests."""

    name = "jira"

    def __init__(
        self,
        settings: JiraSettings,
        token: str,
        *,
        journal_path: Path,
        session: requests.Session | None = None,
        clock: Clock | None = None,
    ) -> None:
        if settings.auth == "basic":
            header, encoded = basic_auth(settings.email or "", token)
            secrets = [token, encoded]
        else:
            header, secrets = f"Bearer {token}", [token]
        client = client_for(
            self.name, settings, {"Authorization": header}, secrets, session=session, clock=clock
        )
        super().__init__(client, OpenJournal(journal_path), settings)
        self.settings = settings

    @classmethod
    def from_settings(
        cls, settings: JiraSettings, data_dir: Path, *, clock: Clock | None = None
    ) -> JiraBackend:
        """Build the backend, reading the API token from its environment variable or file.

        Raises:
            ConfigError: the token variable is unset or its file unreadable.
            BackendError: the journal under ``data_dir`` cannot be opened.
        """
        token = read_token(cls.name, settings)
        return cls(settings, token, journal_path=journal_path(data_dir, cls.name), clock=clock)

    # --- TicketBackend -------------------------------------------------------------------

    def comment(self, ref: TicketRef, body: str) -> None:
        """Add a comment (internal unless ``public_comments``).

        Raises:
            BackendRejected, BackendAuthError, BackendError: see :class:`uploader.base.TicketBackend`.
        """
        self.client.json(
            "POST",
            f"{_SD}/request/{ref.id}/comment",
            json={"body": body, "public": self.settings.public_comments},
        )

    def set_priority(self, ref: TicketRef, priority: Priority, body: str) -> None:
        """Change the issue's priority, then say why in a comment.

        Raises:
            BackendRejected: priority not on the edit screen, or an unknown priority name.
        """
        self.client.json("PUT", f"{_ISSUE}/{ref.id}", json={"fields": {"priority": self._priority(priority)}})
        if body:
            self.comment(ref, body)

    def resolve(self, ref: TicketRef, body: str) -> None:
        """Run the resolve transition (with a resolution where its screen asks), then comment.

        Raises:
            BackendRejected: no transition named in ``resolve_transitions`` and not yet done.
        """
        self._transition(ref, self.settings.resolve_transitions, to_done=True)
        if body:
            self.comment(ref, body)

    def reopen(self, ref: TicketRef, body: str) -> None:
        """Run the reopen transition, then comment.

        Raises:
            BackendRejected: no transition named in ``reopen_transitions`` and still done.
        """
        self._transition(ref, self.settings.reopen_transitions, to_done=False)
        if body:
            self.comment(ref, body)

    def list_comments(self, ref: TicketRef) -> list[Comment]:
        """Return every comment of the request, oldest first, paging until ``isLastPage``.

        Raises:
            BackendError: a page failed or had an unexpected shape.
        """

        def fetch(start: int) -> tuple[list[Any], int | None]:
            data = self.client.json(
                "GET", f"{_SD}/request/{ref.id}/comment", params={"start": start, "limit": _PAGE}
            )
            with reading(self.name, "list comments"):
                values = list(data.get("values") or [])
                last = bool(data.get("isLastPage", True)) or not values
            return values, None if last else start + len(values)

        with reading(self.name, "list comments"):
            comments = [self._comment(v) for v in collect(fetch, 0)]
        return sorted(comments, key=lambda c: c.created_at)

    # --- RestBackend hooks ---------------------------------------------------------------

    def _lookup(self, key: str) -> TicketRef | None:
        jql = f'labels = "{key_tag(key)}" ORDER BY created ASC'
        data = self.client.json(
            "GET", "/rest/api/3/search/jql", params={"jql": jql, "fields": "key", "maxResults": 1}
        )
        with reading(self.name, "issue search"):
            issues = data.get("issues") or []
            return self._ref(str(issues[0]["key"])) if issues else None

    def _create(
        self, ticket: Ticket, pieces: list[AttachmentPiece], plan: AttachmentPlan
    ) -> tuple[TicketRef, int]:
        s = self.settings
        values: dict[str, Any] = {
            "summary": ticket.title[:_SUMMARY_CHARS],
            "description": plan.append_to(ticket.body),
        }
        if s.priority_on_create:
            values["priority"] = self._priority(ticket.priority)
        for fact, field_id in s.fields.items():
            if ticket.fields.get(fact) is not None:
                values[field_id] = str(ticket.fields[fact])
        body: dict[str, Any] = {
            "serviceDeskId": s.service_desk_id,
            "requestTypeId": s.request_type_id,
            "requestFieldValues": values,
        }
        if s.raise_on_behalf_of:
            body["raiseOnBehalfOf"] = s.raise_on_behalf_of
        data = self.client.json("POST", f"{_SD}/request", json=body)
        with reading(self.name, "create request"):
            web = (data.get("_links") or {}).get("web")
            return self._ref(str(data["issueKey"]), web), 0

    def _listed_files(self, ref: TicketRef) -> list[ListedFile]:
        data = self.client.json("GET", f"{_ISSUE}/{ref.id}", params={"fields": "attachment"})
        with reading(self.name, "issue attachments"):
            return [ListedFile.of(a["filename"], a["size"]) for a in data["fields"].get("attachment") or []]

    def _after_create(self, ref: TicketRef, ticket: Ticket) -> None:
        fields: dict[str, Any] = {}
        if not self.settings.priority_on_create:
            fields["priority"] = self._priority(ticket.priority)
        labels = [{"add": key_tag(ticket.key)}, {"add": "hezo"}]
        self.client.json("PUT", f"{_ISSUE}/{ref.id}", json={"update": {"labels": labels}, "fields": fields})

    def _attach_batch(self, ref: TicketRef, batch: list[AttachmentPiece], note: str | None) -> None:
        ids: list[str] = []
        for piece in batch:
            data = self.client.json(
                "POST",
                f"{_SD}/servicedesk/{self.settings.service_desk_id}/attachTemporaryFile",
                files={"file": (piece.name, piece.read(), piece.content_type)},
                headers={"X-Atlassian-Token": "no-check", "X-ExperimentalApi": "opt-in"},
            )
            with reading(self.name, "attach temporary file"):
                ids.extend(str(t["temporaryAttachmentId"]) for t in data["temporaryAttachments"])
        body: dict[str, Any] = {"temporaryAttachmentIds": ids, "public": self.settings.public_comments}
        if note:
            body["additionalComment"] = {"body": note}
        self.client.json("POST", f"{_SD}/request/{ref.id}/attachment", json=body)

    # --- internals -----------------------------------------------------------------------

    def _ref(self, key: str, web: str | None = None) -> TicketRef:
        return TicketRef(self.name, key, web or f"{self.client.base_url}/browse/{key}")

    def _priority(self, priority: Priority) -> dict[str, str]:
        return {"name": getattr(self.settings.priorities, priority.value)}

    def _transition(self, ref: TicketRef, names: tuple[str, ...], *, to_done: bool) -> None:
        data = self.client.json(
            "GET", f"{_ISSUE}/{ref.id}/transitions", params={"expand": "transitions.fields"}
        )
        with reading(self.name, "list transitions"):
            transitions = list(data.get("transitions") or [])
            by_name = {str(t.get("name", "")).casefold(): t for t in transitions}
            chosen = next((by_name[n.casefold()] for n in names if n.casefold() in by_name), None)
        if chosen is None:
            if self._is_done(ref) == to_done:
                return  # already there (an earlier attempt got through)
            offered = ", ".join(str(t.get("name")) for t in transitions) or "none"
            setting = "resolve_transitions" if to_done else "reopen_transitions"
            raise BackendRejected(
                f"jira: {ref.id} offers no transition named {list(names)} (it offers: {offered});"
                f" set ticketing.jira.{setting}"
            )
        body: dict[str, Any] = {"transition": {"id": str(chosen["id"])}}
        if to_done and self.settings.resolution and "resolution" in (chosen.get("fields") or {}):
            body["fields"] = {"resolution": {"name": self.settings.resolution}}
        self.client.json("POST", f"{_ISSUE}/{ref.id}/transitions", json=body)

    def _is_done(self, ref: TicketRef) -> bool:
        data = self.client.json("GET", f"{_ISSUE}/{ref.id}", params={"fields": "status"})
        with reading(self.name, "issue status"):
            return bool(data["fields"]["status"]["statusCategory"]["key"] == "done")

    @staticmethod
    def _comment(value: dict[str, Any]) -> Comment:
        author = value.get("author") or {}
        created = value.get("created") or {}
        if created.get("epochMillis") is not None:
            when = datetime.fromtimestamp(int(created["epochMillis"]) / 1000, UTC)
        else:
            when = parse_time(created.get("iso8601"))
        return Comment(
            id=str(value["id"]),
            author=str(author.get("displayName") or author.get("accountId") or "unknown"),
            body=str(value.get("body") or ""),
            created_at=when,
        )
