"""A per-device black box: an on-disk ring of size-capped segment files.

Each stored line is ``<receive time, ISO UTC> <record>``, newline-terminated, with control
characters, backslashes and other non-printable characters escaped (``\\x1b``, ``\\u2028``), so
one message is always one line and the file is valid UTF-8. Appends go to the newest segment;
past ``segment_bytes`` a new segment starts, and past ``max_bytes`` in total the oldest segment
is deleted. The ring continues from the segments it finds after a restart.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from agent.clock import Clock, SystemClock

log = logging.getLogger(__name__)

MiB = 1024 * 1024
_SEGMENT = re.compile(r"^(\d{10})\.log$")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_TIME_LEN = len("2026-01-05T09:00:00.000000Z")
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{n}" for p in ("COM", "LPT") for n in range(1, 10)}


def format_time(moment: datetime) -> str:
    """Return ``moment`` as fixed-width ISO UTC (``2026-01-05T09:00:00.000000Z``): sorts as text."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def escape_record(record: bytes | str) -> str:
    """Return ``record`` as one printable line: ``\\``, controls and invalid UTF-8 escaped."""
    text = record.decode("utf-8", "surrogateescape") if isinstance(record, bytes) else record
    if text.isprintable() and "\\" not in text:
        return text
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF and isinstance(record, bytes):
            out.append(f"\\x{code - 0xDC00:02x}")  # an undecodable byte, as it arrived
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def safe_folder_name(device_id: str) -> str:
    """Return a file-system-safe folder name for ``device_id`` (distinct ids stay distinct)."""
    name = _SAFE_ID.sub("_", device_id)[:64].strip(".")
    if name != device_id or not name or name.split(".")[0].upper() in _WINDOWS_RESERVED:
        digest = hashlib.sha256(device_id.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        name = f"{name or 'device'}-{digest}"
    return name


class BlackBox:
    """One device's ring of segment files in ``folder``; every method is thread-safe."""

    def __init__(
        self,
        folder: Path,
        *,
        max_bytes: int = 8 * MiB,
        segment_bytes: int = 1 * MiB,
        clock: Clock | None = None,
    ) -> None:
        """Open (or create) the ring in ``folder``, continuing from any segments already there.

        Raises:
            ValueError: if the caps cannot hold two segments.
            OSError: if the folder cannot be created or read.
        """
        if segment_bytes < 256 or max_bytes < 2 * segment_bytes:
            raise ValueError("black box needs segment_bytes >= 256 and max_bytes >= 2 * segment_bytes")
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._clock = clock or SystemClock()
        self._lock = threading.RLock()
        self.folder.mkdir(parents=True, exist_ok=True)
        found = sorted(
            (int(m.group(1)), p)
            for p in self.folder.iterdir()
            if (m := _SEGMENT.match(p.name)) and p.is_file() and not p.is_symlink()
        )
        self._segments: list[tuple[int, Path, int]] = [(n, p, p.stat().st_size) for n, p in found]
        self._file: IO[bytes] | None = None
        with self._lock:
            self._repair_torn_tail()
            self._trim()

    def append(self, record: bytes | str, *, received_at: datetime | None = None) -> None:
        """Store one record as one line stamped with ``received_at`` (default: now).

        Raises:
            OSError: if the disk write fails (the ring stays consistent).
        """
        stamp = format_time(received_at or self._clock.now())
        line = f"{stamp} {escape_record(record)}\n".encode()
        if len(line) > self.segment_bytes:
            cut = line[: self.segment_bytes - len(" [truncated]\n")].decode("utf-8", "ignore")
            line = f"{cut} [truncated]\n".encode()
        with self._lock:
            if not self._segments or self._segments[-1][2] + len(line) > self.segment_bytes:
                self._start_segment()
            handle = self._open_current()
            handle.write(line)
            handle.flush()
            number, path, size = self._segments[-1]
            self._segments[-1] = (number, path, size + len(line))
            self._trim()

    def read_since(self, since: datetime | None = None) -> Iterator[str]:
        """Yield stored lines (without newline) received at or after ``since``, oldest first."""
        floor = format_time(since) if since is not None else ""
        with self._lock:
            snapshot = [(path, size) for _, path, size in self._segments]
        for path, size in snapshot:
            try:
                with path.open("rb") as handle:
                    data = handle.read(size)
            except FileNotFoundError:
                continue  # rotated away while we were reading older segments
            for raw in data.split(b"\n"):
                if not raw:
                    continue
                line = raw.decode("utf-8", "replace")
                stamp = line[:_TIME_LEN]
                if since is not None and (len(line) <= _TIME_LEN or line[_TIME_LEN] != " " or stamp < floor):
                    continue
                yield line

    def export(self, dest: Path, *, since: datetime | None = None) -> tuple[int, str]:
        """Write the lines received since ``since`` to ``dest``; return (size in bytes, sha256 hex).

        Raises:
            OSError: if ``dest`` cannot be written.
        """
        digest = hashlib.sha256()
        size = 0
        with Path(dest).open("wb") as out:
            for line in self.read_since(since):
                data = (line + "\n").encode()
                out.write(data)
                digest.update(data)
                size += len(data)
        return size, digest.hexdigest()

    def size_bytes(self) -> int:
        """Return the bytes currently stored across all segments."""
        with self._lock:
            return sum(size for _, _, size in self._segments)

    def segment_paths(self) -> list[Path]:
        """Return the segment files, oldest first."""
        with self._lock:
            return [path for _, path, _ in self._segments]

    def close(self) -> None:
        """Close the open segment file; a later append reopens it."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _open_current(self) -> IO[bytes]:
        if self._file is None:
            self._file = self._segments[-1][1].open("ab")
        return self._file

    def _start_segment(self) -> None:
        self.close()
        number = self._segments[-1][0] + 1 if self._segments else 1
        path = self.folder / f"{number:010d}.log"
        path.touch()
        self._segments.append((number, path, path.stat().st_size))

    def _repair_torn_tail(self) -> None:
        """End a segment cut mid-line (a crash during a write) so the next line starts clean."""
        if not self._segments or self._segments[-1][2] == 0:
            return
        number, path, size = self._segments[-1]
        with path.open("rb") as handle:
            handle.seek(size - 1)
            last = handle.read(1)
        if last != b"\n":
            with path.open("ab") as handle:
                handle.write(b"\n")
            self._segments[-1] = (number, path, size + 1)

    def _trim(self) -> None:
        total = sum(size for _, _, size in self._segments)
        while total > self.max_bytes and len(self._segments) > 1:
            _, path, size = self._segments[0]
            try:
                path.unlink(missing_ok=True)
            except OSError as err:  # e.g. Windows: a reader still has it open; retry next append
                log.warning("blackbox_trim_failed folder=%s file=%s error=%s", self.folder, path.name, err)
                return
            self._segments.pop(0)
            total -= size


class BlackBoxes:
    """The black boxes of all devices under ``root``, one sanitised folder per device id."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int = 8 * MiB,
        segment_bytes: int = 1 * MiB,
        clock: Clock | None = None,
    ) -> None:
        """Keep boxes under ``root``; the caps apply to each device's box separately."""
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._clock = clock
        self._boxes: dict[str, BlackBox] = {}
        self._lock = threading.Lock()

    def get(self, device_id: str) -> BlackBox:
        """Return (opening on first use) the black box of ``device_id``.

        Raises:
            OSError: if the device's folder cannot be created.
            ValueError: if the sanitised folder would fall outside ``root``.
        """
        with self._lock:
            box = self._boxes.get(device_id)
            if box is None:
                folder = self.root / safe_folder_name(device_id)
                root = self.root.resolve()
                if folder.resolve().parent != root:
                    raise ValueError(f"black box folder for {device_id!r} escapes {root}")
                box = BlackBox(
                    folder, max_bytes=self.max_bytes, segment_bytes=self.segment_bytes, clock=self._clock
                )
                self._boxes[device_id] = box
            return box

    def __getitem__(self, device_id: str) -> BlackBox:
        """Return :meth:`get` of ``device_id``."""
        return self.get(device_id)

    def close(self) -> None:
        """Close every open box."""
        with self._lock:
            for box in self._boxes.values():
                box.close()
