"""Syslog values, parsing (RFC 5424, RFC 3164), TCP framing (RFC 6587) and counters; no I/O.

Parsing never raises: a message whose header is not understood comes back with
``format="raw"`` and the whole text in ``msg``. The framer keeps at most ``max_message_bytes``
of any message in memory, whatever octet count or line length a sender announces.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

SyslogFormat = Literal["5424", "3164", "raw"]
SEVERITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")

_PRI = re.compile(r"<(\d{1,3})>")
_BSD_TIME = re.compile(r"([A-Z][a-z]{2}) ([ \d]\d) (\d\d):(\d\d):(\d\d) ")
_ISO_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?) ")
_TAG = re.compile(r"([^\s:\[\]]{1,48})(?:\[([^\]]{0,128})\])?: ?")
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1
    )
}
_TRAILING = "\r\n\x00"
_LEADING = re.compile(rb"[\r\n\x00 ]*")
_OCTET_HEADER = re.compile(rb"([1-9]\d{0,9}) ")
_DIGITS_TAIL = re.compile(rb"\d{1,10}\Z")
_TERMINATOR = re.compile(rb"[\n\x00]")
_COUNTERS = (
    "received",
    "dropped_unknown",
    "oversize",
    "malformed",
    "store_errors",
    "callback_errors",
    "tcp_rejected",
    "tcp_timed_out",
)


@dataclass(frozen=True, slots=True)
class SyslogMessage:
    """One received syslog message, parsed as far as its format allows.

    ``timestamp`` is the sender's own time (None when absent or unparsable; RFC 3164 times,
    which carry no zone or year, are read as UTC in the year of ``received_at``).
    ``raw`` holds the bytes as received (after framing and any truncation).
    """

    received_at: datetime
    source_ip: str
    device_id: str
    facility: int | None
    severity: int | None
    timestamp: datetime | None
    hostname: str | None
    app_name: str | None
    msg: str
    format: SyslogFormat
    procid: str | None = None
    msgid: str | None = None
    structured_data: str | None = None
    truncated: bool = False
    raw: bytes = field(default=b"", repr=False)


def _nil(value: str) -> str | None:
    return None if value in ("-", "") else value


def _parse_iso(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _split_structured_data(text: str) -> tuple[str | None, str] | None:
    """Split ``SD [SP MSG]`` into (SD or None, MSG); None if the SD is not well-formed."""
    if text.startswith("-"):
        return None, text[2:] if text.startswith("- ") else text[1:]
    if not text.startswith("["):
        return None
    i, in_quote = 0, False
    while i < len(text):
        ch = text[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == "]" and (i + 1 == len(text) or text[i + 1] != "["):
            rest = text[i + 1 :]
            return text[: i + 1], rest[1:] if rest.startswith(" ") else rest
        i += 1
    return None


def _bsd_time(match: re.Match[str], received_at: datetime) -> datetime | None:
    """Read an RFC 3164 ``Mmm dd hh:mm:ss`` as UTC in the year that puts it nearest ``received_at``."""
    month = _MONTHS.get(match.group(1))
    if month is None:
        return None
    day, hour, minute, second = (int(match.group(n)) for n in range(2, 6))
    base = received_at.astimezone(UTC)
    for year in (base.year, base.year - 1):
        try:
            moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        except ValueError:
            continue  # Feb 29 in a non-leap year, hour 25, ...
        if moment - base <= timedelta(days=2):
            return moment
    return None


def parse_message(
    payload: bytes,
    *,
    received_at: datetime,
    source_ip: str,
    device_id: str,
    truncated: bool = False,
) -> SyslogMessage:
    """Parse one framed message (RFC 5424, else RFC 3164, else raw); never raises."""
    text = payload.decode("utf-8", "replace").rstrip(_TRAILING)

    def build(
        fmt: SyslogFormat,
        msg: str,
        facility: int | None = None,
        severity: int | None = None,
        timestamp: datetime | None = None,
        hostname: str | None = None,
        app_name: str | None = None,
        procid: str | None = None,
        msgid: str | None = None,
        structured_data: str | None = None,
    ) -> SyslogMessage:
        return SyslogMessage(
            received_at=received_at,
            source_ip=source_ip,
            device_id=device_id,
            facility=facility,
            severity=severity,
            timestamp=timestamp,
            hostname=hostname,
            app_name=app_name,
            msg=msg,
            format=fmt,
            procid=procid,
            msgid=msgid,
            structured_data=structured_data,
            truncated=truncated,
            raw=payload,
        )

    pri = _PRI.match(text)
    if pri is None or int(pri.group(1)) > 191:
        return build("raw", text)
    facility, severity = divmod(int(pri.group(1)), 8)
    rest = text[pri.end() :]
    if rest.startswith("1 "):
        parts = rest[2:].split(" ", 5)
        split = _split_structured_data(parts[5]) if len(parts) == 6 else None
        if split is None:
            return build("raw", text, facility, severity)
        stamp, host, app, pid, msgid, _ = parts
        sd, msg = split
        return build(
            "5424",
            msg.removeprefix("\ufeff"),
            facility,
            severity,
            timestamp=None if stamp == "-" else _parse_iso(stamp),
            hostname=_nil(host),
            app_name=_nil(app),
            procid=_nil(pid),
            msgid=_nil(msgid),
            structured_data=sd,
        )
    timestamp: datetime | None = None
    hostname: str | None = None
    if (bsd := _BSD_TIME.match(rest)) is not None:
        timestamp, rest = _bsd_time(bsd, received_at), rest[bsd.end() :]
    elif (iso := _ISO_TIME.match(rest)) is not None:
        timestamp, rest = _parse_iso(iso.group(1)), rest[iso.end() :]
    if timestamp is not None:
        first, _, after = rest.partition(" ")
        if first and not first.endswith(":") and "[" not in first:
            hostname, rest = first, after
    app_name: str | None = None
    procid: str | None = None
    if (tag := _TAG.match(rest)) is not None:
        app_name, procid, rest = tag.group(1), tag.group(2), rest[tag.end() :]
    return build(
        "3164",
        rest,
        facility,
        severity,
        timestamp=timestamp,
        hostname=hostname,
        app_name=app_name,
        procid=procid,
    )


@dataclass(frozen=True, slots=True)
class Frame:
    """One message cut from a TCP stream: its first bytes (at most the cap) and whether more were cut."""

    payload: bytes
    truncated: bool


class TcpFramer:
    """Cut a TCP byte stream into messages, detecting per message RFC 6587 octet counting
    (``LEN SP MSG``) or non-transparent framing (ended by LF or NUL).

    Memory stays within ``max_message_bytes`` plus one input chunk: a longer line or a larger
    octet count keeps the first ``max_message_bytes`` and discards the rest as it streams past.
    Work per chunk is linear in its size, however many messages it holds.
    """

    _START, _LINE, _OCTETS, _DISCARD_LINE = range(4)

    def __init__(self, max_message_bytes: int) -> None:
        """Frame messages of at most ``max_message_bytes`` bytes."""
        self.max_message_bytes = max_message_bytes
        self._state = self._START
        self._buf = bytearray()
        self._pos = 0
        self._remaining = 0
        self._announced = 0
        self._message = bytearray()

    @property
    def pending(self) -> bool:
        """True while a message has started but not ended."""
        return self._state != self._START or bool(self._buf)

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for the message in progress (at most the cap once :meth:`feed` returns)."""
        return len(self._buf) + len(self._message)

    def feed(self, data: bytes) -> list[Frame]:
        """Consume ``data``; return the messages it completed."""
        self._buf += data
        frames: list[Frame] = []
        while self._step(frames):
            pass
        del self._buf[: self._pos]
        self._pos = 0
        return frames

    def flush(self) -> Frame | None:
        """End of stream: return an unterminated last line, if any; drop a partial octet frame."""
        state, buf = self._state, bytes(self._buf).strip(b"\r\n\x00 ")
        self._state, self._buf, self._message, self._pos = self._START, bytearray(), bytearray(), 0
        if state in (self._START, self._LINE) and buf:
            return Frame(buf[: self.max_message_bytes], len(buf) > self.max_message_bytes)
        return None

    def _step(self, frames: list[Frame]) -> bool:
        """Advance the state machine once from ``_pos``; False when it needs more input."""
        buf, cap, pos, size = self._buf, self.max_message_bytes, self._pos, len(self._buf)
        if self._state == self._START:
            skip = _LEADING.match(buf, pos)
            pos = self._pos = skip.end() if skip else pos
            if pos == size:
                return False
            if (header := _OCTET_HEADER.match(buf, pos)) is not None:
                self._announced = self._remaining = int(header.group(1))
                self._pos, self._state = header.end(), self._OCTETS
            elif _DIGITS_TAIL.match(buf, pos):
                return False  # maybe an octet count: wait for its space
            else:
                self._state = self._LINE
            return True
        if self._state == self._OCTETS:
            take = min(self._remaining, size - pos)
            keep = max(0, min(take, cap - len(self._message)))
            self._message += buf[pos : pos + keep]
            self._pos += take
            self._remaining -= take
            if self._remaining:
                return False
            frames.append(Frame(bytes(self._message), self._announced > cap))
            self._state, self._message = self._START, bytearray()
            return True
        end_match = _TERMINATOR.search(buf, pos)
        if self._state == self._DISCARD_LINE:
            if end_match is None:
                self._pos = size
                return False
            self._pos, self._state = end_match.end(), self._START
            return True
        if end_match is not None:  # _LINE with its terminator
            line = bytes(buf[pos : end_match.start()]).rstrip(b"\r")
            frames.append(Frame(line[:cap], len(line) > cap))
            self._pos, self._state = end_match.end(), self._START
            return True
        if size - pos > cap:
            frames.append(Frame(bytes(buf[pos : pos + cap]), True))
            self._pos, self._state = size, self._DISCARD_LINE
        return False


