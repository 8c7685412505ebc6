"""Incidents end to end through the state machine: one ticket per outage, resolved on recovery."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.incidents import IncidentManager
from agent.models import PollOutcome
from agent.state import DeviceState, Health, Policy, step
from agent.store import Store
from agent.ticket_text import SEED_FIELDS
from collectors.models import CheckResult, DeviceFacts, HealthSample
from config.schema import AgentConfig
from uploader.intents import Intent, IntentKind
from uploader.models import Attachment, Priority

PASSWORD = "Hezo-Secret-Pw-123"
SERIALS = {"a30-zarzad": "803000000001", "a20-recepcja": "802000000002", "mvc-duza": "900000000003"}


def make_config() -> AgentConfig:
    raw: dict[str, Any] = {
        "agent": {"language": "en", "down_after": 3, "up_after": 2},
        "sites": [
            {
                "name": "warszawa-hq",
                "address": "ul. Prosta 20, 00-850 Warszawa",
                "contact": {
                    "name": "Anna Nowak",
                    "phone": "+48 600 100 200",
                    "email": "anna.nowak@example.com",
                },
            }
        ],
        "contracts": [
            {
                "number": "HZ-2025-0042",
                "start": "2025-01-01",
                "end": "2027-12-31",
                "serials": [SERIALS["a30-zarzad"], SERIALS["a20-recepcja"]],
            }
        ],
        "devices": [
            {
                "id": dev_id,
                "room": room,
                "site": "warszawa-hq",
                "model": model,
                "host": "127.0.0.1",
                "credentials": {"username": "admin", "password_env": "HEZO_TEST_INCIDENT_PW"},
            }
            for dev_id, room, model in (
                ("a30-zarzad", "Sala Zarząd", "A30"),
                ("a20-recepcja", "Recepcja", "A20"),
                ("mvc-duza", "Duża sala", "MVC"),
            )
        ],
    }
    return AgentConfig.model_validate(raw)


class RecordingSink:
    """A ticket sink that only remembers what it was given."""

    def __init__(self) -> None:
        self.intents: list[Intent] = []

    def submit(self, intent: Intent) -> None:
        self.intents.append(intent)

    def kinds(self) -> list[IntentKind]:
        return [i.kind for i in self.intents]


class Harness:
    """The daemon's per-poll pipeline, minus the network: outcome → store → state → incidents."""

    def __init__(
        self, tmp_path: Path, clock: FakeClock | None = None, sink: RecordingSink | None = None
    ) -> None:
        self.tmp_path = tmp_path
        self.config = make_config()
        self.clock = clock or FakeClock()
        self.sink = sink or RecordingSink()
        self.policy = Policy(down_after=3, up_after=2)
        self.log_file = tmp_path / "a30-zarzad-log.tar.gz"
        self.log_file.write_bytes(b"log bytes")
        self.store = Store(tmp_path / "agent.sqlite")
        self.manager = self._manager()
        self.states = {
            d.id: self.store.load_state(d.id) or DeviceState.initial() for d in self.config.devices
        }

    def _manager(self) -> IncidentManager:
        return IncidentManager(self.config, self.store, self.sink, self.clock, attachment_for=self.attachment)

    def attachment(self, device_id: str) -> Attachment | None:
        if device_id != "a30-zarzad":
            return None
        return Attachment(name=self.log_file.name, path=self.log_file, content_type="application/gzip")

    def restart(self) -> None:
        """Drop everything in memory and reopen from the same files."""
        self.store.close()
        self.store = Store(self.tmp_path / "agent.sqlite")
        self.manager = self._manager()
        self.states = {
            d.id: self.store.load_state(d.id) or DeviceState.initial() for d in self.config.devices
        }

    def poll(self, device_id: str, ok: bool, reason: str = "") -> None:
        at = self.clock.now()
        if ok:
            facts = DeviceFacts(
                model=self.config.device(device_id).model,
                firmware="133.15.0.20",
                serial=SERIALS[device_id],
                mac="00:15:65:00:00:01",
            )
            checks = (CheckResult("https_api", True, 12.0), CheckResult("peripherals", True, 3.0))
            sample = HealthSample(device_id, at, facts, uptime_s=3600, checks=checks)
            outcome = PollOutcome(device_id, at, True, "ok", 0.05, sample=sample, checks=checks)
        else:
            outcome = PollOutcome(
                device_id, at, False, reason or "unreachable", 1.0, detail="connection refused"
            )
        self.store.record_outcome(outcome)
        if outcome.sample is not None:
            self.store.save_facts(device_id, outcome.sample.facts, at)
        state, events = step(self.states[device_id], outcome, self.policy)
        self.states[device_id] = state
        self.store.save_state(device_id, state)
        if events:
            self.manager.handle(device_id, events)

    def run(self, device_id: str, pattern: str, every_s: float = 10.0) -> None:
        for char in pattern:
            self.poll(device_id, char == "o")
            self.clock.advance(every_s)

    def everyone_ok(self, rounds: int) -> None:
        for _ in range(rounds):
            for dev in self.config.devices:
                self.poll(dev.id, True)
            self.clock.advance(60)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.store.close()


