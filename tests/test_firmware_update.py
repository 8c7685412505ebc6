"""A firmware update in progress, end to end: profile field → driver → simulator → agent.

The update state is an ASSUMED profile field (``fields.update_state``): no Yealink document
shows where a bar reports an update. These tests prove the pieces agree with each other: the
driver reads the field as the profile says, the simulator's ``update`` fault reports it, and the
agent keeps a device quiet while it updates, but raises ``firmware_update_stuck`` (priority
from ``incidents.firmware_update_stuck``) once the update runs past
``firmware_update.max_update_minutes``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.clock import FakeClock
from agent.daemon import Agent
from agent.state import Health
from collectors.errors import CollectorError
from collectors.models import HealthSample
from collectors.yealink import YealinkHttpCollector
from config.loader import ConfigError, load_config, load_profile
from config.schema import UPDATING_VALUES, Device
from simulator.device import DEFAULT_UPDATE_S, FAULT_KINDS, parse_fault, parse_update
from simulator.fleet import Fleet
from uploader.backends.local import LocalBackend, LocalTicket

STUCK = "firmware_update_stuck"

# --- the driver: reading the assumed field -----------------------------------------------------


INFO = {"model": "A30", "firmware": "133.15.0.60", "serial": "8030A30", "mac": "00:15:65:00:00:30"}


class StatusServer:
    """Plain HTTP on 127.0.0.1 answering ``/info`` and ``/status`` with what the test sets."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"info": INFO} if self.path == "/info" else server.status).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02})
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=2)


@pytest.fixture
def status_server() -> Iterator[StatusServer]:
    server = StatusServer()
    yield server
    server.close()


def write_profile(folder: Path, update_field: str | None, section: str | None) -> Path:
    """A minimal no-login HTTP profile; ``update_field``/``section`` are YAML snippets (None: left out)."""
    text = (
        "name: upd-test\nmodels: [A30]\n"
        "http: {scheme: http, port: 80, status: assumed}\n"
        "auth: {kind: none, status: assumed}\n"
        "endpoints:\n  info: {path: /info, status: assumed}\n  status: {path: /status, status: assumed}\n"
        "fields:\n"
        "  model: {endpoint: info, path: info.model, status: assumed}\n"
        "  firmware: {endpoint: info, path: info.firmware, status: assumed}\n"
        "  serial: {endpoint: info, path: info.serial, status: assumed}\n"
        "  mac: {endpoint: info, path: info.mac, status: assumed}\n"
        "  uptime_s: {endpoint: status, path: data.uptime, status: assumed}\n"
    )
    if update_field is not None:
        text += f"  update_state: {update_field}\n"
    if section is not None:
        text += f"update_state: {section}\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "upd-test.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def sample_with(
    server: StatusServer,
    tmp_path: Path,
    status: dict[str, Any],
    section: str | None = None,
    mapped: bool = True,
) -> HealthSample:
    field = "{endpoint: status, path: data.upgrade.state, status: assumed}" if mapped else None
    write_profile(tmp_path / "profiles", field, section)
    profile = load_profile("upd-test", [tmp_path / "profiles"])
    device = Device(id="d1", room="R", site="hq", model="A30", host="127.0.0.1", port=server.port)
    server.status = status
    collector = YealinkHttpCollector(device, profile, password=None, pins=None, timeout_s=2.0)
    try:
        return collector.collect_health()
    finally:
        collector.close()


def upgrade(state: Any) -> dict[str, Any]:
    return {"data": {"uptime": 10, "upgrade": {"state": state}}}


CUSTOM = "{updating_values: [busy, true], status: assumed}"


@pytest.mark.parametrize(
    ("status", "section", "expected"),
    [
        (upgrade("upgrading"), None, True),
        (upgrade(" Downloading "), None, True),  # text compares trimmed, case-insensitively
        (upgrade("INSTALLING"), None, True),
        (upgrade("updating"), None, True),
        (upgrade("idle"), None, False),
        (upgrade(""), None, False),
        (upgrade(None), None, False),
        (upgrade({"phase": "upgrading"}), None, False),  # not a state value: no update
        (upgrade(True), None, False),  # the default values are words only
        ({"data": {"uptime": 10}}, None, False),  # no upgrade block in the answer: none running
        (upgrade("busy"), CUSTOM, True),
        (upgrade(True), CUSTOM, True),
        (upgrade("upgrading"), CUSTOM, False),  # the profile's own list replaces the defaults
        (upgrade(1), CUSTOM, False),  # 1 is not true
    ],
    ids=lambda v: json.dumps(v) if not isinstance(v, str | None) else str(v),
)
def test_driver_reads_the_update_state_as_the_profile_says(
    status_server: StatusServer, tmp_path: Path, status: dict[str, Any], section: str | None, expected: bool
) -> None:
    sample = sample_with(status_server, tmp_path, status, section)
    assert sample.updating is expected
    assert sample.uptime_s == 10


