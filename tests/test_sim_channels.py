"""Every simulated device also serves SSH and SNMP, and the fleet runs the mock YMCS cloud.

The agent's own clients (SSH transport, SNMP transport, YMCS client, the whole Agent) and
net-snmp's command-line tools talk to the simulator's servers on loopback; faults hit one
channel at a time, and hostile modes (endless or dripping SSH output, SNMP garbage and
malformed replies) end within the client's timeout and byte cap.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from peers.snmpd import require_binaries, tool_env

from agent.clock import FakeClock
from agent.daemon import Agent
from agent.state import Health
from collectors.errors import (
    AuthFailed,
    DeviceTimeout,
    DeviceUnreachable,
    IdentityChanged,
    UnexpectedResponse,
)
from collectors.known_hosts import KnownHosts
from collectors.transports.snmp import OID_IF_OPER_STATUS, SnmpTransport
from collectors.transports.ssh import SshTransport
from collectors.ymcs import YmcsClient
from config.loader import BUILTIN_PROFILES, load_config, load_profile, profile_name
from simulator.cli import main as sim_main
from simulator.fleet import Fleet, SimDevice
from simulator.ssh_server import MAX_SESSIONS_PER_DEVICE, ShellFacts, answer_command

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
POLL_S = 0.05


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """Three devices (A30, A20, MVC) serving HTTPS, 6024, SSH and SNMP, plus the mock YMCS."""
    sim = Fleet(
        3,
        seed=41,
        net=random.randint(100, 200),
        port=0,
        vcapi_port=0,
        ssh_port=0,
        snmp_port=0,
        ymcs=True,
        control_port=0,
        log_bytes=20_000,
    )
    with sim:
        yield sim


@pytest.fixture(autouse=True)
def _no_faults_left(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "fleet" in request.fixturenames:
        request.getfixturevalue("fleet").clear()


def _dev(fleet: Fleet, model: str = "A30") -> SimDevice:
    return next(fleet.device(d.id) for d in fleet.devices if d.model == model)


def _ssh(dev: SimDevice, known: KnownHosts, **options: Any) -> SshTransport:
    settings: dict[str, Any] = {"password": dev.password, "timeout_s": 3.0}
    settings.update(options)
    assert dev.ssh_port is not None
    return SshTransport(dev.host, port=dev.ssh_port, username=dev.username, known_hosts=known, **settings)


def _snmp(fleet: Fleet, dev: SimDevice, **options: Any) -> SnmpTransport:
    assert fleet.snmp is not None and dev.snmp_port is not None
    settings: dict[str, Any] = {"community": fleet.snmp.community, "timeout_s": 0.5, "retries": 0}
    settings.update(options)
    return SnmpTransport(dev.host, dev.snmp_port, **settings)


def _v3(fleet: Fleet, dev: SimDevice, **options: Any) -> SnmpTransport:
    assert fleet.snmp is not None
    creds = {"user": fleet.snmp.user, "auth_key": fleet.snmp.auth_key, "priv_key": fleet.snmp.priv_key}
    return _snmp(fleet, dev, version="3", community=None, **{**creds, **options})


def _tcp_answers(host: str, port: int) -> bool:
    """Whether a TCP connect succeeds (False: refused)."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except ConnectionRefusedError:
        return False


def _banner(dev: SimDevice) -> str:
    assert dev.vcapi_port is not None
    with socket.create_connection((dev.host, dev.vcapi_port), timeout=2) as sock:
        return sock.recv(256).decode("utf-8", "replace")


def _login(dev: SimDevice) -> int:
    """The HTTP status of a login to the device's web interface, as its profile describes it."""
    auth = load_profile(profile_name(dev.model, None)).auth
    assert auth.login is not None
    body = {auth.username_field: dev.username, auth.password_field: dev.password}
    with requests.Session() as http:
        http.trust_env = False
        return http.post(dev.base_url + auth.login.path, json=body, verify=False, timeout=3).status_code


