"""Wiring: config → scheduler → poller → state machine → incidents → dispatcher → backend.

:class:`Agent` owns every long-lived part and the per-poll pipeline. It is used by
``hezo-agent run`` (forever), ``hezo-agent demo`` (with a simulated fleet) and the end-to-end
tests (with a fake clock and explicit ``poll_once`` calls).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import platformdirs

from agent.clock import Clock, SystemClock
from agent.incidents import IncidentManager
from agent.models import PollOutcome
from agent.poller import Poller
from agent.scheduler import PollScheduler
from agent.state import DeviceState, Event, Policy, Recovered, WentDown, next_delay_s, step
from agent.store import Store
from collectors.base import Collector
from collectors.blackbox import BlackBoxes
from collectors.errors import CollectorError
from collectors.known_hosts import KnownHosts
from collectors.pins import PinStore
from collectors.registry import build_collector
from collectors.syslog import SyslogReceiver
from collectors.traps import TrapReceiver
from config.loader import ConfigError, load_profile, profile_name, read_secret, resolve_password
from config.schema import AgentConfig, Profile
from uploader.dispatcher import Dispatcher
from uploader.models import Attachment
from uploader.registry import build_backend

log = logging.getLogger("hezo.agent")

KEEP_LOGS_PER_DEVICE = 3


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
    ) -> None:
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
        self.pins = PinStore(self.data_dir / "pins.json")
        self.known_hosts = KnownHosts(self.data_dir / "known_hosts")
        self.backend = build_backend(config.ticketing, self.data_dir)
        self.dispatcher = Dispatcher(self.backend, self.data_dir / "dispatch.sqlite", clock=self.clock)
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
        self.traps: TrapReceiver | None = None
        if config.traps is not None:
            traps = config.traps
            community = read_secret(traps.community_env, traps.community_file, "traps.community", "config")
            self.traps = TrapReceiver.from_settings(self._on_trap, traps, community)
        self.incidents = IncidentManager(
            config,
            self.store,
            self.dispatcher,
            self.clock,
            attachment_for=self.last_log_attachment,
            evidence_for=self.blackbox_attachments,
        )
        self.poller = Poller(self.collector, self.clock)
        self.states: dict[str, DeviceState] = {
            dev.id: self.store.load_state(dev.id) or DeviceState.initial() for dev in config.devices
        }
        self._collectors: dict[str, Collector] = {}
        self._collectors_lock = threading.Lock()
        self.last_outcomes: dict[str, PollOutcome] = {}
        self._scheduler: PollScheduler | None = None
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
    def _load_profiles(config: AgentConfig) -> dict[str, Profile]:
        search = [config.agent.profiles_dir] if config.agent.profiles_dir else []
        return {dev.id: load_profile(profile_name(dev.model, dev.profile), search) for dev in config.devices}

    def collector(self, device_id: str) -> Collector:
        """Return (building once) the collector of ``device_id``."""
        with self._collectors_lock:
            found = self._collectors.get(device_id)
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
                )
                self._collectors[device_id] = found
            return found

    # --- the per-poll pipeline --------------------------------------------------------------

    def poll_once(self, device_id: str) -> float:
        """Poll one device, advance its state, raise or resolve incidents; return the next delay."""
        outcome = self.poller.poll(device_id)
        self.last_outcomes[device_id] = outcome
        self.store.record_outcome(outcome)
        if outcome.ok and outcome.sample is not None and outcome.sample.facts.serial != "unknown":
            self.store.save_facts(device_id, outcome.sample.facts, outcome.at)
        liveness = dataclasses.replace(outcome, ok=outcome.reachable)
        previous = self.states[device_id]
        state, events = step(previous, liveness, self.policy)
        self.states[device_id] = state
        self.store.save_state(device_id, state)
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
        if events:
            self.incidents.handle(device_id, events)
            self._announce(device_id, events)
        if outcome.ok:
            self._refresh_log_if_due(device_id, outcome)
        return next_delay_s(state, self.policy)

    def _announce(self, device_id: str, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, WentDown):
                self._emit(event.at, device_id, "ticket_opened", f"down after {event.failures} failed polls")
            elif isinstance(event, Recovered):
                self._emit(
                    event.at, device_id, "ticket_resolved", f"recovered after {event.downtime_s:.0f} s"
                )

    def _emit(self, at: datetime, device_id: str, kind: str, text: str) -> None:
        if self._on_event is not None:
            self._on_event(AgentEvent(at, device_id, kind, text))

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
        last = self.store.last_log(device_id)
        if (
            last is not None
            and (outcome.at - last.taken_at).total_seconds() < self.config.agent.log_refresh_s
        ):
            return
        self.collect_log(device_id)

    def collect_log(self, device_id: str) -> Path | None:
        """Fetch the device's log export now and keep it as its last collected log."""
        folder = self.data_dir / "logs" / device_id
        folder.mkdir(parents=True, exist_ok=True)
        try:
            bundle = self.collector(device_id).collect_logs(folder)
        except CollectorError as err:
            log.warning("event=log_collect_failed device=%s reason=%s", device_id, err.reason)
            return None
        self.store.save_log(device_id, bundle.path, bundle.size_bytes, bundle.sha256, bundle.taken_at)
        for old in sorted(folder.glob("*.tar.gz"))[:-KEEP_LOGS_PER_DEVICE]:
            old.unlink(missing_ok=True)
        return bundle.path

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

    def start(self) -> None:
        """Start polling every device in the background (after repairing what a crash left)."""
        self.incidents.reconcile(self.states)
        self._scheduler = PollScheduler(
            [dev.id for dev in self.config.devices],
            self.poll_once,
            jitter_s=self.config.agent.jitter_s,
            max_workers=min(32, max(4, len(self.config.devices))),
        )
        self._scheduler.add_periodic(self.dispatcher.flush, every_s=5.0, job_id="dispatch")
        self._scheduler.start()
        if self.syslog is not None:
            self.syslog.start()
        if self.traps is not None:
            self.traps.start()
        log.info("event=agent_started devices=%d data_dir=%s", len(self.config.devices), self.data_dir)

    def stop(self) -> None:
        """Stop polling, deliver what can be delivered, close everything."""
        if self._scheduler is not None:
            self._scheduler.stop()
            self._scheduler = None
        if self.traps is not None:
            self.traps.stop()
        if self.syslog is not None:
            self.syslog.stop()
        if self.blackboxes is not None:
            self.blackboxes.close()
        self.dispatcher.flush()
        for collector in self._collectors.values():
            collector.close()
        self.dispatcher.close()
        self.backend.close()
        self.store.close()
        log.info("event=agent_stopped")
