"""Incidents: turn what the agent concluded into ticket intents, one ticket per problem.

The dedup key of a problem is ``site/device/problem`` (``problem`` may carry a subject, e.g.
``peripheral:camera``); the store guarantees at most one open incident per key. The ticket of
incident ``n`` is ``site/device/problem#n``. A problem that comes back within the reopen window
reopens the same incident and ticket instead of opening a new one; a priority change moves the
open ticket's priority with a comment. Intents carry stable idempotency keys (suffixed with the
reopen count), so submitting one twice — after a crash, or from :meth:`IncidentManager.reconcile`
— does nothing twice.

Three kinds of input arrive here:

* the state machine's :class:`WentDown`/:class:`Recovered` events (the device is offline), which
  may be *held* (a quiet period, a flapping device, a site whose network is being judged) and
  opened later by :meth:`IncidentManager.review` once the hold lifts;
* :class:`Problem` raise/clear/priority calls for everything else (flapping, peripherals, ...);
* site-wide judgements: one ``site_network`` incident instead of one ticket per device.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from agent.clock import Clock
from agent.state import DeviceState, Event, Health, Recovered, WentDown
from agent.store import Incident, IncidentAlreadyOpen, Store
from agent.ticket_text import (
    PROBLEM_OFFLINE,
    DownContext,
    SiteContext,
    format_duration,
    format_when,
    incident_key,
    render_down_ticket,
    render_recovery_comment,
    render_resolve_comment,
    render_site_ticket,
)
from agent.ticket_words import INCIDENT_WORDS, PRIORITY_NAMES
from collectors.models import CheckResult, DeviceFacts
from config.schema import AgentConfig, Device, Site
from uploader.intents import Intent, IntentKind, TicketSink
from uploader.models import Attachment, Priority, Ticket

EVIDENCE_LINE = {
    "en": "Also attached: the device's black-box syslog from before the failure ({names}).",
    "pl": "Załączono też czarną skrzynkę urządzenia (syslog sprzed awarii): {names}.",
}

log = logging.getLogger("hezo.incidents")

#: How many recent polls a ticket's timeline shows.
TIMELINE_POLLS = 12
#: The pseudo device id of a site-wide incident.
SITE_DEVICE = "_site"
PROBLEM_SITE_NETWORK = "site_network"


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong with a device other than "offline", as a detector raised it.

    ``kind`` names the problem in tickets and ``demo --json`` (``flapping``, ``peripheral``, ...);
    ``subject`` tells apart several problems of one kind (the camera vs the microphone).
    """

    kind: str
    priority: Priority
    subject: str = ""
    summary: str = ""
    details: Mapping[str, str] = field(default_factory=dict)
    first_seen: datetime | None = None

    @property
    def name(self) -> str:
        """The problem part of the dedup key."""
        return f"{self.kind}:{self.subject}" if self.subject else self.kind


@dataclass(frozen=True, slots=True)
class IncidentRules:
    """The configurable parts of the incident policy this manager applies."""

    reopen_window: timedelta = timedelta(hours=24)
    resolve_on_recovery: bool = True
    return_days: int = 7
    return_reminder: timedelta = timedelta(days=1)
    site_network_action: Callable[[str], str] = field(default=lambda _site: "ticket")
    site_network_priority: Priority = Priority.CRITICAL
    offline_priority: Priority = Priority.CRITICAL


SlaLines = Callable[[Priority, Site, datetime, str], list[str]]


