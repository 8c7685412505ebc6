"""kill -9 at any moment of an upload, and a helpdesk down for hours: nothing lost, nothing twice.

The agent side runs as a subprocess (``tests/fake_helpdesk.py worker``): an outbox queues a
ticket with a 5 MB attachment plus a comment, a second attachment, a priority change and a
resolve, then drains them into :class:`FakeHelpdesk` on loopback. The test kills it with
SIGKILL at chosen points (right after the intent is durable, mid-body, after the helpdesk stored
the request but before it answered) and at random moments, restarts it, and checks the
helpdesk: one ticket, every follow-up exactly once, every attachment's SHA-256 intact.

``HEZO_CRASH_RANDOM_KILLS`` (default 3) sets how many random kills the chained run makes; a
benchmark sets it to 100.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import queue
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_helpdesk import CRASH_TICKET, MARKER, FakeHelpdesk, FakeHelpdeskBackend, Recorded, crash_intents

from agent.clock import FakeClock
from uploader.intents import Intent, IntentKind
from uploader.models import Attachment, Priority, Ticket
from uploader.outbox import Outbox, intent_marker

WORKER = Path(__file__).with_name("fake_helpdesk.py")
BIG_BYTES = 5 * 1024 * 1024
RANDOM_KILLS = int(os.environ.get("HEZO_CRASH_RANDOM_KILLS", "3"))


@pytest.fixture(scope="module")
def desk() -> Iterator[FakeHelpdesk]:
    # reading the 7 MB request body in 256 KiB chunks with a short pause makes "mid-body" a window
    server = FakeHelpdesk(read_chunk_bytes=256 * 1024, read_delay_s=0.003).start()
    yield server
    server.stop()


@dataclass(frozen=True)
class Files:
    big: Path
    small: Path
    big_sha: str
    small_sha: str


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    folder = tmp_path_factory.mktemp("upload")
    big, small = folder / "bundle.tar.gz", folder / "blackbox.log"
    big.write_bytes(random.Random(7).randbytes(BIG_BYTES))
    small.write_text("".join(f"<14>Jan  5 09:{i % 60:02d}:00 bar1 line {i}\n" for i in range(20000)))
    return Files(big, small, _sha(big.read_bytes()), _sha(small.read_bytes()))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Worker:
    """One run of the outbox worker subprocess, its output read line by line."""

    def __init__(self, desk: FakeHelpdesk, data: Path, files: Files) -> None:
        cmd = [
            sys.executable,
            str(WORKER),
            "worker",
            "--url",
            desk.url,
            "--token",
            desk.token,
            "--data",
            str(data),
            "--big",
            str(files.big),
            "--small",
            str(files.small),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def wait_line(self, needle: str, timeout_s: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.05)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    return False
                continue
            self.output.append(line)
            if needle in line:
                return True
        return False

    def finish(self, timeout_s: float = 25.0) -> int:
        code = self.proc.wait(timeout=timeout_s)
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return code


def kill_on(desk: FakeHelpdesk, event: str, method: str, path_end: str) -> Callable[[Worker], None]:
    """Arm the helpdesk to kill the worker at ``event`` of the first matching request."""

    def arm(worker: Worker) -> None:
        fired = threading.Event()

        def hook(what: str, req: Recorded) -> None:
            if what == event and req.method == method and req.path.endswith(path_end) and not fired.is_set():
                fired.set()
                worker.kill()  # and wait: the answer below can never reach it

        desk.hook = hook

    return arm


def check_no_duplicates(desk: FakeHelpdesk, files: Files) -> None:
    """What must hold after every kill: at most one ticket, nothing in it twice, no torn file."""
    with desk.lock:
        tickets = [t for t in desk.tickets.values() if t.external_id == CRASH_TICKET]
        assert len(tickets) <= 1, "duplicated ticket"
        for ticket in tickets:
            markers = [m for c in ticket.comments for m in MARKER.findall(c["body"])]
            assert len(markers) == len(set(markers)), f"duplicated comment: {markers}"
            shas = [a["sha256"] for a in ticket.attachments]
            assert len(shas) == len(set(shas)), "duplicated attachment"
            assert set(shas) <= {files.big_sha, files.small_sha}, "a torn or changed attachment arrived"


def check_delivered_once(desk: FakeHelpdesk, files: Files) -> None:
    """What must hold when the worker finished: everything there, exactly once, bytes intact."""
    check_no_duplicates(desk, files)
    with desk.lock:
        [ticket] = [t for t in desk.tickets.values() if t.external_id == CRASH_TICKET]
        assert len(desk.creates()) == 1
        assert sorted((a["name"], a["size"], a["sha256"]) for a in ticket.attachments) == sorted(
            [
                ("bundle.tar.gz", BIG_BYTES, files.big_sha),
                ("blackbox.log", files.small.stat().st_size, files.small_sha),
            ]
        )
        markers = [m for c in ticket.comments for m in MARKER.findall(c["body"])]
    expected = [intent_marker(i.idempotency_key) for i in crash_intents(files.big, files.small)[1:]]
    assert markers == expected, "every follow-up once, in order"
    assert (ticket.status, ticket.priority) == ("resolved", "medium")


def run_to_completion(desk: FakeHelpdesk, data: Path, files: Files) -> None:
    desk.hook = None
    worker = Worker(desk, data, files)
    code = worker.finish()
    assert code == 0, "".join(worker.output)
    assert worker.output and "pending=0" in worker.output[-1]


@pytest.mark.parametrize(
    "point",
    [
        "queued-open",  # the intent is durable; the upload may or may not have begun
        "headers:POST:/api/tickets",  # mid-body of the 5 MB upload
        "committed:POST:/api/tickets",  # the helpdesk created the ticket; the agent never heard
        "committed:POST:/comments",  # the comment is stored; its answer is lost
        "headers:POST:/attachments",  # mid-body of the second file
        "committed:POST:/attachments",  # the second file is stored; its answer is lost
        "committed:PATCH:/1000",  # the priority change (and its comment) is stored
    ],
)
def test_kill_at_each_point_of_an_upload_loses_and_duplicates_nothing(
    desk: FakeHelpdesk, files: Files, tmp_path: Path, point: str
) -> None:
    desk.reset()
    worker: Worker
    if point == "queued-open":
        worker = Worker(desk, tmp_path, files)
        assert worker.wait_line("event=intent_queued"), "".join(worker.output)
        worker.kill()
    else:
        event, method, path_end = point.split(":")
        arm = kill_on(desk, event, method, path_end)
        worker = Worker(desk, tmp_path, files)
        arm(worker)
        worker.finish()
        assert worker.proc.returncode < 0, f"the worker was not killed at {point}: {''.join(worker.output)}"
    check_no_duplicates(desk, files)
    run_to_completion(desk, tmp_path, files)
    check_delivered_once(desk, files)


def test_random_kills_in_a_row_then_restart(desk: FakeHelpdesk, files: Files, tmp_path: Path) -> None:
    desk.reset()
    seed = int(os.environ.get("HEZO_CRASH_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    for kill_no in range(RANDOM_KILLS):
        worker = Worker(desk, tmp_path, files)
        worker.wait_line("event=intent_")  # started (queued, or found already queued): now kill at random
        time.sleep(rng.uniform(0.0, 0.4))
        worker.kill()
        try:
            check_no_duplicates(desk, files)
        except AssertionError as err:
            raise AssertionError(f"seed={seed} kill={kill_no}: {err}") from err
    run_to_completion(desk, tmp_path, files)
    check_delivered_once(desk, files)


# --- helpdesk down for hours -----------------------------------------------------------------


def test_helpdesk_down_for_hours_backoff_quota_then_critical_first_drain(tmp_path: Path) -> None:
    clock = FakeClock()
    server = FakeHelpdesk(now=clock.now).start()
    backend = FakeHelpdeskBackend(server.url, server.token, timeout_s=5.0)
    quota = 10 * 600_000
    outbox = Outbox(
        backend,
        tmp_path / "outbox.sqlite",
        clock=clock,
        spool_dir=tmp_path / "spool",
        quota_bytes=quota,
        base_backoff_s=5.0,
        max_backoff_s=600.0,
        jitter=0.2,
    )
    try:
        server.down = True
        priorities = [Priority.LOW, Priority.MEDIUM, Priority.CRITICAL]
        expected: dict[str, Priority] = {}
        evidence = tmp_path / "evidence"
        evidence.mkdir()
        step_s, hours = 30.0, 4
        for tick in range(int(hours * 3600 / step_s)):
            if tick % 20 == 0 and len(expected) < 24:  # a new outage every 10 minutes
                n = len(expected)
                key, priority = f"site1/bar{n}/offline/1", priorities[n % 3]
                path = evidence / f"bar{n}.log"
                path.write_bytes(random.Random(n).randbytes(600_000))
                ticket = Ticket(key, f"[{priority}] bar{n} offline", "down", priority)
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
                note = Intent(IntentKind.COMMENT, key, f"{key}:note", priority, body=f"bar{n} still down")
                outbox.submit(note)
                path.unlink()  # the log rotates away: the spool copy is what gets sent
                expected[key] = priority
            outbox.flush()
            spool_files = [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]
            assert sum(p.stat().st_size for p in spool_files) <= quota
            assert outbox.spool_used_bytes() <= quota
            clock.advance(step_s)

        attempts = [r.at.timestamp() for r in server.requests]
        assert not server.tickets
        # one probe per backoff window, growing to the cap, never a hot loop
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        for n, gap in enumerate(gaps, start=1):
            assert gap >= min(600.0, 5.0 * 2 ** (n - 1)) * 0.8 - 1e-6, (n, gap)
            assert gap <= 600.0 + step_s, "kept probing at the cap"
        assert len(attempts) <= hours * 3600 / 480 + 10

        # the quota cost low-priority evidence first, with alerts; critical evidence stayed
        alerts = outbox.alerts(500)
        evicted = {a.ticket_key or "" for a in alerts if a.kind == "quota_evicted"}
        lost = evicted | {a.ticket_key or "" for a in alerts if a.kind == "attachment_dropped"}
        assert evicted and {expected[k] for k in lost} <= {Priority.LOW, Priority.MEDIUM}
        assert Priority.LOW in {expected[k] for k in evicted}

        server.down = False
        for _ in range(40):
            outbox.flush()
            if not outbox.pending():
                break
            clock.advance(step_s)
        assert outbox.pending() == [] and outbox.rejected() == []

        created = [server.tickets[r] for r in sorted(server.tickets)]
        assert len(created) == len(expected) == len(server.creates()), "no ticket twice"
        order = [Priority(t.priority) for t in created]
        rank = {Priority.CRITICAL: 0, Priority.MEDIUM: 1, Priority.LOW: 2}
        assert [rank[p] for p in order] == sorted(rank[p] for p in order), "critical first"
        for t in created:
            assert [c["body"].split("\n")[0] for c in t.comments] == [f"{t.title.split()[1]} still down"]
            if t.external_id in lost:
                assert t.attachments == [] and "was not sent" in t.body and "quota" in t.body
            else:
                [att] = t.attachments
                n = int(t.title.split()[1].removeprefix("bar"))
                assert att["sha256"] == _sha(random.Random(n).randbytes(600_000))
        assert outbox.spool_used_bytes() == 0
        assert not [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]
    finally:
        outbox.close()
        backend.close()
        server.stop()
