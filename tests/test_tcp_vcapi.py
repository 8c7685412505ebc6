"""TCP reachability and the 6024 VC API client, against the simulator's server and hostile peers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import ValidationError

from collectors.base import Collector
from collectors.errors import DeviceTimeout, DeviceUnreachable, UnexpectedResponse
from collectors.models import DeviceFacts, HealthSample, LogBundle
from collectors.multi import ChannelProbe, MultiChannelCollector
from collectors.transports.tcp import (
    TcpChannel,
    TcpConnectProbe,
    VcApiChannel,
    VcApiClient,
    parse_banner,
    parse_sysstatus,
    parse_tokens,
    tcp_connect_probe,
)
from simulator.vcapi import VcApiServer

T = TypeVar("T")
BANNER = (
    'version "model:A30" "firmware:133.15.0.60" "hardware:133.0.0.3.0.0.0" '
    '"productId:MeetingBar A30" "cc_version:1.2.3:4"'
)


# --- a loop thread for the simulator's asyncio server ------------------------------------------


class LoopThread:
    """One asyncio loop in a daemon thread, like the fleet's."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=5)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def sim(loop: LoopThread) -> Iterator[tuple[VcApiServer, dict[str, str]]]:
    state = {"call": "idle"}
    server = VcApiServer(
        "127.0.0.1",
        0,
        model="A30",
        firmware="133.15.0.60",
        hardware="133.0.0.3.0.0.0",
        product_id="MeetingBar A30",
        call_state_getter=lambda: state["call"],
    )
    loop.run(server.start())
    yield server, state
    loop.run(server.stop())


# --- hostile raw-socket peers -----------------------------------------------------------------


class Hostile:
    """A raw TCP peer on 127.0.0.1 that runs ``behave(conn, stop)`` for each connection."""

    def __init__(self, behave: Callable[[socket.socket, threading.Event], None]) -> None:
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self._behave = behave
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # the client hung up: fine
                self._behave(conn, self.stop)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def hostile() -> Iterator[Callable[[Callable[[socket.socket, threading.Event], None]], Hostile]]:
    peers: list[Hostile] = []

    def start(behave: Callable[[socket.socket, threading.Event], None]) -> Hostile:
        peer = Hostile(behave)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _client(port: int, timeout_s: float = 0.4, **kw: Any) -> VcApiClient:
    return VcApiClient("127.0.0.1", port, timeout_s=timeout_s, **kw)


# --- parsing ----------------------------------------------------------------------------------


def test_banner_values_keep_colons_and_spaces() -> None:
    banner = parse_banner(BANNER)
    assert (banner.model, banner.firmware, banner.hardware) == ("A30", "133.15.0.60", "133.0.0.3.0.0.0")
    assert banner.tokens["productId"] == "MeetingBar A30"
    assert banner.tokens["cc_version"] == "1.2.3:4"


@pytest.mark.parametrize(
    "line",
    ["", "hello", 'version "firmware:1.2.3.4"', 'version "model:A30" firmware:1', 'version "nokey"'],
)
def test_a_line_that_is_not_a_banner_is_rejected(line: str) -> None:
    with pytest.raises(UnexpectedResponse):
        parse_banner(line)


def test_sysstatus_states_and_tokens() -> None:
    assert parse_sysstatus("sysstatus get idle") == ("idle", {})
    state, tokens = parse_sysstatus('sysstatus get talking max "dialstr:sip:a@b:5061" "callid:7"')
    assert state == "talking max"
    assert tokens == {"dialstr": "sip:a@b:5061", "callid": "7"}
    for bad in ("sysstatus get dancing", "sysstatus idle", 'sysstatus get idle "x'):
        with pytest.raises(UnexpectedResponse):
            parse_sysstatus(bad)


def test_tokens_reject_unquoted_text() -> None:
    assert parse_tokens('"a:1"  "b:x y:z"') == {"a": "1", "b": "x y:z"}
    with pytest.raises(UnexpectedResponse):
        parse_tokens('"a:1" junk')


def test_channel_settings_default_to_6024_and_assumed() -> None:
    settings = VcApiChannel()
    assert (settings.port, settings.query_status, settings.status) == (6024, False, "assumed")
    with pytest.raises(ValidationError):
        VcApiChannel(port=70000)
    with pytest.raises(ValidationError):
        VcApiChannel.model_validate({"query_status": True, "pasword": "x"})


# --- against the simulator's server -----------------------------------------------------------


def test_probe_reads_the_banner_without_asking_status(sim: tuple[VcApiServer, dict[str, str]]) -> None:
    server, _ = sim
    result = _client(server.port).probe()
    assert (result.channel, result.ok, result.reason) == ("tcp6024", True, "ok")
    assert result.fields == {
        "model": "A30",
        "firmware": "133.15.0.60",
        "hardware": "133.0.0.3.0.0.0",
        "product_id": "MeetingBar A30",
    }
    assert result.latency_ms > 0
    assert server.commands_seen == 0


