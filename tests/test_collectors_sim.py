"""The Yealink driver against the simulator fleet: every model, then each fault it can inject."""

from __future__ import annotations

import random
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.base import Collector
from collectors.errors import AuthFailed, DeviceTimeout, DeviceUnreachable, UnexpectedResponse
from collectors.pins import PinStore, pin_key
from collectors.registry import build_collector
from config.loader import load_profile, profile_name, resolve_password
from config.schema import Credentials, Device
from simulator.fleet import Fleet, SimDevice

MODELS = ("A20", "A30", "MVC")


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    sim = Fleet(devices=3, seed=1, net=random.randint(100, 200), port=0)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def collector_for(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[PinStore, dict[str, Collector]]]:
    """One collector per model, built the way the agent builds them (env password, registry)."""
    fleet.clear()
    pins = PinStore(tmp_path / "pins.json")
    built: dict[str, Collector] = {}
    for sim in fleet.devices:
        monkeypatch.setenv("HEZO_SIM_PASSWORD", sim.password)
        device = Device(
            id=sim.id,
            room=sim.room,
            site=sim.site,
            model=sim.model,  # type: ignore[arg-type]
            host=sim.host,
            port=sim.port,
            credentials=Credentials(username=sim.username, password_env="HEZO_SIM_PASSWORD"),
        )
        assert device.credentials is not None
        built[sim.model] = build_collector(
            device,
            load_profile(profile_name(sim.model, None)),
            password=resolve_password(device.credentials, sim.id),
            pins=pins,
            timeout_s=0.3,
            max_response_bytes=200_000,
            max_log_bytes=5_000_000,
        )
    yield pins, built
    for collector in built.values():
        collector.close()
    fleet.clear()


def sim_device(fleet: Fleet, model: str) -> SimDevice:
    return next(d for d in fleet.devices if d.model == model)


@pytest.mark.parametrize("model", MODELS)
def test_healthy_device_reports_its_identity_and_pins_its_certificate(
    fleet: Fleet, collector_for: tuple[PinStore, dict[str, Collector]], model: str
) -> None:
    pins, collectors = collector_for
    sim = sim_device(fleet, model)
    sample = collectors[model].collect_health()
    facts = sample.facts
    assert (facts.serial, facts.mac, facts.firmware, facts.hostname) == (
        sim.serial,
        sim.mac,
        sim.firmware,
        sim.hostname,
    )
    assert sample.peripherals and all(p.connected for p in sample.peripherals)
    assert sample.uptime_s is not None and sample.call_state == "idle"
    assert pins.get(pin_key(sim.host, sim.port)) == sim.cert_sha256


@pytest.mark.parametrize("model", MODELS)
def test_logs_arrive_as_a_readable_archive(
    collector_for: tuple[PinStore, dict[str, Collector]], model: str, tmp_path: Path
) -> None:
    bundle = collector_for[1][model].collect_logs(tmp_path / "logs")
    assert bundle.size_bytes == bundle.path.stat().st_size > 0
    with tarfile.open(bundle.path, "r:gz") as tar:
        assert tar.getnames()


@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [
        ("offline", DeviceUnreachable, "connection refused"),
        ("hang", DeviceTimeout, "within 0.3 s"),
        ("auth-fail", AuthFailed, "HTTP 401"),
        ("malformed", UnexpectedResponse, "not JSON"),
    ],
)
def test_fault_becomes_its_collector_error(
    fleet: Fleet,
    collector_for: tuple[PinStore, dict[str, Collector]],
    fault: str,
    error: type[Exception],
    text: str,
) -> None:
    sim = sim_device(fleet, "A30")
    fleet.fault(sim.id, fault)
    with pytest.raises(error, match=text) as caught:
        collector_for[1]["A30"].collect_health()
    assert sim.password not in str(caught.value)


def test_malformed_log_export_is_rejected(
    fleet: Fleet, collector_for: tuple[PinStore, dict[str, Collector]], tmp_path: Path
) -> None:
    fleet.fault(sim_device(fleet, "MVC").id, "malformed")
    with pytest.raises(UnexpectedResponse, match="not a gzip archive"):
        collector_for[1]["MVC"].collect_logs(tmp_path / "logs")


@pytest.mark.parametrize("model", MODELS)
def test_unplugged_camera_is_reported_disconnected(
    fleet: Fleet, collector_for: tuple[PinStore, dict[str, Collector]], model: str
) -> None:
    fleet.fault(sim_device(fleet, model).id, "unplug", "camera")
    sample = collector_for[1][model].collect_health()
    state = {p.kind: p.connected for p in sample.peripherals}
    assert state["camera"] is False
    assert all(connected for kind, connected in state.items() if kind != "camera")


def test_recovered_device_polls_again_after_a_fault(
    fleet: Fleet, collector_for: tuple[PinStore, dict[str, Collector]]
) -> None:
    sim = sim_device(fleet, "A20")
    collector = collector_for[1]["A20"]
    fleet.fault(sim.id, "offline")
    with pytest.raises(DeviceUnreachable):
        collector.collect_health()
    fleet.clear(sim.id)
    assert collector.collect_health().facts.serial == sim.serial


def test_slow_device_past_the_timeout_is_a_timeout(
    fleet: Fleet, collector_for: tuple[PinStore, dict[str, Collector]]
) -> None:
    sim = sim_device(fleet, "A30")
    fleet.fault(sim.id, "slow", "2.0")
    with pytest.raises(DeviceTimeout):
        collector_for[1]["A30"].collect_health()


def test_slow_device_within_the_timeout_answers_with_its_latency(
    fleet: Fleet, collector_for: tuple[PinStore, dict[str, Collector]]
) -> None:
    sim = sim_device(fleet, "A20")
    collector = collector_for[1]["A20"]
    collector.collect_health()  # log in first, so the slow poll is only the data requests
    fleet.fault(sim.id, "slow", "0.1")
    sample = collector.collect_health()
    assert sample.facts.serial == sim.serial
    assert sample.latency_ms >= 100


def test_rebooting_device_is_unreachable_then_answers_with_fresh_uptime(
    fleet: Fleet, collector_for: tuple[PinStore, dict[str, Collector]]
) -> None:
    sim = sim_device(fleet, "MVC")
    collector = collector_for[1]["MVC"]
    fleet.fault(sim.id, "reboot", "0.5")
    with pytest.raises(DeviceUnreachable):
        collector.collect_health()
    deadline = time.monotonic() + 10
    sample = None
    while sample is None and time.monotonic() < deadline:
        try:
            sample = collector.collect_health()
        except DeviceUnreachable:
            time.sleep(0.05)
    assert sample is not None, "the device did not come back from its reboot"
    assert sample.uptime_s is not None and sample.uptime_s < 5
