"""The shared attachment fitter: split big files, trim or drop the oldest, and say so."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from uploader.attachments import human_size, plan_attachments
from uploader.base import BackendRejected
from uploader.models import Attachment


def write(path: Path, data: bytes, mtime: float) -> Attachment:
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    text = path.suffix == ".log"
    return Attachment(path.name, path, "text/plain" if text else "application/gzip")


def test_everything_fits_unchanged(tmp_path: Path) -> None:
    a = write(tmp_path / "a.log", b"x\n" * 100, 1)
    plan = plan_attachments([a], max_file_bytes=1000, max_total_bytes=1000)
    [piece] = plan.pieces
    assert (piece.name, piece.offset, piece.length, piece.read()) == ("a.log", 0, 200, b"x\n" * 100)
    assert plan.notes == () and plan.note_text() == "" and plan.append_to("body\n") == "body\n"


def test_big_file_is_split_into_numbered_parts_that_join_back(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    a = write(tmp_path / "bundle.tar.gz", data, 1)
    plan = plan_attachments([a], max_file_bytes=3000, max_total_bytes=50_000, language="en")
    assert [p.name for p in plan.pieces] == [f"bundle.tar.gz.00{i}" for i in range(1, 5)]
    assert [(p.part, p.parts) for p in plan.pieces] == [(i, 4) for i in range(1, 5)]
    assert b"".join(p.read() for p in plan.pieces) == data
    assert all(p.length <= 3000 for p in plan.pieces)
    [note] = plan.notes
    assert "split into 4 parts" in note and "bundle.tar.gz.001 … bundle.tar.gz.004" in note


def test_over_the_total_the_oldest_binary_goes_and_the_oldest_log_lines_go(tmp_path: Path) -> None:
    old_bin = write(tmp_path / "old.tar.gz", os.urandom(4000), 100)
    log = write(tmp_path / "box.log", b"".join(b"line %04d\n" % i for i in range(1000)), 200)  # 10 000 B
    new_bin = write(tmp_path / "new.tar.gz", os.urandom(2000), 300)
    plan = plan_attachments(
        [log, old_bin, new_bin], max_file_bytes=100_000, max_total_bytes=9000, language="pl"
    )
    names = [p.name for p in plan.pieces]
    assert names == ["box.log", "new.tar.gz"], "order kept; the oldest binary left out"
    piece = plan.pieces[0]
    assert piece.read().startswith(b"line ") and log.path.read_bytes().endswith(piece.read())
    assert piece.offset % 10 == 0, "cut at a line break"
    assert plan.total_bytes <= 9000
    assert len(plan.notes) == 2 and "old.tar.gz" in plan.notes[0] and "pominięto najstarsze" in plan.notes[1]
    text = plan.append_to("Treść zgłoszenia\n")
    assert text.startswith("Treść zgłoszenia\n\nZałączniki:\n  - old.tar.gz")


def test_missing_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(BackendRejected, match="file not found"):
        plan_attachments([Attachment("x.log", tmp_path / "x.log")], max_file_bytes=10, max_total_bytes=10)


def test_human_sizes() -> None:
    assert [human_size(n) for n in (5, 2048, 7 * 1024 * 1024)] == ["5 B", "2.0 KiB", "7.0 MiB"]
