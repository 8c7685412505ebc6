"""SSH and SNMP as poll channels: a site profile offers them, a device opts in, real peers answer.

The simulated A30 serves HTTPS and the 6024 API on its own loopback address; a real OpenSSH sshd
and a real net-snmp snmpd are started on that same address, so the agent sees one device with
four channels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from peers.snmpd import Snmpd
from peers.sshd import Sshd

from agent.clock import FakeClock
from agent.daemon import Agent
from agent.state import Health
from config.loader import BUILTIN_PROFILES, ConfigError, load_config
from simulator.fleet import Fleet, SimDevice

SimSite = tuple[Fleet, SimDevice]
Peers = tuple[Sshd, Snmpd]


@pytest.fixture
def device(fleet_factory: Callable[..., Fleet]) -> tuple[Fleet, SimDevice]:
    fleet = fleet_factory(devices=3, seed=31)
    return fleet, next(d for d in fleet.devices if d.model == "A30")


@pytest.fixture
def peers(device: tuple[Fleet, SimDevice], tmp_path: Path) -> Iterator[tuple[Sshd, Snmpd]]:
    _, sim = device
    sshd = Sshd(tmp_path / "sshd", host=sim.host)
    sshd.start()
    snmpd = Snmpd(tmp_path / "snmpd", host=sim.host).start()
    try:
        yield sshd, snmpd
    finally:
        sshd.stop()
        snmpd.stop()


def with_site_profile(
    fleet: Fleet,
    sim: SimDevice,
    tmp_path: Path,
    profile_channels: dict[str, dict[str, Any]],
    device_channels: dict[str, dict[str, Any]],
) -> Path:
    """Write a site profile (the model's built-in one plus ``profile_channels``) and a config
    whose device ``sim`` uses it and opts in to ``device_channels``; return the config's path."""
    base = f"yealink-{sim.model.lower()}"
    profile = yaml.safe_load((BUILTIN_PROFILES / f"{base}.yaml").read_text())
    profile["name"] = f"site-{sim.model.lower()}"
    profile["channels"].update(profile_channels)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / f"{profile['name']}.yaml").write_text(yaml.safe_dump(profile))
    path = fleet.write_agent_config(tmp_path / "site.yaml", data_dir=tmp_path / "data", timeout_s=1.0)
    data = yaml.safe_load(path.read_text())
    data["agent"]["profiles_dir"] = "profiles"
    entry = next(e for e in data["devices"] if e["id"] == sim.id)
    entry["profile"] = profile["name"]
    entry["channels"].update(device_channels)
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def site_config(
    fleet: Fleet, sim: SimDevice, sshd: Sshd, snmpd: Snmpd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A site profile (yealink-a30 with ssh and snmp) and a config whose A30 opts in to both."""
    monkeypatch.setenv("HEZO_TEST_SSH_KEY", sshd.client_key.read_text())
    monkeypatch.setenv("HEZO_TEST_SNMP_COMMUNITY", snmpd.community)
    ssh = {
        "username": sshd.user,
        "key_env": "HEZO_TEST_SSH_KEY",
        "commands": [{"name": "os", "command": "uname -s", "status": "assumed"}],
        "timeout_s": 2.0,
        "status": "assumed",
    }
    snmp = {"community_env": "HEZO_TEST_SNMP_COMMUNITY", "timeout_s": 0.5, "retries": 0, "status": "assumed"}
    return with_site_profile(
        fleet,
        sim,
        tmp_path,
        {"ssh": ssh, "snmp": snmp},
        {"ssh": {"port": sshd.port}, "snmp": {"port": snmpd.port}},
    )


def test_ssh_and_snmp_answer_as_channels_and_a_silent_one_is_named(
    device: tuple[Fleet, SimDevice],
    peers: tuple[Sshd, Snmpd],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet, sim = device
    sshd, snmpd = peers
    clock = FakeClock()
    agent = Agent(load_config(site_config(fleet, sim, sshd, snmpd, tmp_path, monkeypatch)), clock=clock)
    try:
        agent.poll_once(sim.id)
        sample = agent.last_outcomes[sim.id].sample
        assert sample is not None
        channels = {c.channel: c for c in sample.channels}
        assert set(channels) == {"http", "tcp6024", "ssh", "snmp"}
        assert all(c.ok for c in channels.values()), [(c.channel, c.detail) for c in channels.values()]
        assert channels["ssh"].fields["os"] == "Linux"
        assert "sys_descr" in channels["snmp"].fields
        assert sim.host in (tmp_path / "data" / "known_hosts").read_text()  # trusted on first use

        sshd.stop()
        clock.advance(60)
        agent.poll_once(sim.id)
        sample = agent.last_outcomes[sim.id].sample
        assert sample is not None and sample.failing_channels == ("ssh",)

        fleet.fault(sim.id, "offline")  # web UI and 6024 gone; SNMP still answers: degraded, not down
        for _ in range(4):
            clock.advance(10)
            agent.poll_once(sim.id)
        sample = agent.last_outcomes[sim.id].sample
        assert sample is not None and set(sample.failing_channels) == {"http", "tcp6024", "ssh"}
        assert agent.states[sim.id].health == Health.UP

        snmpd.stop()  # now silent on every channel: down after k polls
        for _ in range(3):
            clock.advance(10)
            agent.poll_once(sim.id)
        assert agent.states[sim.id].health == Health.DOWN
        assert "no channel answered" in agent.last_outcomes[sim.id].detail
    finally:
        agent.stop()


def test_missing_channel_secret_stops_the_agent_at_start_naming_it(
    device: tuple[Fleet, SimDevice],
    peers: tuple[Sshd, Snmpd],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet, sim = device
    sshd, snmpd = peers
    config = load_config(site_config(fleet, sim, sshd, snmpd, tmp_path, monkeypatch))
    monkeypatch.delenv("HEZO_TEST_SSH_KEY")
    with pytest.raises(ConfigError, match="HEZO_TEST_SSH_KEY is not set"):
        Agent(config)


def test_mvc_reads_its_teams_rooms_event_log_as_a_channel(
    fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> None:
    fleet = fleet_factory(devices=3, seed=32)
    mvc = next(d for d in fleet.devices if d.model == "MVC")
    fixture = Path(__file__).parent / "fixtures" / "mtr" / "hardware_unhealthy.xml"
    mtr_settings = {"xml_file": str(fixture), "status": "documented"}
    path = with_site_profile(fleet, mvc, tmp_path, {"mtr": mtr_settings}, {"mtr": {}})
    agent = Agent(load_config(path), clock=FakeClock())
    try:
        agent.poll_once(mvc.id)
        sample = agent.last_outcomes[mvc.id].sample
        assert sample is not None
        mtr = next(c for c in sample.channels if c.channel == "mtr")
        assert mtr.ok and mtr.fields["mtr_healthy"] is False  # the room says a component is unhealthy
    finally:
        agent.stop()
