"""Low-level pieces of the SSH transport: a guarded socket, a watchdog, draining a channel,
and :func:`translate`, the one place socket/paramiko errors become :mod:`collectors.errors`.

Kept apart from :mod:`collectors.transports.ssh` so that module reads as the protocol steps.
:class:`GuardedSocket` records the collector error it raised inside paramiko's thread, for the
transport to raise in the caller's thread.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import paramiko

from collectors.errors import AuthFailed, CollectorError, DeviceTimeout, DeviceUnreachable, UnexpectedResponse

__all__ = [
    "BANNER_MAX_BYTES",
    "HANDSHAKE_MAX_BYTES",
    "CommandResult",
    "GuardedSocket",
    "LocalError",
    "Watchdog",
    "abort_channel",
    "drain_channel",
    "key_type_of",
    "local_io",
    "open_socket",
    "translate",
]

#: bytes a server may send before its ``SSH-`` identification line (RFC 4253 allows text lines)
BANNER_MAX_BYTES = 8192
#: bytes a server may send until login completes (key exchange messages are a few KiB)
HANDSHAKE_MAX_BYTES = 256 * 1024
# control bytes other than tab, CR and LF mean binary garbage, not an SSH banner
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
CHUNK = 32768
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What one remote command produced; ``exit_status`` is None if it was cut before exiting."""

    exit_status: int | None
    stdout: bytes
    stderr: bytes
    truncated: bool
    elapsed_ms: float

    @property
    def text(self) -> str:
        """Stdout decoded as UTF-8 (undecodable bytes replaced)."""
        return self.stdout.decode("utf-8", "replace")


class GuardedSocket:
    """A socket wrapper that judges the bytes before the SSH banner and caps the handshake."""

    def __init__(self, sock: socket.socket, source: str) -> None:
        self._sock = sock
        self._source = source
        self._pending = b""
        self.head = b""
        self.skipped_lines = 0
        self.bytes_read = 0
        self.limit: int | None = HANDSHAKE_MAX_BYTES
        self.banner: str | None = None
        self.failure: CollectorError | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def _fail(self, err: CollectorError) -> CollectorError:
        self.failure = err
        return err

    def recv(self, size: int) -> bytes:
        """Read like ``socket.recv``, never past the banner or handshake cap."""
        cap = BANNER_MAX_BYTES if self.banner is None else self.limit
        if cap is not None:
            if self.bytes_read >= cap:
                what = "before an SSH banner" if self.banner is None else "before login completed"
                raise self._fail(UnexpectedResponse(f"{self._source}: over {cap} bytes {what}"))
            size = min(size, cap - self.bytes_read)
        data = self._sock.recv(size)
        self.bytes_read += len(data)
        if self.banner is None and data:
            self._inspect(data)
        return data

    def _inspect(self, data: bytes) -> None:
        self.head = (self.head + data)[:60]
        self._pending += data
        while True:
            end = self._pending.find(b"\n")
            line = self._pending if end < 0 else self._pending[:end]
            if _CONTROL.search(line):
                raise self._fail(UnexpectedResponse(f"{self._source}: binary bytes instead of an SSH banner"))
            if end < 0:
                return
            if line.startswith(b"SSH-"):
                self.banner = line.rstrip(b"\r").decode("utf-8", "replace")
                self._pending = b""
                return
            self.skipped_lines += 1
            self._pending = self._pending[end + 1 :]

    def sent_garbage(self) -> bool:
        """True if the peer sent text that cannot be (the start of) an SSH banner."""
        return self.banner is None and (self.skipped_lines > 0 or not b"SSH-".startswith(self._pending[:4]))

    def garbage(self) -> str:
        """The first bytes the peer sent (for messages)."""
        return self.head[:40].decode("utf-8", "replace")


