"""Hostile devices among healthy ones: every case bounded in time and bytes, healthy polls on time.

An in-process simulated fleet (``simulator.fleet.Fleet``) of healthy devices, in which a few
devices are made hostile by replacing, for this benchmark only, the HTTP handler of their
simulated server (the rest of the simulator is unchanged):

* **slowloris**: every HTTP answer drips its status line one byte every 0.2 s, forever;
* **10 GiB log stream**: the log export streams up to 10 GiB as fast as it can, chunked, no length;
* **gzip bomb**: the log export is a valid ~10 MB tar.gz that expands to 10 GiB;
* **zip-slip archive**: the log export's tar has members ``../../…`` and ``/tmp/…``;
* **symlink archive**: a member ``log/link`` → ``/etc/passwd``, then a file written through it;
* **changed certificate**: after the agent pinned it, the device presents another certificate;

and through the agent's SSH transport (the code of the SSH poll channel) against devices of the
same fleet: a **changed host key** (the simulator's ``hostkey-change`` fault), an SSH command
that **drips** one byte every 0.2 s and one that streams **endless** output. The three hostile
archives also go straight through the agent's extractor (``collectors.safe_extract``, default
limits): each must be rejected, bounded in time, with nothing left behind.

The real :class:`~agent.daemon.Agent` polls every device (HTTP, every 5 s here) and collects
their log exports as ``hezo-agent run`` does (first exports spread at ~1/s), except that each
hostile device's first export follows its first good poll. Measured per case:
time and bytes, what the agent concluded, files outside the agent's data folder, requests (or
SSH logins) after the identity change, and the lateness of the healthy devices' polls.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import shutil
import struct
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import yaml
from _agent_worker import DUE, TimedScheduler
from _common import MiB, Report, fmt_s, parser, percentile, results_path
from aiohttp import web

import agent.daemon as daemon
from agent.daemon import Agent
from collectors.errors import CollectorError
from collectors.known_hosts import KnownHosts
from collectors.transports.ssh import SshTransport
from config.loader import load_config
from simulator.certs import make_certificate, server_context
from simulator.fleet import Fleet
from simulator.identity import ADMIN_USER
from simulator.ssh_server import SshServer

GiB = 1024 * MiB
HTTP_CASES = ("slowloris", "log_stream", "gzip_bomb", "zip_slip", "symlink", "cert_change")
SSH_CASES = ("hostkey_change", "ssh_drip", "ssh_endless")
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Size:
    """How big a run is."""

    healthy: int
    interval_s: float
    seconds: float
    bomb_gib: int
    timeout_s: float

    @property
    def request_bound_s(self) -> float:
        """The HTTP transport's overall deadline per request: the agent's timeout_s (connect + answer)."""
        return self.timeout_s


SIZES = {
    "smoke": Size(healthy=3, interval_s=2.0, seconds=6.0, bomb_gib=1, timeout_s=1.0),
    "quick": Size(healthy=20, interval_s=5.0, seconds=28.0, bomb_gib=10, timeout_s=5.0),
    "full": Size(healthy=60, interval_s=5.0, seconds=45.0, bomb_gib=10, timeout_s=5.0),
}


@dataclass
class Case:
    """What one hostile device did and what the agent made of it."""

    name: str
    device_id: str = ""
    sent_bytes: int = 0
    requests_after_change: int = 0
    started: float = 0.0
    seconds: float = float("nan")
    kept_bytes: int = 0
    result: str = "not reached"
    attempts: int = 0
    notes: list[str] = field(default_factory=list)


# --- hostile archives ------------------------------------------------------------------------------


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A tar.gz of the given members (data None: no content, e.g. a symlink)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return raw.getvalue()


def zip_slip(tag: str) -> bytes:
    """Members that climb out of any folder they are extracted into, or name an absolute path."""
    climb = tarfile.TarInfo(f"../../../../../../tmp/hezo-zipslip-{tag}")
    absolute = tarfile.TarInfo(f"/tmp/hezo-zipslip-abs-{tag}")
    return tar_gz([(tarfile.TarInfo("log/sys.log"), b"ok\n"), (climb, b"pwned\n"), (absolute, b"pwned\n")])


def symlink_archive(tag: str) -> bytes:
    """A symlink to a file outside, then a file of the same name written through it."""
    link = tarfile.TarInfo("log/link")
    link.type = tarfile.SYMTYPE
    link.linkname = f"/tmp/hezo-symlink-target-{tag}"
    return tar_gz([(link, None), (tarfile.TarInfo("log/link"), b"written through the link\n")])


def gzip_bomb(gib: int) -> tuple[bytes, int]:
    """A valid single-member tar.gz whose one member is ``gib`` GiB of zeros (~1 KB per MiB).

    After a full flush a deflate stream restarts from an empty window, so 1 MiB of zeros
    compresses to the same bytes every time: the block is computed once and repeated.
    """
    header = tarfile.TarInfo("log/sys.log")
    header.size = gib * GiB
    head = header.tobuf(format=tarfile.GNU_FORMAT)
    tail = bytes(1024)  # the tar end-of-archive blocks
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(bytes(MiB)) + deflate.flush(zlib.Z_FULL_FLUSH)
    last = deflate.compress(tail) + deflate.flush()
    crc = zlib.crc32(head)
    zeros = bytes(MiB)
    for _ in range(gib * 1024):
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(tail, crc)
    size = len(head) + gib * GiB + len(tail)
    gz_header = b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x02\x03"
    trailer = struct.pack("<II", crc, size & 0xFFFFFFFF)
    return gz_header + first + block * (gib * 1024) + last + trailer, size


# --- the hostile handlers (bench-only replacements of a simulated device's HTTP handler) -----------


class Hostile:
    """Makes fleet devices hostile and counts what they sent."""

    def __init__(self, fleet: Fleet, tag: str, bomb_gib: int) -> None:
        self.fleet = fleet
        self.tag = tag
        self.cases: dict[str, Case] = {}
        self.bomb, self.bomb_expands = gzip_bomb(bomb_gib)
        self.stopping = False

    def make(self, case: Case) -> None:
        """Replace the HTTP handler of ``case.device_id``'s simulated server (before the fleet starts)."""
        server = self.fleet._servers[case.device_id]  # bench-only: the simulator's device server
        plain: Handler = server._handle
        logs_path = server.profile.endpoints["logs"].path
        login = server.profile.auth.login
        login_path = login.path if login is not None else ""
        self.cases[case.name] = case

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            if case.name == "cert_change" and case.started:
                case.requests_after_change += 1
                if request.path == login_path:
                    case.notes.append("login after the change")
            if case.name == "slowloris":
                return await self._drip(request, case)
            if request.path == logs_path and server._authorised(request):
                if case.name == "log_stream":
                    return await self._stream(request, case)
                body = {
                    "gzip_bomb": self.bomb,
                    "zip_slip": zip_slip(self.tag),
                    "symlink": symlink_archive(self.tag),
                }.get(case.name)
                if body is not None:
                    case.started = case.started or time.monotonic()
                    case.sent_bytes += len(body)
                    return web.Response(body=body, content_type="application/gzip")
            return await plain(request)

        server._handle = handle  # type: ignore[method-assign]

    async def _drip(self, request: web.BaseRequest, case: Case) -> web.StreamResponse:
        case.started = case.started or time.monotonic()
        transport = request.transport
        line = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000
        for i in range(3000):  # at most 10 minutes
            if transport is None or transport.is_closing() or self.stopping:
                break
            transport.write(line[i % len(line) : i % len(line) + 1])
            case.sent_bytes += 1
            await asyncio.sleep(0.2)
        if transport is not None:
            transport.abort()
        return web.Response(status=503)

    async def _stream(self, request: web.BaseRequest, case: Case) -> web.StreamResponse:
        case.started = case.started or time.monotonic()
        resp = web.StreamResponse(headers={"Content-Type": "application/gzip"})
        resp.enable_chunked_encoding()  # no length announced: only the agent's byte cap stops it
        await resp.prepare(request)
        chunk = b"\x1f\x8b" + os.urandom(256 * 1024 - 2)
        try:
            while case.sent_bytes < 10 * GiB and not self.stopping:
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                await resp.write(chunk)
                case.sent_bytes += len(chunk)
                for _ in range(10_000):  # count what the agent really took: at most 1 MB waits in buffers
                    if transport.is_closing() or transport.get_write_buffer_size() <= MiB:
                        break
                    await asyncio.sleep(0.001)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass
        if self.stopping and request.transport is not None:
            request.transport.abort()  # cut, never complete: a short complete answer is a valid log
        return resp

    def change_certificate(self, case: Case) -> None:
        """Serve another certificate from now on (the agent has pinned the first one)."""
        server = self.fleet._servers[case.device_id]
        new = make_certificate(server.desc.host, server.desc.hostname, key_seed=f"hostile:{self.tag}")
        server._ctx = server_context(new)
        self.fleet.fault(case.device_id, "offline")  # close the listener and every connection ...
        self.fleet.clear(case.device_id)  # ... and listen again, with the new certificate
        case.started = time.monotonic()


