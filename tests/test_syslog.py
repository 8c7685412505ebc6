"""The syslog receiver against Python senders, util-linux `logger`, and hostile senders."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pydantic
import pytest

from collectors.blackbox import BlackBoxes, escape_record
from collectors.syslog import SyslogMessage, SyslogReceiver, SyslogSettings
from collectors.syslog_parse import TcpFramer, parse_message

LOCAL = "127.0.0.1"
STRANGER = "127.0.0.2"
RFC5424 = b'<165>1 2026-01-05T09:00:00.123Z bar-1.local yealink 42 ID7 [ex@1 k="a\\"]b"] temp high'
RFC3164 = b"<11>Jan  5 09:00:00 bar-1 camd[77]: camera lost"


def wait_for(condition: Callable[[], bool], deadline_s: float = 3.0) -> bool:
    """Poll ``condition`` every 20 ms until it holds or the deadline passes."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class Harness:
    """A started receiver plus what it delivered."""

    def __init__(self, rx: SyslogReceiver, boxes: BlackBoxes) -> None:
        self.rx, self.boxes = rx, boxes
        self.got: list[SyslogMessage] = []

    def msgs(self, text: str) -> list[SyslogMessage]:
        return [m for m in list(self.got) if text in m.msg]

    def arrives(self, text: str, deadline_s: float = 3.0) -> SyslogMessage:
        assert wait_for(lambda: bool(self.msgs(text)), deadline_s), f"{text!r} never arrived"
        return self.msgs(text)[0]

    def udp(self, data: bytes, source: str = LOCAL) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((source, 0))
            s.sendto(data, (LOCAL, self.rx.udp_port or 0))

    def tcp(self, source: str = LOCAL) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source, 0))
        s.settimeout(3.0)
        s.connect((LOCAL, self.rx.tcp_port or 0))
        return s


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """Start receivers on ephemeral loopback ports with 127.0.0.1 mapped to bar-1; stop them after."""
    started: list[SyslogReceiver] = []

    def make(**kwargs: object) -> Harness:
        boxes = BlackBoxes(tmp_path / "boxes", max_bytes=256 * 1024, segment_bytes=64 * 1024)
        options: dict[str, object] = {"sources": {LOCAL: "bar-1"}, "boxes": boxes, "max_message_bytes": 2048}
        options.update(kwargs)
        rx = SyslogReceiver(LOCAL, 0, 0, **options)  # type: ignore[arg-type]
        harness = Harness(rx, boxes)
        if rx.on_message is None:
            rx.on_message = harness.got.append
        rx.start()
        started.append(rx)
        return harness

    yield make
    for rx in started:
        rx.stop()
        assert not rx.running


def _logger(*args: str) -> None:
    binary = shutil.which("logger")
    assert binary, "util-linux `logger` is missing: install the Debian package bsdutils"
    subprocess.run([binary, "--server", LOCAL, *args], check=True, timeout=10, capture_output=True)


# --- parsing ----------------------------------------------------------------------------------

def _parse(data: bytes, received_at: datetime | None = None) -> SyslogMessage:
    at = received_at or datetime(2026, 1, 5, 9, 0, 5, tzinfo=UTC)
    return parse_message(data, received_at=at, source_ip=LOCAL, device_id="bar-1")


def test_rfc5424_fields_including_structured_data_with_escapes() -> None:
    m = _parse(RFC5424)
    assert (m.format, m.facility, m.severity) == ("5424", 20, 5)
    assert m.timestamp == datetime(2026, 1, 5, 9, 0, 0, 123000, tzinfo=UTC)
    assert (m.hostname, m.app_name, m.procid, m.msgid) == ("bar-1.local", "yealink", "42", "ID7")
    assert m.structured_data == '[ex@1 k="a\\"]b"]' and m.msg == "temp high"
    nil = _parse(b"<14>1 - - - - - -\n")
    assert (nil.format, nil.timestamp, nil.hostname, nil.msg) == ("5424", None, None, "")
    assert _parse("<14>1 - h a - - - \ufeffgrüß".encode()).msg == "grüß"


def test_rfc3164_fields_with_and_without_hostname() -> None:
    m = _parse(RFC3164)
    assert (m.format, m.facility, m.severity) == ("3164", 1, 3)
    assert m.timestamp == datetime(2026, 1, 5, 9, 0, 0, tzinfo=UTC)
    assert (m.hostname, m.app_name, m.procid, m.msg) == ("bar-1", "camd", "77", "camera lost")
    bare = _parse(b"<13>Jan  5 09:00:00 sshd: accepted")
    assert (bare.hostname, bare.app_name, bare.msg) == (None, "sshd", "accepted")
    no_time = _parse(b"<13>app: hello")
    assert (no_time.format, no_time.timestamp, no_time.app_name) == ("3164", None, "app")
    assert no_time.msg == "hello"