def test_a_profile_without_the_field_says_nothing_about_updates(
    status_server: StatusServer, tmp_path: Path
) -> None:
    sample = sample_with(status_server, tmp_path, upgrade("upgrading"), mapped=False)
    assert sample.updating is None


def test_built_in_profiles_map_the_update_state_as_assumed_with_the_default_values() -> None:
    for name in ("yealink-a20", "yealink-a30", "yealink-mvc"):
        profile = load_profile(name)
        fmap = profile.fields["update_state"]
        assert fmap.status == "assumed" and fmap.endpoint in profile.endpoints
        assert profile.update_state is not None and profile.update_state.status == "assumed"
        assert profile.update_state.updating_values == UPDATING_VALUES


@pytest.mark.parametrize(
    ("section", "where"),
    [
        ("{updating_values: [], status: assumed}", "update_state.updating_values"),
        ("{updating_values: [upgrading]}", "update_state.status"),
        ("{updating_values: [upgrading], status: assumed, value: x}", "update_state.value"),
    ],
)
def test_a_bad_update_state_section_names_its_key(tmp_path: Path, section: str, where: str) -> None:
    write_profile(tmp_path, "{endpoint: status, path: data.upgrade.state, status: assumed}", section)
    with pytest.raises(ConfigError) as caught:
        load_profile("upd-test", [tmp_path])
    assert any(line.startswith(f"{where}: ") for line in caught.value.lines), caught.value.lines


# --- the simulator's update fault --------------------------------------------------------------


def test_update_fault_arguments() -> None:
    assert "update" in FAULT_KINDS
    assert parse_fault("update", None) == str(DEFAULT_UPDATE_S)
    assert DEFAULT_UPDATE_S > 60 * 60, "a default update outlasts the agent's default limit"
    assert parse_fault("update", "600") == "600.0"
    assert parse_fault("update", "600,120") == "600.0,120.0"
    assert parse_update("600.0,120.0") == (600.0, 120.0)
    for bad in ("0", "-5", "abc", "600,600", "600,-1", "600,x", "90000"):
        with pytest.raises(ValueError, match="update"):
            parse_fault("update", bad)


@pytest.fixture
def fleet(fleet_factory: Callable[..., Fleet]) -> Fleet:
    return fleet_factory(devices=3, seed=11)


def make_agent(fleet: Fleet, tmp_path: Path, clock: FakeClock, **extra: Any) -> Agent:
    """An agent over ``fleet``; ``extra`` top-level config sections are merged into the written config."""
    path = fleet.write_agent_config(
        tmp_path / "agent.yaml",
        data_dir=tmp_path / "data",
        poll_interval_s=60,
        retry_interval_s=10,
        timeout_s=1.0,
        down_after=3,
        up_after=2,
    )
    if extra:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        raw.update(extra)
        path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return Agent(load_config(path), clock=clock)


def poll_until(probe: Callable[[], str], want: str, deadline_s: float = 10.0) -> None:
    """Call ``probe`` every 0.05 s until it answers ``want`` (bounded)."""
    end = time.monotonic() + deadline_s
    seen = probe()
    while seen != want and time.monotonic() < end:
        time.sleep(0.05)
        seen = probe()
    assert seen == want, f"still {seen!r}, waited for {want!r}"


def test_simulated_update_reports_upgrading_goes_silent_then_boots_idle(fleet: Fleet, tmp_path: Path) -> None:
    target = fleet.devices[0]
    agent = make_agent(fleet, tmp_path, FakeClock())
    collector = agent.collector(target.id)

    def phase() -> str:
        try:
            sample = collector.collect_health()
        except CollectorError:
            return "silent"
        if any(c.channel == "http" and not c.ok for c in sample.channels):
            # the web interface is already down while the 6024 channel answers for a few ms more
            # (the simulator stops its channels one after the other): silent for the status
            return "silent"
        fresh = sample.uptime_s is not None and sample.uptime_s < 60
        return "upgrading" if sample.updating else f"idle uptime<60={fresh}"

    try:
        assert collector.collect_health().updating is False
        fleet.fault(target.id, "update", "3600,1")
        assert fleet.faults()[target.id] == ["update 3600.0,1.0"]
        assert phase() == "upgrading"
        fleet.clear(target.id)  # an update cleared early ends at once, no reboot
        assert phase() == "idle uptime<60=False"

        fleet.fault(target.id, "update", "1.5,0.75")  # real seconds: report, then reboot silently
        seen = [phase()]
        end = time.monotonic() + 10
        while seen[-1] != "idle uptime<60=True" and time.monotonic() < end:
            time.sleep(0.05)
            if (now := phase()) != seen[-1]:
                seen.append(now)
        assert seen == ["upgrading", "silent", "idle uptime<60=True"]
        assert fleet.faults()[target.id] == []
    finally:
        agent.stop()


