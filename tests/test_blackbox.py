"""The per-device black box: a size-capped ring of segment files that survives restarts."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.clock import FakeClock
from collectors.blackbox import BlackBox, BlackBoxes, escape_record, safe_folder_name


def _record(i: int) -> str:
    return f"<13>1 - bar - - - message number {i:05d} " + "x" * 40


def test_ring_keeps_the_newest_data_under_the_cap(tmp_path: Path) -> None:
    box = BlackBox(tmp_path / "bar", max_bytes=4096, segment_bytes=1024)
    for i in range(500):
        box.append(_record(i))
        assert box.size_bytes() <= 4096
    lines = list(box.read_since(None))
    numbers = [int(line.split("number ")[1][:5]) for line in lines]
    assert numbers[-1] == 499
    assert numbers == list(range(numbers[0], 500))  # contiguous, oldest first
    assert numbers[0] > 400  # the oldest were deleted...
    assert box.size_bytes() > 4096 - 1024  # ...but no more than one segment's worth
    assert box.size_bytes() == sum(p.stat().st_size for p in (tmp_path / "bar").iterdir())


def test_segments_rotate_at_segment_bytes_and_are_numbered_in_order(tmp_path: Path) -> None:
    box = BlackBox(tmp_path, max_bytes=10_000, segment_bytes=1000)
    for i in range(60):
        box.append(_record(i))
    paths = box.segment_paths()
    assert len(paths) >= 5
    assert [p.name for p in paths] == sorted(p.name for p in paths)
    assert all(p.stat().st_size <= 1000 for p in paths)
    assert sorted(tmp_path.iterdir()) == paths


def test_every_record_is_one_escaped_line_with_a_utc_receive_time(tmp_path: Path) -> None:
    clock = FakeClock()
    box = BlackBox(tmp_path, max_bytes=4096, segment_bytes=2048, clock=clock)
    box.append(b"line one\nline two\r\x00\x1b[31m \xff\xfe back\\slash")
    box.append("uni \u2028 sep \u00e9")
    lines = list(box.read_since(None))
    assert lines == [
        "2026-01-05T09:00:00.000000Z line one\\x0aline two\\x0d\\x00\\x1b[31m \\xff\\xfe back\\\\slash",
        "2026-01-05T09:00:00.000000Z uni \\u2028 sep \u00e9",
    ]
    assert escape_record("plain text") == "plain text"


def test_a_record_longer_than_a_segment_is_cut_not_lost(tmp_path: Path) -> None:
    box = BlackBox(tmp_path, max_bytes=1024, segment_bytes=512)
    box.append("y" * 5000)
    box.append("after")
    lines = list(box.read_since(None))
    assert lines[0].endswith("y [truncated]") and len(lines[0]) < 512
    assert lines[1].endswith(" after")


def test_export_since_writes_only_the_last_minutes_in_order_with_its_hash(tmp_path: Path) -> None:
    clock = FakeClock()
    start = clock.now()
    box = BlackBox(tmp_path / "box", max_bytes=4096, segment_bytes=512, clock=clock)
    for i in range(30):
        box.append(f"minute {i}")
        clock.advance(60)
    dest = tmp_path / "export.log"
    size, sha = box.export(dest, since=start + timedelta(minutes=25))
    data = dest.read_bytes()
    texts = [line.split(" ", 1)[1] for line in data.decode().splitlines()]
    assert texts == [f"minute {i}" for i in range(25, 30)]
    assert size == len(data) and sha == hashlib.sha256(data).hexdigest()
    assert len(box.segment_paths()) > 1  # the export crossed segment boundaries


def test_export_of_an_empty_box_is_an_empty_file(tmp_path: Path) -> None:
    box = BlackBox(tmp_path / "box", max_bytes=1024, segment_bytes=512)
    size, sha = box.export(tmp_path / "out.log")
    assert (size, sha) == (0, hashlib.sha256(b"").hexdigest())


def test_restart_continues_from_existing_segments(tmp_path: Path) -> None:
    box = BlackBox(tmp_path, max_bytes=4096, segment_bytes=512)
    for i in range(20):
        box.append(_record(i))
    before = box.segment_paths()
    box.close()
    again = BlackBox(tmp_path, max_bytes=4096, segment_bytes=512)
    assert [p.name for p in again.segment_paths()] == [p.name for p in before]
    again.append(_record(20))
    lines = list(again.read_since(None))
    assert len(lines) == 21 and lines[-1].endswith(_record(20))
    assert again.size_bytes() == sum(p.stat().st_size for p in tmp_path.iterdir())


def test_restart_after_a_torn_write_keeps_following_lines_whole(tmp_path: Path) -> None:
    box = BlackBox(tmp_path, max_bytes=4096, segment_bytes=2048)
    box.append("complete")
    box.close()
    with box.segment_paths()[-1].open("ab") as handle:
        handle.write(b"2026-01-05T09:00:00.0000")  # the process died mid-line
    again = BlackBox(tmp_path, max_bytes=4096, segment_bytes=2048)
    again.append("next")
    lines = list(again.read_since(datetime(2000, 1, 1, tzinfo=UTC)))
    assert [line.split(" ", 1)[1] for line in lines] == ["complete", "next"]


def test_restart_with_smaller_caps_trims_at_once(tmp_path: Path) -> None:
    box = BlackBox(tmp_path, max_bytes=8192, segment_bytes=512)
    for i in range(100):
        box.append(_record(i))
    box.close()
    smaller = BlackBox(tmp_path, max_bytes=2048, segment_bytes=512)
    assert smaller.size_bytes() <= 2048
    assert list(smaller.read_since(None))[-1].endswith(_record(99))


def test_caps_that_cannot_hold_two_segments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 \\* segment_bytes"):
        BlackBox(tmp_path, max_bytes=1000, segment_bytes=600)


@pytest.mark.parametrize(
    "device_id",
    ["../../etc", "..", ".", "/etc/passwd", "a/../../b", "..\\..\\windows", "CON", "nul.txt", "", "x" * 300,
     "bad\x00id", "bar 1/..", "~root"],
)
def test_hostile_device_ids_stay_inside_the_root(tmp_path: Path, device_id: str) -> None:
    root = tmp_path / "boxes"
    boxes = BlackBoxes(root, max_bytes=1024, segment_bytes=512)
    box = boxes.get(device_id)
    box.append("hello")
    assert box.folder.resolve().parent == root.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boxes"]
    assert len(box.folder.name) <= 80 and box.folder.name not in ("", ".", "..")


def test_distinct_ids_never_share_a_box(tmp_path: Path) -> None:
    boxes = BlackBoxes(tmp_path, max_bytes=1024, segment_bytes=512)
    ids = ["a/b", "a_b", "a\\b", "A_B", "bar-1"]
    folders = {boxes.get(i).folder for i in ids}
    assert len(folders) == len(ids)
    assert boxes.get("bar-1") is boxes["bar-1"]
    assert safe_folder_name("bar-1") == "bar-1"  # ordinary ids keep readable folder names


def test_concurrent_appends_and_reads_lose_no_line(tmp_path: Path) -> None:
    box = BlackBox(tmp_path, max_bytes=1024 * 1024, segment_bytes=4096)

    def writer(n: int) -> None:
        for i in range(200):
            box.append(f"writer {n} line {i}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        assert all(" writer " in line for line in box.read_since(None))  # never a torn line
    for t in threads:
        t.join()
    lines = list(box.read_since(None))
    assert len(lines) == 800
    for n in range(4):
        mine = [int(line.rsplit(" ", 1)[1]) for line in lines if f" writer {n} " in line]
        assert mine == list(range(200))
