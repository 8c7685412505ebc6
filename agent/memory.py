"""Give the C heap's free memory back to the operating system, where the C library allows it.

A long-running agent frees much more than it keeps: every log export inflates, redacts and
recompresses a device's log, in whichever worker thread ran it. glibc keeps freed memory in
its per-thread arenas and returns little of it by itself, so the agent's resident size crept
up with each device's first export (probe: 200 devices polled every 5 s, the growth until
every device had exported once halved with a trim every 10 s; bench/scale.py figures in
docs/benchmarks.md). ``malloc_trim(0)`` releases the free pages of every arena. Elsewhere
(Windows, macOS, musl) there is nothing to call and nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable

__all__ = ["release_free_memory"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool | None:
    """Return the C heap's free pages to the OS: True if some were released, False if none
    were, None where the C library offers no way (not glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return None
    return bool(trim(0))
