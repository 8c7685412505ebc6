"""Scale: 1,000 simulated HTTPS devices polled every 60 s by the agent and by blackbox_exporter, side by side.

Three processes besides this one: the simulated fleet (``hezo-sim run``, its CPU is nobody's),
the agent (``bench/_agent_worker.py``: the real :class:`~agent.daemon.Agent` with a timing probe)
and Prometheus' ``blackbox_exporter`` (Debian package) probing the same devices at the same
interval; this process plays Prometheus, asking the exporter for one probe per device per
interval, spread evenly. CPU and RSS of the agent and of the exporter come from ``/proc``.

A poll of the agent is the status endpoint over the device's kept HTTPS connection (a TLS
handshake, a token login and the identity endpoint only when the connection or the token is new:
``agent.keep_alive_s``; identity at least every 15 minutes) and the 6024 control API (what
``hezo-agent run`` does); a probe of the
exporter is a new TLS connection and one GET (401 accepted): it connects anew every probe.
The first interval (every device's first poll and first log export) is the warm-up; the steady
figures are measured after it.
"""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    MiB,
    ProcWatch,
    Report,
    bench_env,
    fmt_mb,
    fmt_s,
    parser,
    percentile,
    python,
    results_path,
    stop_process,
    wait_for,
)
from _fleet import SimProcess

HERE = Path(__file__).resolve().parent
EXPORTER = "prometheus-blackbox-exporter"


@dataclass(frozen=True)
class Size:
    """How big a run is."""

    devices: int
    seconds: float
    interval_s: float
    jitter_s: float


SIZES = {
    "smoke": Size(devices=8, seconds=6.0, interval_s=2.0, jitter_s=0.2),
    "quick": Size(devices=1000, seconds=180.0, interval_s=60.0, jitter_s=5.0),
    "full": Size(devices=1000, seconds=600.0, interval_s=60.0, jitter_s=5.0),
}

BLACKBOX_CONFIG = """\
modules:
  yealink_https:
    prober: http
    timeout: 5s
    http:
      method: GET
      valid_status_codes: [200, 401]
      preferred_ip_protocol: ip4
      tls_config:
        insecure_skip_verify: true
"""


