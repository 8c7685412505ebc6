"""Parsing the Teams Rooms event log (no I/O): SRS-App events and the health they add up to.

Microsoft documents the events of log "Skype Room System", source ``SRS-App`` (written every
5 minutes): 2000/2001 heartbeat OK/error, 3000/3001 hardware OK/error (camera, microphone,
speaker and front-of-room display named in the description), 4000 application restart. The
event data is JSON with ``Description``, ``ResourceState``, ``OperationName``,
``OperationResult``, ``AppVersion`` and more. ``wevtutil qe … /f:xml`` prints a list of
``<Event>`` elements without a root: it is wrapped before parsing. Input is capped in bytes;
DTDs and entity declarations are refused before the parser sees them.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from collectors.errors import UnexpectedResponse
from collectors.models import Peripheral

__all__ = [
    "DEFAULT_MAX_BYTES",
    "EVENT_KINDS",
    "MtrEvent",
    "MtrHealth",
    "decode_output",
    "parse_checks",
    "parse_events",
    "summarize",
]

PROVIDER = "SRS-App"
EVENT_KINDS = {2000: "heartbeat", 2001: "heartbeat", 3000: "hardware", 3001: "hardware", 4000: "restart"}
OK_EVENT_IDS = frozenset({2000, 3000, 4000})
COMPONENTS = ("camera", "microphone", "speaker", "display")
HEALTHY_VALUES = frozenset({"healthy", "connected", "ok", "pass", "passed"})
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
_FORBIDDEN = re.compile(r"<!\s*(DOCTYPE|ENTITY|ELEMENT|ATTLIST|NOTATION)", re.IGNORECASE)
_PROLOG = re.compile(r"\A\s*<\?xml[^>]*\?>")
_CHECK = re.compile(r"([A-Za-z][A-Za-z0-9 /&-]*?)\s+status\s*:\s*([^.]+?)\s*(?:\.|$)")
_COUNT = re.compile(r"\b(Configured|Real) display count is (\d+)")


@dataclass(frozen=True, slots=True)
class MtrEvent:
    """One SRS-App event: when, which, healthy or not, and the checks its description names."""

    time_created: datetime
    event_id: int
    kind: str
    healthy: bool
    description: str
    checks: dict[str, str] = field(default_factory=dict)
    app_version: str = ""
    resource_state: str = ""
    operation_name: str = ""
    operation_result: str = ""
    alias: str = ""
    display_name: str = ""
    os: str = ""
    os_version: str = ""
    ipv4_address: str = ""
    ipv6_address: str = ""
    computer: str = ""
    record_id: int | None = None

    def failing_checks(self) -> tuple[str, ...]:
        """Return the checks whose value is not healthy, as ``name: value``."""
        return tuple(
            f"{k}: {v}"
            for k, v in self.checks.items()
            if "count" not in k and v.lower() not in HEALTHY_VALUES
        )


@dataclass(frozen=True, slots=True)
class MtrHealth:
    """What the newest events say: heartbeat, hardware components, restarts, app version."""

    events: int
    heartbeat_ok: bool | None
    heartbeat_at: datetime | None
    heartbeat_since: datetime | None
    heartbeat_stale: bool
    hardware_ok: bool | None
    hardware_at: datetime | None
    hardware_since: datetime | None
    components: dict[str, bool]
    failing_checks: tuple[str, ...]
    restarts: int
    last_restart_at: datetime | None
    app_version: str | None
    skipped: int = 0

    @property
    def healthy(self) -> bool:
        """Return whether heartbeat and hardware are fine and the heartbeat is fresh."""
        return self.heartbeat_ok is True and self.hardware_ok is not False and not self.heartbeat_stale

    def peripherals(self) -> tuple[Peripheral, ...]:
        """Return camera, microphone and speaker as :class:`Peripheral` values (display has no kind)."""
        return tuple(Peripheral(kind, kind, ok) for kind, ok in self.components.items() if kind != "display")

    def fields(self) -> dict[str, object]:
        """Return the ChannelResult fields (times as ISO 8601 strings)."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "mtr_healthy": self.healthy,
            "mtr_heartbeat_ok": self.heartbeat_ok,
            "mtr_heartbeat_at": iso(self.heartbeat_at),
            "mtr_heartbeat_since": iso(self.heartbeat_since),
            "mtr_heartbeat_stale": self.heartbeat_stale,
            "mtr_hardware_ok": self.hardware_ok,
            "mtr_hardware_since": iso(self.hardware_since),
            "mtr_components": dict(self.components),
            "mtr_failing_checks": list(self.failing_checks),
            "mtr_restarts": self.restarts,
            "mtr_last_restart_at": iso(self.last_restart_at),
            "app_version": self.app_version,
        }


