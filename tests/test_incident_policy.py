"""The incident policy through the agent's real pipeline (scripted devices, fake clock).

Flapping gives one medium ticket, a site-wide outage one site_network incident, quiet periods
hold tickets back, a recurrence reopens, a swapped unit starts the return clock. Property tests
check the invariants over random poll histories.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scripted import scripted_agent, site

from agent.clock import FakeClock
from agent.daemon import Agent
from agent.incidents import Problem
from agent.state import Health
from collectors.models import Peripheral
from uploader.backends.local import LocalBackend, LocalTicket
from uploader.models import Priority

# a Monday 10:00 in Warsaw (09:00 UTC), outside any DST switch
MONDAY = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def devices(site_name: str, n: int, model: str = "A30", start: int = 1) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{site_name}-{i}",
            "room": f"Room {i}",
            "site": site_name,
            "model": model,
            "host": f"127.0.9.{i}",
        }
        for i in range(start, start + n)
    ]


def tickets(agent: Agent) -> list[LocalTicket]:
    assert isinstance(agent.backend, LocalBackend)
    agent.dispatcher.flush()
    return agent.backend.tickets()


def comment_bodies(agent: Agent, key: str) -> list[str]:
    ref = agent.backend.find(key)
    assert ref is not None
    return [c.body for c in agent.backend.list_comments(ref)]


def poll_round(agent: Agent, clock: FakeClock, seconds: float = 60.0) -> None:
    for dev in agent.config.devices:
        agent.poll_once(dev.id)
    clock.advance(seconds)


@contextmanager
def listener() -> Iterator[socket.socket]:
    """A TCP listener on loopback: a canary that answers while it is open."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock
    finally:
        sock.close()


def closed_port() -> int:
    with listener() as sock:
        port: int = sock.getsockname()[1]
    return port


def test_a_flapping_device_gets_one_medium_ticket_not_a_cycle_of_critical_ones(tmp_path: Path) -> None:
    clock = FakeClock(MONDAY)
    agent, scripts = scripted_agent(tmp_path, {"sites": [site("hq")], "devices": devices("hq", 2)}, clock)
    try:
        poll_round(agent, clock)
        flappy = "hq-1"
        for i in range(60):  # down every other poll for an hour
            scripts[flappy].up = i % 2 == 1
            poll_round(agent, clock)
        found = tickets(agent)
        assert [(t.fields["problem"], str(t.priority)) for t in found] == [("flapping", "medium")]
        assert found[0].title.startswith('[medium] A30 "Room 1" unstable (flapping)')
        assert found[0].fields["device"] == flappy and found[0].fields["serial"] == scripts[flappy].serial
        assert "Reaction due" in found[0].body, "every ticket carries its SLA clocks"
        scripts[flappy].up = True
        for _ in range(25):  # stable again: the flapping ticket resolves
            poll_round(agent, clock)
        (done,) = tickets(agent)
        assert done.status == "resolved"
    finally:
        agent.stop()


def test_whole_site_down_with_its_canary_is_one_site_network_incident(tmp_path: Path) -> None:
    clock = FakeClock(MONDAY)
    with listener() as gateway:
        port = gateway.getsockname()[1]
        raw = {
            "sites": [
                site("krakow", canaries=[{"name": "gateway", "host": "127.0.0.1", "port": port}]),
                site("hq"),
            ],
            "devices": devices("krakow", 4) + devices("hq", 2, start=5),
        }
        agent, scripts = scripted_agent(tmp_path, raw, clock)
        try:
            poll_round(agent, clock)
            gateway.close()  # the site's switch dies: devices and canary fail together
            for dev_id in scripts:
                if dev_id.startswith("krakow"):
                    scripts[dev_id].up = False
            for _ in range(8):
                poll_round(agent, clock, 10)
            found = tickets(agent)
            assert [(t.fields["problem"], t.fields["site"]) for t in found] == [("site_network", "krakow")]
            (incident,) = found
            assert sorted(incident.fields["devices"]) == [f"krakow-{i}" for i in range(1, 5)]
            assert incident.fields["canaries"] == ["gateway"]
            assert str(incident.priority) == "critical"
            assert all(agent.states[f"krakow-{i}"].health is Health.DOWN for i in range(1, 5))
        finally:
            agent.stop()


