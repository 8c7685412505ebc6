"""Central log forwarding: RFC 5424 over TCP (and TLS) to a real rsyslog, buffered on disk meanwhile."""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from agent_server import make_agent, poll_all, take_offline, wait_until
from peers.rsyslog import Rsyslog

from agent.clock import FakeClock
from agent.forward import SD_ID, SyslogForwarder, device_record, event_record, format_rfc5424
from agent.forward_buffer import DiskBuffer, frame, split_frames
from agent.metrics import AgentMetrics
from agent.views import FleetView
from collectors.syslog_parse import SyslogMessage
from simulator.certs import make_certificate
from simulator.fleet import Fleet

AT = datetime(2026, 1, 5, 9, 0, 0, 250000, tzinfo=UTC)


def _forwarder(port: int, folder: Path, **options: object) -> SyslogForwarder:
    settings: dict[str, object] = {"retry_min_s": 0.05, "retry_max_s": 0.2, "connect_timeout_s": 2.0}
    settings.update(options)
    return SyslogForwarder("127.0.0.1", port, folder, sites={"a30-zarzad": "warszawa"}, **settings)  # type: ignore[arg-type]


def _events(forwarder: SyslogForwarder, first: int, count: int) -> None:
    for n in range(first, first + count):
        forwarder.agent_event(AT, "a30-zarzad", "state", f"event {n:03d}")


def _numbers(lines: list[str]) -> list[int]:
    return [int(m.group(1)) for line in lines if (m := re.search(r"event (\d{3})$", line))]


# --- the wire format -------------------------------------------------------------------------------


def test_messages_are_rfc5424_with_our_structured_data_and_octet_counting() -> None:
    message = format_rfc5424(
        facility=3, severity=4, timestamp=AT, hostname="room pc", app_name="hezo-agent", procid="42",
        msgid="ticket_opened", params={"device": "a30-zarzad", "site": 'HQ "main"]'},
        msg="down after 3 polls\n",
    )  # fmt: skip
    assert message == (
        b"<28>1 2026-01-05T09:00:00.250000Z room_pc hezo-agent 42 ticket_opened "
        b'[hezo@32473 device="a30-zarzad" site="HQ \\"main\\"\\]"] down after 3 polls'
    )
    framed = frame(message)
    assert framed.startswith(f"{len(message)} ".encode()) and split_frames(framed + framed) == (
        2,
        2 * len(framed),
        False,
    )


def test_a_device_message_keeps_its_priority_time_app_and_structured_data() -> None:
    received = SyslogMessage(
        received_at=AT, source_ip="127.0.1.5", device_id="a30-zarzad", facility=16, severity=3, timestamp=AT,
        hostname="bar", app_name="camera", msg="lens error zażółć", format="5424", procid="7", msgid="E1",
        structured_data='[origin ip="127.0.1.5"]',
    )  # fmt: skip
    record = device_record(received, "warszawa")
    length, _, body = record.partition(b" ")
    assert int(length) == len(body)
    assert body.decode() == (
        "<131>1 2026-01-05T09:00:00.250000Z a30-zarzad camera 7 E1 "
        f'[{SD_ID} device="a30-zarzad" site="warszawa"'
        ' src="127.0.1.5"][origin ip="127.0.1.5"] lens error zażółć'
    )
    bare = SyslogMessage(AT, "127.0.1.5", "a30-zarzad", None, None, None, None, None, "raw text", "raw")
    assert device_record(bare, None).split(b" ", 2)[1].startswith(b"<13>1")  # user.notice when unknown
    assert b"<29>1" in event_record(AT, "a30-zarzad", "state", "up", hostname="pc", site="warszawa")


# --- the disk buffer --------------------------------------------------------------------------------


