"""The syslog receiver: UDP and TCP listeners in one asyncio loop thread, feeding black boxes.

Each message from a known source address is parsed (RFC 5424 / RFC 3164, see
:mod:`collectors.syslog_parse`), appended to its device's black box as
``<receive time> <source ip> <message as received>`` and handed to ``on_message``. Unknown
senders are counted and dropped; oversized messages are cut to ``max_message_bytes`` and
counted; malformed ones are stored raw and counted. Nothing a sender does stops the receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping

from agent.clock import Clock, SystemClock
from collectors.blackbox import BlackBoxes, format_time
from collectors.models import ChannelResult
from collectors.syslog_parse import SyslogMessage, SyslogStats, TcpFramer, normalize_ip, parse_message
from config.channels import SyslogSettings

__all__ = [
    "DEVICE_SYSLOG_PARAMETERS",
    "SyslogMessage",
    "SyslogReceiver",
    "SyslogSettings",
    "SyslogStats",
    "normalize_ip",
]

log = logging.getLogger(__name__)

# Phone-style provisioning parameters that would point a bar at this receiver
# (transport_type 0 UDP / 1 TCP / 2 TLS). Known from Yealink phones, ASSUMED for A20/A30/MVC.
DEVICE_SYSLOG_PARAMETERS = (
    "static.syslog.server",
    "static.syslog.server_port",
    "static.syslog.transport_type",
)


class SyslogReceiver:
    """Receive syslog over UDP and TCP for the devices in ``sources`` (source IP -> device id).

    ``on_message`` runs in the receiver's loop thread, once per accepted message: keep it quick
    (count, or put on a queue); an exception in it is counted, logged and otherwise ignored.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        udp_port: int | None = 5514,
        tcp_port: int | None = 5514,
        *,
        sources: Mapping[str, str],
        boxes: BlackBoxes | None,
        max_message_bytes: int = 8192,
        on_message: Callable[[SyslogMessage], None] | None = None,
        max_tcp_connections: int = 256,
        tcp_idle_timeout_s: float = 600.0,
        tcp_message_timeout_s: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        """Configure the receiver; nothing listens until :meth:`start`. A port of None is off, 0 ephemeral."""
        self.host = host
        self._want_udp, self._want_tcp = udp_port, tcp_port
        self.boxes = boxes
        self.max_message_bytes = max_message_bytes
        self.on_message = on_message
        self.max_tcp_connections = max_tcp_connections
        self.tcp_idle_timeout_s = tcp_idle_timeout_s
        self.tcp_message_timeout_s = tcp_message_timeout_s
        self.stats = SyslogStats()
        self._clock = clock or SystemClock()
        self._sources: dict[str, str] = {}
        self.set_sources(sources)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[_TcpConnection] = set()
        self._ports: dict[str, int | None] = {"udp": None, "tcp": None}
        self._unknown_logged: set[str] = set()
        self._store_failing: set[str] = set()

    @classmethod
    def from_settings(
        cls,
        settings: SyslogSettings,
        *,
        sources: Mapping[str, str],
        boxes: BlackBoxes | None,
        on_message: Callable[[SyslogMessage], None] | None = None,
        clock: Clock | None = None,
    ) -> SyslogReceiver:
        """Build a receiver from :class:`SyslogSettings`."""
        return cls(
            settings.host,
            settings.udp_port,
            settings.tcp_port,
            sources=sources,
            boxes=boxes,
            max_message_bytes=settings.max_message_bytes,
            on_message=on_message,
            max_tcp_connections=settings.max_tcp_connections,
            tcp_idle_timeout_s=settings.tcp_idle_timeout_s,
            tcp_message_timeout_s=settings.tcp_message_timeout_s,
            clock=clock,
        )

    @property
    def udp_port(self) -> int | None:
        """The UDP port actually bound (None before start or when UDP is off)."""
        return self._ports["udp"]

    @property
    def tcp_port(self) -> int | None:
        """The TCP port actually bound (None before start or when TCP is off)."""
        return self._ports["tcp"]

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._thread is not None and self._thread.is_alive()

    def set_sources(self, sources: Mapping[str, str]) -> None:
        """Replace the source IP -> device id map (takes effect for the next message)."""
        self._sources = {normalize_ip(ip): device for ip, device in sources.items()}

    def device_for(self, source_ip: str) -> str | None:
        """Return the device id that sends from ``source_ip``, or None if it is unknown."""
        return self._sources.get(normalize_ip(source_ip))

    def start(self, timeout_s: float = 5.0) -> None:
        """Bind the listeners and start the loop thread.

        Raises:
            OSError: if a port cannot be bound (nothing is left running).
            RuntimeError: if already running or the loop did not come up within ``timeout_s``.
        """
        if self.running:
            raise RuntimeError("syslog receiver already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name="syslog-receiver", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout_s):
            self.stop()
            raise RuntimeError("syslog receiver did not start in time")
        if failure:
            self._thread.join(timeout_s)
            self._thread = None
            self._ports = {"udp": None, "tcp": None}
            raise failure[0]
        log.info("syslog_listening host=%s udp_port=%s tcp_port=%s", self.host, self.udp_port, self.tcp_port)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close every listener and connection and join the loop thread (at most ``timeout_s``)."""
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("syslog_stop_timeout timeout_s=%s", timeout_s)
        self._thread = None
        self._ports = {"udp": None, "tcp": None}

    def channel_result(self, device_id: str) -> ChannelResult:
        """Report what this passive channel saw of ``device_id`` (silence is not a failure)."""
        dev = self.stats.device(device_id)
        box = self.boxes.get(device_id) if self.boxes is not None else None
        detail = "" if dev.messages else "no syslog received yet"
        if not self.running:
            detail = "syslog receiver not running"
        return ChannelResult(
            channel="syslog",
            ok=True,
            reason="ok",
            latency_ms=0.0,
            detail=detail,
            fields={
                "syslog_messages": dev.messages,
                "syslog_errors": dev.errors,
                "syslog_last_seen": format_time(dev.last_seen) if dev.last_seen else None,
                "blackbox_bytes": box.size_bytes() if box is not None else 0,
            },
        )

    # --- loop thread -------------------------------------------------------------------------

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            try:
                loop.run_until_complete(self._open())
            except Exception as err:  # bind errors (OSError) and bad addresses, re-raised by start()
                failure.append(err)
                loop.run_until_complete(self._close())
                return
            finally:
                ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
        finally:
            loop.close()

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        if self._want_udp is not None:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.host, self._want_udp)
            )
            self._udp = transport
            self._ports["udp"] = transport.get_extra_info("sockname")[1]
        if self._want_tcp is not None:
            self._server = await loop.create_server(
                lambda: _TcpConnection(self), self.host, self._want_tcp, backlog=128
            )
            self._ports["tcp"] = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self._conns):
            conn.abort()
        await asyncio.sleep(0)  # let the transports run their close callbacks

    def _deliver(self, payload: bytes, truncated: bool, source_ip: str, device_id: str) -> None:
        """Parse, count, store and hand on one framed message (runs in the loop thread)."""
        received_at = self._clock.now()
        message = parse_message(
            payload, received_at=received_at, source_ip=source_ip, device_id=device_id, truncated=truncated
        )
        self.stats.record(message)
        if truncated:
            self.stats.bump("oversize")
        if message.format == "raw":
            self.stats.bump("malformed")
        if self.boxes is not None:
            body = payload.rstrip(b"\r\n\x00")
            record = source_ip.encode() + b" " + body + (b" [truncated]" if truncated else b"")
            try:
                self.boxes.get(device_id).append(record, received_at=received_at)
            except (OSError, ValueError) as err:
                self.stats.bump("store_errors")
                if device_id not in self._store_failing:
                    self._store_failing.add(device_id)
                    log.warning("blackbox_write_failed device=%s error=%s", device_id, err)
            else:
                if device_id in self._store_failing:
                    self._store_failing.discard(device_id)
                    log.info("blackbox_write_recovered device=%s", device_id)
        if self.on_message is not None:
            try:
                self.on_message(message)
            except Exception as err:  # a consumer's bug must not stop the receiver
                self.stats.bump("callback_errors")
                log.warning("syslog_callback_failed device=%s error=%r", device_id, err)

    def _unknown(self, source_ip: str) -> None:
        self.stats.bump("dropped_unknown")
        if source_ip not in self._unknown_logged and len(self._unknown_logged) < 256:
            self._unknown_logged.add(source_ip)
            log.warning("syslog_unknown_sender source_ip=%s (dropped; map it to a device)", source_ip)


class _UdpProtocol(asyncio.DatagramProtocol):
    """One datagram is one message (RFC 5426)."""

    def __init__(self, receiver: SyslogReceiver) -> None:
        self.rx = receiver

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        source_ip = normalize_ip(str(addr[0]))
        device_id = self.rx.device_for(source_ip)
        if device_id is None:
            self.rx._unknown(source_ip)
            return
        cap = self.rx.max_message_bytes
        self.rx._deliver(data[:cap], len(data) > cap, source_ip, device_id)

    def error_received(self, exc: Exception) -> None:
        log.debug("syslog_udp_error error=%s", exc)


class _TcpConnection(asyncio.Protocol):
    """One TCP sender: framing per message, an idle timeout and a per-message deadline."""

    def __init__(self, receiver: SyslogReceiver) -> None:
        self.rx = receiver
        self.transport: asyncio.Transport | None = None
        self.framer = TcpFramer(receiver.max_message_bytes)
        self.source_ip = ""
        self.device_id = ""
        self.last_data = 0.0
        self.message_started: float | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.source_ip = normalize_ip(str(transport.get_extra_info("peername")[0]))
        device_id = self.rx.device_for(self.source_ip)
        if device_id is None:
            self.rx._unknown(self.source_ip)
            transport.abort()
            return
        if len(self.rx._conns) >= self.rx.max_tcp_connections:
            self.rx.stats.bump("tcp_rejected")
            limit = self.rx.max_tcp_connections
            log.warning("syslog_tcp_rejected source_ip=%s limit=%s", self.source_ip, limit)
            transport.abort()
            return
        self.transport, self.device_id = transport, device_id
        self.rx._conns.add(self)
        loop = asyncio.get_running_loop()
        self.last_data = loop.time()
        self._arm(self.rx.tcp_idle_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        now = asyncio.get_running_loop().time()
        self.last_data = now
        frames = self.framer.feed(data)
        for frame in frames:
            self.rx._deliver(frame.payload, frame.truncated, self.source_ip, self.device_id)
        if not self.framer.pending:
            self.message_started = None
        elif frames or self.message_started is None:
            self.message_started = now
            due = now + self.rx.tcp_message_timeout_s
            if self.timer is None or self.timer.when() > due:
                self._arm(self.rx.tcp_message_timeout_s)

    def eof_received(self) -> bool | None:
        if self.transport is not None:
            frame = self.framer.flush()
            if frame is not None:
                self.rx._deliver(frame.payload, frame.truncated, self.source_ip, self.device_id)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.rx._conns.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def abort(self) -> None:
        """Drop the connection at once."""
        if self.transport is not None:
            self.transport.abort()

    def _arm(self, delay_s: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(delay_s, self._check_deadlines)

    def _check_deadlines(self) -> None:
        if self.transport is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = self.last_data + self.rx.tcp_idle_timeout_s
        if self.message_started is not None:
            deadline = min(deadline, self.message_started + self.rx.tcp_message_timeout_s)
        if now < deadline:
            self._arm(deadline - now)
            return
        self.rx.stats.bump("tcp_timed_out")
        log.info("syslog_tcp_timeout device=%s source_ip=%s", self.device_id, self.source_ip)
        self.abort()
