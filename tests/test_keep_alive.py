"""Connections kept between polls (``agent.keep_alive_s``): reused by the real agent against the
simulator, dropped with the device, and switched off when the open-files limit has no room."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import agent.daemon as daemon
from agent.clock import FakeClock
from agent.daemon import Agent
from agent.fdlimit import open_files_for
from config.loader import load_config
from simulator.fleet import Fleet


def make_agent(fleet: Fleet, tmp_path: Path, clock: FakeClock, **settings: float) -> Agent:
    options = {"timeout_s": 2.0, **settings}
    path = fleet.write_agent_config(tmp_path / "agent.yaml", data_dir=tmp_path / "data", **options)
    return Agent(load_config(path), clock=clock)


def connect_check(agent: Agent, device_id: str) -> str:
    """The detail of the last poll's connection check: "" for a new connection, else why not."""
    outcome = agent.last_outcomes[device_id]
    assert outcome.ok, outcome.detail
    return outcome.checks[0].detail


def test_the_agent_reuses_each_devices_connection_and_a_device_gone_offline_fails_at_once(
    fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> None:
    fleet = fleet_factory(devices=2)
    clock = FakeClock()
    agent = make_agent(fleet, tmp_path, clock)
    try:
        dev = agent.config.devices[0].id
        details = []
        for _ in range(3):
            agent.poll_once(dev)
            details.append(connect_check(agent, dev))
            clock.advance(60)
        assert details == ["", "connection reused", "connection reused"]
        fleet.fault(dev, "offline")  # the simulator drops its connections and stops listening
        agent.poll_once(dev)
        gone = agent.last_outcomes[dev]
        assert not gone.ok and gone.reason == "unreachable", gone.detail
        assert gone.duration_s < 1.0  # refused at once, not a timeout on a dead kept connection
        fleet.clear(dev)
        agent.poll_once(dev)
        assert connect_check(agent, dev) == ""  # back, on a new connection
    finally:
        agent.stop()


def test_keep_alive_is_off_when_the_open_files_limit_cannot_hold_a_socket_per_device(
    fleet_factory: Callable[..., Fleet],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fleet = fleet_factory(devices=2)
    monkeypatch.setattr(daemon, "raise_open_files_limit", lambda wanted: 200)
    clock = FakeClock()
    with caplog.at_level(logging.WARNING, logger="hezo.agent"):
        agent = make_agent(fleet, tmp_path, clock)
    try:
        assert "event=keep_alive_off reason=open_files_limit limit=200" in caplog.text
        dev = agent.config.devices[0].id
        collector = agent.collector(dev)
        primary = getattr(collector, "_primary", collector)  # a MultiChannelCollector wraps the driver
        assert primary._transport.keep_alive_s == 0
        details = []
        for _ in range(2):
            agent.poll_once(dev)
            details.append(connect_check(agent, dev))
            clock.advance(60)
        assert details == ["", ""]  # a new connection every poll, as before keep-alive
    finally:
        agent.stop()


def test_the_soft_open_files_limit_is_raised_towards_the_hard_one() -> None:
    """In a child process (limits are per process), for 1,000 devices: soft 300 under a hard 5,000,
    then under a hard 1,000."""
    wanted = open_files_for(1000)
    script = f"""
import resource
from agent.fdlimit import raise_open_files_limit
resource.setrlimit(resource.RLIMIT_NOFILE, (300, 5000))
print(raise_open_files_limit({wanted}), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
print(raise_open_files_limit(100))
resource.setrlimit(resource.RLIMIT_NOFILE, (300, 1000))  # (a hard limit is only ever lowered)
print(raise_open_files_limit({wanted}), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\n")
    assert out[:3] == [f"{wanted} {wanted}", f"{wanted}", "1000 1000"]  # raised; kept; capped by hard


def test_keep_alive_is_off_when_polls_come_further_apart_than_it(
    fleet_factory: Callable[..., Fleet], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = fleet_factory(devices=1)
    with caplog.at_level(logging.INFO, logger="hezo.agent"):
        agent = make_agent(fleet, tmp_path, FakeClock(), poll_interval_s=120)
    try:
        assert "event=keep_alive_off reason=poll_interval poll_interval_s=120 keep_alive_s=90" in caplog.text
        assert agent._keep_alive_s == 0
    finally:
        agent.stop()
