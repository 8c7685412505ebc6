"""An SNMP v2c trap receiver: a trap from a device is a hint to confirm its state now.

A plain asyncio UDP endpoint on the shared :class:`~collectors.transports.snmp.SnmpLoop`
decodes each datagram with pysnmp's v2c message model. Traps (and informs, which are
acknowledged) with a known community are handed to ``on_trap(source_ip, trap_oid, varbinds)``
on the receiver's own dispatcher thread, so a slow callback never stalls SNMP polling.
Malformed, oversized, unknown-community and non-v2c datagrams are counted in :attr:`stats` and
dropped; nothing a sender does stops the receiver. The agent maps ``source_ip`` to a device
and schedules an immediate confirm poll: a trap alone never changes a device's state.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import queue
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields
from typing import Any

from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import api
from pysnmp.proto.api import v2c

from collectors.transports.snmp import SnmpLoop, SnmpValue, to_python
from config.channels import TRAP_PORT, TrapReceiverSettings

__all__ = [
    "OID_SNMP_TRAP_OID",
    "OID_SYS_UPTIME",
    "TRAP_PORT",
    "Trap",
    "TrapCallback",
    "TrapDropped",
    "TrapReceiver",
    "TrapReceiverSettings",
    "TrapStats",
    "parse_trap",
]

log = logging.getLogger(__name__)

OID_SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
OID_SNMP_TRAP_OID = "1.3.6.1.6.3.1.1.4.1.0"
#: ``on_trap(source_ip, trap_oid, varbinds)``; varbinds exclude sysUpTime.0 and snmpTrapOID.0
TrapCallback = Callable[[str, str, list[tuple[str, SnmpValue]]], None]


@dataclass(frozen=True, slots=True)
class TrapStats:
    """Counters of what the receiver saw (a snapshot)."""

    received: int = 0
    delivered: int = 0
    malformed: int = 0
    oversized: int = 0
    unsupported: int = 0
    unknown_community: int = 0
    queue_full: int = 0
    callback_errors: int = 0


@dataclass(frozen=True, slots=True)
class Trap:
    """One decoded v2c notification."""

    community: bytes
    inform: bool
    trap_oid: str
    uptime_ticks: int
    varbinds: list[tuple[str, SnmpValue]]


class TrapDropped(ValueError):
    """A datagram the receiver drops; ``kind`` names its :class:`TrapStats` counter."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def parse_trap(data: bytes) -> tuple[Trap, Any]:
    """Decode a v2c SNMPv2-Trap or InformRequest; returns the trap and the decoded message.

    Raises:
        TrapDropped: ``kind`` is ``malformed`` or ``unsupported`` (v1, v3, other PDUs).
    """
    try:
        version = int(api.decodeMessageVersion(data))
    except Exception:
        raise TrapDropped("malformed") from None
    if version != api.SNMP_VERSION_2C:
        raise TrapDropped("unsupported")
    try:
        message, rest = decoder.decode(data, asn1Spec=v2c.Message())
        if rest:
            raise TrapDropped("malformed")
        community = bytes(v2c.apiMessage.get_community(message))
        pdu = v2c.apiMessage.get_pdu(message)
        inform = pdu.isSameTypeWith(v2c.InformRequestPDU())
        if not inform and not pdu.isSameTypeWith(v2c.SNMPv2TrapPDU()):
            raise TrapDropped("unsupported")
        pairs = [(".".join(str(n) for n in oid), value) for oid, value in v2c.apiPDU.get_varbinds(pdu)]
    except TrapDropped:
        raise
    except Exception:
        raise TrapDropped("malformed") from None
    if len(pairs) < 2 or pairs[0][0] != OID_SYS_UPTIME or pairs[1][0] != OID_SNMP_TRAP_OID:
        raise TrapDropped("malformed")
    try:
        uptime, trap_oid = to_python(pairs[0][1]), to_python(pairs[1][1])
        varbinds = [(oid, to_python(value)) for oid, value in pairs[2:]]
    except Exception:
        raise TrapDropped("malformed") from None
    if not isinstance(uptime, int) or not isinstance(trap_oid, str) or not trap_oid[:1].isdigit():
        raise TrapDropped("malformed")
    return Trap(community, inform, trap_oid, uptime, varbinds), message


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, receiver: TrapReceiver) -> None:
        self.receiver = receiver

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            self.receiver._datagram(data, addr)
        except Exception:  # never let one datagram end the endpoint
            log.exception("snmp trap receiver: unexpected error on a datagram")

    def error_received(self, exc: Exception) -> None:
        log.debug("snmp trap receiver: socket error %s", type(exc).__name__)