# --- SSH cases -----------------------------------------------------------------------------------------


def ssh_cases(fleet: Fleet, ids: dict[str, str], workdir: Path, timeout_s: float) -> list[Case]:
    """Host key change, drip and endless output through the agent's SSH transport."""
    known = KnownHosts(workdir / "ssh_known_hosts")
    logins: dict[str, int] = {}
    plain_pw, plain_key = SshServer.password_ok, SshServer.key_ok

    def counted_pw(self: SshServer, username: str, password: str) -> bool:
        logins[self.host] = logins.get(self.host, 0) + 1
        return plain_pw(self, username, password)

    def counted_key(self: SshServer, username: str, key: Any) -> bool:
        logins[self.host] = logins.get(self.host, 0) + 1
        return plain_key(self, username, key)

    SshServer.password_ok = counted_pw  # type: ignore[method-assign]  # bench-only login counter
    SshServer.key_ok = counted_key  # type: ignore[method-assign]
    cases = []
    try:
        for name in SSH_CASES:
            dev = fleet.device(ids[name])
            assert dev.ssh_port is not None
            transport = SshTransport(
                dev.host,
                port=dev.ssh_port,
                username=ADMIN_USER,
                known_hosts=known,
                key_text=fleet.ssh_client_key,
                timeout_s=timeout_s,
                max_bytes=1_000_000,
            )
            case = Case(name, dev.id)
            first = transport.probe(["status"])  # trust on first use: the key is stored now
            fleet.fault(
                dev.id,
                {"hostkey_change": "hostkey-change", "ssh_drip": "drip", "ssh_endless": "endless"}[name],
            )
            before = logins.get(dev.host, 0)
            case.started = time.monotonic()
            try:
                result = transport.probe(["status"])
                case.result = f"ok={result.ok} {result.reason}: {result.detail}"
            except CollectorError as err:
                case.result = f"{type(err).__name__} ({err.reason})"
            case.seconds = time.monotonic() - case.started
            case.requests_after_change = logins.get(dev.host, 0) - before
            case.notes.append(f"first probe ok={first.ok}")
            fleet.clear(dev.id)
            cases.append(case)
    finally:
        SshServer.password_ok, SshServer.key_ok = plain_pw, plain_key  # type: ignore[method-assign]
    return cases


