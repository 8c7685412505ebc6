"""Trust-on-first-use TLS pins: ``"host:port"`` → SHA-256 of the device's leaf certificate.

The file is plain JSON so an operator can read it and delete one line to re-trust a device
after checking it. Writes are atomic (temp file + ``os.replace``); a pin is never overwritten
by the agent, only added: a changed certificate is an incident, not a silent re-trust.

Reads come from memory (every request asks): every :class:`PinStore` of one file in this
process shares one cache, so a pin written through any of them is seen by all at once, and the
file is looked at again (one ``stat``) at most every :data:`REVALIDATE_S`, for what another
process (``hezo-agent check``) or the operator changed. A write always re-reads the file first.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_HEX64 = re.compile(r"^[0-9a-f]{64}$")

#: seconds a read trusts the cached pins before it looks at the file again
REVALIDATE_S = 1.0
_monotonic = time.monotonic  # module-level so tests can move it (FakeClock.monotonic)


@dataclass
class _Cache:
    """What every PinStore of one file shares; ``pins`` is replaced, never changed in place."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pins: dict[str, str] = field(default_factory=dict)
    stamp: tuple[int, int] | None = None
    checked_at: float | None = None  # monotonic time of the last look at the file


_CACHES: dict[Path, _Cache] = {}
_CACHES_LOCK = threading.Lock()


def _cache_for(path: Path | None) -> _Cache:
    if path is None:
        return _Cache()
    key = Path(os.path.abspath(path))
    with _CACHES_LOCK:
        return _CACHES.setdefault(key, _Cache())


def pin_key(host: str, port: int) -> str:
    """Return the key a pin is stored under: ``host:port``, IPv6 in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PinStore:
    """A thread-safe JSON file of pinned certificate fingerprints (memory-only if ``path`` is None)."""

    def __init__(self, path: Path | None) -> None:
        """Open (or lazily create) the pin file at ``path``.

        Raises:
            ValueError: the file exists but is not a JSON object of 64-hex-digit fingerprints.
        """
        self.path = path
        self._cache = _cache_for(path)
        with self._cache.lock:
            self._reload()

    def get(self, key: str) -> str | None:
        """Return the pinned fingerprint for ``key`` (see :func:`pin_key`), or None.

        Raises:
            ValueError: the file was replaced by something that is not a valid pin file.
        """
        cache = self._cache
        checked_at = cache.checked_at
        if self.path is None or (checked_at is not None and _monotonic() - checked_at < REVALIDATE_S):
            return cache.pins.get(key)  # no lock: writers replace the dict whole
        with cache.lock:
            self._reload()
            return cache.pins.get(key)

    def pin_if_absent(self, key: str, fingerprint: str) -> str:
        """Pin ``fingerprint`` for ``key`` unless a pin exists; return the pin now in force.

        Raises:
            ValueError: the fingerprint is not 64 hex digits, or the file is invalid.
            OSError: the file cannot be written.
        """
        fingerprint = fingerprint.replace(":", "").lower()
        if not _HEX64.match(fingerprint):
            raise ValueError("fingerprint must be a SHA-256 hex digest")
        with self._cache.lock:
            self._reload()
            existing = self._cache.pins.get(key)
            if existing is not None:
                return existing
            self._save({**self._cache.pins, key: fingerprint})
            return fingerprint

    def forget(self, key: str) -> bool:
        """Drop the pin for ``key`` (an operator re-trusting a checked device); True if one existed.

        Raises:
            OSError: the file cannot be written.
        """
        with self._cache.lock:
            self._reload()
            if key not in self._cache.pins:
                return False
            self._save({k: v for k, v in self._cache.pins.items() if k != key})
            return True

    def snapshot(self) -> dict[str, str]:
        """Return a copy of every pin."""
        with self._cache.lock:
            self._reload()
            return dict(self._cache.pins)

    def _reload(self) -> None:
        """Re-read the file if it changed on disk (another process may have pinned or forgotten).

        The caller holds the cache's lock.
        """
        if self.path is None:
            return
        cache = self._cache
        looked_at = _monotonic()
        try:
            st = self.path.stat()
        except FileNotFoundError:
            cache.pins, cache.stamp, cache.checked_at = {}, None, looked_at
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == cache.stamp:
            cache.checked_at = looked_at
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ValueError(f"pin file {self.path} is unreadable or not JSON: {err}") from err
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and _HEX64.match(v) for k, v in data.items()
        ):
            raise ValueError(f"pin file {self.path} must map 'host:port' to SHA-256 hex fingerprints")
        cache.pins, cache.stamp, cache.checked_at = dict(data), stamp, looked_at

    def _save(self, pins: dict[str, str]) -> None:
        """Write ``pins`` (the caller holds the cache's lock), then make them the cached pins."""
        if self.path is None:
            self._cache.pins = pins
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".pins-", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(pins, fh, indent=2, sort_keys=True)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        st = self.path.stat()
        cache = self._cache
        cache.pins, cache.stamp, cache.checked_at = pins, (st.st_mtime_ns, st.st_size), _monotonic()
