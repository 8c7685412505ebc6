"""Turning what the sources fetched into bundle files: archives taken apart, text redacted, hashed.

Every archive a source delivered (by its bytes: tar, tar.gz, zip, gz) is extracted with
:func:`collectors.safe_extract.safe_extract` into a folder beside it and removed; nested archives
are taken apart too, up to :data:`MAX_NESTING` levels. Every other file is redacted in place
(:meth:`agent.redact.Redactor.redact_file`) and hashed. A hostile or corrupt archive is removed
and reported, never packed as it came.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.redact import Redactor
from collectors.errors import CollectorError
from collectors.safe_extract import ExtractLimits, archive_kind, safe_extract

__all__ = ["MAX_NESTING", "FileEntry", "Packer", "apply_cap", "sha256_of", "write_bundle"]

MAX_NESTING = 3
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip", ".gz")


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of the bundle as the manifest lists it (``path`` is ``<source>/...``)."""

    path: str
    local: Path
    size_bytes: int
    sha256: str
    kind: str
    masked_lines: int
    extracted_from: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The manifest's view of the file."""
        out: dict[str, Any] = {
            "path": self.path,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "redaction": {
                "text": "redacted",
                "utf-16": "redacted (UTF-16 text)",
                "binary": "binary: not pattern-redacted, known secret values overwritten",
            }[self.kind],
            "masked_lines": self.masked_lines,
        }
        if self.extracted_from:
            out["extracted_from"] = self.extracted_from
        return out


def sha256_of(path: Path) -> str:
    """The SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


class Packer:
    """Prepares one source's folder: extract archives, redact, hash; collects per-file errors."""

    def __init__(self, redactor: Redactor, limits: ExtractLimits) -> None:
        """Redact with ``redactor``; take archives apart within ``limits``."""
        self.redactor = redactor
        self.limits = limits
        #: reason tags of the archives refused so far (``unsafe_archive``, ``unexpected_response``)
        self.refused: list[str] = []

    def process(self, root: Path, source: str) -> tuple[list[FileEntry], list[str]]:
        """Prepare every file under ``root / source``; return (files, errors).

        Raises:
            OSError: a local file cannot be read or written.
        """
        entries: list[FileEntry] = []
        errors: list[str] = []
        self._walk(root, root / source, entries, errors, None, 0)
        return entries, errors

    def _walk(
        self,
        root: Path,
        folder: Path,
        entries: list[FileEntry],
        errors: list[str],
        origin: str | None,
        depth: int,
    ) -> None:
        for path in sorted(folder.iterdir()):
            rel = path.relative_to(root).as_posix()
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                path.unlink(missing_ok=True)
                errors.append(f"{rel}: not a regular file, left out")
            elif path.is_dir():
                self._walk(root, path, entries, errors, origin, depth)
            else:
                self._file(root, path, entries, errors, origin, depth)

    def _file(
        self,
        root: Path,
        path: Path,
        entries: list[FileEntry],
        errors: list[str],
        origin: str | None,
        depth: int,
    ) -> None:
        """Take an archive apart, or redact and hash a file."""
        rel = path.relative_to(root).as_posix()
        if archive_kind(path) is not None:
            self._unpack(root, path, rel, entries, errors, depth)
            return
        done = self.redactor.redact_file(path, path)
        entries.append(
            FileEntry(rel, path, done.size_bytes, sha256_of(path), done.kind, done.masked_lines, origin)
        )

    def _unpack(
        self, root: Path, archive: Path, rel: str, entries: list[FileEntry], errors: list[str], depth: int
    ) -> None:
        if depth >= MAX_NESTING:
            archive.unlink()
            errors.append(f"{rel}: archive nested more than {MAX_NESTING} deep, left out")
            return
        target = _beside(archive)
        kind = archive_kind(archive)
        try:
            safe_extract(archive, target, self.limits)
        except (CollectorError, ValueError) as err:
            errors.append(f"{rel}: {err}")
            self.refused.append(err.reason if isinstance(err, CollectorError) else "unexpected_response")
            archive.unlink()
            if target.is_dir() and not any(target.iterdir()):
                target.rmdir()
            return
        archive.unlink()
        files = list(target.iterdir())
        if kind == "gz" and len(files) == 1 and files[0].is_file():  # sys.log.1.gz → sys.log.1 in its place
            single = files[0].rename(target.with_name(target.name + ".tmp"))
            target.rmdir()
            single.rename(target)
            self._file(root, target, entries, errors, rel, depth + 1)
            return
        self._walk(root, target, entries, errors, rel, depth + 1)


def _beside(archive: Path) -> Path:
    """The folder an archive is extracted into: its name without the archive suffix."""
    name = archive.name
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name += ".d"
    target = archive.with_name(name)
    n = 2
    while target.exists():
        target = archive.with_name(f"{name}-{n}")
        n += 1
    return target


def apply_cap(entries: Sequence[FileEntry], max_bytes: int) -> tuple[list[FileEntry], list[dict[str, Any]]]:
    """Keep files in order while they fit in ``max_bytes``; the rest are listed as omitted."""
    kept: list[FileEntry] = []
    omitted: list[dict[str, Any]] = []
    total = 0
    for entry in entries:
        if total + entry.size_bytes > max_bytes:
            omitted.append(
                {
                    "path": entry.path,
                    "size_bytes": entry.size_bytes,
                    "why": f"over the bundle cap of {max_bytes} bytes",
                }
            )
            continue
        total += entry.size_bytes
        kept.append(entry)
    return kept, omitted


def write_bundle(
    dest: Path, manifest: dict[str, Any], entries: Sequence[FileEntry], at: datetime
) -> tuple[int, str]:
    """Write ``manifest.json`` and the files into the tar.gz ``dest``; return (size, SHA-256).

    The file appears complete or not at all (written beside it, then renamed).

    Raises:
        OSError: ``dest`` cannot be written.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    mtime = int(at.timestamp())
    try:
        with (
            part.open("wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=mtime, compresslevel=6) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            data = json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
            tar.addfile(_info("manifest.json", len(data), mtime), io.BytesIO(data))
            for entry in entries:
                with entry.local.open("rb") as fh:
                    tar.addfile(_info(entry.path, entry.size_bytes, mtime), fh)
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest.stat().st_size, sha256_of(dest)


def _info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def redact_export(
    export: Path, dest: Path, redactor: Redactor, limits: ExtractLimits, at: datetime, device_id: str
) -> tuple[int, str]:
    """Rewrite a device's own log export as a redacted tar.gz at ``dest``; return (size, SHA-256).

    The export is taken apart safely (``limits``), every text file is masked, and the result is
    packed with a small ``manifest.json``. This is what tickets attach as "the last collected log".

    Raises:
        OSError: a local file cannot be read or written.
    """
    with tempfile.TemporaryDirectory(prefix="hezo-export-", dir=dest.parent) as tmp:
        root = Path(tmp)
        (root / "device-export").mkdir()
        shutil.copyfile(export, root / "device-export" / export.name)
        packer = Packer(redactor, limits)
        entries, errors = packer.process(root, "device-export")
        manifest = {
            "device": device_id,
            "source": "the device's own log export",
            "taken_at": at.isoformat(),
            "redacted": True,
            "files": [entry.to_json() for entry in entries],
            "errors": errors,
        }
        return write_bundle(dest, manifest, entries, at)
