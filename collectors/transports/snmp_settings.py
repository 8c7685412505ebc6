"""Settings and secrets of the SNMP channel and trap receiver: what a profile says, how secrets are read.

Nobody documents SNMP on the A20/A30/MVC, so these settings are ``assumed``. Secrets are never
inline: the caller resolves them with :func:`read_snmp_secrets` (environment variables or files)
and passes them to :class:`collectors.transports.snmp.SnmpTransport`; nothing here logs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from config.base import Strict
from config.channels import SNMP_PORT, SnmpChannel
from config.loader import read_secret

__all__ = ["SNMP_PORT", "SnmpChannel", "SnmpSecrets", "read_snmp_secrets"]


@dataclass(frozen=True, slots=True)
class SnmpSecrets:
    """Resolved SNMP secrets; the repr never shows them."""

    community: str | None = None
    auth_key: str | None = None
    priv_key: str | None = None

    def __repr__(self) -> str:
        given = [n for n in ("community", "auth_key", "priv_key") if getattr(self, n) is not None]
        return f"SnmpSecrets(<{', '.join(given) or 'none'} hidden>)"


def read_snmp_secrets(settings: Strict, where: str, environ: Mapping[str, str] | None = None) -> SnmpSecrets:
    """Read the community or v3 keys an :class:`SnmpChannel` points at (environment or files).

    Any settings model with some of the ``*_env``/``*_file`` keys works (the trap receiver's too).

    Raises:
        config.loader.ConfigError: a variable is unset/empty or a file is unreadable/empty; each
            line names the ``snmp.*`` key, never the secret.
    """

    def read(env_key: str, file_key: str) -> str | None:
        name, file = getattr(settings, env_key, None), getattr(settings, file_key, None)
        if name is None and file is None:
            return None
        key = f"snmp.{env_key.removesuffix('_env')}"
        return read_secret(name, None if file is None else Path(file), key, where, environ=environ)

    return SnmpSecrets(
        read("community_env", "community_file"),
        read("auth_key_env", "auth_key_file"),
        read("priv_key_env", "priv_key_file"),
    )