@dataclass
class DeviceSyslogStats:
    """What one device sent: message count, errors (severity 0-3) and when it was last heard."""

    messages: int = 0
    errors: int = 0
    last_seen: datetime | None = None


class _Counter:
    """A read-only counter attribute of :class:`SyslogStats`."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: SyslogStats | None, objtype: type | None = None) -> int:
        if obj is None:
            raise AttributeError(self.name)
        return obj.count(self.name)


class SyslogStats:
    """Thread-safe receiver counters and per-device message counts.

    ``received`` accepted messages; ``dropped_unknown`` datagrams and connections from unmapped
    addresses; ``oversize`` messages cut to the cap; ``malformed`` messages stored raw;
    ``store_errors`` / ``callback_errors`` failed black-box writes / ``on_message`` calls;
    ``tcp_rejected`` connections over the limit; ``tcp_timed_out`` idle or stalled connections.
    """

    def __init__(self) -> None:
        """Start every counter at zero."""
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._devices: dict[str, DeviceSyslogStats] = {}

    def bump(self, name: str, by: int = 1) -> None:
        """Add ``by`` to counter ``name``."""
        with self._lock:
            self._counts[name] += by

    def record(self, message: SyslogMessage) -> None:
        """Count one accepted message for its device."""
        with self._lock:
            self._counts["received"] += 1
            dev = self._devices.setdefault(message.device_id, DeviceSyslogStats())
            dev.messages += 1
            dev.errors += message.severity is not None and message.severity <= 3
            dev.last_seen = message.received_at

    def count(self, name: str) -> int:
        """Return counter ``name``."""
        with self._lock:
            return self._counts[name]

    received = _Counter()
    dropped_unknown = _Counter()
    oversize = _Counter()
    malformed = _Counter()
    store_errors = _Counter()
    callback_errors = _Counter()
    tcp_rejected = _Counter()
    tcp_timed_out = _Counter()

    @property
    def unknown_sender(self) -> int:
        """Alias of ``dropped_unknown``: messages and connections from unmapped addresses."""
        return self.count("dropped_unknown")

    def device(self, device_id: str) -> DeviceSyslogStats:
        """Return a copy of ``device_id``'s counts (zeros if it never sent anything)."""
        with self._lock:
            dev = self._devices.get(device_id, DeviceSyslogStats())
            return DeviceSyslogStats(dev.messages, dev.errors, dev.last_seen)

    @property
    def per_device(self) -> dict[str, int]:
        """Return messages received per device id."""
        with self._lock:
            return {device: dev.messages for device, dev in self._devices.items()}

    def snapshot(self) -> dict[str, object]:
        """Return every counter plus ``per_device``, consistent at one instant."""
        with self._lock:
            return {**self._counts, "per_device": {d: v.messages for d, v in self._devices.items()}}


def normalize_ip(text: str) -> str:
    """Return the canonical form of an address (IPv4-mapped IPv6 as IPv4, zone id dropped)."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)
