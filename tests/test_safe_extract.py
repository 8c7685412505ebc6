"""Hostile device archives are refused with a clear error, and nothing lands outside the destination.

Each test crafts an archive the way an attacker (or a broken firmware) would: zip-slip, tar with
``..``, absolute names, a symlink that points out and a file written through it, a hardlink,
device nodes and FIFOs, gzip and zip bombs, too many entries, a slow extraction. After every
rejection the destination is empty and the tree around it holds exactly what it held before.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collectors.errors import UnexpectedResponse
from collectors.safe_extract import ExtractLimits, UnsafeArchive, archive_kind, safe_extract

MiB = 1024 * 1024


class Zeros(io.RawIOBase):
    """``size`` zero bytes, produced lazily (the payload of a bomb)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:  # type: ignore[call-overload]
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o644
    return info


def _snapshot(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.fixture
def area(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(archive folder, destination); afterwards: nothing new outside the destination."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    dest = tmp_path / "a" / "b" / "dest"
    yield inbox, dest
    outside = {p for p in _snapshot(tmp_path) if dest not in p.parents and p != dest}
    expected = {tmp_path / "in", tmp_path / "a", tmp_path / "a" / "b"} | set(inbox.iterdir())
    assert outside == expected, f"written outside the destination: {sorted(outside - expected)}"


def _rejected(
    archive: Path, dest: Path, match: str, limits: ExtractLimits | None = None, **kw: object
) -> None:
    with pytest.raises(UnsafeArchive, match=match) as caught:
        safe_extract(archive, dest, limits, **kw)  # type: ignore[arg-type]
    assert caught.value.reason == "unsafe_archive"
    assert archive.name in str(caught.value)
    assert not any(dest.iterdir()), "a rejected archive leaves the destination empty"


# --- traversal and names ----------------------------------------------------------------------


def test_zip_slip_with_dot_dot_is_refused(area: tuple[Path, Path]) -> None:
    inbox, dest = area
    archive = inbox / "slip.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("log/ok.txt", "fine\n")
        zf.writestr(zipfile.ZipInfo("../../escaped.txt"), "pwned\n")
    _rejected(archive, dest, r"'\.\./\.\./escaped\.txt'.*'\.\.'")
    assert not (dest.parent.parent / "escaped.txt").exists()


def test_zip_with_absolute_and_drive_letter_names_is_refused(area: tuple[Path, Path]) -> None:
    inbox, dest = area
    for i, name in enumerate(("/tmp/abs-evil.txt", "C:\\Windows\\evil.dll", "..\\..\\win-evil.txt")):
        archive = inbox / f"abs{i}.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr(zipfile.ZipInfo(name), "x")
        _rejected(archive, dest, "absolute path|'\\.\\.'")
    assert not Path("/tmp/abs-evil.txt").exists()


def test_tar_with_dot_dot_is_refused(area: tuple[Path, Path]) -> None:
    inbox, dest = area
    archive = _tar(
        inbox / "dots.tar.gz", [(_info("log/sys.log"), b"ok\n"), (_info("log/../../../up.txt"), b"x")]
    )
    _rejected(archive, dest, r"'\.\.' \(would escape the destination\)")


def test_tar_with_absolute_name_is_refused(area: tuple[Path, Path]) -> None:
    inbox, dest = area
    archive = _tar(inbox / "abs.tar", [(_info("/tmp/hezo-abs-evil.txt"), b"x")], mode="w")
    _rejected(archive, dest, "absolute path")
    assert not Path("/tmp/hezo-abs-evil.txt").exists()


# --- links and special files ------------------------------------------------------------------


def test_symlink_escape_then_write_through_it_is_refused(area: tuple[Path, Path]) -> None:
    inbox, dest = area
    archive = _tar(
        inbox / "symlink.tar.gz",
        [
            (_info("logs", tarfile.SYMTYPE, "../../.."), None),
            (_info("logs/escaped.txt"), b"through the link"),
        ],
    )
    _rejected(archive, dest, r"'logs': is a link \(to '\.\./\.\./\.\.'\); links are refused")


def test_hardlink_is_refused(area: tuple[Path, Path]) -> None:
    inbox, dest = area
    archive = _tar(inbox / "hard.tar", [(_info("passwd", tarfile.LNKTYPE, "/etc/passwd"), None)], mode="w")
    _rejected(archive, dest, r"'passwd': is a link \(to '/etc/passwd'\)")


@pytest.mark.parametrize(
    "kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE], ids=["chr", "blk", "fifo"]
)
def test_device_nodes_and_fifos_in_a_tar_are_refused(area: tuple[Path, Path], kind: bytes) -> None:
    inbox, dest = area
    node = _info("dev/sda", kind)
    node.devmajor, node.devminor = 8, 0
    archive = _tar(inbox / "dev.tar.gz", [(_info("ok.txt"), b"ok"), (node, None)])
    _rejected(archive, dest, "'dev/sda': is a device node or FIFO")


def test_symlink_inside_a_zip_is_refused(area: tuple[Path, Path]) -> None:
    inbox, dest = area
    archive = inbox / "link.zip"
    info = zipfile.ZipInfo("etc-link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc")
    _rejected(archive, dest, "'etc-link': is a symlink")


# --- bombs and counts -----------------------------------------------------------------------


def test_gzip_bomb_tar_is_stopped_long_before_it_inflates(area: tuple[Path, Path]) -> None:
    inbox, dest = area
    archive = inbox / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=9) as tar:
        info = _info("log/huge.log")
        info.size = 256 * MiB
        tar.addfile(info, Zeros(info.size))
    assert archive.stat().st_size < 1 * MiB
    _rejected(archive, dest, r"compression ratio over 200:1 .*an archive bomb")


def test_plain_gzip_bomb_is_stopped(area: tuple[Path, Path]) -> None:
    inbox, dest = area
    archive = inbox / "sys.log.1.gz"
    with gzip.open(archive, "wb", compresslevel=9) as out:
        for _ in range(64):
            out.write(bytes(MiB))
    _rejected(archive, dest, "an archive bomb")


def test_zip_bomb_is_refused_from_its_headers_before_inflating(area: tuple[Path, Path]) -> None:
    inbox, dest = area
    archive = inbox / "bomb.zip"
    with (
        zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf,
        zf.open("huge.log", "w", force_zip64=True) as member,
    ):
        for _ in range(64):
            member.write(bytes(MiB))
    _rejected(archive, dest, r"'huge.log': compression ratio over 200:1")


def test_zip_declaring_more_bytes_than_allowed_is_refused(area: tuple[Path, Path]) -> None:
    inbox, dest = area
    archive = inbox / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for i in range(3):
            zf.writestr(f"part{i}.bin", os.urandom(64 * 1024))
    _rejected(archive, dest, r"declares 196608 bytes, over 100000", ExtractLimits(max_bytes=100_000))


def test_tar_writing_more_than_the_byte_cap_is_refused(area: tuple[Path, Path]) -> None:
    inbox, dest = area
    data = os.urandom(300_000)  # incompressible: not a bomb, just too big
    archive = _tar(inbox / "big.tar.gz", [(_info("a.bin"), data), (_info("b.bin"), data)])
    _rejected(archive, dest, "more than 400000 bytes when unpacked", ExtractLimits(max_bytes=400_000))


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_too_many_files_are_refused(area: tuple[Path, Path], fmt: str) -> None:
    inbox, dest = area
    archive = inbox / f"many.{fmt}"
    if fmt == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for i in range(30):
                zf.writestr(f"f{i:03d}.log", "x")
    else:
        _tar(archive, [(_info(f"f{i:03d}.log"), b"x") for i in range(30)])
    _rejected(archive, dest, "more than 20 entries", ExtractLimits(max_files=20))


def test_extraction_past_its_time_cap_is_refused(area: tuple[Path, Path]) -> None:
    inbox, dest = area
    archive = _tar(inbox / "slow.tar.gz", [(_info(f"f{i}.log"), b"line\n" * 10) for i in range(10)])
    ticks: Iterator[float] = itertools.count(0.0, 1.0)  # every look at the clock: one more second
    clock: Callable[[], float] = lambda: next(ticks)  # noqa: E731
    _rejected(archive, dest, r"not taken apart within 5 s", ExtractLimits(timeout_s=5.0), clock=clock)


def test_duplicate_member_names_are_refused(area: tuple[Path, Path]) -> None:
    inbox, dest = area
    archive = _tar(
        inbox / "dup.tar.gz", [(_info("log/sys.log"), b"first"), (_info("log/sys.log"), b"second")]
    )
    _rejected(archive, dest, "holds this name twice")


# --- what is accepted -------------------------------------------------------------------------


def test_ordinary_device_export_is_extracted_with_safe_modes(tmp_path: Path) -> None:
    setuid = _info("bin/tool")
    setuid.mode = 0o4755
    archive = _tar(
        tmp_path / "export.tar.gz",
        [
            (_info("log", tarfile.DIRTYPE), None),
            (_info("log/sys.log"), b"2026-01-05 09:00:00 INFO kernel: boot\n"),
            (_info("./log/app.log"), b"app\n"),
            (_info("weird:name?.log"), b"w\n"),
            (setuid, b"#!/bin/sh\n"),
        ],
    )
    assert archive_kind(archive) == "tar.gz"
    files = safe_extract(archive, tmp_path / "out")
    assert [f.name for f in files] == ["log/sys.log", "log/app.log", "weird_name_.log", "bin/tool"]
    assert (tmp_path / "out" / "log" / "sys.log").read_bytes().startswith(b"2026-01-05")
    assert files[0].size_bytes == len(b"2026-01-05 09:00:00 INFO kernel: boot\n")
    if os.name == "posix":
        assert not (tmp_path / "out" / "bin" / "tool").stat().st_mode & (stat.S_ISUID | stat.S_IXUSR)


def test_zip_and_single_gzip_are_extracted(tmp_path: Path) -> None:
    zipped = tmp_path / "srs.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Logs/", "")
        zf.writestr("Logs/SRSv2.log", "heartbeat ok\n" * 100)
    assert archive_kind(zipped) == "zip"
    assert [f.name for f in safe_extract(zipped, tmp_path / "z")] == ["Logs/SRSv2.log"]
    single = tmp_path / "sys.log.1.gz"
    single.write_bytes(gzip.compress(b"rotated line\n" * 50))
    assert archive_kind(single) == "gz"
    [one] = safe_extract(single, tmp_path / "g")
    assert one.name == "sys.log.1" and one.path.read_bytes() == b"rotated line\n" * 50


def test_not_an_archive_and_a_corrupt_one_are_plain_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("just text\n")
    assert archive_kind(text) is None
    with pytest.raises(UnexpectedResponse, match="not a tar, zip or gzip archive"):
        safe_extract(text, tmp_path / "x")
    broken = tmp_path / "broken.tar.gz"
    good = gzip.compress(_tar_bytes())
    broken.write_bytes(good[: len(good) // 2])
    with pytest.raises(UnexpectedResponse, match="corrupt") as caught:
        safe_extract(broken, tmp_path / "y")
    assert not isinstance(caught.value, UnsafeArchive)
    assert not any((tmp_path / "y").iterdir())


def _tar_bytes() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = os.urandom(20_000)
        info = _info("a.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()
