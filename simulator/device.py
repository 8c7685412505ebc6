"""One simulated device: HTTPS answering what its profile expects, plus 6024, SSH and SNMP, with live faults.

Faults live here, per device; each channel server (HTTP below, :mod:`simulator.vcapi`,
:mod:`simulator.ssh_server`, :mod:`simulator.snmp_agent`) is told the modes that apply to it
(:meth:`DeviceServer.channel_modes`) whenever they change. All async methods run on the
fleet's event loop thread; ``record`` and ``snapshot`` are plain state and are only called from
outside the loop while the fleet is not running.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from collectors.jsonpath import set_path
from collectors.models import PERIPHERAL_KINDS
from config.schema import Profile
from simulator.certs import DeviceCertificate, server_context
from simulator.identity import PERIPHERAL_NAMES, Identity, SimDevice
from simulator.logs import APP, MTR_NAMES, SYS, LogEvent, boot_lines, build_archive, routine_lines
from simulator.snmp_agent import SNMP_FAULTS, Interface, Mib, SnmpAgent, device_mib
from simulator.ssh_server import SSH_FAULTS, ShellFacts, SshServer
from simulator.vcapi import VCAPI_FAULTS, VcApiServer
from simulator.ymcs_wire import device_record

log = logging.getLogger("hezo.simulator")

FAULT_KINDS = (
    *("offline", "hang", "slow", "reboot", "unplug", "auth-fail", "malformed"),
    *("endless", "drip", "garbage", "hostkey-change", "update", "clock-skew", "config-set"),
)
CHANNELS = ("http", "tcp6024", "ssh", "snmp")
#: faults that may (or must) target one channel, and the channels each one can target; without a
#: channel ``offline``/``hang`` hit every channel, ``malformed`` the web interface, ``endless``/``drip`` SSH
CHANNEL_FAULTS: dict[str, tuple[str, ...]] = {
    "offline": CHANNELS,
    "hang": CHANNELS,
    "malformed": ("http", "snmp"),
    "endless": ("ssh",),
    "drip": ("ssh",),
    "garbage": ("tcp6024", "snmp"),
}
DEFAULT_CHANNEL = {"endless": "ssh", "drip": "ssh"}
DEFAULT_SLOW_S = 3.0
DEFAULT_REBOOT_S = 20.0
#: a default ``update`` runs two hours: longer than the agent's default ``max_update_minutes`` (60)
DEFAULT_UPDATE_S = 7200.0
MAX_UPDATE_S = 86400.0
#: the update state the device reports at the profile's ``fields.update_state`` (an ASSUMED field)
UPDATE_RUNNING = "upgrading"
UPDATE_IDLE = "idle"
MAX_TOKENS = 256
SYSLOG_SEVERITY = {"ERROR": 3, "WARN": 4, "INFO": 6, "DEBUG": 7}
MAX_EVENTS = 500
GZIP = "application/gzip"
#: ``clock-skew`` shifts the device's clock (its HTTP Date header) by at most ten years either way
MAX_SKEW_S = 10 * 365 * 86400.0
_CONFIG_KEY = re.compile(r"^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$")


def parse_fault(kind: str, arg: str | None) -> str | None:
    """Validate a fault and return its normalised argument.

    Raises:
        ValueError: unknown kind, or an argument that is missing, extra or invalid.
    """
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
    if kind in ("slow", "reboot"):
        if arg is None:
            return str(DEFAULT_SLOW_S if kind == "slow" else DEFAULT_REBOOT_S)
        try:
            seconds = float(arg)
        except ValueError:
            raise ValueError(f"{kind}: argument must be seconds, got {arg!r}") from None
        if not 0 < seconds <= 3600:
            raise ValueError(f"{kind}: seconds must be in (0, 3600], got {arg!r}")
        return str(seconds)
    if kind == "update":
        total, silent = parse_update(arg)
        return f"{total},{silent}" if silent else str(total)
    if kind == "clock-skew":
        return str(parse_skew(arg))
    if kind == "config-set":
        key, value = parse_config_set(arg)
        return f"{key}={json.dumps(value)}"
    if kind in CHANNEL_FAULTS:
        arg = arg if arg is not None else DEFAULT_CHANNEL.get(kind)
        if arg is None and kind == "garbage":
            raise ValueError(f"garbage: name a channel ({', '.join(CHANNEL_FAULTS[kind])})")
        if arg is not None and arg not in CHANNEL_FAULTS[kind]:
            names = ", ".join(CHANNEL_FAULTS[kind])
            raise ValueError(f"{kind}: the optional argument names a channel ({names}), got {arg!r}")
        return arg
    if kind == "unplug":
        if arg not in PERIPHERAL_KINDS:
            raise ValueError(f"unplug: name a peripheral ({', '.join(PERIPHERAL_KINDS)}), got {arg!r}")
        return arg
    if arg is not None:
        raise ValueError(f"{kind}: takes no argument, got {arg!r}")
    return None


def parse_skew(arg: str | None) -> float:
    """The ``clock-skew`` argument: seconds the device's clock runs ahead (negative: behind).

    Raises:
        ValueError: missing, not a number, or beyond :data:`MAX_SKEW_S`.
    """
    try:
        seconds = float(arg if arg is not None else "")
    except ValueError:
        raise ValueError(f"clock-skew: argument must be seconds (e.g. 300 or -300), got {arg!r}") from None
    if not abs(seconds) <= MAX_SKEW_S:
        raise ValueError(f"clock-skew: seconds must be within ±{MAX_SKEW_S:.0f}, got {arg!r}")
    return seconds


def parse_config_set(arg: str | None) -> tuple[str, Any]:
    """Split a ``config-set`` argument ``KEY=VALUE``: a dotted key and a JSON value (else text).

    Raises:
        ValueError: no ``=``, or the key is not dotted letters, digits, ``_`` and ``-``.
    """
    key, sep, text = (arg or "").partition("=")
    if not sep or not _CONFIG_KEY.match(key):
        raise ValueError(f"config-set: argument must be KEY=VALUE with a dotted KEY, got {arg!r}")
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    return key, value


def parse_update(arg: str | None) -> tuple[float, float]:
    """Split an ``update`` argument ``SECONDS[,SILENT]`` into (total, silent) seconds.

    The device reports an update in progress for ``SECONDS`` (default :data:`DEFAULT_UPDATE_S`);
    the last ``SILENT`` of them (default 0) it is off the network, rebooting into the new firmware.

    Raises:
        ValueError: not numbers, ``SECONDS`` outside (0, 86400], or ``SILENT`` outside [0, SECONDS).
    """
    if arg is None:
        return DEFAULT_UPDATE_S, 0.0
    total_text, _, silent_text = arg.partition(",")
    try:
        total = float(total_text)
        silent = float(silent_text) if silent_text else 0.0
    except ValueError:
        raise ValueError(f"update: argument must be SECONDS or SECONDS,SILENT_SECONDS, got {arg!r}") from None
    if not 0 < total <= MAX_UPDATE_S:
        raise ValueError(f"update: seconds must be in (0, {MAX_UPDATE_S:.0f}], got {arg!r}")
    if not 0 <= silent < total:
        raise ValueError(f"update: silent seconds must be at least 0 and below the total, got {arg!r}")
    return total, silent


class DeviceServer:
    """The servers (HTTPS, and 6024, SSH, SNMP when given) and fault state of one simulated device."""

    def __init__(
        self,
        ident: Identity,
        desc: SimDevice,
        profile: Profile,
        cert: DeviceCertificate,
        *,
        seed: int,
        log_bytes: int,
        vcapi: VcApiServer | None = None,
        syslog_to: tuple[str, int] | None = None,
        syslog_every_s: float = 5.0,
    ) -> None:
        """Prepare the device; the fleet may set :attr:`ssh` and :attr:`snmp` before :meth:`start`."""
        self.ident = ident
        self.vcapi = vcapi
        self.ssh: SshServer | None = None
        self.snmp: SnmpAgent | None = None
        self._syslog_to = syslog_to
        self._syslog_every_s = syslog_every_s
        self._syslog_sock: socket.socket | None = None
        self._syslog_timer: asyncio.TimerHandle | None = None
        self.desc = desc
        self.profile = profile
        self._cert = cert
        self._seed = seed
        self._log_bytes = log_bytes
        #: device-wide faults (kind -> argument); ``offline``/``hang`` here hit every channel
        self.faults: dict[str, str | None] = {}
        #: faults aimed at one channel, as an ordered set of (kind, channel)
        self.channel_faults: dict[tuple[str, str], None] = {}
        self.unplugged: set[str] = set()
        #: ``config-set`` changes on top of the device's own configuration (dotted key -> value)
        self.config_changes: dict[str, Any] = {}
        self._boot_mono = time.monotonic()
        self._uptime_offset_s = ident.initial_uptime_s
        self._tokens: OrderedDict[str, None] = OrderedDict()
        self._events: list[LogEvent] = []
        self._server: web.Server | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._ctx: ssl.SSLContext | None = None
        self._http_modes: frozenset[str] = frozenset()
        self._release = asyncio.Event()
        self._reboot_timer: asyncio.TimerHandle | None = None
        self._update_timers: list[asyncio.TimerHandle] = []
        self._update_silent = False  # the silent (rebooting) part of an ``update`` fault
        self._tasks: set[asyncio.Task[None]] = set()
        self._cloud_seen_ms = int(time.time() * 1000)

    # --- state (no I/O) -------------------------------------------------------------------

    def uptime_s(self) -> int:
        """Return whole seconds since the simulated boot."""
        return int(time.monotonic() - self._boot_mono) + self._uptime_offset_s

    def snapshot(self) -> list[str]:
        """Return the active faults as strings such as ``slow 3.0``, ``offline ssh`` or ``unplug camera``."""
        out = [k if v is None else f"{k} {v}" for k, v in self.faults.items()]
        out += [f"{kind} {channel}" for kind, channel in self.channel_faults]
        out += [f"config-set {key}" for key in self.config_changes]  # values may be secrets: keys only
        return out + [f"unplug {kind}" for kind in sorted(self.unplugged)]

    def record(self, kind: str, arg: str | None) -> None:
        """Set a validated fault in the state (side effects are :meth:`apply`'s job)."""
        if kind == "unplug":
            assert arg is not None
            if arg not in self.unplugged:
                self.unplugged.add(arg)
                name = self._peripheral_names().get(arg, arg)
                self._event(SYS, "WARN", "usbd", f"{arg} '{name}' disconnected (USB disconnect)")
                self._event(APP, "ERROR", "periph", f"{arg} '{name}' state=disconnected")
            return
        if kind in CHANNEL_FAULTS and arg is not None:
            self.channel_faults[(kind, arg)] = None
            return
        if kind == "config-set":
            key, value = parse_config_set(arg)
            self.config_changes[key] = value
            self._event(SYS, "INFO", "config", f"setting {key} changed")
            return
        self.faults[kind] = arg
        if kind in ("auth-fail", "reboot"):
            self._tokens.clear()
        if kind == "reboot":
            self._event(SYS, "INFO", "system", "reboot requested, restarting")
        if kind == "update":
            self._update_silent = False
            self._event(SYS, "INFO", "upgrade", "firmware upgrade started")

    def channel_modes(self, channel: str) -> frozenset[str]:
        """The fault modes that apply to one channel (``http``, ``tcp6024``, ``ssh``, ``snmp``) now."""
        modes = {kind for kind, target in self.channel_faults if target == channel}
        if self._down():
            modes.add("offline")
        if "hang" in self.faults:
            modes.add("hang")
        if channel == "http" and "malformed" in self.faults:
            modes.add("malformed")
        if channel == "ssh":
            modes.update(k for k in ("auth-fail", "hostkey-change") if k in self.faults)
        return frozenset(modes)

    def _down(self) -> bool:
        """The whole device is off the network (``offline`` without a channel, or rebooting)."""
        return "offline" in self.faults or "reboot" in self.faults or self._update_silent

    def clock_now(self) -> datetime:
        """The device's own clock: the real time shifted by a ``clock-skew`` fault."""
        return datetime.now(UTC) + timedelta(seconds=float(self.faults.get("clock-skew") or 0.0))

    def device_config(self) -> dict[str, Any]:
        """The configuration the device reports (profile field ``config``), ``config-set`` applied."""
        d = self.desc
        secret = hashlib.sha256(f"hezo-sim:{self._seed}:{self.ident.index}:provisioning".encode()).hexdigest()
        config: dict[str, Any] = {
            "network": {"hostname": d.hostname, "dhcp": True, "vlan": 0},
            "time": {"ntp_server": "pool.ntp.org", "timezone": "Europe/Warsaw"},
            "audio": {"volume": 8, "noise_suppression": True},
            "video": {"resolution": "1080p", "auto_framing": True},
            "provisioning": {"url": f"https://dm.example.invalid/{d.serial}", "password": secret[:20]},
        }
        for key, value in self.config_changes.items():
            with contextlib.suppress(ValueError):  # a key through a plain value: the device ignores it
                set_path(config, key, value)
        return config

    def update_state(self) -> str:
        """What the device reports at its profile's ``update_state`` field: ``upgrading`` or ``idle``."""
        return UPDATE_RUNNING if "update" in self.faults and not self._update_silent else UPDATE_IDLE

    def _event(self, file: str, level: str, source: str, message: str) -> None:
        self._events.append(LogEvent(datetime.now(UTC), file, level, source, message))
        del self._events[:-MAX_EVENTS]
        self.send_syslog(level, source, message)

    # --- what the other channels report (loop thread) --------------------------------------------

    def shell_facts(self, with_files: bool = False) -> ShellFacts:
        """What an SSH command may report; the log files only when asked (they cost an export)."""
        d = self.desc
        names = self._peripheral_names()
        return ShellFacts(
            model=d.model,
            firmware=d.firmware,
            serial=d.serial,
            mac=d.mac,
            hostname=d.hostname,
            username=d.username,
            uptime_s=self.uptime_s(),
            peripherals={kind: (name, kind not in self.unplugged) for kind, name in names.items()},
            archive=self.archive_recipe() if with_files else None,
        )

    def snmp_mib(self) -> Mib:
        """The device's SNMP view (system group and ifTable)."""
        d = self.desc
        interfaces = (
            Interface(1, "lo", 24, "", 10_000_000, True),
            Interface(2, "eth0", 6, d.mac, 1_000_000_000, True),
        )
        return device_mib(
            model=d.model,
            firmware=d.firmware,
            hostname=d.hostname,
            location=f"{d.site}, {d.room}",
            uptime_s=self.uptime_s(),
            interfaces=interfaces,
        )

    def ymcs_record(self) -> dict[str, Any]:
        """The device as the mock YMCS lists it: offline while the web interface is off or it hangs,
        accessories (``parts``) following ``unplug``."""
        d = self.desc
        gone = self._down() or "hang" in self.faults or ("offline", "http") in self.channel_faults
        if not gone:
            self._cloud_seen_ms = int(time.time() * 1000)
        now_ms = self._cloud_seen_ms  # the cloud last heard from the device then
        parts = [
            {
                "id": f"{d.id}-{kind}",
                "mac": "",
                "sn": f"{d.serial[-8:]}{i:02d}",
                "modelName": name,
                "connectWay": "USB",
                "connStatus": "disconnected" if kind in self.unplugged else "connected",
                "lanIp": "",
                "programVersion": d.firmware,
                "lastReportTime": now_ms,
            }
            for i, (kind, name) in enumerate(self._peripheral_names().items(), 1)
        ]
        record = device_record(d, status="offline" if gone else "online", parts=parts)
        record["lastReportTime"] = now_ms
        return record

    # --- syslog to the agent (ASSUMED: the bars' remote syslog follows Yealink's phones) ------

    def send_syslog(self, level: str, source: str, message: str) -> None:
        """Send one RFC 5424 message (facility local0) from the device's own address, if enabled."""
        if self._syslog_sock is None or self._syslog_to is None or self._down():
            return
        pri = 16 * 8 + SYSLOG_SEVERITY.get(level, 6)
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = f"<{pri}>1 {stamp} {self.desc.hostname} {source} - - - {message}"
        with contextlib.suppress(OSError):  # a full buffer or a gone agent loses a line, as real UDP does
            self._syslog_sock.sendto(line.encode("utf-8"), self._syslog_to)

    def _start_syslog(self) -> None:
        if self._syslog_to is None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((self.desc.host, 0))  # the source address tells the agent which device spoke
        self._syslog_sock = sock
        self._syslog_tick()

    def _syslog_tick(self) -> None:
        self.send_syslog("INFO", "sysmon", f"status ok uptime={self.uptime_s()}s call=idle")
        self._syslog_timer = asyncio.get_running_loop().call_later(self._syslog_every_s, self._syslog_tick)

    def _stop_syslog(self) -> None:
        if self._syslog_timer is not None:
            self._syslog_timer.cancel()
            self._syslog_timer = None
        if self._syslog_sock is not None:
            self._syslog_sock.close()
            self._syslog_sock = None

    def _peripheral_names(self) -> dict[str, str]:
        names = PERIPHERAL_NAMES.get(self.desc.model, {})
        expected = self.profile.peripherals.expected if self.profile.peripherals else ()
        return {kind: names.get(kind, kind) for kind in expected}

    # --- lifecycle (event loop thread) -------------------------------------------------------

    async def start(self) -> None:
        """Build the TLS context and start every channel, each as its faults say.

        Raises:
            OSError: an address or port cannot be bound.
        """
        self._server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._release = asyncio.Event()  # bound to this loop (a fleet can be started again)
        self._http_modes = frozenset()
        self._ctx = server_context(self._cert)
        await self._sync_http(strict=True)
        if self.vcapi is not None:
            self.vcapi.faults.clear()
            self.vcapi.faults.update(self.channel_modes("tcp6024") & set(VCAPI_FAULTS))
            await self.vcapi.start()
        if self.ssh is not None:
            self.ssh.modes = self.channel_modes("ssh") & frozenset(SSH_FAULTS)
            await self.ssh.start()
        if self.snmp is not None:
            self.snmp.modes = self.channel_modes("snmp") & frozenset(SNMP_FAULTS)
            await self.snmp.start()
        self._note_ports()
        if "reboot" in self.faults:
            self._arm_reboot(float(self.faults["reboot"] or DEFAULT_REBOOT_S))
        if "update" in self.faults:
            self._arm_update(self.faults["update"])
        self._start_syslog()

    def _note_ports(self) -> None:
        """Copy the channels' bound ports (ephemeral ones are known once listening) into :attr:`desc`."""
        vcapi = self.vcapi.port if self.vcapi is not None else None
        ssh = self.ssh.port if self.ssh is not None else None
        snmp = self.snmp.port if self.snmp is not None else None
        d = self.desc
        if (d.vcapi_port, d.ssh_port, d.snmp_port) != (vcapi, ssh, snmp):
            self.desc = replace(d, vcapi_port=vcapi, ssh_port=ssh, snmp_port=snmp)

    async def stop(self) -> None:
        """Close every listener and drop every connection, hung ones included."""
        if self._reboot_timer is not None:
            self._reboot_timer.cancel()
            self._reboot_timer = None
        self._cancel_update_timers()
        self._unlisten()
        self._drop_connections()
        self._release.set()
        for channel in (self.vcapi, self.ssh, self.snmp):
            if channel is not None:
                await channel.stop()
        self._stop_syslog()
        for task in list(self._tasks):
            task.cancel()

    async def _sync(self) -> None:
        """Tell every channel the fault modes that apply to it now."""
        await self._sync_http()
        if self.vcapi is not None:
            want = self.channel_modes("tcp6024") & set(VCAPI_FAULTS)
            if want != self.vcapi.faults:
                await self.vcapi.clear()
                for fault in sorted(want, key=VCAPI_FAULTS.index):
                    await self.vcapi.apply(fault)
        if self.ssh is not None:
            await self.ssh.set_modes(self.channel_modes("ssh") & frozenset(SSH_FAULTS))
        if self.snmp is not None:
            await self.snmp.set_modes(self.channel_modes("snmp") & frozenset(SNMP_FAULTS))
        self._note_ports()

    async def _sync_http(self, *, strict: bool = False) -> None:
        modes = self.channel_modes("http")
        was_hung = "hang" in self._http_modes
        self._http_modes = modes
        if "hang" in modes and not was_hung and self._release.is_set():
            self._release = asyncio.Event()
        if was_hung and "hang" not in modes:
            self._drop_connections()
            self._release.set()
        if "offline" in modes:
            self._unlisten()
            self._drop_connections()
        elif strict:
            await self._listen()
        else:
            await self._listen_logged()

    async def _listen(self) -> None:
        if self._listener is not None or self._server is None:
            return
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self._server, self.desc.host, self.desc.port, ssl=self._ctx, reuse_address=True, backlog=128
        )
        if self.desc.port == 0:
            port = self._listener.sockets[0].getsockname()[1]
            self.desc = replace(self.desc, port=port)

    def _unlisten(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _drop_connections(self) -> None:
        if self._server is None:
            return
        for handler in self._server.connections:
            if handler.transport is not None:
                handler.transport.abort()

    async def apply(self, kind: str, arg: str | None) -> None:
        """Set a validated fault and act on it (close listeners, drop connections, ...)."""
        self.record(kind, arg)
        await self._sync()
        if kind == "reboot":
            self._arm_reboot(float(arg or DEFAULT_REBOOT_S))
        if kind == "update":
            self._arm_update(arg)
        log.info("device=%s fault=%s%s set", self.desc.id, kind, f" {arg}" if arg else "")

    def reset(self) -> None:
        """Remove every fault from the state: a reboot in progress ends now, peripherals replug."""
        if "reboot" in self.faults:
            self._finish_boot()
        if "update" in self.faults:
            self._finish_update()
        for kind in sorted(self.unplugged):
            name = self._peripheral_names().get(kind, kind)
            self._event(SYS, "INFO", "usbd", f"{kind} '{name}' detected")
            self._event(APP, "INFO", "periph", f"{kind} '{name}' state=connected")
        self.faults.clear()
        self.channel_faults.clear()
        self.unplugged.clear()
        self.config_changes.clear()

    async def clear(self) -> None:
        """Remove every fault and act on it: listen again, drop hung connections."""
        had = bool(self.faults or self.channel_faults or self.unplugged or self.config_changes)
        self.reset()
        await self._sync()
        if had:
            log.info("device=%s faults cleared", self.desc.id)

    async def _listen_logged(self) -> None:
        try:
            await self._listen()
        except OSError as err:
            d = self.desc
            log.error("device=%s cannot listen on %s:%s: %s", d.id, d.host, d.port, err)

    def _arm_reboot(self, seconds: float) -> None:
        if self._reboot_timer is not None:
            self._reboot_timer.cancel()
        loop = asyncio.get_running_loop()
        self._reboot_timer = loop.call_later(seconds, self._spawn_end_reboot)

    def _spawn_end_reboot(self) -> None:
        task = asyncio.get_running_loop().create_task(self._end_reboot())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _end_reboot(self) -> None:
        self._finish_boot()
        self.faults.pop("reboot", None)
        await self._sync()
        log.info("device=%s reboot finished", self.desc.id)

    def _arm_update(self, arg: str | None) -> None:
        """Time the update: silent for its last part (if any), then done (loop thread)."""
        self._cancel_update_timers()
        total, silent = parse_update(arg)
        loop = asyncio.get_running_loop()
        if silent:
            self._update_timers.append(loop.call_later(total - silent, self._spawn, self._update_reboot))
        self._update_timers.append(loop.call_later(total, self._spawn, self._end_update))

    def _cancel_update_timers(self) -> None:
        for timer in self._update_timers:
            timer.cancel()
        self._update_timers.clear()

    def _spawn(self, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.get_running_loop().create_task(job())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _update_reboot(self) -> None:
        self._event(SYS, "INFO", "upgrade", "firmware installed, rebooting")
        self._update_silent = True
        self._tokens.clear()
        await self._sync()
        log.info("device=%s update rebooting", self.desc.id)

    async def _end_update(self) -> None:
        self._finish_update()
        await self._sync()
        log.info("device=%s update finished", self.desc.id)

    def _finish_update(self) -> None:
        """End an update now: a device that went silent for it boots afresh (uptime ~0)."""
        self._cancel_update_timers()
        if self._update_silent:
            self._finish_boot()
        self._update_silent = False
        self.faults.pop("update", None)
        self._event(SYS, "INFO", "upgrade", "firmware upgrade finished")

    def _finish_boot(self) -> None:
        if self._reboot_timer is not None:
            self._reboot_timer.cancel()
            self._reboot_timer = None
        self._boot_mono = time.monotonic()
        self._uptime_offset_s = 0
        self._tokens.clear()

    # --- HTTP ------------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        response = await self._answer(request)
        # the Date header from the device's own clock (a ``clock-skew`` fault shifts it)
        response.headers["Date"] = format_datetime(self.clock_now(), usegmt=True)
        return response

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        if "hang" in self._http_modes:
            await self._release.wait()
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        slow = self.faults.get("slow")
        if slow:
            await asyncio.sleep(float(slow))
        login = self.profile.auth.login
        if login is not None and request.path == login.path:
            if request.method != login.method:
                return _error(405, "method not allowed")
            return await self._login(request)
        for name, endpoint in self.profile.endpoints.items():
            if request.path != endpoint.path:
                continue
            if request.method != endpoint.method:
                return _error(405, "method not allowed")
            if self.profile.auth.kind == "token" and not self._authorised(request):
                return _error(401, "unauthorized")
            if name == "logs":
                return await self._logs()
            return self._json(name)
        return _error(404, "not found")

    def _authorised(self, request: web.BaseRequest) -> bool:
        token = request.headers.get(self.profile.auth.token_header, "")
        return bool(token) and token in self._tokens

    async def _login(self, request: web.BaseRequest) -> web.Response:
        auth = self.profile.auth
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, "body must be JSON")
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        user = str(body.get(auth.username_field, ""))
        password = str(body.get(auth.password_field, ""))
        good = hmac.compare_digest(user.encode(), self.desc.username.encode()) & hmac.compare_digest(
            password.encode(), self.desc.password.encode()
        )
        if not good or "auth-fail" in self.faults:
            return _error(401, "invalid credentials")
        token = secrets.token_hex(16)
        self._tokens[token] = None
        while len(self._tokens) > MAX_TOKENS:
            self._tokens.popitem(last=False)
        answer: dict[str, Any] = {"ret": "ok"} if self.desc.model in ("A20", "A30") else {}
        set_path(answer, auth.token_path, token)
        return web.json_response(answer)

    def _value(self, field: str) -> Any:
        if field == "peripherals":
            return self._peripherals()
        if field == "uptime_s":
            return self.uptime_s()
        if field == "call_state":
            return "idle"
        if field == "update_state":
            return self.update_state()
        if field == "config":
            return self.device_config()
        return getattr(self.desc, field)

    def _peripherals(self) -> list[dict[str, Any]]:
        pmap = self.profile.peripherals
        if pmap is None:
            return []
        down: bool | str = False if isinstance(pmap.connected_value, bool) else "disconnected"
        items = []
        for kind, name in self._peripheral_names().items():
            state = down if kind in self.unplugged else pmap.connected_value
            items.append({pmap.kind: kind, pmap.name: name, pmap.connected: state})
        return items

    def _json(self, endpoint: str) -> web.Response:
        body: dict[str, Any] = {"ret": "ok"} if self.desc.model in ("A20", "A30") else {}
        for field, fmap in self.profile.fields.items():
            if fmap.endpoint == endpoint:
                set_path(body, fmap.path, self._value(field))
        text = json.dumps(body)
        if "malformed" in self._http_modes:
            text = text[: max(len(text) // 2, 1)]
        return web.Response(text=text, content_type="application/json")

    async def _logs(self) -> web.Response:
        if "malformed" in self._http_modes:
            return web.Response(body=b"<html><body>500 export failed</body></html>", content_type=GZIP)
        body = await asyncio.get_running_loop().run_in_executor(None, self.archive_recipe())
        return web.Response(
            body=body,
            content_type=GZIP,
            headers={"Content-Disposition": f'attachment; filename="{self.desc.hostname}-logs.tar.gz"'},
        )

    def archive_recipe(self) -> Callable[[], bytes]:
        """Capture the device's state now (loop thread) and return what builds its log export
        (tar.gz with sys.log and app.log) from it, in any thread: rendering and compressing a big
        log is the expensive part, and the loop serves every other device meanwhile."""
        names = self._peripheral_names()
        now = datetime.now(UTC)
        d = self.desc
        gone = sorted(self.unplugged)
        tail = [(APP, "ERROR", "periph", f"{kind} '{names.get(kind, kind)}' missing") for kind in gone]
        if d.model == "MVC" and self.unplugged:
            states = ". ".join(f"{MTR_NAMES.get(k, k)} status : Unhealthy" for k in gone)
            tail.append((SYS, "ERROR", "SRS-App[3001]", f"Hardware check: {states}."))
        booted_at = now - timedelta(seconds=self.uptime_s())
        events = list(self._events)
        seed_key, log_bytes = f"hezo-sim:{self._seed}:{self.ident.index}:logs", self._log_bytes

        def build() -> bytes:
            return build_archive(
                booted_at=booted_at,
                boot=boot_lines(d.model, d.firmware, d.serial, d.mac, names),
                routine=routine_lines(seed_key, d.model, log_bytes),
                events=events,
                tail=tail,
                now=now,
            )

        return build


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"ret": "failed", "error": message}, status=status)
