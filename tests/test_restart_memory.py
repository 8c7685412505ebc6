"""Flapping and finding tracks outlive a restart, and a poll is one store transaction (issues 5, 9).

Restart tests build an Agent on a data dir, drive scripted devices with the fake clock, stop
it, build a new Agent on the same data dir, run its start-up repair (:meth:`Agent.reconcile`,
which :meth:`Agent.start` runs) and carry on: a device flapping before is still flapping after
with its one medium ticket, an open finding ticket is neither doubled nor orphaned.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from scripted import Script, scripted_agent, site

from agent.clock import FakeClock
from agent.daemon import Agent
from agent.finding_models import Finding, ProblemKind
from agent.finding_tracker import (
    FindingTracker,
    OpenTicket,
    Track,
    reconcile,
    tracker_from_json,
    tracker_to_json,
)
from agent.flapping import FlapState, flap_step, replay
from agent.models import PollOutcome
from agent.state import DeviceState
from agent.store import SCHEMA_VERSION, Store
from collectors.models import Peripheral
from config.quiet import FlappingSettings
from uploader.backends.local import LocalBackend, LocalTicket
from uploader.models import Priority

MONDAY = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
PLUGGED = tuple(
    Peripheral(kind, f"{kind} 1", True) for kind in ("camera", "microphone", "speaker", "touch_panel")
)
CAMERA_OUT = tuple(dataclasses.replace(p, connected=p.kind != "camera") for p in PLUGGED)
CAMERA = "peripheral:camera"


def raw_config(**extra: Any) -> dict[str, Any]:
    return {
        "sites": [site("hq")],
        "devices": [
            {"id": f"hq-{i}", "room": f"Room {i}", "site": "hq", "model": "A30", "host": f"127.0.9.{i}"}
            for i in (1, 2)
        ],
        "incidents": {"peripheral": {"raise_after": 3, "clear_after": 3}},
        **extra,
    }


class Fleet:
    """One data dir, one fake clock, one scripted fleet; agents come and go over it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.clock = FakeClock(MONDAY)
        self.scripts: dict[str, Script] = {}
        self.agent = self.boot()

    def boot(self, **extra: Any) -> Agent:
        """Build an agent on the data dir (keeping the devices' scripts) and run its start-up repair."""
        agent, scripts = scripted_agent(self.tmp_path, raw_config(**extra), self.clock)
        for device_id, script in scripts.items():  # the devices do not change with the agent
            old = self.scripts.get(device_id)
            script.up, script.peripherals = (old.up, old.peripherals) if old else (True, PLUGGED)
        self.scripts = scripts
        agent.reconcile()
        return agent

    def restart(self, between: Any = None, **extra: Any) -> Agent:
        """Stop the agent, run ``between(store_path)`` while it is down, start a new one (``extra``:
        top-level config keys of the new one)."""
        self.agent.stop()
        if between is not None:
            between(self.tmp_path / "data" / "agent.sqlite")
        self.agent = self.boot(**extra)
        return self.agent

    def rounds(self, n: int) -> None:
        for _ in range(n):
            for dev in self.agent.config.devices:
                self.agent.poll_once(dev.id)
            self.clock.advance(60)

    def tickets(self) -> list[LocalTicket]:
        assert isinstance(self.agent.backend, LocalBackend)
        self.agent.dispatcher.flush()
        return self.agent.backend.tickets()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        f.agent.stop()


def run_sql(*statements: str) -> Any:
    """``between`` for :meth:`Fleet.restart`: change the store file while no agent runs."""

    def between(path: Path) -> None:
        db = sqlite3.connect(path)
        try:
            for statement in statements:
                db.execute(statement)
            db.commit()
        finally:
            db.close()

    return between


# --- flapping ------------------------------------------------------------------------------


def flap(fleet: Fleet, rounds: int, start: int = 0) -> None:
    for i in range(start, start + rounds):
        fleet.scripts["hq-1"].up = i % 2 == 1
        fleet.rounds(1)


