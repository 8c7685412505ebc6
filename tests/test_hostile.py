"""Hostile devices: the cases the per-channel test files did not cover yet.

Issue 4 asks, for every channel, that a slow or hung device ends within the poll's timeout,
endless output is read no further than the byte cap, binary garbage is a clean collector
error, and the other devices' polls are not delayed. Most of that lives beside each channel
(``test_http_transport``, ``test_tcp_vcapi``, ``test_ssh_transport``, ``test_sim_channels``,
``test_snmp_transport``, ``test_syslog``, ``test_mtr``, ``test_ymcs``); this file adds the
missing ones: a hung device beside a healthy one on HTTP, 6024, SSH and SNMP (the simulator's
per-channel ``hang`` fault) and on every channel at once through the registry's combined
collector; binary garbage where the HTTP driver expects an answer; a hung or endless
``wevtutil`` and a hung Teams Rooms log beside another MVC's; and one device's stalled YMCS
call beside another device's lookup.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from replay import HttpReplay, YmcsReplay, load_answers

from collectors.base import Collector
from collectors.errors import CollectorError, DeviceTimeout, UnexpectedResponse
from collectors.known_hosts import KnownHosts
from collectors.models import ChannelResult, HealthSample
from collectors.mtr import MtrSource, RunResult, run_capped
from collectors.multi import ChannelProbe
from collectors.pins import PinStore
from collectors.registry import build_collector, build_probes
from collectors.ymcs import YmcsClient
from collectors.ymcs_channel import CLOUD_UNREACHABLE, YmcsAccount
from config.channels import DeviceChannel, MtrChannel, SnmpChannel, SshChannel, SshCommand
from config.loader import DEFAULT_PROFILE, load_profile
from config.schema import Credentials, Device, Profile
from simulator.certs import make_certificate, server_context
from simulator.fleet import Fleet, SimDevice

FIXTURES = Path(__file__).parent / "fixtures"
HOSTILE_TIMEOUT_S = 2.5  # every channel of the hostile device gives up after this
SLACK_S = 1.5  # scheduling slack on a loaded 2-core machine
HEALTHY_WITHIN_S = 1.8  # a healthy poll beside a hostile one (alone it takes well under a second)
POLL_S = 0.05


# --- helpers ---------------------------------------------------------------------------------------


def _wait_for(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(POLL_S)
    return check()


class Alongside:
    """Run ``hostile`` in a thread; once it is under way, time ``healthy`` in this thread."""

    def __init__(self, hostile: Callable[[], object]) -> None:
        self.outcome: object = None
        self.hostile_s = 0.0
        self._hostile = hostile
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        began = time.monotonic()
        self._started.set()
        try:
            self.outcome = self._hostile()
        except Exception as err:  # the hostile poll's error is the thing to check
            self.outcome = err
        self.hostile_s = time.monotonic() - began

    def healthy(self, call: Callable[[], object], engaged_s: float = 0.3) -> tuple[object, float, bool]:
        """(result, seconds, hostile still running when it returned) of ``call`` beside the hostile poll."""
        self._thread.start()
        assert self._started.wait(5)
        time.sleep(engaged_s)  # the hostile poll is now blocked on its device
        began = time.monotonic()
        result = call()
        elapsed = time.monotonic() - began
        still_running = self._thread.is_alive()
        self._thread.join(HOSTILE_TIMEOUT_S * 4 + 10)
        assert not self._thread.is_alive(), "the hostile poll never ended"
        return result, elapsed, still_running


def _profile(model: str, **channels: Any) -> Profile:
    """The model's built-in profile as a site profile that also offers ``channels``."""
    profile = load_profile(DEFAULT_PROFILE[model])
    if not channels:
        return profile
    return profile.model_copy(update={"channels": profile.channels.model_copy(update=channels)})


# --- a fleet whose devices serve HTTPS, 6024, SSH and SNMP -----------------------------------------


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    sim = Fleet(3, seed=23, net=random.randint(100, 200), port=0, vcapi_port=0, ssh_port=0, snmp_port=0)
    with sim:
        yield sim


