"""The plumbing under :mod:`collectors.transports.http`: shared TLS contexts and a deadline watchdog.

Two module-level :class:`ssl.SSLContext` objects serve every device connection (building one
per connection reloads the CA bundle: measured 10x the cost; one per device costs ~14 MB RSS
at 1,000 devices), handed to urllib3 through :class:`SharedContextAdapter`. :class:`Deadline`
bounds a whole request: the connection classes below register their sockets with the deadline
active in the calling thread, and one shared watchdog thread shuts those sockets down when it
expires, so not even a device drip-feeding its headers can hold a poll.

The request's deadline also carries the device's :class:`TlsSessions`: the shared contexts
offer its last TLS session on every new connection (urllib3 has no way to pass ``session=``),
so a device's later polls resume with an abbreviated handshake although every poll closes its
connections.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
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


#: a full handshake at least this often per device, even when it would resume: see TlsSessions
RESUME_MAX_AGE_S = 600.0

#: Off: keeping each device's session measured ~12 KB of native memory growth per poll
#: (CPython 3.11 / OpenSSL 3, 1,000 devices: +110 MB in 10 minutes, docs/benchmarks.md) for
#: ~0.13 ms of handshake CPU saved. The mechanism stays tested (tests switch it on) until the
#: growth is understood.
RESUME_SESSIONS = False


class TlsSessions:
    """One device's TLS session, offered on its next connection so later polls resume.

    A session is kept only from a connection that answered, so its certificate passed the pin
    check; urllib3 checks the fingerprint again on every connection, resumed ones
    included (a resumed session carries the certificate of its full handshake). Resuming proves
    the peer holds the ticket key of the server that completed that pinned handshake: an
    impostor cannot resume and gets a full handshake, and with it the pin check. Only a device
    that swaps its certificate yet keeps its ticket key would go unnoticed while it resumes, so
    a full handshake is forced once the last one is ``max_age_s`` old.
    """

    def __init__(
        self,
        max_age_s: float = RESUME_MAX_AGE_S,
        monotonic: Callable[[], float] = time.monotonic,
        enabled: bool | None = None,
    ):
        self.max_age_s = max_age_s
        self.enabled = RESUME_SESSIONS if enabled is None else enabled
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._session: ssl.SSLSession | None = None
        self._full_at = 0.0
        #: new connections (pin check passed) that did a full handshake / that resumed a kept session
        self.full = 0
        self.resumed = 0

    def offer(self) -> ssl.SSLSession | None:
        """Return the session to offer on a new connection (None: do a full handshake)."""
        with self._lock:
            if self._session is not None and self._monotonic() - self._full_at >= self.max_age_s:
                self._session = None
            return self._session

    def connected(self, sock: ssl.SSLSocket) -> None:
        """Count a new connection's handshake (full or resumed)."""
        with self._lock:
            if sock.session_reused:
                self.resumed += 1
            else:
                self.full += 1

    def keep(self, sock: ssl.SSLSocket) -> None:
        """Keep the session of ``sock``, which passed the pin check and answered (TLS 1.3 tickets
        arrive after the handshake: they are in the session once the answer's head was read)."""
        if not self.enabled:
            return
        try:
            session = sock.session
        except (ValueError, OSError):
            return
        if session is None or (not session.has_ticket and sock.version() == "TLSv1.3"):
            return  # TLS 1.3 resumes from tickets only (TLS 1.2 also from the server's session cache)
        with self._lock:
            if not sock.session_reused:
                self._full_at = self._monotonic()
            self._session = session

    def forget(self) -> None:
        """Drop the session (a new pin, an identity change): the next connection does a full handshake."""
        with self._lock:
            self._session = None


class _ResumingContext(ssl.SSLContext):
    """A shared client context that offers the calling request's device session (see TlsSessions)."""

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        """Wrap ``sock`` as the base class does, offering the current device's session if it has one."""
        deadline = _current()
        if session is None and not server_side and deadline is not None and deadline.sessions is not None:
            session = deadline.sessions.offer()
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname,
            session=session,
        )


def _no_verify_context() -> ssl.SSLContext:
    ctx = _ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


#: Shared by every ``pin`` and ``insecure`` connection: the pin, not a CA, is the trust anchor.
NO_VERIFY_CONTEXT = _no_verify_context()


@functools.cache
def verify_context() -> ssl.SSLContext:
    """Return the one shared CA-verifying context (system store plus certifi), built on first use."""
    ctx = _ResumingContext(ssl.PROTOCOL_TLS_CLIENT)  # what ssl.create_default_context() builds
    ctx.load_default_certs()
    try:
        import certifi

        ctx.load_verify_locations(certifi.where())
    except (ImportError, OSError):
        pass
    return ctx


