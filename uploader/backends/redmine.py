"""Redmine: issues in one project, uploads → tokens, journals (notes), status changes.

Endpoints (Redmine wiki "Rest_api", "Rest_Issues", "Rest_IssueStatuses", "Rest_Enumerations",
"Rest_Trackers"; summary in helpdesk-apis.md §5), checked against a real Redmine 5.0 in
``tests/test_backend_redmine.py``:

* auth: header ``X-Redmine-API-Key``. Redmine does not refuse a wrong key on reads: it answers
  them as the anonymous user. So the first call of a backend checks the key with
  ``GET /users/current.json`` (401 for anonymous → :class:`BackendAuthError`);
* upload: ``POST /uploads.json?filename=…`` with ``Content-Type: application/octet-stream``
  (any other type → 406) → 201 ``upload.token``; a file over the server's
  ``attachment_max_size`` (default 5120 KB) → 422;
* create: ``POST /issues.json`` ``{"issue": {project_id, tracker_id, subject, description,
  priority_id, custom_fields, uploads: [{token, filename, content_type}]}}`` → 201 ``issue.id``;
  a validation error → 422 ``{"errors": ["…"]}``, quoted in :class:`BackendRejected`;
* notes, priority, status, more files: ``PUT /issues/{id}.json`` ``{"issue": {notes,
  private_notes, priority_id, status_id, uploads}}`` → 204;
* names → ids: ``GET /enumerations/issue_priorities.json``, ``/issue_statuses.json``,
  ``/trackers.json``, read once and read again when a configured name is missing (renamed);
* status and priority changes: Redmine drops what the user may not set silently (still 204):
  a status the workflow forbids, and any status or priority when the user's role lacks "Edit
  issues" (``allowed_statuses`` lists statuses all the same). The target status is the first
  configured one in ``GET /issues/{id}.json?include=allowed_statuses``; each change is sent
  alone and read back, and only then is the note added, so a dropped change is rejected
  without a note. Likewise ``private_notes`` is ignored without "Set notes as private" (the
  note becomes public);
* comments: ``GET /issues/{id}.json?include=journals`` (journals whose ``notes`` are empty only
  changed fields and are skipped);
* dedupe: every issue carries the key's ``hz-…`` tag in the custom field ``key_field_id``
  (found with ``GET /issues.json?cf_N=<tag>``) or, without one, on the description's last line
  (``description=~<tag>``). Both are database queries, no search index that lags. Redmine
  ignores a filter it does not offer (a custom field not "used as a filter") and then lists
  every issue, so each hit is checked to really carry the tag.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests

from agent.clock import Clock
from config.ticketing import RedmineSettings
from uploader.attachments import AttachmentPiece, AttachmentPlan
from uploader.backends._rest import (
    OpenJournal,
    RestBackend,
    client_for,
    journal_path,
    key_tag,
    parse_time,
    read_token,
    reading,
)
from uploader.base import BackendError, BackendRejected
from uploader.models import Comment, Priority, Ticket, TicketRef

log = logging.getLogger("hezo.backend")

#: the description's last line names the key's tag (the find fallback without a custom field)
KEY_LABEL = "hezo-key:"
_SUBJECT_CHARS = 255
_LOOKUP_LIMIT = 25
_DOWNLOAD_CHUNK = 1 << 16

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Status:
    id: int
    name: str
    is_closed: bool


@dataclass(frozen=True, slots=True)
class _Catalog:
    """A Redmine's names → ids, keyed by the case-folded name."""

    priorities: dict[str, int]
    statuses: dict[str, _Status]
    trackers: dict[str, int]
    #: case-folded name → the name as Redmine spells it, for messages
    labels: dict[str, str]


