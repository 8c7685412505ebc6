"""release_free_memory: the C heap's free pages go back to the OS (glibc), a no-op elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent import memory


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def test_free_heap_pages_go_back_to_the_os() -> None:  # the suite runs on Linux with glibc
    # 2 KB blocks come from malloc (not Python's small-object allocator); keeping every tenth
    # leaves free runs of whole pages between them, which glibc keeps unless trimmed
    blocks = [bytes(2048) for _ in range(40_000)]
    kept = blocks[::10]
    del blocks
    before = _rss_bytes()
    assert memory.release_free_memory() is True
    assert before - _rss_bytes() > 20 * 1024 * 1024  # of the ~72 MB freed, most were still resident
    assert len(kept) == 4_000


def test_without_glibc_nothing_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    memory._malloc_trim.cache_clear()
    monkeypatch.setattr(sys, "platform", "win32")
    try:
        assert memory.release_free_memory() is None
    finally:
        memory._malloc_trim.cache_clear()
