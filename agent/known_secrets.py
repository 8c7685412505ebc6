"""The secret values the agent itself knows, so the redactor masks them wherever they show up.

Every secret in the config and the device profiles is named by a ``<leaf>_env`` / ``<leaf>_file``
pair (device passwords, SSH passwords and key pass phrases, SNMP communities and v3 keys, trap
communities, the YMCS client secret, helpdesk tokens and passwords). This module walks the
models, reads each such secret (a missing one is skipped: the part that needs it reports it)
and builds the agent's :class:`agent.redact.Redactor`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pydantic import BaseModel

from agent.redact import Redactor
from config.loader import ConfigError, read_secret
from config.schema import AgentConfig, Profile

__all__ = ["SECRET_LEAVES", "known_secrets", "redactor_for"]

#: ``<leaf>_env`` / ``<leaf>_file`` pairs that hold secrets (``ca_file``, ``xml_file``, ``key_file`` do not)
SECRET_LEAVES = frozenset(
    {"password", "secret", "token", "api_key", "community", "auth_key", "priv_key", "key_passphrase",
     "client_secret"}
)  # fmt: skip


def _models(value: Any) -> Iterator[BaseModel]:
    if isinstance(value, BaseModel):
        yield value
        for name in type(value).model_fields:
            yield from _models(getattr(value, name))
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _models(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _models(item)


def known_secrets(
    config: AgentConfig, profiles: Iterable[Profile] = (), environ: Mapping[str, str] | None = None
) -> list[str]:
    """Every secret value the config and ``profiles`` point at that can be read now."""
    found: list[str] = []
    for model in [*_models(config), *(m for p in profiles for m in _models(p))]:
        fields = type(model).model_fields
        for leaf in SECRET_LEAVES:
            env = getattr(model, f"{leaf}_env", None) if f"{leaf}_env" in fields else None
            file = getattr(model, f"{leaf}_file", None) if f"{leaf}_file" in fields else None
            if env is None and file is None:
                continue
            try:
                value = read_secret(env, file, leaf, "redaction", environ=environ)
            except ConfigError:
                continue
            if value not in found:
                found.append(value)
    return found


def redactor_for(
    config: AgentConfig, profiles: Iterable[Profile] = (), *, extra: Iterable[str] = ()
) -> Redactor:
    """The agent's redactor: built-in rules, ``redaction.patterns``, every known secret and ``extra``."""
    literals = [*known_secrets(config, profiles), *extra]
    return Redactor(literals=literals, patterns=config.redaction.patterns)
