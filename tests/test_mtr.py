"""The MVC's Teams Rooms event log: parsing, health summary, the file and the wevtutil paths.

Fixtures in tests/fixtures/mtr/ follow Microsoft's documented SRS-App events (ids, JSON keys,
description sentences) in the XML that ``wevtutil qe … /f:xml`` prints: newest first, no root.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.clock import FakeClock
from collectors.errors import AuthFailed, DeviceTimeout, DeviceUnreachable, UnexpectedResponse
from collectors.mtr import (
    MtrChannel,
    MtrHealth,
    MtrSource,
    RunResult,
    parse_checks,
    parse_events,
    run_capped,
    summarize,
)
from collectors.multi import ChannelProbe

FIXTURES = Path(__file__).parent / "fixtures" / "mtr"
NOW = FakeClock().now()  # 2026-01-05 09:00 UTC: the fixtures' newest events are at 08:58
WEVTUTIL = ["wevtutil", "qe", "Skype Room System", "/rd:true", "/c:600", "/f:xml"]


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _health(name: str, **kw: float) -> MtrHealth:
    events, skipped = parse_events(_fixture(name))
    return summarize(events, now=NOW, skipped=skipped, **kw)


def _at(hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(2026, 1, 5, hh, mm, ss, tzinfo=UTC)


def _sec(when: datetime | None) -> datetime | None:
    """Drop the sub-second part (the fixtures carry Windows' 100 ns fractions)."""
    return when.replace(microsecond=0) if when else None


def _file_source(name: str, clock: FakeClock | None = None, **kw: object) -> MtrSource:
    settings = MtrChannel.model_validate({"xml_file": FIXTURES / name, **kw})
    return MtrSource(settings, platform="linux", clock=(clock or FakeClock()).now)


# --- descriptions -----------------------------------------------------------------------------


def test_documented_descriptions_name_their_checks() -> None:
    assert parse_checks(
        "Front of Room Display status : Unhealthy. Configured display count is 2. Real display count "
        "is 0. Conference Microphone status : Unhealthy. Conference Speaker status : Healthy. "
        "Camera status : Healthy."
    ) == {
        "Front of Room Display": "Unhealthy",
        "Conference Microphone": "Unhealthy",
        "Conference Speaker": "Healthy",
        "Camera": "Healthy",
        "Configured display count": "2",
        "Real display count": "0",
    }
    assert parse_checks(
        "Network status : Healthy. Exchange status : Connected. Signin status: Unhealthy."
    ) == {
        "Network": "Healthy",
        "Exchange": "Connected",
        "Signin": "Unhealthy",
    }
    assert parse_checks("App restarts.") == {}


# --- fixtures ---------------------------------------------------------------------------------


def test_healthy_room() -> None:
    events, skipped = parse_events(_fixture("healthy.xml"))
    assert (len(events), skipped) == (12, 0)  # the Security-SPP event in the same log is ignored
    newest = events[0]
    assert (newest.event_id, newest.kind, newest.healthy) == (3000, "hardware", True)
    assert _sec(newest.time_created) == _at(8, 58, 3) and newest.time_created.microsecond > 0
    assert (newest.app_version, newest.display_name, newest.computer) == (
        "5.2.115.0",
        "Boardroom",
        "MVC-BOARDROOM",
    )
    assert newest.operation_name == "HardwareCheckEngine" and newest.record_id is not None
    health = summarize(events, now=NOW)
    assert health.healthy
    assert (health.heartbeat_ok, health.hardware_ok, health.heartbeat_stale) == (True, True, False)
    assert health.components == {"display": True, "microphone": True, "speaker": True, "camera": True}
    assert _sec(health.heartbeat_since) == _at(8, 33)  # the oldest heartbeat in the log: healthy all along
    assert (health.restarts, health.last_restart_at, health.failing_checks) == (0, None, ())
    assert health.app_version == "5.2.115.0"


def test_heartbeat_errors_name_the_failing_check_and_since_when() -> None:
    health = _health("heartbeat_errors.xml")
    assert (health.heartbeat_ok, health.hardware_ok) == (False, True)
    assert _sec(health.heartbeat_at) == _at(8, 58)
    assert _sec(health.heartbeat_since) == _at(8, 48)
    assert health.failing_checks == ("Signin: Unhealthy",)
    assert not health.healthy


def test_display_and_microphone_unhealthy() -> None:
    source = _file_source("hardware_unhealthy.xml")
    health = source.health()
    assert (health.heartbeat_ok, health.hardware_ok) == (True, False)
    assert _sec(health.hardware_since) == _at(8, 53, 3)
    assert health.components == {"display": False, "microphone": False, "speaker": True, "camera": True}
    assert health.failing_checks == ("Front of Room Display: Unhealthy", "Conference Microphone: Unhealthy")
    assert {(p.kind, p.connected) for p in health.peripherals()} == {
        ("microphone", False),
        ("speaker", True),
        ("camera", True),
    }
    result = source.probe()
    assert (result.channel, result.ok, result.reason) == ("mtr", True, "ok")
    assert result.fields["mtr_hardware_ok"] is False and result.fields["mtr_healthy"] is False
    assert result.fields["mtr_components"] == health.components
    assert "hardware error" in result.detail and "Conference Microphone: Unhealthy" in result.detail


def test_restarts_are_counted_in_the_window() -> None:
    events, _ = parse_events(_fixture("restarts.xml"))
    day = summarize(events, now=NOW)
    assert (day.restarts, _sec(day.last_restart_at), day.app_version) == (3, _at(8, 20), "5.2.115.0")
    assert day.healthy  # restarting is reported, not by itself unhealthy
    assert summarize(events, now=NOW, window_s=3600).restarts == 1
    assert summarize(events, now=NOW, window_s=3 * 86_400).restarts == 4
    assert all(e.healthy for e in events if e.event_id == 4000)


@pytest.mark.parametrize("name", ["malformed.xml", "garbage.xml"])
def test_malformed_or_garbage_export_is_rejected(name: str) -> None:
    with pytest.raises(UnexpectedResponse, match="not event log XML"):
        parse_events(_fixture(name))
    with pytest.raises(UnexpectedResponse):
        _file_source(name).probe()


def test_entity_bomb_is_refused_before_parsing() -> None:
    started = time.monotonic()
    with pytest.raises(UnexpectedResponse, match="DTD or entity"):
        parse_events(_fixture("entity_bomb.xml"))
    with pytest.raises(UnexpectedResponse, match="DTD or entity"):
        parse_events(b'<Event><System><Provider Name="SRS-App"/></System></Event><!doctype x>')
    assert time.monotonic() - started < 0.5


# --- shapes around the documented one ---------------------------------------------------------


def test_prolog_root_and_utf16_are_accepted() -> None:
    body = _fixture("healthy.xml").decode("utf-8")
    wrapped = '<?xml version="1.0" encoding="utf-8"?>\n<Events>' + body + "</Events>"
    assert len(parse_events(wrapped)[0]) == 12
    assert len(parse_events(body.encode("utf-16"))[0]) == 12  # with BOM
    assert len(parse_events(body.encode("utf-16-le"))[0]) == 12  # without


def test_broken_srs_event_is_skipped_and_plain_text_data_kept() -> None:
    ns = "http://schemas.microsoft.com/win/2004/08/events/event"
    no_time = (
        f"<Event xmlns='{ns}'><System><Provider Name='SRS-App'/><EventID>2000</EventID></System></Event>"
    )
    plain = (
        f"<Event xmlns='{ns}'><System><Provider Name='SRS-App'/><EventID>2001</EventID>"
        "<TimeCreated SystemTime='2026-01-05T08:55:00.0000000Z'/></System>"
        "<EventData><Data>Network status : Unhealthy. Exchange status : Connected.</Data></EventData></Event>"
    )
    other_id = plain.replace(">2001<", ">9999<")
    events, skipped = parse_events(no_time + "\n" + plain + "\n" + other_id)
    assert (len(events), skipped) == (1, 1)
    assert (events[0].healthy, events[0].checks["Network"], events[0].app_version) == (False, "Unhealthy", "")


def test_empty_log_has_no_health_and_a_stale_heartbeat() -> None:
    assert parse_events(b"  \r\n") == ([], 0)
    health = summarize([], now=NOW)
    assert (health.heartbeat_ok, health.heartbeat_stale, health.healthy) == (None, True, False)


def test_heartbeat_goes_stale_as_the_clock_moves() -> None:
    clock = FakeClock()
    source: ChannelProbe = _file_source("healthy.xml", clock, max_heartbeat_age_s=900)
    assert source.probe().fields["mtr_heartbeat_stale"] is False
    clock.advance(20 * 60)
    result = source.probe()
    assert result.fields["mtr_heartbeat_stale"] is True and "heartbeat stale" in result.detail


def test_byte_cap_applies_to_text_and_files(tmp_path: Path) -> None:
    with pytest.raises(UnexpectedResponse, match="over 1024 bytes"):
        parse_events(_fixture("healthy.xml"), max_bytes=1024)
    big = tmp_path / "big.xml"
    big.write_bytes(_fixture("healthy.xml") * 100)  # ~1.2 MB
    source = MtrSource(MtrChannel(xml_file=big, max_bytes=1024 * 1024), platform="linux")
    with pytest.raises(UnexpectedResponse, match="over 1048576 bytes"):
        source.probe()


def test_missing_file_or_no_file_configured(tmp_path: Path) -> None:
    with pytest.raises(DeviceUnreachable, match="not found"):
        MtrSource(MtrChannel(xml_file=tmp_path / "absent.xml"), platform="linux").probe()
    with pytest.raises(DeviceUnreachable):
        MtrSource(MtrChannel(xml_file=tmp_path), platform="linux").probe()
    with pytest.raises(UnexpectedResponse, match="no xml_file"):
        MtrSource(MtrChannel(), platform="linux").probe()


def test_settings_are_strict_and_documented() -> None:
    settings = MtrChannel()
    assert (settings.log_name, settings.status, settings.max_events) == (
        "Skype Room System",
        "documented",
        600,
    )
    for bad in ({"log_name": "/c:99"}, {"max_events": 0}, {"xml_path": "x"}):
        with pytest.raises(ValidationError):
            MtrChannel.model_validate(bad)


# --- the Windows path with a fake wevtutil ----------------------------------------------------


class FakeRunner:
    """Records each call and returns a canned result (or raises)."""

    def __init__(self, result: RunResult | OSError) -> None:
        self.result = result
        self.calls: list[tuple[list[str], float, int]] = []

    def __call__(self, args: Sequence[str], timeout_s: float, max_bytes: int) -> RunResult:
        self.calls.append((list(args), timeout_s, max_bytes))
        if isinstance(self.result, OSError):
            raise self.result
        return self.result


def _windows(runner: FakeRunner, **kw: object) -> MtrSource:
    return MtrSource(MtrChannel.model_validate(kw), runner=runner, platform="win32", clock=FakeClock().now)


def test_windows_runs_wevtutil_with_arguments_as_a_list() -> None:
    runner = FakeRunner(RunResult(0, _fixture("heartbeat_errors.xml")))
    result = _windows(runner, timeout_s=5).probe()
    assert runner.calls == [(WEVTUTIL, 5.0, 4 * 1024 * 1024)]
    assert result.ok and result.fields["mtr_heartbeat_ok"] is False
    assert str(result.fields["mtr_heartbeat_since"]).startswith("2026-01-05T08:48:00.")


def test_windows_log_name_with_spaces_stays_one_argument() -> None:
    runner = FakeRunner(RunResult(0, b""))
    result = _windows(runner, log_name="Microsoft-Windows-Foo/Operational", max_events=5).probe()
    assert runner.calls[0][0] == [
        "wevtutil",
        "qe",
        "Microsoft-Windows-Foo/Operational",
        "/rd:true",
        "/c:5",
        "/f:xml",
    ]
    assert result.detail == "no SRS-App events"


@pytest.mark.parametrize(
    ("outcome", "error", "match"),
    [
        (RunResult(None, b"<Ev", timed_out=True), DeviceTimeout, "did not finish within 15 s"),
        (RunResult(None, b"<Event>" * 10, over_cap=True), UnexpectedResponse, "output over"),
        (
            RunResult(15007, b"", b"Failed to read events. The specified channel could not be found.\r\n"),
            UnexpectedResponse,
            "exit 15007 .*channel could not be found",
        ),
        (RunResult(5, b"", b"Failed to read events. Access is denied.\r\n"), AuthFailed, "denied"),
        (FileNotFoundError(2, "No such file"), UnexpectedResponse, "cannot run wevtutil"),
        (RunResult(0, _fixture("entity_bomb.xml")), UnexpectedResponse, "DTD"),
    ],
)
def test_windows_failures_translate_once(
    outcome: RunResult | OSError, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        _windows(FakeRunner(outcome)).probe()


# --- the real bounded runner ------------------------------------------------------------------


def test_run_capped_returns_output_and_exit_code() -> None:
    code = "import sys; sys.stdout.write('hello'); sys.stderr.write('warn'); sys.exit(3)"
    result = run_capped([sys.executable, "-c", code], 10.0, 1024)
    assert (result.returncode, result.stdout, result.stderr) == (3, b"hello", b"warn")
    assert not result.timed_out and not result.over_cap


def test_run_capped_stops_endless_output_at_the_cap() -> None:
    code = "import sys\nwhile True: sys.stdout.buffer.write(b'x' * 65536)"
    started = time.monotonic()
    result = run_capped([sys.executable, "-c", code], 10.0, 100_000)
    assert result.over_cap and len(result.stdout) == 100_000
    assert time.monotonic() - started < 5.0


def test_run_capped_kills_a_hung_program_at_the_timeout() -> None:
    started = time.monotonic()
    result = run_capped([sys.executable, "-c", "import threading; threading.Event().wait()"], 0.3, 1024)
    assert result.timed_out and result.returncode is not None
    assert time.monotonic() - started < 3.0


def test_run_capped_missing_program_raises_oserror() -> None:
    with pytest.raises(OSError):
        run_capped(["hezo-no-such-program-xyz"], 1.0, 1024)
