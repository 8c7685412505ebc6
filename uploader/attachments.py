"""Fit a ticket's attachments into a helpdesk's size limits, and say in the ticket what was done.

Two limits, both in bytes of file content (before any base64 or MIME encoding):

* ``max_file_bytes``: the largest single upload. A bigger file is split into numbered parts
  ``name.001``, ``name.002``, ... (``cat name.0* > name`` or ``copy /b`` joins them again).
* ``max_total_bytes``: all uploads of one message or request. When the files exceed it, the
  oldest go first (by file modification time, then by their order): a text log loses its
  oldest lines (its head, cut at a line break), any other file is left out whole.

:func:`plan_attachments` returns the pieces to upload and one note per change, in the ticket's
language (``pl`` or ``en``), for the backend to append to the ticket text.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from uploader.base import BackendError, BackendRejected
from uploader.models import Attachment

_TEXT_SUFFIXES = (".log", ".txt", ".csv", ".json", ".jsonl", ".ndjson")
_TEXT_TYPES = ("text/", "application/json", "application/x-ndjson")
#: how far past the cut a text trim looks for a line break before cutting mid-line
_LINE_SEARCH_BYTES = 4096
_CHUNK_BYTES = 1 << 16

_NOTES = {
    "en": {
        "header": "Attachments:",
        "trimmed": "{name}: the oldest {cut} were left out to fit the {limit} limit;"
        " the newest {kept} are attached.",
        "omitted": "{name} ({size}) was left out: it does not fit the {limit} limit"
        " (the oldest files go first).",
        "split": "{name} ({size}) is split into {n} parts of at most {limit} ({first} … {last});"
        " join them in order to restore it.",
    },
    "pl": {
        "header": "Załączniki:",
        "trimmed": "{name}: pominięto najstarsze {cut}, aby zmieścić się w limicie {limit};"
        " dołączono najnowsze {kept}.",
        "omitted": "{name} ({size}) pominięto: nie mieści się w limicie {limit}"
        " (najpierw pomijane są najstarsze).",
        "split": "{name} ({size}) podzielono na {n} części po najwyżej {limit} ({first} … {last});"
        " połącz je po kolei, aby go odtworzyć.",
    },
}


def human_size(size_bytes: int) -> str:
    """Return ``size_bytes`` as ``"512 B"``, ``"3.0 KiB"`` or ``"7.5 MiB"``."""
    if size_bytes < 1024:
        return f"{size_bytes} B"
    if size_bytes < 1024 * 1024:
        return f"{size_bytes / 1024:.1f} KiB"
    return f"{size_bytes / (1024 * 1024):.1f} MiB"


def is_text(att: Attachment) -> bool:
    """Whether ``att`` is a line-oriented text file whose oldest lines may be cut."""
    return att.content_type.startswith(_TEXT_TYPES) or att.name.lower().endswith(_TEXT_SUFFIXES)


@dataclass(frozen=True, slots=True)
class AttachmentPiece:
    """One upload: a whole file, its newest tail, or one part of a split file."""

    name: str
    content_type: str
    path: Path
    offset: int
    length: int
    source_name: str
    part: int = 1
    parts: int = 1

    def chunks(self, chunk_bytes: int = _CHUNK_BYTES) -> Iterator[bytes]:
        """Yield the piece's bytes in chunks.

        Raises:
            BackendRejected: the file vanished or shrank since it was planned.
        """
        left = self.length
        try:
            with open(self.path, "rb") as src:
                src.seek(self.offset)
                while left > 0:
                    data = src.read(min(chunk_bytes, left))
                    if not data:
                        raise BackendRejected(
                            f"attachment {self.source_name!r}: {self.path} shrank while sent"
                        )
                    left -= len(data)
                    yield data
        except FileNotFoundError:
            raise BackendRejected(f"attachment {self.source_name!r}: file not found: {self.path}") from None
        except OSError as err:
            raise BackendError(f"attachment {self.source_name!r}: cannot read {self.path}: {err}") from err

    def read(self) -> bytes:
        """Return the piece's bytes (pieces are bounded by ``max_file_bytes``)."""
        return b"".join(self.chunks())

    def sha256(self) -> str:
        """Return the hex SHA-256 of the piece's bytes."""
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class AttachmentPlan:
    """The pieces to upload, and one line per change for the ticket text."""

    pieces: tuple[AttachmentPiece, ...]
    notes: tuple[str, ...]
    language: str = "en"

    @property
    def total_bytes(self) -> int:
        """Bytes of file content the pieces carry."""
        return sum(p.length for p in self.pieces)

    def note_text(self) -> str:
        """Return the notes as a paragraph for the ticket text, or ``""`` when nothing changed."""
        if not self.notes:
            return ""
        words = _NOTES.get(self.language, _NOTES["en"])
        return "\n".join([words["header"], *(f"  - {note}" for note in self.notes)])

    def append_to(self, body: str) -> str:
        """Return ``body`` followed by :meth:`note_text` (unchanged when there is nothing to say)."""
        text = self.note_text()
        if not text:
            return body
        return body.rstrip("\n") + "\n\n" + text + "\n"


