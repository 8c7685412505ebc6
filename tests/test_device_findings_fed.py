"""Clock skew, certificate expiry and config drift fed end to end: simulator on loopback → real Agent.

The three detectors are unit-tested in tests/test_findings.py; here their inputs come from a real
device: the HTTP ``Date`` header (clock), the TLS peer certificate (expiry) and the profile's
``config`` endpoint against the baseline file (drift). Polls are driven with ``poll_once`` and a
FakeClock started at the real time (the simulated certificate and Date header follow real time).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.cli import main as agent_main
from agent.clock import FakeClock
from agent.daemon import Agent
from collectors.device_signals import cert_not_after, clock_offset_s, parse_http_date
from config.loader import load_config
from simulator.certs import make_certificate
from simulator.cli import build_parser as sim_parser
from simulator.device import parse_fault
from simulator.fleet import Fleet
from uploader.backends.local import LocalBackend, LocalTicket

# --- parse units ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate (RFC 7231's preferred form)
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850
        "Sun Nov  6 08:49:37 1994",  # obsolete asctime, no zone: UTC
        "Sun, 06 Nov 1994 09:49:37 +0100",  # a numeric zone, normalised to UTC
    ],
)
def test_http_date_forms_parse_to_utc(header: str) -> None:
    assert parse_http_date(header) == datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)


@pytest.mark.parametrize("header", [None, "", "   ", "yesterday", "Sun, 99 Foo 1994 08:49:37 GMT"])
def test_unusable_date_header_gives_no_reading(header: str | None) -> None:
    assert parse_http_date(header) is None
    assert clock_offset_s(header, 100.0, 101.0) is None


def test_clock_offset_compares_with_the_round_trip_midpoint_and_the_truncated_second() -> None:
    stamped = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    # we sent at T-0.2 and heard back at T+0.2; the device said T: its clock read T..T+1 at T
    assert clock_offset_s("Sun, 01 Mar 2026 12:00:00 GMT", stamped - 0.2, stamped + 0.2) == pytest.approx(0.5)
    # the same answer 300 s behind
    offset = clock_offset_s("Sun, 01 Mar 2026 11:55:00 GMT", stamped - 0.2, stamped + 0.2)
    assert offset == pytest.approx(-299.5)
    assert clock_offset_s("Sun, 01 Mar 2026 12:00:00 GMT", stamped + 1, stamped) is None  # time went back


def test_cert_not_after_reads_the_der() -> None:
    cert = make_certificate("127.0.0.1", "unit", valid_days=10)
    der = x509.load_pem_x509_certificate(cert.cert_pem).public_bytes(Encoding.DER)
    not_after = cert_not_after(der)
    assert not_after is not None and not_after.tzinfo is not None
    assert abs(not_after - (datetime.now(UTC) + timedelta(days=10))) < timedelta(minutes=1)
    assert cert_not_after(b"not a certificate") is None
    assert cert_not_after(None) is None


def test_simulator_parses_the_new_faults() -> None:
    assert parse_fault("clock-skew", "-300") == "-300.0"
    assert parse_fault("config-set", "audio.volume=3") == "audio.volume=3"
    assert parse_fault("config-set", "time.ntp_server=10.0.0.1") == 'time.ntp_server="10.0.0.1"'
    for kind, arg in [("clock-skew", None), ("clock-skew", "soon"), ("clock-skew", "nan"),
                      ("config-set", None), ("config-set", "volume"), ("config-set", "a..b=1")]:  # fmt: skip
        with pytest.raises(ValueError):
            parse_fault(kind, arg)
    args = sim_parser().parse_args(["fault", "a30-01", "clock-skew", "-300"])  # a value, not an option
    assert (args.kind, args.arg) == ("clock-skew", "-300")
    assert sim_parser().parse_args(["run", "--cert-days", "10"]).cert_days == 10


# --- end to end -----------------------------------------------------------------------------


def make_agent(
    fleet: Fleet, tmp_path: Path, incidents: dict[str, Any] | None = None
) -> tuple[Agent, FakeClock, Path]:
    """The real agent on ``fleet``'s config (plus ``incidents`` overrides), on a FakeClock at real time."""
    cfg_path = fleet.write_agent_config(
        tmp_path / "agent.yaml", data_dir=tmp_path / "data", language="en", timeout_s=3.0
    )
    if incidents:
        data = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        data["incidents"] = incidents
        cfg_path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    clock = FakeClock(datetime.now(UTC))
    return Agent(load_config(cfg_path), clock=clock), clock, cfg_path


def poll(agent: Agent, clock: FakeClock, device_id: str, times: int, every_s: float = 60.0) -> None:
    for _ in range(times):
        agent.poll_once(device_id)
        assert agent.last_outcomes[device_id].ok, agent.last_outcomes[device_id].detail
        clock.advance(every_s)


def tickets(agent: Agent, problem: str | None = None) -> list[LocalTicket]:
    assert isinstance(agent.backend, LocalBackend)
    found = agent.backend.tickets()
    return [t for t in found if problem is None or t.fields["problem"] == problem]


