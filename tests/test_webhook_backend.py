"""The `webhook` backend against a real HTTP receiver on 127.0.0.1: signature, idempotency, schema."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from peers.smtp import free_port
from peers.webhook import Reply, Request, WebhookPeer
from pydantic import ValidationError

from agent.clock import FakeClock
from config.loader import ConfigError
from config.schema import Ticketing
from config.ticketing import WebhookSettings
from uploader.backends.webhook import WebhookBackend, parse_retry_after
from uploader.base import BackendAuthError, BackendError, BackendRejected
from uploader.models import Attachment, Priority, Ticket, TicketRef
from uploader.registry import build_backend
from uploader.sentlog import SentLog, hezo_id

SECRET = "whsec-Zażółć-7f3a9c"
KEY = "warszawa/a30-zarzad/offline"
EVENTS = [
    "ticket.opened", "ticket.commented", "ticket.attached", "ticket.priority_changed",
    "ticket.resolved", "ticket.reopened",
]  # fmt: skip


def make_ticket(key: str = KEY) -> Ticket:
    return Ticket(
        key=key,
        title='[krytyczny] A30 "Sala Zarząd" offline — SN 803001',
        body="Priorytet: krytyczny\nUrządzenie nie odpowiada — Łódź, ul. Żółta 5.\n",
        priority=Priority.CRITICAL,
        fields={"device": "a30-zarzad", "serial": "803001", "language": "pl", "failures": 3},
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def peer() -> Iterator[WebhookPeer]:
    with WebhookPeer() as p:
        yield p


def settings(url: str, **over: Any) -> WebhookSettings:
    return WebhookSettings.model_validate({"url": url, "secret_env": "HEZO_TEST_WEBHOOK_SECRET", **over})


def make_backend(
    url: str, tmp_path: Path, clock: FakeClock, log_name: str = "sent.sqlite", **over: Any
) -> WebhookBackend:
    return WebhookBackend(
        settings(url, **over), SECRET, SentLog(tmp_path / log_name, clock=clock), clock=clock
    )


@pytest.fixture
def hook(peer: WebhookPeer, tmp_path: Path, clock: FakeClock) -> Iterator[WebhookBackend]:
    b = make_backend(peer.url, tmp_path, clock)
    yield b
    b.close()


def verify(req: Request) -> None:
    """What docs/webhook.md tells a receiver to do, done here on every request."""
    expected = hmac.new(SECRET.encode(), req.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(req.header("X-Hezo-Signature") or "", f"sha256={expected}")
    t = req.header("X-Hezo-Timestamp")
    assert t is not None
    timed = hmac.new(SECRET.encode(), f"{t}.".encode() + req.body, hashlib.sha256).hexdigest()
    assert req.header("X-Hezo-Signature-Timed") == f"t={t},sha256={timed}"
    assert req.header("Content-Type") == "application/json; charset=utf-8"
    assert SECRET.encode() not in req.body and all(SECRET not in v for v in req.headers.values())


def idem(req: Request) -> str:
    value = req.header("Idempotency-Key") or ""
    assert value.startswith('"') and value.endswith('"'), "a structured-field string is quoted"
    return value[1:-1]


def files(tmp_path: Path) -> tuple[Attachment, Attachment]:
    log_file = tmp_path / "blackbox.log"
    log_file.write_text("".join(f"09:{i % 60:02d} linia {i} źdźbło\n" for i in range(400)), "utf-8")
    gz = tmp_path / "bundle.tar.gz"
    gz.write_bytes(os.urandom(30_000))
    return (
        Attachment(name="blackbox.log", path=log_file, content_type="text/plain"),
        Attachment(name="bundle.tar.gz", path=gz, content_type="application/gzip"),
    )


# --- the events --------------------------------------------------------------------------


def test_open_posts_signed_event_and_keeps_the_receivers_id(
    peer: WebhookPeer, hook: WebhookBackend, tmp_path: Path, clock: FakeClock
) -> None:
    log_att, gz_att = files(tmp_path)
    peer.replies.append(Reply.json(201, {"id": 4711, "url": "https://helpdesk.example.pl/t/4711"}))
    ref = hook.open(make_ticket(), [log_att, gz_att])
    assert ref == TicketRef("webhook", "4711", "https://helpdesk.example.pl/t/4711")

    [req] = peer.requests
    verify(req)
    assert req.path == "/hooks/hezo"
    assert req.header("X-Hezo-Timestamp") == str(int(clock.now().timestamp()))
    assert req.header("X-Hezo-Event") == "ticket.opened"
    assert (req.header("User-Agent") or "").startswith("hezo-agent/")
    event = req.json()
    short = hezo_id(KEY)
    assert idem(req) == event["event_id"] == f"{short.lower()}.open"
    assert event["schema"] == "hezo.ticket.v1" and event["event"] == "ticket.opened"
    ticket = event["ticket"]
    assert ticket == {
        "hezo_id": short, "key": KEY, "ref": None, "url": None,
        "title": '[krytyczny] A30 "Sala Zarząd" offline — SN 803001', "priority": "critical",
        "language": "pl", "body": make_ticket().body, "fields": make_ticket().fields,
    }  # fmt: skip
    assert "Łódź, ul. Żółta 5" in req.body.decode("utf-8"), "UTF-8 on the wire, not \\u escapes"
    got = {a["name"]: a for a in event["attachments"]}
    assert sorted(got) == ["blackbox.log", "bundle.tar.gz"] and event["attachment_notes"] == []
    for att in (log_att, gz_att):
        data = att.path.read_bytes()
        item = got[att.name]
        assert base64.b64decode(item["data"]) == data
        assert item["sha256"] == hashlib.sha256(data).hexdigest() and item["size_bytes"] == len(data)
        assert (item["part"], item["parts"], item["offset"], item["encoding"]) == (1, 1, 0, "base64")
        assert item["content_type"] == att.content_type
    assert hook.find(KEY) == ref and hook.find("warszawa/a20-hall/offline") is None


def test_every_event_kind_follows_the_documented_schema(
    peer: WebhookPeer, hook: WebhookBackend, tmp_path: Path
) -> None:
    log_att, _ = files(tmp_path)
    peer.replies.append(Reply.json(201, {"id": "T-17"}))
    ref = hook.open(make_ticket())
    hook.comment(ref, "Technik w drodze.")
    hook.attach(ref, log_att)
    hook.set_priority(ref, Priority.MEDIUM, "Urządzenie działa niestabilnie.")
    hook.resolve(ref, "Urządzenie znów odpowiada.")
    hook.reopen(ref, "Znów offline.")
    reqs = peer.requests
    for req in reqs:
        verify(req)
    events = [r.json() for r in reqs]
    assert [e["event"] for e in events] == EVENTS == [r.header("X-Hezo-Event") for r in reqs]
    keys = [idem(r) for r in reqs]
    assert keys == [e["event_id"] for e in events] and len(set(keys)) == 6
    for e in events[1:]:
        assert e["ticket"] == {
            "hezo_id": hezo_id(KEY), "key": KEY, "ref": "T-17", "url": None,
            "title": make_ticket().title, "priority": e["ticket"]["priority"],
        }  # fmt: skip
    commented, attached, changed, resolved, reopened = events[1:]
    assert commented["comment"] == {"body": "Technik w drodze."}
    assert base64.b64decode(attached["attachments"][0]["data"]) == log_att.path.read_bytes()
    assert changed["priority"] == {"from": "critical", "to": "medium"}
    assert changed["ticket"]["priority"] == "medium" and resolved["ticket"]["priority"] == "medium"
    assert resolved["comment"] == {"body": "Urządzenie znów odpowiada."}
    assert reopened["comment"] == {"body": "Znów offline."}
    assert hook.list_comments(ref) == []


def test_a_retried_event_is_byte_identical_with_the_same_key_and_sent_once(
    peer: WebhookPeer, hook: WebhookBackend, clock: FakeClock
) -> None:
    peer.replies.extend([Reply.json(503, {"error": "busy"}, Retry_After="7"), Reply.json(200, {})])
    with pytest.raises(BackendError) as caught:
        hook.open(make_ticket())
    assert type(caught.value) is BackendError and caught.value.retry_after_s == 7.0
    assert hook.find(KEY) is None
    clock.advance(60)
    ref = hook.open(make_ticket())
    assert ref == TicketRef("webhook", hezo_id(KEY), None)  # no id in the answer: the HEZO id
    first, second = peer.requests
    assert first.body == second.body and idem(first) == idem(second)
    assert int(second.header("X-Hezo-Timestamp") or 0) == int(first.header("X-Hezo-Timestamp") or 0) + 60
    verify(second)
    hook.open(make_ticket())
    hook.comment(ref, "raz")
    hook.comment(ref, "raz")  # the thread's last message already is this comment: not sent again
    assert len(peer.requests) == 3


def test_follow_up_after_a_lost_sent_log_repeats_the_same_key(
    peer: WebhookPeer, tmp_path: Path, clock: FakeClock
) -> None:
    a = make_backend(peer.url, tmp_path, clock, log_name="a.sqlite")
    ref = a.open(make_ticket())
    b = make_backend(peer.url, tmp_path, clock, log_name="b.sqlite")
    b.open(make_ticket())  # b never saw the open: sends it again, same key and body
    a.resolve(ref, "OK")
    b.resolve(ref, "OK")
    a.close()
    b.close()
    r = peer.requests
    assert idem(r[0]) == idem(r[1]) and r[0].body == r[1].body
    assert idem(r[2]) == idem(r[3]) and r[2].body == r[3].body


# --- status mapping ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, BackendAuthError), (403, BackendAuthError),
        (408, BackendError), (409, BackendError), (429, BackendError), (500, BackendError),
        (502, BackendError), (503, BackendError),
        (400, BackendRejected), (404, BackendRejected), (410, BackendRejected), (422, BackendRejected),
        (301, BackendRejected), (308, BackendRejected),
    ],
)  # fmt: skip
def test_status_codes_map_to_done_hold_retry_or_reject(
    peer: WebhookPeer, hook: WebhookBackend, status: int, error: type[BackendError]
) -> None:
    peer.replies.append(
        Reply.json(status, {"error": f"nope {SECRET}"}, Location="https://elsewhere.example/")
    )
    with pytest.raises(BackendError) as caught:
        hook.open(make_ticket())
    assert type(caught.value) is error
    assert caught.value.retryable is (error is BackendError)
    assert str(status) in str(caught.value)
    assert SECRET not in str(caught.value) and json.dumps(SECRET)[1:-1] not in str(caught.value)
    if status < 300 or status >= 400:
        assert "nope ***" in str(caught.value)
    assert len(peer.requests) == 1, "redirects are not followed"
    assert hook.find(KEY) is None


def test_retry_after_as_an_http_date_uses_the_injected_clock(
    peer: WebhookPeer, hook: WebhookBackend, clock: FakeClock
) -> None:
    when = format_datetime(clock.now() + timedelta(seconds=90), usegmt=True)
    peer.replies.append(Reply.json(429, {}, Retry_After=when))
    with pytest.raises(BackendError) as caught:
        hook.open(make_ticket())
    assert caught.value.retry_after_s == 90.0
    assert parse_retry_after("soon", clock.now()) is None and parse_retry_after("-5", clock.now()) == 0.0


def test_refused_and_timed_out_receivers_are_retryable(tmp_path: Path, clock: FakeClock) -> None:
    dead = make_backend(f"http://127.0.0.1:{free_port()}/hook", tmp_path, clock, log_name="dead.sqlite")
    with pytest.raises(BackendError, match="connection failed") as caught:
        dead.open(make_ticket())
    assert type(caught.value) is BackendError and caught.value.retry_after_s is None
    dead.close()
    release = threading.Event()
    with WebhookPeer(default=Reply(hold=release)) as slow:
        b = make_backend(slow.url, tmp_path, clock, read_timeout_s=0.2)
        with pytest.raises(BackendError, match="timed out") as caught:
            b.open(make_ticket())
        assert type(caught.value) is BackendError
        release.set()
        b.close()


def test_a_huge_answer_is_read_only_up_to_the_limit(peer: WebhookPeer, hook: WebhookBackend) -> None:
    huge = json.dumps({"id": "X", "pad": "a" * 3_000_000}).encode()
    peer.replies.append(Reply(201, huge))
    ref = hook.open(make_ticket())
    assert ref.id == hezo_id(KEY), "an answer past max_response_bytes is not parsed"
    peer.replies.append(Reply(400, b"e" * 2_000_000, {"Content-Type": "text/plain"}))
    with pytest.raises(BackendRejected) as caught:
        hook.comment(ref, "x")
    assert len(str(caught.value)) < 600


def test_attachments_over_the_limit_are_trimmed_oldest_first_and_the_text_says_so(
    peer: WebhookPeer, tmp_path: Path, clock: FakeClock
) -> None:
    log_att, gz_att = files(tmp_path)
    os.utime(gz_att.path, (1_000, 1_000))  # older than the log: left out first
    limit = log_att.path.stat().st_size - 1000
    b = make_backend(peer.url, tmp_path, clock, max_total_attachment_bytes=limit)
    b.open(make_ticket(), [log_att, gz_att])
    b.close()
    event = peer.requests[0].json()
    [item] = event["attachments"]
    data = base64.b64decode(item["data"])
    assert item["name"] == "blackbox.log" and item["offset"] > 0 and len(data) <= limit
    assert log_att.path.read_bytes()[item["offset"] :] == data and data.startswith(b"09:")
    assert len(event["attachment_notes"]) == 2
    assert "bundle.tar.gz" in event["ticket"]["body"] and "Załączniki:" in event["ticket"]["body"]


# --- config ------------------------------------------------------------------------------


def test_settings_need_one_secret_source_and_an_http_url() -> None:
    with pytest.raises(ValidationError, match="give secret_env"):
        WebhookSettings.model_validate({"url": "https://hooks.example.pl/hezo"})
    with pytest.raises(ValidationError, match="only one of secret_env or secret_file"):
        settings("https://hooks.example.pl/hezo", secret_file="secret.txt")
    with pytest.raises(ValidationError, match="http:// or https://"):
        settings("ftp://hooks.example.pl/hezo")
    with pytest.raises(ValidationError, match="must not contain a user or password"):
        settings("https://user:pw@hooks.example.pl/hezo")


def test_registry_builds_the_webhook_with_the_secret_from_a_file(
    peer: WebhookPeer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_file = tmp_path / "webhook.secret"
    secret_file.write_text(SECRET + "\n", "utf-8")
    ticketing = Ticketing(
        backend="webhook", webhook=settings(peer.url, secret_env=None, secret_file=secret_file)
    )
    b = build_backend(ticketing, tmp_path)
    assert isinstance(b, WebhookBackend)
    b.open(make_ticket())
    b.close()
    verify(peer.requests[0])  # signed with the secret read from the file, newline dropped
    assert (tmp_path / "webhook" / "sent.sqlite").is_file()
    assert SECRET not in caplog.text
    secret_file.unlink()
    with pytest.raises(ConfigError, match=r"ticketing\.webhook\.secret_file: file not found"):
        build_backend(ticketing, tmp_path)


# --- the documented contract ---------------------------------------------------------------


def _doc_examples() -> dict[str, Any]:
    text = (Path(__file__).resolve().parent.parent / "docs" / "webhook.md").read_text("utf-8")
    blocks = text.split("```json\n")[1:]
    examples = [json.loads(block.split("```", 1)[0]) for block in blocks]
    return {e["event"]: e for e in examples}


def _shape(value: Any) -> Any:
    if isinstance(value, dict):  # the facts in `fields` vary by problem: only their container counts
        return {k: "dict" if k == "fields" else _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return type(value).__name__ if value is not None else "null"


def test_docs_show_every_event_with_the_shape_the_backend_sends(
    peer: WebhookPeer, hook: WebhookBackend, tmp_path: Path
) -> None:
    docs = _doc_examples()
    assert sorted(docs) == sorted(EVENTS)
    log_att, _ = files(tmp_path)
    peer.replies.append(Reply.json(201, {"id": "4711", "url": "https://helpdesk.example.pl/tickets/4711"}))
    ref = hook.open(make_ticket(), [log_att])
    hook.comment(ref, "c")
    hook.attach(ref, log_att)
    hook.set_priority(ref, Priority.MEDIUM, "p")
    hook.resolve(ref, "r")
    hook.reopen(ref, "o")
    for req in peer.requests:
        sent = req.json()
        assert _shape(sent) == _shape(docs[sent["event"]]), sent["event"]
    opened = json.dumps(docs["ticket.opened"], ensure_ascii=False, separators=(",", ":")).encode()
    documented = "3573fcc2f745d381a4b2c82b95e57d2cf39de93ab1ab8d8bb1992829c675e485"
    assert hmac.new(b"s3cr3t", opened, hashlib.sha256).hexdigest() == documented
    timed = hmac.new(b"s3cr3t", b"1767603600." + opened, hashlib.sha256).hexdigest()
    assert timed == "b047ea73dd5dca4a48a7f9ea045615250bdf5b44b19e0caddcab8f2905e53ed4"
