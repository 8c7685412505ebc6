"""Central log forwarding: device syslog and agent events as RFC 5424 over TCP (TLS optional).

:class:`SyslogForwarder` takes records from any thread without blocking (the syslog receiver's
loop calls :meth:`SyslogForwarder.device_message`; the agent calls
:meth:`SyslogForwarder.agent_event`), and one worker thread moves them through a bounded
:class:`~agent.forward_buffer.DiskBuffer` to the collector, oldest first, with octet-counting
framing (RFC 6587) and TLS (RFC 5425) when configured. While the collector is away records wait
on disk and the worker reconnects with capped doubling waits; once it answers, the backlog goes
out in order. A full memory queue or a full disk buffer drops records and counts them.

Plain TCP syslog has no acknowledgements: what the kernel accepted just before the collector
vanished can be lost (a collector that closes the connection is noticed before the next send).
Every message carries ``[hezo@32473 device=".." site=".." src=".."]``; 32473 is the example
enterprise number of RFC 5612.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.forward_buffer import DiskBuffer, frame
from collectors.syslog_parse import SyslogMessage
from config.forwarding import ForwardingSettings

__all__ = [
    "SD_ID",
    "ForwardStats",
    "SyslogForwarder",
    "device_record",
    "event_record",
    "format_rfc5424",
    "tls_context",
]

log = logging.getLogger("hezo.forward")

SD_ID = "hezo@32473"
MAX_MESSAGE_BYTES = 64 * 1024
FACILITY_USER, FACILITY_DAEMON = 1, 3
SEVERITY_WARNING, SEVERITY_NOTICE, SEVERITY_INFO = 4, 5, 6
EVENT_SEVERITY = {"alert": SEVERITY_WARNING, "ticket_opened": SEVERITY_WARNING, "held": SEVERITY_NOTICE,
                  "ticket_resolved": SEVERITY_NOTICE, "state": SEVERITY_NOTICE}  # fmt: skip
_STOP = object()
_READ_CHUNK = 256 * 1024


def _header_field(value: str | None, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, at most ``limit`` long, or ``-``."""
    if not value:
        return "-"
    clean = "".join(ch if 33 <= ord(ch) <= 126 else "_" for ch in value)[:limit]
    return clean or "-"


