"""The fleet's control API: list devices, inject and clear faults over JSON on 127.0.0.1."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from simulator.device import DeviceServer, parse_fault

SERVERS: web.AppKey[dict[str, DeviceServer]] = web.AppKey("servers", dict)


def describe(server: DeviceServer) -> dict[str, Any]:
    """Return one device as the control API shows it (never its password)."""
    d = server.desc
    return {
        "id": d.id,
        "model": d.model,
        "host": d.host,
        "port": d.port,
        "serial": d.serial,
        "mac": d.mac,
        "firmware": d.firmware,
        "hostname": d.hostname,
        "site": d.site,
        "room": d.room,
        "cert_sha256": d.cert_sha256,
        "faults": server.snapshot(),
    }


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _server(request: web.Request) -> DeviceServer | None:
    return request.app[SERVERS].get(request.match_info["device_id"])


def _unknown(request: web.Request) -> web.Response:
    known = list(request.app[SERVERS].keys())
    shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    return _error(404, f"unknown device {request.match_info['device_id']!r} (known: {shown})")


async def list_devices(request: web.Request) -> web.Response:
    """GET /devices: every device with its active faults."""
    return web.json_response([describe(s) for s in request.app[SERVERS].values()])


async def set_fault(request: web.Request) -> web.Response:
    """POST /devices/{id}/fault with {"kind": ..., "arg": ...}."""
    server = _server(request)
    if server is None:
        return _unknown(request)
    try:
        body = await request.json()
    except ValueError:
        return _error(400, 'body must be JSON: {"kind": ..., "arg": ...}')
    if not isinstance(body, dict) or not isinstance(body.get("kind"), str):
        return _error(400, 'body must be {"kind": ..., "arg": ...}')
    raw_arg = body.get("arg")
    try:
        arg = parse_fault(body["kind"], None if raw_arg is None else str(raw_arg))
    except ValueError as err:
        return _error(400, str(err))
    await server.apply(body["kind"], arg)
    return web.json_response(describe(server))


async def clear_device(request: web.Request) -> web.Response:
    """POST /devices/{id}/clear: remove every fault of one device."""
    server = _server(request)
    if server is None:
        return _unknown(request)
    await server.clear()
    return web.json_response(describe(server))


async def clear_all(request: web.Request) -> web.Response:
    """POST /clear: remove every fault of every device."""
    servers = request.app[SERVERS]
    for server in servers.values():
        await server.clear()
    return web.json_response({"cleared": len(servers)})


def make_app(servers: dict[str, DeviceServer]) -> web.Application:
    """Build the control application over ``servers`` (device id → server)."""
    app = web.Application()
    app[SERVERS] = servers
    app.router.add_get("/devices", list_devices)
    app.router.add_post("/devices/{device_id}/fault", set_fault)
    app.router.add_post("/devices/{device_id}/clear", clear_device)
    app.router.add_post("/clear", clear_all)
    return app
