"""``hezo-agent demo``: a simulated fleet, the real agent, one A30 failing and coming back.

Everything is real except the devices: HTTPS on loopback, the scheduler, the state machine,
the incident manager and the local ticket backend in a temporary data folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from agent.daemon import Agent, AgentEvent
from agent.state import Health
from config.loader import load_config
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


@dataclass
class _Scenario:
    """The demo's script: take a device offline, wait for its ticket, bring it back."""

    target: str
    started: float = field(default_factory=time.monotonic)
    faulted_at: float | None = None
    opened_at: float | None = None
    cleared_at: float | None = None
    resolved_at: float | None = None
    events: deque[AgentEvent] = field(default_factory=lambda: deque(maxlen=200))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_event(self, event: AgentEvent) -> None:
        with self.lock:
            self.events.append(event)
            if event.device_id == self.target and event.kind == "ticket_opened" and self.opened_at is None:
                self.opened_at = time.monotonic()
            if event.device_id == self.target and event.kind == "ticket_resolved" and self.cleared_at:
                self.resolved_at = time.monotonic()


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


def _step_scenario(scenario: _Scenario, fleet: Any, now: float) -> bool:
    """Advance the script; return True when it has played out."""
    if scenario.faulted_at is None and now - scenario.started >= FAULT_AFTER_S:
        fleet.fault(scenario.target, "offline")
        scenario.faulted_at = now
    if (
        scenario.opened_at
        and scenario.cleared_at is None
        and now - scenario.opened_at >= RECOVER_AFTER_TICKET_S
    ):
        fleet.clear(scenario.target)
        scenario.cleared_at = now
    return scenario.resolved_at is not None and now - scenario.resolved_at >= LINGER_AFTER_RESOLVE_S


def run_demo(*, seconds: float = 40.0, devices: int = 12, as_json: bool = False) -> int:
    """Run the demo and print a live table (or one JSON summary); return the exit code."""
    from simulator.fleet import Fleet, free_udp_port

    logging.getLogger("hezo").setLevel(logging.ERROR)
    console = Console(stderr=as_json)
    workdir = Path(tempfile.mkdtemp(prefix="hezo-demo-"))
    fleet = Fleet(devices=devices, seed=7, port=0, syslog_to=("127.0.0.1", free_udp_port()))
    target = next((d.id for d in fleet.devices if d.model == "A30"), fleet.devices[0].id)
    scenario = _Scenario(target=target)
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
        config = load_config(cfg_path)
        config = config.model_copy(update={"agent": config.agent.model_copy(update={"jitter_s": 0.5})})
        agent = Agent(config, on_event=scenario.on_event)
        if not as_json:
            console.print(
                f"[bold]hezo-agent demo[/bold]: {devices} simulated devices on loopback, "
                f"{target} goes offline after {FAULT_AFTER_S:.0f} s; data in {workdir}"
            )
        agent.start()
        deadline = time.monotonic() + seconds
        try:
            _watch(agent, scenario, fleet, deadline, console, live=console.is_terminal and not as_json)
            summary = _summary(agent, scenario)
        finally:
            agent.stop()
    finally:
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
            while time.monotonic() < deadline and not _step_scenario(scenario, fleet, time.monotonic()):
                view.update(Group(_device_table(agent), _event_table(scenario)))
                time.sleep(0.25)
            view.update(Group(_device_table(agent), _event_table(scenario)))
        return
    while time.monotonic() < deadline and not _step_scenario(scenario, fleet, time.monotonic()):
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
