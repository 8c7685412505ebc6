"""False alarms (fake clock): blips open nothing, outages exactly one, flapping and a site outage one.

One agent (its real pipeline over scripted devices, :mod:`_des`) watches four sites for two
simulated hours with the defaults (T = 60 s, k = 3, retry 10 s, m = 2, jitter 5 s):

* ``blips``: most of the fleet; on about 5 % of regular polls a device fails one or two polls in a
  row (never three): expected 0 tickets;
* ``episodes``: devices that fail k to k + 4 polls in a row, then answer for 30–50 polls, again
  and again: expected exactly one ticket action (opened, or reopened within the reopen window)
  per episode, and one helpdesk ticket per device;
* ``flap``: devices down 2 minutes, up 2 minutes, for the first hour: expected at most one open
  ticket per device at any moment (the flapping ticket stands for the outages);
* ``net``: a site whose devices and canary all fail together for 20 minutes: expected one
  ``site_network`` incident and no device ticket.
"""

from __future__ import annotations

import logging
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import Report, cpu_seconds, parser, profiled, results_path
from _des import EventLoop, devices, scripted_agent, site, tickets

from agent.clock import FakeClock
from agent.daemon import AgentEvent
from agent.incidents import PROBLEM_SITE_NETWORK
from uploader.backends.local import LocalBackend

K = 3
HOURS = 2.0
FLAP_PERIOD_S = 120.0
NET_DOWN = (1800.0, 3000.0)  # seconds: the site network outage
CANARY = ("127.65.0.1", 9)


@dataclass(frozen=True)
class Size:
    """How big a run is."""

    blips: int
    episodes: int
    flap: int
    net: int
    hours: float


SIZES = {
    "smoke": Size(blips=20, episodes=4, flap=1, net=3, hours=1.0),
    "quick": Size(blips=100, episodes=15, flap=5, net=10, hours=1.0),
    "full": Size(blips=880, episodes=80, flap=10, net=30, hours=2.0),
}


class Plans:
    """Which regular poll of which device fails: blips and episodes by poll count."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.count: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.fail: dict[str, set[int]] = {}
        self.episodes: dict[str, list[tuple[int, int]]] = defaultdict(list)

    def blips(self, device_id: str, polls: int) -> None:
        """One or two failed polls in a row on about 5 % of polls, always followed by a good one."""
        fail: set[int] = set()
        n = 3
        while n < polls:
            if self.rng.random() < 0.05:
                length = self.rng.choice((1, 2))
                fail.update(range(n, n + length))
                n += length + 1
            n += 1
        self.fail[device_id] = fail

    def outages(self, device_id: str, polls: int) -> None:
        """Episodes of k..k+4 failed polls separated by 30–50 good polls."""
        fail: set[int] = set()
        n = self.rng.randint(3, 20)
        while n + K + 4 < polls:
            length = self.rng.randint(K, K + 4)
            fail.update(range(n, n + length))
            self.episodes[device_id].append((n, n + length))
            n += length + self.rng.randint(30, 50)
        self.fail[device_id] = fail

    def answer(self, device_id: str) -> str:
        """The next poll of ``device_id``: up or refused."""
        n = self.count[device_id]
        self.count[device_id] += 1
        if n in self.fail.get(device_id, ()):
            self.failed[device_id] += 1
            return "refused"
        return "up"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and record its table."""
    args = parser("false alarms").parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    size = SIZES[args.size]
    seed = int(time.time()) % 100_000
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="hezo-bench-false-"))
    report = Report("false_alarms", args.size)
    try:
        run(size, rng, workdir, report, seed)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report.emit(results_path(args), args.json)
    return 0


