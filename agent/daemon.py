"""Wiring: config → scheduler → poller → state machine → incidents → dispatcher → backend.

:class:`Agent` owns every long-lived part and the per-poll pipeline. It is used by
``hezo-agent run`` (forever), ``hezo-agent demo`` (with a simulated fleet) and the end-to-end
tests (with a fake clock and explicit ``poll_once`` calls).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import random
import shutil
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

from agent.bundle_pack import redact_export
from agent.clock import Clock, SystemClock
from agent.config_baseline import BaselineStore, ConfigWatch
from agent.fdlimit import open_files_for, raise_open_files_limit
from agent.finding_tracker import FindingTracker
from agent.finding_watch import FindingWatch
from agent.flapping import PROBLEM_FLAPPING, FlapStarted, FlapState, FlapStopped, flap_step, replay
from agent.forward import SyslogForwarder
from agent.incidents import IncidentManager, IncidentRules, Problem
from agent.known_secrets import redactor_for
from agent.memory import release_free_memory
from agent.models import PollOutcome
from agent.poller import Poller
from agent.quiet import QuietJudge
from agent.redact import RedactingSink
from agent.scheduler import PollScheduler
from agent.site_network import RouteUplink
from agent.site_watch import SiteWatch
from agent.sla import SlaTicketLines
from agent.state import DeviceState, Event, Policy, Recovered, WentDown, next_delay_s, step
from agent.store import Store
from agent.ticket_commands import TicketCommandWatcher
from agent.ticket_text import PROBLEM_OFFLINE, incident_key
from collectors.base import Collector
from collectors.blackbox import BlackBoxes
from collectors.errors import CollectorError
from collectors.known_hosts import KnownHosts
from collectors.models import DeviceFacts
from collectors.pins import PinStore
from collectors.registry import build_collector
from collectors.safe_extract import ExtractLimits
from collectors.syslog import SyslogReceiver
from collectors.traps import TrapReceiver
from collectors.ymcs_channel import YmcsAccount
from config.loader import ConfigError, load_profile, profile_name, read_secret, resolve_password
from config.schema import AgentConfig, Device, Profile
from uploader.models import Attachment, Priority
from uploader.outbox import Outbox
from uploader.registry import build_backend

if TYPE_CHECKING:
    from agent.api import LocalApi

log = logging.getLogger("hezo.agent")

KEEP_LOGS_PER_DEVICE = 3
LOG_RETRY_FIRST_S = 60.0  # a failed log export is tried again after this, doubling up to log_refresh_s
FIRST_EXPORTS_PER_S = 1.0  # a fleet's first log exports are spread to about this rate (1,000 devices
# refreshing every 15 min export ~1.1 a second: the first round costs no more than any later one)
FIRST_EXPORTS_AT_ONCE = 40  # a site this small exports on its first polls (~0.6 s of CPU in all)
RECENT_EVENTS = 50
REPLAY_CHECKS = 4  # a flap state not saved is replayed from this many windows of recorded polls


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """Something worth showing a person: a state change or a ticket action."""

    at: datetime
    device_id: str
    kind: str
    text: str


def device_sources(config: AgentConfig) -> dict[str, str]:
    """Map each device's address to its id, so syslog senders are known (names are resolved once)."""
    sources: dict[str, str] = {}
    for dev in config.devices:
        try:
            sources[str(ipaddress.ip_address(dev.host))] = dev.id
            continue
        except ValueError:
            pass
        try:
            for info in socket.getaddrinfo(dev.host, None):
                sources[str(info[4][0])] = dev.id
        except OSError as err:
            log.warning("event=syslog_source_unresolved device=%s host=%s error=%s", dev.id, dev.host, err)
    return sources


def incident_rules(config: AgentConfig) -> IncidentRules:
    """The incident manager's rules from the configuration."""
    incidents = config.incidents
    return IncidentRules(
        reopen_window=timedelta(hours=incidents.reopen_window_hours),
        resolve_on_recovery=incidents.on_recovery == "resolve",
        return_days=config.sla.returns.days,
        return_reminder=timedelta(days=config.sla.returns.reminder_days),
        site_network_action=lambda site: config.site(site).site_network.action,
        site_network_priority=Priority(incidents.priority_of("site_network")),
        offline_priority=Priority(incidents.priority_of("offline")),
    )


