"""The agent's SQLite store: round-trips, restart, one open incident per key, outcome cap."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.models import PollOutcome
from agent.state import DeviceState, Health
from agent.store import SCHEMA_VERSION, IncidentAlreadyOpen, Store
from collectors.models import CheckResult, DeviceFacts

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
FACTS = DeviceFacts(
    model="A30", firmware="133.15.0.20", serial="803000000001", mac="00:15:65:aa:bb:cc", hostname="a30-zarzad"
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(tmp_path / "data" / "agent.sqlite")
    try:
        yield db
    finally:
        db.close()


def test_state_round_trips_and_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite"
    state = DeviceState(
        health=Health.DOWN,
        failures=4,
        successes=0,
        changed_at=T0 + timedelta(seconds=30),
        first_failure_at=T0 + timedelta(seconds=10),
        down_since=T0 + timedelta(seconds=10),
        last_ok_at=T0,
        last_reason="timeout",
    )
    first = Store(path)
    assert first.load_state("bar-1") is None
    first.save_state("bar-1", DeviceState.initial())
    first.save_state("bar-1", state)
    first.close()

    second = Store(path)
    try:
        loaded = second.load_state("bar-1")
        assert loaded == state
        assert loaded is not None and loaded.changed_at is not None and loaded.changed_at.tzinfo is not None
        assert second.load_state("other") is None
    finally:
        second.close()


def test_initial_state_round_trips(store: Store) -> None:
    store.save_state("bar-1", DeviceState.initial())
    assert store.load_state("bar-1") == DeviceState.initial()


def test_facts_keep_last_identity_and_when_seen(store: Store) -> None:
    assert store.facts("bar-1") is None
    store.save_facts("bar-1", FACTS, T0)
    newer = DeviceFacts(model="A30", firmware="133.15.0.30", serial=FACTS.serial, mac=FACTS.mac)
    store.save_facts("bar-1", newer, T0 + timedelta(minutes=1))
    assert store.facts("bar-1") == (newer, T0 + timedelta(minutes=1))


def test_times_come_back_in_utc_whatever_zone_went_in(store: Store) -> None:
    warsaw = timezone(timedelta(hours=1))
    store.save_facts("bar-1", FACTS, datetime(2026, 1, 5, 10, 0, tzinfo=warsaw))
    known = store.facts("bar-1")
    assert known is not None
    assert known[1] == T0 and known[1].utcoffset() == timedelta(0)


def test_naive_datetime_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.save_facts("bar-1", FACTS, datetime(2026, 1, 5, 9, 0))


def test_outcomes_newest_first_with_checks(store: Store) -> None:
    clock = FakeClock()
    checks = (CheckResult("https", True, 12.5), CheckResult("peripherals", False, 3.0, "camera missing"))
    store.record_outcome(PollOutcome("bar-1", clock.now(), True, "ok", 0.2, checks=checks))
    clock.advance(10)
    store.record_outcome(PollOutcome("bar-1", clock.now(), False, "timeout", 5.0, detail="no answer in 5 s"))
    store.record_outcome(PollOutcome("bar-2", clock.now(), True, "ok", 0.1))

    recent = store.recent_outcomes("bar-1", 10)
    assert [r.reason for r in recent] == ["timeout", "ok"]
    assert recent[0].at == T0 + timedelta(seconds=10) and not recent[0].ok
    assert recent[0].detail == "no answer in 5 s" and recent[0].duration_s == 5.0
    assert recent[1].checks == checks
    assert [r.reason for r in store.recent_outcomes("bar-1", 1)] == ["timeout"]


def test_outcomes_are_capped_per_device(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.sqlite", keep_outcomes=5)
    try:
        clock = FakeClock()
        for i in range(12):
            store.record_outcome(PollOutcome("bar-1", clock.now(), True, "ok", float(i)))
            store.record_outcome(PollOutcome("bar-2", clock.now(), True, "ok", float(i)))
            clock.advance(60)
        recent = store.recent_outcomes("bar-1", 100)
        assert [r.duration_s for r in recent] == [11.0, 10.0, 9.0, 8.0, 7.0]
        assert len(store.recent_outcomes("bar-2", 100)) == 5
    finally:
        store.close()


def test_default_outcome_cap_is_500(store: Store) -> None:
    clock = FakeClock()
    for i in range(510):
        store.record_outcome(PollOutcome("bar-1", clock.now(), True, "ok", float(i)))
    recent = store.recent_outcomes("bar-1", 1000)
    assert len(recent) == 500
    assert recent[-1].duration_s == 10.0


def test_last_log_round_trip(store: Store, tmp_path: Path) -> None:
    assert store.last_log("bar-1") is None
    store.save_log("bar-1", tmp_path / "old.tar.gz", 10, "a" * 64, T0)
    store.save_log("bar-1", tmp_path / "new.tar.gz", 20, "b" * 64, T0 + timedelta(minutes=15))
    last = store.last_log("bar-1")
    assert last is not None
    assert (last.path, last.size_bytes, last.sha256) == (tmp_path / "new.tar.gz", 20, "b" * 64)
    assert last.taken_at == T0 + timedelta(minutes=15)


def test_at_most_one_open_incident_per_key(store: Store) -> None:
    key = "hq/bar-1/offline"
    first = store.open_incident(key, "bar-1", "hq", "offline", "critical", T0, None)
    with pytest.raises(IncidentAlreadyOpen):
        store.open_incident(key, "bar-1", "hq", "offline", "critical", T0 + timedelta(seconds=5), None)
    other = store.open_incident("hq/bar-2/offline", "bar-2", "hq", "offline", "critical", T0, "custom-key")
    assert other != first
    assert len(store.incidents(open_only=True)) == 2

    store.resolve_incident(first, T0 + timedelta(minutes=12))
    assert store.open_incident_for(key) is None
    second = store.open_incident(key, "bar-1", "hq", "offline", "critical", T0 + timedelta(hours=1), None)
    assert second != first

    everything = store.incidents()
    assert [i.id for i in everything] == [first, other, second]
    resolved = everything[0]
    assert resolved.status == "resolved" and resolved.resolved_at == T0 + timedelta(minutes=12)
    assert resolved.ticket_key == f"{key}#{first}"
    assert everything[1].ticket_key == "custom-key"
    assert [i.id for i in store.incidents(open_only=True)] == [other, second]
    found = store.open_incident_for(key)
    assert found is not None and found.id == second and found.opened_at == T0 + timedelta(hours=1)
    assert found.priority == "critical" and found.site == "hq" and found.problem == "offline"


def test_unique_open_index_holds_even_against_raw_sql(store: Store) -> None:
    store.open_incident("k", "bar-1", "hq", "offline", "critical", T0)
    db = sqlite3.connect(store.path)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            db.execute(
                "INSERT INTO incidents (key, device_id, site, problem, priority, status, opened_at)"
                " VALUES ('k', 'bar-1', 'hq', 'offline', 'critical', 'open', '2026-01-05T09:00:00+00:00')"
            )
    finally:
        db.close()


def test_concurrent_opens_yield_exactly_one(store: Store) -> None:
    won: list[int] = []
    lost: list[str] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        barrier.wait()
        try:
            won.append(store.open_incident("k", "bar-1", "hq", "offline", "critical", T0))
        except IncidentAlreadyOpen as err:
            lost.append(str(err))

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert len(won) == 1 and len(lost) == 7


def test_incidents_survive_restart(tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite"
    first = Store(path)
    incident_id = first.open_incident("k", "bar-1", "hq", "offline", "critical", T0)
    first.close()
    second = Store(path)
    try:
        found = second.open_incident_for("k")
        assert found is not None and found.id == incident_id and found.status == "open"
    finally:
        second.close()


def test_schema_version_and_journal_mode(store: Store) -> None:
    db = sqlite3.connect(store.path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(sqlite3.DatabaseError, match="schema version"):
        Store(path)
