"""The Yealink HTTP driver: auth, malformed answers, TLS identity, logs and the registry.

The recorded answers of the hand-written captures (``tests/fixtures/<model>/<firmware>/http/``)
are served back by :class:`replay.HttpReplay`; the contract over EVERY fixture folder and
channel is ``tests/test_contract.py``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import ssl
import tarfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from replay import HttpReplay, load_answers

from collectors.base import Collector
from collectors.errors import AuthFailed, DeviceUnreachable, IdentityChanged, UnexpectedResponse
from collectors.jsonpath import PathMissing, get_path, set_path
from collectors.pins import PinStore
from collectors.registry import DRIVERS, UnknownDriver, build_collector
from collectors.yealink import YealinkHttpCollector
from config.loader import DEFAULT_PROFILE, load_profile
from config.schema import Credentials, Device
from simulator.certs import make_certificate, server_context

FIXTURES = Path(__file__).parent / "fixtures"
PASSWORD = "fixture-Pa55-w0rd"
#: the hand-written captures these tests bend (their values are asserted below)
CAPTURES = {
    "A20": FIXTURES / "A20" / "133.15.0.60",
    "A30": FIXTURES / "A30" / "133.15.0.60",
    "MVC": FIXTURES / "MVC" / "126.11.0.25",
}
FakeDevice = HttpReplay


def tls_context(folder: Path) -> ssl.SSLContext:
    """A server context with a throwaway self-signed certificate for 127.0.0.1."""
    return server_context(make_certificate("127.0.0.1", "yealink-fixture"))


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    return tls_context(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def device_for(server_tls: ssl.SSLContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Start a FakeDevice for a model + answers; return it with a collector built by the registry."""
    started: list[tuple[FakeDevice, Collector]] = []
    monkeypatch.setenv("HEZO_TEST_DEVICE_PW", PASSWORD)

    def start(
        model: str, answers: dict[str, Any], *, password: str | None = PASSWORD, **kw: Any
    ) -> tuple[FakeDevice, Collector]:
        profile = load_profile(DEFAULT_PROFILE[model])
        fake = FakeDevice(profile, answers, server_tls, password=PASSWORD)
        device = Device(
            id=f"room1-{model.lower()}",
            room="Room 1",
            site="hq",
            model=model,  # type: ignore[arg-type]
            host="127.0.0.1",
            port=fake.port,
            credentials=Credentials(username="admin", password_env="HEZO_TEST_DEVICE_PW"),
        )
        options: dict[str, Any] = {
            "timeout_s": 2.0,
            "max_response_bytes": 100_000,
            "max_log_bytes": 1_000_000,
        }
        options.update(kw)
        pins = PinStore(tmp_path / "pins.json")
        collector = build_collector(device, profile, password=password, pins=pins, **options)
        started.append((fake, collector))
        return fake, collector

    yield start
    for fake, collector in started:
        collector.close()
        fake.close()


def fixture_answers(model: str) -> dict[str, Any]:
    return load_answers(CAPTURES[model] / "http")


# --- auth ----------------------------------------------------------------------------------------


def test_token_is_cached_across_polls(device_for: Any) -> None:
    fake, collector = device_for("A30", fixture_answers("A30"))
    collector.collect_health()
    second = collector.collect_health()
    assert fake.logins == 1
    assert [c.check for c in second.checks] == ["tls", "info", "status"]


def test_expired_token_triggers_one_login_and_the_poll_succeeds(device_for: Any) -> None:
    fake, collector = device_for("A30", fixture_answers("A30"))
    collector.collect_health()
    fake.reject_tokens = 1
    sample = collector.collect_health()
    assert fake.logins == 2
    assert sample.facts.serial == "8033A30J1234567"


def test_second_401_after_a_fresh_login_is_auth_failed(device_for: Any) -> None:
    fake, collector = device_for("A20", fixture_answers("A20"))
    fake.reject_tokens = 99
    with pytest.raises(AuthFailed, match="HTTP 401"):
        collector.collect_health()
    assert fake.logins == 2


def test_wrong_password_is_auth_failed_without_the_password(device_for: Any) -> None:
    fake, collector = device_for("MVC", fixture_answers("MVC"), password="not-the-Pa55")
    with pytest.raises(AuthFailed) as caught:
        collector.collect_health()
    assert "not-the-Pa55" not in str(caught.value) and "/api/v1/session" in str(caught.value)
    assert fake.paths() == ["/api/v1/session"]


def test_missing_password_is_auth_failed_before_any_request(device_for: Any) -> None:
    fake, collector = device_for("A30", fixture_answers("A30"), password=None)
    with pytest.raises(AuthFailed, match="no credentials"):
        collector.collect_health()
    assert fake.requests == []