def free_tcp_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Exporter:
    """blackbox_exporter on 127.0.0.1, and the Prometheus side that asks it for probes."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which(EXPORTER)
        if binary is None:
            raise RuntimeError(f"{EXPORTER} is not installed (apt-get install {EXPORTER}; `make bench` does)")
        config = workdir / "blackbox.yml"
        config.write_text(BLACKBOX_CONFIG, encoding="utf-8")
        self.port = free_tcp_port()
        self.log = (workdir / "blackbox.out").open("w", encoding="utf-8")
        cmd = [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{self.port}"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.probes: list[tuple[float, float, float, bool]] = []  # due, start, end, success
        self._local = threading.local()

    def wait_ready(self) -> None:
        """Wait until the exporter answers.

        Raises:
            TimeoutError: it did not.
        """

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{EXPORTER} exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/healthy", timeout=1) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_for(up, 20.0, EXPORTER)

    def probe(self, due: float, target: str) -> None:
        """Ask for one probe (the way Prometheus scrapes /probe) and record it."""
        start = time.monotonic()
        url = f"http://127.0.0.1:{self.port}/probe?module=yealink_https&target={target}"
        ok = False
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                ok = b"\nprobe_success 1" in resp.read()
        except OSError:
            ok = False
        self.probes.append((due, start, time.monotonic(), ok))

    def run_schedule(self, targets: list[str], t0: float, seconds: float, interval_s: float) -> None:
        """Probe every target once per interval, phases spread evenly, until ``seconds`` have passed."""
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="prom") as pool:
            rounds = int(seconds // interval_s) + 1
            schedule = sorted(
                (t0 + r * interval_s + i * interval_s / len(targets), t)
                for r in range(rounds)
                for i, t in enumerate(targets)
            )
            for due, target in schedule:
                if due > t0 + seconds:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                pool.submit(self.probe, due, target)

    def stop(self) -> None:
        """Stop the exporter."""
        stop_process(self.proc)
        self.log.close()


def start_worker(
    config: Path, seconds: float, out: Path, workdir: Path
) -> tuple[subprocess.Popen[str], float]:
    """Start the agent process and return it with its t0 (monotonic, shared with this process)."""
    cmd = [
        python(),
        str(HERE / "_agent_worker.py"),
        "--config",
        str(config),
        "--seconds",
        str(seconds),
        "--out",
        str(out),
    ]
    err = (workdir / "agent.err").open("w", encoding="utf-8")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=bench_env())
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready t0="):
        raise RuntimeError(
            f"agent worker did not start: {line!r} {(workdir / 'agent.err').read_text()[-2000:]}"
        )
    return proc, float(line.split("=", 1)[1])


def poll_figures(
    result: dict[str, Any], warm_until: float, interval_s: float, jitter_s: float
) -> dict[str, Any]:
    """Lateness, sweeps, failed and missed polls from the worker's poll records."""
    polls = [tuple(p) for p in result["polls"]]
    by_device: dict[int, list[tuple[Any, ...]]] = {}
    for p in sorted(polls, key=lambda p: p[2]):
        by_device.setdefault(int(p[0]), []).append(p)
    late = [p[2] - p[1] for p in polls if p[2] >= warm_until]
    sweeps: dict[int, list[tuple[float, float]]] = {}
    missed = 0
    for device_polls in by_device.values():
        for n, p in enumerate(device_polls):
            sweeps.setdefault(n, []).append((p[2], p[3]))
        starts = [p[2] for p in device_polls]
        for a, b in itertools.pairwise(starts):
            if b - a > 2 * interval_s:  # a whole interval went by without a poll
                missed += int((b - a) // interval_s) - 1
        tail = result["stopped_at"] - (starts[-1] if starts else result["t0"])
        if tail > 2 * interval_s + jitter_s:
            missed += int(tail // interval_s) - 1
    missed += max(0, result["devices"] - len(by_device))
    sweep_s = [
        max(e for _s, e in rows) - min(s for s, _e in rows)
        for n, rows in sorted(sweeps.items())
        if len(rows) == len(by_device)
    ]
    return {
        "polls": len(polls),
        "failed": sum(1 for p in polls if not p[4]),
        "steady_polls": sum(1 for p in polls if p[2] >= warm_until),
        "late_p50": percentile(late, 50),
        "late_p99": percentile(late, 99),
        "late_max": max(late) if late else float("nan"),
        "late_over_5s": sum(1 for x in late if x > 5.0),
        "missed": missed,
        "sweeps": sweep_s,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and record its table."""
    args = parser(__doc__.splitlines()[0] if __doc__ else "scale").parse_args(argv)
    size = SIZES[args.size]
    workdir = Path(tempfile.mkdtemp(prefix="hezo-bench-scale-"))
    report = Report("scale", args.size)
    sim = SimProcess(workdir, size.devices, net=211)
    exporter: Exporter | None = None
    agent_proc: subprocess.Popen[str] | None = None
    try:
        sim.wait_ready()
        config = sim.write_config(
            workdir / "agent.yaml", workdir / "data", poll_interval_s=size.interval_s, jitter_s=size.jitter_s
        )
        targets = [f"https://{h}:{p}{path}" for _id, h, p, path in sim.targets()]
        exporter = Exporter(workdir)
        exporter.wait_ready()
        out = workdir / "agent.json"
        agent_proc, t0 = start_worker(config, size.seconds, out, workdir)
        watch = ProcWatch(
            {"agent": agent_proc.pid, "blackbox": exporter.proc.pid, "simulator": sim.proc.pid},
            every_s=1.0 if args.size == "smoke" else 2.0,
        ).start()
        prober = threading.Thread(
            target=exporter.run_schedule, args=(targets, t0, size.seconds, size.interval_s), daemon=True
        )
        prober.start()
        code = agent_proc.wait(timeout=size.seconds + 180)
        if code != 0:
            raise RuntimeError(f"agent worker exited {code}: {(workdir / 'agent.err').read_text()[-3000:]}")
        prober.join(timeout=30)
        watch.stop()
        result = json.loads(out.read_text(encoding="utf-8"))
        summarize(report, size, result, watch, exporter, t0)
    finally:
        if agent_proc is not None:
            stop_process(agent_proc)
        if exporter is not None:
            exporter.stop()
        sim.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report.emit(results_path(args), args.json)
    return 0


def summarize(
    report: Report, size: Size, result: dict[str, Any], watch: ProcWatch, exporter: Exporter, t0: float
) -> None:
    """Turn the measurements into the table."""
    end = result["stopped_at"]
    warm = t0 + size.interval_s + 2 * size.jitter_s
    figs = poll_figures(result, warm, size.interval_s, size.jitter_s)
    a_cpu, a_wall, a_samples = watch.window("agent", warm, end)
    all_cpu, all_wall, _ = watch.window("agent", t0, end)
    b_cpu, b_wall, _ = watch.window("blackbox", warm, end)
    s_cpu, s_wall, _ = watch.window("simulator", warm, end)
    probes = [p for p in exporter.probes if p[1] >= warm]
    # the in-process profiler's own CPU, spread evenly over the run, is not the agent's
    profiler = result.get("sampler_cpu_s", 0.0) / max(end - t0, 1e-9)
    a_cpu -= profiler * a_wall
    all_cpu -= profiler * all_wall
    a_pct, b_pct = 100 * a_cpu / a_wall, 100 * b_cpu / b_wall
    a_per = 1000 * a_cpu / max(1, figs["steady_polls"])
    b_per = 1000 * b_cpu / max(1, len(probes))
    rss = [s.rss for s in watch.samples["agent"]]
    steady_rss = [s.rss for s in a_samples]
    growth = (steady_rss[-1] - steady_rss[0]) if len(steady_rss) > 1 else 0
    flat = growth <= max(5 * MiB, 0.05 * (steady_rss[0] if steady_rss else 0))
    b_rss = max((s.rss for s in watch.samples["blackbox"]), default=0)
    sweeps = figs["sweeps"]
    steady_sweeps = sweeps[1:] or sweeps

    n = size.devices
    report.add(
        "devices / interval / run",
        f"{n} / {size.interval_s:g} s / {size.seconds:g} s (warm-up {warm - t0:.0f} s)",
    )
    report.add("agent CPU, steady (% of one core)", f"{a_pct:.1f} %", "≤ 10 %", a_pct <= 10)
    report.add("agent CPU, whole run incl. warm-up", f"{100 * all_cpu / all_wall:.1f} %")
    report.add("agent RSS max", fmt_mb(max(rss, default=0)), "≤ 150 MB", max(rss, default=0) <= 150 * MiB)
    report.add(
        "agent RSS growth after warm-up",
        f"{growth / MiB:+.1f} MB "
        f"({fmt_mb(steady_rss[0] if steady_rss else 0)} → {fmt_mb(steady_rss[-1] if steady_rss else 0)})",
        "flat (≤ 5 MB or 5 %)",
        flat,
    )
    if len(steady_rss) > 3:  # does it level off? the growth of each half of the steady window
        mid = len(steady_rss) // 2
        halves = (steady_rss[mid] - steady_rss[0], steady_rss[-1] - steady_rss[mid])
        split = " / ".join(f"{h / MiB:+.1f} MB" for h in halves)
        report.add("agent RSS growth, first / second half of it", split)
    report.add("agent CPU per poll", f"{a_per:.1f} ms")
    report.add("blackbox_exporter CPU per probe", f"{b_per:.1f} ms")
    ratio = a_per / b_per if b_per else float("inf")
    report.add("agent / blackbox CPU per poll", f"{ratio:.1f}×", "≤ 3×", ratio <= 3)
    report.add("blackbox_exporter CPU, steady", f"{b_pct:.1f} %")
    report.add("blackbox_exporter RSS max", fmt_mb(b_rss))
    report.add("blackbox probes (steady) / succeeded", f"{len(probes)} / {sum(1 for p in probes if p[3])}")
    report.add(
        "agent polls (all) / failed", f"{figs['polls']} / {figs['failed']}", "0 failed", figs["failed"] == 0
    )
    report.add(
        "sweep duration (first round / steady max)",
        f"{fmt_s(sweeps[0]) if sweeps else 'n/a'} / {fmt_s(max(steady_sweeps)) if steady_sweeps else 'n/a'}",
    )
    report.add(
        "poll lateness p50 / p99 / max (steady)",
        f"{fmt_s(figs['late_p50'])} / {fmt_s(figs['late_p99'])} / {fmt_s(figs['late_max'])}",
    )
    report.add("late polls (> 5 s, steady)", str(figs["late_over_5s"]))
    report.add("missed polls", str(figs["missed"]), "0", figs["missed"] == 0)
    report.add("simulator CPU, steady (not the agent's)", f"{100 * s_cpu / s_wall:.1f} %")
    report.notes += [
        "agent poll = status over the device's kept HTTPS connection (TLS, token login and the identity "
        "endpoint only when the connection or token is new, identity at least every 15 min; "
        "agent.keep_alive_s 90 s) + 6024 API (`hezo-agent run`'s own work); blackbox probe = a new TLS "
        "connection + one GET (401 accepted; the exporter connects anew every probe); both every "
        "interval, same devices, same run",
        f"the agent's figures exclude its in-process CPU profiler ({100 * profiler:.1f} % of a core, "
        "measured on its own thread)",
        "CPU and RSS from /proc of each process every 2 s; steady = after the first interval "
        "(first polls and first log exports); lateness = poll start − due time the scheduler set",
        "the Prometheus side (asking the exporter for probes) runs in the benchmark process, not counted",
    ]
    if report.missed:
        report.profile = list(result.get("profile", []))


if __name__ == "__main__":
    sys.exit(main())
