"""Client of the Yealink Management Cloud (YMCS) Open API, and the ``ymcs`` channel probe.

The API is third-party documented (see :mod:`collectors.ymcs_models`). Token: ``POST
/v2/token`` with HTTP Basic ``clientId:clientSecret`` and ``{"grant_type":
"client_credentials"}``; every other call carries ``Authorization: Bearer``, ``timestamp``
(ms) and ``nonce`` headers. Lists are POSTs of ``{skip, limit, autoCount}`` answered with
``{skip, limit, total, data}`` (a POST without a body gets HTTP 412, so a body is always sent).
The token is cached until shortly before ``expires_in`` and refreshed once on a 401. The
device and alarm listings are shared for ``cache_s`` by every device's probe, and so is a
failed listing (one attempt per round while the cloud is down, not one per device).

Library errors are translated once, in :mod:`collectors.ymcs_http`; no message ever contains
the client secret, the token or a URL's query string.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import requests

from agent.clock import Clock, SystemClock
from collectors.errors import AuthFailed, CollectorError, DeviceTimeout, UnexpectedResponse
from collectors.models import ChannelResult
from collectors.ymcs_http import YmcsHttp, YmcsRateLimited, error_text
from collectors.ymcs_models import (
    ALARM_LEVELS,
    EXPORT_SYSLOG_PATH,
    YmcsAlarm,
    YmcsDevice,
    YmcsKey,
    YmcsPart,
    YmcsSettings,
    match_device,
    normalize_mac,
    parse_alarm,
    parse_device,
    parse_page,
    parse_part,
    read_client_secret,
)

__all__ = ["DEVICE_UNREACHABLE", "YmcsClient", "YmcsRateLimited", "client_from_settings"]

T = TypeVar("T")
DEVICES_PAGE = 100  # listDevices accepts at most 100 per page
LIST_PAGE = 500  # other lists accept at most 500
#: the reason of a device YMCS reports offline (the cloud answered: the device does not reach it)
DEVICE_UNREACHABLE = "device_unreachable"


class YmcsClient:
    """The YMCS Open API for one enterprise's client credentials; thread-safe, token cached."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        verify: bool | str | Path = True,
        timeout_s: float = 10.0,
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_pages: int = 50,
        max_attempts: int = 4,
        max_backoff_s: float = 30.0,
        max_json_bytes: int = 16 * 1024 * 1024,
        cache_s: float = 0.0,
        page_size: int = DEVICES_PAGE,
        export_syslog_path: str = EXPORT_SYSLOG_PATH,
        session_factory: Callable[[], requests.Session] = requests.Session,
    ) -> None:
        """Prepare the client (nothing is sent yet); ``verify`` is True, False or a CA file path.

        ``clock`` drives token expiry, listing caches and export polling; ``sleep`` every wait.
        ``cache_s`` shares a device or alarm listing (or its failure) among probes; ``page_size``
        is the listDevices page (at most 100).

        Raises:
            ValueError: a base URL that is not http(s)://host[:port], or a bound out of range.
            OSError, ssl.SSLError: the CA file cannot be read.
        """
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
            raise ValueError("base_url must look like https://host[:port]")
        if timeout_s <= 0 or max_pages < 1 or max_attempts < 1 or max_json_bytes < 1 or cache_s < 0:
            raise ValueError("timeout_s, max_pages, max_attempts and max_json_bytes must be positive")
        if not 1 <= page_size <= DEVICES_PAGE:
            raise ValueError(f"page_size must be 1 to {DEVICES_PAGE}")
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.netloc
        self.client_id = client_id
        self._secret = client_secret
        self.max_pages, self.cache_s, self.page_size = max_pages, cache_s, page_size
        self.export_syslog_path = export_syslog_path
        self._clock: Clock = clock or SystemClock()
        self._sleep = sleep
        self._token: str | None = None
        self._token_expires_at = 0.0
        self._token_lock = threading.Lock()
        self._fetch_lock = threading.Lock()
        self._cache: dict[str, tuple[float, Any, CollectorError | None]] = {}
        self._http = YmcsHttp(
            verify=verify,
            timeout_s=timeout_s,
            sleep=sleep,
            now=self._clock.now,
            max_attempts=max_attempts,
            max_backoff_s=max_backoff_s,
            max_json_bytes=max_json_bytes,
            session_factory=session_factory,
        )

    def __repr__(self) -> str:
        """Name the cloud and the client id, never the secret."""
        return f"YmcsClient({self.base_url!r}, client_id={self.client_id!r})"

    # --- public API ---------------------------------------------------------------------------

    def list_devices(self) -> list[YmcsDevice]:
        """Every device of the enterprise, paged ``page_size`` (at most 100) at a time.

        Raises:
            DeviceUnreachable, DeviceTimeout, AuthFailed, UnexpectedResponse (also past max_pages).
        """
        return self._cached("devices", lambda: self._list("/v2/dm/listDevices", self.page_size, parse_device))

    def list_parts(self, device_id: str) -> list[YmcsPart]:
        """The accessories (camera, microphone, ...) YMCS knows for device ``device_id``.

        Raises:
            DeviceUnreachable, DeviceTimeout, AuthFailed, UnexpectedResponse.
        """
        return self._list(f"/v2/dm/devices/{_segment(device_id)}/listParts", LIST_PAGE, parse_part)

    def list_alarms(self, active_only: bool = True) -> list[YmcsAlarm]:
        """The enterprise's alarms; the API cannot filter by status, so this does it here.

        Raises:
            DeviceUnreachable, DeviceTimeout, AuthFailed, UnexpectedResponse.
        """
        alarms = self._cached("alarms", lambda: self._list("/v2/dm/listAlarms", LIST_PAGE, parse_alarm))
        return [a for a in alarms if a.active] if active_only else list(alarms)

    def export_syslog(
        self,
        device_id: str,
        dest: Path,
        *,
        poll_every_s: float = 5.0,
        timeout_s: float = 300.0,
        max_bytes: int = 64 * 1024 * 1024,
    ) -> tuple[int, str]:
        """Start a syslog export, poll it, stream the result into ``dest``; return (size, sha256).

        Raises:
            DeviceUnreachable, DeviceTimeout (also: still in progress after ``timeout_s``),
            AuthFailed, UnexpectedResponse (failure status, over ``max_bytes``), CollectorError
            (cannot write ``dest``).
        """
        started = self._clock.monotonic()
        where = f"ymcs {self.host} device {device_id[:40]}"
        inner = _inner(self._call("POST", self.export_syslog_path, {"deviceId": device_id}))
        diagnosis_id = _text(inner.get("diagnosisId"))
        if not diagnosis_id:
            raise UnexpectedResponse(f"{where}: exportSyslog answered without a diagnosisId")
        status_path = f"/v2/dm/diagnosis/{_segment(diagnosis_id)}/status"
        while True:
            inner = _inner(self._call("GET", status_path, None))
            status = _text(inner.get("status")).lower()
            if status == "success":
                url = _text(inner.get("url"))
                if not url:
                    raise UnexpectedResponse(f"{where}: diagnosis {diagnosis_id} succeeded without a url")
                left_s = max(self._http.timeout_s, timeout_s - (self._clock.monotonic() - started))
                return self._download(urljoin(self.base_url + "/", url), dest, max_bytes, left_s)
            if status == "failure":
                raise UnexpectedResponse(f"{where}: syslog export {diagnosis_id} failed on the cloud")
            if status != "inprogress":
                raise UnexpectedResponse(f"{where}: unknown diagnosis status {status[:40]!r}")
            if self._clock.monotonic() - started + poll_every_s > timeout_s:
                raise DeviceTimeout(f"{where}: syslog export still in progress after {timeout_s:g} s")
            self._sleep(poll_every_s)

    def probe(self, key: str | Sequence[YmcsKey]) -> ChannelResult:
        """Look the device up in YMCS: status, accessories and active alarms go into ``fields``.

        ``key`` is a MAC or serial, or ``(kind, value)`` keys tried in order (kind ``ymcs_id``,
        ``serial`` or ``mac``). ``ok`` is True when YMCS reports the device ``online``;
        ``offline`` fails with ``device_unreachable``. A device YMCS does not list
        (``not_matched``) or lists as ``pending`` or in an unknown status (``status_unknown``)
        is a neutral result: the cloud cannot judge it.

        Raises:
            DeviceUnreachable, DeviceTimeout (the cloud, not the device), AuthFailed,
            UnexpectedResponse.
        """
        started = time.perf_counter()
        keys: list[YmcsKey] = [("mac", key), ("serial", key)] if isinstance(key, str) else list(key)
        devices = self.list_devices()
        found = match_device(devices, keys)
        if found is None:
            wanted = " or ".join(dict.fromkeys(f"{kind} {value.strip()}" for kind, value in keys)) or "no key"
            return ChannelResult(
                "ymcs",
                False,
                "not_matched",
                (time.perf_counter() - started) * 1000,
                detail=f"{wanted} is not among the {len(devices)} devices YMCS lists",
                fields={"ymcs_found": False},
            )
        parts = self.list_parts(found.id)
        found_mac = normalize_mac(found.mac)
        alarms = [
            a
            for a in self.list_alarms(active_only=True)
            if normalize_mac(a.mac) == found_mac and a.level in ALARM_LEVELS  # 1 minor, 2 major, 3 critical
        ]
        fields: dict[str, object] = {
            "ymcs_found": True,
            "ymcs_device_id": found.id,
            "ymcs_device_status": found.status,
            "ymcs_model": found.model,
            "ymcs_firmware": found.firmware,
            "ymcs_lan_ip": found.lan_ip,
            "ymcs_last_report_ms": found.last_report_ms,
            "ymcs_parts": [
                {"model": p.model, "conn_status": p.conn_status, "connected": p.connected} for p in parts
            ],
            "ymcs_parts_disconnected": sum(1 for p in parts if p.connected is False),
            "ymcs_alarms": [{"event": a.event, "level": a.level, "level_name": a.level_name} for a in alarms],
            "ymcs_alarm_max_level": max((a.level for a in alarms), default=0),
        }
        reasons = {"online": "ok", "offline": DEVICE_UNREACHABLE}
        reason = reasons.get(found.status, "status_unknown")
        detail = f"YMCS: {found.raw_status or 'no status'}"
        missing = [p.model or p.id for p in parts if p.connected is False]
        if missing:
            detail += "; disconnected: " + ", ".join(missing[:5])
        if alarms:
            detail += "; alarms: " + ", ".join(f"{a.event} ({a.level_name})" for a in alarms[:5])
        latency_ms = (time.perf_counter() - started) * 1000
        return ChannelResult("ymcs", reason == "ok", reason, latency_ms, detail=detail, fields=fields)

    def close(self) -> None:
        """Release every connection."""
        self._http.close()

    # --- requests -------------------------------------------------------------------------------

    def _cached(self, key: str, fetch: Callable[[], list[T]]) -> list[T]:
        """One listing (or its failure) shared by every probe within ``cache_s``; one fetch at a time.

        Raises:
            CollectorError: the fetch failed now, or failed less than ``cache_s`` ago (a copy).
        """
        if self.cache_s <= 0:
            return fetch()
        with self._fetch_lock:
            hit = self._cache.get(key)
            if hit is not None and self._clock.monotonic() - hit[0] < self.cache_s:
                if hit[2] is not None:
                    raise type(hit[2])(str(hit[2]))
                return list(hit[1])
            try:
                value = fetch()
            except CollectorError as err:
                self._cache[key] = (self._clock.monotonic(), [], err)
                raise
            self._cache[key] = (self._clock.monotonic(), value, None)
            return list(value)

    def _list(self, path: str, page_size: int, parse: Callable[[dict[str, Any], str], T]) -> list[T]:
        source = f"ymcs {self.host} {path}"
        items: list[T] = []
        skip = 0
        for _ in range(self.max_pages):
            body = {"skip": skip, "limit": page_size, "autoCount": True}
            page = parse_page(self._call("POST", path, body), source)
            items.extend(parse(x, source) for x in page.data)
            skip += len(page.data)
            if not page.data or skip >= page.total:
                return items
        raise UnexpectedResponse(f"{source}: more than {self.max_pages} pages; raise max_pages")

    def _call(self, method: str, path: str, body: Any) -> dict[str, Any]:
        """One authenticated API call; a 401 refreshes the token once."""
        url = self.base_url + path
        token = self._bearer()
        status, raw = self._http.send(method, url, body, self._headers_for(token))
        if status == 401:
            token = self._bearer(stale=token)
            status, raw = self._http.send(method, url, body, self._headers_for(token))
        source = f"ymcs {self.host} {method} {path}"
        if status == 401:
            raise AuthFailed(f"{source}: the cloud rejected the token (HTTP 401) even after a refresh")
        if status == 403:
            raise AuthFailed(f"{source}: the client is not allowed this call (HTTP 403)")
        if not 200 <= status < 300:
            raise UnexpectedResponse(f"{source}: HTTP {status}{self._error_text(raw)}")
        doc = self._json(raw, source)
        if not isinstance(doc, dict):
            raise UnexpectedResponse(f"{source}: answer is not a JSON object")
        return doc

    def _bearer(self, stale: str | None = None) -> str:
        """The cached token, or a new one if it expired or is ``stale`` (rejected with 401)."""
        with self._token_lock:  # one token request at a time, however many threads need one
            if self._token and self._token != stale and self._clock.monotonic() < self._token_expires_at:
                return self._token
            return self._fetch_token()

    def _fetch_token(self) -> str:
        source = f"ymcs {self.host} POST /v2/token"
        basic = base64.b64encode(f"{self.client_id}:{self._secret}".encode()).decode("ascii")
        status, raw = self._http.send(
            "POST",
            self.base_url + "/v2/token",
            {"grant_type": "client_credentials"},
            lambda: {"Authorization": f"Basic {basic}"},
        )
        if status in (401, 403):
            raise AuthFailed(f"{source}: client credentials of {self.client_id!r} rejected (HTTP {status})")
        if not 200 <= status < 300:
            raise UnexpectedResponse(f"{source}: HTTP {status}{self._error_text(raw)}")
        doc = self._json(raw, source)
        if not isinstance(doc, dict):
            raise UnexpectedResponse(f"{source}: answer is not a JSON object")
        token = doc.get("access_token")
        ttl_s = doc.get("expires_in", 86400)
        if not isinstance(token, str) or not token or type(ttl_s) not in (int, float):
            raise UnexpectedResponse(f"{source}: answer has no access_token/expires_in")
        self._token = token
        self._token_expires_at = self._clock.monotonic() + max(0.0, ttl_s - min(60.0, ttl_s / 10))
        return token

    def _headers_for(self, token: str) -> Callable[[], dict[str, str]]:
        return lambda: self._headers(token)

    def _headers(self, token: str) -> dict[str, str]:
        stamp_ms = int(self._clock.now().timestamp() * 1000)
        return {"Authorization": f"Bearer {token}", "timestamp": str(stamp_ms), "nonce": uuid.uuid4().hex}

    def _json(self, raw: bytes, source: str) -> Any:
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            why = f"{len(raw)} bytes, {type(err).__name__}"
            raise UnexpectedResponse(f"{source}: answer is not JSON ({why})") from None

    def _error_text(self, raw: bytes) -> str:
        """The error envelope's code and message, with the secret and token blanked out."""
        text = error_text(raw)
        for secret in (self._secret, self._token):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _download(self, url: str, dest: Path, max_bytes: int, timeout_s: float) -> tuple[int, str]:
        """Fetch a diagnosis result; the token goes only to the API's own origin."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UnexpectedResponse(f"ymcs {self.host}: download url is not http(s)")
        same_origin = f"{parts.scheme}://{parts.netloc}" == self.base_url
        headers = self._headers(self._bearer()) if same_origin else {}
        return self._http.download(url, dest, headers, max_bytes=max_bytes, timeout_s=timeout_s)


def client_from_settings(
    settings: YmcsSettings,
    *,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
    environ: Mapping[str, str] | None = None,
) -> YmcsClient:
    """Build a client from :class:`YmcsSettings`, reading the secret from its env var or file.

    Raises:
        config.loader.ConfigError: the secret cannot be read (the line names ``ymcs.client_secret_env``
            or ``_file``, never the secret).
        OSError, ssl.SSLError: the ``ca_bundle`` file cannot be read.
    """
    return YmcsClient(
        settings.url,
        settings.client_id,
        read_client_secret(settings, environ),
        verify=settings.ca_bundle if settings.ca_bundle is not None else True,
        timeout_s=settings.timeout_s,
        clock=clock,
        sleep=sleep,
        max_pages=settings.max_pages,
        max_attempts=settings.max_attempts,
        max_backoff_s=settings.max_backoff_s,
        cache_s=settings.cache_s,
        page_size=settings.page_size,
        export_syslog_path=settings.export_syslog_path,
    )


# --- helpers ------------------------------------------------------------------------------------


def _segment(value: str) -> str:
    """One URL path segment: ids come from the cloud, so refuse anything that could escape it."""
    if not value or any(c in value for c in "/?#%\\") or value in (".", ".."):
        raise UnexpectedResponse(f"ymcs: unusable id {value[:40]!r}")
    return value


def _text(value: Any) -> str:
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""


def _inner(doc: dict[str, Any]) -> dict[str, Any]:
    """The object itself, or its ``data`` object when the answer wraps one."""
    data = doc.get("data")
    return data if isinstance(data, dict) else doc
