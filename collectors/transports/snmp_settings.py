"""Settings and secrets of the SNMP channel and trap receiver: what a profile says, how secrets are read.

Nobody documents SNMP on the A20/A30/MVC, so these settings are ``assumed``. Secrets are never
inline: the caller resolves them with :func:`read_snmp_secrets` (environment variables or files)
and passes them to :class:`collectors.transports.snmp.SnmpTransport`; nothing here logs them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from config.base import ENV_VAR_PATTERN, Provenance, Strict

__all__ = ["ENV_VAR_PATTERN", "SNMP_PORT", "SnmpChannel", "SnmpSecrets", "read_snmp_secrets"]

SNMP_PORT = 161


class SnmpChannel(Strict):
    """How a device offers SNMP (``assumed``: no Yealink document describes it).

    Secrets are never inline: the v2c community comes from ``community_env``/``community_file``,
    the v3 keys from ``auth_key_env``/``auth_key_file`` and ``priv_key_env``/``priv_key_file``.
    """

    model_config = Strict.model_config | {"hide_input_in_errors": True}

    port: int = Field(default=SNMP_PORT, ge=1, le=65535)
    version: Literal["2c", "3"] = "2c"
    community_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    community_file: Path | None = None
    user: str | None = Field(default=None, min_length=1, max_length=32)
    auth_key_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    auth_key_file: Path | None = None
    priv_key_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    priv_key_file: Path | None = None
    timeout_s: float = Field(default=2.0, gt=0, le=60, description="per request attempt")
    retries: int = Field(default=1, ge=0, le=5)
    max_rows: int = Field(default=256, ge=1, le=10_000, description="per walk")
    status: Provenance = "assumed"

    @model_validator(mode="after")
    def _sources(self) -> SnmpChannel:
        pairs = (("community_env", "community_file"), ("auth_key_env", "auth_key_file"),
                 ("priv_key_env", "priv_key_file"))  # fmt: skip
        for env, file in pairs:
            if getattr(self, env) is not None and getattr(self, file) is not None:
                raise ValueError(f"give only one of {env} or {file}, not both")
        if self.version == "2c" and self.community_env is None and self.community_file is None:
            raise ValueError("version 2c: give community_env or community_file")
        if self.version == "3" and (
            self.user is None or (self.auth_key_env is None and self.auth_key_file is None)
        ):
            raise ValueError("version 3: give user and auth_key_env or auth_key_file")
        return self


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
    from config.loader import ConfigError  # late: config may import this module

    env = os.environ if environ is None else environ

    def read(env_key: str, file_key: str) -> str | None:
        name, file = getattr(settings, env_key, None), getattr(settings, file_key, None)
        if name is not None:
            value = env.get(name)
            if not value:
                state = "empty" if value == "" else "not set"
                raise ConfigError(where, [f"snmp.{env_key}: environment variable {name} is {state}"])
            return value
        if file is None:
            return None
        try:
            text = Path(file).read_text(encoding="utf-8-sig").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as err:
            why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
            raise ConfigError(where, [f"snmp.{file_key}: cannot read {file} ({why})"]) from None
        if not text:
            raise ConfigError(where, [f"snmp.{file_key}: {file} is empty"])
        return text

    return SnmpSecrets(
        read("community_env", "community_file"),
        read("auth_key_env", "auth_key_file"),
        read("priv_key_env", "priv_key_file"),
    )
