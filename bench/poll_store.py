"""CPU of the per-poll pipeline and its SQLite writes (issue 9): a quick before/after probe.

``python bench/poll_store.py [--devices 1000] [--polls 5000]``

Builds the real :class:`agent.daemon.Agent` over scripted devices (``tests/scripted.py``, no
network, fake clock): most devices are stable, every 20th flaps (down every other poll) and
every 10th has its camera unplugged (a finding). One warm-up round is not counted; then
``polls`` calls of :meth:`~agent.daemon.Agent.poll_once` round-robin over the devices are timed
with ``time.process_time`` (and wall time: an fsync waits without CPU), and the store's
connection is traced to count write transactions (COMMITs) and reads (SELECTs). Prints only;
records nothing. The machine may be shared: compare runs taken close together.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from scripted import scripted_agent, site

from agent.clock import FakeClock
from collectors.models import Peripheral

PLUGGED = tuple(
    Peripheral(kind, f"{kind} 1", True) for kind in ("camera", "microphone", "speaker", "touch_panel")
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--polls", type=int, default=5000)
    args = parser.parse_args()
    clock = FakeClock(datetime(2026, 1, 5, 9, 0, tzinfo=UTC))
    devices = [
        {
            "id": f"hq-{i}",
            "room": f"Room {i}",
            "site": "hq",
            "model": "A30",
            "host": f"127.0.{i // 250}.{i % 250 + 1}",
        }
        for i in range(args.devices)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        agent, scripts = scripted_agent(Path(tmp), {"sites": [site("hq")], "devices": devices}, clock)
        ids = [d["id"] for d in devices]
        for i, device_id in enumerate(ids):
            scripts[device_id].peripherals = tuple(
                dataclasses.replace(p, connected=not (i % 10 == 0 and p.kind == "camera")) for p in PLUGGED
            )
        counts = {"commit": 0, "select": 0}

        def trace(sql: str) -> None:
            head = sql.lstrip()[:6].upper()
            if head == "COMMIT":
                counts["commit"] += 1
            elif head == "SELECT":
                counts["select"] += 1

        try:
            for device_id in ids:  # warm-up: first polls, first log look-ups
                agent.poll_once(device_id)
            clock.advance(60)
            agent.store._db.set_trace_callback(trace)
            start, wall = time.process_time(), time.perf_counter()
            for n in range(args.polls):
                device_id = ids[n % len(ids)]
                if n % len(ids) == 0:
                    clock.advance(60)
                index = int(device_id.split("-")[1])
                if index % 20 == 0:
                    scripts[device_id].up = not scripts[device_id].up
                agent.poll_once(device_id)
            cpu, wall = time.process_time() - start, time.perf_counter() - wall
            agent.store._db.set_trace_callback(None)
        finally:
            agent.stop()
    print(
        f"devices={args.devices} polls={args.polls} cpu_s={cpu:.2f} wall_s={wall:.2f}"
        f" cpu_per_poll_ms={cpu / args.polls * 1000:.3f}"
        f" commits_per_poll={counts['commit'] / args.polls:.2f}"
        f" selects_per_poll={counts['select'] / args.polls:.2f}"
    )


if __name__ == "__main__":
    main()