def test_healthy_devices_raise_nothing_even_with_a_2_s_skew_limit(
    fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> None:
    fleet = fleet_factory(devices=3, seed=21)  # A30, A20, MVC
    agent, clock, _ = make_agent(fleet, tmp_path, {"clock_skew": {"max_skew_s": 2, "raise_after": 1}})
    try:
        for _ in range(6):
            for dev in fleet.devices:
                poll(agent, clock, dev.id, 1, every_s=0)
            clock.advance(60)
        for dev in fleet.devices:
            sample = agent.last_outcomes[dev.id].sample
            assert sample is not None and sample.device_time is not None and sample.cert_not_after is not None
            assert abs((sample.device_time - sample.taken_at).total_seconds()) < 2
            assert (tmp_path / "data" / "baselines" / f"{dev.id}.json").is_file()  # first config = baseline
        assert tickets(agent) == []
        assert all(agent.findings.open_findings(d.id) == [] for d in fleet.devices)
    finally:
        agent.stop()


def test_skewed_clock_gives_one_low_ticket_that_clears_when_the_skew_goes(
    fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> None:
    fleet = fleet_factory(devices=1, seed=22)
    dev = fleet.devices[0]
    agent, clock, _ = make_agent(fleet, tmp_path)
    try:
        poll(agent, clock, dev.id, 2)
        fleet.fault(dev.id, "clock-skew", "-300")
        poll(agent, clock, dev.id, 2)
        assert tickets(agent) == [], "clock_skew.raise_after is 3"
        poll(agent, clock, dev.id, 4)
        [ticket] = tickets(agent)
        assert (ticket.fields["problem"], ticket.priority, ticket.status) == ("clock_skew", "low", "open")
        assert "-300 s" in ticket.body or "-299 s" in ticket.body or "-301 s" in ticket.body, ticket.body

        fleet.fault(dev.id, "clock-skew", "0")
        poll(agent, clock, dev.id, 3)
        [ticket] = tickets(agent)
        assert ticket.status == "resolved"
    finally:
        agent.stop()


def test_certificate_valid_ten_days_gives_one_low_cert_expiry_ticket(
    fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> None:
    fleet = fleet_factory(devices=1, seed=23, cert_days=10)
    dev = fleet.devices[0]
    agent, clock, _ = make_agent(fleet, tmp_path)
    try:
        poll(agent, clock, dev.id, 3)
        [ticket] = tickets(agent)
        assert (ticket.fields["problem"], ticket.priority, ticket.status) == ("cert_expiry", "low", "open")
        assert "9 days left" in ticket.body or "10 days left" in ticket.body, ticket.body
    finally:
        agent.stop()


def test_config_change_gives_one_low_drift_ticket_and_baseline_accepts_it(
    fleet_factory: Callable[..., Fleet], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = fleet_factory(devices=1, seed=24)
    dev = fleet.devices[0]
    agent, clock, cfg_path = make_agent(fleet, tmp_path)
    secret = "NewSecret-4242-xyz"
    try:
        poll(agent, clock, dev.id, 1)  # the first configuration read becomes the baseline
        baseline_file = tmp_path / "data" / "baselines" / f"{dev.id}.json"
        saved = json.loads(baseline_file.read_text(encoding="utf-8"))["config"]
        assert saved["time.ntp_server"] == "pool.ntp.org"
        assert str(saved["provisioning.password"]).startswith("hmac-sha256:")  # a keyed hash, not the value

        fleet.fault(dev.id, "config-set", "time.ntp_server=10.0.0.1")
        fleet.fault(dev.id, "config-set", f"provisioning.password={secret}")
        assert fleet.faults()[dev.id] == ["config-set time.ntp_server", "config-set provisioning.password"]
        poll(agent, clock, dev.id, 3)
        assert tickets(agent) == [], "the configuration is read every check_every_minutes, not every poll"

        clock.advance(360 * 60)
        poll(agent, clock, dev.id, 2)
        [ticket] = tickets(agent)
        assert (ticket.fields["problem"], ticket.priority, ticket.status) == ("config_drift", "low", "open")
        assert "time.ntp_server" in ticket.body and "10.0.0.1" in ticket.body
        assert "provisioning.password" in ticket.body
        assert "provisioning.password: *** -> ***" in ticket.body
        assert secret not in ticket.body and "hmac-sha256" not in ticket.body  # masked, not even the hash

        capsys.readouterr()
        assert agent_main(["baseline", dev.id, "-c", str(cfg_path), "--show"]) == 0
        shown = capsys.readouterr().out
        assert "~ time.ntp_server" in shown and "~ provisioning.password: *** -> ***" in shown
        assert secret not in shown
        poll(agent, clock, dev.id, 1)
        assert tickets(agent)[0].status == "open", "--show accepts nothing"

        assert agent_main(["baseline", dev.id, "-c", str(cfg_path)]) == 0
        assert secret not in baseline_file.read_text(encoding="utf-8")
        poll(agent, clock, dev.id, 1)  # the agent picks the accepted baseline up at once
        [ticket] = tickets(agent)
        assert ticket.status == "resolved"
        capsys.readouterr()
        assert agent_main(["baseline", dev.id, "-c", str(cfg_path), "--show"]) == 0
        assert "matches its baseline" in capsys.readouterr().out
    finally:
        agent.stop()
