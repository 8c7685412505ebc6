"""Self-signed device certificates: one EC P-256 key per simulated device, SAN = its IP."""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class DeviceCertificate:
    """A device's certificate and private key (PEM) and the SHA-256 of the certificate DER."""

    cert_pem: bytes
    key_pem: bytes
    sha256: str


def make_certificate(host: str, common_name: str, *, valid_days: int = 3650) -> DeviceCertificate:
    """Create a self-signed certificate for ``host`` (an IP address) named ``common_name``.

    Raises:
        ValueError: ``host`` is not an IP address.
    """
    address = ipaddress.ip_address(host)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Yealink (simulated)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=valid_days))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(address)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return DeviceCertificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key_pem,
        sha256=hashlib.sha256(der).hexdigest(),
    )


def server_context(cert: DeviceCertificate) -> ssl.SSLContext:
    """Build a TLS server context for ``cert`` (the PEM files live only while loading)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="hezo-sim-") as tmp:
        cert_path = Path(tmp) / "cert.pem"
        key_path = Path(tmp) / "key.pem"
        cert_path.write_bytes(cert.cert_pem)
        key_path.write_bytes(cert.key_pem)
        key_path.chmod(0o600)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx
