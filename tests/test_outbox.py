"""The durable outbox: spool and quota, priority and causal order, outcomes, idempotency, CLI."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fake_helpdesk import FakeHelpdesk, FakeHelpdeskBackend

from agent import cli
from agent.clock import FakeClock
from config.loader import ConfigError, load_config
from uploader.backends.local import LocalBackend
from uploader.base import BackendAuthError, BackendError, TicketBackend
from uploader.intents import Intent, IntentKind
from uploader.models import Attachment, Comment, Priority, Ticket, TicketRef
from uploader.outbox import Outbox, intent_marker, redact
from uploader.outbox_admin import outbox_paths
from uploader.spool import SpoolEntry, plan_eviction


class Recorder(TicketBackend):
    """An in-memory helpdesk that records calls; it can fail calls or lose their answers."""

    name = "rec"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.by_key: dict[str, TicketRef] = {}
        self.comments: dict[str, list[Comment]] = {}
        self.files: dict[str, list[tuple[str, str]]] = {}
        self.errors: list[BackendError] = []
        self.lose_answer: set[str] = set()  # methods that succeed but then "time out"
        self.file_check: bool | None = True

    def _call(self, method: str, ref_id: str, detail: str) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.calls.append((method, ref_id, detail))

    def _done(self, method: str) -> None:
        if method in self.lose_answer:
            self.lose_answer.discard(method)
            raise BackendError(f"{method}: no answer within 30 s")

    def find(self, key: str) -> TicketRef | None:
        if self.errors:
            raise self.errors.pop(0)
        return self.by_key.get(key)

    def open(self, ticket: Ticket, attachments: Sequence[Attachment] = ()) -> TicketRef:
        self._call("open", ticket.key, ticket.body)
        ref = TicketRef(self.name, f"T{len(self.by_key) + 1}")
        self.by_key[ticket.key] = ref
        self.comments[ref.id] = []
        self.files[ref.id] = [
            (a.name, hashlib.sha256(Path(a.path).read_bytes()).hexdigest()) for a in attachments
        ]
        self._done("open")
        return ref

    def _comment(self, method: str, ref: TicketRef, body: str) -> None:
        self._call(method, ref.id, body)
        self.comments[ref.id].append(Comment(str(len(self.calls)), "agent", body, datetime.now(UTC)))
        self._done(method)

    def comment(self, ref: TicketRef, body: str) -> None:
        self._comment("comment", ref, body)

    def attach(self, ref: TicketRef, attachment: Attachment) -> None:
        self._call("attach", ref.id, attachment.name)
        self.files[ref.id].append(
            (attachment.name, hashlib.sha256(Path(attachment.path).read_bytes()).hexdigest())
        )
        self._done("attach")

    def set_priority(self, ref: TicketRef, priority: Priority, body: str) -> None:
        self._comment("set_priority", ref, body)

    def resolve(self, ref: TicketRef, body: str) -> None:
        self._comment("resolve", ref, body)

    def reopen(self, ref: TicketRef, body: str) -> None:
        self._comment("reopen", ref, body)

    def list_comments(self, ref: TicketRef) -> list[Comment]:
        self.calls.append(("list_comments", ref.id, ""))
        return list(self.comments.get(ref.id, []))

    def has_attachment(self, ref: TicketRef, name: str, sha256: str, size_bytes: int) -> bool | None:
        self.calls.append(("has_attachment", ref.id, name))
        if self.file_check is None:
            return None
        return any(sha == sha256 for _n, sha in self.files.get(ref.id, []))

    def sent(self, method: str) -> list[tuple[str, str, str]]:
        return [c for c in self.calls if c[0] == method]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def outbox(rec: Recorder, tmp_path: Path, clock: FakeClock) -> Iterator[Outbox]:
    box = Outbox(rec, tmp_path / "outbox.sqlite", clock=clock, spool_dir=tmp_path / "spool")
    yield box
    box.close()


def open_intent(n: int, priority: Priority = Priority.CRITICAL, files: tuple[Attachment, ...] = ()) -> Intent:
    key = f"site1/bar{n}/offline/1"
    ticket = Ticket(key, f"bar{n} offline", f"bar{n} is down", priority)
    return Intent(IntentKind.OPEN, key, f"{key}:open", priority, ticket=ticket, attachments=files)


def follow(n: int, kind: IntentKind, name: str, body: str = "", **kw: object) -> Intent:
    key = f"site1/bar{n}/offline/1"
    priority = kw.pop("priority", Priority.CRITICAL)
    return Intent(kind, key, f"{key}:{name}", priority, body=body, **kw)  # type: ignore[arg-type]


def make_file(folder: Path, name: str, size: int, seed: int = 0) -> Attachment:
    path = folder / name
    path.write_bytes(hashlib.sha256(f"{seed}".encode()).digest() * (size // 32) + b"x" * (size % 32))
    return Attachment(name, path)


# --- durability and spool ----------------------------------------------------------------


def test_intent_is_on_disk_before_it_is_logged_as_queued(
    outbox: Outbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[int] = []

    class Probe(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "event=intent_queued" in record.getMessage():
                other = sqlite3.connect(tmp_path / "outbox.sqlite")  # another connection: committed data only
                seen.append(other.execute("SELECT COUNT(*) FROM intents").fetchone()[0])
                other.close()

    probe = Probe()
    logging.getLogger("hezo.outbox").addHandler(probe)
    caplog.set_level(logging.INFO, logger="hezo.outbox")
    try:
        outbox.backend.errors.append(BackendError("503"))  # type: ignore[attr-defined]
        outbox.submit(open_intent(1))
    finally:
        logging.getLogger("hezo.outbox").removeHandler(probe)
    assert seen == [1]


def test_attachments_are_spooled_by_sha256_and_survive_the_source_going_away(
    outbox: Outbox, rec: Recorder, tmp_path: Path, clock: FakeClock
) -> None:
    rec.errors.append(BackendError("503 busy"))
    log_file = make_file(tmp_path, "bar1.log", 10_000, seed=1)
    same = Attachment("copy.log", tmp_path / "copy.log")
    same.path.write_bytes(log_file.path.read_bytes())
    sha = hashlib.sha256(log_file.path.read_bytes()).hexdigest()
    outbox.submit(open_intent(1, files=(log_file,)))
    outbox.submit(follow(1, IntentKind.ATTACH, "attach-1", "again", attachments=(same,)))
    log_file.path.unlink()
    same.path.unlink()
    stored = [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]
    assert [p.name for p in stored] == [sha], "one content-addressed copy for both intents"
    assert outbox.spool_used_bytes() == 10_000
    clock.advance(60)
    assert outbox.flush() == 2
    assert rec.files["T1"] == [("bar1.log", sha), ("copy.log", sha)]
    assert not [p for p in (tmp_path / "spool").rglob("*") if p.is_file()], "delivered files leave the spool"


def test_plan_eviction_lowest_priority_then_oldest_never_higher() -> None:
    entries = [
        SpoolEntry("c", 10, 0, 1),
        SpoolEntry("l1", 10, 2, 2),
        SpoolEntry("m", 10, 1, 3),
        SpoolEntry("l2", 10, 2, 4),
    ]
    assert plan_eviction(entries, need_bytes=10, quota_bytes=50, rank=0) == []
    assert plan_eviction(entries, need_bytes=20, quota_bytes=50, rank=0) == ["l1"]
    assert plan_eviction(entries, need_bytes=30, quota_bytes=50, rank=0) == ["l1", "l2"]
    assert plan_eviction(entries, need_bytes=40, quota_bytes=50, rank=1) == ["l1", "l2", "m"]
    assert plan_eviction(entries, need_bytes=40, quota_bytes=50, rank=2) is None  # would need m or c
    assert plan_eviction(entries, need_bytes=60, quota_bytes=50, rank=0) is None


def test_full_quota_evicts_lowest_priority_attachments_with_an_alert(
    rec: Recorder, tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(rec, tmp_path / "o.sqlite", clock=clock, spool_dir=tmp_path / "spool", quota_bytes=3000)
    rec.errors.extend([BackendError("503")] * 2)
    files = [make_file(tmp_path, f"f{i}.log", 1000, seed=i) for i in range(5)]
    with caplog.at_level(logging.ERROR, logger="hezo.outbox"):
        box.submit(open_intent(1, Priority.LOW, (files[0],)))
        box.submit(open_intent(2, Priority.MEDIUM, (files[1],)))
        box.submit(open_intent(3, Priority.CRITICAL, (files[2],)))
        box.submit(open_intent(4, Priority.CRITICAL, (files[3],)))  # full: the low one goes
        box.submit(open_intent(5, Priority.LOW, (files[4],)))  # full of higher priority: left out
    assert box.spool_used_bytes() == 3000
    kinds = [(a.kind, a.ticket_key) for a in box.alerts()]
    assert ("quota_evicted", "site1/bar1/offline/1") in kinds
    assert ("attachment_dropped", "site1/bar5/offline/1") in kinds
    assert any("alert=outbox_quota_evicted" in r.getMessage() for r in caplog.records)
    [low] = [q for q in box.pending() if q.ticket_key == "site1/bar1/offline/1"]
    assert low.files[0].state == "evicted" and "quota" in (low.files[0].note or "")
    clock.advance(3600)
    box.flush()
    opened = {c[1]: c[2] for c in rec.sent("open")}
    assert "f0.log was not sent: evicted" in opened["site1/bar1/offline/1"]
    assert "f4.log was not sent: left out" in opened["site1/bar5/offline/1"]
    assert [n for n, _ in rec.files[rec.by_key["site1/bar3/offline/1"].id]] == ["f2.log"]
    box.close()


def test_missing_source_file_still_queues_the_ticket_and_says_so(
    outbox: Outbox, rec: Recorder, tmp_path: Path
) -> None:
    outbox.submit(open_intent(1, files=(Attachment("gone.log", tmp_path / "gone.log"),)))
    [(_m, _k, body)] = rec.sent("open")
    assert "gone.log was not sent: could not be copied when queued" in body
    assert outbox.alerts()[0].kind == "attachment_missing"


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_damaged_spool_file_is_left_out_with_an_alert_not_sent_broken(
    outbox: Outbox, rec: Recorder, tmp_path: Path, clock: FakeClock, damage: str
) -> None:
    rec.errors.append(BackendError("503"))
    att = make_file(tmp_path, "bar1.log", 5000)
    outbox.submit(open_intent(1, files=(att,)))
    [stored] = [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]
    if damage == "delete":
        stored.unlink()
    else:
        stored.write_bytes(b"bit rot")
    clock.advance(60)
    assert outbox.flush() == 1
    assert rec.files["T1"] == []
    [(_m, _k, body)] = rec.sent("open")
    assert "bar1.log was not sent: spool file" in body
    assert outbox.alerts()[0].kind == "attachment_lost"


def test_corrupt_row_is_quarantined_and_does_not_block_the_queue(
    outbox: Outbox, rec: Recorder, tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    rec.errors.extend([BackendError("503")] * 2)
    outbox.submit(open_intent(1))
    outbox.submit(open_intent(2))
    outbox.submit(follow(1, IntentKind.COMMENT, "c1", "hello"))
    db = sqlite3.connect(tmp_path / "outbox.sqlite")
    db.execute("UPDATE intents SET payload = '{not json' WHERE idempotency_key = 'site1/bar1/offline/1:open'")
    db.commit()
    db.close()
    clock.advance(60)
    with caplog.at_level(logging.ERROR, logger="hezo.outbox"):
        assert outbox.flush() == 1
    [q] = outbox.quarantined()
    assert q.idempotency_key == "site1/bar1/offline/1:open" and "unreadable intent" in (q.last_error or "")
    assert [c[1] for c in rec.sent("open")] == ["site1/bar2/offline/1"]
    [rej] = outbox.rejected()  # its comment cannot go anywhere: no ticket
    assert rej.idempotency_key == "site1/bar1/offline/1:c1" and "never opened" in (rej.last_error or "")
    assert any("alert=outbox_intent_quarantined" in r.getMessage() for r in caplog.records)
    outbox.drop(str(q.seq))
    assert outbox.quarantined() == []


# --- order and outcomes ------------------------------------------------------------------


def test_delivery_is_critical_first_and_causal_per_ticket(
    outbox: Outbox, rec: Recorder, clock: FakeClock
) -> None:
    rec.errors.extend([BackendError("503")] * 2)
    outbox.submit(open_intent(1, Priority.LOW))
    outbox.submit(open_intent(2, Priority.MEDIUM))
    outbox.submit(follow(1, IntentKind.COMMENT, "c1", "low note", priority=Priority.LOW))
    outbox.submit(open_intent(3, Priority.CRITICAL))
    outbox.submit(follow(2, IntentKind.SET_PRIORITY, "p1", "now critical", priority=Priority.CRITICAL))
    outbox.submit(open_intent(4, Priority.MEDIUM))
    rec.calls.clear()
    clock.advance(3600)
    assert outbox.flush() == 6
    sent = [(c[0], c[1] if c[0] == "open" else c[2].split("\n")[0]) for c in rec.calls]
    assert sent == [
        ("open", "site1/bar2/offline/1"),  # escalated to critical by its later intent; oldest critical
        ("set_priority", "now critical"),
        ("open", "site1/bar3/offline/1"),  # critical
        ("open", "site1/bar4/offline/1"),
        ("open", "site1/bar1/offline/1"),
        ("comment", "low note"),  # never before its ticket
    ]


def test_failing_backend_is_probed_once_per_window_never_in_a_hot_loop(
    outbox: Outbox, rec: Recorder, clock: FakeClock
) -> None:
    rec.errors.extend([BackendError("connection refused")] * 1000)
    for n in range(20):
        outbox.submit(open_intent(n))
    for _ in range(200):
        outbox.flush()
    assert len(rec.errors) >= 1000 - 2, "two tries at most without the clock moving"
    tried = 1000 - len(rec.errors)
    clock.advance(3 * 3600)
    for _ in range(3 * 3600 // 5):  # the agent's flush every 5 s for three hours
        outbox.flush()
        clock.advance(5)
    probes = 1000 - len(rec.errors) - tried
    assert 15 <= probes <= 3 * 3600 / 480 + 12


def test_retry_after_of_the_helpdesk_is_honoured(outbox: Outbox, rec: Recorder, clock: FakeClock) -> None:
    rec.errors.append(BackendError("429 slow down", retry_after_s=120))
    outbox.submit(open_intent(1))
    outbox.submit(open_intent(2))
    clock.advance(119)
    assert outbox.flush() == 0
    clock.advance(2)
    assert outbox.flush() == 2


def test_rejected_answer_is_final_and_its_alert_is_redacted(tmp_path: Path, clock: FakeClock) -> None:
    desk = FakeHelpdesk().start()
    backend = FakeHelpdeskBackend(desk.url, desk.token)
    box = Outbox(backend, tmp_path / "o.sqlite", clock=clock, spool_dir=tmp_path / "spool")
    try:
        box.submit(open_intent(1))
        desk.fail_next.append(
            (
                422,
                {
                    "error": "priority: is invalid",
                    "api_key": "AKIA-SECRET-123",
                    "echo": f"Authorization: Bearer {desk.token}",
                },
                {},
            )
        )
        box.submit(follow(1, IntentKind.COMMENT, "c1", "note"))
        box.submit(follow(1, IntentKind.RESOLVE, "r1", "fixed"))
        [rej] = box.rejected()
        assert rej.idempotency_key.endswith(":c1") and "422" in (rej.last_error or "")
        assert "priority: is invalid" in (rej.last_error or "")
        [alert] = [a for a in box.alerts() if a.kind == "intent_rejected"]
        for text in (rej.last_error or "", alert.message):
            assert "AKIA-SECRET-123" not in text and desk.token not in text
        clock.advance(7200)
        box.flush()
        [ticket] = desk.tickets.values()
        assert [c["body"].split("\n")[0] for c in ticket.comments] == [
            "fixed"
        ] and ticket.status == "resolved"
    finally:
        box.close()
        backend.close()
        desk.stop()


def test_rejected_credentials_hold_the_backend_until_retry_or_restart(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    desk = FakeHelpdesk().start()
    backend = FakeHelpdeskBackend(desk.url, "wrong-token-123456")
    box = Outbox(backend, tmp_path / "o.sqlite", clock=clock, spool_dir=tmp_path / "spool")
    try:
        with caplog.at_level(logging.ERROR, logger="hezo.outbox"):
            box.submit(open_intent(1))
            box.submit(open_intent(2))
        assert len(desk.requests) == 1
        [held] = box.held()
        assert held.name == "fakedesk" and "401" in (held.hold_reason or "")
        assert "wrong-token-123456" not in (held.hold_reason or "")
        [alert] = [a for a in box.alerts() if a.kind == "credentials_rejected"]
        assert "credentials rejected" in alert.message and "outbox retry" in alert.message
        assert any("alert=credentials_rejected" in r.getMessage() for r in caplog.records)
        assert box.rejected() == [] and len(box.pending()) == 2, "held, not rejected"
        clock.advance(86400)
        assert box.flush() == 0 and len(desk.requests) == 1, "no request while held"

        backend.session.headers["Authorization"] = f"Bearer {desk.token}"  # the fixed credentials
        box.retry()
        assert box.held() == [] and box.flush() == 2

        # a hold also ends with a restart (new credentials are read at start)
        backend.session.headers["Authorization"] = "Bearer nope-nope-nope"
        box.submit(open_intent(3))
        assert box.held() != []
        box.close()
        backend.session.headers["Authorization"] = f"Bearer {desk.token}"
        box = Outbox(backend, tmp_path / "o.sqlite", clock=clock, spool_dir=tmp_path / "spool")
        assert box.held() == [] and box.flush() == 1
    finally:
        box.close()
        backend.close()
        desk.stop()


def test_max_attempts_rejects_with_an_alert(rec: Recorder, tmp_path: Path, clock: FakeClock) -> None:
    box = Outbox(rec, tmp_path / "o.sqlite", clock=clock, spool_dir=tmp_path / "s", max_attempts=3)
    rec.errors.extend([BackendError("500 oops")] * 3)
    box.submit(open_intent(1))
    for _ in range(10):
        clock.advance(3600)
        box.flush()
    [rej] = box.rejected()
    assert "gave up after 3 attempts: BackendError: 500 oops" in (rej.last_error or "")
    box.close()


# --- idempotency beyond open ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", [IntentKind.COMMENT, IntentKind.SET_PRIORITY, IntentKind.RESOLVE, IntentKind.REOPEN]
)
def test_lost_answer_is_checked_by_marker_not_sent_twice(
    outbox: Outbox, rec: Recorder, clock: FakeClock, kind: IntentKind
) -> None:
    outbox.submit(open_intent(1))
    rec.lose_answer.add(str(kind))
    outbox.submit(follow(1, kind, "x1", "the body"))
    assert len(outbox.pending()) == 1 and outbox.pending()[0].inflight
    clock.advance(600)
    assert outbox.flush() == 1
    [(_m, _ref, body)] = rec.sent(str(kind))
    assert body == "the body\n\n" + intent_marker("site1/bar1/offline/1:x1")
    assert rec.sent("list_comments"), "the helpdesk was asked before sending again"


def test_lost_answer_of_an_upload_is_checked_before_uploading_again(
    outbox: Outbox, rec: Recorder, clock: FakeClock, tmp_path: Path
) -> None:
    outbox.submit(open_intent(1))
    files = (make_file(tmp_path, "a.log", 100, 1), make_file(tmp_path, "b.log", 100, 2))
    rec.lose_answer.add("attach")
    outbox.submit(follow(1, IntentKind.ATTACH, "a1", attachments=files))
    clock.advance(600)
    assert outbox.flush() == 1
    assert [c[2] for c in rec.sent("attach")] == ["a.log", "b.log"]
    assert [c[2] for c in rec.sent("has_attachment")] == ["a.log"]


def test_backend_that_cannot_tell_gets_the_upload_again(
    outbox: Outbox, rec: Recorder, clock: FakeClock, tmp_path: Path
) -> None:
    rec.file_check = None  # the default of TicketBackend.has_attachment: at least once
    outbox.submit(open_intent(1))
    rec.lose_answer.add("attach")
    outbox.submit(follow(1, IntentKind.ATTACH, "a1", attachments=(make_file(tmp_path, "a.log", 100),)))
    clock.advance(600)
    outbox.flush()
    assert [c[2] for c in rec.sent("attach")] == ["a.log", "a.log"]


def test_crash_after_local_backend_stored_a_comment_does_not_repeat_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    local = LocalBackend(tmp_path / "tickets", clock=clock)
    box = Outbox(local, tmp_path / "o.sqlite", clock=clock, spool_dir=tmp_path / "s")
    box.submit(open_intent(1))
    box.backend = _Lossy(local)  # the comment lands, the answer is lost, the agent dies
    box.submit(follow(1, IntentKind.COMMENT, "c1", "once"))
    box.close()
    box = Outbox(local, tmp_path / "o.sqlite", clock=clock, spool_dir=tmp_path / "s")
    clock.advance(600)
    assert box.flush() == 1
    [ticket] = local.tickets()
    assert [c.body for c in ticket.comments] == ["once\n\n" + intent_marker("site1/bar1/offline/1:c1")]
    box.close()
    local.close()


class _Lossy(LocalBackend):
    def __init__(self, inner: LocalBackend) -> None:  # shares the inner store
        self.__dict__.update(inner.__dict__)

    def comment(self, ref: TicketRef, body: str) -> None:
        super().comment(ref, body)
        raise BackendError("read timed out")


def test_redact_removes_credentials() -> None:
    text = redact(
        'HTTP 400: {"password": "hunter2", "token":"abc123xyz"} Authorization: Bearer eyJhbGciOi.x.y '
        "https://admin:pa55@desk.example.pl/api?api_key=K3Y&x=1"
    )
    for secret in ("hunter2", "abc123xyz", "eyJhbGciOi", "pa55", "K3Y"):
        assert secret not in text
    assert "HTTP 400" in text and "desk.example.pl" in text


# --- the CLI ---------------------------------------------------------------------------------


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "site.yaml"
    cfg.write_text(
        "agent: {data_dir: data}\n"
        "sites:\n  - name: hq\n    address: ul. Prosta 1, Warszawa\n"
        "    contact: {name: Jan, phone: '+48 22 000 00 00', email: jan@example.pl}\n"
        "devices:\n  - {id: bar1, room: r1, site: hq, model: A30, host: 127.0.0.1}\n"
        "ticketing:\n  outbox: {quota_mb: 7}\n"
    )
    return cfg


def test_cli_outbox_lists_retries_and_drops(
    tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich: a wide table, no cut cells
    cfg = _config(tmp_path)
    db, spool = outbox_paths(tmp_path / "data")
    rec = Recorder()
    box = Outbox(rec, db, clock=clock, spool_dir=spool)
    rec.errors.append(BackendError("503"))
    box.submit(open_intent(1, files=(make_file(tmp_path, "a.log", 2048),)))
    rec.errors.append(BackendAuthError("401 token=abcdef123456 expired"))
    clock.advance(60)
    box.flush()
    box.submit(open_intent(2))
    box.close()

    assert cli.main(["outbox", "-c", str(cfg), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [p["ticket_key"] for p in shown["pending"]] == ["site1/bar1/offline/1", "site1/bar2/offline/1"]
    assert shown["pending"][0]["files"][0]["size_bytes"] == 2048
    assert shown["held"][0]["backend"] == "rec" and "abcdef123456" not in json.dumps(shown)
    assert shown["spool"] == {"used_bytes": 2048, "quota_bytes": 7 * 1024 * 1024}
    assert {a["kind"] for a in shown["alerts"]} == {"credentials_rejected"}

    assert cli.main(["outbox", "-c", str(cfg)]) == 0
    table = capsys.readouterr().out
    assert "credentials rejected" in table and "site1/bar2/offline/1" in table

    second = str(shown["pending"][1]["id"])
    assert cli.main(["outbox", "drop", second, "-c", str(cfg)]) == 0
    assert cli.main(["outbox", "retry", "-c", str(cfg)]) == 0
    assert cli.main(["outbox", "retry", "999", "-c", str(cfg)]) == 1
    assert "no intent 999" in capsys.readouterr().err
    assert cli.main(["outbox", "drop", "-c", str(cfg)]) == 1
    assert cli.main(["outbox", "-c", str(cfg), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [p["ticket_key"] for p in shown["pending"]] == ["site1/bar1/offline/1"] and shown["held"] == []

    box = Outbox(rec, db, clock=clock, spool_dir=spool)
    box.submit(open_intent(2))  # dropped: queuing its key again is ignored
    assert box.flush() == 1 and [c[1] for c in rec.sent("open")] == ["site1/bar1/offline/1"]
    box.close()


@pytest.mark.parametrize(
    ("outbox_yaml", "message"),
    [
        ("{quota_mb: 0}", "ticketing.outbox.quota_mb: must be at least 1, got 0"),
        (
            "{backoff_base_s: 60, backoff_cap_s: 30}",
            "ticketing.outbox.backoff_cap_s: must be at least backoff_base_s (60)",
        ),
        ("{max_attempts: 0}", "ticketing.outbox.max_attempts: must be at least 1, got 0"),
    ],
)
def test_bad_outbox_settings_name_the_key(tmp_path: Path, outbox_yaml: str, message: str) -> None:
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text().replace("{quota_mb: 7}", outbox_yaml))
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert message in err.value.render()
