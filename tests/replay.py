"""Replay servers on loopback: each channel's recorded answers served back to the agent's clients.

Used by the contract suite (``tests/test_contract.py``) and the HTTP driver tests. Each server
serves one fixture folder's recordings (see ``tests/fixtures/README.md`` for the file formats)
and nothing else; every one listens on 127.0.0.1 only and stops, with its threads, on
``close()``.

* :class:`HttpReplay`: HTTPS answering a profile's login and endpoints from ``http/*.json``.
* :class:`VcApiReplay`: TCP 6024, the recorded banner on connect, then recorded answer lines.
* :class:`SshReplay`: the simulator's paramiko server (``simulator/ssh_server.py``) fed the
  recorded command outputs instead of its own shell.
* :class:`SnmpReplay`: the simulator's pysnmp agent (``simulator/snmp_agent.py``) fed the
  recorded varbinds as its MIB.
* :class:`YmcsReplay`: plain HTTP answering the YMCS token, list and parts calls from JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from pysnmp.proto import rfc1902

from config.schema import Profile
from simulator.snmp_agent import SnmpAgent, SnmpCredentials, SnmpHub
from simulator.ssh_server import ShellFacts, SshHub, SshServer, derived_key

T = TypeVar("T")
HOST = "127.0.0.1"

# --- an asyncio loop in a thread (the simulator's SSH and SNMP servers run on one) -------------


class LoopThread:
    """One asyncio event loop running in a daemon thread until :meth:`close`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="replay-loop", daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        """Stop the loop and join its thread."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()


# --- HTTP (the yealink-http driver) -----------------------------------------------------------


def load_answers(folder: Path) -> dict[str, Any]:
    """The recorded HTTP answers of ``folder`` (``login`` and one entry per endpoint)."""
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))}


def _token(profile: Profile, login_answer: Any) -> str:
    current = login_answer
    for part in profile.auth.token_path.split("."):
        current = current[part]
    return str(current)


class HttpReplay:
    """A real HTTPS server on 127.0.0.1 answering a profile's paths from recorded answers.

    ``password`` is the one login it accepts (user ``admin``); ``overrides`` (endpoint name →
    (status, body)) and ``reject_tokens`` let driver tests bend single answers.
    """

    def __init__(
        self, profile: Profile, answers: dict[str, Any], tls: ssl.SSLContext, *, password: str
    ) -> None:
        self.profile, self.answers, self.password = profile, answers, password
        self.token = "" if profile.auth.kind == "none" else _token(profile, answers["login"])
        self.requests: list[tuple[str, str]] = []
        self.logins = 0
        self.reject_tokens = 0  # answer 401 to this many authenticated requests
        self.overrides: dict[str, tuple[int, bytes]] = {}
        self._open: list[socket.socket] = []  # client connections, for drop_connections()
        self._serve(tls, 0)

    def _serve(self, tls: ssl.SSLContext, port: int) -> None:
        device = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle stalls
                device._open.append(self.request)
                super().setup()

            def do_GET(self) -> None:
                device.handle(self)

            def do_POST(self) -> None:
                device.handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((HOST, port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02})
        self._thread.start()

    def restart(self, tls: ssl.SSLContext) -> None:
        """Stop and serve again on the same port, now with ``tls`` (e.g. another certificate)."""
        self.close()
        self._serve(tls, self.port)

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        """Answer one request."""
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        self.requests.append((req.command, req.path))
        status, payload = self.route(req, body)
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        req.wfile.write(payload)

    def route(self, req: BaseHTTPRequestHandler, body: bytes) -> tuple[int, bytes]:
        """(status, body) for one request: login, an endpoint, or 404."""
        auth = self.profile.auth
        if auth.login is not None and req.path == auth.login.path:
            try:
                sent = json.loads(body or b"{}")
            except ValueError:
                return 400, b'{"ret": "failed"}'
            if sent.get(auth.username_field) != "admin" or sent.get(auth.password_field) != self.password:
                return 401, b'{"ret": "failed"}'
            self.logins += 1
            return 200, json.dumps(self.answers["login"]).encode()
        for name, endpoint in self.profile.endpoints.items():
            if req.path == endpoint.path and req.command == endpoint.method:
                if auth.kind == "token" and req.headers.get(auth.token_header) != self.token:
                    return 401, b"{}"
                if auth.kind == "token" and self.reject_tokens > 0:
                    self.reject_tokens -= 1
                    return 401, b"{}"
                if name in self.overrides:
                    return self.overrides[name]
                if name in self.answers:
                    return 200, json.dumps(self.answers[name]).encode()
        return 404, b"{}"

    def drop_connections(self) -> None:
        """Shut every client connection, as a device that reboots does (the server stays up)."""
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._open.clear()

    def paths(self) -> list[str]:
        """Paths requested so far, in order."""
        return [path for _, path in self.requests]

    def close(self) -> None:
        """Stop serving (idempotent)."""
        if not self._thread.is_alive():
            return
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=2)


# --- TCP 6024 (the VC control API) -----------------------------------------------------------


class VcApiReplay:
    """TCP on 127.0.0.1: the recorded banner on connect, then one recorded line per command line.

    A command with no recording gets ``error "unknown command"`` (what the simulator answers).
    """

    def __init__(self, banner: str, answers: Mapping[str, str]) -> None:
        self.banner = banner
        self.answers = dict(answers)
        self.commands: list[str] = []
        self._sock = socket.create_server((HOST, 0))
        self._sock.settimeout(0.05)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name="replay-6024", daemon=True)
        self._accepter.start()

    @classmethod
    def from_file(cls, path: Path) -> VcApiReplay:
        """Serve ``tcp6024/session.json`` (``{"banner": ..., "answers": {command: line}}``)."""
        doc = json.loads(path.read_text(encoding="utf-8"))
        return cls(doc["banner"], doc["answers"])

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.05)
        buf = b""
        with conn, contextlib.suppress(OSError):
            conn.sendall(self.banner.encode("utf-8") + b"\r\n")
            while not self._stop.is_set() and len(buf) < 4096:
                try:
                    chunk = conn.recv(1024)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    line = raw.rstrip(b"\r").decode("utf-8", "replace")
                    self.commands.append(line)
                    answer = self.answers.get(line.strip(), 'error "unknown command"')
                    conn.sendall(answer.encode("utf-8") + b"\r\n")

    def close(self) -> None:
        """Stop accepting, end every connection, join the threads."""
        self._stop.set()
        self._sock.close()
        self._accepter.join(2)
        for thread in self._threads:
            thread.join(2)


# --- SSH -----------------------------------------------------------------------------------------


class SshReplay:
    """The simulator's SSH server on 127.0.0.1 answering recorded command outputs.

    ``ssh/session.json`` holds ``banner``, ``host_key_seed`` (the replay's Ed25519 host key is
    derived from it, so the fingerprint is fixed) and ``commands``: a list of ``{name, command,
    exit_status, stdout, stderr}``. Login: user ``admin`` with ``password``.
    """

    def __init__(self, session: Mapping[str, Any], *, password: str, model: str = "A30") -> None:
        self.commands = {c["command"]: c for c in session["commands"]}
        self.asked: list[str] = []
        self._loop = LoopThread()
        self._hub = SshHub()
        self._hub.open()
        key = derived_key(session["host_key_seed"])
        self.server = SshServer(
            HOST,
            0,
            hub=self._hub,
            model=model,
            username="admin",
            password=password,
            host_keys=(key, key),
            facts=self._facts,
            answer=self._answer,
        )
        self.server.banner = session["banner"]
        try:
            self._loop.call(self.server.start())
        except BaseException:
            self._loop.close()
            raise
        self.port = self.server.port

    @staticmethod
    def _facts(_with_files: bool) -> ShellFacts:
        return ShellFacts("replay", "", "", "", "replay", "admin", 0)

    def _answer(self, command: str, _facts: ShellFacts) -> tuple[int, bytes, bytes]:
        self.asked.append(command)
        recorded = self.commands.get(command)
        if recorded is None:
            return 127, b"", f"sh: {command.split()[0] if command.split() else ''}: not found\n".encode()
        return (
            int(recorded["exit_status"]),
            recorded["stdout"].encode("utf-8"),
            recorded["stderr"].encode("utf-8"),
        )

    def close(self) -> None:
        """Stop the server, join its session threads and the loop."""
        with contextlib.suppress(Exception):
            self._loop.call(self.server.stop())
        self._hub.join(5)
        self._loop.close()


# --- SNMP ----------------------------------------------------------------------------------------

#: the SMI types a recording may hold (RFC 2578 names as pysnmp spells them)
SNMP_TYPES: dict[str, Callable[[Any], Any]] = {
    "OctetString": rfc1902.OctetString,
    "ObjectIdentifier": rfc1902.ObjectIdentifier,
    "Integer32": rfc1902.Integer32,
    "Integer": rfc1902.Integer,
    "TimeTicks": rfc1902.TimeTicks,
    "Gauge32": rfc1902.Gauge32,
    "Unsigned32": rfc1902.Unsigned32,
    "Counter32": rfc1902.Counter32,
    "Counter64": rfc1902.Counter64,
    "IpAddress": rfc1902.IpAddress,
}


def varbind_to_json(oid: Sequence[int], value: Any) -> dict[str, Any]:
    """One varbind as JSON: ``{"oid", "type", "value"}``; an OCTET STRING that is not text is ``hex``."""
    kind = type(value).__name__
    if kind not in SNMP_TYPES:
        raise ValueError(f"{'.'.join(map(str, oid))}: cannot record SNMP type {kind}")
    item: dict[str, Any] = {"oid": ".".join(str(n) for n in oid), "type": kind}
    if kind == "OctetString":
        raw = bytes(value)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and text.isprintable():
            item["value"] = text
        else:
            item["hex"] = raw.hex()
    elif kind == "ObjectIdentifier":
        item["value"] = ".".join(str(n) for n in value)
    elif kind == "IpAddress":
        item["value"] = ".".join(str(b) for b in bytes(value))
    else:
        item["value"] = int(value)
    return item


def varbind_from_json(item: Mapping[str, Any]) -> tuple[tuple[int, ...], Any]:
    """The inverse of :func:`varbind_to_json`.

    Raises:
        ValueError: an unknown type or a malformed OID.
    """
    kind = item["type"]
    if kind not in SNMP_TYPES:
        raise ValueError(f"{item.get('oid')}: unknown SNMP type {kind!r} (known: {', '.join(SNMP_TYPES)})")
    oid = tuple(int(n) for n in str(item["oid"]).split("."))
    make = SNMP_TYPES[kind]
    if kind == "OctetString":
        raw = bytes.fromhex(item["hex"]) if "hex" in item else str(item["value"]).encode("utf-8")
        return oid, make(raw)
    if kind == "ObjectIdentifier":
        return oid, make(tuple(int(n) for n in str(item["value"]).split(".")))
    if kind == "IpAddress":
        return oid, make(str(item["value"]))
    return oid, make(int(item["value"]))


class SnmpReplay:
    """The simulator's pysnmp agent on 127.0.0.1 serving recorded varbinds (v2c and v3).

    ``snmp/walk.json`` holds ``{"varbinds": [{"oid", "type", "value" | "hex"}, ...]}``.
    """

    def __init__(self, varbinds: Sequence[Mapping[str, Any]], credentials: SnmpCredentials) -> None:
        self.mib = dict(varbind_from_json(v) for v in varbinds)
        self.credentials = credentials
        self._loop = LoopThread()
        self._hub = SnmpHub(credentials)
        self.agent = SnmpAgent(self._hub, HOST, 0, mib=lambda: self.mib)
        try:
            self._loop.call(self._start())
        except BaseException:
            self._loop.close()
            raise
        self.port = self.agent.port

    async def _start(self) -> None:
        await self._hub.astart()
        await self.agent.start()

    def close(self) -> None:
        """Stop the agent, the engine and the loop."""
        with contextlib.suppress(Exception):
            self._loop.call(self._hub.astop())
        self._loop.close()


# --- YMCS ----------------------------------------------------------------------------------------


class YmcsReplay:
    """Plain HTTP on 127.0.0.1 answering the YMCS calls from a fixture's ``ymcs/`` folder.

    ``token.json``, ``listDevices.json``, ``listAlarms.json`` and ``parts/<deviceId>.json`` are
    the recorded answers (the envelopes as the cloud sent them). A list asked past its recorded
    page gets an empty page; a device without a recording gets the documented 404 envelope.
    ``stall`` (path → event) holds a request until the event is set, for hostile tests.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[tuple[str, str]] = []
        self.stall: dict[str, threading.Event] = {}
        replay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                replay.handle(self)

            def do_POST(self) -> None:
                replay.handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://{HOST}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02})
        self._thread.start()

    def _read(self, name: str) -> Any:
        return json.loads((self.folder / name).read_text(encoding="utf-8"))

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        """(status, JSON document) for one call."""
        if method == "POST" and path == "/v2/token":
            return 200, self._read("token.json")
        lists = {"/v2/dm/listDevices": "listDevices.json", "/v2/dm/listAlarms": "listAlarms.json"}
        parts = path.removeprefix("/v2/dm/devices/").removesuffix("/listParts")
        if method == "POST" and path in lists:
            return 200, self._page(self._read(lists[path]), body)
        if method == "POST" and path.endswith("/listParts") and "/" not in parts:
            file = self.folder / "parts" / f"{parts}.json"
            if parts and file.is_file():
                return 200, self._page(json.loads(file.read_text(encoding="utf-8")), body)
            return 404, {"code": "900404", "requestId": "replay", "message": "no such device", "details": []}
        return 404, {"code": "900404", "requestId": "replay", "message": "no such API", "details": []}

    @staticmethod
    def _page(recorded: Any, body: Any) -> Any:
        """The recorded (first) page, or an empty page for any later ``skip``."""
        skip = body.get("skip", 0) if isinstance(body, dict) else 0
        if not skip or not isinstance(recorded, dict):
            return recorded
        return {**recorded, "skip": skip, "data": []}

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        """Answer one request (after its stall, if any)."""
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        self.requests.append((req.command, req.path))
        stall = self.stall.get(req.path)
        if stall is not None:
            stall.wait(10)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        status, doc = self.route(req.command, req.path, body)
        payload = json.dumps(doc).encode()
        with contextlib.suppress(OSError):
            req.send_response(status)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(payload)))
            req.end_headers()
            req.wfile.write(payload)

    def close(self) -> None:
        """Release stalled requests and stop serving."""
        for event in self.stall.values():
            event.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=2)
