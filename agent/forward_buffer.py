"""The forwarder's disk buffer: framed syslog records in numbered segment files, sent in order.

Every record is stored already framed for the wire (RFC 6587 octet counting: ``LEN SP MSG``),
so a segment file is a slice of the TCP stream. A cursor file (``cursor.json``: segment and
byte offset, replaced atomically) marks what the collector has been sent; fully sent segments
are deleted. The folder is bounded: when a new record would pass ``max_bytes``, the oldest
segments go first and their unsent records are counted as dropped. A record cut short by a
crash at the end of the newest segment is cut off when the buffer is opened again.

Not thread-safe: one forwarder thread owns the buffer.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Chunk", "DiskBuffer", "frame", "split_frames"]

log = logging.getLogger("hezo.forward")

_SUFFIX = ".seg"
_NAME = re.compile(r"^(\d{10})\.seg$")
_MAX_HEADER = 11  # up to 10 digits and the space


def frame(message: bytes) -> bytes:
    """Return ``message`` with its RFC 6587 octet-counting header (``LEN SP MSG``)."""
    return str(len(message)).encode("ascii") + b" " + message


def split_frames(data: bytes) -> tuple[int, int, bool]:
    """Scan framed records in ``data``: return (whole records, bytes they take, data is damaged).

    A damaged stream (no digits and a space where a header must be) stops the scan.
    """
    count = pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + _MAX_HEADER)
        header = data[pos:space] if space > pos else b""
        if not header.isdigit() or header.startswith(b"0"):
            return count, pos, True
        end = space + 1 + int(header)
        if end > len(data):
            break
        count, pos = count + 1, end
    return count, pos, False


@dataclass(frozen=True, slots=True)
class Chunk:
    """Whole records read from one segment: ``data`` ends at ``end`` in segment ``segment``."""

    segment: int
    end: int
    data: bytes
    count: int


class DiskBuffer:
    """Bounded, ordered, crash-tolerant store of framed records (see the module docstring)."""

    def __init__(self, folder: Path, *, max_bytes: int, segment_bytes: int | None = None) -> None:
        """Open (creating) the buffer in ``folder``; repair a half-written tail; count what waits.

        Raises:
            OSError: the folder cannot be created or read.
        """
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(4096, max_bytes // 8)
        self._cursor_path = self.folder / "cursor.json"
        self._segments = sorted(
            int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.match(p.name)) is not None
        )
        self._sizes = {n: self._path(n).stat().st_size for n in self._segments}
        self._cursor = self._load_cursor()
        self._repair_tail()
        self.pending_messages = self._count_pending()

    # --- queries ------------------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        """Bytes every segment file takes (sent parts of the oldest one included)."""
        return sum(self._sizes.values())

    @property
    def pending_bytes(self) -> int:
        """Bytes not yet sent."""
        segment, offset = self._cursor
        return sum(size for n, size in self._sizes.items() if n > segment) + max(
            0, self._sizes.get(segment, 0) - offset
        )

    # --- writing ------------------------------------------------------------------------------

    def append(self, records: list[bytes]) -> int:
        """Append framed ``records`` in order; return how many unsent records were dropped to fit.

        Raises:
            OSError: a segment cannot be written.
        """
        dropped = 0
        handle = None
        open_segment: int | None = None
        try:
            for record in records:
                if self.total_bytes + len(record) > self.max_bytes:
                    if handle is not None:  # files may be read or deleted to make room
                        handle.close()
                        handle, open_segment = None, None
                    dropped += self._make_room(len(record))
                active = self._active_segment()
                if self._sizes[active] >= self.segment_bytes:
                    active = self._new_segment()
                if handle is None or open_segment != active:
                    if handle is not None:
                        handle.close()
                    handle, open_segment = self._path(active).open("ab"), active
                handle.write(record)
                self._sizes[active] += len(record)
                self.pending_messages += 1
        finally:
            if handle is not None:
                handle.close()
        return dropped

    def _make_room(self, size: int) -> int:
        """Drop the oldest segments until ``size`` more bytes fit; return the unsent records lost."""
        dropped = 0
        while self.total_bytes + size > self.max_bytes and len(self._segments) > 1:
            oldest = self._segments[0]
            lost = self._unsent_records(oldest)
            self._delete(oldest)
            if self._cursor[0] <= oldest:
                self._cursor = (self._segments[0], 0)
                self._save_cursor()
            dropped += lost
            self.pending_messages = max(0, self.pending_messages - lost)
        if self.total_bytes + size > self.max_bytes and self._segments:
            only = self._segments[0]
            if self._sizes[only] > 0:  # one segment left and still too full: start over after it
                lost = self._unsent_records(only)
                self._new_segment()
                self._delete(only)
                self._cursor = (self._segments[0], 0)
                self._save_cursor()
                dropped += lost
                self.pending_messages = max(0, self.pending_messages - lost)
        return dropped

    # --- reading ------------------------------------------------------------------------------

    def read(self, max_bytes: int = 256 * 1024) -> Chunk | None:
        """Return the next whole records not yet sent (at most ``max_bytes`` unless one record is
        bigger), or None when everything was sent."""
        while True:
            segment, offset = self._cursor
            if segment not in self._sizes:
                return None
            size = self._sizes[segment]
            if offset >= size:
                later = [n for n in self._segments if n > segment]
                if not later:
                    return None
                self._delete(segment)
                self._cursor = (later[0], 0)
                self._save_cursor()
                continue
            with self._path(segment).open("rb") as handle:
                handle.seek(offset)
                data = handle.read(min(max_bytes, size - offset))
                count, used, damaged = split_frames(data)
                if count == 0 and not damaged and offset + len(data) < size:  # one big record
                    data += handle.read(size - offset - len(data))
                    count, used, damaged = split_frames(data)
            if count == 0:
                self._skip_damaged(segment, offset, size)
                continue
            return Chunk(segment, offset + used, data[:used], count)

    def commit(self, chunk: Chunk) -> None:
        """Mark ``chunk`` sent (the collector accepted it)."""
        self._cursor = (chunk.segment, chunk.end)
        self.pending_messages = max(0, self.pending_messages - chunk.count)
        self._save_cursor()

    def _skip_damaged(self, segment: int, offset: int, size: int) -> None:
        log.warning(
            "event=forward_buffer_damaged segment=%d offset=%d skipped_bytes=%d",
            segment,
            offset,
            size - offset,
        )
        self._cursor = (segment, size)
        self._save_cursor()
        self.pending_messages = self._count_pending()

    # --- files --------------------------------------------------------------------------------

    def _path(self, segment: int) -> Path:
        return self.folder / f"{segment:010d}{_SUFFIX}"

    def _active_segment(self) -> int:
        return self._segments[-1] if self._segments else self._new_segment()

    def _new_segment(self) -> int:
        number = (self._segments[-1] + 1) if self._segments else 1
        self._path(number).touch()
        self._segments.append(number)
        self._sizes[number] = 0
        if len(self._segments) == 1:
            self._cursor = (number, 0)
        return number

    def _delete(self, segment: int) -> None:
        self._path(segment).unlink(missing_ok=True)
        self._segments.remove(segment)
        self._sizes.pop(segment, None)

    def _unsent_records(self, segment: int) -> int:
        start = self._cursor[1] if self._cursor[0] == segment else 0
        if self._cursor[0] > segment:
            return 0
        return split_frames(self._path(segment).read_bytes()[start:])[0]

    def _load_cursor(self) -> tuple[int, int]:
        first = self._segments[0] if self._segments else 1
        try:
            data = json.loads(self._cursor_path.read_text(encoding="utf-8"))
            segment, offset = int(data["segment"]), int(data["offset"])
        except (OSError, ValueError, KeyError, TypeError):
            return first, 0
        if segment not in self._sizes:  # its segment is gone: start at the oldest one left
            return (first, 0) if not self._segments or segment < first else (self._segments[-1], 0)
        return segment, min(max(0, offset), self._sizes[segment])

    def _save_cursor(self) -> None:
        partial = self._cursor_path.with_suffix(".tmp")
        text = json.dumps({"segment": self._cursor[0], "offset": self._cursor[1]})
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, self._cursor_path)

    def _repair_tail(self) -> None:
        """Cut a record half-written by a crash off the newest segment (appends continue there)."""
        if not self._segments:
            return
        last = self._segments[-1]
        data = self._path(last).read_bytes()
        _count, used, _damaged = split_frames(data)
        if used < len(data):
            log.warning("event=forward_buffer_tail_cut segment=%d bytes=%d", last, len(data) - used)
            with self._path(last).open("r+b") as handle:
                handle.truncate(used)
            self._sizes[last] = used
            if self._cursor[0] == last and self._cursor[1] > used:
                self._cursor = (last, used)

    def _count_pending(self) -> int:
        segment, offset = self._cursor
        total = 0
        for number in self._segments:
            if number < segment:
                continue
            data = self._path(number).read_bytes()
            total += split_frames(data[offset if number == segment else 0 :])[0]
        return total
