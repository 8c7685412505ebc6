"""The contract suite: every fixture folder × every channel it has recordings for.

``tests/fixtures/<model>/<firmware>/`` holds one sub-folder per channel (``http``, ``tcp6024``,
``ssh``, ``snmp``, ``mtr``, ``ymcs``) with the device's recorded answers, and ``expected.json``
with one section per channel: what the agent must make of those answers. Each recording is
served back on loopback by a replay server (``tests/replay.py``) and read by the driver or
probe the registry (``collectors/registry.py``) builds for the model's profile, exactly as the
agent builds it. Folders are discovered by globbing: adding a firmware folder needs no code.
A channel folder no driver or probe handles fails, and so does a missing expected section.
See ``tests/fixtures/README.md`` for what the recordings are (the SIMULATOR, not real devices).
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from replay import HttpReplay, SnmpReplay, SshReplay, VcApiReplay, YmcsReplay, load_answers

from collectors.known_hosts import KnownHosts
from collectors.models import ChannelResult
from collectors.mtr import MtrSource
from collectors.multi import ChannelProbe
from collectors.pins import PinStore
from collectors.registry import DRIVERS, PROBES, build_collector, build_probes
from collectors.ymcs import YmcsClient
from collectors.ymcs_channel import YmcsAccount
from config.channels import DeviceChannel, MtrChannel, SnmpChannel, SshChannel, SshCommand
from config.loader import DEFAULT_PROFILE, load_profile
from config.schema import Credentials, Device, Profile
from simulator.certs import make_certificate, server_context
from simulator.snmp_agent import SnmpCredentials

FIXTURES = Path(__file__).parent / "fixtures"
FOLDERS = sorted(p.parent for p in FIXTURES.glob("*/*/expected.json"))
CASES = [(f, c.name) for f in FOLDERS for c in sorted(f.iterdir()) if c.is_dir()]
PASSWORD = "contract-Pa55-w0rd"
SNMP = SnmpCredentials("contract-community", "contract", "contract-auth-key", "contract-priv-key")
ENV = {"HEZO_CONTRACT_PW": PASSWORD, "HEZO_CONTRACT_SNMP": SNMP.community}
#: keys of an expected section that are inputs to the probe, not results
INPUTS = ("lookup", "read_at")
#: channels the registry knows that record nothing: the plain TCP probe only connects
NOTHING_TO_RECORD = frozenset({"tcp"})


def _id(case: tuple[Path, str]) -> str:
    folder, channel = case
    return f"{folder.parent.name}-{folder.name}-{channel}"


def _expected(folder: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    return doc


def _profile(folder: Path) -> Profile:
    model = folder.parent.name
    if model not in DEFAULT_PROFILE:
        pytest.fail(f"{folder}: {model!r} is not a model with a profile ({', '.join(DEFAULT_PROFILE)})")
    return load_profile(DEFAULT_PROFILE[model])


def _device(folder: Path, channels: dict[str, DeviceChannel], port: int | None = None) -> Device:
    return Device(
        id=f"contract-{folder.parent.name.lower()}",
        room="Contract room",
        site="contract",
        model=folder.parent.name,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        credentials=Credentials(username="admin", password_env="HEZO_CONTRACT_PW"),
        channels=channels,  # type: ignore[arg-type]
    )


def _with_channel(profile: Profile, name: str, settings: Any) -> Profile:
    """The model's profile as a site profile offering ``name`` (its own settings win if it has them)."""
    if getattr(profile.channels, name) is not None:
        return profile
    return profile.model_copy(update={"channels": profile.channels.model_copy(update={name: settings})})


def _one_probe(folder: Path, name: str, settings: Any, port: int | None, **kw: Any) -> ChannelProbe:
    """The registry's probe for channel ``name`` of this folder's device (port pointed at the replay)."""
    profile = _with_channel(_profile(folder), name, settings)
    device = _device(folder, {name: DeviceChannel(port=port)})
    probes = build_probes(device, profile, **kw)
    assert [p.name for p in probes] == [name]
    return probes[0]


