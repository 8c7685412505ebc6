"""The agent's own SSH ``known_hosts`` file: host keys trusted on first use, never replaced.

The file is in OpenSSH format (``[host]:port key-type base64``, plain ``host`` for port 22),
kept in the agent's data folder (``<data_dir>/known_hosts``), never ``~/.ssh``. An operator
may read it, paste ``ssh-keyscan`` lines into it (hashed ``|1|`` names are understood) or delete
one line to re-trust a device after checking it. The agent only appends, atomically (temp file
+ ``os.replace``): a changed host key is an incident (:class:`IdentityChanged`), never a silent
re-trust. Lines with ``@cert-authority``/``@revoked`` markers are not supported and ignored.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from collectors.errors import IdentityChanged

__all__ = ["HostKey", "KnownHosts", "fingerprint_sha256", "host_pattern"]


def host_pattern(host: str, port: int) -> str:
    """Return the name OpenSSH files a host key under: ``host`` for port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint_sha256(blob: bytes) -> str:
    """Return the OpenSSH fingerprint of a public key blob: ``SHA256:`` + unpadded base64."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True, slots=True)
class HostKey:
    """One public host key: its type name (``ssh-ed25519``, ``ssh-rsa``, …) and wire blob."""

    key_type: str
    blob: bytes

    @property
    def fingerprint(self) -> str:
        """The OpenSSH ``SHA256:…`` fingerprint."""
        return fingerprint_sha256(self.blob)

    def line(self, host: str, port: int) -> str:
        """The known_hosts line for this key (no newline)."""
        return f"{host_pattern(host, port)} {self.key_type} {base64.b64encode(self.blob).decode('ascii')}"


def _name_matches(field: str, name: str) -> bool:
    """True if a known_hosts host field (comma list, or one hashed ``|1|salt|hash``) names ``name``."""
    if field.startswith("|1|"):
        parts = field.split("|")
        if len(parts) != 4:
            return False
        try:
            salt = base64.b64decode(parts[2], validate=True)
            want = base64.b64decode(parts[3], validate=True)
        except (binascii.Error, ValueError):
            return False
        got = hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest()
        return hmac.compare_digest(got, want)
    return name in field.split(",")


def _parse(text: str, name: str) -> list[HostKey]:
    """The keys ``text`` (known_hosts content) holds for ``name``, in file order."""
    keys: list[HostKey] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "@")):
            continue
        fields = line.split()
        if len(fields) < 3 or not _name_matches(fields[0], name):
            continue
        try:
            blob = base64.b64decode(fields[2], validate=True)
        except (binascii.Error, ValueError):
            continue
        keys.append(HostKey(fields[1], blob))
    return keys


class KnownHosts:
    """A thread-safe, trust-on-first-use known_hosts file (memory-only if ``path`` is None)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._memory = ""

    def __repr__(self) -> str:
        return f"KnownHosts({self.path!s})"

    def _read(self) -> str:
        if self.path is None:
            return self._memory
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""

    def keys_for(self, host: str, port: int) -> list[HostKey]:
        """Return the keys stored for ``host``:``port`` (empty if the host is not known yet).

        Raises:
            OSError: the file exists but cannot be read.
        """
        with self._lock:
            return _parse(self._read(), host_pattern(host, port))

    def verify(self, host: str, port: int, offered: HostKey) -> bool:
        """Check ``offered`` against the stored keys; store it if the host is new.

        Returns True if the key was trusted just now (first use), False if it was known.

        Raises:
            IdentityChanged: the host is known with other keys; the message names the host, the
                key types and both fingerprints.
            OSError: the file cannot be read or written.
        """
        name = host_pattern(host, port)
        with self._lock:
            text = self._read()
            known = _parse(text, name)
            if offered in known:
                return False
            if known:
                same_type = [k for k in known if k.key_type == offered.key_type]
                stored = same_type[0] if same_type else known[0]
                where = f" in {self.path}" if self.path is not None else ""
                raise IdentityChanged(
                    f"ssh {name}: host key changed: known {stored.key_type} {stored.fingerprint}, "
                    f"offered {offered.key_type} {offered.fingerprint}; no credentials were sent. "
                    f"If the device was replaced on purpose, delete its line{where}"
                )
            if text and not text.endswith("\n"):
                text += "\n"
            self._write(text + offered.line(host, port) + "\n")
            return True

    def forget(self, host: str, port: int) -> bool:
        """Remove every plain (unhashed) line naming ``host``:``port``; True if one existed.

        Raises:
            OSError: the file cannot be read or written.
        """
        name = host_pattern(host, port)
        with self._lock:
            lines = self._read().splitlines(keepends=True)
            kept = [ln for ln in lines if not (ln.split()[:1] and ln.split()[0].split(",").count(name))]
            if len(kept) == len(lines):
                return False
            self._write("".join(kept))
            return True

    def _write(self, text: str) -> None:
        if self.path is None:
            self._memory = text
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".known_hosts.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
