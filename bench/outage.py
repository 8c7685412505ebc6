"""Helpdesk outage: the helpdesk refuses for 6 simulated hours while 1,000 tickets queue, then drains.

The agent's :class:`~uploader.outbox.Outbox` with its default settings (backoff 5 s doubling to
600 s) delivers to the fake helpdesk of the crash test (``tests/fake_helpdesk.py``) on loopback,
which answers 503 for six hours of a fake clock. Tickets arrive evenly over those hours, priorities
mixed, each with a 64 KB evidence file (the spool quota holds half of them, so evidence of
the least urgent tickets is evicted first), every third with a follow-up comment. Checked while
queueing: the spool on disk never above the quota, this process's RSS flat. Then the helpdesk
comes back and the outbox drains in real time (the fake clock only jumps over backoff waits):
drain time, critical first, no ticket or comment twice, every attachment that was kept intact.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from _common import MiB, Report, cpu_seconds, fmt_mb, parser, profiled, results_path, rss_bytes
from _helpdesk import MARKER, FakeHelpdeskBackend, fast_helpdesk

from agent.clock import FakeClock
from config.schema import OutboxSettings
from uploader.intents import Intent, IntentKind
from uploader.models import Attachment, Priority, Ticket
from uploader.outbox import Outbox, outbox_paths

HOURS = 6.0
EVIDENCE_BYTES = 64 * 1024
RANK = {Priority.CRITICAL: 0, Priority.MEDIUM: 1, Priority.LOW: 2}


@dataclass(frozen=True)
class Size:
    """How big a run is."""

    tickets: int


SIZES = {"smoke": Size(tickets=30), "quick": Size(tickets=400), "full": Size(tickets=1000)}


def spool_bytes(folder: Path) -> int:
    """Bytes of every file under the spool folder (what is really on disk)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and record its table."""
    args = parser("helpdesk outage").parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)
    size = SIZES[args.size]
    seed = int(time.time()) % 100_000
    workdir = Path(tempfile.mkdtemp(prefix="hezo-bench-outage-"))
    report = Report("outage", args.size)
    try:
        run(size, random.Random(seed), workdir, report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report.notes.append(f"seed {seed}")
    report.emit(results_path(args), args.json)
    return 0


def run(size: Size, rng: random.Random, workdir: Path, report: Report) -> None:
    """Queue during the outage, then drain."""
    clock = FakeClock()
    desk = fast_helpdesk(now=clock.now)
    backend = FakeHelpdeskBackend(desk.url, desk.token, timeout_s=5.0)
    quota_mb = max(1, size.tickets * EVIDENCE_BYTES // (2 * MiB))
    settings = OutboxSettings(quota_mb=quota_mb)
    outbox = Outbox.from_settings(backend, workdir / "data", settings, clock=clock)
    spool_dir = outbox_paths(workdir / "data")[1]
    evidence = workdir / "evidence"
    evidence.mkdir()
    expected: dict[str, Priority] = {}
    shas: dict[str, str] = {}
    comments: set[str] = set()
    rss: list[int] = []
    disk_max = 0
    step_s = HOURS * 3600 / size.tickets
    try:
        desk.down = True
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        for n in range(size.tickets):
            key = f"site/bar{n}/offline/1"
            priority = rng.choice((Priority.CRITICAL, Priority.MEDIUM, Priority.LOW))
            path = evidence / f"bar{n}.log"
            data = rng.randbytes(EVIDENCE_BYTES)
            path.write_bytes(data)
            shas[key] = hashlib.sha256(data).hexdigest()
            ticket = Ticket(key, f"[{priority}] bar{n} offline", "down", priority, {"device": f"bar{n}"})
            outbox.submit(
                Intent(
                    IntentKind.OPEN,
                    key,
                    f"{key}:open",
                    priority,
                    ticket=ticket,
                    attachments=(Attachment(path.name, path),),
                )
            )
            if n % 3 == 0:
                outbox.submit(
                    Intent(IntentKind.COMMENT, key, f"{key}:note", priority, body=f"bar{n} still down")
                )
                comments.add(key)
            path.unlink()  # the log rotates away: only the spool copy remains
            expected[key] = priority
            outbox.flush()
            clock.advance(step_s)
            if n % 10 == 0 or n == size.tickets - 1:
                disk_max = max(disk_max, spool_bytes(spool_dir))
                rss.append(rss_bytes())
        queue_cpu, queue_wall = cpu_seconds() - cpu0, time.monotonic() - wall0
        probes = len(desk.requests)
        pending_before = len(outbox.pending())

        desk.down = False
        started = time.monotonic()
        sim_s = 0.0
        with profiled() as sampler:
            for _ in range(10_000):
                outbox.flush()
                if not outbox.pending():
                    break
                clock.advance(30.0)  # nothing was due: jump over the backoff wait
                sim_s += 30.0
        drain_s = time.monotonic() - started
        left = len(outbox.pending())
        rejected = len(outbox.rejected())
        alerts = outbox.alerts(100_000)
    finally:
        outbox.close()
        backend.close()
        desk.stop()

    with desk.lock:
        created = [desk.tickets[i] for i in sorted(desk.tickets, key=int)]
        creates = len(desk.creates())
    keys = Counter(t.external_id for t in created)
    dup_tickets = sum(c - 1 for c in keys.values()) + max(0, creates - len(keys))
    dup_comments = sum(
        1
        for t in created
        for m, c in Counter(m for c in t.comments for m in MARKER.findall(c["body"])).items()
        if c > 1
    )
    order = [RANK[Priority(t.priority)] for t in created]
    inversions = sum(1 for a, b in itertools.pairwise(order) if a > b)
    torn = sum(1 for t in created for a in t.attachments if a["sha256"] != shas.get(t.external_id))
    evicted = {a.ticket_key for a in alerts if a.kind in ("quota_evicted", "attachment_dropped")}
    evicted_by = Counter(str(expected[k]) for k in evicted if k in expected)
    without = sum(1 for t in created if not t.attachments)
    quota = quota_mb * MiB
    warm = rss[len(rss) // 10] if rss else 0
    growth = (rss[-1] - warm) if rss else 0

    report.add("tickets queued during the outage / simulated hours", f"{size.tickets} / {HOURS:g} h")
    report.add("requests to the refusing helpdesk during the outage (backoff probes)", str(probes))
    report.add(
        "spool on disk, max / quota",
        f"{fmt_mb(disk_max)} / {fmt_mb(quota)}",
        "under quota",
        disk_max <= quota,
    )
    report.add(
        "RSS while queueing (after 10 % → end)",
        f"{fmt_mb(warm)} → {fmt_mb(rss[-1] if rss else 0)} ({growth / MiB:+.1f} MB)",
        "flat (≤ 5 MB)",
        growth <= 5 * MiB,
    )
    report.add("queueing cost (CPU / wall, whole outage)", f"{queue_cpu:.1f} s / {queue_wall:.1f} s")
    report.add(
        "drain time after the helpdesk returns (wall)",
        f"{drain_s:.1f} s ({sim_s:.0f} s of backoff waits skipped on the fake clock)",
    )
    report.add(
        "delivered / pending / rejected",
        f"{len(keys)} / {left} / {rejected}",
        f"{size.tickets} / 0 / 0",
        len(keys) == size.tickets and left == 0 and rejected == 0,
    )
    report.add("intents pending when the helpdesk returned", str(pending_before))
    report.add(
        "order: priority inversions in creation order", str(inversions), "0 (critical first)", inversions == 0
    )
    report.add(
        "duplicated tickets / comments",
        f"{dup_tickets} / {dup_comments}",
        "0 / 0",
        dup_tickets == 0 and dup_comments == 0,
    )
    report.add("attachments with a wrong hash", str(torn), "0", torn == 0)
    report.add(
        "evidence evicted by the quota (by priority), tickets sent without it",
        f"{dict(sorted(evicted_by.items())) or 'none'}, {without}",
    )
    report.add(
        "critical evidence evicted",
        str(evicted_by.get("critical", 0)),
        "0",
        evicted_by.get("critical", 0) == 0,
    )
    report.notes += [
        f"each ticket has a {EVIDENCE_BYTES // 1024} KB evidence file; quota {quota_mb} MB (about half of "
        "them: the critical third always fits), default backoff 5 s → 600 s; helpdesk = "
        "tests/fake_helpdesk.py on loopback",
    ]
    if report.missed:
        report.profile = sampler.summary(8)


if __name__ == "__main__":
    sys.exit(main())
