"""What the local API, the status page and ``/metrics`` show: one read-only view of a running agent.

:class:`FleetView` reads the agent's config, in-memory states and last outcomes, its store
(identity, incidents), its outbox (through its public queries only), the syslog receiver and
the forwarder, and returns frozen values; every ``*_json`` function turns one into plain JSON.
Nothing here writes anything.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from agent.sla import SlaTicketLines
from agent.state import Health
from uploader.models import Priority

if TYPE_CHECKING:
    from agent.daemon import Agent
    from agent.store import Incident

__all__ = [
    "PRIORITY_ORDER",
    "AgentHealth",
    "DeviceView",
    "FleetView",
    "OutboxView",
    "SlaView",
    "TicketView",
    "agent_version",
    "device_json",
    "health_json",
    "outbox_json",
    "ticket_json",
]

#: most urgent first
PRIORITY_ORDER = (Priority.CRITICAL.value, Priority.MEDIUM.value, Priority.LOW.value)


def agent_version() -> str:
    """The installed hezo-agent version (``unknown`` when run from a bare checkout)."""
    try:
        return importlib.metadata.version("hezo-agent")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _iso(value: datetime | date | None) -> str | None:
    return value.isoformat() if value is not None else None


def _top_priority(priorities: Sequence[str]) -> str | None:
    known = [p for p in PRIORITY_ORDER if p in priorities]
    return known[0] if known else None


@dataclass(frozen=True, slots=True)
class DeviceView:
    """One device as the agent sees it now."""

    id: str
    room: str
    site: str
    model: str
    host: str
    health: str
    priority: str | None
    problems: tuple[str, ...]
    tickets: tuple[str, ...]
    last_seen: datetime | None
    latency_ms: float | None
    last_reason: str
    down_since: datetime | None
    firmware: str | None
    serial: str | None
    mac: str | None
    contract: str | None
    contract_end: date | None
    quiet: str | None


@dataclass(frozen=True, slots=True)
class SlaView:
    """The running SLA clocks of one open ticket (UTC instants)."""

    window: str
    reaction_due: datetime
    next_communication_due: datetime
    delivery_date: date | None
    return_due: datetime | None


@dataclass(frozen=True, slots=True)
class TicketView:
    """One ticket the agent opened: its incident, where it lives in the helpdesk, its SLA clocks."""

    ticket_key: str
    device_id: str
    room: str | None
    site: str
    problem: str
    priority: str
    status: str
    opened_at: datetime
    resolved_at: datetime | None
    delivered: bool
    backend: str | None
    ref: str | None
    url: str | None
    sla: SlaView | None


@dataclass(frozen=True, slots=True)
class OutboxView:
    """The ticket outbox: what waits, how long, what was rejected, which helpdesk is held."""

    pending: int
    oldest_pending_at: datetime | None
    rejected: int
    quarantined: int
    held: tuple[tuple[str, str | None, datetime | None], ...]
    spool_used_bytes: int


@dataclass(frozen=True, slots=True)
class AgentHealth:
    """The agent's own health: ``ok`` or ``degraded`` with the reasons."""

    status: str
    problems: tuple[str, ...]
    version: str
    started_at: datetime | None
    now: datetime
    devices: int
    devices_down: int
    last_poll_at: datetime | None
    syslog_running: bool | None
    syslog_received: int
    syslog_dropped: int
    forwarding_connected: bool | None
    forwarding_backlog: int
    language: str


