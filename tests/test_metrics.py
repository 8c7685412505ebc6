"""/metrics: what it counts, that promtool accepts it, and a real Prometheus scraping the agent."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests
import yaml
from agent_server import Client, make_agent, poll_all, take_offline, wait_until
from prometheus_client.parser import text_string_to_metric_families

from agent.api import LocalApi
from agent.clock import FakeClock
from agent.daemon import Agent
from agent.metrics import tag
from agent.models import PollOutcome
from collectors.models import ChannelResult, DeviceFacts, HealthSample
from simulator.fleet import Fleet

PROMTOOL = Path("/usr/bin/promtool")
PROMETHEUS = Path("/usr/bin/prometheus")
ALLOWED_LABELS = {"device", "channel", "priority", "reason", "le"}

Served = tuple[Fleet, Agent, FakeClock, LocalApi, Client]


@pytest.fixture
def served(fleet_factory: Callable[..., Fleet], tmp_path: Path) -> Iterator[Served]:
    """An agent (with its syslog receiver on a free UDP port) polled once, and its server."""
    fleet = fleet_factory(devices=6, seed=11)
    clock = FakeClock()
    syslog = {"host": "127.0.0.1", "udp_port": 0, "tcp_port": None}
    agent = make_agent(fleet, tmp_path, clock, syslog=syslog)
    server = LocalApi.for_agent(agent)
    try:
        poll_all(agent, clock)
        server.start()
        yield fleet, agent, clock, server, Client(server.url, None)
    finally:
        server.stop()
        agent.stop()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _promtool(text: str) -> subprocess.CompletedProcess[str]:
    if not PROMTOOL.exists():
        pytest.fail(f"{PROMTOOL} not found: install the Debian package prometheus")
    return subprocess.run(
        [str(PROMTOOL), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )


def test_metrics_count_polls_states_incidents_tickets_and_syslog(served: Served) -> None:
    fleet, agent, clock, _server, client = served
    target = fleet.devices[0]
    assert agent.syslog is not None
    agent.syslog.start()
    port = agent.syslog.udp_port
    assert port is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # from the device's own address
        sock.bind((target.host, 0))
        sock.sendto(b"<134>1 2026-01-05T09:00:00Z bar app - - - camera ok", ("127.0.0.1", port))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.sendto(b"<134>who am I", ("127.0.0.1", port))
    wait_until(lambda: agent.syslog is not None and agent.syslog.stats.count("dropped_unknown") == 1)
    take_offline(agent, fleet, clock, target.id)

    text = client.get("/metrics").text
    samples = _samples(text)
    assert _value(samples, "hezo_device_up", device=target.id) == 0
    assert _value(samples, "hezo_device_down", device=target.id) == 1
    assert all(_value(samples, "hezo_device_up", device=d.id) == 1 for d in fleet.devices[1:])
    assert _value(samples, "hezo_incidents_open", priority="critical") == 1
    assert _value(samples, "hezo_incidents_open", priority="low") == 0
    assert _value(samples, "hezo_tickets_delivered_total") == 1
    assert _value(samples, "hezo_tickets_rejected") == 0
    assert _value(samples, "hezo_outbox_pending") == 0
    assert _value(samples, "hezo_outbox_oldest_pending_age_seconds") == 0
    polls = 6 + agent.config.agent.down_after
    assert _value(samples, "hezo_poll_duration_seconds_count") == polls
    assert _value(samples, "hezo_polls_total", device=target.id, reason="ok") == 1
    failed = sum(
        v
        for (name, labels), v in samples.items()
        if name == "hezo_polls_total" and ("device", target.id) in labels and ("reason", "ok") not in labels
    )
    assert failed == agent.config.agent.down_after  # fmt: skip
    assert _value(samples, "hezo_syslog_messages_received_total", device=target.id) == 1
    assert _value(samples, "hezo_syslog_messages_dropped_total", reason="unknown_sender") == 1


def test_outbox_backlog_shows_pending_and_its_age(served: Served) -> None:
    fleet, agent, clock, _server, client = served
    agent.dispatcher.store.hold(agent.backend.name, "credentials rejected", clock.now())  # nothing goes out
    take_offline(agent, fleet, clock, fleet.devices[1].id)
    clock.advance(300)
    samples = _samples(client.get("/metrics").text)
    assert _value(samples, "hezo_outbox_pending") >= 1
    assert _value(samples, "hezo_outbox_oldest_pending_age_seconds") >= 300
    assert _value(samples, "hezo_outbox_held_backends") == 1
    assert _value(samples, "hezo_tickets_delivered_total") == 0


def test_promtool_accepts_the_scraped_metrics(served: Served) -> None:
    fleet, agent, clock, _server, client = served
    take_offline(agent, fleet, clock, fleet.devices[2].id)
    text = client.get("/metrics").text
    result = _promtool(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_promtool_is_a_real_check() -> None:
    bad = (
        "# HELP bad_seconds_total a gauge named like a counter\n"
        "# TYPE bad_seconds_total gauge\nbad_seconds_total 1\n"
    )
    assert _promtool(bad).returncode != 0


def test_labels_are_bounded_no_free_text_ever_becomes_a_label(served: Served) -> None:
    fleet, agent, clock, server, client = served
    at = clock.now()
    facts = DeviceFacts("A30", "133.15.0.76", "1", "00:15:65:00:00:01")
    weird = PollOutcome(
        device_id=fleet.devices[0].id, at=at, ok=True, reason="ok", duration_s=0.2,
        sample=HealthSample(
            device_id=fleet.devices[0].id, taken_at=at, facts=facts,
            channels=(ChannelResult("SSH over \"jump host\"", False, "Connection refused by 10.0.0.1", 3.0),),
        ),
    )  # fmt: skip
    server.metrics.observe_poll(weird)
    server.metrics.observe_poll(replace(weird, ok=False, reason="timeout: 5 s elapsed", sample=None))
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, sample
            for name in ("reason", "channel"):
                if name in sample.labels:
                    assert re.fullmatch(r"[a-z0-9_]{1,40}", sample.labels[name]), sample
            if "device" in sample.labels:
                assert sample.labels["device"] in {d.id for d in agent.config.devices}
    assert tag("timeout") == "timeout" and tag("Connection refused") == "other" and tag("x" * 41) == "other"


# --- a real Prometheus ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def prometheus(folder: Path, target: str, site: str) -> Iterator[str]:
    """A real Prometheus on loopback scraping ``target`` every second; yields its base URL."""
    if not PROMETHEUS.exists():
        pytest.fail(f"{PROMETHEUS} not found: install the Debian package prometheus")
    port = _free_port()
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": "hezo-agent", "metrics_path": "/metrics",
            "static_configs": [{"targets": [target], "labels": {"site": site}}],
        }],
    }))  # fmt: skip
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [str(PROMETHEUS), f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
         f"--storage.tsdb.path={folder / 'tsdb'}", "--storage.tsdb.retention.time=1h"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(base) or process.poll() is not None, deadline_s=30)
        assert process.poll() is None, (folder / "prometheus.log").read_text()[-800:]
        yield base
    finally:
        log.close()
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(5)


def _ready(base: str) -> bool:
    try:
        return requests.get(base + "/-/ready", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _query(base: str, promql: str) -> list[dict[str, object]]:
    body = requests.get(base + "/api/v1/query", params={"query": promql}, timeout=5).json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_a_real_prometheus_scrapes_the_agent_on_loopback(served: Served, tmp_path: Path) -> None:
    fleet, agent, clock, server, _client = served
    take_offline(agent, fleet, clock, fleet.devices[3].id)
    target = f"127.0.0.1:{server.port}"
    started = time.monotonic()
    with prometheus(tmp_path, target, site="warszawa-hq") as base:
        up = wait_until(lambda: (r := _query(base, 'up{job="hezo-agent"}')) and r[0]["value"][1] == "1" and r)
        assert up[0]["metric"]["instance"] == target
        down = wait_until(lambda: _query(base, "hezo_device_down == 1"))
        assert [r["metric"]["device"] for r in down] == [fleet.devices[3].id]
        assert all(r["metric"]["site"] == "warszawa-hq" for r in down)  # the label added by the scrape
        critical = _query(base, 'sum by (site) (hezo_incidents_open{priority="critical"})')
        assert critical[0]["value"][1] == "1"
    assert time.monotonic() - started < 60


# --- the documentation ------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def test_docs_list_exactly_the_metrics_served_and_their_alert_rules_pass_promtool(
    served: Served, tmp_path: Path
) -> None:
    _fleet, _agent, _clock, _server, client = served
    text = DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(hezo_[a-z_]+)` \|", text, re.M))
    served_names = {f.name for f in text_string_to_metric_families(client.get("/metrics").text)}
    served_names = {n + "_total" if n + "_total" in text else n for n in served_names}  # counters lose _total
    forwarding = {"hezo_forward_connected", "hezo_forward_messages_sent_total",
                  "hezo_forward_messages_dropped_total", "hezo_forward_backlog_messages"}  # fmt: skip
    assert documented - forwarding == served_names - {n for n in served_names if n.endswith("_created")}
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    rules = next(block for block in blocks if block.startswith("groups:"))
    (tmp_path / "rules.yml").write_text(rules, encoding="utf-8")
    command = [str(PROMTOOL), "check", "rules", str(tmp_path / "rules.yml")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 rules found" in result.stdout
