"""Findings: each detector at its threshold edges, the debounce tracker, escalation, invariants.

Detectors are pure functions of a :class:`FindingContext`, so every case is a table row: the
context a poll would produce, and whether the problem is active (and its subject). The tracker
is driven with hand-built findings and with a scripted series of polls on a fake clock; the
hypothesis properties are the issue's: no raise from fewer than ``raise_after`` consecutive
active evaluations, never two raises without a clear between, every raised finding that stops
being active ends cleared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.clock import FakeClock
from agent.findings import (
    DETECTED_KINDS,
    DeviceHistory,
    Finding,
    FindingContext,
    FindingTracker,
    LogLine,
    ProblemKind,
    assess,
    config_hash,
    evaluate,
    observe,
    parse_blackbox_line,
    parse_blackbox_lines,
    site_majority,
    track,
)
from agent.models import PollOutcome
from agent.ticket_words import INCIDENT_WORDS
from collectors.models import ChannelResult, DeviceFacts, HealthSample, Peripheral
from config.incidents import IncidentSettings
from config.loader import ConfigError, load_config, load_profile
from config.schema import Contract, Device
from uploader.models import Priority

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
DEFAULTS = IncidentSettings()
DEVICE = Device(id="a30-zarzad", room="Sala Zarząd", site="warszawa", model="A30", host="127.0.0.1")
PROFILE = load_profile("yealink-a30")  # min_firmware 133.15.0.42, expects all four peripherals
ALL_CONNECTED = tuple(
    Peripheral(kind, name, True)
    for kind, name in (("camera", "cam"), ("microphone", "mic"), ("speaker", "spk"), ("touch_panel", "CTP18"))
)
HTTP_OK = ChannelResult("http", True, "ok", 120.0)


def sample(
    *,
    firmware: str = "133.15.0.60",
    serial: str = "8030324101000117",
    latency_ms: float = 120.0,
    peripherals: tuple[Peripheral, ...] = ALL_CONNECTED,
    channels: tuple[ChannelResult, ...] = (HTTP_OK,),
    uptime_s: int | None = 86_400,
    at: datetime = NOW,
) -> HealthSample:
    """A healthy A30 sample unless told otherwise."""
    return HealthSample(
        device_id=DEVICE.id,
        taken_at=at,
        facts=DeviceFacts("A30", firmware, serial, "00:15:65:aa:bb:cc"),
        uptime_s=uptime_s,
        peripherals=peripherals,
        latency_ms=latency_ms,
        channels=channels,
    )


def polled(s: HealthSample | None = None, *, reason: str = "ok", at: datetime = NOW) -> PollOutcome:
    """The outcome of a poll that produced ``s`` (None: the device did not answer with ``reason``)."""
    ok = s is not None and reason == "ok"
    return PollOutcome(DEVICE.id, at, ok, reason if s is None else "ok", 0.12, sample=s)


def context(s: HealthSample | None = None, *, reason: str = "ok", **extra: Any) -> FindingContext:
    """A context at NOW for the A30 profile; a healthy sample unless told otherwise."""
    outcome = polled(s if s is not None or reason != "ok" else sample(), reason=reason)
    return FindingContext(device=DEVICE, outcome=outcome, now=NOW, profile=PROFILE, **extra)


def mtr(**fields: object) -> ChannelResult:
    """The Teams Rooms channel reporting ``fields``."""
    return ChannelResult("mtr", True, "ok", 5.0, fields=dict(fields))


def of_kind(ctx: FindingContext, kind: ProblemKind, cfg: IncidentSettings = DEFAULTS) -> list[Finding]:
    """The findings of ``kind`` for ``ctx``."""
    return [f for f in evaluate(ctx, cfg) if f.kind is kind]


def cfg(**blocks: dict[str, Any]) -> IncidentSettings:
    """IncidentSettings with the given blocks, validated as the YAML would be."""
    return IncidentSettings.model_validate(blocks)


# --- every detector at its edges -----------------------------------------------------------

M = timedelta(minutes=1)
S = timedelta(seconds=1)
D = timedelta(days=1)


def _errors(count: int, *, severity: int = 3, age: timedelta = M) -> tuple[LogLine, ...]:
    return tuple(LogLine(NOW - age, severity) for _ in range(count))


def _boots(*ages: timedelta) -> DeviceHistory:
    return DeviceHistory(boots=tuple(sorted(NOW - a for a in ages)))


def _restarts(*ages: timedelta) -> DeviceHistory:
    return DeviceHistory(app_restarts=tuple(sorted(NOW - a for a in ages)))


def _contract(end: date) -> Contract:
    return Contract(number="HZ/2024/0117", start=date(2024, 3, 1), end=end, serials=("8030324101000117",))


TODAY = NOW.date()  # 11:00 in Warsaw: the same date
K = ProblemKind


def on_mtr(**fields: object) -> FindingContext:
    """A context whose sample carries the Teams Rooms channel with ``fields``."""
    return context(sample(channels=(HTTP_OK, mtr(**fields))))


def on_sample(**changes: Any) -> FindingContext:
    """A context whose sample differs from the healthy one by ``changes``."""
    return context(sample(**changes))


def also(*channels: ChannelResult) -> FindingContext:
    """A context whose sample has ``channels`` besides a working http."""
    return on_sample(channels=(HTTP_OK, *channels))


def hb_error(age: timedelta) -> FindingContext:
    """The Teams Rooms heartbeat in error for ``age``."""
    return on_mtr(mtr_heartbeat_ok=False, mtr_heartbeat_since=(NOW - age).isoformat())


CAM_OFF = (Peripheral("camera", "cam", False), *ALL_CONNECTED[1:])
MTR_MIC_OFF = mtr(mtr_components={"camera": True, "microphone": False})
SSH_NEW_KEY = ChannelResult("ssh", False, "identity_changed", 9.0)
SSH_TIMEOUT = ChannelResult("ssh", False, "timeout", 5000.0)
FW60, FW50 = "133.15.0.60", "133.15.0.50"
Row = tuple[str, ProblemKind, Callable[[], FindingContext], list[str] | None]
# (case, kind, context, subjects of the active findings; None = the kind is not judged at all)
ROWS: list[Row] = [
    ("heartbeat error exactly persist_minutes", K.MTR_HEARTBEAT, lambda: hb_error(15 * M), [""]),
    ("heartbeat error one second short", K.MTR_HEARTBEAT, lambda: hb_error(15 * M - S), []),
    ("heartbeat ok", K.MTR_HEARTBEAT, lambda: on_mtr(mtr_heartbeat_ok=True), []),
    ("stale heartbeat is no error by default", K.MTR_HEARTBEAT,
     lambda: on_mtr(mtr_heartbeat_ok=True, mtr_heartbeat_stale=True), []),
    ("no mtr channel: not judged", K.MTR_HEARTBEAT, lambda: context(), None),
    ("3 boots in 30 min", K.BOOT_LOOP, lambda: context(history=_boots(30 * M - S, 10 * M, M)), [""]),
    ("oldest boot 30 min ago is out", K.BOOT_LOOP, lambda: context(history=_boots(30 * M, 10 * M, M)), []),
    ("2 boots", K.BOOT_LOOP, lambda: context(history=_boots(10 * M, M)), []),
    ("camera disconnected", K.PERIPHERAL, lambda: on_sample(peripherals=CAM_OFF), ["camera"]),
    ("all connected", K.PERIPHERAL, lambda: context(), []),
    ("expected touch panel not listed", K.PERIPHERAL, lambda: on_sample(peripherals=ALL_CONNECTED[:3]),
     ["touch_panel"]),
    ("no peripherals listed: not judged", K.PERIPHERAL, lambda: on_sample(peripherals=()), None),
    ("device silent: not judged", K.PERIPHERAL, lambda: context(reason="timeout"), None),
    ("Teams Rooms: microphone unhealthy", K.PERIPHERAL,
     lambda: on_sample(peripherals=(), channels=(HTTP_OK, MTR_MIC_OFF)),
     ["microphone"]),
    ("3 app restarts in 60 min", K.APP_RESTARTS, lambda: context(history=_restarts(59 * M, 30 * M, M)), [""]),
    ("2 app restarts", K.APP_RESTARTS, lambda: context(history=_restarts(30 * M, M)), []),
    ("20 errors in 15 min", K.LOG_ERRORS, lambda: context(log_lines=_errors(20)), [""]),
    ("19 errors", K.LOG_ERRORS, lambda: context(log_lines=_errors(19)), []),
    ("20 warnings are no errors", K.LOG_ERRORS, lambda: context(log_lines=_errors(20, severity=4)), []),
    ("20 errors, 15 min old", K.LOG_ERRORS, lambda: context(log_lines=_errors(20, age=15 * M)), []),
    ("no black box: not judged", K.LOG_ERRORS, lambda: context(), None),
    ("3001 ms", K.SLOW, lambda: on_sample(latency_ms=3001), [""]),
    ("3000 ms is not over", K.SLOW, lambda: on_sample(latency_ms=3000), []),
    ("silent device: slow not judged", K.SLOW, lambda: context(reason="timeout"), None),
    ("poll failed: identity changed", K.IDENTITY_CHANGED, lambda: context(reason="identity_changed"), [""]),
    ("ssh host key changed", K.IDENTITY_CHANGED, lambda: also(SSH_NEW_KEY), [""]),
    ("identity unchanged", K.IDENTITY_CHANGED, lambda: context(), []),
    ("silent device: identity not judged", K.IDENTITY_CHANGED, lambda: context(reason="timeout"), None),
    ("ssh down while http answers", K.CHANNEL_DOWN, lambda: also(SSH_TIMEOUT), ["ssh"]),
    ("cloud unreachable is neutral", K.CHANNEL_DOWN,
     lambda: also(ChannelResult("ymcs", False, "cloud_unreachable", 1)), []),
    ("changed host key is no channel down", K.CHANNEL_DOWN, lambda: also(SSH_NEW_KEY), []),
    ("below the profile minimum", K.FIRMWARE, lambda: on_sample(firmware="133.15.0.41"), [""]),
    ("at the profile minimum", K.FIRMWARE, lambda: on_sample(firmware="133.15.0.42"), []),
    ("another platform (Zoom) is not compared", K.FIRMWARE, lambda: on_sample(firmware="133.30.0.1"), []),
    ("behind the site majority", K.FIRMWARE,
     lambda: context(sample(firmware=FW50), site_firmwares=(FW60, FW60, FW60, FW50)), [""]),
    ("no strict majority", K.FIRMWARE,
     lambda: context(sample(firmware=FW50), site_firmwares=(FW60, FW60, FW50, FW50)), []),
    ("too few devices for a majority", K.FIRMWARE,
     lambda: context(sample(firmware=FW50), site_firmwares=(FW60, FW60)), []),
    ("firmware unknown: not judged", K.FIRMWARE, lambda: on_sample(firmware="unknown"), None),
    ("update overdue", K.FIRMWARE_UPDATE_STUCK,
     lambda: context(update_overdue=True, updating_since=NOW - 90 * M), [""]),
    ("update in time", K.FIRMWARE_UPDATE_STUCK, lambda: context(updating_since=NOW - 30 * M), []),
    ("config changed", K.CONFIG_DRIFT,
     lambda: context(config={"ntp": "b", "v": 5}, config_baseline={"ntp": "a", "v": 5}), [""]),
    ("same config, other key order", K.CONFIG_DRIFT,
     lambda: context(config={"v": 5, "ntp": "a"}, config_baseline={"ntp": "a", "v": 5}), []),
    ("no baseline: not judged", K.CONFIG_DRIFT, lambda: context(config={"ntp": "a"}), None),
    ("contract ends in 60 days", K.CONTRACT, lambda: context(contract=_contract(TODAY + 60 * D)), [""]),
    ("contract ends in 61 days", K.CONTRACT, lambda: context(contract=_contract(TODAY + 61 * D)), []),
    ("contract ends today", K.CONTRACT, lambda: context(contract=_contract(TODAY)), [""]),
    ("contract ended yesterday", K.CONTRACT, lambda: context(contract=_contract(TODAY - D)), [""]),
    ("no contract, uncovered off", K.CONTRACT, lambda: context(), []),
    ("clock 121 s ahead", K.CLOCK_SKEW, lambda: context(device_time=NOW + 121 * S), [""]),
    ("clock 121 s behind", K.CLOCK_SKEW, lambda: context(device_time=NOW - 121 * S), [""]),
    ("clock 120 s off is within", K.CLOCK_SKEW, lambda: context(device_time=NOW + 120 * S), []),
    ("no device time: not judged", K.CLOCK_SKEW, lambda: context(), None),
    ("certificate expires in 30 days", K.CERT_EXPIRY, lambda: context(cert_not_after=NOW + 30 * D), [""]),
    ("expires in 30 days and a second", K.CERT_EXPIRY, lambda: context(cert_not_after=NOW + 30 * D + S), []),
    ("certificate expired", K.CERT_EXPIRY, lambda: context(cert_not_after=NOW - S), [""]),
    ("no certificate known: not judged", K.CERT_EXPIRY, lambda: context(), None),
]  # fmt: skip


@pytest.mark.parametrize(("case", "kind", "make", "subjects"), ROWS, ids=[r[0] for r in ROWS])
def test_detector_is_active_exactly_past_its_threshold(
    case: str, kind: ProblemKind, make: Callable[[], FindingContext], subjects: list[str] | None
) -> None:
    result = assess(make(), DEFAULTS)
    found = [f for f in result.findings if f.kind is kind]
    if subjects is None:
        assert kind not in result.judged and found == []
        return
    assert kind in result.judged
    assert sorted(f.subject for f in found) == sorted(subjects)
    for finding in found:
        assert finding.priority == Priority(DEFAULTS.priority_of(kind))
        assert finding.summary_en and finding.summary_pl and finding.summary_en != finding.summary_pl


def test_every_detector_kind_is_covered_by_the_table_both_ways() -> None:
    active = {kind for _, kind, _, subjects in ROWS if subjects}
    quiet = {kind for _, kind, _, subjects in ROWS if subjects == []}
    assert active == quiet == set(DETECTED_KINDS)


def test_default_priorities_follow_the_incident_policy() -> None:
    critical = {
        ProblemKind.OFFLINE,
        ProblemKind.SITE_NETWORK,
        ProblemKind.MTR_HEARTBEAT,
        ProblemKind.BOOT_LOOP,
    }
    low = {
        ProblemKind.FIRMWARE,
        ProblemKind.CONFIG_DRIFT,
        ProblemKind.CONTRACT,
        ProblemKind.CLOCK_SKEW,
        ProblemKind.CERT_EXPIRY,
    }
    for kind in ProblemKind:
        expected = "critical" if kind in critical else "low" if kind in low else "medium"
        assert DEFAULTS.priority_of(kind) == expected, kind


def test_every_kind_has_a_ticket_headline_in_both_languages() -> None:
    for language in ("en", "pl"):
        headlines = INCIDENT_WORDS[language]["headline"]
        assert {*DETECTED_KINDS, ProblemKind.FLAPPING} <= set(headlines)


def test_contract_days_count_in_the_site_time_zone() -> None:
    late = datetime(2026, 3, 2, 23, 30, tzinfo=UTC)  # already 3 March in Warsaw
    ctx = dataclasses.replace(context(contract=_contract(date(2026, 5, 2))), now=late)
    assert of_kind(ctx, ProblemKind.CONTRACT)[0].details["days_left"] == "60"
    utc = dataclasses.replace(ctx, site_timezone="UTC")
    assert of_kind(utc, ProblemKind.CONTRACT) == []  # 61 days left in UTC


def test_uncovered_device_is_a_finding_only_when_configured() -> None:
    on = cfg(contract={"uncovered": True})
    found = of_kind(context(), ProblemKind.CONTRACT, on)
    assert len(found) == 1 and "8030324101000117" in found[0].summary_en
    assert ProblemKind.CONTRACT not in assess(context(reason="timeout"), on).judged


def test_config_drift_names_the_changed_keys_and_ignores_the_listed_ones() -> None:
    ctx = context(config={"ntp": "b", "volume": 5, "extra": 1}, config_baseline={"ntp": "a", "volume": 5})
    assert of_kind(ctx, ProblemKind.CONFIG_DRIFT)[0].details["changed_keys"] == "extra, ntp"
    assert of_kind(ctx, ProblemKind.CONFIG_DRIFT, cfg(config_drift={"ignore_keys": ["ntp", "extra"]})) == []
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_stale_heartbeat_counts_when_configured() -> None:
    channel = mtr(
        mtr_heartbeat_ok=True, mtr_heartbeat_stale=True, mtr_heartbeat_at=(NOW - 60 * M).isoformat()
    )
    found = of_kind(
        context(sample(channels=(HTTP_OK, channel))),
        ProblemKind.MTR_HEARTBEAT,
        cfg(mtr_heartbeat={"stale_is_error": True}),
    )
    assert len(found) == 1 and "missing" in found[0].summary_en


def test_peripheral_settings_narrow_what_is_watched() -> None:
    missing_panel = context(sample(peripherals=ALL_CONNECTED[:3]))
    assert of_kind(missing_panel, ProblemKind.PERIPHERAL, cfg(peripheral={"missing_expected": False})) == []
    cam_off = context(sample(peripherals=(Peripheral("camera", "cam", False), *ALL_CONNECTED[1:])))
    assert of_kind(cam_off, ProblemKind.PERIPHERAL, cfg(peripheral={"kinds": ["microphone"]})) == []


def test_configured_priority_and_disabled_kind() -> None:
    slow = context(sample(latency_ms=9000))
    assert (
        of_kind(slow, ProblemKind.SLOW, cfg(slow={"priority": "critical"}))[0].priority is Priority.CRITICAL
    )
    off = assess(slow, cfg(slow={"enabled": False}))
    assert ProblemKind.SLOW in off.judged and not [f for f in off.findings if f.kind is ProblemKind.SLOW]


def test_finding_names_its_dedup_key_and_becomes_a_problem() -> None:
    finding = of_kind(context(sample(peripherals=ALL_CONNECTED[1:])), ProblemKind.PERIPHERAL)[0]
    assert finding.name == "peripheral:camera"
    problem = finding.to_problem("pl", first_seen=NOW)
    assert (problem.kind, problem.name, problem.priority) == (
        "peripheral",
        "peripheral:camera",
        Priority.MEDIUM,
    )
    assert problem.summary == finding.summary_pl and problem.first_seen == NOW


# --- inputs: black box, history, majority ----------------------------------------------------


def test_blackbox_lines_give_time_and_syslog_severity() -> None:
    lines = [
        "2026-03-02T09:59:00.000000Z <11>Mar  2 09:59:00 bar app: camera error",  # 11 % 8 = 3 (err)
        "2026-03-02T09:59:01.000000Z <14>1 2026-03-02T09:59:01Z bar app - - - info",  # 6 (info)
        "2026-03-02T09:59:02.000000Z no priority at all",
        "not a black-box line",
    ]
    parsed = parse_blackbox_lines(lines)
    assert [(p.at.second, p.severity) for p in parsed] == [(0, 3), (1, 6), (2, None)]
    assert parse_blackbox_line("2026-03-02T09:59:02.000000 <11>naive time") is None


def test_site_majority_needs_enough_devices_and_more_than_half() -> None:
    assert site_majority(("1.2.3.4",) * 2 + ("1.2.3.3",), 3) == "1.2.3.4"
    assert site_majority(("1.2.3.4",) * 2 + ("1.2.3.3",) * 2, 3) is None
    assert site_majority(("1.2.3.4", "1.2.3.4", "unknown"), 3) is None


def _poll_series(uptimes: Sequence[int | None], step_s: float = 60.0) -> DeviceHistory:
    clock = FakeClock(NOW)
    history = DeviceHistory()
    for uptime in uptimes:
        at = clock.now()
        outcome = (
            polled(sample(uptime_s=uptime, at=at), at=at)
            if uptime is not None
            else polled(None, reason="timeout", at=at)
        )
        history = observe(history, outcome, DEFAULTS)
        clock.advance(step_s)
    return history


def test_uptime_resets_are_counted_as_boots_and_make_a_boot_loop() -> None:
    history = _poll_series([600, 660, 30, 90, None, 20, 80])
    assert len(history.boots) == 3
    ctx = dataclasses.replace(context(), history=history, now=NOW + 6 * M)
    assert len(of_kind(ctx, ProblemKind.BOOT_LOOP)) == 1


def test_a_steady_uptime_with_jitter_is_one_boot() -> None:
    uptimes = [600 + 60 * i + (i % 3) * 7 - 7 for i in range(30)]  # polls a few seconds early or late
    assert len(_poll_series(uptimes).boots) == 1


def test_old_boots_are_forgotten_after_the_longest_window() -> None:
    history = _poll_series([100, 160, 10], step_s=60)
    later = observe(
        history,
        polled(sample(uptime_s=7200, at=NOW + 2 * timedelta(hours=1)), at=NOW + 2 * timedelta(hours=1)),
        DEFAULTS,
    )
    assert later.boots == ()


def test_app_restarts_come_from_distinct_mtr_restart_times() -> None:
    history = DeviceHistory()
    for minutes, restart in ((0, -50), (1, -50), (5, 2), (6, 2), (7, 6)):  # the newest restart, per poll
        at = NOW + minutes * M
        channel = mtr(mtr_last_restart_at=(NOW + restart * M).isoformat())
        history = observe(history, polled(sample(channels=(HTTP_OK, channel), at=at), at=at), DEFAULTS)
    assert len(history.app_restarts) == 3
    ctx = dataclasses.replace(context(), history=history, now=NOW + 7 * M)
    assert len(of_kind(ctx, ProblemKind.APP_RESTARTS)) == 1


# --- the tracker: debounce, clear, escalation ------------------------------------------------


def _f(
    kind: ProblemKind = ProblemKind.SLOW, subject: str = "", priority: Priority = Priority.MEDIUM
) -> Finding:
    return Finding(kind, priority, subject, f"{kind} {subject}", f"pl {kind} {subject}")


def _run(
    steps: Sequence[Sequence[Finding]], settings: IncidentSettings = DEFAULTS, *, every: timedelta = M
) -> tuple[FindingTracker, list[tuple[int, str, str]]]:
    """Feed evaluations; return the final state and (step, event, name) of every event."""
    state = FindingTracker.initial()
    events: list[tuple[int, str, str]] = []
    for i, active in enumerate(steps):
        state, raised, cleared, changed = track(state, active, NOW + i * every, settings)
        events += [(i, "raise", f.name) for f in raised] + [(i, "clear", f.name) for f in cleared]
        events += [(i, f"{c.old}->{c.new}", c.finding.name) for c in changed]
    return state, events


def test_slow_raises_only_after_three_consecutive_evaluations() -> None:
    slow = [_f()]
    _, events = _run([slow, slow, [], slow, slow, slow])
    assert events == [(5, "raise", "slow")]


def test_identity_raises_at_once_and_clears_after_one_good_evaluation() -> None:
    ident = [_f(ProblemKind.IDENTITY_CHANGED)]
    _, events = _run([ident, [], []])
    assert events == [(0, "raise", "identity_changed"), (1, "clear", "identity_changed")]


def test_a_raised_finding_clears_only_after_clear_after_misses_in_a_row() -> None:
    slow = [_f()]
    _, events = _run([slow] * 3 + [[], [], slow, [], [], []])  # slow clears after 3 misses in a row
    assert events == [(2, "raise", "slow"), (8, "clear", "slow")]


def test_subjects_are_tracked_apart() -> None:
    cam, mic = _f(ProblemKind.PERIPHERAL, "camera"), _f(ProblemKind.PERIPHERAL, "microphone")
    _, events = _run([[cam], [cam, mic], [mic], [mic], [mic]])
    assert events == [
        (1, "raise", "peripheral:camera"),
        (2, "raise", "peripheral:microphone"),
        (3, "clear", "peripheral:camera"),
    ]


def test_kinds_not_judged_keep_their_state() -> None:
    cam = _f(ProblemKind.PERIPHERAL, "camera")
    state = FindingTracker.initial()
    for i in range(2):
        state, *_ = track(state, [cam], NOW + i * M, DEFAULTS)
    assert [f.name for f in state.open_findings()] == ["peripheral:camera"]
    for i in range(5):  # the device is silent: peripherals cannot be judged
        state, raised, cleared, changed = track(
            state, [], NOW + (2 + i) * M, DEFAULTS, judged={ProblemKind.SLOW}
        )
        assert raised == cleared == changed == []
    assert state.first_seen("peripheral:camera") == NOW


def test_escalation_moves_the_same_finding_up_once() -> None:
    settings = cfg(cert_expiry={"escalate": {"after_hours": 2, "to": "medium"}})
    cert = [_f(ProblemKind.CERT_EXPIRY, priority=Priority.LOW)]
    state, events = _run([cert] * 6 + [[]], settings, every=timedelta(minutes=30))
    assert events == [
        (0, "raise", "cert_expiry"),
        (4, "low->medium", "cert_expiry"),
        (6, "clear", "cert_expiry"),
    ]
    assert state.tracks == {}


def test_escalation_result_carries_the_new_priority_and_says_why() -> None:
    settings = cfg(cert_expiry={"escalate": {"after_hours": 1, "to": "critical"}})
    cert = _f(ProblemKind.CERT_EXPIRY, priority=Priority.LOW)
    state, *_ = track(FindingTracker.initial(), [cert], NOW, settings)
    state, raised, _, changed = track(state, [cert], NOW + timedelta(hours=1), settings)
    assert raised == [] and len(changed) == 1
    change = changed[0]
    assert (change.old, change.new, change.finding.priority, change.escalated) == (
        Priority.LOW,
        Priority.CRITICAL,
        Priority.CRITICAL,
        True,
    )
    assert "too long" in change.why("en") and "zbyt długo" in change.why("pl")
    _, _, cleared, _ = track(state, [], NOW + timedelta(hours=2), settings)
    assert [f.priority for f in cleared] == [Priority.CRITICAL]


def test_a_priority_change_from_the_detector_is_reported_both_ways() -> None:
    high, lower = (
        _f(ProblemKind.IDENTITY_CHANGED, priority=Priority.CRITICAL),
        _f(ProblemKind.IDENTITY_CHANGED),
    )
    _, events = _run([[high], [lower], [lower], [high]])
    assert events == [
        (0, "raise", "identity_changed"),
        (1, "critical->medium", "identity_changed"),
        (3, "medium->critical", "identity_changed"),
    ]


def test_escalate_must_go_up_and_names_its_key(tmp_path: Path) -> None:
    text = (
        'sites:\n  - name: warszawa\n    address: "ul. Marszałkowska 142, 00-061 Warszawa"\n'
        '    contact: {name: Anna Kowalska, phone: "+48 22 555 01 23", email: it@example.pl}\n'
        "devices:\n  - {id: a30-zarzad, room: Sala, site: warszawa, model: A30, host: 127.0.0.1}\n"
        "incidents:\n  boot_loop: {escalate: {after_hours: 1, to: medium}}\n"
    )
    path = tmp_path / "hezo.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (
        "incidents.boot_loop.escalate.to: must be a higher priority than boot_loop.priority (critical)"
        in (caught.value.render())
    )


# --- polls → findings → tracker, on a fake clock ---------------------------------------------


def test_slow_polls_raise_one_finding_and_recovery_clears_it() -> None:
    clock = FakeClock(NOW)
    state = FindingTracker.initial()
    log: list[tuple[int, str]] = []
    for i, latency in enumerate([4000, 4000, 100, 4000, 4000, 4000, 4000, 100, 100, 100]):
        at = clock.now()
        ctx = FindingContext(DEVICE, polled(sample(latency_ms=latency, at=at), at=at), at, PROFILE)
        result = assess(ctx, DEFAULTS)
        state, raised, cleared, _ = track(state, result.findings, at, DEFAULTS, result.judged)
        log += [(i, "raise")] * len(raised) + [(i, "clear")] * len(cleared)
        clock.advance(60)
    assert log == [(5, "raise"), (9, "clear")]


def test_a_silent_device_neither_raises_nor_clears_its_peripheral_finding() -> None:
    clock = FakeClock(NOW)
    state = FindingTracker.initial()
    raises = clears = 0
    no_camera = sample(peripherals=ALL_CONNECTED[1:])
    for poll in [no_camera, no_camera, None, None, None, no_camera, sample(), sample()]:
        at = clock.now()
        outcome = (
            polled(dataclasses.replace(poll, taken_at=at), at=at)
            if poll
            else polled(None, reason="timeout", at=at)
        )
        result = assess(FindingContext(DEVICE, outcome, at, PROFILE), DEFAULTS)
        state, raised, cleared, _ = track(state, result.findings, at, DEFAULTS, result.judged)
        raises, clears = raises + len(raised), clears + len(cleared)
        clock.advance(60)
    assert (raises, clears) == (1, 1)


# --- properties ------------------------------------------------------------------------------

POOL = (_f(), _f(ProblemKind.PERIPHERAL, "camera"), _f(ProblemKind.CHANNEL_DOWN, "ssh"))


@settings(max_examples=200, deadline=None)
@given(
    raise_after=st.integers(1, 4),
    clear_after=st.integers(1, 4),
    steps=st.lists(st.frozensets(st.sampled_from(range(len(POOL)))), max_size=40),
)
def test_raise_and_clear_invariants(raise_after: int, clear_after: int, steps: list[frozenset[int]]) -> None:
    block = {"raise_after": raise_after, "clear_after": clear_after}
    settings_ = cfg(slow=block, peripheral=block, channel_down=block)
    series = [[POOL[i] for i in sorted(step)] for step in steps] + [[]] * clear_after
    state = FindingTracker.initial()
    is_open: dict[str, bool] = {}
    for n, active in enumerate(series):
        state, raised, cleared, changed = track(state, active, NOW + n * M, settings_)
        assert changed == []
        for finding in raised:
            window = series[max(0, n - raise_after + 1) : n + 1]
            assert n + 1 >= raise_after, "raised from fewer than raise_after evaluations"
            assert all(finding in step for step in window), "raised without raise_after in a row"
            assert not is_open.get(finding.name), "two raises without a clear between"
            is_open[finding.name] = True
        for finding in cleared:
            assert is_open.get(finding.name), "cleared what was never raised"
            assert finding not in active
            is_open[finding.name] = False
    assert not any(is_open.values()), "a raised finding that stopped being active did not end cleared"
    assert state.open_findings() == []
