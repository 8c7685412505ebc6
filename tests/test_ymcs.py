"""The YMCS cloud client against the mock YMCS (real HTTPS on loopback), plus one pinned wire format."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import socket
import time
from collections.abc import Iterator
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pydantic
import pytest
import requests
import responses

from agent.clock import FakeClock
from collectors.errors import AuthFailed, DeviceTimeout, DeviceUnreachable, UnexpectedResponse
from collectors.ymcs import YmcsClient, YmcsRateLimited, client_from_settings
from collectors.ymcs_channel import YmcsAccount, YmcsProbe
from collectors.ymcs_models import YmcsSettings, part_connected, read_client_secret
from config.loader import ConfigError
from simulator.identity import SimDevice
from simulator.ymcs import MockYmcs, device_record

SECRET = "cs-Very-Secret-0123456789"


class Sleeper:
    """An injected sleep that records each wait and moves the fake clock instead of sleeping."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.clock.advance(seconds)


def make_devices(count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"dev-{i:04d}",
            "mac": f"00:15:65:00:{i // 256:02x}:{i % 256:02x}",
            "sn": f"8012{i:08d}",
            "name": f"Room {i}",
            "modelName": "MeetingBar A30",
            "siteName": "HQ",
            "programVersion": "133.15.0.60",
            "lanIp": f"10.0.{i // 256}.{i % 256}",
            "lastReportTime": 1767600000000 + i,
            "deviceStatus": "online",
        }
        for i in range(count)
    ]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeper(clock: FakeClock) -> Sleeper:
    return Sleeper(clock)


@pytest.fixture
def cloud() -> Iterator[MockYmcs]:
    devices = make_devices(3)
    devices[0]["parts"] = [
        {"id": "p1", "modelName": "CTP18", "connectWay": "wifi", "connStatus": "connected"},
        {"id": "p2", "modelName": "VCM36-W", "connectWay": "usb", "connStatus": "disconnected"},
        {"id": "p3", "modelName": "CPW90", "connectWay": "dect", "connStatus": "2"},
    ]
    devices[1]["deviceStatus"] = "offline"
    devices[2]["deviceStatus"] = "pending"
    alarms = [
        {"id": "a1", "event": "Offline", "level": 3, "mac": "001565000000", "status": 1, "lastAlarmTime": 1},
        {"id": "a2", "event": "CameraLost", "level": 2, "mac": "00:15:65:00:00:00", "status": 2},
        {"id": "a3", "event": "Reboot", "level": 1, "mac": "001565000001", "status": 3},
        {"id": "a4", "event": "MicLost", "level": 1, "mac": "001565000000", "status": 1},
    ]
    with MockYmcs(devices, alarms=alarms, client_secret=SECRET, diagnosis_polls=2) as mock:
        yield mock


def client_for(cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper, **kw: Any) -> YmcsClient:
    kw.setdefault("timeout_s", 3.0)
    return YmcsClient(
        cloud.base_url,
        cloud.client_id,
        cloud.client_secret,
        verify=cloud.ca_path,
        clock=clock,
        sleep=sleeper,
        **kw,
    )


def issued_token(cloud: MockYmcs) -> str:
    """The bearer token the client last used (as the mock saw it)."""
    return next(r for r in reversed(cloud.requests()) if r.endpoint != "token").headers["Authorization"][7:]


def assert_secret_free(err: BaseException, *secrets: str) -> None:
    text = f"{err} {err!r}"
    for secret in (SECRET, *secrets):
        assert secret not in text
    assert err.__cause__ is None  # library errors (which may quote URLs) are not chained


# --- token ------------------------------------------------------------------------------------


def test_token_is_fetched_once_and_reused(cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper) -> None:
    client = client_for(cloud, clock, sleeper)
    client.list_devices()
    client.list_alarms()
    assert len(cloud.requests("token")) == 1
    auth = {r.headers["Authorization"] for r in cloud.requests() if r.endpoint != "token"}
    assert len(auth) == 1 and auth.pop().startswith("Bearer ymcs-at-")


