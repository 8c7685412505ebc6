"""The embedded `local` helpdesk: idempotent open, comments, attachments, status, persistence."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.clock import FakeClock
from config.schema import LocalBackendSettings, Ticketing
from uploader.backends.local import LocalBackend, LocalTicket, safe_file_name
from uploader.base import BackendRejected
from uploader.models import Attachment, Priority, Ticket, TicketRef
from uploader.registry import BACKENDS, build_backend


def make_ticket(key: str = "site1/bar1/offline/1", priority: Priority = Priority.CRITICAL) -> Ticket:
    return Ticket(
        key=key,
        title='[P1] A30 "Sala Zarząd" offline — SN 803001',
        body="Device unreachable on every channel.",
        priority=priority,
        fields={
            "device": "bar1",
            "model": "A30",
            "serial": "803001",
            "contract": "HZ-2026-01",
            "problem": "offline",
            "site": "site1",
        },
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(tmp_path: Path, clock: FakeClock) -> Iterator[LocalBackend]:
    b = LocalBackend(tmp_path / "tickets", clock=clock)
    yield b
    b.close()


def test_open_returns_hezo_id_and_same_key_returns_first_ticket(backend: LocalBackend) -> None:
    ref = backend.open(make_ticket())
    assert ref == TicketRef(backend="local", id="HEZO-000001")
    assert backend.find("site1/bar1/offline/1") == ref
    again = backend.open(make_ticket())
    assert again == ref
    assert len(backend.tickets()) == 1
    other = backend.open(make_ticket(key="site1/bar2/offline/1"))
    assert other.id == "HEZO-000002"
    assert backend.find("nope") is None


def test_comments_listed_oldest_first_with_authors(backend: LocalBackend, clock: FakeClock) -> None:
    ref = backend.open(make_ticket())
    backend.comment(ref, "first")
    clock.advance(60)
    backend.add_comment(ref.id, "jan.kowalski", "/logs bar1 30")
    clock.advance(60)
    backend.comment(ref, "third")
    comments = backend.list_comments(ref)
    assert [c.body for c in comments] == ["first", "/logs bar1 30", "third"]
    assert [c.author for c in comments] == ["hezo-agent", "jan.kowalski", "hezo-agent"]
    assert comments[0].created_at < comments[1].created_at < comments[2].created_at
    assert len({c.id for c in comments}) == 3


def test_attach_records_size_and_sha256_and_copies_the_file(backend: LocalBackend, tmp_path: Path) -> None:
    src = tmp_path / "bundle.tar.gz"
    data = b"log line\n" * 10_000
    src.write_bytes(data)
    ref = backend.open(make_ticket(), [Attachment(name="blackbox.log", path=src)])
    backend.attach(ref, Attachment(name="bundle.tar.gz", path=src))
    atts = backend.ticket(ref.id).attachments
    assert [a.name for a in atts] == ["blackbox.log", "bundle.tar.gz"]
    for name, size_bytes, sha256, path in atts:
        assert size_bytes == len(data)
        assert sha256 == hashlib.sha256(data).hexdigest()
        assert path.read_bytes() == data
        assert path.parent == backend.attachments_dir / ref.id
        assert path.name == name


def test_attachment_name_cannot_escape_the_ticket_folder(backend: LocalBackend, tmp_path: Path) -> None:
    src = tmp_path / "x.txt"
    src.write_bytes(b"secretless")
    ref = backend.open(make_ticket())
    backend.attach(ref, Attachment(name="../../etc/passwd", path=src))
    backend.attach(ref, Attachment(name="..\\..\\boot.ini", path=src))
    backend.attach(ref, Attachment(name="..", path=src))
    folder = (backend.attachments_dir / ref.id).resolve()
    atts = backend.ticket(ref.id).attachments
    assert [a.name for a in atts] == ["passwd", "boot.ini", "attachment"]
    for att in atts:
        assert att.path.resolve().parent == folder
    assert not (backend.root / "etc").exists()
    assert not (backend.attachments_dir / "etc").exists()


def test_same_attachment_name_twice_keeps_both_files(backend: LocalBackend, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"one")
    second.write_bytes(b"two")
    ref = backend.open(make_ticket())
    backend.attach(ref, Attachment(name="log.tar.gz", path=first))
    backend.attach(ref, Attachment(name="log.tar.gz", path=second))
    atts = backend.ticket(ref.id).attachments
    assert [a.path.name for a in atts] == ["log.tar.gz", "log-1.tar.gz"]
    assert [a.path.read_bytes() for a in atts] == [b"one", b"two"]


@pytest.mark.parametrize(
    ("raw", "safe"),
    [("report.txt", "report.txt"), ("a b/c d.log", "c_d.log"), (".hidden", "hidden"), ("", "attachment"),
     ("CON.txt", "_CON.txt"), ("x" * 300 + ".zip", "x" * 116 + ".zip")],
)
def test_safe_file_name(raw: str, safe: str) -> None:
    assert safe_file_name(raw) == safe


def test_missing_attachment_file_is_rejected_naming_the_file(backend: LocalBackend, tmp_path: Path) -> None:
    missing = tmp_path / "gone.log"
    with pytest.raises(BackendRejected, match=r"gone\.log"):
        backend.open(make_ticket(), [Attachment(name="gone.log", path=missing)])
    assert backend.tickets() == []
    ref = backend.open(make_ticket())
    with pytest.raises(BackendRejected, match=r"gone\.log"):
        backend.attach(ref, Attachment(name="gone.log", path=missing))


def test_unknown_ticket_id_is_rejected(backend: LocalBackend) -> None:
    ghost = TicketRef(backend="local", id="HEZO-999999")
    with pytest.raises(BackendRejected, match="HEZO-999999"):
        backend.comment(ghost, "hello")
    with pytest.raises(BackendRejected):
        backend.resolve(ghost, "done")
    with pytest.raises(BackendRejected):
        backend.ticket("HEZO-999999")
    with pytest.raises(BackendRejected):
        backend.list_comments(ghost)


def test_priority_resolve_reopen_change_status_and_comment(backend: LocalBackend, clock: FakeClock) -> None:
    ref = backend.open(make_ticket(priority=Priority.MEDIUM))
    backend.set_priority(ref, Priority.CRITICAL, "Escalated: offline on every channel.")
    assert backend.ticket(ref.id).priority is Priority.CRITICAL
    clock.advance(600)
    backend.resolve(ref, "Recovered: stable for 2 polls.")
    t = backend.ticket(ref.id)
    assert (t.status, t.resolved_at) == ("resolved", clock.now())
    assert backend.tickets(open_only=True) == []
    clock.advance(600)
    backend.reopen(ref, "Offline again.")
    t = backend.ticket(ref.id)
    assert (t.status, t.resolved_at) == ("open", None)
    assert t.updated_at == clock.now()
    assert [c.body for c in t.comments] == [
        "Escalated: offline on every channel.",
        "Recovered: stable for 2 polls.",
        "Offline again.",
    ]
    assert [x.id for x in backend.tickets(open_only=True)] == [ref.id]


def test_to_json_has_the_fields_the_cli_and_demo_show(backend: LocalBackend, tmp_path: Path) -> None:
    src = tmp_path / "bb.log"
    src.write_bytes(b"abc")
    ref = backend.open(make_ticket(), [Attachment(name="bb.log", path=src)])
    backend.comment(ref, "note")
    doc = backend.ticket(ref.id).to_json()
    json.dumps(doc)  # serialisable
    assert doc["id"] == ref.id
    assert doc["key"] == "site1/bar1/offline/1"
    assert doc["priority"] == "critical"
    assert doc["status"] == "open"
    assert doc["resolved_at"] is None
    assert doc["created_at"] == "2026-01-05T09:00:00+00:00"
    assert (doc["device"], doc["model"], doc["serial"], doc["contract"], doc["problem"]) == (
        "bar1", "A30", "803001", "HZ-2026-01", "offline",
    )
    assert doc["attachments"] == [
        {"name": "bb.log", "size_bytes": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}
    ]
    assert doc["comments"] == 1


def test_tickets_survive_a_restart_on_the_same_root(tmp_path: Path, clock: FakeClock) -> None:
    root = tmp_path / "store"
    src = tmp_path / "f.log"
    src.write_bytes(b"payload")
    first = LocalBackend(root, clock=clock)
    ref = first.open(make_ticket(), [Attachment(name="f.log", path=src)])
    first.comment(ref, "before restart")
    before: LocalTicket = first.ticket(ref.id)
    first.close()

    second = LocalBackend(root, clock=clock)
    try:
        assert second.find("site1/bar1/offline/1") == ref
        assert second.ticket(ref.id) == before
        assert second.open(make_ticket()) == ref
        assert second.open(make_ticket(key="other")).id == "HEZO-000002"
    finally:
        second.close()


def test_registry_builds_local_backend_in_data_dir_or_configured_path(tmp_path: Path) -> None:
    default = build_backend(Ticketing(), tmp_path)
    assert isinstance(default, LocalBackend)
    assert (tmp_path / "tickets" / "tickets.sqlite").is_file()
    default.close()
    custom = build_backend(Ticketing(local=LocalBackendSettings(path=tmp_path / "elsewhere")), tmp_path)
    assert isinstance(custom, LocalBackend)
    assert (tmp_path / "elsewhere" / "tickets.sqlite").is_file()
    custom.close()
    assert "local" in BACKENDS


def test_registry_unknown_backend_lists_supported(tmp_path: Path) -> None:
    bogus = Ticketing.model_construct(backend="bogus")  # bypasses the Literal to reach the factory
    with pytest.raises(ValueError, match=r"unknown ticket backend 'bogus' \(supported: .*\blocal\b.*\)"):
        build_backend(bogus, tmp_path)
