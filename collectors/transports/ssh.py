"""The SSH channel (paramiko): login, status commands and log files, bounded in time and bytes.

Host keys are checked against the agent's own known_hosts (:mod:`collectors.known_hosts`)
*before* any credential is sent: the transport runs the key exchange, compares the server's
key, and only then authenticates, so a changed key raises :class:`IdentityChanged` with no
password or signature on the wire. Every operation has a deadline and a byte cap; library
errors are translated here, once, into :mod:`collectors.errors`. Secrets are passed in by the
caller (see :func:`read_secrets`) and never appear in logs, reprs or exception messages.
One :class:`SshTransport` per device; it is not thread-safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import paramiko

from collectors.errors import AuthFailed, CollectorError, DeviceTimeout, DeviceUnreachable, UnexpectedResponse
from collectors.known_hosts import HostKey, KnownHosts
from collectors.models import ChannelResult
from collectors.transports.ssh_io import (
    CHUNK,
    CommandResult,
    GuardedSocket,
    LocalError,
    Watchdog,
    abort_channel,
    drain_channel,
    key_type_of,
    local_io,
    open_socket,
    translate,
)
from collectors.transports.ssh_settings import (
    SSH_PORT,
    SshChannel,
    SshCommand,
    SshLogFile,
    SshSecrets,
    load_private_key,
    read_secrets,
)

__all__ = [
    "SSH_PORT",
    "CommandResult",
    "SshChannel",
    "SshCommand",
    "SshLogFile",
    "SshSecrets",
    "SshTransport",
    "load_private_key",
    "read_secrets",
]

#: paramiko's own log lines go here, silenced: every failure is raised as a collector error
WIRE_LOGGER = "collectors.transports.ssh.wire"
logging.getLogger(WIRE_LOGGER).setLevel(logging.CRITICAL)


# --- the transport ----------------------------------------------------------------------------


class SshTransport:
    """One device's SSH connection: host key pinned on first use, then login, commands, SFTP."""

    name = "ssh"

    def __init__(
        self,
        host: str,
        *,
        username: str,
        known_hosts: KnownHosts,
        port: int = SSH_PORT,
        password: str | None = None,
        key_text: str | None = None,
        key_path: Path | None = None,
        key_passphrase: str | None = None,
        timeout_s: float = 5.0,
        max_bytes: int = 1_000_000,
        commands: Sequence[SshCommand] = (),
    ) -> None:
        """Prepare (not open) a connection; a private key is parsed now.

        Raises:
            ValueError: no credential, both key_text and key_path, an unreadable key, or bad bounds.
        """
        if timeout_s <= 0 or max_bytes < 1:
            raise ValueError("need timeout_s > 0 and max_bytes >= 1")
        if key_text is not None and key_path is not None:
            raise ValueError("give key_text or key_path, not both")
        if key_path is not None:
            try:
                key_text = key_path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                raise ValueError(f"SSH private key file {key_path} cannot be read") from None
        if password is None and key_text is None:
            raise ValueError("SSH needs a password or a private key")
        self.host = host
        self.port = port
        self.username = username
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.commands = tuple(commands)
        self.known_hosts = known_hosts
        self.server_banner: str | None = None
        self.host_key: HostKey | None = None
        self.bytes_read = 0
        self._password = password
        self._pkey = load_private_key(key_text, key_passphrase) if key_text is not None else None
        self._source = f"ssh {host}:{port}" if ":" not in host else f"ssh [{host}]:{port}"
        self._transport: Any = None
        self._guard: GuardedSocket | None = None

    @classmethod
    def from_settings(
        cls, host: str, settings: SshChannel, secrets: SshSecrets, known_hosts: KnownHosts
    ) -> SshTransport:
        """Build a transport from a profile's :class:`SshChannel` and secrets from :func:`read_secrets`.

        Raises:
            ValueError: the secrets hold no credential or an unreadable key.
        """
        return cls(
            host,
            port=settings.port,
            username=settings.username,
            known_hosts=known_hosts,
            password=secrets.password,
            key_text=secrets.key_text,
            key_passphrase=secrets.key_passphrase,
            timeout_s=settings.timeout_s,
            max_bytes=settings.max_bytes,
            commands=settings.commands,
        )

    def __repr__(self) -> str:
        return f"SshTransport({self.username}@{self.host}:{self.port})"

    def __enter__(self) -> SshTransport:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent); the next operation reconnects."""
        transport, self._transport = self._transport, None
        guard, self._guard = self._guard, None
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()
        if guard is not None:
            with contextlib.suppress(OSError):
                guard.close()

    # --- connect ---------------------------------------------------------------------------

    def connect(self, deadline: float | None = None) -> None:
        """Open, verify the host key, and log in (no-op if already logged in), before ``deadline``.

        Raises:
            DeviceUnreachable: refused, no route, DNS failure, closed before login.
            DeviceTimeout: no banner, key exchange or login answer in time.
            IdentityChanged: the host key differs from the stored one (no credential was sent).
            AuthFailed: the device rejected the login.
            UnexpectedResponse: not an SSH server (garbage, binary, over a byte cap), no common algorithms.
            OSError: the known_hosts file cannot be read or written.
        """
        if self._transport is not None and self._transport.is_active() and self._transport.is_authenticated():
            return
        self.close()
        deadline = time.monotonic() + self.timeout_s if deadline is None else deadline
        known_types = {k.key_type for k in self.known_hosts.keys_for(self.host, self.port)}
        sock = open_socket(self.host, self.port, self._left(deadline, "connect"), self._source)
        guard = self._guard = GuardedSocket(sock, self._source)
        stage = "key exchange"
        try:
            transport = self._transport = paramiko.Transport(guard)
            transport.set_log_channel(WIRE_LOGGER)
            left = self._left(deadline, "SSH banner")
            # paramiko's own timers are backstops: this method's deadline fires first
            transport.banner_timeout = transport.handshake_timeout = left + 1
            self._prefer(transport, known_types)
            done = threading.Event()
            transport.start_client(event=done)
            self._await(transport, done, deadline)
            self.server_banner = guard.banner
            offered = transport.get_remote_server_key()
            self.host_key = HostKey(offered.get_name(), offered.asbytes())
            stage = "known_hosts"
            self.known_hosts.verify(self.host, self.port, self.host_key)  # before any credential
            stage = "login"
            self._login(transport, deadline)
            guard.limit = None
        except BaseException as err:
            self.close()
            if isinstance(err, CollectorError) or stage == "known_hosts" or not isinstance(err, Exception):
                raise
            raise translate(err, self._source, stage, guard, self.username) from err
        finally:
            self.bytes_read = guard.bytes_read

    @staticmethod
    def _prefer(transport: Any, known_types: set[str]) -> None:
        """Offer the algorithms of already-known key types first, as OpenSSH does."""
        if known_types:
            options = transport.get_security_options()
            options.key_types = sorted(options.key_types, key=lambda alg: key_type_of(alg) not in known_types)

    def _await(self, transport: Any, done: threading.Event, deadline: float) -> None:
        while not done.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
            if not transport.is_active():
                break
            if time.monotonic() >= deadline:
                guard = self._guard
                assert guard is not None
                if guard.sent_garbage():
                    raise UnexpectedResponse(f"{self._source}: not an SSH server (sent {guard.garbage()!r})")
                if guard.banner is None:
                    raise DeviceTimeout(f"{self._source}: no SSH banner within {self.timeout_s:g} s")
                raise DeviceTimeout(f"{self._source}: key exchange not complete within {self.timeout_s:g} s")
        if not transport.is_active():
            raise translate(
                transport.get_exception() or EOFError(),
                self._source,
                "key exchange",
                self._guard,
                self.username,
            )

    def _login(self, transport: Any, deadline: float) -> None:
        tried: list[str] = []
        for method in ("publickey", "password"):
            if (method == "publickey" and self._pkey is None) or (
                method == "password" and self._password is None
            ):
                continue
            transport.auth_timeout = self._left(deadline, "login")
            tried.append(method)
            try:
                if method == "publickey":
                    transport.auth_publickey(self.username, self._pkey)
                else:
                    transport.auth_password(self.username, self._password)
            except paramiko.BadAuthenticationType as err:
                tried[-1] += f" (server allows {', '.join(err.allowed_types) or 'nothing'})"
            except paramiko.AuthenticationException as err:
                if "timeout" in str(err).lower() or time.monotonic() >= deadline:
                    raise DeviceTimeout(
                        f"{self._source}: no login answer within {self.timeout_s:g} s"
                    ) from err
                if not transport.is_active():
                    raise DeviceUnreachable(f"{self._source}: connection closed during login") from err
            if transport.is_authenticated():
                return
        raise AuthFailed(f"{self._source}: login as {self.username!r} rejected ({'; '.join(tried)})")

    def _left(self, deadline: float, what: str) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeviceTimeout(f"{self._source}: {what} not complete within {self.timeout_s:g} s")
        return left

    # --- operations ------------------------------------------------------------------------

    def run(
        self, command: str, *, timeout_s: float | None = None, max_bytes: int | None = None
    ) -> CommandResult:
        """Run one command; stdout+stderr are cut at ``max_bytes`` (``truncated``, command killed).

        The deadline (``timeout_s``, default the transport's) starts once logged in; connecting,
        if needed, has its own ``timeout_s``.

        Raises:
            DeviceTimeout: the command was still running at the deadline (it is killed).
            DeviceUnreachable, AuthFailed, IdentityChanged, UnexpectedResponse: as for :meth:`connect`;
                UnexpectedResponse also when the device refuses to run commands.
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        cap = self.max_bytes if max_bytes is None else max_bytes
        self.connect()
        started = time.monotonic()
        deadline = started + timeout_s
        label = f"command {command[:60]!r}"
        chan = self._session(label, deadline, window=min(max(cap + 1, 2 * CHUNK), 2 * 1024 * 1024))
        out, err_out = bytearray(), bytearray()
        outcome = "deadline"
        with Watchdog(deadline, lambda: abort_channel(chan)) as dog:
            try:
                chan.settimeout(timeout_s)
                chan.exec_command(command)
                outcome = drain_channel(chan, out, err_out, cap, deadline)
            except Exception as err:
                raise self._op_error(err, label, deadline, dog.fired) from err
            finally:
                if outcome == "exited":
                    chan.close()
                else:
                    abort_channel(chan)
        if outcome == "deadline" or (dog.fired and chan.exit_status < 0):
            raise DeviceTimeout(f"{self._source}: {label} still running after {timeout_s:g} s")
        truncated = outcome == "truncated"
        status = None if truncated or chan.exit_status < 0 else int(chan.exit_status)
        elapsed_ms = (time.monotonic() - started) * 1000
        return CommandResult(status, bytes(out), bytes(err_out), truncated, elapsed_ms)

    def _session(self, label: str, deadline: float, window: int | None = None) -> Any:
        """Open a session channel before ``deadline``."""
        try:
            return self._transport.open_session(window_size=window, timeout=self._left(deadline, label))
        except Exception as err:
            raise self._op_error(err, f"opening a session for {label}", deadline, False) from err

    def _op_error(self, err: Exception, label: str, deadline: float, fired: bool) -> CollectorError:
        """Translate an error of a command or transfer: past the deadline it is a timeout."""
        if isinstance(err, CollectorError):
            return err
        if fired or time.monotonic() >= deadline:
            return DeviceTimeout(f"{self._source}: {label} not complete in time")
        return translate(err, self._source, label, None, self.username)

    def fetch(
        self, remote_path: str, dest: Path, *, timeout_s: float | None = None, max_bytes: int
    ) -> tuple[int, str]:
        """Stream ``remote_path`` over SFTP into ``dest``; return (size in bytes, SHA-256 hex).

        The file is written to ``dest`` + ``.part`` and renamed when complete; on any failure the
        partial file is removed and ``dest`` is left as it was.

        Raises:
            DeviceTimeout: the transfer did not finish within ``timeout_s``.
            UnexpectedResponse: no SFTP, no such file, permission denied, or over ``max_bytes``.
            DeviceUnreachable, AuthFailed, IdentityChanged: as for :meth:`connect`.
            OSError: ``dest`` cannot be written (a local problem, not the device's).
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        self.connect()
        deadline = time.monotonic() + timeout_s
        part = dest.with_name(dest.name + ".part")
        label = f"fetching {remote_path[:80]!r}"
        chan = self._session(label, deadline)
        digest = hashlib.sha256()
        size = 0
        ok = False
        with Watchdog(deadline, chan.close) as dog:
            try:
                chan.settimeout(timeout_s)
                chan.invoke_subsystem("sftp")
                sftp = paramiko.SFTPClient(chan)
                announced = sftp.stat(remote_path).st_size
                if announced is not None and announced > max_bytes:
                    raise UnexpectedResponse(
                        f"{self._source}: {remote_path} is {announced} bytes, over {max_bytes}"
                    )
                with sftp.open(remote_path, "rb") as remote, local_io(part.open, "wb") as local:
                    while chunk := remote.read(min(CHUNK, max_bytes - size + 1)):
                        size += len(chunk)
                        if size > max_bytes:
                            raise UnexpectedResponse(
                                f"{self._source}: {remote_path} is over {max_bytes} bytes"
                            )
                        digest.update(chunk)
                        local_io(local.write, chunk)
                        chan.settimeout(self._left(deadline, label))
                local_io(os.replace, part, dest)
                ok = True
            except LocalError as err:
                raise err.error from None
            except OSError as err:
                remote_refusal = err.errno is None or isinstance(err, (FileNotFoundError, PermissionError))
                if remote_refusal and not isinstance(err, TimeoutError):
                    why = (err.strerror or str(err) or type(err).__name__).lower()
                    raise UnexpectedResponse(f"{self._source}: {remote_path}: {why}") from err
                raise self._op_error(err, label, deadline, dog.fired) from err
            except Exception as err:
                raise self._op_error(err, label, deadline, dog.fired) from err
            finally:
                chan.close()
                if not ok:
                    with contextlib.suppress(OSError):
                        part.unlink()
        return size, digest.hexdigest()

    def probe(self, commands: Sequence[str | SshCommand] | None = None) -> ChannelResult:
        """Connect and log in afresh, then run the status commands (default: the profile's).

        Each command's stdout text lands in ``fields`` (under its name, or the command text).
        The whole probe is bounded by ``timeout_s``. A command that fails (non-zero exit, cut at
        the byte cap, or out of time) gives a result with ``ok=False`` that keeps what was learned.

        Raises:
            DeviceUnreachable, DeviceTimeout, AuthFailed, IdentityChanged, UnexpectedResponse:
                connecting or logging in failed (see :meth:`connect`).
        """
        todo = self.commands if commands is None else tuple(commands)
        started = time.monotonic()
        deadline = started + self.timeout_s
        self.close()
        try:
            self.connect(deadline)
            latency_ms = (time.monotonic() - started) * 1000
            assert self.host_key is not None
            fields: dict[str, object] = {
                "ssh_banner": self.server_banner or "",
                "ssh_host_key": self.host_key.fingerprint,
            }
            for item in todo:
                name, text = (item.name, item.command) if isinstance(item, SshCommand) else (item, item)
                try:
                    result = self.run(text, timeout_s=max(deadline - time.monotonic(), 0.001))
                except DeviceTimeout as err:
                    return ChannelResult(
                        self.name, False, err.reason, latency_ms, f"{name}: timed out", fields
                    )
                fields[name] = result.text.strip()
                if result.truncated or result.exit_status != 0:
                    why = (
                        "output over the byte cap"
                        if result.truncated
                        else f"exit status {result.exit_status}"
                    )
                    detail = f"{name}: {why}"
                    return ChannelResult(
                        self.name, False, UnexpectedResponse.reason, latency_ms, detail, fields
                    )
        finally:
            self.close()
        detail = f"logged in as {self.username}" + (f", {len(todo)} command(s)" if todo else "")
        return ChannelResult(self.name, True, "ok", latency_ms, detail, fields)