def test_token_is_renewed_before_it_expires_by_the_clock(clock: FakeClock, sleeper: Sleeper) -> None:
    with MockYmcs(make_devices(1), token_ttl_s=3600) as cloud:
        client = client_for(cloud, clock, sleeper)
        client.list_devices()
        clock.advance(3600 - 359)  # within the last tenth of its lifetime (capped at 60 s): still used
        client.list_devices()
        assert len(cloud.requests("token")) == 1
        clock.advance(300)
        client.list_devices()
        assert len(cloud.requests("token")) == 2
        assert len(cloud.requests("listDevices")) == 3  # no call was wasted on a 401


def test_a_401_refreshes_the_token_once_and_the_call_succeeds(
    cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper
) -> None:
    client = client_for(cloud, clock, sleeper)
    client.list_devices()
    cloud.expire_tokens()
    assert len(client.list_devices()) == 3
    assert len(cloud.requests("token")) == 2
    assert len(cloud.requests("listDevices")) == 3


def test_a_401_after_the_refresh_is_auth_failed(clock: FakeClock, sleeper: Sleeper) -> None:
    with MockYmcs(make_devices(1), token_ttl_s=0, client_secret=SECRET) as cloud:  # tokens die at once
        client = client_for(cloud, clock, sleeper)
        with pytest.raises(AuthFailed, match="even after a refresh") as info:
            client.list_devices()
        assert len(cloud.requests("token")) == 2
        assert len(cloud.requests("listDevices")) == 2
        tokens = [r.headers["Authorization"][7:] for r in cloud.requests("listDevices")]
        assert_secret_free(info.value, *tokens)


def test_a_wrong_secret_is_auth_failed_and_never_quoted(cloud: MockYmcs, clock: FakeClock) -> None:
    client = YmcsClient(cloud.base_url, cloud.client_id, "wrong-" + SECRET, verify=cloud.ca_path, clock=clock)
    with pytest.raises(AuthFailed, match="client credentials") as info:
        client.list_devices()
    assert_secret_free(info.value, "wrong-" + SECRET)
    assert cloud.requests("listDevices") == []
    assert SECRET not in repr(client)


# --- lists ------------------------------------------------------------------------------------


def test_250_devices_take_three_pages_of_100(clock: FakeClock, sleeper: Sleeper) -> None:
    with MockYmcs(make_devices(250)) as cloud:
        devices = client_for(cloud, clock, sleeper).list_devices()
        assert [d.id for d in devices] == [f"dev-{i:04d}" for i in range(250)]
        bodies = [r.body for r in cloud.requests("listDevices")]
        assert bodies == [{"skip": s, "limit": 100, "autoCount": True} for s in (0, 100, 200)]
        assert devices[7].firmware == "133.15.0.60" and devices[7].last_report_ms == 1767600000007


def test_max_pages_bounds_a_listing(clock: FakeClock, sleeper: Sleeper) -> None:
    with MockYmcs(make_devices(250)) as cloud:
        with pytest.raises(UnexpectedResponse, match="more than 2 pages"):
            client_for(cloud, clock, sleeper, max_pages=2).list_devices()
        assert len(cloud.requests("listDevices")) == 2


def test_every_post_carries_a_body_so_412_never_happens(
    cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper, tmp_path: Path
) -> None:
    client = client_for(cloud, clock, sleeper)
    client.probe("00:15:65:00:00:00")
    client.export_syslog("dev-0000", tmp_path / "syslog.bin", poll_every_s=1)
    posts = [r for r in cloud.requests() if r.method == "POST"]
    assert {r.endpoint for r in posts} == {"token", "listDevices", "listParts", "listAlarms", "exportSyslog"}
    assert all(isinstance(r.body, dict) for r in posts)
    # the mock itself answers an empty POST as the cloud does
    token = issued_token(cloud)
    headers = {"Authorization": f"Bearer {token}", "timestamp": "1767600000000", "nonce": "n1"}
    resp = requests.post(
        cloud.base_url + "/v2/dm/listAlarms", headers=headers, verify=str(cloud.ca_path), timeout=5
    )
    assert resp.status_code == 412 and resp.json()["code"] == "900444"


