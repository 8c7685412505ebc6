"""The local API against an agent watching the simulator's fleet: token, devices, log-pull jobs, tickets."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
from agent_server import Client, agent_config, make_agent, poll_all, take_offline, wait_until
from openapi_spec_validator import validate

import agent.api
from agent.api import LocalApi
from agent.api_auth import TokenFileError, TokenStore, token_id
from agent.audit import AuditLog
from agent.bundle_models import BundleResult, ProgressHook, Requester
from agent.clock import FakeClock
from agent.daemon import Agent
from agent.openapi import openapi_document
from simulator.fleet import Fleet

Served = tuple[Fleet, Agent, FakeClock, LocalApi, Client]


class FakeBuilder:
    """Stands in for BundleBuilder: writes a small tar.gz, records who asked, can be held back."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.calls: list[tuple[str, Requester, str | None, Sequence[str] | None]] = []
        self.release = threading.Event()
        self.release.set()

    def build(
        self,
        device_id: str,
        *,
        requester: Requester,
        since: str | None = None,
        sources: Sequence[str] | None = None,
        progress: ProgressHook | None = None,
    ) -> BundleResult:
        self.calls.append((device_id, requester, since, sources))
        assert self.release.wait(10)
        path = self.folder / f"{device_id}-{len(self.calls)}.tar.gz"
        self.folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w:gz") as tar:
            data = b'{"device": "%s"}' % device_id.encode()
            info = tarfile.TarInfo("manifest.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return BundleResult(path, digest, path.stat().st_size, {"failed": []}, "ok", 0)


def _serve(
    fleet: Fleet, tmp_path: Path, *, api: dict[str, Any] | None = None, builder: FakeBuilder | None = None
) -> Served:
    clock = FakeClock()
    agent_ = make_agent(fleet, tmp_path, clock, api=api)
    server = LocalApi.for_agent(agent_, bundles=(lambda: builder) if builder is not None else None)
    poll_all(agent_, clock)
    server.start()
    return fleet, agent_, clock, server, Client(server.url, server.tokens.first)


@pytest.fixture
def served(fleet_factory: Callable[..., Fleet], tmp_path: Path) -> Iterator[Served]:
    fleet, agent_, clock, server, client = _serve(fleet_factory(devices=6, seed=11), tmp_path)
    try:
        yield fleet, agent_, clock, server, client
    finally:
        server.stop()
        agent_.stop()


def _error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()["error"]
    assert body["status"] == status and body["code"] == code and body["message"]
    return dict(body)


# --- token ----------------------------------------------------------------------------------------


def test_token_file_is_made_on_first_run_owner_only_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "data" / "api-token"
    first = TokenStore(path)
    if sys.platform != "win32":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = first.first
    assert len(token) >= 40 and token in path.read_text()
    assert TokenStore(path).first == token  # the second start reads it, does not replace it
    assert first.check(token) == token_id(token) and first.check(token + "x") is None
    assert token not in token_id(token)


def test_a_token_file_readable_by_others_is_narrowed_and_an_empty_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    path.write_text("a-token-of-twenty-characters\n")
    path.chmod(0o644)
    store = TokenStore(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.check("a-token-of-twenty-characters") is not None
    empty = tmp_path / "empty-token"
    empty.write_text("# nothing here\n")
    with pytest.raises(TokenFileError, match="holds no token"):
        TokenStore(empty)


def test_every_api_path_needs_the_token_and_every_error_is_json(served: Served) -> None:
    _fleet, agent_, _clock, _server, client = served
    device = agent_.config.devices[0].id
    paths = ["/api/v1/agent", "/api/v1/devices", f"/api/v1/devices/{device}", "/api/v1/tickets",
             "/api/v1/jobs/anything", "/api/v1/jobs/anything/bundle"]  # fmt: skip
    for path in paths:
        missing = client.get(path, token=None)
        _error(missing, 401, "unauthorized")
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        _error(client.get(path, token="not-the-token-at-all"), 401, "unauthorized")
    _error(client.post(f"/api/v1/devices/{device}/logs", token=None), 401, "unauthorized")
    _error(client.get("/api/v1/nothing-here"), 404, "not_found")
    wrong_method = client.session.delete(
        client.base + "/api/v1/devices", headers=client.headers(), timeout=10
    )
    _error(wrong_method, 405, "method_not_allowed")
    assert client.get("/api/v1/openapi.json", token=None).status_code == 200  # the document is public


def test_a_second_token_line_works_and_is_named_by_its_id(served: Served) -> None:
    _fleet, _agent, _clock, server, client = served
    other = "second-engineer-token-0123456789"
    with server.tokens.path.open("a", encoding="utf-8") as handle:
        handle.write(other + "\n")
    assert client.get("/api/v1/devices", token=other).status_code == 200


def test_status_page_and_metrics_are_open_on_loopback_but_need_the_token_from_elsewhere(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fleet, _agent, _clock, _server, client = served
    assert client.get("/", token=None).status_code == 200
    assert client.get("/metrics", token=None).status_code == 200
    monkeypatch.setattr(agent.api, "_is_loopback", lambda _address: False)  # as if the client were remote
    _error(client.get("/", token=None), 401, "unauthorized")
    _error(client.get("/metrics", token=None), 401, "unauthorized")
    assert client.get("/").status_code == 200


# --- devices and tickets ---------------------------------------------------------------------------


def test_devices_show_state_identity_latency_and_contract(served: Served) -> None:
    fleet, _agent, _clock, _server, client = served
    devices = client.get("/api/v1/devices").json()["devices"]
    assert [d["id"] for d in devices] == [d.id for d in fleet.devices]
    for listed, sim in zip(devices, fleet.devices, strict=True):
        assert listed["state"] == "up" and listed["priority"] is None
        assert listed["serial"] == sim.serial and listed["firmware"] == sim.firmware
        assert listed["model"] == sim.model and listed["site"] == sim.site and listed["last_seen"]
        assert listed["latency_ms"] is not None
    assert [d["contract_end"] for d in devices] == ["2027-12-31"] * 5 + [None]  # the last is not covered
    detail = client.get(f"/api/v1/devices/{fleet.devices[0].id}").json()
    assert detail["recent_polls"][0]["ok"] is True and detail["open_tickets"] == []


def test_unknown_device_is_404_and_a_refused_pull_is_audited(served: Served) -> None:
    _fleet, agent_, _clock, server, client = served
    _error(client.get("/api/v1/devices/no-such-bar"), 404, "unknown_device")
    _error(client.post("/api/v1/devices/no-such-bar/logs", json={}), 404, "unknown_device")
    audit = AuditLog(agent_.store.path)
    try:
        entry = audit.entries(limit=1)[0]
    finally:
        audit.close()
    assert (entry.channel, entry.device_id, entry.outcome) == ("api", "no-such-bar", "rejected")
    assert entry.requester == token_id(server.tokens.first)


def test_offline_device_shows_its_critical_ticket_with_running_sla_clocks(served: Served) -> None:
    fleet, agent_, clock, _server, client = served
    target = fleet.devices[2].id
    take_offline(agent_, fleet, clock, target)
    device = client.get(f"/api/v1/devices/{target}").json()
    assert (
        device["state"] == "down" and device["priority"] == "critical" and device["problems"] == ["offline"]
    )
    tickets = client.get("/api/v1/tickets").json()["tickets"]
    assert len(tickets) == 1
    ticket = tickets[0]
    assert (ticket["device_id"], ticket["priority"], ticket["status"]) == (target, "critical", "open")
    assert ticket["delivered"] is True and ticket["backend"] == "local" and ticket["ref"]
    opened = ticket["opened_at"]
    assert ticket["sla"]["window"] == "24x7"
    assert ticket["sla"]["reaction_due"] > opened  # one hour after, 24x7
    assert device["tickets"] == [ticket["ticket_key"]]
    assert client.get("/api/v1/tickets?status=resolved").json()["tickets"] == []
    _error(client.get("/api/v1/tickets?status=someday"), 400, "bad_request")


def test_agent_endpoint_reports_health_and_outbox(served: Served) -> None:
    _fleet, _agent, _clock, _server, client = served
    body = client.get("/api/v1/agent").json()
    assert body["health"]["status"] == "ok" and body["health"]["devices"] == 6
    assert body["outbox"] == {"pending": 0, "oldest_pending_at": None, "rejected": 0, "quarantined": 0,
                              "held": [], "spool_used_bytes": 0}  # fmt: skip


# --- log pulls -------------------------------------------------------------------------------------


def test_pull_job_to_bundle_with_the_real_builder_against_the_simulator(served: Served) -> None:
    fleet, agent_, _clock, server, client = served
    device = fleet.devices[0].id
    started = client.post(f"/api/v1/devices/{device}/logs", json={"since": "30m", "sources": ["http"]})
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    assert location == f"/api/v1/jobs/{started.json()['id']}"
    job = wait_until(lambda: (j := client.get(location).json())["state"] in ("done", "failed") and j)
    assert job["state"] == "done", job
    assert job["requested_by"] == token_id(server.tokens.first) and job["bundle"]["outcome"] == "ok"
    download = client.get(job["bundle"]["url"])
    assert download.status_code == 200 and download.headers["Content-Type"] == "application/gzip"
    digest = hashlib.sha256(download.content).hexdigest()
    assert digest == job["bundle"]["sha256"] == download.headers["X-Bundle-SHA256"]
    with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as tar:
        assert "manifest.json" in tar.getnames()
    audit = AuditLog(agent_.store.path)
    try:
        entry = audit.entries(device_id=device, limit=1)[0]
    finally:
        audit.close()
    assert (entry.channel, entry.outcome, entry.sha256) == ("api", "ok", digest)
    assert entry.ref == f"job {job['id']}"


def test_job_states_bundle_before_done_is_409_and_unknown_job_is_404(
    fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> None:
    builder = FakeBuilder(tmp_path / "bundles")
    builder.release.clear()
    fleet, agent_, _clock, server, client = _serve(
        fleet_factory(devices=2, seed=3), tmp_path, builder=builder
    )
    try:
        job = client.post(f"/api/v1/devices/{fleet.devices[0].id}/logs").json()
        _error(client.get(f"/api/v1/jobs/{job['id']}/bundle"), 409, "job_not_finished")
        builder.release.set()
        done = wait_until(
            lambda: (j := client.get(f"/api/v1/jobs/{job['id']}").json())["state"] == "done" and j
        )
        assert client.get(done["bundle"]["url"]).status_code == 200
        Path(builder.folder / f"{fleet.devices[0].id}-1.tar.gz").unlink()
        _error(client.get(done["bundle"]["url"]), 410, "bundle_gone")
        _error(client.get("/api/v1/jobs/never-was"), 404, "unknown_job")
        assert builder.calls[0][1] == Requester("api", token_id(server.tokens.first), f"job {job['id']}")
    finally:
        server.stop()
        agent_.stop()


def test_pulls_too_fast_get_429_with_retry_after_per_token_until_time_moves(
    fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> None:
    builder = FakeBuilder(tmp_path / "bundles")
    limits = {"rate_limits": {"pulls_per_minute": 2, "pull_burst": 2}}
    fleet, agent_, clock, server, client = _serve(fleet_factory(devices=2, seed=3), tmp_path, api=limits,
                                                  builder=builder)  # fmt: skip
    path = f"/api/v1/devices/{fleet.devices[0].id}/logs"
    try:
        assert [client.post(path).status_code for _ in range(2)] == [202, 202]
        refused = client.post(path)
        _error(refused, 429, "too_many_requests")
        assert refused.headers["Retry-After"] == "30"  # 2 per minute: one more in 30 s
        other = "another-engineers-token-abcdef"
        with server.tokens.path.open("a", encoding="utf-8") as handle:
            handle.write(other + "\n")
        assert client.post(path, token=other).status_code == 202  # the limit is per token
        clock.advance(29)
        _error(client.post(path), 429, "too_many_requests")
        clock.advance(1)
        assert client.post(path).status_code == 202
        assert len(server.jobs.jobs()) == 4  # a refused pull starts no job
        wait_until(lambda: len(builder.calls) == 4)  # every accepted pull ran, no refused one
    finally:
        server.stop()
        agent_.stop()


def test_every_api_request_has_a_per_token_limit_too(
    fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> None:
    limits = {"rate_limits": {"requests_per_minute": 60, "request_burst": 3}}
    _fleet, agent_, clock, server, client = _serve(fleet_factory(devices=1, seed=3), tmp_path, api=limits)
    try:
        assert [client.get("/api/v1/devices").status_code for _ in range(4)] == [200, 200, 200, 429]
        clock.advance(1)
        assert client.get("/api/v1/devices").status_code == 200
    finally:
        server.stop()
        agent_.stop()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"since": "yesterday-ish"}, "not a duration"),
        ({"since": "60d"}, "at most 30 days"),
        ({"sources": ["http", "carrier-pigeon"]}, "unknown source"),
        ({"since": "30m", "until": "now"}, "unknown keys"),
        ({"sources": "http", "since": 30}, "since must be text"),
    ],
)
def test_bad_pull_options_are_400_and_start_nothing(
    fleet_factory: Callable[..., Fleet], tmp_path: Path, body: dict[str, Any], fragment: str
) -> None:
    builder = FakeBuilder(tmp_path / "bundles")
    fleet, agent_, _clock, server, client = _serve(
        fleet_factory(devices=1, seed=3), tmp_path, builder=builder
    )
    try:
        answer = client.post(f"/api/v1/devices/{fleet.devices[0].id}/logs", json=body)
        assert fragment in _error(answer, 400, "bad_request")["message"]
        not_json = client.post(f"/api/v1/devices/{fleet.devices[0].id}/logs", data=b"{since: 30m")
        _error(not_json, 400, "bad_json")
        assert builder.calls == []
    finally:
        server.stop()
        agent_.stop()


# --- the document and the lifecycle -----------------------------------------------------------------


def test_openapi_document_is_valid_openapi_3_and_describes_every_route(served: Served) -> None:
    _fleet, _agent, _clock, _server, client = served
    served_doc = client.get("/api/v1/openapi.json", token=None).json()
    validate(served_doc)
    assert served_doc == openapi_document()
    assert set(served_doc["paths"]) == {
        "/api/v1/openapi.json", "/api/v1/agent", "/api/v1/devices", "/api/v1/devices/{device_id}",
        "/api/v1/devices/{device_id}/logs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/bundle",
        "/api/v1/tickets",
    }  # fmt: skip
    for path, item in served_doc["paths"].items():
        for operation in item.values():
            if path != "/api/v1/openapi.json":
                assert "401" in operation["responses"] and "429" in operation["responses"], path


def test_agent_start_serves_on_loopback_and_stop_frees_the_port(
    fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> None:
    fleet = fleet_factory(devices=1, seed=3)
    agent_ = make_agent(fleet, tmp_path, FakeClock())
    agent_.start()
    try:
        assert agent_.api is not None
        url = agent_.api.url
        assert url.startswith("http://127.0.0.1:")
        token = (agent_.data_dir / "api-token").read_text().splitlines()[-1]
        answer = requests.get(url + "/api/v1/agent", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert answer.status_code == 200
    finally:
        agent_.stop()
    assert agent_.api is None
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/api/v1/openapi.json", timeout=5)


def test_a_port_already_taken_leaves_the_agent_running_without_its_server(
    fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> None:
    fleet = fleet_factory(devices=1, seed=3)
    first = make_agent(fleet, tmp_path / "one", FakeClock())
    first.start()
    try:
        assert first.api is not None
        port = first.api.port
        second = make_agent(fleet, tmp_path / "two", FakeClock(), api={"port": port})
        second.start()
        try:
            assert second.api is None
        finally:
            second.stop()
    finally:
        first.stop()


def test_cli_api_names_the_urls_and_the_token_file_never_the_token(
    fleet_factory: Callable[..., Fleet], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    config = agent_config(fleet_factory(devices=1, seed=3), tmp_path, api={"port": 8471})
    assert main(["api", "-c", str(config), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    token_file = tmp_path / "data" / "api-token"
    assert info["token_file"] == str(token_file) and info["tokens"] == 1 and info["loopback_only"] is True
    assert info["status_page"] == "http://127.0.0.1:8471/" and info["metrics"] == "http://127.0.0.1:8471/metrics"
    token = token_file.read_text().strip()
    assert token not in json.dumps(info) and f"$(head -n 1 {token_file})" in info["curl"]
    assert main(["api", "-c", str(config)]) == 0
    assert token not in capsys.readouterr().out


def test_a_foreign_host_name_gets_no_page_without_the_token_even_from_loopback(served: Served) -> None:
    _fleet, _agent, _clock, _server, client = served
    rebound = {"Host": f"attacker.example:{client.base.rsplit(':', 1)[1]}"}  # a DNS name rebound to 127.0.0.1
    for path in ("/", "/metrics"):
        _error(client.session.get(client.base + path, headers=rebound, timeout=10), 401, "unauthorized")
        with_token = {**rebound, **client.headers()}
        assert client.session.get(client.base + path, headers=with_token, timeout=10).status_code == 200
    for host in ("localhost:8470", "127.0.0.1", "[::1]:8470"):
        assert client.session.get(client.base + "/", headers={"Host": host}, timeout=10).status_code == 200
