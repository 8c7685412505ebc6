"""Crash safety: SIGKILL the outbox at random moments of uploads and of enqueueing; nothing lost or doubled.

Uploads reuse the crash test's machinery (``tests/fake_helpdesk.py``): its worker queues one
ticket with a 5 MB attachment, a comment, a second attachment, a priority change and a resolve,
then drains them into :class:`FakeHelpdesk` on loopback (which reads bodies slowly, so a kill can
land mid-upload). Each kill comes at a random moment after the worker started; after each kill
the helpdesk must hold at most one ticket, nothing twice and no torn file. Every few kills the
worker runs to the end and everything must be there exactly once with intact SHA-256.

Enqueueing uses ``bench/_enqueue_worker.py``: it submits numbered open intents (every third with
a spooled attachment) while the helpdesk is down, and is killed at random. After each kill the
outbox is opened as a restart would: every intent reported queued must be there, once, with an
intact spool file. At the end everything is drained to the helpdesk and checked: each ticket
exactly once, each attachment's hash intact.

The kill point of each kill is read from what the worker last printed and what the helpdesk saw
last (``mid-body POST /api/tickets``, ``inside submit: commit`` ...), and counted.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from _common import ROOT, Report, bench_env, parser, python, results_path
from _helpdesk import fast_helpdesk

sys.path.insert(0, str(ROOT / "tests"))
from fake_helpdesk import CRASH_TICKET, MARKER, FakeHelpdesk, FakeHelpdeskBackend, crash_intents

from agent.clock import SystemClock
from uploader.outbox import Outbox, intent_marker

HERE = Path(__file__).resolve().parent
UPLOAD_WORKER = ROOT / "tests" / "fake_helpdesk.py"
BIG_BYTES = 5 * 1024 * 1024


@dataclass(frozen=True)
class Size:
    """How big a run is."""

    upload_kills: int
    enqueue_kills: int


SIZES = {
    "smoke": Size(upload_kills=2, enqueue_kills=4),
    "quick": Size(upload_kills=12, enqueue_kills=60),
    "full": Size(upload_kills=100, enqueue_kills=1000),
}


def sha(data: bytes) -> str:
    """Return the SHA-256 hex digest."""
    return hashlib.sha256(data).hexdigest()


class Worker:
    """One run of a worker subprocess, its stdout read line by line in a thread."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=bench_env()
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.last = ""
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def drain(self) -> str:
        """Take every line read so far; return the last one."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return self.last
            self.output.append(line)
            self.last = line

    def wait_line(self, needle: str, timeout_s: float = 20.0) -> bool:
        """Wait for a line containing ``needle``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.02)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    return False
                continue
            self.output.append(line)
            self.last = line
            if needle in line:
                return True
        return False

    def kill(self) -> None:
        """SIGKILL and reap."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def finish(self, timeout_s: float = 120.0) -> int:
        """Wait for the end; read the rest of the output."""
        code = self.proc.wait(timeout=timeout_s)
        time.sleep(0.05)
        self.drain()
        return code


# --- uploads -----------------------------------------------------------------------------------------


def request_state(desk: FakeHelpdesk) -> str:
    """Name what the helpdesk was doing last: a request mid-body, or answered."""
    with desk.lock:
        last = desk.requests[-1] if desk.requests else None
    if last is None:
        return "no request yet"
    parts = [p for p in last.path.split("/") if p]
    tail = (
        "/" + parts[-1] if len(parts) > 2 and not parts[-1].isdigit() else ("/ID" if len(parts) > 2 else "")
    )
    what = f"{last.method} /api/tickets{tail}"
    if not last.complete:
        return f"mid-body {what}"
    return f"after {what} (answer {last.status})" if last.status else f"processing {what}"


def worker_state(line: str) -> str:
    """Name what the worker said last."""
    for event in (
        "intent_queued",
        "intent_applied",
        "intent_step_already_delivered",
        "ticket_already_in_backend",
        "intent_duplicate",
        "intent_retry",
        "worker done",
    ):
        if event in line:
            return event
    return "starting"


def check_upload(desk: FakeHelpdesk, big_sha: str, small_sha: str, complete: bool) -> list[str]:
    """Return what is wrong in the helpdesk (empty: nothing lost, nothing twice, nothing torn)."""
    problems = []
    with desk.lock:
        tickets = [t for t in desk.tickets.values() if t.external_id == CRASH_TICKET]
        creates = len(desk.creates())
        if len(tickets) > 1 or creates > 1:
            problems.append(f"duplicated ticket ({len(tickets)} tickets, {creates} creates)")
        for t in tickets:
            markers = [m for c in t.comments for m in MARKER.findall(c["body"])]
            if len(markers) != len(set(markers)):
                problems.append("duplicated comment")
            shas = [a["sha256"] for a in t.attachments]
            if len(shas) != len(set(shas)):
                problems.append("duplicated attachment")
            if not set(shas) <= {big_sha, small_sha}:
                problems.append("torn attachment")
        if complete:
            if len(tickets) != 1:
                return [*problems, "ticket lost"]
            t = tickets[0]
            if sorted(a["sha256"] for a in t.attachments) != sorted([big_sha, small_sha]):
                problems.append("attachment lost or changed")
            markers = [m for c in t.comments for m in MARKER.findall(c["body"])]
            big, small = Path("big"), Path("small")
            expected = [intent_marker(i.idempotency_key) for i in crash_intents(big, small)[1:]]
            if markers != expected:
                problems.append("a follow-up lost, doubled or out of order")
            if (t.status, t.priority) != ("resolved", "medium"):
                problems.append(f"final state {t.status}/{t.priority}")
    return problems


def upload_kills(n: int, rng: random.Random, workdir: Path) -> tuple[Counter[str], list[str], int, float]:
    """Kill the upload worker ``n`` times; return kill points, problems, completed chains, upload time.

    A chain starts from an empty outbox and helpdesk; each run of the worker is killed at a random
    moment within the time a whole upload takes (measured first, without kills), until a run gets
    to the end by itself; then everything is checked and the next chain starts.
    """
    big, small = workdir / "bundle.tar.gz", workdir / "blackbox.log"
    big.write_bytes(rng.randbytes(BIG_BYTES))
    small.write_text("".join(f"<14>Jan  5 09:{i % 60:02d}:00 bar1 line {i}\n" for i in range(20000)))
    big_sha, small_sha = sha(big.read_bytes()), sha(small.read_bytes())
    desk = fast_helpdesk(read_chunk_bytes=256 * 1024, read_delay_s=0.01)
    points: Counter[str] = Counter()
    problems: list[str] = []
    chains = 0

    def command(data: Path) -> list[str]:
        return [
            python(),
            str(UPLOAD_WORKER),
            "worker",
            "--url",
            desk.url,
            "--token",
            desk.token,
            "--data",
            str(data),
            "--big",
            str(big),
            "--small",
            str(small),
        ]

    try:
        clean = Worker(command(workdir / "calibrate"))
        clean.wait_line("event=intent_")
        started = time.monotonic()
        clean.finish()
        whole_s = time.monotonic() - started
        problems += [f"clean run: {p}" for p in check_upload(desk, big_sha, small_sha, True)]
        desk.reset()
        kills = 0
        while kills < n and chains < 4 * n:
            data = workdir / f"upload-{chains}"
            for _run in range(50):  # a chain: kill, restart, ... until a run ends by itself
                worker = Worker(command(data))
                worker.wait_line("event=intent_")
                deadline = time.monotonic() + rng.uniform(0.0, whole_s)
                while time.monotonic() < deadline and worker.proc.poll() is None:
                    time.sleep(0.002)
                where = f"{worker_state(worker.drain())} · {request_state(desk)}"
                if worker.proc.poll() is not None or kills >= n:
                    worker.finish()
                    break
                worker.kill()
                kills += 1
                points[where] += 1
                problems += [
                    f"kill {kills} at {where}: {p}" for p in check_upload(desk, big_sha, small_sha, False)
                ]
            problems += [f"chain {chains}: {p}" for p in check_upload(desk, big_sha, small_sha, True)]
            chains += 1
            desk.reset()
    finally:
        desk.stop()
    return points, problems, chains, whole_s


# --- enqueueing --------------------------------------------------------------------------------------


def enqueue_phase(line: str) -> str:
    """Name the point of the enqueue worker's last marker."""
    word = line.split(" ", 1)[0] if line else "starting"
    return {
        "ready": "between submits",
        "submit": "inside submit: before staging",
        "stage": "inside submit: copying the file into the spool",
        "staged": "inside submit: staged, before the commit",
        "commit": "inside submit: in the SQLite transaction",
        "committed": "inside submit: committed, before returning",
        "queued": "between submits",
        "all": "after every submit",
    }.get(word, "starting")


