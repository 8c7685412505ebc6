"""The ServiceNow backend against answers shaped like the documented Table and Attachment APIs.

Every body is wrapped in ``result``; errors are ``{"error": {"message", "detail"}, "status":
"failure"}``; lists page with ``sysparm_limit``/``sysparm_offset`` and a ``Link`` header.
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
from config.ticketing import ServiceNowSettings
from uploader.backends._rest import key_tag
from uploader.backends.servicenow import ServiceNowBackend
from uploader.base import BackendAuthError, BackendError, BackendRejected
from uploader.models import Attachment, Priority, Ticket, TicketRef

BASE = "https://hezo-test.service-now.com"
TOKEN = "sn-Pa55w0rd-integration-77"
KEY = "Biuro Główne/a30-sala/offline"
TAG = key_tag(KEY)
SYS_ID = "9d385017c611228701d22104cc95c371"
REF = TicketRef("servicenow", SYS_ID, f"{BASE}/nav_to.do?uri=incident.do?sys_id={SYS_ID}")
SETTINGS = ServiceNowSettings(
    url=BASE,
    username="hezo.integration",
    token_env="HEZO_SNOW_PASSWORD",
    category="hardware",
    fields={"serial": "u_serial"},
    max_attachment_bytes=1024,
    max_total_attachment_bytes=1_000_000,
)
INCIDENT = f"{BASE}/api/now/table/incident"
JOURNAL = f"{BASE}/api/now/table/sys_journal_field"
EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "example.yaml"


def _ticket(priority: Priority = Priority.CRITICAL) -> Ticket:
    return Ticket(
        key=KEY,
        title='[P1] A30 "Sala Zarząd" offline',
        body="The device stopped answering at 09:00.\n",
        priority=priority,
        fields={"serial": "803123", "language": "en"},
    )


def _incident() -> dict[str, object]:
    return {
        "result": {
            "sys_id": SYS_ID,
            "number": "INC0010002",
            "state": "1",
            "impact": "1",
            "urgency": "1",
            "priority": "1",
            "correlation_id": TAG,
            "sys_created_on": "2026-01-05 09:00:00",
        }
    }


def _attachment(name: str) -> dict[str, object]:
    return {
        "result": {
            "sys_id": "a8e3b1f0db1f1010c1d6f3d5ca961912",
            "file_name": name,
            "table_name": "incident",
            "table_sys_id": SYS_ID,
            "content_type": "application/octet-stream",
            "size_bytes": "1024",
        }
    }


def _entry(sys_id: str, element: str, value: str, when: str) -> dict[str, str]:
    return {
        "sys_id": sys_id,
        "element": element,
        "value": value,
        "sys_created_by": "anna.serwis",
        "sys_created_on": when,
    }


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def snow(tmp_path: Path) -> Iterator[ServiceNowBackend]:
    backend = ServiceNowBackend(SETTINGS, TOKEN, journal_path=tmp_path / "journal.sqlite", clock=FakeClock())
    yield backend
    backend.close()


def _body(call: responses.Call) -> dict[str, object]:
    raw = call.request.body
    return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))


# --- open ----------------------------------------------------------------------------------


def test_open_creates_the_incident_with_impact_urgency_and_correlation_id_then_attaches(
    snow: ServiceNowBackend, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    create = rsps.post(
        INCIDENT,
        json=_incident(),
        status=201,
        match=[matchers.query_param_matcher({"sysparm_exclude_reference_link": "true"})],
    )
    upload = rsps.post(
        f"{BASE}/api/now/attachment/file",
        json=_attachment("blackbox.log"),
        status=201,
        match=[
            matchers.query_param_matcher(
                {"table_name": "incident", "table_sys_id": SYS_ID, "file_name": "blackbox.log"}
            )
        ],
    )
    log = tmp_path / "blackbox.log"
    log.write_text("line 1\nline 2\n", encoding="utf-8")

    ref = snow.open(_ticket(), [Attachment("blackbox.log", log, "text/plain")])

    assert ref == REF
    request = create.calls[0].request
    assert (
        request.headers["Authorization"]
        == "Basic " + base64.b64encode(f"hezo.integration:{TOKEN}".encode()).decode()
    )
    assert (
        request.headers["Content-Type"] == "application/json"
        and request.headers["Accept"] == "application/json"
    )
    assert _body(create.calls[0]) == {
        "short_description": '[P1] A30 "Sala Zarząd" offline',
        "description": "The device stopped answering at 09:00.\n",
        "correlation_id": TAG,
        "correlation_display": "hezo-agent",
        "impact": "1",
        "urgency": "1",
        "category": "hardware",
        "u_serial": "803123",
    }
    sent = upload.calls[0].request
    assert sent.body == b"line 1\nline 2\n" and sent.headers["Content-Type"] == "text/plain"


def test_a_split_file_goes_up_part_by_part_and_a_crash_resumes_at_the_missing_part(
    snow: ServiceNowBackend, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(bytes(range(256)) * 8)  # 2048 bytes: two parts of 1024 at this limit
    att = Attachment("bundle.tar.gz", bundle, "application/gzip")
    create = rsps.post(INCIDENT, json=_incident(), status=201)
    rsps.post(
        f"{BASE}/api/now/attachment/file",
        json=_attachment("bundle.tar.gz.001"),
        status=201,
        match=[matchers.query_param_matcher({"file_name": "bundle.tar.gz.001"}, strict_match=False)],
    )
    rsps.post(
        f"{BASE}/api/now/attachment/file",
        status=503,
        json={
            "error": {"message": "Transaction cancelled: maximum execution time exceeded"},
            "status": "failure",
        },
        match=[matchers.query_param_matcher({"file_name": "bundle.tar.gz.002"}, strict_match=False)],
    )
    with pytest.raises(BackendError):
        snow.open(_ticket(), [att])
    description = str(_body(create.calls[0])["description"])
    assert "bundle.tar.gz.001" in description and "split into 2 parts" in description
    assert snow.find(KEY) is None

    rsps.reset()
    second = rsps.post(f"{BASE}/api/now/attachment/file", json=_attachment("bundle.tar.gz.002"), status=201)
    assert snow.open(_ticket(), [att]) == REF
    assert len(second.calls) == 1 and "file_name=bundle.tar.gz.002" in str(second.calls[0].request.url)
    assert second.calls[0].request.body == bundle.read_bytes()[1024:]
    assert snow.find(KEY) == REF


# --- find ----------------------------------------------------------------------------------


def test_find_queries_correlation_id(snow: ServiceNowBackend, rsps: responses.RequestsMock) -> None:
    rsps.get(
        INCIDENT,
        json={"result": [{"sys_id": SYS_ID, "number": "INC0010002"}]},
        match=[
            matchers.query_param_matcher(
                {
                    "sysparm_query": f"correlation_id={TAG}^ORDERBYsys_created_on",
                    "sysparm_fields": "sys_id,number",
                    "sysparm_limit": "1",
                }
            )
        ],
    )
    assert snow.find(KEY) == REF


def test_find_returns_none_for_an_empty_result(snow: ServiceNowBackend, rsps: responses.RequestsMock) -> None:
    rsps.get(INCIDENT, json={"result": []})
    assert snow.find(KEY) is None


# --- updates -------------------------------------------------------------------------------


def test_comment_is_a_work_note(snow: ServiceNowBackend, rsps: responses.RequestsMock) -> None:
    patch = rsps.patch(f"{INCIDENT}/{SYS_ID}", json=_incident())
    snow.comment(REF, "The device answers again.")
    assert _body(patch.calls[0]) == {"work_notes": "The device answers again."}


def test_public_comments_go_to_the_customer_visible_field(
    tmp_path: Path, rsps: responses.RequestsMock
) -> None:
    backend = ServiceNowBackend(
        SETTINGS.model_copy(update={"public_comments": True}), TOKEN, journal_path=tmp_path / "j.sqlite"
    )
    patch = rsps.patch(f"{INCIDENT}/{SYS_ID}", json=_incident())
    backend.comment(REF, "Hello")
    assert _body(patch.calls[0]) == {"comments": "Hello"}
    backend.close()


def test_set_priority_sets_impact_and_urgency(snow: ServiceNowBackend, rsps: responses.RequestsMock) -> None:
    patch = rsps.patch(f"{INCIDENT}/{SYS_ID}", json=_incident())
    snow.set_priority(REF, Priority.LOW, "Only a canary is down.")
    snow.set_priority(REF, Priority.MEDIUM, "")
    assert [_body(c) for c in patch.calls] == [
        {"impact": "3", "urgency": "3", "work_notes": "Only a canary is down."},
        {"impact": "2", "urgency": "2"},
    ]


def test_resolve_sets_state_6_with_close_code_and_reopen_sets_state_2(
    snow: ServiceNowBackend, rsps: responses.RequestsMock
) -> None:
    patch = rsps.patch(f"{INCIDENT}/{SYS_ID}", json=_incident())
    snow.resolve(REF, "Recovered after 12 min.")
    snow.reopen(REF, "Down again.")
    assert [_body(c) for c in patch.calls] == [
        {"state": "6", "close_code": "Solution provided", "close_notes": "Recovered after 12 min."},
        {"state": "2", "work_notes": "Down again."},
    ]


def test_list_comments_follows_the_link_header(snow: ServiceNowBackend, rsps: responses.RequestsMock) -> None:
    query = f"element_id={SYS_ID}^elementINcomments,work_notes^ORDERBYsys_created_on"
    next_url = f"{JOURNAL}?sysparm_query=element_id%3D{SYS_ID}&sysparm_limit=100&sysparm_offset=100"
    rsps.get(
        JOURNAL,
        json={
            "result": [
                _entry("j1", "work_notes", "/logs", "2026-01-05 09:05:00"),
                _entry("j2", "comments", "ok", "2026-01-05 09:06:00"),
            ]
        },
        headers={
            "Link": f'<{JOURNAL}?sysparm_offset=0>;rel="first",<{next_url}>;rel="next",'
            f'<{JOURNAL}?sysparm_offset=100>;rel="last"',
            "X-Total-Count": "101",
        },
        match=[
            matchers.query_param_matcher(
                {
                    "sysparm_query": query,
                    "sysparm_fields": "sys_id,element,value,sys_created_by,sys_created_on",
                    "sysparm_limit": "100",
                    "sysparm_offset": "0",
                }
            )
        ],
    )
    rsps.get(
        next_url,
        json={"result": [_entry("j3", "work_notes", "/logs a30 5", "2026-01-05 09:07:00")]},
        headers={"Link": f'<{JOURNAL}?sysparm_offset=0>;rel="first"', "X-Total-Count": "101"},
    )
    comments = snow.list_comments(REF)
    assert [(c.id, c.body, c.author) for c in comments] == [
        ("j1", "/logs", "anna.serwis"),
        ("j2", "ok", "anna.serwis"),
        ("j3", "/logs a30 5", "anna.serwis"),
    ]
    assert comments[0].created_at == datetime(2026, 1, 5, 9, 5, tzinfo=UTC)


# --- errors --------------------------------------------------------------------------------


def test_401_is_an_auth_error(snow: ServiceNowBackend, rsps: responses.RequestsMock) -> None:
    rsps.patch(
        f"{INCIDENT}/{SYS_ID}",
        status=401,
        json={
            "error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"},
            "status": "failure",
        },
    )
    with pytest.raises(BackendAuthError, match="User Not Authenticated") as caught:
        snow.comment(REF, "x")
    assert TOKEN not in str(caught.value)


def test_400_is_rejected_quoting_the_error_message(
    snow: ServiceNowBackend, rsps: responses.RequestsMock
) -> None:
    rsps.post(
        INCIDENT,
        status=400,
        json={
            "error": {"message": "Invalid value for field 'u_serial'", "detail": "Field not found"},
            "status": "failure",
        },
    )
    with pytest.raises(BackendRejected, match="Invalid value for field 'u_serial'"):
        snow.open(_ticket())


def test_apikey_auth_uses_the_x_sn_apikey_header(tmp_path: Path, rsps: responses.RequestsMock) -> None:
    settings = ServiceNowSettings(url=BASE, auth="apikey", token_env="HEZO_SNOW_KEY")
    backend = ServiceNowBackend(settings, TOKEN, journal_path=tmp_path / "j.sqlite")
    call = rsps.get(INCIDENT, json={"result": []}, match=[matchers.header_matcher({"x-sn-apikey": TOKEN})])
    assert backend.find(KEY) is None
    assert "Authorization" not in call.calls[0].request.headers
    backend.close()


def test_429_carries_retry_after(snow: ServiceNowBackend, rsps: responses.RequestsMock) -> None:
    rsps.patch(
        f"{INCIDENT}/{SYS_ID}",
        status=429,
        headers={
            "Retry-After": "3600",
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Reset": "1767607200",
            "X-RateLimit-Rule": "hezo-integration",
        },
        json={"error": {"message": "Rate limit exceeded", "detail": None}, "status": "failure"},
    )
    with pytest.raises(BackendError) as caught:
        snow.resolve(REF, "x")
    assert caught.value.retryable and caught.value.retry_after_s == 3600.0


def test_503_is_retryable(snow: ServiceNowBackend, rsps: responses.RequestsMock) -> None:
    rsps.get(
        INCIDENT, status=503, body="<html><body>Instance hibernating</body></html>", content_type="text/html"
    )
    with pytest.raises(BackendError) as caught:
        snow.find(KEY)
    assert type(caught.value) is BackendError and "Instance hibernating" in str(caught.value)


def test_the_commented_example_block_is_a_valid_servicenow_section() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    block = re.search(r"^  # servicenow:.*?\n((?:  #  .*\n)+)", text, re.M)
    assert block is not None
    section = yaml.safe_load("\n".join(line[5:] for line in block.group(1).splitlines()))
    settings = ServiceNowSettings.model_validate(section)
    assert settings.priorities.critical.impact == 1 and settings.fields == {"serial": "u_serial"}


# --- has_attachment ------------------------------------------------------------------------

ATTACHMENTS = f"{BASE}/api/now/attachment"


def _attachment_rows(*files: tuple[str, int, str]) -> dict[str, object]:
    return {
        "result": [
            {
                "sys_id": f"a8e3b1f0db1f1010c1d6f3d5ca9619{n:02d}",
                "file_name": name,
                "table_name": "incident",
                "table_sys_id": SYS_ID,
                "content_type": "application/octet-stream",
                "size_bytes": str(size),
                "size_compressed": str(size // 2),
                "hash": digest,
                "download_link": f"{ATTACHMENTS}/a8e3b1f0db1f1010c1d6f3d5ca9619{n:02d}/file",
                "sys_created_on": "2026-01-05 09:00:00",
            }
            for n, (name, size, digest) in enumerate(files)
        ]
    }


def _mock_rows(rsps: responses.RequestsMock, *files: tuple[str, int, str]) -> None:
    rsps.get(
        ATTACHMENTS,
        json=_attachment_rows(*files),
        match=[
            matchers.query_param_matcher(
                {"sysparm_query": f"table_sys_id={SYS_ID}", "sysparm_limit": "100", "sysparm_offset": "0"}
            )
        ],
    )


def test_has_attachment_matches_name_and_size_and_a_sha256_hash_when_given(
    snow: ServiceNowBackend, rsps: responses.RequestsMock
) -> None:
    md5 = "9e107d9d372bb6826bd81d3542a419d6"
    _mock_rows(rsps, ("device.log", 900, md5))
    assert snow.has_attachment(REF, "device.log", "ab" * 32, 900) is True  # an MD5 is not compared
    _mock_rows(rsps, ("device.log", 900, "ab" * 32))
    assert snow.has_attachment(REF, "device.log", "AB" * 32, 900) is True
    _mock_rows(rsps, ("device.log", 900, "cd" * 32))
    assert snow.has_attachment(REF, "device.log", "ab" * 32, 900) is False
    _mock_rows(rsps, ("device.log", 900, md5))
    assert snow.has_attachment(REF, "device.log", "", 901) is False
    rsps.get(ATTACHMENTS, json={"result": []})
    assert snow.has_attachment(REF, "device.log", "", 900) is False


def test_has_attachment_finds_a_split_file_by_its_parts(
    snow: ServiceNowBackend, rsps: responses.RequestsMock
) -> None:
    parts = [("capture.pcap.001", 1024, ""), ("capture.pcap.002", 1024, ""), ("capture.pcap.003", 452, "")]
    _mock_rows(rsps, *parts)
    assert snow.has_attachment(REF, "capture.pcap", "ab" * 32, 2500) is True
    _mock_rows(rsps, *parts)
    assert snow.has_attachment(REF, "capture.pcap.001", "", 1024) is True
    _mock_rows(rsps, parts[0], parts[2])  # a crash between the one-file-per-request uploads
    assert snow.has_attachment(REF, "capture.pcap", "ab" * 32, 2500) is False


def test_has_attachment_follows_the_link_header(
    snow: ServiceNowBackend, rsps: responses.RequestsMock
) -> None:
    next_url = f"{ATTACHMENTS}?sysparm_query=table_sys_id%3D{SYS_ID}&sysparm_limit=100&sysparm_offset=100"
    rsps.get(
        ATTACHMENTS,
        json=_attachment_rows(("photo.png", 77, "")),
        headers={"Link": f'<{ATTACHMENTS}?sysparm_offset=0>;rel="first",<{next_url}>;rel="next"'},
        match=[
            matchers.query_param_matcher({"sysparm_query": f"table_sys_id={SYS_ID}"}, strict_match=False)
        ],
    )
    rsps.get(next_url, json=_attachment_rows(("device.log", 900, "")))
    assert snow.has_attachment(REF, "device.log", "", 900) is True


def test_has_attachment_cannot_tell_when_the_listing_is_refused(
    snow: ServiceNowBackend, rsps: responses.RequestsMock
) -> None:
    rsps.get(
        ATTACHMENTS,
        status=400,
        json={"error": {"message": "Invalid query", "detail": None}, "status": "failure"},
    )
    assert snow.has_attachment(REF, "device.log", "", 900) is None