# --- parsing (no I/O) -------------------------------------------------------------------------


def parse_checks(description: str) -> dict[str, str]:
    """Parse ``X status : Y.`` sentences (and the display counts) of a description."""
    checks = {m.group(1).strip(): m.group(2).strip() for m in _CHECK.finditer(description)}
    for which, count in _COUNT.findall(description):
        checks[f"{which} display count"] = count
    return checks


def _component(check: str) -> str | None:
    low = check.lower()
    if "count" in low:
        return None
    return next((c for c in COMPONENTS if c in low), None)


def decode_output(data: bytes) -> str:
    """Decode wevtutil output: UTF-16 (with or without BOM) or UTF-8, never failing."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", "replace")
    if data[:2] == b"<\x00":
        return data.decode("utf-16-le", "replace")
    return data.decode("utf-8-sig", "replace")


def _local(tag: object) -> str:
    return str(tag).rsplit("}", 1)[-1]


def _child(parent: ET.Element | None, name: str) -> ET.Element | None:
    if parent is None:
        return None
    return next((c for c in parent if _local(c.tag) == name), None)


class _Malformed(ValueError):
    """An SRS-App event without the fields every event has."""


def _parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as err:
        raise _Malformed(f"bad TimeCreated {text[:40]!r}") from err
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _parse_event(element: ET.Element) -> MtrEvent | None:
    """Return the SRS-App event, or None for other providers and event ids.

    Raises:
        _Malformed: an SRS-App event without id or time.
    """
    system = _child(element, "System")
    provider = _child(system, "Provider")
    if provider is None or provider.get("Name") != PROVIDER:
        return None
    id_el, time_el = _child(system, "EventID"), _child(system, "TimeCreated")
    try:
        event_id = int((id_el.text or "") if id_el is not None else "")
    except ValueError as err:
        raise _Malformed("SRS-App event without an EventID") from err
    if event_id not in EVENT_KINDS:
        return None
    if time_el is None or not time_el.get("SystemTime"):
        raise _Malformed("SRS-App event without TimeCreated")
    when = _parse_time(time_el.get("SystemTime", ""))
    data = _child(element, "EventData")
    payload = "".join((d.text or "") for d in (data if data is not None else ()) if _local(d.tag) == "Data")
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        doc = None
    info = {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {"Description": payload}
    record = _child(system, "EventRecordID")
    record_text = (record.text or "").strip() if record is not None else ""
    computer = _child(system, "Computer")
    description = info.get("Description", "").strip()
    healthy = (
        event_id in OK_EVENT_IDS
        and info.get("ResourceState", "").lower() != "unhealthy"
        and info.get("OperationResult", "").lower() != "fail"
    )
    return MtrEvent(
        time_created=when,
        event_id=event_id,
        kind=EVENT_KINDS[event_id],
        healthy=healthy,
        description=description,
        checks=parse_checks(description),
        app_version=info.get("AppVersion", ""),
        resource_state=info.get("ResourceState", ""),
        operation_name=info.get("OperationName", ""),
        operation_result=info.get("OperationResult", ""),
        alias=info.get("Alias", ""),
        display_name=info.get("DisplayName", ""),
        os=info.get("OS", ""),
        os_version=info.get("OSVersion", ""),
        ipv4_address=info.get("IPv4Address", ""),
        ipv6_address=info.get("IPv6Address", ""),
        computer=(computer.text or "").strip() if computer is not None else "",
        record_id=int(record_text) if record_text.isdigit() else None,
    )


def parse_events(data: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[list[MtrEvent], int]:
    """Parse wevtutil's ``/f:xml`` output into SRS-App events (newest first) and a skipped count.

    Events of other providers or ids are ignored; an SRS-App event without id or time is
    skipped and counted. A root ``<Events>`` element is accepted too.

    Raises:
        UnexpectedResponse: over ``max_bytes``, a DTD or entity declaration, not event XML.
    """
    size = len(data)
    if size > max_bytes:
        raise UnexpectedResponse(f"mtr: event log XML over {max_bytes} bytes")
    text = decode_output(data) if isinstance(data, bytes) else data
    if _FORBIDDEN.search(text):
        raise UnexpectedResponse("mtr: event log XML with a DTD or entity declaration refused")
    text = _PROLOG.sub("", text.lstrip("\ufeff"), count=1)
    if not text.strip():
        return [], 0
    wrapped = text if re.match(r"\s*<Events[\s>]", text) else f"<Events>{text}</Events>"
    try:
        root = ET.fromstring(wrapped)
    except ET.ParseError as err:
        raise UnexpectedResponse(f"mtr: not event log XML ({err})") from err
    stray = (root.text or "").strip() or any((c.tail or "").strip() for c in root)
    if _local(root.tag) != "Events" or stray or any(_local(c.tag) != "Event" for c in root):
        raise UnexpectedResponse("mtr: not event log XML (text or elements outside <Event>)")
    events: list[MtrEvent] = []
    skipped = 0
    for element in root:
        try:
            event = _parse_event(element)
        except _Malformed:
            skipped += 1
            continue
        if event is not None:
            events.append(event)
    events.sort(key=lambda e: (e.time_created, e.record_id or 0), reverse=True)
    return events, skipped


def _run_since(events: Sequence[MtrEvent]) -> datetime | None:
    """Oldest time of the run of events (newest first) that share the newest one's health."""
    since = None
    for event in events:
        if event.healthy != events[0].healthy:
            break
        since = event.time_created
    return since


