"""A fleet of simulated Yealink devices on loopback, served by one asyncio loop in one thread.

Usage::

    with Fleet(devices=12, seed=1, port=0, ssh_port=0, snmp_port=0, ymcs=True) as fleet:
        fleet.fault("a30-01", "offline", "ssh")
        ...

SSH sessions run in threads (bounded by :class:`simulator.ssh_server.SshHub`, joined on stop);
everything else, SNMP and the mock YMCS included, runs on the fleet's one event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import logging
import os
import random
import socket
import string
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import paramiko
from aiohttp import web

from config.loader import load_profile, profile_name
from simulator import agentconfig
from simulator.certs import make_certificate
from simulator.control import make_app
from simulator.device import CHANNELS, FAULT_KINDS, DeviceServer, parse_fault
from simulator.identity import (
    ADMIN_USER,
    SimDevice,
    admin_password,
    can_bind,
    device_address,
    plan_identities,
)
from simulator.snmp_agent import SnmpAgent, SnmpCredentials, SnmpHub
from simulator.ssh_server import SshHub, SshServer, derived_key, private_key_text
from simulator.vcapi import VcApiServer
from simulator.ymcs import MockYmcs

__all__ = ["CHANNELS", "FAULT_KINDS", "Fleet", "SimDevice", "SnmpCredentials"]

log = logging.getLogger("hezo.simulator")
T = TypeVar("T")
CALL_TIMEOUT_S = 10.0
SSH_JOIN_S = 5.0


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
        ssh_port: int | None = None,
        snmp_port: int | None = None,
        ymcs: bool = False,
        ymcs_port: int | None = None,
        ssh_authorized_keys: Sequence[str] = (),
        cert_days: float | None = None,
    ) -> None:
        """Plan the fleet (identities, certificates, keys); nothing listens until :meth:`start`.

        ``ssh_port``/``snmp_port`` (None: off, 0: ephemeral ports) make every device serve SSH /
        SNMP on its own address, like ``vcapi_port``; ``ymcs=True`` (or a ``ymcs_port``) starts
        the mock YMCS cloud listing every device. ``ssh_authorized_keys`` are extra ``type
        base64`` public keys the devices accept besides :attr:`ssh_client_key`. ``cert_days``
        gives every device a certificate that expires that many days from now (default: 20 years).

        Raises:
            ValueError: a count, port, size or public key out of range.
        """
        channel_ports = (control_port, ssh_port, snmp_port, ymcs_port)
        if not 0 <= port <= 65535 or any(p is not None and not 0 <= p <= 65535 for p in channel_ports):
            raise ValueError("ports must be 0..65535")
        if log_bytes < 0:
            raise ValueError("log_bytes must not be negative")
        if cert_days is not None and not 0 < cert_days <= 36500:
            raise ValueError("cert_days must be in (0, 36500]")
        idents = plan_identities(devices, seed)
        password = admin_password(seed)
        self.shared_port = can_bind(device_address(0, net))
        if not self.shared_port and port and port + devices - 1 > 65535:
            raise ValueError(f"ports {port}..{port + devices - 1} do not fit below 65536")
        profiles = {m: load_profile(profile_name(m, None)) for m in ("A20", "A30", "MVC")}
        #: an OpenSSH private key every device accepts (derived from the seed; not a secret)
        self.ssh_client_key = private_key_text(f"hezo-sim:{seed}:ssh-client")
        authorized = [derived_key(f"hezo-sim:{seed}:ssh-client"), *_public_keys(ssh_authorized_keys)]
        #: bounds and joins the SSH session threads, when the fleet serves SSH
        self.ssh_hub = SshHub() if ssh_port is not None else None
        self._snmp_hub = SnmpHub(SnmpCredentials.from_seed(seed)) if snmp_port is not None else None
        #: the v2c community and v3 user every device answers, when the fleet serves SNMP
        self.snmp = self._snmp_hub.credentials if self._snmp_hub is not None else None
        self._servers: dict[str, DeviceServer] = {}
        for ident in idents:
            if self.shared_port:
                host, dev_port = device_address(ident.index, net), port
            else:  # only 127.0.0.1 is bindable here (e.g. macOS): one port per device
                host, dev_port = "127.0.0.1", (port + ident.index if port else 0)
            cert = make_certificate(
                host,
                ident.hostname,
                key_seed=f"hezo-sim:{seed}:{ident.index}:{host}:{dev_port}",
                valid_days=cert_days,
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
            server = self._servers[ident.id] = DeviceServer(
                ident,
                desc,
                profiles[ident.model],
                cert,
                seed=seed,
                log_bytes=log_bytes,
                vcapi=vcapi,
                syslog_to=syslog_to,
            )
            same_port = self.shared_port and port
            if self.ssh_hub is not None and ssh_port is not None:
                key_seed = f"hezo-sim:{seed}:{ident.index}:ssh-host"
                server.ssh = SshServer(
                    host,
                    ssh_port if same_port else 0,
                    hub=self.ssh_hub,
                    model=ident.model,
                    username=ADMIN_USER,
                    password=password,
                    host_keys=(derived_key(f"{key_seed}:0"), derived_key(f"{key_seed}:1")),
                    authorized_keys=authorized,
                    facts=server.shell_facts,
                )
            if self._snmp_hub is not None and snmp_port is not None:
                server.snmp = SnmpAgent(
                    self._snmp_hub, host, snmp_port if same_port else 0, mib=server.snmp_mib
                )
        self.devices: list[SimDevice] = [s.desc for s in self._servers.values()]
        self.syslog_to = syslog_to
        self.control_url: str | None = None
        self._control_port = control_port
        #: the mock YMCS cloud (base_url, client_id, client_secret, ca_path), when enabled
        self.ymcs: MockYmcs | None = None
        if ymcs or ymcs_port is not None:
            self.ymcs = MockYmcs(
                client_secret=_derived_secret(f"hezo-sim:{seed}:ymcs"),
                port=ymcs_port or 0,
                source=lambda: [s.ymcs_record() for s in self._servers.values()],
            )
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
        if self.ssh_hub is not None:
            self.ssh_hub.open()
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
        if self._snmp_hub is not None:
            await self._snmp_hub.astart()
        for i, server in enumerate(self._servers.values()):
            try:
                await server.start()
            except OSError as err:
                d = server.desc
                where = f"device {d.id}: cannot listen on {d.host}:{d.port}"
                raise OSError(err.errno, f"{where}: {err.strerror}") from err
            self.devices[i] = server.desc
        if self.ymcs is not None:
            await self.ymcs.astart()
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
            if self.ssh_hub is not None and self.ssh_hub.join(SSH_JOIN_S):
                log.warning("fleet stop: %d SSH session threads still running", self.ssh_hub.sessions)
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
        if self.ssh_hub is not None:
            self.ssh_hub.closing.set()
        for server in self._servers.values():
            await server.stop()
        if self._snmp_hub is not None:
            await self._snmp_hub.astop()
        if self.ymcs is not None:
            await self.ymcs.astop()
            self.ymcs.cleanup()
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

    def write_channel_secrets(self, path: Path) -> dict[str, Path]:
        """Write the secrets of the enabled channels beside ``path`` (a config file), each 0600.

        ``<stem>.ssh-key`` (the OpenSSH client key every device accepts), ``<stem>.snmp-community``,
        ``<stem>.snmp-auth-key``, ``<stem>.snmp-priv-key`` and ``<stem>.ymcs-secret``; returns
        them by name (``ssh_key``, ``snmp_community``, ...).

        Raises:
            OSError: a file cannot be written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        secrets: dict[str, str] = {}
        if self.ssh_hub is not None:
            secrets["ssh_key"] = self.ssh_client_key
        if self.snmp is not None:
            secrets.update(
                snmp_community=self.snmp.community,
                snmp_auth_key=self.snmp.auth_key,
                snmp_priv_key=self.snmp.priv_key,
            )
        if self.ymcs is not None:
            secrets["ymcs_secret"] = self.ymcs.client_secret
        return {
            name: _write_private(path.with_name(f"{path.stem}.{name.replace('_', '-')}"), text)
            for name, text in secrets.items()
        }


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


def _write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` readable by the owner only (0600), atomically."""
    partial = path.with_name(f".{path.name}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text if text.endswith("\n") else text + "\n")
    os.replace(partial, path)
    return path


def _derived_secret(seed_key: str) -> str:
    rng = random.Random(seed_key)
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(24))


def _public_keys(lines: Sequence[str]) -> list[paramiko.PKey]:
    """Parse ``type base64 [comment]`` public keys (authorized_keys lines).

    Raises:
        ValueError: a line that is not an SSH public key.
    """
    keys = []
    for line in lines:
        fields = line.split()
        try:
            keys.append(paramiko.PKey.from_type_string(fields[0], base64.b64decode(fields[1], validate=True)))
        except (IndexError, binascii.Error, paramiko.SSHException, ValueError):
            raise ValueError(f"not an SSH public key: {line[:40]!r}") from None
    return keys


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port on ``host`` that nothing listens on right now (for the agent's syslog receiver)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
