"""Deterministic device log exports: a tar.gz with ``log/sys.log`` and ``log/app.log``.

The messages follow from the seed; only the timestamps move with the clock. Faults injected
at run time (unplugged peripherals, reboots) appear as event lines at the end.
"""

from __future__ import annotations

import gzip
import io
import random
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

SYS = "log/sys.log"
APP = "log/app.log"
Line = tuple[str, str, str, str]  # (file, level, source, message)
# How Microsoft Teams Rooms names hardware in SRS-App 3000/3001 events (yealink-facts.md).
MTR_NAMES = {
    "camera": "Camera",
    "microphone": "Conference Microphone",
    "speaker": "Conference Speaker",
    "touch_panel": "Touch Console",
}
MTR_HEARTBEAT = "Heartbeat: Network status : Healthy. Exchange status : Connected. Signin status: Healthy."
MTR_HARDWARE_OK = (
    "Hardware check: Conference Microphone status : Healthy. Conference Speaker status : Healthy. "
    "Camera status : Healthy."
)


@dataclass(frozen=True)
class LogEvent:
    """One line caused by a run-time event (fault), stamped when it happened."""

    at: datetime
    file: str
    level: str
    source: str
    message: str


def boot_lines(model: str, firmware: str, serial: str, mac: str, peripherals: dict[str, str]) -> list[Line]:
    """Return the (file, level, source, message) lines a device writes while booting."""
    if model == "MVC":
        lines = [
            (SYS, "INFO", "Kernel-General", "The operating system started (Windows 11 IoT Enterprise)."),
            (SYS, "INFO", "SRS-App[4000]", "App restarts."),
            (APP, "INFO", "MTR", f"Teams Rooms app starting, system firmware {firmware}"),
            (APP, "INFO", "MTR", f"Device serial {serial}, MAC {mac}"),
        ]
        lines += [
            (APP, "INFO", "MTR", f"Peripheral {kind} '{name}' enumerated")
            for kind, name in peripherals.items()
        ]
        return lines
    lines = [
        (SYS, "INFO", "kernel", "Booting Linux on physical CPU 0x0"),
        (SYS, "INFO", "kernel", "Linux version 4.19.157 (yealink@build) #1 SMP PREEMPT"),
        (SYS, "INFO", "init", f"firmware version {firmware} model {model}"),
        (SYS, "INFO", "init", f"serial {serial} mac {mac}"),
        (SYS, "INFO", "netd", "eth0: link up, 1000 Mbps, full duplex"),
        (SYS, "INFO", "netd", "eth0: DHCP lease acquired, lease_s=86400"),
        (APP, "INFO", "launcher", f"{_platform(firmware)} starting"),
    ]
    lines += [(SYS, "INFO", "usbd", f"{kind} '{name}' detected") for kind, name in peripherals.items()]
    return lines


def _platform(firmware: str) -> str:
    return "Teams Rooms on Android" if firmware.startswith("133.15.") else "Zoom Rooms"


def _routine(rng: random.Random, model: str) -> Line:
    roll = rng.random()
    call_id = f"{rng.getrandbits(48):012x}"
    if model == "MVC":
        if roll < 0.35:
            return (SYS, "INFO", "SRS-App[2000]", MTR_HEARTBEAT)
        if roll < 0.55:
            return (SYS, "INFO", "SRS-App[3000]", MTR_HARDWARE_OK)
        if roll < 0.75:
            return (APP, "INFO", "MTR", f"Meeting joined call_id={call_id} participants={rng.randint(2, 14)}")
        if roll < 0.93:
            return (
                APP,
                "INFO",
                "MTR",
                f"Meeting ended call_id={call_id} duration_s={rng.randint(300, 5400)}",
            )
        return (APP, "WARN", "MTR", f"Calendar sync slow latency_ms={rng.randint(800, 4000)}")
    if roll < 0.25:
        rx, tx = rng.randint(10**5, 10**8), rng.randint(10**5, 10**8)
        return (SYS, "INFO", "netd", f"eth0: rx_packets={rx} tx_packets={tx}")
    if roll < 0.45:
        return (APP, "INFO", "call", f"call started id={call_id} participants={rng.randint(2, 12)}")
    if roll < 0.65:
        return (APP, "INFO", "call", f"call ended id={call_id} duration_s={rng.randint(300, 5400)}")
    if roll < 0.78:
        return (APP, "INFO", "camera", f"auto framing people={rng.randint(0, 10)}")
    if roll < 0.9:
        return (APP, "INFO", "audio", f"echo canceller converged erle_db={rng.randint(18, 42)}")
    if roll < 0.97:
        return (SYS, "WARN", "netd", f"DNS lookup slow latency_ms={rng.randint(500, 3000)}")
    return (APP, "WARN", "provision", "auto provisioning server unreachable, retry in 3600 s")


def routine_lines(seed_key: str, model: str, size_bytes: int) -> list[Line]:
    """Return deterministic everyday lines for one device, about ``size_bytes`` in total."""
    rng = random.Random(seed_key)
    lines: list[Line] = []
    total = 0
    while total < size_bytes:
        line = _routine(rng, model)
        lines.append(line)
        total += len(line[3]) + len(line[2]) + 32
    return lines


def _render(at: datetime, level: str, source: str, message: str) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S}.{at.microsecond // 1000:03d} {level:<5} {source}: {message}\n"


def build_archive(
    *,
    booted_at: datetime,
    boot: list[Line],
    routine: list[Line],
    events: list[LogEvent],
    tail: list[Line],
    now: datetime | None = None,
) -> bytes:
    """Return a gzip-compressed tar with sys.log and app.log.

    Boot lines are stamped at ``booted_at``, routine lines spread from there to ``now``,
    ``events`` at their own times and ``tail`` lines (current state) at ``now``; each file is
    in time order.
    """
    now = now or datetime.now(UTC)
    stamped: dict[str, list[tuple[datetime, str]]] = {SYS: [], APP: []}
    for i, (file, level, source, message) in enumerate(boot):
        at = booted_at + timedelta(milliseconds=40 * i)
        stamped[file].append((at, _render(at, level, source, message)))
    span_s = max((now - booted_at).total_seconds() - 60.0, 1.0)
    count = max(len(routine), 1)
    for i, (file, level, source, message) in enumerate(routine):
        at = booted_at + timedelta(seconds=60.0 + span_s * i / count)
        stamped[file].append((at, _render(at, level, source, message)))
    for event in events:
        stamped[event.file].append((event.at, _render(event.at, event.level, event.source, event.message)))
    for file, level, source, message in tail:
        stamped[file].append((now, _render(now, level, source, message)))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name in (SYS, APP):
            ordered = sorted(stamped[name], key=lambda item: item[0])
            data = "".join(text for _, text in ordered).encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(now.timestamp())
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)
