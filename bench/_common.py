"""Shared parts of the benchmarks: sizes, the results file, /proc readings, a stack sampler.

Every benchmark script prints one table (figure, measured, target, verdict) and records it in
``docs/benchmarks.md``: the benchmark's block at the top is replaced by the new table, and the
same table is appended to the history at the bottom, with the machine (CPU model, cores, load)
and the date. ``--results PATH`` writes somewhere else (the smoke tests use a temporary file).

Linux only: CPU and memory are read from ``/proc`` (the benchmarks compare processes by pid).
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import json
import math
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks.md"
SIZES = ("smoke", "quick", "full")
BENCHES = {
    "scale": "1. Scale: 1,000 HTTPS devices, agent vs blackbox_exporter",
    "detection": "2. Detection latency",
    "false_alarms": "3. False alarms (fake clock)",
    "crash": "4. Crash safety (SIGKILL)",
    "outage": "5. Helpdesk outage",
    "hostile": "6. Hostile devices",
    "logpull": "7. Log pull over SSH while polling",
}
HISTORY = "<!-- history: every run, newest last -->"
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
MiB = 1024 * 1024


# --- figures and the results file -----------------------------------------------------------------


@dataclass
class Figure:
    """One row of a benchmark's table: ``ok`` None means "no target, for information"."""

    name: str
    value: str
    target: str = ""
    ok: bool | None = None

    @property
    def verdict(self) -> str:
        """Return "met", "MISSED" or "" (no target)."""
        if self.ok is None:
            return ""
        return "met" if self.ok else "MISSED"


@dataclass
class Report:
    """A benchmark's result: its figures, notes (how it was measured) and profiles of misses."""

    bench: str
    size: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)

    def add(self, name: str, value: str, target: str = "", ok: bool | None = None) -> None:
        """Add one figure."""
        self.figures.append(Figure(name, value, target, ok))

    @property
    def missed(self) -> list[Figure]:
        """Return the figures that missed their target."""
        return [f for f in self.figures if f.ok is False]

    def table(self) -> str:
        """Return the figures as a Markdown table."""
        lines = ["| figure | measured | target | verdict |", "|---|---|---|---|"]
        for f in self.figures:
            lines.append(f"| {f.name} | {f.value} | {f.target} | {f.verdict} |")
        return "\n".join(lines)

    def block(self, when: str, machine: str) -> str:
        """Return the Markdown block for the results file: heading, context, table, notes, profile."""
        label = run_label(self.size)
        parts = [f"### {BENCHES[self.bench]}", "", f"*{label}* · {when} · {machine}", "", self.table()]
        if self.notes:
            parts += ["", *(f"- {n}" for n in self.notes)]
        if self.profile:
            parts += [
                "",
                "CPU profile of the agent for the missed figure(s) (stacks of running threads, sampled):",
                "",
            ]
            parts += [f"    {line}" for line in self.profile]
        return "\n".join(parts)

    def emit(self, results: Path | None, json_out: Path | None = None) -> None:
        """Print the table and record it (current block replaced, history appended)."""
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        mach = machine()
        print(f"\n{BENCHES[self.bench]} ({run_label(self.size)})\n")
        print(self.table())
        for note in self.notes:
            print(f"- {note}")
        if self.profile:
            print("profile of the missed figure(s):")
            for line in self.profile:
                print(f"    {line}")
        if results is not None:
            record(results, self.bench, self.block(when, mach))
            print(f"\nrecorded in {results}")
        if json_out is not None:
            data: dict[str, Any] = {"bench": self.bench, "size": self.size, "when": when, "machine": mach}
            data["figures"] = [asdict(f) for f in self.figures]
            data["notes"] = self.notes
            data["profile"] = self.profile
            json_out.write_text(json.dumps(data, indent=2), encoding="utf-8")
        sys.stdout.flush()


def run_label(size: str) -> str:
    """Return how a run is labelled: its size, and the note from ``HEZO_BENCH_NOTE`` if set."""
    note = os.environ.get("HEZO_BENCH_NOTE", "").strip()
    return f"{size} run" + (f", {note}" if note else "")