def test_rfc3164_time_from_last_december_received_in_january_is_last_year() -> None:
    m = _parse(b"<13>Dec 31 23:59:58 bar-1 app: late", datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC))
    assert m.timestamp == datetime(2025, 12, 31, 23, 59, 58, tzinfo=UTC)


@pytest.mark.parametrize(
    "data", [b"no pri at all", b"<999>1 - - - - - - x", b"<13>1 only three", b"\xff\xfe\x00garbage", b"",
             b"<13>1 - - - - - [unclosed"],
)
def test_malformed_messages_come_back_raw_and_never_raise(data: bytes) -> None:
    assert _parse(data).format == "raw"


def test_framer_handles_octet_counting_and_line_framing_split_anywhere() -> None:
    stream = b"11 <13>1 a b c<14>line one\n<15>nul framed\x0011 <13>1 d e f"
    for chunk_size in (1, 3, 7, len(stream)):
        framer = TcpFramer(100)
        frames = []
        for i in range(0, len(stream), chunk_size):
            frames += framer.feed(stream[i : i + chunk_size])
        payloads = [f.payload for f in frames]
        assert payloads == [b"<13>1 a b c", b"<14>line one", b"<15>nul framed", b"<13>1 d e f"]
        assert not framer.pending


def test_framer_never_buffers_more_than_the_cap() -> None:
    framer = TcpFramer(1000)
    frames = framer.feed(b"%d " % (64 * 65536))  # announces 4 MiB against a 1000-byte cap
    for _ in range(64):
        frames += framer.feed(b"z" * 65536)
        assert framer.buffered_bytes <= 1000
    assert len(frames) == 1 and frames[0].truncated and len(frames[0].payload) == 1000
    line = TcpFramer(1000)
    got = [f for _ in range(64) for f in line.feed(b"q" * 65536)] + line.feed(b"tail\n<13>next\n")
    assert line.buffered_bytes == 0
    assert [(len(f.payload), f.truncated) for f in got] == [(1000, True), (8, False)]


def test_framing_a_chunk_of_many_small_messages_takes_linear_time() -> None:
    line = b"".join(b"<13>app: message %d\n" % i for i in range(20000))
    counted = b"".join(b"15 <13>app: m%05d" % i for i in range(20000))
    for chunk in (line, counted):
        began = time.monotonic()
        assert len(TcpFramer(8192).feed(chunk)) == 20000
        assert time.monotonic() - began < 1.5  # re-scanning the chunk per message would take minutes


# --- real senders -----------------------------------------------------------------------------

def test_python_udp_senders_land_in_the_right_box_with_parsed_fields(start: Callable[..., Harness]) -> None:
    h = start(sources={LOCAL: "bar-1", STRANGER: "bar-2"})
    h.udp(RFC5424)
    h.udp(RFC3164, source=STRANGER)
    m = h.arrives("temp high")
    assert (m.device_id, m.app_name, m.format) == ("bar-1", "yealink", "5424")
    m2 = h.arrives("camera lost")
    assert (m2.device_id, m2.source_ip, m2.app_name, m2.format) == ("bar-2", STRANGER, "camd", "3164")
    line = next(iter(h.boxes.get("bar-1").read_since(None)))
    assert line.split(" ", 2)[1:] == [LOCAL, escape_record(RFC5424)]  # the backslash is escaped
    assert [ln.split(" ", 2)[2] for ln in h.boxes.get("bar-2").read_since(None)] == [RFC3164.decode()]
    assert h.rx.stats.per_device == {"bar-1": 1, "bar-2": 1}


def test_python_tcp_octet_counting_and_newline_framing_on_one_connection(
    start: Callable[..., Harness],
) -> None:
    h = start()
    with h.tcp() as s:
        s.sendall(b"%d %s" % (len(RFC5424), RFC5424))
        s.sendall(RFC3164 + b"\n" + b"<13>1 - - app - - - zero\x00")
        s.sendall(b"<13>1 - - app - - - sent in ")
        time.sleep(0.05)
        s.sendall(b"two parts\n")
        for text in ("temp high", "camera lost", "zero", "sent in two parts"):
            h.arrives(text)
    assert h.rx.stats.received == 4 and h.rx.stats.malformed == 0
    assert len(list(h.boxes.get("bar-1").read_since(None))) == 4