# --- the agent: quiet while updating, one ticket when stuck ------------------------------------


def tickets_of(agent: Agent, device_id: str) -> list[LocalTicket]:
    backend = agent.backend
    assert isinstance(backend, LocalBackend)
    return [t for t in backend.tickets() if t.fields.get("device") == device_id]


def poll(agent: Agent, clock: FakeClock, device_id: str, times: int, every_s: float) -> None:
    for _ in range(times):
        agent.poll_once(device_id)
        clock.advance(every_s)


def test_a_short_update_that_goes_silent_opens_no_ticket(fleet: Fleet, tmp_path: Path) -> None:
    clock = FakeClock()
    agent = make_agent(fleet, tmp_path, clock)
    target = next(d for d in fleet.devices if d.model == "A30")
    try:
        poll(agent, clock, target.id, 1, 60)
        assert agent.updating_since.get(target.id) is None
        fleet.fault(target.id, "update")
        started = clock.now()
        poll(agent, clock, target.id, 2, 60)
        assert agent.updating_since[target.id] == started, "the first poll that saw it starts the clock"
        fleet.fault(target.id, "offline")  # the reboot into the new firmware: nothing answers
        poll(agent, clock, target.id, 6, 10)
        assert agent.states[target.id].health == Health.DOWN
        assert agent.updating_since[target.id] == started, "kept while the device is silent"
        assert "firmware update in progress" in agent.incidents.held()[target.id]
        fleet.clear(target.id)  # back, not updating any more
        poll(agent, clock, target.id, 3, 10)
        assert agent.states[target.id].health == Health.UP
        assert target.id not in agent.updating_since
        assert tickets_of(agent, target.id) == []
    finally:
        agent.stop()


def test_the_same_outage_without_an_update_opens_an_offline_ticket(fleet: Fleet, tmp_path: Path) -> None:
    clock = FakeClock()
    agent = make_agent(fleet, tmp_path, clock)
    target = next(d for d in fleet.devices if d.model == "A30")
    try:
        poll(agent, clock, target.id, 3, 60)
        fleet.fault(target.id, "offline")
        poll(agent, clock, target.id, 6, 10)
        assert [t.fields["problem"] for t in tickets_of(agent, target.id)] == ["offline"]
    finally:
        agent.stop()


def test_an_update_past_the_limit_opens_one_stuck_ticket_with_the_configured_priority(
    fleet: Fleet, tmp_path: Path
) -> None:
    clock = FakeClock()
    agent = make_agent(
        fleet,
        tmp_path,
        clock,
        firmware_update={"max_update_minutes": 5},
        incidents={"firmware_update_stuck": {"priority": "critical"}},
    )
    target = next(d for d in fleet.devices if d.model == "A20")
    try:
        poll(agent, clock, target.id, 1, 60)
        fleet.fault(target.id, "update", "3600")
        poll(agent, clock, target.id, 6, 60)  # minutes 0..5: within the limit
        assert tickets_of(agent, target.id) == []
        poll(agent, clock, target.id, 4, 60)  # past 5 minutes, still updating: one ticket, no more
        tickets = tickets_of(agent, target.id)
        assert [(t.fields["problem"], t.priority, t.status) for t in tickets] == [(STUCK, "critical", "open")]
        assert agent.states[target.id].health == Health.UP, "it answered all along: no outage"

        fleet.clear(target.id)  # the update finally ends
        poll(agent, clock, target.id, 2, 60)
        after = [(t.fields["problem"], t.status) for t in tickets_of(agent, target.id)]
        assert after == [(STUCK, "resolved")]
        assert target.id not in agent.updating_since
    finally:
        agent.stop()


def test_a_device_silent_past_the_update_limit_is_offline_as_well(fleet: Fleet, tmp_path: Path) -> None:
    clock = FakeClock()
    agent = make_agent(fleet, tmp_path, clock, firmware_update={"max_update_minutes": 5})
    target = next(d for d in fleet.devices if d.model == "MVC")
    try:
        poll(agent, clock, target.id, 1, 60)
        fleet.fault(target.id, "update")
        poll(agent, clock, target.id, 1, 60)
        fleet.fault(target.id, "offline")
        poll(agent, clock, target.id, 20, 10)  # 200 s silent: down, held by the update
        assert agent.states[target.id].health == Health.DOWN
        assert tickets_of(agent, target.id) == []
        poll(agent, clock, target.id, 12, 10)  # the update is now overdue: the hold lifts
        problems = sorted((t.fields["problem"], t.priority) for t in tickets_of(agent, target.id))
        assert problems == [(STUCK, "medium"), ("offline", "critical")]
    finally:
        agent.stop()