def _result(result: ChannelResult, channel: str) -> dict[str, Any]:
    assert result.channel == channel and result.latency_ms >= 0
    fields = json.loads(json.dumps(result.fields))  # tuples as lists, as in the JSON
    return {"ok": result.ok, "reason": result.reason, "fields": fields}


# --- one runner per channel: replay the recordings, return what the agent made of them ----------

Runner = Callable[[Path, dict[str, Any], Path], dict[str, Any]]


@pytest.fixture(scope="module")
def tls() -> ssl.SSLContext:
    return server_context(make_certificate("127.0.0.1", "contract-replay"))


def run_http(folder: Path, expected: dict[str, Any], tmp: Path, tls: ssl.SSLContext) -> dict[str, Any]:
    """The profile's driver (``DRIVERS[profile.driver]``) against the recorded HTTP answers."""
    profile = _profile(folder)
    replay = HttpReplay(profile, load_answers(folder / "http"), tls, password=PASSWORD)
    collector = build_collector(
        _device(folder, {}, port=replay.port), profile, password=PASSWORD, pins=PinStore(tmp / "pins.json"),
        timeout_s=3.0, max_response_bytes=1_000_000, max_log_bytes=1_000_000,
    )  # fmt: skip
    try:
        assert isinstance(collector, DRIVERS[profile.driver])
        sample = collector.collect_health()
        requested = replay.paths()
        assert collector.collect_facts() == sample.facts
    finally:
        collector.close()
        replay.close()
    assert sample.device_id == collector.device_id and sample.taken_at.tzinfo is not None
    assert all(c.ok and c.latency_ms >= 0 for c in sample.checks)
    login = [profile.auth.login.path] if profile.auth.login else []
    wanted = [e.path for n, e in profile.endpoints.items() if n in expected["checks"]]
    assert sorted(requested) == sorted([*login, *wanted])  # each once
    return {
        "facts": asdict(sample.facts),
        "uptime_s": sample.uptime_s,
        "call_state": sample.call_state,
        "peripherals": [asdict(p) for p in sample.peripherals],
        "updating": sample.updating,
        "checks": [c.check for c in sample.checks],
    }