class IncidentManager:
    """Opens, updates, reopens and resolves the tickets of every device and site."""

    def __init__(
        self,
        config: AgentConfig,
        store: Store,
        sink: TicketSink,
        clock: Clock,
        *,
        attachment_for: Callable[[str], Attachment | None],
        evidence_for: Callable[[str, datetime], Sequence[Attachment]] | None = None,
        rules: IncidentRules | None = None,
        sla_lines: SlaLines | None = None,
        local_alert: Callable[[str, str], None] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._sink = sink
        self._clock = clock
        self._attachment_for = attachment_for
        self._evidence_for = evidence_for
        self._rules = rules or IncidentRules()
        self._sla_lines = sla_lines
        self._local_alert = local_alert
        self._language = config.agent.language
        self._held: dict[str, str] = {}

    # --- offline: events from the state machine --------------------------------------------

    def handle(self, device_id: str, events: Sequence[Event], *, hold: str | None = None) -> None:
        """Act on the state machine's ``events`` for ``device_id``.

        ``hold`` (a reason such as ``maintenance window 'patching'``) keeps a :class:`WentDown`
        from opening a ticket now; :meth:`review` opens it once the hold lifts and the device is
        still down. A recovery always resolves what is open.

        Raises:
            sqlite3.Error: the store could not be written (nothing was submitted for that event).
        """
        device = self._device(device_id)
        if device is None:
            return
        for event in events:
            if isinstance(event, WentDown):
                if hold:
                    self._hold(device, hold)
                    continue
                self._on_down(device, event)
            elif isinstance(event, Recovered):
                self._held.pop(device.id, None)
                self._on_recovered(device, event.at, event.downtime_s)

    def review(self, device_id: str, state: DeviceState, *, hold: str | None = None) -> None:
        """Open the offline ticket a hold kept back, once nothing holds it and the device is still down."""
        device = self._device(device_id)
        if device is None or state.health not in (Health.DOWN, Health.RECOVERING):
            self._held.pop(device_id, None)
            return
        if hold:
            self._hold(device, hold)
            return
        if self._store.open_incident_for(self._key(device, PROBLEM_OFFLINE)) is not None:
            return
        self._held.pop(device_id, None)
        since = state.down_since or state.first_failure_at or self._clock.now()
        self._on_down(
            device,
            WentDown(
                at=self._clock.now(),
                first_failure_at=since,
                reason=state.last_reason,
                failures=state.failures,
            ),
        )

    def held(self) -> dict[str, str]:
        """Devices whose offline ticket is being held back, with the reason."""
        return dict(self._held)

    def reconcile(self, states: Mapping[str, DeviceState]) -> None:
        """Bring offline incidents in line with ``states`` after a restart.

        A DOWN device without an open incident gets one; an open incident whose device is UP is
        resolved; an open incident of a still-down device has its open intent submitted again
        (a no-op when it was delivered or queued, since the idempotency key is the same).
        """
        for device_id, state in states.items():
            device = self._device(device_id)
            if device is None:
                continue
            incident = self._store.open_incident_for(self._key(device, PROBLEM_OFFLINE))
            if state.health in (Health.DOWN, Health.RECOVERING):
                since = state.down_since or state.first_failure_at or self._clock.now()
                event = WentDown(
                    at=state.changed_at or since,
                    first_failure_at=since,
                    reason=state.last_reason,
                    failures=self._config.agent.down_after,
                )
                if incident is None:
                    self._on_down(device, event)
                elif incident.reopen_count == 0:
                    self._submit_open(device, incident, event)
            elif state.health is Health.UP and incident is not None:
                at = state.changed_at or self._clock.now()
                self._on_recovered(device, at, max(0.0, (at - incident.opened_at).total_seconds()))

    # --- other problems ----------------------------------------------------------------------

    def raise_problem(self, device_id: str, problem: Problem, at: datetime) -> None:
        """Open (or reopen, or re-prioritise) the ticket of ``problem`` on ``device_id``."""
        device = self._device(device_id)
        if device is None:
            return
        key = self._key(device, problem.name)
        existing = self._store.open_incident_for(key)
        if existing is not None:
            if existing.priority != problem.priority.value:
                self.change_priority(device_id, problem.name, problem.priority, at, problem.summary)
            return

        def ticket(incident: Incident) -> Ticket:
            return self._render(
                device,
                at,
                problem.first_seen or at,
                problem.summary or problem.kind,
                problem=problem,
                priority=problem.priority,
                attachment=None,
                incident=incident,
            )

        self._open_or_reopen(
            key,
            device.id,
            device.site,
            problem.name,
            problem.priority,
            at,
            ticket,
            self._facts_serial(device.id),
            why=problem.summary,
            device=device,
        )

    def clear_problem(self, device_id: str, name: str, at: datetime, note: str = "") -> None:
        """The problem ``name`` is gone: post a recovery note and resolve (or only comment)."""
        device = self._device(device_id)
        if device is None:
            return
        incident = self._store.open_incident_for(self._key(device, name))
        if incident is None:
            return
        words = INCIDENT_WORDS[self._language]
        body = words["problem_cleared"].format(
            problem=name,
            when=format_when(at, self._site(device.site).timezone),
            duration=_duration(at - incident.opened_at, self._language),
        ) + (f"\n{note}" if note else "")
        self._close(incident, at, body)

    def change_priority(self, device_id: str, name: str, priority: Priority, at: datetime, why: str) -> None:
        """Move the open ticket of ``name`` to ``priority`` (escalation or de-escalation), with a comment."""
        device = self._device(device_id)
        if device is None:
            return
        incident = self._store.open_incident_for(self._key(device, name))
        if incident is None or incident.priority == priority.value:
            return
        words = INCIDENT_WORDS[self._language]
        names = PRIORITY_NAMES[self._language]
        body = words["priority_changed"].format(
            old=names[Priority(incident.priority)],
            new=names[priority],
            why=why or name,
        )
        self._sink.submit(
            Intent(
                kind=IntentKind.SET_PRIORITY,
                ticket_key=incident.ticket_key,
                idempotency_key=f"{incident.ticket_key}:priority-{priority.value}{_nth(incident)}",
                priority=priority,
                body=body,
            )
        )
        self._store.update_incident(incident.id, priority=priority.value, last_comm_at=at)
        log.info("event=incident_priority key=%s from=%s to=%s", incident.key, incident.priority, priority)

    def note_replacement(self, device_id: str, old_serial: str, new_serial: str, at: datetime) -> None:
        """A different serial answers in the device's place: note it and start the return clock."""
        device = self._device(device_id)
        if device is None:
            return
        due = at + timedelta(days=self._rules.return_days)
        site = self._site(device.site)
        for incident in self._store.incidents(open_only=True):
            if incident.device_id != device.id or incident.replaced_by == new_serial:
                continue
            body = INCIDENT_WORDS[self._language]["replaced"].format(
                old=old_serial,
                new=new_serial,
                when=format_when(at, site.timezone),
                due=format_when(due, site.timezone),
                days=self._rules.return_days,
            )
            self._sink.submit(
                Intent(
                    kind=IntentKind.COMMENT,
                    ticket_key=incident.ticket_key,
                    idempotency_key=f"{incident.ticket_key}:replaced-{new_serial}",
                    priority=Priority(incident.priority),
                    body=body,
                )
            )
            self._store.update_incident(
                incident.id, replaced_by=new_serial, return_due=due, return_reminded=0, last_comm_at=at
            )
            log.info(
                "event=replacement_detected key=%s old=%s new=%s return_due=%s",
                incident.key,
                old_serial,
                new_serial,
                due.isoformat(),
            )

    def tick(self, at: datetime) -> None:
        """Time-driven duties: remind the service desk before a failed unit's return deadline."""
        for incident in self._store.incidents():
            due = incident.return_due
            if due is None or incident.return_reminded or at < due - self._rules.return_reminder:
                continue
            site = self._site(incident.site)
            body = INCIDENT_WORDS[self._language]["return_reminder"].format(
                old=incident.serial or "?",
                due=format_when(due, site.timezone),
            )
            self._sink.submit(
                Intent(
                    kind=IntentKind.COMMENT,
                    ticket_key=incident.ticket_key,
                    idempotency_key=f"{incident.ticket_key}:return-reminder-{incident.replaced_by}",
                    priority=Priority(incident.priority),
                    body=body,
                )
            )
            self._store.update_incident(incident.id, return_reminded=1)

    # --- site-wide -------------------------------------------------------------------------

    def raise_site_network(
        self, site_name: str, at: datetime, down: Sequence[str], canaries: Sequence[str]
    ) -> None:
        """Every device and canary at ``site_name`` failed together: one incident, not one per device."""
        site = self._site(site_name)
        key = incident_key(site.name, SITE_DEVICE, PROBLEM_SITE_NETWORK)
        if self._store.open_incident_for(key) is not None:
            return
        action = self._rules.site_network_action(site.name)
        if action != "ticket":
            if self._local_alert is not None:
                self._local_alert(
                    site.name, f"site network down: {len(down)} devices, canaries {list(canaries)}"
                )
            log.warning("event=site_network_down site=%s devices=%d action=%s", site.name, len(down), action)
            return
        priority = self._rules.site_network_priority
        devices = [d for d in self._config.devices if d.id in set(down)]

        def ticket(incident: Incident) -> Ticket:
            ctx = SiteContext(
                site=site,
                at=at,
                devices=tuple(devices),
                canaries=tuple(canaries),
                priority=priority,
                facts={d.id: f for d in devices if (f := self._facts(d.id)) is not None},
                now=self._clock.now(),
                sla_lines=tuple(self._sla(priority, site, at)),
            )
            return dataclasses.replace(render_site_ticket(ctx, self._language), key=incident.ticket_key)

        self._open_or_reopen(
            key, SITE_DEVICE, site.name, PROBLEM_SITE_NETWORK, priority, at, ticket, None, why="site network"
        )

    def clear_site_network(self, site_name: str, at: datetime) -> None:
        """The site's network answers again: resolve its site-network incident."""
        site = self._site(site_name)
        incident = self._store.open_incident_for(incident_key(site.name, SITE_DEVICE, PROBLEM_SITE_NETWORK))
        if incident is None:
            return
        body = INCIDENT_WORDS[self._language]["site_recovered"].format(
            site=site.name,
            when=format_when(at, site.timezone),
            duration=_duration(at - incident.opened_at, self._language),
        )
        self._close(incident, at, body)

    # --- transitions -----------------------------------------------------------------------

    def _key(self, device: Device, name: str) -> str:
        return incident_key(device.site, device.id, name)

    def _device(self, device_id: str) -> Device | None:
        try:
            return self._config.device(device_id)
        except KeyError:
            log.warning("event=unknown_device device=%s action=ignored", device_id)
            return None

    def _site(self, name: str) -> Site:
        return self._config.site(name)

    def _hold(self, device: Device, reason: str) -> None:
        if self._held.get(device.id) != reason:
            log.info("event=incident_held device=%s reason=%s", device.id, reason)
        self._held[device.id] = reason

    def _on_down(self, device: Device, event: WentDown) -> None:
        key = self._key(device, PROBLEM_OFFLINE)
        if self._store.open_incident_for(key) is not None:
            log.info("event=incident_already_open key=%s", key)
            return
        attachment = self._attachment(device.id)
        evidence = self._evidence(device.id, event.first_failure_at or event.at)

        def ticket(incident: Incident) -> Ticket:
            rendered = self._render(
                device,
                event.at,
                event.first_failure_at,
                event.reason,
                problem=None,
                priority=self._rules.offline_priority,
                attachment=attachment,
                incident=incident,
                failures=event.failures,
            )
            if evidence:
                line = EVIDENCE_LINE[self._language].format(names=", ".join(a.name for a in evidence))
                rendered = dataclasses.replace(rendered, body=f"{rendered.body.rstrip()}\n{line}\n")
            return rendered

        attachments = ((attachment,) if attachment else ()) + tuple(evidence)
        self._open_or_reopen(
            key,
            device.id,
            device.site,
            PROBLEM_OFFLINE,
            self._rules.offline_priority,
            event.at,
            ticket,
            self._facts_serial(device.id),
            why=event.reason,
            attachments=attachments,
            device=device,
            failures=event.failures,
        )

    def _open_or_reopen(
        self,
        key: str,
        device_id: str,
        site: str,
        problem: str,
        priority: Priority,
        at: datetime,
        ticket: Callable[[Incident], Ticket],
        serial: str | None,
        *,
        why: str,
        attachments: tuple[Attachment, ...] = (),
        device: Device | None = None,
        failures: int = 0,
    ) -> None:
        last = self._store.last_incident_for(key)
        if (
            last is not None
            and last.status == "resolved"
            and last.resolved_at is not None
            and at - last.resolved_at <= self._rules.reopen_window
        ):
            self._reopen(last, at, priority, why, attachments)
            return
        try:
            incident_id = self._store.open_incident(
                key, device_id, site, problem, priority.value, at, serial=serial
            )
        except IncidentAlreadyOpen:  # another thread won the race; its ticket stands
            log.info("event=incident_already_open key=%s", key)
            return
        incident = self._store.incident(incident_id)
        assert incident is not None
        log.info(
            "event=incident_opened key=%s ticket_key=%s device=%s site=%s priority=%s reason=%s failures=%d",
            key,
            incident.ticket_key,
            device_id,
            site,
            priority.value,
            why,
            failures,
        )
        self._sink.submit(
            Intent(
                kind=IntentKind.OPEN,
                ticket_key=incident.ticket_key,
                idempotency_key=f"{incident.ticket_key}:open",
                priority=priority,
                ticket=dataclasses.replace(ticket(incident), key=incident.ticket_key),
                attachments=attachments,
            )
        )

    def _submit_open(self, device: Device, incident: Incident, event: WentDown) -> None:
        """Submit the open intent of an existing incident again (reconcile after a crash)."""
        attachment = self._attachment(device.id)
        rendered = self._render(
            device,
            event.at,
            event.first_failure_at,
            event.reason,
            problem=None,
            priority=Priority(incident.priority),
            attachment=attachment,
            incident=incident,
            failures=event.failures,
        )
        self._sink.submit(
            Intent(
                kind=IntentKind.OPEN,
                ticket_key=incident.ticket_key,
                idempotency_key=f"{incident.ticket_key}:open",
                priority=Priority(incident.priority),
                ticket=dataclasses.replace(rendered, key=incident.ticket_key),
                attachments=(attachment,) if attachment else (),
            )
        )

    def _reopen(
        self,
        incident: Incident,
        at: datetime,
        priority: Priority,
        why: str,
        attachments: tuple[Attachment, ...],
    ) -> None:
        try:
            self._store.reopen_incident(incident.id, at)
        except IncidentAlreadyOpen:
            return
        reopened = self._store.incident(incident.id)
        assert reopened is not None
        site = self._site(incident.site)
        body = INCIDENT_WORDS[self._language]["reopened"].format(
            problem=incident.problem,
            when=format_when(at, site.timezone),
            why=why,
            since=format_when(incident.resolved_at or at, site.timezone),
        )
        sla = self._sla(priority, site, at)
        if sla:
            body = body + "\n\n" + "\n".join(sla)
        # With resolve-on-recovery off, the ticket was never resolved in the helpdesk: comment instead.
        kind = IntentKind.REOPEN if self._rules.resolve_on_recovery else IntentKind.COMMENT
        self._sink.submit(
            Intent(
                kind=kind,
                ticket_key=reopened.ticket_key,
                idempotency_key=f"{reopened.ticket_key}:reopen{_nth(reopened)}",
                priority=priority,
                body=body,
            )
        )
        for attachment in attachments:
            self._sink.submit(
                Intent(
                    kind=IntentKind.ATTACH,
                    ticket_key=reopened.ticket_key,
                    idempotency_key=f"{reopened.ticket_key}:attach{_nth(reopened)}:{attachment.name}",
                    priority=priority,
                    attachments=(attachment,),
                )
            )
        log.info(
            "event=incident_reopened key=%s ticket_key=%s reopen_count=%d",
            incident.key,
            reopened.ticket_key,
            reopened.reopen_count,
        )
        if priority.value != reopened.priority:
            device_id = reopened.device_id
            if device_id != SITE_DEVICE:
                self.change_priority(device_id, reopened.problem, priority, at, why)

    def _on_recovered(self, device: Device, at: datetime, downtime_s: float) -> None:
        key = self._key(device, PROBLEM_OFFLINE)
        incident = self._store.open_incident_for(key)
        if incident is None:
            log.info("event=recovered_without_incident key=%s downtime_s=%.0f", key, downtime_s)
            return
        site = self._site(device.site)
        priority = Priority(incident.priority)
        nth = _nth(incident)
        self._sink.submit(
            Intent(
                kind=IntentKind.COMMENT,
                ticket_key=incident.ticket_key,
                idempotency_key=f"{incident.ticket_key}:recovered{nth}",
                priority=priority,
                body=render_recovery_comment(device, downtime_s, at, site, self._language),
            )
        )
        if self._rules.resolve_on_recovery:
            self._sink.submit(
                Intent(
                    kind=IntentKind.RESOLVE,
                    ticket_key=incident.ticket_key,
                    idempotency_key=f"{incident.ticket_key}:resolve{nth}",
                    priority=priority,
                    body=render_resolve_comment(device, downtime_s, at, site, self._language),
                )
            )
        self._store.resolve_incident(incident.id, at)
        log.info(
            "event=incident_resolved key=%s ticket_key=%s device=%s downtime_s=%.0f",
            key,
            incident.ticket_key,
            device.id,
            downtime_s,
        )

    def _close(self, incident: Incident, at: datetime, body: str) -> None:
        nth = _nth(incident)
        kind = IntentKind.RESOLVE if self._rules.resolve_on_recovery else IntentKind.COMMENT
        self._sink.submit(
            Intent(
                kind=kind,
                ticket_key=incident.ticket_key,
                idempotency_key=f"{incident.ticket_key}:{_action(kind)}{nth}",
                priority=Priority(incident.priority),
                body=body,
            )
        )
        self._store.resolve_incident(incident.id, at)
        log.info("event=incident_resolved key=%s ticket_key=%s", incident.key, incident.ticket_key)

    # --- ticket content -------------------------------------------------------------------

    def _sla(self, priority: Priority, site: Site, at: datetime) -> list[str]:
        return self._sla_lines(priority, site, at, self._language) if self._sla_lines else []

    def _facts(self, device_id: str) -> DeviceFacts | None:
        known = self._store.facts(device_id)
        return known[0] if known else None

    def _facts_serial(self, device_id: str) -> str | None:
        facts = self._facts(device_id)
        return facts.serial if facts else None

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

    def _render(
        self,
        device: Device,
        at: datetime,
        first_seen: datetime,
        reason: str,
        *,
        problem: Problem | None,
        priority: Priority,
        attachment: Attachment | None,
        incident: Incident,
        failures: int = 0,
    ) -> Ticket:
        known = self._store.facts(device.id)
        facts, last_seen = known if known else (None, None)
        recent = self._store.recent_outcomes(device.id, TIMELINE_POLLS)
        checks: tuple[CheckResult, ...] = ()
        if recent:
            newest = recent[0]
            checks = newest.checks or (
                CheckResult(
                    check="poll",
                    ok=newest.ok,
                    latency_ms=newest.duration_s * 1000.0,
                    detail=newest.detail or newest.reason,
                ),
            )
        site = self._site(device.site)
        words = INCIDENT_WORDS[self._language]
        ctx = DownContext(
            device=device,
            site=site,
            contract=self._config.contract_for(facts.serial) if facts else None,
            facts=facts,
            last_seen=last_seen,
            went_down_at=at,
            first_failure_at=first_seen,
            failures=failures,
            reason=reason,
            now=self._clock.now(),
            timeline=recent,
            checks=checks,
            attachment_name=attachment.name if attachment else None,
            problem=problem.kind if problem else PROBLEM_OFFLINE,
            priority=priority,
            headline=words["headline"].get(problem.kind, problem.kind) if problem else None,
            summary=problem.summary if problem else None,
            details=dict(problem.details) if problem else {},
            sla_lines=tuple(self._sla(priority, site, at)),
        )
        return dataclasses.replace(render_down_ticket(ctx, self._language), key=incident.ticket_key)


def _nth(incident: Incident) -> str:
    """The idempotency suffix of the incident's current life (empty before any reopen)."""
    return f".{incident.reopen_count}" if incident.reopen_count else ""


def _action(kind: IntentKind) -> str:
    return "resolve" if kind is IntentKind.RESOLVE else "cleared"


def _duration(delta: timedelta, language: str) -> str:
    return format_duration(max(0.0, delta.total_seconds()), language)