def test_healthy_fleet_submits_nothing(harness: Harness) -> None:
    harness.everyone_ok(10)
    assert harness.sink.intents == []
    assert {s.health for s in harness.states.values()} == {Health.UP}


@pytest.mark.parametrize("missed", [1, 2])
def test_one_or_two_missed_polls_submit_nothing(harness: Harness, missed: int) -> None:
    harness.everyone_ok(2)
    harness.run("a30-zarzad", "x" * missed + "oooo")
    assert harness.sink.intents == []
    assert harness.store.incidents() == []


def test_three_missed_polls_open_one_critical_ticket_with_every_field_and_the_log(harness: Harness) -> None:
    harness.everyone_ok(2)
    harness.run("a30-zarzad", "x" * 3)
    assert harness.sink.kinds() == [IntentKind.OPEN]
    harness.run("a30-zarzad", "x" * 10)
    assert harness.sink.kinds() == [IntentKind.OPEN], "more failures must not open more tickets"

    (intent,) = harness.sink.intents
    incident = harness.store.open_incident_for("warszawa-hq/a30-zarzad/offline")
    assert incident is not None
    assert intent.ticket_key == f"warszawa-hq/a30-zarzad/offline#{incident.id}" == incident.ticket_key
    assert intent.idempotency_key == f"{intent.ticket_key}:open"
    assert intent.priority is Priority.CRITICAL
    ticket = intent.ticket
    assert ticket is not None and ticket.priority is Priority.CRITICAL
    assert ticket.key == intent.ticket_key, "the backend dedups on the ticket key: it must name this incident"
    assert set(SEED_FIELDS) <= set(ticket.fields)
    f = ticket.fields
    assert (f["device"], f["model"], f["serial"], f["firmware"], f["mac"]) == (
        "a30-zarzad",
        "A30",
        SERIALS["a30-zarzad"],
        "133.15.0.20",
        "00:15:65:00:00:01",
    )
    assert f["contract"] == "HZ-2025-0042" and f["contract_valid"] is True
    assert (f["site"], f["room"], f["problem"], f["priority"]) == (
        "warszawa-hq",
        "Sala Zarząd",
        "offline",
        "critical",
    )
    assert f["address"] == "ul. Prosta 20, 00-850 Warszawa" and f["contact_phone"] == "+48 600 100 200"
    assert f["last_seen"] == "2026-01-05T09:01:00+00:00"
    assert ticket.title.startswith('[critical] A30 "Sala Zarząd" offline')
    assert "- poll: connection refused" in ticket.body, "the failing poll is the failed service test"
    assert [a.path for a in intent.attachments] == [harness.log_file]
    assert harness.log_file.name in ticket.body