class LocalError(Exception):
    """A local file operation failed (not the device's fault); ``error`` is the OSError."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def local_io(func: Callable[..., T], *args: Any) -> T:
    """Call ``func(*args)``, tagging an OSError as :class:`LocalError`.

    Raises:
        LocalError: wrapping the OSError ``func`` raised.
    """
    try:
        return func(*args)
    except OSError as err:
        raise LocalError(err) from err


class Watchdog:
    """Run ``action`` (close a channel) if the block is still running at ``deadline``."""

    def __init__(self, deadline: float, action: Callable[[], object]) -> None:
        self.fired = False
        self._action = action
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        with contextlib.suppress(Exception):
            self._action()

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def key_type_of(algorithm: str) -> str:
    """The known_hosts key type a host key algorithm uses (``rsa-sha2-512`` → ``ssh-rsa``)."""
    base = algorithm.removesuffix("-cert-v01@openssh.com")
    return "ssh-rsa" if base in ("rsa-sha2-256", "rsa-sha2-512") else base


def abort_channel(chan: Any) -> None:
    """Ask the server to kill the command (RFC 4254 ``signal``), then close the channel."""
    with contextlib.suppress(Exception):
        msg = paramiko.Message()
        msg.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
        msg.add_int(chan.remote_chanid)
        msg.add_string("signal")
        msg.add_boolean(False)
        msg.add_string("KILL")
        chan.transport._send_user_message(msg)
    with contextlib.suppress(Exception):
        chan.close()


def drain_channel(
    chan: Any, out: bytearray, err_out: bytearray, cap: int, deadline: float
) -> Literal["exited", "truncated", "deadline"]:
    """Read stdout and stderr until the command ends, their sum reaches ``cap``, or the deadline."""
    while True:
        got = False
        for ready, recv, buf in (
            (chan.recv_ready, chan.recv, out),
            (chan.recv_stderr_ready, chan.recv_stderr, err_out),
        ):
            if ready():
                room = cap - len(out) - len(err_out)
                if room <= 0:
                    return "truncated"
                buf += recv(min(CHUNK, room))
                got = True
        if got:
            continue
        if chan.closed or (chan.eof_received and chan.exit_status_ready()):
            return "exited"
        left = deadline - time.monotonic()
        if left <= 0:
            return "deadline"
        if chan.eof_received:
            chan.status_event.wait(min(left, 0.25))
        else:
            select.select([chan], [], [], min(left, 0.25))


# --- error translation (the one place socket/paramiko errors become collector errors) ----------


def open_socket(host: str, port: int, timeout_s: float, source: str) -> socket.socket:
    """Open a TCP connection within ``timeout_s``.

    Raises:
        DeviceUnreachable: refused, no route, DNS failure.
        DeviceTimeout: no connection in time.
    """
    try:
        return socket.create_connection((host, port), timeout=timeout_s)
    except TimeoutError as err:
        raise DeviceTimeout(f"{source}: connect timed out after {timeout_s:.3g} s") from err
    except socket.gaierror as err:
        raise DeviceUnreachable(f"{source}: DNS lookup failed") from err
    except OSError as err:
        raise DeviceUnreachable(f"{source}: {(err.strerror or type(err).__name__).lower()}") from err


def translate(
    err: BaseException, source: str, what: str, guard: GuardedSocket | None, username: str
) -> CollectorError:
    """Map a socket/paramiko error raised during ``what`` to a collector error."""
    if isinstance(err, CollectorError):
        return err
    if guard is not None and guard.failure is not None:
        return guard.failure
    if guard is not None and guard.sent_garbage():
        return UnexpectedResponse(f"{source}: not an SSH server (sent {guard.garbage()!r})")
    if guard is not None and guard.bytes_read == 0 and not isinstance(err, TimeoutError):
        return DeviceUnreachable(f"{source}: connection closed before the SSH banner")
    if isinstance(err, TimeoutError):
        return DeviceTimeout(f"{source}: {what} not complete in time")
    if isinstance(err, paramiko.AuthenticationException):
        return AuthFailed(f"{source}: login as {username!r} rejected")
    if isinstance(err, (EOFError, ConnectionError)):
        return DeviceUnreachable(f"{source}: connection closed during {what}")
    if isinstance(err, paramiko.SSHException):
        return UnexpectedResponse(f"{source}: {what} failed: {str(err)[:120]}")
    if isinstance(err, OSError):
        return DeviceUnreachable(f"{source}: {what} failed: {(err.strerror or type(err).__name__).lower()}")
    return UnexpectedResponse(f"{source}: {what} failed: {type(err).__name__}")