def run(size: Size, rng: random.Random, workdir: Path, report: Report, seed: int) -> None:
    """Build the fleet, run it for the simulated hours, count tickets."""
    end_s = size.hours * 3600
    polls_max = int(end_s / 10) + 10  # an upper bound of polls per device (every 10 s at most)
    raw: dict[str, Any] = {
        "agent": {
            "poll_interval_s": 60,
            "retry_interval_s": 10,
            "down_after": K,
            "up_after": 2,
            "jitter_s": 5,
        },
        "sites": [
            site("blips"),
            site("episodes"),
            site("flap"),
            site("net", canaries=[{"name": "gw", "host": CANARY[0], "port": CANARY[1]}]),
        ],
        "devices": devices("blips", size.blips)
        + devices("episodes", size.episodes, start=size.blips)
        + devices("flap", size.flap, start=size.blips + size.episodes)
        + devices("net", size.net, start=size.blips + size.episodes + size.flap),
    }
    site_of = {d["id"]: d["site"] for d in raw["devices"]}
    plans = Plans(rng)
    for dev_id, where in site_of.items():
        if where == "blips":
            plans.blips(dev_id, polls_max)
        elif where == "episodes":
            plans.outages(dev_id, int(end_s / 60))
    clock = FakeClock()
    origin = clock.now()

    def seconds(now: datetime) -> float:
        return (now - origin).total_seconds()

    def behaviour(device_id: str, now: datetime) -> str:
        where = site_of[device_id]
        t = seconds(now)
        if where == "flap":
            return "refused" if t < 3600 and int(t // FLAP_PERIOD_S) % 2 == 1 else "up"
        if where == "net":
            return "refused" if NET_DOWN[0] <= t < NET_DOWN[1] else "up"
        return plans.answer(device_id)

    def canary_up(host: str, port: int) -> bool:
        return not NET_DOWN[0] <= seconds(clock.now()) < NET_DOWN[1]

    opened: Counter[str] = Counter()

    def on_event(event: AgentEvent) -> None:
        if event.kind == "ticket_opened":
            opened[event.device_id] += 1

    agent = scripted_agent(workdir, raw, clock, behaviour, on_event=on_event, canary_up=canary_up)
    backend = agent.backend
    assert isinstance(backend, LocalBackend)
    loop = EventLoop(agent, clock, jitter_s=5.0, rng=rng, duration_s=lambda d, ok: 0.02)
    flap_open_max: Counter[str] = Counter()

    def after_poll(device_id: str, start: float, end: float, ok: bool) -> None:
        if site_of[device_id] == "flap":
            agent.dispatcher.flush()
            now_open = [t for t in backend.tickets(open_only=True) if t.fields.get("device") == device_id]
            flap_open_max[device_id] = max(flap_open_max[device_id], len(now_open))

    loop.after_poll = after_poll
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    with profiled() as sampler:
        loop.start()
        loop.run_until(end_s)
    cpu, wall = cpu_seconds() - cpu0, time.monotonic() - wall0
    all_tickets = tickets(agent)
    agent.stop()

    by_site: dict[str, list[str]] = defaultdict(list)
    for t in all_tickets:
        device = str(t.fields.get("device") or "")
        problem = str(t.fields.get("problem") or "")
        by_site[site_of.get(device, str(t.fields.get("site") or ""))].append(problem or device)
    n_devices = len(site_of)
    # helpdesk tickets at the blip site (each counted once; a ticket_opened event is the same ticket)
    blip_tickets = len(by_site["blips"])
    if blip_tickets:
        report.notes.append(f"tickets at the blip site by problem: {dict(Counter(by_site['blips']))}")
    blip_polls = sum(plans.failed[d] for d, s in site_of.items() if s == "blips")
    report.add("devices / simulated time / polls", f"{n_devices} / {size.hours:g} h / {loop.polls}")
    report.add(
        f"1–2-poll failures ({blip_polls} failed polls on {size.blips} devices): tickets",
        str(blip_tickets),
        "0",
        blip_tickets == 0,
    )
    episode_devs = [d for d, s in site_of.items() if s == "episodes"]
    episodes = sum(len(plans.episodes[d]) for d in episode_devs)
    wrong = [d for d in episode_devs if opened[d] != len(plans.episodes[d])]
    report.add(
        f"≥ k-failure episodes ({episodes} on {len(episode_devs)} devices): tickets opened or reopened",
        f"{sum(opened[d] for d in episode_devs)} ({len(wrong)} devices off by any)",
        "exactly 1 per episode",
        not wrong,
    )
    per_device = Counter(
        str(t.fields.get("device"))
        for t in all_tickets
        if site_of.get(str(t.fields.get("device"))) == "episodes"
    )
    report.add(
        "helpdesk tickets per episode device (recurrences reopen)",
        f"max {max(per_device.values(), default=0)}",
        "1",
        max(per_device.values(), default=0) <= 1,
    )
    worst_flap = max(flap_open_max.values(), default=0)
    report.add(
        f"flapping every 2 min for 1 h ({size.flap} devices): most open tickets per device",
        str(worst_flap),
        "≤ 1",
        worst_flap <= 1,
    )
    flap_tickets = Counter(by_site["flap"])
    report.add(
        "flapping: tickets by problem",
        ", ".join(f"{k} {v}" for k, v in sorted(flap_tickets.items())) or "none",
    )
    net_problems = by_site["net"]
    site_incidents = sum(1 for t in all_tickets if t.fields.get("problem") == PROBLEM_SITE_NETWORK)
    device_net = len([p for p in net_problems if p != PROBLEM_SITE_NETWORK])
    report.add(
        f"site network outage ({size.net} devices + canary, 20 min): site incidents / device tickets",
        f"{site_incidents} / {device_net}",
        "1 / 0",
        site_incidents == 1 and device_net == 0,
    )
    report.add(
        "run time (CPU / wall)",
        f"{cpu:.1f} s / {wall:.1f} s ({1000 * cpu / max(1, loop.polls):.2f} ms CPU "
        "per poll through the pipeline)",
    )
    report.notes += [
        "the agent's real poll pipeline and incident policy with scripted devices and a fake clock; "
        f"scheduler semantics replayed by bench/_des.py; seed {seed}",
        "tickets counted in the embedded local helpdesk and from the agent's ticket_opened events",
    ]
    if report.missed:
        report.profile = sampler.summary(8)


if __name__ == "__main__":
    sys.exit(main())
