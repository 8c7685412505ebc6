"""Simulator + agent + local backend: one outage → exactly one critical ticket, resolved on recovery."""

from __future__ import annotations

import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from peers.snmpd import send_trap

from agent.clock import FakeClock
from agent.daemon import Agent, AgentEvent
from agent.state import Health
from config.loader import load_config
from simulator.fleet import Fleet, free_udp_port
from uploader.backends.local import LocalBackend


@pytest.fixture
def fleet(fleet_factory: Callable[..., Fleet]) -> Fleet:
    return fleet_factory(devices=6, seed=11)


def make_agent(fleet: Fleet, tmp_path: Path, clock: FakeClock | None = None, **settings: float) -> Agent:
    options = {
        "poll_interval_s": 60.0,
        "retry_interval_s": 10.0,
        "timeout_s": 1.0,
        "down_after": 3,
        "up_after": 2,
    }
    options.update(settings)
    cfg_path = fleet.write_agent_config(
        tmp_path / "agent.yaml", data_dir=tmp_path / "data", language="en", **options
    )
    return Agent(load_config(cfg_path), clock=clock)


def poll_all(agent: Agent, clock: FakeClock, seconds: float) -> None:
    for dev in agent.config.devices:
        agent.poll_once(dev.id)
    clock.advance(seconds)


def local_backend(agent: Agent) -> LocalBackend:
    assert isinstance(agent.backend, LocalBackend)
    return agent.backend


def test_healthy_fleet_opens_no_ticket(fleet: Fleet, tmp_path: Path) -> None:
    clock = FakeClock()
    agent = make_agent(fleet, tmp_path, clock)
    try:
        for _ in range(4):
            poll_all(agent, clock, 60)
        assert {s.health for s in agent.states.values()} == {Health.UP}
        assert local_backend(agent).tickets() == []
    finally:
        agent.stop()


def test_offline_a30_opens_one_critical_ticket_with_logs_and_resolves(fleet: Fleet, tmp_path: Path) -> None:
    clock = FakeClock()
    agent = make_agent(fleet, tmp_path, clock)
    target = next(d for d in fleet.devices if d.model == "A30")
    try:
        poll_all(agent, clock, 60)  # first contact: identity, pins and the first log export
        fleet.fault(target.id, "offline")
        for _ in range(2):
            agent.poll_once(target.id)
            clock.advance(10)
        assert local_backend(agent).tickets() == [], "two missed polls must not open a ticket"
        for _ in range(5):  # the third miss opens it; more misses add nothing
            agent.poll_once(target.id)
            clock.advance(10)
        tickets = local_backend(agent).tickets()
        assert len(tickets) == 1
        ticket = tickets[0]
        assert ticket.priority == "critical"
        assert ticket.status == "open"
        assert ticket.fields["device"] == target.id
        assert ticket.fields["model"] == "A30"
        assert ticket.fields["serial"] == target.serial
        assert ticket.fields["mac"] == target.mac
        assert ticket.fields["firmware"] == target.firmware
        assert ticket.fields["contract"]
        assert ticket.fields["address"]
        for text in (
            target.serial,
            target.mac,
            target.firmware,
            target.room,
            ticket.fields["contract"],
            ticket.fields["address"],
            ticket.fields["contact_phone"],
        ):
            assert text in ticket.body, text
        assert target.password not in ticket.body
        assert len(ticket.attachments) == 1
        name, size, _sha, path = ticket.attachments[0]
        assert name.endswith(".tar.gz") and size > 0
        with tarfile.open(path) as archive:
            assert archive.getnames()

        fleet.clear(target.id)
        for _ in range(3):
            agent.poll_once(target.id)
            clock.advance(10)
        ticket = local_backend(agent).tickets()[0]
        assert ticket.status == "resolved"
        assert len(local_backend(agent).tickets()) == 1
        assert any("recover" in c.body.lower() for c in ticket.comments)
    finally:
        agent.stop()


def test_auth_failure_is_not_an_outage(fleet: Fleet, tmp_path: Path) -> None:
    clock = FakeClock()
    agent = make_agent(fleet, tmp_path, clock)
    target = fleet.devices[1]
    try:
        poll_all(agent, clock, 60)
        fleet.fault(target.id, "auth-fail")
        for _ in range(5):
            agent.poll_once(target.id)
            clock.advance(10)
        assert agent.last_outcomes[target.id].reason == "auth_failed"
        assert local_backend(agent).tickets() == []
    finally:
        agent.stop()


