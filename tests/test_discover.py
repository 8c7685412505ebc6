"""``hezo-agent discover``: finds simulated devices on loopback, refuses other networks, stays bounded."""

from __future__ import annotations

import json
import random
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from agent.cli import main
from agent.clock import FakeClock
from agent.discover import (
    PortSpec,
    Scanner,
    ScanSettings,
    TargetRefused,
    TokenBucket,
    config_model,
    identify,
    parse_ports,
    parse_targets,
    yaml_snippet,
)
from collectors.discovery import (
    CertFacts,
    ProbeResult,
    SnmpFacts,
    parse_arp_a,
    parse_http,
    parse_ip_neigh,
    parse_proc_arp,
    probe_ssh,
    probe_tcp,
)
from config.schema import Device
from simulator.fleet import Fleet

COMMUNITY_ENV = "HEZO_TEST_DISCOVER_COMMUNITY"


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """Four devices (A30, A20, MVC, A30) at 127.<net>.0.1-4, sharing one HTTPS, 6024 and SNMP port.

    Discovery probes a fixed port list, so the fleet uses fixed (free) ports rather than one
    ephemeral port per device; the random 127.<net> keeps it apart from other tests' fleets.
    """
    last: OSError | None = None
    for _ in range(5):
        https, vcapi, snmp = (
            _free_port(socket.SOCK_STREAM),
            _free_port(socket.SOCK_STREAM),
            _free_port(socket.SOCK_DGRAM),
        )
        sim = Fleet(4, seed=23, net=random.randint(201, 250), port=https, vcapi_port=vcapi, snmp_port=snmp)
        try:
            sim.start()
        except OSError as err:
            last = err
            continue
        try:
            yield sim
        finally:
            sim.stop()
        return
    raise AssertionError(f"no free ports for the discovery fleet: {last}")


def _ports(sim: Fleet) -> str:
    dev = sim.devices[0]
    return f"https:{dev.port},vcapi:{dev.vcapi_port},snmp:{dev.snmp_port}"


def _net(sim: Fleet) -> str:
    return sim.devices[0].host.rsplit(".", 2)[0]


def _settings(sim: Fleet, **options: Any) -> ScanSettings:
    assert sim.snmp is not None
    base: dict[str, Any] = {
        "timeout_s": 2.0,
        "concurrency": 8,
        "rate": 500.0,
        "community": sim.snmp.community,
    }
    return ScanSettings(parse_ports(_ports(sim)), **{**base, **options})


# --- against the simulator ------------------------------------------------------------------------


def test_scan_of_a_loopback_range_finds_every_simulated_device_with_its_model(fleet: Fleet) -> None:
    hosts = parse_targets(f"{_net(fleet)}.0.0/29")  # .1-.6: four devices, two empty addresses
    first = fleet.devices[1]
    scanner = Scanner(_settings(fleet), neighbours=lambda: {first.host: "00:15:65:aa:bb:cc"})

    reports = scanner.scan(hosts)

    assert [r.host for r in reports] == [d.host for d in fleet.devices]
    for report, dev in zip(reports, fleet.devices, strict=True):
        assert report.yealink, report.evidence
        assert (report.model, report.firmware, report.name) == (dev.model, dev.firmware, dev.hostname)
        assert report.model_source == "6024 banner"
        assert any(e.startswith("SNMP sysObjectID 1.3.6.1.4.1.37459.") for e in report.evidence)
        assert any(e.startswith("TLS certificate") for e in report.evidence)
        assert report.https_port == dev.port
    assert reports[1].mac == "00:15:65:aa:bb:cc"
    assert any("Yealink OUI 00:15:65" in e for e in reports[1].evidence)
    assert not any("OUI" in e for r in reports if r.host != first.host for e in r.evidence)


