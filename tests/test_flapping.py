"""Flap detection: the Nagios weighted percent state change, thresholds and hysteresis."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.flapping import (
    NEWEST_WEIGHT,
    OLDEST_WEIGHT,
    FlapStarted,
    FlapState,
    FlapStopped,
    change_weight,
    flap_step,
    percent_state_change,
)
from agent.models import PollOutcome
from agent.state import DeviceState, Policy, WentDown, next_delay_s, step
from config.loader import ConfigError, load_config
from config.quiet import FlappingSettings

DEFAULTS = FlappingSettings()
UP, DOWN = True, False


def run(
    results: list[bool],
    settings: FlappingSettings = DEFAULTS,
    state: FlapState | None = None,
    k: int | None = None,
) -> tuple[FlapState, list[tuple[int, FlapStarted | FlapStopped]]]:
    """Feed ``results`` one by one; return the final state and (index, event) of every event."""
    current = state or FlapState.initial()
    events: list[tuple[int, FlapStarted | FlapStopped]] = []
    for i, ok in enumerate(results):
        current, event = flap_step(current, ok, settings, k)
        if event is not None:
            events.append((i, event))
    return current, events


def alternating(n: int, first: bool = UP) -> list[bool]:
    return [first if i % 2 == 0 else not first for i in range(n)]


# --- the percentage ----------------------------------------------------------------------


def test_weights_rise_linearly_from_oldest_to_newest_change() -> None:
    weights = [change_weight(x, 21) for x in range(1, 21)]
    assert weights[0] == pytest.approx(OLDEST_WEIGHT) and weights[-1] == pytest.approx(NEWEST_WEIGHT)
    steps = {round(b - a, 9) for a, b in itertools.pairwise(weights)}
    assert len(steps) == 1 and steps.pop() > 0
    assert sum(weights) == pytest.approx(20.0)  # the average weight is exactly 1
    with pytest.raises(ValueError):
        change_weight(0, 21)
    with pytest.raises(ValueError):
        change_weight(21, 21)


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ([UP] * 21, 0.0),
        ([DOWN] * 21, 0.0),
        (alternating(21), 100.0),
        ([UP] * 20 + [DOWN], NEWEST_WEIGHT * 100 / 20),  # one change, the newest: 6.25 %
        ([UP] + [DOWN] * 20, OLDEST_WEIGHT * 100 / 20),  # one change, the oldest: 3.75 %
        ([UP] * 10 + [DOWN] * 11, (0.75 + 9 * 0.5 / 19) * 100 / 20),  # the 10th of 20 changes
        ([UP] * 30 + [DOWN], NEWEST_WEIGHT * 100 / 20),  # only the newest 21 count
        ([UP, DOWN], NEWEST_WEIGHT * 100 / 20),  # a short history sits at the newest end
        ([], 0.0),
    ],
    ids=["all-up", "all-down", "alternating", "newest", "oldest", "middle", "long", "short", "empty"],
)
def test_percent_state_change(history: list[bool], expected: float) -> None:
    assert percent_state_change(tuple(history), 21) == pytest.approx(expected)


def test_recent_changes_count_more_than_old_ones() -> None:
    old = [UP, DOWN, UP, DOWN, UP] + [UP] * 16
    new = [UP] * 16 + [UP, DOWN, UP, DOWN, UP]
    assert percent_state_change(tuple(new), 21) > percent_state_change(tuple(old), 21)


# --- starting and stopping ----------------------------------------------------------------


def test_a_device_toggling_every_poll_starts_flapping_once() -> None:
    state, events = run(alternating(200))
    assert [type(e) for _, e in events] == [FlapStarted]
    index, started = events[0]
    assert started.percent > 50.0 and started.threshold == 50.0
    assert index == 9  # nine changes in a row are the first to weigh more than 50 %
    assert state.flapping and state.percent == pytest.approx(100.0)
    assert len(state.history) == 21


@pytest.mark.parametrize("ok", [UP, DOWN], ids=["always-up", "always-down"])
def test_a_stable_device_never_flaps(ok: bool) -> None:
    state, events = run([ok] * 500)
    assert events == [] and not state.flapping and state.percent == 0.0


def test_a_single_outage_is_not_flapping() -> None:
    state, events = run([UP] * 30 + [DOWN] * 5 + [UP] * 30)
    assert events == [] and not state.flapping


def test_flapping_stops_once_below_the_low_threshold_after_stabilising() -> None:
    state, events = run(alternating(60) + [UP] * 40)
    assert [(i, type(e)) for i, e in events] == [(9, FlapStarted), (74, FlapStopped)]
    stopped = events[1][1]
    assert stopped.percent < 25.0 and stopped.threshold == 25.0
    assert not state.flapping and state.percent == 0.0


@pytest.mark.parametrize("flapping", [False, True], ids=["not-flapping-stays", "flapping-stays"])
def test_between_the_thresholds_nothing_changes(flapping: bool) -> None:
    """Hysteresis: a pattern that sits between low (25 %) and high (50 %) keeps the current verdict."""
    prefix = alternating(21) if flapping else [UP] * 21
    state, _first = run(prefix)
    assert state.flapping is flapping
    three_up_three_down = [(i // 3) % 2 == 0 for i in range(300)]
    percents = []
    for ok in three_up_three_down:
        state, event = flap_step(state, ok, DEFAULTS)
        percents.append(state.percent)
        assert event is None
    assert min(percents[21:]) > 25.0 and max(percents[21:]) < 50.0  # really in the band
    assert state.flapping is flapping


def test_a_hovering_device_yields_one_start_not_a_stream() -> None:
    """Two up, two down hovers around 50 %: crossing the high threshold again raises nothing new."""
    _, events = run([(i // 2) % 2 == 0 for i in range(400)])
    assert [type(e) for _, e in events] == [FlapStarted]


def test_a_device_flapping_every_two_minutes_for_an_hour_yields_one_flap_started() -> None:
    """Polled every minute, down one minute in every two: one start in the hour, one stop after."""
    clock = FakeClock()
    start = clock.now()
    state = FlapState.initial()
    started = stopped = 0
    for _ in range(60):
        minute = int((clock.now() - start).total_seconds() // 60)
        state, event = flap_step(state, minute % 2 == 0, DEFAULTS)
        started += isinstance(event, FlapStarted)
        stopped += isinstance(event, FlapStopped)
        clock.advance(60)
    assert (started, stopped) == (1, 0) and state.flapping
    for _ in range(60):  # then it stabilises for an hour
        state, event = flap_step(state, True, DEFAULTS)
        started += isinstance(event, FlapStarted)
        stopped += isinstance(event, FlapStopped)
        clock.advance(60)
    assert (started, stopped) == (1, 1) and not state.flapping


def test_with_the_real_poll_cadence_many_outages_become_one_flap() -> None:
    """The state machine polls faster while suspect; 18 confirmed outages still give one FlapStarted."""
    clock = FakeClock()
    start = clock.now()
    policy = Policy(down_after=3, up_after=2, poll_interval_s=60.0, retry_interval_s=10.0)
    device, flap = DeviceState.initial(), FlapState.initial()
    went_down = started = stopped = 0
    while (clock.now() - start).total_seconds() < 3600:
        ok = (clock.now() - start).total_seconds() % 120 < 60  # down 60 s of every 120 s
        device, events = step(device, PollOutcome("bar", clock.now(), ok, "poll", 0.1), policy)
        went_down += sum(isinstance(e, WentDown) for e in events)
        flap, event = flap_step(flap, ok, DEFAULTS, policy.down_after)
        started += isinstance(event, FlapStarted)
        stopped += isinstance(event, FlapStopped)
        clock.advance(next_delay_s(device, policy))
    assert went_down > 10  # without flap handling: a cycle of critical tickets
    assert (started, stopped) == (1, 0)


# --- settings -----------------------------------------------------------------------------


def test_disabled_detection_records_nothing_and_raises_nothing() -> None:
    off = FlappingSettings(enabled=False)
    state, events = run(alternating(100), off)
    assert events == [] and state == FlapState.initial()


def test_thresholds_and_window_are_configurable() -> None:
    strict = FlappingSettings(high_threshold_pct=20.0, low_threshold_pct=10.0, checks=11)
    _, events = run(alternating(20), strict)
    assert events and events[0][0] < 9  # with a lower threshold it starts earlier than by default
    state, _ = run(alternating(40), strict)
    assert len(state.history) == 11


@pytest.mark.parametrize(
    ("section", "line"),
    [
        (
            "flapping: {high_threshold_pct: 30, low_threshold_pct: 30}",
            "flapping.low_threshold_pct: must be less than high_threshold_pct (30), got 30",
        ),
        ("flapping: {checks: 3}", "flapping.checks: must be at least 5, got 3"),
        (
            "flapping: {blips_threshold_pct: 40}",
            "flapping.blips_threshold_pct: must be at least high_threshold_pct (50), got 40",
        ),
        ("flapping: {high_threshold_pct: 150}", "flapping.high_threshold_pct: must be at most 100, got 150"),
    ],
)
def test_bad_flapping_settings_name_the_key(tmp_path: Path, section: str, line: str) -> None:
    path = tmp_path / "hezo.yaml"
    path.write_text(MINIMAL + section + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.lines == [line]


MINIMAL = """\
sites:
  - name: s1
    address: "ul. Testowa 1, Warszawa"
    contact: {name: A, phone: "123", email: a@example.pl}