def test_the_mock_checks_bearer_timestamp_and_nonce(
    cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper
) -> None:
    client_for(cloud, clock, sleeper).list_devices()
    token = issued_token(cloud)
    url, ca = cloud.base_url + "/v2/dm/listDevices", str(cloud.ca_path)

    def post(**headers: str) -> requests.Response:
        return requests.post(url, json={}, headers=headers, verify=ca, timeout=5)

    assert post(timestamp="1767600000000", nonce="a").status_code == 401
    good = {"Authorization": f"Bearer {token}", "timestamp": "1767600000000"}
    assert post(**good, nonce="b").status_code == 200
    reused = post(**good, nonce="b")
    assert reused.status_code == 400 and reused.json()["details"][0]["field"] == "nonce"
    assert post(**good, nonce="x" * 33).status_code == 400
    assert post(Authorization=f"Bearer {token}", timestamp="12:00", nonce="c").status_code == 400


def test_alarms_are_filtered_by_status_on_the_client(
    cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper
) -> None:
    client = client_for(cloud, clock, sleeper)
    active = client.list_alarms()
    assert [(a.id, a.level_name) for a in active] == [("a1", "critical"), ("a4", "minor")]
    assert [a.status for a in client.list_alarms(active_only=False)] == [1, 2, 3, 1]
    assert all("filter" not in r.body for r in cloud.requests("listAlarms"))
    assert cloud.requests("listAlarms")[0].body["limit"] == 500


# --- probe ------------------------------------------------------------------------------------


def test_probe_reports_status_accessories_and_active_alarms(
    cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper
) -> None:
    account = YmcsAccount(client_for(cloud, clock, sleeper))
    result = YmcsProbe(account, "room-1", [("mac", "00-15-65-00-00-00")]).probe()
    assert (result.channel, result.ok, result.reason) == ("ymcs", True, "ok")
    f = result.fields
    assert f["ymcs_device_status"] == "online" and f["ymcs_device_id"] == "dev-0000"
    parts = f["ymcs_parts"]
    assert isinstance(parts, list) and [p["connected"] for p in parts] == [True, False, None]
    assert f["ymcs_parts_disconnected"] == 1  # the unknown "2" is not counted as disconnected
    assert f["ymcs_alarms"] == [
        {"event": "Offline", "level": 3, "level_name": "critical"},
        {"event": "MicLost", "level": 1, "level_name": "minor"},
    ]
    assert f["ymcs_alarm_max_level"] == 3 and "Offline (critical)" in result.detail
    assert "disconnected: VCM36-W" in result.detail


def test_probe_maps_offline_pending_and_unknown_devices(
    cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper
) -> None:
    client = client_for(cloud, clock, sleeper)
    offline = client.probe("801200000001")  # by serial number
    assert (offline.ok, offline.reason, offline.fields["ymcs_device_status"]) == (
        False,
        "device_unreachable",
        "offline",
    )
    assert not offline.neutral  # the cloud answered: the device does not reach it
    pending = client.probe("00:15:65:00:00:02")
    assert (pending.ok, pending.reason, pending.neutral) == (False, "status_unknown", True)
    missing = client.probe("00:15:65:ff:ff:ff")
    assert (missing.ok, missing.reason, missing.fields) == (False, "not_matched", {"ymcs_found": False})
    assert missing.neutral and "not among the 3 devices" in missing.detail
    by_id = client.probe([("ymcs_id", "dev-0002"), ("serial", "nope")])
    assert by_id.fields["ymcs_device_id"] == "dev-0002"
    cloud.set_device_status("dev-0001", "rebooting")
    assert client.probe("001565000001").fields["ymcs_device_status"] == "unknown"


def test_parallel_probes_share_one_cached_listing(
    cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper
) -> None:
    client = client_for(cloud, clock, sleeper, cache_s=60)
    macs = ["001565000000", "001565000001", "001565000002"] * 3
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        results = list(pool.map(client.probe, macs))
    assert [r.fields["ymcs_found"] for r in results] == [True] * 9
    assert len(cloud.requests("listDevices")) == 1 and len(cloud.requests("listAlarms")) == 1
    clock.advance(61)
    client.probe("001565000000")
    assert len(cloud.requests("listDevices")) == 2