def wait_for(condition: Callable[[], bool], deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_scheduled_agent_detects_and_recovers_on_real_time(fleet: Fleet, tmp_path: Path) -> None:
    agent = make_agent(fleet, tmp_path, poll_interval_s=0.3, retry_interval_s=0.1, timeout_s=0.5)
    target = fleet.devices[0]
    agent.start()
    try:
        assert wait_for(lambda: agent.states[target.id].health == Health.UP, 10)
        fleet.fault(target.id, "offline")
        assert wait_for(lambda: len(local_backend(agent).tickets(open_only=True)) == 1, 15)
        fleet.clear(target.id)
        assert wait_for(lambda: local_backend(agent).tickets()[0].status == "resolved", 15)
        assert len(local_backend(agent).tickets()) == 1
    finally:
        agent.stop()


def test_web_ui_down_while_6024_answers_is_degraded_not_an_outage(fleet: Fleet, tmp_path: Path) -> None:
    clock = FakeClock()
    agent = make_agent(fleet, tmp_path, clock)
    target = next(d for d in fleet.devices if d.model == "A20")
    try:
        poll_all(agent, clock, 60)
        fleet.fault(target.id, "offline", "http")
        for _ in range(5):
            agent.poll_once(target.id)
            clock.advance(10)
        outcome = agent.last_outcomes[target.id]
        assert outcome.ok and outcome.sample is not None
        assert outcome.sample.failing_channels == ("http",)
        assert agent.states[target.id].health == Health.UP
        agent.dispatcher.flush()
        (degraded,) = local_backend(agent).tickets()
        assert (degraded.priority, degraded.fields["problem"]) == ("medium", "channel_down"), (
            "a channel down while others answer is medium, never an offline ticket"
        )
        assert "http" in degraded.title or "http" in degraded.body

        fleet.fault(target.id, "offline")  # now silent on every channel: an outage
        for _ in range(3):
            agent.poll_once(target.id)
            clock.advance(10)
        agent.dispatcher.flush()
        offline = [t for t in local_backend(agent).tickets() if t.fields["problem"] == "offline"]
        (ticket,) = offline
        assert ticket.priority == "critical" and "tcp6024" in ticket.body
    finally:
        agent.stop()


def test_6024_down_while_http_answers_names_the_channel(fleet: Fleet, tmp_path: Path) -> None:
    clock = FakeClock()
    agent = make_agent(fleet, tmp_path, clock)
    target = next(d for d in fleet.devices if d.model == "MVC")
    try:
        fleet.fault(target.id, "hang", "tcp6024")
        agent.poll_once(target.id)
        outcome = agent.last_outcomes[target.id]
        assert outcome.ok and outcome.sample is not None
        assert outcome.sample.failing_channels == ("tcp6024",)
        failed = next(c for c in outcome.sample.channels if c.channel == "tcp6024")
        assert failed.reason == "timeout"
    finally:
        agent.stop()


def test_ticket_carries_the_black_box_syslog_from_before_the_failure(
    fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> None:
    port = free_udp_port()
    sim = fleet_factory(devices=3, seed=21, syslog_to=("127.0.0.1", port))
    clock = FakeClock()
    agent = make_agent(sim, tmp_path, clock)
    target = next(d for d in sim.devices if d.model == "A30")
    assert agent.syslog is not None and agent.blackboxes is not None
    agent.syslog.start()
    try:
        sim.fault(target.id, "unplug", "camera")  # a warning line the black box must keep
        box = agent.blackboxes.get(target.id)
        assert wait_for(lambda: any("disconnected" in line for line in box.read_since()), 10)
        poll_all(agent, clock, 60)
        sim.fault(target.id, "offline")
        for _ in range(3):
            agent.poll_once(target.id)
            clock.advance(10)
        (ticket,) = local_backend(agent).tickets()
        names = [a[0] for a in ticket.attachments]
        assert any(n.endswith(".tar.gz") for n in names)
        (blackbox,) = [a for a in ticket.attachments if "blackbox" in a[0]]
        text = Path(blackbox[3]).read_text()
        assert "camera" in text and "disconnected" in text and "127." in text
        assert "black-box" in ticket.body
        assert agent.syslog.stats.dropped_unknown == 0
    finally:
        agent.stop()


LINK_DOWN = "1.3.6.1.6.3.1.1.5.3"


def test_snmp_trap_from_a_device_triggers_an_immediate_confirm_poll(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEZO_TEST_TRAP_COMMUNITY", "hezo-traps")
    cfg_path = fleet.write_agent_config(
        tmp_path / "agent.yaml", data_dir=tmp_path / "data", poll_interval_s=3600
    )
    data = yaml.safe_load(cfg_path.read_text())
    data["traps"] = {
        "host": "127.0.0.1",
        "port": free_udp_port(),
        "community_env": "HEZO_TEST_TRAP_COMMUNITY",
    }
    cfg_path.write_text(yaml.safe_dump(data, allow_unicode=True))
    events: list[AgentEvent] = []
    agent = Agent(load_config(cfg_path), on_event=events.append)
    target = fleet.devices[2]
    assert agent.traps is not None
    agent.start()
    try:
        assert wait_for(lambda: len(agent.last_outcomes) == len(fleet.devices), 10)  # first polls done
        first = agent.last_outcomes[target.id].at
        send_trap(
            agent.traps.port or 0, "hezo-traps", "1.3.6.1.6.3.1.1.5.3", source=target.host, folder=tmp_path
        )
        # the next poll is an hour away: only the trap can make it happen now
        assert wait_for(lambda: agent.last_outcomes[target.id].at > first, 10)
        assert any(e.kind == "trap" and e.device_id == target.id for e in events)
        send_trap(
            agent.traps.port or 0,
            "wrong-community",
            "1.3.6.1.6.3.1.1.5.3",
            source=target.host,
            folder=tmp_path,
        )
        assert wait_for(lambda: agent.traps is not None and agent.traps.stats.unknown_community == 1, 10)
    finally:
        agent.stop()
