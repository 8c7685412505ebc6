"""YMCS as a poll channel: the agent polls a simulated bar over HTTPS and the mock YMCS on loopback.

The cloud's own trouble (stopped, credentials rejected, rate limited for good, garbage) is
neutral: the device is neither degraded nor down for it; the device offline in YMCS is a
failing channel. Time is a FakeClock; backoff waits go through an injected sleep that only
moves that clock.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.check import check_devices
from agent.cli import main as cli_main
from agent.clock import FakeClock
from agent.daemon import Agent
from agent.state import Health
from collectors.base import Collector
from collectors.errors import DeviceTimeout, DeviceUnreachable
from collectors.models import ChannelResult, DeviceFacts, HealthSample, LogBundle
from collectors.multi import MultiChannelCollector
from collectors.ymcs import YmcsClient
from collectors.ymcs_channel import YmcsAccount
from config.loader import ConfigError, load_config
from config.schema import AgentConfig
from simulator.fleet import Fleet, SimDevice
from simulator.ymcs import MockYmcs, device_record

SECRET = "ymcs-Channel-Secret-0123456789"
PARTS = [
    {"id": "cam", "modelName": "UVC86", "connectWay": "usb", "connStatus": "connected"},
    {"id": "mic", "modelName": "VCM36-W", "connectWay": "wifi", "connStatus": "disconnected"},
]
CACHE_S = 30.0
ROUND_S = 60.0  # a poll round: longer than CACHE_S, so each round lists the devices afresh


class Sleeper:
    """An injected sleep that records each wait and moves the fake clock instead of sleeping."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.clock.advance(seconds)


Site = tuple[Fleet, SimDevice, MockYmcs]


@pytest.fixture
def site(fleet_factory: Callable[..., Fleet]) -> Iterator[Site]:
    """One simulated A30 and the mock cloud listing it online, with one accessory disconnected."""
    fleet = fleet_factory(devices=3, seed=41)
    sim = next(d for d in fleet.devices if d.model == "A30")
    alarms = [
        {"id": "al1", "event": "MicLost", "level": 2, "mac": sim.mac, "status": 1},
        {"id": "al2", "event": "Reboot", "level": 1, "mac": sim.mac, "status": 2},  # solved
        {"id": "al3", "event": "Offline", "level": 3, "mac": "00:15:65:ff:ff:ff", "status": 1},  # another
    ]
    cloud = MockYmcs([device_record(sim, parts=PARTS)], alarms=alarms, client_secret=SECRET)
    cloud.start()
    try:
        yield fleet, sim, cloud
    finally:
        cloud.stop()


def write_config(site: Site, tmp_path: Path, channel: dict[str, Any] | None = None, **ymcs: Any) -> Path:
    """The fleet's agent config with a top-level ymcs: section; the A30 opts in to ``ymcs``."""
    fleet, sim, cloud = site
    path = fleet.write_agent_config(tmp_path / "site.yaml", data_dir=tmp_path / "data", timeout_s=1.0)
    (tmp_path / "ymcs.secret").write_text(SECRET + "\n", encoding="utf-8")
    # a copy of the mock's CA: the mock removes its own file when it stops
    (tmp_path / "ymcs-ca.pem").write_bytes(cloud.ca_path.read_bytes())
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["ymcs"] = {
        "base_url": cloud.base_url,
        "client_id": cloud.client_id,
        "client_secret_file": "ymcs.secret",  # relative: beside the config
        "ca_bundle": "ymcs-ca.pem",
        "timeout_s": 2.0,
        "cache_s": CACHE_S,
        "max_backoff_s": 20.0,
        **ymcs,
    }
    entry = next(e for e in data["devices"] if e["id"] == sim.id)
    entry.setdefault("channels", {})["ymcs"] = channel or {}
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def ymcs_result(agent: Agent, device_id: str) -> tuple[HealthSample, ChannelResult]:
    outcome = agent.last_outcomes[device_id]
    assert outcome.ok and outcome.sample is not None, outcome.detail
    return outcome.sample, next(c for c in outcome.sample.channels if c.channel == "ymcs")


