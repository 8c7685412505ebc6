"""HttpTransport against real servers on 127.0.0.1: errors, deadlines, byte caps, TOFU pinning."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import collectors.pins
from agent.clock import FakeClock
from collectors.errors import (
    AuthFailed,
    DeviceTimeout,
    DeviceUnreachable,
    IdentityChanged,
    UnexpectedResponse,
)
from collectors.pins import PinStore, pin_key
from collectors.transports import http_pool
from collectors.transports.http import (
    NO_VERIFY_CONTEXT,
    HttpTransport,
    SharedContextAdapter,
    verify_context,
)
from collectors.transports.http_pool import RESUME_MAX_AGE_S
from simulator.certs import make_certificate, server_context
from simulator.fleet import Fleet

Handler = Callable[[socket.socket, "Server"], None]


def make_cert(folder: Path, name: str) -> tuple[ssl.SSLContext, str]:
    """A throwaway self-signed certificate for 127.0.0.1: (server context, sha256 of its DER)."""
    cert = make_certificate("127.0.0.1", name)
    return server_context(cert), cert.sha256


class Server:
    """A tiny TCP (optionally TLS) server on 127.0.0.1 running ``handler`` per connection."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None, port: int = 0) -> None:
        self.handler, self.tls = handler, tls
        self.sock = socket.create_server(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.accepted = 0  # connections accepted so far
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.handler(conn, self)
        except OSError:
            pass
        finally:
            conn.close()

    def read_request(self, conn: socket.socket) -> bytes:
        """Read one request head (and a Content-Length body), record it, return it."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                while len(body) < int(line.split(b":")[1]):
                    body += conn.recv(65536)
        self.received += head + b"\r\n\r\n" + body
        return head + b"\r\n\r\n" + body

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() so the port is freed
        self.sock.close()
        for thread in self._threads:
            thread.join(timeout=2)


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(handler: Handler, tls: ssl.SSLContext | None = None, port: int = 0) -> Server:
        servers.append(Server(handler, tls, port))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def answer(status: int = 200, body: bytes = b"{}") -> Handler:
    """A handler that reads one request and answers with ``body``."""

    def handle(conn: socket.socket, server: Server) -> None:
        server.read_request(conn)
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nContent-Type: application/json\r\n\r\n"
        conn.sendall(head.encode() + body)

    return handle


def unbounded(payload: bytes, pause_s: float = 0.0, head: bytes = b"HTTP/1.1 200 OK\r\n\r\n") -> Handler:
    """A handler that sends ``head`` then repeats ``payload`` (close-delimited body) for up to 5 s."""

    def handle(conn: socket.socket, server: Server) -> None:
        server.read_request(conn)
        conn.sendall(head)
        give_up = time.monotonic() + 5  # so a broken deadline fails the test instead of hanging it
        while not server.stop.is_set() and time.monotonic() < give_up:
            conn.sendall(payload)
            if pause_s:
                server.stop.wait(pause_s)

    return handle


def hang(conn: socket.socket, server: Server) -> None:
    """Accept, read whatever arrives, never answer."""
    while not server.stop.is_set():
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            return
        server.received += chunk


def transport(
    port: int,
    *,
    scheme: str = "https",
    tls: str = "insecure",
    pins: PinStore | None = None,
    timeout_s: float = 2.0,
    max_bytes: int = 100_000,
    total_s: float | None = None,
    keep_alive_s: float = 0.0,
    clock: FakeClock | None = None,
) -> HttpTransport:
    return HttpTransport(
        host="127.0.0.1",
        port=port,
        scheme=scheme,
        tls_mode=tls,
        pins=pins,
        connect_timeout_s=timeout_s,
        read_timeout_s=timeout_s,
        max_bytes=max_bytes,
        total_timeout_s=total_s,
        keep_alive_s=keep_alive_s,
        monotonic=clock.monotonic if clock is not None else time.monotonic,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[ssl.SSLContext, str]]:
    folder = tmp_path_factory.mktemp("certs")
    return {name: make_cert(folder, name) for name in ("one", "two")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_json_answer_over_https_is_returned_whole(serve, certs) -> None:
    server = serve(answer(body=b'{"data": {"serial": "S1"}}'), certs["one"][0])
    resp = transport(server.port).request("GET", "/api/device/info")
    assert (resp.status, resp.json(), resp.headers["content-type"]) == (
        200,
        {"data": {"serial": "S1"}},
        "application/json",
    )
    assert resp.elapsed_ms > 0 and resp.connect_ms is not None
    assert server.received.startswith(b"GET /api/device/info HTTP/1.1")


def test_refused_port_is_unreachable_and_names_host() -> None:
    port = free_port()
    with pytest.raises(DeviceUnreachable, match=rf"127\.0\.0\.1:{port} .*connection refused"):
        transport(port, scheme="http").request("GET", "/")


def test_refused_port_in_pin_mode_is_unreachable_and_pins_nothing(tmp_path: Path) -> None:
    pins = PinStore(tmp_path / "pins.json")
    with pytest.raises(DeviceUnreachable, match="connection refused"):
        transport(free_port(), tls="pin", pins=pins).request("GET", "/")
    assert pins.snapshot() == {}


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_silent_server_times_out_within_the_read_timeout(serve, scheme: str) -> None:
    server = serve(hang)
    started = time.monotonic()
    with pytest.raises(DeviceTimeout, match=r"127\.0\.0\.1:\d+"):
        transport(server.port, scheme=scheme, timeout_s=0.3).request("GET", "/")
    assert time.monotonic() - started < 1.2


def test_silent_server_on_first_contact_times_out_without_pinning(serve, tmp_path: Path) -> None:
    server = serve(hang)
    pins = PinStore(tmp_path / "pins.json")
    with pytest.raises(DeviceTimeout):
        transport(server.port, tls="pin", pins=pins, timeout_s=0.3).request("GET", "/")
    assert pins.snapshot() == {}


def test_drip_fed_body_hits_the_overall_deadline(serve, certs) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 90000\r\n\r\n"
    server = serve(unbounded(b"x", pause_s=0.02, head=head), certs["one"][0])
    started = time.monotonic()
    with pytest.raises(DeviceTimeout, match=r"within 0\.6 s"):
        transport(server.port, timeout_s=0.3, total_s=0.6).request("GET", "/")
    assert time.monotonic() - started < 1.5


def test_drip_fed_headers_hit_the_overall_deadline(serve) -> None:
    server = serve(unbounded(b"x", pause_s=0.02, head=b"HTTP/1.1 200 OK\r\nX-Slow: "))
    started = time.monotonic()
    with pytest.raises(DeviceTimeout, match=r"within 0\.6 s"):
        transport(server.port, scheme="http", timeout_s=0.3, total_s=0.6).request("GET", "/")
    assert time.monotonic() - started < 1.5


def test_a_drip_fed_answer_is_cut_at_the_device_timeout_by_default(serve, certs) -> None:
    """agent.timeout_s promises one answer (connect + response) within it: no 2 x (connect + read)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 90000\r\n\r\n"
    server = serve(unbounded(b"x", pause_s=0.02, head=head), certs["one"][0])
    started = time.monotonic()
    with pytest.raises(DeviceTimeout, match=r"within 0\.4 s"):
        transport(server.port, timeout_s=0.4).request("GET", "/")
    assert time.monotonic() - started < 0.4 + 0.5


def test_declared_huge_body_is_refused_at_the_cap(serve, certs) -> None:
    server = serve(answer(body=b"x" * 200_000), certs["one"][0])
    with pytest.raises(UnexpectedResponse, match="exceeds the 100000-byte cap"):
        transport(server.port).request("GET", "/")


def test_endless_body_is_cut_at_the_cap(serve, certs) -> None:
    server = serve(unbounded(b"y" * 4096), certs["one"][0])
    with pytest.raises(UnexpectedResponse, match="exceeds the 100000-byte cap"):
        transport(server.port).request("GET", "/")


def test_bad_json_is_an_unexpected_response(serve) -> None:
    server = serve(answer(body=b"<html>oops</html>"))
    resp = transport(server.port, scheme="http").request("GET", "/x")
    with pytest.raises(UnexpectedResponse, match=r"127\.0\.0\.1:\d+ GET /x: answer is not JSON"):
        resp.json()


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_credentials_are_auth_failed_without_the_password(serve, status: int) -> None:
    server = serve(answer(status=status))
    with pytest.raises(AuthFailed, match=f"HTTP {status}") as caught:
        transport(server.port, scheme="http").request("POST", "/login", json={"password": "s3cret-pw"})
    assert "s3cret-pw" not in str(caught.value)
    assert b"s3cret-pw" in server.received  # it was sent, so the message really left it out


def test_first_contact_pins_and_the_same_certificate_keeps_working(serve, certs, tmp_path: Path) -> None:
    ctx, sha = certs["one"]
    server = serve(answer(body=b'{"ok": true}'), ctx)
    pins = PinStore(tmp_path / "pins.json")
    t = transport(server.port, tls="pin", pins=pins)
    assert t.request("GET", "/").json() == {"ok": True}
    assert json.loads((tmp_path / "pins.json").read_text()) == {f"127.0.0.1:{server.port}": sha}
    assert t.fingerprint == sha
    again = transport(server.port, tls="pin", pins=PinStore(tmp_path / "pins.json"))
    assert again.request("GET", "/").json() == {"ok": True}


def test_changed_certificate_fails_before_any_request_is_sent(serve, certs, tmp_path: Path) -> None:
    pins = PinStore(tmp_path / "pins.json")
    first = serve(answer(body=b"{}"), certs["one"][0])
    t = transport(first.port, tls="pin", pins=pins)
    t.request("GET", "/")
    t.close()
    first.close()
    impostor = serve(hang, certs["two"][0], port=first.port)
    with pytest.raises(IdentityChanged) as caught:
        t.request("POST", "/api/auth/login", json={"username": "admin", "password": "s3cret-pw"})
    impostor.close()  # joins the handler: everything the impostor got is recorded
    assert bytes(impostor.received) == b""
    message = str(caught.value)
    assert f"127.0.0.1:{first.port}" in message
    assert certs["one"][1][:16] in message and certs["two"][1][:16] in message
    assert pins.get(pin_key("127.0.0.1", first.port)) == certs["one"][1]  # never silently re-trusted


def test_verify_mode_rejects_a_self_signed_certificate(serve, certs) -> None:
    server = serve(answer(), certs["one"][0])
    with pytest.raises(DeviceUnreachable, match="TLS failed: CERTIFICATE_VERIFY_FAILED"):
        transport(server.port, tls="verify").request("GET", "/")
    assert server.received == b""


def test_no_connection_loads_a_ca_bundle_of_its_own(serve, certs, monkeypatch: pytest.MonkeyPatch) -> None:
    verify_context()  # built once, up front
    loads: list[object] = []
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", lambda *a, **k: loads.append(a))
    monkeypatch.setattr(ssl.SSLContext, "load_default_certs", lambda *a, **k: loads.append(a))
    server = serve(answer(), certs["one"][0])
    for mode in ("insecure", "pin", "verify"):
        with contextlib.suppress(DeviceUnreachable):
            transport(server.port, tls=mode).request("GET", "/")
    assert loads == []


def test_adapters_share_one_context_per_mode() -> None:
    a, b = SharedContextAdapter(NO_VERIFY_CONTEXT, None), SharedContextAdapter(NO_VERIFY_CONTEXT, "ab" * 32)
    assert a.poolmanager.connection_pool_kw["ssl_context"] is b.poolmanager.connection_pool_kw["ssl_context"]
    assert b.poolmanager.connection_pool_kw["assert_fingerprint"] == "ab" * 32


def test_ipv6_hosts_are_bracketed() -> None:
    t = HttpTransport(
        host="::1",
        port=8443,
        scheme="https",
        tls_mode="pin",
        pins=None,
        connect_timeout_s=1,
        read_timeout_s=1,
        max_bytes=10,
    )
    assert t.label == "[::1]:8443" == pin_key("::1", 8443)


def test_download_streams_to_disk_with_its_sha256(serve, certs, tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    server = serve(answer(body=payload), certs["one"][0])
    dest = tmp_path / "dev.tar.gz"
    size, sha = transport(server.port).download("/api/log/export", dest, max_bytes=1_000_000)
    assert (size, sha) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert dest.read_bytes() == payload
    assert list(tmp_path.iterdir()) == [dest]


def test_download_over_the_cap_leaves_no_file(serve, certs, tmp_path: Path) -> None:
    server = serve(unbounded(os.urandom(4096)), certs["one"][0])
    dest = tmp_path / "dev.tar.gz"
    with pytest.raises(UnexpectedResponse, match="exceeds the 50000-byte cap"):
        transport(server.port).download("/api/log/export", dest, max_bytes=50_000)
    assert list(tmp_path.iterdir()) == []


def test_download_of_an_error_page_leaves_no_file(serve, tmp_path: Path) -> None:
    server = serve(answer(status=500, body=b"boom"))
    with pytest.raises(UnexpectedResponse, match="HTTP 500"):
        transport(server.port, scheme="http").download("/logs", tmp_path / "x.tar.gz", max_bytes=1000)
    assert list(tmp_path.iterdir()) == []


def test_keep_alive_connection_is_reused_within_a_poll(serve, certs) -> None:
    def two_answers(conn: socket.socket, server: Server) -> None:
        for _ in range(2):
            server.read_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    server = serve(two_answers, certs["one"][0])
    t = transport(server.port)
    first, second = t.request("GET", "/a"), t.request("GET", "/b")
    assert first.connect_ms is not None and second.connect_ms is None
    assert server.received.count(b"HTTP/1.1\r\n") == 2


def test_pin_store_adds_but_never_overwrites_and_sees_other_writers(tmp_path: Path) -> None:
    path = tmp_path / "pins.json"
    store, other = PinStore(path), PinStore(path)
    assert store.pin_if_absent("10.0.0.1:443", "AA" * 32) == "aa" * 32
    assert store.pin_if_absent("10.0.0.1:443", "bb" * 32) == "aa" * 32
    assert other.get("10.0.0.1:443") == "aa" * 32  # read from disk, not memory
    assert other.forget("10.0.0.1:443") and store.get("10.0.0.1:443") is None
    assert [p.name for p in tmp_path.iterdir()] == ["pins.json"]  # no temp files left


def test_corrupt_pin_file_is_refused_not_reset(tmp_path: Path) -> None:
    path = tmp_path / "pins.json"
    path.write_text('{"10.0.0.1:443": "not-a-digest"}')
    with pytest.raises(ValueError, match="SHA-256"):
        PinStore(path)
    assert "not-a-digest" in path.read_text()


def test_pin_store_reads_from_memory_and_sees_an_operators_edit_within_the_revalidation_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(collectors.pins, "_monotonic", clock.monotonic)
    path = tmp_path / "pins.json"
    store = PinStore(path)
    store.pin_if_absent("10.0.0.1:443", "aa" * 32)
    stats: list[object] = []
    real_stat = Path.stat
    monkeypatch.setattr(Path, "stat", lambda self, **kw: stats.append(self) or real_stat(self, **kw))
    assert [store.get("10.0.0.1:443") for _ in range(100)] == ["aa" * 32] * 100
    assert stats == []  # served from memory
    path.write_text(json.dumps({"10.0.0.2:443": "bb" * 32}))  # the operator re-trusts by hand
    assert store.get("10.0.0.1:443") == "aa" * 32  # not looked at yet
    clock.advance(collectors.pins.REVALIDATE_S)
    assert store.get("10.0.0.1:443") is None and store.get("10.0.0.2:443") == "bb" * 32
    assert len(stats) == 1
    assert store.pin_if_absent("10.0.0.1:443", "cc" * 32) == "cc" * 32  # a write re-reads first
    assert json.loads(path.read_text()) == {"10.0.0.1:443": "cc" * 32, "10.0.0.2:443": "bb" * 32}


# --- TLS session resumption across polls ------------------------------------------------------------


@pytest.fixture
def resumption(monkeypatch: pytest.MonkeyPatch) -> None:
    """Session resumption switched on (off by default: see http_pool.RESUME_SESSIONS)."""
    monkeypatch.setattr(http_pool, "RESUME_SESSIONS", True)


def test_by_default_no_session_is_kept_and_every_poll_does_a_full_handshake(serve, tmp_path: Path) -> None:
    server = serve(answer(body=b"{}"), server_context(make_certificate("127.0.0.1", "plain")))
    t = transport(server.port, tls="pin", pins=PinStore(tmp_path / "pins.json"))
    assert [_poll(t) for _ in range(3)] == [200] * 3
    assert (t.tls.full, t.tls.resumed) == (3, 0) and t.tls.offer() is None


def _poll(t: HttpTransport, path: str = "/") -> int:
    """One poll's worth: a request, then the connections closed as the driver does after a poll."""
    try:
        return t.request("GET", path).status
    finally:
        t.close_idle()


def test_a_simulated_devices_next_polls_resume_its_tls_session(
    fleet_factory: Callable[..., Fleet], tmp_path: Path, resumption: None
) -> None:
    dev = fleet_factory(devices=1).devices[0]
    pins = PinStore(tmp_path / "pins.json")
    t = HttpTransport(
        host=dev.host, port=dev.port, scheme="https", tls_mode="pin", pins=pins,
        connect_timeout_s=2, read_timeout_s=2, max_bytes=100_000,
    )  # fmt: skip
    statuses = [_poll(t, "/no-such-page") for _ in range(3)]
    assert statuses == [404] * 3  # answered (no credentials needed for a 404)
    assert (t.tls.full, t.tls.resumed) == (1, 2)
    assert pins.get(t.label) == dev.cert_sha256


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_a_closed_connections_session_is_resumed_by_the_next_poll(
    serve, tmp_path: Path, version: ssl.TLSVersion, resumption: None
) -> None:
    ctx = server_context(make_certificate("127.0.0.1", "resume"))
    ctx.maximum_version = version  # both resume from session tickets
    server = serve(answer(body=b"{}"), ctx)
    t = transport(server.port, tls="pin", pins=PinStore(tmp_path / "pins.json"))
    assert [_poll(t) for _ in range(3)] == [200] * 3
    assert (t.tls.full, t.tls.resumed) == (1, 2)


def test_an_impostor_cannot_resume_the_session_and_is_caught(
    serve, certs, tmp_path: Path, resumption: None
) -> None:
    pins = PinStore(tmp_path / "pins.json")
    first = serve(answer(body=b"{}"), certs["one"][0])
    t = transport(first.port, tls="pin", pins=pins)
    assert [_poll(t), _poll(t)] == [200, 200]
    assert (t.tls.full, t.tls.resumed) == (1, 1)
    first.close()
    impostor = serve(hang, certs["two"][0], port=first.port)
    with pytest.raises(IdentityChanged):
        _poll(t)
    impostor.close()
    assert bytes(impostor.received) == b""  # the impostor could not resume: a full handshake, caught
    assert t.tls.resumed == 1 and t.tls.offer() is None
    assert pins.get(t.label) == certs["one"][1]


def test_a_certificate_swapped_under_the_same_ticket_key_is_caught_at_the_next_full_handshake(
    serve, tmp_path: Path, resumption: None
) -> None:
    """The one case resumption hides for a while: the same server (ticket key), a new certificate."""
    original = make_certificate("127.0.0.1", "original")
    ctx = server_context(original)
    server = serve(answer(body=b"{}"), ctx)
    clock = FakeClock()
    pins = PinStore(tmp_path / "pins.json")
    t = HttpTransport(
        host="127.0.0.1", port=server.port, scheme="https", tls_mode="pin", pins=pins,
        connect_timeout_s=2, read_timeout_s=2, max_bytes=100_000, monotonic=clock.monotonic,
    )  # fmt: skip
    assert _poll(t) == 200
    swapped = make_certificate("127.0.0.1", "swapped")
    (tmp_path / "cert.pem").write_bytes(swapped.cert_pem)
    (tmp_path / "key.pem").write_bytes(swapped.key_pem)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")  # same context: same ticket key
    clock.advance(RESUME_MAX_AGE_S - 1)
    assert _poll(t) == 200 and t.tls.resumed == 1  # resumed: the session still carries the pinned cert
    clock.advance(1)
    with pytest.raises(IdentityChanged) as caught:
        _poll(t)
    assert swapped.sha256[:16] in str(caught.value)  # a full handshake showed the new certificate
    assert (t.tls.full, t.tls.resumed) == (1, 1) and t.tls.offer() is None


# --- connections kept between polls (keep_alive_s) -------------------------------------------------


def _poll_kept(t: HttpTransport, path: str = "/") -> tuple[int, float | None]:
    """One poll's worth as the driver does it: a request, then release(); (status, connect_ms)."""
    try:
        resp = t.request("GET", path)
        return resp.status, resp.connect_ms
    finally:
        t.release()


def keep_answering(limit: int = 20) -> Handler:
    """A handler answering every request of its connection (up to ``limit``) until the client closes."""

    def handle(conn: socket.socket, server: Server) -> None:
        for _ in range(limit):
            if not server.read_request(conn).strip():
                return  # the client closed the connection
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    return handle


def test_a_kept_connection_serves_the_next_polls_without_a_new_handshake(serve, certs) -> None:
    server = serve(keep_answering(), certs["one"][0])
    t = transport(server.port, keep_alive_s=90)
    polls = [_poll_kept(t) for _ in range(3)]
    assert [status for status, _ in polls] == [200] * 3
    assert polls[0][1] is not None and polls[1][1] is None and polls[2][1] is None  # no connect: reused
    assert (t.tls.full, server.accepted) == (1, 1)


def test_with_keep_alive_off_every_poll_opens_its_own_connection(serve, certs) -> None:
    server = serve(keep_answering(), certs["one"][0])
    t = transport(server.port, keep_alive_s=0)
    assert [_poll_kept(t)[0] for _ in range(3)] == [200] * 3
    assert (t.tls.full, server.accepted) == (3, 3)


def test_a_connection_idle_longer_than_keep_alive_s_is_closed_and_replaced(serve, certs) -> None:
    server = serve(keep_answering(), certs["one"][0])
    clock = FakeClock()
    t = transport(server.port, keep_alive_s=90, clock=clock)
    assert _poll_kept(t)[0] == 200
    clock.advance(90)
    assert _poll_kept(t)[1] is None  # 90 s idle: still kept
    clock.advance(90.5)
    status, connect_ms = _poll_kept(t)
    assert status == 200 and connect_ms is not None
    assert (t.tls.full, server.accepted) == (2, 2)


def test_a_kept_connection_the_device_has_closed_is_replaced_before_use(serve, certs) -> None:
    server = serve(answer(body=b"{}"), certs["one"][0])  # one answer per connection, then it closes
    t = transport(server.port, keep_alive_s=90)
    assert _poll_kept(t)[0] == 200
    deadline = time.monotonic() + 5
    while not any(not th.is_alive() for th in server._threads) and time.monotonic() < deadline:
        server.stop.wait(0.01)  # the server has closed its side of the first connection
    status, connect_ms = _poll_kept(t)
    assert status == 200 and connect_ms is not None
    assert server.received.count(b"GET / HTTP/1.1") == 2  # nothing was sent on the closed one


def test_a_kept_connection_closed_as_the_request_goes_out_is_retried_once_on_a_new_one(
    serve, certs
) -> None:
    """The race no check can rule out: the device closes its idle connection just as the next
    poll's request arrives. The request goes out once more, on a new connection."""

    def close_on_the_second_request(conn: socket.socket, server: Server) -> None:
        first_connection = server.accepted == 1
        for n in range(20):
            if not server.read_request(conn).strip():
                return
            if first_connection and n == 1:
                return  # read the request, then close without a word
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    server = serve(close_on_the_second_request, certs["one"][0])
    t = transport(server.port, keep_alive_s=90)
    assert _poll_kept(t, "/one")[0] == 200
    status, connect_ms = _poll_kept(t, "/two")
    assert status == 200 and connect_ms is not None
    assert server.received.count(b"GET /two HTTP/1.1") == 2 and server.accepted == 2


def test_a_kept_connection_that_goes_silent_times_out_once_and_is_not_retried(serve, certs) -> None:
    def silent_after_the_first_answer(conn: socket.socket, server: Server) -> None:
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        hang(conn, server)

    server = serve(silent_after_the_first_answer, certs["one"][0])
    t = transport(server.port, timeout_s=0.3, keep_alive_s=90)
    assert _poll_kept(t)[0] == 200
    started = time.monotonic()
    with pytest.raises(DeviceTimeout):
        _poll_kept(t, "/two")
    assert time.monotonic() - started < 2.0  # one timeout, not two
    assert server.accepted == 1


def test_a_device_resetting_new_connections_is_not_retried(serve, certs) -> None:
    """Only a request on a KEPT connection is retried: a reset during a new connection's
    handshake is the device's answer, reported as it is."""

    def reset(conn: socket.socket, server: Server) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    server = serve(reset)  # plain TCP that resets: the TLS handshake fails
    t = transport(server.port, keep_alive_s=90)
    with pytest.raises(DeviceUnreachable):
        _poll_kept(t)
    assert server.accepted == 1
