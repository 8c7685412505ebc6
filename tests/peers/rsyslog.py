"""A real rsyslog on 127.0.0.1 as the central collector for forwarding tests.

Usage::

    with Rsyslog(tmp_path) as collector:          # imtcp on a free port, omfile to out.log
        collector.port, collector.lines()
    with Rsyslog(tmp_path, tls=cert) as collector: # the same over TLS (rsyslog-openssl, "ossl")

A private instance with its own config, work folder and PID file: it does not touch the
system's syslog. ``stop()`` and ``start()`` again keep the port, so a test can take the
collector away and bring it back. It is stopped by its own PID. A missing binary or module
fails the test with the Debian package to install (never a skip).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import pytest

from simulator.certs import DeviceCertificate

RSYSLOGD = "/usr/sbin/rsyslogd"
MODULE_DIR = Path("/usr/lib/x86_64-linux-gnu/rsyslog")
POLL_S = 0.05
START_DEADLINE_S = 10.0
#: RFC 5424 as received, one message per line (rsyslog's built-in template)
TEMPLATE = "RSYSLOG_SyslogProtocol23Format"


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def require_rsyslog(tls: bool) -> None:
    """Fail the test (never skip) when rsyslogd or its TLS driver is missing, naming the package."""
    if not Path(RSYSLOGD).exists():
        pytest.fail(f"{RSYSLOGD} not found: install the Debian package rsyslog")
    if tls and not any(MODULE_DIR.glob("lmnsd_ossl.so")) and not any(Path("/usr/lib").rglob("lmnsd_ossl.so")):
        pytest.fail(
            "rsyslog's OpenSSL driver lmnsd_ossl.so not found: install the Debian package rsyslog-openssl"
        )


class Rsyslog:
    """One rsyslogd receiving RFC 5424 over TCP (TLS with ``tls``) and writing ``out.log``."""

    def __init__(
        self, folder: Path, *, tls: DeviceCertificate | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.folder = Path(folder)
        self.host = host
        self.tls = tls
        self.port = free_tcp_port(host)
        self.out = self.folder / "out.log"
        self.config = self.folder / "rsyslog.conf"
        self.pid_file = self.folder / "rsyslog.pid"
        self.log = self.folder / "rsyslogd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        """Write the private config (work folder, imtcp on the port, omfile with the template)."""
        work = self.folder / "work"
        work.mkdir(parents=True, exist_ok=True)
        lines = [f'global(workDirectory="{work}")']
        tcp_options = ""
        if self.tls is not None:
            cert, key = self.folder / "collector.pem", self.folder / "collector.key"
            cert.write_bytes(self.tls.cert_pem)
            key.write_bytes(self.tls.key_pem)
            key.chmod(0o600)
            lines.append(
                f'global(DefaultNetstreamDriver="ossl" DefaultNetstreamDriverCAFile="{cert}"'
                f' DefaultNetstreamDriverCertFile="{cert}" DefaultNetstreamDriverKeyFile="{key}")'
            )
            tcp_options = ' StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="anon"'
        lines += [
            f'module(load="imtcp"{tcp_options})',
            f'input(type="imtcp" address="{self.host}" port="{self.port}")',
            f'action(type="omfile" file="{self.out}" template="{TEMPLATE}")',
        ]
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self) -> Rsyslog:
        """Start rsyslogd in the foreground and wait until its port accepts connections."""
        require_rsyslog(self.tls is not None)
        self.write_config()
        self.pid_file.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.config), "-i", str(self.pid_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rsyslogd exited ({self.process.returncode}): {self._log_tail()}")
            if self.accepting():
                return self
            time.sleep(POLL_S)
        self.stop()
        raise RuntimeError(f"rsyslogd did not listen within {START_DEADLINE_S} s: {self._log_tail()}")

    def accepting(self) -> bool:
        """Whether the port accepts a TCP connection right now (plain TCP only: no TLS handshake)."""
        if self.tls is not None:  # a bare connect would only make rsyslog log a failed handshake
            return self.pid_file.exists() and _listening(self.host, self.port)
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
            return True
        return False

    def lines(self) -> list[str]:
        """The messages written so far, one per line."""
        if not self.out.exists():
            return []
        return self.out.read_text(encoding="utf-8", errors="replace").splitlines()

    def wait_for(self, count: int, deadline_s: float = 10.0) -> list[str]:
        """Wait until at least ``count`` lines were written; return them (fewer on timeout)."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            lines = self.lines()
            if len(lines) >= count:
                return lines
            time.sleep(POLL_S)
        return self.lines()

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-800:]
        return ""

    def stop(self) -> None:
        """Stop rsyslogd by its PID (TERM, then KILL after 5 s)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)

    def __enter__(self) -> Rsyslog:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _listening(host: str, port: int) -> bool:
    """Whether a TCP socket listens on ``host:port`` (read from /proc, no connection made)."""
    want = f"{_hex_ip(host)}:{port:04X}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":  # 0A: LISTEN
                return True
    return False


def _hex_ip(host: str) -> str:
    return "".join(f"{int(part):02X}" for part in reversed(host.split(".")))
