"""The Jira Service Management backend against recorded-shape answers of the JSM Cloud REST API.

Request and response bodies follow Atlassian's documentation (servicedeskapi Request,
Servicedesk; platform v3 Issues, Issue search); ``responses`` stands in for the site, so no
request leaves the process.
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
from config.loader import ConfigError
from config.schema import Ticketing
from config.ticketing import JiraSettings
from uploader.backends._rest import key_tag
from uploader.backends.jira import JiraBackend
from uploader.base import BackendAuthError, BackendError, BackendRejected
from uploader.models import Attachment, Priority, Ticket, TicketRef
from uploader.registry import build_backend

BASE = "https://hezo-test.atlassian.net"
TOKEN = "ATATT3xFfGF0-jira-token-9f2c"
EMAIL = "agent@example.com"
KEY = "Biuro Główne/a30-sala/offline"
TAG = key_tag(KEY)
REF = TicketRef("jira", "HZ-7", f"{BASE}/servicedesk/customer/portal/10/HZ-7")
SETTINGS = JiraSettings(
    url=BASE,
    email=EMAIL,
    token_env="HEZO_JIRA_TOKEN",
    service_desk_id="10",
    request_type_id="25",
    fields={"serial": "customfield_10050"},
)
EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "example.yaml"


def _ticket(priority: Priority = Priority.CRITICAL) -> Ticket:
    return Ticket(
        key=KEY,
        title='[P1] A30 "Sala Zarząd" offline — SN 803123',
        body="The device stopped answering at 09:00.\n",
        priority=priority,
        fields={"serial": "803123", "language": "en"},
    )


def _created(key: str = "HZ-7") -> dict[str, object]:
    return {
        "issueId": "10042",
        "issueKey": key,
        "requestTypeId": "25",
        "serviceDeskId": "10",
        "createdDate": {"iso8601": "2026-01-05T10:00:00+0100", "epochMillis": 1767603600000},
        "currentStatus": {"status": "Waiting for support", "statusCategory": "NEW"},
        "_links": {
            "jiraRest": f"{BASE}/rest/api/2/issue/10042",
            "web": f"{BASE}/servicedesk/customer/portal/10/{key}",
            "self": f"{BASE}/rest/servicedeskapi/request/10042",
        },
    }


def _comment(cid: str, body: str, millis: int) -> dict[str, object]:
    return {
        "id": cid,
        "body": body,
        "public": False,
        "author": {"accountId": "5b10ac8d82e05b22cc7d4ef5", "displayName": "Anna Serwis", "active": True},
        "created": {"iso8601": "2026-01-05T10:00:00+0100", "friendly": "Today", "epochMillis": millis},
        "_links": {"self": f"{BASE}/rest/servicedeskapi/request/10042/comment/{cid}"},
    }


def _transitions() -> dict[str, object]:
    done = {"id": 3, "key": "done", "name": "Done"}
    new = {"id": 2, "key": "new", "name": "To Do"}
    return {
        "expand": "transitions",
        "transitions": [
            {
                "id": "851",
                "name": "Respond to customer",
                "to": {"name": "Waiting for customer", "statusCategory": new},
            },
            {
                "id": "761",
                "name": "Resolve this issue",
                "hasScreen": True,
                "to": {"name": "Resolved", "statusCategory": done},
                "fields": {"resolution": {"required": True, "name": "Resolution", "operations": ["set"]}},
            },
            {
                "id": "901",
                "name": "Reopen",
                "hasScreen": False,
                "to": {"name": "In progress", "statusCategory": new},
                "fields": {},
            },
        ],
    }


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def jira(tmp_path: Path) -> Iterator[JiraBackend]:
    backend = JiraBackend(
        SETTINGS, TOKEN, journal_path=tmp_path / "jira" / "journal.sqlite", clock=FakeClock()
    )
    yield backend
    backend.close()


def _body(call: responses.Call) -> dict[str, object]:
    raw = call.request.body
    return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))


def _log(tmp_path: Path, text: str = "line 1\nline 2\n") -> Attachment:
    path = tmp_path / "blackbox.log"
    path.write_text(text, encoding="utf-8")
    return Attachment("blackbox.log", path, "text/plain")


def _open_mocks(rsps: responses.RequestsMock) -> None:
    rsps.post(f"{BASE}/rest/servicedeskapi/request", json=_created(), status=201)
    rsps.put(f"{BASE}/rest/api/3/issue/HZ-7", status=204)


# --- open ----------------------------------------------------------------------------------


def test_open_creates_the_request_labels_it_and_attaches_through_a_temporary_file(
    jira: JiraBackend, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    _open_mocks(rsps)
    temp = rsps.post(
        f"{BASE}/rest/servicedeskapi/servicedesk/10/attachTemporaryFile",
        json={
            "temporaryAttachments": [
                {"temporaryAttachmentId": "temp8186986707194209", "fileName": "blackbox.log"}
            ]
        },
        status=201,
        match=[matchers.header_matcher({"X-Atlassian-Token": "no-check"})],
    )
    attach = rsps.post(
        f"{BASE}/rest/servicedeskapi/request/HZ-7/attachment", json={"attachments": {}}, status=201
    )

    ref = jira.open(_ticket(), [_log(tmp_path, "first line\nsecond line\n")])

    assert ref == REF
    create = rsps.calls[0]
    expected_auth = "Basic " + base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode()
    assert create.request.headers["Authorization"] == expected_auth
    assert _body(create) == {
        "serviceDeskId": "10",
        "requestTypeId": "25",
        "requestFieldValues": {
            "summary": '[P1] A30 "Sala Zarząd" offline — SN 803123',
            "description": "The device stopped answering at 09:00.\n",
            "priority": {"name": "Highest"},
            "customfield_10050": "803123",
        },
    }
    assert _body(rsps.calls[1]) == {"update": {"labels": [{"add": TAG}, {"add": "hezo"}]}, "fields": {}}
    upload = temp.calls[0].request
    assert upload.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert b'name="file"; filename="blackbox.log"' in upload.body
    assert b"first line\nsecond line\n" in upload.body
    assert _body(attach.calls[0]) == {"temporaryAttachmentIds": ["temp8186986707194209"], "public": False}


def test_open_sets_the_priority_by_edit_when_it_is_not_a_request_type_field(
    tmp_path: Path, rsps: responses.RequestsMock
) -> None:
    settings = SETTINGS.model_copy(update={"priority_on_create": False})
    backend = JiraBackend(settings, TOKEN, journal_path=tmp_path / "j.sqlite")
    _open_mocks(rsps)
    backend.open(_ticket(Priority.MEDIUM))
    assert "priority" not in _body(rsps.calls[0])["requestFieldValues"]
    assert _body(rsps.calls[1])["fields"] == {"priority": {"name": "Medium"}}
    backend.close()


def test_a_crash_between_create_and_attach_finishes_the_same_request_on_retry(
    jira: JiraBackend, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    _open_mocks(rsps)
    rsps.post(f"{BASE}/rest/servicedeskapi/servicedesk/10/attachTemporaryFile", status=503, body="busy")
    log = _log(tmp_path)
    with pytest.raises(BackendError) as failed:
        jira.open(_ticket(), [log])
    assert failed.value.retryable
    assert jira.find(KEY) is None  # not finished: the retried open must complete it, not skip it

    rsps.reset()
    rsps.put(f"{BASE}/rest/api/3/issue/HZ-7", status=204)
    rsps.post(
        f"{BASE}/rest/servicedeskapi/servicedesk/10/attachTemporaryFile",
        json={"temporaryAttachments": [{"temporaryAttachmentId": "temp1", "fileName": "blackbox.log"}]},
    )
    rsps.post(f"{BASE}/rest/servicedeskapi/request/HZ-7/attachment", status=201, json={})
    assert jira.open(_ticket(), [log]).id == "HZ-7"
    assert not any(c.request.url == f"{BASE}/rest/servicedeskapi/request" for c in rsps.calls)
    assert jira.find(KEY) == REF  # done: found locally, no search needed


# --- find ----------------------------------------------------------------------------------


def test_find_searches_the_label_with_jql(jira: JiraBackend, rsps: responses.RequestsMock) -> None:
    rsps.get(
        f"{BASE}/rest/api/3/search/jql",
        json={"issues": [{"id": "10042", "key": "HZ-7", "fields": {}}], "isLast": True},
        match=[
            matchers.query_param_matcher(
                {"jql": f'labels = "{TAG}" ORDER BY created ASC', "fields": "key", "maxResults": "1"}
            )
        ],
    )
    assert jira.find(KEY) == TicketRef("jira", "HZ-7", f"{BASE}/browse/HZ-7")


def test_find_returns_none_when_no_issue_carries_the_label(
    jira: JiraBackend, rsps: responses.RequestsMock
) -> None:
    rsps.get(f"{BASE}/rest/api/3/search/jql", json={"issues": [], "isLast": True})
    assert jira.find(KEY) is None


# --- updates -------------------------------------------------------------------------------


def test_comment_is_internal_by_default(jira: JiraBackend, rsps: responses.RequestsMock) -> None:
    rsps.post(f"{BASE}/rest/servicedeskapi/request/HZ-7/comment", json=_comment("1001", "x", 0), status=201)
    jira.comment(REF, "The device answers again.")
    assert _body(rsps.calls[0]) == {"body": "The device answers again.", "public": False}


def test_set_priority_edits_the_issue_then_explains(jira: JiraBackend, rsps: responses.RequestsMock) -> None:
    edit = rsps.put(f"{BASE}/rest/api/3/issue/HZ-7", status=204)
    note = rsps.post(
        f"{BASE}/rest/servicedeskapi/request/HZ-7/comment", json=_comment("1", "x", 0), status=201
    )
    jira.set_priority(REF, Priority.LOW, "Only a canary is down.")
    assert _body(edit.calls[0]) == {"fields": {"priority": {"name": "Low"}}}
    assert _body(note.calls[0])["body"] == "Only a canary is down."


def test_resolve_runs_the_named_transition_with_a_resolution(
    jira: JiraBackend, rsps: responses.RequestsMock
) -> None:
    rsps.get(
        f"{BASE}/rest/api/3/issue/HZ-7/transitions",
        json=_transitions(),
        match=[matchers.query_param_matcher({"expand": "transitions.fields"})],
    )
    move = rsps.post(f"{BASE}/rest/api/3/issue/HZ-7/transitions", status=204)
    rsps.post(f"{BASE}/rest/servicedeskapi/request/HZ-7/comment", json=_comment("2", "x", 0), status=201)
    jira.resolve(REF, "Recovered after 12 min.")
    assert _body(move.calls[0]) == {"transition": {"id": "761"}, "fields": {"resolution": {"name": "Done"}}}


def test_reopen_runs_the_reopen_transition_without_fields(
    jira: JiraBackend, rsps: responses.RequestsMock
) -> None:
    rsps.get(f"{BASE}/rest/api/3/issue/HZ-7/transitions", json=_transitions())
    move = rsps.post(f"{BASE}/rest/api/3/issue/HZ-7/transitions", status=204)
    rsps.post(f"{BASE}/rest/servicedeskapi/request/HZ-7/comment", json=_comment("3", "x", 0), status=201)
    jira.reopen(REF, "Down again.")
    assert _body(move.calls[0]) == {"transition": {"id": "901"}}


def test_resolve_without_a_matching_transition_names_the_setting(
    jira: JiraBackend, rsps: responses.RequestsMock
) -> None:
    rsps.get(
        f"{BASE}/rest/api/3/issue/HZ-7/transitions", json={"transitions": _transitions()["transitions"][:1]}
    )
    rsps.get(f"{BASE}/rest/api/3/issue/HZ-7", json={"fields": {"status": {"statusCategory": {"key": "new"}}}})
    with pytest.raises(BackendRejected, match=r"Respond to customer.*ticketing\.jira\.resolve_transitions"):
        jira.resolve(REF, "")


def test_resolve_of_an_already_resolved_issue_only_comments(
    jira: JiraBackend, rsps: responses.RequestsMock
) -> None:
    rsps.get(f"{BASE}/rest/api/3/issue/HZ-7/transitions", json={"transitions": []})
    rsps.get(
        f"{BASE}/rest/api/3/issue/HZ-7", json={"fields": {"status": {"statusCategory": {"key": "done"}}}}
    )
    note = rsps.post(
        f"{BASE}/rest/servicedeskapi/request/HZ-7/comment", json=_comment("4", "x", 0), status=201
    )
    jira.resolve(REF, "Recovered.")
    assert len(note.calls) == 1


def test_list_comments_pages_until_the_last_page(jira: JiraBackend, rsps: responses.RequestsMock) -> None:
    url = f"{BASE}/rest/servicedeskapi/request/HZ-7/comment"
    rsps.get(
        url,
        json={
            "size": 2,
            "start": 0,
            "limit": 50,
            "isLastPage": False,
            "values": [_comment("10", "/logs", 1767603600000), _comment("11", "ok", 1767603660000)],
        },
        match=[matchers.query_param_matcher({"start": "0", "limit": "50"})],
    )
    rsps.get(
        url,
        json={
            "size": 1,
            "start": 2,
            "limit": 50,
            "isLastPage": True,
            "values": [_comment("12", "/logs a30 5", 1767603720000)],
        },
        match=[matchers.query_param_matcher({"start": "2", "limit": "50"})],
    )
    comments = jira.list_comments(REF)
    assert [(c.id, c.body) for c in comments] == [("10", "/logs"), ("11", "ok"), ("12", "/logs a30 5")]
    assert comments[0].author == "Anna Serwis"
    assert comments[0].created_at == datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


# --- errors --------------------------------------------------------------------------------


def test_401_is_an_auth_error_without_the_token(jira: JiraBackend, rsps: responses.RequestsMock) -> None:
    rsps.post(
        f"{BASE}/rest/servicedeskapi/request/HZ-7/comment",
        status=401,
        json={
            "errorMessages": ["You are not authenticated. Authentication required to perform this operation."]
        },
    )
    with pytest.raises(BackendAuthError) as caught:
        jira.comment(REF, "x")
    assert not caught.value.retryable
    assert "not authenticated" in str(caught.value) and TOKEN not in str(caught.value)


def test_400_is_rejected_quoting_the_service_desk_error(
    jira: JiraBackend, rsps: responses.RequestsMock
) -> None:
    rsps.post(
        f"{BASE}/rest/servicedeskapi/request",
        status=400,
        json={
            "errorMessage": f"Field 'priority' cannot be set (token {TOKEN})",
            "i18nErrorMessage": {
                "i18nKey": "sd.request.create.error.field.not.settable",
                "parameters": ["priority"],
            },
        },
    )
    with pytest.raises(BackendRejected) as caught:
        jira.open(_ticket())
    message = str(caught.value)
    assert "HTTP 400" in message and "Field 'priority' cannot be set" in message
    assert TOKEN not in message and "***" in message
    assert jira.journal.get(KEY) is None  # the refused open left nothing behind


def test_429_carries_retry_after(jira: JiraBackend, rsps: responses.RequestsMock) -> None:
    rsps.get(
        f"{BASE}/rest/api/3/search/jql",
        status=429,
        headers={
            "Retry-After": "30",
            "X-RateLimit-Reset": "2026-01-05T09:00:30Z",
            "RateLimit-Reason": "jira-burst-based",
        },
        body="",
    )
    with pytest.raises(BackendError) as caught:
        jira.find(KEY)
    assert caught.value.retryable and caught.value.retry_after_s == 30.0
    assert not isinstance(caught.value, BackendRejected)


def test_429_retry_after_as_a_date_counts_from_the_injected_clock(
    jira: JiraBackend, rsps: responses.RequestsMock
) -> None:
    rsps.get(
        f"{BASE}/rest/api/3/search/jql", status=429, headers={"Retry-After": "Mon, 05 Jan 2026 09:01:15 GMT"}
    )
    with pytest.raises(BackendError) as caught:
        jira.find(KEY)
    assert caught.value.retry_after_s == 75.0


@pytest.mark.parametrize(
    "failure", [503, requests.ConnectTimeout("timed out"), requests.ConnectionError("refused")]
)
def test_503_timeouts_and_refusals_are_retryable(
    jira: JiraBackend, rsps: responses.RequestsMock, failure: int | Exception
) -> None:
    url = f"{BASE}/rest/servicedeskapi/request/HZ-7/comment"
    if isinstance(failure, int):
        rsps.post(url, status=failure, body="<html>Service Unavailable</html>")
    else:
        rsps.post(url, body=failure)
    with pytest.raises(BackendError) as caught:
        jira.comment(REF, "x")
    assert type(caught.value) is BackendError and caught.value.retryable
    assert caught.value.retry_after_s is None


# --- config --------------------------------------------------------------------------------


def test_the_commented_example_block_is_a_valid_jira_section() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    block = re.search(r"^  # jira:.*?\n((?:  #  .*\n)+)", text, re.M)
    assert block is not None
    section = yaml.safe_load("\n".join(line[5:] for line in block.group(1).splitlines()))
    settings = JiraSettings.model_validate(section)
    assert settings.service_desk_id == "10" and settings.priorities.critical == "Highest"


@pytest.mark.parametrize("name", ["jira", "zendesk", "servicenow", "freshdesk"])
def test_the_registry_builds_each_rest_backend_with_its_token_and_journal(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token.txt"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    monkeypatch.setenv("HEZO_TEST_TOKEN", TOKEN)
    sections = {
        "jira": {
            "url": BASE,
            "email": EMAIL,
            "token_env": "HEZO_TEST_TOKEN",
            "service_desk_id": "10",
            "request_type_id": "25",
        },
        "zendesk": {"url": "https://x.zendesk.com", "email": EMAIL, "token_file": str(token_file)},
        "servicenow": {"url": "https://x.service-now.com", "username": "u", "token_env": "HEZO_TEST_TOKEN"},
        "freshdesk": {
            "url": "https://x.freshdesk.com",
            "token_file": str(token_file),
            "requester_email": EMAIL,
        },
    }
    backend = build_backend(Ticketing.model_validate({"backend": name, name: sections[name]}), tmp_path)
    try:
        assert backend.name == name and (tmp_path / name / "journal.sqlite").is_file()
        assert backend.client.redact(f"<{TOKEN}>") == "<***>"  # the token was read (from env or file)
    finally:
        backend.close()


def test_an_unset_token_variable_is_a_config_error_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HEZO_JIRA_TOKEN", raising=False)
    with pytest.raises(ConfigError) as caught:
        build_backend(Ticketing(backend="jira", jira=SETTINGS), tmp_path)
    assert caught.value.lines == ["ticketing.jira.token_env: environment variable HEZO_JIRA_TOKEN is not set"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"url": "http://jira.example.com"}, "must use https://"),
        ({"url": "https://user@jira.example.com"}, "no ?query, #fragment or user@"),
        ({"token_file": "token.txt"}, "give only one of token_env or token_file"),
        ({"token_env": None}, "give token_env (the name of an environment variable) or token_file"),
        ({"email": None}, "give email (the Atlassian account of the API token)"),
    ],
)
def test_jira_settings_explain_what_to_fix(change: dict[str, object], message: str) -> None:
    data = SETTINGS.model_dump() | change
    with pytest.raises(ValueError) as caught:
        JiraSettings.model_validate(data)
    assert message in str(caught.value)


def test_plain_http_is_allowed_for_a_loopback_test_server() -> None:
    assert JiraSettings.model_validate(SETTINGS.model_dump() | {"url": "http://127.0.0.1:8080/"}).url == (
        "http://127.0.0.1:8080"
    )


# --- has_attachment ------------------------------------------------------------------------

SPLIT = JiraSettings.model_validate(
    SETTINGS.model_dump() | {"max_attachment_bytes": 1024, "max_total_attachment_bytes": 1_000_000}
)


def _issue_attachments(*files: tuple[str, int]) -> dict[str, object]:
    return {
        "id": "10002",
        "key": "HZ-7",
        "fields": {
            "attachment": [
                {
                    "id": str(10100 + n),
                    "filename": name,
                    "size": size,
                    "mimeType": "application/octet-stream",
                    "created": "2026-01-05T09:00:00.000+0000",
                    "content": f"{BASE}/rest/api/3/attachment/content/{10100 + n}",
                    "author": {"accountId": "5b10ac8d82e05b22cc7d4ef5", "displayName": "hezo-agent"},
                }
                for n, (name, size) in enumerate(files)
            ]
        },
    }


def _mock_issue(rsps: responses.RequestsMock, *files: tuple[str, int]) -> None:
    rsps.get(
        f"{BASE}/rest/api/3/issue/HZ-7",
        json=_issue_attachments(*files),
        match=[matchers.query_param_matcher({"fields": "attachment"})],
    )


def test_has_attachment_matches_the_issue_files_by_name_and_size(
    jira: JiraBackend, rsps: responses.RequestsMock
) -> None:
    _mock_issue(rsps, ("device.log", 2500), ("other.pcap", 10))
    assert jira.has_attachment(REF, "device.log", "ab" * 32, 2500) is True
    _mock_issue(rsps, ("device.log", 2500))
    assert jira.has_attachment(REF, "device.log", "ab" * 32, 2501) is False
    _mock_issue(rsps)
    assert jira.has_attachment(REF, "device.log", "ab" * 32, 2500) is False


def test_has_attachment_finds_a_split_file_by_its_parts(tmp_path: Path, rsps: responses.RequestsMock) -> None:
    backend = JiraBackend(SPLIT, TOKEN, journal_path=tmp_path / "j.sqlite", clock=FakeClock())
    parts = [("capture.pcap.001", 1024), ("capture.pcap.002", 1024), ("capture.pcap.003", 452)]
    _mock_issue(rsps, *parts)
    assert backend.has_attachment(REF, "capture.pcap", "", 2500) is True
    _mock_issue(rsps, *parts)
    assert backend.has_attachment(REF, "capture.pcap.002", "", 1024) is True
    _mock_issue(rsps, *parts[:2])
    assert backend.has_attachment(REF, "capture.pcap", "", 2500) is False
    backend.close()


def test_has_attachment_cannot_tell_on_a_refused_or_odd_listing_and_raises_when_down(
    jira: JiraBackend, rsps: responses.RequestsMock
) -> None:
    url = f"{BASE}/rest/api/3/issue/HZ-7"
    rsps.get(url, status=404, json={"errorMessages": ["Issue does not exist"], "errors": {}})
    assert jira.has_attachment(REF, "device.log", "", 10) is None
    rsps.get(url, json={"id": "10002", "key": "HZ-7"})
    assert jira.has_attachment(REF, "device.log", "", 10) is None
    rsps.get(url, status=503, body="Service Unavailable")
    with pytest.raises(BackendError) as err:
        jira.has_attachment(REF, "device.log", "", 10)
    assert err.value.retryable
    rsps.get(url, status=401, json={"errorMessages": ["unauthorized"]})
    with pytest.raises(BackendAuthError):
        jira.has_attachment(REF, "device.log", "", 10)
    assert jira.has_attachment(REF, "huge.log", "", jira.limits.max_total_attachment_bytes + 1) is None
