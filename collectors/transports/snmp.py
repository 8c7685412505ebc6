"""SNMP v2c/v3 over UDP (pysnmp 7, asyncio), bounded in time and rows.

Nobody documents SNMP on the A20/A30/MVC, so every setting here is ``assumed``; the MIB-2
system and interface groups are what any agent answers (Yealink's enterprise subtree
``1.3.6.1.4.1.37459`` is third-party knowledge, not used for health). All transports share
one asyncio event loop in one daemon thread (:class:`SnmpLoop`): callers block on a future
with a timeout, so many devices are polled without a thread each. pysnmp's errors are
translated here, once, into :mod:`collectors.errors`. Over UDP a refused port and a silent
device look the same (and so does a wrong v2c community): both are ``DeviceTimeout``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Coroutine, Sequence
from typing import Any, Literal, TypeVar

from pyasn1.error import PyAsn1Error
from pyasn1.type import univ
from pysnmp.error import PySnmpError
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    UdpTransportTarget,
    UsmUserData,
    bulk_cmd,
    get_cmd,
    usmAesCfb128Protocol,
    usmHMACSHAAuthProtocol,
    usmNoPrivProtocol,
)
from pysnmp.proto import errind, rfc1902, rfc1905

from collectors.errors import AuthFailed, DeviceTimeout, DeviceUnreachable, UnexpectedResponse
from collectors.models import ChannelResult
from collectors.transports.snmp_loop import SnmpLoop
from collectors.transports.snmp_settings import (
    SNMP_PORT,
    SnmpChannel,
    SnmpSecrets,
    read_snmp_secrets,
)

__all__ = [
    "IF_OPER_STATUS",
    "OID_IF_DESCR",
    "OID_IF_OPER_STATUS",
    "OID_SYS_DESCR",
    "OID_SYS_NAME",
    "OID_SYS_OBJECT_ID",
    "OID_SYS_UPTIME",
    "SNMP_PORT",
    "YEALINK_ENTERPRISE_OID",
    "SnmpChannel",
    "SnmpLoop",
    "SnmpSecrets",
    "SnmpTransport",
    "SnmpValue",
    "read_snmp_secrets",
    "to_python",
]

OID_SYS_DESCR = "1.3.6.1.2.1.1.1.0"
OID_SYS_OBJECT_ID = "1.3.6.1.2.1.1.2.0"
OID_SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
OID_SYS_NAME = "1.3.6.1.2.1.1.5.0"
OID_IF_DESCR = "1.3.6.1.2.1.2.2.1.2"
OID_IF_OPER_STATUS = "1.3.6.1.2.1.2.2.1.8"
#: Yealink's enterprise number (third-party knowledge: not in any Yealink document)
YEALINK_ENTERPRISE_OID = "1.3.6.1.4.1.37459"
IF_OPER_STATUS = {
    1: "up",
    2: "down",
    3: "testing",
    4: "unknown",
    5: "dormant",
    6: "notPresent",
    7: "lowerLayerDown",
}
MAX_TEXT_CHARS = 1024
BULK_REPETITIONS = 25

SnmpValue = int | str
T = TypeVar("T")

_AUTH_FAILURES = (
    errind.UnknownUserName,
    errind.WrongDigest,
    errind.AuthenticationError,
    errind.AuthenticationFailure,
    errind.DecryptionError,
    errind.UnknownSecurityName,
    errind.UnsupportedSecurityLevel,
)


# --- values -----------------------------------------------------------------------------------


def to_python(value: Any) -> SnmpValue:
    """Turn a pysnmp value into ``int`` or ``str`` (OIDs dotted, binary strings as ``0x…`` hex).

    Raises:
        UnexpectedResponse: ``noSuchObject``/``noSuchInstance``/``endOfMibView`` or an unknown type.
    """
    if isinstance(value, rfc1905.NoSuchObject | rfc1905.NoSuchInstance | rfc1905.EndOfMibView):
        name = type(value).__name__
        raise UnexpectedResponse(f"{name[0].lower()}{name[1:]}")
    if isinstance(value, rfc1902.IpAddress):
        return ".".join(str(b) for b in bytes(value)[:4])
    if isinstance(value, univ.Integer):
        return int(value)
    if isinstance(value, univ.ObjectIdentifier):
        return ".".join(str(n) for n in value)
    if isinstance(value, univ.OctetString):
        raw = bytes(value)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return "0x" + raw[: MAX_TEXT_CHARS // 2].hex()
        if any(ord(c) < 32 and c not in "\t\r\n" for c in text.rstrip("\x00")):
            return "0x" + raw[: MAX_TEXT_CHARS // 2].hex()
        return text.rstrip("\x00")[:MAX_TEXT_CHARS]
    raise UnexpectedResponse(f"unsupported value type {type(value).__name__}")


def _oid(text: str) -> tuple[int, ...]:
    try:
        parts = tuple(int(p) for p in text.strip(".").split("."))
    except ValueError:
        raise ValueError(f"not a numeric OID: {text!r}") from None
    if len(parts) < 2:
        raise ValueError(f"not a numeric OID: {text!r}")
    return parts


# --- the transport ----------------------------------------------------------------------------


class SnmpTransport:
    """SNMP GET and WALK against one device, on the shared :class:`SnmpLoop`; a channel probe."""

    name = "snmp"

    def __init__(
        self,
        host: str,
        port: int = SNMP_PORT,
        *,
        version: Literal["2c", "3"] = "2c",
        community: str | None = None,
        user: str | None = None,
        auth_key: str | None = None,
        priv_key: str | None = None,
        timeout_s: float = 2.0,
        retries: int = 1,
        max_rows: int = 256,
        loop: SnmpLoop | None = None,
    ) -> None:
        if version == "2c" and not community:
            raise ValueError("SNMP v2c needs a community")
        if version == "3" and (not user or not auth_key or len(auth_key) < 8):
            raise ValueError("SNMP v3 needs a user and an auth key of at least 8 characters")
        if priv_key is not None and len(priv_key) < 8:
            raise ValueError("SNMP v3 priv key needs at least 8 characters")
        if timeout_s <= 0 or retries < 0 or max_rows < 1:
            raise ValueError("need timeout_s > 0, retries >= 0, max_rows >= 1")
        self.host, self.port, self.version = host, port, version
        self.timeout_s, self.retries, self.max_rows = timeout_s, retries, max_rows
        self._loop = loop or SnmpLoop.shared()
        self._source = f"snmp {host}:{port}"
        self._auth: CommunityData | UsmUserData
        if version == "2c":
            self._auth = CommunityData(community, mpModel=1)
            self._engine_key = "v2c"
        else:
            self._auth = UsmUserData(
                user,
                authKey=auth_key,
                privKey=priv_key,
                authProtocol=usmHMACSHAAuthProtocol,
                privProtocol=usmAesCfb128Protocol if priv_key else usmNoPrivProtocol,
            )
            digest = hashlib.sha256(f"{user}\0{auth_key}\0{priv_key or ''}".encode()).hexdigest()
            self._engine_key = f"v3:{digest}"
        self._target: UdpTransportTarget | None = None

    @classmethod
    def from_settings(
        cls, host: str, settings: SnmpChannel, secrets: SnmpSecrets, loop: SnmpLoop | None = None
    ) -> SnmpTransport:
        """Build a transport from a profile's :class:`SnmpChannel` and its resolved secrets."""
        return cls(
            host,
            settings.port,
            version=settings.version,
            community=secrets.community,
            user=settings.user,
            auth_key=secrets.auth_key,
            priv_key=secrets.priv_key,
            timeout_s=settings.timeout_s,
            retries=settings.retries,
            max_rows=settings.max_rows,
            loop=loop,
        )

    def __repr__(self) -> str:
        return f"SnmpTransport({self.host}:{self.port}, v{self.version}, <secrets hidden>)"

    @property
    def request_budget_s(self) -> float:
        """The longest one request may take: every attempt timed out, plus scheduling slack."""
        return self.timeout_s * (self.retries + 1) + 0.5

    # --- running requests on the loop ---

    def _call(self, coro: Coroutine[Any, Any, T], budget_s: float) -> T:
        try:
            return self._loop.run(coro, budget_s)
        except TimeoutError:
            raise DeviceTimeout(f"{self._source}: no answer within {budget_s:g} s") from None

    async def _ensure_target(self) -> UdpTransportTarget:
        if self._target is None:
            try:
                self._target = await UdpTransportTarget.create(
                    (self.host, self.port), timeout=self.timeout_s, retries=self.retries
                )
            except Exception as err:  # pysnmp wraps DNS and address errors in PySnmpError
                raise DeviceUnreachable(f"{self._source}: cannot resolve the address") from err
        return self._target

    def _check(self, error_indication: Any, error_status: Any, error_index: Any) -> None:
        """Translate pysnmp's error indication / PDU error status, once."""
        if error_indication:
            what = type(error_indication).__name__
            if isinstance(error_indication, errind.RequestTimedOut):
                tries = self.retries + 1
                raise DeviceTimeout(f"{self._source}: no answer ({tries} x {self.timeout_s:g} s)")
            if isinstance(error_indication, _AUTH_FAILURES):
                raise AuthFailed(f"{self._source}: v3 credentials rejected ({what})")
            raise UnexpectedResponse(f"{self._source}: {what}: {str(error_indication)[:80]}")
        if error_status and int(error_status) != 0:
            status = error_status.prettyPrint() if hasattr(error_status, "prettyPrint") else error_status
            if str(status) in ("authorizationError", "noAccess"):
                raise AuthFailed(f"{self._source}: access denied ({status})")
            raise UnexpectedResponse(f"{self._source}: error status {status} at index {error_index}")

    async def _send(self, request: Coroutine[Any, Any, tuple[Any, Any, Any, Any]]) -> Sequence[Any]:
        """Await one pysnmp request and translate whatever it reports, once."""
        try:
            error_indication, error_status, error_index, var_binds = await request
        except OSError as err:
            raise DeviceUnreachable(f"{self._source}: {(err.strerror or str(err)).lower()}") from err
        except (PySnmpError, PyAsn1Error) as err:
            raise UnexpectedResponse(f"{self._source}: undecodable answer ({type(err).__name__})") from err
        self._check(error_indication, error_status, error_index)
        return tuple(var_binds)

    def _value(self, oid: str, value: Any) -> SnmpValue:
        try:
            return to_python(value)
        except UnexpectedResponse as err:
            raise UnexpectedResponse(f"{self._source}: {oid}: {err}") from None

    async def _get(self, oids: Sequence[str]) -> dict[str, SnmpValue]:
        target = await self._ensure_target()
        engine = self._loop.engine(self._engine_key)
        request = [ObjectType(ObjectIdentity(o)) for o in oids]
        var_binds = await self._send(
            get_cmd(engine, self._auth, target, ContextData(), *request, lookupMib=False)
        )
        values: dict[str, SnmpValue] = {}
        for asked, var_bind in zip(oids, var_binds, strict=False):
            name = ".".join(str(n) for n in var_bind[0])
            if name != asked:
                raise UnexpectedResponse(f"{self._source}: asked {asked}, got {name[:60]}")
            values[name] = self._value(name, var_bind[1])
        if len(values) != len(oids):
            raise UnexpectedResponse(f"{self._source}: {len(values)} values for {len(oids)} OIDs")
        return values

    async def _walk(
        self, root: tuple[int, ...], max_rows: int, deadline: float
    ) -> list[tuple[str, SnmpValue]]:
        target = await self._ensure_target()
        engine = self._loop.engine(self._engine_key)
        rows: list[tuple[str, SnmpValue]] = []
        cursor = root
        while len(rows) < max_rows:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeviceTimeout(f"{self._source}: walk not complete in time ({len(rows)} rows)")
            wanted = min(BULK_REPETITIONS, max_rows - len(rows))
            request = ObjectType(ObjectIdentity(".".join(map(str, cursor))))
            bulk = bulk_cmd(engine, self._auth, target, ContextData(), 0, wanted, request, lookupMib=False)
            try:
                var_binds = await asyncio.wait_for(self._send(bulk), left)
            except TimeoutError:
                raise DeviceTimeout(f"{self._source}: walk not complete in time ({len(rows)} rows)") from None
            if not var_binds:
                return rows
            for var_bind in var_binds:
                oid = tuple(int(n) for n in var_bind[0])
                value = var_bind[1]
                if oid[: len(root)] != root or isinstance(value, rfc1905.EndOfMibView):
                    return rows
                if oid <= cursor:
                    raise UnexpectedResponse(f"{self._source}: walk OIDs not increasing")
                name = ".".join(map(str, oid))
                rows.append((name, self._value(name, value)))
                cursor = oid
                if len(rows) >= max_rows:
                    break
        return rows

    # --- public API ---

    def get(self, oids: Sequence[str]) -> dict[str, SnmpValue]:
        """GET the given numeric OIDs; returns ``{oid: value}``.

        Raises:
            DeviceTimeout: no answer (also a wrong v2c community or a closed port).
            DeviceUnreachable: the address cannot be resolved or the network refuses to send.
            AuthFailed: v3 user unknown or wrong key.
            UnexpectedResponse: ``noSuchObject`` and the like, a PDU error or a malformed answer.
        """
        if not oids:
            return {}
        normalized = list(dict.fromkeys(".".join(map(str, _oid(o))) for o in oids))
        return self._call(self._get(normalized), self.request_budget_s)

    def walk(
        self, oid: str, max_rows: int | None = None, deadline_s: float | None = None
    ) -> list[tuple[str, SnmpValue]]:
        """WALK the subtree under ``oid`` (GETBULK), at most ``max_rows`` rows within ``deadline_s``.

        Raises:
            DeviceTimeout, DeviceUnreachable, AuthFailed, UnexpectedResponse: as for :meth:`get`;
                also ``UnexpectedResponse`` when the agent's OIDs do not increase.
        """
        rows_cap = self.max_rows if max_rows is None else max_rows
        if rows_cap < 1:
            raise ValueError("max_rows must be at least 1")
        budget_s = 3 * self.request_budget_s if deadline_s is None else deadline_s
        deadline = time.monotonic() + budget_s
        return self._call(self._walk(_oid(oid), rows_cap, deadline), budget_s + 0.5)

    def system(self) -> dict[str, SnmpValue]:
        """The MIB-2 system group: ``sys_descr``, ``sys_object_id``, ``sys_uptime_s``, ``sys_name``.

        Raises:
            DeviceTimeout, DeviceUnreachable, AuthFailed, UnexpectedResponse: as for :meth:`get`.
        """
        got = self.get([OID_SYS_DESCR, OID_SYS_OBJECT_ID, OID_SYS_UPTIME, OID_SYS_NAME])
        uptime, object_id = got[OID_SYS_UPTIME], got[OID_SYS_OBJECT_ID]
        if not isinstance(uptime, int) or not isinstance(object_id, str) or not object_id[:1].isdigit():
            raise UnexpectedResponse(f"{self._source}: sysUpTime or sysObjectID of the wrong type")
        return {
            "sys_descr": str(got[OID_SYS_DESCR]),
            "sys_object_id": object_id,
            "sys_uptime_s": uptime // 100,
            "sys_name": str(got[OID_SYS_NAME]),
        }

    def interfaces(self) -> list[dict[str, SnmpValue]]:
        """Walk ifOperStatus (and ifDescr): ``[{index, descr, oper_status}]``, oper status by name.

        Raises:
            DeviceTimeout, DeviceUnreachable, AuthFailed, UnexpectedResponse: as for :meth:`walk`.
        """
        status_rows = self.walk(OID_IF_OPER_STATUS)
        descr = {oid.rsplit(".", 1)[1]: value for oid, value in self.walk(OID_IF_DESCR)}
        result: list[dict[str, SnmpValue]] = []
        for oid, value in status_rows:
            index = oid.rsplit(".", 1)[1]
            status = IF_OPER_STATUS.get(value, f"unknown({value})") if isinstance(value, int) else "invalid"
            result.append({"index": int(index), "descr": str(descr.get(index, "")), "oper_status": status})
        return result

    def probe(self) -> ChannelResult:
        """System group plus interface states as one channel result (``channel="snmp"``).

        Raises:
            DeviceTimeout, DeviceUnreachable, AuthFailed, UnexpectedResponse: as for :meth:`get`.
        """
        started = time.monotonic()
        system = self.system()
        interfaces = self.interfaces()
        latency_ms = (time.monotonic() - started) * 1000
        up = sum(1 for i in interfaces if i["oper_status"] == "up")
        fields: dict[str, object] = {
            **system,
            "if_count": len(interfaces),
            "if_oper_up": up,
            "if_oper_down": [i["descr"] or str(i["index"]) for i in interfaces if i["oper_status"] != "up"],
        }
        detail = f"{str(system['sys_descr'])[:60]}; {up}/{len(interfaces)} interfaces up"
        return ChannelResult("snmp", True, "ok", latency_ms, detail=detail, fields=fields)

    def close(self) -> None:
        """Forget the target; the shared engine and loop stay up for other devices."""
        self._target = None
