"""Take apart an archive a device (or its cloud) produced, without trusting it.

Supported: tar (plain, gzip, bzip2, xz), zip, and a single gzip-compressed file. Every member
is checked before a byte is written: no absolute paths, drive letters or ``..``, no symlinks or
hardlinks, no device nodes or FIFOs, only regular files and folders. Bounded: entries, bytes
written, compression ratio (gzip and zip bombs, measured on the bytes actually inflated, not on
what headers claim) and wall time. Files are created new (``O_EXCL``, no symlink following),
owner-writable, without the archive's modes or owners. On any violation the whole archive is
rejected with :class:`UnsafeArchive` naming the member and the rule, and everything written so
far is removed: nothing outside ``dest`` is ever touched.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import re
import shutil
import stat
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, Protocol

from collectors.errors import UnexpectedResponse

__all__ = [
    "ArchiveKind",
    "ExtractLimits",
    "ExtractedFile",
    "UnsafeArchive",
    "archive_kind",
    "safe_extract",
]

ArchiveKind = Literal["tar", "tar.gz", "tar.bz2", "tar.xz", "zip", "gz"]
CHUNK = 64 * 1024
#: the ratio rule starts counting past this many inflated bytes (tiny files compress very well)
RATIO_FLOOR_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_COMPONENT = 255
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, EOFError, zlib.error, lzma.LZMAError)
_SPECIAL = {stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK}
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)  # Unix / Windows
_ILLEGAL = re.compile(r'[<>:"|?*\x00-\x1f]')  # not allowed in Windows file names


class UnsafeArchive(UnexpectedResponse):
    """An archive broke a safety rule (traversal, link, device node, bomb, too many files, too slow)."""

    reason = "unsafe_archive"


@dataclass(frozen=True, slots=True)
class ExtractLimits:
    """Bounds of one extraction."""

    max_files: int = 2000
    max_bytes: int = 512 * 1024 * 1024
    max_ratio: float = 200.0
    timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class ExtractedFile:
    """One file written: its path relative to ``dest`` (``/``-separated) and its size."""

    name: str
    path: Path
    size_bytes: int


def archive_kind(path: Path) -> ArchiveKind | None:
    """Tell an archive by its first bytes (not its name); None for anything else."""
    try:
        with Path(path).open("rb") as fh:
            head = fh.read(512)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    inner = {b"\x1f\x8b": ("gz", gzip.open), b"BZh": ("bz2", bz2.open), b"\xfd7zXZ\x00": ("xz", lzma.open)}
    for magic, (name, opener) in inner.items():
        if head.startswith(magic):
            try:
                with opener(path, "rb") as inflated:  # type: ignore[operator]
                    block = inflated.read(512)
            except (OSError, EOFError, lzma.LZMAError):
                return None
            if _is_tar_header(block):
                return f"tar.{name}"  # type: ignore[return-value]
            return "gz" if name == "gz" else None
    return "tar" if _is_tar_header(head) else None


def _is_tar_header(block: bytes) -> bool:
    return len(block) >= 263 and block[257:262] == b"ustar"


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _constant(value: int) -> Callable[[], int]:
    return lambda: value


class _Guard:
    """Counts entries, bytes and time of one extraction and enforces the limits."""

    def __init__(self, archive: Path, limits: ExtractLimits, clock: Callable[[], float]) -> None:
        self.archive = archive.name
        self.limits = limits
        self.clock = clock
        self.deadline = clock() + limits.timeout_s
        self.entries = 0
        self.written = 0

    def fail(self, member: str, why: str) -> UnsafeArchive:
        return UnsafeArchive(f"archive {self.archive}: {f'member {member[:120]!r}: ' if member else ''}{why}")

    def entry(self, member: str) -> None:
        self.entries += 1
        if self.entries > self.limits.max_files:
            raise self.fail(member, f"more than {self.limits.max_files} entries")
        self.tick(member)

    def tick(self, member: str) -> None:
        if self.clock() > self.deadline:
            raise self.fail(member, f"not taken apart within {self.limits.timeout_s:g} s")

    def wrote(self, member: str, count: int) -> None:
        self.written += count
        if self.written > self.limits.max_bytes:
            raise self.fail(member, f"more than {self.limits.max_bytes} bytes when unpacked")

    def ratio(self, member: str, inflated: int, compressed: int) -> None:
        if inflated > RATIO_FLOOR_BYTES and inflated > self.limits.max_ratio * max(compressed, 1):
            raise self.fail(
                member,
                f"compression ratio over {self.limits.max_ratio:g}:1 ({inflated} bytes from {compressed}): "
                "an archive bomb",
            )


def member_path(name: str, guard: _Guard) -> str:
    """Return the safe relative ``/`` path of a member name, or raise naming the rule it breaks.

    Raises:
        UnsafeArchive: empty, absolute (``/x``, ``\\\\x``, ``C:``), ``..``, too deep or too long.
    """
    if not name or "\x00" in name:
        raise guard.fail(name, "empty name or NUL byte in the name")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified):
        raise guard.fail(name, "absolute path")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise guard.fail(name, "path with '..' (would escape the destination)")
    if not parts:
        raise guard.fail(name, "no file name")
    if len(parts) > MAX_DEPTH or any(len(p) > MAX_COMPONENT for p in parts):
        raise guard.fail(name, "path too deep or a name too long")
    printable = [p.encode("utf-8", "replace").decode("utf-8") for p in parts]  # undecodable bytes → "?"
    clean = [_ILLEGAL.sub("_", p).rstrip(" .") or "_" for p in printable]
    return "/".join(clean)


class _Writer:
    """Creates files and folders under ``dest`` only, remembering them to undo on failure."""

    def __init__(self, dest: Path, guard: _Guard) -> None:
        self.dest = dest
        self.root = dest.resolve()
        self.guard = guard
        self.files: list[ExtractedFile] = []

    def folder(self, rel: str) -> Path:
        target = self.dest.joinpath(*rel.split("/"))
        for parent in [*reversed(target.relative_to(self.dest).parents), Path(rel)]:
            here = self.dest / parent
            if here.is_symlink() or (here.exists() and not here.is_dir()):
                raise self.guard.fail(rel, "a folder in its path is a file")
            here.mkdir(exist_ok=True)
        if not target.resolve().is_relative_to(self.root):
            raise self.guard.fail(rel, "resolves outside the destination")
        return target

    def file(self, rel: str, source: _Readable, compressed: Callable[[], int] | None = None) -> None:
        parent_rel = rel.rpartition("/")[0]
        parent = self.folder(parent_rel) if parent_rel else self.dest
        target = parent / rel.rpartition("/")[2]
        if not target.resolve().is_relative_to(self.root):
            raise self.guard.fail(rel, "resolves outside the destination")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
        try:
            fd = os.open(target, flags, 0o644)
        except FileExistsError:
            raise self.guard.fail(rel, "the archive holds this name twice") from None
        size = 0
        self.files.append(ExtractedFile(rel, target, 0))
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                self.guard.wrote(rel, len(chunk))
                if compressed is not None:
                    self.guard.ratio(rel, size, compressed())
                self.guard.tick(rel)
                out.write(chunk)
        self.files[-1] = ExtractedFile(rel, target, size)


class _Counting(io.RawIOBase):
    """A read-only stream that counts the (compressed) bytes read from ``raw``."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.raw.read(len(buffer))
        self.count += len(data)
        buffer[: len(data)] = data
        return len(data)


