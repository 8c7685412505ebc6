"""Simulated SSH on one device (a paramiko server): login, status commands, log files over SFTP.

Nobody documents SSH on the A20/A30/MVC: the commands, banner and file paths here are the
simulator's ASSUMPTIONS, chosen to look like a small Linux (Android) box on the bars and a
Windows OpenSSH on the MVC. Login: the device's admin user with its admin password, or a
public key from the fleet's authorised keys. The host key derives from the fleet seed and the
device index, so it survives restarts (the agent's trust-on-first-use stays valid) and the
``hostkey-change`` fault swaps in a second one.

Threads: paramiko is thread based. Accepting happens on the fleet's asyncio loop (a reader on
the listening socket); each admitted connection gets one session thread plus paramiko's own
transport thread (and an SFTP thread while a transfer runs). :class:`SshHub`, shared by the
fleet, caps the sessions (fleet-wide and per device) and joins the threads when the fleet
stops; over a cap, a connection is closed at once. Whatever a session needs from the device
(facts, log files) is computed on the loop thread. Faults (see :data:`SSH_FAULTS`): ``offline``
(listener closed, sessions dropped), ``hang`` (connections accepted and left silent),
``endless`` (every command streams output without end), ``drip`` (every command sends one
byte every 0.2 s and never exits), ``auth-fail`` (every login rejected), ``hostkey-change``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import io
import itertools
import logging
import os
import queue
import shlex
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

__all__ = [
    "LOG_DIR",
    "SSH_FAULTS",
    "ShellFacts",
    "SshHub",
    "SshServer",
    "answer_command",
    "derived_key",
    "private_key_text",
    "public_key_line",
]

log = logging.getLogger("hezo.simulator.ssh")
WIRE_LOGGER = "hezo.simulator.ssh.wire"
logging.getLogger(WIRE_LOGGER).setLevel(logging.CRITICAL)  # aborted clients are the point of a simulator
T = TypeVar("T")

SSH_FAULTS = ("offline", "hang", "endless", "drip", "auth-fail", "hostkey-change")
LOG_DIR = "/var/log"
BANNERS = {"MVC": "SSH-2.0-OpenSSH_for_Windows_9.5", "default": "SSH-2.0-dropbear_2022.83"}
MAX_SESSIONS = 64
MAX_SESSIONS_PER_DEVICE = 8
MAX_CHANNELS = 4  # exec requests waiting on one connection
MAX_CHANNELS_EVER = 64  # channels one connection may open in its life
MAX_PARKED = 64
NEGOTIATION_S = 10.0
IDLE_S = 60.0
SESSION_MAX_S = 600.0
POLL_S = 0.1
SEND_TIMEOUT_S = 0.2
DRIP_EVERY_S = 0.2
LOOP_CALL_S = 10.0
CHUNK = 32 * 1024
ENDLESS_LINE = b"01-05 09:00:00.000  1234  1234 I ylcam   : frame stats fps=30 dropped=0 exposure=auto\n"


# --- keys ---------------------------------------------------------------------------------------


def derived_key(seed_key: str) -> paramiko.Ed25519Key:
    """An Ed25519 key derived from ``seed_key`` (the same text gives the same key; not a secret)."""
    return paramiko.Ed25519Key.from_private_key(io.StringIO(private_key_text(seed_key)))


def private_key_text(seed_key: str) -> str:
    """The OpenSSH private key text of :func:`derived_key` (for an SSH client's key file)."""
    raw = hashlib.sha256(seed_key.encode("utf-8")).digest()
    key = ed25519.Ed25519PrivateKey.from_private_bytes(raw)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    return pem.decode("ascii")


def public_key_line(key: paramiko.PKey) -> str:
    """``type base64`` of a key's public part (an authorized_keys / known_hosts entry)."""
    return f"{key.get_name()} {key.get_base64()}"


# --- what the device answers --------------------------------------------------------------------


@dataclass(frozen=True)
class ShellFacts:
    """What a command may report about the device, captured on the fleet's loop thread."""

    model: str
    firmware: str
    serial: str
    mac: str
    hostname: str
    username: str
    uptime_s: int
    call_state: str = "idle"
    peripherals: Mapping[str, tuple[str, bool]] = field(default_factory=dict)  # kind -> (name, connected)
    files: Mapping[str, bytes] = field(default_factory=dict)  # absolute path -> content
    #: builds the device's log export as it stood when the facts were captured (None: no files asked)
    archive: Callable[[], bytes] | None = None

    def with_files(self) -> ShellFacts:
        """These facts with the log files, built in the calling thread: a 4 MB export costs ~1 s
        of CPU, which on the fleet's loop thread held up every other device (and made parallel
        SFTP pulls of one simulator time out waiting for the loop)."""
        if self.archive is None:
            return self
        archive = self.archive()
        files = dict(self.files)
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member)
                if data is not None:
                    files[f"{LOG_DIR}/{member.name.rsplit('/', 1)[-1]}"] = data.read()
        files[f"{LOG_DIR}/export.tar.gz"] = archive
        return dataclasses.replace(self, files=files, archive=None)


