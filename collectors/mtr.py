"""The Microsoft Teams Rooms event log of an MVC, read locally: wevtutil on Windows, else a file.

On Windows: ``wevtutil qe "Skype Room System" /rd:true /c:N /f:xml`` (arguments as a list, no
shell), bounded by a timeout and an output cap. Elsewhere: a configured file holding the same
XML (e.g. copied off the MVC), bounded by the same cap. Parsing and the health summary are in
:mod:`collectors.mtr_parse`; this module re-exports them.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO

from collectors.errors import AuthFailed, DeviceTimeout, DeviceUnreachable, UnexpectedResponse
from collectors.models import ChannelResult
from collectors.mtr_parse import (
    EVENT_KINDS,
    MtrEvent,
    MtrHealth,
    decode_output,
    parse_checks,
    parse_events,
    summarize,
)
from config.channels import MtrChannel

__all__ = [
    "EVENT_KINDS",
    "MtrChannel",
    "MtrEvent",
    "MtrHealth",
    "MtrSource",
    "RunResult",
    "Runner",
    "parse_checks",
    "parse_events",
    "run_capped",
    "summarize",
]

STDERR_CAP_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a bounded subprocess run produced; ``stdout`` never holds more than the cap."""

    returncode: int | None
    stdout: bytes
    stderr: bytes = b""
    timed_out: bool = False
    over_cap: bool = False


Runner = Callable[[Sequence[str], float, int], RunResult]


def _pump(stream: IO[bytes], buf: bytearray, cap: int, over: threading.Event) -> None:
    """Copy ``stream`` into ``buf`` until EOF; past ``cap`` bytes set ``over`` and stop reading."""
    while True:
        chunk = stream.read1(min(65_536, cap + 1 - len(buf)))  # type: ignore[attr-defined]
        if not chunk:
            return
        buf += chunk
        if len(buf) > cap:
            del buf[cap:]
            over.set()
            return


def run_capped(args: Sequence[str], timeout_s: float, max_bytes: int) -> RunResult:
    """Run ``args`` (no shell), keep at most ``max_bytes`` of stdout, kill it at the timeout or cap.

    Raises:
        OSError: the program cannot be started (e.g. not found).
    """
    proc = subprocess.Popen(
        list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    over, err_over = threading.Event(), threading.Event()
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, out, max_bytes, over), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, err, STDERR_CAP_BYTES, err_over), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    deadline = time.monotonic() + timeout_s
    timed_out = False
    while proc.poll() is None and not over.is_set():
        if time.monotonic() >= deadline:
            timed_out = True
            break
        over.wait(0.01)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for pump in pumps:  # the pipes end with the process; a grandchild holding them is cut off
        pump.join(timeout=max(1.0, deadline - time.monotonic()))
    proc.stdout.close()
    proc.stderr.close()
    return RunResult(proc.returncode, bytes(out), bytes(err), timed_out, over.is_set())


# --- reading the log --------------------------------------------------------------------------


class MtrSource:
    """Reads and summarizes one MVC's Teams Rooms event log: wevtutil on Windows, else a file."""

    name = "mtr"

    def __init__(
        self,
        settings: MtrChannel,
        *,
        runner: Runner | None = None,
        platform: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self._runner = runner or run_capped
        self._windows = (platform or sys.platform) == "win32"
        self._clock = clock or (lambda: datetime.now(UTC))

    def command(self) -> list[str]:
        """Return the wevtutil arguments (a list: nothing goes through a shell)."""
        s = self.settings
        return ["wevtutil", "qe", s.log_name, "/rd:true", f"/c:{s.max_events}", "/f:xml"]

    def read_xml(self) -> bytes:
        """Return the raw event XML, at most ``max_bytes``.

        Raises:
            DeviceTimeout: wevtutil did not finish within ``timeout_s``.
            AuthFailed: wevtutil was denied access to the log.
            DeviceUnreachable: the configured XML file is missing or unreadable.
            UnexpectedResponse: over the byte cap, wevtutil failed or is missing, no file configured.
        """
        return self._read_windows() if self._windows else self._read_file()

    def _read_windows(self) -> bytes:
        s = self.settings
        try:
            result = self._runner(self.command(), s.timeout_s, s.max_bytes)
        except OSError as err:
            raise UnexpectedResponse(f"mtr: cannot run wevtutil ({type(err).__name__})") from err
        if result.timed_out:
            raise DeviceTimeout(f"mtr: wevtutil did not finish within {s.timeout_s:g} s")
        if result.over_cap:
            raise UnexpectedResponse(f"mtr: wevtutil output over {s.max_bytes} bytes")
        if result.returncode != 0:
            why = decode_output(result.stderr).strip().splitlines()
            first = (why[0] if why else "")[:200]
            if result.returncode == 5 or "access is denied" in first.lower():
                raise AuthFailed(f"mtr: wevtutil was denied access to {s.log_name!r}: {first}")
            raise UnexpectedResponse(f"mtr: wevtutil exit {result.returncode} for {s.log_name!r}: {first}")
        return result.stdout

    def _read_file(self) -> bytes:
        path = self.settings.xml_file
        if path is None:
            raise UnexpectedResponse("mtr: no xml_file configured (wevtutil exists only on Windows)")
        try:
            if not path.is_file():
                raise DeviceUnreachable(f"mtr: event log file {path} not found")
            with path.open("rb") as handle:
                data = handle.read(self.settings.max_bytes + 1)
        except OSError as err:
            raise DeviceUnreachable(f"mtr: cannot read {path}: {(err.strerror or '').lower()}") from err
        if len(data) > self.settings.max_bytes:
            raise UnexpectedResponse(f"mtr: {path} over {self.settings.max_bytes} bytes")
        return data

    def health(self) -> MtrHealth:
        """Read, parse and summarize the log.

        Raises:
            CollectorError: as for :meth:`read_xml` and :func:`parse_events`.
        """
        s = self.settings
        events, skipped = parse_events(self.read_xml(), max_bytes=s.max_bytes)
        return summarize(
            events,
            now=self._clock(),
            window_s=s.window_s,
            max_heartbeat_age_s=s.max_heartbeat_age_s,
            skipped=skipped,
        )

    def probe(self) -> ChannelResult:
        """Read the log once: ok when it was read; the health it reports is in the fields.

        Raises:
            CollectorError: as for :meth:`health`.
        """
        started = time.monotonic()
        health = self.health()
        latency_ms = (time.monotonic() - started) * 1000
        detail = _detail(health)
        return ChannelResult(self.name, True, "ok", latency_ms, detail=detail, fields=health.fields())

    def close(self) -> None:
        """Nothing to release (no connection is kept)."""


def _detail(health: MtrHealth) -> str:
    if health.events == 0:
        return "no SRS-App events"
    parts = [
        "heartbeat " + {True: "ok", False: "error", None: "missing"}[health.heartbeat_ok],
        "hardware " + {True: "ok", False: "error", None: "missing"}[health.hardware_ok],
    ]
    if health.heartbeat_stale:
        parts.append("heartbeat stale")
    if health.restarts:
        parts.append(f"{health.restarts} restart(s)")
    if health.failing_checks:
        parts.append("failing: " + ", ".join(health.failing_checks))
    return "; ".join(parts)
