"""The plumbing under :mod:`collectors.transports.http`: shared TLS contexts and a deadline watchdog.

Two module-level :class:`ssl.SSLContext` objects serve every device connection (building one
per connection reloads the CA bundle: measured 10x the cost), handed to urllib3 through
:class:`SharedContextAdapter`. :class:`Deadline` bounds a whole request: the connection
classes below register their sockets with the deadline active in the calling thread, and a
timer shuts those sockets down when it expires, so not even a device drip-feeding its
headers can hold a poll.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.response import HTTPResponse as Urllib3Response

if TYPE_CHECKING:
    from requests.adapters import _HostParams, _PoolKwargs
    from urllib3._base_connection import BaseHTTPConnection


def _no_verify_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


#: Shared by every ``pin`` and ``insecure`` connection: the pin, not a CA, is the trust anchor.
NO_VERIFY_CONTEXT = _no_verify_context()


@functools.cache
def verify_context() -> ssl.SSLContext:
    """Return the one shared CA-verifying context (system store plus certifi), built on first use."""
    ctx = ssl.create_default_context()
    try:
        import certifi

        ctx.load_verify_locations(certifi.where())
    except (ImportError, OSError):
        pass
    return ctx


# --- overall deadline: a watchdog that shuts the request's sockets down ---------------------

_local = threading.local()


class Deadline:
    """One request's overall deadline; connections opened or read under it are shut at expiry."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.fired = False
        self.connect_ms: float | None = None
        self._conns: list[HTTPConnection] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        """Make this the calling thread's deadline and start the watchdog timer."""
        _local.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the watchdog; the thread has no deadline any more."""
        self._timer.cancel()
        _local.deadline = None

    def expired(self) -> bool:
        """Return whether the deadline has passed (or the watchdog already fired)."""
        return self.fired or time.monotonic() >= self.at

    def track(self, conn: HTTPConnection) -> None:
        """Shut ``conn`` down at expiry (at once if the deadline already fired)."""
        with self._lock:
            self._conns.append(conn)
            fired = self.fired
        if fired:
            _shutdown(conn)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            conns = list(self._conns)
        for conn in conns:
            _shutdown(conn)


def _shutdown(conn: HTTPConnection) -> None:
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _current() -> Deadline | None:
    return getattr(_local, "deadline", None)


def _watched_connect(conn: HTTPConnection, connect: Callable[[], None]) -> None:
    deadline = _current()
    if deadline is not None:
        deadline.track(conn)
    started = time.perf_counter()
    connect()
    if deadline is not None:
        deadline.connect_ms = (time.perf_counter() - started) * 1000


def _watched_response(conn: HTTPConnection) -> None:
    deadline = _current()
    if deadline is not None:
        deadline.track(conn)


class _WatchedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        _watched_connect(self, super().connect)

    def getresponse(self) -> Urllib3Response:  # type: ignore[override]
        _watched_response(self)
        return super().getresponse()


class _WatchedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        _watched_connect(self, super().connect)

    def getresponse(self) -> Urllib3Response:  # type: ignore[override]
        _watched_response(self)
        return super().getresponse()


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection

    def _validate_conn(self, conn: BaseHTTPConnection) -> None:
        # Connect early as urllib3 does, minus its per-request "unverified HTTPS" warning: trust
        # is decided by this module (a pinned fingerprint, or ``insecure`` chosen in the profile).
        HTTPConnectionPool._validate_conn(self, conn)
        if conn.is_closed:
            conn.connect()


class SharedContextAdapter(HTTPAdapter):
    """Hands urllib3 a shared SSLContext (and an optional pinned fingerprint) for every connection.

    ``cert_verify`` and the per-request pool key are neutralised so requests never makes urllib3
    load a CA bundle per connection or mutate the shared context into another mode.
    """

    def __init__(self, ssl_context: ssl.SSLContext, fingerprint: str | None = None) -> None:
        self._ssl_context = ssl_context
        self._fingerprint = fingerprint
        self._cert_reqs: Literal["CERT_REQUIRED", "CERT_NONE"] = (
            "CERT_NONE" if ssl_context.verify_mode == ssl.CERT_NONE else "CERT_REQUIRED"
        )
        super().__init__(pool_connections=1, pool_maxsize=4, max_retries=0)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        """Build the pool manager with the shared context and watchdog-aware connection pools."""
        pool_kwargs["ssl_context"] = self._ssl_context
        pool_kwargs["cert_reqs"] = self._cert_reqs
        pool_kwargs["assert_fingerprint"] = self._fingerprint
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: str | tuple[str, str] | None = None
    ) -> tuple[_HostParams, _PoolKwargs]:
        """Key pools by host, port and scheme plus the shared context, whatever ``verify`` says."""
        host_params, _ = super().build_connection_pool_key_attributes(request, verify, cert)
        return host_params, {"cert_reqs": self._cert_reqs, "ssl_context": self._ssl_context}

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Do nothing: the shared context already decides how certificates are checked."""
