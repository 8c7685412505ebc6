"""Helpers for tests of the agent's local server: an agent on a simulated fleet, HTTP with a token."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import yaml

from agent.clock import FakeClock
from agent.daemon import Agent
from config.loader import load_config
from simulator.fleet import Fleet

POLL_S = 0.05


class PollTimingClock(FakeClock):
    """A fake clock whose ``monotonic()`` also runs in real time: poll durations (latency) are real."""

    def monotonic(self) -> float:
        """Fake seconds plus real ones."""
        return super().monotonic() + time.perf_counter()


def agent_config(fleet: Fleet, tmp_path: Path, *, api: dict[str, Any] | None = None, **sections: Any) -> Path:
    """Write the fleet's agent config with an ``api:`` section on a free port (and extra sections)."""
    path = fleet.write_agent_config(
        tmp_path / "agent.yaml", data_dir=tmp_path / "data", language="en", timeout_s=1.0
    )
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["api"] = {"port": 0, **(api or {})}
    data.update(sections)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def make_agent(
    fleet: Fleet, tmp_path: Path, clock: FakeClock, *, api: dict[str, Any] | None = None, **sections: Any
) -> Agent:
    """An agent watching ``fleet`` on the fake ``clock`` (polled by the test, not a scheduler)."""
    return Agent(load_config(agent_config(fleet, tmp_path, api=api, **sections)), clock=clock)


def poll_all(agent: Agent, clock: FakeClock, seconds: float = 60.0) -> None:
    """Poll every device once, then move the clock."""
    for dev in agent.config.devices:
        agent.poll_once(dev.id)
    clock.advance(seconds)


def take_offline(agent: Agent, fleet: Fleet, clock: FakeClock, device_id: str) -> None:
    """Make ``device_id`` silent and poll it until the agent counts it down (and opens its ticket)."""
    fleet.fault(device_id, "offline")
    for _ in range(agent.config.agent.down_after):
        agent.poll_once(device_id)
        clock.advance(10)


class Client:
    """``requests`` against the local server, with or without the bearer token."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base
        self.token = token
        self.session = requests.Session()

    def headers(self, token: str | None = "default") -> dict[str, str]:
        chosen = self.token if token == "default" else token
        return {"Authorization": f"Bearer {chosen}"} if chosen else {}

    def get(self, path: str, token: str | None = "default", **kwargs: Any) -> requests.Response:
        return self.session.get(self.base + path, headers=self.headers(token), timeout=10, **kwargs)

    def post(self, path: str, token: str | None = "default", **kwargs: Any) -> requests.Response:
        return self.session.post(self.base + path, headers=self.headers(token), timeout=10, **kwargs)


def wait_until(condition: Callable[[], Any], deadline_s: float = 20.0) -> Any:
    """Poll ``condition`` every 50 ms until it returns something truthy; return it (or fail)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(POLL_S)
    raise AssertionError(f"condition not met within {deadline_s} s")
