"""Simulated SNMP on every device: one pysnmp command responder for the fleet, one UDP socket per device.

Nobody documents SNMP on the A20/A30/MVC: what the devices answer here is the MIB-2 system
group and the IF-MIB ``ifTable`` any agent has, plus a ``sysObjectID`` under Yealink's
enterprise number ``1.3.6.1.4.1.37459`` with a MADE-UP product branch (``.2.20``, ``.2.30``,
``.2.86``). A pysnmp engine costs ~0.15 s and ~1 MB, so the fleet shares ONE engine (one v2c
community, one v3 authPriv SHA/AES user, one engine ID) and gives each device its own UDP
transport on its own loopback address; the transport a request came in on says which device's
MIB answers. Faults per device: ``offline`` (socket closed), ``hang`` (requests dropped),
``garbage`` (random bytes answered), ``malformed`` (well-formed replies with wrong value types
and OIDs that do not increase). Everything runs on the fleet's asyncio loop::

    hub = SnmpHub(SnmpCredentials.from_seed(0))
    await hub.astart()
    agent = SnmpAgent(hub, "127.77.0.1", 0, mib=lambda: device_mib(...))
    await agent.start()          # agent.port is the bound port
    await agent.set_modes({"hang"})
    await agent.stop(); await hub.astop()
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import random
import socket
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pyasn1.type import univ
from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.carrier.asyncio.dispatch import AsyncioDispatcher
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.proto import rfc1902, rfc1905

__all__ = [
    "SNMP_FAULTS",
    "YEALINK_ENTERPRISE",
    "Interface",
    "SnmpAgent",
    "SnmpCredentials",
    "SnmpHub",
    "device_mib",
]

log = logging.getLogger("hezo.simulator.snmp")
SNMP_FAULTS = ("offline", "hang", "garbage", "malformed")
YEALINK_ENTERPRISE = (1, 3, 6, 1, 4, 1, 37459)
#: made-up product branches under Yealink's enterprise number (no Yealink document names them)
PRODUCT_BRANCH = {"A20": (2, 20), "A30": (2, 30), "MVC": (2, 86)}
SYSTEM = (1, 3, 6, 1, 2, 1, 1)
IF_NUMBER = (1, 3, 6, 1, 2, 1, 2, 1, 0)
IF_ENTRY = (1, 3, 6, 1, 2, 1, 2, 2, 1)
MAX_DATAGRAM = 65_507
GARBAGE_BYTES = 512
TIMETICKS_MOD = 2**32
Oid = tuple[int, ...]
Mib = dict[Oid, Any]


@dataclass(frozen=True)
class SnmpCredentials:
    """The fleet's SNMP credentials: a v2c community and a v3 authPriv (SHA/AES-128) user."""

    community: str
    user: str
    auth_key: str
    priv_key: str

    @classmethod
    def from_seed(cls, seed: int) -> SnmpCredentials:
        """Derive the credentials from the fleet seed (the same seed gives the same ones)."""
        rng = random.Random(f"hezo-sim:{seed}:snmp")
        alphabet = string.ascii_letters + string.digits

        def word(n: int) -> str:
            return "".join(rng.choice(alphabet) for _ in range(n))

        return cls(community=f"sim-{word(10)}", user="hezo-sim", auth_key=word(16), priv_key=word(16))

    def __repr__(self) -> str:
        """Show the user only."""
        return f"SnmpCredentials(user={self.user!r}, <community and keys hidden>)"


@dataclass(frozen=True)
class Interface:
    """One ``ifTable`` row."""

    index: int
    descr: str
    if_type: int
    mac: str
    speed_bps: int
    up: bool


def device_mib(
    *,
    model: str,
    firmware: str,
    hostname: str,
    location: str,
    uptime_s: int,
    interfaces: Iterable[Interface],
) -> Mib:
    """Return one device's MIB view: the system group, ``ifNumber`` and ``ifTable``."""
    rows = list(interfaces)
    kind = "MVC Teams Rooms system" if model == "MVC" else f"MeetingBar {model}"
    mib: Mib = {
        (*SYSTEM, 1, 0): _text(f"Yealink {kind}, firmware {firmware}"),
        (*SYSTEM, 2, 0): rfc1902.ObjectIdentifier(YEALINK_ENTERPRISE + PRODUCT_BRANCH.get(model, (2, 0))),
        (*SYSTEM, 3, 0): rfc1902.TimeTicks((uptime_s * 100) % TIMETICKS_MOD),
        (*SYSTEM, 4, 0): _text("IT helpdesk"),
        (*SYSTEM, 5, 0): _text(hostname),
        (*SYSTEM, 6, 0): _text(location),
        (*SYSTEM, 7, 0): rfc1902.Integer32(72),
        IF_NUMBER: rfc1902.Integer32(len(rows)),
    }
    for row in rows:
        mac = bytes.fromhex(row.mac.replace(":", "")) if row.mac else b""
        columns: dict[int, Any] = {
            1: rfc1902.Integer32(row.index),
            2: _text(row.descr),
            3: rfc1902.Integer32(row.if_type),
            4: rfc1902.Integer32(65536 if row.if_type == 24 else 1500),
            5: rfc1902.Gauge32(row.speed_bps),
            6: rfc1902.OctetString(mac),
            7: rfc1902.Integer32(1),
            8: rfc1902.Integer32(1 if row.up else 2),
        }
        for column, value in columns.items():
            mib[(*IF_ENTRY, column, row.index)] = value
    return mib