def test_a_failing_canary_with_only_some_devices_down_opens_device_tickets_after_the_grace(
    tmp_path: Path,
) -> None:
    clock = FakeClock(MONDAY)
    raw = {
        "sites": [site("krakow", canaries=[{"name": "dns", "host": "127.0.0.1", "port": closed_port()}])],
        "devices": devices("krakow", 3),
    }
    agent, scripts = scripted_agent(tmp_path, raw, clock)
    try:
        poll_round(agent, clock)
        scripts["krakow-1"].up = False
        for _ in range(3):
            poll_round(agent, clock, 10)
        assert tickets(agent) == [], "held while network vs device is judged"
        for _ in range(20):
            poll_round(agent, clock, 10)
        found = tickets(agent)
        assert [(t.fields["problem"], t.fields["device"]) for t in found] == [("offline", "krakow-1")]
    finally:
        agent.stop()


def test_down_in_a_maintenance_window_opens_nothing_until_it_ends(tmp_path: Path) -> None:
    clock = FakeClock(MONDAY)  # 10:00 Warsaw
    window = {"name": "Monday patching", "weekly": {"days": ["mon"], "start": "09:30", "end": "10:30"}}
    raw = {"sites": [site("hq", quiet={"maintenance": [window]})], "devices": devices("hq", 1)}
    agent, scripts = scripted_agent(tmp_path, raw, clock)
    try:
        poll_round(agent, clock)
        scripts["hq-1"].up = False
        for _ in range(12):  # 10:01 .. 10:23: down but inside the window
            poll_round(agent, clock, 120)
        assert tickets(agent) == []
        assert "Monday patching" in agent.incidents.held()["hq-1"]
        for _ in range(5):  # the window ends at 10:30 with the device still down
            poll_round(agent, clock, 120)
        found = tickets(agent)
        assert [t.fields["problem"] for t in found] == ["offline"]
    finally:
        agent.stop()


def test_room_power_schedule_keeps_an_expected_power_off_quiet(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 1, 5, 19, 30, tzinfo=UTC))  # 20:30 Warsaw
    schedule = {"name": "Nights", "expected_off": [{"days": ["mon"], "start": "20:00", "end": "07:00"}]}
    raw = {"sites": [site("hq", quiet={"power_schedules": [schedule]})], "devices": devices("hq", 1)}
    agent, scripts = scripted_agent(tmp_path, raw, clock)
    try:
        scripts["hq-1"].up = False
        for _ in range(20):
            poll_round(agent, clock, 60)
        assert tickets(agent) == []
    finally:
        agent.stop()


def test_a_new_serial_in_place_of_a_failed_unit_notes_it_and_starts_the_return_clock(tmp_path: Path) -> None:
    clock = FakeClock(MONDAY)
    agent, scripts = scripted_agent(tmp_path, {"sites": [site("hq")], "devices": devices("hq", 1)}, clock)
    try:
        poll_round(agent, clock)
        old = scripts["hq-1"].serial
        scripts["hq-1"].up = False
        for _ in range(4):
            poll_round(agent, clock, 10)
        (ticket,) = tickets(agent)
        assert ticket.fields["serial"] == old
        scripts["hq-1"].up = True
        scripts["hq-1"].serial = "803099999999"  # the NBD replacement is installed
        poll_round(agent, clock, 10)
        (incident,) = agent.store.incidents()
        assert incident.replaced_by == "803099999999"
        assert incident.return_due is not None
        assert incident.return_due - clock.now() > timedelta(days=6, hours=23)
        comments = comment_bodies(agent, ticket.key)
        assert any(old in c and "803099999999" in c and "7 days" in c for c in comments)
        clock.advance(5 * 86400)
        agent.incidents.tick(clock.now())
        agent.dispatcher.flush()
        clock.advance(86400 + 3600)
        agent.incidents.tick(clock.now())
        agent.incidents.tick(clock.now())
        agent.dispatcher.flush()
        comments = comment_bodies(agent, ticket.key)
        assert sum("Reminder" in c for c in comments) == 1, "one reminder, a day before the deadline"
    finally:
        agent.stop()


# --- properties ------------------------------------------------------------------------------

