"""A real net-snmp ``snmpd`` on 127.0.0.1 for tests, plus ``snmptrap`` to send real traps.

Usage::

    with Snmpd(tmp_path) as agent:       # writes a config, starts, waits until snmpget answers
        agent.port, agent.community, agent.user, agent.auth_key, agent.priv_key
    send_trap(port, "public", "1.3.6.1.6.3.1.1.5.3", [("1.3.6.1.2.1.2.2.1.1.1", "i", "1")])

The agent keeps its persistent state (v3 users, engine boots) in ``<folder>/state`` and logs
to ``<folder>/snmpd.log``; it is stopped by its own PID. A missing binary fails the test with
the Debian package to install (never a skip).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import pytest

from simulator.fleet import free_udp_port

SNMPD = "/usr/sbin/snmpd"
TOOLS = ("/usr/bin/snmpget", "/usr/bin/snmptrap")
POLL_S = 0.02
START_DEADLINE_S = 5.0
#: test values only: 37459 is Yealink's enterprise number, ``.2.1`` is made up for the test
SYS_OBJECT_ID = "1.3.6.1.4.1.37459.2.1"
SYS_DESCR = "Yealink A30 test agent"
SYS_NAME = "bar-test-1"


def require_binaries() -> None:
    """Fail the test (never skip) if snmpd or the snmp tools are missing, naming the packages."""
    if not Path(SNMPD).exists():
        pytest.fail(f"{SNMPD} not found: install the Debian package snmpd")
    for tool in TOOLS:
        if not Path(tool).exists():
            pytest.fail(f"{tool} not found: install the Debian package snmp")


def tool_env(folder: Path) -> dict[str, str]:
    """Environment for net-snmp programs: no MIB loading, state kept in ``folder``."""
    env = dict(os.environ)
    env.update(
        {"MIBS": "", "MIBDIRS": str(folder), "SNMP_PERSISTENT_DIR": str(folder), "SNMPCONFPATH": str(folder)}
    )
    return env


def send_trap(
    port: int,
    community: str,
    trap_oid: str,
    varbinds: Sequence[tuple[str, str, str]] = (),
    host: str = "127.0.0.1",
    folder: Path | None = None,
    inform: bool = False,
    source: str | None = None,
) -> None:
    """Send one v2c trap with ``snmptrap`` (varbinds as ``(oid, type letter, value)``).

    With ``inform=True`` it sends an InformRequest and fails unless the receiver acknowledges
    it within one second.
    """
    require_binaries()
    args = ["/usr/bin/snmptrap", "-v", "2c", "-c", community]
    if source is not None:  # send from this loopback address (as the device would)
        args.insert(1, f"--clientaddr={source}")
    if inform:
        args += ["-Ci", "-t", "1", "-r", "0"]
    args += [f"{host}:{port}", "", trap_oid]
    for oid, kind, value in varbinds:
        args += [oid, kind, value]
    env = tool_env(folder) if folder is not None else {**os.environ, "MIBS": ""}
    subprocess.run(args, check=True, capture_output=True, timeout=10, env=env)


class Snmpd:
    """One net-snmp agent with a v2c community and a v3 authPriv (SHA/AES) user."""

    def __init__(
        self,
        folder: Path,
        community: str = "public",
        user: str = "hezo",
        auth_key: str = "auth-key-123",
        priv_key: str = "priv-key-456",
        host: str = "127.0.0.1",
    ) -> None:
        self.folder = folder
        self.host = host  # a loopback address: a simulated device's own, for channel tests
        self.community, self.user, self.auth_key, self.priv_key = community, user, auth_key, priv_key
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.state_dir = folder / "state"
        self.config = folder / "snmpd.conf"
        self.log = folder / "snmpd.log"

    def write_config(self) -> None:
        """Write ``snmpd.conf`` (no agentAddress: the address is given on the command line)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"rocommunity {self.community} 127.0.0.0/8\n"
            f"sysDescr {SYS_DESCR}\n"
            f"# a test value: Yealink's enterprise number with a made-up product branch\n"
            f"sysObjectID {SYS_OBJECT_ID}\n"
            f"sysName {SYS_NAME}\n"
            "sysLocation test-lab\n"
            "sysContact nobody@example.invalid\n"
            f'createUser {self.user} SHA "{self.auth_key}" AES "{self.priv_key}"\n'
            f"rouser {self.user} priv\n",
            encoding="utf-8",
        )

    def start(self) -> Snmpd:
        """Start the agent on a free loopback port and wait until ``snmpget`` answers."""
        require_binaries()
        self.write_config()
        self.port = free_udp_port(self.host)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    SNMPD,
                    "-f",
                    "-Lo",
                    "-C",
                    "-c",
                    str(self.config),
                    "-p",
                    str(self.folder / "pid"),
                    f"udp:{self.host}:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=tool_env(self.state_dir),
            )
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"snmpd exited ({self.process.returncode}): {self._log_tail()}")
            if self.answers():
                return self
            time.sleep(POLL_S)
        self.stop()
        raise RuntimeError(f"snmpd did not answer within {START_DEADLINE_S} s: {self._log_tail()}")

    def answers(self) -> bool:
        """Whether ``snmpget`` gets sysDescr back right now (one short try)."""
        result = subprocess.run(
            [
                "/usr/bin/snmpget",
                "-v2c",
                "-c",
                self.community,
                "-t",
                "0.2",
                "-r",
                "0",
                "-Oqv",
                f"{self.host}:{self.port}",
                "1.3.6.1.2.1.1.1.0",
            ],
            capture_output=True,
            timeout=5,
            env=tool_env(self.state_dir),
        )
        return result.returncode == 0 and SYS_DESCR in result.stdout.decode(errors="replace")

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-500:]
        return ""

    def stop(self) -> None:
        """Stop the agent by its PID (TERM, then KILL after 3 s)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(3)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(3)

    def __enter__(self) -> Snmpd:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