@pytest.mark.parametrize("lost", [False, True], ids=["saved", "store-before-v4"])
def test_a_device_flapping_before_a_restart_is_still_flapping_after_with_its_one_ticket(
    fleet: Fleet, lost: bool
) -> None:
    fleet.rounds(1)
    flap(fleet, 30)
    before = fleet.agent.flaps["hq-1"]
    assert before.flapping
    (ticket,) = fleet.tickets()
    assert (ticket.fields["problem"], str(ticket.priority), ticket.status) == ("flapping", "medium", "open")

    # "store-before-v4": no flap state saved, as after an upgrade: it is replayed from the recorded polls
    fleet.restart(run_sql("DELETE FROM flaps") if lost else None)
    after = fleet.agent.flaps["hq-1"]
    assert after.flapping
    assert after == before if not lost else after.history == before.history
    flap(fleet, 20, start=30)  # it goes on flapping: no second ticket, no critical offline one
    (ticket,) = fleet.tickets()
    assert (ticket.fields["problem"], ticket.status) == ("flapping", "open")

    fleet.scripts["hq-1"].up = True
    fleet.rounds(25)
    (ticket,) = fleet.tickets()
    assert ticket.status == "resolved"


def test_a_flapping_ticket_is_resolved_at_start_once_flap_detection_is_off(fleet: Fleet) -> None:
    fleet.rounds(1)
    flap(fleet, 30)
    assert [t.status for t in fleet.tickets()] == ["open"]
    fleet.restart(flapping={"enabled": False})  # detection switched off: nothing would ever clear it
    assert not fleet.agent.flaps["hq-1"].flapping
    assert [t.status for t in fleet.tickets()] == ["resolved"]


def test_a_saved_flap_start_whose_ticket_never_opened_opens_it_at_start(fleet: Fleet) -> None:
    fleet.rounds(1)
    flap(fleet, 30)
    # a crash between the poll's commit and its ticket: the flap state says flapping, no incident
    fleet.restart(run_sql("DELETE FROM incidents"))
    incident = fleet.agent.store.open_incident_for("hq/hq-1/flapping")
    assert incident is not None and incident.priority == "medium"
    flap(fleet, 10, start=30)
    assert [i.key for i in fleet.agent.store.incidents()] == ["hq/hq-1/flapping"]


# --- finding tracks --------------------------------------------------------------------------


def unplug_camera(fleet: Fleet, rounds: int) -> None:
    fleet.scripts["hq-1"].peripherals = CAMERA_OUT
    fleet.rounds(rounds)


def test_debounce_counters_survive_a_restart(fleet: Fleet) -> None:
    fleet.rounds(1)
    unplug_camera(fleet, 2)  # raise_after is 3: seen twice, not raised yet
    first_seen = fleet.agent.findings.tracker("hq-1").first_seen(CAMERA)
    assert first_seen is not None and fleet.tickets() == []
    fleet.restart()
    track_ = fleet.agent.findings.tracker("hq-1").tracks[CAMERA]
    assert (track_.streak, track_.raised, track_.since) == (2, False, first_seen)
    fleet.rounds(1)  # the third sighting raises: the count was not reset by the restart
    (ticket,) = fleet.tickets()
    assert (ticket.fields["problem"], ticket.status) == ("peripheral", "open")
    assert fleet.agent.findings.tracker("hq-1").first_seen(CAMERA) == first_seen


@pytest.mark.parametrize("lost", [False, True], ids=["saved", "track-lost"])
def test_a_finding_still_failing_after_a_restart_keeps_its_one_ticket(fleet: Fleet, lost: bool) -> None:
    fleet.rounds(1)
    unplug_camera(fleet, 4)
    (ticket,) = fleet.tickets()
    assert ticket.status == "open"
    fleet.restart(run_sql("DELETE FROM finding_tracks") if lost else None)
    assert fleet.agent.findings.tracker("hq-1").tracks[CAMERA].raised
    fleet.rounds(10)
    (ticket,) = fleet.tickets()
    assert ticket.status == "open"
    assert len(fleet.agent.store.incidents()) == 1
    fleet.scripts["hq-1"].peripherals = PLUGGED
    fleet.rounds(3)  # clear_after 3: the normal path clears it
    (ticket,) = fleet.tickets()
    assert ticket.status == "resolved"


