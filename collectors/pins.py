"""Trust-on-first-use TLS pins: ``"host:port"`` → SHA-256 of the device's leaf certificate.

The file is plain JSON so an operator can read it and delete one line to re-trust a device
after checking it. Writes are atomic (temp file + ``os.replace``); a pin is never overwritten
by the agent, only added: a changed certificate is an incident, not a silent re-trust.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from pathlib import Path

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


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
        self._lock = threading.Lock()
        self._pins: dict[str, str] = {}
        self._stamp: tuple[int, int] | None = None
        with self._lock:
            self._reload()

    def get(self, key: str) -> str | None:
        """Return the pinned fingerprint for ``key`` (see :func:`pin_key`), or None.

        Raises:
            ValueError: the file was replaced by something that is not a valid pin file.
        """
        with self._lock:
            self._reload()
            return self._pins.get(key)

    def pin_if_absent(self, key: str, fingerprint: str) -> str:
        """Pin ``fingerprint`` for ``key`` unless a pin exists; return the pin now in force.

        Raises:
            ValueError: the fingerprint is not 64 hex digits, or the file is invalid.
            OSError: the file cannot be written.
        """
        fingerprint = fingerprint.replace(":", "").lower()
        if not _HEX64.match(fingerprint):
            raise ValueError("fingerprint must be a SHA-256 hex digest")
        with self._lock:
            self._reload()
            existing = self._pins.get(key)
            if existing is not None:
                return existing
            self._pins[key] = fingerprint
            self._save()
            return fingerprint

    def forget(self, key: str) -> bool:
        """Drop the pin for ``key`` (an operator re-trusting a checked device); True if one existed.

        Raises:
            OSError: the file cannot be written.
        """
        with self._lock:
            self._reload()
            if self._pins.pop(key, None) is None:
                return False
            self._save()
            return True

    def snapshot(self) -> dict[str, str]:
        """Return a copy of every pin."""
        with self._lock:
            self._reload()
            return dict(self._pins)

    def _reload(self) -> None:
        """Re-read the file if it changed on disk (another process may have pinned or forgotten)."""
        if self.path is None:
            return
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._pins, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ValueError(f"pin file {self.path} is unreadable or not JSON: {err}") from err
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and _HEX64.match(v) for k, v in data.items()
        ):
            raise ValueError(f"pin file {self.path} must map 'host:port' to SHA-256 hex fingerprints")
        self._pins, self._stamp = dict(data), stamp

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".pins-", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self._pins, fh, indent=2, sort_keys=True)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        st = self.path.stat()
        self._stamp = (st.st_mtime_ns, st.st_size)