# --- the run -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and record its table."""
    args = parser("hostile devices").parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)
    size = SIZES[args.size]
    workdir = Path(tempfile.mkdtemp(prefix="hezo-bench-hostile-"))
    report = Report("hostile", args.size)
    try:
        run(size, workdir, report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report.emit(results_path(args), args.json)
    return 0


def run(size: Size, workdir: Path, report: Report) -> None:
    """Start the fleet and the agent, let the hostile devices do their worst, measure."""
    tag = f"{os.getpid()}-{int(time.time())}"
    n_http = len(HTTP_CASES)
    fleet = Fleet(
        devices=size.healthy + n_http + len(SSH_CASES), seed=9, net=213, port=0, vcapi_port=None, ssh_port=0
    )
    hostile = Hostile(fleet, tag, size.bomb_gib)
    ids = {name: fleet.devices[size.healthy + i].id for i, name in enumerate((*HTTP_CASES, *SSH_CASES))}
    for name in HTTP_CASES:
        hostile.make(Case(name, ids[name]))
    agent: Agent | None = None
    polls: list[tuple[str, float, float, float]] = []
    collected: dict[str, list[tuple[float, float, Path | None]]] = {}
    with fleet:
        config_path = fleet.write_agent_config(
            workdir / "agent.yaml",
            data_dir=workdir / "data",
            poll_interval_s=size.interval_s,
            retry_interval_s=size.interval_s,
            timeout_s=size.timeout_s,
        )
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        raw["agent"]["jitter_s"] = 0.2
        raw["api"] = {"enabled": False}
        raw["devices"] = [d for d in raw["devices"] if d["id"] not in {ids[n] for n in SSH_CASES}]
        config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        config = load_config(config_path)
        daemon.PollScheduler = TimedScheduler  # type: ignore[misc]  # the timing probe of _agent_worker
        agent = Agent(config)
        # the hostile devices' first exports right after their first good poll: a fleet of over
        # 40 devices spreads first exports at ~1/s, and this run must reach every hostile export
        # (the healthy devices' exports stay spread, as in `hezo-agent run`)
        spread, hostile_ids = agent._first_export_delay, {ids[name] for name in HTTP_CASES}
        agent._first_export_delay = (  # type: ignore[method-assign]
            lambda device_id: timedelta(0) if device_id in hostile_ids else spread(device_id)
        )
        plain_poll, plain_collect = agent.poll_once, agent.collect_log

        def timed_poll(device_id: str) -> float:
            start = time.monotonic()
            due = DUE.get(device_id, start)
            try:
                return plain_poll(device_id)
            finally:
                polls.append((device_id, due, start, time.monotonic()))

        def timed_collect(device_id: str) -> Path | None:
            start = time.monotonic()
            path = plain_collect(device_id)
            collected.setdefault(device_id, []).append((start, time.monotonic(), path))
            return path

        for name in HTTP_CASES:  # what the collector raised, which the agent logs and drops
            collector = agent.collector(ids[name])
            collector.collect_logs = _noting(collector.collect_logs, hostile.cases[name])  # type: ignore[method-assign,assignment]

        agent.poll_once = timed_poll  # type: ignore[method-assign]
        agent.collect_log = timed_collect  # type: ignore[method-assign]
        t0 = time.monotonic()
        agent.start()
        try:
            time.sleep(1.5 * size.interval_s)
            hostile.change_certificate(hostile.cases["cert_change"])
            ssh = ssh_cases(fleet, ids, workdir, size.timeout_s)
            time.sleep(max(0.0, t0 + size.seconds - time.monotonic()))
        finally:
            hostile.stopping = True
            agent.stop()
        outcomes = dict(agent.last_outcomes)
    finish(report, size, hostile, ssh, ids, polls, collected, outcomes, workdir, tag, t0)


def _noting(collect: Callable[[Path], Any], case: Case) -> Callable[[Path], Any]:
    def wrapper(dest_dir: Path) -> Any:
        try:
            return collect(dest_dir)
        except CollectorError as err:
            case.notes.append(f"{err.reason}: {str(err)[-90:]}")
            raise

    return wrapper


def extraction_cases(hostile: Hostile, workdir: Path) -> dict[str, tuple[str, str, str, bool | None]]:
    """Each hostile archive through the agent's extractor (``collectors.safe_extract``, default limits)."""
    if find_spec("collectors.safe_extract") is None:
        row = (
            "archive extraction (gzip bomb, zip-slip, symlink)",
            "not measured: component missing",
            "",
            None,
        )
        return {"missing": row}
    from collectors.safe_extract import ExtractLimits, UnsafeArchive, safe_extract

    archives = {
        "gzip_bomb": hostile.bomb,
        "zip_slip": zip_slip(hostile.tag),
        "symlink": symlink_archive(hostile.tag),
    }
    rows: dict[str, tuple[str, str, str, bool | None]] = {}
    for name, data in archives.items():
        source = workdir / "data" / f"extract-{name}.tar.gz"
        source.write_bytes(data)
        dest = workdir / "data" / f"extract-{name}"
        started = time.monotonic()
        try:
            files = safe_extract(source, dest, ExtractLimits())
            outcome, rejected = f"extracted {len(files)} files", False
        except UnsafeArchive as err:
            outcome, rejected = f"rejected: {str(err)[-100:]}", True
        except CollectorError as err:
            outcome, rejected = f"refused: {str(err)[-100:]}", True
        seconds = time.monotonic() - started
        left = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) if dest.exists() else 0
        value = f"{outcome}; {fmt_s(seconds)}, {left} bytes left in the folder"
        ok = rejected and left == 0 and seconds <= ExtractLimits().timeout_s
        rows[name] = (
            f"extraction of the {name.replace('_', ' ')} (collectors.safe_extract)",
            value,
            "rejected, nothing left",
            ok,
        )
    return rows