def test_probe_with_status_reports_the_call_state(sim: tuple[VcApiServer, dict[str, str]]) -> None:
    server, state = sim
    settings = VcApiChannel(port=server.port, query_status=True, timeout_s=1.0)
    client = VcApiClient.from_settings("127.0.0.1", settings)
    assert client.probe().fields["call_state"] == "idle"
    state["call"] = "talking max"
    result = client.probe()
    assert result.fields["call_state"] == "talking max"
    assert "talking max" in result.detail


def test_commands_on_one_connection_and_unknown_command_error(
    sim: tuple[VcApiServer, dict[str, str]],
) -> None:
    server, state = sim
    state["call"] = "ringing"
    with _client(server.port, timeout_s=1.0) as client:
        assert client.connect().model == "A30"
        assert client.sysstatus() == "ringing"
        assert client.command("mute near get").startswith("error ")
        assert client.command("sysstatus get").startswith("sysstatus get ringing ")
    assert server.commands_seen == 3
    with pytest.raises(ValueError):
        _client(server.port).command("two\r\nlines")


def test_simulator_drops_an_oversized_command_and_refuses_quoted_banner_values(
    sim: tuple[VcApiServer, dict[str, str]],
) -> None:
    server, _ = sim
    with (
        _client(server.port, timeout_s=1.0) as client,
        pytest.raises(DeviceUnreachable, match=r"closed|reset"),
    ):
        client.command("x" * 3000)
    with pytest.raises(ValueError, match="quotes"):
        VcApiServer(
            "127.0.0.1", 0, model='A30"', firmware="1", hardware="1", product_id="1", call_state_getter=str
        )


def test_offline_fault_is_unreachable_and_clear_restores(
    loop: LoopThread, sim: tuple[VcApiServer, dict[str, str]]
) -> None:
    server, _ = sim
    loop.run(server.apply("offline"))
    with pytest.raises(DeviceUnreachable):
        _client(server.port).probe()
    loop.run(server.clear())
    assert _client(server.port).probe().ok


def test_hang_fault_times_out_within_the_timeout(
    loop: LoopThread, sim: tuple[VcApiServer, dict[str, str]]
) -> None:
    server, _ = sim
    loop.run(server.apply("hang"))
    started = time.monotonic()
    with pytest.raises(DeviceTimeout):
        _client(server.port, timeout_s=0.3).probe()
    assert time.monotonic() - started < 1.0
    loop.run(server.clear())
    assert _client(server.port).probe().fields["model"] == "A30"


def test_garbage_fault_is_an_unexpected_response(
    loop: LoopThread, sim: tuple[VcApiServer, dict[str, str]]
) -> None:
    server, _ = sim
    loop.run(server.apply("garbage"))
    with pytest.raises(UnexpectedResponse, match="binary"):
        _client(server.port).probe()
    with pytest.raises(ValueError):
        loop.run(server.apply("melt"))


def test_tcp_connect_probe_measures_latency_and_refusal(sim: tuple[VcApiServer, dict[str, str]]) -> None:
    server, _ = sim
    result = tcp_connect_probe("127.0.0.1", server.port, 1.0)
    assert (result.channel, result.ok, result.reason) == ("tcp", True, "ok")
    assert result.latency_ms >= 0
    with pytest.raises(DeviceUnreachable, match="refused"):
        tcp_connect_probe("127.0.0.1", _free_port(), 1.0)


def test_refused_port_is_unreachable() -> None:
    with pytest.raises(DeviceUnreachable):
        _client(_free_port()).probe()


# --- hostile peers ----------------------------------------------------------------------------


def _silent(conn: socket.socket, stop: threading.Event) -> None:
    stop.wait(5)


def test_no_banner_times_out_within_the_timeout(hostile: Callable[..., Hostile]) -> None:
    peer = hostile(_silent)
    started = time.monotonic()
    with pytest.raises(DeviceTimeout, match="version banner"):
        _client(peer.port, timeout_s=0.3).probe()
    assert time.monotonic() - started < 1.0


def test_endless_line_stops_at_the_line_cap(hostile: Callable[..., Hostile]) -> None:
    def endless(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b'version "model:')
        while not stop.is_set():
            conn.sendall(b"A" * 4096)

    peer = hostile(endless)
    client = _client(peer.port, timeout_s=2.0, max_line_bytes=1024)
    started = time.monotonic()
    with pytest.raises(UnexpectedResponse, match="line over 1024 bytes"):
        client.probe()
    assert client.bytes_read <= 1025
    assert time.monotonic() - started < 2.0