def test_recovery_comments_then_resolves_the_same_ticket(harness: Harness) -> None:
    harness.everyone_ok(1)
    harness.run("a30-zarzad", "xxx" + "x" * 60, every_s=10)  # 63 failures, 630 s
    harness.run("a30-zarzad", "o")
    assert harness.sink.kinds() == [IntentKind.OPEN], "one good poll is not a recovery"
    harness.run("a30-zarzad", "o")
    assert harness.sink.kinds() == [IntentKind.OPEN, IntentKind.COMMENT, IntentKind.RESOLVE]
    opened, comment, resolve = harness.sink.intents
    assert comment.ticket_key == resolve.ticket_key == opened.ticket_key
    assert comment.idempotency_key == f"{opened.ticket_key}:recovered"
    assert resolve.idempotency_key == f"{opened.ticket_key}:resolve"
    # first failure at 60 s, recovery confirmed at 60 + 640 s: 640 s down
    assert "10 min 40 s" in comment.body and "recovered" in comment.body
    assert harness.store.incidents(open_only=True) == []
    (done,) = harness.store.incidents()
    assert done.status == "resolved" and done.resolved_at is not None


def test_a_second_outage_after_the_reopen_window_opens_a_new_ticket(harness: Harness) -> None:
    harness.everyone_ok(1)
    harness.run("a30-zarzad", "xxxoo")
    harness.clock.advance(24 * 3600 + 60)  # the default reopen window is 24 h
    harness.run("a30-zarzad", "xxxxoo")
    kinds = harness.sink.kinds()
    assert kinds == [IntentKind.OPEN, IntentKind.COMMENT, IntentKind.RESOLVE] * 2
    first, second = (i for i in harness.sink.intents if i.kind is IntentKind.OPEN)
    assert first.ticket_key != second.ticket_key
    assert first.idempotency_key != second.idempotency_key
    assert len(harness.store.incidents()) == 2


def test_a_recurrence_within_the_reopen_window_reopens_the_same_ticket(harness: Harness) -> None:
    harness.everyone_ok(1)
    harness.run("a30-zarzad", "xxxoo")
    harness.clock.advance(3600)
    harness.run("a30-zarzad", "xxxxoo")
    assert harness.sink.kinds() == [
        IntentKind.OPEN, IntentKind.COMMENT, IntentKind.RESOLVE,
        IntentKind.REOPEN, IntentKind.ATTACH, IntentKind.COMMENT, IntentKind.RESOLVE,
    ]
    assert len({i.ticket_key for i in harness.sink.intents}) == 1, "one problem, one ticket"
    keys = [i.idempotency_key for i in harness.sink.intents]
    assert len(set(keys)) == len(keys), "each life of the ticket has its own idempotency keys"
    reopen = harness.sink.intents[3]
    assert "is back" in reopen.body and "offline" in reopen.body
    (incident,) = harness.store.incidents()
    assert incident.reopen_count == 1 and incident.status == "resolved"


def test_restart_during_outage_resolves_the_same_ticket_without_a_second_open(harness: Harness) -> None:
    harness.everyone_ok(1)
    harness.run("a30-zarzad", "xxxx")
    (opened,) = harness.sink.intents
    harness.restart()
    assert harness.states["a30-zarzad"].health is Health.DOWN
    harness.run("a30-zarzad", "xx")
    harness.run("a30-zarzad", "oo")
    assert harness.sink.kinds() == [IntentKind.OPEN, IntentKind.COMMENT, IntentKind.RESOLVE]
    assert {i.ticket_key for i in harness.sink.intents} == {opened.ticket_key}


def test_went_down_while_open_does_nothing_new(harness: Harness) -> None:
    harness.everyone_ok(1)
    harness.run("a30-zarzad", "xx")
    _state, events = step(
        harness.states["a30-zarzad"],
        PollOutcome("a30-zarzad", harness.clock.now(), False, "timeout", 5.0),
        harness.policy,
    )
    harness.manager.handle("a30-zarzad", events)
    harness.manager.handle("a30-zarzad", events)
    assert harness.sink.kinds() == [IntentKind.OPEN]
    assert len(harness.store.incidents(open_only=True)) == 1