polls = st.lists(st.booleans(), min_size=1, max_size=60)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=polls)
def test_invariants_over_random_poll_histories(tmp_path_factory: Any, history: list[bool]) -> None:
    tmp_path = tmp_path_factory.mktemp("prop")
    clock = FakeClock(MONDAY)
    raw = {"agent": {"down_after": 3, "up_after": 2}, "sites": [site("hq")], "devices": devices("hq", 1)}
    agent, scripts = scripted_agent(tmp_path, raw, clock)
    try:
        longest_failure_run = run = 0
        for ok in history:
            scripts["hq-1"].up = ok
            poll_round(agent, clock, 10)
            run = 0 if ok else run + 1
            longest_failure_run = max(longest_failure_run, run)
            open_keys = [i.key for i in agent.store.incidents(open_only=True)]
            assert len(open_keys) == len(set(open_keys)), "never two open incidents for one key"
        offline = [i for i in agent.store.incidents() if i.problem == "offline"]
        if longest_failure_run < 3:
            assert offline == [], "no offline ticket from fewer than k consecutive failures"
        scripts["hq-1"].up = True
        for _ in range(30):  # long enough to stop flapping too
            poll_round(agent, clock, 10)
        assert agent.store.incidents(open_only=True) == [], "every problem that recovers ends resolved"
        found = tickets(agent)
        assert len({t.key for t in found}) == len(found)
        assert all(t.status == "resolved" for t in found)
    finally:
        agent.stop()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(min_value=1, max_value=8), order=st.randoms(use_true_random=False))
def test_a_site_wide_outage_yields_one_incident(tmp_path_factory: Any, n: int, order: Any) -> None:
    tmp_path = tmp_path_factory.mktemp("site")
    clock = FakeClock(MONDAY)
    with listener() as gateway:
        port = gateway.getsockname()[1]
        raw = {
            "sites": [site("krakow", canaries=[{"name": "gw", "host": "127.0.0.1", "port": port}])],
            "devices": devices("krakow", n),
        }
        agent, scripts = scripted_agent(tmp_path, raw, clock)
        try:
            poll_round(agent, clock)
            gateway.close()
            ids = list(scripts)
            order.shuffle(ids)
            for dev_id in ids:
                scripts[dev_id].up = False
                agent.poll_once(dev_id)  # devices fail one after another, in random order
                clock.advance(5)
            for _ in range(10):
                poll_round(agent, clock, 10)
            assert [t.fields["problem"] for t in tickets(agent)] == ["site_network"]
        finally:
            agent.stop()


# --- problems beyond offline, and configurable rules ------------------------------------------

PLUGGED = tuple(
    Peripheral(kind, f"{kind} 1", True) for kind in ("camera", "microphone", "speaker", "touch_panel")
)


def test_an_unplugged_camera_is_one_medium_ticket_resolved_when_plugged_back(tmp_path: Path) -> None:
    clock = FakeClock(MONDAY)
    agent, scripts = scripted_agent(tmp_path, {"sites": [site("hq")], "devices": devices("hq", 1)}, clock)
    try:
        scripts["hq-1"].peripherals = PLUGGED
        for _ in range(3):
            poll_round(agent, clock)
        assert tickets(agent) == []
        scripts["hq-1"].peripherals = tuple(
            dataclasses.replace(p, connected=p.kind != "camera") for p in PLUGGED
        )
        for _ in range(6):
            poll_round(agent, clock)
        (ticket,) = tickets(agent)
        assert (ticket.fields["problem"], str(ticket.priority), ticket.status) == (
            "peripheral",
            "medium",
            "open",
        )
        assert "camera" in ticket.key and "peripheral disconnected" in ticket.title
        scripts["hq-1"].peripherals = PLUGGED
        for _ in range(4):
            poll_round(agent, clock)
        (ticket,) = tickets(agent)
        assert ticket.status == "resolved"
    finally:
        agent.stop()


def test_offline_priority_and_comment_only_recovery_come_from_the_config(tmp_path: Path) -> None:
    clock = FakeClock(MONDAY)
    raw = {
        "incidents": {"offline": {"priority": "medium"}, "on_recovery": "comment"},
        "sites": [site("hq")],
        "devices": devices("hq", 1),
    }
    agent, scripts = scripted_agent(tmp_path, raw, clock)
    try:
        poll_round(agent, clock)
        scripts["hq-1"].up = False
        for _ in range(4):
            poll_round(agent, clock, 10)
        scripts["hq-1"].up = True
        for _ in range(3):
            poll_round(agent, clock, 10)
        (ticket,) = tickets(agent)
        assert str(ticket.priority) == "medium" and ticket.title.startswith("[medium]")
        assert ticket.status == "open", "on_recovery: comment leaves the ticket to the service desk"
        assert any("recovered" in body for body in comment_bodies(agent, ticket.key))
    finally:
        agent.stop()