def poll_round(agent: Agent, clock: FakeClock, device_id: str) -> tuple[HealthSample, ChannelResult]:
    clock.advance(ROUND_S)
    agent.poll_once(device_id)
    return ymcs_result(agent, device_id)


def started_agent(site: Site, tmp_path: Path, **ymcs: Any) -> tuple[Agent, FakeClock, Sleeper]:
    """An agent that has polled the A30 once (so it knows the serial and MAC to look for)."""
    clock = FakeClock()
    sleeper = Sleeper(clock)
    agent = Agent(load_config(write_config(site, tmp_path, **ymcs)), clock=clock, sleep=sleeper)
    _, sim, _ = site
    agent.poll_once(sim.id)
    return agent, clock, sleeper


# --- the channel end to end ---------------------------------------------------------------------


def test_online_is_ok_with_accessories_and_alarms_and_offline_fails_the_channel(
    site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, sim, cloud = site
    caplog.set_level(logging.INFO, logger="hezo")
    agent, clock, _ = started_agent(site, tmp_path)
    try:
        # first poll: the agent had never heard from the device, so it had no serial to look for
        sample, first = ymcs_result(agent, sim.id)
        assert (first.reason, first.neutral, sample.failing_channels) == ("not_matched", True, ())
        assert "no serial or MAC known yet" in first.detail
        assert cloud.requests() == []  # nothing to ask the cloud yet

        sample, ymcs = poll_round(agent, clock, sim.id)  # now matched by the stored serial
        assert (ymcs.ok, ymcs.reason) == (True, "ok"), ymcs.detail
        assert sample.failing_channels == () and ymcs.fields["ymcs_device_id"] == sim.id
        assert ymcs.fields["ymcs_parts_disconnected"] == 1
        assert ymcs.fields["ymcs_parts"] == [
            {"model": "UVC86", "conn_status": "connected", "connected": True},
            {"model": "VCM36-W", "conn_status": "disconnected", "connected": False},
        ]
        assert ymcs.fields["ymcs_alarms"] == [{"event": "MicLost", "level": 2, "level_name": "major"}]
        assert "disconnected: VCM36-W" in ymcs.detail and "MicLost (major)" in ymcs.detail
        assert ymcs.latency_ms > 0

        cloud.set_device_status(sim.id, "offline")
        agent.poll_once(sim.id)  # same round: the shared listing still says online
        assert ymcs_result(agent, sim.id)[1].ok
        sample, ymcs = poll_round(agent, clock, sim.id)
        assert (ymcs.ok, ymcs.reason, ymcs.neutral) == (False, "device_unreachable", False)
        assert sample.failing_channels == ("ymcs",)  # degraded: HTTP still answers
        assert agent.states[sim.id].health == Health.UP
        assert len(cloud.requests("listDevices")) == 2  # one listing per round, not per poll
        assert [r.message for r in caplog.records if "ymcs_device_not_matched" in r.message] != []
    finally:
        agent.stop()


def test_an_explicit_serial_matches_on_the_very_first_poll(site: Site, tmp_path: Path) -> None:
    _, sim, _ = site
    path = write_config(site, tmp_path, channel={"serial": sim.serial})
    agent = Agent(load_config(path), clock=FakeClock())
    try:
        agent.poll_once(sim.id)
        _, ymcs = ymcs_result(agent, sim.id)
        assert ymcs.ok and ymcs.fields["ymcs_device_id"] == sim.id
    finally:
        agent.stop()


def test_a_wrong_explicit_ymcs_id_is_not_matched_and_neutral(site: Site, tmp_path: Path) -> None:
    _, sim, _ = site
    agent = Agent(
        load_config(write_config(site, tmp_path, channel={"ymcs_id": "no-such-id"})), clock=FakeClock()
    )
    try:
        agent.poll_once(sim.id)
        sample, ymcs = ymcs_result(agent, sim.id)
        assert (ymcs.reason, ymcs.neutral, sample.failing_channels) == ("not_matched", True, ())
        assert "ymcs_id no-such-id is not among the 1 devices" in ymcs.detail
    finally:
        agent.stop()


def _stop(cloud: MockYmcs) -> Callable[[], None]:
    cloud.stop()
    return cloud.start  # same port, same certificate


def _reject_credentials(cloud: MockYmcs) -> Callable[[], None]:
    cloud.client_secret, good = "rotated-" + SECRET, cloud.client_secret
    cloud.expire_tokens()

    def restore() -> None:
        cloud.client_secret = good

    return restore


def _rate_limit_for_good(cloud: MockYmcs) -> Callable[[], None]:
    cloud.rate_limit(every=1, retry_after="2")
    return lambda: cloud.rate_limit()


def _garbage(cloud: MockYmcs) -> Callable[[], None]:
    cloud.fault("listDevices", "garbage")
    return lambda: cloud.fault("listDevices", None)


@pytest.mark.parametrize(
    ("outage", "reason"),
    [
        (_stop, "unreachable"),
        (_reject_credentials, "auth_failed"),
        (_rate_limit_for_good, "unexpected_response"),
        (_garbage, "unexpected_response"),
    ],
    ids=["stopped", "credentials-rejected", "rate-limited", "garbage"],
)
def test_the_cloud_failing_is_neutral_logged_once_and_the_device_neither_degraded_nor_down(
    site: Site,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    outage: Callable[[MockYmcs], Callable[[], None]],
    reason: str,
) -> None:
    _, sim, cloud = site
    agent, clock, _ = started_agent(site, tmp_path)
    try:
        assert poll_round(agent, clock, sim.id)[1].ok
        caplog.set_level(logging.DEBUG, logger="hezo")
        restore = outage(cloud)
        for _ in range(3):
            sample, ymcs = poll_round(agent, clock, sim.id)
            assert (ymcs.ok, ymcs.reason, ymcs.neutral) == (False, "cloud_unreachable", True)
            assert f"cloud unreachable ({reason})" in ymcs.detail
            assert sample.failing_channels == ()  # not degraded
            assert agent.states[sim.id].health == Health.UP  # not down
        assert agent.ymcs is not None and agent.ymcs.cloud_down
        warnings = [r for r in caplog.records if "event=ymcs_cloud_unreachable" in r.message]
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING  # once per outage
        assert SECRET not in caplog.text

        restore()
        sample, ymcs = poll_round(agent, clock, sim.id)
        assert ymcs.ok, ymcs.detail
        assert [r for r in caplog.records if "event=ymcs_cloud_back" in r.message] != []
        assert not agent.ymcs.cloud_down
    finally:
        agent.stop()


def test_a_down_cloud_is_tried_once_per_round_not_once_per_device(site: Site, tmp_path: Path) -> None:
    _, sim, cloud = site
    agent, clock, _ = started_agent(site, tmp_path)
    try:
        assert poll_round(agent, clock, sim.id)[1].ok
        cloud.fault("listDevices", "garbage")
        before = len(cloud.requests("listDevices"))
        clock.advance(ROUND_S)
        for _ in range(5):  # five polls within one round share the failed listing
            agent.poll_once(sim.id)
            assert ymcs_result(agent, sim.id)[1].reason == "cloud_unreachable"
        assert len(cloud.requests("listDevices")) == before + 1
    finally:
        agent.stop()


def test_the_device_silent_everywhere_is_down_even_while_the_cloud_is_down(
    site: Site, tmp_path: Path
) -> None:
    fleet, sim, cloud = site
    agent, clock, _ = started_agent(site, tmp_path)
    try:
        cloud.stop()
        fleet.fault(sim.id, "offline")
        for _ in range(3):
            clock.advance(10)
            agent.poll_once(sim.id)
        assert agent.states[sim.id].health == Health.DOWN  # a neutral channel keeps nothing up
        assert "ymcs: cloud_unreachable" in agent.last_outcomes[sim.id].detail
    finally:
        agent.stop()


def test_an_expired_token_is_refreshed_once_and_the_poll_succeeds(site: Site, tmp_path: Path) -> None:
    _, sim, cloud = site
    agent, clock, _ = started_agent(site, tmp_path)
    try:
        assert poll_round(agent, clock, sim.id)[1].ok
        assert len(cloud.requests("token")) == 1
        cloud.expire_tokens()
        _, ymcs = poll_round(agent, clock, sim.id)
        assert ymcs.ok, ymcs.detail
        assert len(cloud.requests("token")) == 2
        statuses = [r.endpoint for r in cloud.requests()][-5:]
        assert statuses.count("listDevices") == 2  # the 401 and its retry with the new token
    finally:
        agent.stop()


def test_429_backs_off_on_the_fake_clock_without_sleeping(site: Site, tmp_path: Path) -> None:
    _, sim, cloud = site
    agent, clock, sleeper = started_agent(site, tmp_path)
    try:
        assert poll_round(agent, clock, sim.id)[1].ok
        cloud.rate_limit(next_count=2, retry_after="7")
        clock.advance(ROUND_S)
        before, wall = clock.monotonic(), time.monotonic()
        agent.poll_once(sim.id)
        _, ymcs = ymcs_result(agent, sim.id)
        assert ymcs.ok, ymcs.detail
        assert sleeper.calls == [7.0, 7.0]
        assert clock.monotonic() - before == 14.0  # the waits passed on the fake clock
        assert time.monotonic() - wall < 5.0  # and not on the real one

        cloud.rate_limit(next_count=1, retry_after="3600")  # capped at max_backoff_s
        poll_round(agent, clock, sim.id)
        assert sleeper.calls[-1] == 20.0
    finally:
        agent.stop()


def test_many_devices_share_one_listing_per_round(tmp_path: Path) -> None:
    sims = [
        {"id": f"d{i:04d}", "mac": f"00:15:65:00:{i // 256:02x}:{i % 256:02x}", "sn": f"8030{i:08d}",
         "deviceStatus": "online"}
        for i in range(250)
    ]  # fmt: skip
    facts = {
        d["id"]: DeviceFacts(model="A30", firmware="1", serial=d["sn"], mac=d["mac"].upper()) for d in sims
    }
    clock = FakeClock()
    with MockYmcs(sims, client_secret=SECRET) as cloud:
        client = YmcsClient(
            cloud.base_url, cloud.client_id, SECRET, verify=cloud.ca_path, clock=clock, cache_s=CACHE_S
        )
        account = YmcsAccount(client, facts=facts.get)
        probes = [account.probe_for(device_id) for device_id in facts]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda p: p.probe(), probes))
        assert all(r.ok for r in results) and len(results) == 250
        assert [r.fields["ymcs_device_id"] for r in results] == list(facts)
        assert len(cloud.requests("listDevices")) == 3  # 250 devices: 3 pages of 100, once
        assert len(cloud.requests("listAlarms")) == 1
        assert len(cloud.requests("token")) == 1
        account.close()


