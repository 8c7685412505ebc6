"""One simulated device: an HTTPS server answering what its profile expects, with live faults.

All async methods run on the fleet's event loop thread; ``record`` and ``snapshot`` are plain
state and are only called from outside the loop while the fleet is not running.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import socket
import ssl
import time
from collections import OrderedDict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from collectors.jsonpath import set_path
from collectors.models import PERIPHERAL_KINDS
from config.schema import Profile
from simulator.certs import DeviceCertificate, server_context
from simulator.identity import PERIPHERAL_NAMES, Identity, SimDevice
from simulator.logs import APP, MTR_NAMES, SYS, LogEvent, boot_lines, build_archive, routine_lines
from simulator.vcapi import VcApiServer

log = logging.getLogger("hezo.simulator")

FAULT_KINDS = ("offline", "hang", "slow", "reboot", "unplug", "auth-fail", "malformed")
#: faults that may target one channel (``offline tcp6024``); without an argument they hit every channel
CHANNEL_FAULTS = ("offline", "hang")
CHANNELS = ("http", "tcp6024")
DEFAULT_SLOW_S = 3.0
DEFAULT_REBOOT_S = 20.0
MAX_TOKENS = 256
SYSLOG_SEVERITY = {"ERROR": 3, "WARN": 4, "INFO": 6, "DEBUG": 7}
MAX_EVENTS = 500
GZIP = "application/gzip"


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
    if kind in CHANNEL_FAULTS and arg is not None:
        if arg not in CHANNELS:
            names = ", ".join(CHANNELS)
            raise ValueError(f"{kind}: the optional argument names a channel ({names}), got {arg!r}")
        return arg
    if kind == "unplug":
        if arg not in PERIPHERAL_KINDS:
            raise ValueError(f"unplug: name a peripheral ({', '.join(PERIPHERAL_KINDS)}), got {arg!r}")
        return arg
    if arg is not None:
        raise ValueError(f"{kind}: takes no argument, got {arg!r}")
    return None


class DeviceServer:
    """The HTTPS server and fault state of one simulated device."""

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
        self.ident = ident
        self.vcapi = vcapi
        self._syslog_to = syslog_to
        self._syslog_every_s = syslog_every_s
        self._syslog_sock: socket.socket | None = None
        self._syslog_timer: asyncio.TimerHandle | None = None
        self.desc = desc
        self.profile = profile
        self._cert = cert
        self._seed = seed
        self._log_bytes = log_bytes
        self.faults: dict[str, str | None] = {}
        self.unplugged: set[str] = set()
        self._boot_mono = time.monotonic()
        self._uptime_offset_s = ident.initial_uptime_s
        self._tokens: OrderedDict[str, None] = OrderedDict()
        self._events: list[LogEvent] = []
        self._server: web.Server | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._ctx: ssl.SSLContext | None = None
        self._release = asyncio.Event()
        self._reboot_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- state (no I/O) -------------------------------------------------------------------

    def uptime_s(self) -> int:
        """Return whole seconds since the simulated boot."""
        return int(time.monotonic() - self._boot_mono) + self._uptime_offset_s

    def snapshot(self) -> list[str]:
        """Return the active faults as strings such as ``slow 3.0`` or ``unplug camera``."""
        out = [k if v is None else f"{k} {v}" for k, v in self.faults.items()]
        out += [f"{k} tcp6024" for k in sorted(self.vcapi.faults)] if self.vcapi and not self.faults else []
        return out + [f"unplug {kind}" for kind in sorted(self.unplugged)]

    def record(self, kind: str, arg: str | None) -> None:
        """Set a validated fault in the state (side effects are :meth:`apply`'s job)."""
        if kind in CHANNEL_FAULTS and arg == "tcp6024":
            return  # only the 6024 server is affected
        if kind == "unplug":
            assert arg is not None
            if arg not in self.unplugged:
                self.unplugged.add(arg)
                name = self._peripheral_names().get(arg, arg)
                self._event(SYS, "WARN", "usbd", f"{arg} '{name}' disconnected (USB disconnect)")
                self._event(APP, "ERROR", "periph", f"{arg} '{name}' state=disconnected")
            return
        self.faults[kind] = arg
        if kind in ("auth-fail", "reboot"):
            self._tokens.clear()
        if kind == "reboot":
            self._event(SYS, "INFO", "system", "reboot requested, restarting")

    def _event(self, file: str, level: str, source: str, message: str) -> None:
        self._events.append(LogEvent(datetime.now(UTC), file, level, source, message))
        del self._events[:-MAX_EVENTS]
        self.send_syslog(level, source, message)

    # --- syslog to the agent (ASSUMED: the bars' remote syslog follows Yealink's phones) ------

    def send_syslog(self, level: str, source: str, message: str) -> None:
        """Send one RFC 5424 message (facility local0) from the device's own address, if enabled."""
        if self._syslog_sock is None or self._syslog_to is None or not self._listening_wanted():
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

    def _listening_wanted(self) -> bool:
        return "offline" not in self.faults and "reboot" not in self.faults

    # --- lifecycle (event loop thread) -------------------------------------------------------

    async def start(self) -> None:
        """Build the TLS context and listen unless a fault says offline.

        Raises:
            OSError: the address or port cannot be bound.
        """
        self._server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._release = asyncio.Event()  # bound to this loop (a fleet can be started again)
        self._ctx = server_context(self._cert)
        if self._listening_wanted():
            await self._listen()
        if self.vcapi is not None:
            if not self._listening_wanted():
                self.vcapi.faults.add("offline")
            await self.vcapi.start()
            self.desc = replace(self.desc, vcapi_port=self.vcapi.port)
        if "reboot" in self.faults:
            self._arm_reboot(float(self.faults["reboot"] or DEFAULT_REBOOT_S))
        self._start_syslog()

    async def stop(self) -> None:
        """Close the listener and drop every connection, hung ones included."""
        if self._reboot_timer is not None:
            self._reboot_timer.cancel()
            self._reboot_timer = None
        self._unlisten()
        self._drop_connections()
        self._release.set()
        if self.vcapi is not None:
            await self.vcapi.stop()
        self._stop_syslog()
        for task in list(self._tasks):
            task.cancel()

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
        """Set a validated fault and act on it (close the listener, drop connections, ...)."""
        self.record(kind, arg)
        if self.vcapi is not None and arg in (None, "tcp6024") and kind in ("offline", "hang", "reboot"):
            await self.vcapi.apply("hang" if kind == "hang" else "offline")
        if kind in CHANNEL_FAULTS and arg == "tcp6024":
            return
        if kind in ("offline", "reboot"):
            self._unlisten()
            self._drop_connections()
        if kind == "reboot":
            self._arm_reboot(float(arg or DEFAULT_REBOOT_S))
        if kind == "hang" and self._release.is_set():
            self._release = asyncio.Event()
        log.info("device=%s fault=%s%s set", self.desc.id, kind, f" {arg}" if arg else "")

    def reset(self) -> None:
        """Remove every fault from the state: a reboot in progress ends now, peripherals replug."""
        if "reboot" in self.faults:
            self._finish_boot()
        for kind in sorted(self.unplugged):
            name = self._peripheral_names().get(kind, kind)
            self._event(SYS, "INFO", "usbd", f"{kind} '{name}' detected")
            self._event(APP, "INFO", "periph", f"{kind} '{name}' state=connected")
        self.faults.clear()
        self.unplugged.clear()

    async def clear(self) -> None:
        """Remove every fault and act on it: listen again, drop hung connections."""
        hung = "hang" in self.faults
        had = bool(self.faults or self.unplugged)
        self.reset()
        if hung:
            self._drop_connections()
            self._release.set()
        await self._listen_logged()
        if self.vcapi is not None:
            had = had or bool(self.vcapi.faults)
            await self.vcapi.clear()
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
        if self._listening_wanted():
            await self._listen_logged()
            if self.vcapi is not None:
                await self.vcapi.clear()
        log.info("device=%s reboot finished", self.desc.id)

    def _finish_boot(self) -> None:
        if self._reboot_timer is not None:
            self._reboot_timer.cancel()
            self._reboot_timer = None
        self._boot_mono = time.monotonic()
        self._uptime_offset_s = 0
        self._tokens.clear()

    # --- HTTP ------------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if "hang" in self.faults:
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
                return self._logs()
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
        if "malformed" in self.faults:
            text = text[: max(len(text) // 2, 1)]
        return web.Response(text=text, content_type="application/json")

    def _logs(self) -> web.Response:
        if "malformed" in self.faults:
            return web.Response(body=b"<html><body>500 export failed</body></html>", content_type=GZIP)
        names = self._peripheral_names()
        now = datetime.now(UTC)
        d = self.desc
        gone = sorted(self.unplugged)
        tail = [(APP, "ERROR", "periph", f"{kind} '{names.get(kind, kind)}' missing") for kind in gone]
        if d.model == "MVC" and self.unplugged:
            states = ". ".join(f"{MTR_NAMES.get(k, k)} status : Unhealthy" for k in gone)
            tail.append((SYS, "ERROR", "SRS-App[3001]", f"Hardware check: {states}."))
        body = build_archive(
            booted_at=now - timedelta(seconds=self.uptime_s()),
            boot=boot_lines(d.model, d.firmware, d.serial, d.mac, names),
            routine=routine_lines(f"hezo-sim:{self._seed}:{self.ident.index}:logs", d.model, self._log_bytes),
            events=list(self._events),
            tail=tail,
            now=now,
        )
        return web.Response(
            body=body,
            content_type=GZIP,
            headers={"Content-Disposition": f'attachment; filename="{d.hostname}-logs.tar.gz"'},
        )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"ret": "failed", "error": message}, status=status)
