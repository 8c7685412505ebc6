"""Network vs device: the site judge, real TCP canaries on loopback, the agent's own uplink."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.site_network import (
    DEFAULT_ROUTE_PROBES,
    FALLBACK_PORTS,
    RouteUplink,
    SiteObservation,
    SiteVerdict,
    judge_site,
    judge_sites,
    local_address_towards,
    probe_canary,
    probe_site,
)
from config.loader import ConfigError, load_config
from config.schema import AgentConfig, Canary, Site

NORMAL = SiteVerdict.NORMAL
SITE_DOWN = SiteVerdict.SITE_NETWORK_DOWN
OFFLINE = SiteVerdict.AGENT_OFFLINE


def obs(devices: str, canaries: str) -> SiteObservation:
    """``"ff?"`` = three items: failed, failed, not known yet (``o`` = answered)."""
    code = {"o": True, "f": False, "?": None}
    return SiteObservation(
        devices={f"d{i}": code[c] for i, c in enumerate(devices)},
        canaries={f"c{i}": code[c] for i, c in enumerate(canaries)},
    )


# --- the judge ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("devices", "canaries", "verdict"),
    [
        ("ooo", "oo", NORMAL),
        ("fff", "ff", SITE_DOWN),  # everything at the site failed together
        ("f", "f", SITE_DOWN),
        ("fff", "fo", NORMAL),  # the gateway answers: the devices are down, not the network
        ("ffo", "ff", NORMAL),  # one device answers: the network works
        ("fff", "", NORMAL),  # no canaries: cannot tell the network from the devices
        ("", "ff", NORMAL),  # no devices: nothing to spare tickets for
        ("ff?", "ff", NORMAL),  # a device not polled yet is not a failure
        ("fff", "f?", NORMAL),
        ("ooo", "ff", NORMAL),  # canaries down, devices fine: no site incident
    ],
)
def test_judge_one_site(devices: str, canaries: str, verdict: SiteVerdict) -> None:
    assert judge_site(obs(devices, canaries)) is verdict


@pytest.mark.parametrize(
    ("sites", "uplink_ok", "expected"),
    [
        ({"a": obs("ff", "f"), "b": obs("oo", "o")}, True, {"a": SITE_DOWN, "b": NORMAL}),
        ({"a": obs("ff", "f"), "b": obs("oo", "o")}, False, {"a": SITE_DOWN, "b": NORMAL}),  # b answers
        ({"a": obs("ff", "f"), "b": obs("ff", "ff")}, True, {"a": SITE_DOWN, "b": SITE_DOWN}),
        ({"a": obs("ff", "f"), "b": obs("ff", "ff")}, False, {"a": OFFLINE, "b": OFFLINE}),
        ({"a": obs("ff", ""), "b": obs("f", "f")}, False, {"a": OFFLINE, "b": OFFLINE}),
        (
            {"a": obs("ff", "f"), "b": obs("fo", "f")},
            False,
            {"a": SITE_DOWN, "b": NORMAL},
        ),  # a device answers
        ({"a": obs("oo", "f")}, False, {"a": NORMAL}),  # the uplink check is wrong: devices answer
        ({"a": obs("??", "??")}, False, {"a": OFFLINE}),
        ({"a": obs("??", "??")}, True, {"a": NORMAL}),
        ({}, False, {}),
    ],
    ids=[
        "one-site-down",
        "one-site-down-no-uplink",
        "two-sites-down-uplink-ok",
        "agent-offline",
        "agent-offline-site-without-canaries",
        "device-answers",
        "uplink-check-wrong",
        "nothing-known-no-uplink",
        "nothing-known",
        "no-sites",
    ],
)
def test_judge_every_site(
    sites: dict[str, SiteObservation], uplink_ok: bool, expected: dict[str, SiteVerdict]
) -> None:
    assert judge_sites(sites, uplink_ok) == expected


# --- real canaries on loopback ---------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener on 127.0.0.1 (an ephemeral port) that accepts connections."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield int(sock.getsockname()[1])
    sock.close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (bound once to get a free number, then released)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def test_a_canary_that_accepts_is_up(listener: int) -> None:
    result = probe_canary(Canary(name="gateway", host="127.0.0.1", port=listener), timeout_s=2.0)
    assert result.ok and result.port == listener and result.detail == "connected"
    assert 0 <= result.latency_ms < 2000


def test_a_canary_port_that_refuses_is_down(closed_port: int) -> None:
    result = probe_canary(Canary(name="switch", host="127.0.0.1", port=closed_port), timeout_s=2.0)
    assert not result.ok and result.port == closed_port and result.detail == "refused"


def test_a_canary_without_port_is_up_when_the_host_answers_even_with_a_refusal() -> None:
    result = probe_canary(Canary(name="dns", host="127.0.0.1"), timeout_s=2.0)
    assert result.ok and result.port == FALLBACK_PORTS[0]
    assert result.detail in ("connected", "refused (the host answered)")


def test_a_canary_without_port_tries_every_fallback_port_then_gives_up() -> None:
    tried: list[int] = []

    def silent(host: str, port: int, timeout_s: float) -> None:
        tried.append(port)
        raise TimeoutError("timed out")

    result = probe_canary(Canary(name="gw", host="127.0.0.1"), timeout_s=0.5, connect=silent)
    assert tried == list(FALLBACK_PORTS)
    assert not result.ok and result.detail == f"port {FALLBACK_PORTS[-1]}: timed out"


def test_a_canary_without_port_stops_at_the_first_port_that_answers() -> None:
    tried: list[int] = []

    def only_80(host: str, port: int, timeout_s: float) -> None:
        tried.append(port)
        if port != 80:
            raise TimeoutError("timed out")

    result = probe_canary(Canary(name="gw", host="127.0.0.1"), timeout_s=0.5, connect=only_80)
    assert result.ok and result.port == 80 and tried == [443, 80]


def test_a_canary_name_that_does_not_resolve_is_down_without_trying_more_ports() -> None:
    tried: list[int] = []

    def unresolved(host: str, port: int, timeout_s: float) -> None:
        tried.append(port)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    result = probe_canary(Canary(name="gw", host="gw.example.local"), timeout_s=0.5, connect=unresolved)
    assert not result.ok and result.detail == "name not resolved" and tried == [443]


def _site(canaries: list[Canary], timeout_s: float = 1.0) -> Site:
    return Site.model_validate(
        {
            "name": "s1",
            "address": "ul. Testowa 1, Warszawa",
            "contact": {"name": "A", "phone": "123", "email": "a@example.pl"},
            "canaries": [c.model_dump() for c in canaries],
            "site_network": {"action": "local_alert", "canary_timeout_s": timeout_s},
        }
    )


def test_probe_site_probes_every_canary_with_the_site_timeout(listener: int, closed_port: int) -> None:
    seen: list[float] = []

    def connect(host: str, port: int, timeout_s: float) -> None:
        seen.append(timeout_s)
        with socket.create_connection((host, port), timeout=timeout_s):
            pass

    site = _site(
        [
            Canary(name="up", host="127.0.0.1", port=listener),
            Canary(name="down", host="127.0.0.1", port=closed_port),
        ],
        timeout_s=1.5,
    )
    results = probe_site(site, connect=connect)
    assert {name: r.ok for name, r in results.items()} == {"up": True, "down": False}
    assert seen == [1.5, 1.5]
    assert probe_site(_site([])) == {}


def test_real_canaries_and_failed_devices_make_one_site_network_verdict(
    closed_port: int, listener: int
) -> None:
    down_site = _site([Canary(name="gw", host="127.0.0.1", port=closed_port)])
    up_site = _site([Canary(name="gw", host="127.0.0.1", port=listener)])
    down = {n: r.ok for n, r in probe_site(down_site).items()}
    up = {n: r.ok for n, r in probe_site(up_site).items()}
    devices_failed = {"a30": False, "a20": False, "mvc": False}
    sites = {"down": SiteObservation(devices_failed, down), "up": SiteObservation({"x": True}, up)}
    assert judge_sites(sites, uplink_ok=True) == {"down": SITE_DOWN, "up": NORMAL}
    only_down = {"down": sites["down"]}
    assert judge_sites(only_down, uplink_ok=False) == {"down": OFFLINE}


# --- the agent's own uplink -------------------------------------------------------------------


def test_a_route_through_loopback_is_no_uplink() -> None:
    assert local_address_towards("127.0.0.1") == "127.0.0.1"
    assert RouteUplink(["127.0.0.1", "127.0.0.2", "::1"])() is False


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        ({"10.1.2.1": "10.1.2.50"}, True),
        ({"10.1.2.1": None, "192.0.2.1": "192.168.1.20"}, True),
        ({"10.1.2.1": "127.0.0.1"}, False),
        ({"10.1.2.1": "0.0.0.0"}, False),
        ({"2001:db8::1": "fe80::1%eth0"}, True),
        ({"10.1.2.1": None, "192.0.2.1": None}, False),
    ],
)
def test_route_uplink_needs_a_non_loopback_source(routes: dict[str, str | None], expected: bool) -> None:
    check = RouteUplink(routes, local_address=routes.get)
    assert check() is expected


def test_route_uplink_for_config_uses_ip_canaries_and_the_default_route() -> None:
    config = AgentConfig.model_validate(
        {
            "sites": [
                {
                    "name": "s1",
                    "address": "ul. Testowa 1, Warszawa",
                    "contact": {"name": "A", "phone": "123", "email": "a@example.pl"},
                    "canaries": [
                        {"name": "gw", "host": "10.1.2.1", "port": 443},
                        {"name": "dns", "host": "dns.example.local", "port": 53},
                        {"name": "sw", "host": "10.1.2.1"},
                    ],
                }
            ],
            "devices": [{"id": "d1", "room": "R", "site": "s1", "model": "A20", "host": "127.0.0.1"}],
        }
    )
    assert RouteUplink.for_config(config).targets == ("10.1.2.1", *DEFAULT_ROUTE_PROBES)


# --- configuration ----------------------------------------------------------------------------

MINIMAL = """\
sites:
  - name: s1
    address: "ul. Testowa 1, Warszawa"
    contact: {{name: A, phone: "123", email: a@example.pl}}
    site_network: {section}
devices:
  - {{id: d1, room: R1, site: s1, model: A20, host: 127.0.0.1}}
"""


def test_site_network_defaults_and_settings(tmp_path: Path) -> None:
    path = tmp_path / "hezo.yaml"
    path.write_text(MINIMAL.format(section="{action: local_alert, canary_timeout_s: 0.5}"), encoding="utf-8")
    settings = load_config(path).sites[0].site_network
    assert (settings.action, settings.canary_timeout_s) == ("local_alert", 0.5)
    path.write_text(MINIMAL.format(section="{}"), encoding="utf-8")
    settings = load_config(path).sites[0].site_network
    assert (settings.action, settings.canary_timeout_s) == ("ticket", 2.0)


@pytest.mark.parametrize(
    ("section", "line"),
    [
        ("{action: email}", "sites[0].site_network.action: must be one of ticket, local_alert, got 'email'"),
        ("{canary_timeout_s: 0}", "sites[0].site_network.canary_timeout_s: must be greater than 0, got 0"),
    ],
)
def test_bad_site_network_settings_name_the_key(tmp_path: Path, section: str, line: str) -> None:
    path = tmp_path / "hezo.yaml"
    path.write_text(MINIMAL.format(section=section), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.lines == [line]