def test_tcp_last_message_without_newline_is_kept_when_the_sender_closes(
    start: Callable[..., Harness],
) -> None:
    h = start()
    with h.tcp() as s:
        s.sendall(b"<13>app: no newline at the end")
    assert h.arrives("no newline at the end").app_name == "app"


@pytest.mark.parametrize(
    ("args", "fmt"),
    [(["--rfc5424", "--udp"], "5424"), (["--rfc3164", "--udp"], "3164"),
     (["--rfc5424", "--tcp", "--octet-count"], "5424"), (["--rfc5424", "--tcp"], "5424")],
)
def test_util_linux_logger_lands(start: Callable[..., Harness], args: list[str], fmt: str) -> None:
    h = start()
    port = h.rx.udp_port if "--udp" in args else h.rx.tcp_port
    text = f"from logger {' '.join(args)} pid {os.getpid()}"
    _logger(*args, "--port", str(port), "-t", "hezotest", "-p", "local0.err", text)
    m = h.arrives(text)
    assert (m.format, m.app_name, m.facility, m.severity, m.device_id) == (fmt, "hezotest", 16, 3, "bar-1")
    assert m.timestamp is not None and m.hostname
    assert h.rx.stats.device("bar-1").errors == 1


def test_unknown_senders_are_counted_and_dropped(start: Callable[..., Harness]) -> None:
    h = start()
    h.udp(b"<13>app: from a stranger", source=STRANGER)
    with h.tcp(source=STRANGER) as s:
        s.sendall(b"<13>app: stranger over tcp\n")
        assert wait_for(lambda: h.rx.stats.unknown_sender == 2)
        assert _closed_within(s, 2.0)
    h.udp(b"<13>app: from the bar")
    h.arrives("from the bar")
    assert not h.msgs("stranger") and h.rx.stats.received == 1
    assert [p.name for p in (h.boxes.root).iterdir()] == ["bar-1"]


# --- hostile senders --------------------------------------------------------------------------

def test_a_megabyte_message_and_binary_garbage_do_not_stop_it(start: Callable[..., Harness]) -> None:
    h = start()
    with h.tcp() as s:
        s.sendall(b"<13>app: huge " + b"h" * 1_000_000 + b"\n<13>app: after the huge line\n")
        h.arrives("after the huge line")
        s.sendall(b"1000000 <13>app: counted " + b"c" * 999_983 + b"<13>app: after the huge frame\n")
        h.arrives("after the huge frame")
    garbage = bytes(range(256)) * 40
    h.udp(garbage[:9000])
    h.udp(b"x" * 65000)
    with h.tcp() as s:
        s.sendall(garbage + b"\n<13>app: after tcp garbage\n")
        h.arrives("after tcp garbage")
    h.udp(b"<13>app: after udp garbage\r\n")
    h.arrives("after udp garbage")
    for text in ("huge ", "counted "):
        cut = h.msgs(text)[0]
        assert cut.truncated and len(cut.raw) == 2048
    assert h.rx.stats.oversize >= 4 and h.rx.stats.malformed >= 2
    assert h.boxes.get("bar-1").size_bytes() < 256 * 1024
    lines = list(h.boxes.get("bar-1").read_since(None))
    assert all("\x00" not in line for line in lines)
    assert lines[-1].endswith(" 127.0.0.1 <13>app: after udp garbage")  # trailing CR LF not stored


def _closed_within(s: socket.socket, deadline_s: float) -> bool:
    """True if the peer closed ``s`` (EOF or reset) within the deadline."""
    s.settimeout(0.05)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if s.recv(100) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def test_a_trickling_sender_is_cut_off_and_others_are_unaffected(start: Callable[..., Harness]) -> None:
    h = start(tcp_message_timeout_s=0.4, tcp_idle_timeout_s=30.0)
    with h.tcp() as s:
        s.sendall(b"<13>app: this message never ends")
        began = time.monotonic()
        s.settimeout(0.05)
        closed = False
        while time.monotonic() - began < 3.0 and not closed:
            try:
                s.sendall(b".")  # a byte every 50 ms keeps it from ever being idle
                closed = s.recv(1) == b""
            except TimeoutError:
                pass
            except OSError:
                closed = True
            if time.monotonic() - began > 0.1 and not h.msgs("meanwhile"):
                h.udp(b"<13>app: meanwhile")
        assert closed and time.monotonic() - began < 1.5
    h.arrives("meanwhile")
    assert h.rx.stats.tcp_timed_out == 1


