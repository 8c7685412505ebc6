"""Prometheus metrics of one agent, served at ``/metrics`` by the local server.

An own :class:`~prometheus_client.CollectorRegistry` (never the global one), so two agents in
one process (tests) keep apart. Poll durations, poll outcomes and channel outcomes are counted
as polls happen (:meth:`AgentMetrics.observe_poll`, an :attr:`Agent.poll_listeners` entry); the
rest is read from the agent when Prometheus scrapes.

Label cardinality is bounded: the only labels are ``device`` (a configured id), ``channel``,
``priority`` and ``reason`` (a short tag; anything else becomes ``other``). No free text ever
becomes a label. See ``docs/metrics.md`` for every series and a central Prometheus setup.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.models import PollOutcome
from agent.state import Health
from agent.views import PRIORITY_ORDER, FleetView

if TYPE_CHECKING:
    from agent.daemon import Agent

__all__ = ["CONTENT_TYPE", "POLL_BUCKETS_S", "AgentMetrics", "tag"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
POLL_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TAG = re.compile(r"^[a-z0-9_]{1,40}$")
#: the receiver's counters that mean a message was lost, by their label
SYSLOG_DROPS = {"unknown_sender": "dropped_unknown", "connection_rejected": "tcp_rejected"}


def tag(value: str) -> str:
    """``value`` if it is a short lowercase tag (``ok``, ``timeout``, ``http``), else ``other``."""
    return value if _TAG.match(value) else "other"


class AgentMetrics:
    """The agent's metrics: instruments fed by polls, plus a collector that reads the rest."""

    def __init__(self, view: FleetView, registry: CollectorRegistry | None = None) -> None:
        """Create the instruments in ``registry`` (a new one by default) and register the reader."""
        self.view = view
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.poll_duration = Histogram(
            "hezo_poll_duration_seconds",
            "Duration of one device poll (all its channels), seconds.",
            buckets=POLL_BUCKETS_S,
            registry=self.registry,
        )
        self.polls = Counter(
            "hezo_polls",
            "Device polls by outcome reason (ok or a collector error tag).",
            ["device", "reason"],
            registry=self.registry,
        )
        self.channel_outcomes = Counter(
            "hezo_channel_outcomes",
            "Channel results within answered polls, by channel and reason tag.",
            ["channel", "reason"],
            registry=self.registry,
        )
        self.registry.register(_AgentCollector(view))

    @classmethod
    def attach(cls, agent: Agent, view: FleetView) -> AgentMetrics:
        """Create the metrics of ``agent`` and start counting its polls."""
        metrics = cls(view)
        agent.poll_listeners.append(metrics.observe_poll)
        return metrics

    def detach(self, agent: Agent) -> None:
        """Stop counting ``agent``'s polls."""
        if self.observe_poll in agent.poll_listeners:
            agent.poll_listeners.remove(self.observe_poll)

    def observe_poll(self, outcome: PollOutcome) -> None:
        """Count one poll (called by the agent after every poll)."""
        self.poll_duration.observe(max(0.0, outcome.duration_s))
        self.polls.labels(outcome.device_id, tag(outcome.reason)).inc()
        if outcome.sample is not None:
            for channel in outcome.sample.channels:
                self.channel_outcomes.labels(tag(channel.channel), tag(channel.reason)).inc()

    def exposition(self) -> bytes:
        """The text exposition format of every metric (what ``/metrics`` returns)."""
        return generate_latest(self.registry)