def test_login_answer_without_token_is_unexpected(device_for: Any) -> None:
    answers = fixture_answers("A30") | {"login": {"ret": "ok", "data": {"token": "x"}}}
    fake, collector = device_for("A30", answers)
    fake.answers["login"] = {"ret": "ok", "data": {}}
    with pytest.raises(UnexpectedResponse, match=r"login answer has no token at data\.token"):
        collector.collect_health()


# --- malformed answers ---------------------------------------------------------------------------


def test_missing_identity_field_names_field_path_and_endpoint(device_for: Any) -> None:
    answers = fixture_answers("A30")
    del answers["info"]["data"]["serial"]
    _, collector = device_for("A30", answers)
    with pytest.raises(UnexpectedResponse, match=r"field serial: missing data\.serial in /api/device/info$"):
        collector.collect_health()


def test_non_json_answer_is_unexpected(device_for: Any) -> None:
    fake, collector = device_for("MVC", fixture_answers("MVC"))
    fake.overrides["health"] = (200, b"<html>maintenance</html>")
    with pytest.raises(UnexpectedResponse, match="/api/v1/system/health: answer is not JSON"):
        collector.collect_health()


def test_server_error_is_unexpected(device_for: Any) -> None:
    fake, collector = device_for("A20", fixture_answers("A20"))
    fake.overrides["status"] = (500, b"{}")
    with pytest.raises(UnexpectedResponse, match="HTTP 500"):
        collector.collect_health()


def test_peripherals_not_a_list_is_unexpected(device_for: Any) -> None:
    answers = fixture_answers("A30")
    answers["status"]["data"]["peripherals"] = {"camera": True}
    _, collector = device_for("A30", answers)
    with pytest.raises(
        UnexpectedResponse, match=r"peripherals: data\.peripherals in /api/device/status is not a list"
    ):
        collector.collect_health()


def test_answer_over_the_byte_cap_is_unexpected(device_for: Any) -> None:
    answers = fixture_answers("A30")
    answers["info"]["data"]["padding"] = "x" * 5000
    _, collector = device_for("A30", answers, max_response_bytes=2048)
    with pytest.raises(UnexpectedResponse, match="cap"):
        collector.collect_health()


# --- identity over a kept connection ---------------------------------------------------------------


def a30_paths() -> tuple[str, str, str]:
    """The A30 profile's login, info and status paths."""
    profile = load_profile(DEFAULT_PROFILE["A30"])
    assert profile.auth.login is not None
    return profile.auth.login.path, profile.endpoints["info"].path, profile.endpoints["status"].path


def test_identity_is_asked_once_per_connection_and_again_on_the_next_one(device_for: Any) -> None:
    answers = fixture_answers("A30")
    fake, collector = device_for("A30", answers, keep_alive_s=90.0)
    login, info, status = a30_paths()
    samples = [collector.collect_health() for _ in range(3)]
    assert fake.paths() == [login, info, status, status, status]
    assert {s.facts.serial for s in samples} == {"8033A30J1234567"}
    assert [c.check for c in samples[-1].checks] == ["tls", "status"]
    assert samples[-1].checks[0].detail == "connection reused"
    answers["info"]["data"]["serial"] = "8033A30J7654321"  # another bar in its place, or new firmware:
    fake.drop_connections()  # either way the device's connections do not survive it
    swapped = collector.collect_health()
    assert swapped.facts.serial == "8033A30J7654321"
    assert fake.paths()[5:] == [status, info]
    assert [c.check for c in swapped.checks] == ["tls", "status", "info"]
    answers["info"]["data"]["serial"] = "8033A30J0000001"
    fake.drop_connections()
    assert collector.collect_facts().serial == "8033A30J0000001"  # opens the next connection itself
    assert collector.collect_health().facts.serial == "8033A30J0000001"  # over the one it left open
    assert fake.paths()[7:] == [info, info, status]


def test_identity_is_asked_again_after_fifteen_minutes_on_one_connection(device_for: Any) -> None:
    answers = fixture_answers("A30")
    now = [dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)]
    fake, collector = device_for("A30", answers, keep_alive_s=90.0, clock=lambda: now[0])
    _login, info, status = a30_paths()
    first = collector.collect_health()
    answers["info"]["data"]["hostname"] = "renamed-room"  # renamed without a reboot
    seen = []
    for minutes in (1, 14, 15):
        now[0] = dt.datetime(2026, 11, 29, 12, minutes, tzinfo=dt.UTC)
        seen.append(collector.collect_health().facts.hostname)
    assert seen == [first.facts.hostname, first.facts.hostname, "renamed-room"]
    assert fake.paths()[1:] == [info, status, status, status, info, status]


