"""What a person does to the outbox: look at it, retry an intent, drop one (``hezo-agent outbox``).

These work on the outbox file directly, without a backend, so they run beside a live agent: the
agent reads the same SQLite file on its next delivery pass.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from uploader.outbox_store import OutboxStore, QueuedIntent
from uploader.spool import Spool

log = logging.getLogger("hezo.outbox")

#: what ``hezo-agent outbox`` lists, in this order
LISTED_STATES = ("pending", "rejected", "quarantined")


def outbox_paths(data_dir: Path) -> tuple[Path, Path]:
    """Return the outbox file and the spool folder under the agent's data folder."""
    data_dir = Path(data_dir)
    return data_dir / "outbox.sqlite", data_dir / "outbox-spool"


@contextmanager
def opened(data_dir: Path) -> Iterator[tuple[OutboxStore, Spool]]:
    """Open the outbox under ``data_dir`` (created empty if the agent never ran) and close it after.

    Raises:
        sqlite3.Error: the outbox file is unusable.
    """
    db_path, spool_dir = outbox_paths(data_dir)
    store = OutboxStore(db_path)
    try:
        yield store, Spool(spool_dir)
    finally:
        store.close()


def report(store: OutboxStore, quota_bytes: int, *, alerts: int = 20) -> dict[str, Any]:
    """Return the outbox as a JSON-ready dict: intents per state, held backends, alerts, spool use."""
    out: dict[str, Any] = {state: [q.to_json() for q in store.listing(state)] for state in LISTED_STATES}
    out["held"] = [h.to_json() for h in store.held()]
    out["alerts"] = [a.to_json() for a in store.alerts(alerts)]
    out["spool"] = {"used_bytes": store.spool_used_bytes(), "quota_bytes": quota_bytes}
    return out


def retry_intents(store: OutboxStore, ident: str | None, now_ts: float) -> list[int]:
    """Release every hold and make ``ident`` (or every pending intent) due at ``now_ts``; return ids.

    A rejected or quarantined intent named by ``ident`` becomes pending again.

    Raises:
        KeyError: ``ident`` names no intent in the outbox.
    """
    seq = None if ident is None else store.find_intent(ident)
    released = store.release_holds()
    if released:
        log.info("event=backend_hold_released backends=%s reason=retry", ",".join(released))
    if seq is None:
        seqs = [q.seq for q in store.listing("pending")]
        store.make_all_due(now_ts)
        return seqs
    store.requeue(seq, now_ts)
    log.info("event=intent_requeued id=%d", seq)
    return [seq]


def drop_intent(store: OutboxStore, spool: Spool, ident: str, now: datetime) -> QueuedIntent:
    """Delete ``ident`` from the outbox (its key counts as done) and its unshared spool files.

    Raises:
        KeyError: ``ident`` names no intent in the outbox.
    """
    seq = store.find_intent(ident)
    before = next(q for state in LISTED_STATES for q in store.listing(state) if q.seq == seq)
    with store.lock:
        for sha in store.drop(seq, now):
            spool.remove(sha)
    log.warning("event=intent_dropped id=%d kind=%s ticket_key=%s", seq, before.kind, before.ticket_key)
    store.alert(
        "intent_dropped",
        f"intent {seq} ({before.kind} of {before.ticket_key}) dropped by a person",
        now,
        ticket_key=before.ticket_key,
        seq=seq,
    )
    return before