def _uname(facts: ShellFacts, flags: Sequence[str]) -> str:
    if facts.model == "MVC":
        parts = {"s": "Windows_NT", "n": facts.hostname, "r": "10.0", "v": "22631", "m": "x86_64"}
    else:
        parts = {"s": "Linux", "n": facts.hostname, "r": "4.19.157", "v": "#1 SMP PREEMPT", "m": "armv8l"}
    letters = "".join(f.lstrip("-") for f in flags) or "s"
    if "a" in letters:
        letters = "snrvm"
    return " ".join(parts[c] for c in letters if c in parts)


def _uptime(facts: ShellFacts) -> str:
    days, rest = divmod(facts.uptime_s, 86400)
    hours, minutes = rest // 3600, rest % 3600 // 60
    now = datetime.now(UTC)
    up = (f"{days} day{'s' if days != 1 else ''}, " if days else "") + f"{hours:2d}:{minutes:02d}"
    return f" {now:%H:%M:%S} up {up},  1 user,  load average: 0.21, 0.18, 0.12"


def _props(facts: ShellFacts) -> dict[str, str]:
    """Android-style properties (ASSUMED names; the bars run Android)."""
    return {
        "ro.product.manufacturer": "Yealink",
        "ro.product.model": facts.model,
        "ro.serialno": facts.serial,
        "ro.build.display.id": facts.firmware,
        "persist.sys.hostname": facts.hostname,
    }


def _status(facts: ShellFacts) -> str:
    lines = [
        f"model={facts.model}",
        f"firmware={facts.firmware}",
        f"serial={facts.serial}",
        f"mac={facts.mac}",
        f"hostname={facts.hostname}",
        f"uptime_s={facts.uptime_s}",
        f"call_state={facts.call_state}",
    ]
    lines += [
        f"peripheral.{k}={'connected' if up else 'disconnected'}" for k, (_, up) in facts.peripherals.items()
    ]
    return "\n".join(lines)


