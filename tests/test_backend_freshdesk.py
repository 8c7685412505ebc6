"""The Freshdesk backend against answers shaped like the documented Freshdesk v2 API.

Shapes follow developers.freshdesk.com/api (Tickets, Conversations, Filter/search, Rate limit,
Errors); ``responses`` stands in for the helpdesk.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import responses
import yaml
from responses import matchers

from agent.clock import FakeClock
from config.ticketing import FreshdeskSettings
from uploader.backends._rest import key_tag
from uploader.backends.freshdesk import FreshdeskBackend
from uploader.base import BackendAuthError, BackendError, BackendRejected
from uploader.models import Attachment, Priority, Ticket, TicketRef

BASE = "https://hezo-test.freshdesk.com"
TOKEN = "fd-ApiKey-8cE2rT71"
KEY = "Biuro Główne/a30-sala/offline"
TAG = key_tag(KEY)
REF = TicketRef("freshdesk", "20", f"{BASE}/a/tickets/20")
SETTINGS = FreshdeskSettings(
    url=BASE,
    token_env="HEZO_FRESHDESK_API_KEY",
    requester_email="it@example.pl",
    custom_fields={"serial": "cf_serial"},
)
TICKETS = f"{BASE}/api/v2/tickets"
EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "example.yaml"


def _ticket(priority: Priority = Priority.CRITICAL, body: str = "Stopped at 09:00.\nNo ping.\n") -> Ticket:
    return Ticket(
        key=KEY,
        title='[P1] A30 "Sala Zarząd" offline',
        body=body,
        priority=priority,
        fields={"serial": "803123", "language": "en"},
    )


def _ticket_json(ticket_id: int = 20, status: int = 2) -> dict[str, object]:
    return {
        "id": ticket_id,
        "subject": '[P1] A30 "Sala Zarząd" offline',
        "priority": 4,
        "status": status,
        "source": 2,
        "tags": ["hezo", TAG],
        "requester_id": 1000,
        "custom_fields": {"cf_serial": "803123"},
        "attachments": [],
        "created_at": "2026-01-05T09:00:00Z",
    }


def _conversation(cid: int, text: str, when: str) -> dict[str, object]:
    return {
        "id": cid,
        "body": f"<div>{text}</div>",
        "body_text": text,
        "incoming": False,
        "private": True,
        "user_id": 1001,
        "ticket_id": 20,
        "attachments": [],
        "created_at": when,
        "updated_at": when,
    }


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def freshdesk(tmp_path: Path) -> Iterator[FreshdeskBackend]:
    backend = FreshdeskBackend(SETTINGS, TOKEN, journal_path=tmp_path / "journal.sqlite", clock=FakeClock())
    yield backend
    backend.close()


def _body(call: responses.Call) -> dict[str, object]:
    raw = call.request.body
    return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))


def _form_value(body: bytes, name: str) -> list[str]:
    """Return the values of the multipart form fields called ``name``."""
    pattern = rb'name="' + re.escape(name.encode()) + rb'"\r\n\r\n(.*?)\r\n--'
    return [m.decode() for m in re.findall(pattern, body, re.S)]


# --- open ----------------------------------------------------------------------------------


def test_open_with_an_attachment_posts_one_multipart_ticket(
    freshdesk: FreshdeskBackend, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    create = rsps.post(TICKETS, json=_ticket_json(), status=201)
    log = tmp_path / "blackbox.log"
    log.write_text("line 1\nline 2\n", encoding="utf-8")

    ref = freshdesk.open(_ticket(), [Attachment("blackbox.log", log, "text/plain")])

    assert ref == REF
    request = create.calls[0].request
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(f"{TOKEN}:X".encode()).decode()
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    body = request.body
    assert isinstance(body, bytes)
    assert _form_value(body, "priority") == ["4"] and _form_value(body, "status") == ["2"]
    assert _form_value(body, "email") == ["it@example.pl"] and _form_value(body, "source") == ["2"]
    assert _form_value(body, "tags[]") == ["hezo", TAG]
    assert _form_value(body, "custom_fields[cf_serial]") == ["803123"]
    assert _form_value(body, "description") == ["Stopped at 09:00.<br>\nNo ping.<br>\n"]
    assert (
        b'name="attachments[]"; filename="blackbox.log"\r\nContent-Type: text/plain\r\n\r\nline 1\nline 2\n'
        in body
    )


def test_open_without_attachments_posts_json(
    freshdesk: FreshdeskBackend, rsps: responses.RequestsMock
) -> None:
    create = rsps.post(TICKETS, json=_ticket_json(), status=201)
    freshdesk.open(_ticket(Priority.LOW, body="a < b & c\n"))
    assert _body(create.calls[0]) == {
        "subject": '[P1] A30 "Sala Zarząd" offline',
        "description": "a &lt; b &amp; c<br>\n",
        "email": "it@example.pl",
        "priority": 1,
        "status": 2,
        "source": 2,
        "tags": ["hezo", TAG],
        "custom_fields": {"cf_serial": "803123"},
    }


def test_a_just_opened_ticket_is_found_although_search_has_not_indexed_it(
    freshdesk: FreshdeskBackend, rsps: responses.RequestsMock
) -> None:
    rsps.post(TICKETS, json=_ticket_json(), status=201)
    freshdesk.open(_ticket())
    assert freshdesk.find(KEY) == REF  # no search request registered: the open journal answered


# --- find ----------------------------------------------------------------------------------


def test_find_searches_the_tag(freshdesk: FreshdeskBackend, rsps: responses.RequestsMock) -> None:
    rsps.get(
        f"{BASE}/api/v2/search/tickets",
        json={"results": [_ticket_json(31), _ticket_json(20)], "total": 2},
        match=[matchers.query_param_matcher({"query": f"\"tag:'{TAG}'\""})],
    )
    assert freshdesk.find(KEY) == REF


def test_find_returns_none_without_results(freshdesk: FreshdeskBackend, rsps: responses.RequestsMock) -> None:
    rsps.get(f"{BASE}/api/v2/search/tickets", json={"results": [], "total": 0})
    assert freshdesk.find(KEY) is None


# --- updates -------------------------------------------------------------------------------


def test_comment_is_a_private_html_note(freshdesk: FreshdeskBackend, rsps: responses.RequestsMock) -> None:
    note = rsps.post(f"{TICKETS}/20/notes", json=_conversation(5, "x", "2026-01-05T09:00:00Z"), status=201)
    freshdesk.comment(REF, "Answers again.\nDowntime 12 min.")
    assert _body(note.calls[0]) == {"body": "Answers again.<br>\nDowntime 12 min.", "private": True}


def test_set_priority_resolve_and_reopen_update_then_note(
    freshdesk: FreshdeskBackend, rsps: responses.RequestsMock
) -> None:
    update = rsps.put(f"{TICKETS}/20", json=_ticket_json())
    note = rsps.post(f"{TICKETS}/20/notes", json=_conversation(6, "x", "2026-01-05T09:00:00Z"), status=201)
    freshdesk.set_priority(REF, Priority.MEDIUM, "Downgraded.")
    freshdesk.resolve(REF, "Recovered.")
    freshdesk.reopen(REF, "Down again.")
    assert [_body(c) for c in update.calls] == [{"priority": 2}, {"status": 4}, {"status": 2}]
    assert [_body(c)["body"] for c in note.calls] == ["Downgraded.", "Recovered.", "Down again."]


def test_attach_sends_a_private_note_with_the_file(
    freshdesk: FreshdeskBackend, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    note = rsps.post(f"{TICKETS}/20/notes", json=_conversation(7, "x", "2026-01-05T09:00:00Z"), status=201)
    path = tmp_path / "bundle.tar.gz"
    path.write_bytes(b"\x1f\x8b binary")
    freshdesk.attach(REF, Attachment("bundle.tar.gz", path, "application/gzip"))
    body = note.calls[0].request.body
    assert isinstance(body, bytes)
    assert _form_value(body, "private") == ["true"] and _form_value(body, "body") == [
        "Attached: bundle.tar.gz"
    ]
    assert b'name="attachments[]"; filename="bundle.tar.gz"' in body and b"\x1f\x8b binary" in body


def test_list_comments_follows_the_link_header(
    freshdesk: FreshdeskBackend, rsps: responses.RequestsMock
) -> None:
    next_url = f"{TICKETS}/20/conversations?per_page=100&page=2"
    rsps.get(
        f"{TICKETS}/20/conversations",
        json=[
            _conversation(1, "/logs", "2026-01-05T09:05:00Z"),
            _conversation(2, "ok", "2026-01-05T09:06:00Z"),
        ],
        headers={"Link": f'<{next_url}>; rel="next"'},
        match=[matchers.query_param_matcher({"per_page": "100"})],
    )
    rsps.get(next_url, json=[_conversation(3, "/logs a30 5", "2026-01-05T09:07:00Z")])
    comments = freshdesk.list_comments(REF)
    assert [(c.id, c.body, c.author) for c in comments] == [
        ("1", "/logs", "1001"),
        ("2", "ok", "1001"),
        ("3", "/logs a30 5", "1001"),
    ]
    assert comments[2].created_at == datetime(2026, 1, 5, 9, 7, tzinfo=UTC)


# --- errors --------------------------------------------------------------------------------


def test_401_is_an_auth_error(freshdesk: FreshdeskBackend, rsps: responses.RequestsMock) -> None:
    rsps.post(
        f"{TICKETS}/20/notes",
        status=401,
        json={"code": "invalid_credentials", "message": "You have to be logged in to perform this action."},
    )
    with pytest.raises(BackendAuthError, match="invalid_credentials") as caught:
        freshdesk.comment(REF, "x")
    assert TOKEN not in str(caught.value)


def test_400_validation_failed_is_rejected_with_the_field_errors(
    freshdesk: FreshdeskBackend, rsps: responses.RequestsMock
) -> None:
    rsps.post(
        TICKETS,
        status=400,
        json={
            "description": "Validation failed",
            "errors": [
                {
                    "field": "email",
                    "message": "There is no contact matching the given email",
                    "code": "invalid_value",
                }
            ],
        },
    )
    with pytest.raises(
        BackendRejected, match=r"Validation failed.*There is no contact matching the given email"
    ):
        freshdesk.open(_ticket())


def test_429_carries_retry_after(freshdesk: FreshdeskBackend, rsps: responses.RequestsMock) -> None:
    rsps.put(
        f"{TICKETS}/20",
        status=429,
        headers={
            "Retry-After": "47",
            "X-RateLimit-Total": "200",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Used-CurrentRequest": "1",
        },
        json={"code": "too_many_requests", "message": "You have exceeded the limit of requests per minute"},
    )
    with pytest.raises(BackendError) as caught:
        freshdesk.resolve(REF, "x")
    assert caught.value.retryable and caught.value.retry_after_s == 47.0


def test_503_is_retryable(freshdesk: FreshdeskBackend, rsps: responses.RequestsMock) -> None:
    rsps.get(f"{BASE}/api/v2/search/tickets", status=503, body="upstream unavailable")
    with pytest.raises(BackendError) as caught:
        freshdesk.find(KEY)
    assert type(caught.value) is BackendError and caught.value.retryable


def test_a_2xx_that_is_not_json_is_retryable_not_a_crash(
    freshdesk: FreshdeskBackend, rsps: responses.RequestsMock
) -> None:
    rsps.post(TICKETS, status=201, body="<html>captive portal</html>", content_type="text/html")
    with pytest.raises(BackendError, match="not JSON") as caught:
        freshdesk.open(_ticket())
    assert caught.value.retryable


def test_the_commented_example_block_is_a_valid_freshdesk_section() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    block = re.search(r"^  # freshdesk:.*?\n((?:  #  .*\n)+)", text, re.M)
    assert block is not None
    section = yaml.safe_load("\n".join(line[5:] for line in block.group(1).splitlines()))
    settings = FreshdeskSettings.model_validate(section)
    assert settings.priorities.critical == 4 and settings.max_total_attachment_bytes == 20_000_000


# --- has_attachment ------------------------------------------------------------------------

SPLIT = FreshdeskSettings.model_validate(
    SETTINGS.model_dump() | {"max_attachment_bytes": 1024, "max_total_attachment_bytes": 1_000_000}
)


def _files(*files: tuple[str, int]) -> list[dict[str, object]]:
    return [
        {
            "id": 5000 + n,
            "name": name,
            "content_type": "application/octet-stream",
            "size": size,
            "attachment_url": f"https://s3.amazonaws.com/cdn.freshdesk.com/data/helpdesk/{5000 + n}",
            "created_at": "2026-01-05T09:00:00Z",
            "updated_at": "2026-01-05T09:00:00Z",
        }
        for n, (name, size) in enumerate(files)
    ]


def _mock_listing(
    rsps: responses.RequestsMock, on_ticket: list[tuple[str, int]], in_notes: list[tuple[str, int]]
) -> None:
    rsps.get(f"{TICKETS}/20", json=_ticket_json() | {"attachments": _files(*on_ticket)})
    note = _conversation(1, "Attached", "2026-01-05T09:05:00Z") | {"attachments": _files(*in_notes)}
    rsps.get(
        f"{TICKETS}/20/conversations",
        json=[note, _conversation(2, "ok", "2026-01-05T09:06:00Z")],
        match=[matchers.query_param_matcher({"per_page": "100"})],
    )


def test_has_attachment_looks_at_the_ticket_and_its_conversations(
    freshdesk: FreshdeskBackend, rsps: responses.RequestsMock
) -> None:
    _mock_listing(rsps, [("bundle.tar.gz", 3000)], [("device.log", 2500)])
    assert freshdesk.has_attachment(REF, "device.log", "ab" * 32, 2500) is True
    _mock_listing(rsps, [("bundle.tar.gz", 3000)], [("device.log", 2500)])
    assert freshdesk.has_attachment(REF, "bundle.tar.gz", "ab" * 32, 3000) is True
    _mock_listing(rsps, [("bundle.tar.gz", 3000)], [("device.log", 2500)])
    assert freshdesk.has_attachment(REF, "device.log", "", 2400) is False
    _mock_listing(rsps, [], [])
    assert freshdesk.has_attachment(REF, "device.log", "", 2500) is False


def test_has_attachment_finds_a_split_file_by_its_parts(tmp_path: Path, rsps: responses.RequestsMock) -> None:
    backend = FreshdeskBackend(SPLIT, TOKEN, journal_path=tmp_path / "j.sqlite", clock=FakeClock())
    parts = [("capture.pcap.001", 1024), ("capture.pcap.002", 1024), ("capture.pcap.003", 452)]
    _mock_listing(rsps, [], parts)
    assert backend.has_attachment(REF, "capture.pcap", "", 2500) is True
    _mock_listing(rsps, [], parts)
    assert backend.has_attachment(REF, "capture.pcap.002", "", 1024) is True
    _mock_listing(rsps, [], [*parts[:2], ("capture.pcap.003", 451)])
    assert backend.has_attachment(REF, "capture.pcap", "", 2500) is False
    backend.close()


def test_has_attachment_cannot_tell_on_a_missing_ticket_and_raises_on_a_server_error(
    freshdesk: FreshdeskBackend, rsps: responses.RequestsMock
) -> None:
    rsps.get(f"{TICKETS}/20", status=404, body="")
    assert freshdesk.has_attachment(REF, "device.log", "", 10) is None
    rsps.get(f"{TICKETS}/20", status=502, body="<html>Bad Gateway</html>")
    with pytest.raises(BackendError) as err:
        freshdesk.has_attachment(REF, "device.log", "", 10)
    assert err.value.retryable
