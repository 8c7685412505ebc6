"""CPU per poll, in-process: a quick A/B probe for the transports (print only, records nothing).

``python bench/percall.py [--devices 50] [--rounds 20] [--workers 4] [--keep-alive S]``

``hezo-sim run`` serves the fleet from its own process (its CPU is not counted); this process
builds each device's collector exactly as the agent does (:func:`collectors.registry.build_collector`,
one shared pin file, connections kept between polls for ``--keep-alive`` seconds, the agent's
default unless given), polls every device once to pin and log in (not counted), then polls every
device ``rounds`` times and prints this process's CPU (``time.process_time``) per poll. Compare two
runs taken close together: the machine may be shared.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _fleet import SimProcess

from collectors.base import Collector
from collectors.known_hosts import KnownHosts
from collectors.pins import PinStore
from collectors.registry import build_collector
from config.loader import load_config, load_profile, profile_name, resolve_password


def collectors_for(
    sim: SimProcess, workdir: Path, timeout_s: float, keep_alive_s: float | None = None
) -> list[Collector]:
    """Build every simulated device's collector as the agent does."""
    config = load_config(sim.write_config(workdir / "percall.yaml", workdir / "data", timeout_s=timeout_s))
    folder = workdir / "data"
    folder.mkdir(exist_ok=True)
    pins, known = PinStore(folder / "pins.json"), KnownHosts(folder / "known_hosts")
    return [
        build_collector(
            dev,
            load_profile(profile_name(dev.model, dev.profile)),
            password=resolve_password(dev.credentials, dev.id) if dev.credentials else None,
            pins=pins,
            timeout_s=timeout_s,
            max_response_bytes=2_000_000,
            max_log_bytes=50_000_000,
            known_hosts=known,
            keep_alive_s=config.agent.keep_alive_s if keep_alive_s is None else keep_alive_s,
        )
        for dev in config.devices
    ]


def poll_round(pool: ThreadPoolExecutor, collectors: list[Collector]) -> int:
    """Poll every device once; return how many polls failed."""
    outcomes = list(pool.map(_poll, collectors))
    return sum(1 for ok in outcomes if not ok)


def _poll(collector: Collector) -> bool:
    try:
        collector.collect_health()
    except Exception as err:  # a failed poll is counted, not fatal: the figure is CPU per poll
        print(f"poll failed: {type(err).__name__}: {err}", file=sys.stderr)
        return False
    return True


def handshakes(collectors: list[Collector]) -> str:
    """Full / resumed TLS handshakes of the devices' HTTP transports, where the transport counts them."""
    full = resumed = 0
    for collector in collectors:
        primary = getattr(collector, "_primary", collector)  # a MultiChannelCollector wraps the driver
        tls = getattr(getattr(primary, "_transport", None), "tls", None)
        if tls is None:
            return "not counted by this transport"
        full, resumed = full + tls.full, resumed + tls.resumed
    return f"{full} full, {resumed} resumed"


def main(argv: list[str] | None = None) -> int:
    """Run the probe (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--workers", type=int, default=4, help="polls at once (the agent polls in a pool too)")
    p.add_argument("--timeout", type=float, default=5.0, help="agent.timeout_s")
    p.add_argument("--keep-alive", type=float, help="agent.keep_alive_s (default: the agent's; 0: close)")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="hezo-bench-percall-"))
    sim = SimProcess(workdir, args.devices, net=213)
    collectors: list[Collector] = []
    try:
        sim.wait_ready()
        collectors = collectors_for(sim, workdir, args.timeout, args.keep_alive)
        with ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix="percall") as pool:
            failed_warm = poll_round(pool, collectors)  # first contact: pins, logins
            cpu0, wall0 = time.process_time(), time.monotonic()
            failed = sum(poll_round(pool, collectors) for _ in range(args.rounds))
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        polls = args.rounds * len(collectors)
        print(f"devices {len(collectors)}, rounds {args.rounds}, workers {args.workers}: {polls} polls")
        print(f"failed polls: warm-up {failed_warm}, measured {failed}")
        print(f"TLS handshakes (warm-up included): {handshakes(collectors)}")
        print(f"agent CPU per poll: {cpu / polls * 1000:.2f} ms ({cpu:.2f} s CPU in {wall:.1f} s wall)")
        return 0 if failed == 0 else 1
    finally:
        for collector in collectors:
            collector.close()
        sim.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