def test_cli_prints_json_and_a_snippet_that_validates_as_devices(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fleet.snmp is not None
    monkeypatch.setenv(COMMUNITY_ENV, fleet.snmp.community)
    net = _net(fleet)
    argv = ["discover", f"{net}.0.1-{net}.0.8", "--ports", _ports(fleet), "--json", "--timeout", "2",
            "--community-env", COMMUNITY_ENV, "--site", "warszawa-hq"]  # fmt: skip

    assert main(argv) == 0

    out = json.loads(capsys.readouterr().out)
    assert (out["scanned"], out["answered"], out["yealink"]) == (8, 4, 4)
    assert fleet.snmp.community not in json.dumps(out)
    items = yaml.safe_load(out["devices_yaml"])
    devices = [Device.model_validate(item) for item in items]
    assert [(d.host, d.model, d.port, d.site) for d in devices] == [
        (s.host, s.model, s.port, "warszawa-hq") for s in fleet.devices
    ]
    assert len({d.id for d in devices}) == 4


def test_cli_table_names_the_devices_without_snmp(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    dev = fleet.devices[2]
    argv = ["discover", dev.host, "--ports", f"https:{dev.port},vcapi:{dev.vcapi_port},snmp:{dev.snmp_port}"]

    assert main(argv) == 0

    captured = capsys.readouterr()
    assert "SNMP skipped" in captured.err
    assert dev.host in captured.out and dev.firmware in captured.out
    assert "1 answered, 1 Yealink" in captured.out
    assert yaml.safe_load(captured.out.split("Yealink device(s)\n", 1)[1])[0]["model"] == dev.model


def test_a_range_with_nothing_reports_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    net = random.randint(201, 250)
    port = _free_port(socket.SOCK_STREAM)
    ports = f"https:{port},vcapi:{port + 1 if port < 65535 else 1}"
    argv = ["discover", f"127.{net}.9.1-8", "--ports", ports, "--json", "--timeout", "0.5"]

    assert main(argv) == 0

    out = json.loads(capsys.readouterr().out)
    assert (out["scanned"], out["answered"], out["yealink"], out["hosts"]) == (8, 0, 0, [])
    assert "no Yealink device found" in out["devices_yaml"]


# --- refusing other networks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["192.0.2.0/30", "10.0.0.5", "127.255.255.254-128.0.0.1", "127.0.0.1,198.51.100.7", "2001:db8::/126"],
)
def test_non_loopback_targets_are_refused(target: str) -> None:
    with pytest.raises(TargetRefused, match="--allow-non-loopback"):
        parse_targets(target)


def test_cli_refuses_a_real_network_before_any_connection(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    attempts: list[object] = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: attempts.append(a))

    assert main(["discover", "192.0.2.0/29", "--ports", "443"]) == 2

    assert "not a loopback address" in capsys.readouterr().err
    assert attempts == []


def test_targets_accept_cidr_ranges_and_single_addresses() -> None:
    assert parse_targets("127.0.0.0/30") == ["127.0.0.1", "127.0.0.2"]
    assert parse_targets("127.0.0.8-10") == ["127.0.0.8", "127.0.0.9", "127.0.0.10"]
    assert parse_targets("127.0.0.1, ::1") == ["127.0.0.1", "::1"]
    with pytest.raises(ValueError, match="not an IP address"):
        parse_targets("localhost")
    with pytest.raises(ValueError, match="at most 65536"):
        parse_targets("127.0.0.0/8")
    with pytest.raises(ValueError, match="must go up"):
        parse_targets("127.0.0.9-127.0.0.1")


def test_ports_map_well_known_numbers_and_reject_nonsense() -> None:
    assert parse_ports("443,80,6024,22,161,9000") == (
        PortSpec("https", 443), PortSpec("http", 80), PortSpec("vcapi", 6024), PortSpec("ssh", 22),
        PortSpec("snmp", 161), PortSpec("tcp", 9000),
    )  # fmt: skip
    assert parse_ports("https:18443, snmp:1161") == (PortSpec("https", 18443), PortSpec("snmp", 1161))
    for bad in ("", "0", "70000", "gopher:70", "https:"):
        with pytest.raises(ValueError, match="--ports"):
            parse_ports(bad)


# --- rate and concurrency -------------------------------------------------------------------------


def _fake_time() -> tuple[FakeClock, list[float], Any]:
    clock = FakeClock()
    times: list[float] = []

    def sleep(seconds: float) -> None:
        clock.advance(seconds)

    return clock, times, sleep


def test_token_bucket_spaces_acquisitions_at_the_rate_after_the_burst() -> None:
    clock, times, sleep = _fake_time()
    bucket = TokenBucket(5.0, burst=3, clock=clock, sleep=sleep)

    for _ in range(13):
        bucket.acquire()
        times.append(clock.monotonic())

    assert times[:3] == [0.0, 0.0, 0.0]
    assert times[3:] == pytest.approx([0.2 * n for n in range(1, 11)])
    for i, start in enumerate(times):  # no window holds more than burst + rate * length
        for j in range(i, len(times)):
            assert j - i + 1 <= 3 + 5.0 * (times[j] - start) + 1e-9


def test_token_bucket_refills_while_idle_but_never_beyond_the_burst() -> None:
    clock, _times, sleep = _fake_time()
    bucket = TokenBucket(2.0, burst=2, clock=clock, sleep=sleep)
    assert [bucket.acquire() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.5])
    clock.advance(60)
    assert [bucket.acquire() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.5])


