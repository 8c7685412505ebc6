"""The real agent in a process of its own, for the scale and log-pull benchmarks.

``python bench/_agent_worker.py --config FILE --seconds S --out RESULT.json [--logpull SPEC.json]``

It builds :class:`agent.daemon.Agent` from the config exactly as ``hezo-agent run`` does and runs
it for ``S`` seconds (or until SIGTERM). Two probes are added, nothing else changes:

* the poll scheduler records when each device's next poll was *due* (the delay the state machine
  chose plus the scheduler's jitter), and every poll records when it really started and ended,
  so lateness = start − due;
* a stack sampler (10 Hz) tells where the busy threads spent their time.

With ``--logpull`` it also pulls log files over SSH (paramiko SFTP through the agent's
:class:`~collectors.transports.ssh.SshTransport`) from a list of devices at a given concurrency,
starting at a given second, and records each pull. The parent measures CPU and RSS from
``/proc``; this process writes what only it can see to ``RESULT.json``.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import shutil
import signal
import sys
import tempfile
import threading
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import StackSampler

import agent.daemon as daemon
from agent.daemon import Agent
from agent.scheduler import PollScheduler
from collectors.errors import CollectorError
from collectors.known_hosts import KnownHosts
from collectors.transports.ssh import SshTransport
from config.loader import load_config

DUE: dict[str, float] = {}


class TimedScheduler(PollScheduler):
    """The agent's scheduler, noting when each device's next poll is due."""

    def _note_due(self, device_id: str, due_s: float) -> None:
        DUE[device_id] = due_s
        super()._note_due(device_id, due_s)


def pull_logs(spec: dict[str, Any], t0: float, stop: threading.Event) -> dict[str, Any]:
    """Pull a file from every (host, port, remote path) in ``spec["hosts"]`` at ``spec["concurrency"]``."""
    wait_s = t0 + float(spec["start_at_s"]) - time.monotonic()
    if wait_s > 0 and stop.wait(wait_s):
        return {"started": None, "pulls": []}
    key_text = Path(spec["key_file"]).read_text(encoding="utf-8")
    folder = Path(tempfile.mkdtemp(prefix="hezo-logpull-"))
    known = KnownHosts(folder / "known_hosts")

    def one(item: tuple[int, str, int, str]) -> dict[str, Any]:
        index, host, port, remote = item
        started = time.monotonic()
        transport = SshTransport(
            host,
            port=port,
            username=spec["username"],
            known_hosts=known,
            key_text=key_text,
            timeout_s=float(spec["timeout_s"]),
            max_bytes=1_000_000,
        )
        dest = folder / f"{index}-{Path(remote).name}"
        try:
            size, sha = transport.fetch(
                remote,
                dest,
                timeout_s=float(spec["fetch_timeout_s"]),
                max_bytes=int(spec["max_bytes"]),
            )
            error = ""
        except CollectorError as err:
            size, sha, error = 0, "", f"{type(err).__name__}: {err}"
        finally:
            transport.close()
        dest.unlink(missing_ok=True)
        return {
            "host": host,
            "start": started,
            "end": time.monotonic(),
            "bytes": size,
            "sha": sha,
            "error": error,
        }

    started = time.monotonic()
    items = [(i, h, int(p), str(r)) for i, (h, p, r) in enumerate(spec["hosts"])]
    try:
        with ThreadPoolExecutor(max_workers=int(spec["concurrency"]), thread_name_prefix="logpull") as pool:
            pulls = list(pool.map(one, items))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"started": started, "ended": time.monotonic(), "pulls": pulls}


class PollLog:
    """Every poll's (device index, due, start, end, ok, why), in arrays allocated up front.

    The benchmark's own bookkeeping lives in the agent's process: a list of tuples grew by
    ~2 MB in a 10-minute run and showed as growth of the agent's memory. Arrays sized for the
    run do not grow (they extend only if the run polls more than expected).
    """

    def __init__(self, capacity: int) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.device = array("i", bytes(4 * capacity))
        self.times = array("d", bytes(8 * 3 * capacity))  # due, start, end
        self.ok = bytearray(capacity)
        self.why: dict[int, str] = {}  # failed polls only

    def add(self, device: int, due: float, start: float, end: float, ok: bool, why: str) -> None:
        """Record one poll (any thread)."""
        with self._lock:
            i = self.count
            if i >= len(self.ok):
                self.device.extend(array("i", bytes(4 * 1024)))
                self.times.extend(array("d", bytes(8 * 3 * 1024)))
                self.ok.extend(bytes(1024))
            self.device[i] = device
            self.times[3 * i : 3 * i + 3] = array("d", (due, start, end))
            self.ok[i] = ok
            if why:
                self.why[i] = why
            self.count = i + 1

    def rows(self) -> list[tuple[int, float, float, float, bool, str]]:
        """The records, in the order they were added."""
        t = self.times
        return [
            (self.device[i], t[3 * i], t[3 * i + 1], t[3 * i + 2], bool(self.ok[i]), self.why.get(i, ""))
            for i in range(self.count)
        ]


def main(argv: list[str] | None = None) -> int:
    """Run the agent for a while and write what it saw (see the module docstring)."""
    p = argparse.ArgumentParser()
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--logpull", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: all stacks to stderr

    daemon.PollScheduler = TimedScheduler  # type: ignore[misc]  # the only change: a timing probe
    config = load_config(args.config)
    agent = Agent(config)
    index = {dev.id: i for i, dev in enumerate(config.devices)}
    expected = len(config.devices) * (args.seconds / config.agent.poll_interval_s + 2)
    polls = PollLog(int(expected * 1.5) + 1024)
    plain_poll = agent.poll_once

    def timed_poll(device_id: str) -> float:
        start = time.monotonic()
        due = DUE.get(device_id, start)
        try:
            return plain_poll(device_id)
        finally:
            outcome = agent.last_outcomes.get(device_id)
            ok = bool(outcome and outcome.ok)
            why = "" if ok or outcome is None else f"{outcome.reason}: {outcome.detail}"[:160]
            polls.add(index[device_id], due, start, time.monotonic(), ok, why)

    agent.poll_once = timed_poll  # type: ignore[method-assign]
    sampler = StackSampler(hz=10.0).start()
    t0 = time.monotonic()
    print(f"ready t0={t0:.6f}", flush=True)
    agent.start()
    pulled: dict[str, Any] = {}
    puller = None
    if args.logpull is not None:
        spec = json.loads(args.logpull.read_text(encoding="utf-8"))

        def run_pull() -> None:
            pulled.update(pull_logs(spec, t0, stop))

        puller = threading.Thread(target=run_pull, name="logpull", daemon=True)
        puller.start()
    stop.wait(args.seconds)
    stopped_at = time.monotonic()
    if puller is not None:
        puller.join(timeout=300.0)
    tickets = len(agent.backend.tickets()) if hasattr(agent.backend, "tickets") else None
    agent.stop()
    sampler.stop()
    result = {
        "t0": t0,
        "stopped_at": stopped_at,
        "devices": len(config.devices),
        "polls": polls.rows(),
        "profile": sampler.summary(8),
        "sampler_cpu_s": sampler.own_cpu_s,
        "logpull": pulled,
        "tickets_opened": tickets,
    }
    args.out.write_text(json.dumps(result), encoding="utf-8")
    print(f"done polls={polls.count}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
