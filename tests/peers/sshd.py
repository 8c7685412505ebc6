"""A real OpenSSH ``sshd`` on 127.0.0.1 for tests: own host keys, config, authorized_keys.

Usage::

    with Sshd(tmp_path) as sshd:          # generates keys, starts, waits until it listens
        sshd.port, sshd.client_key, sshd.user
        mark = sshd.log_mark()
        ...                               # connect
        sshd.log_since(mark)              # what sshd logged (LogLevel DEBUG1) since the mark
        sshd.restart(host_key="other")    # same port, a different host key
    Sshd(folder, log_level="DEBUG1")      # also logs each userauth-request

The server logs to ``<folder>/sshd.log`` (``sshd -D -e``). Stopping ends the listener and any
session processes it forked, each by its own PID. A missing binary fails the test with the
Debian package to install (never a skip).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import pytest

SSHD = "/usr/sbin/sshd"
PACKAGE = "openssh-server"
HOST_KEYS = ("host", "other")
POLL_S = 0.02
START_DEADLINE_S = 5.0


def require_binaries() -> None:
    """Fail the test (never skip) if sshd or ssh-keygen is missing, naming the Debian package."""
    if not Path(SSHD).exists() or shutil.which("ssh-keygen") is None:
        pytest.fail(f"{SSHD} or ssh-keygen not found: install the Debian package {PACKAGE}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` (loopback) that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def keygen(path: Path, key_type: str = "ed25519") -> Path:
    """Write a new passphrase-less key pair at ``path`` (+ ``.pub``) and return ``path``."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "hezo-test", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=20,
    )
    return path


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc; empty elsewhere)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            kids += [int(p) for p in (task / "children").read_text().split()]
    return kids


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        for kid in _children(todo.pop()):
            found.append(kid)
            todo.append(kid)
    return found


class Sshd:
    """One private sshd: keys and config in ``folder``, a free loopback port, logs captured."""

    def __init__(
        self,
        folder: Path,
        *,
        extra_config: Sequence[str] = (),
        key_type: str = "ed25519",
        log_level: str = "VERBOSE",
        host: str = "127.0.0.1",
    ) -> None:
        """Generate host keys (``host``, ``other``), a client key and authorized_keys in ``folder``.

        ``log_level`` DEBUG1 also logs every ``userauth-request`` (and leaks a few debug lines
        into session stderr, an sshd ``-e`` quirk); ``extra_config`` lines are appended.
        """
        require_binaries()
        self.folder = folder
        self.host = host  # a loopback address: a simulated device's own, for channel tests
        folder.mkdir(parents=True, exist_ok=True)
        self.host_keys = {name: keygen(folder / f"ssh_host_{name}", key_type) for name in HOST_KEYS}
        self.client_key = keygen(folder / "client")
        (folder / "authorized_keys").write_text((folder / "client.pub").read_text())
        self.user = getpass.getuser()
        self.extra_config = tuple(extra_config)
        self.log_level = log_level
        self.log_path = folder / "sshd.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Sshd:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def host_public_key(self, name: str = "host") -> str:
        """The ``type base64`` public part of one of the host keys."""
        return " ".join((self.folder / f"ssh_host_{name}.pub").read_text().split()[:2])

    def _config(self, host_key: str) -> Path:
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_keys[host_key]}",
            f"AuthorizedKeysFile {self.folder / 'authorized_keys'}",
            f"PidFile {self.folder / 'sshd.pid'}",
            "StrictModes no",
            "UsePAM no",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no",
            f"LogLevel {self.log_level}",
            "MaxStartups 100",
            "Subsystem sftp internal-sftp",
            *self.extra_config,
        ]
        path = self.folder / "sshd_config"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, host_key: str = "host") -> None:
        """Start sshd with one of :data:`HOST_KEYS` and wait until it listens (same port on restarts)."""
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        for _attempt in range(5):
            keep_port = self.port != 0
            if not keep_port:
                self.port = free_port(self.host)
            config = self._config(host_key)
            mark = self.log_mark()
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
            if self._wait_listening(mark):
                return
            self.stop()
            if not keep_port:
                self.port = 0
        pytest.fail(f"sshd did not start; its log:\n{self.log_path.read_text(errors='replace')[-2000:]}")

    def _wait_listening(self, mark: int) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_DEADLINE_S
        want = f"Server listening on {self.host} port {self.port}."
        while time.monotonic() < deadline:
            if want in self.log_since(mark):
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(POLL_S)
        return False

    def restart(self, host_key: str = "host") -> None:
        """Stop and start again on the same port, e.g. with another host key."""
        self.stop()
        self.start(host_key)

    def stop(self) -> None:
        """Stop the listener and the session processes it forked, each by its PID."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        kids = _descendants(proc.pid)
        for pid in [proc.pid, *kids]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def log_mark(self) -> int:
        """The current length of the log, for :meth:`log_since`."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, mark: int = 0) -> str:
        """What sshd logged after ``mark``."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(mark)
            return log.read().decode("utf-8", "replace")

    def wait_for_log(self, text: str, mark: int = 0, timeout_s: float = 3.0) -> bool:
        """Poll the log until ``text`` appears after ``mark`` (True) or ``timeout_s`` passes (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log_since(mark):
                return True
            time.sleep(POLL_S)
        return text in self.log_since(mark)