devices:
  - {id: d1, room: R1, site: s1, model: A20, host: 127.0.0.1}
"""


# --- blips are not outages (issue 9: one- and two-poll failures open nothing) -------------


def _blips(rng: random.Random, polls: int, rate: float) -> list[bool]:
    """Poll results of a device failing one or two polls in a row on ``rate`` of its polls, then
    answering the retry (never k = 3 failures in a row)."""
    results: list[bool] = []
    for _ in range(polls):
        results.append(UP)
        if rng.random() < rate:
            results += [DOWN] * rng.choice((1, 2)) + [UP]
    return results


def test_random_one_and_two_poll_blips_never_start_flapping_with_k() -> None:
    rng = random.Random(9)
    crossed_nagios_bar = 0
    for _device in range(1000):
        results = _blips(rng, 120, 0.05)
        state, events = run(results, k=3)
        assert events == [] and not state.flapping
        _, nagios = run(results)  # the Nagios rule alone (no k): the same blips do cross 50 %
        crossed_nagios_bar += bool(nagios)
    assert crossed_nagios_bar > 0  # the test is not vacuous: these blips are dense enough


def test_a_device_failing_every_other_poll_still_flaps_without_an_outage() -> None:
    _, events = run(alternating(60), k=3)
    assert [type(e) for _, e in events] == [FlapStarted]
    assert events[0][1].threshold == DEFAULTS.blips_threshold_pct


def test_between_the_two_bars_only_a_window_with_a_confirmed_outage_flaps() -> None:
    """~55 %: blips alone stay below the blips bar; three failures in a row make it an outage."""
    blips = [UP] * 10 + [DOWN, UP] * 5 + [DOWN]  # the 11 newest changes: 61.5 %
    assert 50.0 < percent_state_change(tuple(blips), 21) < 70.0
    state, events = run(blips, k=3)
    assert events == [] and not state.flapping
    outage = [UP] * 8 + [DOWN] * 3 + [UP, DOWN] * 5  # three down in a row, then blips: 61.2 %
    assert 50.0 < percent_state_change(tuple(outage), 21) < 70.0
    _, events = run(outage, k=3)
    assert [type(e) for _, e in events] == [FlapStarted] and events[0][1].threshold == 50.0


def test_the_blips_bar_may_not_be_below_the_high_bar() -> None:
    with pytest.raises(ValueError, match="must be at least high_threshold_pct"):
        FlappingSettings(high_threshold_pct=60.0, blips_threshold_pct=55.0)