def machine() -> str:
    """Return the CPU model, core count and load average at the time of the call."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    py = platform.python_version()
    return f"{model}, {os.cpu_count()} cores, load average {load:.2f} at the end, Python {py}"


def skeleton() -> str:
    """Return an empty results file: one placeholder block per benchmark, then the history."""
    head = [
        "# Benchmarks",
        "",
        "`make bench` runs every script in `bench/` at full size, `make bench-quick` at quick size",
        "(under 5 minutes in all: the 3-minute scale run goes alongside the six others, so on a",
        "2-core machine they compete for CPU; every figure of the scale run is per process, from",
        "`/proc`); `make test` runs each at smoke size so they cannot rot. Each script prints its",
        "table and records it here: the block of each benchmark below is its latest run, the history",
        "at the end keeps every run, with the machine and its load average. A figure that misses its",
        "target says MISSED and carries what explains it (a CPU profile where CPU is the miss). How",
        "each figure is measured is in the notes under its table and in `bench/README.md`.",
        "",
    ]
    blocks = [
        f"<!-- bench:{name} -->\n### {title}\n\nnot run yet\n<!-- /bench:{name} -->\n"
        for name, title in BENCHES.items()
    ]
    return "\n".join(head) + "\n" + "\n".join(blocks) + "\n## History\n\n" + HISTORY + "\n"


def record(results: Path, bench: str, block: str) -> None:
    """Replace ``bench``'s current block in ``results`` and append ``block`` to its history.

    The file is locked while it is rewritten (two benchmarks may finish at the same time).
    """
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        text = fh.read() or skeleton()
        fh.seek(0)
        fh.truncate()
        fh.write(updated(text, bench, block))


def updated(text: str, bench: str, block: str) -> str:
    """Return the results ``text`` with ``bench``'s block replaced and ``block`` added to the history."""
    if HISTORY not in text:
        text = text.rstrip("\n") + "\n\n## History\n\n" + HISTORY + "\n"
    start, end = f"<!-- bench:{bench} -->", f"<!-- /bench:{bench} -->"
    current = f"{start}\n{block}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: current, text, count=1)
    else:
        head, tail = text.split("\n## History\n", 1)
        text = head.rstrip("\n") + "\n\n" + current + "\n\n## History\n" + tail
    return text.rstrip("\n") + "\n\n" + block.replace("### ", "#### ", 1) + "\n"


# --- command line ---------------------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    """Return the argument parser every benchmark shares (``--size``, ``--results``, ``--json``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--size", choices=SIZES, default="full", help="smoke (seconds), quick, or full")
    p.add_argument("--results", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    p.add_argument("--no-record", action="store_true", help="print the table only")
    p.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    return p


def results_path(args: argparse.Namespace) -> Path | None:
    """Return where to record (None with ``--no-record``)."""
    return None if args.no_record else Path(args.results)


# --- numbers --------------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Return the ``pct`` percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def fmt_s(seconds: float) -> str:
    """Return seconds with a sensible precision."""
    if math.isnan(seconds):
        return "n/a"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def fmt_mb(size: float) -> str:
    """Return bytes as MB (MiB)."""
    return f"{size / MiB:.1f} MB"


# --- processes ------------------------------------------------------------------------------------


def cpu_seconds(pid: int | str = "self") -> float:
    """Return the user + system CPU seconds ``pid`` has used (from ``/proc/PID/stat``).

    Raises:
        OSError: no such process.
    """
    raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int | str = "self") -> int:
    """Return the resident set size of ``pid`` in bytes (``VmRSS``).

    Raises:
        OSError: no such process.
    """
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class ProcSample:
    """One reading of a process: monotonic time, CPU seconds so far, RSS bytes."""

    at: float
    cpu_s: float
    rss: int


class ProcWatch:
    """Samples the CPU and RSS of some processes every ``every_s`` seconds in a thread (bounded)."""

    def __init__(self, pids: dict[str, int], every_s: float = 2.0, max_samples: int = 100_000) -> None:
        self.pids = pids
        self.every_s = every_s
        self.max_samples = max_samples
        self.samples: dict[str, list[ProcSample]] = {name: [] for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="procwatch", daemon=True)

    def start(self) -> ProcWatch:
        """Start sampling."""
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> None:
        """Take one reading of every process still alive."""
        now = time.monotonic()
        for name, pid in self.pids.items():
            try:
                sample = ProcSample(now, cpu_seconds(pid), rss_bytes(pid))
            except (OSError, ValueError, IndexError):
                continue
            if sample.rss:  # a process that has exited (a zombie) has no RSS any more
                self.samples[name].append(sample)

    def _run(self) -> None:
        count = 0
        while not self._stop.wait(self.every_s) and count < self.max_samples:
            self.sample()
            count += 1

    def stop(self) -> None:
        """Stop sampling (after one last reading)."""
        self._stop.set()
        self._thread.join(5.0)
        self.sample()

    def window(self, name: str, start: float, end: float) -> tuple[float, float, list[ProcSample]]:
        """Return (CPU seconds, wall seconds, samples) of ``name`` over the readings spanning two times.

        The readings used run from the last one at or before ``start`` to the first one at or after
        ``end`` (so a short window still has two readings).
        """
        samples = self.samples[name]
        before = [i for i, s in enumerate(samples) if s.at <= start]
        after = [i for i, s in enumerate(samples) if s.at >= end]
        first = before[-1] if before else 0
        last = after[0] if after else len(samples) - 1
        inside = samples[first : last + 1]
        if len(inside) < 2:
            return float("nan"), float("nan"), inside
        return inside[-1].cpu_s - inside[0].cpu_s, inside[-1].at - inside[0].at, inside


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout_s: float = 15.0) -> int:
    """Terminate one process we started (SIGTERM, then SIGKILL after ``timeout_s``); return its code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
    return proc.returncode if proc.returncode is not None else -9


def wait_for(check: object, timeout_s: float, what: str, every_s: float = 0.05) -> None:
    """Poll ``check()`` until it is true, at most ``timeout_s`` seconds.

    Raises:
        TimeoutError: it never became true.
    """
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")


def _current_frames() -> dict[int, Any]:
    """``sys._current_frames()`` with the garbage collector held off.

    CPython 3.11 builds that dict while holding its thread-list lock; a collection started by the
    allocation can run Python finalizers (weakref callbacks) that wait for the GIL while that lock
    is held, and every other thread then hangs on the lock (seen here: a frozen agent process).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        if enabled:
            gc.enable()