def test_an_endless_line_is_capped_and_cut_off_while_another_sender_gets_through(
    start: Callable[..., Harness],
) -> None:
    h = start(tcp_message_timeout_s=0.5, tcp_idle_timeout_s=30.0)
    sent = [0]

    def flood() -> None:
        with h.tcp() as s:
            s.sendall(b"<13>app: endless ")
            end = time.monotonic() + 4.0
            try:
                while time.monotonic() < end:
                    s.sendall(b"e" * 65536)
                    sent[0] += 65536
            except OSError:
                return

    flooder = threading.Thread(target=flood)
    began = time.monotonic()
    flooder.start()
    assert wait_for(lambda: sent[0] > 1_000_000)
    with h.tcp() as other:
        other.sendall(b"<13>app: other sender\n")
        h.arrives("other sender")
    flooder.join(5.0)
    assert not flooder.is_alive() and time.monotonic() - began < 3.5
    endless = h.msgs("endless")
    assert len(endless) == 1 and endless[0].truncated and len(endless[0].raw) == 2048
    assert h.rx.stats.tcp_timed_out == 1


def test_a_silent_connection_is_closed_after_the_idle_timeout(start: Callable[..., Harness]) -> None:
    h = start(tcp_idle_timeout_s=0.3)
    with h.tcp() as s:
        assert _closed_within(s, 2.0)
    assert h.rx.stats.tcp_timed_out == 1


def test_connections_over_the_limit_are_refused(start: Callable[..., Harness]) -> None:
    h = start(max_tcp_connections=2)
    first, second = h.tcp(), h.tcp()
    try:
        first.sendall(b"<13>app: first\n")
        h.arrives("first")
        second.sendall(b"<13>app: second\n")
        h.arrives("second")
        with h.tcp() as third:
            assert _closed_within(third, 2.0)
        assert h.rx.stats.tcp_rejected == 1
    finally:
        first.close()
        second.close()


def test_a_failing_consumer_is_counted_and_the_receiver_goes_on(start: Callable[..., Harness]) -> None:
    def explode(message: SyslogMessage) -> None:
        raise RuntimeError("consumer bug")

    h = start(on_message=explode)
    h.udp(b"<13>app: one")
    h.udp(b"<13>app: two")
    assert wait_for(lambda: h.rx.stats.callback_errors == 2)
    assert len(list(h.boxes.get("bar-1").read_since(None))) == 2


# --- lifecycle and settings -------------------------------------------------------------------

def test_start_on_a_busy_port_raises_and_stop_is_bounded(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind((LOCAL, 0))
        rx = SyslogReceiver(LOCAL, busy.getsockname()[1], None, sources={}, boxes=None)
        with pytest.raises(OSError):
            rx.start()
        assert not rx.running and rx.udp_port is None
    ok = SyslogReceiver(LOCAL, 0, None, sources={}, boxes=None)
    ok.start()
    assert ok.udp_port and ok.tcp_port is None
    began = time.monotonic()
    ok.stop()
    assert not ok.running and time.monotonic() - began < 2.0 and ok.udp_port is None


def test_settings_default_to_assumed_and_reject_impossible_caps(tmp_path: Path) -> None:
    s = SyslogSettings()
    assert (s.status, s.udp_port, s.max_message_bytes) == ("assumed", 5514, 8192)
    assert (s.blackbox_max_bytes, s.segment_bytes) == (8 << 20, 1 << 20)
    for bad in ({"segment_bytes": 8 << 20}, {"udp_port": None, "tcp_port": None}, {"colour": "red"},
                {"host": "not a host!"}, {"udp_port": 70000}):
        with pytest.raises(pydantic.ValidationError):
            SyslogSettings(**bad)
    rx = SyslogReceiver.from_settings(
        SyslogSettings(host=LOCAL, udp_port=0, tcp_port=0, max_message_bytes=1024),
        sources={LOCAL: "bar-1"}, boxes=BlackBoxes(tmp_path),
    )
    rx.start()
    try:
        assert rx.max_message_bytes == 1024 and rx.udp_port and rx.tcp_port
        result = rx.channel_result("bar-1")
        assert (result.channel, result.ok, result.fields["syslog_messages"]) == ("syslog", True, 0)
    finally:
        rx.stop()
