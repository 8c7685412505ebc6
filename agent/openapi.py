"""The OpenAPI 3 document of the local API, served at ``/api/v1/openapi.json``."""

from __future__ import annotations

from typing import Any

from agent.views import agent_version

__all__ = ["openapi_document"]

_NULLABLE_STR = {"type": "string", "nullable": True}
_NULLABLE_TIME = {"type": "string", "format": "date-time", "nullable": True}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{description}"}


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["status", "code", "message"],
                "properties": {
                    "status": {"type": "integer"},
                    "code": {"type": "string", "example": "unknown_device"},
                    "message": {"type": "string"},
                },
            }
        },
    },
    "Device": {
        "type": "object",
        "required": ["id", "room", "site", "model", "state"],
        "properties": {
            "id": {"type": "string"},
            "room": {"type": "string"},
            "site": {"type": "string"},
            "model": {"type": "string", "enum": ["A20", "A30", "MVC"]},
            "host": {"type": "string"},
            "state": {"type": "string", "enum": ["unknown", "up", "suspect", "down", "recovering"]},
            "priority": {"type": "string", "enum": ["critical", "medium", "low"], "nullable": True},
            "problems": {"type": "array", "items": {"type": "string"}},
            "tickets": {"type": "array", "items": {"type": "string"}},
            "last_seen": _NULLABLE_TIME,
            "latency_ms": {"type": "number", "nullable": True},
            "last_reason": {"type": "string"},
            "down_since": _NULLABLE_TIME,
            "firmware": _NULLABLE_STR,
            "serial": _NULLABLE_STR,
            "mac": _NULLABLE_STR,
            "contract": _NULLABLE_STR,
            "contract_end": {"type": "string", "format": "date", "nullable": True},
            "quiet": _NULLABLE_STR,
        },
    },
    "DeviceDetail": {
        "allOf": [
            _ref("Device"),
            {
                "type": "object",
                "properties": {
                    "recent_polls": {"type": "array", "items": {"type": "object"}},
                    "open_tickets": {"type": "array", "items": _ref("Ticket")},
                },
            },
        ]
    },
    "Ticket": {
        "type": "object",
        "required": ["ticket_key", "device_id", "priority", "status", "opened_at"],
        "properties": {
            "ticket_key": {"type": "string"},
            "device_id": {"type": "string"},
            "room": _NULLABLE_STR,
            "site": {"type": "string"},
            "problem": {"type": "string"},
            "priority": {"type": "string", "enum": ["critical", "medium", "low"]},
            "status": {"type": "string", "enum": ["open", "resolved"]},
            "opened_at": {"type": "string", "format": "date-time"},
            "resolved_at": _NULLABLE_TIME,
            "delivered": {"type": "boolean", "description": "the helpdesk has the ticket"},
            "backend": _NULLABLE_STR,
            "ref": _NULLABLE_STR,
            "url": _NULLABLE_STR,
            "sla": {
                "type": "object",
                "nullable": True,
                "properties": {
                    "window": {"type": "string", "enum": ["24x7", "8x5"]},
                    "reaction_due": {"type": "string", "format": "date-time"},
                    "next_communication_due": {"type": "string", "format": "date-time"},
                    "delivery_date": {"type": "string", "format": "date", "nullable": True},
                    "return_due": _NULLABLE_TIME,
                },
            },
        },
    },
    "PullRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "since": {"type": "string", "example": "30m", "description": "30m, 2h, 1d, or an ISO 8601 time"},
            "sources": {
                "type": "array",
                "items": {"type": "string"},
                "example": ["http", "blackbox"],
                "description": "default: every source the device has",
            },
        },
    },
    "Job": {
        "type": "object",
        "required": ["id", "device_id", "state", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "device_id": {"type": "string"},
            "state": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
            "requested_by": {"type": "string", "description": "token id (tok-xxxxxxxx), never the token"},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": _NULLABLE_TIME,
            "finished_at": _NULLABLE_TIME,
            "since": _NULLABLE_STR,
            "sources": {"type": "array", "items": {"type": "string"}, "nullable": True},
            "progress": {"type": "array", "items": {"type": "object"}},
            "error": _NULLABLE_STR,
            "bundle": {
                "type": "object",
                "nullable": True,
                "properties": {
                    "name": {"type": "string"},
                    "size_bytes": {"type": "integer"},
                    "sha256": {"type": "string"},
                    "outcome": {"type": "string", "enum": ["ok", "partial", "failed", "rejected"]},
                    "failed_sources": {"type": "array", "items": {"type": "object"}},
                    "audit_id": {"type": "integer"},
                    "url": {"type": "string"},
                },
            },
        },
    },
    "Agent": {"type": "object", "properties": {"health": {"type": "object"}, "outbox": {"type": "object"}}},
}