def answer_command(command: str, facts: ShellFacts) -> tuple[int, bytes, bytes]:
    """Return (exit status, stdout, stderr) of one command line; unknown commands exit 127."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return 2, b"", b"sh: syntax error: unterminated quoted string\n"
    if not argv:
        return 0, b"", b""
    name, args = argv[0], argv[1:]
    text: str | None = None
    if name == "uname":
        text = _uname(facts, args)
    elif name == "hostname":
        text = facts.hostname
    elif name == "whoami" or (name == "id" and args == ["-un"]):
        text = facts.username
    elif name == "id" and not args:
        text = f"uid=1000({facts.username}) gid=1000({facts.username}) groups=1000({facts.username})"
    elif name == "uptime":
        text = _uptime(facts)
    elif name in ("version", "firmware"):
        text = facts.firmware
    elif name == "serial":
        text = facts.serial
    elif name == "model":
        text = facts.model
    elif name == "mac":
        text = facts.mac
    elif name == "status":
        text = _status(facts)
    elif name == "getprop" and facts.model != "MVC":
        props = _props(facts)
        text = props.get(args[0], "") if args else "\n".join(f"[{k}]: [{v}]" for k, v in props.items())
    elif name == "echo":
        text = " ".join(args)
    elif name in ("true", "false"):
        return (0 if name == "true" else 1), b"", b""
    elif name == "ls":
        return _ls(facts, args)
    elif name == "cat":
        return _cat(facts, args)
    if text is None:
        return 127, b"", f"sh: {name[:80]}: not found\n".encode()
    return 0, (text + "\n").encode("utf-8"), b""


def _cat(facts: ShellFacts, args: Sequence[str]) -> tuple[int, bytes, bytes]:
    out, err, status = bytearray(), bytearray(), 0
    for path in args:
        if path == "/proc/uptime":
            out += f"{facts.uptime_s}.00 {facts.uptime_s * 3}.00\n".encode()
        elif path in facts.files:
            out += facts.files[path]
        else:
            err += f"cat: {path[:120]}: No such file or directory\n".encode()
            status = 1
    return status, bytes(out), bytes(err)


def _ls(facts: ShellFacts, args: Sequence[str]) -> tuple[int, bytes, bytes]:
    folder = (args[-1] if args else "/").rstrip("/") or "/"
    names = sorted(p.rsplit("/", 1)[1] for p in facts.files if p.rsplit("/", 1)[0] == folder)
    if not names:
        return 2, b"", f"ls: {folder[:120]}: No such file or directory\n".encode()
    return 0, ("\n".join(names) + "\n").encode(), b""


# --- SFTP (read-only, the device's log files) ---------------------------------------------------


class _MemoryHandle(paramiko.SFTPHandle):
    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data = data

    def read(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]

    def stat(self) -> paramiko.SFTPAttributes:
        return _attributes("", len(self._data))


def _attributes(name: str, size: int, folder: bool = False) -> paramiko.SFTPAttributes:
    attrs = paramiko.SFTPAttributes()
    attrs.filename = name
    attrs.st_size = size
    attrs.st_mode = 0o040755 if folder else 0o100644
    attrs.st_mtime = attrs.st_atime = int(time.time())
    return attrs


class _SftpFiles(paramiko.SFTPServerInterface):
    """A read-only view of the device's files (paramiko builds one per SFTP channel)."""

    def __init__(self, server: _Interface, *args: Any, **kwargs: Any) -> None:
        super().__init__(server, *args, **kwargs)
        self._files = server.owner.files()

    def _folders(self) -> set[str]:
        folders = {"/"}
        for path in self._files:
            parts = path.split("/")[1:-1]
            folders.update("/" + "/".join(parts[: i + 1]) for i in range(len(parts)))
        return folders

    def canonicalize(self, path: str) -> str:
        return "/" + "/".join(p for p in path.split("/") if p not in ("", "."))

    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        path = self.canonicalize(path)
        if path in self._files:
            return _attributes(path.rsplit("/", 1)[1], len(self._files[path]))
        if path in self._folders():
            return _attributes(path.rsplit("/", 1)[1], 0, folder=True)
        return paramiko.SFTP_NO_SUCH_FILE

    lstat = stat

    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes] | int:
        path = self.canonicalize(path)
        if path not in self._folders():
            return paramiko.SFTP_NO_SUCH_FILE
        prefix = path.rstrip("/") + "/"
        return [
            _attributes(p[len(prefix) :], len(data))
            for p, data in sorted(self._files.items())
            if p.startswith(prefix) and "/" not in p[len(prefix) :]
        ]

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> paramiko.SFTPHandle | int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            return paramiko.SFTP_PERMISSION_DENIED
        data = self._files.get(self.canonicalize(path))
        if data is None:
            return paramiko.SFTP_NO_SUCH_FILE
        return _MemoryHandle(data)


# --- the paramiko server interface --------------------------------------------------------------