# --- rate limits ------------------------------------------------------------------------------


def test_429_waits_for_retry_after_and_then_succeeds(
    cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper
) -> None:
    client = client_for(cloud, clock, sleeper)
    client.list_devices()
    cloud.rate_limit(next_count=2, retry_after="7")
    assert len(client.list_devices()) == 3
    assert sleeper.calls == [7.0, 7.0]


def test_429_retry_after_as_http_date_and_the_cap(
    cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper
) -> None:
    client = client_for(cloud, clock, sleeper, max_backoff_s=20)
    client.list_devices()
    cloud.rate_limit(
        next_count=1, retry_after=format_datetime(clock.now().replace(microsecond=0), usegmt=True)
    )
    client.list_devices()
    cloud.rate_limit(next_count=1, retry_after="3600")
    client.list_devices()
    cloud.rate_limit(next_count=3, retry_after=None)
    client.list_devices()
    assert sleeper.calls == [0.0, 20.0, 1.0, 2.0, 4.0]


def test_429_gives_up_after_the_bounded_attempts(cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper) -> None:
    client = client_for(cloud, clock, sleeper, max_attempts=3)
    client.list_devices()
    cloud.rate_limit(every=1, retry_after="1")
    with pytest.raises(YmcsRateLimited, match="HTTP 429 after 3 attempts"):
        client.list_devices()
    assert len(cloud.requests("listDevices")) == 1 + 3
    assert sleeper.calls == [1.0, 1.0]


# --- diagnostics ------------------------------------------------------------------------------


def test_export_syslog_polls_then_downloads_with_sha256(
    cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper, tmp_path: Path
) -> None:
    dest = tmp_path / "syslog.tar.gz"
    size, sha = client_for(cloud, clock, sleeper).export_syslog("dev-0000", dest, poll_every_s=4)
    assert dest.read_bytes() == cloud.syslog_content
    assert (size, sha) == (len(cloud.syslog_content), hashlib.sha256(cloud.syslog_content).hexdigest())
    assert sleeper.calls == [4, 4] and len(cloud.requests("status")) == 3
    assert cloud.requests("exportSyslog")[0].body == {"deviceId": "dev-0000"}
    assert cloud.requests("download")[0].headers["Authorization"].startswith("Bearer ")  # same origin only


def test_export_syslog_respects_the_byte_cap(
    cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper, tmp_path: Path
) -> None:
    cloud.syslog_content = b"x" * 50_000
    dest = tmp_path / "syslog.bin"
    with pytest.raises(UnexpectedResponse, match="50000 bytes exceeds the 4096-byte cap") as info:
        client_for(cloud, clock, sleeper).export_syslog("dev-0000", dest, poll_every_s=1, max_bytes=4096)
    assert "signature" not in str(info.value)  # the download URL's query is never quoted
    assert list(tmp_path.iterdir()) == []


def test_export_syslog_failure_and_timeout(
    cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper, tmp_path: Path
) -> None:
    client = client_for(cloud, clock, sleeper)
    cloud.diagnosis_outcome = "failure"
    with pytest.raises(UnexpectedResponse, match="failed on the cloud"):
        client.export_syslog("dev-0000", tmp_path / "a", poll_every_s=1)
    cloud.diagnosis_polls = 10_000
    sleeper.calls.clear()
    with pytest.raises(DeviceTimeout, match="still in progress after 30 s"):
        client.export_syslog("dev-0000", tmp_path / "b", poll_every_s=5, timeout_s=30)
    assert sleeper.calls == [5] * 6 and list(tmp_path.iterdir()) == []


# --- failures and hostile answers -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["malformed", "shape", "garbage"])
def test_malformed_answers_are_unexpected_response(
    cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper, kind: str
) -> None:
    cloud.fault("listDevices", kind)
    with pytest.raises(UnexpectedResponse) as info:
        client_for(cloud, clock, sleeper).list_devices()
    assert_secret_free(info.value)