def safe_extract(
    archive: Path,
    dest: Path,
    limits: ExtractLimits | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> list[ExtractedFile]:
    """Extract ``archive`` into the new or empty folder ``dest``; return the files written.

    Raises:
        UnsafeArchive: the archive broke a rule (``dest`` is left empty).
        UnexpectedResponse: not an archive of a supported kind, or corrupt.
        OSError: ``dest`` cannot be written (a local problem).
    """
    limits = limits or ExtractLimits()
    archive, dest = Path(archive), Path(dest)
    kind = archive_kind(archive)
    if kind is None:
        raise UnexpectedResponse(f"{archive.name}: not a tar, zip or gzip archive")
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"extraction folder {dest} is not empty")
    guard = _Guard(archive, limits, clock)
    writer = _Writer(dest, guard)
    try:
        if kind == "zip":
            _zip(archive, writer)
        elif kind == "gz":
            _gzip(archive, writer)
        else:
            _tar(archive, writer)
    except BaseException as err:
        _empty(dest)
        if isinstance(err, _CORRUPT):
            raise UnexpectedResponse(f"archive {archive.name}: corrupt ({err})") from err
        raise
    return writer.files


def _empty(dest: Path) -> None:
    for child in list(dest.iterdir()):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                child.unlink()


def _tar(archive: Path, writer: _Writer) -> None:
    guard = writer.guard
    with archive.open("rb") as raw:
        counted = _Counting(raw)
        stream = io.BufferedReader(counted, CHUNK)
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in _members(tar, guard):
                rel = member_path(member.name, guard)
                if member.isdir():
                    writer.folder(rel)
                    continue
                source = tar.extractfile(member)
                if source is None:
                    raise guard.fail(member.name, "has no content")
                writer.file(rel, source, compressed=lambda: counted.count)
                guard.ratio(member.name, guard.written, counted.count)