class FleetView:
    """Read-only view of one running :class:`~agent.daemon.Agent` (see the module docstring)."""

    def __init__(self, agent: Agent, *, started_at: datetime | None = None) -> None:
        """Look at ``agent``; ``started_at`` is when its server came up (shown as the agent's start)."""
        self.agent = agent
        self.started_at = started_at
        self._sla = SlaTicketLines(agent.config.sla)

    # --- devices -------------------------------------------------------------------------------

    def devices(self) -> list[DeviceView]:
        """Every configured device, in config order."""
        open_incidents = self.agent.store.incidents(open_only=True)
        now = self.agent.clock.now()
        return [self._device(dev.id, open_incidents, now) for dev in self.agent.config.devices]

    def device(self, device_id: str) -> DeviceView:
        """One device.

        Raises:
            KeyError: no such device in the config.
        """
        self.agent.config.device(device_id)
        return self._device(device_id, self.agent.store.incidents(open_only=True), self.agent.clock.now())

    def _device(self, device_id: str, open_incidents: Sequence[Incident], now: datetime) -> DeviceView:
        agent = self.agent
        dev = agent.config.device(device_id)
        state = agent.states.get(device_id)
        mine = [i for i in open_incidents if i.device_id == device_id]
        known = agent.store.facts(device_id)
        facts, seen_at = known if known is not None else (None, None)
        contract = agent.config.contract_for(facts.serial) if facts is not None else None
        outcome = agent.last_outcomes.get(device_id)
        latency = round(outcome.duration_s * 1000, 1) if outcome is not None and outcome.reachable else None
        last_seen = state.last_ok_at if state is not None and state.last_ok_at else seen_at
        try:
            quiet = agent.quiet.quiet_reason(device_id, now)
        except (KeyError, ValueError):
            quiet = None
        return DeviceView(
            id=dev.id,
            room=dev.room,
            site=dev.site,
            model=dev.model,
            host=dev.host,
            health=str(state.health) if state is not None else str(Health.UNKNOWN),
            priority=_top_priority([i.priority for i in mine]),
            problems=tuple(i.problem for i in mine),
            tickets=tuple(i.ticket_key for i in mine),
            last_seen=last_seen,
            latency_ms=latency,
            last_reason=state.last_reason if state is not None else "",
            down_since=state.down_since if state is not None else None,
            firmware=facts.firmware if facts is not None else None,
            serial=facts.serial if facts is not None else None,
            mac=facts.mac if facts is not None else None,
            contract=contract.number if contract is not None else None,
            contract_end=contract.end if contract is not None else None,
            quiet=quiet,
        )

    def recent_polls(self, device_id: str, limit: int = 10) -> list[dict[str, Any]]:
        """The device's latest recorded polls, newest first, as JSON-ready dicts."""
        return [
            {
                "at": r.at.isoformat(),
                "ok": r.ok,
                "reason": r.reason,
                "duration_ms": round(r.duration_s * 1000, 1),
                "checks": [{"check": c.check, "ok": c.ok, "latency_ms": c.latency_ms} for c in r.checks],
            }
            for r in self.agent.store.recent_outcomes(device_id, limit)
        ]

    # --- tickets -------------------------------------------------------------------------------

    def tickets(self, status: str = "open") -> list[TicketView]:
        """Tickets of incidents ``open``, ``resolved`` or ``all``; the most urgent and oldest first."""
        incidents = self.agent.store.incidents(open_only=status == "open")
        if status == "resolved":
            incidents = [i for i in incidents if i.status == "resolved"]
        views = [self._ticket(i) for i in incidents]
        rank = {p: n for n, p in enumerate(PRIORITY_ORDER)}
        views.sort(key=lambda t: (t.status != "open", rank.get(t.priority, 9), t.opened_at))
        return views

    def _ticket(self, incident: Incident) -> TicketView:
        agent = self.agent
        ref = agent.dispatcher.ref_for(incident.ticket_key)
        room = next((d.room for d in agent.config.devices if d.id == incident.device_id), None)
        return TicketView(
            ticket_key=incident.ticket_key,
            device_id=incident.device_id,
            room=room,
            site=incident.site,
            problem=incident.problem,
            priority=incident.priority,
            status=incident.status,
            opened_at=incident.opened_at,
            resolved_at=incident.resolved_at,
            delivered=ref is not None,
            backend=ref.backend if ref is not None else None,
            ref=ref.id if ref is not None else None,
            url=ref.url if ref is not None else None,
            sla=self._clocks(incident) if incident.status == "open" else None,
        )

    def _clocks(self, incident: Incident) -> SlaView | None:
        try:
            site = self.agent.config.site(incident.site)
        except StopIteration:
            return None
        last_comm = incident.last_comm_at
        if last_comm is not None and last_comm <= incident.opened_at:
            last_comm = None  # no communication after the opening yet: the reaction is the first
        try:
            clocks = self._sla.calendar(site).clocks(
                incident.priority, incident.opened_at, last_communication_at=last_comm
            )
        except ValueError:  # an unknown priority (a newer agent's row), or a calendar with no days
            return None
        return SlaView(
            window=clocks.window,
            reaction_due=clocks.reaction_due,
            next_communication_due=clocks.next_communication_due,
            delivery_date=clocks.delivery_date,
            return_due=incident.return_due,
        )

    # --- outbox and health -----------------------------------------------------------------------

    def outbox(self) -> OutboxView:
        """The outbox through its public queries."""
        outbox = self.agent.dispatcher
        pending = outbox.pending()
        return OutboxView(
            pending=len(pending),
            oldest_pending_at=min((q.created_at for q in pending), default=None),
            rejected=len(outbox.rejected()),
            quarantined=len(outbox.quarantined()),
            held=tuple((h.name, h.hold_reason, h.held_since) for h in outbox.held()),
            spool_used_bytes=outbox.spool_used_bytes(),
        )

    def health(
        self, devices: Sequence[DeviceView] | None = None, outbox: OutboxView | None = None
    ) -> AgentHealth:
        """The agent's own health (pass ``devices``/``outbox`` already read to avoid reading twice)."""
        agent = self.agent
        now = agent.clock.now()
        devices = self.devices() if devices is None else devices
        outbox = self.outbox() if outbox is None else outbox
        problems: list[str] = []
        polls = [o.at for o in list(agent.last_outcomes.values())]  # copied: pollers add to it
        last_poll = max(polls, default=None)
        stale_after = agent.config.agent.poll_interval_s * 3 + agent.config.agent.timeout_s
        if (
            self.started_at is not None
            and (now - (last_poll or self.started_at)).total_seconds() > stale_after
        ):
            problems.append("no_recent_polls")
        if outbox.held:
            problems.append("helpdesk_held")
        if outbox.rejected:
            problems.append("tickets_rejected")
        syslog = agent.syslog
        syslog_running = syslog.running if syslog is not None else None
        if syslog is not None and self.started_at is not None and not syslog.running:
            problems.append("syslog_receiver_down")
        forwarder = agent.forwarder
        fwd = forwarder.stats() if forwarder is not None else None
        if fwd is not None and not fwd.connected and fwd.backlog_messages:
            problems.append("forwarding_backlog")
        return AgentHealth(
            status="degraded" if problems else "ok",
            problems=tuple(problems),
            version=agent_version(),
            started_at=self.started_at,
            now=now,
            devices=len(devices),
            devices_down=sum(1 for d in devices if d.health == Health.DOWN),
            last_poll_at=last_poll,
            syslog_running=syslog_running,
            syslog_received=syslog.stats.count("received") if syslog is not None else 0,
            syslog_dropped=syslog.stats.count("dropped_unknown") if syslog is not None else 0,
            forwarding_connected=fwd.connected if fwd is not None else None,
            forwarding_backlog=fwd.backlog_messages + fwd.queued if fwd is not None else 0,
            language=agent.config.agent.language,
        )