class _AgentCollector(Collector):
    """Reads the agent's state at scrape time."""

    def __init__(self, view: FleetView) -> None:
        self.view = view

    def describe(self) -> Iterator[Metric]:
        return iter(())  # unchecked collector: its series depend on the configuration

    def collect(self) -> Iterator[Metric]:
        yield from self._devices()
        yield from self._incidents_and_tickets()
        yield from self._outbox()
        yield from self._syslog()
        yield from self._forwarding()
        if self.view.started_at is not None:
            yield GaugeMetricFamily(
                "hezo_agent_start_time_seconds",
                "When the agent's server started, seconds since the Unix epoch.",
                value=self.view.started_at.timestamp(),
            )

    def _devices(self) -> Iterator[Metric]:
        agent = self.view.agent
        up = GaugeMetricFamily(
            "hezo_device_up", "1 if the device's last poll reached it, 0 if not (absent before the first).",
            labels=["device"],
        )  # fmt: skip
        down = GaugeMetricFamily(
            "hezo_device_down", "1 while the agent counts the device as down (a confirmed outage).",
            labels=["device"],
        )  # fmt: skip
        for dev in agent.config.devices:
            outcome = agent.last_outcomes.get(dev.id)
            if outcome is not None:
                up.add_metric([dev.id], 1.0 if outcome.reachable else 0.0)
            state = agent.states.get(dev.id)
            down.add_metric([dev.id], 1.0 if state is not None and state.health == Health.DOWN else 0.0)
        yield up
        yield down

    def _incidents_and_tickets(self) -> Iterator[Metric]:
        agent = self.view.agent
        incidents = agent.store.incidents()
        open_by = dict.fromkeys(PRIORITY_ORDER, 0)
        for incident in incidents:
            if incident.status == "open" and incident.priority in open_by:
                open_by[incident.priority] += 1
        family = GaugeMetricFamily("hezo_incidents_open", "Open incidents by priority.", labels=["priority"])
        for priority, count in open_by.items():
            family.add_metric([priority], count)
        yield family
        delivered = {i.ticket_key for i in incidents if agent.dispatcher.ref_for(i.ticket_key) is not None}
        yield CounterMetricFamily(
            "hezo_tickets_delivered", "Tickets the helpdesk has opened for the agent (through the outbox).",
            value=len(delivered),
        )  # fmt: skip

    def _outbox(self) -> Iterator[Metric]:
        outbox = self.view.outbox()
        now = self.view.agent.clock.now()
        age = (now - outbox.oldest_pending_at).total_seconds() if outbox.oldest_pending_at else 0.0
        yield GaugeMetricFamily(
            "hezo_outbox_pending", "Ticket changes waiting in the outbox.", value=outbox.pending
        )
        yield GaugeMetricFamily(
            "hezo_outbox_oldest_pending_age_seconds", "Age of the oldest waiting ticket change (0: none).",
            value=max(0.0, age),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "hezo_tickets_rejected", "Ticket changes the helpdesk rejected for good (listed in the outbox).",
            value=outbox.rejected,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "hezo_outbox_held_backends", "Helpdesks held because they rejected the credentials.",
            value=len(outbox.held),
        )  # fmt: skip

    def _syslog(self) -> Iterator[Metric]:
        receiver = self.view.agent.syslog
        received = CounterMetricFamily(
            "hezo_syslog_messages_received", "Syslog messages accepted from each device.", labels=["device"]
        )
        dropped = CounterMetricFamily(
            "hezo_syslog_messages_dropped", "Syslog messages or connections dropped, by reason.",
            labels=["reason"],
        )  # fmt: skip
        if receiver is not None:
            per_device = receiver.stats.per_device
            for dev in self.view.agent.config.devices:
                received.add_metric([dev.id], per_device.get(dev.id, 0))
            for reason, counter in SYSLOG_DROPS.items():
                dropped.add_metric([reason], receiver.stats.count(counter))
        yield received
        yield dropped

    def _forwarding(self) -> Iterator[Metric]:
        forwarder = self.view.agent.forwarder
        if forwarder is None:
            return
        stats = forwarder.stats()
        yield GaugeMetricFamily(
            "hezo_forward_connected", "1 while connected to the central syslog collector.",
            value=1.0 if stats.connected else 0.0,
        )  # fmt: skip
        yield CounterMetricFamily(
            "hezo_forward_messages_sent", "Messages sent to the central collector.", value=stats.sent
        )
        dropped = CounterMetricFamily(
            "hezo_forward_messages_dropped", "Messages not forwarded, by reason.", labels=["reason"]
        )
        dropped.add_metric(["queue_full"], stats.dropped_queue_full)
        dropped.add_metric(["buffer_full"], stats.dropped_buffer_full)
        yield dropped
        yield GaugeMetricFamily(
            "hezo_forward_backlog_messages", "Messages waiting (memory and disk) for the collector.",
            value=stats.backlog_messages + stats.queued,
        )  # fmt: skip