def check_outbox(data: Path, queued: set[int], sources: dict[str, str]) -> list[str]:
    """Open the outbox as a restart would; return what is wrong."""
    backend = FakeHelpdeskBackend("http://127.0.0.1:9", "unused", timeout_s=1.0)
    outbox = Outbox(backend, data / "outbox.sqlite", clock=SystemClock(), spool_dir=data / "spool")
    try:
        pending = outbox.pending()
        keys = [q.ticket_key for q in pending]
        problems = []
        if len(keys) != len(set(keys)):
            problems.append("an intent is queued twice")
        have = {int(k.split("/")[1]) for k in keys}
        lost = queued - have
        if lost:
            problems.append(f"intents reported queued are missing: {sorted(lost)[:5]}")
        for q in pending:
            for f in q.files:
                if f.state != "spooled" or f.sha256 is None:
                    problems.append(f"{q.ticket_key}: file {f.name} {f.state}")
                elif f.sha256 != sources.get(f.name) or outbox.spool.verify(f.sha256) is not None:
                    problems.append(f"{q.ticket_key}: spooled file {f.name} torn or changed")
        return problems
    finally:
        outbox.close()
        backend.close()


def enqueue_kills(n: int, rng: random.Random, workdir: Path) -> tuple[Counter[str], list[str], int, float]:
    """Kill the enqueue worker ``n`` times, then drain; return kill points, problems, tickets, drain s."""
    files = workdir / "files"
    files.mkdir()
    sources = {}
    for i in range(6):
        path = files / f"bar{i}.log"
        path.write_bytes(rng.randbytes(20_000 + 7_000 * i))
        sources[path.name] = sha(path.read_bytes())
    count = min(max(40, n * 15), 4000)  # enough that kills rarely come after the last submit
    data = workdir / "enqueue"
    desk = fast_helpdesk()
    desk.down = True
    points: Counter[str] = Counter()
    problems: list[str] = []
    queued: set[int] = set()
    base = [
        python(),
        str(HERE / "_enqueue_worker.py"),
        "--url",
        desk.url,
        "--token",
        desk.token,
        "--data",
        str(data),
        "--files",
        str(files),
        "--count",
        str(count),
    ]
    try:
        for kill_no in range(n):
            worker = Worker(base)
            if not worker.wait_line("ready"):
                problems.append(f"kill {kill_no}: worker did not start: {worker.output[-3:]}")
                break
            time.sleep(rng.uniform(0.0, 0.12))
            last = worker.drain()
            worker.kill()
            worker.drain()
            points[enqueue_phase(last)] += 1
            queued |= {int(line.split()[1]) for line in worker.output if line.startswith("queued ")}
            problems += [
                f"kill {kill_no} ({enqueue_phase(last)}): {p}" for p in check_outbox(data, queued, sources)
            ]
        finisher = Worker(base)  # queue the rest
        if finisher.finish() != 0:
            problems.append(f"the last enqueue run failed: {finisher.output[-3:]}")
        desk.down = False
        started = time.monotonic()
        drainer = Worker([*base, "--drain", "--deadline-s", "300"])
        drainer.finish(timeout_s=320)
        drain_s = time.monotonic() - started
        if not drainer.output or "pending=0" not in drainer.output[-1]:
            problems.append(f"drain incomplete: {drainer.output[-3:]}")
        with desk.lock:
            tickets = list(desk.tickets.values())
            creates = len(desk.creates())
        by_key = Counter(t.external_id for t in tickets)
        if len(by_key) != count or max(by_key.values(), default=0) != 1 or creates != count:
            problems.append(f"helpdesk holds {len(by_key)} of {count} tickets, {creates} creates")
        for t in tickets:
            for a in t.attachments:
                if a["sha256"] != sources.get(a["name"]):
                    problems.append(f"{t.external_id}: attachment {a['name']} hash changed")
        return points, problems, len(by_key), drain_s
    finally:
        desk.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and record its table."""
    args = parser("crash safety").parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    size = SIZES[args.size]
    seed = int(time.time()) % 100_000
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="hezo-bench-crash-"))
    report = Report("crash", args.size)
    try:
        t0 = time.monotonic()
        up_points, up_problems, chains, whole_s = upload_kills(size.upload_kills, rng, workdir)
        up_s = time.monotonic() - t0
        t0 = time.monotonic()
        enq_points, enq_problems, tickets, drain_s = enqueue_kills(size.enqueue_kills, rng, workdir)
        enq_s = time.monotonic() - t0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report.add(
        f"SIGKILLs during uploads (ticket + 5 MB attachment + follow-ups), {chains} chains",
        str(sum(up_points.values())),
        str(size.upload_kills),
    )
    report.add(
        "uploads: lost / duplicated / torn (checked after every kill and every chain)",
        f"{len(up_problems)} problems",
        "0",
        not up_problems,
    )
    report.add(
        f"SIGKILLs during enqueue ({tickets} intents queued in all)",
        str(sum(enq_points.values())),
        str(size.enqueue_kills),
    )
    report.add(
        "enqueue: lost / duplicated / torn (outbox reopened after every kill, then drained)",
        f"{len(enq_problems)} problems",
        "0",
        not enq_problems,
    )
    report.add("drain of the enqueued intents after the kills", f"{drain_s:.1f} s")
    report.add("one whole upload without kills (the window kills are drawn from)", f"{whole_s:.2f} s")
    report.add("wall time uploads / enqueue", f"{up_s:.0f} s / {enq_s:.0f} s")
    for name, points in (("upload", up_points), ("enqueue", enq_points)):
        for where, count in sorted(points.items(), key=lambda kv: -kv[1]):
            report.add(f"kill point ({name}): {where}", str(count))
    report.notes += [
        f"seed {seed}; a kill point = the worker's last log line or marker and the helpdesk's last request "
        "when SIGKILL was sent",
        *[f"problem: {p}" for p in (up_problems + enq_problems)[:10]],
    ]
    report.emit(results_path(args), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
