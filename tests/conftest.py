"""Shared fixtures: simulated fleets on their own loopback network, stopped after each test."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from simulator.fleet import Fleet


@pytest.fixture
def fleet_factory() -> Iterator[Callable[..., Fleet]]:
    """Start fleets on a random 127.<net>.0.0/16 with ephemeral ports; stop them all afterwards."""
    started: list[Fleet] = []

    def start(devices: int = 6, seed: int = 11, **options: Any) -> Fleet:
        sim = Fleet(devices=devices, seed=seed, net=random.randint(100, 200), port=0, **options)
        sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()
