"""The agent's local HTTP server: the local API, the status page and ``/metrics`` (aiohttp).

One server on ``api.host:api.port`` (127.0.0.1:8470 by default) in its own thread and event
loop, started by :meth:`agent.daemon.Agent.start` and stopped by ``stop()``:

* ``/api/v1/...``: JSON, always behind ``Authorization: Bearer <token>`` (the token file, see
  :mod:`agent.api_auth`) except ``/api/v1/openapi.json``; per-token rate limits (429 with
  ``Retry-After``); every error is a JSON body ``{"error": {"status", "code", "message"}}``.
* ``/`` (the status page, :mod:`agent.status_page`) and ``/metrics`` (:mod:`agent.metrics`):
  open to clients on this machine (a loopback peer address), which can read the agent's files
  anyway; other clients (only possible with ``api.allow_remote``) need the token, unless
  ``api.public_pages`` is true.

Log pulls run as jobs (:mod:`agent.api_jobs`) through the bundle builder; a pull refused here
(unknown device, too fast) is written to the audit table too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent.api_auth import RateLimiter, TokenStore
from agent.api_jobs import BundleMaker, Job, JobRunner
from agent.audit import AuditLog
from agent.bundle_models import BadRequest, Requester, parse_since, parse_sources
from agent.metrics import CONTENT_TYPE, AgentMetrics
from agent.openapi import openapi_document
from agent.status_page import pick_language, render_status_page
from agent.views import FleetView, device_json, health_json, outbox_json, ticket_json
from config.api import ApiSettings

if TYPE_CHECKING:
    from agent.daemon import Agent

__all__ = ["ApiError", "LocalApi"]

log = logging.getLogger("hezo.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 409: "conflict", 410: "gone", 413: "too_large",
          429: "too_many_requests", 500: "internal_error"}  # fmt: skip
MAX_BODY_BYTES = 64 * 1024


class ApiError(Exception):
    """An error answer: HTTP ``status``, a short ``code``, a human ``message``, extra headers."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON error body (every error of this server looks like this)."""
    body = {"error": {"status": status, "code": code, "message": message}}
    return web.json_response(body, status=status, headers=headers)


def _is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def _loopback_name(host_header: str) -> bool:
    """True when the ``Host`` header names this machine (localhost, 127.x.x.x, [::1]), any port."""
    name = host_header.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    return name == "localhost" or _is_loopback(name)