def test_a_malformed_token_answer_is_unexpected_response(
    cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper
) -> None:
    cloud.fault("token", "shape")
    with pytest.raises(UnexpectedResponse, match="no access_token"):
        client_for(cloud, clock, sleeper).list_devices()


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("slow", DeviceTimeout),
        ("hang", DeviceTimeout),
        ("endless", UnexpectedResponse),
        ("huge", UnexpectedResponse),
    ],
)
def test_hostile_answers_end_within_the_timeout_and_the_byte_cap(
    cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper, kind: str, error: type[Exception]
) -> None:
    client = client_for(cloud, clock, sleeper, timeout_s=0.6, max_json_bytes=256 * 1024)
    client.list_devices()
    cloud.fault("listDevices", kind)
    started = time.monotonic()
    with pytest.raises(error) as info:
        client.list_devices()
    assert time.monotonic() - started < 2.0
    if error is UnexpectedResponse:
        assert "262144-byte cap" in str(info.value)


def test_an_error_page_quoting_the_token_is_scrubbed(
    cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper
) -> None:
    client = client_for(cloud, clock, sleeper)
    client.list_devices()
    token = issued_token(cloud)
    cloud.fault("listAlarms", "echo")
    with pytest.raises(UnexpectedResponse, match=r"HTTP 400: 900400 rejected Bearer \*\*\*") as info:
        client.list_alarms()
    assert_secret_free(info.value, token)
    assert "requestId" in str(info.value)


def test_a_stopped_cloud_is_unreachable_and_recovers_when_back(clock: FakeClock, sleeper: Sleeper) -> None:
    cloud = MockYmcs(make_devices(2), client_secret=SECRET)
    cloud.start()
    try:
        client = client_for(cloud, clock, sleeper)
        assert len(client.list_devices()) == 2
        cloud.stop()
        with pytest.raises(DeviceUnreachable, match="connection refused") as info:
            client.list_devices()
        assert_secret_free(info.value, issued_token(cloud))
        assert sleeper.calls == []  # refused is not retried: the poll ends now
        cloud.start()  # same port, same certificate
        assert len(client.list_devices()) == 2
    finally:
        cloud.stop()


def test_a_port_where_nothing_listens_is_unreachable(clock: FakeClock) -> None:
    with socket.socket() as sock:  # a port that was just free and is closed again
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = YmcsClient(f"https://127.0.0.1:{port}", "id", SECRET, clock=clock, timeout_s=2)
    with pytest.raises(DeviceUnreachable, match="connection refused"):
        client.list_devices()


@pytest.mark.parametrize(("kind", "error"), [("endless", UnexpectedResponse), ("slow", DeviceTimeout)])
def test_a_hostile_download_ends_at_its_cap_or_deadline_and_leaves_no_file(
    cloud: MockYmcs, clock: FakeClock, sleeper: Sleeper, tmp_path: Path, kind: str, error: type[Exception]
) -> None:
    client = client_for(cloud, clock, sleeper, timeout_s=0.6)
    cloud.fault("download", kind)
    started = time.monotonic()
    with pytest.raises(error) as info:
        client.export_syslog(
            "dev-0000", tmp_path / "s.bin", poll_every_s=0.1, timeout_s=0.5, max_bytes=100_000
        )
    assert time.monotonic() - started < 2.0
    assert "signature" not in str(info.value) and list(tmp_path.iterdir()) == []
    if error is UnexpectedResponse:
        assert "exceeds the 100000-byte cap" in str(info.value)


def test_device_record_feeds_a_fleet_device_to_the_mock(clock: FakeClock, sleeper: Sleeper) -> None:
    sim = SimDevice(
        id="a30-01", model="A30", host="127.0.1.5", port=443, serial="801200000042", mac="00:15:65:12:34:56",
        firmware="133.15.0.60", hostname="a30-01", site="HQ", room="Board", username="admin",
        password="pw", cert_sha256="0" * 64,
    )  # fmt: skip
    parts = [{"id": "cam", "modelName": "UVC86", "connStatus": "connected"}]
    with MockYmcs([device_record(sim, status="offline", parts=parts)]) as cloud:
        result = client_for(cloud, clock, sleeper).probe("801200000042")
    assert (result.reason, result.fields["ymcs_device_id"], result.fields["ymcs_firmware"]) == (
        "device_unreachable",
        "a30-01",
        "133.15.0.60",
    )
    assert result.fields["ymcs_parts"] == [{"model": "UVC86", "conn_status": "connected", "connected": True}]


