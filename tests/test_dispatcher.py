"""The foundation dispatcher: order per ticket, retry with backoff, reject, idempotency, restart."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.clock import FakeClock
from uploader.backends.local import LocalBackend
from uploader.base import BackendError, BackendRejected, TicketBackend
from uploader.dispatcher import Dispatcher
from uploader.intents import Intent, IntentKind
from uploader.models import Attachment, Comment, Priority, Ticket, TicketRef

KEY = "site1/bar1/offline/1"
_MARKER = re.compile(r"\n*\[hezo:[0-9a-f]{16}\]$")


def plain(body: str) -> str:
    """The body without the outbox's idempotency marker (tested in test_outbox.py)."""
    return _MARKER.sub("", body)


class FakeBackend(TicketBackend):
    """Records every call; can be told to fail the next N calls of a method."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.by_key: dict[str, TicketRef] = {}
        self.failures: dict[str, list[BackendError]] = {}

    def fail(self, method: str, times: int = 1, error: BackendError | None = None) -> None:
        self.failures.setdefault(method, []).extend([error or BackendError("503 busy")] * times)

    def _maybe_fail(self, method: str) -> None:
        queued = self.failures.get(method)
        if queued:
            raise queued.pop(0)

    def find(self, key: str) -> TicketRef | None:
        self._maybe_fail("find")
        return self.by_key.get(key)

    def open(self, ticket: Ticket, attachments: Sequence[Attachment] = ()) -> TicketRef:
        self._maybe_fail("open")
        ref = TicketRef(backend=self.name, id=f"T{len(self.by_key) + 1}")
        self.by_key[ticket.key] = ref
        self.calls.append(("open", ref.id, ",".join(a.name for a in attachments)))
        return ref

    def comment(self, ref: TicketRef, body: str) -> None:
        self._maybe_fail("comment")
        self.calls.append(("comment", ref.id, plain(body)))

    def attach(self, ref: TicketRef, attachment: Attachment) -> None:
        self._maybe_fail("attach")
        self.calls.append(("attach", ref.id, attachment.name))

    def set_priority(self, ref: TicketRef, priority: Priority, body: str) -> None:
        self._maybe_fail("set_priority")
        self.calls.append(("set_priority", ref.id, f"{priority}:{plain(body)}"))

    def resolve(self, ref: TicketRef, body: str) -> None:
        self._maybe_fail("resolve")
        self.calls.append(("resolve", ref.id, plain(body)))

    def reopen(self, ref: TicketRef, body: str) -> None:
        self._maybe_fail("reopen")
        self.calls.append(("reopen", ref.id, plain(body)))

    def list_comments(self, ref: TicketRef) -> list[Comment]:
        return []


def open_intent(key: str = KEY, idem: str = "open-1", attachments: tuple[Attachment, ...] = ()) -> Intent:
    ticket = Ticket(key=key, title=f"[P1] {key} offline", body="down", priority=Priority.CRITICAL)
    return Intent(IntentKind.OPEN, key, idem, Priority.CRITICAL, ticket=ticket, attachments=attachments)


def intent(kind: IntentKind, idem: str, body: str = "", key: str = KEY, **kw: object) -> Intent:
    return Intent(kind, key, idem, Priority.CRITICAL, body=body, **kw)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state" / "dispatch.sqlite"


def test_intents_applied_in_order(fake: FakeBackend, state: Path, clock: FakeClock, tmp_path: Path) -> None:
    log_file = tmp_path / "bundle.tar.gz"
    log_file.write_bytes(b"x")
    d = Dispatcher(fake, state, clock=clock)
    d.submit(open_intent())
    d.submit(intent(IntentKind.COMMENT, "c-1", "still down"))
    d.submit(intent(IntentKind.SET_PRIORITY, "p-1", "escalated"))
    d.submit(intent(IntentKind.ATTACH, "a-1", "bundle attached",
                    attachments=(Attachment("bundle.tar.gz", log_file),)))
    d.submit(intent(IntentKind.RESOLVE, "r-1", "recovered"))
    d.submit(intent(IntentKind.REOPEN, "o-1", "down again"))
    assert fake.calls == [
        ("open", "T1", ""),
        ("comment", "T1", "still down"),
        ("set_priority", "T1", "critical:escalated"),
        ("attach", "T1", "bundle.tar.gz"),
        ("comment", "T1", "bundle attached"),
        ("resolve", "T1", "recovered"),
        ("reopen", "T1", "down again"),
    ]
    assert d.pending() == [] and d.rejected() == []
    assert d.ref_for(KEY) == TicketRef("fake", "T1")
    assert d.ref_for("other") is None


def test_comment_waits_for_its_open(fake: FakeBackend, state: Path, clock: FakeClock) -> None:
    d = Dispatcher(fake, state, clock=clock)
    fake.fail("open", times=1)
    d.submit(open_intent())
    d.submit(intent(IntentKind.COMMENT, "c-1", "still down"))
    assert fake.calls == []
    assert [p.kind for p in d.pending()] == [IntentKind.OPEN, IntentKind.COMMENT]
    assert d.pending()[0].attempts == 1 and d.pending()[0].last_error == "BackendError: 503 busy"
    # another ticket is not held up by this one
    d.submit(open_intent(key="site1/bar2/offline/1", idem="open-2"))
    assert fake.calls == [("open", "T1", "")]
    clock.advance(600)
    assert d.flush() == 2
    assert fake.calls[1:] == [("open", "T2", ""), ("comment", "T2", "still down")]
    assert d.ref_for(KEY) == TicketRef("fake", "T2")


def test_retryable_failure_is_retried_only_after_backoff_and_delivered_once(
    fake: FakeBackend, state: Path, clock: FakeClock
) -> None:
    d = Dispatcher(fake, state, clock=clock)
    d.submit(open_intent())
    fake.fail("comment", times=2)
    d.submit(intent(IntentKind.COMMENT, "c-1", "note"))
    assert d.flush() == 0  # first backoff 4-5 s has not passed
    [waiting] = d.pending()
    assert waiting.attempts == 1
    assert clock.now().timestamp() + 4 <= waiting.next_attempt_at.timestamp() <= clock.now().timestamp() + 5
    clock.advance(3.9)
    assert d.flush() == 0
    assert len(fake.failures["comment"]) == 1  # not tried again yet
    clock.advance(1.2)
    assert d.flush() == 0  # second failure: backoff doubles to 8-10 s
    assert d.pending()[0].attempts == 2
    clock.advance(7.9)
    assert d.flush() == 0
    clock.advance(2.2)
    assert d.flush() == 1
    assert d.flush() == 0
    assert fake.calls.count(("comment", "T1", "note")) == 1
    assert d.pending() == []


def test_backoff_doubles_and_is_capped(fake: FakeBackend, state: Path, clock: FakeClock) -> None:
    d = Dispatcher(fake, state, clock=clock, jitter=0.0)
    assert [d.backoff_s(n) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert d.backoff_s(50) == 600.0
    jittered = Dispatcher(fake, state.with_name("j.sqlite"), clock=clock)
    assert all(480.0 <= jittered.backoff_s(1000) <= 600.0 for _ in range(50))


# 401/403 (BackendAuthError) holds the backend instead: see test_outbox.py
@pytest.mark.parametrize("error", [BackendRejected("422 missing field"), BackendRejected("400 bad priority")])
def test_rejected_intent_is_never_retried(
    fake: FakeBackend, state: Path, clock: FakeClock, error: BackendError, caplog: pytest.LogCaptureFixture
) -> None:
    d = Dispatcher(fake, state, clock=clock)
    d.submit(open_intent())
    fake.fail("comment", times=1, error=error)
    with caplog.at_level(logging.ERROR, logger="hezo.dispatch"):
        d.submit(intent(IntentKind.COMMENT, "c-1", "bad"))
    d.submit(intent(IntentKind.RESOLVE, "r-1", "fine"))
    [rej] = d.rejected()
    assert (rej.idempotency_key, rej.kind) == ("c-1", IntentKind.COMMENT)
    assert str(error) in (rej.last_error or "")
    assert any("alert=ticket_intent_rejected" in r.getMessage() and "c-1" in r.getMessage()
               for r in caplog.records)
    clock.advance(3600)
    assert d.flush() == 0
    assert [c[0] for c in fake.calls] == ["open", "resolve"]
    assert d.pending() == []


def test_rejected_open_rejects_its_followers(fake: FakeBackend, state: Path, clock: FakeClock) -> None:
    d = Dispatcher(fake, state, clock=clock)
    fake.fail("open", error=BackendRejected("title too long"))
    d.submit(open_intent())
    d.submit(intent(IntentKind.COMMENT, "c-1", "x"))
    assert [r.idempotency_key for r in d.rejected()] == ["open-1", "c-1"]
    assert "never opened" in (d.rejected()[1].last_error or "")
    assert fake.calls == []


def test_duplicate_idempotency_key_applied_once(fake: FakeBackend, state: Path, clock: FakeClock) -> None:
    d = Dispatcher(fake, state, clock=clock)
    d.submit(open_intent())
    d.submit(open_intent())
    d.submit(intent(IntentKind.COMMENT, "c-1", "once"))
    d.submit(intent(IntentKind.COMMENT, "c-1", "once"))
    fake.fail("comment", times=1)
    d.submit(intent(IntentKind.COMMENT, "c-2", "queued"))
    d.submit(intent(IntentKind.COMMENT, "c-2", "queued"))  # still pending: not queued twice
    assert len(d.pending()) == 1
    clock.advance(600)
    d.flush()
    assert fake.calls == [("open", "T1", ""), ("comment", "T1", "once"), ("comment", "T1", "queued")]


def test_attach_failure_midway_does_not_reattach_done_files(
    fake: FakeBackend, state: Path, clock: FakeClock, tmp_path: Path
) -> None:
    d = Dispatcher(fake, state, clock=clock)
    d.submit(open_intent())
    for n in ("a.log", "b.log"):
        (tmp_path / n).write_text(n)
    files = tuple(Attachment(n, tmp_path / n) for n in ("a.log", "b.log"))
    fake.fail("comment", times=1)
    d.submit(intent(IntentKind.ATTACH, "a-1", "two logs", attachments=files))
    clock.advance(600)
    assert d.flush() == 1
    assert fake.calls[1:] == [
        ("attach", "T1", "a.log"),
        ("attach", "T1", "b.log"),
        ("comment", "T1", "two logs"),
    ]


def test_restart_keeps_pending_intents_and_refs(fake: FakeBackend, state: Path, clock: FakeClock) -> None:
    first = Dispatcher(fake, state, clock=clock)
    first.submit(open_intent())
    fake.fail("comment", times=1)
    first.submit(intent(IntentKind.COMMENT, "c-1", "after restart"))
    first.close()

    second = Dispatcher(fake, state, clock=clock)
    assert second.ref_for(KEY) == TicketRef("fake", "T1")
    assert [p.idempotency_key for p in second.pending()] == ["c-1"]
    second.submit(open_intent())  # applied before the restart: nothing twice
    clock.advance(600)
    assert second.flush() == 1
    assert fake.calls == [("open", "T1", ""), ("comment", "T1", "after restart")]


def test_restart_after_crash_does_not_duplicate_an_open_the_backend_has(
    fake: FakeBackend, state: Path, clock: FakeClock
) -> None:
    # The backend opened the ticket, but the agent died before recording it locally.
    first = Dispatcher(fake, state, clock=clock)
    fake.fail("find", times=1)
    first.submit(open_intent())
    first.submit(intent(IntentKind.COMMENT, "c-1", "hello"))
    first.close()
    fake.by_key[KEY] = TicketRef("fake", "T-existing")

    second = Dispatcher(fake, state, clock=clock)
    assert [p.kind for p in second.pending()] == [IntentKind.OPEN, IntentKind.COMMENT]
    clock.advance(600)
    assert second.flush() == 2
    assert fake.calls == [("comment", "T-existing", "hello")]
    assert second.ref_for(KEY) == TicketRef("fake", "T-existing")


def test_with_local_backend_end_to_end(state: Path, clock: FakeClock, tmp_path: Path) -> None:
    local = LocalBackend(tmp_path / "tickets", clock=clock)
    src = tmp_path / "bb.log"
    src.write_bytes(b"black box")
    d = Dispatcher(local, state, clock=clock)
    d.submit(open_intent(attachments=(Attachment("bb.log", src),)))
    d.submit(intent(IntentKind.RESOLVE, "r-1", "recovered"))
    d.close()
    d2 = Dispatcher(local, state, clock=clock)
    d2.submit(open_intent(idem="open-again"))  # same ticket key: no second ticket
    [t] = local.tickets()
    assert t.status == "resolved" and [a.name for a in t.attachments] == ["bb.log"]
    assert [plain(c.body) for c in t.comments] == ["recovered"]
    local.close()