def _members(tar: tarfile.TarFile, guard: _Guard) -> Iterator[tarfile.TarInfo]:
    while True:
        guard.tick("")
        member = tar.next()
        if member is None:
            return
        guard.entry(member.name)
        if member.issym() or member.islnk():
            raise guard.fail(member.name, f"is a link (to {member.linkname[:80]!r}); links are refused")
        if member.ischr() or member.isblk() or member.isfifo():
            raise guard.fail(member.name, "is a device node or FIFO; only files and folders are taken")
        if not (member.isreg() or member.isdir()):
            raise guard.fail(member.name, f"has an unsupported type {member.type!r}")
        yield member


def _zip(archive: Path, writer: _Writer) -> None:
    guard = writer.guard
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > guard.limits.max_files:
            raise guard.fail("", f"more than {guard.limits.max_files} entries ({len(infos)})")
        declared = sum(i.file_size for i in infos)
        if declared > guard.limits.max_bytes:
            raise guard.fail("", f"declares {declared} bytes, over {guard.limits.max_bytes}")
        for info in infos:
            guard.entry(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise guard.fail(info.filename, "is a symlink; links are refused")
            if mode and stat.S_IFMT(mode) in _SPECIAL:
                raise guard.fail(info.filename, "is a device node or FIFO; only files and folders are taken")
            if info.flag_bits & 0x1:
                raise guard.fail(info.filename, "is encrypted")
            rel = member_path(info.filename, guard)
            if info.is_dir():
                writer.folder(rel)
                continue
            guard.ratio(info.filename, info.file_size, info.compress_size)
            with zf.open(info) as source:
                capped = _Capped(source, info.file_size, guard, info.filename)
                writer.file(rel, capped, compressed=_constant(info.compress_size))


class _Capped:
    """A member stream that may not yield more than the size its header declared."""

    def __init__(self, source: IO[bytes], declared: int, guard: _Guard, name: str) -> None:
        self.source, self.left, self.guard, self.name = source, declared, guard, name

    def read(self, size: int = -1, /) -> bytes:
        data = self.source.read(CHUNK if size < 0 else size)
        self.left -= len(data)
        if self.left < 0:
            raise self.guard.fail(self.name, "holds more bytes than its header declares")
        return data


def _gzip(archive: Path, writer: _Writer) -> None:
    guard = writer.guard
    name = archive.name[:-3] if archive.name.lower().endswith(".gz") else archive.name + ".out"
    guard.entry(name)
    rel = member_path(name, guard)
    with archive.open("rb") as raw:
        counted = _Counting(raw)
        with gzip.GzipFile(fileobj=io.BufferedReader(counted, CHUNK), mode="rb") as inflated:
            writer.file(rel, inflated, compressed=lambda: counted.count)