def test_without_kept_connections_every_poll_asks_identity(device_for: Any) -> None:
    fake, collector = device_for("A30", fixture_answers("A30"))  # keep_alive_s 0: closed after each poll
    login, info, status = a30_paths()
    for _ in range(3):
        collector.collect_health()
    assert fake.paths() == [login, info, status, info, status, info, status]


# --- TLS identity ----------------------------------------------------------------------------------


def test_first_poll_pins_and_a_new_certificate_is_identity_changed(device_for: Any, tmp_path: Path) -> None:
    fake, collector = device_for("A30", fixture_answers("A30"))
    collector.collect_health()
    pinned = json.loads((tmp_path / "pins.json").read_text())
    assert list(pinned) == [f"127.0.0.1:{fake.port}"]
    fake.restart(tls_context(tmp_path))  # same port, a different certificate
    seen_before = list(fake.requests)
    with pytest.raises(IdentityChanged, match=f"127.0.0.1:{fake.port}"):
        collector.collect_health()
    assert fake.requests == seen_before


def test_device_that_is_gone_is_unreachable(device_for: Any) -> None:
    fake, collector = device_for("A30", fixture_answers("A30"))
    fake.close()
    with pytest.raises(DeviceUnreachable, match="connection refused"):
        collector.collect_health()


# --- logs ------------------------------------------------------------------------------------------


def _tar_gz() -> bytes:
    buf = BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"2026-01-05 09:00:00 boot ok\n" * 500
        info = tarfile.TarInfo("logs/system.log")
        info.size = len(data)
        tar.addfile(info, BytesIO(data))
    return buf.getvalue()


def test_logs_are_downloaded_beside_a_timestamped_name(device_for: Any, tmp_path: Path) -> None:
    archive = _tar_gz()
    at = dt.datetime(2026, 1, 5, 9, 30, 15, tzinfo=dt.UTC)
    fake, collector = device_for("A30", fixture_answers("A30"), clock=lambda: at)
    fake.overrides["logs"] = (200, archive)
    bundle = collector.collect_logs(tmp_path / "bundles")
    assert bundle.path == tmp_path / "bundles" / "room1-a30-20260105T093015Z.tar.gz"
    assert (bundle.size_bytes, bundle.sha256) == (len(archive), hashlib.sha256(archive).hexdigest())
    assert bundle.path.read_bytes() == archive
    assert (bundle.taken_at, bundle.sources, bundle.device_id) == (at, ("http:logs",), "room1-a30")


def test_log_export_that_is_not_gzip_is_unexpected_and_removed(device_for: Any, tmp_path: Path) -> None:
    fake, collector = device_for("A20", fixture_answers("A20"))
    fake.overrides["logs"] = (200, b"<html>500 export failed</html>")
    with pytest.raises(UnexpectedResponse, match="not a gzip archive"):
        collector.collect_logs(tmp_path / "bundles")
    assert list((tmp_path / "bundles").iterdir()) == []


def test_log_over_the_cap_leaves_nothing_behind(device_for: Any, tmp_path: Path) -> None:
    fake, collector = device_for("MVC", fixture_answers("MVC"), max_log_bytes=1024)
    fake.overrides["logs"] = (200, b"x" * 5000)
    with pytest.raises(UnexpectedResponse, match="1024-byte cap"):
        collector.collect_logs(tmp_path / "bundles")
    assert list((tmp_path / "bundles").iterdir()) == []


# --- registry --------------------------------------------------------------------------------------


def test_registry_maps_the_profile_driver_to_the_yealink_collector() -> None:
    assert DRIVERS["yealink-http"] is YealinkHttpCollector


def test_unknown_driver_lists_the_supported_ones() -> None:
    profile = load_profile("yealink-a30").model_copy(update={"driver": "polycom-ssh"})
    device = Device(id="d1", room="r", site="s", model="A30", host="127.0.0.1")
    with pytest.raises(KeyError) as caught:
        build_collector(
            device,
            profile,
            password=None,
            pins=None,
            timeout_s=1,
            max_response_bytes=1024,
            max_log_bytes=1024,
        )
    assert isinstance(caught.value, UnknownDriver)
    assert str(caught.value) == "profile yealink-a30: unknown driver 'polycom-ssh' (supported: yealink-http)"


# --- dotted paths ---------------------------------------------------------------------------------


def test_dotted_paths_walk_objects_and_list_indexes() -> None:
    data = {"data": {"call": {"state": "idle"}, "items": [{"name": "cam"}]}}
    assert get_path(data, "data.call.state") == "idle"
    assert get_path(data, "data.items.0.name") == "cam"
    with pytest.raises(KeyError) as caught:
        get_path(data, "data.call.since")
    assert str(caught.value) == "missing data.call.since"
    with pytest.raises(PathMissing):
        get_path(data, "data.items.3.name")
    out: dict[str, Any] = {}
    set_path(out, "session.id", "abc")
    assert out == {"session": {"id": "abc"}}
