"""Settings and secrets of the SSH channel: what a profile says, and how secrets are read.

A profile's ``ssh:`` section is an :class:`SshChannel`. Secrets are never inline: the caller
resolves them with :func:`read_secrets` (environment variables or files) and passes them to
:class:`collectors.transports.ssh.SshTransport`; nothing here logs or repeats a secret.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from config.channels import SSH_PORT, SshChannel, SshCommand, SshLogFile
from config.loader import read_secret

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

    def read(key: str, env: str | None, file: Path | None = None, keep_text: bool = False) -> str | None:
        if env is None and file is None:
            return None
        return read_secret(env, file, f"ssh.{key}", where, environ=environ, keep_text=keep_text)

    password = read("password", settings.password_env, settings.password_file)
    key_text = read("key", settings.key_env, settings.key_file, keep_text=True)
    passphrase = read("key_passphrase", settings.key_passphrase_env)
    return SshSecrets(password, key_text, passphrase)


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
