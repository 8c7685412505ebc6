"""Settings and secrets of the SSH channel: what a profile says, and how secrets are read.

A profile's ``ssh:`` section is an :class:`SshChannel`. Secrets are never inline: the caller
resolves them with :func:`read_secrets` (environment variables or files) and passes them to
:class:`collectors.transports.ssh.SshTransport`; nothing here logs or repeats a secret.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from config.channels import SSH_PORT, SshChannel, SshCommand, SshLogFile

__all__ = [
    "SSH_PORT",
    "SshChannel",
    "SshCommand",
    "SshLogFile",
    "SshSecrets",
    "load_private_key",
    "read_secrets",
]


@dataclass(frozen=True, slots=True)
class SshSecrets:
    """Resolved SSH secrets; the repr never shows them."""

    password: str | None = None
    key_text: str | None = None
    key_passphrase: str | None = None

    def __repr__(self) -> str:
        given = [n for n in ("password", "key_text", "key_passphrase") if getattr(self, n) is not None]
        return f"SshSecrets(<{', '.join(given) or 'none'} hidden>)"


def read_secrets(settings: SshChannel, where: str, environ: Mapping[str, str] | None = None) -> SshSecrets:
    """Read the password and key an :class:`SshChannel` points at (environment or files).

    Raises:
        config.loader.ConfigError: a variable is unset/empty or a file is missing/unreadable/empty;
            each line names the ``ssh.*`` key, never the secret.
    """
    from config.loader import ConfigError  # late: config may import this module

    env = os.environ if environ is None else environ

    def from_env(key: str, name: str | None) -> str | None:
        if name is None:
            return None
        value = env.get(name)
        if not value:
            raise ConfigError(
                where, [f"ssh.{key}: environment variable {name} is {'empty' if value == '' else 'not set'}"]
            )
        return value

    def from_file(key: str, file: Path | None) -> str | None:
        if file is None:
            return None
        try:
            value = file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
            raise ConfigError(where, [f"ssh.{key}: cannot read {file} ({why})"]) from None
        if not value.strip():
            raise ConfigError(where, [f"ssh.{key}: {file} is empty"])
        return value.rstrip("\r\n") if key == "password_file" else value

    password = from_env("password_env", settings.password_env) or from_file(
        "password_file", settings.password_file
    )
    key_text = from_env("key_env", settings.key_env) or from_file("key_file", settings.key_file)
    return SshSecrets(password, key_text, from_env("key_passphrase_env", settings.key_passphrase_env))


def load_private_key(key_text: str, passphrase: str | None = None) -> paramiko.PKey:
    """Parse an OpenSSH or PEM private key (Ed25519, ECDSA, RSA).

    Raises:
        ValueError: not a private key, wrong passphrase, or an unsupported type (no key text in it).
    """
    data = key_text.encode("utf-8")
    secret = passphrase.encode("utf-8") if passphrase is not None else None
    try:
        try:
            loaded: Any = serialization.load_ssh_private_key(data, password=secret)
        except ValueError:
            loaded = serialization.load_pem_private_key(data, password=secret)
    except (ValueError, TypeError) as err:
        reason = "wrong or missing passphrase" if "password" in str(err).lower() else "not a private key"
        raise ValueError(f"SSH private key could not be read ({reason})") from None
    key_class: Any
    if isinstance(loaded, rsa.RSAPrivateKey):
        key_class = paramiko.RSAKey
    elif isinstance(loaded, ed25519.Ed25519PrivateKey):
        key_class = paramiko.Ed25519Key
    elif isinstance(loaded, ec.EllipticCurvePrivateKey):
        key_class = paramiko.ECDSAKey
    else:
        raise ValueError("SSH private key type is not supported (use Ed25519, ECDSA or RSA)")
    try:
        return key_class.from_private_key(io.StringIO(key_text), password=passphrase)
    except (paramiko.SSHException, ValueError):
        raise ValueError("SSH private key could not be read") from None
