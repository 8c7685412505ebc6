"""The outbox's attachment spool: files stored content-addressed by SHA-256 under a disk quota.

A ticket attachment (a device's log bundle, a black-box export) is copied into the spool when
its intent is queued, so a later log rotation cannot take it away before delivery. Layout under
``root``: ``<sha[:2]>/<sha>`` for stored files and ``tmp/*.part`` for copies in progress. A copy
is hashed while it is written, flushed to disk (``fsync``) and only then renamed into place, so
a crash leaves either nothing or a complete file; leftovers are removed by :meth:`Spool.sweep`.

The spool only moves bytes. Which file may stay (the quota) is decided by :func:`plan_eviction`
from what the outbox knows: each file's size, priority and age.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

_CHUNK_BYTES = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class SpoolError(Exception):
    """A spool file could not be read or written."""


@dataclass(frozen=True, slots=True)
class Staged:
    """A copy written to ``tmp`` and hashed, waiting to be kept (:meth:`Spool.keep`) or dropped."""

    tmp_path: Path
    sha256: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """What the quota planner knows about one stored file.

    ``rank`` is the priority of the most urgent intent using it (0 = critical, larger = lower);
    ``age_key`` orders files of one rank, oldest (smallest) first.
    """

    sha256: str
    size_bytes: int
    rank: int
    age_key: float


def plan_eviction(
    entries: Sequence[SpoolEntry], *, need_bytes: int, quota_bytes: int, rank: int
) -> list[str] | None:
    """Return the files to evict so ``need_bytes`` more fit under ``quota_bytes``, or None.

    Files of lower priority than the newcomer (larger ``rank``) go first, lowest priority and
    oldest first; then files of the same priority, oldest first. A file of higher priority is
    never evicted for a newcomer: if only that would make room, the answer is None (the
    newcomer does not fit). A newcomer larger than the whole quota never fits.
    """
    used = sum(e.size_bytes for e in entries)
    if used + need_bytes <= quota_bytes:
        return []
    if need_bytes > quota_bytes:
        return None
    candidates = sorted((e for e in entries if e.rank >= rank), key=lambda e: (-e.rank, e.age_key))
    chosen: list[str] = []
    for entry in candidates:
        chosen.append(entry.sha256)
        used -= entry.size_bytes
        if used + need_bytes <= quota_bytes:
            return chosen
    return None


class Spool:
    """Content-addressed files under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        """Return where the file with ``sha256`` lives (whether or not it exists).

        Raises:
            SpoolError: ``sha256`` is not 64 lower-case hex digits (never build a path from junk).
        """
        if not _SHA256.match(sha256):
            raise SpoolError(f"not a SHA-256 digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        """Return True when the file with ``sha256`` is stored."""
        return self.path_for(sha256).is_file()

    def stage(self, source: Path) -> Staged:
        """Copy ``source`` into ``tmp`` while hashing it, and flush the copy to disk.

        Raises:
            SpoolError: ``source`` cannot be read or the copy cannot be written.
        """
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            with open(source, "rb") as src, open(tmp, "wb") as out:
                while chunk := src.read(_CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise SpoolError(f"cannot spool {source}: {err.strerror or err}") from err
        return Staged(tmp_path=tmp, sha256=digest.hexdigest(), size_bytes=size)

    def keep(self, staged: Staged) -> Path:
        """Move a staged copy to its content address (or drop it when that file is already there).

        Raises:
            SpoolError: the rename failed.
        """
        dest = self.path_for(staged.sha256)
        if dest.is_file():
            self.discard(staged)
            return dest
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged.tmp_path, dest)
        except OSError as err:
            self.discard(staged)
            raise SpoolError(f"cannot store spool file {dest}: {err.strerror or err}") from err
        _fsync_dir(dest.parent)
        return dest

    @staticmethod
    def discard(staged: Staged) -> None:
        """Delete a staged copy that will not be kept."""
        staged.tmp_path.unlink(missing_ok=True)

    def remove(self, sha256: str) -> None:
        """Delete a stored file (a file still open elsewhere is left for the next sweep)."""
        with contextlib.suppress(OSError):
            self.path_for(sha256).unlink(missing_ok=True)

    def verify(self, sha256: str) -> str | None:
        """Return None when the stored file is intact, else why not (missing, or content changed)."""
        path = self.path_for(sha256)
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as src:
                while chunk := src.read(_CHUNK_BYTES):
                    digest.update(chunk)
        except FileNotFoundError:
            return "spool file missing"
        except OSError as err:
            return f"spool file unreadable: {err.strerror or err}"
        if digest.hexdigest() != sha256:
            return f"spool file corrupt (SHA-256 is now {digest.hexdigest()[:12]}…)"
        return None

    def stored(self) -> dict[str, int]:
        """Return every stored file: SHA-256 → size in bytes."""
        found: dict[str, int] = {}
        for folder in self.root.iterdir():
            if folder == self.tmp_dir or not folder.is_dir():
                continue
            for path in folder.iterdir():
                if _SHA256.match(path.name) and path.is_file():
                    found[path.name] = path.stat().st_size
        return found

    def sweep(self, keep: Iterable[str]) -> int:
        """Delete copies left in ``tmp`` by a crash and stored files not in ``keep``; return how many."""
        wanted = set(keep)
        removed = 0
        for leftover in self.tmp_dir.glob("*.part"):
            with contextlib.suppress(OSError):
                leftover.unlink()
                removed += 1
        for sha256 in self.stored():
            if sha256 not in wanted:
                self.remove(sha256)
                removed += 1
        return removed


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); Windows cannot open a folder and does not need this."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
