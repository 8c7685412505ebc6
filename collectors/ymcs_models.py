"""Values and settings of the Yealink Management Cloud (YMCS) Open API, and their parsers.

The YMCS Open API is **third-party documented**: its shapes come from two open-source clients
built on Yealink's API PDFs (see ``/work/shared/yealink-facts.md``), not from a public Yealink
reference, so every setting here carries ``status: assumed``. Parsers take decoded JSON and
raise :class:`~collectors.errors.UnexpectedResponse` for anything outside the documented
envelopes; values the API documents without naming their enum (``connStatus``) stay raw and
are mapped to ``None`` ("unknown"), never to "disconnected".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from collectors.errors import UnexpectedResponse
from config.loader import read_secret
from config.ymcs import EXPORT_SYSLOG_PATH, REGIONS, YmcsSettings

__all__ = [
    "ALARM_LEVELS",
    "ALARM_STATUSES",
    "DEVICE_STATUSES",
    "EXPORT_SYSLOG_PATH",
    "REGIONS",
    "KeyKind",
    "YmcsAlarm",
    "YmcsDevice",
    "YmcsKey",
    "YmcsPage",
    "YmcsPart",
    "YmcsSettings",
    "find_device",
    "match_device",
    "normalize_mac",
    "parse_alarm",
    "parse_device",
    "parse_page",
    "parse_part",
    "part_connected",
    "read_client_secret",
]

#: ``deviceStatus`` values the API documents; anything else is reported as ``unknown``
DEVICE_STATUSES = ("online", "offline", "pending")
#: alarm ``level``: 1 minor, 2 major, 3 critical
ALARM_LEVELS = {1: "minor", 2: "major", 3: "critical"}
#: alarm ``status``: 1 active, 2 solved, 3 ignored
ALARM_STATUSES = {1: "active", 2: "solved", 3: "ignored"}
# connStatus words read as connected / disconnected; numbers and anything else are unknown
_CONNECTED = frozenset({"connected", "online"})
_DISCONNECTED = frozenset({"disconnected", "offline"})
_HEX = re.compile(r"[^0-9a-f]")
#: how a device is looked up in the cloud: by its YMCS id, its serial number or its MAC
KeyKind = Literal["ymcs_id", "serial", "mac"]
YmcsKey = tuple[KeyKind, str]


def read_client_secret(settings: YmcsSettings, environ: Mapping[str, str] | None = None) -> str:
    """Read the client secret from the named environment variable or file (:func:`config.loader.read_secret`).

    Raises:
        config.loader.ConfigError: the variable is unset or empty, or the file is missing,
            unreadable or empty; the line names ``ymcs.client_secret_env``/``_file``, never the secret.
    """
    hint = " (set it in the agent's service environment, or use client_secret_file)"
    return read_secret(
        settings.client_secret_env,
        settings.client_secret_file,
        "ymcs.client_secret",
        "config",
        env_hint=hint,
        environ=environ,
    )


@dataclass(frozen=True, slots=True)
class YmcsDevice:
    """One device as YMCS lists it; ``status`` is online, offline, pending or unknown."""

    id: str
    mac: str
    sn: str
    name: str
    model: str
    site: str
    firmware: str
    lan_ip: str
    last_report_ms: int | None
    status: str
    raw_status: str


@dataclass(frozen=True, slots=True)
class YmcsPart:
    """One accessory of a device; ``connected`` is None when ``conn_status`` is not understood."""

    id: str
    mac: str
    sn: str
    model: str
    connect_way: str
    conn_status: str
    connected: bool | None
    lan_ip: str
    firmware: str
    last_report_ms: int | None


@dataclass(frozen=True, slots=True)
class YmcsAlarm:
    """One alarm; ``level`` 1 minor / 2 major / 3 critical, ``status`` 1 active / 2 solved / 3 ignored."""

    id: str
    event: str
    level: int
    mac: str
    model: str
    ip: str
    site: str
    status: int
    first_ms: int | None
    last_ms: int | None

    @property
    def active(self) -> bool:
        """Whether the alarm is still active (status 1)."""
        return self.status == 1

    @property
    def level_name(self) -> str:
        """``minor``, ``major``, ``critical`` or ``level N``."""
        return ALARM_LEVELS.get(self.level, f"level {self.level}")


@dataclass(frozen=True, slots=True)
class YmcsPage:
    """One page of a list answer: ``{skip, limit, total, data}``."""

    skip: int
    limit: int
    total: int
    data: list[dict[str, Any]]


def normalize_mac(text: str) -> str:
    """Lower-case hex digits only: ``00:15:65:AA:BB:CC`` and ``001565aabbcc`` compare equal."""
    return _HEX.sub("", text.lower())


def find_device(devices: Sequence[YmcsDevice], mac_or_serial: str) -> YmcsDevice | None:
    """The device whose MAC (any separators, any case) or serial number matches, else None."""
    key = mac_or_serial.strip()
    return match_device(devices, [("mac", key), ("serial", key)])


def match_device(devices: Sequence[YmcsDevice], keys: Sequence[YmcsKey]) -> YmcsDevice | None:
    """The device the first matching key names (YMCS id exactly, serial and MAC in any case), else None.

    A MAC key matches only when it has 12 hex digits; empty keys never match.
    """
    for kind, value in keys:
        text = value.strip()
        if kind == "mac":
            mac = normalize_mac(text)
            found = next((d for d in devices if len(mac) == 12 and normalize_mac(d.mac) == mac), None)
        elif kind == "serial":
            found = next((d for d in devices if text and d.sn.lower() == text.lower()), None)
        else:
            found = next((d for d in devices if text and d.id == text), None)
        if found is not None:
            return found
    return None


def _int(value: Any, what: str, source: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UnexpectedResponse(f"{source}: {what} is not a number")
    try:
        return int(value)
    except ValueError:
        raise UnexpectedResponse(f"{source}: {what} is not a number") from None


def _str(item: Mapping[str, Any], key: str) -> str:
    value = item.get(key)
    if value is None:
        return ""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    return ""


def parse_page(doc: Any, source: str) -> YmcsPage:
    """Check a list envelope ``{skip, limit, total, data}``.

    Raises:
        UnexpectedResponse: not an object, ``total`` missing or not a number, ``data`` not a
            list of objects.
    """
    if not isinstance(doc, dict):
        raise UnexpectedResponse(f"{source}: answer is not a JSON object")
    data = doc.get("data")
    if data is None:
        data = []
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise UnexpectedResponse(f"{source}: 'data' is not a list of objects")
    total = _int(doc.get("total"), "'total'", source)
    skip = _int(doc.get("skip", 0), "'skip'", source)
    limit = _int(doc.get("limit", len(data)), "'limit'", source)
    assert total is not None and skip is not None and limit is not None
    if total < 0:
        raise UnexpectedResponse(f"{source}: 'total' is negative")
    return YmcsPage(skip=skip, limit=limit, total=total, data=data)


def _id(item: Mapping[str, Any], source: str) -> str:
    value = _str(item, "id")
    if not value:
        raise UnexpectedResponse(f"{source}: an item has no 'id'")
    return value


def parse_device(item: Mapping[str, Any], source: str) -> YmcsDevice:
    """Read one ``listDevices`` item.

    Raises:
        UnexpectedResponse: no ``id``, or a timestamp that is not a number.
    """
    raw = _str(item, "deviceStatus")
    return YmcsDevice(
        id=_id(item, source),
        mac=_str(item, "mac"),
        sn=_str(item, "sn"),
        name=_str(item, "name"),
        model=_str(item, "modelName"),
        site=_str(item, "siteName"),
        firmware=_str(item, "programVersion"),
        lan_ip=_str(item, "lanIp"),
        last_report_ms=_int(item.get("lastReportTime"), "'lastReportTime'", source, optional=True),
        status=raw.lower() if raw.lower() in DEVICE_STATUSES else "unknown",
        raw_status=raw,
    )


def part_connected(conn_status: str) -> bool | None:
    """Map a ``connStatus`` word to connected (True), disconnected (False) or unknown (None)."""
    word = conn_status.strip().lower()
    if word in _CONNECTED:
        return True
    if word in _DISCONNECTED:
        return False
    return None


def parse_part(item: Mapping[str, Any], source: str) -> YmcsPart:
    """Read one ``listParts`` item.

    Raises:
        UnexpectedResponse: no ``id``, or a timestamp that is not a number.
    """
    conn = _str(item, "connStatus")
    return YmcsPart(
        id=_id(item, source),
        mac=_str(item, "mac"),
        sn=_str(item, "sn"),
        model=_str(item, "modelName"),
        connect_way=_str(item, "connectWay"),
        conn_status=conn,
        connected=part_connected(conn),
        lan_ip=_str(item, "lanIp"),
        firmware=_str(item, "programVersion"),
        last_report_ms=_int(item.get("lastReportTime"), "'lastReportTime'", source, optional=True),
    )


def parse_alarm(item: Mapping[str, Any], source: str) -> YmcsAlarm:
    """Read one ``listAlarms`` item.

    Raises:
        UnexpectedResponse: no ``id``, or ``level``/``status``/times that are not numbers.
    """
    level = _int(item.get("level"), "alarm 'level'", source)
    status = _int(item.get("status"), "alarm 'status'", source)
    assert level is not None and status is not None
    return YmcsAlarm(
        id=_id(item, source),
        event=_str(item, "event"),
        level=level,
        mac=_str(item, "mac"),
        model=_str(item, "model"),
        ip=_str(item, "ip"),
        site=_str(item, "siteName"),
        status=status,
        first_ms=_int(item.get("firstAlarmTime"), "'firstAlarmTime'", source, optional=True),
        last_ms=_int(item.get("lastAlarmTime"), "'lastAlarmTime'", source, optional=True),
    )
