"""A mock Yealink Management Cloud (YMCS) Open API over HTTPS on loopback, for tests and demos.

It follows the third-party documented envelopes (see ``collectors/ymcs_models.py``): ``POST
/v2/token`` with HTTP Basic client credentials, Bearer + ``timestamp`` + ``nonce`` on every
other call, HTTP 412 code ``900444`` for a POST without a body, paged ``{skip, limit, total,
data}`` lists (``listDevices`` at most 100 per page, others 500), ``listParts``,
``listAlarms`` (no server-side status filter), and the asynchronous syslog export (start →
``inprogress`` for N polls → ``success`` with a download ``url`` served here, or ``failure``).
Error codes other than 900444 are this mock's choice. Injection: 429 with ``Retry-After``
(every Nth request, or the next N), token expiry, and per-endpoint faults (:data:`FAULTS`).
Every request is recorded for assertions. Usage::

    with MockYmcs(devices=[{"mac": "001565aabbcc", "deviceStatus": "online"}]) as cloud:
        client = YmcsClient(cloud.base_url, cloud.client_id, cloud.client_secret, verify=cloud.ca_path)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import json
import secrets
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from simulator.certs import make_certificate, server_context
from simulator.ymcs_wire import (
    ENDPOINTS,
    FAULTS,
    RecordedRequest,
    device_record,
    error_response,
    fault_response,
    page_response,
)

__all__ = ["ENDPOINTS", "FAULTS", "MockYmcs", "RecordedRequest", "device_record"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MockYmcs:
    """The mock cloud: devices (dicts in the documented shape, optional ``parts`` list) and alarms."""

    def __init__(
        self,
        devices: Sequence[Mapping[str, Any]] = (),
        *,
        alarms: Sequence[Mapping[str, Any]] = (),
        client_id: str = "hezo-ymcs-client",
        client_secret: str | None = None,
        token_ttl_s: int = 86400,
        diagnosis_polls: int = 2,
        export_syslog_path: str = "/v2/dm/diagnosis/exportSyslog",
        host: str = "127.0.0.1",
        port: int = 0,
        source: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        """Prepare the mock (nothing listens until :meth:`start` or :meth:`astart`).

        ``source``, when given, replaces ``devices``: it is called on the mock's loop for every
        device lookup and returns the devices as they are now (a simulated fleet's live state).
        """
        self.client_id = client_id
        self.client_secret = client_secret or "ymcs-" + secrets.token_hex(12)
        self.token_ttl_s = token_ttl_s
        self.export_syslog_path = export_syslog_path
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self._source = source
        self._status_override: dict[str, str] = {}  # set_device_status overrides
        self._devices, self._parts = _split_parts(devices)
        self._alarms = [copy.deepcopy(dict(a)) for a in alarms]
        self._tokens: dict[str, float] = {}
        self._nonces: set[str] = set()
        self._recorded: list[RecordedRequest] = []
        self._count = 0
        self._every, self._throttle_next, self._retry_after = 0, 0, "1"
        self._faults: dict[str, str] = {}
        self.diagnosis_polls, self.diagnosis_outcome = diagnosis_polls, "success"
        self.syslog_content = b"<134>1 2026-01-05T09:00:00Z bar app - - - syslog export from the mock\n" * 64
        self._diagnoses: dict[str, dict[str, Any]] = {}
        self._files: dict[str, tuple[bytes, str]] = {}  # name -> (content, url signature)
        cert = make_certificate(host, "ymcs-mock")
        self._cert_pem = cert.cert_pem
        self._cert_dir: tempfile.TemporaryDirectory[str] | None = None
        self.ca_path = self._write_ca()
        self._ssl = server_context(cert)
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _write_ca(self) -> Path:
        """Write the certificate (its own CA) for clients' ``verify=``; the folder goes at :meth:`stop`."""
        self._cert_dir = tempfile.TemporaryDirectory(prefix="hezo-ymcs-")
        path = Path(self._cert_dir.name) / "ymcs-ca.pem"
        path.write_bytes(self._cert_pem)
        return path

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:<port>`` (the port is known once started)."""
        return f"https://{self.host}:{self.port}"

    # --- lifecycle ---------------------------------------------------------------------------

    async def astart(self) -> None:
        """Start serving on the running loop.

        Raises:
            OSError: the address cannot be bound.
        """
        self._closing = asyncio.Event()
        if self._cert_dir is None:  # restarted after stop(): same certificate, new file
            self.ca_path = self._write_ca()
        app = web.Application(middlewares=[self._middleware], client_max_size=1024 * 1024)
        add = app.router.add_route
        add("POST", "/v2/token", self._token, name="token")
        add("POST", "/v2/dm/listDevices", self._list_devices, name="listDevices")
        add("GET", "/v2/dm/devices/{id}", self._device, name="device")
        add("POST", "/v2/dm/devices/{id}/listParts", self._list_parts, name="listParts")
        add("POST", "/v2/dm/listAlarms", self._list_alarms, name="listAlarms")
        add("POST", self.export_syslog_path, self._export, name="exportSyslog")
        add("GET", "/v2/dm/diagnosis/{id}/status", self._status, name="status")
        add("GET", "/files/{name}", self._download, name="download")
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self._ssl)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def astop(self) -> None:
        """Stop serving; endless or slow answers end at once."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> None:
        """Serve from a loop in a thread of its own; return once listening.

        Raises:
            RuntimeError: already started. OSError: the address cannot be bound.
        """
        if self._thread is not None:
            raise RuntimeError("the mock YMCS is already running")
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(lambda _loop, _ctx: None)  # aborted clients are the point here
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="hezo-ymcs-mock", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.astart(), loop).result(10)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server and its thread; safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.astop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            if not thread.is_alive():
                loop.close()
        self._loop = self._thread = None
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the CA file and its folder (after :meth:`astop`; :meth:`astart` writes them again)."""
        if self._cert_dir is not None:
            self._cert_dir.cleanup()
            self._cert_dir = None

    def __enter__(self) -> MockYmcs:
        """Start the mock in its own thread."""
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the mock."""
        self.stop()

    # --- injection and assertions ---------------------------------------------------------------

    def rate_limit(self, *, every: int = 0, next_count: int = 0, retry_after: str | None = "1") -> None:
        """Answer 429 to every ``every``-th request and/or the next ``next_count`` ones."""
        with self._lock:
            self._every, self._throttle_next, self._retry_after = every, next_count, retry_after or ""

    def expire_tokens(self) -> None:
        """Make every issued token invalid (the next call with one gets 401)."""
        with self._lock:
            self._tokens.clear()

    def fault(self, endpoint: str, kind: str | None) -> None:
        """Make ``endpoint`` (one of :data:`ENDPOINTS`) answer with fault ``kind`` (None clears).

        Raises:
            ValueError: unknown endpoint or fault.
        """
        if endpoint not in ENDPOINTS or (kind is not None and kind not in FAULTS):
            raise ValueError(f"endpoint one of {ENDPOINTS}, fault one of {FAULTS}")
        with self._lock:
            if kind is None:
                self._faults.pop(endpoint, None)
            else:
                self._faults[endpoint] = kind

    def set_alarms(self, alarms: Sequence[Mapping[str, Any]]) -> None:
        """Replace the alarm list."""
        with self._lock:
            self._alarms = [copy.deepcopy(dict(a)) for a in alarms]

    def set_device_status(self, device_id: str, status: str) -> None:
        """Change one device's ``deviceStatus``.

        Raises:
            KeyError: no device with that id.
        """
        if self._source is not None:
            with self._lock:
                self._status_override[device_id] = status
            return
        with self._lock:
            next(d for d in self._devices if str(d["id"]) == device_id)["deviceStatus"] = status

    def requests(self, endpoint: str | None = None) -> list[RecordedRequest]:
        """The requests received so far (to ``endpoint`` only, when given)."""
        with self._lock:
            return [r for r in self._recorded if endpoint is None or r.endpoint == endpoint]

    # --- request pipeline -----------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read()
        route = request.match_info.route.name or "unknown"
        with self._lock:
            self._recorded.append(
                RecordedRequest(route, request.method, request.path, dict(request.headers), raw)
            )
            self._count += 1
            throttle = self._throttle_next > 0 or (self._every > 0 and self._count % self._every == 0)
            self._throttle_next = max(0, self._throttle_next - 1)
            fault = self._faults.get(route)
        if throttle:
            resp = error_response(429, "900429", "too many requests: 50 per second per enterprise")
            if self._retry_after:
                resp.headers["Retry-After"] = self._retry_after
            return resp
        if route not in ENDPOINTS:
            return error_response(404, "900404", "no such API")
        if route not in ("token", "download"):
            problem = self._check_call(request)
            if problem is not None:
                return problem
        if request.method == "POST" and not raw:
            return error_response(412, "900444", "request body is required")
        if fault is not None:
            return await fault_response(request, fault, self._closing)
        return await handler(request)

    def _check_call(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        with self._lock:
            expires = self._tokens.get(token)
        if expires is None or time.monotonic() >= expires:
            return error_response(401, "900401", "access token invalid or expired")
        stamp, nonce = request.headers.get("timestamp", ""), request.headers.get("nonce", "")
        if not (stamp.isdigit() and len(stamp) == 13):
            return error_response(400, "900400", "bad header", ("timestamp", "milliseconds since the epoch"))
        with self._lock:
            seen = nonce in self._nonces
            self._nonces.add(nonce)
        if not 1 <= len(nonce) <= 32 or seen:
            return error_response(400, "900400", "bad header", ("nonce", "1-32 characters, never reused"))
        return None

    # --- endpoints --------------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        try:
            user, _, password = base64.b64decode(auth[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        if not auth.startswith("Basic ") or (user, password) != (self.client_id, self.client_secret):
            return error_response(401, "900401", "invalid client credentials")
        body = await self._json(request)
        if not isinstance(body, dict) or body.get("grant_type") != "client_credentials":
            detail = ("grant_type", "must be client_credentials")
            return error_response(400, "900400", "unsupported grant", detail)
        token = f"ymcs-at-{secrets.token_hex(16)}"
        with self._lock:
            self._tokens[token] = time.monotonic() + self.token_ttl_s
        doc = {"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl_s}
        return web.json_response(doc)

    async def _json(self, request: web.Request) -> Any:
        try:
            return json.loads(await request.read())
        except ValueError:
            return None

    def _current(self) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        """Copies of the devices and their parts as they are now (from ``source`` when given)."""
        if self._source is None:
            with self._lock:
                return copy.deepcopy(self._devices), copy.deepcopy(self._parts)
        devices, parts = _split_parts(self._source())
        with self._lock:
            for item in devices:
                item["deviceStatus"] = self._status_override.get(str(item["id"]), item.get("deviceStatus"))
        return devices, parts

    async def _list_devices(self, request: web.Request) -> web.Response:
        items, _ = self._current()
        return page_response(await self._json(request), "listDevices", items)

    def _find(self, device_id: str) -> dict[str, Any] | None:
        return next((d for d in self._current()[0] if str(d["id"]) == device_id), None)

    async def _device(self, request: web.Request) -> web.Response:
        found = self._find(request.match_info["id"])
        return web.json_response(found) if found else error_response(404, "900404", "no such device")

    async def _list_parts(self, request: web.Request) -> web.Response:
        device_id = request.match_info["id"]
        if self._find(device_id) is None:
            return error_response(404, "900404", "no such device")
        items = self._current()[1].get(device_id, [])
        return page_response(await self._json(request), "listParts", items)

    async def _list_alarms(self, request: web.Request) -> web.Response:
        with self._lock:
            items = copy.deepcopy(self._alarms)  # every status: the API has no status filter
        return page_response(await self._json(request), "listAlarms", items)

    async def _export(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        device_id = str(body.get("deviceId", "")) if isinstance(body, dict) else ""
        if self._find(device_id) is None:
            return error_response(400, "900400", "unknown device", ("deviceId", "no such device"))
        diagnosis_id = "diag-" + secrets.token_hex(8)
        with self._lock:
            self._diagnoses[diagnosis_id] = {"polls": self.diagnosis_polls, "outcome": self.diagnosis_outcome}
        return web.json_response({"diagnosisId": diagnosis_id})

    async def _status(self, request: web.Request) -> web.Response:
        diagnosis_id = request.match_info["id"]
        with self._lock:
            diag = self._diagnoses.get(diagnosis_id)
            if diag is None:
                return error_response(404, "900404", "no such diagnosis")
            if diag["polls"] > 0:
                diag["polls"] -= 1
                return web.json_response({"diagnosisId": diagnosis_id, "status": "inprogress"})
            if diag["outcome"] != "success":
                return web.json_response({"diagnosisId": diagnosis_id, "status": "failure"})
            name, signature = f"syslog-{diagnosis_id}.tar.gz", secrets.token_hex(16)
            self._files[name] = (self.syslog_content, signature)
        url = f"{self.base_url}/files/{name}?signature={signature}"
        return web.json_response({"diagnosisId": diagnosis_id, "status": "success", "url": url})

    async def _download(self, request: web.Request) -> web.Response:
        with self._lock:
            content, signature = self._files.get(request.match_info["name"], (b"", ""))
        if not signature or request.query.get("signature") != signature:
            return error_response(404, "900404", "no such file")
        return web.Response(body=content, content_type="application/octet-stream")


def _split_parts(
    devices: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Deep copies of ``devices`` (ids filled in as ``dev-0001``...) and their ``parts`` by device id."""
    items: list[dict[str, Any]] = []
    parts: dict[str, list[dict[str, Any]]] = {}
    for i, dev in enumerate(devices, 1):
        item = copy.deepcopy(dict(dev))
        item.setdefault("id", f"dev-{i:04d}")
        parts[str(item["id"])] = item.pop("parts", [])
        items.append(item)
    return items, parts