@pytest.mark.parametrize("lost", [False, True], ids=["saved", "track-lost"])
def test_a_finding_that_recovered_while_the_agent_was_down_is_resolved(fleet: Fleet, lost: bool) -> None:
    fleet.rounds(1)
    unplug_camera(fleet, 4)
    fleet.scripts["hq-1"].peripherals = PLUGGED  # plugged back while no agent runs
    fleet.restart(run_sql("DELETE FROM finding_tracks") if lost else None)
    fleet.rounds(2)
    assert [t.status for t in fleet.tickets()] == ["open"], "clear_after 3: not yet"
    fleet.rounds(1)
    assert [t.status for t in fleet.tickets()] == ["resolved"]
    assert fleet.agent.store.incidents(open_only=True) == []


def test_a_raised_track_whose_ticket_is_gone_raises_again_instead_of_staying_silent(fleet: Fleet) -> None:
    fleet.rounds(1)
    unplug_camera(fleet, 4)
    # as if the poll committed the raise but the agent died before the ticket was opened
    fleet.restart(run_sql("DELETE FROM incidents"))
    assert not fleet.agent.findings.tracker("hq-1").tracks[CAMERA].raised
    fleet.rounds(1)
    incident = fleet.agent.store.open_incident_for("hq/hq-1/peripheral:camera")
    assert incident is not None and fleet.agent.findings.tracker("hq-1").tracks[CAMERA].raised


# --- pure parts: round trip, repair, replay --------------------------------------------------

CAMERA_FINDING = Finding(
    ProblemKind.PERIPHERAL,
    Priority.MEDIUM,
    "camera",
    "camera unplugged",
    "kamera odłączona",
    {"port": "usb1"},
)


def test_a_tracker_round_trips_through_json() -> None:
    tracker = FindingTracker(
        {
            CAMERA: Track(CAMERA_FINDING, 5, 1, MONDAY, MONDAY + timedelta(minutes=3), Priority.CRITICAL),
            "slow": Track(Finding(ProblemKind.SLOW, Priority.LOW), 1, 0, MONDAY),
        }
    )
    assert tracker_from_json(tracker_to_json(tracker)) == tracker
    assert tracker_from_json(tracker_to_json(FindingTracker.initial())) == FindingTracker.initial()


def test_an_unreadable_track_is_dropped_not_fatal() -> None:
    text = tracker_to_json(FindingTracker({CAMERA: Track(CAMERA_FINDING, 2, 0, MONDAY)}))
    broken = text.replace('"peripheral"', '"teleporter"')
    assert tracker_from_json(broken) == FindingTracker.initial()
    assert tracker_from_json("not json") == FindingTracker.initial()


def test_reconcile_restores_lowers_and_keeps() -> None:
    opened = MONDAY + timedelta(minutes=5)
    kept = Track(CAMERA_FINDING, 9, 0, MONDAY, MONDAY, Priority.MEDIUM)
    orphan = Track(Finding(ProblemKind.SLOW, Priority.LOW), 4, 0, MONDAY, MONDAY, Priority.LOW)
    counting = Track(Finding(ProblemKind.FIRMWARE, Priority.LOW), 1, 0, MONDAY)
    state = FindingTracker({CAMERA: kept, "slow": orphan, "firmware": counting})
    tickets = [
        OpenTicket(CAMERA, Priority.MEDIUM, MONDAY),
        OpenTicket("firmware", Priority.CRITICAL, opened),
        OpenTicket("peripheral:microphone", Priority.MEDIUM, opened),
        OpenTicket("no_such_kind", Priority.LOW, opened),
    ]
    fixed = reconcile(state, tickets).tracks
    assert fixed[CAMERA] == kept
    assert fixed["slow"] == Track(orphan.finding, 4, 0, MONDAY)  # lowered: raises again if still seen
    assert fixed["firmware"] == Track(counting.finding, 1, 0, MONDAY, opened, Priority.CRITICAL)
    mic = fixed["peripheral:microphone"]
    assert (mic.finding.kind, mic.finding.subject, mic.raised_at, mic.since, mic.priority) == (
        ProblemKind.PERIPHERAL,
        "microphone",
        opened,
        opened,
        Priority.MEDIUM,
    )
    assert "no_such_kind" not in fixed
    assert reconcile(FindingTracker(fixed), tickets[:3]) == FindingTracker(fixed), (
        "a second pass changes nothing"
    )


