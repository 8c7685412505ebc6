"""Combining channels: down only when every channel is silent; degraded names the failing ones."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collectors.base import Collector
from collectors.errors import AuthFailed, CollectorError, DeviceTimeout, DeviceUnreachable
from collectors.models import ChannelResult, DeviceFacts, HealthSample, LogBundle
from collectors.multi import MultiChannelCollector

FACTS = DeviceFacts(model="A30", firmware="133.15.0.60", serial="8030000000000001", mac="00:15:65:00:00:01")
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class FakePrimary(Collector):
    def __init__(self) -> None:
        self.device_id = "a30-01"
        self.error: CollectorError | None = None

    def collect_facts(self) -> DeviceFacts:
        return FACTS

    def collect_health(self) -> HealthSample:
        if self.error is not None:
            raise self.error
        return HealthSample(device_id=self.device_id, taken_at=NOW, facts=FACTS, latency_ms=12.0)

    def collect_logs(self, dest_dir: Path) -> LogBundle:
        raise NotImplementedError


class FakeProbe:
    def __init__(self, name: str, error: CollectorError | None = None, **fields: object) -> None:
        self.name = name
        self.error = error
        self.fields = fields
        self.closed = False

    def probe(self) -> ChannelResult:
        if self.error is not None:
            raise self.error
        return ChannelResult(self.name, True, "ok", 3.0, fields=dict(self.fields))

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def combine(
    primary: FakePrimary, *probes: FakeProbe, pool: concurrent.futures.Executor
) -> MultiChannelCollector:
    return MultiChannelCollector("a30-01", "A30", primary, probes, pool=pool, clock=lambda: NOW)


def test_every_channel_answering_reports_each_with_its_latency(pool: concurrent.futures.Executor) -> None:
    sample = combine(FakePrimary(), FakeProbe("tcp6024"), FakeProbe("snmp"), pool=pool).collect_health()
    assert [(c.channel, c.ok) for c in sample.channels] == [("http", True), ("tcp6024", True), ("snmp", True)]
    assert sample.failing_channels == ()
    assert sample.facts == FACTS


def test_one_channel_down_while_http_answers_is_degraded(pool: concurrent.futures.Executor) -> None:
    probe = FakeProbe("snmp", DeviceTimeout("127.0.0.1:161 no answer within 1 s"))
    sample = combine(FakePrimary(), FakeProbe("tcp6024"), probe, pool=pool).collect_health()
    assert sample.failing_channels == ("snmp",)
    failed = next(c for c in sample.channels if c.channel == "snmp")
    assert failed.reason == "timeout" and "161" in failed.detail


def test_http_down_while_another_channel_answers_is_degraded_not_down(
    pool: concurrent.futures.Executor,
) -> None:
    primary = FakePrimary()
    collector = combine(primary, FakeProbe("tcp6024", model="A30", firmware="133.15.0.60"), pool=pool)
    collector.collect_health()  # learns the identity while HTTP works
    primary.error = DeviceUnreachable("127.0.0.1:443 connection refused")
    sample = collector.collect_health()
    assert sample.failing_channels == ("http",)
    assert sample.facts == FACTS  # the last known identity, not a guess


def test_identity_from_the_banner_when_http_never_answered(pool: concurrent.futures.Executor) -> None:
    primary = FakePrimary()
    primary.error = DeviceTimeout("no answer")
    sample = combine(
        primary, FakeProbe("tcp6024", model="A30", firmware="133.15.0.61"), pool=pool
    ).collect_health()
    assert (sample.facts.model, sample.facts.firmware, sample.facts.serial) == (
        "A30",
        "133.15.0.61",
        "unknown",
    )


def test_every_channel_silent_is_down_naming_each(pool: concurrent.futures.Executor) -> None:
    primary = FakePrimary()
    primary.error = DeviceUnreachable("refused")
    collector = combine(primary, FakeProbe("tcp6024", DeviceTimeout("no banner")), pool=pool)
    with pytest.raises(DeviceUnreachable, match=r"http: unreachable; tcp6024: timeout"):
        collector.collect_health()


def test_every_channel_timing_out_is_a_timeout(pool: concurrent.futures.Executor) -> None:
    primary = FakePrimary()
    primary.error = DeviceTimeout("hang")
    with pytest.raises(DeviceTimeout):
        combine(primary, FakeProbe("snmp", DeviceTimeout("silence")), pool=pool).collect_health()


def test_auth_failure_is_raised_even_when_other_channels_answer(pool: concurrent.futures.Executor) -> None:
    primary = FakePrimary()
    primary.error = AuthFailed("login rejected")
    with pytest.raises(AuthFailed):
        combine(primary, FakeProbe("tcp6024"), pool=pool).collect_health()


def test_close_closes_every_probe(pool: concurrent.futures.Executor) -> None:
    probes = [FakeProbe("tcp6024"), FakeProbe("snmp")]
    combine(FakePrimary(), *probes, pool=pool).close()
    assert all(p.closed for p in probes)
