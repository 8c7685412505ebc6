"""Who may use the local API and how fast: the bearer token file and per-token rate limits.

The token file holds one token per line (``#`` comments and blank lines ignored). The agent
creates it on first run with one random token, readable by its own account only (mode 0600 on
Linux; on Windows ``os.open`` cannot set an ACL, so the file relies on the per-user data folder's
permissions: best effort). A token is never logged: logs and the audit name it by its id,
``tok-`` and the first 8 hex digits of its SHA-256. Adding a line gives another engineer their
own token (and their own rate limit); the file is read again when it changes.

Rate limits are token buckets driven by the injected clock's ``monotonic()``, so tests move
time instead of sleeping.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
import sys
import threading
from pathlib import Path

from agent.clock import Clock

__all__ = ["RateLimiter", "TokenBucket", "TokenFileError", "TokenStore", "ensure_token_file", "token_id"]

log = logging.getLogger("hezo.api")

MIN_TOKEN_CHARS = 16


class TokenFileError(OSError):
    """The token file cannot be created or read, or it holds no usable token."""


def token_id(token: str) -> str:
    """The printable name of a token: ``tok-`` and 8 hex digits of its SHA-256 (never the token)."""
    return "tok-" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:8]


def ensure_token_file(path: Path) -> bool:
    """Create ``path`` with one random token (mode 0600) unless it exists; True when created.

    An existing file readable by others (POSIX) is narrowed to 0600 with a warning.

    Raises:
        TokenFileError: the file or its folder cannot be created.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _narrow_permissions(path)
        return False
    except OSError as err:
        raise TokenFileError(f"cannot create the API token file {path}: {err.strerror or err}") from err
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    if sys.platform != "win32":
        path.chmod(0o600)
    log.info("event=api_token_created path=%s mode=0600", path)
    return True


def _narrow_permissions(path: Path) -> None:
    if sys.platform == "win32":
        return
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            path.chmod(0o600)
            log.warning("event=api_token_permissions_narrowed path=%s old_mode=%o new_mode=600", path, mode)
    except OSError as err:
        log.warning("event=api_token_permissions_unchecked path=%s error=%s", path, err)


def read_tokens(path: Path) -> list[str]:
    """The tokens in ``path``, in file order.

    Raises:
        TokenFileError: unreadable, or no line is a token of at least 16 characters.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise TokenFileError(f"cannot read the API token file {path}: {err}") from err
    tokens = [
        line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    short = [t for t in tokens if len(t) < MIN_TOKEN_CHARS]
    if short:
        raise TokenFileError(f"{path}: a token must have at least {MIN_TOKEN_CHARS} characters")
    if not tokens:
        raise TokenFileError(f"{path} holds no token (one per line)")
    return tokens


class TokenStore:
    """The valid tokens, read from their file and read again when it changes."""

    def __init__(self, path: Path) -> None:
        """Create the file if needed and read it.

        Raises:
            TokenFileError: see :func:`ensure_token_file` and :func:`read_tokens`.
        """
        self.path = Path(path)
        ensure_token_file(self.path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._tokens: list[str] = []
        self._reload()

    def _reload(self) -> None:
        info = self.path.stat()
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp != self._stamp:
            self._tokens = read_tokens(self.path)
            self._stamp = stamp

    def check(self, presented: str) -> str | None:
        """Return the id of ``presented`` when it is a valid token, else None (constant-time compare)."""
        with self._lock:
            try:
                self._reload()
            except (OSError, TokenFileError) as err:  # keep the last good tokens
                log.warning("event=api_token_file_unreadable path=%s error=%s", self.path, err)
            tokens = list(self._tokens)
        wanted = presented.encode("utf-8")
        found = None
        for token in tokens:
            if hmac.compare_digest(token.encode("utf-8"), wanted):
                found = token
        return token_id(found) if found is not None else None

    @property
    def first(self) -> str:
        """The first token (for the CLI and tests on this machine)."""
        with self._lock:
            return self._tokens[0]


class TokenBucket:
    """``burst`` requests at once, refilled at ``rate_per_s``; time from the clock's monotonic()."""

    def __init__(self, rate_per_s: float, burst: int, clock: Clock) -> None:
        """Start full."""
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock.monotonic()

    def take(self) -> float:
        """Take one request: 0.0 when allowed, else the seconds until one will be."""
        now = self._clock.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s


class RateLimiter:
    """One :class:`TokenBucket` per key (a token id): ``per_minute`` sustained, ``burst`` at once."""

    def __init__(self, per_minute: float, burst: int, clock: Clock) -> None:
        """Configure the limit; buckets are made on first use."""
        self.rate_per_s = per_minute / 60.0
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> float:
        """Count one request of ``key``: 0.0 when allowed, else the seconds to wait (Retry-After)."""
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(self.rate_per_s, self.burst, self._clock)
            return bucket.take()
