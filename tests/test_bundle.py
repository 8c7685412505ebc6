"""Log bundles: every source of a device in one redacted tar.gz with a manifest, within caps, audited.

Against the simulator (HTTP log export, SFTP files, syslog into the black box, the mock YMCS
exportSyslog) through ``hezo-agent collect`` as a subprocess, and against scripted devices for the
rules: one failing source never fails the bundle, hostile device archives are refused, planted
secrets never leave, the time and size caps hold, refused pulls are audited too.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.audit import AuditLog
from agent.bundle import (
    BadRequest,
    BundleBuilder,
    Requester,
    UnknownDevice,
    collect_bundle,
    manifest_of,
    parse_since,
)
from agent.clock import FakeClock
from agent.daemon import Agent
from collectors.base import Collector
from collectors.errors import DeviceTimeout, UnexpectedResponse
from collectors.log_sources import MvcZipSource
from collectors.models import DeviceFacts, HealthSample, LogBundle
from collectors.mtr import RunResult
from config.bundles import MvcLogSettings
from config.loader import BUILTIN_PROFILES, load_config
from config.schema import Device
from simulator.fleet import Fleet, SimDevice, free_udp_port

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
LOGS = Path(__file__).parent / "fixtures" / "logs"
REPO = Path(__file__).resolve().parents[1]
HEZO_AGENT = [sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())"]
POLL_S = 0.05


def planted() -> list[str]:
    lines = (LOGS / "planted-secrets.list").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle, "r:gz") as tar:
        out = {}
        for m in tar.getmembers():
            assert m.isfile(), f"{m.name} is not a plain file"
            data = tar.extractfile(m)
            assert data is not None
            out[m.name] = data.read()
        return out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_hashes_match(bundle: Path, manifest: dict[str, Any]) -> dict[str, bytes]:
    files = members(bundle)
    listed = {f["path"]: f for s in manifest["sources"] for f in s["files"]}
    assert set(files) == {"manifest.json", *listed}
    for path, entry in listed.items():
        assert sha(files[path]) == entry["sha256"] and len(files[path]) == entry["size_bytes"], path
    return files


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(POLL_S)


# --- against the simulator ----------------------------------------------------------------------


def sim_config(fleet: Fleet, dev: SimDevice, tmp_path: Path, syslog_port: int) -> Path:
    """The fleet's config; ``dev`` uses a site profile with SSH log files, plus YMCS and syslog."""
    path = fleet.write_agent_config(tmp_path / "site.yaml", data_dir=tmp_path / "data", timeout_s=3.0)
    secrets = fleet.write_channel_secrets(path)
    assert fleet.ymcs is not None
    (tmp_path / "ymcs-ca.pem").write_bytes(fleet.ymcs.ca_path.read_bytes())
    profile = yaml.safe_load((BUILTIN_PROFILES / f"yealink-{dev.model.lower()}.yaml").read_text())
    profile["name"] = "site-bar"
    profile["channels"]["ssh"] = {
        "username": dev.username,
        "key_file": str(secrets["ssh_key"]),
        "log_files": [
            {"path": "/var/log/sys.log", "status": "assumed"},
            {"path": "/var/log/export.tar.gz", "status": "assumed"},
            {"path": "/var/log/not-there.log", "status": "assumed"},
        ],
        "timeout_s": 3.0,
        "status": "assumed",
    }
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "site-bar.yaml").write_text(yaml.safe_dump(profile))
    data = yaml.safe_load(path.read_text())
    data["agent"]["profiles_dir"] = "profiles"
    data["syslog"] = {"host": "127.0.0.1", "udp_port": syslog_port, "tcp_port": None}
    data["ymcs"] = {
        "base_url": fleet.ymcs.base_url,
        "client_id": fleet.ymcs.client_id,
        "client_secret_file": str(secrets["ymcs_secret"]),
        "ca_bundle": "ymcs-ca.pem",
        "export_poll_every_s": 0.05,
    }
    entry = next(e for e in data["devices"] if e["id"] == dev.id)
    entry["profile"] = "site-bar"
    entry["channels"] = {"ssh": {"port": dev.ssh_port}, "ymcs": {}}
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


