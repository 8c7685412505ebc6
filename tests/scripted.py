"""Scripted devices for pipeline tests: a collector whose answers the test sets, no network."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.clock import FakeClock
from agent.daemon import Agent
from collectors.base import Collector
from collectors.errors import DeviceUnreachable
from collectors.models import CheckResult, DeviceFacts, HealthSample, LogBundle, Peripheral
from config.loader import load_config
from config.schema import Device


@dataclass
class Script:
    """What a scripted device answers on its next poll."""

    up: bool = True
    serial: str = "803000000001"
    firmware: str = "133.15.0.42"
    peripherals: tuple[Peripheral, ...] = ()
    uptime_s: int = 3600
    extra: dict[str, Any] = field(default_factory=dict)


class ScriptedCollector(Collector):
    """Answers from its :class:`Script`; down means DeviceUnreachable."""

    def __init__(self, device: Device, script: Script, clock: FakeClock) -> None:
        self.device = device
        self.script = script
        self.clock = clock

    def _facts(self) -> DeviceFacts:
        return DeviceFacts(
            model=self.device.model,
            firmware=self.script.firmware,
            serial=self.script.serial,
            mac="00:15:65:00:00:01",
        )

    def collect_facts(self) -> DeviceFacts:
        if not self.script.up:
            raise DeviceUnreachable(f"{self.device.host}: connection refused")
        return self._facts()

    def collect_health(self) -> HealthSample:
        facts = self.collect_facts()
        return HealthSample(
            self.device.id,
            self.clock.now(),
            facts,
            uptime_s=self.script.uptime_s,
            peripherals=self.script.peripherals,
            checks=(CheckResult("https_api", True, 12.0),),
        )

    def collect_logs(self, dest_dir: Path) -> LogBundle:
        raise DeviceUnreachable("no logs from a scripted device")


def site(name: str, canaries: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "address": f"ul. Testowa 1, {name}",
        "contact": {"name": "Anna Nowak", "phone": "+48 600 100 200", "email": "anna@example.com"},
        "canaries": canaries or [],
        **extra,
    }


def scripted_agent(tmp_path: Path, raw: dict[str, Any], clock: FakeClock) -> tuple[Agent, dict[str, Script]]:
    """Build an Agent over ``raw`` config whose devices are all scripted (all up at first)."""
    raw.setdefault("agent", {}).update({"data_dir": str(tmp_path / "data"), "language": "en"})
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    config = load_config(path)
    scripts = {d.id: Script(serial=f"80300000{i:04d}") for i, d in enumerate(config.devices)}
    agent = Agent(
        config, clock=clock, collector_factory=lambda dev: ScriptedCollector(dev, scripts[dev.id], clock)
    )
    return agent, scripts