def thread_running(native_id: int) -> bool | None:
    """Whether thread ``native_id`` of this process is on a CPU right now (state R), None if gone."""
    try:
        raw = Path(f"/proc/self/task/{native_id}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    return raw[raw.rindex(")") + 2] == "R"  # the field after "(comm)"; comm may hold spaces


#: innermost frames of a thread that waits for work
IDLE_WAITS = {"_worker", "wait", "select", "poll", "accept", "run_forever", "_run_once", "serve_forever"}


# --- a CPU profile by stack sampling (a small py-spy inside the process) --------------------------


class StackSampler:
    """Samples every thread's stack ``hz`` times a second; a thread on a CPU counts, one idle does not.

    At each sample, every thread the kernel shows running (``/proc/self/task/TID/stat`` state R)
    is charged one sampling interval at the stack it has now, so the summary is a CPU profile
    (like py-spy without ``--idle``): a thread blocked in ``recv``, ``select`` or a lock costs
    nothing, and the CPU is placed where it is spent, not where the thread waits next. For each
    charge every distinct function on the stack gets the time once (inclusive, py-spy's
    "total") and the innermost one gets it as "self". The sampler's own CPU is in
    :attr:`own_cpu_s`.
    """

    def __init__(self, hz: float = 10.0, max_samples: int = 200_000) -> None:
        self.interval_s = 1.0 / hz
        self.max_samples = max_samples
        self.cpu_s = 0.0
        self.own_cpu_s = 0.0
        self.inclusive: defaultdict[str, float] = defaultdict(float)
        self.leaf: defaultdict[str, float] = defaultdict(float)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)

    def start(self) -> StackSampler:
        """Start sampling in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        me = threading.get_ident()
        taken = 0
        while not self._stop.wait(self.interval_s) and taken < self.max_samples:
            taken += 1
            frames = _current_frames()
            for thread in threading.enumerate():
                ident, native = thread.ident, thread.native_id
                if ident is None or native is None or ident == me or ident not in frames:
                    continue
                frame = frames[ident]
                if frame.f_code.co_name in IDLE_WAITS:
                    continue  # waiting for work: not running (and a /proc read saved)
                if thread_running(native):
                    self._charge(frame, self.interval_s)
            self.own_cpu_s = time.thread_time()

    def _charge(self, frame: object, spent: float) -> None:
        self.cpu_s += spent
        self.leaf[_where(frame)] += spent
        seen: set[str] = set()
        walk: Any = frame
        depth = 0
        while walk is not None and depth < 200:
            seen.add(_where(walk))
            walk = walk.f_back
            depth += 1
        for name in seen:
            self.inclusive[name] += spent

    def summary(self, top: int = 6) -> list[str]:
        """Return the top functions by inclusive and by self share of the sampled CPU time."""
        if self.cpu_s <= 0:
            return ["no CPU time sampled"]
        total = self.cpu_s
        skip = ("threading.py", "thread.py", "_common.py", "concurrent/futures", "apscheduler/executors")
        heavy = sorted(self.inclusive.items(), key=lambda kv: -kv[1])
        inclusive = [(n, c) for n, c in heavy if not any(s in n for s in skip)][:top]
        own = sorted(self.leaf.items(), key=lambda kv: -kv[1])[:top]
        lines = [
            f"{total:.1f} CPU s sampled on Python stacks (running threads × interval); "
            f"the sampler itself used {self.own_cpu_s:.1f} s"
        ]
        lines += [f"total {n * 100 / total:5.1f}%  {name}" for name, n in inclusive]
        lines += [f"self  {n * 100 / total:5.1f}%  {name}" for name, n in own]
        return lines


def _where(frame: object) -> str:
    code = frame.f_code  # type: ignore[attr-defined]
    path = code.co_filename
    for marker in ("/site-packages/", "/main/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{code.co_name} ({path}:{code.co_firstlineno})"


@contextmanager
def profiled(hz: float = 20.0) -> Iterator[StackSampler]:
    """Sample stacks for the duration of the ``with`` block."""
    sampler = StackSampler(hz).start()
    try:
        yield sampler
    finally:
        sampler.stop()


def python() -> str:
    """Return the interpreter to run helper processes with (this one)."""
    return sys.executable


def bench_env() -> dict[str, str]:
    """Return the environment for helper processes: the repository and ``tests/`` importable."""
    env = dict(os.environ)
    paths = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