@pytest.fixture(autouse=True)
def _no_faults_left(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "fleet" in request.fixturenames:
        request.getfixturevalue("fleet").clear()


@pytest.fixture
def site(fleet: Fleet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[..., Collector]]:
    """Build a device's combined collector (HTTP + the given channels) the way the agent does."""
    with collectors_for(fleet, monkeypatch, tmp_path) as build:
        yield build


@contextlib.contextmanager
def collectors_for(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[..., Collector]]:
    """A builder of combined collectors for ``fleet``'s devices; they are closed on exit."""
    assert fleet.snmp is not None
    monkeypatch.setenv("HEZO_HOSTILE_PW", fleet.devices[0].password)  # the fleet shares one admin password
    monkeypatch.setenv("HEZO_HOSTILE_SNMP", fleet.snmp.community)
    pins = PinStore(tmp_path / "pins.json")
    known = KnownHosts(tmp_path / "known_hosts")
    built: list[Collector] = []

    def build(dev: SimDevice, channels: Sequence[str], timeout_s: float = HOSTILE_TIMEOUT_S) -> Collector:
        settings = {
            "ssh": SshChannel(
                password_env="HEZO_HOSTILE_PW", commands=(SshCommand(name="status", command="status"),),
                timeout_s=timeout_s,
            ),
            "snmp": SnmpChannel(community_env="HEZO_HOSTILE_SNMP", timeout_s=timeout_s, retries=0),
        }  # fmt: skip
        profile = _profile(dev.model, **{c: settings[c] for c in channels if c in settings})
        if "tcp6024" in channels:
            assert profile.channels.tcp6024 is not None
            vc = profile.channels.tcp6024.model_copy(update={"timeout_s": timeout_s})
            profile = profile.model_copy(
                update={"channels": profile.channels.model_copy(update={"tcp6024": vc})}
            )
        ports = {"tcp6024": dev.vcapi_port, "ssh": dev.ssh_port, "snmp": dev.snmp_port}
        device = Device(
            id=dev.id,
            room=dev.room,
            site=dev.site,
            model=dev.model,  # type: ignore[arg-type]
            host=dev.host,
            port=dev.port,
            credentials=Credentials(username=dev.username, password_env="HEZO_HOSTILE_PW"),
            channels={c: DeviceChannel(port=ports[c]) for c in channels},  # type: ignore[misc]
        )
        collector = build_collector(
            device, profile, password=dev.password, pins=pins, timeout_s=timeout_s,
            max_response_bytes=200_000, max_log_bytes=1_000_000, known_hosts=known,
        )  # fmt: skip
        built.append(collector)
        return collector

    try:
        yield build
    finally:
        for collector in built:
            collector.close()


def _probe(collector: Collector, channel: str) -> ChannelResult:
    """Poll the device and return one channel's result (``http``: the primary answered)."""
    sample = collector.collect_health()
    assert isinstance(sample, HealthSample)
    return next(c for c in sample.channels if c.channel == channel)


# --- a hung device beside a healthy one, channel by channel ----------------------------------------


@pytest.mark.parametrize("channel", ["http", "tcp6024", "ssh", "snmp"])
def test_a_hung_channel_ends_within_its_timeout_and_another_device_is_not_delayed(
    fleet: Fleet, site: Callable[..., Collector], channel: str
) -> None:
    hung, healthy = fleet.devices[0], fleet.devices[1]
    fleet.fault(hung.id, "hang", channel)
    extra = [] if channel == "http" else [channel]
    hung_poll, healthy_poll = site(hung, extra), site(healthy, extra)

    def hostile() -> object:
        if channel == "http":
            return hung_poll.collect_health()
        return _probe(hung_poll, channel)  # HTTP answers, the channel hangs: a degraded sample

    run = Alongside(hostile)
    result, healthy_s, hostile_still_running = run.healthy(
        lambda: healthy_poll.collect_health() if channel == "http" else _probe(healthy_poll, channel)
    )

    if channel == "http":
        assert isinstance(run.outcome, DeviceTimeout)
        assert isinstance(result, HealthSample) and result.facts.serial == healthy.serial
    else:
        assert isinstance(run.outcome, ChannelResult)
        assert (run.outcome.ok, run.outcome.reason) == (False, DeviceTimeout.reason)
        assert hung.host in run.outcome.detail and " s" in run.outcome.detail  # names the device and time
        assert isinstance(result, ChannelResult) and result.ok, result
    assert run.hostile_s < HOSTILE_TIMEOUT_S + SLACK_S, f"hung {channel} poll took {run.hostile_s:.2f} s"
    assert healthy_s < HEALTHY_WITHIN_S, f"healthy {channel} poll took {healthy_s:.2f} s beside a hung one"
    assert hostile_still_running  # it really was blocked while the healthy device answered


def test_a_device_hung_on_every_channel_is_down_within_its_timeout_and_others_are_not_delayed(
    fleet: Fleet, site: Callable[..., Collector]
) -> None:
    hung, healthy = fleet.devices[0], fleet.devices[2]
    channels = ["tcp6024", "ssh", "snmp"]
    fleet.fault(hung.id, "hang")  # every channel: accepted and never answered
    hung_poll, healthy_poll = site(hung, channels), site(healthy, channels)
    run = Alongside(hung_poll.collect_health)

    sample, healthy_s, hostile_still_running = run.healthy(healthy_poll.collect_health)

    assert isinstance(run.outcome, DeviceTimeout)  # no channel answered: every one timed out
    for name in ("http", *channels):
        assert f"{name}: timeout" in str(run.outcome)
    assert run.hostile_s < HOSTILE_TIMEOUT_S + SLACK_S, f"the hung poll took {run.hostile_s:.2f} s"
    assert isinstance(sample, HealthSample) and sample.failing_channels == ()
    assert [c.channel for c in sample.channels] == ["http", *channels]
    assert healthy_s < HEALTHY_WITHIN_S, f"the healthy poll took {healthy_s:.2f} s"
    assert hostile_still_running


def test_many_hung_devices_do_not_queue_a_healthy_devices_probes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Seven devices hung on 3 extra channels each: 21 stuck probes, more than a small shared pool holds."""
    channels = ["tcp6024", "ssh", "snmp"]
    sim = Fleet(8, seed=29, net=random.randint(100, 200), port=0, vcapi_port=0, ssh_port=0, snmp_port=0)
    with sim, collectors_for(sim, monkeypatch, tmp_path) as build:
        *hung, healthy = [build(dev, channels) for dev in sim.devices]
        for dev in sim.devices[:-1]:
            sim.fault(dev.id, "hang")
        errors: list[Exception] = []

        def poll_all_hung() -> object:
            threads = [threading.Thread(target=_poll_into, args=(c, errors)) for c in hung]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(HOSTILE_TIMEOUT_S * 4)
            return None

        run = Alongside(poll_all_hung)
        sample, healthy_s, hostile_still_running = run.healthy(healthy.collect_health, engaged_s=0.5)

    assert len(errors) == len(hung) and all(isinstance(e, DeviceTimeout) for e in errors)
    assert run.hostile_s < HOSTILE_TIMEOUT_S + SLACK_S
    assert isinstance(sample, HealthSample) and sample.failing_channels == ()
    assert healthy_s < HEALTHY_WITHIN_S, f"the healthy poll waited {healthy_s:.2f} s behind hung probes"
    assert hostile_still_running


def _poll_into(collector: Collector, errors: list[Exception]) -> None:
    try:
        collector.collect_health()
    except Exception as err:  # every hung device's poll must end in an error, collected here
        errors.append(err)


# --- HTTP: binary garbage where the driver expects an answer ---------------------------------------


class GarbageServer:
    """TLS on 127.0.0.1: completes the handshake, reads the request, answers binary garbage."""

    def __init__(self, tls: ssl.SSLContext, payload: bytes) -> None:
        self.payload = payload
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self._tls = tls
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(OSError, ssl.SSLError), conn:
                conn.settimeout(2)
                wrapped = self._tls.wrap_socket(conn, server_side=True)
                wrapped.recv(65536)
                wrapped.sendall(self.payload)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(3)


@pytest.fixture(scope="module")
def tls() -> ssl.SSLContext:
    return server_context(make_certificate("127.0.0.1", "hostile"))


def _http_collector(model: str, port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Collector:
    monkeypatch.setenv("HEZO_HOSTILE_PW", "hostile-Pa55")
    device = Device(
        id=f"garbage-{model.lower()}", room="R", site="s", model=model,  # type: ignore[arg-type]
        host="127.0.0.1", port=port,
        credentials=Credentials(username="admin", password_env="HEZO_HOSTILE_PW"),
    )  # fmt: skip
    return build_collector(
        device, _profile(model), password="hostile-Pa55", pins=PinStore(tmp_path / "pins.json"),
        timeout_s=1.0, max_response_bytes=100_000, max_log_bytes=100_000,
    )  # fmt: skip


@pytest.mark.parametrize("seed", [1, 2])
def test_binary_garbage_instead_of_an_http_answer_is_a_clean_error(
    tls: ssl.SSLContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    junk = b"\x00\xff\x1b" + random.Random(seed).randbytes(4096)
    server = GarbageServer(tls, junk)
    collector = _http_collector("A30", server.port, tmp_path, monkeypatch)
    started = time.monotonic()
    try:
        with pytest.raises(CollectorError) as caught:
            collector.collect_health()
    finally:
        collector.close()
        server.close()
    assert time.monotonic() - started < 1.0 + SLACK_S
    message = str(caught.value)
    assert "127.0.0.1" in message and len(message) < 300  # names the device, does not dump the bytes
    assert "\x00" not in message and "hostile-Pa55" not in message


def test_binary_garbage_as_a_json_answer_is_unexpected(
    tls: ssl.SSLContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = FIXTURES / "A30" / "133.15.0.60" / "http"
    replay = HttpReplay(_profile("A30"), load_answers(folder), tls, password="hostile-Pa55")
    replay.overrides["status"] = (200, b"\x00\xff" + random.Random(3).randbytes(2048))
    collector = _http_collector("A30", replay.port, tmp_path, monkeypatch)
    try:
        with pytest.raises(UnexpectedResponse, match="/api/device/status: answer is not JSON"):
            collector.collect_health()
    finally:
        collector.close()
        replay.close()


# --- MTR: a hung or endless wevtutil, and a hung log beside another MVC ----------------------------


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


#: a 'wevtutil' that never answers: it blocks forever until the agent kills it at its timeout
HUNG_PROGRAM = "import threading; threading.Event().wait()"


def _windows_source(code: str, seen: list[RunResult], **settings: Any) -> MtrSource:
    """An MTR source in Windows mode whose 'wevtutil' is a Python program (a real subprocess)."""

    def runner(_args: Sequence[str], timeout_s: float, max_bytes: int) -> RunResult:
        result = run_capped(_python(code), timeout_s, max_bytes)
        seen.append(result)
        return result

    return MtrSource(MtrChannel.model_validate(settings), runner=runner, platform="win32")


def test_a_hung_wevtutil_is_killed_at_the_timeout() -> None:
    seen: list[RunResult] = []
    source = _windows_source(HUNG_PROGRAM, seen, timeout_s=0.6)
    started = time.monotonic()
    with pytest.raises(DeviceTimeout, match=r"wevtutil did not finish within 0\.6 s"):
        source.probe()
    assert time.monotonic() - started < 0.6 + SLACK_S
    assert seen[0].timed_out and seen[0].returncode is not None  # killed and reaped, not left running


def test_endless_wevtutil_output_is_read_no_further_than_the_cap() -> None:
    seen: list[RunResult] = []
    endless = "import sys\nwhile True: sys.stdout.buffer.write(b'<Event>' * 4096)"
    source = _windows_source(endless, seen, max_bytes=64 * 1024, timeout_s=10)
    started = time.monotonic()
    with pytest.raises(UnexpectedResponse, match="wevtutil output over 65536 bytes"):
        source.probe()
    assert time.monotonic() - started < 2.0 + SLACK_S
    assert seen[0].over_cap and len(seen[0].stdout) <= 64 * 1024


def test_binary_garbage_from_wevtutil_is_unexpected() -> None:
    seen: list[RunResult] = []
    garbage = "import sys, random; sys.stdout.buffer.write(b'\\x00\\xff' + random.Random(5).randbytes(8192))"
    with pytest.raises(UnexpectedResponse):
        _windows_source(garbage, seen, timeout_s=10).probe()


def test_a_hung_event_log_does_not_delay_another_mvc() -> None:
    seen: list[RunResult] = []
    hung = _windows_source(HUNG_PROGRAM, seen, timeout_s=HOSTILE_TIMEOUT_S)
    settings = MtrChannel(xml_file=FIXTURES / "mtr" / "healthy.xml")
    other = build_probes(
        Device(
            id="mvc-2", room="R", site="s", model="MVC", host="127.0.0.1", channels={"mtr": DeviceChannel()}
        ),
        _profile("MVC", mtr=settings),
    )[0]
    run = Alongside(hung.probe)

    result, healthy_s, hostile_still_running = run.healthy(other.probe)

    assert isinstance(run.outcome, DeviceTimeout)
    assert run.hostile_s < HOSTILE_TIMEOUT_S + SLACK_S
    assert isinstance(result, ChannelResult) and result.ok and result.channel == "mtr"
    assert healthy_s < HEALTHY_WITHIN_S and hostile_still_running


# --- YMCS: one device's stalled call beside another device's lookup -------------------------------


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[YmcsReplay]:
    """The recorded cloud of the simulator fleet, with the A30's and the A20's parts."""
    folder = tmp_path / "ymcs"
    shutil.copytree(FIXTURES / "A30" / "133.15.0.63" / "ymcs", folder)
    shutil.copy(FIXTURES / "A20" / "133.15.0.76" / "ymcs" / "parts" / "a20-02.json", folder / "parts")
    replay = YmcsReplay(folder)
    yield replay
    replay.close()


def _ymcs_probe(account: YmcsAccount, folder: Path) -> ChannelProbe:
    """The ``ymcs`` channel of the recorded device in ``folder``, looked up as its contract says."""
    expected = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    device = Device(
        id=f"{folder.parent.name.lower()}-dev", room="R", site="s", model=folder.parent.name,  # type: ignore[arg-type]
        host="127.0.0.1", channels={"ymcs": DeviceChannel(**expected["ymcs"]["lookup"])},
    )  # fmt: skip
    return build_probes(device, _profile(folder.parent.name), ymcs=account)[0]


def test_a_stalled_cloud_call_for_one_device_does_not_delay_another(cloud: YmcsReplay) -> None:
    client = YmcsClient(cloud.base_url, "hostile", "hostile-secret", timeout_s=HOSTILE_TIMEOUT_S, cache_s=60)
    account = YmcsAccount(client)
    stalled = _ymcs_probe(account, FIXTURES / "A30" / "133.15.0.63")
    other = _ymcs_probe(account, FIXTURES / "A20" / "133.15.0.76")
    assert other.probe().ok  # warms the shared token and listings, as any earlier round does
    cloud.stall["/v2/dm/devices/a30-01/listParts"] = threading.Event()
    run = Alongside(stalled.probe)

    result, healthy_s, hostile_still_running = run.healthy(other.probe)

    account.close()
    assert isinstance(run.outcome, ChannelResult)
    assert (run.outcome.ok, run.outcome.reason) == (False, CLOUD_UNREACHABLE)  # neutral: the cloud's fault
    assert "timeout" in run.outcome.detail
    assert run.hostile_s < HOSTILE_TIMEOUT_S + SLACK_S
    assert isinstance(result, ChannelResult) and result.ok and result.fields["ymcs_device_id"] == "a20-02"
    assert healthy_s < HEALTHY_WITHIN_S and hostile_still_running