def _text(value: str) -> rfc1902.OctetString:
    """A DisplayString as UTF-8 bytes (room names are Polish)."""
    return rfc1902.OctetString(value.encode("utf-8"))


def _malformed(mib: Mib) -> Mib:
    """A hostile view: every value as an OCTET STRING of binary bytes (well-formed BER, wrong types)."""
    return {
        oid: rfc1902.OctetString(b"\xff\x00" + bytes(str(value), "utf-8")[:8]) for oid, value in mib.items()
    }


class _FleetMib:
    """The MIB instrumentation pysnmp's responders call: dispatches to the device a request came to."""

    def __init__(self, hub: SnmpHub) -> None:
        self._hub = hub

    def _view(self, context_: Mapping[str, Any]) -> tuple[SnmpAgent | None, Mib, list[Oid]]:
        snmp_engine = context_["snmpEngine"]
        ctx = snmp_engine.observer.get_execution_context("rfc3412.receiveMessage:request")
        agent = self._hub.agent_for(tuple(ctx["transportDomain"]))
        if agent is None:
            return None, {}, []
        mib = agent.current_mib()
        return agent, mib, sorted(mib)

    def _allowed(self, oid: Oid, value: Any, context_: Mapping[str, Any]) -> bool:
        check = context_.get("acFun")
        if check is None:
            return True
        # verify_access returns True when the OID is outside the view; raises when access is denied
        return not check("read", (univ.ObjectIdentifier(oid), value), **context_)

    def read_variables(self, *var_binds: tuple[Any, Any], **context_: Any) -> list[tuple[Any, Any]]:
        """GET: the value of each OID, or ``noSuchObject``/``noSuchInstance``."""
        _agent, mib, _ = self._view(context_)
        out: list[tuple[Any, Any]] = []
        for name, _value in var_binds:
            oid = tuple(name)
            value = mib.get(oid)
            if value is None or not self._allowed(oid, value, context_):
                known_object = any(key[:-1] == oid[:-1] for key in mib) if len(oid) > 1 else False
                value = rfc1905.noSuchInstance if known_object else rfc1905.noSuchObject
            out.append((univ.ObjectIdentifier(oid), value))
        return out

    def read_next_variables(self, *var_binds: tuple[Any, Any], **context_: Any) -> list[tuple[Any, Any]]:
        """GETNEXT (and each GETBULK step): the next OID in order, or ``endOfMibView``."""
        agent, mib, keys = self._view(context_)
        hostile = agent is not None and "malformed" in agent.modes
        out: list[tuple[Any, Any]] = []
        for name, _value in var_binds:
            oid = tuple(name)
            if hostile and keys:  # answer the OID asked for again: a walk that never advances
                out.append((univ.ObjectIdentifier(oid), mib[keys[0]]))
                continue
            at = bisect.bisect_right(keys, oid)
            while at < len(keys) and not self._allowed(keys[at], mib[keys[at]], context_):
                at += 1
            if at < len(keys):
                out.append((univ.ObjectIdentifier(keys[at]), mib[keys[at]]))
            else:
                out.append((univ.ObjectIdentifier(oid), rfc1905.endOfMibView))
        return out

    def write_variables(self, *var_binds: tuple[Any, Any], **context_: Any) -> list[tuple[Any, Any]]:
        """SET is not served (no SET responder is registered); kept for pysnmp's interface."""
        raise NotImplementedError("the simulated devices are read-only")


