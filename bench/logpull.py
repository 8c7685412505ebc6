"""Log pull: 50 devices' 2–3 MB logs over SSH at concurrency 10 while the 1,000-device poll runs.

The agent process (``bench/_agent_worker.py``, the real Agent) polls a simulated fleet over HTTPS
as ``hezo-agent run`` does; meanwhile, in the same process, it pulls one log file from each of 50
other simulated devices over SSH/SFTP with the agent's :class:`~collectors.transports.ssh.SshTransport`,
ten at a time. The pull starts just before a poll round, so the two compete for the same
process. Reported: the pull time, and the lateness of the polls that ran during the pull next to
those that did not.

The simulated SSH devices build their log files on demand (about 1 s of simulator CPU per
file), in several simulator processes; their CPU is shown so the pull time can be read against it.
At quick size the logs are ~1 MB (2–3 MB at full size) so that ``make bench-quick`` stays short.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    MiB,
    ProcWatch,
    Report,
    bench_env,
    fmt_s,
    parser,
    percentile,
    python,
    results_path,
    stop_process,
)
from _fleet import SimProcess, started

HERE = Path(__file__).resolve().parent
#: the bigger of a device's two logs: the MVC writes most to sys.log, the A20/A30 to app.log
REMOTE = {"MVC": "/var/log/sys.log", "default": "/var/log/app.log"}


@dataclass(frozen=True)
class Size:
    """How big a run is."""

    devices: int
    interval_s: float
    jitter_s: float
    ssh_devices: int
    concurrency: int
    log_bytes: int
    start_at_s: float
    seconds: float
    ssh_sims: int = 2


SIZES = {
    "smoke": Size(
        devices=10,
        interval_s=1.0,
        jitter_s=0.1,
        ssh_devices=4,
        concurrency=2,
        log_bytes=1_000_000,
        start_at_s=1.2,
        seconds=4.5,
    ),
    # the full poll rate of 1,000 devices every 60 s (17 polls/s) with a third of them every 20 s
    "quick": Size(
        devices=340,
        interval_s=20.0,
        jitter_s=2.0,
        ssh_devices=50,
        concurrency=10,
        log_bytes=1_500_000,  # quick: ~1 MB logs (the simulator spends ~1 s of CPU per 2-3 MB log it serves)
        start_at_s=18.0,
        seconds=30.0,
    ),
    "full": Size(
        devices=1000,
        interval_s=60.0,
        jitter_s=5.0,
        ssh_devices=50,
        concurrency=10,
        log_bytes=4_400_000,
        start_at_s=58.0,
        seconds=150.0,
        ssh_sims=5,
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and record its table."""
    args = parser("log pull while polling").parse_args(argv)
    size = SIZES[args.size]
    workdir = Path(tempfile.mkdtemp(prefix="hezo-bench-logpull-"))
    report = Report("logpull", args.size)
    share = [
        size.ssh_devices // size.ssh_sims + (i < size.ssh_devices % size.ssh_sims)
        for i in range(size.ssh_sims)
    ]
    sims = [SimProcess(workdir, size.devices, net=217, name="poll")] + [
        SimProcess(workdir, n, net=218 + i, name=f"ssh-{i}", log_bytes=size.log_bytes, ssh_port=0)
        for i, n in enumerate(share)
    ]
    agent: subprocess.Popen[str] | None = None
    try:
        started(sims)
        poll, *ssh = sims
        config = poll.write_config(
            workdir / "agent.yaml", workdir / "data", poll_interval_s=size.interval_s, jitter_s=size.jitter_s
        )
        models = {d["host"]: d["model"] for sim in ssh for d in sim.config()["devices"]}
        hosts = [
            [host, port, REMOTE.get(models.get(host, ""), REMOTE["default"])]
            for sim in ssh
            for host, port in sim.ssh_endpoints()
        ]
        spec = {
            "hosts": hosts,
            "concurrency": size.concurrency,
            "username": "admin",
            "key_file": str(ssh[0].config_path.with_name(f"{ssh[0].config_path.stem}.ssh-key")),
            "timeout_s": 10.0,
            "fetch_timeout_s": 120.0,
            "max_bytes": 20 * MiB,
            "start_at_s": size.start_at_s,
        }
        spec_path = workdir / "logpull.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        out = workdir / "agent.json"
        cmd = [
            python(),
            str(HERE / "_agent_worker.py"),
            "--config",
            str(config),
            "--seconds",
            str(size.seconds),
            "--out",
            str(out),
            "--logpull",
            str(spec_path),
        ]
        err = (workdir / "agent.err").open("w", encoding="utf-8")
        agent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=bench_env())
        assert agent.stdout is not None
        line = agent.stdout.readline()
        if not line.startswith("ready t0="):
            raise RuntimeError(f"agent worker did not start: {(workdir / 'agent.err').read_text()[-2000:]}")
        watch = ProcWatch(
            {"agent": agent.pid, **{sim.config_path.stem: sim.proc.pid for sim in ssh}}, every_s=1.0
        ).start()
        code = agent.wait(timeout=size.seconds + 360)
        watch.stop()
        if code != 0:
            raise RuntimeError(f"agent worker exited {code}: {(workdir / 'agent.err').read_text()[-3000:]}")
        summarize(report, size, json.loads(out.read_text(encoding="utf-8")), watch)
    finally:
        if agent is not None:
            stop_process(agent)
        for sim in sims:
            sim.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report.emit(results_path(args), args.json)
    return 0


