"""HTTP(S) to one device: shared TLS contexts, TOFU pinning, byte and time caps.

Every requests/urllib3/ssl/socket exception is translated here, once, into
:mod:`collectors.errors`. Connections share two module-level :class:`ssl.SSLContext` objects
(see :mod:`collectors.transports.http_pool`). A response is bounded in bytes (``max_bytes``)
and in time: per socket operation by the connect/read timeouts, and per request by an overall
deadline enforced both between body chunks and by a watchdog that shuts the socket down, so a
drip-feeding device cannot hold a poll, not even while the headers are still arriving. A
device's connection can stay open from one poll to the next (``keep_alive_s``): a TLS handshake
costs ~1.6 ms of CPU with OpenSSL 3.0, a fifth of a poll. A kept connection the device has closed
meanwhile is replaced before use; one it closes just as a request goes out is retried once on a
new connection. The TLS session can also be kept for connections that do close
(:class:`~collectors.transports.http_pool.TlsSessions`, off by default).

Requests go straight to one urllib3 connection pool per device, not through a
``requests.Session``: its per-request layer (merging settings, preparing, cookies) cost about
0.7 ms of CPU a request (bench/percall.py: 5.7 → 4.2 ms a poll of two requests). There is no
cookie jar: every profile logs in with a token header.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import ipaddress
import json as jsonlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import urllib3.exceptions
from urllib3 import Timeout
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.response import HTTPResponse as Urllib3Response

from collectors.device_signals import cert_not_after, clock_offset_s
from collectors.errors import (
    AuthFailed,
    CollectorError,
    DeviceTimeout,
    DeviceUnreachable,
    IdentityChanged,
    UnexpectedResponse,
)
from collectors.pins import PinStore, pin_key
from collectors.transports.http_pool import (
    NO_VERIFY_CONTEXT,
    Deadline,
    SharedContextAdapter,
    TlsSessions,
    device_pool,
    verify_context,
)

__all__ = [
    "NO_VERIFY_CONTEXT",
    "TLS_MODES",
    "HttpResponse",
    "HttpTransport",
    "SharedContextAdapter",
    "verify_context",
]

CHUNK_BYTES = 64 * 1024
#: what every request carries (a caller's headers may replace them)
BASE_HEADERS = {
    "User-Agent": "hezo-agent",
    "Accept-Encoding": "identity",
    "Accept": "*/*",
    "Connection": "keep-alive",
}
TLS_MODES = ("pin", "verify", "insecure")


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete, size-capped answer from a device; ``source`` names it in error messages."""

    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_ms: float
    source: str = ""
    connect_ms: float | None = None
    #: the device's clock minus ours, from its ``Date`` header (None: no usable header)
    clock_offset_s: float | None = None
    #: when the certificate of the TLS connection that answered expires (None: plain HTTP)
    cert_not_after: datetime | None = None

    def json(self) -> Any:
        """Decode the body as JSON.

        Raises:
            UnexpectedResponse: the body is not UTF-8 JSON.
        """
        try:
            return jsonlib.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise UnexpectedResponse(
                f"{self.source}: answer is not JSON ({len(self.body)} bytes, {type(err).__name__})"
            ) from err


# --- error translation ----------------------------------------------------------------------