class LocalApi:
    """The local server of one agent (see the module docstring)."""

    def __init__(
        self,
        agent: Agent,
        settings: ApiSettings,
        *,
        token_file: Path,
        bundles: Callable[[], BundleMaker] | None = None,
    ) -> None:
        """Prepare the server (nothing listens until :meth:`start`).

        ``bundles`` returns the bundle builder; default :meth:`agent.bundle.BundleBuilder.for_agent`
        (tests inject their own).

        Raises:
            TokenFileError: the token file cannot be created or read.
        """
        self.agent = agent
        self.settings = settings
        self.host = settings.host
        self.port = settings.port
        self.tokens = TokenStore(token_file)
        self.view = FleetView(agent, started_at=agent.clock.now())
        self.metrics = AgentMetrics.attach(agent, self.view)
        self._owned: list[Callable[[], None]] = []
        self.jobs = JobRunner(
            bundles or self._default_bundles,
            clock=agent.clock,
            workers=settings.job_workers,
            keep=settings.keep_jobs,
        )
        limits = settings.rate_limits
        self.pull_limit = RateLimiter(limits.pulls_per_minute, limits.pull_burst, agent.clock)
        self.request_limit = RateLimiter(limits.requests_per_minute, limits.request_burst, agent.clock)
        self._audit: AuditLog | None = None
        self._audit_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    @classmethod
    def for_agent(cls, agent: Agent, *, bundles: Callable[[], BundleMaker] | None = None) -> LocalApi:
        """The server of ``agent`` from its ``api:`` settings (token file default ``<data_dir>/api-token``).

        Raises:
            TokenFileError: the token file cannot be created or read.
        """
        settings = agent.config.api
        token_file = settings.token_file or agent.data_dir / "api-token"
        return cls(agent, settings, token_file=token_file, bundles=bundles)

    def _default_bundles(self) -> BundleMaker:
        from agent.bundle import BundleBuilder

        builder = BundleBuilder.for_agent(self.agent)
        self._owned.append(builder.close)
        return builder

    @property
    def url(self) -> str:
        """The server's base URL (valid after :meth:`start`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        """Bind and serve in a thread of its own.

        Raises:
            OSError: the address cannot be bound (e.g. the port is in use).
            RuntimeError: already running, or the server did not come up within ``timeout_s``.
        """
        if self._thread is not None:
            raise RuntimeError("the local API is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._serve, args=(ready, failure), name="local-api", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout_s):
            self.stop()
            raise RuntimeError("the local API did not start in time")
        if failure:
            self._thread.join(timeout_s)
            self._thread = None
            raise failure[0]
        log.info("event=api_listening url=%s token_file=%s", self.url, self.tokens.path)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving, finish running jobs, release everything."""
        thread, loop = self._thread, self._loop
        if thread is not None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout_s)
        self._thread = None
        self.close()

    def close(self) -> None:
        """Release jobs, metrics hooks and the bundle builder (also after a failed start)."""
        self.jobs.close(wait=True)
        self.metrics.detach(self.agent)
        for release in self._owned:
            with contextlib.suppress(Exception):
                release()
        self._owned.clear()
        with self._audit_lock:
            if self._audit is not None:
                self._audit.close()
                self._audit = None

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            try:
                loop.run_until_complete(self._open())
            except Exception as err:  # bind errors, re-raised by start()
                failure.append(err)
                return
            finally:
                ready.set()
            loop.run_forever()
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
        finally:
            loop.close()

    async def _open(self) -> None:
        app = web.Application(middlewares=[self._errors], client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/", self._page)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/v1/openapi.json", self._openapi)
        app.router.add_get("/api/v1/agent", self._api(self._agent))
        app.router.add_get("/api/v1/devices", self._api(self._devices))
        app.router.add_get("/api/v1/devices/{device_id}", self._api(self._device))
        app.router.add_post("/api/v1/devices/{device_id}/logs", self._api(self._pull))
        app.router.add_get("/api/v1/jobs/{job_id}", self._api(self._job))
        app.router.add_get("/api/v1/jobs/{job_id}/bundle", self._api(self._bundle))
        app.router.add_get("/api/v1/tickets", self._api(self._tickets))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if runner.addresses:  # the port actually taken (port 0 in tests)
            self.port = int(runner.addresses[0][1])

    # --- middleware and guards ------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as err:
            return error_response(err.status, err.code, err.message, err.headers)
        except web.HTTPException as err:  # routing: 404 unknown path, 405 wrong method, 413 body too big
            if err.status < 400:
                raise
            headers = {"Allow": err.headers["Allow"]} if "Allow" in err.headers else None
            return error_response(err.status, _CODES.get(err.status, "error"), err.reason, headers)
        except Exception:  # a bug answers 500 in JSON and is logged; the server keeps running
            log.exception("event=api_internal_error method=%s path=%s", request.method, request.path)
            return error_response(500, "internal_error", "internal error; see the agent's log")

    def _token(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None
        return self.tokens.check(presented.strip())

    def _require_token(self, request: web.Request) -> str:
        token = self._token(request)
        if token is None:
            given = "Authorization" in request.headers
            raise ApiError(
                401,
                "unauthorized",
                "wrong bearer token"
                if given
                else "send Authorization: Bearer <token> (see the api-token file)",
                {"WWW-Authenticate": 'Bearer realm="hezo-agent"'},
            )
        return token

    def _api(self, handler: Callable[[web.Request, str], Awaitable[web.StreamResponse]]) -> Handler:
        """Wrap an API handler: token first, then the per-token request limit."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            token = self._require_token(request)
            self._limit(self.request_limit, token, "too many requests")
            return await handler(request, token)

        return guarded

    @staticmethod
    def _limit(limiter: RateLimiter, token: str, what: str) -> None:
        wait_s = limiter.check(token)
        if wait_s > 0:
            seconds = max(1, math.ceil(wait_s))
            raise ApiError(
                429, "too_many_requests", f"{what}: retry in {seconds} s", {"Retry-After": str(seconds)}
            )

    def _page_allowed(self, request: web.Request) -> None:
        """The page and /metrics: open to this PC's own clients, else the token (see the module doc).

        The loopback exemption holds only for a loopback ``Host`` name, so a web page elsewhere
        cannot read the status page through a DNS name rebound to 127.0.0.1.

        Raises:
            ApiError: 401 without a valid token when the exemption does not apply.
        """
        if self.settings.public_pages:
            return
        if _is_loopback(request.remote) and _loopback_name(request.host):
            return
        self._require_token(request)

    async def _blocking(self, func: Callable[[], Any]) -> Any:
        """Run ``func`` (store queries, rendering) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, func)

    # --- pages ----------------------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.StreamResponse:
        self._page_allowed(request)
        language = pick_language(request.query.get("lang"), self.agent.config.agent.language)
        html = await self._blocking(
            lambda: render_status_page(self.view, language=language, refresh_s=self.settings.refresh_s)
        )
        return web.Response(
            text=html,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store", "Content-Security-Policy": _PAGE_POLICY},
        )

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        self._page_allowed(request)
        body = await self._blocking(self.metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _openapi(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(openapi_document())

    # --- API ------------------------------------------------------------------------------------------

    async def _agent(self, request: web.Request, token: str) -> web.StreamResponse:
        def read() -> dict[str, Any]:
            outbox = self.view.outbox()
            return {"health": health_json(self.view.health(outbox=outbox)), "outbox": outbox_json(outbox)}

        return web.json_response(await self._blocking(read))

    async def _devices(self, request: web.Request, token: str) -> web.StreamResponse:
        devices = await self._blocking(self.view.devices)
        return web.json_response({"devices": [device_json(d) for d in devices]})

    def _known_device(self, device_id: str) -> None:
        if all(dev.id != device_id for dev in self.agent.config.devices):
            raise ApiError(404, "unknown_device", f"no device {device_id!r} in this agent's config")

    async def _device(self, request: web.Request, token: str) -> web.StreamResponse:
        device_id = request.match_info["device_id"]
        self._known_device(device_id)

        def read() -> dict[str, Any]:
            body = device_json(self.view.device(device_id))
            body["recent_polls"] = self.view.recent_polls(device_id)
            body["open_tickets"] = [
                ticket_json(t) for t in self.view.tickets("open") if t.device_id == device_id
            ]
            return body

        return web.json_response(await self._blocking(read))

    async def _pull(self, request: web.Request, token: str) -> web.StreamResponse:
        device_id = request.match_info["device_id"]
        requester = Requester("api", token)
        if all(dev.id != device_id for dev in self.agent.config.devices):
            await self._blocking(lambda: self._refused(device_id, requester, "unknown device"))
            raise ApiError(404, "unknown_device", f"no device {device_id!r} in this agent's config")
        since, sources = await self._pull_options(request)
        wait_s = self.pull_limit.check(token)
        if wait_s > 0:
            seconds = max(1, math.ceil(wait_s))
            await self._blocking(lambda: self._refused(device_id, requester, f"rate limited ({seconds} s)"))
            raise ApiError(
                429,
                "too_many_requests",
                f"log pulls too fast: retry in {seconds} s",
                {"Retry-After": str(seconds)},
            )
        job = self.jobs.submit(device_id, requester, since, sources)
        location = f"/api/v1/jobs/{job.id}"
        return web.json_response(job.to_json(), status=202, headers={"Location": location})

    async def _pull_options(self, request: web.Request) -> tuple[str | None, tuple[str, ...] | None]:
        """``since`` and ``sources`` from the JSON body (or the query string), checked.

        Raises:
            ApiError: 400 for unreadable JSON, unknown keys, a bad time range or unknown sources.
        """
        data: dict[str, Any] = {}
        if request.can_read_body:
            raw = await request.read()
            if raw.strip():
                try:
                    parsed = json.loads(raw)
                except ValueError as err:
                    raise ApiError(400, "bad_json", f"the body is not JSON: {err}") from None
                if not isinstance(parsed, dict):
                    raise ApiError(400, "bad_json", "the body must be a JSON object")
                data = parsed
        unknown = sorted(set(data) - {"since", "sources"})
        if unknown:
            raise ApiError(400, "bad_request", f"unknown keys {unknown}: use since and sources")
        since = data.get("since", request.query.get("since"))
        sources = data.get("sources", request.query.get("sources"))
        if since is not None and not isinstance(since, str):
            raise ApiError(400, "bad_request", "since must be text such as 30m, 2h or an ISO 8601 time")
        if sources is not None and not (
            isinstance(sources, str)
            or (isinstance(sources, list) and all(isinstance(s, str) for s in sources))
        ):
            raise ApiError(400, "bad_request", "sources must be a list of source names")
        try:
            if since is not None:
                parse_since(since, self.agent.clock.now())
            checked = parse_sources(sources)
        except BadRequest as err:
            raise ApiError(400, "bad_request", str(err)) from None
        return since, checked

    def _refused(self, device_id: str, requester: Requester, why: str) -> None:
        """Audit a pull refused before it started (the builder audits every other outcome)."""
        try:
            with self._audit_lock:
                if self._audit is None:
                    self._audit = AuditLog(self.agent.store.path)
                self._audit.record(
                    at=self.agent.clock.now(), channel="api", requester=requester.who, device_id=device_id,
                    outcome="rejected", detail=why,
                )  # fmt: skip
        except Exception as err:  # the refusal stands even if the audit cannot be written
            log.warning("event=api_audit_failed device=%s error=%s", device_id, err)

    def _find_job(self, request: web.Request) -> Job:
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            raise ApiError(
                404, "unknown_job", "no such job (unknown, or forgotten after keep_jobs newer ones)"
            )
        return job

    async def _job(self, request: web.Request, token: str) -> web.StreamResponse:
        return web.json_response(self._find_job(request).to_json())

    async def _bundle(self, request: web.Request, token: str) -> web.StreamResponse:
        job = self._find_job(request)
        if job.state == "failed":
            raise ApiError(409, "job_failed", f"the job failed: {job.error}")
        if job.state != "done" or job.result is None:
            raise ApiError(409, "job_not_finished", f"the job is {job.state}; ask again when it is done")
        path = job.result.path
        if not path.is_file():
            raise ApiError(410, "bundle_gone", "the bundle was pruned; start a new pull")
        return web.FileResponse(
            path,
            headers={
                "Content-Type": "application/gzip",
                "Content-Disposition": f'attachment; filename="{path.name}"',
                "X-Bundle-SHA256": job.result.sha256,
            },
        )

    async def _tickets(self, request: web.Request, token: str) -> web.StreamResponse:
        status = request.query.get("status", "open")
        if status not in ("open", "resolved", "all"):
            raise ApiError(400, "bad_request", "status must be open, resolved or all")
        tickets = await self._blocking(lambda: self.view.tickets(status))
        return web.json_response({"tickets": [ticket_json(t) for t in tickets]})


#: the page may run only its own inline script and style, load nothing from anywhere
_PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
