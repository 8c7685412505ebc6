"""TCP reachability and the Yealink VC control API (port 6024), bounded in time and bytes.

The VC API is documented for the VC110–VC880 line only; for the A20/A30/MVC it is a sibling,
so profiles mark it ``assumed``. One ASCII command per line, ``\\r\\n`` framed, no login. On
connect the device sends, unprompted::

    version "model:VC880" "firmware:63.345.0.10" "hardware:..." "productId:..." "cc_version:..."

and ``sysstatus get`` answers ``sysstatus get <state> ["dialstr:..." "callid:..." ...]``.
Every socket error is translated here, once, into :mod:`collectors.errors`. Each operation
runs under one deadline (a drip-feeding device cannot stretch it), reads at most
``max_line_bytes`` per line and ``max_bytes`` per connection, and rejects binary bytes at once.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from types import TracebackType

from collectors.errors import CollectorError, DeviceTimeout, DeviceUnreachable, UnexpectedResponse
from collectors.models import ChannelResult
from config.channels import VCAPI_PORT, TcpChannel, VcApiChannel

__all__ = [
    "CALL_STATES",
    "VCAPI_PORT",
    "Banner",
    "TcpChannel",
    "TcpConnectProbe",
    "VcApiChannel",
    "VcApiClient",
    "parse_banner",
    "parse_sysstatus",
    "parse_tokens",
    "tcp_connect_probe",
]

#: states ``sysstatus get`` answers with (``finished`` is only pushed, never an answer)
CALL_STATES = ("sleeping", "idle", "outgoing", "ringing", "talking", "talking max")
PUSHED_STATES = ("finished",)
MAX_SKIPPED_LINES = 32
_TOKEN = re.compile(r'"([^"\r\n]*)"')
# control bytes other than tab, CR and LF mean binary garbage (UTF-8 text is let through)
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Banner:
    """The version banner: ``model``, ``firmware``, ``hardware``, ``productId``, ``cc_version``."""

    model: str
    firmware: str
    hardware: str
    tokens: dict[str, str]


# --- parsing (no I/O) -------------------------------------------------------------------------


def parse_tokens(text: str, source: str = "6024") -> dict[str, str]:
    """Parse ``"key:value" "key:value"`` tokens; a value may contain colons and spaces.

    Raises:
        UnexpectedResponse: text outside the quotes, or a token without ``key:``.
    """
    tokens: dict[str, str] = {}
    pos = 0
    for match in _TOKEN.finditer(text):
        if text[pos : match.start()].strip():
            raise UnexpectedResponse(f"{source}: unquoted text {text[pos : match.start()].strip()[:40]!r}")
        pos = match.end()
        key, sep, value = match.group(1).partition(":")
        if not sep or not key.strip():
            raise UnexpectedResponse(f"{source}: token without a key: {match.group(1)[:40]!r}")
        tokens.setdefault(key.strip(), value)
    if text[pos:].strip():
        raise UnexpectedResponse(f"{source}: unquoted text {text[pos:].strip()[:40]!r}")
    return tokens


def parse_banner(line: str, source: str = "6024") -> Banner:
    """Parse the unprompted ``version "model:…" "firmware:…" …`` line.

    Raises:
        UnexpectedResponse: the line is not a version banner or names no model/firmware.
    """
    head, _, rest = line.partition(" ")
    if head != "version":
        raise UnexpectedResponse(f"{source}: expected a version banner, got {line[:60]!r}")
    tokens = parse_tokens(rest, source)
    if not tokens.get("model") or not tokens.get("firmware"):
        raise UnexpectedResponse(f"{source}: version banner names no model or firmware: {line[:80]!r}")
    return Banner(tokens["model"], tokens["firmware"], tokens.get("hardware", ""), tokens)


def parse_sysstatus(line: str, source: str = "6024") -> tuple[str, dict[str, str]]:
    """Parse ``sysstatus get <state> ["key:value" …]`` into the state and its tokens.

    Raises:
        UnexpectedResponse: not a sysstatus line, or a state this API does not document.
    """
    prefix = "sysstatus get "
    if not line.startswith(prefix):
        raise UnexpectedResponse(f"{source}: expected 'sysstatus get', got {line[:60]!r}")
    rest = line[len(prefix) :]
    quote = rest.find('"')
    state = " ".join((rest if quote < 0 else rest[:quote]).split())
    if state not in CALL_STATES + PUSHED_STATES:
        raise UnexpectedResponse(f"{source}: unknown call state {state[:40]!r}")
    return state, parse_tokens("" if quote < 0 else rest[quote:], source)


# --- connections ------------------------------------------------------------------------------


def _remaining(deadline: float, source: str, what: str, timeout_s: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeviceTimeout(f"{source}: {what} not complete within {timeout_s:g} s")
    return left


def _connect(host: str, port: int, deadline: float, timeout_s: float, source: str) -> socket.socket:
    """Open a TCP connection before ``deadline``.

    Raises:
        DeviceUnreachable: refused, reset, no route, DNS failure.
        DeviceTimeout: no connection before the deadline.
    """
    left = _remaining(deadline, source, "connect", timeout_s)
    try:
        return socket.create_connection((host, port), timeout=left)
    except TimeoutError as err:
        raise DeviceTimeout(f"{source}: connect timed out after {timeout_s:g} s") from err
    except socket.gaierror as err:
        raise DeviceUnreachable(f"{source}: DNS lookup failed") from err
    except OSError as err:
        why = (err.strerror or type(err).__name__).lower()
        raise DeviceUnreachable(f"{source}: {why}") from err


def tcp_connect_probe(host: str, port: int, timeout_s: float) -> ChannelResult:
    """Open and close one TCP connection; the result carries the connect latency.

    Raises:
        DeviceUnreachable: refused, no route, DNS failure.
        DeviceTimeout: no connection within ``timeout_s``.
    """
    source = f"tcp {host}:{port}"
    started = time.monotonic()
    sock = _connect(host, port, started + timeout_s, timeout_s, source)
    latency_ms = (time.monotonic() - started) * 1000
    sock.close()
    return ChannelResult("tcp", True, "ok", latency_ms, detail=f"port {port} open", fields={"tcp_port": port})


class TcpConnectProbe:
    """A :class:`TcpChannel` as a channel probe (``name``, ``probe()``, ``close()``)."""

    name = "tcp"

    def __init__(self, host: str, settings: TcpChannel) -> None:
        self.host = host
        self.settings = settings

    def probe(self) -> ChannelResult:
        """Connect once and report the latency.

        Raises:
            DeviceUnreachable, DeviceTimeout: as for :func:`tcp_connect_probe`.
        """
        return tcp_connect_probe(self.host, self.settings.port, self.settings.timeout_s)

    def close(self) -> None:
        """Nothing to release: every probe opens and closes its own connection."""


class VcApiClient:
    """One connection to the VC control API of one device; not thread-safe."""

    name = "tcp6024"

    def __init__(
        self,
        host: str,
        port: int = VCAPI_PORT,
        *,
        timeout_s: float,
        max_line_bytes: int = 4096,
        max_bytes: int = 65_536,
        query_status: bool = False,
    ) -> None:
        if timeout_s <= 0 or max_line_bytes < 16 or max_bytes < max_line_bytes:
            raise ValueError("need timeout_s > 0, max_line_bytes >= 16, max_bytes >= max_line_bytes")
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.max_line_bytes = max_line_bytes
        self.max_bytes = max_bytes
        self.query_status = query_status
        self.banner: Banner | None = None
        self.bytes_read = 0
        self._source = f"6024 {host}:{port}"
        self._sock: socket.socket | None = None
        self._buf = b""

    @classmethod
    def from_settings(cls, host: str, settings: VcApiChannel) -> VcApiClient:
        """Build a client from a profile's :class:`VcApiChannel`."""
        return cls(
            host,
            settings.port,
            timeout_s=settings.timeout_s,
            max_line_bytes=settings.max_line_bytes,
            max_bytes=settings.max_bytes,
            query_status=settings.query_status,
        )

    def __enter__(self) -> VcApiClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- public operations ---------------------------------------------------------------

    def connect(self, deadline: float | None = None) -> Banner:
        """Connect (if not connected) and read the version banner, within ``timeout_s``.

        Raises:
            DeviceUnreachable: refused, reset or closed before the banner.
            DeviceTimeout: no connection or no complete banner in time.
            UnexpectedResponse: not a banner, over a byte cap, or binary bytes.
        """
        if self.banner is not None and self._sock is not None:
            return self.banner
        deadline = deadline if deadline is not None else time.monotonic() + self.timeout_s
        self.close()
        self.bytes_read = 0
        self._sock = _connect(self.host, self.port, deadline, self.timeout_s, self._source)
        try:
            self.banner = parse_banner(self._read_line(deadline, "version banner"), self._source)
        except CollectorError:
            self.close()
            raise
        return self.banner

    def command(self, text: str, deadline: float | None = None) -> str:
        """Send one command line and return the next line the device sends.

        Raises:
            ValueError: ``text`` is empty, not printable ASCII, or spans lines.
            DeviceUnreachable, DeviceTimeout, UnexpectedResponse: as for :meth:`connect`.
        """
        deadline = deadline if deadline is not None else time.monotonic() + self.timeout_s
        self._send(text, deadline)
        return self._read_line(deadline, f"answer to {text!r}")

    def sysstatus(self, deadline: float | None = None) -> str:
        """Ask ``sysstatus get`` and return the call state (``idle``, ``talking max``, …).

        Lines the device pushes meanwhile (e.g. ``finished``) are skipped, up to a bound.

        Raises:
            DeviceUnreachable, DeviceTimeout: as for :meth:`connect`.
            UnexpectedResponse: an error line, an unknown state, or too many unrelated lines.
        """
        deadline = deadline if deadline is not None else time.monotonic() + self.timeout_s
        self._send("sysstatus get", deadline)
        for _ in range(MAX_SKIPPED_LINES):
            line = self._read_line(deadline, "sysstatus answer")
            if line.startswith("sysstatus "):
                state, _tokens = parse_sysstatus(line, self._source)
                if state not in PUSHED_STATES:
                    return state
            elif line.lower().startswith("error"):
                raise UnexpectedResponse(f"{self._source}: device refused 'sysstatus get': {line[:80]!r}")
        raise UnexpectedResponse(f"{self._source}: no sysstatus answer in {MAX_SKIPPED_LINES} lines")

    def probe(self, query_status: bool | None = None) -> ChannelResult:
        """Connect, read the banner and (optionally) the call state, all within ``timeout_s``.

        Raises:
            DeviceUnreachable, DeviceTimeout, UnexpectedResponse: as for :meth:`connect`.
        """
        query = self.query_status if query_status is None else query_status
        started = time.monotonic()
        deadline = started + self.timeout_s
        try:
            self.close()
            banner = self.connect(deadline)
            fields: dict[str, object] = {
                "model": banner.model,
                "firmware": banner.firmware,
                "hardware": banner.hardware,
            }
            if "productId" in banner.tokens:
                fields["product_id"] = banner.tokens["productId"]
            if query:
                fields["call_state"] = self.sysstatus(deadline)
        finally:
            self.close()
        latency_ms = (time.monotonic() - started) * 1000
        detail = f"{banner.model} {banner.firmware}" + (f", {fields['call_state']}" if query else "")
        return ChannelResult(self.name, True, "ok", latency_ms, detail=detail, fields=fields)

    def close(self) -> None:
        """Close the connection (idempotent); the next call reconnects."""
        sock, self._sock = self._sock, None
        self._buf = b""
        self.banner = None
        if sock is not None:
            sock.close()

    # --- framing -------------------------------------------------------------------------

    def _send(self, text: str, deadline: float) -> None:
        if not text or "\r" in text or "\n" in text or not text.isascii() or not text.isprintable():
            raise ValueError("a command is one line of printable ASCII")
        if self._sock is None or self.banner is None:
            self.connect(deadline)
        assert self._sock is not None
        try:
            self._sock.settimeout(_remaining(deadline, self._source, "send", self.timeout_s))
            self._sock.sendall(text.encode("ascii") + b"\r\n")
        except TimeoutError as err:
            self.close()
            raise DeviceTimeout(f"{self._source}: send not complete within {self.timeout_s:g} s") from err
        except OSError as err:
            self.close()
            raise DeviceUnreachable(f"{self._source}: send failed: {(err.strerror or '').lower()}") from err

    def _read_line(self, deadline: float, what: str) -> str:
        """Return the next line without its terminator; ``\\r\\n`` or a bare ``\\n`` ends it.

        Raises:
            DeviceTimeout: no complete line before the deadline.
            DeviceUnreachable: the device closed or reset the connection.
            UnexpectedResponse: a line over ``max_line_bytes``, over ``max_bytes`` in total, binary.
        """
        try:
            return self._read_line_raw(deadline, what)
        except CollectorError:
            self.close()
            raise

    def _read_line_raw(self, deadline: float, what: str) -> str:
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                raw, self._buf = self._buf[:end].rstrip(b"\r"), self._buf[end + 1 :]
                if len(raw) > self.max_line_bytes:
                    raise UnexpectedResponse(f"{self._source}: line over {self.max_line_bytes} bytes")
                try:
                    return raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise UnexpectedResponse(f"{self._source}: binary bytes in the {what}") from err
            if len(self._buf) > self.max_line_bytes:
                raise UnexpectedResponse(f"{self._source}: line over {self.max_line_bytes} bytes")
            budget = min(self.max_line_bytes + 1 - len(self._buf), self.max_bytes - self.bytes_read)
            if budget <= 0:
                raise UnexpectedResponse(f"{self._source}: over {self.max_bytes} bytes on one connection")
            chunk = self._recv(min(budget, 4096), deadline, what)
            if _CONTROL.search(chunk):
                raise UnexpectedResponse(f"{self._source}: binary bytes in the {what}")
            self._buf += chunk

    def _recv(self, size: int, deadline: float, what: str) -> bytes:
        assert self._sock is not None
        try:
            self._sock.settimeout(_remaining(deadline, self._source, what, self.timeout_s))
            chunk = self._sock.recv(size)
        except TimeoutError as err:
            raise DeviceTimeout(f"{self._source}: {what} not complete within {self.timeout_s:g} s") from err
        except OSError as err:
            why = (err.strerror or type(err).__name__).lower()
            raise DeviceUnreachable(f"{self._source}: {what} failed: {why}") from err
        if not chunk:
            raise DeviceUnreachable(f"{self._source}: connection closed before the {what}")
        self.bytes_read += len(chunk)
        return chunk