_RESPONSES: dict[str, Any] = {
    "Unauthorized": _json(_ref("Error"), "No or wrong bearer token."),
    "NotFound": _json(_ref("Error"), "No such device, job or path."),
    "TooManyRequests": {
        **_json(_ref("Error"), "Too many requests from this token; see Retry-After."),
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}},
    },
    "BadRequest": _json(_ref("Error"), "The request cannot be read."),
    "Conflict": _json(_ref("Error"), "The job has not produced a bundle (yet)."),
    "Gone": _json(_ref("Error"), "The bundle was pruned."),
}

_COMMON = {"401": _error("Unauthorized"), "429": _error("TooManyRequests")}
_DEVICE_ID = {"name": "device_id", "in": "path", "required": True, "schema": {"type": "string"}}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _paths() -> dict[str, Any]:
    return {
        "/api/v1/openapi.json": {
            "get": {
                "summary": "This document (no token needed)",
                "operationId": "getOpenApi",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "The OpenAPI 3 document.")},
            }
        },
        "/api/v1/agent": {
            "get": {
                "summary": "The agent's own health and its ticket outbox",
                "operationId": "getAgent",
                "responses": {"200": _json(_ref("Agent"), "Health and outbox."), **_COMMON},
            }
        },
        "/api/v1/devices": {
            "get": {
                "summary": "Every device with its state",
                "operationId": "listDevices",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"devices": {"type": "array", "items": _ref("Device")}},
                        },
                        "The devices in config order.",
                    ),
                    **_COMMON,
                },
            }
        },
        "/api/v1/devices/{device_id}": {
            "get": {
                "summary": "One device, its latest polls and open tickets",
                "operationId": "getDevice",
                "parameters": [_DEVICE_ID],
                "responses": {
                    "200": _json(_ref("DeviceDetail"), "The device."),
                    "404": _error("NotFound"),
                    **_COMMON,
                },
            }
        },
        "/api/v1/devices/{device_id}/logs": {
            "post": {
                "summary": "Start pulling the device's logs into a redacted, audited bundle",
                "operationId": "pullLogs",
                "parameters": [_DEVICE_ID],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("PullRequest")}},
                },
                "responses": {
                    "202": {
                        **_json(_ref("Job"), "The job was started; follow it at Location."),
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    },
                    "400": _error("BadRequest"),
                    "404": _error("NotFound"),
                    **_COMMON,
                },
            }
        },
        "/api/v1/jobs/{job_id}": {
            "get": {
                "summary": "A log-pull job: state, progress, the bundle's size and SHA-256",
                "operationId": "getJob",
                "parameters": [_JOB_ID],
                "responses": {"200": _json(_ref("Job"), "The job."), "404": _error("NotFound"), **_COMMON},
            }
        },
        "/api/v1/jobs/{job_id}/bundle": {
            "get": {
                "summary": "Download the job's bundle (tar.gz)",
                "operationId": "getBundle",
                "parameters": [_JOB_ID],
                "responses": {
                    "200": {
                        "description": "The bundle; its SHA-256 is in X-Bundle-SHA256.",
                        "headers": {"X-Bundle-SHA256": {"schema": {"type": "string"}}},
                        "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "404": _error("NotFound"),
                    "409": _error("Conflict"),
                    "410": _error("Gone"),
                    **_COMMON,
                },
            }
        },
        "/api/v1/tickets": {
            "get": {
                "summary": "The agent's tickets with their SLA clocks",
                "operationId": "listTickets",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["open", "resolved", "all"], "default": "open"},
                    }
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"tickets": {"type": "array", "items": _ref("Ticket")}},
                        },
                        "Most urgent first.",
                    ),
                    "400": _error("BadRequest"),
                    **_COMMON,
                },
            }
        },
    }


def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI 3.0 document (a fresh dict each call)."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "hezo-agent local API",
            "version": agent_version(),
            "description": (
                "The agent's API on this PC (127.0.0.1:8470 by default). Every /api/v1 path except this "
                "document needs `Authorization: Bearer <token>` (the token is in the agent's api-token "
                'file). Errors are JSON: {"error": {"status", "code", "message"}}.'
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _SCHEMAS,
            "responses": _RESPONSES,
        },
        "paths": _paths(),
    }
