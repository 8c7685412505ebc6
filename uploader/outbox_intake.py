"""Taking an intent into the outbox: spool its files under the quota, then commit it durably.

Each attachment is copied into the spool and hashed first (outside the store's lock). Then, in
one transaction: the intent row, and per file either a reference to an identical file already
spooled, or a new spool file that fits the quota (evicting lower-priority files, see
:func:`uploader.spool.plan_eviction`), or a note saying why it will not be sent (source missing,
quota full of more urgent files). Every eviction and every file left out raises a local alert:
an ``alert=...`` log line and a row ``hezo-agent outbox`` shows.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import replace
from pathlib import Path

from agent.clock import Clock
from uploader.intents import Intent
from uploader.models import Attachment
from uploader.outbox_models import RANKS, QueuedFile, intent_to_json
from uploader.outbox_store import OutboxStore
from uploader.spool import Spool, SpoolError, Staged, plan_eviction

log = logging.getLogger("hezo.outbox")

Item = tuple[Attachment, Staged | str]


def human_bytes(size: int) -> str:
    """Return ``size`` as the quota is written in the config (MiB), or in bytes when smaller."""
    return f"{size / (1024 * 1024):g} MiB" if size >= 1024 * 1024 else f"{size} bytes"


class Intake:
    """Stores intents with their spooled files (see the module docstring)."""

    def __init__(self, store: OutboxStore, spool: Spool, clock: Clock, quota_bytes: int) -> None:
        self.store = store
        self.spool = spool
        self.clock = clock
        self.quota_bytes = quota_bytes

    def stage(self, intent: Intent) -> list[Item]:
        """Copy and hash every attachment into the spool's ``tmp`` (a failure is kept as its text)."""
        items: list[Item] = []
        for att in intent.attachments:
            try:
                items.append((att, self.spool.stage(Path(att.path))))
            except SpoolError as err:
                items.append((att, str(err)))
        return items

    @staticmethod
    def discard(items: list[Item]) -> None:
        """Delete staged copies that were not kept (after a commit or a failure)."""
        for _att, item in items:
            if isinstance(item, Staged):
                Spool.discard(item)

    def commit(self, intent: Intent, items: list[Item], busy_seq: int | None) -> int:
        """Insert the intent and its files in one transaction; return its id.

        ``busy_seq`` is the intent being delivered right now: its files are never evicted.
        The caller holds the store's lock.

        Raises:
            sqlite3.Error: the outbox file could not be written (nothing was stored).
        """
        now = self.clock.now()
        payload = intent_to_json(replace(intent, attachments=()))
        evicted: list[str] = []
        with self.store.transaction() as db:
            seq = self.store.insert_intent(db, intent, payload, now)
            for position, (att, item) in enumerate(items):
                file = self._place(db, seq, intent, att, item, busy_seq, evicted)
                self.store.add_file(db, seq, position, file)
        for sha in evicted:
            self.spool.remove(sha)
        return seq

    def _place(
        self,
        db: sqlite3.Connection,
        seq: int,
        intent: Intent,
        att: Attachment,
        item: Staged | str,
        busy_seq: int | None,
        evicted: list[str],
    ) -> QueuedFile:
        """Keep one staged file if the quota allows (evicting lower-priority files first)."""
        if isinstance(item, str):
            note = f"could not be copied when queued ({item})"
            return self._left_out(db, seq, intent, att, "missing", note)
        kept = QueuedFile(att.name, att.content_type, item.sha256, item.size_bytes, "spooled")
        if self.spool.has(item.sha256) and self.store.sha_used(db, item.sha256):
            return kept  # the same bytes are already spooled for another intent
        victims = plan_eviction(
            self.store.spool_entries(db, busy_seq),
            need_bytes=item.size_bytes,
            quota_bytes=self.quota_bytes,
            rank=RANKS[intent.priority],
        )
        if victims is None:
            note = f"left out: the outbox disk quota ({human_bytes(self.quota_bytes)}) is full"
            return self._left_out(db, seq, intent, att, "dropped", note, item)
        for sha in victims:
            self._evict(db, sha, intent)
            evicted.append(sha)
        try:
            self.spool.keep(item)
        except SpoolError as err:
            return self._left_out(db, seq, intent, att, "dropped", f"left out: {err}", item)
        return kept

    def _left_out(
        self,
        db: sqlite3.Connection,
        seq: int,
        intent: Intent,
        att: Attachment,
        state: str,
        note: str,
        item: Staged | None = None,
    ) -> QueuedFile:
        log.error(
            "alert=outbox_attachment_%s ticket_key=%s name=%s note=%s",
            state,
            intent.ticket_key,
            att.name,
            note,
        )
        message = f"attachment {att.name} of {intent.kind} for {intent.ticket_key}: {note}"
        self.store.alert(
            "attachment_" + state, message, self.clock.now(), ticket_key=intent.ticket_key, seq=seq, db=db
        )
        size = item.size_bytes if item else 0
        return QueuedFile(att.name, att.content_type, item.sha256 if item else None, size, state, note)

    def _evict(self, db: sqlite3.Connection, sha256: str, newcomer: Intent) -> None:
        note = (
            f"evicted: the outbox disk quota ({human_bytes(self.quota_bytes)}) was full and a "
            f"{newcomer.priority} intent needed the room"
        )
        for seq, ticket_key, name in self.store.evict(db, sha256, note):
            log.error(
                "alert=outbox_quota_evicted ticket_key=%s name=%s sha256=%s for=%s",
                ticket_key,
                name,
                sha256[:12],
                newcomer.ticket_key,
            )
            self.store.alert(
                "quota_evicted",
                f"attachment {name} of {ticket_key}: {note}",
                self.clock.now(),
                ticket_key=ticket_key,
                seq=seq,
                db=db,
            )
