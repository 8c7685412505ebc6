"""``hezo-agent demo``: a simulated fleet and the real agent living through three kinds of trouble.

1. An A30 at the head office goes offline and comes back: one critical ticket, resolved.
2. Another head-office device flaps (down every other poll): one medium ``flapping`` ticket, not
   a cycle of critical ones.
3. The Kraków office loses its network (every device and its gateway canary): one
   ``site_network`` incident instead of one ticket per device, resolved when it returns.

Everything is real except the devices: HTTPS on loopback, the scheduler, the state machine,
the incident manager and the local ticket backend in a temporary data folder. The gateway
canary is a real TCP listener on loopback that the demo closes.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from agent.daemon import Agent, AgentEvent
from agent.state import Health
from config.loader import load_config
from config.schema import AgentConfig
from uploader.backends.local import LocalBackend

STATE_STYLE = {
    Health.UP: "green",
    Health.SUSPECT: "yellow",
    Health.DOWN: "bold red",
    Health.RECOVERING: "cyan",
    Health.UNKNOWN: "dim",
}
FAULT_AFTER_S = 5.0
RECOVER_AFTER_TICKET_S = 4.0
LINGER_AFTER_RESOLVE_S = 2.0
HEAD_OFFICE = "warszawa-hq"
BRANCH = "krakow-office"


@dataclass
class _Scenario:
    """The demo's script: an outage, a flapping device and a site network outage, side by side."""

    target: str
    flappy: str
    branch: list[str]
    gateway: socket.socket
    gateway_port: int
    started: float = field(default_factory=time.monotonic)
    faulted_at: float | None = None
    opened_at: float | None = None
    cleared_at: float | None = None
    resolved_at: float | None = None
    flap_down: bool = False
    flap_seen: datetime | None = None
    flap_ticket_at: float | None = None
    site_down_at: float | None = None
    site_ticket_at: float | None = None
    site_restored_at: float | None = None
    site_resolved_at: float | None = None
    events: deque[AgentEvent] = field(default_factory=lambda: deque(maxlen=200))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_event(self, event: AgentEvent) -> None:
        now = time.monotonic()
        with self.lock:
            self.events.append(event)
            if event.device_id == self.target and event.kind == "ticket_opened" and self.opened_at is None:
                self.opened_at = now
            if event.device_id == self.target and event.kind == "ticket_resolved" and self.cleared_at:
                self.resolved_at = now
            if event.device_id == self.flappy and event.kind == "ticket_opened" and "flapping" in event.text:
                self.flap_ticket_at = self.flap_ticket_at or now

    def done(self, now: float) -> bool:
        finished = [self.resolved_at, self.site_resolved_at, self.flap_ticket_at]
        return all(finished) and now - max(f for f in finished if f) >= LINGER_AFTER_RESOLVE_S


def _reopen_listener(port: int) -> socket.socket:
    """A TCP listener on 127.0.0.1:``port`` (port 0: any free port): the branch's gateway canary."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    return sock


def _with_gateway(path: Path, port: int) -> AgentConfig:
    """Load the fleet's config with the branch's gateway canary added."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for site in raw["sites"]:
        if site["name"] == BRANCH:
            site["canaries"] = [{"name": "gateway", "host": "127.0.0.1", "port": port}]
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return load_config(path)


def _device_table(agent: Agent) -> Table:
    table = Table(title="hezo-agent demo: simulated fleet", expand=False)
    for col in ("device", "model", "site", "room", "state", "latency", "serial"):
        table.add_column(col)
    for dev in agent.config.devices:
        state = agent.states[dev.id].health
        outcome = agent.last_outcomes.get(dev.id)
        latency = f"{outcome.duration_s * 1000:.0f} ms" if outcome and outcome.ok else "-"
        known = agent.store.facts(dev.id)
        serial = known[0].serial if known else "-"
        style = STATE_STYLE.get(state, "")
        table.add_row(dev.id, dev.model, dev.site, dev.room, f"[{style}]{state}[/{style}]", latency, serial)
    return table


def _event_table(scenario: _Scenario) -> Table:
    table = Table(title="events", expand=False)
    table.add_column("time (UTC)")
    table.add_column("device")
    table.add_column("event")
    with scenario.lock:
        recent = list(scenario.events)[-8:]
    for event in recent:
        table.add_row(event.at.strftime("%H:%M:%S"), event.device_id, escape(f"{event.kind}: {event.text}"))
    return table


def _step_scenario(scenario: _Scenario, agent: Agent, fleet: Any, now: float) -> bool:
    """Advance the script; return True when it has played out."""
    if scenario.faulted_at is None and now - scenario.started >= FAULT_AFTER_S:
        fleet.fault(scenario.target, "offline")
        scenario.gateway.close()  # the branch's switch dies: its devices and its gateway go quiet
        for device_id in scenario.branch:
            fleet.fault(device_id, "offline")
        scenario.faulted_at = scenario.site_down_at = now
    if (
        scenario.opened_at
        and scenario.cleared_at is None
        and now - scenario.opened_at >= RECOVER_AFTER_TICKET_S
    ):
        fleet.clear(scenario.target)
        scenario.cleared_at = now
    _step_flapping(scenario, agent, fleet)
    _step_site(scenario, agent, fleet, now)
    return scenario.done(now)


def _step_flapping(scenario: _Scenario, agent: Agent, fleet: Any) -> None:
    """Turn the flapping device off and on after each of its polls, until its ticket is open."""
    if scenario.faulted_at is None:
        return
    outcome = agent.last_outcomes.get(scenario.flappy)
    if outcome is None or outcome.at == scenario.flap_seen:
        return
    scenario.flap_seen = outcome.at
    if scenario.flap_ticket_at is not None:
        if scenario.flap_down:
            fleet.clear(scenario.flappy)
            scenario.flap_down = False
        return
    if scenario.flap_down:
        fleet.clear(scenario.flappy)
    else:
        fleet.fault(scenario.flappy, "offline")
    scenario.flap_down = not scenario.flap_down


