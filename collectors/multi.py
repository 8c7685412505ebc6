"""Combine a device's channels into one poll.

The primary channel (the profile's HTTP interface) gives identity and health; the others
(TCP 6024, SSH, SNMP, MTR, YMCS, ...) are probed alongside it. The rule of issue 4:
unreachable on every channel is *down*; some channels failing is *degraded* (a sample whose
``failing_channels`` names them); an auth failure or a changed identity is raised as such,
because a human must act. A *neutral* channel result (:data:`collectors.models.NEUTRAL_REASONS`,
e.g. the YMCS cloud itself unreachable) counts neither way: it does not make a device degraded,
and it does not keep a device that is silent everywhere else from being down.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from collectors.base import Collector
from collectors.errors import CollectorError, DeviceTimeout, DeviceUnreachable
from collectors.models import ChannelResult, DeviceFacts, HealthSample, LogBundle

#: reasons that mean "this channel did not reach the device at all"
SILENT = frozenset({"unreachable", "timeout"})


class ChannelProbe(Protocol):
    """One extra way of seeing a device."""

    name: str

    def probe(self) -> ChannelResult:
        """Probe the device once.

        Raises:
            CollectorError: the channel failed.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def _failed(name: str, err: CollectorError, latency_ms: float) -> ChannelResult:
    return ChannelResult(channel=name, ok=False, reason=err.reason, latency_ms=latency_ms, detail=str(err))


class MultiChannelCollector(Collector):
    """A collector that polls the primary channel and every extra probe in parallel."""

    def __init__(
        self,
        device_id: str,
        model: str,
        primary: Collector,
        probes: Sequence[ChannelProbe],
        *,
        pool: concurrent.futures.Executor,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.device_id = device_id
        self._model = model
        self._primary = primary
        self._probes = list(probes)
        self._pool = pool
        self._clock = clock or (lambda: datetime.now(UTC))
        self._last_facts: DeviceFacts | None = None

    def collect_facts(self) -> DeviceFacts:
        """Identity comes from the primary channel."""
        facts = self._primary.collect_facts()
        self._last_facts = facts
        return facts

    def collect_logs(self, dest_dir: Path) -> LogBundle:
        """Logs come from the primary channel's export."""
        return self._primary.collect_logs(dest_dir)

    def collect_config(self) -> Mapping[str, Any] | None:
        """The configuration comes from the primary channel."""
        return self._primary.collect_config()

    def _run_probe(self, probe: ChannelProbe) -> ChannelResult:
        started = time.monotonic()
        try:
            return probe.probe()
        except CollectorError as err:
            return _failed(probe.name, err, (time.monotonic() - started) * 1000)

    def collect_health(self) -> HealthSample:
        """Poll every channel; return the combined sample or raise when no channel answered.

        Raises:
            DeviceUnreachable: no channel reached the device (DeviceTimeout if all timed out).
            CollectorError: the primary channel reached the device but failed (auth, identity, shape).
        """
        futures = [self._pool.submit(self._run_probe, probe) for probe in self._probes]
        started = time.monotonic()
        primary_error: CollectorError | None = None
        sample: HealthSample | None = None
        try:
            sample = self._primary.collect_health()
        except CollectorError as err:
            primary_error = err
        primary_ms = (time.monotonic() - started) * 1000
        others = [f.result() for f in futures]
        if sample is not None:
            self._last_facts = sample.facts
            http = ChannelResult("http", True, "ok", sample.latency_ms or primary_ms)
            return dataclasses.replace(sample, channels=(http, *others))
        assert primary_error is not None
        if primary_error.reason not in SILENT:
            raise primary_error
        results = (_failed("http", primary_error, primary_ms), *others)
        answering = [r for r in results if r.ok]
        if not answering:
            summary = "; ".join(f"{r.channel}: {r.reason}" for r in results)
            if all(r.reason == "timeout" for r in results if not r.neutral):
                raise DeviceTimeout(f"no channel answered ({summary})") from primary_error
            raise DeviceUnreachable(f"no channel answered ({summary})") from primary_error
        return HealthSample(
            device_id=self.device_id,
            taken_at=self._clock(),
            facts=self._last_facts or self._facts_from(answering),
            latency_ms=min(r.latency_ms for r in answering),
            channels=results,
        )

    def _facts_from(self, results: Sequence[ChannelResult]) -> DeviceFacts:
        """Best identity the answering channels give (e.g. the 6024 banner), 'unknown' elsewhere."""
        merged: dict[str, object] = {}
        for result in results:
            for key, value in result.fields.items():
                merged.setdefault(key, value)
        return DeviceFacts(
            model=str(merged.get("model") or self._model),
            firmware=str(merged.get("firmware") or "unknown"),
            serial=str(merged.get("serial") or "unknown"),
            mac=str(merged.get("mac") or "unknown"),
        )

    def close(self) -> None:
        """Close the primary channel and every probe."""
        self._primary.close()
        for probe in self._probes:
            probe.close()