def _wait_for(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(POLL_S)
    return check()


# --- SSH ---------------------------------------------------------------------------------------


def test_channels_are_off_unless_asked_for() -> None:
    sim = Fleet(2, seed=41, net=random.randint(100, 200), port=0)
    assert all(d.ssh_port is None and d.snmp_port is None for d in sim.devices)
    assert sim.ymcs is None and sim.snmp is None


def test_ssh_logs_in_with_the_admin_password_or_the_fleet_key_and_answers_device_commands(
    fleet: Fleet, tmp_path: Path
) -> None:
    dev = _dev(fleet)
    known = KnownHosts(tmp_path / "known_hosts")
    result = _ssh(dev, known).probe(["uname -s", "hostname", "version", "serial", "status"])
    assert result.ok, result.detail
    assert result.fields["uname -s"] == "Linux" and result.fields["hostname"] == dev.hostname
    assert result.fields["version"] == dev.firmware and result.fields["serial"] == dev.serial
    status = dict(line.split("=", 1) for line in str(result.fields["status"]).splitlines())
    assert status["model"] == "A30" and status["mac"] == dev.mac and int(status["uptime_s"]) > 3600
    assert str(result.fields["ssh_banner"]).startswith("SSH-2.0-")
    assert f"[{dev.host}]:{dev.ssh_port} ssh-ed25519 " in (tmp_path / "known_hosts").read_text()  # TOFU

    with _ssh(dev, known, password=None, key_text=fleet.ssh_client_key) as by_key:
        unknown = by_key.run("reboot --now")
        assert unknown.exit_status == 127 and b"not found" in unknown.stderr
        assert by_key.run("getprop ro.product.model").text == "A30\n"
    with pytest.raises(AuthFailed):
        _ssh(dev, known, password="not-the-password").probe()


def test_the_mvc_answers_like_windows_and_unknown_commands_exit_127() -> None:
    facts = ShellFacts("MVC", "126.11.0.25", "8086000000000001", "00:15:65:00:00:01", "MVC-0001", "admin", 90)
    assert answer_command("uname -s", facts) == (0, b"Windows_NT\n", b"")
    assert answer_command("getprop ro.product.model", facts)[0] == 127
    assert answer_command("cat /proc/uptime", facts)[1].startswith(b"90.00 ")
    assert answer_command("cat /nope", facts)[0] == 1
    assert answer_command("'unterminated", facts)[0] == 2


def test_ssh_serves_the_log_files_over_sftp_and_cat(fleet: Fleet, tmp_path: Path) -> None:
    dev = _dev(fleet, "A20")
    fleet.fault(dev.id, "unplug", "camera")
    with _ssh(dev, KnownHosts(tmp_path / "known_hosts")) as ssh:
        listing = ssh.run("ls /var/log").text.split()
        assert listing == ["app.log", "export.tar.gz", "sys.log"]
        size, _digest = ssh.fetch("/var/log/sys.log", tmp_path / "sys.log", max_bytes=5_000_000)
        assert size == (tmp_path / "sys.log").stat().st_size > 1000
        text = (tmp_path / "sys.log").read_text()
        assert "Booting Linux" in text and "camera" in text and "disconnected" in text
        cat = ssh.run("cat /var/log/app.log", max_bytes=5_000_000)
        assert cat.exit_status == 0 and b"periph" in cat.stdout
        ssh.fetch("/var/log/export.tar.gz", tmp_path / "export.tar.gz", max_bytes=5_000_000)
        with tarfile.open(
            fileobj=io.BytesIO(gzip.decompress((tmp_path / "export.tar.gz").read_bytes()))
        ) as tar:
            assert sorted(tar.getnames()) == ["log/app.log", "log/sys.log"]
        with pytest.raises(UnexpectedResponse):
            ssh.fetch("/var/log/sys.log", tmp_path / "capped", max_bytes=1024)
        with pytest.raises(UnexpectedResponse, match="no such file"):
            ssh.fetch("/etc/shadow", tmp_path / "shadow", max_bytes=1024)
    assert not (tmp_path / "capped").exists()


def test_host_key_survives_a_restart_and_hostkey_change_is_caught_before_login(
    fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> None:
    sim = fleet_factory(devices=1, seed=42, ssh_port=0)
    known = KnownHosts(tmp_path / "known_hosts")
    first = _ssh(sim.devices[0], known).probe()
    sim.stop()
    sim.start()  # same seed, same device: the same host key on the same port
    dev = sim.device(sim.devices[0].id)
    assert _ssh(dev, known).probe().fields["ssh_host_key"] == first.fields["ssh_host_key"]
    sim.fault(dev.id, "hostkey-change")
    assert sim.faults()[dev.id] == ["hostkey-change"]
    with pytest.raises(IdentityChanged, match="no credentials were sent"):
        _ssh(dev, known).probe()
    sim.fault(dev.id, "auth-fail")
    sim.clear(dev.id)
    assert _ssh(dev, known).probe().ok


def test_ssh_threads_are_bounded_per_device_and_end_when_the_fleet_stops(
    fleet_factory: Callable[..., Fleet],
) -> None:
    sim = fleet_factory(devices=2, seed=43, ssh_port=0)
    dev, hub = sim.devices[0], sim.ssh_hub
    assert dev.ssh_port is not None and hub is not None
    extra = 4
    idle = [
        socket.create_connection((dev.host, dev.ssh_port), timeout=2) for _ in range(hub.per_device + extra)
    ]
    try:
        refused = [s for s in idle if _closed_by_peer(s)]
        assert len(refused) == extra and hub.refused == extra  # over the per-device cap: closed at once
        assert hub.sessions == hub.per_device == MAX_SESSIONS_PER_DEVICE
        assert _ssh(sim.devices[1], KnownHosts(None)).probe().ok  # another device is not starved
        sim.stop()
        assert hub.sessions == 0 and _ssh_threads(dev.host) == 0
    finally:
        for sock in idle:
            sock.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(1.0)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def _ssh_threads(host: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name == f"hezo-sim-ssh-{host}" and t.is_alive())


# --- faults per channel -------------------------------------------------------------------------


def test_web_ui_down_while_ssh_snmp_and_6024_answer(fleet: Fleet, tmp_path: Path) -> None:
    dev = _dev(fleet)
    fleet.fault(dev.id, "offline", "http")
    assert fleet.faults()[dev.id] == ["offline http"]
    assert not _tcp_answers(dev.host, dev.port)
    assert _ssh(dev, KnownHosts(tmp_path / "kh")).probe().ok
    assert _snmp(fleet, dev).probe().ok
    assert _banner(dev).startswith('version "model:A30"')


def test_ssh_down_or_hung_while_the_web_ui_answers(fleet: Fleet, tmp_path: Path) -> None:
    dev = _dev(fleet, "MVC")
    known = KnownHosts(tmp_path / "kh")
    fleet.fault(dev.id, "offline", "ssh")
    with pytest.raises(DeviceUnreachable):
        _ssh(dev, known).probe()
    assert _login(dev) == 200 and _snmp(fleet, dev).probe().ok
    fleet.clear(dev.id)
    fleet.fault(dev.id, "hang", "ssh")
    started = time.monotonic()
    with pytest.raises(DeviceTimeout, match="no SSH banner"):
        _ssh(dev, known, timeout_s=0.5).probe()
    assert time.monotonic() - started < 1.5
    assert _login(dev) == 200
    fleet.clear(dev.id)
    assert _ssh(dev, known).probe().ok


def test_snmp_down_or_hung_while_ssh_answers(fleet: Fleet, tmp_path: Path) -> None:
    dev = _dev(fleet, "A20")
    for kind in ("offline", "hang"):
        fleet.fault(dev.id, kind, "snmp")
        with pytest.raises(DeviceTimeout):
            _snmp(fleet, dev).system()
        assert _ssh(dev, KnownHosts(tmp_path / "kh")).probe().ok and _login(dev) == 200
        fleet.clear(dev.id)
        assert _snmp(fleet, dev).system()["sys_name"] == dev.hostname


def test_offline_without_a_channel_takes_every_channel_down_and_clear_brings_them_back(
    fleet: Fleet, tmp_path: Path
) -> None:
    dev = _dev(fleet)
    known = KnownHosts(tmp_path / "kh")
    fleet.fault(dev.id, "offline")
    assert not _tcp_answers(dev.host, dev.port)
    assert dev.vcapi_port is not None and not _tcp_answers(dev.host, dev.vcapi_port)
    with pytest.raises(DeviceUnreachable):
        _ssh(dev, known).probe()
    with pytest.raises(DeviceTimeout):
        _snmp(fleet, dev).system()
    fleet.clear(dev.id)
    assert _login(dev) == 200 and _ssh(dev, known).probe().ok and _snmp(fleet, dev).probe().ok


def test_channel_faults_are_validated_and_set_through_the_cli(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = _dev(fleet, "MVC")
    for kind, arg in [("garbage", None), ("endless", "http"), ("offline", "bogus"), ("malformed", "ssh")]:
        with pytest.raises(ValueError):
            fleet.fault(dev.id, kind, arg)
    assert fleet.control_url is not None
    assert sim_main(["fault", dev.id, "offline", "ssh", "--control", fleet.control_url]) == 0
    assert sim_main(["fault", dev.id, "drip", "--control", fleet.control_url]) == 0
    assert sim_main(["fault", dev.id, "garbage", "snmp", "--control", fleet.control_url]) == 0
    assert capsys.readouterr().out.strip().endswith("offline ssh, drip ssh, garbage snmp")
    assert sim_main(["fault", dev.id, "garbage", "--control", fleet.control_url]) == 1
    assert "name a channel" in capsys.readouterr().err
    fleet.clear(dev.id)
    fleet.fault(dev.id, "garbage", "tcp6024")
    assert not _banner(dev).startswith("version")
    assert _login(dev) == 200 and fleet.faults()[dev.id] == ["garbage tcp6024"]


# --- hostile SSH --------------------------------------------------------------------------------


def test_endless_ssh_output_stops_at_the_agents_byte_cap(fleet: Fleet, tmp_path: Path) -> None:
    dev = _dev(fleet)
    fleet.fault(dev.id, "endless")
    started = time.monotonic()
    with _ssh(dev, KnownHosts(tmp_path / "kh"), timeout_s=2.0, max_bytes=100_000) as ssh:
        result = ssh.run("status")
    assert result.truncated and result.exit_status is None
    assert len(result.stdout) + len(result.stderr) == 100_000  # read up to the cap, never past it
    assert time.monotonic() - started < 2.0
    probe = _ssh(dev, KnownHosts(tmp_path / "kh"), timeout_s=2.0, max_bytes=50_000).probe(["status"])
    assert not probe.ok and probe.reason == UnexpectedResponse.reason and "byte cap" in probe.detail


def test_dripping_ssh_output_ends_at_the_timeout_and_other_devices_are_not_delayed(
    fleet: Fleet, tmp_path: Path
) -> None:
    slow, other = _dev(fleet), _dev(fleet, "A20")
    fleet.fault(slow.id, "drip", "ssh")
    box: dict[str, float] = {}

    def poll_other() -> None:
        time.sleep(0.2)  # while the dripping poll is under way
        began = time.monotonic()
        assert _ssh(other, KnownHosts(tmp_path / "kh2")).probe(["status"]).ok
        box["other_s"] = time.monotonic() - began

    helper = threading.Thread(target=poll_other)
    helper.start()
    started = time.monotonic()
    result = _ssh(slow, KnownHosts(tmp_path / "kh"), timeout_s=2.0).probe(["status"])
    elapsed = time.monotonic() - started
    helper.join(5)
    assert not result.ok and result.reason == DeviceTimeout.reason and "timed out" in result.detail
    assert 1.9 < elapsed < 3.0  # the probe's own timeout, not the drip's pace
    assert box["other_s"] < 1.2  # answered while the dripping poll was still running
    with pytest.raises(DeviceTimeout, match="still running"):
        _ssh(slow, KnownHosts(tmp_path / "kh"), timeout_s=0.6).run("hostname")


# --- SNMP --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2c", "3"])
def test_snmp_answers_the_system_group_and_if_table(fleet: Fleet, version: str) -> None:
    dev = _dev(fleet, "MVC")
    client = _snmp(fleet, dev) if version == "2c" else _v3(fleet, dev)
    result = client.probe()
    assert result.ok
    f = result.fields
    assert "MVC" in str(f["sys_descr"]) and dev.firmware in str(f["sys_descr"])
    assert str(f["sys_object_id"]).startswith("1.3.6.1.4.1.37459.")
    assert f["sys_name"] == dev.hostname and int(str(f["sys_uptime_s"])) > 3600
    assert f["if_count"] == 2 and f["if_oper_up"] == 2
    assert [row["descr"] for row in client.interfaces()] == ["lo", "eth0"]


def test_snmp_wrong_community_is_silent_and_a_wrong_v3_key_is_rejected(fleet: Fleet) -> None:
    dev = _dev(fleet)
    with pytest.raises(DeviceTimeout):
        _snmp(fleet, dev, community="wrong-community").system()
    with pytest.raises(AuthFailed):
        _v3(fleet, dev, auth_key="wrong-auth-key").system()


def _net_snmp(tool: str, args: list[str], folder: Path) -> subprocess.CompletedProcess[str]:
    require_binaries()
    folder.mkdir(exist_ok=True)
    return subprocess.run(
        [f"/usr/bin/{tool}", "-t", "1", "-r", "0", *args],
        capture_output=True,
        text=True,
        timeout=20,
        env=tool_env(folder),
    )


def test_net_snmp_walk_and_v3_get_work_against_the_simulated_agent(fleet: Fleet, tmp_path: Path) -> None:
    dev, creds = _dev(fleet), fleet.snmp
    assert creds is not None
    target = f"{dev.host}:{dev.snmp_port}"
    walk = _net_snmp("snmpwalk", ["-v2c", "-c", creds.community, "-On", target, "1.3.6.1.2.1"], tmp_path)
    assert walk.returncode == 0, walk.stderr
    assert f'.1.3.6.1.2.1.1.5.0 = STRING: "{dev.hostname}"' in walk.stdout
    assert ".1.3.6.1.2.1.2.2.1.8.2 = INTEGER: 1" in walk.stdout
    v3 = ["-v3", "-l", "authPriv", "-u", creds.user, "-a", "SHA", "-A", creds.auth_key, "-x", "AES"]
    get = _net_snmp("snmpget", [*v3, "-X", creds.priv_key, "-Ovq", target, "1.3.6.1.2.1.1.1.0"], tmp_path)
    assert get.returncode == 0, get.stderr
    assert dev.firmware in get.stdout


def test_snmp_garbage_is_a_clean_timeout_and_the_other_devices_still_answer(fleet: Fleet) -> None:
    dev, other = _dev(fleet), _dev(fleet, "A20")
    fleet.fault(dev.id, "garbage", "snmp")
    client = _snmp(fleet, dev)
    started = time.monotonic()
    with pytest.raises(DeviceTimeout):
        client.system()
    assert time.monotonic() - started <= client.request_budget_s + 0.2
    assert _snmp(fleet, other).probe().ok  # the shared client loop is unharmed
    fleet.clear(dev.id)
    assert client.system()["sys_name"] == dev.hostname


def test_snmp_malformed_replies_are_a_clean_unexpected_response(fleet: Fleet, tmp_path: Path) -> None:
    dev = _dev(fleet)
    fleet.fault(dev.id, "malformed", "snmp")
    client = _snmp(fleet, dev)
    with pytest.raises(UnexpectedResponse, match="wrong type"):
        client.system()
    with pytest.raises(UnexpectedResponse, match="not increasing"):
        client.walk(OID_IF_OPER_STATUS)
    assert fleet.snmp is not None
    walk = _net_snmp(
        "snmpwalk", ["-v2c", "-c", fleet.snmp.community, f"{dev.host}:{dev.snmp_port}"], tmp_path
    )
    assert "OID not increasing" in walk.stderr
    assert _login(dev) == 200  # only SNMP is broken


# --- YMCS --------------------------------------------------------------------------------------


def _cloud(fleet: Fleet) -> YmcsClient:
    cloud = fleet.ymcs
    assert cloud is not None
    return YmcsClient(cloud.base_url, cloud.client_id, cloud.client_secret, verify=str(cloud.ca_path))


def test_ymcs_lists_every_device_with_its_identity(fleet: Fleet) -> None:
    listed = {d.sn: d for d in _cloud(fleet).list_devices()}
    assert set(listed) == {d.serial for d in fleet.devices}
    for dev in fleet.devices:
        item = listed[dev.serial]
        assert (item.mac, item.model, item.firmware, item.status) == (
            dev.mac,
            dev.model,
            dev.firmware,
            "online",
        )


def test_ymcs_status_and_parts_follow_the_devices_faults(fleet: Fleet) -> None:
    dev = _dev(fleet, "MVC")
    client = _cloud(fleet)

    def status() -> str:
        return next(d.status for d in client.list_devices() if d.sn == dev.serial)

    fleet.fault(dev.id, "offline", "ssh")  # the cloud does not see SSH
    assert status() == "online" and client.probe(dev.mac).ok
    fleet.fault(dev.id, "offline", "http")
    fleet.fault(dev.id, "unplug", "speaker")
    assert status() == "offline" and not client.probe(dev.serial).ok
    parts = {p.model: p.connected for p in client.list_parts(dev.id)}
    assert parts == {
        "UVC86 camera": True,
        "VCM34 microphone": True,
        "MSpeaker II": False,
        "MTouch II touch panel": True,
    }
    fleet.clear(dev.id)
    assert all(p.connected for p in client.list_parts(dev.id))
    fleet.fault(dev.id, "reboot", "0.3")
    assert status() == "offline"
    assert _wait_for(lambda: status() == "online")


# --- the whole agent ----------------------------------------------------------------------------


def _site_config(fleet: Fleet, dev: SimDevice, tmp_path: Path) -> Path:
    """A site profile (the model's built-in one plus ssh and snmp) and a config whose device opts in."""
    assert fleet.snmp is not None
    secrets = fleet.write_channel_secrets(tmp_path / "site.yaml")
    password = tmp_path / "ssh-password"
    password.write_text(dev.password)
    os.chmod(password, 0o600)
    profile = yaml.safe_load((BUILTIN_PROFILES / f"yealink-{dev.model.lower()}.yaml").read_text())
    profile["name"] = f"site-{dev.model.lower()}"
    profile["channels"]["ssh"] = {
        "username": dev.username,
        "password_file": str(password),
        "commands": [{"name": "firmware", "command": "version", "status": "assumed"}],
        "timeout_s": 2.0,
        "status": "assumed",
    }
    profile["channels"]["snmp"] = {
        "community_file": str(secrets["snmp_community"]),
        "timeout_s": 0.5,
        "retries": 0,
        "status": "assumed",
    }
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / f"{profile['name']}.yaml").write_text(yaml.safe_dump(profile))
    path = fleet.write_agent_config(tmp_path / "site.yaml", data_dir=tmp_path / "data", timeout_s=1.0)
    data = yaml.safe_load(path.read_text())
    data["agent"]["profiles_dir"] = "profiles"
    entry = next(e for e in data["devices"] if e["id"] == dev.id)
    entry["profile"] = profile["name"]
    entry["channels"].update({"ssh": {"port": dev.ssh_port}, "snmp": {"port": dev.snmp_port}})
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def test_the_agent_polls_every_channel_of_a_simulated_device_and_names_the_failing_one(
    fleet: Fleet, tmp_path: Path
) -> None:
    dev = _dev(fleet)
    clock = FakeClock()
    agent = Agent(load_config(_site_config(fleet, dev, tmp_path)), clock=clock)
    try:
        agent.poll_once(dev.id)
        sample = agent.last_outcomes[dev.id].sample
        assert sample is not None
        channels = {c.channel: c for c in sample.channels}
        assert set(channels) == {"http", "tcp6024", "ssh", "snmp"}
        assert all(c.ok for c in channels.values()), [(c.channel, c.detail) for c in channels.values()]
        assert channels["ssh"].fields["firmware"] == dev.firmware
        assert channels["snmp"].fields["sys_name"] == dev.hostname

        for channel in ("http", "ssh", "snmp"):
            fleet.fault(dev.id, "offline", channel)
            clock.advance(60)
            agent.poll_once(dev.id)
            sample = agent.last_outcomes[dev.id].sample
            assert sample is not None and sample.failing_channels == (channel,), channel
            assert agent.states[dev.id].health == Health.UP  # degraded, not down
            fleet.clear(dev.id)

        fleet.fault(dev.id, "offline")  # silent on every channel: down after k polls
        for _ in range(3):
            clock.advance(10)
            agent.poll_once(dev.id)
        assert agent.states[dev.id].health == Health.DOWN
    finally:
        agent.stop()