@dataclass(slots=True)
class _Entry:
    att: Attachment
    size: int
    mtime: float
    index: int
    offset: int = 0
    dropped: bool = False

    @property
    def length(self) -> int:
        return self.size - self.offset


def plan_attachments(
    attachments: Sequence[Attachment],
    *,
    max_file_bytes: int,
    max_total_bytes: int,
    language: str = "en",
) -> AttachmentPlan:
    """Fit ``attachments`` into the two limits (see the module docstring) and explain any change.

    Raises:
        ValueError: a limit is below 1 byte.
        BackendRejected: an attachment file does not exist.
        BackendError: an attachment file cannot be read.
    """
    if max_file_bytes < 1 or max_total_bytes < 1:
        raise ValueError("attachment limits must be at least 1 byte")
    words = _NOTES.get(language, _NOTES["en"])
    entries = [_stat(att, i) for i, att in enumerate(attachments)]
    notes: list[str] = []
    _fit_total(entries, max_total_bytes, words, notes)
    pieces: list[AttachmentPiece] = []
    for entry in entries:
        if not entry.dropped:
            pieces.extend(_split(entry, max_file_bytes, words, notes))
    return AttachmentPlan(pieces=tuple(pieces), notes=tuple(notes), language=language)


def _stat(att: Attachment, index: int) -> _Entry:
    try:
        st = Path(att.path).stat()
    except FileNotFoundError:
        raise BackendRejected(f"attachment {att.name!r}: file not found: {att.path}") from None
    except OSError as err:
        raise BackendError(f"attachment {att.name!r}: cannot read {att.path}: {err}") from err
    return _Entry(att=att, size=st.st_size, mtime=st.st_mtime, index=index)


def _fit_total(entries: list[_Entry], limit: int, words: dict[str, str], notes: list[str]) -> None:
    """Trim or drop the oldest entries until all of them fit ``limit``."""
    total = sum(e.length for e in entries)
    for entry in sorted(entries, key=lambda e: (e.mtime, e.index)):
        if total <= limit:
            return
        excess = total - limit
        if is_text(entry.att) and entry.length > excess:
            entry.offset = _line_start(entry.att.path, entry.offset + excess, entry.size)
            total -= entry.offset
            notes.append(
                words["trimmed"].format(
                    name=entry.att.name,
                    cut=human_size(entry.offset),
                    limit=human_size(limit),
                    kept=human_size(entry.length),
                )
            )
        else:
            entry.dropped = True
            total -= entry.length
            notes.append(
                words["omitted"].format(
                    name=entry.att.name, size=human_size(entry.size), limit=human_size(limit)
                )
            )


def _line_start(path: Path, cut: int, size: int) -> int:
    """Return the offset just after the first line break at or past ``cut`` (``cut`` if none is near)."""
    try:
        with open(path, "rb") as src:
            src.seek(cut)
            window = src.read(min(_LINE_SEARCH_BYTES, size - cut))
    except OSError as err:
        raise BackendError(f"cannot read {path}: {err}") from err
    newline = window.find(b"\n")
    if newline < 0 or cut + newline + 1 >= size:
        return cut
    return cut + newline + 1


def _split(entry: _Entry, limit: int, words: dict[str, str], notes: list[str]) -> list[AttachmentPiece]:
    att = entry.att
    if entry.length <= limit:
        return [
            AttachmentPiece(att.name, att.content_type, Path(att.path), entry.offset, entry.length, att.name)
        ]
    parts = math.ceil(entry.length / limit)
    width = max(3, len(str(parts)))
    pieces = [
        AttachmentPiece(
            name=f"{att.name}.{n:0{width}d}",
            content_type="application/octet-stream",
            path=Path(att.path),
            offset=entry.offset + (n - 1) * limit,
            length=min(limit, entry.length - (n - 1) * limit),
            source_name=att.name,
            part=n,
            parts=parts,
        )
        for n in range(1, parts + 1)
    ]
    notes.append(
        words["split"].format(
            name=att.name,
            size=human_size(entry.length),
            n=parts,
            limit=human_size(limit),
            first=pieces[0].name,
            last=pieces[-1].name,
        )
    )
    return pieces
