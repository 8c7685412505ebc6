"""The last collected log: refreshed every ``log_refresh_s``; a failing export backs off (fake clock)."""

from __future__ import annotations

import io
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from scripted import ScriptedCollector, scripted_agent, site

from agent.clock import FakeClock
from agent.daemon import Agent
from collectors.errors import DeviceUnreachable
from collectors.models import LogBundle

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class CountingExport(ScriptedCollector):
    """A device whose log export fails until ``working`` is set; every attempt is noted."""

    working = False
    attempts: list[float]

    def collect_logs(self, dest_dir: Path) -> LogBundle:
        self.attempts.append((self.clock.now() - START).total_seconds())
        if not self.working:
            raise DeviceUnreachable("export refused")
        path = dest_dir / "export.tar.gz"
        body = b"boot ok\n"
        with tarfile.open(path, "w:gz") as tar:
            info = tarfile.TarInfo("sys.log")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        return LogBundle(self.device.id, self.clock.now(), path, path.stat().st_size, "x")


def run(tmp_path: Path, minutes: int, working_from: int | None = None) -> list[float]:
    clock = FakeClock(START)
    raw = {
        "agent": {"log_refresh_s": 900},
        "sites": [site("hq")],
        "devices": [{"id": "a30", "room": "Board", "site": "hq", "model": "A30", "host": "127.0.9.1"}],
    }
    agent, scripts = scripted_agent(tmp_path, raw, clock)
    device = CountingExport(agent.config.device("a30"), scripts["a30"], clock)
    device.attempts = []
    agent._collectors["a30"] = device
    try:
        for minute in range(minutes + 1):
            device.working = working_from is not None and minute >= working_from
            agent.poll_once("a30")
            clock.advance(60)
    finally:
        agent.stop()
    return device.attempts


def test_a_failing_export_is_retried_with_backoff_not_on_every_poll(tmp_path: Path) -> None:
    # one poll a minute for 40 minutes: tries at 0, +1, +2, +4, +8 min, then every 15 min (log_refresh_s)
    assert run(tmp_path, 40) == [0, 60, 180, 420, 900, 1800]


def test_a_working_export_is_refreshed_every_log_refresh_s(tmp_path: Path) -> None:
    assert run(tmp_path, 40, working_from=0) == [0, 900, 1800]


def test_backoff_ends_once_an_export_works(tmp_path: Path) -> None:
    # fails at 0, 1, 3 min; works from minute 5: tried at 7 min (backoff), then 15 min later
    assert run(tmp_path, 30, working_from=5) == [0, 60, 180, 420, 1320]


def fleet_agent(tmp_path: Path, n: int) -> Agent:
    raw = {
        "agent": {"log_refresh_s": 900},
        "sites": [site("hq")],
        "devices": [
            {
                "id": f"a30-{i}",
                "room": f"R{i}",
                "site": "hq",
                "model": "A30",
                "host": f"127.0.{i // 250}.{i % 250 + 1}",
            }
            for i in range(n)
        ],
    }
    agent, _scripts = scripted_agent(tmp_path, raw, FakeClock(START))
    return agent


def test_a_small_site_exports_logs_on_the_first_poll(tmp_path: Path) -> None:
    agent = fleet_agent(tmp_path, 40)
    try:
        assert {agent._first_export_delay(d.id) for d in agent.config.devices} == {timedelta(0)}
    finally:
        agent.stop()


def test_a_big_fleet_spreads_its_first_exports(tmp_path: Path) -> None:
    agent = fleet_agent(tmp_path, 400)  # 400 devices at 1 first export a second: over 400 s
    try:
        delays = sorted(agent._first_export_delay(d.id).total_seconds() for d in agent.config.devices)
        assert delays[0] >= 0 and delays[-1] <= 400
        assert delays[-1] - delays[0] > 320  # spread over the window, not bunched
        busiest = max(sum(1 for x in delays if s <= x < s + 40) for s in range(0, 400, 40))
        assert busiest < 80  # about 40 per 40 s; nowhere near all at once
        again = sorted(agent._first_export_delay(d.id).total_seconds() for d in agent.config.devices)
        assert again == delays  # stable per device
    finally:
        agent.stop()