def site_grace(config: AgentConfig) -> timedelta:
    """How long device tickets wait while a failing canary leaves network vs device undecided."""
    agent = config.agent
    return timedelta(seconds=agent.poll_interval_s * 2 + agent.retry_interval_s * agent.down_after)


def default_data_dir() -> Path:
    """Return the platform's data folder for the agent (e.g. ~/.local/share/hezo-agent)."""
    return Path(platformdirs.user_data_dir("hezo-agent", appauthor=False))


class Agent:
    """One site's agent: every device, its state, and the path to the helpdesk."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        data_dir: Path | None = None,
        clock: Clock | None = None,
        on_event: Callable[[AgentEvent], None] | None = None,
        sleep: Callable[[float], None] | None = None,
        collector_factory: Callable[[Device], Collector] | None = None,
    ) -> None:
        """Build every part; ``sleep`` is how cloud backoff waits (default :func:`time.sleep`;
        tests pass one that advances their fake clock).

        Raises:
            ConfigError: a password or channel secret (SSH, SNMP, traps, YMCS) cannot be read.

        ``collector_factory`` replaces the profile-driven collectors (scripted devices in tests and
        benchmarks).
        """
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.data_dir = Path(data_dir or config.agent.data_dir or default_data_dir())
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._on_event = on_event
        self.passwords = self._resolve_passwords(config)
        self.profiles = self._load_profiles(config)
        self.policy = Policy(
            down_after=config.agent.down_after,
            up_after=config.agent.up_after,
            poll_interval_s=config.agent.poll_interval_s,
            retry_interval_s=config.agent.retry_interval_s,
        )
        self.store = Store(self.data_dir / "agent.sqlite")
        #: each device's identity as last saved (a cache of the store: only this agent's polls write it)
        self._facts: dict[str, DeviceFacts | None] = {}
        # what the store holds of flap detection and finding tracks, to save only what a poll changed
        saved_trackers = self.store.finding_trackers()
        self._saved: dict[str, tuple[FlapState | None, FindingTracker | None]] = {}
        self.pins = PinStore(self.data_dir / "pins.json")
        self.known_hosts = KnownHosts(self.data_dir / "known_hosts")
        self.backend = build_backend(config.ticketing, self.data_dir)
        self.dispatcher = Outbox.from_settings(
            self.backend, self.data_dir, config.ticketing.outbox, clock=self.clock
        )
        # who is who by source address, for syslog and traps (host names resolved once, only if needed)
        self._sources = device_sources(config) if (config.syslog or config.traps) else {}
        self.blackboxes: BlackBoxes | None = None
        self.syslog: SyslogReceiver | None = None
        if config.syslog is not None:
            self.blackboxes = BlackBoxes(
                self.data_dir / "blackbox",
                max_bytes=config.syslog.blackbox_max_bytes,
                segment_bytes=config.syslog.segment_bytes,
            )
            self.syslog = SyslogReceiver.from_settings(
                config.syslog, sources=self._sources, boxes=self.blackboxes
            )
        # central forwarding of the devices' syslog and the agent's own events (off unless configured)
        self.forwarder: SyslogForwarder | None = None
        if config.forwarding is not None:
            self.forwarder = SyslogForwarder.from_settings(
                config.forwarding, self.data_dir, sites={dev.id: dev.site for dev in config.devices}
            )
            if self.syslog is not None:
                self.syslog.on_message = self.forwarder.device_message
        self.traps: TrapReceiver | None = None
        if config.traps is not None:
            traps = config.traps
            community = read_secret(traps.community_env, traps.community_file, "traps.community", "config")
            self.traps = TrapReceiver.from_settings(self._on_trap, traps, community)
        # one YMCS account (one client, one device listing per poll round) for every device opting in
        self.ymcs: YmcsAccount | None = None
        if config.ymcs is not None:
            self.ymcs = YmcsAccount.from_settings(
                config.ymcs, facts=self.known_facts, clock=self.clock, sleep=sleep or time.sleep
            )
        # every ticket, comment and body is masked before it is queued (issue 7: nothing secret leaves)
        self.redactor = redactor_for(config, self.profiles.values())
        self.incidents = IncidentManager(
            config,
            self.store,
            RedactingSink(self.dispatcher, self.redactor),
            self.clock,
            attachment_for=self.last_log_attachment,
            evidence_for=self.blackbox_attachments,
            rules=incident_rules(config),
            sla_lines=SlaTicketLines(config.sla),
            local_alert=self._local_alert,
        )
        self.quiet = QuietJudge(config)
        # config_drift: the device's configuration, read every check_every_minutes, vs its baseline file
        self.configs = ConfigWatch(
            BaselineStore(self.data_dir),
            self.collector,
            timedelta(minutes=config.incidents.config_drift.check_every_minutes),
        )
        self.findings = FindingWatch(
            config,
            self.profiles,
            self.incidents,
            self.quiet,
            blackboxes=self.blackboxes,
            firmware_of=self._known_firmware,
            config_inputs=self.configs.inputs if config.incidents.config_drift.enabled else None,
            trackers=saved_trackers,
        )
        self.flaps: dict[str, FlapState] = self._load_flaps(saved_trackers)
        self.sites = SiteWatch(
            config,
            self.incidents,
            uplink=RouteUplink.for_config(config),
            grace=site_grace(config),
        )
        self.poller = Poller(self.collector, self.clock)
        self.states: dict[str, DeviceState] = {
            dev.id: self.store.load_state(dev.id) or DeviceState.initial() for dev in config.devices
        }
        self._collectors: dict[str, Collector] = {}
        self._keep_alive_s = self._connection_keeping(config)
        self._collector_factory = collector_factory
        self._collectors_lock = threading.Lock()
        self.last_outcomes: dict[str, PollOutcome] = {}
        self._log_due: dict[str, datetime] = {}  # when each device's log export is next tried
        self._log_failures: dict[str, int] = {}
        #: called with every poll's outcome (metrics); quick, and an exception is only logged
        self.poll_listeners: list[Callable[[PollOutcome], None]] = []
        #: the latest events (state changes, tickets, alerts) for the status page, newest last
        self.recent_events: deque[AgentEvent] = deque(maxlen=RECENT_EVENTS)
        self.api: LocalApi | None = None
        #: since when each device reports a firmware update in progress (absent: no update)
        self.updating_since: dict[str, datetime] = {}
        self._scheduler: PollScheduler | None = None
        #: `/logs` in comments of the open tickets (issue 7); reads nothing unless someone is allowed
        self.ticket_commands = TicketCommandWatcher.for_agent(self)
        for dev in config.devices:  # build every collector now: a channel secret that is missing fails here
            self.collector(dev.id)

    # --- construction helpers -------------------------------------------------------------

    @staticmethod
    def _resolve_passwords(config: AgentConfig) -> dict[str, str | None]:
        passwords: dict[str, str | None] = {}
        problems: list[str] = []
        for i, dev in enumerate(config.devices):
            if dev.credentials is None:
                passwords[dev.id] = None
                continue
            try:
                passwords[dev.id] = resolve_password(dev.credentials, f"devices[{i}]")
            except ConfigError as err:
                problems.extend(f"devices[{i}].{line}" for line in err.lines)
        if problems:
            raise ConfigError("credentials", problems)
        return passwords

    @staticmethod
    def _connection_keeping(config: AgentConfig) -> float:
        """``agent.keep_alive_s``, once the open-files limit has room for a kept socket per device
        (raised if need be); 0 (close after every poll) when the limit cannot be raised enough,
        or when polls come further apart than that: a kept connection would never be reused."""
        keep = config.agent.keep_alive_s
        if keep <= 0:
            return 0.0
        if config.agent.poll_interval_s > keep:
            log.info(
                "event=keep_alive_off reason=poll_interval poll_interval_s=%g keep_alive_s=%g",
                config.agent.poll_interval_s,
                keep,
            )
            return 0.0
        wanted = open_files_for(len(config.devices))
        limit = raise_open_files_limit(wanted)
        if limit is not None and limit < wanted:
            log.warning(
                "event=keep_alive_off reason=open_files_limit limit=%d wanted=%d devices=%d",
                limit,
                wanted,
                len(config.devices),
            )
            return 0.0
        return keep

    @staticmethod
    def _load_profiles(config: AgentConfig) -> dict[str, Profile]:
        search = [config.agent.profiles_dir] if config.agent.profiles_dir else []
        loaded: dict[str, Profile] = {}  # each profile read once, not once per device
        for dev in config.devices:
            name = profile_name(dev.model, dev.profile)
            if name not in loaded:
                loaded[name] = load_profile(name, search)
        return {dev.id: loaded[profile_name(dev.model, dev.profile)] for dev in config.devices}

    def collector(self, device_id: str) -> Collector:
        """Return (building once) the collector of ``device_id``."""
        with self._collectors_lock:
            found = self._collectors.get(device_id)
            if found is None and self._collector_factory is not None:
                found = self._collector_factory(self.config.device(device_id))
            if found is None:
                found = build_collector(
                    self.config.device(device_id),
                    self.profiles[device_id],
                    password=self.passwords[device_id],
                    pins=self.pins,
                    timeout_s=self.config.agent.timeout_s,
                    max_response_bytes=self.config.agent.max_response_bytes,
                    max_log_bytes=self.config.agent.max_log_bytes,
                    known_hosts=self.known_hosts,
                    ymcs=self.ymcs,
                    keep_alive_s=self._keep_alive_s,
                )
                self._collectors[device_id] = found
            return found

    def _load_flaps(self, saved_trackers: dict[str, FindingTracker]) -> dict[str, FlapState]:
        """Each device's flap state as saved, so flapping outlives a restart (issue 5).

        A device with none saved (a store of an agent that did not keep them) gets the state its
        recorded polls replay to; with flap detection off every device starts stable.
        """
        settings = self.config.flapping
        saved = self.store.flap_states()
        flaps: dict[str, FlapState] = {}
        for dev in self.config.devices:
            self._saved[dev.id] = (saved.get(dev.id), saved_trackers.get(dev.id))
            flap = saved.get(dev.id) if settings.enabled else FlapState.initial()
            if flap is None:
                recent = self.store.recent_outcomes(dev.id, REPLAY_CHECKS * settings.checks)
                flap = replay((r.reachable for r in reversed(recent)), settings, self.config.agent.down_after)
            flaps[dev.id] = flap
        return flaps

    def _known_firmware(self, device_id: str) -> str | None:
        known = self.known_facts(device_id)
        return known.firmware if known is not None else None

    def known_facts(self, device_id: str) -> DeviceFacts | None:
        """The identity ``device_id`` last reported (kept across restarts), None if it never answered."""
        if device_id not in self._facts:  # read once: afterwards every poll that saves it updates it
            found = self.store.facts(device_id)
            self._facts[device_id] = found[0] if found is not None else None
        return self._facts[device_id]

    # --- the per-poll pipeline --------------------------------------------------------------

    def poll_once(self, device_id: str) -> float:
        """Poll one device, advance its state, raise or resolve incidents; return the next delay.

        Everything the poll changes (outcome, state, identity, flap state, finding tracks) is
        worked out first and saved in ONE store transaction (issue 9) before any ticket is acted
        on, so after a crash the saved state is never behind the tickets: :meth:`reconcile` only
        has to finish what the tickets had not reached yet.
        """
        outcome = self.poller.poll(device_id)
        self.last_outcomes[device_id] = outcome
        self._notify_poll(outcome)
        updating_since = self._track_update(device_id, outcome)
        facts = None
        if outcome.ok and outcome.sample is not None and outcome.sample.facts.serial != "unknown":
            facts = outcome.sample.facts
            self._note_identity(device_id, facts, outcome.at)
        liveness = dataclasses.replace(outcome, ok=outcome.reachable)
        previous = self.states[device_id]
        state, events = step(previous, liveness, self.policy)
        flap, flap_event = flap_step(
            self.flaps[device_id], liveness.ok, self.config.flapping, self.config.agent.down_after
        )
        found = self.findings.judge(outcome, updating_since=updating_since)
        self._save_poll(outcome, state, facts, flap, found.state)
        self.states[device_id] = state
        self.flaps[device_id] = flap
        if state.health != previous.health:
            log.info(
                "event=state_change device=%s from=%s to=%s reason=%s",
                device_id,
                previous.health,
                state.health,
                outcome.reason,
            )
            self._emit(
                outcome.at, device_id, "state", f"{previous.health} → {state.health} ({outcome.reason})"
            )
        if any(isinstance(e, WentDown) for e in events):
            self.sites.judge(self.reachability(), outcome.at)  # network or device? ask the canaries now
        hold = self._hold_reason(device_id, outcome.at, flap, updating_since)
        if events:
            had_ticket = self._offline_ticket_open(device_id)
            self.incidents.handle(device_id, events, hold=hold)
            self._announce(device_id, events, hold, had_ticket)
        if not liveness.ok:  # a ticket held back opens on a fresh failure once nothing holds it
            self.incidents.review(device_id, state, hold=hold)
        self._on_flap(device_id, flap_event, outcome.at)
        self.findings.act(device_id, found, outcome.at)
        if outcome.ok:
            self._refresh_log_if_due(device_id, outcome)
        return next_delay_s(state, self.policy)

    def _track_update(self, device_id: str, outcome: PollOutcome) -> datetime | None:
        """Since when ``device_id`` reports a firmware update, after ``outcome``; None when none runs.

        Set by the first sample saying an update runs; kept while the device is silent (it may be
        rebooting into the new firmware) or its sample cannot tell (``updating`` None); cleared by
        a sample saying no update runs.
        """
        updating = outcome.sample.updating if outcome.sample is not None else None
        since = self.updating_since.get(device_id)
        if updating is True and since is None:
            since = self.updating_since[device_id] = outcome.at
            log.info("event=firmware_update_started device=%s", device_id)
        elif updating is False and since is not None:
            del self.updating_since[device_id]
            minutes = (outcome.at - since).total_seconds() / 60
            log.info("event=firmware_update_ended device=%s minutes=%.1f", device_id, minutes)
            since = None
        return since

    def _note_identity(self, device_id: str, facts: DeviceFacts, at: datetime) -> None:
        """A new serial in the device's place is a replacement (or a swap); the poll saves ``facts``."""
        known = self.known_facts(device_id)
        if known is not None and known.serial not in ("unknown", facts.serial):
            log.info("event=serial_changed device=%s old=%s new=%s", device_id, known.serial, facts.serial)
            self.incidents.note_replacement(device_id, known.serial, facts.serial, at)

    def _save_poll(
        self,
        outcome: PollOutcome,
        state: DeviceState,
        facts: DeviceFacts | None,
        flap: FlapState,
        tracker: FindingTracker,
    ) -> None:
        """Save one poll in one transaction; the flap state and finding tracks only if they changed."""
        device_id = outcome.device_id
        saved_flap, saved_tracker = self._saved.get(device_id, (None, None))
        self.store.record_poll(
            outcome,
            state,
            facts=facts,
            flap=None if flap == saved_flap else flap,
            tracker=None if tracker == saved_tracker else tracker,
        )
        self._saved[device_id] = (flap, tracker)
        if facts is not None:
            self._facts[device_id] = facts

    def reachability(self) -> dict[str, bool | None]:
        """Each device's latest liveness for the site judge (None: not polled yet, or quiet now)."""
        now = self.clock.now()
        seen: dict[str, bool | None] = {}
        for dev in self.config.devices:
            outcome = self.last_outcomes.get(dev.id)
            quiet = self.quiet.quiet_reason(dev.id, now, self.updating_since.get(dev.id)) is not None
            seen[dev.id] = None if outcome is None or quiet else outcome.reachable
        return seen

    def _hold_reason(
        self, device_id: str, at: datetime, flap: FlapState, updating_since: datetime | None = None
    ) -> str | None:
        """Why an offline ticket of ``device_id`` must not open now (quiet or updating, flapping, site)."""
        device = self.config.device(device_id)
        return (
            self.quiet.quiet_reason(device_id, at, updating_since)
            or ("flapping: one medium ticket stands for it" if flap.flapping else None)
            or self.sites.hold_reason(device.site, at)
        )

    def _on_flap(self, device_id: str, event: FlapStarted | FlapStopped | None, at: datetime) -> None:
        if isinstance(event, FlapStarted):
            summary = f"{event.percent:.0f}% state change in recent polls (threshold {event.threshold:.0f}%)"
            priority = Priority(self.config.incidents.priority_of(PROBLEM_FLAPPING))
            problem = Problem(PROBLEM_FLAPPING, priority, summary=summary)
            self.incidents.raise_problem(device_id, problem, at)
            self._emit(at, device_id, "ticket_opened", f"flapping: {summary}")
        elif isinstance(event, FlapStopped):
            self.incidents.clear_problem(device_id, PROBLEM_FLAPPING, at)
            self._emit(at, device_id, "ticket_resolved", f"stable again ({event.percent:.0f}% state change)")

    def _tick(self) -> None:
        self.incidents.tick(self.clock.now())

    def _local_alert(self, subject: str, text: str) -> None:
        log.warning("event=local_alert subject=%s text=%s", subject, text)
        self._emit(self.clock.now(), subject, "alert", text)

    def judge_sites(self) -> None:
        """Probe canaries and judge every site (a periodic job; also run when a device goes down)."""
        self.sites.judge(self.reachability(), self.clock.now())

    def _offline_ticket_open(self, device_id: str) -> bool:
        device = self.config.device(device_id)
        return self.store.open_incident_for(incident_key(device.site, device.id, PROBLEM_OFFLINE)) is not None

    def _announce(self, device_id: str, events: list[Event], hold: str | None, had_ticket: bool) -> None:
        for event in events:
            if isinstance(event, WentDown) and hold:
                self._emit(event.at, device_id, "held", f"down, ticket held: {hold}")
            elif isinstance(event, WentDown):
                self._emit(event.at, device_id, "ticket_opened", f"down after {event.failures} failed polls")
            elif isinstance(event, Recovered):
                kind = "ticket_resolved" if had_ticket else "recovered"
                self._emit(event.at, device_id, kind, f"recovered after {event.downtime_s:.0f} s")

    def _emit(self, at: datetime, device_id: str, kind: str, text: str) -> None:
        event = AgentEvent(at, device_id, kind, text)
        self.recent_events.append(event)
        if self.forwarder is not None:
            self.forwarder.agent_event(at, device_id, kind, text)
        if self._on_event is not None:
            self._on_event(event)

    def _notify_poll(self, outcome: PollOutcome) -> None:
        for listener in self.poll_listeners:
            try:
                listener(outcome)
            except Exception:  # an observer's bug must not stop polling
                log.exception("event=poll_listener_failed device=%s", outcome.device_id)

    def _on_trap(self, source_ip: str, trap_oid: str, varbinds: list[tuple[str, int | str]]) -> None:
        """A trap is a hint, never a verdict: poll its device now and let the state machine judge."""
        device_id = self._sources.get(source_ip)
        if device_id is None:
            log.info("event=trap_unknown_sender source=%s oid=%s", source_ip, trap_oid)
            return
        log.info("event=trap device=%s oid=%s", device_id, trap_oid)
        self._emit(self.clock.now(), device_id, "trap", f"trap {trap_oid}: confirm poll")
        if self._scheduler is not None:
            self._scheduler.poll_now(device_id)

    # --- logs -------------------------------------------------------------------------------

    def _refresh_log_if_due(self, device_id: str, outcome: PollOutcome) -> None:
        """Refresh the device's last log every ``log_refresh_s``; after a failed export, back off
        (one minute, doubling, up to ``log_refresh_s``) instead of retrying on every good poll."""
        due = self._log_due.get(device_id)
        if due is None:  # first look since start: the store knows when the last one was taken
            last = self.store.last_log(device_id)
            due = (
                outcome.at + self._first_export_delay(device_id)
                if last is None
                else last.taken_at + self._log_refresh
            )
            self._log_due[device_id] = due
        if outcome.at >= due:
            self.collect_log(device_id)

    def _first_export_delay(self, device_id: str) -> timedelta:
        """A device's first export waits a stable random share of ``devices / FIRST_EXPORTS_PER_S``
        (never more than ``log_refresh_s``): 1,000 devices exporting on their first poll kept one
        core busy for minutes and made every poll of that round late; at 4 a second they still ran at
        3.6x the steady rate of exports (1,000 devices, 15 min) for four minutes. A site of up to
        ``FIRST_EXPORTS_AT_ONCE`` devices exports on its first polls, so the log is on hand when a
        device fails soon after the start (the demo's outage comes five seconds in)."""
        devices = len(self.config.devices)
        if devices <= FIRST_EXPORTS_AT_ONCE:
            return timedelta(0)
        window = min(devices / FIRST_EXPORTS_PER_S, self.config.agent.log_refresh_s)
        return timedelta(seconds=random.Random(device_id).uniform(0, window))

    @property
    def _log_refresh(self) -> timedelta:
        return timedelta(seconds=self.config.agent.log_refresh_s)

    def _log_tried(self, device_id: str, taken_at: datetime | None) -> None:
        """Note a log export that worked (``taken_at``) or failed (None) for the next due time."""
        if taken_at is not None:
            self._log_failures.pop(device_id, None)
            self._log_due[device_id] = taken_at + self._log_refresh
            return
        failures = self._log_failures.get(device_id, 0) + 1
        self._log_failures[device_id] = failures
        wait = timedelta(seconds=LOG_RETRY_FIRST_S * 2 ** min(failures - 1, 16))
        self._log_due[device_id] = self.clock.now() + min(wait, self._log_refresh)

    def collect_log(self, device_id: str) -> Path | None:
        """Fetch the device's log export now and keep it as its last collected log."""
        folder = self.data_dir / "logs" / device_id
        folder.mkdir(parents=True, exist_ok=True)
        raw_dir = folder / ".raw"
        raw_dir.mkdir(exist_ok=True)
        try:
            bundle = self.collector(device_id).collect_logs(raw_dir)
            # nothing the device wrote leaves unmasked: the ticket attaches the redacted copy
            dest = folder / bundle.path.name
            extract = self.config.bundles.extract
            limits = ExtractLimits(extract.max_files, extract.max_bytes, extract.max_ratio, extract.timeout_s)
            size, sha = redact_export(bundle.path, dest, self.redactor, limits, bundle.taken_at, device_id)
        except CollectorError as err:
            log.warning("event=log_collect_failed device=%s reason=%s", device_id, err.reason)
            self._log_tried(device_id, None)
            return None
        finally:
            shutil.rmtree(raw_dir, ignore_errors=True)
        self.store.save_log(device_id, dest, size, sha, bundle.taken_at)
        self._log_tried(device_id, bundle.taken_at)
        for old in sorted(folder.glob("*.tar.gz"))[:-KEEP_LOGS_PER_DEVICE]:
            old.unlink(missing_ok=True)
        return dest

    def last_log_attachment(self, device_id: str) -> Attachment | None:
        """Return the device's last collected log as a ticket attachment, if one exists."""
        last = self.store.last_log(device_id)
        if last is None or not Path(last.path).is_file():
            return None
        path = Path(last.path)
        return Attachment(name=path.name, path=path, content_type="application/gzip")

    def blackbox_attachments(self, device_id: str, failed_at: datetime) -> list[Attachment]:
        """Export the device's black-box syslog around a failure as a ticket attachment."""
        if self.blackboxes is None or self.config.syslog is None:
            return []
        box = self.blackboxes.get(device_id)
        if box.size_bytes() == 0:
            return []
        since = failed_at - timedelta(minutes=self.config.syslog.attach_minutes)
        folder = self.data_dir / "evidence" / device_id
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / f"{device_id}-blackbox-{failed_at:%Y%m%dT%H%M%SZ}.log"
        size, _sha = box.export(dest, since=since)
        if size == 0:
            dest.unlink(missing_ok=True)
            return []
        return [Attachment(name=dest.name, path=dest, content_type="text/plain")]

    # --- running ----------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Bring the open incidents and the saved state into agreement (at start, after a stop or crash).

        Offline incidents follow the device states (:meth:`IncidentManager.reconcile`). A
        ``flapping`` incident follows the flap state: a device saved as flapping without one gets
        it (the start was saved, its ticket not yet), one open for a device not flapping (or with
        detection now off) is resolved. Finding incidents follow the trackers
        (:meth:`FindingWatch.reconcile`): an open one whose track was lost gets it back raised, so
        the next polls keep it or clear it, never a second ticket.
        """
        self.incidents.reconcile(self.states)
        open_incidents = self.store.incidents(open_only=True)
        open_keys = {incident.key for incident in open_incidents}
        settings = self.config.flapping
        now = self.clock.now()
        for dev in self.config.devices:
            flap = self.flaps[dev.id]
            ticket = incident_key(dev.site, dev.id, PROBLEM_FLAPPING) in open_keys
            if flap.flapping and not ticket:
                self._on_flap(dev.id, FlapStarted(flap.percent, settings.high_threshold_pct), now)
            elif ticket and not flap.flapping:
                self._on_flap(dev.id, FlapStopped(flap.percent, settings.low_threshold_pct), now)
        self.findings.reconcile(open_incidents)  # changed trackers are saved with each device's next poll

    def start(self) -> None:
        """Start polling every device in the background (after repairing what a crash left)."""
        self.reconcile()
        self._start_api()
        self._scheduler = PollScheduler(
            [dev.id for dev in self.config.devices],
            self.poll_once,
            interval_s=self.policy.poll_interval_s,
            jitter_s=self.config.agent.jitter_s,
            max_workers=min(32, max(4, len(self.config.devices))),
        )
        self._scheduler.add_periodic(self.dispatcher.flush, every_s=5.0, job_id="dispatch")
        self._scheduler.add_periodic(self._tick, every_s=60.0, job_id="sla")
        self._scheduler.add_periodic(release_free_memory, every_s=60.0, job_id="release-memory")
        if self.ticket_commands.active:
            self._scheduler.add_periodic(
                self.ticket_commands.run_once, every_s=self.config.commands.poll_s, job_id="ticket-commands"
            )
        if any(site.canaries for site in self.config.sites):
            self._scheduler.add_periodic(
                self.judge_sites, every_s=self.config.agent.poll_interval_s, job_id="sites"
            )
        self._scheduler.start()
        if self.forwarder is not None:
            self.forwarder.start()
        if self.syslog is not None:
            self.syslog.start()
        if self.traps is not None:
            self.traps.start()
        log.info("event=agent_started devices=%d data_dir=%s", len(self.config.devices), self.data_dir)

    def _start_api(self) -> None:
        """Serve the local API, status page and /metrics (a port in use is logged, not fatal)."""
        if not self.config.api.enabled:
            return
        from agent.api import LocalApi

        settings = self.config.api
        try:
            api = LocalApi.for_agent(self)
        except OSError as err:  # the token file cannot be made or read
            log.error("event=api_not_started host=%s port=%d error=%s", settings.host, settings.port, err)
            return
        try:
            api.start()
        except OSError as err:  # e.g. the port is taken by another program
            api.close()
            log.error("event=api_not_started host=%s port=%d error=%s", settings.host, settings.port, err)
            return
        self.api = api

    def stop(self) -> None:
        """Stop polling, deliver what can be delivered, close everything."""
        if self.api is not None:
            self.api.stop()
            self.api = None
        if self._scheduler is not None:
            self._scheduler.stop()
            self._scheduler = None
        if self.traps is not None:
            self.traps.stop()
        if self.syslog is not None:
            self.syslog.stop()
        if self.forwarder is not None:
            self.forwarder.stop()
        if self.blackboxes is not None:
            self.blackboxes.close()
        self.dispatcher.flush()
        for collector in self._collectors.values():
            collector.close()
        if self.ymcs is not None:
            self.ymcs.close()
        self.dispatcher.close()
        self.backend.close()
        self.store.close()
        log.info("event=agent_stopped")
