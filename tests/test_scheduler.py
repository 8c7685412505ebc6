"""The poll scheduler's timing rules (pure functions; the APScheduler wiring is covered end to end)."""

from __future__ import annotations

import random

import pytest

from agent.scheduler import first_poll_window_s, next_due_s

T, R, J = 60.0, 10.0, 5.0


def due(*, due_s: float, ended_s: float, delay_s: float, was_retry: bool = False, seed: int = 1) -> float:
    return next_due_s(
        due_s=due_s,
        ended_s=ended_s,
        delay_s=delay_s,
        interval_s=T,
        was_retry=was_retry,
        jitter_s=J,
        rng=random.Random(seed),
    )


def test_regular_polls_keep_their_phase_however_long_a_poll_took() -> None:
    assert due(due_s=100.0, ended_s=100.3, delay_s=T) == 160.0
    assert due(due_s=100.0, ended_s=105.0, delay_s=T) == 160.0  # a hung 5 s poll does not push the phase


def test_a_poll_that_overran_its_interval_runs_again_at_once() -> None:
    assert due(due_s=100.0, ended_s=170.0, delay_s=T) == 170.0


def test_a_fault_after_a_good_poll_is_polled_at_most_one_interval_later() -> None:
    phase = 0.0
    for _ in range(50):  # fifty rounds of slow polls: never drifts
        ended = phase + random.Random(int(phase)).uniform(0, 5)
        phase = due(due_s=phase, ended_s=ended, delay_s=T)
    assert phase == 50 * T


@pytest.mark.parametrize("seed", range(20))
def test_retries_run_after_the_poll_ended_with_at_most_ten_percent_jitter(seed: int) -> None:
    got = due(due_s=100.0, ended_s=105.0, delay_s=R, seed=seed)
    assert 115.0 <= got <= 116.0


@pytest.mark.parametrize("seed", range(20))
def test_back_from_retries_a_device_takes_a_fresh_phase_within_the_jitter(seed: int) -> None:
    got = due(due_s=100.0, ended_s=100.5, delay_s=T, was_retry=True, seed=seed)
    assert 160.5 <= got <= 165.5


def test_fleet_back_from_retries_spreads_out() -> None:
    phases = {due(due_s=0.0, ended_s=0.0, delay_s=T, was_retry=True, seed=s) for s in range(100)}
    assert max(phases) - min(phases) > J / 2


@pytest.mark.parametrize(
    ("devices", "window"),
    [(1, J), (10, J), (100, J), (200, 10.0), (1000, 50.0), (5000, T)],
)
def test_first_polls_spread_wider_for_a_big_fleet_not_past_an_interval(devices: int, window: float) -> None:
    assert first_poll_window_s(devices, interval_s=T, jitter_s=J) == window
