"""A fleet of simulated Yealink devices on loopback, served by one asyncio loop in one thread.

Usage::

    with Fleet(devices=12, seed=1, port=0) as fleet:
        fleet.fault("a30-01", "offline")
        ...
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from config.loader import load_profile, profile_name
from simulator import agentconfig
from simulator.certs import make_certificate
from simulator.control import make_app
from simulator.device import FAULT_KINDS, DeviceServer, parse_fault
from simulator.identity import (
    ADMIN_USER,
    SimDevice,
    admin_password,
    can_bind,
    device_address,
    plan_identities,
)
from simulator.vcapi import VcApiServer

__all__ = ["FAULT_KINDS", "Fleet", "SimDevice"]

log = logging.getLogger("hezo.simulator")
T = TypeVar("T")
CALL_TIMEOUT_S = 10.0


class Fleet:
    """Simulated A20/A30/MVC devices, each an HTTPS server on its own loopback address."""

    def __init__(
        self,
        devices: int = 12,
        *,
        seed: int = 0,
        net: int = 77,
        port: int = 8443,
        control_port: int | None = None,
        log_bytes: int = 100_000,
        vcapi_port: int | None = 6024,
        syslog_to: tuple[str, int] | None = None,
    ) -> None:
        """Plan the fleet (identities, certificates); nothing listens until :meth:`start`.

        Raises:
            ValueError: a count, port or size out of range.
        """
        if not 0 <= port <= 65535 or (control_port is not None and not 0 <= control_port <= 65535):
            raise ValueError("ports must be 0..65535")
        if log_bytes < 0:
            raise ValueError("log_bytes must not be negative")
        idents = plan_identities(devices, seed)
        password = admin_password(seed)
        self.shared_port = can_bind(device_address(0, net))
        if not self.shared_port and port and port + devices - 1 > 65535:
            raise ValueError(f"ports {port}..{port + devices - 1} do not fit below 65536")
        profiles = {m: load_profile(profile_name(m, None)) for m in ("A20", "A30", "MVC")}
        self._servers: dict[str, DeviceServer] = {}
        for ident in idents:
            if self.shared_port:
                host, dev_port = device_address(ident.index, net), port
            else:  # only 127.0.0.1 is bindable here (e.g. macOS): one port per device
                host, dev_port = "127.0.0.1", (port + ident.index if port else 0)
            cert = make_certificate(
                host, ident.hostname, key_seed=f"hezo-sim:{seed}:{ident.index}:{host}:{dev_port}"
            )
            desc = SimDevice(
                id=ident.id,
                model=ident.model,
                host=host,
                port=dev_port,
                serial=ident.serial,
                mac=ident.mac,
                firmware=ident.firmware,
                hostname=ident.hostname,
                site=ident.site,
                room=ident.room,
                username=ADMIN_USER,
                password=password,
                cert_sha256=cert.sha256,
            )
            vcapi = None
            if vcapi_port is not None:  # the 6024 control API on the device's own address
                vcapi = VcApiServer(
                    host,
                    vcapi_port if (self.shared_port and port) else 0,
                    model=ident.model,
                    firmware=ident.firmware,
                    hardware=f"{ident.model}-HW.1",
                    product_id=ident.serial[:8],
                    call_state_getter=lambda: "idle",
                    seed=seed,
                )
            self._servers[ident.id] = DeviceServer(
                ident,
                desc,
                profiles[ident.model],
                cert,
                seed=seed,
                log_bytes=log_bytes,
                vcapi=vcapi,
                syslog_to=syslog_to,
            )
        self.devices: list[SimDevice] = [s.desc for s in self._servers.values()]
        self.syslog_to = syslog_to
        self.control_url: str | None = None
        self._control_port = control_port
        self._control_runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread and every server; return once all listen.

        Raises:
            RuntimeError: already started, or the fleet did not come up in time.
            OSError: an address or port cannot be bound (the fleet is stopped again).
        """
        if self._thread is not None:
            raise RuntimeError("the fleet is already running")
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(_quiet_exceptions)
        self._loop = loop
        self._thread = threading.Thread(target=_run_loop, args=(loop,), name="hezo-sim", daemon=True)
        self._thread.start()
        timeout_s = 15.0 + 0.05 * len(self._servers)
        try:
            self._call(self._astart(), timeout_s)
        except concurrent.futures.TimeoutError:
            self.stop()
            raise RuntimeError(f"the fleet did not start within {timeout_s:.0f} s") from None
        except BaseException:
            self.stop()
            raise
        log.info("fleet started devices=%d", len(self._servers))

    async def _astart(self) -> None:
        for i, server in enumerate(self._servers.values()):
            try:
                await server.start()
            except OSError as err:
                d = server.desc
                where = f"device {d.id}: cannot listen on {d.host}:{d.port}"
                raise OSError(err.errno, f"{where}: {err.strerror}") from err
            self.devices[i] = server.desc
        if self._control_port is not None:
            runner = web.AppRunner(make_app(self._servers), access_log=None)
            await runner.setup()
            self._control_runner = runner
            site = web.TCPSite(runner, "127.0.0.1", self._control_port, reuse_address=True)
            await site.start()
            port = runner.addresses[0][1]
            self.control_url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        """Stop every server and the loop thread; safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if thread.is_alive():
                self._call(self._astop(), CALL_TIMEOUT_S)
        except Exception as err:  # stopping must not raise: report and go on
            log.warning("fleet stop: %s", err)
        finally:
            if thread.is_alive():
                loop.call_soon_threadsafe(loop.stop)
            thread.join(CALL_TIMEOUT_S)
            self._loop = None
            self._thread = None
            self.control_url = None
        log.info("fleet stopped")

    async def _astop(self) -> None:
        for server in self._servers.values():
            await server.stop()
        if self._control_runner is not None:
            await self._control_runner.cleanup()
            self._control_runner = None

    def __enter__(self) -> Fleet:
        """Start the fleet."""
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the fleet."""
        self.stop()

    @property
    def running(self) -> bool:
        """Return whether the loop thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    def _call(self, coro: Coroutine[Any, Any, T], timeout_s: float = CALL_TIMEOUT_S) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    # --- devices and faults ------------------------------------------------------------------

    def device(self, device_id: str) -> SimDevice:
        """Return the device ``device_id``.

        Raises:
            KeyError: no such device.
        """
        return self._server(device_id).desc

    def _server(self, device_id: str) -> DeviceServer:
        try:
            return self._servers[device_id]
        except KeyError:
            raise KeyError(f"unknown device {device_id!r}") from None

    def fault(self, device_id: str, kind: str, arg: str | None = None) -> None:
        """Inject a fault (one of :data:`FAULT_KINDS`) into a device, live.

        Raises:
            KeyError: unknown device.
            ValueError: unknown kind, or a bad argument for it.
        """
        server = self._server(device_id)
        norm = parse_fault(kind, arg)
        if self.running:
            self._call(server.apply(kind, norm))
        else:
            server.record(kind, norm)

    def clear(self, device_id: str | None = None) -> None:
        """Remove every fault of one device, or of all devices when ``device_id`` is None.

        Raises:
            KeyError: unknown device.
        """
        servers = [self._server(device_id)] if device_id is not None else list(self._servers.values())
        for server in servers:
            if self.running:
                self._call(server.clear())
            else:
                server.reset()

    def faults(self) -> dict[str, list[str]]:
        """Return the active faults per device id (devices without faults included, empty)."""
        if self.running:
            return self._call(self._asnapshot())
        return {i: s.snapshot() for i, s in self._servers.items()}

    async def _asnapshot(self) -> dict[str, list[str]]:
        return {i: s.snapshot() for i, s in self._servers.items()}

    def write_agent_config(
        self,
        path: Path,
        *,
        data_dir: Path | None = None,
        poll_interval_s: float = 60,
        retry_interval_s: float = 10,
        timeout_s: float = 5,
        down_after: int = 3,
        up_after: int = 2,
        language: str = "en",
    ) -> Path:
        """Write an agent config for this fleet to ``path`` (password in ``<stem>.secret``).

        Raises:
            ValueError: ports are not assigned yet (``port=0`` and not started).
            OSError: the files cannot be written.
        """
        settings = {
            "poll_interval_s": poll_interval_s,
            "retry_interval_s": retry_interval_s,
            "timeout_s": timeout_s,
            "down_after": down_after,
            "up_after": up_after,
            "language": language,
        }
        return agentconfig.write_agent_config(
            self.devices, Path(path), data_dir=data_dir, agent=settings, syslog_to=self.syslog_to
        )


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _quiet_exceptions(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Log connection noise (resets, TLS errors from aborted clients) at debug, the rest as errors."""
    exc = context.get("exception")
    if isinstance(exc, ConnectionError | OSError | asyncio.CancelledError):
        log.debug("loop: %s", context.get("message"))
        return
    log.error("loop: %s (%r)", context.get("message"), exc)


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port on ``host`` that nothing listens on right now (for the agent's syslog receiver)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