def test_scanner_takes_one_token_per_probe(fleet: Fleet) -> None:
    clock, _times, sleep = _fake_time()
    limiter = TokenBucket(2.0, burst=1, clock=clock, sleep=sleep)
    scanner = Scanner(_settings(fleet, concurrency=1, community=None), limiter=limiter, neighbours=dict)

    reports = scanner.scan(parse_targets(f"{_net(fleet)}.0.1-6"))

    assert len(reports) == 4
    assert limiter.acquired == 6 * 2  # https + vcapi per address; SNMP skipped without a community
    assert clock.monotonic() == pytest.approx((12 - 1) / 2.0)


def test_scanner_never_probes_more_hosts_at_once_than_its_concurrency() -> None:
    active, peak, lock = 0, 0, threading.Lock()
    together = threading.Barrier(3, timeout=10)

    class Counting(Scanner):
        def probe_host(self, host: str) -> list[ProbeResult]:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
                first_three = int(host.rsplit(".", 1)[1]) <= 3
            if first_three:
                together.wait()  # proves three run at once
            with lock:
                active -= 1
            return []

    settings = ScanSettings((PortSpec("tcp", 9),), concurrency=3)
    Counting(settings, neighbours=dict).scan(parse_targets("127.0.0.1-24"))

    assert peak == 3


# --- identification without the network ----------------------------------------------------------


def test_identify_weighs_page_titles_certificates_and_foreign_snmp() -> None:
    page = ProbeResult(
        "https", 443, "open", title="Yealink MeetingBar A20", cert=CertFacts("CN=x", "CN=x", "aa")
    )
    report = identify("127.0.0.9", [page])
    assert (report.yealink, report.model, report.model_source) == (True, "A20", "https page")

    other = ProbeResult("snmp", 161, "open", snmp=SnmpFacts("1.3.6.1.4.1.8072.3.2.10", "Linux box", "box"))
    plain = ProbeResult("https", 443, "open", title="Router", cert=CertFacts("CN=router", "CN=router", "bb"))
    assert not identify("127.0.0.10", [other, plain]).yealink
    assert identify("127.0.0.10", [other], mac="00:15:65:01:02:03").yealink


def test_snippet_marks_an_unidentified_model_so_the_config_check_catches_it() -> None:
    report = identify("127.0.0.11", [ProbeResult("http", 80, "open", body_hints=["yealink"])])
    text = yaml_snippet([report])
    item = yaml.safe_load(text)[0]
    assert item["model"] == "CHANGE-ME" and item["site"] == "my-site"
    with pytest.raises(ValueError, match="model"):
        Device.model_validate(item)


def test_config_model_names() -> None:
    texts = ("Yealink MeetingBar A30, firmware 1", "MVC640", "A20-1234", "T54W")
    assert [config_model(t) for t in texts] == ["A30", "MVC", "A20", None]


def test_http_answers_and_neighbour_tables_parse() -> None:
    raw = b"HTTP/1.1 200 OK\r\nServer: lighttpd\r\n\r\n<html><TITLE> Yealink &amp; co </TITLE>"
    assert parse_http(raw) == (200, "lighttpd", "Yealink & co")
    neigh = "192.0.2.7 dev eth0 lladdr 00:15:65:AA:BB:CC REACHABLE\nfd00::1 dev eth0 FAILED\n"
    assert parse_ip_neigh(neigh) == {"192.0.2.7": "00:15:65:aa:bb:cc"}
    proc = (
        "IP address       HW type     Flags       HW address            Mask     Device\n"
        "192.0.2.8        0x1         0x2         00:15:65:01:02:03     *        eth0\n"
        "192.0.2.9        0x1         0x0         00:00:00:00:00:00     *        eth0\n"
    )
    assert parse_proc_arp(proc) == {"192.0.2.8": "00:15:65:01:02:03"}
    windows = (
        "Interface: 192.0.2.1 --- 0x4\n  Internet Address  Physical Address  Type\n"
        "  192.0.2.20  00-15-65-0a-0b-0c  dynamic\n"
    )
    assert parse_arp_a(windows) == {"192.0.2.20": "00:15:65:0a:0b:0c"}


def test_ssh_banner_and_port_states_on_a_local_listener() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"SSH-2.0-dropbear_2022.83\r\n")
            conn.recv(16)  # until the client hangs up

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        result = probe_ssh("127.0.0.1", port, 2.0)
    finally:
        thread.join(5)
        server.close()

    assert (result.state, result.banner) == ("open", "SSH-2.0-dropbear_2022.83")
    assert probe_tcp("127.0.0.1", port, 1.0).state == "closed"