# --- JSON -----------------------------------------------------------------------------------------


def device_json(view: DeviceView) -> dict[str, Any]:
    """A device as the API returns it."""
    return {
        "id": view.id,
        "room": view.room,
        "site": view.site,
        "model": view.model,
        "host": view.host,
        "state": view.health,
        "priority": view.priority,
        "problems": list(view.problems),
        "tickets": list(view.tickets),
        "last_seen": _iso(view.last_seen),
        "latency_ms": view.latency_ms,
        "last_reason": view.last_reason,
        "down_since": _iso(view.down_since),
        "firmware": view.firmware,
        "serial": view.serial,
        "mac": view.mac,
        "contract": view.contract,
        "contract_end": _iso(view.contract_end),
        "quiet": view.quiet,
    }


def ticket_json(view: TicketView) -> dict[str, Any]:
    """A ticket as the API returns it."""
    sla = view.sla
    return {
        "ticket_key": view.ticket_key,
        "device_id": view.device_id,
        "room": view.room,
        "site": view.site,
        "problem": view.problem,
        "priority": view.priority,
        "status": view.status,
        "opened_at": view.opened_at.isoformat(),
        "resolved_at": _iso(view.resolved_at),
        "delivered": view.delivered,
        "backend": view.backend,
        "ref": view.ref,
        "url": view.url,
        "sla": None
        if sla is None
        else {
            "window": sla.window,
            "reaction_due": sla.reaction_due.isoformat(),
            "next_communication_due": sla.next_communication_due.isoformat(),
            "delivery_date": _iso(sla.delivery_date),
            "return_due": _iso(sla.return_due),
        },
    }


def outbox_json(view: OutboxView) -> dict[str, Any]:
    """The outbox summary as the API returns it."""
    return {
        "pending": view.pending,
        "oldest_pending_at": _iso(view.oldest_pending_at),
        "rejected": view.rejected,
        "quarantined": view.quarantined,
        "held": [{"backend": n, "reason": r, "since": _iso(s)} for n, r, s in view.held],
        "spool_used_bytes": view.spool_used_bytes,
    }


def health_json(view: AgentHealth) -> dict[str, Any]:
    """The agent's health as the API returns it."""
    return {
        "status": view.status,
        "problems": list(view.problems),
        "version": view.version,
        "started_at": _iso(view.started_at),
        "now": view.now.isoformat(),
        "devices": view.devices,
        "devices_down": view.devices_down,
        "last_poll_at": _iso(view.last_poll_at),
        "syslog": {"running": view.syslog_running, "received": view.syslog_received,
                   "dropped": view.syslog_dropped},
        "forwarding": {"connected": view.forwarding_connected, "backlog": view.forwarding_backlog},
    }  # fmt: skip