def test_replay_reaches_the_state_of_stepping_through_the_same_polls() -> None:
    settings = FlappingSettings()
    results = [i % 2 == 0 or i > 30 for i in range(40)]
    state = FlapState.initial()
    for ok in results:
        state, _ = flap_step(state, ok, settings)
    assert replay(results, settings) == state


# --- the store: migration, round trip, one transaction per poll -------------------------------


def test_a_v3_store_migrates_to_v4_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite"
    old = Store(path)
    old.save_state("bar-1", DeviceState.initial())
    old.close()
    db = sqlite3.connect(path)  # what an agent of schema 3 left: no flap or finding tables
    db.executescript("DROP TABLE flaps; DROP TABLE finding_tracks; PRAGMA user_version = 3;")
    db.close()
    store = Store(path)
    try:
        assert store.load_state("bar-1") == DeviceState.initial()
        assert store.flap_states() == {} and store.finding_trackers() == {}
        outcome = PollOutcome("bar-1", MONDAY, True, "ok", 0.1)
        tracker = FindingTracker({CAMERA: Track(CAMERA_FINDING, 3, 0, MONDAY, MONDAY, Priority.MEDIUM)})
        flapping = FlapState((True, False, True), True, 55.0)
        store.record_poll(outcome, DeviceState.initial(), flap=flapping, tracker=tracker)
    finally:
        store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    db.close()
    reopened = Store(path)
    try:
        assert reopened.flap_states() == {"bar-1": flapping}
        assert reopened.finding_trackers() == {"bar-1": tracker}
    finally:
        reopened.close()


class Transactions:
    """Counts write transactions on a connection: COMMITs, plus writes outside BEGIN (autocommit)."""

    def __init__(self) -> None:
        self.count = 0
        self._in_tx = False

    def __call__(self, sql: str) -> None:
        head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
        if head == "BEGIN":
            self._in_tx = True
        elif head in ("COMMIT", "END"):
            self._in_tx = False
            self.count += 1
        elif head == "ROLLBACK":
            self._in_tx = False
        elif head in ("INSERT", "UPDATE", "DELETE", "REPLACE") and not self._in_tx:
            self.count += 1


def test_a_poll_is_one_store_transaction(fleet: Fleet) -> None:
    fleet.scripts["hq-2"].peripherals = CAMERA_OUT
    fleet.rounds(6)  # hq-2's camera ticket is open: from now on every poll is routine
    assert [t.status for t in fleet.tickets()] == ["open"]
    transactions = Transactions()
    fleet.agent.store._db.set_trace_callback(transactions)
    commits = fleet.agent.store.commits
    try:
        for device_id in ("hq-1", "hq-2", "hq-1", "hq-2"):  # a stable device, one with a raised finding
            before = transactions.count
            fleet.agent.poll_once(device_id)
            assert transactions.count - before == 1, f"poll of {device_id}"
            fleet.clock.advance(30)
    finally:
        fleet.agent.store._db.set_trace_callback(None)
    assert fleet.agent.store.commits - commits == 4


def test_polls_commit_with_synchronous_normal_and_incidents_with_full(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.sqlite")
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    try:
        store.record_poll(PollOutcome("bar-1", MONDAY, True, "ok", 0.1), DeviceState.initial())
        store.record_poll(PollOutcome("bar-1", MONDAY, True, "ok", 0.1), DeviceState.initial())
        store.open_incident("hq/bar-1/offline", "bar-1", "hq", "offline", "critical", MONDAY)
    finally:
        store._db.set_trace_callback(None)
        store.close()
    pragmas_and_commits = [s for s in seen if s.startswith(("PRAGMA", "COMMIT"))]
    assert pragmas_and_commits == [
        "PRAGMA synchronous=NORMAL",  # switched once for a run of polls
        "COMMIT",
        "COMMIT",
        "PRAGMA synchronous=FULL",  # an incident is as durable as the outbox intent that names it
        "COMMIT",
    ]
