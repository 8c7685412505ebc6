"""Errors a collector may raise.

Every transport translates its library's exceptions into one of these exactly once, at the
transport boundary, so the rest of the agent never sees requests/paramiko/pysnmp errors.
"""

from __future__ import annotations


class CollectorError(Exception):
    """Base of every error a collector raises; ``reason`` is a short machine-readable tag."""

    reason = "error"


class DeviceUnreachable(CollectorError):
    """The device refused the connection, or no route/DNS answer reached it."""

    reason = "unreachable"


class DeviceTimeout(CollectorError):
    """The device accepted the connection but did not answer within the deadline."""

    reason = "timeout"


class AuthFailed(CollectorError):
    """The device rejected the configured credentials: a human must act, not a retry."""

    reason = "auth_failed"


class IdentityChanged(CollectorError):
    """The device's TLS certificate or SSH host key differs from the pinned one."""

    reason = "identity_changed"


class UnexpectedResponse(CollectorError):
    """The device answered, but not in the shape its profile describes (or over the byte cap)."""

    reason = "unexpected_response"
