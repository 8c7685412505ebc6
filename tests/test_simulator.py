"""The simulated fleet: identities, profile-driven answers, faults, log export, config, control API, CLI.

Real HTTPS servers on 127.0.0.0/8 (a random 127.N.0.0/16 and ephemeral ports, so parallel runs
do not clash); certificates are self-signed, so the client does not verify them here.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import random
import re
import signal
import socket
import ssl
import stat
import sys
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509

from config.loader import load_config, load_profile, profile_name, resolve_password
from config.schema import Profile
from simulator import cli
from simulator.fleet import FAULT_KINDS, Fleet, SimDevice

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

POLL_S = 0.02


def _net() -> int:
    return random.randint(100, 200)


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """Six devices (two per model) with a control API, shared by the tests of this module."""
    with Fleet(6, seed=11, net=_net(), port=0, control_port=0, log_bytes=20_000) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_faults_left(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "fleet" in request.fixturenames:
        request.getfixturevalue("fleet").clear()


@functools.cache
def _model_profile(model: str) -> Profile:
    return load_profile(profile_name(model, None))


def _profile(dev: SimDevice) -> Profile:
    return _model_profile(dev.model)


def _http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = False
    return session


def _dig(body: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        body = body[key]
    return body


def _login(dev: SimDevice, password: str | None = None, timeout_s: float = 5.0) -> requests.Response:
    auth = _profile(dev).auth
    assert auth.login is not None
    body = {
        auth.username_field: dev.username,
        auth.password_field: dev.password if password is None else password,
    }
    with _http() as http:
        return http.post(dev.base_url + auth.login.path, json=body, timeout=timeout_s)


def _token(dev: SimDevice) -> str:
    resp = _login(dev)
    assert resp.status_code == 200, resp.text
    return str(_dig(resp.json(), _profile(dev).auth.token_path))


def _get(dev: SimDevice, endpoint: str, token: str | None, timeout_s: float = 5.0) -> requests.Response:
    profile = _profile(dev)
    headers = {profile.auth.token_header: token} if token is not None else {}
    with _http() as http:
        return http.get(dev.base_url + profile.endpoints[endpoint].path, headers=headers, timeout=timeout_s)


def _field(dev: SimDevice, name: str, token: str) -> Any:
    fmap = next(fm for key, fm in _profile(dev).fields.items() if key == name)
    return _dig(_get(dev, fmap.endpoint, token).json(), fmap.path)


def _first(fleet: Fleet, model: str) -> SimDevice:
    return next(d for d in fleet.devices if d.model == model)


def _wait_for(condition: Callable[[], bool], deadline_s: float = 5.0) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(POLL_S)
    return condition()


def _answers(dev: SimDevice) -> bool:
    try:
        return _login(dev, timeout_s=1.0).status_code == 200
    except requests.ConnectionError:
        return False


def _log_files(archive: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read().decode("utf-8") for m in tar.getmembers()}  # type: ignore[union-attr]


# --- identity ---------------------------------------------------------------------------------


def test_same_seed_gives_the_same_fleet_and_another_seed_does_not() -> None:
    first, again, other = Fleet(12, seed=5, port=0), Fleet(12, seed=5, port=0), Fleet(12, seed=6, port=0)
    assert first.devices == again.devices  # every field, certificate fingerprints included
    assert [d.serial for d in first.devices] != [d.serial for d in other.devices]
    assert first.devices[0].password != other.devices[0].password
    assert first.devices[0].cert_sha256 != other.devices[0].cert_sha256


def test_identities_follow_yealink_numbering_and_split_models_and_sites() -> None:
    devices = Fleet(12, seed=3, net=150, port=0).devices
    assert [d.model for d in devices[:3]] == ["A30", "A20", "MVC"]
    assert Counter(d.model for d in devices) == {"A20": 4, "A30": 4, "MVC": 4}
    assert [d.id for d in devices[:3]] == ["a30-01", "a20-02", "mvc-03"]
    for unique in ("id", "serial", "mac", "cert_sha256"):
        assert len({getattr(d, unique) for d in devices}) == 12
    prefix = {"A20": "8020", "A30": "8030", "MVC": "8086"}
    for i, dev in enumerate(devices):
        assert re.fullmatch(r"\d{16}", dev.serial) and dev.serial.startswith(prefix[dev.model])
        assert re.fullmatch(r"00:15:65(:[0-9a-f]{2}){3}", dev.mac)
        fw = r"\d+\.11\.0\.\d+" if dev.model == "MVC" else r"133\.(15|30)\.0\.\d+"
        assert re.fullmatch(fw, dev.firmware)
        assert dev.hostname == f"{dev.model}-{dev.serial[-4:]}"
        assert dev.host == f"127.150.0.{i + 1}"
        assert re.fullmatch(r"[0-9a-f]{64}", dev.cert_sha256)
    assert [d.site for d in devices] == ["warszawa-hq", "krakow-office"] * 6
    assert all(d.room.startswith("Sala ") for d in devices)
    assert len({(d.site, d.room) for d in devices}) == 12
    assert {d.password for d in devices} != {"0000"} and len(devices[0].password) >= 12


def test_each_device_serves_its_own_certificate_for_its_ip(fleet: Fleet) -> None:
    for dev in fleet.devices[:3]:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection((dev.host, dev.port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None and hashlib.sha256(der).hexdigest() == dev.cert_sha256
        san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == [dev.host]


# --- profile-driven answers ------------------------------------------------------------------


@pytest.mark.parametrize("model", ["A20", "A30", "MVC"])
def test_each_model_answers_every_field_its_profile_maps(fleet: Fleet, model: str) -> None:
    dev = _first(fleet, model)
    profile = _profile(dev)
    token = _token(dev)
    if model in ("A20", "A30"):
        assert _login(dev).json()["ret"] == "ok"
    expected = {"model": model, "firmware": dev.firmware, "serial": dev.serial, "mac": dev.mac}
    expected["hostname"] = dev.hostname
    for name, value in expected.items():
        assert _field(dev, name, token) == value
    uptime_s = _field(dev, "uptime_s", token)
    assert isinstance(uptime_s, int) and uptime_s > 0
    assert _field(dev, "call_state", token) == "idle"
    pmap = profile.peripherals
    assert pmap is not None
    items = _field(dev, "peripherals", token)
    assert sorted(item[pmap.kind] for item in items) == sorted(pmap.expected)
    assert all(item[pmap.connected] == pmap.connected_value and item[pmap.name] for item in items)


def test_every_endpoint_wants_a_valid_token_and_the_right_password(fleet: Fleet) -> None:
    for model in ("A30", "MVC"):
        dev = _first(fleet, model)
        for endpoint in _profile(dev).endpoints:
            assert _get(dev, endpoint, None).status_code == 401
            assert _get(dev, endpoint, "0" * 32).status_code == 401
        wrong = _login(dev, password=dev.password + "x")
        assert wrong.status_code == 401
        assert wrong.json() == {"ret": "failed", "error": "invalid credentials"}


def test_log_export_is_a_tar_gz_with_system_and_app_logs(fleet: Fleet) -> None:
    dev = _first(fleet, "A20")
    resp = _get(dev, "logs", _token(dev))
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/gzip"
    files = _log_files(resp.content)
    assert set(files) == {"log/sys.log", "log/app.log"}
    assert 15_000 <= sum(len(t) for t in files.values()) <= 40_000
    assert dev.serial in files["log/sys.log"] and dev.firmware in files["log/sys.log"]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ", files["log/app.log"])


def test_same_seed_gives_the_same_log_lines_apart_from_timestamps(fleet: Fleet) -> None:
    def lines(dev: SimDevice) -> list[str]:
        files = _log_files(_get(dev, "logs", _token(dev)).content)
        return [line[24:] for name in sorted(files) for line in files[name].splitlines()]

    with Fleet(3, seed=11, net=_net(), port=0, log_bytes=20_000) as twin:
        assert lines(twin.devices[2]) == lines(fleet.devices[2])


# --- faults ----------------------------------------------------------------------------------


def test_offline_refuses_connections_until_cleared(fleet: Fleet) -> None:
    dev = fleet.devices[0]
    fleet.fault(dev.id, "offline")
    assert fleet.faults()[dev.id] == ["offline"]
    with pytest.raises(requests.ConnectionError) as err:
        _login(dev)
    assert not isinstance(err.value, requests.Timeout)
    fleet.clear(dev.id)
    assert _login(dev).status_code == 200


def test_hang_accepts_but_never_answers_until_cleared(fleet: Fleet) -> None:
    dev = fleet.devices[1]
    fleet.fault(dev.id, "hang")
    with pytest.raises(requests.ReadTimeout):
        _login(dev, timeout_s=0.5)
    fleet.clear(dev.id)
    assert _login(dev).status_code == 200


def test_slow_delays_every_answer(fleet: Fleet) -> None:
    dev = fleet.devices[2]
    fleet.fault(dev.id, "slow", "0.3")
    started = time.monotonic()
    assert _login(dev).status_code == 200
    assert time.monotonic() - started >= 0.25


def test_reboot_goes_offline_then_comes_back_with_fresh_uptime(fleet: Fleet) -> None:
    dev = fleet.devices[3]
    token = _token(dev)
    assert _field(dev, "uptime_s", token) > 3600
    fleet.fault(dev.id, "reboot", "0.5")
    with pytest.raises(requests.ConnectionError):
        _login(dev, timeout_s=1.0)
    assert _wait_for(lambda: _answers(dev))
    assert _get(dev, "status", token).status_code == 401  # sessions do not survive a reboot
    assert _field(dev, "uptime_s", _token(dev)) < 5
    assert fleet.faults()[dev.id] == []


@pytest.mark.parametrize("model", ["A30", "MVC"])
def test_unplug_reports_that_peripheral_disconnected_in_status_and_logs(fleet: Fleet, model: str) -> None:
    dev = _first(fleet, model)
    pmap = _profile(dev).peripherals
    assert pmap is not None
    fleet.fault(dev.id, "unplug", "camera")
    assert fleet.faults()[dev.id] == ["unplug camera"]
    token = _token(dev)
    states = {item[pmap.kind]: item[pmap.connected] for item in _field(dev, "peripherals", token)}
    assert states.pop("camera") == (False if pmap.connected_value is True else "disconnected")
    assert set(states.values()) == {pmap.connected_value}
    logs = "".join(_log_files(_get(dev, "logs", token).content).values())
    assert "camera" in logs and "disconnected" in logs
    fleet.clear(dev.id)
    states = {item[pmap.kind]: item[pmap.connected] for item in _field(dev, "peripherals", _token(dev))}
    assert states["camera"] == pmap.connected_value


def test_auth_fail_rejects_the_right_password_and_old_sessions(fleet: Fleet) -> None:
    dev = fleet.devices[4]
    token = _token(dev)
    fleet.fault(dev.id, "auth-fail")
    assert _login(dev).status_code == 401
    assert _get(dev, "info" if dev.model != "MVC" else "system", token).status_code == 401
    fleet.clear(dev.id)
    assert _login(dev).status_code == 200


def test_malformed_answers_200_with_broken_json_and_a_non_gzip_log(fleet: Fleet) -> None:
    dev = _first(fleet, "MVC")
    token = _token(dev)
    fleet.fault(dev.id, "malformed")
    resp = _get(dev, "system", token)
    assert resp.status_code == 200
    with pytest.raises(ValueError):
        json.loads(resp.text)
    logs = _get(dev, "logs", token)
    assert logs.status_code == 200
    with pytest.raises(OSError):
        gzip.decompress(logs.content)


def test_bad_faults_are_refused(fleet: Fleet) -> None:
    dev = fleet.devices[0]
    with pytest.raises(KeyError):
        fleet.fault("nope-99", "offline")
    for kind, arg in [
        ("explode", None),
        ("unplug", "toaster"),
        ("unplug", None),
        ("slow", "soon"),
        ("reboot", "-1"),
        ("offline", "now"),
    ]:
        with pytest.raises(ValueError):
            fleet.fault(dev.id, kind, arg)
    assert fleet.faults()[dev.id] == []
    assert set(FAULT_KINDS) == {
        *("offline", "hang", "slow", "reboot", "unplug", "auth-fail", "malformed"),
        *("endless", "drip", "garbage", "hostkey-change"),  # SSH and SNMP hostile modes (test_sim_channels)
        "update",  # a firmware update in progress (test_firmware_update)
        *("clock-skew", "config-set"),  # the Date header and the config endpoint (test_device_findings_fed)
    }


# --- agent config ------------------------------------------------------------------------------


def test_written_agent_config_loads_and_keeps_the_password_out(fleet: Fleet, tmp_path: Path) -> None:
    path = fleet.write_agent_config(tmp_path / "sim.yaml", data_dir=tmp_path / "data", poll_interval_s=5)
    cfg = load_config(path)
    text = path.read_text(encoding="utf-8")
    password = fleet.devices[0].password
    assert password not in text
    secret = tmp_path / "sim.secret"
    if sys.platform != "win32":
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert cfg.agent.poll_interval_s == 5 and cfg.agent.data_dir == tmp_path / "data"
    assert {s.name for s in cfg.sites} == {"warszawa-hq", "krakow-office"}
    assert cfg.site("warszawa-hq").timezone == "Europe/Warsaw"
    for dev, entry in zip(fleet.devices, cfg.devices, strict=True):
        assert (entry.id, entry.host, entry.port, entry.model) == (dev.id, dev.host, dev.port, dev.model)
        assert entry.credentials is not None
        assert resolve_password(entry.credentials, entry.id) == password
    assert cfg.contract_for(fleet.devices[-1].serial) is None
    assert all(cfg.contract_for(d.serial) is not None for d in fleet.devices[:-1])


# --- control API and CLI -------------------------------------------------------------------------


def test_control_api_lists_sets_and_clears_faults(fleet: Fleet) -> None:
    assert fleet.control_url is not None
    base, dev = fleet.control_url, fleet.devices[5]
    with _http() as http:
        listed = http.get(f"{base}/devices", timeout=5).json()
        assert [d["id"] for d in listed] == [d.id for d in fleet.devices]
        assert "password" not in json.dumps(listed)
        resp = http.post(f"{base}/devices/{dev.id}/fault", json={"kind": "slow", "arg": 0.5}, timeout=5)
        assert resp.status_code == 200 and resp.json()["faults"] == ["slow 0.5"]
        assert http.post(f"{base}/devices/{dev.id}/fault", json={"kind": "offline"}, timeout=5).ok
        assert fleet.faults()[dev.id] == ["slow 0.5", "offline"]
        assert http.post(f"{base}/devices/nope-1/fault", json={"kind": "hang"}, timeout=5).status_code == 404
        bad = http.post(f"{base}/devices/{dev.id}/fault", json={"kind": "melt"}, timeout=5)
        assert bad.status_code == 400 and "unknown fault kind" in bad.json()["error"]
        assert http.post(f"{base}/devices/{dev.id}/clear", timeout=5).json()["faults"] == []
        http.post(f"{base}/devices/{fleet.devices[0].id}/fault", json={"kind": "hang"}, timeout=5)
        assert http.post(f"{base}/clear", timeout=5).json() == {"cleared": 6}
    assert all(not f for f in fleet.faults().values())
    assert _login(dev).status_code == 200


def test_cli_fault_list_and_clear_talk_to_a_running_fleet(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    url, dev = fleet.control_url, fleet.devices[2]
    assert url is not None
    assert cli.main(["fault", dev.id, "unplug", "microphone", "--control", url]) == 0
    assert cli.main(["fault", dev.id, "slow", "0.2", "--control", url]) == 0
    assert fleet.faults()[dev.id] == ["slow 0.2", "unplug microphone"]
    capsys.readouterr()
    assert cli.main(["list", "--control", url]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(dev.id))
    assert "unplug microphone" in row and dev.serial in row
    assert cli.main(["clear", dev.id, "--control", url]) == 0
    assert fleet.faults()[dev.id] == []
    assert cli.main(["fault", dev.id, "hang", "--control", url]) == 0
    assert cli.main(["clear", "--control", url]) == 0
    assert fleet.faults()[dev.id] == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cli_errors_are_one_line_and_non_zero(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    url = fleet.control_url
    assert url is not None
    capsys.readouterr()
    cases = [
        (["fault", "nope-42", "offline", "--control", url], "unknown device 'nope-42'"),
        (["fault", fleet.devices[0].id, "melt", "--control", url], "unknown fault kind 'melt'"),
        (["clear", "--control", f"http://127.0.0.1:{_free_port()}"], "cannot reach the fleet control API"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_run_serves_writes_the_config_and_stops_on_sigterm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "fleet.yaml"
    seen: dict[str, Any] = {}

    def drive() -> None:
        if not _wait_for(config.exists, deadline_s=10.0):
            return  # the fleet did not come up: main() has returned with an error
        try:
            entry = load_config(config).devices[0]
            seen["answers"] = _answers(
                replace(Fleet(3, seed=4).devices[0], host=entry.host, port=entry.port or 0)
            )
        finally:
            signal.raise_signal(signal.SIGTERM)  # the run command installed its handler before writing

    helper = threading.Thread(target=drive)
    helper.start()
    argv = f"run --devices 3 --seed 4 --net {_net()} --port 0 --control-port {_free_port()}".split()
    argv += ["--config-out", str(config)]
    code = cli.main(argv)
    helper.join(10)
    out = capsys.readouterr().out
    assert code == 0 and seen == {"answers": True}
    assert "a30-01" in out and f"hezo-agent run -c {config}" in out and "fleet stopped" in out


def test_syslog_target_must_be_a_loopback_host_port() -> None:
    import argparse

    from simulator.cli import _host_port

    assert _host_port("127.0.0.1:5514") == ("127.0.0.1", 5514)
    for bad in ("10.0.0.1:514", "192.168.1.10:514", "127.0.0.1", "localhost:514", "127.0.0.1:0"):
        with pytest.raises(argparse.ArgumentTypeError):
            _host_port(bad)
