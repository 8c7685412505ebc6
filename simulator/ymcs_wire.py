"""Wire-level pieces of the mock YMCS: envelopes, paging, recorded requests and hostile answers."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from simulator.identity import SimDevice

__all__ = [
    "ENDPOINTS",
    "FAULTS",
    "PAGE_MAX",
    "RecordedRequest",
    "device_record",
    "error_response",
    "fault_response",
    "page_response",
]

ENDPOINTS = (
    *("token", "listDevices", "device", "listParts"),
    *("listAlarms", "exportSyslog", "status", "download"),
)
FAULTS = ("malformed", "shape", "garbage", "huge", "slow", "endless", "hang", "echo")
PAGE_MAX = {"listDevices": 100, "listParts": 500, "listAlarms": 500}


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the mock received: endpoint name, method, path, headers, raw body."""

    endpoint: str
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> Any:
        """The body decoded as JSON, or None (empty or not JSON)."""
        try:
            return json.loads(self.raw) if self.raw else None
        except ValueError:
            return None


def device_record(
    device: SimDevice, *, status: str = "online", parts: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """A ``listDevices`` item for a simulated fleet device (YMCS id = fleet id), with its ``parts``."""
    return {
        "id": device.id,
        "mac": device.mac,
        "sn": device.serial,
        "name": device.hostname,
        "modelName": device.model,
        "siteName": device.site,
        "programVersion": device.firmware,
        "lanIp": device.host,
        "lastReportTime": int(time.time() * 1000),
        "deviceStatus": status,
        "parts": [dict(p) for p in parts],
    }


def error_response(status: int, code: str, message: str, *details: tuple[str, str]) -> web.Response:
    """The documented error envelope ``{code, requestId, message, details[{field, message}]}``."""
    doc = {
        "code": code,
        "requestId": uuid.uuid4().hex,
        "message": message,
        "details": [{"field": f, "message": m} for f, m in details],
    }
    return web.json_response(doc, status=status)


def page_response(body: Any, route: str, items: list[dict[str, Any]]) -> web.Response:
    """One page ``{skip, limit, total, data}`` of ``items`` for a list request ``body``."""
    if not isinstance(body, dict):
        return error_response(400, "900400", "body is not a JSON object")
    skip, limit = body.get("skip", 0), body.get("limit", 20)
    if not isinstance(skip, int) or skip < 0:
        return error_response(400, "900400", "bad paging", ("skip", "a number >= 0"))
    if not isinstance(limit, int) or not 1 <= limit <= PAGE_MAX[route]:
        return error_response(400, "900400", "bad paging", ("limit", f"1..{PAGE_MAX[route]}"))
    page = items[skip : skip + limit]
    return web.json_response({"skip": skip, "limit": limit, "total": len(items), "data": page})


async def fault_response(request: web.Request, kind: str, closing: asyncio.Event) -> web.StreamResponse:
    """Answer with fault ``kind`` (one of :data:`FAULTS`); streaming faults end when ``closing`` is set."""
    if kind == "malformed":
        return web.Response(body=b'{"skip": 0, "data": [{"id": ', content_type="application/json")
    if kind == "shape":
        return web.json_response({"total": "many", "data": {"id": 1}, "status": 7})
    if kind == "garbage":
        return web.Response(body=secrets.token_bytes(4096), content_type="application/json")
    if kind == "echo":  # a hostile error page quoting the credentials it was sent
        quoted = f"{request.headers.get('Authorization', '')} {request.headers.get('nonce', '')}"
        return error_response(400, "900400", f"rejected {quoted}", ("authorization", quoted))
    if kind == "hang":  # accept, read, never answer
        while not closing.is_set():
            await asyncio.sleep(0.05)
        return web.Response(status=503)
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await resp.prepare(request)
    chunk, pause_s = {"huge": (b"[" * 65536, 0.0), "endless": (b"A" * 65536, 0.0)}.get(kind, (b" ", 0.2))
    limit = 8 * 1024 * 1024 if kind == "huge" else 1 << 40
    sent = 0
    try:
        while sent < limit and not closing.is_set():
            await resp.write(chunk)
            sent += len(chunk)
            await asyncio.sleep(pause_s)
        await resp.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client gave up: that is what a byte cap or deadline does
    return resp