def test_device_never_seen_and_out_of_contract_still_gets_a_ticket(harness: Harness) -> None:
    harness.run("mvc-duza", "xxx")
    (intent,) = harness.sink.intents
    assert intent.ticket is not None
    f = intent.ticket.fields
    assert f["serial"] is None and f["contract"] is None and f["contract_valid"] is False
    assert "NOT COVERED by a HEZO+ contract" in intent.ticket.body
    assert intent.attachments == ()


def test_outages_of_two_devices_are_two_tickets(harness: Harness) -> None:
    harness.everyone_ok(1)
    for _ in range(3):
        harness.poll("a30-zarzad", False)
        harness.poll("a20-recepcja", False)
        harness.clock.advance(10)
    keys = {i.ticket_key for i in harness.sink.intents}
    assert harness.sink.kinds() == [IntentKind.OPEN, IntentKind.OPEN] and len(keys) == 2


def test_reconcile_after_a_crash_between_state_and_incident(harness: Harness) -> None:
    harness.everyone_ok(1)
    # a crash lost the WentDown: the state says DOWN but no incident exists
    down = harness.states["a30-zarzad"]
    for _ in range(3):
        down, _lost = step(
            down, PollOutcome("a30-zarzad", harness.clock.now(), False, "timeout", 5.0), harness.policy
        )
        harness.clock.advance(10)
    harness.manager.reconcile({"a30-zarzad": down, "a20-recepcja": harness.states["a20-recepcja"]})
    assert harness.sink.kinds() == [IntentKind.OPEN]
    # reconciling again re-submits the same open (the sink dedups it by idempotency key)
    harness.manager.reconcile({"a30-zarzad": down})
    assert [i.idempotency_key for i in harness.sink.intents] == [harness.sink.intents[0].idempotency_key] * 2
    # the device came back while the agent was stopped: the incident is resolved
    up = down
    for _ in range(2):
        up, _lost = step(up, PollOutcome("a30-zarzad", harness.clock.now(), True, "ok", 0.1), harness.policy)
        harness.clock.advance(10)
    assert up.health is Health.UP
    harness.manager.reconcile({"a30-zarzad": up})
    assert harness.sink.kinds()[-2:] == [IntentKind.COMMENT, IntentKind.RESOLVE]
    assert harness.store.incidents(open_only=True) == []


def test_unknown_device_is_ignored(harness: Harness) -> None:
    harness.everyone_ok(1)
    _state, events = step(
        DeviceState.initial(),
        PollOutcome("gone", harness.clock.now(), False, "timeout", 1.0),
        Policy(down_after=1),
    )
    harness.manager.handle("gone", events)
    assert harness.sink.intents == []


def test_polish_tickets_when_configured(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        h.config = h.config.model_copy(update={"agent": h.config.agent.model_copy(update={"language": "pl"})})
        h.manager = h._manager()
        h.everyone_ok(1)
        h.run("a30-zarzad", "xxxoo")
        opened, comment, _resolve = h.sink.intents
        assert opened.ticket is not None and opened.ticket.title.startswith("[krytyczny]")
        assert "znowu działa" in comment.body
    finally:
        h.store.close()


def test_logs_one_line_per_change_and_no_secret(
    harness: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEZO_TEST_INCIDENT_PW", PASSWORD)
    caplog.set_level(logging.INFO, logger="hezo.incidents")
    harness.everyone_ok(1)
    harness.run("a30-zarzad", "xxxxxoo")
    lines = [r.getMessage() for r in caplog.records if r.name == "hezo.incidents"]
    assert [line.split()[0] for line in lines] == ["event=incident_opened", "event=incident_resolved"]
    assert "key=warszawa-hq/a30-zarzad/offline" in lines[0] and "priority=critical" in lines[0]
    assert all(PASSWORD not in line for line in lines)
    assert all(PASSWORD not in (i.body + (i.ticket.body if i.ticket else "")) for i in harness.sink.intents)