@pytest.fixture
def running(
    fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> Iterator[tuple[Fleet, SimDevice, Agent, Path]]:
    """A fleet serving HTTPS, SSH, syslog and YMCS, and an agent receiving its syslog (it has polled once)."""
    port = free_udp_port()
    fleet = fleet_factory(
        devices=2, seed=17, ssh_port=0, ymcs=True, syslog_to=("127.0.0.1", port), log_bytes=20_000
    )
    dev = next(d for d in fleet.devices if d.model == "A30")
    assert fleet.ymcs is not None
    secret_log = (LOGS / "a30-app.log").read_bytes()
    fleet.ymcs.syslog_content = gzip.compress(secret_log)  # the cloud's export carries secrets too
    config = sim_config(fleet, dev, tmp_path, port)
    agent = Agent(load_config(config))
    assert agent.syslog is not None and agent.blackboxes is not None
    agent.syslog.start()
    try:
        fleet.fault(dev.id, "unplug", "camera")  # the device logs it, and sends it as syslog
        wait_for(lambda: agent.blackboxes is not None and agent.blackboxes.get(dev.id).size_bytes() > 0)
        fleet.clear(dev.id)
        agent.poll_once(dev.id)  # the agent learns the device's identity (and pins its certificate)
        yield fleet, dev, agent, config
    finally:
        agent.stop()


def test_collect_subprocess_pulls_every_source_with_manifest_and_hashes(
    running: tuple[Fleet, SimDevice, Agent, Path], tmp_path: Path
) -> None:
    fleet, dev, _agent, config = running
    out = tmp_path / "pulled.tar.gz"
    proc = subprocess.run(
        [*HEZO_AGENT, "collect", dev.id, "-c", str(config), "-o", str(out), "--since", "10m", "--json"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["sha256"] == sha(out.read_bytes()) and result["size_bytes"] == out.stat().st_size
    manifest = manifest_of(out)
    assert manifest == result["manifest"]
    assert (
        manifest["device"] | {"id": dev.id, "serial": dev.serial, "mac": dev.mac, "firmware": dev.firmware}
        == manifest["device"]
    )
    assert manifest["requested_by"]["channel"] == "cli"
    assert {s["name"] for s in manifest["sources"]} == {"http", "ssh", "blackbox", "ymcs"}
    assert {s["source"] for s in manifest["skipped"]} == {"mtr", "mvc-zip"}
    assert manifest["failed"] == [] and result["outcome"] == "ok"
    files = assert_hashes_match(out, manifest)
    http = [p for p in files if p.startswith("http/")]
    assert {p.rsplit("/", 1)[-1] for p in http} == {"sys.log", "app.log"}  # the export, taken apart
    assert "ssh/var/log/sys.log" in files and "ssh/var/log/export/log/app.log" in files
    ssh = next(s for s in manifest["sources"] if s["name"] == "ssh")
    assert ssh["errors"] and "not-there.log" in ssh["errors"][0]  # one missing file does not fail the source
    assert b"camera" in files["blackbox/blackbox.log"]  # the syslog the device sent when unplugged
    assert b"Zq13access" not in b"".join(files.values()) and b"***" in files["ymcs/exportSyslog"]
    assert fleet.device(dev.id).serial.encode() in files[http[0]] + files[http[1]]
    audit = subprocess.run(
        [*HEZO_AGENT, "audit", "-c", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert audit.returncode == 0, audit.stderr
    [entry] = json.loads(audit.stdout)
    assert entry | {"channel": "cli", "device": dev.id, "outcome": "ok", "sha256": result["sha256"]} == entry
    assert entry["size_bytes"] == out.stat().st_size and entry["bundle"] == out.name


def test_failing_source_is_listed_with_its_reason_and_the_rest_still_arrive(
    running: tuple[Fleet, SimDevice, Agent, Path],
) -> None:
    fleet, dev, agent, _config = running
    fleet.fault(dev.id, "offline", "ssh")
    result = collect_bundle(
        agent, dev.id, requester=Requester("api", "token:ops-1", "job-7"), sources="http,ssh,blackbox"
    )
    assert result.outcome == "partial"
    assert [(f["source"], f["reason"]) for f in result.failed] == [("ssh", "unreachable")]
    assert {s["name"] for s in result.manifest["sources"]} == {"http", "blackbox"}
    assert result.path.parent == agent.data_dir / "bundles" / dev.id
    assert_hashes_match(result.path, result.manifest)
    [entry] = AuditLog(agent.store.path).entries()
    assert (entry.channel, entry.requester, entry.ref, entry.outcome) == (
        "api",
        "token:ops-1",
        "job-7",
        "partial",
    )
    assert entry.sources == ("http", "ssh", "blackbox") and entry.sha256 == result.sha256
    assert "ssh: unreachable" in entry.detail


# --- scripted devices ---------------------------------------------------------------------------


class ExportCollector(Collector):
    """A device whose log export is whatever archive the test gives it (optionally slow)."""

    def __init__(
        self, device: Device, archive: dict[str, bytes], gate: threading.Event | None = None
    ) -> None:
        self.device_id = device.id
        self.archive = archive
        self.gate = gate

    def collect_facts(self) -> DeviceFacts:
        return DeviceFacts("A30", "133.15.0.60", "8030324101000117", "00:15:65:a3:10:17")

    def collect_health(self) -> HealthSample:
        return HealthSample(self.device_id, datetime.now(UTC), self.collect_facts())

    def collect_logs(self, dest_dir: Path) -> LogBundle:
        if self.gate is not None and not self.gate.wait(10):
            raise DeviceTimeout("scripted: never answered")
        path = Path(dest_dir) / f"{self.device_id}-export.bin"
        path.write_bytes(self.archive["bytes"])
        return LogBundle(
            self.device_id, datetime.now(UTC), path, len(self.archive["bytes"]), sha(self.archive["bytes"])
        )


def tar_gz(files: dict[str, bytes], extra: Callable[[tarfile.TarFile], None] | None = None) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(tar)
    return raw.getvalue()


def scripted(
    tmp_path: Path,
    archive: dict[str, bytes],
    *,
    bundles: dict[str, Any] | None = None,
    gate: threading.Event | None = None,
    extra_device: dict[str, Any] | None = None,
    profiles_dir: Path | None = None,
) -> tuple[Agent, FakeClock]:
    """An agent over one scripted A30 (password ``Zq27devicePassword``, see the autouse fixture)
    with a black box; ``raw`` config keys as the test needs."""
    raw: dict[str, Any] = {
        "agent": {"data_dir": str(tmp_path / "data"), "language": "en"},
        "sites": [{"name": "hq", "address": "ul. Testowa 1, Warszawa",
                   "contact": {"name": "Anna Nowak", "phone": "+48 600 100 200", "email": "a@example.com"}}],
        "contracts": [{"number": "HZ/2025/0001", "start": "2025-01-01", "end": "2027-12-31",
                       "serials": ["8030324101000117"]}],
        "devices": [{"id": "a30-zarzad", "room": "Sala Zarząd", "site": "hq", "model": "A30",
                     "host": "127.0.0.1", "credentials": {"password_env": "HEZO_TEST_BAR_PASSWORD"}}],
        "syslog": {"host": "127.0.0.1", "udp_port": 0, "tcp_port": None},
        "redaction": {"patterns": [r"meetingPin=(\d{6})"]},
        "bundles": bundles or {},
    }  # fmt: skip
    if extra_device:
        raw["devices"].append(extra_device)
    if profiles_dir is not None:
        raw["agent"]["profiles_dir"] = str(profiles_dir)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    agent = Agent(
        load_config(path), clock=clock, collector_factory=lambda dev: ExportCollector(dev, archive, gate)
    )
    agent.store.save_facts("a30-zarzad", agent.collector("a30-zarzad").collect_facts(), clock.now())
    return agent, clock


@pytest.fixture(autouse=True)
def _bar_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEZO_TEST_BAR_PASSWORD", "Zq27devicePassword")


def test_planted_secrets_never_leave_in_a_bundle_and_ordinary_lines_stay_byte_for_byte(
    tmp_path: Path,
) -> None:
    originals = {p.name: p.read_bytes() for p in LOGS.iterdir() if p.suffix != ".list"}
    utf16 = "SRS-App[2000]: Heartbeat ok\r\nconfig password=Zq35utf16 applied\r\n".encode("utf-16")
    binary = (
        b"SQLite format 3\x00\x00\x01"
        + "Zq27devicePassword".encode("utf-16-le")
        + b"\x00Zq27devicePassword\x00"
    )
    nested = gzip.compress(originals["a30-sys.log"])
    extra = {"log/old/sys.log.1.gz": nested, "log/srs-utf16.log": utf16, "db/config.db": binary}
    archive = tar_gz({f"log/{name}": data for name, data in originals.items()} | extra)
    agent, clock = scripted(tmp_path, {"bytes": archive})
    assert agent.blackboxes is not None
    for line in originals["mvc-admin-shell.log"].decode().splitlines():
        agent.blackboxes.get("a30-zarzad").append(line, received_at=clock.now() - timedelta(minutes=5))
    builder = BundleBuilder.for_agent(agent)
    try:
        result = builder.build("a30-zarzad", requester=Requester("ticket", "engineer@hezo.pl", "T-42"))
    finally:
        builder.close()
        agent.stop()
    files = assert_hashes_match(result.path, result.manifest)
    everything = b"\n".join([*files.values(), result.path.read_bytes()])
    texts = [*files.values(), *(d.decode("utf-16", "ignore").encode() for d in files.values())]
    for secret in [*planted(), "Zq35utf16"]:
        assert all(secret.encode() not in t for t in texts), f"{secret} leaked"
        assert secret.encode("utf-16-le") not in everything, f"{secret} leaked as UTF-16"
    extracted = {p.split("/log/", 1)[-1]: data for p, data in files.items() if p.startswith("http/")}
    for name, data in originals.items():
        kept = extracted[name].splitlines(keepends=True)
        source = data.splitlines(keepends=True)
        assert len(kept) <= len(source)
        for raw in source:  # a line with no planted secret arrives unchanged
            if not any(secret.encode() in raw for secret in planted()) and b"PRIVATE KEY-----" not in raw:
                assert raw in kept, f"ordinary line changed in {name}: {raw!r}"
    assert extracted["old/sys.log.1"] == extracted["a30-sys.log"]  # the nested gz, taken apart and redacted
    by_path = {f["path"]: f for s in result.manifest["sources"] for f in s["files"]}
    db = next(f for p, f in by_path.items() if p.endswith("db/config.db"))
    assert db["redaction"].startswith("binary") and len(
        files[next(p for p in files if p.endswith("config.db"))]
    ) == len(binary)
    assert by_path["blackbox/blackbox.log"]["masked_lines"] >= 8
    assert result.manifest["device"]["contract"] == "HZ/2025/0001"
    assert result.manifest["requested_by"] == {"channel": "ticket", "who": "engineer@hezo.pl", "ref": "T-42"}


def test_hostile_device_archive_is_refused_and_named_while_the_black_box_arrives(tmp_path: Path) -> None:
    def slip(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("../../../../escaped.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"pwned"))

    agent, clock = scripted(tmp_path, {"bytes": tar_gz({"log/sys.log": b"ok\n"}, slip)})
    assert agent.blackboxes is not None
    agent.blackboxes.get("a30-zarzad").append("kernel: link up", received_at=clock.now())
    builder = BundleBuilder.for_agent(agent)
    try:
        result = builder.build("a30-zarzad", requester=Requester.cli())
    finally:
        builder.close()
        agent.stop()
    [failed] = result.failed
    assert failed["source"] == "http" and failed["reason"] == "unsafe_archive"
    assert "'..'" in failed["error"] and "escaped.txt" in failed["error"]
    assert {s["name"] for s in result.manifest["sources"]} == {"blackbox"}
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not list((agent.data_dir / "bundles").glob(".staging-*"))


def test_a_source_past_the_time_cap_fails_alone_and_the_bundle_is_on_time(tmp_path: Path) -> None:
    gate = threading.Event()
    agent, clock = scripted(
        tmp_path, {"bytes": tar_gz({"log/sys.log": b"x\n"})}, bundles={"timeout_s": 0.5}, gate=gate
    )
    assert agent.blackboxes is not None
    agent.blackboxes.get("a30-zarzad").append("sysmon: status ok", received_at=clock.now())
    builder = BundleBuilder.for_agent(agent)
    started = time.monotonic()
    try:
        result = builder.build("a30-zarzad", requester=Requester.cli())
    finally:
        gate.set()
        builder.close()
        agent.stop()
    assert time.monotonic() - started < 5.0
    assert [(f["source"], f["reason"]) for f in result.failed] == [("http", "timeout")]
    assert "0.5 s" in result.failed[0]["error"] and result.outcome == "partial"
    assert {s["name"] for s in result.manifest["sources"]} == {"blackbox"}


def test_total_size_cap_leaves_files_out_and_lists_them(tmp_path: Path) -> None:
    big = {
        f"log/part{i}.log": (f"line {i} ".encode() + os.urandom(8).hex().encode() + b"\n") * 2500
        for i in range(3)
    }
    agent, _ = scripted(tmp_path, {"bytes": tar_gz(big)}, bundles={"max_bytes": 100_000})
    builder = BundleBuilder.for_agent(agent)
    try:
        result = builder.build("a30-zarzad", requester=Requester.cli(), sources=["http"])
    finally:
        builder.close()
        agent.stop()
    sizes = [f["size_bytes"] for s in result.manifest["sources"] for f in s["files"]]
    assert sum(sizes) <= 100_000 and len(sizes) == 1
    assert (
        len(result.manifest["omitted"]) == 2 and "over the bundle cap" in result.manifest["omitted"][0]["why"]
    )
    assert result.outcome == "partial"
    assert_hashes_match(result.path, result.manifest)


def test_refused_pulls_are_audited_and_unavailable_sources_named(tmp_path: Path) -> None:
    agent, _ = scripted(tmp_path, {"bytes": tar_gz({"log/sys.log": b"ok\n"})})
    builder = BundleBuilder.for_agent(agent)
    try:
        with pytest.raises(UnknownDevice, match="unknown device 'nope'"):
            builder.build("nope", requester=Requester("api", "token:7"))
        with pytest.raises(BadRequest, match=r"unknown source telnet \(sources: http,"):
            builder.build("a30-zarzad", requester=Requester.cli(), sources="http,telnet")
        with pytest.raises(BadRequest, match="since"):
            builder.build("a30-zarzad", requester=Requester.cli(), since="yesterday-ish")
        result = builder.build("a30-zarzad", requester=Requester.cli(), sources="http,mtr")
    finally:
        builder.close()
        agent.stop()
    assert result.failed == [
        {"source": "mtr", "reason": "not_available", "error": "the device does not use the mtr channel"}
    ]
    outcomes = [(e.device_id, e.outcome) for e in AuditLog(agent.store.path).entries()]
    assert outcomes == [
        ("a30-zarzad", "partial"),
        ("a30-zarzad", "rejected"),
        ("a30-zarzad", "rejected"),
        ("nope", "rejected"),
    ]


def test_bundles_kept_per_device_are_pruned_to_the_newest(tmp_path: Path) -> None:
    agent, clock = scripted(
        tmp_path, {"bytes": tar_gz({"log/sys.log": b"ok\n"})}, bundles={"keep_per_device": 2}
    )
    builder = BundleBuilder.for_agent(agent)
    try:
        paths = []
        for _ in range(3):
            paths.append(builder.build("a30-zarzad", requester=Requester.cli(), sources="http").path)
            clock.advance(61)
    finally:
        builder.close()
        agent.stop()
    assert sorted(p.name for p in (agent.data_dir / "bundles" / "a30-zarzad").iterdir()) == sorted(
        p.name for p in paths[1:]
    )


def test_mvc_zip_and_teams_rooms_events_come_from_their_configured_places(tmp_path: Path) -> None:
    zips = tmp_path / "mvc-logs"
    zips.mkdir()
    with zipfile.ZipFile(zips / "old.zip", "w") as zf:
        zf.writestr("Logs/old.log", "old\n")
    os.utime(zips / "old.zip", (time.time() - 3600, time.time() - 3600))
    with zipfile.ZipFile(zips / "SRSv2_Logs.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Logs/SRS.log", "signin ok\nwebhook token=Zq15apikey\n")
    xml = tmp_path / "events.xml"
    xml.write_text("<Events><Event><System><EventID>2000</EventID></System></Event></Events>\n")
    profile = yaml.safe_load((BUILTIN_PROFILES / "yealink-mvc.yaml").read_text())
    profile["name"] = "site-mvc"
    profile.setdefault("channels", {})["mtr"] = {"xml_file": str(xml)}
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "site-mvc.yaml").write_text(yaml.safe_dump(profile))
    mvc = {"id": "mvc-sala", "room": "Sala B", "site": "hq", "model": "MVC", "host": "127.0.0.2",
           "profile": "site-mvc", "channels": {"mtr": {}}}  # fmt: skip
    export = {"bytes": tar_gz({"log/sys.log": b"ok\n"})}
    bundles = {"mvc": {"zip_dir": str(zips)}}
    agent, _ = scripted(
        tmp_path, export, bundles=bundles, extra_device=mvc, profiles_dir=tmp_path / "profiles"
    )
    builder = BundleBuilder.for_agent(agent)
    try:
        result = builder.build("mvc-sala", requester=Requester.cli(), sources="mvc-zip,mtr")
    finally:
        builder.close()
        agent.stop()
    files = assert_hashes_match(result.path, result.manifest)
    assert files["mvc-zip/SRSv2_Logs/Logs/SRS.log"] == b"signin ok\nwebhook token=***\n"
    assert files["mtr/events.xml"].startswith(b"<Events>") and result.failed == []


def test_mvc_zip_on_windows_runs_collect_script_then_takes_its_new_zip(tmp_path: Path) -> None:
    settings = MvcLogSettings(zip_dir=tmp_path)
    with zipfile.ZipFile(tmp_path / "stale.zip", "w") as zf:
        zf.writestr("a.log", "stale\n")
    os.utime(tmp_path / "stale.zip", (time.time() - 7200, time.time() - 7200))
    calls: list[tuple[list[str], float]] = []

    def runner(args: Any, timeout_s: float, max_bytes: int) -> RunResult:
        calls.append((list(args), timeout_s))
        with zipfile.ZipFile(tmp_path / "SRSv2_new.zip", "w") as zf:
            zf.writestr("b.log", "fresh\n")
        return RunResult(0, b"done")

    source = MvcZipSource(settings, platform="win32", runner=runner)
    out = tmp_path / "out"
    out.mkdir()
    fetched = source.fetch(out, since=datetime.now(UTC), deadline=time.monotonic() + 30)
    assert (
        calls[0][0][-3:] == ["-File", settings.script, "CollectSrsV2Logs.ps1"]
        and calls[0][0][0] == "powershell"
    )
    assert [p.name for p in out.iterdir()] == ["SRSv2_new.zip"] and "CollectSrsV2Logs.ps1" in fetched.notes[0]
    slow = MvcZipSource(
        settings, platform="win32", runner=lambda a, t, m: RunResult(None, b"", timed_out=True)
    )
    with pytest.raises(DeviceTimeout, match="did not finish"):
        slow.fetch(tmp_path / "out", since=datetime.now(UTC), deadline=time.monotonic() + 30)
    elsewhere = MvcZipSource(MvcLogSettings(), platform="linux")
    with pytest.raises(UnexpectedResponse, match="zip_dir"):
        elsewhere.fetch(out, since=datetime.now(UTC), deadline=time.monotonic() + 30)


def test_parse_since_reads_durations_and_times_and_refuses_the_rest() -> None:
    now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("60", now) == now - timedelta(minutes=60)
    assert parse_since("1d", now) == now - timedelta(days=1)
    assert parse_since("2026-01-05T08:00:00+01:00", now) == datetime(2026, 1, 5, 7, 0, tzinfo=UTC)
    for bad, why in (("31d", "30 days"), ("2026-01-06T00:00:00Z", "past"), ("soon", "duration")):
        with pytest.raises(BadRequest, match=why):
            parse_since(bad, now)
