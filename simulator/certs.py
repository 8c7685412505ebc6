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
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
FIXED_NOT_BEFORE = datetime(2025, 1, 1, tzinfo=UTC)
VALID_DAYS = 20 * 365


@dataclass(frozen=True)
class DeviceCertificate:
    """A device's certificate and private key (PEM) and the SHA-256 of the certificate DER."""

    cert_pem: bytes
    key_pem: bytes
    sha256: str


def make_certificate(
    host: str, common_name: str, *, key_seed: str | None = None, valid_days: float | None = None
) -> DeviceCertificate:
    """Create a self-signed certificate for ``host`` (an IP address) named ``common_name``.

    With ``key_seed`` the key, serial number and validity follow from the seed and the
    signature is deterministic (RFC 6979) where the installed cryptography supports it, so a
    restarted fleet keeps its fingerprints and an agent's TLS pins stay valid. Such keys are
    not secret: the seed is. Without ``key_seed`` everything is random.

    ``valid_days`` makes a certificate that expires that many days from now (valid since a day
    ago), e.g. to see the agent's ``cert_expiry`` warning; by default it is valid for 20 years.

    Raises:
        ValueError: ``host`` is not an IP address.
    """
    address = ipaddress.ip_address(host)
    if key_seed is None:
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        not_before = datetime.now(UTC) - timedelta(days=1)
    else:
        digest = hashlib.sha256(f"{key_seed}:key".encode()).digest()
        key = ec.derive_private_key(int.from_bytes(digest, "big") % (_P256_ORDER - 1) + 1, ec.SECP256R1())
        serial = int.from_bytes(hashlib.sha256(f"{key_seed}:serial".encode()).digest()[:19], "big") | 1
        not_before = FIXED_NOT_BEFORE
    not_after = not_before + timedelta(days=VALID_DAYS)
    if valid_days is not None:
        now = datetime.now(UTC).replace(microsecond=0)
        not_before, not_after = now - timedelta(days=1), now + timedelta(days=valid_days)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Yealink (simulated)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(address)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    cert = _sign(builder, key, deterministic=key_seed is not None)
    der = cert.public_bytes(serialization.Encoding.DER)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return DeviceCertificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key_pem,
        sha256=hashlib.sha256(der).hexdigest(),
    )


def _sign(
    builder: x509.CertificateBuilder, key: ec.EllipticCurvePrivateKey, *, deterministic: bool
) -> x509.Certificate:
    if deterministic:
        try:
            return builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)
        except (TypeError, UnsupportedAlgorithm):  # cryptography or OpenSSL too old: random nonce
            pass
    return builder.sign(key, hashes.SHA256())


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