class _Interface(paramiko.ServerInterface):
    """Authentication and channel policy for one connection; exec requests go to the session thread."""

    def __init__(self, owner: SshServer) -> None:
        self.owner = owner
        self.execs: queue.Queue[tuple[paramiko.Channel, str]] = queue.Queue(maxsize=MAX_CHANNELS)
        self.channels: list[int] = []

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind != "session":
            return paramiko.OPEN_FAILED_UNKNOWN_CHANNEL_TYPE
        if len(self.channels) >= MAX_CHANNELS_EVER:
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        self.channels.append(chanid)
        return paramiko.OPEN_SUCCEEDED

    def get_allowed_auths(self, username: str) -> str:
        return "publickey,password"

    def check_auth_password(self, username: str, password: str) -> int:
        return (
            paramiko.AUTH_SUCCESSFUL if self.owner.password_ok(username, password) else paramiko.AUTH_FAILED
        )

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL if self.owner.key_ok(username, key) else paramiko.AUTH_FAILED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        try:
            self.execs.put_nowait((channel, command.decode("utf-8", "replace")))
        except queue.Full:
            return False
        return True

    def check_channel_pty_request(self, *args: Any) -> bool:
        return False

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        return False


# --- fleet-wide thread bounds -------------------------------------------------------------------


class SshHub:
    """Bounds the SSH session threads of a whole fleet and joins them when it stops."""

    def __init__(self, max_sessions: int = MAX_SESSIONS, per_device: int = MAX_SESSIONS_PER_DEVICE) -> None:
        """Allow ``max_sessions`` sessions at once, at most ``per_device`` on one device."""
        self.max_sessions = max_sessions
        self.per_device = per_device
        self.closing = threading.Event()
        self.refused = 0
        self._lock = threading.Lock()
        self._threads: dict[threading.Thread, SshServer] = {}

    def spawn(self, owner: SshServer, conn: socket.socket) -> bool:
        """Start a session thread for ``conn`` unless a cap is reached (then False)."""
        with self._lock:
            busy = sum(1 for server in self._threads.values() if server is owner)
            if self.closing.is_set() or len(self._threads) >= self.max_sessions or busy >= self.per_device:
                self.refused += 1
                return False
            thread = threading.Thread(
                target=self._run, args=(owner, conn), name=f"hezo-sim-ssh-{owner.host}", daemon=True
            )
            self._threads[thread] = owner
        thread.start()
        return True

    def _run(self, owner: SshServer, conn: socket.socket) -> None:
        try:
            owner.serve_connection(conn)
        finally:
            with self._lock:
                self._threads.pop(threading.current_thread(), None)

    @property
    def sessions(self) -> int:
        """Session threads alive right now."""
        with self._lock:
            return len(self._threads)

    def open(self) -> None:
        """Accept sessions again (a fleet started after a stop)."""
        self.closing.clear()

    def join(self, timeout_s: float) -> int:
        """Refuse new sessions and wait up to ``timeout_s`` for the threads; return how many remain."""
        self.closing.set()
        deadline = time.monotonic() + timeout_s
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return self.sessions


# --- one device's server ------------------------------------------------------------------------