def _chain(err: BaseException) -> list[BaseException]:
    """Every exception reachable from ``err`` through causes, contexts, ``reason`` and args."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [err]
    while todo:
        cur = todo.pop(0)
        if any(cur is s for s in seen) or len(seen) > 20:
            continue
        seen.append(cur)
        nxt: list[Any] = [cur.__cause__, cur.__context__, getattr(cur, "reason", None), *cur.args]
        todo.extend(x for x in nxt if isinstance(x, BaseException))
    return seen


def _refusal(chain: list[BaseException]) -> str | None:
    """Name a definite network-level refusal (DNS, refused, no route, reset), if there is one."""
    for exc in chain:
        if isinstance(exc, socket.gaierror):
            return "DNS lookup failed"
    for exc in chain:
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "no route to host"
        if isinstance(exc, ConnectionResetError):
            return "connection reset by the device"
    return None


def _why(err: BaseException) -> str:
    """A short, secret-free description of a connection-level failure."""
    chain = _chain(err)
    refused = _refusal(chain)
    if refused:
        return refused
    for exc in chain:
        if isinstance(exc, ssl.SSLError):
            return f"TLS failed: {exc.reason or exc}"
    for exc in chain:
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror.lower()
    last = chain[-1]
    # the text may quote what the device sent (e.g. a bad status line of binary garbage): escape it
    return f"{type(last).__name__}: {ascii(str(last))[1:-1][:160]}"


#: what a kept connection the device closed looks like when a request goes out on it
_CLOSED = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


def _closed_under_us(err: BaseException, deadline: Deadline) -> bool:
    """Whether ``err`` is a kept connection closed by the device as the request went out: no new
    connection was opened for this request (so it went out on a kept one), the device closed or
    reset it, and time is left. Worth one retry on a fresh connection; a timeout never is."""
    if deadline.opened or deadline.expired():
        return False
    chain = _chain(err)
    if any(isinstance(e, (TimeoutError, urllib3.exceptions.TimeoutError)) for e in chain):
        return False
    return any(isinstance(e, _CLOSED) for e in chain)


def _fingerprint_seen(err: BaseException) -> str:
    for exc in _chain(err):
        text = str(exc)
        if "Fingerprints did not match" in text and 'got "' in text:
            return text.split('got "', 1)[1].split('"', 1)[0]
    return "unknown"


class HttpTransport:
    """HTTP(S) to one device, with TLS pinning, byte caps and deadlines; one instance per device."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        scheme: str,
        tls_mode: str,
        pins: PinStore | None,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_bytes: int,
        total_timeout_s: float | None = None,
        keep_alive_s: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Prepare (without connecting) a transport to ``scheme://host:port``.

        A whole request (connect, TLS, headers, body) ends within ``total_timeout_s``, by default
        the longer of the two timeouts: the driver passes its ``timeout_s`` as both, and the
        config promises one device answer (connect + response) within ``timeout_s``.
        ``keep_alive_s``: how long :meth:`release` keeps the connection for the next poll (0: it
        closes it). ``monotonic`` dates kept connections and TLS sessions (tests pass a fake clock).

        Raises:
            ValueError: unknown scheme or TLS mode.
        """
        if scheme not in ("http", "https"):
            raise ValueError(f"scheme must be http or https, not {scheme!r}")
        if tls_mode not in TLS_MODES:
            raise ValueError(f"tls mode must be one of {', '.join(TLS_MODES)}, not {tls_mode!r}")
        self.host, self.port, self.scheme, self.tls_mode = host, port, scheme, tls_mode
        self.label = pin_key(host, port)
        self._pins = pins if pins is not None else PinStore(None)
        self._timeouts = (connect_timeout_s, read_timeout_s)
        self._timeout = Timeout(connect=connect_timeout_s, read=read_timeout_s)
        self.max_bytes = max_bytes
        self.total_timeout_s = total_timeout_s or max(connect_timeout_s, read_timeout_s)
        self.keep_alive_s = keep_alive_s
        self._monotonic = monotonic
        self._idle_since: float | None = None  # when release() kept the connection
        #: the device's TLS session across polls, with counts of full and resumed handshakes
        self.tls = TlsSessions(monotonic=monotonic)
        self._lock = threading.Lock()
        self._pool: HTTPConnectionPool | None = None
        self._pin_used: tuple[str | None] | None = None  # the pin of the last pool (None: no pool yet)
        self._cert_seen: tuple[bytes, datetime | None] | None = None  # last peer DER and its notAfter
        #: connections begun so far (kept ones are not counted again): an answer read while this
        #: stayed the same came over a connection open since then, i.e. from the same boot of the device
        self.connections_opened = 0

    @property
    def fingerprint(self) -> str | None:
        """The pinned SHA-256 of the device's certificate (pin mode), else None."""
        return self._pins.get(self.label) if self.tls_mode == "pin" else None

    def request(
        self, method: str, path: str, *, json: Any = None, headers: Mapping[str, str] | None = None
    ) -> HttpResponse:
        """Send one request and read the whole (capped) answer.

        Raises:
            DeviceUnreachable, DeviceTimeout, IdentityChanged, AuthFailed (401/403),
            UnexpectedResponse (over ``max_bytes``).
        """
        source = f"{self.label} {method} {path}"
        started = time.perf_counter()
        sent_at = time.time()
        with Deadline(self.total_timeout_s, self.tls) as deadline:
            resp = self._send(method, path, json, headers, deadline, source)
            offset = clock_offset_s(
                resp.headers.get("date"), sent_at + (deadline.connect_ms or 0.0) / 1000, time.time()
            )
            not_after = self._cert_not_after(resp)
            try:
                self._check_status(resp.status, source)
                body = b"".join(self._chunks(resp, deadline, source, self.max_bytes))
            except BaseException:
                resp.close()
                raise
            resp.release_conn()
        return HttpResponse(
            status=resp.status,
            headers={name.lower(): resp.headers[name] for name in resp.headers},  # repeats joined by ", "
            body=body,
            elapsed_ms=(time.perf_counter() - started) * 1000,
            source=source,
            connect_ms=deadline.connect_ms,
            clock_offset_s=offset,
            cert_not_after=not_after,
        )

    def download(
        self,
        path: str,
        dest: Path,
        *,
        headers: Mapping[str, str] | None = None,
        max_bytes: int,
        method: str = "GET",
        total_timeout_s: float | None = None,
    ) -> tuple[int, str]:
        """Stream ``path`` into ``dest``; return (size in bytes, sha256 hex). No partial file survives.

        Raises:
            DeviceUnreachable, DeviceTimeout, IdentityChanged, AuthFailed,
            UnexpectedResponse (non-2xx or over ``max_bytes``), CollectorError (cannot write).
        """
        source = f"{self.label} {method} {path}"
        tmp = dest.with_name(dest.name + ".part")
        digest, size = hashlib.sha256(), 0
        with Deadline(total_timeout_s or self.total_timeout_s, self.tls) as deadline:
            resp = self._send(method, path, None, headers, deadline, source)
            try:
                self._check_status(resp.status, source)
                if not 200 <= resp.status < 300:
                    raise UnexpectedResponse(f"{source}: answered HTTP {resp.status}")
                with tmp.open("wb") as fh:
                    for chunk in self._chunks(resp, deadline, source, max_bytes):
                        size += len(chunk)
                        digest.update(chunk)
                        fh.write(chunk)
                os.replace(tmp, dest)
            except BaseException as err:
                resp.close()
                tmp.unlink(missing_ok=True)
                if isinstance(err, OSError):
                    raise CollectorError(f"{source}: cannot write {dest}: {err.strerror}") from err
                raise
            resp.release_conn()
        return size, digest.hexdigest()

    def release(self) -> None:
        """End of a poll: keep the connection for the next one (``keep_alive_s``), or close it."""
        if self.keep_alive_s <= 0:
            self.close_idle()
            return
        with self._lock:
            self._idle_since = self._monotonic()

    def close_idle(self) -> None:
        """Close pooled keep-alive connections (one poll's worth); the transport stays usable.

        A kept TLS session stays: the next poll's connection resumes it.
        """
        with self._lock:
            pool, self._pool = self._pool, None  # the next request builds a new pool
        if pool is not None:
            pool.close()  # a request still reading hands its connection back to a closed pool: closed

    def close(self) -> None:
        """Release every connection."""
        self.close_idle()

    # --- internals ------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        json: Any,
        headers: Mapping[str, str] | None,
        deadline: Deadline,
        source: str,
    ) -> Urllib3Response:
        sent = {**BASE_HEADERS, **(headers or {})}
        body = None
        if json is not None:
            body = jsonlib.dumps(json).encode("utf-8")
            sent.setdefault("Content-Type", "application/json")
        try:
            return self._send_once_or_twice(method, path, body, sent, deadline, source)
        finally:
            if deadline.opened:
                with self._lock:
                    self.connections_opened += 1

    def _send_once_or_twice(
        self,
        method: str,
        path: str,
        body: bytes | None,
        sent: dict[str, str],
        deadline: Deadline,
        source: str,
    ) -> Urllib3Response:
        for attempt in (1, 2):
            pool = self._device_pool()
            try:
                resp = pool.urlopen(
                    method,
                    path,
                    body=body,
                    headers=sent,
                    retries=False,
                    redirect=False,
                    assert_same_host=False,
                    timeout=self._timeout,
                    preload_content=False,
                    release_conn=False,
                )
            except (urllib3.exceptions.HTTPError, OSError) as err:
                if attempt == 1 and _closed_under_us(err, deadline):
                    self.close_idle()  # the other kept connections are as old: start afresh
                    continue
                raise self._translate(err, deadline, source) from err
            return cast(Urllib3Response, resp)  # what a connection pool's urlopen always builds
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _chunks(self, raw: Urllib3Response, deadline: Deadline, source: str, cap: int) -> Iterator[bytes]:
        """Yield body chunks as they arrive, stopping at the overall deadline or past ``cap`` bytes."""
        declared = str(raw.headers.get("content-length", ""))
        if declared.isdigit() and int(declared) > cap:
            raise UnexpectedResponse(f"{source}: answer of {declared} bytes exceeds the {cap}-byte cap")
        total = 0
        while True:
            if deadline.expired():
                raise DeviceTimeout(f"{source}: answer not complete within {deadline.seconds:g} s")
            try:
                chunk = raw.read1(CHUNK_BYTES, decode_content=True)
            except (urllib3.exceptions.HTTPError, OSError) as err:
                raise self._translate(err, deadline, source) from err
            if not chunk:
                if deadline.fired:  # the watchdog cut the socket: a short answer is not a complete one
                    raise DeviceTimeout(f"{source}: answer not complete within {deadline.seconds:g} s")
                return
            total += len(chunk)
            if total > cap:
                raise UnexpectedResponse(f"{source}: answer exceeds the {cap}-byte cap")
            yield chunk

    def _check_status(self, status: int, source: str) -> None:
        if status in (401, 403):
            raise AuthFailed(f"{source}: device rejected the credentials (HTTP {status})")

    def _translate(self, err: BaseException, deadline: Deadline, source: str) -> CollectorError:
        chain = _chain(err)
        if deadline.fired:
            return DeviceTimeout(f"{source}: answer not complete within {deadline.seconds:g} s")
        if any("Fingerprints did not match" in str(e) for e in chain):
            self.tls.forget()
            return self._identity_changed(_fingerprint_seen(err))
        refused = _refusal(chain)
        if refused:
            return DeviceUnreachable(f"{source}: {refused}")
        connect_s, read_s = self._timeouts
        if any(
            isinstance(e, urllib3.exceptions.ConnectTimeoutError)
            and not isinstance(e, urllib3.exceptions.NewConnectionError)
            for e in chain
        ):
            return DeviceTimeout(f"{source}: connect timed out after {connect_s:g} s")
        if any(isinstance(e, (urllib3.exceptions.ReadTimeoutError, TimeoutError)) for e in chain):
            return DeviceTimeout(f"{source}: no answer within {read_s:g} s")
        return DeviceUnreachable(f"{source}: {_why(err)}")

    def _identity_changed(self, seen: str) -> IdentityChanged:
        expected = self._pins.get(self.label) or "unknown"
        return IdentityChanged(
            f"{self.label}: TLS certificate changed: pinned sha256 {expected[:16]}…, device now presents "
            f"{seen[:16]}…; no credentials were sent. Check the device, then remove its pin to re-trust."
        )

    def _cert_not_after(self, resp: Urllib3Response) -> datetime | None:
        """The expiry of the certificate the answering connection presented (parsed once per DER)."""
        sock = getattr(resp.connection, "sock", None)
        if not isinstance(sock, ssl.SSLSocket):
            return None
        try:
            der = sock.getpeercert(binary_form=True)
        except (ValueError, OSError):
            return None
        seen = self._cert_seen
        if seen is None or seen[0] != der:
            seen = self._cert_seen = (der or b"", cert_not_after(der))
        return seen[1]

    def _device_pool(self) -> HTTPConnectionPool:
        """The connection pool for the current TLS mode and pin, pinning on first contact."""
        pin: str | None = None
        ctx = NO_VERIFY_CONTEXT
        if self.scheme == "https" and self.tls_mode == "pin":
            pin = self._pin()
        elif self.scheme == "https" and self.tls_mode == "verify":
            ctx = verify_context()
        with self._lock:
            old = self._pool
            idle_since, self._idle_since = self._idle_since, None
            kept_too_long = idle_since is not None and self._monotonic() - idle_since > self.keep_alive_s
            if old is not None and self._pin_used == (pin,) and not kept_too_long:
                return old
            if self._pin_used is not None and self._pin_used != (pin,):
                self.tls.forget()  # a new pin: no session from under the old one is resumed
            self._pool = pool = device_pool(self.scheme, self.host, self.port, ctx, pin)
            self._pin_used = (pin,)
        if old is not None:
            old.close()
        return pool

    def _pin(self) -> str:
        try:
            pinned = self._pins.get(self.label)
            if pinned is None:
                pinned = self._pins.pin_if_absent(self.label, self._fetch_fingerprint())
        except (ValueError, OSError) as err:
            raise CollectorError(f"{self.label}: pin store problem: {err}") from err
        return pinned

    def _fetch_fingerprint(self) -> str:
        """Handshake once (bounded by the connect timeout) and hash the leaf certificate's DER.

        Raises:
            DeviceUnreachable, DeviceTimeout: as for a request.
        """
        source = f"{self.label} TLS handshake"
        timeout = self._timeouts[0]
        try:
            ipaddress.ip_address(self.host)
            sni: str | None = None
        except ValueError:
            sni = self.host
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as raw:
                raw.settimeout(timeout)
                # the base class's wrap_socket: a first contact never resumes a session
                with ssl.SSLContext.wrap_socket(NO_VERIFY_CONTEXT, raw, server_hostname=sni) as tls:
                    der = tls.getpeercert(binary_form=True)
        except TimeoutError as err:
            raise DeviceTimeout(f"{source}: no answer within {timeout:g} s") from err
        except OSError as err:
            raise DeviceUnreachable(f"{source}: {_why(err)}") from err
        if not der:
            raise DeviceUnreachable(f"{source}: the device presented no certificate")
        return hashlib.sha256(der).hexdigest()