def test_an_untrusted_certificate_is_refused_by_default(cloud: MockYmcs, clock: FakeClock) -> None:
    client = YmcsClient(cloud.base_url, cloud.client_id, SECRET, clock=clock, timeout_s=3)  # verify=True
    with pytest.raises(DeviceUnreachable, match="TLS certificate not trusted") as info:
        client.list_devices()
    assert_secret_free(info.value)
    assert cloud.requests() == []  # the credentials never left the client


# --- settings and the exact wire format -------------------------------------------------------


def test_settings_need_one_url_and_one_secret_source(tmp_path: Path) -> None:
    ok = YmcsSettings(region="eu", client_id="cid", client_secret_env="YMCS_SECRET")
    assert ok.url == "https://eu-api.ymcs.yealink.com" and ok.status == "assumed"
    for bad in (
        {"client_id": "cid", "client_secret_env": "S"},
        {"region": "eu", "base_url": "https://x.example", "client_id": "cid", "client_secret_env": "S"},
        {"region": "eu", "client_id": "cid"},
        {"region": "cn", "client_id": "cid", "client_secret_env": "S"},
        {"region": "eu", "client_id": "cid", "client_secret_env": "S", "client_secret": "inline"},
    ):
        with pytest.raises(pydantic.ValidationError):
            YmcsSettings.model_validate(bad)
    secret_file = tmp_path / "ymcs.secret"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    from_file = YmcsSettings(region="au", client_id="cid", client_secret_file=secret_file)
    assert read_client_secret(from_file) == SECRET
    assert read_client_secret(ok, {"YMCS_SECRET": "s2"}) == "s2"
    with pytest.raises(
        ConfigError, match=r"ymcs\.client_secret_env: environment variable YMCS_SECRET is not set"
    ):
        read_client_secret(ok, {})
    secret_file.write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"ymcs.client_secret_file: .*ymcs.secret is empty") as info:
        read_client_secret(from_file)
    assert SECRET not in str(info.value)
    assert part_connected("Connected") is True and part_connected("1") is None


def test_client_from_settings_reaches_the_mock(cloud: MockYmcs, clock: FakeClock, tmp_path: Path) -> None:
    settings = YmcsSettings(
        base_url=cloud.base_url,
        client_id=cloud.client_id,
        client_secret_env="YMCS_S",
        ca_bundle=cloud.ca_path,
    )
    client = client_from_settings(settings, clock=clock, environ={"YMCS_S": SECRET})
    assert len(client.list_devices()) == 3


@responses.activate
def test_the_wire_format_of_token_and_list_devices(clock: FakeClock) -> None:
    base = "https://eu-api.ymcs.yealink.com"
    responses.post(
        f"{base}/v2/token", json={"access_token": "at-123", "token_type": "Bearer", "expires_in": 86400}
    )
    responses.post(
        f"{base}/v2/dm/listDevices",
        json={"skip": 0, "limit": 100, "total": 1, "data": [{"id": "d1", "mac": "001565aabbcc"}]},
    )
    client = YmcsClient(base, "cid", SECRET, clock=clock)
    assert [d.mac for d in client.list_devices()] == ["001565aabbcc"]
    token_call, list_call = (c.request for c in responses.calls)
    assert (
        token_call.headers["Authorization"] == "Basic " + base64.b64encode(f"cid:{SECRET}".encode()).decode()
    )
    assert token_call.headers["Content-Type"] == "application/json"
    assert json.loads(token_call.body or b"") == {"grant_type": "client_credentials"}
    assert list_call.headers["Authorization"] == "Bearer at-123"
    assert list_call.headers["timestamp"] == str(int(clock.now().timestamp() * 1000))
    assert 1 <= len(list_call.headers["nonce"]) <= 32
    assert json.loads(list_call.body or b"") == {"skip": 0, "limit": 100, "autoCount": True}
