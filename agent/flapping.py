"""Flap detection, Nagios-style: a pure function of (state, poll result, settings).

The last ``settings.checks`` (21) results of a device are kept, oldest first. Every change
between two neighbouring results counts with a weight that rises linearly from
:data:`OLDEST_WEIGHT` (0.75) for the oldest possible change to :data:`NEWEST_WEIGHT` (1.25) for
the newest, the curve Nagios Core uses (``base/flapping.c``). The weighted sum over the
``checks - 1`` possible changes, as a percentage, is the *percent state change*.

A device starts flapping when the percentage rises above ``high_threshold_pct`` and stops
when it falls below ``low_threshold_pct``; in between nothing changes (hysteresis), so a
device hovering near one threshold never raises a stream of start/stop events. A short
history counts as if the oldest known result had repeated before it (Nagios fills its
history with the first state), so a young history cannot reach a high percentage by itself.

Blips are not outages: when the window holds no confirmed outage (``down_after`` failed polls
in a row), only one- and two-poll failures, the bar is ``blips_threshold_pct`` (70 %) instead.
Random blips on 5 % of polls reach ~50 % now and then by chance (simulated, 880 devices for two
hours: ~6 devices a run, at most 65 %), and issue 9 asks that they never open a ticket; a
device failing every other poll still reaches 100 %, and a device rebooting every two minutes
(confirmed outages, ~50 %) still flaps at the normal bar.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from config.quiet import FlappingSettings

#: weight of a change between the two oldest results of a full history
OLDEST_WEIGHT = 0.75
#: weight of a change between the two newest results
NEWEST_WEIGHT = 1.25
#: the problem kind of a flapping device in tickets and ``demo --json``
PROBLEM_FLAPPING = "flapping"


@dataclass(frozen=True, slots=True)
class FlapState:
    """What flap detection remembers about one device.

    ``history`` holds the latest poll results (True = answered), oldest first; ``percent`` is
    the percent state change after the newest one.
    """

    history: tuple[bool, ...] = ()
    flapping: bool = False
    percent: float = 0.0

    @classmethod
    def initial(cls) -> FlapState:
        """Return the state of a device never polled."""
        return cls()


@dataclass(frozen=True, slots=True)
class FlapStarted:
    """The percent state change rose above ``threshold``: the device is flapping."""

    percent: float
    threshold: float


@dataclass(frozen=True, slots=True)
class FlapStopped:
    """The percent state change fell below ``threshold``: the device is stable again."""

    percent: float
    threshold: float


FlapEvent = FlapStarted | FlapStopped


def change_weight(position: int, checks: int) -> float:
    """Return the weight of the change ending at ``position`` (1 = oldest change, checks-1 = newest).

    Raises:
        ValueError: ``position`` is outside 1..checks-1 or ``checks`` is below 3.
    """
    if checks < 3 or not 1 <= position <= checks - 1:
        raise ValueError(f"position {position} outside 1..{checks - 1} (checks={checks})")
    return OLDEST_WEIGHT + (position - 1) * (NEWEST_WEIGHT - OLDEST_WEIGHT) / (checks - 2)


def percent_state_change(history: tuple[bool, ...], checks: int) -> float:
    """Return the weighted percent state change (0-100) of the newest ``checks`` results.

    Raises:
        ValueError: ``checks`` is below 3.
    """
    if checks < 3:
        raise ValueError(f"checks must be at least 3, got {checks}")
    window = history[-checks:]
    offset = checks - len(window)  # a short history sits at the newest end of the window
    weighted = sum(
        change_weight(offset + i, checks) for i in range(1, len(window)) if window[i] != window[i - 1]
    )
    return weighted * 100.0 / (checks - 1)


def flap_step(
    state: FlapState, ok: bool, settings: FlappingSettings, down_after: int | None = None
) -> tuple[FlapState, FlapEvent | None]:
    """Record one poll result ``ok``; return the new state and the flap event it caused, if any.

    ``down_after`` is k, the failed polls in a row that confirm an outage: a window without such
    a run must rise above ``settings.blips_threshold_pct`` to start flapping (None: every
    window is judged by ``high_threshold_pct`` alone, as in Nagios).
    With detection disabled the state is returned unchanged and nothing is ever raised.
    """
    if not settings.enabled:
        return state, None
    history = (*state.history, ok)[-settings.checks :]
    percent = percent_state_change(history, settings.checks)
    if not state.flapping and percent > settings.high_threshold_pct:
        bar = settings.high_threshold_pct  # the settings keep blips_threshold_pct at or above it
        if down_after is not None and longest_failure_run(history) < down_after:
            bar = settings.blips_threshold_pct
        if percent > bar:
            return FlapState(history, True, percent), FlapStarted(percent, bar)
    if state.flapping and percent < settings.low_threshold_pct:
        return FlapState(history, False, percent), FlapStopped(percent, settings.low_threshold_pct)
    return FlapState(history, state.flapping, percent), None


def longest_failure_run(history: tuple[bool, ...]) -> int:
    """The most failed polls in a row in ``history``."""
    longest = run = 0
    for ok in history:
        run = 0 if ok else run + 1
        longest = max(longest, run)
    return longest


def replay(results: Iterable[bool], settings: FlappingSettings, down_after: int | None = None) -> FlapState:
    """Return the state :func:`flap_step` reaches over ``results`` (oldest first) from scratch.

    Rebuilds a device's flap state from its recorded polls when none was saved (a store of an
    agent before flap states were kept), so hysteresis starts where it would have been.
    """
    state = FlapState.initial()
    for ok in results:
        state, _event = flap_step(state, ok, settings, down_after)
    return state