def _sd_value(value: str) -> str:
    """Escape an SD-PARAM value (``"``, ``\\`` and ``]`` get a backslash)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _timestamp(at: datetime) -> str:
    moment = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def format_rfc5424(
    *,
    facility: int,
    severity: int,
    timestamp: datetime,
    hostname: str | None,
    app_name: str | None,
    procid: str | None,
    msgid: str | None,
    params: Mapping[str, str],
    msg: str,
    extra_sd: str | None = None,
) -> bytes:
    """Return one RFC 5424 message (without framing); the message text is cut at 64 KiB."""
    sd = f"[{SD_ID}" + "".join(f' {k}="{_sd_value(v)}"' for k, v in params.items() if v) + "]"
    header = (
        f"<{facility * 8 + severity}>1 {_timestamp(timestamp)} {_header_field(hostname, 255)} "
        f"{_header_field(app_name, 48)} {_header_field(procid, 128)} {_header_field(msgid, 32)} "
        f"{sd}{extra_sd or ''}"
    )
    body = msg.rstrip("\r\n\x00").encode("utf-8", errors="replace")[:MAX_MESSAGE_BYTES]
    return header.encode("ascii", errors="replace") + (b" " + body if body else b"")


def device_record(message: SyslogMessage, site: str | None) -> bytes:
    """Frame one received device message for the collector (HOSTNAME is the device id)."""
    facility = message.facility if message.facility is not None else FACILITY_USER
    severity = message.severity if message.severity is not None else SEVERITY_NOTICE
    params = {"device": message.device_id, "site": site or "", "src": message.source_ip}
    return frame(
        format_rfc5424(
            facility=facility,
            severity=severity,
            timestamp=message.timestamp or message.received_at,
            hostname=message.device_id,
            app_name=message.app_name,
            procid=message.procid,
            msgid=message.msgid,
            params=params,
            msg=message.msg + (" [truncated]" if message.truncated else ""),
            extra_sd=message.structured_data,
        )
    )


def event_record(
    at: datetime, device_id: str, kind: str, text: str, *, hostname: str, site: str | None
) -> bytes:
    """Frame one agent event (state change, ticket action, alert) for the collector."""
    return frame(
        format_rfc5424(
            facility=FACILITY_DAEMON,
            severity=EVENT_SEVERITY.get(kind, SEVERITY_INFO),
            timestamp=at,
            hostname=hostname,
            app_name="hezo-agent",
            procid=str(os.getpid()),
            msgid=kind,
            params={"device": device_id, "site": site or ""},
            msg=text,
        )
    )


def tls_context(settings: ForwardingSettings) -> ssl.SSLContext | None:
    """The client TLS context of ``settings.tls`` (certificate and host name always verified).

    Raises:
        OSError, ssl.SSLError: a CA, certificate or key file cannot be read.
    """
    tls = settings.tls
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


@dataclass(frozen=True, slots=True)
class ForwardStats:
    """What the forwarder has done: counts since start, and what waits now."""

    connected: bool
    sent: int
    dropped_queue_full: int
    dropped_buffer_full: int
    queued: int
    backlog_messages: int
    backlog_bytes: int
    last_error: str | None


class SyslogForwarder:
    """Forward framed records to one collector through a disk buffer (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        buffer_dir: Path,
        *,
        buffer_max_bytes: int = 64 * 1024 * 1024,
        queue_max_messages: int = 10_000,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
        connect_timeout_s: float = 5.0,
        retry_min_s: float = 1.0,
        retry_max_s: float = 60.0,
        hostname: str | None = None,
        sites: Mapping[str, str] | None = None,
        forward_devices: bool = True,
        forward_events: bool = True,
    ) -> None:
        """Configure the forwarder and open its buffer; nothing connects until :meth:`start`.

        Raises:
            OSError: the buffer folder cannot be created or read.
        """
        self.host, self.port = host, port
        self.buffer = DiskBuffer(buffer_dir, max_bytes=buffer_max_bytes)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_max_messages)
        self._ssl = ssl_context
        self._server_name = server_name or host
        self.connect_timeout_s = connect_timeout_s
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self.hostname = hostname or socket.gethostname()
        self._sites = dict(sites or {})
        self.forward_devices, self.forward_events = forward_devices, forward_events
        self._lock = threading.Lock()
        self._counts = {"sent": 0, "queue_full": 0, "buffer_full": 0}
        self._backlog = (self.buffer.pending_messages, self.buffer.pending_bytes)
        self._sock: socket.socket | None = None
        self._last_error: str | None = None
        self._stopping = threading.Event()
        self._stop_by = 0.0
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(
        cls, settings: ForwardingSettings, data_dir: Path, *, sites: Mapping[str, str]
    ) -> SyslogForwarder:
        """Build the agent's forwarder from ``forwarding:`` (``sites`` maps device id to site).

        Raises:
            OSError, ssl.SSLError: the buffer folder or a TLS file cannot be read.
        """
        tls = settings.tls
        return cls(
            settings.host,
            settings.effective_port,
            settings.buffer_dir or Path(data_dir) / "forward-buffer",
            buffer_max_bytes=settings.buffer_max_bytes,
            queue_max_messages=settings.queue_max_messages,
            ssl_context=tls_context(settings),
            server_name=tls.server_name if tls is not None else None,
            connect_timeout_s=settings.connect_timeout_s,
            retry_min_s=settings.retry_min_s,
            retry_max_s=settings.retry_max_s,
            hostname=settings.hostname,
            sites=sites,
            forward_devices=settings.devices,
            forward_events=settings.agent_events,
        )

    # --- intake (any thread, never blocks) ------------------------------------------------------

    def submit(self, record: bytes) -> bool:
        """Queue one framed record; False (and counted) when the memory queue is full."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._count("queue_full")
            return False
        self._idle.clear()
        return True

    def device_message(self, message: SyslogMessage) -> None:
        """Forward one message the syslog receiver accepted (its ``on_message`` hook)."""
        if self.forward_devices:
            self.submit(device_record(message, self._sites.get(message.device_id)))

    def agent_event(self, at: datetime, device_id: str, kind: str, text: str) -> None:
        """Forward one of the agent's own events."""
        if self.forward_events:
            site = self._sites.get(device_id, device_id if device_id in self._sites.values() else None)
            self.submit(event_record(at, device_id, kind, text, hostname=self.hostname, site=site))

    # --- state ----------------------------------------------------------------------------------

    def stats(self) -> ForwardStats:
        """Return the counters and the backlog (thread-safe)."""
        with self._lock:
            messages, size = self._backlog
            return ForwardStats(
                connected=self._sock is not None,
                sent=self._counts["sent"],
                dropped_queue_full=self._counts["queue_full"],
                dropped_buffer_full=self._counts["buffer_full"],
                queued=self._queue.qsize(),
                backlog_messages=messages,
                backlog_bytes=size,
                last_error=self._last_error,
            )

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._thread is not None and self._thread.is_alive()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or buffered (everything sent); False on timeout."""
        return self._idle.wait(timeout_s)

    def start(self) -> None:
        """Start the worker thread.

        Raises:
            RuntimeError: already running.
        """
        if self.running:
            raise RuntimeError("forwarder already running")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="syslog-forwarder", daemon=True)
        self._thread.start()
        log.info("event=forward_started host=%s port=%d tls=%s", self.host, self.port, self._ssl is not None)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Store what is queued, try a last send, close (what is left waits on disk for next time)."""
        thread = self._thread
        if thread is None:
            return
        self._stop_by = time.monotonic() + max(0.0, timeout_s - 1.0)  # a last send, within the timeout
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_STOP)
        thread.join(timeout_s)
        self._thread = None
        stats = self.stats()
        log.info("event=forward_stopped sent=%d backlog=%d", stats.sent, stats.backlog_messages)

    # --- worker ---------------------------------------------------------------------------------

    def _count(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._counts[name] += by

    def _run(self) -> None:
        backoff, next_try, failing = self.retry_min_s, 0.0, False
        try:
            while True:
                waiting = self.buffer.pending_bytes > 0
                now = time.monotonic()
                if self._stopping.is_set() or (waiting and self._sock is not None):
                    timeout = 0.0
                elif waiting:
                    timeout = min(0.5, max(0.0, next_try - now))
                else:
                    timeout = 0.5
                self._take(timeout)
                if self.buffer.pending_bytes == 0:
                    self._mark_idle()
                    if self._stopping.is_set():
                        return
                    continue
                if self._sock is None and (time.monotonic() >= next_try or self._stopping.is_set()):
                    if self._connect():
                        backoff, failing = self.retry_min_s, False
                    else:
                        if not failing:
                            log.warning(
                                "event=forward_unreachable host=%s port=%d error=%s backlog=%d",
                                self.host, self.port, self._last_error, self.buffer.pending_messages,
                            )  # fmt: skip
                        failing = True
                        next_try = time.monotonic() + backoff
                        backoff = min(self.retry_max_s, backoff * 2)
                        if self._stopping.is_set():
                            return
                        continue
                if self._sock is not None:
                    self._send_some()
                if self._stopping.is_set() and (self._sock is None or time.monotonic() > self._stop_by):
                    return
        finally:
            self._disconnect()

    def _take(self, timeout: float) -> None:
        """Move queued records to the disk buffer (waiting up to ``timeout`` for the first)."""
        records: list[bytes] = []
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return
        while True:
            if isinstance(item, bytes):
                records.append(item)
            if len(records) >= 1000:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        if not records:
            return
        try:
            dropped = self.buffer.append(records)
        except OSError as err:
            self._count("buffer_full", len(records))
            log.warning("event=forward_buffer_write_failed error=%s dropped=%d", err, len(records))
            return
        if dropped:
            self._count("buffer_full", dropped)
            log.warning("event=forward_buffer_full dropped=%d max_bytes=%d", dropped, self.buffer.max_bytes)
        self._note_backlog()

    def _note_backlog(self) -> None:
        with self._lock:
            self._backlog = (self.buffer.pending_messages, self.buffer.pending_bytes)

    def _mark_idle(self) -> None:
        self._note_backlog()
        if self._queue.empty():
            self._idle.set()

    def _connect(self) -> bool:
        try:
            raw = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        except OSError as err:
            self._last_error = f"{type(err).__name__}: {err}"
            return False
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock = self._ssl.wrap_socket(raw, server_hostname=self._server_name) if self._ssl else raw
            sock.settimeout(max(10.0, self.connect_timeout_s))
        except (OSError, ssl.SSLError) as err:
            raw.close()
            self._last_error = f"{type(err).__name__}: {err}"
            log.warning("event=forward_tls_failed host=%s port=%d error=%s", self.host, self.port, err)
            return False
        with self._lock:
            self._sock = sock
            self._last_error = None
        log.info("event=forward_connected host=%s port=%d backlog=%d", self.host, self.port,
                 self.buffer.pending_messages)  # fmt: skip
        return True

    def _disconnect(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _peer_closed(self, sock: socket.socket) -> bool:
        """True when the collector closed the connection (checked before each send)."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        timeout = sock.gettimeout()
        sock.setblocking(False)
        try:
            data = sock.recv(1) if isinstance(sock, ssl.SSLSocket) else sock.recv(1, socket.MSG_PEEK)
            return data == b""
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        except OSError:
            return True
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(timeout)

    def _send_some(self) -> None:
        sock = self._sock
        assert sock is not None
        chunk = self.buffer.read(_READ_CHUNK)
        if chunk is None:
            return
        if self._peer_closed(sock):
            self._last_error = "the collector closed the connection"
            log.warning(
                "event=forward_disconnected host=%s port=%d reason=closed_by_peer", self.host, self.port
            )
            self._disconnect()
            return
        try:
            sock.sendall(chunk.data)
        except OSError as err:
            self._last_error = f"{type(err).__name__}: {err}"
            log.warning("event=forward_disconnected host=%s port=%d error=%s", self.host, self.port, err)
            self._disconnect()
            return
        self.buffer.commit(chunk)
        self._count("sent", chunk.count)
        if self.buffer.pending_bytes == 0:
            self._mark_idle()
        else:
            self._note_backlog()
