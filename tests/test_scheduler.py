"""The poll scheduler: its timing rules (pure functions) and its APScheduler wiring (which polls move
a device's job: only a change of plan)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest

from agent.scheduler import PollScheduler, _OverlapSkipped, first_poll_window_s, next_due_s

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


# --- the APScheduler wiring: real threads, short intervals; waits poll a condition --------------


class Polls:
    """``run_poll`` for a test: records every poll, answers each device's planned delays in turn
    (then the interval); ``during`` runs inside a device's first poll."""

    def __init__(self, interval_s: float, plans: dict[str, list[float]] | None = None) -> None:
        self.interval_s = interval_s
        self.plans = {k: list(v) for k, v in (plans or {}).items()}
        self.seen: list[str] = []
        self.during: dict[str, Callable[[], None]] = {}
        self.raise_for: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, device_id: str) -> float:
        with self._lock:
            first = device_id not in self.seen
            self.seen.append(device_id)
            plan = self.plans.get(device_id)
            delay = plan.pop(0) if plan else self.interval_s
        if first and device_id in self.during:
            self.during[device_id]()
        if device_id in self.raise_for:
            raise RuntimeError("a bug in the poll")
        return delay

    def count(self, device_id: str) -> int:
        with self._lock:
            return self.seen.count(device_id)


def wait_until(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        threading.Event().wait(0.01)


@pytest.fixture
def scheduler() -> Iterator[Callable[..., tuple[PollScheduler, list[tuple[str, float]]]]]:
    """Build a PollScheduler whose job moves are recorded; stopped at the end."""
    made: list[PollScheduler] = []

    def make(
        devices: list[str], polls: Polls, *, interval_s: float, jitter_s: float = 0.01
    ) -> tuple[PollScheduler, list[tuple[str, float]]]:
        sched = PollScheduler(devices, polls, interval_s=interval_s, jitter_s=jitter_s, max_workers=4)
        moves: list[tuple[str, float]] = []
        move = sched._move

        def recorded(device_id: str, delay_s: float) -> None:
            moves.append((device_id, delay_s))
            move(device_id, delay_s)

        sched._move = recorded  # type: ignore[method-assign]
        made.append(sched)
        return sched, moves

    yield make
    for sched in made:
        sched.stop()


def test_regular_polls_leave_their_job_alone_and_only_a_change_of_plan_moves_it(
    scheduler: Callable[..., tuple[PollScheduler, list[tuple[str, float]]]],
) -> None:
    polls = Polls(0.3, {"b": [0.05, 0.05]})  # b fails twice: two fast retries, then regular again
    sched, moves = scheduler(["a", "b"], polls, interval_s=0.3)
    sched.start()
    wait_until(lambda: polls.count("a") >= 4 and polls.count("b") >= 6)
    assert [d for d, _ in moves if d == "a"] == []
    b_moves = [delay for d, delay in moves if d == "b"]
    assert len(b_moves) == 3  # the two retries and the first regular poll after them (a fresh phase)
    assert all(0.0 < delay <= 0.06 for delay in b_moves[:2])
    assert 0.29 <= b_moves[2] <= 0.32


def test_poll_now_during_a_poll_runs_the_device_again_as_soon_as_it_ends(
    scheduler: Callable[..., tuple[PollScheduler, list[tuple[str, float]]]],
) -> None:
    polls = Polls(30.0)
    sched, moves = scheduler(["a"], polls, interval_s=30.0)
    polls.during["a"] = lambda: sched.poll_now("a")  # e.g. a trap arrives while "a" is polled
    sched.start()
    wait_until(lambda: polls.count("a") >= 2)  # long before the 30 s interval
    assert moves == [("a", 0.0)]
    sched.poll_now("a")  # and when no poll runs
    wait_until(lambda: polls.count("a") >= 3)


def test_a_poll_that_raised_comes_back_at_the_regular_interval(
    scheduler: Callable[..., tuple[PollScheduler, list[tuple[str, float]]]],
) -> None:
    polls = Polls(30.0)
    polls.raise_for.add("a")
    sched, moves = scheduler(["a"], polls, interval_s=30.0)
    sched.start()
    wait_until(lambda: polls.count("a") == 1 and not sched._polling)
    assert moves == []  # not retried at once, in a loop: its job stays on the interval
    assert polls.count("a") == 1


def test_the_warning_that_a_running_poll_was_due_again_is_dropped_for_polls_only() -> None:
    quiet = _OverlapSkipped(["a"])

    def record(job_id: str) -> logging.LogRecord:
        return logging.LogRecord(
            "apscheduler.scheduler",
            logging.WARNING,
            __file__,
            0,
            'Execution of job "%s" skipped: maximum number of running instances reached (%d)',
            (SimpleNamespace(id=job_id), 1),
            None,
        )

    assert not quiet.filter(record("a"))
    assert quiet.filter(record("dispatch"))  # housekeeping that overruns is still worth a line