def test_a_missing_client_secret_stops_the_agent_at_start_naming_the_key(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(site, tmp_path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    del data["ymcs"]["client_secret_file"]
    data["ymcs"]["client_secret_env"] = "HEZO_TEST_YMCS_NOPE"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    monkeypatch.delenv("HEZO_TEST_YMCS_NOPE", raising=False)
    with pytest.raises(
        ConfigError, match=r"ymcs\.client_secret_env: environment variable HEZO_TEST_YMCS_NOPE"
    ):
        Agent(load_config(path), clock=FakeClock())


# --- hezo-agent check ---------------------------------------------------------------------------


def checked(config: AgentConfig, sim: SimDevice) -> tuple[Any, dict[str, object]]:
    row = next(r for r in check_devices(config) if r.device_id == sim.id)
    return row, next(c for c in row.channels if c["channel"] == "ymcs")


def test_check_shows_the_ymcs_row_and_a_down_cloud_as_cloud_unreachable(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, sim, cloud = site
    path = write_config(site, tmp_path)
    agent = Agent(load_config(path), clock=FakeClock())
    agent.poll_once(sim.id)  # the agent learns the serial check will look for
    agent.stop()
    config = load_config(path)

    row, ymcs = checked(config, sim)
    assert (row.result, ymcs["result"], ymcs["ok"], ymcs["neutral"]) == ("ok", "ok", True, False)

    cloud.set_device_status(sim.id, "offline")
    row, ymcs = checked(config, sim)
    assert (row.result, ymcs["result"]) == ("degraded", "device_unreachable")
    assert "degraded: ymcs not answering" in row.hint

    cloud.stop()
    row, ymcs = checked(config, sim)
    assert (row.ok, row.result) == (True, "ok")  # not degraded: the cloud is not the device
    assert (ymcs["result"], ymcs["ok"], ymcs["neutral"]) == ("cloud unreachable", False, True)
    assert "connection refused" in str(ymcs["detail"])
    assert "ymcs: cloud unreachable, not counted" in row.hint

    code = cli_main(["check", "-c", str(path)])
    out = capsys.readouterr().out
    table = out[out.index("channels") :]  # the per-channel table, after the device table
    row_line = next(line for line in table.splitlines() if sim.id in line and " ymcs " in line)
    assert code == 0 and "cloud unreachable" in row_line


def test_check_names_an_unreadable_client_secret_on_the_devices_that_use_it(
    site: Site, tmp_path: Path
) -> None:
    _, sim, _ = site
    path = write_config(site, tmp_path)
    (tmp_path / "ymcs.secret").unlink()
    row = next(r for r in check_devices(load_config(path)) if r.device_id == sim.id)
    assert (row.ok, row.result) == (False, "no secret")
    assert row.hint.startswith("config: ymcs.client_secret_file: file not found:")
    assert SECRET not in row.hint


# --- combining: a neutral channel counts neither way ----------------------------------------------

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
FACTS = DeviceFacts(model="A30", firmware="133.15.0.60", serial="8030000000000001", mac="00:15:65:00:00:01")


class Primary(Collector):
    def __init__(self, error: Exception | None = None) -> None:
        self.device_id = "a30-01"
        self.error = error

    def collect_facts(self) -> DeviceFacts:
        return FACTS

    def collect_health(self) -> HealthSample:
        if self.error is not None:
            raise self.error
        return HealthSample(device_id=self.device_id, taken_at=NOW, facts=FACTS, latency_ms=5.0)

    def collect_logs(self, dest_dir: Path) -> LogBundle:
        raise NotImplementedError


class Fixed:
    def __init__(self, result: ChannelResult) -> None:
        self.name = result.channel
        self.result = result

    def probe(self) -> ChannelResult:
        return self.result

    def close(self) -> None:
        """Nothing to close."""


NEUTRAL = ChannelResult("ymcs", False, "cloud_unreachable", 4.0, detail="cloud unreachable (timeout)")


def test_a_neutral_channel_neither_degrades_nor_keeps_a_silent_device_up() -> None:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        sample = MultiChannelCollector(
            "a30-01", "A30", Primary(), [Fixed(NEUTRAL)], pool=pool
        ).collect_health()
        assert sample.failing_channels == () and sample.channels[1].neutral

        silent = Primary(DeviceTimeout("no answer within 1 s"))
        with pytest.raises(DeviceTimeout, match="ymcs: cloud_unreachable"):  # all non-neutral timed out
            MultiChannelCollector("a30-01", "A30", silent, [Fixed(NEUTRAL)], pool=pool).collect_health()
        refused = Primary(DeviceUnreachable("connection refused"))
        offline = ChannelResult("ymcs", False, "device_unreachable", 4.0)
        with pytest.raises(DeviceUnreachable, match="ymcs: device_unreachable"):
            MultiChannelCollector("a30-01", "A30", refused, [Fixed(offline)], pool=pool).collect_health()