# --- overall deadline: a watchdog that shuts the request's sockets down ---------------------

_local = threading.local()


class Deadline:
    """One request's overall deadline; connections opened or read under it are shut at expiry.

    ``sessions``: the device's TLS sessions, offered and counted on connections opened under it.
    """

    def __init__(self, seconds: float, sessions: TlsSessions | None = None) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.sessions = sessions
        self.fired = False
        self.done = False
        self.connect_ms: float | None = None
        #: a new connection was begun under this deadline (else the request went out on a kept one)
        self.opened = False
        self._conns: list[HTTPConnection] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Deadline:
        """Make this the calling thread's deadline and hand it to the watchdog."""
        _local.deadline = self
        _WATCHDOG.watch(self)
        return self

    def __exit__(self, *exc: object) -> None:
        """Release the deadline (the watchdog drops it); the thread has no deadline any more."""
        with self._lock:
            self.done = True
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
        with self._lock:  # held while shutting down: a released request's sockets are never touched
            if self.done:
                return
            self.fired = True
            for conn in self._conns:
                _shutdown(conn)


class _Watchdog:
    """One daemon thread firing every expired :class:`Deadline`.

    A ``threading.Timer`` per request started a thread per request: measured 0.27 ms CPU each,
    two or three per poll. Released deadlines stay in the heap until due and are skipped then.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: Deadline) -> None:
        """Fire ``deadline`` when it expires (unless it is released first)."""
        with self._cond:
            heapq.heappush(self._heap, (deadline.at, next(self._seq), deadline))
            if self._thread is None or not self._thread.is_alive():  # first use, or after a fork
                self._thread = threading.Thread(target=self._run, name="http-deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is deadline:
                self._cond.notify()  # due before whatever the thread waits for

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2].done:
                        heapq.heappop(self._heap)
                    wait_s = self._heap[0][0] - time.monotonic() if self._heap else None
                    if wait_s is not None and wait_s <= 0:
                        due = heapq.heappop(self._heap)[2]
                        break
                    self._cond.wait(wait_s)
            due._fire()  # outside the lock: shutting sockets down must not hold up new requests


_WATCHDOG = _Watchdog()


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
        deadline.opened = True
        deadline.track(conn)
    started = time.perf_counter()
    connect()
    if deadline is not None:
        deadline.connect_ms = (time.perf_counter() - started) * 1000
        sock = getattr(conn, "sock", None)
        if deadline.sessions is not None and isinstance(sock, ssl.SSLSocket):
            deadline.sessions.connected(sock)


def _watched_response(conn: HTTPConnection) -> None:
    deadline = _current()
    if deadline is not None:
        deadline.track(conn)


def _keep_session(conn: HTTPConnection) -> None:
    """Keep the session of a connection that answered: its pin check passed when it connected, and
    reading the answer's head has processed the TLS 1.3 tickets the device sent before it."""
    deadline = _current()
    sock = getattr(conn, "sock", None)
    if deadline is not None and deadline.sessions is not None and isinstance(sock, ssl.SSLSocket):
        deadline.sessions.keep(sock)


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
        resp = super().getresponse()
        _keep_session(self)
        return resp


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


def device_pool(
    scheme: str, host: str, port: int, ssl_context: ssl.SSLContext, fingerprint: str | None = None
) -> HTTPConnectionPool:
    """One device's urllib3 pool: watchdog-aware connections, the shared context, the pin.

    No retries and no redirects (the caller asks for neither), at most 4 kept connections.
    """
    if scheme == "http":
        return _HTTPPool(host, port, maxsize=4, block=False, retries=False)
    return _HTTPSPool(
        host,
        port,
        maxsize=4,
        block=False,
        retries=False,
        ssl_context=ssl_context,
        cert_reqs=_cert_reqs(ssl_context),
        assert_fingerprint=fingerprint,
    )


def _cert_reqs(ssl_context: ssl.SSLContext) -> Literal["CERT_REQUIRED", "CERT_NONE"]:
    """urllib3's name for the context's own verify mode, so urllib3 never switches the shared
    context into another mode."""
    return "CERT_NONE" if ssl_context.verify_mode == ssl.CERT_NONE else "CERT_REQUIRED"


class SharedContextAdapter(HTTPAdapter):
    """Hands urllib3 a shared SSLContext (and an optional pinned fingerprint) for every connection.

    ``cert_verify`` and the per-request pool key are neutralised so requests never makes urllib3
    load a CA bundle per connection or mutate the shared context into another mode.
    """

    def __init__(self, ssl_context: ssl.SSLContext, fingerprint: str | None = None) -> None:
        self._ssl_context = ssl_context
        self._fingerprint = fingerprint
        self._cert_reqs = _cert_reqs(ssl_context)
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
