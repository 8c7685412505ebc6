"""The outbox's intake in a process the crash benchmark kills with SIGKILL while it enqueues.

``python bench/_enqueue_worker.py --url URL --token T --data DIR --files DIR --count N [--drain]``

Submits ``N`` open intents (keys ``enq/0`` … ``enq/N-1``; every third carries one of the files
in ``--files`` as an attachment) to an :class:`~uploader.outbox.Outbox` whose helpdesk is down
(the fake helpdesk answers 503), so every submit only stages, commits and backs off. A restart
submits the same keys again: the outbox must ignore those already queued. Markers on stdout
say where the process is, so the benchmark can name the point each kill hit:
``submit N`` (about to submit), ``stage N`` / ``staged N`` (copying the attachment into the
spool), ``commit N`` / ``committed N`` (the SQLite transaction), ``queued N`` (submit returned).
With ``--drain`` it delivers everything instead, then prints ``drained pending=P``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from fake_helpdesk import FakeHelpdeskBackend

from agent.clock import SystemClock
from uploader.intents import Intent, IntentKind
from uploader.models import Attachment, Priority, Ticket
from uploader.outbox import Outbox
from uploader.outbox_intake import Intake

CURRENT = {"n": -1}


def say(text: str) -> None:
    """Write one marker line, unbuffered."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _marked(method: Any, before: str, after: str) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        say(f"{before} {CURRENT['n']}")
        result = method(*args, **kwargs)
        say(f"{after} {CURRENT['n']}")
        return result

    return wrapper


def intent(n: int, files: list[Path]) -> Intent:
    """The ``n``-th intent: an open, every third with an attachment."""
    key = f"enq/{n}"
    priority = (Priority.CRITICAL, Priority.MEDIUM, Priority.LOW)[n % 3]
    attachments = (Attachment(files[n % len(files)].name, files[n % len(files)]),) if n % 3 == 0 else ()
    ticket = Ticket(
        key, f"[{priority}] bar{n} offline", f"bar{n} stopped answering", priority, {"device": f"bar{n}"}
    )
    return Intent(IntentKind.OPEN, key, f"{key}:open", priority, ticket=ticket, attachments=attachments)


def main(argv: list[str] | None = None) -> int:
    """Enqueue (or drain), see the module docstring."""
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--files", type=Path, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--drain", action="store_true")
    p.add_argument("--deadline-s", type=float, default=120.0)
    args = p.parse_args(argv)
    files = sorted(args.files.iterdir())
    backend = FakeHelpdeskBackend(args.url, args.token, timeout_s=10.0)
    outbox = Outbox(
        backend,
        args.data / "outbox.sqlite",
        clock=SystemClock(),
        spool_dir=args.data / "spool",
        base_backoff_s=0.01 if args.drain else 3600.0,
        max_backoff_s=0.05 if args.drain else 3600.0,
    )
    try:
        if args.drain:
            outbox.store.set_health(
                backend.name, 0, 0.0
            )  # the enqueue runs left the backend gated for an hour
            outbox.retry()
            deadline = time.monotonic() + args.deadline_s
            while outbox.pending() and time.monotonic() < deadline:
                if not outbox.flush():
                    time.sleep(0.01)
            say(f"drained pending={len(outbox.pending())}")
            return 0
        Intake.stage = _marked(Intake.stage, "stage", "staged")  # type: ignore[method-assign]
        Intake.commit = _marked(Intake.commit, "commit", "committed")  # type: ignore[method-assign]
        say("ready")
        for n in range(args.count):
            CURRENT["n"] = n
            say(f"submit {n}")
            outbox.submit(intent(n, files))
            say(f"queued {n}")
        say("all queued")
        return 0
    finally:
        outbox.close()
        backend.close()


if __name__ == "__main__":
    sys.exit(main())