class TrapReceiver:
    """Receive v2c traps on ``host:port`` and call ``on_trap`` for each from a known community."""

    def __init__(
        self,
        on_trap: TrapCallback,
        communities: Collection[str],
        *,
        host: str = "127.0.0.1",
        port: int = TRAP_PORT,
        max_datagram_bytes: int = 8192,
        queue_size: int = 1000,
        loop: SnmpLoop | None = None,
    ) -> None:
        if not communities or not all(communities):
            raise ValueError("give at least one non-empty community")
        self.on_trap = on_trap
        self.host, self.port = host, port
        self.max_datagram_bytes = max_datagram_bytes
        self._communities = [c.encode("utf-8") for c in communities]
        self._loop = loop or SnmpLoop.shared()
        self._queue: queue.Queue[tuple[str, str, list[tuple[str, SnmpValue]]] | None] = queue.Queue(
            queue_size
        )
        self._counts: dict[str, int] = {f.name: 0 for f in fields(TrapStats)}
        self._lock = threading.Lock()
        self._transport: asyncio.DatagramTransport | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(
        cls,
        on_trap: TrapCallback,
        settings: TrapReceiverSettings,
        community: str,
        loop: SnmpLoop | None = None,
    ) -> TrapReceiver:
        """Build a receiver from its settings and the community read with ``read_snmp_secrets``."""
        return cls(
            on_trap,
            [community],
            host=settings.host,
            port=settings.port,
            max_datagram_bytes=settings.max_datagram_bytes,
            loop=loop,
        )

    def __repr__(self) -> str:
        return f"TrapReceiver({self.host}:{self.port}, <communities hidden>)"

    @property
    def stats(self) -> TrapStats:
        """A snapshot of the counters."""
        with self._lock:
            return TrapStats(**self._counts)

    def _count(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] += 1

    def start(self) -> TrapReceiver:
        """Bind the UDP socket (port 0 picks a free one, see :attr:`port`) and start dispatching.

        Raises:
            OSError: the address cannot be bound (in use, or port 162 without privileges).
        """
        if self._transport is not None:
            return self

        async def bind() -> asyncio.DatagramTransport:
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _Protocol(self), local_addr=(self.host, self.port)
            )
            return transport

        try:
            self._transport = self._loop.run(bind(), 5.0)
        except OSError as err:
            raise OSError(
                f"snmp trap receiver cannot listen on {self.host}:{self.port}: {err.strerror}"
            ) from err
        self.port = int(self._transport.get_extra_info("sockname")[1])
        self._thread = threading.Thread(target=self._dispatch, name=f"snmp-traps-{self.port}", daemon=True)
        self._thread.start()
        return self

    def _datagram(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        """Runs on the loop thread: count, decode, check the community, queue for the callback."""
        self._count("received")
        if len(data) > self.max_datagram_bytes:
            self._count("oversized")
            return
        try:
            trap, message = parse_trap(data)
        except TrapDropped as drop:
            self._count(drop.kind)
            return
        if not any(hmac.compare_digest(trap.community, known) for known in self._communities):
            self._count("unknown_community")
            return
        if trap.inform and self._transport is not None:
            response = v2c.apiMessage.get_response(message)
            self._transport.sendto(encoder.encode(response), addr)
        try:
            self._queue.put_nowait((str(addr[0]), trap.trap_oid, trap.varbinds))
        except queue.Full:
            self._count("queue_full")

    def _dispatch(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.on_trap(*item)
            except Exception as err:
                self._count("callback_errors")
                log.warning("snmp trap callback failed source=%s error=%s", item[0], type(err).__name__)
            else:
                self._count("delivered")

    def stop(self) -> None:
        """Close the socket and end the dispatcher thread (queued traps are still delivered)."""
        transport, self._transport = self._transport, None
        if transport is not None and self._loop.running:
            self._loop.loop.call_soon_threadsafe(transport.close)
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(5.0)

    def __enter__(self) -> TrapReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