def test_disk_buffer_keeps_order_bounds_its_size_and_survives_a_restart(tmp_path: Path) -> None:
    records = [frame(f"message {n:04d} ".encode() + b"x" * 100) for n in range(1000)]
    size = len(records[0])
    buffer = DiskBuffer(tmp_path, max_bytes=64 * 1024)
    dropped = buffer.append(records)
    assert buffer.total_bytes <= 64 * 1024 + size
    assert dropped > 0 and buffer.pending_messages == 1000 - dropped
    chunk = buffer.read(10 * size)
    assert chunk is not None and chunk.count == 10
    assert chunk.data.startswith(records[dropped])  # the oldest went first; the rest is in order
    buffer.commit(chunk)

    again = DiskBuffer(tmp_path, max_bytes=64 * 1024)
    assert again.pending_messages == 1000 - dropped - 10
    rest = []
    while (next_chunk := again.read()) is not None:
        rest.append(next_chunk.data)
        again.commit(next_chunk)
    assert b"".join(rest) == b"".join(records[dropped + 10 :])
    assert again.pending_bytes == 0


def test_a_record_half_written_by_a_crash_is_cut_off(tmp_path: Path) -> None:
    buffer = DiskBuffer(tmp_path, max_bytes=1024 * 1024)
    buffer.append([frame(b"complete one"), frame(b"complete two")])
    segment = sorted(tmp_path.glob("*.seg"))[-1]
    with segment.open("ab") as handle:
        handle.write(b"57 <13>1 cut short by a power failu")
    again = DiskBuffer(tmp_path, max_bytes=1024 * 1024)
    assert again.pending_messages == 2
    again.append([frame(b"after the restart")])
    chunk = again.read()
    assert chunk is not None and chunk.count == 3 and b"cut short" not in chunk.data


def test_a_full_memory_queue_drops_and_counts(tmp_path: Path) -> None:
    forwarder = _forwarder(9, tmp_path, queue_max_messages=100)  # not started: nothing drains the queue
    _events(forwarder, 0, 150)
    stats = forwarder.stats()
    assert (stats.queued, stats.dropped_queue_full) == (100, 50)


# --- against a real rsyslog -------------------------------------------------------------------------


def test_collector_away_messages_wait_on_disk_across_a_restart_then_arrive_in_order(tmp_path: Path) -> None:
    collector = Rsyslog(tmp_path / "rsyslog")
    (tmp_path / "rsyslog").mkdir()
    collector.start()
    buffer_dir = tmp_path / "buffer"
    forwarder = _forwarder(collector.port, buffer_dir)
    forwarder.start()
    try:
        _events(forwarder, 0, 5)
        assert _numbers(collector.wait_for(5)) == [0, 1, 2, 3, 4]

        collector.stop()  # the collector goes away
        _events(forwarder, 5, 20)
        wait_until(lambda: forwarder.stats().backlog_messages == 20 and not forwarder.stats().connected)
        assert forwarder.stats().last_error
        forwarder.stop()  # the agent restarts while the collector is still away
        assert any(buffer_dir.glob("*.seg"))
        forwarder = _forwarder(collector.port, buffer_dir)
        assert forwarder.stats().backlog_messages == 20  # read back from disk

        collector.start()  # the collector comes back on the same port
        forwarder.start()
        _events(forwarder, 25, 3)
        assert forwarder.wait_idle(20)
        lines = collector.wait_for(28)
        assert _numbers(lines) == list(range(28))  # nothing lost, nothing twice, in order
        assert all(f'[{SD_ID} device="a30-zarzad" site="warszawa"]' in line for line in lines)
        stats = forwarder.stats()
        assert stats.sent == 23 and stats.backlog_messages == 0 and stats.connected
    finally:
        forwarder.stop()
        collector.stop()


