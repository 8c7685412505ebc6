"""`/logs` in a ticket comment: the bundle lands on that ticket once, with its SHA-256 in the reply.

Against the simulator with the `local` backend (an engineer is whoever `add_comment` names), and
through a REST backend (Zendesk, answers from `responses`) to show the watcher only needs the
backend's comment listing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tarfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import responses
from agent_server import make_agent, poll_all, take_offline

import agent.bundle
from agent.audit import AuditLog
from agent.bundle_models import BundleResult, Requester
from agent.clock import FakeClock
from agent.daemon import Agent
from agent.ticket_commands import (
    STATE_FILE,
    CommandError,
    CommandLedger,
    LogsCommand,
    OpenTicket,
    TicketCommandWatcher,
    is_agent_comment,
    looks_like_command,
    parse_command,
)
from config.commands import CommandSettings
from config.ticketing import ZendeskSettings
from simulator.fleet import Fleet
from uploader.backends._rest import key_tag
from uploader.backends.local import AGENT_AUTHOR, LocalBackend, LocalTicket
from uploader.backends.zendesk import ZendeskBackend
from uploader.models import Priority, TicketRef
from uploader.outbox import Outbox

ENGINEER = "jan.nowak@hezo.example"
SHA_LINE = re.compile(
    r"/logs: (?P<name>\S+\.tar\.gz) attached, (?P<size>\d+) bytes, SHA-256 (?P<sha>[0-9a-f]{64})\."
)
COMMANDS = {"allowed_authors": [ENGINEER, "Anna Kowalska"], "max_minutes": 120}
BUNDLES = {"timeout_s": 10}


class Crash(BaseException):
    """The agent process dies here (nothing below it runs; only a restart continues)."""


# --- the command line ---------------------------------------------------------------------------


def test_parse_command_reads_device_and_duration_and_refuses_the_rest() -> None:
    assert parse_command("/logs", max_minutes=120) == LogsCommand()
    assert parse_command("/LOGS 45", max_minutes=120) == LogsCommand(minutes=45)
    assert parse_command("/logs 2h", max_minutes=120) == LogsCommand(minutes=120)
    assert parse_command("/logs a30-sala", max_minutes=120) == LogsCommand("a30-sala")
    assert parse_command("/logs a30-sala 60m", max_minutes=120) == LogsCommand("a30-sala", 60)
    for line, why in [
        ("/log", "unknown command '/log'"),
        ("/logsx a30", "unknown command '/logsx'"),
        ("/logs foo bar baz", "too many words"),
        ("/logs a30-sala soon", "'soon' is not a duration"),
        ("/logs a30-sala 3h", "longer than the 120 minutes"),
        ("/logs 0m", "at least 1 minute"),
        ("/logs ../../etc", "is not a device id"),
    ]:
        with pytest.raises(CommandError, match=re.escape(why)):
            parse_command(line, max_minutes=120)


def test_only_a_first_line_starting_with_slash_log_is_a_command_and_never_the_agents_own() -> None:
    assert looks_like_command("\n  /logs a30 60m\nthe camera froze at 10:02")
    assert looks_like_command("/log")
    assert not looks_like_command("please run /logs")
    assert not looks_like_command("")
    assert is_agent_comment("/logs\n\n[hezo:0123456789abcdef]")
    assert not is_agent_comment("/logs [hezo:0123456789abcdef] quoted inside a line")


def test_allowed_authors_are_whole_names_and_an_empty_list_allows_nobody() -> None:
    settings = CommandSettings(allowed_authors=(" Jan.Nowak@hezo.example ", "360012345678"))
    assert settings.active and settings.allows(ENGINEER) and settings.allows("360012345678")
    assert not any(settings.allows(name) for name in ("nowak@hezo.example", "36001234567", "", " "))
    assert not CommandSettings().active and not CommandSettings().allows(ENGINEER)
    assert not CommandSettings(enabled=False, allowed_authors=(ENGINEER,)).active


# --- against the simulator, local backend --------------------------------------------------------


@pytest.fixture
def fleet(fleet_factory: Callable[..., Fleet]) -> Fleet:
    return fleet_factory(devices=2, seed=11)


def start_agent(fleet: Fleet, tmp_path: Path, clock: FakeClock) -> Agent:
    return make_agent(fleet, tmp_path, clock, commands=COMMANDS, bundles=BUNDLES)


def local(agent_: Agent) -> LocalBackend:
    assert isinstance(agent_.backend, LocalBackend)
    return agent_.backend


def offline_ticket(fleet: Fleet, tmp_path: Path, clock: FakeClock) -> tuple[Agent, str, LocalTicket]:
    """An agent whose first device went offline: its critical ticket is open in the local helpdesk."""
    agent_ = start_agent(fleet, tmp_path, clock)
    poll_all(agent_, clock)
    device = fleet.devices[0].id
    take_offline(agent_, fleet, clock, device)
    [ticket] = local(agent_).tickets(open_only=True)
    assert ticket.fields["device"] == device
    return agent_, device, ticket


def replies(agent_: Agent, ticket_id: str) -> list[str]:
    return [c.body for c in local(agent_).ticket(ticket_id).comments if c.author == AGENT_AUTHOR]


def pulls(agent_: Agent) -> list[Any]:
    audit = AuditLog(agent_.store.path)
    try:
        return [e for e in audit.entries() if e.channel == "ticket"]
    finally:
        audit.close()


def test_logs_comment_on_an_offline_ticket_attaches_the_bundle_once_with_its_sha256(
    fleet: Fleet, tmp_path: Path
) -> None:
    clock = FakeClock()
    agent_, device, ticket = offline_ticket(fleet, tmp_path, clock)
    try:
        before = len(local(agent_).ticket(ticket.id).attachments)
        asked = local(agent_).add_comment(ticket.id, ENGINEER, "/logs\nthe bar went dark at 10:02, please")
        report = agent_.ticket_commands.run_once()
        assert (report.commands, report.pulls, report.answered, report.errors) == (1, 1, 1, [])

        after = local(agent_).ticket(ticket.id)
        [bundle] = after.attachments[before:]
        [reply] = [body for body in replies(agent_, ticket.id) if "/logs:" in body]
        said = SHA_LINE.search(reply)
        assert said is not None, reply
        assert said["name"] == bundle.name and int(said["size"]) == bundle.size_bytes
        assert said["sha"] == bundle.sha256 == hashlib.sha256(bundle.path.read_bytes()).hexdigest()
        assert f"Device {device}, the last 30 min" in reply and ENGINEER in reply
        with tarfile.open(bundle.path) as tar:
            member = tar.extractfile("manifest.json")
            assert member is not None
            manifest = json.load(member)
        assert manifest["device"]["id"] == device
        assert manifest["requested_by"] == {
            "channel": "ticket", "who": ENGINEER, "ref": f"{ticket.key} comment {asked.id}",
        }  # fmt: skip
        assert {f["source"] for f in manifest["failed"]} >= {"http"}  # offline: listed, not fatal

        [entry] = pulls(agent_)
        assert (entry.requester, entry.ref, entry.device_id, entry.sha256, entry.size_bytes) == (
            ENGINEER, f"{ticket.key} comment {asked.id}", device, bundle.sha256, bundle.size_bytes,
        )  # fmt: skip
        assert entry.until is not None and entry.since == entry.until - timedelta(minutes=30)

        clock.advance(60)
        assert agent_.ticket_commands.run_once().commands == 0  # handled: not again
    finally:
        agent_.stop()
    again = start_agent(fleet, tmp_path, clock)  # a restart reads the same comments
    try:
        assert again.ticket_commands.run_once().commands == 0
        assert len(local(again).ticket(ticket.id).attachments) == before + 1
        assert len([b for b in replies(again, ticket.id) if "/logs" in b]) == 1
        assert len(pulls(again)) == 1
    finally:
        again.stop()


def test_logs_for_another_device_and_range_pulls_that_device(fleet: Fleet, tmp_path: Path) -> None:
    clock = FakeClock()
    agent_, _device, ticket = offline_ticket(fleet, tmp_path, clock)
    other = fleet.devices[1].id
    try:
        local(agent_).add_comment(ticket.id, "Anna Kowalska", f"/logs {other} 45m")
        assert agent_.ticket_commands.run_once().answered == 1
        [entry] = pulls(agent_)
        assert entry.device_id == other and entry.outcome in ("ok", "partial")
        assert entry.until is not None and entry.since == entry.until - timedelta(minutes=45)
        [reply] = [b for b in replies(agent_, ticket.id) if "/logs:" in b]
        said = SHA_LINE.search(reply)
        assert said is not None and said["sha"] == entry.sha256
        assert f"Device {other}, the last 45 min" in reply
    finally:
        agent_.stop()


def test_wrong_commands_of_allowed_authors_get_the_usage_and_pull_nothing(
    fleet: Fleet, tmp_path: Path
) -> None:
    clock = FakeClock()
    agent_, device, ticket = offline_ticket(fleet, tmp_path, clock)
    try:
        before = len(local(agent_).ticket(ticket.id).attachments)
        for text in ("/logs foo bar baz", "/log", "/logs unknown-device", f"/logs {device} 9h"):
            local(agent_).add_comment(ticket.id, ENGINEER, text)
        report = agent_.ticket_commands.run_once()
        assert report.answered == 4 and report.errors == []
        answers = [b for b in replies(agent_, ticket.id) if "Usage: /logs [DEVICE] [DURATION]" in b]
        assert len(answers) == 4
        assert "too many words" in answers[0]
        assert "unknown command '/log'" in answers[1]
        assert "unknown device 'unknown-device'" in answers[2] and device in answers[2]
        assert "longer than the 120 minutes" in answers[3]
        assert all("Nothing was pulled" in a and "SHA-256" not in a for a in answers)
        assert len(local(agent_).ticket(ticket.id).attachments) == before
        [refused] = pulls(agent_)  # the unknown device was refused by the builder, and audited
        assert (refused.device_id, refused.outcome) == ("unknown-device", "rejected")
        assert refused.requester == ENGINEER
        assert agent_.ticket_commands.run_once().answered == 0
    finally:
        agent_.stop()


def test_comments_of_other_authors_and_of_the_agent_itself_do_nothing(
    fleet: Fleet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    agent_, _device, ticket = offline_ticket(fleet, tmp_path, clock)
    try:
        comments_before = len(local(agent_).ticket(ticket.id).comments)
        attachments_before = len(local(agent_).ticket(ticket.id).attachments)
        local(agent_).add_comment(ticket.id, "mallory@example.com", "/logs")
        local(agent_).add_comment(ticket.id, "jan.nowak@hezo.example.evil", "/logs")
        local(agent_).add_comment(ticket.id, ENGINEER, "/logs\n\n[hezo:0123456789abcdef]")  # the agent's own
        with caplog.at_level(logging.INFO, logger="hezo.commands"):
            report = agent_.ticket_commands.run_once()
            assert agent_.ticket_commands.run_once().ignored == 0  # logged once, not every round
        assert (report.commands, report.pulls, report.answered, report.ignored) == (0, 0, 0, 2)
        after = local(agent_).ticket(ticket.id)
        assert len(after.comments) == comments_before + 3 and len(after.attachments) == attachments_before
        assert pulls(agent_) == []
        ignored = [r.getMessage() for r in caplog.records if "ticket_command_ignored" in r.getMessage()]
        assert len(ignored) == 2 and "author=mallory@example.com" in ignored[0]
        ledger = CommandLedger(agent_.data_dir / STATE_FILE)
        try:
            assert [(r.author, r.state) for r in ledger.rows()] == [
                ("mallory@example.com", "ignored"), ("jan.nowak@hezo.example.evil", "ignored"),
            ]  # fmt: skip
        finally:
            ledger.close()
    finally:
        agent_.stop()


def test_nobody_allowed_means_comments_are_not_read(fleet: Fleet, tmp_path: Path) -> None:
    clock = FakeClock()
    agent_ = make_agent(fleet, tmp_path, clock, bundles=BUNDLES)
    try:
        assert not agent_.ticket_commands.active
        assert agent_.ticket_commands.run_once().tickets == 0
        assert not (agent_.data_dir / STATE_FILE).exists()
    finally:
        agent_.stop()


def test_a_started_agent_reads_comments_every_poll_s(fleet: Fleet, tmp_path: Path) -> None:
    agent_ = make_agent(fleet, tmp_path, FakeClock(), commands={**COMMANDS, "poll_s": 90})
    agent_.start()
    try:
        scheduler = agent_._scheduler
        assert scheduler is not None
        job = scheduler._scheduler.get_job("ticket-commands")
        assert job is not None and job.trigger.interval == timedelta(seconds=90)
        assert job.func == agent_.ticket_commands.run_once
    finally:
        agent_.stop()


# --- crashes: each command runs to one answer ------------------------------------------------------


def crash_at(monkeypatch: pytest.MonkeyPatch, target: object, name: str) -> None:
    """Make ``target.name`` kill the "process" whenever it is called."""

    def die(*_args: object, **_kwargs: object) -> None:
        raise Crash(name)

    monkeypatch.setattr(target, name, die)


def test_crash_mid_pull_reruns_the_command_once_after_restart_and_answers_once(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    agent_, _device, ticket = offline_ticket(fleet, tmp_path, clock)
    local(agent_).add_comment(ticket.id, ENGINEER, "/logs")
    with monkeypatch.context() as patch:
        crash_at(patch, agent.bundle, "collect_bundle")
        with pytest.raises(Crash):
            agent_.ticket_commands.run_once()
    agent_.stop()
    ledger = CommandLedger(tmp_path / "data" / STATE_FILE)
    [row] = ledger.rows()
    ledger.close()
    assert (row.state, row.attempts) == ("running", 1)  # recorded before the pull began

    again = start_agent(fleet, tmp_path, clock)
    try:
        report = again.ticket_commands.run_once()
        assert (report.commands, report.pulls, report.answered) == (1, 1, 1)
        assert len([b for b in replies(again, ticket.id) if "/logs:" in b]) == 1
        [entry] = pulls(again)
        assert entry.outcome in ("partial", "failed") and entry.sha256
        assert again.ticket_commands.run_once().commands == 0
    finally:
        again.stop()


def test_crash_after_the_answer_was_queued_does_not_pull_or_answer_again(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    agent_, _device, ticket = offline_ticket(fleet, tmp_path, clock)
    local(agent_).add_comment(ticket.id, ENGINEER, "/logs")
    with monkeypatch.context() as patch:
        crash_at(patch, CommandLedger, "finish")  # the answer is in the outbox; "done" never written
        with pytest.raises(Crash):
            agent_.ticket_commands.run_once()
    agent_.stop()

    again = start_agent(fleet, tmp_path, clock)
    try:
        report = again.ticket_commands.run_once()
        assert (report.commands, report.pulls, report.answered) == (1, 0, 0)
        assert len([b for b in replies(again, ticket.id) if "/logs:" in b]) == 1
        assert len(pulls(again)) == 1
        ledger = CommandLedger(again.data_dir / STATE_FILE)
        [row] = ledger.rows()
        ledger.close()
        assert (row.state, row.attempts, row.detail) == ("done", 2, "answer already in the outbox")
    finally:
        again.stop()


def test_a_command_that_crashes_the_agent_twice_is_answered_once_and_not_run_again(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    agent_, _device, ticket = offline_ticket(fleet, tmp_path, clock)
    local(agent_).add_comment(ticket.id, ENGINEER, "/logs")
    agent_.stop()
    with monkeypatch.context() as patch:
        crash_at(patch, agent.bundle, "collect_bundle")
        for _ in range(2):
            crashed = start_agent(fleet, tmp_path, clock)
            with pytest.raises(Crash):
                crashed.ticket_commands.run_once()
            crashed.stop()
    last = start_agent(fleet, tmp_path, clock)
    try:
        report = last.ticket_commands.run_once()
        assert (report.commands, report.pulls, report.answered) == (1, 0, 1)
        [gave_up] = [b for b in replies(last, ticket.id) if "/logs" in b]
        assert "did not finish after 2 attempts" in gave_up
        assert last.ticket_commands.run_once().commands == 0
        assert pulls(last) == []
    finally:
        last.stop()


# --- through a REST backend: Zendesk -------------------------------------------------------------

BASE = "https://hezo-test.zendesk.com"
KEY = "warszawa/a30-sala/offline/1"
REF = TicketRef("zendesk", "35436", f"{BASE}/agent/tickets/35436")
ALLOWED_ID = "360012345678"
NOW = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def _comment(cid: int, author: int | str, body: str, when: datetime) -> dict[str, object]:
    return {
        "id": cid, "type": "Comment", "author_id": int(author), "body": body, "plain_body": body,
        "html_body": f"<p>{body}</p>", "public": False, "attachments": [],
        "created_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }  # fmt: skip


def _fake_bundle(folder: Path) -> Callable[[str, Requester, timedelta], BundleResult]:
    def pull(device_id: str, requester: Requester, span: timedelta) -> BundleResult:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{device_id}-20260105T100000Z.tar.gz"
        data = json.dumps({"device": device_id, "who": requester.who, "ref": requester.ref,
                           "minutes": span.total_seconds() / 60}).encode()  # fmt: skip
        with tarfile.open(path, "w:gz") as tar:
            info = tarfile.TarInfo("manifest.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return BundleResult(path, digest, path.stat().st_size, {"failed": []}, "ok", 7)

    return pull


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def test_the_watcher_works_through_zendesks_comment_listing(
    tmp_path: Path, rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(NOW)
    settings = ZendeskSettings(url=BASE, email="agent@example.com", token_env="HEZO_ZENDESK_TOKEN")
    backend = ZendeskBackend(
        settings, "zendesk-token-41", journal_path=tmp_path / "journal.sqlite", clock=clock
    )
    outbox = Outbox(backend, tmp_path / "outbox.sqlite", clock=clock)
    watcher = TicketCommandWatcher(
        CommandSettings(allowed_authors=(ALLOWED_ID,)),
        backend=backend,
        sink=outbox,
        tickets=lambda: [OpenTicket(KEY, REF, "a30-sala", Priority.CRITICAL)],
        pull=_fake_bundle(tmp_path / "bundles"),
        state_path=tmp_path / STATE_FILE,
        clock=clock,
        default_minutes=30,
        answered=outbox.store.is_known,
    )
    comments = [
        _comment(1, 900, "The device stopped answering.", NOW - timedelta(minutes=50)),
        _comment(2, ALLOWED_ID, "/logs a30-sala 60m", NOW - timedelta(days=3)),  # too old: not run
        _comment(3, 555, "/logs", NOW - timedelta(minutes=5)),  # an end user: not allowed
        _comment(4, ALLOWED_ID, "/logs 20m\nthanks", NOW - timedelta(minutes=2)),
    ]
    listing = rsps.get(f"{BASE}/api/v2/tickets/35436/comments", json={"comments": comments, "meta": {}})
    lookup = rsps.get(
        f"{BASE}/api/v2/tickets", json={"tickets": [{"id": 35436, "external_id": key_tag(KEY)}]}
    )
    upload = rsps.post(f"{BASE}/api/v2/uploads", json={"upload": {"token": "tok-1"}}, status=201)
    update = rsps.put(f"{BASE}/api/v2/tickets/35436", json={"ticket": {"id": 35436}})
    try:
        report = watcher.run_once()
        assert (report.tickets, report.commands, report.pulls) == (1, 1, 1)
        assert (report.answered, report.ignored) == (1, 2)
        assert lookup.call_count == 1 and upload.call_count == 1
        uploaded = upload.calls[0].request.body
        assert isinstance(uploaded, bytes)
        with tarfile.open(fileobj=io.BytesIO(uploaded)) as tar:
            member = tar.extractfile("manifest.json")
            assert member is not None
            assert json.load(member) == {"device": "a30-sala", "who": ALLOWED_ID, "ref": f"{KEY} comment 4",
                                         "minutes": 20.0}  # fmt: skip
        bodies = [json.loads(call.request.body or b"{}")["ticket"]["comment"] for call in update.calls]
        assert bodies[0]["uploads"] == ["tok-1"]
        [reply] = [b["body"] for b in bodies if "/logs:" in b["body"]]
        said = SHA_LINE.search(reply)
        assert said is not None and said["sha"] == hashlib.sha256(uploaded).hexdigest()
        assert int(said["size"]) == len(uploaded)
        assert is_agent_comment(reply)  # carries the outbox marker: never read back as a command

        puts = update.call_count
        comments.append(_comment(5, 123, reply, NOW))  # the agent's answer, as Zendesk lists it
        rsps.replace(responses.GET, f"{BASE}/api/v2/tickets/35436/comments", json={"comments": comments})
        clock.advance(60)
        assert watcher.run_once().commands == 0
        assert update.call_count == puts and upload.call_count == 1
        assert listing.call_count == 1
    finally:
        outbox.close()
        backend.close()