class _DeviceUdp(udp.UdpAsyncioTransport):
    """One device's UDP transport: drops (``hang``) or answers garbage before pysnmp sees a request."""

    def __init__(self, agent: SnmpAgent, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._agent = agent
        self._rng = random.Random(f"hezo-sim:snmp-garbage:{agent.host}")

    def datagram_received(self, datagram: bytes, transportAddress: Any) -> None:
        """Pass a request to the engine unless a fault says otherwise."""
        modes = self._agent.modes
        if "hang" in modes or len(datagram) > MAX_DATAGRAM:
            return
        if "garbage" in modes:
            if self.transport is not None:
                self.transport.sendto(b"\x30\x82\xff" + self._rng.randbytes(GARBAGE_BYTES), transportAddress)
            return
        super().datagram_received(datagram, transportAddress)


class SnmpHub:
    """One pysnmp engine (credentials, responders) serving the SNMP agents of a whole fleet."""

    def __init__(self, credentials: SnmpCredentials, *, engine_id: bytes | None = None) -> None:
        """Prepare the hub; the engine is built on the running loop by :meth:`astart`."""
        self.credentials = credentials
        digest = hashlib.sha256(f"hezo-sim:{credentials.user}:{credentials.community}".encode()).digest()
        # RFC 3411 engine ID: enterprise (37459) with the high bit, format 4 (text), 8 bytes
        self.engine_id = engine_id or (0x80009253).to_bytes(4, "big") + b"\x04" + digest[:8]
        self._engine: Any = None
        self._agents: dict[Oid, SnmpAgent] = {}
        self._next_domain = 1

    @property
    def running(self) -> bool:
        """Whether :meth:`astart` ran and :meth:`astop` did not."""
        return self._engine is not None

    async def astart(self) -> None:
        """Build the engine on the running loop: credentials, VACM views, GET/GETNEXT/GETBULK."""
        if self._engine is not None:
            return
        loop = asyncio.get_running_loop()
        snmp_engine = engine.SnmpEngine(snmpEngineID=rfc1902.OctetString(self.engine_id))
        snmp_engine.register_transport_dispatcher(AsyncioDispatcher(loop=loop))
        creds = self.credentials
        config.add_v1_system(snmp_engine, "hezo-sim-area", creds.community)
        config.add_vacm_user(snmp_engine, 2, "hezo-sim-area", "noAuthNoPriv", (1, 3, 6, 1))
        config.add_v3_user(
            snmp_engine,
            creds.user,
            config.USM_AUTH_HMAC96_SHA,
            creds.auth_key,
            config.USM_PRIV_CFB128_AES,
            creds.priv_key,
        )
        config.add_vacm_user(snmp_engine, 3, creds.user, "authPriv", (1, 3, 6, 1))
        snmp_context = context.SnmpContext(snmp_engine)
        snmp_context.unregister_context_name(b"")
        snmp_context.register_context_name(b"", _FleetMib(self))
        cmdrsp.GetCommandResponder(snmp_engine, snmp_context)
        cmdrsp.NextCommandResponder(snmp_engine, snmp_context)
        cmdrsp.BulkCommandResponder(snmp_engine, snmp_context)
        self._engine = snmp_engine

    async def astop(self) -> None:
        """Close every transport and the engine's dispatcher."""
        for agent in list(self._agents.values()):
            await agent.stop()
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None

    def agent_for(self, domain: Oid) -> SnmpAgent | None:
        """The device agent whose transport is registered under ``domain``."""
        return self._agents.get(domain)

    def _attach(self, agent: SnmpAgent, sock: socket.socket) -> Oid:
        """Register ``agent``'s transport (on its bound socket) with the engine; return its domain."""
        if self._engine is None:
            raise RuntimeError("the SNMP hub is not started")
        domain = (*udp.DOMAIN_NAME, self._next_domain)
        self._next_domain += 1
        transport = _DeviceUdp(agent, asyncio.get_running_loop()).open_server_mode(sock=sock)
        config.add_transport(self._engine, domain, transport)
        self._agents[domain] = agent
        return domain

    def _detach(self, domain: Oid) -> None:
        self._agents.pop(domain, None)
        if self._engine is None:
            return
        transport = config.get_transport(self._engine, domain)
        if transport is not None:
            self._engine.transport_dispatcher.unregister_transport(domain)
            transport.close_transport()


class SnmpAgent:
    """One device's SNMP agent on ``host:port`` (UDP), served by a :class:`SnmpHub`."""

    def __init__(self, hub: SnmpHub, host: str, port: int, *, mib: Callable[[], Mib]) -> None:
        """Prepare the agent; nothing listens until :meth:`start`.

        Raises:
            ValueError: a port out of range.
        """
        if not 0 <= port <= 65535:
            raise ValueError("port must be 0..65535")
        self.hub = hub
        self.host = host
        self.port = port
        self.modes: frozenset[str] = frozenset()
        self.requests_seen = 0
        self._mib = mib
        self._domain: Oid | None = None

    def current_mib(self) -> Mib:
        """The MIB as the device shows it right now (wrong types under ``malformed``)."""
        self.requests_seen += 1
        mib = self._mib()
        return _malformed(mib) if "malformed" in self.modes else mib

    async def start(self) -> None:
        """Bind the UDP port (an ephemeral one resolved here) unless ``offline`` is set.

        Raises:
            OSError: the address or port cannot be bound.
            RuntimeError: the hub is not started.
        """
        if "offline" not in self.modes:
            self._listen()

    def _listen(self) -> None:
        if self._domain is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._domain = self.hub._attach(self, sock)

    def _unlisten(self) -> None:
        if self._domain is not None:
            self.hub._detach(self._domain)
            self._domain = None

    async def set_modes(self, modes: Iterable[str]) -> None:
        """Make the agent's faults exactly ``modes`` (a subset of :data:`SNMP_FAULTS`).

        Raises:
            ValueError: an unknown mode.
        """
        wanted = frozenset(modes)
        unknown = wanted - set(SNMP_FAULTS)
        if unknown:
            raise ValueError(f"unknown SNMP fault {sorted(unknown)}; known: {', '.join(SNMP_FAULTS)}")
        self.modes = wanted
        if "offline" in wanted:
            self._unlisten()
            return
        try:
            self._listen()
        except OSError as err:
            log.error("snmp=%s:%s cannot listen: %s", self.host, self.port, err)

    async def stop(self) -> None:
        """Close the socket (the hub stays up for the other devices)."""
        self._unlisten()