def outside_files(workdir: Path, tag: str) -> list[str]:
    """Files a malicious archive would have planted: anywhere named by the tag, or outside ``data/``."""
    found = [str(p) for p in Path(tempfile.gettempdir()).glob(f"hezo-*{tag}*")]
    allowed = {
        workdir / "data",
        workdir / "agent.yaml",
        workdir / "agent.secret",
        workdir / "ssh_known_hosts",
    }
    found += [str(p) for p in workdir.iterdir() if p not in allowed]
    return found


def finish(
    report: Report,
    size: Size,
    hostile: Hostile,
    ssh: list[Case],
    ids: dict[str, str],
    polls: list[tuple[str, float, float, float]],
    collected: dict[str, list[tuple[float, float, Path | None]]],
    outcomes: dict[str, Any],
    workdir: Path,
    tag: str,
    t0: float,
) -> None:
    """Fill the table."""
    for name in HTTP_CASES:
        case = hostile.cases[name]
        dev = case.device_id
        runs = collected.get(dev, [])
        if runs:
            case.seconds = max(end - start for start, end, _path in runs)
            path = runs[-1][2]
            case.kept_bytes = path.stat().st_size if path is not None and path.exists() else 0
            why = "; ".join(sorted(set(case.notes)))
            case.result = (
                "kept as the last log (the agent's redacted copy)" if path is not None else f"refused ({why})"
            )
            case.attempts = len(runs)
        outcome = outcomes.get(dev)
        if name in ("slowloris", "cert_change") and outcome is not None:
            ended = t0 + size.seconds  # polls cut by the end of the run do not count
            mine = [p for p in polls if p[0] == dev and (case.started or t0) <= p[3] <= ended]
            case.seconds = max((p[3] - p[2] for p in mine), default=float("nan"))
            case.result = f"polls fail: {outcome.reason} ({str(outcome.detail)[-120:]})"
    bounded = {
        "slowloris": (
            f"≤ {size.request_bound_s:g} s + 1 s (timeout_s, connect + answer)",
            lambda c: c.seconds <= size.request_bound_s + 1,
        ),
        "log_stream": (
            "every attempt cut (50 MB cap), nothing kept",
            lambda c: c.kept_bytes == 0 and c.attempts > 0 and c.seconds <= 60,
        ),
        "gzip_bomb": ("compressed bytes only", lambda c: c.kept_bytes <= len(hostile.bomb)),
        "zip_slip": ("reached, nothing outside", lambda c: c.attempts > 0),  # files outside: own row
        "symlink": ("reached, nothing outside", lambda c: c.attempts > 0),
        "cert_change": ("0 requests after", lambda c: c.requests_after_change == 0),
    }
    for name in HTTP_CASES:
        c = hostile.cases[name]
        target, check = bounded[name]
        value = (
            f"{c.attempts} attempt(s), longest {fmt_s(c.seconds)}, served {c.sent_bytes / 1024:.0f} KB, "
            f"kept {c.kept_bytes / 1024:.1f} KB; {c.result}"
        )
        if name == "log_stream":
            value = f"{c.attempts} attempt(s), longest {fmt_s(c.seconds)}, kept {c.kept_bytes / MiB:.1f} MB; "
            value += c.result
        if name == "cert_change":
            value = f"{c.requests_after_change} requests after the change; {c.result}"
        elif name == "slowloris":
            value = f"polls cut after {fmt_s(c.seconds)}; device dripped {c.sent_bytes} bytes; {c.result}"
        report.add(name.replace("_", " "), value, target, check(c))
        if name == "log_stream" and c.attempts > 1:
            report.notes.append(
                f"log stream: the agent tried the export {c.attempts} times in {size.seconds:g} s "
                "(once per good poll while it holds no log for the device): each attempt is "
                "bounded, but a failed export is not backed off"
            )
    for c in ssh:
        target = "0 logins after" if c.name == "hostkey_change" else f"≤ {size.timeout_s:g} s + 1 s"
        ok = c.requests_after_change == 0 if c.name == "hostkey_change" else c.seconds <= size.timeout_s + 1
        logins = f", {c.requests_after_change} logins after the change" if c.name == "hostkey_change" else ""
        report.add(c.name.replace("_", " "), f"{fmt_s(c.seconds)}{logins}; {c.result}", target, ok)
    outside = outside_files(workdir, tag)
    report.add(
        "files outside the agent's data folder (zip-slip, symlink targets)",
        str(len(outside)),
        "0",
        not outside,
    )
    for row in extraction_cases(hostile, workdir).values():
        report.add(*row)
    hostile_ids = set(ids.values())
    window = [p for p in polls if p[0] not in hostile_ids and p[2] >= t0 + size.interval_s]
    late = [p[2] - p[1] for p in window]
    worst = max(late, default=0.0)
    report.add(
        f"healthy devices ({size.healthy}): polls / lateness p50 / p99 / max",
        f"{len(window)} / {fmt_s(percentile(late, 50))} / {fmt_s(percentile(late, 99))} / {fmt_s(worst)}",
        "max ≤ 5 s",
        worst <= 5.0,
    )
    failed = [
        f"{d}: {o.reason} ({str(o.detail)[-80:]})"
        for d, o in outcomes.items()
        if d not in hostile_ids and not o.ok
    ]
    report.add(
        "healthy devices whose last poll failed", "; ".join([str(len(failed)), *failed]), "0", not failed
    )
    report.notes += [
        f"gzip bomb: {len(hostile.bomb) / MiB:.1f} MB that expands to {hostile.bomb_expands / GiB:.0f} GiB; "
        "the "
        "10 GiB stream (chunked, no length) must be cut by the agent's max_log_bytes (50 MB default)",
        f"agent timeout_s {size.timeout_s:g} s: an HTTP request (connect + answer) is cut at "
        f"{size.request_bound_s:g} s, an SSH probe at {size.timeout_s:g} s; a slowloris device thus holds "
        "each "
        "poll that long (the detection model assumes one timeout per failed poll)",
        "HTTP cases: the simulated device's handler replaced for this run only; SSH cases: the agent's "
        "SshTransport against the simulator's hostkey-change / drip / endless faults",
    ]


if __name__ == "__main__":
    sys.exit(main())