def test_endless_short_lines_stop_at_the_byte_cap(hostile: Callable[..., Hostile]) -> None:
    def chatter(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(BANNER.encode() + b"\r\n")
        while not stop.is_set():
            conn.sendall(b'notify "noise:' + b"n" * 40 + b'"\r\n')

    peer = hostile(chatter)
    client = _client(peer.port, timeout_s=2.0, max_line_bytes=256, max_bytes=1024, query_status=True)
    with pytest.raises(UnexpectedResponse, match="over 1024 bytes"):
        client.probe()
    assert client.bytes_read <= 1024


def test_unrelated_lines_are_skipped_only_up_to_a_bound(hostile: Callable[..., Hostile]) -> None:
    def chatter(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(BANNER.encode() + b"\r\n")
        while not stop.is_set():
            conn.sendall(b'notify "x:1"\r\n')

    peer = hostile(chatter)
    with pytest.raises(UnexpectedResponse, match="no sysstatus answer"):
        _client(peer.port, timeout_s=2.0).probe(query_status=True)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_binary_garbage_is_rejected_at_once(hostile: Callable[..., Hostile], seed: int) -> None:
    junk = random.Random(seed).randbytes(2048)

    def garbage(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"\x00" + junk)
        stop.wait(5)

    peer = hostile(garbage)
    started = time.monotonic()
    with pytest.raises(UnexpectedResponse, match="binary"):
        _client(peer.port, timeout_s=2.0).probe()
    assert time.monotonic() - started < 1.0


def test_invalid_utf8_line_is_rejected(hostile: Callable[..., Hostile]) -> None:
    peer = hostile(lambda conn, stop: conn.sendall(b'version "model:\xff\xfe"\r\n'))
    with pytest.raises(UnexpectedResponse, match="binary"):
        _client(peer.port).probe()


def test_slow_drip_cannot_stretch_the_deadline(hostile: Callable[..., Hostile]) -> None:
    def drip(conn: socket.socket, stop: threading.Event) -> None:
        for byte in BANNER.encode():
            if stop.wait(0.02):
                return
            conn.sendall(bytes([byte]))

    peer = hostile(drip)
    started = time.monotonic()
    with pytest.raises(DeviceTimeout):
        _client(peer.port, timeout_s=0.3).probe()
    assert time.monotonic() - started < 1.0


def test_closed_before_the_banner_is_unreachable(hostile: Callable[..., Hostile]) -> None:
    peer = hostile(lambda conn, stop: conn.sendall(b'version "model:A'))
    with pytest.raises(DeviceUnreachable, match="closed"):
        _client(peer.port).probe()


def test_error_answer_and_pushed_finished(hostile: Callable[..., Hostile]) -> None:
    answers = [b'error "busy"\r\n', b"sysstatus get finished\r\nsysstatus get idle\r\n"]

    def scripted(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(BANNER.encode() + b"\r\n")
        conn.settimeout(2)
        if conn.recv(64) == b"sysstatus get\r\n":
            conn.sendall(answers.pop(0))

    peer = hostile(scripted)
    with pytest.raises(UnexpectedResponse, match="refused"):
        _client(peer.port, timeout_s=2.0).probe(query_status=True)
    result = _client(peer.port, timeout_s=2.0).probe(query_status=True)
    assert result.fields["call_state"] == "idle"


# --- as channel probes of a multi-channel poll ------------------------------------------------


class WebUiDown(Collector):
    """A primary (HTTP) channel that cannot reach the device."""

    device_id = "a30-01"

    def collect_facts(self) -> DeviceFacts:
        raise DeviceUnreachable("https: connection refused")

    def collect_health(self) -> HealthSample:
        raise DeviceUnreachable("https: connection refused")

    def collect_logs(self, dest_dir: Path) -> LogBundle:
        raise DeviceUnreachable("https: connection refused")


def test_web_ui_down_but_6024_up_is_degraded_with_the_banner_identity(
    loop: LoopThread, sim: tuple[VcApiServer, dict[str, str]]
) -> None:
    server, _ = sim
    probes: list[ChannelProbe] = [
        TcpConnectProbe("127.0.0.1", TcpChannel(port=server.port, timeout_s=1.0)),
        VcApiClient.from_settings(
            "127.0.0.1", VcApiChannel(port=server.port, query_status=True, timeout_s=0.3)
        ),
    ]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        multi = MultiChannelCollector("a30-01", "A30", WebUiDown(), probes, pool=pool)
        sample = multi.collect_health()
        assert sample.failing_channels == ("http",)
        assert [c.channel for c in sample.channels] == ["http", "tcp", "tcp6024"]
        assert (sample.facts.model, sample.facts.firmware) == ("A30", "133.15.0.60")
        loop.run(server.apply("hang"))  # the port accepts, the API says nothing
        hung = multi.collect_health()
        assert hung.failing_channels == ("http", "tcp6024")
        assert hung.channels[2].reason == "timeout" and hung.channels[1].ok
        loop.run(server.apply("offline"))
        with pytest.raises(DeviceUnreachable, match="tcp: unreachable; tcp6024: unreachable"):
            multi.collect_health()
        multi.close()