def summarize(report: Report, size: Size, result: dict[str, Any], watch: ProcWatch) -> None:
    """Fill the table."""
    pull = result.get("logpull") or {}
    pulls = pull.get("pulls", [])
    ok = [p for p in pulls if not p["error"]]
    t0 = result["t0"]
    p_start, p_end = pull.get("started") or t0, pull.get("ended") or t0
    warm = t0 + size.interval_s  # the first round (and the first log exports over HTTPS) is the warm-up
    polls = [tuple(p) for p in result["polls"] if p[2] >= warm]
    overlaps = [p[2] <= p_end and p[3] >= p_start for p in polls]
    during = [p[2] - p[1] for p, over in zip(polls, overlaps, strict=True) if over]
    outside = [p[2] - p[1] for p, over in zip(polls, overlaps, strict=True) if not over]
    sizes = [p["bytes"] for p in ok]
    each = [p["end"] - p["start"] for p in ok]
    p99 = percentile(during, 99)
    a_cpu, a_wall, _ = watch.window("agent", p_start, p_end)
    s_cpu = sum(watch.window(name, p_start, p_end)[0] for name in watch.pids if name != "agent")
    report.add("polled devices / interval", f"{result['devices']} / {size.interval_s:g} s")
    report.add(
        "logs pulled over SSH / concurrency",
        f"{len(ok)} of {len(pulls)} / {size.concurrency}",
        f"{size.ssh_devices}",
        len(ok) == size.ssh_devices,
    )
    report.add(
        "log size min / max", f"{min(sizes, default=0) / MiB:.2f} / {max(sizes, default=0) / MiB:.2f} MB"
    )
    report.add("pull time, all logs (wall)", fmt_s(p_end - p_start))
    report.add(
        "one log p50 / max", f"{fmt_s(percentile(each, 50))} / {fmt_s(max(each, default=float('nan')))}"
    )
    report.add("throughput", f"{sum(sizes) / MiB / max(p_end - p_start, 1e-9):.1f} MB/s")
    report.add(
        f"poll lateness during the pull ({len(during)} polls) p50 / p99 / max",
        f"{fmt_s(percentile(during, 50))} / {fmt_s(p99)} / {fmt_s(max(during, default=float('nan')))}",
        "p99 ≤ 5 s",
        bool(during) and p99 <= 5.0,
    )
    report.add(
        f"poll lateness outside the pull ({len(outside)} polls) p50 / p99",
        f"{fmt_s(percentile(outside, 50))} / {fmt_s(percentile(outside, 99))}",
    )
    failed = sum(1 for p in polls if not p[4])
    report.add("failed polls after warm-up", str(failed), "0", failed == 0)
    report.add("agent CPU during the pull (% of one core)", f"{100 * a_cpu / max(a_wall, 1e-9):.0f} %")
    report.add("simulated SSH devices' CPU during the pull (not the agent's)", f"{s_cpu:.1f} s")
    errors = sorted({p["error"][:100] for p in pulls if p["error"]})
    errors += sorted({str(p[5])[:100] for p in polls if not p[4]})
    report.notes += [
        f"each device serves its bigger log ({REMOTE['default']}, {REMOTE['MVC']} on an MVC) over SFTP "
        f"(simulator --log-bytes {size.log_bytes}); pulled with the "
        "agent's "
        "SshTransport.fetch into a temporary folder, key login, host key trusted on first use",
        "lateness = poll start − the due time the agent's scheduler set; 'during' = polls that overlapped "
        "the pull",
        *[f"pull error: {e}" for e in errors[:5]],
    ]
    if report.missed:
        report.profile = list(result.get("profile", []))


if __name__ == "__main__":
    sys.exit(main())