class SshServer:
    """One device's SSH server on ``host:port``; listening and faults are driven from the fleet's loop."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        hub: SshHub,
        model: str,
        username: str,
        password: str,
        host_keys: tuple[paramiko.PKey, paramiko.PKey],
        authorized_keys: Iterable[paramiko.PKey] = (),
        facts: Callable[[bool], ShellFacts],
        answer: Callable[[str, ShellFacts], tuple[int, bytes, bytes]] = answer_command,
    ) -> None:
        """Prepare the server; nothing listens until :meth:`start`.

        ``answer`` gives (exit status, stdout, stderr) of a command line; the default is the
        simulated device's shell (:func:`answer_command`); tests replay recorded outputs with it.

        Raises:
            ValueError: a port out of range.
        """
        if not 0 <= port <= 65535:
            raise ValueError("port must be 0..65535")
        self.host = host
        self.port = port
        self.hub = hub
        self.banner = BANNERS.get(model, BANNERS["default"])
        self.username = username
        self.modes: frozenset[str] = frozenset()
        self._password = password
        self._host_keys = host_keys
        self._authorized = {(k.get_name(), k.asbytes()) for k in authorized_keys}
        self._facts = facts
        self._answer = answer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: socket.socket | None = None
        self._parked: list[socket.socket] = []
        self._live: set[paramiko.Transport] = set()
        self._live_lock = threading.Lock()
        self._closing = threading.Event()

    @property
    def host_key(self) -> paramiko.PKey:
        """The host key new connections see (the second one under ``hostkey-change``)."""
        return self._host_keys[1 if "hostkey-change" in self.modes else 0]

    # --- checks (session threads) ---

    def password_ok(self, username: str, password: str) -> bool:
        """Whether a password login is accepted right now."""
        ok = "auth-fail" not in self.modes and username == self.username
        return hmac.compare_digest(password.encode("utf-8"), self._password.encode("utf-8")) and ok

    def key_ok(self, username: str, key: paramiko.PKey) -> bool:
        """Whether a public key login is accepted right now."""
        ok = "auth-fail" not in self.modes and username == self.username
        return ok and (key.get_name(), key.asbytes()) in self._authorized

    # --- lifecycle (loop thread) ---

    async def start(self) -> None:
        """Listen unless ``offline`` is set; an ephemeral port is resolved here.

        Raises:
            OSError: the address or port cannot be bound.
        """
        self._loop = asyncio.get_running_loop()
        self._closing.clear()
        if "offline" not in self.modes:
            self._listen()

    async def stop(self) -> None:
        """Close the listener, parked connections and every session (threads end on their own)."""
        self._closing.set()
        self._unlisten()
        self._drop_sessions()

    async def set_modes(self, modes: Iterable[str]) -> None:
        """Make the server's faults exactly ``modes`` (a subset of :data:`SSH_FAULTS`).

        Raises:
            ValueError: an unknown mode.
        """
        wanted = frozenset(modes)
        unknown = wanted - set(SSH_FAULTS)
        if unknown:
            raise ValueError(f"unknown SSH fault {sorted(unknown)}; known: {', '.join(SSH_FAULTS)}")
        before, self.modes = self.modes, wanted
        if "offline" in wanted:
            self._unlisten()
            self._drop_sessions()
            return
        if "hang" in before and "hang" not in wanted:
            self._close_parked()
        try:
            self._listen()
        except OSError as err:
            log.error("ssh=%s:%s cannot listen: %s", self.host, self.port, err)

    def _listen(self) -> None:
        if self._listener is not None:
            return
        assert self._loop is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(64)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._loop.add_reader(sock.fileno(), self._on_accept)

    def _unlisten(self) -> None:
        sock, self._listener = self._listener, None
        if sock is None:
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock.fileno())
        sock.close()

    def _on_accept(self) -> None:
        for _ in range(16):
            if self._listener is None:
                return
            try:
                conn, _peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                log.debug("ssh=%s:%s accept failed: %s", self.host, self.port, err)
                return
            if "hang" in self.modes:
                self._park(conn)
            elif not self.hub.spawn(self, conn):
                conn.close()

    def _park(self, conn: socket.socket) -> None:
        """Keep a connection open and silent (``hang``); the oldest goes when too many are parked."""
        self._parked.append(conn)
        while len(self._parked) > MAX_PARKED:
            self._parked.pop(0).close()

    def _close_parked(self) -> None:
        parked, self._parked = self._parked, []
        for conn in parked:
            with contextlib.suppress(OSError):
                conn.close()

    def _drop_sessions(self) -> None:
        self._close_parked()
        with self._live_lock:
            live = list(self._live)
        for transport in live:
            with contextlib.suppress(Exception):
                transport.sock.shutdown(socket.SHUT_RDWR)

    # --- one connection (session thread) ---

    def files(self) -> dict[str, bytes]:
        """The device's files (its state captured on the loop thread, the files built in this one)."""
        return dict(self._in_loop(lambda: self._facts(True)).with_files().files)

    def _in_loop(self, func: Callable[[], T]) -> T:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the SSH server is not started")

        async def call() -> T:
            return func()

        coro = call()
        try:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:  # the loop is closed: the fleet is stopping
            coro.close()
            raise
        return future.result(LOOP_CALL_S)

    def _ending(self, transport: paramiko.Transport) -> bool:
        return self._closing.is_set() or self.hub.closing.is_set() or not transport.is_active()

    def serve_connection(self, conn: socket.socket) -> None:
        """Run one SSH connection to its end (called in a session thread from :class:`SshHub`)."""
        conn.setblocking(True)
        transport = paramiko.Transport(conn)
        with self._live_lock:
            self._live.add(transport)
        try:
            transport.set_log_channel(WIRE_LOGGER)
            transport.local_version = self.banner
            transport.add_server_key(self.host_key)
            transport.set_subsystem_handler("sftp", paramiko.SFTPServer, _SftpFiles)
            iface = _Interface(self)
            negotiated = threading.Event()
            transport.start_server(event=negotiated, server=iface)
            deadline = time.monotonic() + NEGOTIATION_S
            while not negotiated.wait(POLL_S):
                if self._ending(transport) or time.monotonic() > deadline:
                    return
            if transport.is_active():
                self._serve_commands(transport, iface)
        except Exception as err:  # a client that vanished or spoke garbage ends its session only
            log.debug("ssh=%s:%s session ended: %s", self.host, self.port, type(err).__name__)
        finally:
            with contextlib.suppress(Exception):
                transport.close()
            with contextlib.suppress(OSError):
                conn.close()
            with self._live_lock:
                self._live.discard(transport)

    def _serve_commands(self, transport: paramiko.Transport, iface: _Interface) -> None:
        end = time.monotonic() + SESSION_MAX_S
        idle_until = time.monotonic() + IDLE_S
        while not self._ending(transport) and time.monotonic() < end:
            try:
                chan, command = iface.execs.get(timeout=POLL_S)
            except queue.Empty:
                if time.monotonic() > idle_until and not _busy(transport):
                    return
                continue
            self._exec(transport, chan, command, end)
            idle_until = time.monotonic() + IDLE_S

    def _exec(self, transport: paramiko.Transport, chan: paramiko.Channel, command: str, end: float) -> None:
        chan.settimeout(SEND_TIMEOUT_S)
        try:
            if "endless" in self.modes:
                self._stream(
                    transport, chan, end, "endless", lambda: ENDLESS_LINE * (CHUNK // len(ENDLESS_LINE))
                )
                return
            with_files = command.split(maxsplit=1)[:1] in (["cat"], ["ls"])
            facts = self._in_loop(lambda: self._facts(with_files)).with_files()
            status, out, err = self._answer(command, facts)
            if "drip" in self.modes:
                drip = itertools.cycle(out or err or b".")  # the answer, one byte at a time, forever
                self._stream(transport, chan, end, "drip", lambda: bytes([next(drip)]), DRIP_EVERY_S)
                return
            self._send_all(transport, chan, out, end, stderr=False)
            self._send_all(transport, chan, err, end, stderr=True)
            chan.send_exit_status(status)
        except (OSError, EOFError, paramiko.SSHException):
            return
        finally:
            with contextlib.suppress(Exception):
                chan.close()

    def _stream(
        self,
        transport: paramiko.Transport,
        chan: paramiko.Channel,
        end: float,
        mode: str,
        next_chunk: Callable[[], bytes],
        pause_s: float = 0.0,
    ) -> None:
        """Send chunks while the fault lasts and the client listens; never an exit status."""
        while (
            mode in self.modes and not chan.closed and not self._ending(transport) and time.monotonic() < end
        ):
            self._send_all(transport, chan, next_chunk(), end, stderr=False)
            if pause_s:
                self._closing.wait(pause_s)

    def _send_all(
        self, transport: paramiko.Transport, chan: paramiko.Channel, data: bytes, end: float, *, stderr: bool
    ) -> None:
        send = chan.send_stderr if stderr else chan.send
        view = memoryview(data)
        while view and not chan.closed and not self._ending(transport) and time.monotonic() < end:
            try:
                sent = send(view[:CHUNK].tobytes())
            except TimeoutError:
                continue  # the client's window is full: it stopped reading
            if sent == 0:
                return
            view = view[sent:]


def _busy(transport: paramiko.Transport) -> bool:
    """Whether a channel (an SFTP transfer, say) is still open on the connection."""
    channels = getattr(transport, "_channels", None)
    return bool(channels is not None and len(channels.values()) > 0)