def test_tls_to_rsyslog_and_a_wrong_certificate_is_refused(tmp_path: Path) -> None:
    certificate = make_certificate("127.0.0.1", "collector.test")
    (tmp_path / "rsyslog").mkdir()
    ca = tmp_path / "collector-ca.pem"
    ca.write_bytes(certificate.cert_pem)
    impostor = tmp_path / "other-ca.pem"
    impostor.write_bytes(make_certificate("127.0.0.1", "someone-else").cert_pem)
    with Rsyslog(tmp_path / "rsyslog", tls=certificate) as collector:
        trusting = _forwarder(
            collector.port, tmp_path / "good", ssl_context=ssl.create_default_context(cafile=ca)
        )
        wary = _forwarder(
            collector.port, tmp_path / "bad", ssl_context=ssl.create_default_context(cafile=impostor)
        )
        trusting.start()
        wary.start()
        try:
            _events(trusting, 0, 3)
            _events(wary, 100, 3)
            assert _numbers(collector.wait_for(3)) == [0, 1, 2]
            wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in (wary.stats().last_error or ""))
            assert wary.stats().backlog_messages == 3 and not wary.stats().connected
            assert _numbers(collector.lines()) == [0, 1, 2]  # nothing from the one that did not trust it
        finally:
            trusting.stop()
            wary.stop()


def test_the_agent_forwards_device_syslog_and_its_own_events(
    fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> None:
    fleet = fleet_factory(devices=2, seed=5)
    (tmp_path / "rsyslog").mkdir()
    with Rsyslog(tmp_path / "rsyslog") as collector:
        clock = FakeClock()
        agent = make_agent(
            fleet, tmp_path, clock,
            syslog={"host": "127.0.0.1", "udp_port": 0, "tcp_port": None},
            forwarding={"host": "127.0.0.1", "port": collector.port, "retry_min_s": 0.05, "retry_max_s": 0.2},
        )  # fmt: skip
        assert agent.syslog is not None and agent.forwarder is not None
        agent.syslog.start()
        agent.forwarder.start()
        try:
            device = fleet.devices[0]
            port = agent.syslog.udp_port
            assert port is not None
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((device.host, 0))
                sock.sendto(b"<187>Jan  5 09:00:00 bar camera[12]: lens error 42", ("127.0.0.1", port))
            poll_all(agent, clock)
            take_offline(agent, fleet, clock, device.id)
            lines = wait_until(
                lambda: (got := collector.lines()) and any("ticket_opened" in line for line in got) and got
            )
            metrics = AgentMetrics(FleetView(agent))
            assert agent.forwarder.wait_idle(10)  # everything handed to the collector is counted
            exposition = metrics.exposition().decode()
            sent = re.search(r"^hezo_forward_messages_sent_total (\S+)$", exposition, re.M)
            assert sent is not None and float(sent.group(1)) >= 3
            assert re.search(r"^hezo_forward_connected 1\.0$", exposition, re.M)
        finally:
            agent.stop()
    from_device = [line for line in lines if "lens error 42" in line]
    assert len(from_device) == 1
    sd = f'[{SD_ID} device="{device.id}" site="{device.site}" src="{device.host}"]'
    assert re.match(rf"<187>1 \S+ {device.id} camera 12 - {re.escape(sd)} lens error 42$", from_device[0]), (
        from_device
    )
    opened = next(line for line in lines if " ticket_opened " in line)
    assert opened.startswith("<28>1 2026-01-05T") and " hezo-agent " in opened
    assert f'device="{device.id}"' in opened and "down after 3 failed polls" in opened
    assert any(" state " in line and "down" in line for line in lines)


def test_forwarding_settings_default_ports_and_paths(
    tmp_path: Path, fleet_factory: Callable[..., Fleet]
) -> None:
    fleet = fleet_factory(devices=1, seed=5)
    agent = make_agent(fleet, tmp_path, FakeClock(), forwarding={"host": "syslog.example.local", "tls": {}})
    try:
        forwarding = agent.config.forwarding
        assert forwarding is not None and forwarding.effective_port == 6514
        assert agent.forwarder is not None and agent.forwarder.port == 6514
        assert agent.forwarder.buffer.folder == agent.data_dir / "forward-buffer"
    finally:
        agent.stop()
    _forwarder(9, tmp_path / "x").stop()  # stopping a forwarder that never started is harmless