class RedmineBackend(RestBackend):
    """Tickets as Redmine issues, found again by their ``hz-…`` tag."""

    name = "redmine"

    def __init__(
        self,
        settings: RedmineSettings,
        token: str,
        *,
        journal_path: Path,
        session: requests.Session | None = None,
        clock: Clock | None = None,
    ) -> None:
        client = client_for(
            self.name, settings, {"X-Redmine-API-Key": token}, [token], session=session, clock=clock
        )
        super().__init__(client, OpenJournal(journal_path), settings)
        self.settings = settings
        self._names: _Catalog | None = None
        self._key_checked = False

    @classmethod
    def from_settings(
        cls, settings: RedmineSettings, data_dir: Path, *, clock: Clock | None = None
    ) -> RedmineBackend:
        """Build the backend, reading the API key from its environment variable or file.

        Raises:
            ConfigError: the key variable is unset or its file unreadable.
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
        self._put(ref, {}, body)

    def set_priority(self, ref: TicketRef, priority: Priority, body: str) -> None:
        """Change the priority, confirm Redmine kept it, then add the note saying why.

        Raises:
            BackendRejected: the configured priority name does not exist in this Redmine, or
                Redmine dropped the change (the user may not edit issues); no note is written then.
        """
        wanted = self._priority_id(priority)
        self._change(ref, "priority", wanted, f"priorities.{priority.value}")
        self._put(ref, {}, body)

    def resolve(self, ref: TicketRef, body: str) -> None:
        """Move the issue to the first of ``resolve_statuses`` the workflow allows, then add the note.

        An issue already in a closed status or one of ``resolve_statuses`` only gets the note.

        Raises:
            BackendRejected: the workflow allows none of ``resolve_statuses``, or dropped the change.
        """
        self._move(ref, self.settings.resolve_statuses, body, closing=True)

    def reopen(self, ref: TicketRef, body: str) -> None:
        """Move the issue to the first of ``reopen_statuses`` the workflow allows, then add the note.

        An issue that is already open (not closed, not in ``resolve_statuses``) only gets the note.

        Raises:
            BackendRejected: the workflow allows none of ``reopen_statuses``, or dropped the change.
        """
        self._move(ref, self.settings.reopen_statuses, body, closing=False)

    def list_comments(self, ref: TicketRef) -> list[Comment]:
        """Return the issue's notes (journals with text), oldest first.

        Raises:
            BackendRejected: the issue does not exist (404) or is not visible to the key's user.
            BackendError: the request failed or the answer had an unexpected shape.
        """
        issue = self._issue(ref, "journals")
        with reading(self.name, "issue journals"):
            comments = [
                Comment(
                    id=str(j["id"]),
                    author=str((j.get("user") or {}).get("name") or "unknown"),
                    body=str(j["notes"]),
                    created_at=parse_time(j["created_on"]),
                )
                for j in issue.get("journals") or []
                if j.get("notes")
            ]
        return sorted(comments, key=lambda c: (c.created_at, int(c.id)))

    def has_attachment(self, ref: TicketRef, name: str, sha256: str, size_bytes: int) -> bool | None:
        """Return whether the issue holds this file, whole or as the parts a split makes.

        Files are matched by name and size, then (with ``sha256``) downloaded and hashed.

        Raises:
            BackendError: the lookup or a download failed.
        """
        issue = self._issue(ref, "attachments")
        files: dict[tuple[str, int], list[str]] = {}
        with reading(self.name, "issue attachments"):
            for a in issue.get("attachments") or []:
                files.setdefault((str(a["filename"]), int(a["filesize"])), []).append(str(a["content_url"]))
        whole = files.get((name, size_bytes), [])
        if whole:
            return not sha256 or any(self._digest([url]) == sha256 for url in whole)
        limit = self.settings.max_attachment_bytes
        if size_bytes <= limit:
            return False
        parts = math.ceil(size_bytes / limit)
        width = max(3, len(str(parts)))
        expected = [
            (f"{name}.{n:0{width}d}", min(limit, size_bytes - (n - 1) * limit)) for n in range(1, parts + 1)
        ]
        if not all(e in files for e in expected):
            return False
        return not sha256 or self._digest([files[e][-1] for e in expected]) == sha256

    # --- RestBackend hooks ---------------------------------------------------------------

    def _lookup(self, key: str) -> TicketRef | None:
        self._check_key()
        tag = key_tag(key)
        s = self.settings
        params: dict[str, Any] = {
            "project_id": s.project,
            "status_id": "*",
            "sort": "id",
            "limit": _LOOKUP_LIMIT,
        }
        if s.key_field_id is not None:
            params[f"cf_{s.key_field_id}"] = tag
        else:
            params["description"] = f"~{tag}"
        data = self.client.json("GET", "/issues.json", params=params)
        with reading(self.name, "issues by tag"):
            issues = list(data.get("issues") or [])
            hits = [int(i["id"]) for i in issues if self._carries(i, tag)]
        if issues and not hits:
            where = f"custom field {s.key_field_id}" if s.key_field_id is not None else "the description"
            raise BackendRejected(
                f"redmine: the filter on {where} was ignored (issues without the tag {tag} were listed);"
                " make ticketing.redmine.key_field_id a text custom field 'Used as a filter', for all"
                " projects and trackers"
            )
        return self._ref(min(hits)) if hits else None

    def _create(
        self, ticket: Ticket, pieces: list[AttachmentPiece], plan: AttachmentPlan
    ) -> tuple[TicketRef, int]:
        s = self.settings
        tag = key_tag(ticket.key)
        issue: dict[str, Any] = {
            "project_id": s.project,
            "subject": ticket.title[:_SUBJECT_CHARS],
            "description": f"{plan.append_to(ticket.body).rstrip()}\n\n{KEY_LABEL} {tag}\n",
            "priority_id": self._priority_id(ticket.priority),
        }
        if s.tracker is not None:
            issue["tracker_id"] = self._named("tracker", lambda c: c.trackers, s.tracker, "tracker")
        custom = [
            {"id": fid, "value": str(ticket.fields[fact])}
            for fact, fid in s.custom_fields.items()
            if ticket.fields.get(fact) is not None and fid != s.key_field_id
        ]
        if s.key_field_id is not None:
            custom.append({"id": s.key_field_id, "value": tag})
        if custom:
            issue["custom_fields"] = custom
        uploads = self._upload(pieces)
        if uploads:
            issue["uploads"] = uploads
        data = self.client.json("POST", "/issues.json", json={"issue": issue})
        with reading(self.name, "create issue"):
            return self._ref(int(data["issue"]["id"])), len(pieces)

    def _attach_batch(self, ref: TicketRef, batch: list[AttachmentPiece], note: str | None) -> None:
        body = note or "Attached: " + ", ".join(p.name for p in batch)
        self._put(ref, {"uploads": self._upload(batch)}, body)

    # --- internals -----------------------------------------------------------------------

    def _ref(self, issue_id: int) -> TicketRef:
        return TicketRef(self.name, str(issue_id), f"{self.client.base_url}/issues/{issue_id}")

    def _check_key(self) -> None:
        """Make a wrong API key fail here (401) instead of reading as the anonymous user."""
        if not self._key_checked:
            self.client.request("GET", "/users/current.json")
            self._key_checked = True

    def _catalog(self, refresh: bool = False) -> _Catalog:
        if self._names is not None and not refresh:
            return self._names
        self._check_key()
        priorities = self.client.json("GET", "/enumerations/issue_priorities.json")
        statuses = self.client.json("GET", "/issue_statuses.json")
        trackers = self.client.json("GET", "/trackers.json") if self.settings.tracker is not None else {}
        with reading(self.name, "priorities, statuses and trackers"):
            rows = {
                "priorities": [p for p in priorities["issue_priorities"] if p.get("active", True)],
                "statuses": list(statuses["issue_statuses"]),
                "trackers": list(trackers.get("trackers") or []),
            }
            self._names = _Catalog(
                priorities={str(p["name"]).casefold(): int(p["id"]) for p in rows["priorities"]},
                statuses={
                    str(st["name"]).casefold(): _Status(
                        int(st["id"]), str(st["name"]), bool(st.get("is_closed"))
                    )
                    for st in rows["statuses"]
                },
                trackers={str(t["name"]).casefold(): int(t["id"]) for t in rows["trackers"]},
                labels={str(r["name"]).casefold(): str(r["name"]) for group in rows.values() for r in group},
            )
        return self._names

    def _named(self, kind: str, table: Callable[[_Catalog], dict[str, T]], name: str, setting: str) -> T:
        """Return the id (or status) ``name`` has; read the catalog again once if it is missing.

        Raises:
            BackendRejected: this Redmine has no such name, listing the ones it has.
        """
        for refresh in (False, True):
            found = table(self._catalog(refresh)).get(name.casefold())
            if found is not None:
                return found
        names = self._catalog()
        offered = ", ".join(sorted(names.labels.get(n, n) for n in table(names)))
        raise BackendRejected(
            f"redmine: no {kind} named {name!r} (this Redmine has: {offered});"
            f" set ticketing.redmine.{setting}"
        )

    def _priority_id(self, priority: Priority) -> int:
        name = str(getattr(self.settings.priorities, priority.value))
        return self._named("priority", lambda c: c.priorities, name, f"priorities.{priority.value}")

    def _issue(self, ref: TicketRef, include: str | None = None) -> dict[str, Any]:
        params = {"include": include} if include else None
        data = self.client.json("GET", f"/issues/{ref.id}.json", params=params)
        with reading(self.name, "read issue"):
            return dict(data["issue"])

    def _put(self, ref: TicketRef, fields: dict[str, Any], body: str) -> None:
        issue = dict(fields)
        if body:
            issue["notes"] = body
            issue["private_notes"] = not self.settings.public_comments
        if issue:
            self.client.json("PUT", f"/issues/{ref.id}.json", json={"issue": issue})

    def _move(self, ref: TicketRef, names: tuple[str, ...], body: str, *, closing: bool) -> None:
        issue = self._issue(ref, "allowed_statuses")
        resolved = {n.casefold() for n in self.settings.resolve_statuses}
        with reading(self.name, "issue status"):
            current = issue["status"]
            current_name = str(current["name"])
            known = self._catalog().statuses.get(current_name.casefold())
            done = bool(current.get("is_closed", known.is_closed if known else False))
            done = done or current_name.casefold() in resolved
            offered = issue.get("allowed_statuses")
            if offered is None:  # before Redmine 5.0: try any status, checked after the update
                allowed = {n: st.id for n, st in self._catalog().statuses.items()}
            else:
                allowed = {str(st["name"]).casefold(): int(st["id"]) for st in offered}
        if done == closing:
            log.info("event=status_kept backend=%s ref=%s status=%s", self.name, ref.id, current_name)
            self._put(ref, {}, body)
            return
        target = next((n for n in names if n.casefold() in allowed), None)
        setting = "resolve_statuses" if closing else "reopen_statuses"
        if target is None:
            raise BackendRejected(
                f"redmine: issue {ref.id} is {current_name!r}; the workflow lets this user move it to"
                f" none of {list(names)} (allowed: {sorted(allowed)}); set ticketing.redmine.{setting}"
                " or the workflow of the user's role"
            )
        self._change(ref, "status", allowed[target.casefold()], setting)
        self._put(ref, {}, body)

    def _change(self, ref: TicketRef, field: str, wanted: int, setting: str) -> None:
        """Set ``<field>_id``, then read the issue back: Redmine drops what the user may not set.

        The note goes in a later request, so a dropped change leaves no note behind (and a
        retry after a crash in between finds the change done and only adds the note).

        Raises:
            BackendRejected: the issue still has another value.
        """
        self._put(ref, {f"{field}_id": wanted}, "")
        after = self._issue(ref)
        with reading(self.name, f"issue {field}"):
            now_id, now_name = int(after[field]["id"]), str(after[field]["name"])
        if now_id != wanted:
            raise BackendRejected(
                f"redmine: issue {ref.id} kept {field} {now_name!r}: Redmine ignored the change, so the"
                f" API user may not set it (its role needs 'Edit issues' and a workflow allowing it);"
                f" fix the role or ticketing.redmine.{setting}"
            )
        log.info("event=issue_changed backend=%s ref=%s %s=%s", self.name, ref.id, field, now_name)

    def _upload(self, pieces: list[AttachmentPiece]) -> list[dict[str, str]]:
        """Upload each piece; return the ``uploads`` entries that attach them."""
        uploads: list[dict[str, str]] = []
        for piece in pieces:
            data = self.client.json(
                "POST",
                "/uploads.json",
                params={"filename": piece.name},
                data=piece.read(),
                headers={"Content-Type": "application/octet-stream"},
            )
            with reading(self.name, "upload"):
                token = str(data["upload"]["token"])
            uploads.append({"token": token, "filename": piece.name, "content_type": piece.content_type})
        return uploads

    def _carries(self, issue: dict[str, Any], tag: str) -> bool:
        if self.settings.key_field_id is None:
            return tag in str(issue.get("description") or "")
        return any(
            int(cf["id"]) == self.settings.key_field_id and cf.get("value") == tag
            for cf in issue.get("custom_fields") or []
        )

    def _digest(self, urls: list[str]) -> str:
        """Return the SHA-256 of the files at ``urls`` joined in order."""
        digest = hashlib.sha256()
        for url in urls:
            resp = self.client.request("GET", url, stream=True)
            try:
                for chunk in resp.iter_content(_DOWNLOAD_CHUNK):
                    digest.update(chunk)
            except requests.RequestException as err:
                what = f"{self.name}: download {url.split('?', 1)[0]}"
                raise BackendError(self.client.redact(f"{what}: {type(err).__name__}: {err}")) from None
            finally:
                resp.close()
        return digest.hexdigest()