def run_tcp6024(folder: Path, expected: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """The VC API probe (the profile's own tcp6024 settings) against the recorded banner and answers."""
    replay = VcApiReplay.from_file(folder / "tcp6024" / "session.json")
    try:
        probe = _one_probe(folder, "tcp6024", None, replay.port)
        result = probe.probe()
        probe.close()
    finally:
        replay.close()
    return _result(result, "tcp6024")


def run_ssh(folder: Path, expected: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """The SSH probe running the recorded commands against the recorded outputs."""
    session = json.loads((folder / "ssh" / "session.json").read_text(encoding="utf-8"))
    settings = SshChannel(
        password_env="HEZO_CONTRACT_PW",
        commands=tuple(SshCommand(name=c["name"], command=c["command"]) for c in session["commands"]),
        timeout_s=5.0,
    )
    replay = SshReplay(session, password=PASSWORD)
    try:
        probe = _one_probe(folder, "ssh", settings, replay.port, known_hosts=KnownHosts(tmp / "known_hosts"))
        result = probe.probe()
        probe.close()
    finally:
        replay.close()
    assert replay.asked == [c["command"] for c in session["commands"]]
    return _result(result, "ssh")


def run_snmp(folder: Path, expected: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """The SNMP probe (v2c GET of the system group, WALK of ifTable) against the recorded varbinds."""
    varbinds = json.loads((folder / "snmp" / "walk.json").read_text(encoding="utf-8"))["varbinds"]
    settings = SnmpChannel(community_env="HEZO_CONTRACT_SNMP", timeout_s=2.0, retries=1)
    replay = SnmpReplay(varbinds, SNMP)
    try:
        probe = _one_probe(folder, "snmp", settings, replay.port)
        result = probe.probe()
        probe.close()
    finally:
        replay.close()
    return _result(result, "snmp")


def run_mtr(folder: Path, expected: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """The MTR source reading the recorded event XML, at the time ``read_at`` the section names."""
    settings = MtrChannel(xml_file=folder / "mtr" / "events.xml")
    probe = _one_probe(folder, "mtr", settings, None)
    assert isinstance(probe, MtrSource)
    read_at = datetime.fromisoformat(expected["read_at"])
    timed = MtrSource(probe.settings, platform="linux", clock=lambda: read_at)  # the registry's settings
    return _result(timed.probe(), "mtr")


def run_ymcs(folder: Path, expected: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """The YMCS channel (an account shared by devices) looking the device up by ``lookup``."""
    replay = YmcsReplay(folder / "ymcs")
    account = YmcsAccount(YmcsClient(replay.base_url, "contract-client", "contract-secret", timeout_s=3.0))
    lookup = expected["lookup"]
    device = _device(folder, {"ymcs": DeviceChannel(**lookup)})
    try:
        probes = build_probes(device, _profile(folder), ymcs=account)
        assert [p.name for p in probes] == ["ymcs"]
        result = probes[0].probe()
    finally:
        account.close()
        replay.close()
    return _result(result, "ymcs")


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "http": run_http,
    "tcp6024": run_tcp6024,
    "ssh": run_ssh,
    "snmp": run_snmp,
    "mtr": run_mtr,
    "ymcs": run_ymcs,
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    yield


# --- the contract ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_recording_gives_the_expected_result(
    case: tuple[Path, str], tmp_path: Path, tls: ssl.SSLContext, env: None
) -> None:
    folder, channel = case
    runner = RUNNERS.get(channel)
    if runner is None:
        pytest.fail(
            f"{folder}: no driver or probe handles channel folder {channel!r} "
            f"(handled: {', '.join(sorted(RUNNERS))})"
        )
    expected = _expected(folder).get(channel)
    if expected is None:
        pytest.fail(f"{folder}/expected.json has no {channel!r} section for the {channel}/ recordings")
    extra = {"tls": tls} if channel == "http" else {}
    actual = runner(folder, expected, tmp_path, **extra)
    assert actual == {k: v for k, v in expected.items() if k not in INPUTS}


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f"{f.parent.name}-{f.name}")
def test_expected_has_one_section_per_recorded_channel(folder: Path) -> None:
    sections = {k for k in _expected(folder) if not k.startswith("_")}
    recorded = {c.name for c in folder.iterdir() if c.is_dir()}
    assert recorded, f"{folder}: no channel recordings"
    assert sections == recorded, f"{folder}: expected.json sections {sorted(sections)} vs {sorted(recorded)}"


def test_every_folder_under_a_model_has_an_expected_result() -> None:
    for model in DEFAULT_PROFILE:
        for folder in sorted((FIXTURES / model).iterdir()) if (FIXTURES / model).is_dir() else []:
            assert (folder / "expected.json").is_file(), f"{folder}: recordings without expected.json"


def test_every_registered_driver_and_probe_has_a_runner_and_a_recording() -> None:
    registered = (set(PROBES) - NOTHING_TO_RECORD) | {"http", "ymcs"}
    assert set(RUNNERS) == registered  # a new channel in the registry needs a runner here
    assert {channel for _, channel in CASES} == registered  # ... and at least one recording
    http_drivers = {_profile(f).driver for f, c in CASES if c == "http"}
    assert http_drivers == set(DRIVERS)
    assert {f.parent.name for f in FOLDERS} == set(DEFAULT_PROFILE)


def test_a_channel_folder_no_driver_handles_fails_the_contract(
    tmp_path: Path, tls: ssl.SSLContext, env: None
) -> None:
    folder = tmp_path / "A30" / "1.2.3.4"
    (folder / "polycom-ssh").mkdir(parents=True)
    (folder / "expected.json").write_text('{"polycom-ssh": {}}', encoding="utf-8")
    refused = "no driver or probe handles channel folder 'polycom-ssh'"
    with pytest.raises(pytest.fail.Exception, match=refused):
        test_recording_gives_the_expected_result((folder, "polycom-ssh"), tmp_path, tls, None)


def test_the_simulator_recordings_are_fresh() -> None:
    """A fresh recording from the simulator equals the committed one (else: run record.py)."""
    done = subprocess.run(
        [sys.executable, str(FIXTURES / "record.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"re-record with tests/fixtures/record.py:\n{done.stdout}{done.stderr}"
