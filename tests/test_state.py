"""The state machine: k failures to go down, m successes to come back, one event per change."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from agent.clock import FakeClock
from agent.models import PollOutcome
from agent.state import DeviceState, Event, Health, Policy, Recovered, WentDown, next_delay_s, step

DEFAULT = Policy(down_after=3, up_after=2, poll_interval_s=60, retry_interval_s=10)


@dataclass
class Run:
    """What feeding a pattern of polls produced."""

    states: list[DeviceState]
    events: list[Event]

    @property
    def final(self) -> DeviceState:
        return self.states[-1]

    def of(self, kind: type) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


def feed(
    pattern: str,
    policy: Policy = DEFAULT,
    clock: FakeClock | None = None,
    every_s: float = 10.0,
    state: DeviceState | None = None,
) -> Run:
    """Feed ``pattern`` ('o' = good poll, 'x' = failed poll), one poll every ``every_s`` seconds."""
    clock = clock or FakeClock()
    state = state or DeviceState.initial()
    states: list[DeviceState] = []
    events: list[Event] = []
    for char in pattern:
        ok = char == "o"
        outcome = PollOutcome("bar-1", clock.now(), ok, "ok" if ok else "unreachable", 0.01)
        state, new = step(state, outcome, policy)
        states.append(state)
        events.extend(new)
        clock.advance(every_s)
    return Run(states, events)


@pytest.mark.parametrize(
    ("name", "pattern", "policy", "health", "downs", "ups"),
    [
        ("healthy fleet", "o" * 20, DEFAULT, Health.UP, 0, 0),
        ("one missed poll", "ooxoo", DEFAULT, Health.UP, 0, 0),
        ("two missed polls", "ooxxoo", DEFAULT, Health.UP, 0, 0),
        ("two missed, pending", "ooxx", DEFAULT, Health.SUSPECT, 0, 0),
        ("k missed", "ooxxx", DEFAULT, Health.DOWN, 1, 0),
        ("k missed then ten more", "ooxxx" + "x" * 10, DEFAULT, Health.DOWN, 1, 0),
        ("never answered, k missed", "xxx", DEFAULT, Health.DOWN, 1, 0),
        ("one ok after down is not recovery", "oxxxo", DEFAULT, Health.RECOVERING, 1, 0),
        ("recovery after m", "oxxxoo", DEFAULT, Health.UP, 1, 1),
        ("recovery interrupted", "oxxxoxoo", DEFAULT, Health.UP, 1, 1),
        ("recovering then down again", "oxxxox", DEFAULT, Health.DOWN, 1, 0),
        ("flapping never reaches down", "oxoxoxoxoxoxox", DEFAULT, Health.SUSPECT, 0, 0),
        ("double flapping never reaches down", "oxxoxxoxxoxxo", DEFAULT, Health.UP, 0, 0),
        ("two outages", "oxxxoo" + "xxxoo", DEFAULT, Health.UP, 2, 2),
        ("k=1 single miss is down", "oxo", Policy(down_after=1, up_after=2), Health.RECOVERING, 1, 0),
        ("k=1 repeated misses, one event", "oxxxx", Policy(down_after=1, up_after=2), Health.DOWN, 1, 0),
        ("m=1 single ok is recovery", "oxxxo", Policy(down_after=3, up_after=1), Health.UP, 1, 1),
        ("k=1 m=1", "oxoxo", Policy(down_after=1, up_after=1), Health.UP, 2, 2),
        ("unknown then ok", "o", DEFAULT, Health.UP, 0, 0),
        ("unknown then fail", "x", DEFAULT, Health.SUSPECT, 0, 0),
    ],
)
def test_transition_table(
    name: str, pattern: str, policy: Policy, health: Health, downs: int, ups: int
) -> None:
    run = feed(pattern, policy)
    assert run.final.health == health, name
    assert len(run.of(WentDown)) == downs, name
    assert len(run.of(Recovered)) == ups, name


def test_k_missed_polls_emit_one_went_down_with_the_first_failure_time() -> None:
    clock = FakeClock()
    start = clock.now()
    run = feed("oo" + "x" * 13, clock=clock)
    (down,) = run.of(WentDown)
    assert isinstance(down, WentDown)
    assert down.failures == 3
    assert down.reason == "unreachable"
    assert (down.first_failure_at - start).total_seconds() == 20
    assert (down.at - start).total_seconds() == 40
    assert run.final.failures == 13
    assert run.final.down_since == down.first_failure_at


def test_recovery_reports_downtime_from_first_failure_to_confirmed_recovery() -> None:
    clock = FakeClock()
    start = clock.now()
    # polls at 0 s (ok), 10/20/30 s (fail), 40/50 s (ok: confirmed at 50 s)
    run = feed("oxxxoo", clock=clock)
    (rec,) = run.of(Recovered)
    assert isinstance(rec, Recovered)
    assert (rec.down_since - start).total_seconds() == 10
    assert (rec.at - start).total_seconds() == 50
    assert rec.downtime_s == 40
    final = run.final
    assert final.down_since is None and final.first_failure_at is None
    assert final.last_ok_at == rec.at


def test_long_outage_downtime_counts_every_retry() -> None:
    run = feed("o" + "x" * 60 + "oo", every_s=60)
    (rec,) = run.of(Recovered)
    assert isinstance(rec, Recovered)
    assert rec.downtime_s == 61 * 60


def test_counters_and_changed_at_follow_the_polls() -> None:
    clock = FakeClock()
    start = clock.now()
    run = feed("ooxx", clock=clock)
    assert [s.health for s in run.states] == [Health.UP, Health.UP, Health.SUSPECT, Health.SUSPECT]
    assert [s.failures for s in run.states] == [0, 0, 1, 2]
    assert [s.successes for s in run.states] == [1, 2, 0, 0]
    assert run.states[1].changed_at == start  # stayed UP: changed_at is when it became UP
    assert run.final.changed_at is not None and (run.final.changed_at - start).total_seconds() == 20
    assert run.final.last_reason == "unreachable"


def test_state_survives_resume_from_saved_value() -> None:
    clock = FakeClock()
    first = feed("oxx", clock=clock)
    rest = feed("x", clock=clock, state=first.final)
    assert len(rest.of(WentDown)) == 1


def test_next_delay_retries_fast_only_while_unconfirmed() -> None:
    policy = DEFAULT
    delays = {s.health: next_delay_s(s, policy) for s in [*feed("oxxxox").states, DeviceState.initial()]}
    assert delays == {
        Health.UNKNOWN: 60,
        Health.UP: 60,
        Health.SUSPECT: 10,
        Health.DOWN: 60,
        Health.RECOVERING: 10,
    }


@pytest.mark.parametrize(
    "bad", [{"down_after": 0}, {"up_after": 0}, {"poll_interval_s": 0}, {"retry_interval_s": -1}]
)
def test_policy_rejects_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Policy(**bad)  # type: ignore[arg-type]