def test_escalation_moves_the_priority_of_the_same_open_ticket(tmp_path: Path) -> None:
    clock = FakeClock(MONDAY)
    agent, _scripts = scripted_agent(tmp_path, {"sites": [site("hq")], "devices": devices("hq", 1)}, clock)
    try:
        poll_round(agent, clock)
        slow = Problem("slow", Priority.LOW, summary="answers in 4 s")
        agent.incidents.raise_problem("hq-1", slow, clock.now())
        clock.advance(3600)
        agent.incidents.raise_problem(
            "hq-1", dataclasses.replace(slow, priority=Priority.MEDIUM), clock.now()
        )
        (ticket,) = tickets(agent)
        assert str(ticket.priority) == "medium", "escalated in place, not a second ticket"
        assert any(
            "Priority changed from low to medium" in body for body in comment_bodies(agent, ticket.key)
        )
        agent.incidents.change_priority("hq-1", "slow", Priority.LOW, clock.now(), "faster again")
        (ticket,) = tickets(agent)
        assert str(ticket.priority) == "low"
    finally:
        agent.stop()


def test_secrets_never_reach_a_ticket_body_or_comment(tmp_path: Path) -> None:
    clock = FakeClock(MONDAY)
    raw = {
        "redaction": {"patterns": [r"roomPin=(\d{4,8})"]},
        "sites": [site("hq")],
        "devices": devices("hq", 1),
    }
    agent, _scripts = scripted_agent(tmp_path, raw, clock)
    try:
        poll_round(agent, clock)
        leaky = Problem(
            "slow",
            Priority.LOW,
            summary="GET https://admin:Tajne123@10.0.0.5/api answered slowly; roomPin=482910",
            details={"header": "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.abc"},
        )
        agent.incidents.raise_problem("hq-1", leaky, clock.now())
        agent.incidents.clear_problem("hq-1", "slow", clock.now(), note="api_key=sk_live_0123456789abcdef")
        (ticket,) = tickets(agent)
        texts = [ticket.title, ticket.body, *comment_bodies(agent, ticket.key)]
        for secret in ("Tajne123", "482910", "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.abc", "sk_live_0123456789abcdef"):
            assert all(secret not in text for text in texts), secret
        assert "answered slowly" in ticket.body, "ordinary words stay"
    finally:
        agent.stop()


def test_the_device_log_attached_to_a_ticket_is_redacted(tmp_path: Path) -> None:
    import io
    import tarfile

    from scripted import ScriptedCollector

    from collectors.models import LogBundle

    secret_line = b"account.1.password = Sip-Tajne-42\nnormal line stays\n"

    class LeakyExport(ScriptedCollector):
        def collect_logs(self, dest_dir: Path) -> LogBundle:
            path = dest_dir / "export.tar.gz"
            with tarfile.open(path, "w:gz") as tar:
                info = tarfile.TarInfo("sys.log")
                info.size = len(secret_line)
                tar.addfile(info, io.BytesIO(secret_line))
            return LogBundle(self.device.id, self.clock.now(), path, path.stat().st_size, "x")

    clock = FakeClock(MONDAY)
    raw = {"sites": [site("hq")], "devices": devices("hq", 1)}
    agent, scripts = scripted_agent(tmp_path, raw, clock)
    agent._collectors["hq-1"] = LeakyExport(agent.config.device("hq-1"), scripts["hq-1"], clock)
    try:
        poll_round(agent, clock)
        scripts["hq-1"].up = False
        for _ in range(4):
            poll_round(agent, clock, 10)
        (ticket,) = tickets(agent)
        (attached,) = ticket.attachments
        with tarfile.open(attached.path, "r:gz") as tar:
            names = tar.getnames()
            text = b"".join(
                tar.extractfile(m).read()
                for m in tar.getmembers()
                if m.isfile()  # type: ignore[union-attr]
            )
        assert "manifest.json" in names
        assert b"Sip-Tajne-42" not in text and b"normal line stays" in text
    finally:
        agent.stop()
