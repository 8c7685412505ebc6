"""Scripted devices on a fake clock, polled by the real agent pipeline in a discrete-event loop.

The agent's :meth:`~agent.daemon.Agent.poll_once` (collector → state machine → flapping → site
judge → incidents → outbox → local helpdesk) runs unchanged; only the devices and the clock are
scripted. :class:`EventLoop` replays what :class:`~agent.scheduler.PollScheduler` does in real
time: each device's next poll is due when its poll *ended* plus the delay the state machine
chose plus the scheduler's jitter (``uniform(0, min(jitter_s, delay × 0.1))``); first polls are
spread over ``jitter_s``; a hint (trap) polls a device now. A poll lasts as long as its device
makes it (a refusal ~instantly, a hung device the full timeout), so hung devices are slower to
confirm, as in real time. Nothing sleeps.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from agent.clock import FakeClock
from agent.daemon import Agent, AgentEvent, site_grace
from agent.scheduler import first_poll_window_s, next_due_s
from agent.site_watch import SiteWatch
from collectors.base import Collector
from collectors.errors import DeviceTimeout, DeviceUnreachable
from collectors.models import CheckResult, DeviceFacts, HealthSample, LogBundle
from config.loader import load_config
from config.schema import Device
from uploader.backends.local import LocalBackend, LocalTicket

#: what a device does at a given time: "up", "refused" or "hang"
Behaviour = Callable[[str, datetime], str]


class ScriptedCollector(Collector):
    """A device whose answer at each poll comes from a behaviour function of (id, time)."""

    def __init__(self, device: Device, behaviour: Behaviour, clock: FakeClock, serial: str) -> None:
        self.device = device
        self.behaviour = behaviour
        self.clock = clock
        self.serial = serial

    def _facts(self) -> DeviceFacts:
        return DeviceFacts(
            model=self.device.model, firmware="133.15.0.76", serial=self.serial, mac="00:15:65:00:00:01"
        )

    def collect_facts(self) -> DeviceFacts:
        """Return the identity, or fail as the behaviour says."""
        what = self.behaviour(self.device.id, self.clock.now())
        if what == "refused":
            raise DeviceUnreachable(f"{self.device.host}: connection refused")
        if what == "hang":
            raise DeviceTimeout(f"{self.device.host}: no answer within the timeout")
        return self._facts()

    def collect_health(self) -> HealthSample:
        """Return a healthy sample, or fail as the behaviour says."""
        facts = self.collect_facts()
        return HealthSample(
            self.device.id,
            self.clock.now(),
            facts,
            uptime_s=3600,
            peripherals=(),
            checks=(CheckResult("https_api", True, 12.0),),
        )

    def collect_logs(self, dest_dir: Path) -> LogBundle:
        """Scripted devices have no logs."""
        raise DeviceUnreachable("no logs from a scripted device")


def site(name: str, canaries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A site mapping for the config."""
    return {
        "name": name,
        "address": f"ul. Testowa 1, {name}",
        "contact": {"name": "Anna Nowak", "phone": "+48 600 100 200", "email": "anna@example.com"},
        "canaries": canaries or [],
    }


def devices(site_name: str, count: int, start: int = 0) -> list[dict[str, Any]]:
    """``count`` A30 devices at ``site_name`` on made-up loopback addresses (never contacted)."""
    return [
        {
            "id": f"{site_name}-{i:04d}",
            "room": f"Room {i}",
            "site": site_name,
            "model": "A30",
            "host": f"127.66.{i // 250}.{i % 250 + 1}",
        }
        for i in range(start, start + count)
    ]


def scripted_agent(
    workdir: Path,
    raw: dict[str, Any],
    clock: FakeClock,
    behaviour: Behaviour,
    on_event: Callable[[AgentEvent], None] | None = None,
    canary_up: Callable[[str, int], bool] | None = None,
) -> Agent:
    """Build the real Agent over ``raw`` with scripted devices; canaries answer as ``canary_up`` says."""
    raw.setdefault("agent", {}).update({"data_dir": str(workdir / "data"), "language": "en"})
    raw.setdefault("ticketing", {"backend": "local"})
    raw.setdefault("api", {"enabled": False})
    path = workdir / "agent.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    config = load_config(path)
    serials = {d.id: f"8030{i:012d}" for i, d in enumerate(config.devices)}
    agent = Agent(
        config,
        clock=clock,
        on_event=on_event,
        collector_factory=lambda dev: ScriptedCollector(dev, behaviour, clock, serials[dev.id]),
    )

    def connect(host: str, port: int, timeout_s: float) -> None:
        if canary_up is not None and not canary_up(host, port):
            raise ConnectionRefusedError(f"{host}:{port} refused")

    # the site judge with a scripted network: canaries answer as told, the agent's uplink is up
    agent.sites = SiteWatch(
        config, agent.incidents, uplink=lambda: True, grace=site_grace(config), connect=connect
    )
    return agent