def _step_site(scenario: _Scenario, agent: Agent, fleet: Any, now: float) -> None:
    """Bring the branch back a few seconds after its one site-network incident opened."""
    site_open = any(i.problem == "site_network" for i in agent.store.incidents(open_only=True))
    if scenario.site_ticket_at is None and site_open:
        scenario.site_ticket_at = now
    if scenario.site_ticket_at and scenario.site_restored_at is None and (
        now - scenario.site_ticket_at >= RECOVER_AFTER_TICKET_S
    ):
        scenario.gateway = _reopen_listener(scenario.gateway_port)
        for device_id in scenario.branch:
            fleet.clear(device_id)
        scenario.site_restored_at = now
    if scenario.site_restored_at and scenario.site_resolved_at is None and not site_open:
        scenario.site_resolved_at = now


def run_demo(*, seconds: float = 90.0, devices: int = 12, as_json: bool = False) -> int:
    """Run the demo and print a live table (or one JSON summary); return the exit code."""
    from simulator.fleet import Fleet, free_udp_port

    logging.getLogger("hezo").setLevel(logging.ERROR)
    console = Console(stderr=as_json)
    workdir = Path(tempfile.mkdtemp(prefix="hezo-demo-"))
    fleet = Fleet(devices=devices, seed=7, port=0, syslog_to=("127.0.0.1", free_udp_port()))
    head = [d for d in fleet.devices if d.site == HEAD_OFFICE]
    target = next((d.id for d in head if d.model == "A30"), head[0].id)
    flappy = next(d.id for d in head if d.id != target)
    gateway = _reopen_listener(0)
    scenario = _Scenario(
        target=target,
        flappy=flappy,
        branch=[d.id for d in fleet.devices if d.site == BRANCH],
        gateway=gateway,
        gateway_port=gateway.getsockname()[1],
    )
    try:
        fleet.start()
        cfg_path = fleet.write_agent_config(
            workdir / "hezo-demo.yaml",
            data_dir=workdir / "data",
            poll_interval_s=2.0,
            retry_interval_s=1.0,
            timeout_s=1.0,
            down_after=3,
            up_after=2,
            language="en",
        )
        config = _with_gateway(cfg_path, scenario.gateway_port)
        config = config.model_copy(update={"agent": config.agent.model_copy(update={"jitter_s": 0.5})})
        agent = Agent(config, on_event=scenario.on_event)
        if not as_json:
            console.print(
                f"[bold]hezo-agent demo[/bold]: {devices} simulated devices on loopback, "
                f"after {FAULT_AFTER_S:.0f} s {target} goes offline, {flappy} starts flapping and"
                f" {BRANCH} loses its network; data in {workdir}"
            )
        agent.start()
        deadline = time.monotonic() + seconds
        try:
            _watch(agent, scenario, fleet, deadline, console, live=console.is_terminal and not as_json)
            summary = _summary(agent, scenario)
        finally:
            agent.stop()
    finally:
        scenario.gateway.close()
        fleet.stop()
    if as_json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        _print_summary(console, summary)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _watch(
    agent: Agent, scenario: _Scenario, fleet: Any, deadline: float, console: Console, live: bool
) -> None:
    printed = 0
    if live:
        with Live(console=console, refresh_per_second=4) as view:
            while time.monotonic() < deadline and not _step_scenario(
                scenario, agent, fleet, time.monotonic()
            ):
                view.update(Group(_device_table(agent), _event_table(scenario)))
                time.sleep(0.25)
            view.update(Group(_device_table(agent), _event_table(scenario)))
        return
    while time.monotonic() < deadline and not _step_scenario(scenario, agent, fleet, time.monotonic()):
        with scenario.lock:
            fresh = list(scenario.events)[printed:]
            printed += len(fresh)
        if console.stderr is False:
            for event in fresh:
                console.print(escape(f"{event.at:%H:%M:%S} {event.device_id}: {event.kind}: {event.text}"))
        time.sleep(0.25)


def _summary(agent: Agent, scenario: _Scenario) -> dict[str, Any]:
    backend = agent.backend
    tickets = [t.to_json() for t in backend.tickets()] if isinstance(backend, LocalBackend) else []
    return {
        "devices": len(agent.config.devices),
        "duration_s": round(time.monotonic() - scenario.started, 1),
        "offline_device": scenario.target,
        "flapping_device": scenario.flappy,
        "site_network_outage": BRANCH,
        "tickets_opened": len(tickets),
        "tickets_resolved": sum(1 for t in tickets if t["status"] == "resolved"),
        "tickets": tickets,
        "device_list": [
            {
                "id": d.id,
                "model": d.model,
                "site": d.site,
                "room": d.room,
                "state": str(agent.states[d.id].health),
            }
            for d in agent.config.devices
        ],
        "events": [
            {"at": e.at.isoformat(), "device": e.device_id, "kind": e.kind, "text": e.text}
            for e in scenario.events
        ],
    }


def _print_summary(console: Console, summary: dict[str, Any]) -> None:
    console.print(
        f"\n[bold]summary[/bold]: {summary['devices']} devices, {summary['tickets_opened']} ticket(s) opened,"
        f" {summary['tickets_resolved']} resolved in {summary['duration_s']} s"
    )
    for t in summary["tickets"]:
        files = ", ".join(a["name"] for a in t["attachments"]) or "no attachments"
        console.print(escape(f"  {t['id']} [{t['priority']}] {t['status']}: {t['title']} ({files})"))
    sys.stdout.flush()
