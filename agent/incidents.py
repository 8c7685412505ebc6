"""Incidents: turn state-machine events into ticket intents, one open incident per problem.

The dedup key of a problem is ``site/device/problem``; the store guarantees at most one open
incident per key, and the ticket of incident ``n`` is ``site/device/problem#n`` (so a later
recurrence opens a new ticket in this slice). Intents carry stable idempotency keys, so
submitting one twice (after a crash, or from :meth:`IncidentManager.reconcile`) does nothing twice.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from agent.clock import Clock
from agent.state import DeviceState, Event, Health, Recovered, WentDown
from agent.store import Incident, IncidentAlreadyOpen, Store
from agent.ticket_text import (
    PROBLEM_OFFLINE,
    DownContext,
    incident_key,
    render_down_ticket,
    render_recovery_comment,
    render_resolve_comment,
)
from collectors.models import CheckResult
from config.schema import AgentConfig, Device
from uploader.intents import Intent, IntentKind, TicketSink
from uploader.models import Attachment, Priority, Ticket

EVIDENCE_LINE = {
    "en": "Also attached: the device's black-box syslog from before the failure ({names}).",
    "pl": "Załączono też czarną skrzynkę urządzenia (syslog sprzed awarii): {names}.",
}

log = logging.getLogger("hezo.incidents")

#: How many recent polls a ticket's timeline shows.
TIMELINE_POLLS = 12


class IncidentManager:
    """Opens a critical ticket when a device goes down and resolves it when it recovers."""

    def __init__(
        self,
        config: AgentConfig,
        store: Store,
        sink: TicketSink,
        clock: Clock,
        *,
        attachment_for: Callable[[str], Attachment | None],
        evidence_for: Callable[[str, datetime], Sequence[Attachment]] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._sink = sink
        self._clock = clock
        self._attachment_for = attachment_for
        self._evidence_for = evidence_for
        self._language = config.agent.language

    def handle(self, device_id: str, events: Sequence[Event]) -> None:
        """Act on the state machine's ``events`` for ``device_id``.

        Raises:
            sqlite3.Error: the store could not be written (nothing was submitted for that event).
        """
        device = self._device(device_id)
        if device is None:
            return
        for event in events:
            if isinstance(event, WentDown):
                self._on_down(device, event)
            elif isinstance(event, Recovered):
                self._on_recovered(device, event.at, event.downtime_s)

    def reconcile(self, states: Mapping[str, DeviceState]) -> None:
        """Bring incidents in line with ``states`` after a restart.

        A DOWN device without an open incident gets one; an open incident whose device is UP is
        resolved; an open incident of a still-down device has its open intent submitted again
        (a no-op when it was delivered or queued, since the idempotency key is the same).
        """
        for device_id, state in states.items():
            device = self._device(device_id)
            if device is None:
                continue
            key = incident_key(device.site, device.id, PROBLEM_OFFLINE)
            incident = self._store.open_incident_for(key)
            if state.health in (Health.DOWN, Health.RECOVERING):
                since = state.down_since or state.first_failure_at or self._clock.now()
                event = WentDown(at=state.changed_at or since, first_failure_at=since,
                                 reason=state.last_reason, failures=self._config.agent.down_after)
                if incident is None:
                    self._on_down(device, event)
                else:
                    self._submit_open(device, incident, event)
            elif state.health is Health.UP and incident is not None:
                at = state.changed_at or self._clock.now()
                self._on_recovered(device, at, max(0.0, (at - incident.opened_at).total_seconds()))

    # --- transitions ----------------------------------------------------------------------

    def _device(self, device_id: str) -> Device | None:
        try:
            return self._config.device(device_id)
        except KeyError:
            log.warning("event=unknown_device device=%s action=ignored", device_id)
            return None

    def _on_down(self, device: Device, event: WentDown) -> None:
        key = incident_key(device.site, device.id, PROBLEM_OFFLINE)
        existing = self._store.open_incident_for(key)
        if existing is not None:
            log.info("event=incident_already_open key=%s ticket_key=%s", key, existing.ticket_key)
            return
        try:
            incident_id = self._store.open_incident(
                key, device.id, device.site, PROBLEM_OFFLINE, Priority.CRITICAL.value, event.at
            )
        except IncidentAlreadyOpen:  # another thread won the race; its ticket stands
            log.info("event=incident_already_open key=%s", key)
            return
        incident = self._store.incident(incident_id)
        assert incident is not None
        log.info(
            "event=incident_opened key=%s ticket_key=%s device=%s site=%s priority=%s reason=%s failures=%d",
            key, incident.ticket_key, device.id, device.site, incident.priority, event.reason, event.failures,
        )
        self._submit_open(device, incident, event)

    def _submit_open(self, device: Device, incident: Incident, event: WentDown) -> None:
        attachment = self._attachment(device.id)
        ticket = dataclasses.replace(self._render(device, event, attachment), key=incident.ticket_key)
        evidence = self._evidence(device.id, event.first_failure_at or event.at)
        if evidence:
            names = ", ".join(a.name for a in evidence)
            line = EVIDENCE_LINE[self._language].format(names=names)
            ticket = dataclasses.replace(ticket, body=f"{ticket.body.rstrip()}\n{line}\n")
        self._sink.submit(
            Intent(
                kind=IntentKind.OPEN,
                ticket_key=incident.ticket_key,
                idempotency_key=f"{incident.ticket_key}:open",
                priority=Priority.CRITICAL,
                ticket=ticket,
                attachments=((attachment,) if attachment else ()) + tuple(evidence),
            )
        )

    def _on_recovered(self, device: Device, at: datetime, downtime_s: float) -> None:
        key = incident_key(device.site, device.id, PROBLEM_OFFLINE)
        incident = self._store.open_incident_for(key)
        if incident is None:
            log.info("event=recovered_without_incident key=%s downtime_s=%.0f", key, downtime_s)
            return
        site = self._config.site(device.site)
        priority = Priority(incident.priority)
        self._sink.submit(
            Intent(
                kind=IntentKind.COMMENT,
                ticket_key=incident.ticket_key,
                idempotency_key=f"{incident.ticket_key}:recovered",
                priority=priority,
                body=render_recovery_comment(device, downtime_s, at, site, self._language),
            )
        )
        self._sink.submit(
            Intent(
                kind=IntentKind.RESOLVE,
                ticket_key=incident.ticket_key,
                idempotency_key=f"{incident.ticket_key}:resolve",
                priority=priority,
                body=render_resolve_comment(device, downtime_s, at, site, self._language),
            )
        )
        self._store.resolve_incident(incident.id, at)
        log.info(
            "event=incident_resolved key=%s ticket_key=%s device=%s downtime_s=%.0f",
            key, incident.ticket_key, device.id, downtime_s,
        )

    # --- ticket content -------------------------------------------------------------------

    def _evidence(self, device_id: str, failed_at: datetime) -> tuple[Attachment, ...]:
        if self._evidence_for is None:
            return ()
        try:
            return tuple(self._evidence_for(device_id, failed_at))
        except OSError as err:
            log.warning("event=evidence_attachment_failed device=%s error=%s", device_id, type(err).__name__)
            return ()

    def _attachment(self, device_id: str) -> Attachment | None:
        try:
            return self._attachment_for(device_id)
        except OSError as err:
            log.warning("event=log_attachment_failed device=%s error=%s", device_id, type(err).__name__)
            return None

    def _render(self, device: Device, event: WentDown, attachment: Attachment | None) -> Ticket:
        known = self._store.facts(device.id)
        facts, last_seen = known if known else (None, None)
        recent = self._store.recent_outcomes(device.id, TIMELINE_POLLS)
        checks: tuple[CheckResult, ...] = ()
        if recent:
            newest = recent[0]
            checks = newest.checks or (
                CheckResult(check="poll", ok=newest.ok, latency_ms=newest.duration_s * 1000.0,
                            detail=newest.detail or newest.reason),
            )
        ctx = DownContext(
            device=device,
            site=self._config.site(device.site),
            contract=self._config.contract_for(facts.serial) if facts else None,
            facts=facts,
            last_seen=last_seen,
            went_down_at=event.at,
            first_failure_at=event.first_failure_at,
            failures=event.failures,
            reason=event.reason,
            now=self._clock.now(),
            timeline=recent,
            checks=checks,
            attachment_name=attachment.name if attachment else None,
        )
        return render_down_ticket(ctx, self._language)
