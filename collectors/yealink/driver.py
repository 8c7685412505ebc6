"""The profile-driven HTTP(S) driver for Yealink A20, A30 and MVC.

Nothing model-specific lives here: the device profile (``config/profiles/*.yaml``) names the
login, the endpoints and, for every sample field, the endpoint and dotted JSON path it comes
from. A firmware that answers differently is fixed in its profile, not in this code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

from collectors.base import Collector
from collectors.errors import AuthFailed, CollectorError, UnexpectedResponse
from collectors.jsonpath import get_path
from collectors.models import CheckResult, DeviceFacts, HealthSample, LogBundle, Peripheral
from collectors.pins import PinStore
from collectors.transports.http import HttpResponse, HttpTransport
from config.schema import UPDATING_VALUES, Device, PeripheralMap, Profile

T = TypeVar("T")

FieldKey = Literal[
    "model", "firmware", "serial", "mac", "hostname", "uptime_s", "call_state", "peripherals", "update_state",
    "config",
]
IDENTITY_FIELDS: tuple[FieldKey, ...] = ("model", "firmware", "serial", "mac", "hostname")
HEALTH_FIELDS: tuple[FieldKey, ...] = (
    *IDENTITY_FIELDS, "uptime_s", "call_state", "peripherals", "update_state"
)
_MISSING = object()
#: identity is read again at least this often even over a connection open since it was read
IDENTITY_REREAD = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class _KnownIdentity:
    """The answers of the identity-only endpoints, the connection count they were read at, and when."""

    answers: dict[str, Any]
    connections_opened: int
    read_at: datetime


def _identity_only_endpoints(profile: Profile) -> frozenset[str]:
    """The endpoints a poll asks only for identity fields (the others answer health too)."""
    asked = {key: profile.fields[key].endpoint for key in HEALTH_FIELDS if key in profile.fields}
    health = {endpoint for key, endpoint in asked.items() if key not in IDENTITY_FIELDS}
    return frozenset(asked.values()) - health


class _Steps:
    """The service tests of one poll, in the order they ran."""

    def __init__(self, connect_check: str) -> None:
        self.connect_check = connect_check
        self.checks: list[CheckResult] = []
        #: the answer whose Date header is the best clock reading (the shortest round trip)
        self.clock_from: HttpResponse | None = None
        self.cert_not_after: datetime | None = None

    def saw(self, resp: HttpResponse, check: str) -> None:
        if resp.clock_offset_s is not None and (
            self.clock_from is None or resp.elapsed_ms < self.clock_from.elapsed_ms
        ):
            self.clock_from = resp
        self.cert_not_after = resp.cert_not_after or self.cert_not_after
        if not self.checks:
            connect_ms = resp.connect_ms
            detail = "" if connect_ms is not None else "connection reused"
            self.checks.append(CheckResult(self.connect_check, True, round(connect_ms or 0.0, 3), detail))
        self.checks.append(CheckResult(check, True, round(resp.elapsed_ms, 3)))


class YealinkHttpCollector(Collector):
    """Reads a Yealink device's web interface as its profile describes; one instance per device."""

    def __init__(
        self,
        device: Device,
        profile: Profile,
        *,
        password: str | None,
        pins: PinStore | None,
        timeout_s: float = 5.0,
        max_response_bytes: int = 2_000_000,
        max_log_bytes: int = 50_000_000,
        clock: Callable[[], datetime] | None = None,
        log_timeout_s: float = 300.0,
        keep_alive_s: float = 0.0,
    ) -> None:
        """Prepare the driver (no network traffic yet); ``keep_alive_s`` keeps the device's
        connection open from one poll to the next (see :class:`HttpTransport`).

        Raises:
            ValueError: the profile asks for token auth but names no login endpoint.
        """
        if profile.auth.kind == "token" and profile.auth.login is None:
            raise ValueError(f"profile {profile.name}: auth.kind token needs auth.login")
        self.device_id = device.id
        self._profile = profile
        self._username = device.credentials.username if device.credentials else None
        self._password = password
        self._transport = HttpTransport(
            host=device.host,
            port=device.port or profile.http.port,
            scheme=profile.http.scheme,
            tls_mode=profile.http.tls,
            pins=pins,
            connect_timeout_s=timeout_s,
            read_timeout_s=timeout_s,
            max_bytes=max_response_bytes,
            keep_alive_s=keep_alive_s,
        )
        self._label = self._transport.label
        self._max_log_bytes = max_log_bytes
        self._log_timeout_s = log_timeout_s
        self._clock = clock or (lambda: datetime.now(UTC))
        self._token: str | None = None
        self._login_lock = threading.Lock()
        self._identity_endpoints = _identity_only_endpoints(profile)
        self._identity: _KnownIdentity | None = None

    def __repr__(self) -> str:
        return f"YealinkHttpCollector({self.device_id!r}, {self._label}, profile={self._profile.name})"

    # --- the Collector contract -----------------------------------------------------------

    def collect_facts(self) -> DeviceFacts:
        """Return the device's identity from the endpoints its profile maps identity fields to.

        Raises:
            CollectorError: any subclass from :mod:`collectors.errors`.
        """
        steps = self._steps()
        try:
            answers = self._fetch(IDENTITY_FIELDS, steps)
        finally:
            self._transport.release()
        return self._facts(answers)

    def collect_health(self) -> HealthSample:
        """Poll every mapped endpoint once and return the sample with per-step service tests.

        Raises:
            CollectorError: any subclass from :mod:`collectors.errors`.
        """
        taken_at = self._now()
        started = time.perf_counter()
        steps = self._steps()
        try:
            answers = self._fetch(HEALTH_FIELDS, steps, reuse_identity=True)
        finally:
            self._transport.release()
        uptime = self._field("uptime_s", answers, required=True)
        call_state = self._field("call_state", answers, required=True)
        return HealthSample(
            device_id=self.device_id,
            taken_at=taken_at,
            facts=self._facts(answers),
            uptime_s=None if uptime in (None, _MISSING) else self._seconds("uptime_s", uptime),
            call_state=None if call_state in (None, _MISSING) else self._text("call_state", call_state),
            peripherals=self._peripherals(answers),
            checks=tuple(steps.checks),
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            updating=self._updating(answers),
            device_time=_device_time(taken_at, steps.clock_from),
            cert_not_after=steps.cert_not_after,
        )

    def collect_config(self) -> dict[str, Any] | None:
        """Read the configuration at the profile's ``fields.config`` (None: the profile maps none).

        Raises:
            CollectorError: any subclass from :mod:`collectors.errors`; UnexpectedResponse when
                the mapped value is not a JSON object.
        """
        if "config" not in self._profile.fields:
            return None
        steps = self._steps()
        try:
            answers = self._fetch(("config",), steps)
        finally:
            self._transport.release()
        config = self._field("config", answers, required=True)
        if not isinstance(config, dict):
            raise UnexpectedResponse(f"{self._label}: field config: {self._where('config')} is not an object")
        return config

    def collect_logs(self, dest_dir: Path) -> LogBundle:
        """Download the profile's ``logs`` endpoint to ``dest_dir/<device>-<UTC time>.tar.gz``.

        Raises:
            CollectorError: any subclass from :mod:`collectors.errors` (plain CollectorError when
                ``dest_dir`` cannot be written).
        """
        endpoint = self._profile.endpoints.get("logs")
        if endpoint is None:
            raise UnexpectedResponse(f"{self._label}: profile {self._profile.name} has no logs endpoint")
        taken_at = self._now()
        dest = Path(dest_dir) / f"{self.device_id}-{taken_at.astimezone(UTC):%Y%m%dT%H%M%SZ}.tar.gz"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CollectorError(f"cannot create log folder {dest.parent}: {err.strerror}") from err
        steps = self._steps()
        try:
            size, sha256 = self._authed(
                lambda headers: self._transport.download(
                    endpoint.path,
                    dest,
                    headers=headers,
                    max_bytes=self._max_log_bytes,
                    method=endpoint.method,
                    total_timeout_s=self._log_timeout_s,
                ),
                steps,
            )
        finally:
            self._transport.release()
        self._require_gzip(dest, endpoint.path)
        return LogBundle(
            device_id=self.device_id,
            taken_at=taken_at,
            path=dest,
            size_bytes=size,
            sha256=sha256,
            sources=("http:logs",),
        )

    def _require_gzip(self, dest: Path, path: str) -> None:
        """Keep only a real gzip archive: an error page saved as .tar.gz is no log bundle."""
        try:
            with dest.open("rb") as fh:
                magic = fh.read(2)
        except OSError as err:
            raise CollectorError(f"cannot read back {dest}: {err.strerror}") from err
        if magic != b"\x1f\x8b":
            dest.unlink(missing_ok=True)
            raise UnexpectedResponse(f"{self._label} {path}: the log export is not a gzip archive")

    def close(self) -> None:
        """Close the device's connections."""
        self._transport.close()

    # --- talking to the device ------------------------------------------------------------

    def _steps(self) -> _Steps:
        return _Steps("tls" if self._profile.http.scheme == "https" else "connect")

    def _now(self) -> datetime:
        now = self._clock()
        return now if now.tzinfo is not None else now.replace(tzinfo=UTC)

    def _fetch(
        self, keys: tuple[FieldKey, ...], steps: _Steps, *, reuse_identity: bool = False
    ) -> dict[str, Any]:
        """GET each endpoint the mapped ``keys`` need, once each, in field order.

        With ``reuse_identity`` an endpoint that holds only identity fields (model, firmware,
        serial, MAC, hostname) is not asked again while the device's connection has stayed open
        since it was (and for at most :data:`IDENTITY_REREAD`): what it said cannot have changed
        without a reboot or another device in its place, and either breaks the connection. When
        the poll had to open a new connection after all, it is asked again on that one.
        """
        names: list[str] = []
        for key in keys:
            fmap = self._profile.fields.get(key)
            if fmap is not None and fmap.endpoint not in names:
                names.append(fmap.endpoint)
        reuse = reuse_identity and bool(self._identity_endpoints)
        known = self._known_identity() if reuse else None
        answers: dict[str, Any] = {}
        read_at: set[int] = set()  # the connection counts right after each identity answer
        for name in names:
            if known is not None and name in known.answers:
                continue
            answers[name] = self._answer(name, steps)
            if name in self._identity_endpoints:
                read_at.add(self._transport.connections_opened)
        if known is not None and self._transport.connections_opened != known.connections_opened:
            known = None  # the poll had to open a new connection after all: ask again on it
            for name in self._identity_endpoints:
                answers[name] = self._answer(name, steps)
                read_at.add(self._transport.connections_opened)
        if known is not None:
            answers.update(known.answers)
        elif reuse:  # kept only if every identity answer came over one connection
            self._identity = (
                _KnownIdentity({n: answers[n] for n in self._identity_endpoints}, read_at.pop(), self._now())
                if len(read_at) == 1
                else None
            )
        return answers

    def _answer(self, name: str, steps: _Steps) -> Any:
        resp = self._get(name, steps)
        self._require_ok(resp)
        answer = resp.json()
        steps.saw(resp, name)
        return answer

    def _known_identity(self) -> _KnownIdentity | None:
        """The identity answers still good for this poll: read over a connection open ever since
        (none has been opened after them) and not longer than :data:`IDENTITY_REREAD` ago."""
        known = self._identity
        if (
            known is None
            or self._transport.keep_alive_s <= 0  # the connection closes after every poll
            or known.connections_opened != self._transport.connections_opened
            or not known.read_at <= self._now() < known.read_at + IDENTITY_REREAD
        ):
            return None
        return known

    def _get(self, name: str, steps: _Steps) -> HttpResponse:
        endpoint = self._profile.endpoints[name]
        return self._authed(
            lambda headers: self._transport.request(endpoint.method, endpoint.path, headers=headers), steps
        )

    def _authed(self, send: Callable[[dict[str, str]], T], steps: _Steps) -> T:
        """Run ``send`` with the auth header; on 401/403 log in again once, then give up."""
        auth = self._profile.auth
        if auth.kind == "none":
            return send({})
        token = self._token or self._login(steps)
        try:
            return send({auth.token_header: token})
        except AuthFailed:
            self._token = None
            token = self._login(steps)
            return send({auth.token_header: token})

    def _login(self, steps: _Steps) -> str:
        """POST the credentials to the profile's login endpoint and cache the token.

        Raises:
            AuthFailed: no credentials configured, or the device rejected them.
            UnexpectedResponse: the answer holds no token where the profile says.
        """
        auth = self._profile.auth
        login = auth.login
        assert login is not None  # checked in __init__
        if self._username is None or self._password is None:
            raise AuthFailed(f"{self._label}: no credentials configured for device {self.device_id}")
        with self._login_lock:
            body = {auth.username_field: self._username, auth.password_field: self._password}
            resp = self._transport.request(login.method, login.path, json=body)
            self._require_ok(resp)
            try:
                token = get_path(resp.json(), auth.token_path)
            except (KeyError, ValueError) as err:
                raise UnexpectedResponse(
                    f"{resp.source}: login answer has no token at {auth.token_path}"
                ) from err
            if isinstance(token, bool) or not isinstance(token, str | int) or str(token) == "":
                raise UnexpectedResponse(f"{resp.source}: login answer's {auth.token_path} is not a token")
            self._token = str(token)
            steps.saw(resp, "login")
            return self._token

    def _require_ok(self, resp: HttpResponse) -> None:
        if not 200 <= resp.status < 300:
            raise UnexpectedResponse(f"{resp.source}: answered HTTP {resp.status}")

    # --- mapping answers to fields --------------------------------------------------------

    def _field(self, key: FieldKey, answers: dict[str, Any], *, required: bool) -> Any:
        """The raw value of field ``key``; ``_MISSING`` when unmapped (or absent and optional).

        Raises:
            UnexpectedResponse: a required mapped value is absent from the answer.
        """
        fmap = self._profile.fields.get(key)
        if fmap is None:
            return _MISSING
        try:
            return get_path(answers[fmap.endpoint], fmap.path)
        except (KeyError, ValueError) as err:
            if not required:
                return _MISSING
            path = self._profile.endpoints[fmap.endpoint].path
            raise UnexpectedResponse(f"{self._label}: field {key}: missing {fmap.path} in {path}") from err

    def _where(self, key: FieldKey) -> str:
        fmap = self._profile.fields[key]
        return f"{fmap.path} in {self._profile.endpoints[fmap.endpoint].path}"

    def _text(self, key: FieldKey, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise UnexpectedResponse(f"{self._label}: field {key}: {self._where(key)} is not a text value")
        return str(value).strip()

    def _seconds(self, key: FieldKey, value: Any) -> int:
        try:
            if isinstance(value, bool):
                raise ValueError("bool")
            seconds = int(float(value))
        except (TypeError, ValueError, OverflowError) as err:
            raise UnexpectedResponse(
                f"{self._label}: field {key}: {self._where(key)} is not a number"
            ) from err
        if seconds < 0:
            raise UnexpectedResponse(f"{self._label}: field {key}: {self._where(key)} is negative")
        return seconds

    def _facts(self, answers: dict[str, Any]) -> DeviceFacts:
        values = {
            key: self._text(key, self._field(key, answers, required=True)) for key in IDENTITY_FIELDS[:4]
        }
        hostname = self._field("hostname", answers, required=False)
        return DeviceFacts(
            **values,
            hostname=None if hostname in (None, _MISSING) else self._text("hostname", hostname) or None,
        )

    def _peripherals(self, answers: dict[str, Any]) -> tuple[Peripheral, ...]:
        items = self._field("peripherals", answers, required=True)
        if items is _MISSING:
            return ()
        if not isinstance(items, list):
            raise UnexpectedResponse(
                f"{self._label}: field peripherals: {self._where('peripherals')} is not a list"
            )
        pmap = self._profile.peripherals or PeripheralMap(status="assumed")
        out = []
        for i, item in enumerate(items):
            try:
                kind = get_path(item, pmap.kind)
                name = get_path(item, pmap.name)
                state = get_path(item, pmap.connected)
            except (KeyError, ValueError) as err:
                raise UnexpectedResponse(
                    f"{self._label}: field peripherals: item {i} of {self._where('peripherals')} lacks {err}"
                ) from err
            if not isinstance(kind, str) or not isinstance(name, str | int):
                raise UnexpectedResponse(
                    f"{self._label}: field peripherals: item {i} of {self._where('peripherals')} has no text "
                    f"{pmap.kind}/{pmap.name}"
                )
            connected = _matches(state, pmap.connected_value)
            out.append(Peripheral(kind=_kind(kind), name=str(name), connected=connected))
        return tuple(out)

    def _updating(self, answers: dict[str, Any]) -> bool | None:
        """Whether the device reports a firmware update in progress (None: the profile maps no update state).

        The field is optional and lenient: an answer without it, or with a value that is none of
        the profile's ``update_state.updating_values`` (a dict included), means no update runs.
        """
        if "update_state" not in self._profile.fields:
            return None
        state = self._field("update_state", answers, required=False)
        if state is _MISSING or state is None:
            return False
        smap = self._profile.update_state
        values = smap.updating_values if smap is not None else UPDATING_VALUES
        return any(_matches(state, value) for value in values)


def _device_time(taken_at: datetime, answer: HttpResponse | None) -> datetime | None:
    """The device's clock at ``taken_at``: our reading shifted by the offset its Date header showed."""
    if answer is None or answer.clock_offset_s is None:
        return None
    try:
        return taken_at + timedelta(seconds=answer.clock_offset_s)
    except OverflowError:  # a Date header near year 1 or 9999: no reading rather than a failed poll
        return None


def _kind(raw: str) -> str:
    """Normalise a device's peripheral kind: ``Touch Panel`` → ``touch_panel``."""
    return raw.strip().lower().replace(" ", "_").replace("-", "_")


def _matches(value: Any, connected_value: bool | str) -> bool:
    """Whether a reported state equals a profile value such as ``connected_value`` (text case-insensitive)."""
    if isinstance(connected_value, str) and isinstance(value, str):
        return value.strip().lower() == connected_value.strip().lower()
    return bool(value == connected_value and type(value) is type(connected_value))