def summarize(
    events: Sequence[MtrEvent],
    *,
    now: datetime,
    window_s: float = 86_400,
    max_heartbeat_age_s: float = 900,
    skipped: int = 0,
) -> MtrHealth:
    """Summarize events (any order): last heartbeat and hardware state since when, restarts."""
    ordered = sorted(events, key=lambda e: (e.time_created, e.record_id or 0), reverse=True)
    beats = [e for e in ordered if e.kind == "heartbeat"]
    hardware = [e for e in ordered if e.kind == "hardware"]
    restarts = [e for e in ordered if e.kind == "restart"]
    beat = beats[0] if beats else None
    hard = hardware[0] if hardware else None
    components: dict[str, bool] = {}
    if hard is not None:
        for name, value in hard.checks.items():
            kind = _component(name)
            if kind is not None:
                components[kind] = components.get(kind, True) and value.lower() in HEALTHY_VALUES
    in_window = [e for e in restarts if (now - e.time_created).total_seconds() <= window_s]
    failing = (beat.failing_checks() if beat else ()) + (hard.failing_checks() if hard else ())
    return MtrHealth(
        events=len(ordered),
        heartbeat_ok=beat.healthy if beat else None,
        heartbeat_at=beat.time_created if beat else None,
        heartbeat_since=_run_since(beats),
        heartbeat_stale=beat is None or (now - beat.time_created).total_seconds() > max_heartbeat_age_s,
        hardware_ok=hard.healthy if hard else None,
        hardware_at=hard.time_created if hard else None,
        hardware_since=_run_since(hardware),
        components=components,
        failing_checks=failing,
        restarts=len(in_window),
        last_restart_at=restarts[0].time_created if restarts else None,
        app_version=next((e.app_version for e in ordered if e.app_version), None),
        skipped=skipped,
    )