def tickets(agent: Agent) -> list[LocalTicket]:
    """Every ticket the embedded helpdesk holds (after delivering what is queued)."""
    assert isinstance(agent.backend, LocalBackend)
    agent.dispatcher.flush()
    return agent.backend.tickets()


class EventLoop:
    """Runs the agent's polls in simulated time (see the module docstring)."""

    def __init__(
        self,
        agent: Agent,
        clock: FakeClock,
        *,
        jitter_s: float,
        duration_s: Callable[[str, bool], float],
        rng: random.Random,
    ) -> None:
        self.agent = agent
        self.clock = clock
        self.jitter_s = jitter_s
        self.duration_s = duration_s
        self.rng = rng
        self.origin = clock.now()
        self._heap: list[tuple[float, int, str, int]] = []
        self._version: dict[str, int] = {}
        self._seq = 0
        self.polls = 0
        self._interval_s = agent.policy.poll_interval_s
        self._retrying: set[str] = set()
        self.after_poll: Callable[[str, float, float, bool], None] | None = None
        canaries = any(s.canaries for s in agent.config.sites)
        self._periodic = [(5.0, "dispatch"), (60.0, "sla")]
        if canaries:
            self._periodic.append((agent.config.agent.poll_interval_s, "sites"))

    def now_s(self) -> float:
        """Return simulated seconds since the start."""
        return (self.clock.now() - self.origin).total_seconds()

    def _push(self, at_s: float, device_id: str) -> None:
        self._seq += 1
        version = self._version.get(device_id, 0) + 1
        self._version[device_id] = version
        heapq.heappush(self._heap, (at_s, self._seq, device_id, version))

    def start(self) -> None:
        """Spread every device's first poll as the scheduler does; start the housekeeping jobs."""
        self.agent.incidents.reconcile(self.agent.states)
        window = first_poll_window_s(
            len(self.agent.config.devices), interval_s=self._interval_s, jitter_s=self.jitter_s
        )
        for dev in self.agent.config.devices:
            self._push(self.rng.uniform(0, window), dev.id)
        for every, name in self._periodic:
            self._seq += 1
            heapq.heappush(self._heap, (every, self._seq, f"@{name}", 0))

    def hint(self, device_id: str, at_s: float) -> None:
        """A trap for ``device_id`` at ``at_s``: its next poll moves to then."""
        self._push(at_s, device_id)

    def run_until(self, end_s: float) -> None:
        """Process every event up to ``end_s`` simulated seconds."""
        while self._heap and self._heap[0][0] <= end_s:
            at_s, _seq, device_id, version = heapq.heappop(self._heap)
            if at_s > self.now_s():
                self.clock.advance(at_s - self.now_s())
            if device_id.startswith("@"):
                self._housekeeping(device_id[1:], at_s)
                continue
            if version != self._version.get(device_id):
                continue  # superseded by a hint
            self.polls += 1
            delay = self.agent.poll_once(device_id)
            outcome = self.agent.last_outcomes[device_id]
            ended = at_s + self.duration_s(device_id, outcome.ok)
            if self.after_poll is not None:
                self.after_poll(device_id, at_s, ended, outcome.ok)
            was_retry = device_id in self._retrying
            if delay < self._interval_s:
                self._retrying.add(device_id)
            else:
                self._retrying.discard(device_id)
            due = next_due_s(
                due_s=at_s,
                ended_s=ended,
                delay_s=delay,
                interval_s=self._interval_s,
                was_retry=was_retry,
                jitter_s=self.jitter_s,
                rng=self.rng,
            )
            self._push(due, device_id)
        if end_s > self.now_s():
            self.clock.advance(end_s - self.now_s())

    def _housekeeping(self, name: str, at_s: float) -> None:
        every = dict((n, e) for e, n in self._periodic)[name]
        if name == "dispatch":
            self.agent.dispatcher.flush()
        elif name == "sla":
            self.agent.incidents.tick(self.clock.now())
        else:
            self.agent.judge_sites()
        self._seq += 1
        heapq.heappush(self._heap, (at_s + every, self._seq, f"@{name}", 0))


def at(origin: datetime, seconds: float) -> datetime:
    """Return ``origin`` plus ``seconds``."""
    return origin + timedelta(seconds=seconds)
