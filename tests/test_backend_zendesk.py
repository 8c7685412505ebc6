"""The Zendesk backend against answers shaped like Zendesk Support's documented API.

Shapes follow developer.zendesk.com (Tickets, Ticket Comments, Ticket Attachments / uploads,
Idempotency, cursor Pagination, Rate limits); ``responses`` stands in for the account.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
import responses
import yaml
from responses import matchers

from agent.clock import FakeClock
from config.ticketing import ZendeskSettings
from uploader.backends._rest import key_tag
from uploader.backends.zendesk import ZendeskBackend
from uploader.base import BackendAuthError, BackendError, BackendRejected
from uploader.models import Attachment, Priority, Ticket, TicketRef

BASE = "https://hezo-test.zendesk.com"
TOKEN = "wEh9kXq2-zendesk-token-41"
EMAIL = "agent@example.com"
KEY = "Biuro Główne/a30-sala/offline"
TAG = key_tag(KEY)
REF = TicketRef("zendesk", "35436", f"{BASE}/agent/tickets/35436")
SETTINGS = ZendeskSettings(
    url=BASE, email=EMAIL, token_env="HEZO_ZENDESK_TOKEN", custom_fields={"serial": 360001234567}
)
EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "example.yaml"


def _ticket(priority: Priority = Priority.CRITICAL) -> Ticket:
    return Ticket(
        key=KEY,
        title='[P1] A30 "Sala Zarząd" offline',
        body="The device stopped answering at 09:00.\n",
        priority=priority,
        fields={"serial": "803123", "language": "en"},
    )


def _ticket_json(ticket_id: int = 35436, status: str = "new") -> dict[str, object]:
    return {
        "ticket": {
            "id": ticket_id,
            "url": f"{BASE}/api/v2/tickets/{ticket_id}.json",
            "external_id": TAG,
            "subject": '[P1] A30 "Sala Zarząd" offline',
            "priority": "urgent",
            "status": status,
            "tags": ["hezo", TAG],
            "created_at": "2026-01-05T09:00:00Z",
        }
    }


def _upload_json(token: str = "6bk3gql82em5nmf") -> dict[str, object]:
    return {
        "upload": {
            "token": token,
            "expires_at": "2026-01-05T10:00:00Z",
            "attachment": {
                "id": 498483,
                "file_name": "blackbox.log",
                "content_type": "text/plain",
                "size": 12,
            },
            "attachments": [{"id": 498483, "file_name": "blackbox.log", "content_type": "text/plain"}],
        }
    }


def _comment(cid: int, body: str, when: str) -> dict[str, object]:
    return {
        "id": cid,
        "type": "Comment",
        "author_id": 123123,
        "body": body,
        "html_body": f"<p>{body}</p>",
        "plain_body": body,
        "public": False,
        "attachments": [],
        "created_at": when,
    }


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def zendesk(tmp_path: Path) -> Iterator[ZendeskBackend]:
    backend = ZendeskBackend(SETTINGS, TOKEN, journal_path=tmp_path / "journal.sqlite", clock=FakeClock())
    yield backend
    backend.close()


def _body(call: responses.Call) -> dict[str, object]:
    raw = call.request.body
    return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))


def _log(tmp_path: Path) -> Attachment:
    path = tmp_path / "blackbox.log"
    path.write_text("line 1\nline 2\n", encoding="utf-8")
    return Attachment("blackbox.log", path, "text/plain")


# --- open ----------------------------------------------------------------------------------


def test_open_uploads_then_creates_the_ticket_with_external_id_and_idempotency_key(
    zendesk: ZendeskBackend, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    upload = rsps.post(
        f"{BASE}/api/v2/uploads",
        json=_upload_json(),
        status=201,
        match=[matchers.query_param_matcher({"filename": "blackbox.log"})],
    )
    create = rsps.post(
        f"{BASE}/api/v2/tickets",
        json=_ticket_json(),
        status=201,
        headers={"Location": f"{BASE}/api/v2/tickets/35436.json", "x-idempotency-lookup": "miss"},
        match=[matchers.header_matcher({"Idempotency-Key": f"{TAG}-open"})],
    )

    ref = zendesk.open(_ticket(), [_log(tmp_path)])

    assert ref == REF
    sent = upload.calls[0].request
    assert sent.body == b"line 1\nline 2\n" and sent.headers["Content-Type"] == "text/plain"
    expected_auth = "Basic " + base64.b64encode(f"{EMAIL}/token:{TOKEN}".encode()).decode()
    assert sent.headers["Authorization"] == expected_auth
    assert _body(create.calls[0]) == {
        "ticket": {
            "subject": '[P1] A30 "Sala Zarząd" offline',
            "comment": {
                "body": "The device stopped answering at 09:00.\n",
                "public": True,
                "uploads": ["6bk3gql82em5nmf"],
            },
            "priority": "urgent",
            "tags": ["hezo", TAG],
            "external_id": TAG,
            "custom_fields": [{"id": 360001234567, "value": "803123"}],
        }
    }


def test_a_retry_in_the_same_process_replays_the_same_body(
    zendesk: ZendeskBackend, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    upload = rsps.post(f"{BASE}/api/v2/uploads", json=_upload_json(), status=201)
    create = rsps.post(f"{BASE}/api/v2/tickets", body=requests.ReadTimeout("slow"))
    with pytest.raises(BackendError):
        zendesk.open(_ticket(), [_log(tmp_path)])
    rsps.replace(
        responses.POST,
        f"{BASE}/api/v2/tickets",
        json=_ticket_json(),
        status=201,
        headers={"x-idempotency-lookup": "hit"},
    )
    assert zendesk.open(_ticket(), [_log(tmp_path)]) == REF
    first, second = (_body(c) for c in rsps.calls if c.request.url == f"{BASE}/api/v2/tickets")
    assert first == second  # same upload token, same body: Zendesk answers with the first ticket
    assert len(create.calls) == 1  # (the replaced mock got the second call)
    assert len(upload.calls) == 1  # the file went up once


def test_an_idempotency_conflict_resolves_to_the_existing_ticket(
    zendesk: ZendeskBackend, rsps: responses.RequestsMock
) -> None:
    rsps.post(
        f"{BASE}/api/v2/tickets",
        status=400,
        json={
            "error": "IdempotentRequestError",
            "description": "Request parameters do not match the original",
        },
    )
    rsps.get(
        f"{BASE}/api/v2/tickets", json={"tickets": [_ticket_json()["ticket"]], "count": 1, "next_page": None}
    )
    assert zendesk.open(_ticket()) == REF


# --- find ----------------------------------------------------------------------------------


def test_find_lists_tickets_by_external_id_and_takes_the_first(
    zendesk: ZendeskBackend, rsps: responses.RequestsMock
) -> None:
    rsps.get(
        f"{BASE}/api/v2/tickets",
        json={
            "tickets": [_ticket_json(35999)["ticket"], _ticket_json(35436)["ticket"]],
            "count": 2,
            "next_page": None,
            "previous_page": None,
        },
        match=[matchers.query_param_matcher({"external_id": TAG})],
    )
    assert zendesk.find(KEY) == REF


def test_find_returns_none_for_an_unknown_external_id(
    zendesk: ZendeskBackend, rsps: responses.RequestsMock
) -> None:
    rsps.get(f"{BASE}/api/v2/tickets", json={"tickets": [], "count": 0, "next_page": None})
    assert zendesk.find(KEY) is None


# --- updates -------------------------------------------------------------------------------


def test_comment_is_a_private_note(zendesk: ZendeskBackend, rsps: responses.RequestsMock) -> None:
    update = rsps.put(f"{BASE}/api/v2/tickets/35436", json=_ticket_json(status="open"))
    zendesk.comment(REF, "The device answers again.")
    assert _body(update.calls[0]) == {
        "ticket": {"comment": {"body": "The device answers again.", "public": False}}
    }


@pytest.mark.parametrize(("priority", "expected"), [(Priority.MEDIUM, "normal"), (Priority.LOW, "low")])
def test_set_priority_maps_the_seed_priority(
    zendesk: ZendeskBackend, rsps: responses.RequestsMock, priority: Priority, expected: str
) -> None:
    update = rsps.put(f"{BASE}/api/v2/tickets/35436", json=_ticket_json())
    zendesk.set_priority(REF, priority, "Downgraded.")
    assert _body(update.calls[0]) == {
        "ticket": {"priority": expected, "comment": {"body": "Downgraded.", "public": False}}
    }


def test_resolve_solves_and_reopen_opens(zendesk: ZendeskBackend, rsps: responses.RequestsMock) -> None:
    update = rsps.put(f"{BASE}/api/v2/tickets/35436", json=_ticket_json(status="solved"))
    zendesk.resolve(REF, "Recovered.")
    zendesk.reopen(REF, "Down again.")
    assert [_body(c)["ticket"] for c in update.calls] == [
        {"status": "solved", "comment": {"body": "Recovered.", "public": False}},
        {"status": "open", "comment": {"body": "Down again.", "public": False}},
    ]


def test_attach_uploads_and_adds_it_to_a_private_comment(
    zendesk: ZendeskBackend, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    rsps.post(f"{BASE}/api/v2/uploads", json=_upload_json("tok2"), status=201)
    update = rsps.put(f"{BASE}/api/v2/tickets/35436", json=_ticket_json())
    zendesk.attach(REF, _log(tmp_path))
    assert _body(update.calls[0]) == {
        "ticket": {"comment": {"body": "Attached: blackbox.log", "public": False, "uploads": ["tok2"]}}
    }


def test_list_comments_follows_the_cursor(zendesk: ZendeskBackend, rsps: responses.RequestsMock) -> None:
    next_url = f"{BASE}/api/v2/tickets/35436/comments.json?page%5Bafter%5D=xxx&page%5Bsize%5D=100"
    rsps.get(
        f"{BASE}/api/v2/tickets/35436/comments",
        json={
            "comments": [
                _comment(1, "description", "2026-01-05T09:00:00Z"),
                _comment(2, "/logs", "2026-01-05T09:05:00Z"),
            ],
            "meta": {"has_more": True, "after_cursor": "xxx", "before_cursor": "yyy"},
            "links": {"next": next_url, "prev": None},
        },
        match=[matchers.query_param_matcher({"page[size]": "100"})],
    )
    rsps.get(
        next_url,
        json={
            "comments": [_comment(3, "ok", "2026-01-05T09:06:00Z")],
            "meta": {"has_more": False, "after_cursor": None, "before_cursor": "zzz"},
            "links": {"next": None, "prev": None},
        },
    )
    comments = zendesk.list_comments(REF)
    assert [(c.id, c.body, c.author) for c in comments] == [
        ("1", "description", "123123"),
        ("2", "/logs", "123123"),
        ("3", "ok", "123123"),
    ]
    assert comments[2].created_at == datetime(2026, 1, 5, 9, 6, tzinfo=UTC)


# --- errors --------------------------------------------------------------------------------


def test_401_is_an_auth_error(zendesk: ZendeskBackend, rsps: responses.RequestsMock) -> None:
    rsps.put(f"{BASE}/api/v2/tickets/35436", status=401, json={"error": "Couldn't authenticate you"})
    with pytest.raises(BackendAuthError, match="Couldn't authenticate you") as caught:
        zendesk.comment(REF, "x")
    assert TOKEN not in str(caught.value)


def test_422_record_invalid_is_rejected_with_the_details(
    zendesk: ZendeskBackend, rsps: responses.RequestsMock
) -> None:
    rsps.post(
        f"{BASE}/api/v2/tickets",
        status=422,
        json={
            "error": "RecordInvalid",
            "description": "Record validation errors",
            "details": {
                "requester": [
                    {"description": "Requester: Email is not properly formatted", "error": "InvalidValue"}
                ]
            },
        },
    )
    with pytest.raises(BackendRejected, match=r"RecordInvalid.*Email is not properly formatted"):
        zendesk.open(_ticket())


def test_400_plain_text_is_rejected_quoting_it(zendesk: ZendeskBackend, rsps: responses.RequestsMock) -> None:
    rsps.put(
        f"{BASE}/api/v2/tickets/35436",
        status=400,
        body="Invalid search: ticket id must be numeric",
        content_type="text/plain",
    )
    with pytest.raises(BackendRejected, match="HTTP 400: Invalid search: ticket id must be numeric"):
        zendesk.comment(REF, "x")


def test_429_carries_retry_after(zendesk: ZendeskBackend, rsps: responses.RequestsMock) -> None:
    rsps.get(
        f"{BASE}/api/v2/tickets",
        status=429,
        headers={"Retry-After": "93", "X-Rate-Limit": "700", "X-Rate-Limit-Remaining": "0"},
        json={
            "error": "APIRateLimitExceeded",
            "description": "Number of allowed API requests per minute exceeded",
        },
    )
    with pytest.raises(BackendError) as caught:
        zendesk.find(KEY)
    assert caught.value.retryable and caught.value.retry_after_s == 93.0


def test_503_is_retryable(zendesk: ZendeskBackend, rsps: responses.RequestsMock) -> None:
    rsps.put(f"{BASE}/api/v2/tickets/35436", status=503, body="Service Unavailable")
    with pytest.raises(BackendError) as caught:
        zendesk.resolve(REF, "x")
    assert type(caught.value) is BackendError and caught.value.retryable


def test_bearer_auth_sends_the_oauth_token(tmp_path: Path, rsps: responses.RequestsMock) -> None:
    settings = ZendeskSettings(url=BASE, auth="bearer", token_file=tmp_path / "t")
    backend = ZendeskBackend(settings, TOKEN, journal_path=tmp_path / "j.sqlite")
    rsps.get(
        f"{BASE}/api/v2/tickets",
        json={"tickets": [], "count": 0},
        match=[matchers.header_matcher({"Authorization": f"Bearer {TOKEN}"})],
    )
    assert backend.find(KEY) is None
    backend.close()


def test_the_commented_example_block_is_a_valid_zendesk_section() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    block = re.search(r"^  # zendesk:.*?\n((?:  #  .*\n)+)", text, re.M)
    assert block is not None
    section = yaml.safe_load("\n".join(line[5:] for line in block.group(1).splitlines()))
    settings = ZendeskSettings.model_validate(section)
    assert settings.priorities.medium == "normal" and settings.custom_fields == {"serial": 360001234567}


# --- has_attachment ------------------------------------------------------------------------

SPLIT = ZendeskSettings.model_validate(
    SETTINGS.model_dump() | {"max_attachment_bytes": 1024, "max_total_attachment_bytes": 1_000_000}
)
COMMENTS = f"{BASE}/api/v2/tickets/35436/comments"


def _with_files(cid: int, *files: tuple[str, int]) -> dict[str, object]:
    comment = _comment(cid, "Attached", "2026-01-05T09:00:00Z")
    comment["attachments"] = [
        {
            "id": 498483 + n,
            "file_name": name,
            "content_url": f"{BASE}/attachments/token/tyBq1ms40dFaHefSIigxZpwGg/?name={name}",
            "content_type": "application/octet-stream",
            "size": size,
            "inline": False,
            "thumbnails": [],
        }
        for n, (name, size) in enumerate(files)
    ]
    return comment


def _mock_comments(rsps: responses.RequestsMock, *comments: dict[str, object]) -> None:
    rsps.get(
        COMMENTS,
        json={"comments": list(comments), "meta": {"has_more": False}, "links": {"next": None}},
        match=[matchers.query_param_matcher({"page[size]": "100"})],
    )


def test_has_attachment_looks_through_every_comment_page(
    zendesk: ZendeskBackend, rsps: responses.RequestsMock
) -> None:
    next_url = f"{COMMENTS}.json?page%5Bafter%5D=xxx&page%5Bsize%5D=100"
    rsps.get(
        COMMENTS,
        json={
            "comments": [_with_files(1, ("photo.png", 77))],
            "meta": {"has_more": True, "after_cursor": "xxx"},
            "links": {"next": next_url, "prev": None},
        },
        match=[matchers.query_param_matcher({"page[size]": "100"})],
    )
    rsps.get(
        next_url,
        json={
            "comments": [_with_files(2, ("device.log", 2500))],
            "meta": {"has_more": False},
            "links": {"next": None, "prev": None},
        },
    )
    assert zendesk.has_attachment(REF, "device.log", "ab" * 32, 2500) is True


def test_has_attachment_is_false_for_another_name_or_size(
    zendesk: ZendeskBackend, rsps: responses.RequestsMock
) -> None:
    no_files = _comment(2, "no files", "2026-01-05T09:01:00Z")
    _mock_comments(rsps, _with_files(1, ("device.log", 2500)), no_files)
    assert zendesk.has_attachment(REF, "device.log", "", 2499) is False
    _mock_comments(rsps, _with_files(1, ("device.log", 2500)))
    assert zendesk.has_attachment(REF, "system.log", "", 2500) is False


def test_has_attachment_finds_a_split_file_by_its_parts(tmp_path: Path, rsps: responses.RequestsMock) -> None:
    backend = ZendeskBackend(SPLIT, TOKEN, journal_path=tmp_path / "j.sqlite", clock=FakeClock())
    parts = [("capture.pcap.001", 1024), ("capture.pcap.002", 1024), ("capture.pcap.003", 452)]
    _mock_comments(rsps, _with_files(1, *parts))
    assert backend.has_attachment(REF, "capture.pcap", "", 2500) is True
    _mock_comments(rsps, _with_files(1, *parts))
    assert backend.has_attachment(REF, "capture.pcap.003", "", 452) is True
    _mock_comments(rsps, _with_files(1, *parts[1:]))
    assert backend.has_attachment(REF, "capture.pcap", "", 2500) is False
    backend.close()


def test_has_attachment_cannot_tell_when_the_ticket_listing_is_refused(
    zendesk: ZendeskBackend, rsps: responses.RequestsMock
) -> None:
    rsps.get(COMMENTS, status=404, json={"error": "RecordNotFound", "description": "Not found"})
    assert zendesk.has_attachment(REF, "device.log", "", 10) is None
