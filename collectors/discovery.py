"""Network probes for ``hezo-agent discover``: one connection each, bounded in time and bytes.

Every probe connects once and reports what it saw, never raising for a silent or closed
port: ``closed`` (refused), ``filtered`` (no answer in time, or no route), ``open``. What the
probes look at (all third-party or assumed knowledge, see /work/shared/yealink-facts.md):

- HTTPS: the certificate's subject, issuer and SHA-256 fingerprint (verification off: devices
  use self-signed certificates), then ``GET /``: the ``Server`` header and the page ``<title>``.
- HTTP: the same without TLS.
- TCP 6024: the VC control API's unprompted ``version "model:…" "firmware:…"`` banner.
- SSH: the server's identification line (``SSH-2.0-…``).
- SNMP v2c: ``sysObjectID``, ``sysDescr``, ``sysName``.
- The neighbour table (``ip neigh``, ``/proc/net/arp``, ``arp -a``): MAC addresses, whose OUI
  ``00:15:65`` is Yealink's.

No credentials are sent anywhere except the SNMP community, which is never logged.
"""

from __future__ import annotations

import html
import re
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from collectors.errors import CollectorError
from collectors.transports.snmp import OID_SYS_DESCR, OID_SYS_NAME, OID_SYS_OBJECT_ID, SnmpTransport
from collectors.transports.tcp import parse_banner

__all__ = [
    "YEALINK_OUI",
    "CertFacts",
    "PortState",
    "ProbeResult",
    "SnmpFacts",
    "parse_arp_a",
    "parse_http",
    "parse_ip_neigh",
    "parse_proc_arp",
    "probe_http",
    "probe_snmp",
    "probe_ssh",
    "probe_tcp",
    "probe_vcapi",
    "read_neighbours",
]

YEALINK_OUI = "00:15:65"
MAX_HTTP_BYTES = 65_536
USER_AGENT = "hezo-agent-discover"
PortState = Literal["open", "closed", "filtered"]
_MAC = re.compile(r"\b([0-9a-fA-F]{2}(?:[:-][0-9a-fA-F]{2}){5})\b")
_IPV4 = re.compile(r"\b(\d{1,3}(?:\.\d{1,3}){3})\b")
_YEALINK_WORDS = re.compile(rb"yealink|meeting ?bar", re.IGNORECASE)
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class CertFacts:
    """A TLS certificate as seen by discovery (never verified)."""

    subject: str
    issuer: str
    sha256: str
    common_name: str = ""


@dataclass(frozen=True, slots=True)
class SnmpFacts:
    """The SNMP system group values discovery reads."""

    sys_object_id: str
    sys_descr: str
    sys_name: str


@dataclass(slots=True)
class ProbeResult:
    """One probe of one port: its state and what the protocol said."""

    kind: str
    port: int
    state: PortState
    latency_ms: float | None = None
    detail: str = ""
    cert: CertFacts | None = None
    http_status: int | None = None
    server: str = ""
    title: str = ""
    body_hints: list[str] = field(default_factory=list)
    model: str = ""
    firmware: str = ""
    banner: str = ""
    snmp: SnmpFacts | None = None


# --- TCP --------------------------------------------------------------------------------------


def _connect(host: str, port: int, timeout_s: float) -> tuple[socket.socket | None, PortState, str, float]:
    """Open a TCP connection; returns (socket or None, state, why, latency_ms)."""
    started = time.monotonic()

    def took() -> float:
        return (time.monotonic() - started) * 1000

    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except ConnectionRefusedError:
        return None, "closed", "refused", took()
    except TimeoutError:
        return None, "filtered", f"no answer in {timeout_s:g} s", took()
    except OSError as err:
        return None, "filtered", (err.strerror or type(err).__name__).lower(), took()
    return sock, "open", "", took()


def probe_tcp(host: str, port: int, timeout_s: float, kind: str = "tcp") -> ProbeResult:
    """Connect and close: the port's state only."""
    sock, state, why, latency_ms = _connect(host, port, timeout_s)
    if sock is not None:
        sock.close()
    return ProbeResult(kind, port, state, latency_ms, why)


# --- HTTP(S) ----------------------------------------------------------------------------------


def _tls_context() -> ssl.SSLContext:
    """A client context that accepts any certificate: discovery only reads it, sends no secret."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _name_text(name: x509.Name) -> str:
    return ", ".join(f"{attr.oid._name}={attr.value!s}" for attr in name)


def cert_facts(der: bytes) -> CertFacts:
    """Subject, issuer, SHA-256 fingerprint and common name of a DER certificate.

    Raises:
        ValueError: not a certificate.
    """
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return CertFacts(
        subject=_name_text(cert.subject),
        issuer=_name_text(cert.issuer),
        sha256=cert.fingerprint(hashes.SHA256()).hex(":"),
        common_name=str(names[0].value) if names else "",
    )


def parse_http(raw: bytes) -> tuple[int | None, str, str]:
    """Status code, ``Server`` header and page title of a raw HTTP answer (title without tags)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = None
    match = re.match(r"HTTP/\d(?:\.\d)?\s+(\d{3})", lines[0] if lines else "")
    if match:
        status = int(match.group(1))
    server = next((ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith("server:")), "")
    title_match = _TITLE.search(body)
    title = ""
    if title_match:
        text = title_match.group(1).decode("utf-8", "replace")
        title = " ".join(html.unescape(text).split())[:120]
    return status, server[:120], title


def _read_capped(sock: socket.socket, deadline: float, cap: int) -> bytes:
    data = b""
    while len(data) < cap:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(min(16_384, cap - len(data)))
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        data += chunk
    return data


def probe_http(host: str, port: int, timeout_s: float, *, tls: bool) -> ProbeResult:
    """Connect, (TLS: read the certificate,) ``GET /`` and read the answer's head and title."""
    kind = "https" if tls else "http"
    deadline = time.monotonic() + timeout_s
    sock, state, why, latency_ms = _connect(host, port, timeout_s)
    result = ProbeResult(kind, port, state, latency_ms, why)
    if sock is None:
        return result
    conn: socket.socket = sock
    try:
        if tls:
            try:
                sock.settimeout(max(deadline - time.monotonic(), 0.01))
                conn = _tls_context().wrap_socket(sock, server_hostname=None)
                der = conn.getpeercert(binary_form=True)
                result.cert = cert_facts(der) if der else None
            except (ssl.SSLError, OSError, ValueError) as err:
                result.detail = f"open, no TLS: {type(err).__name__}"
                return result
        request = (
            f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
            "Accept: text/html\r\nConnection: close\r\n\r\n"
        )
        try:
            conn.settimeout(max(deadline - time.monotonic(), 0.01))
            conn.sendall(request.encode("ascii"))
        except OSError as err:
            result.detail = f"open, request failed: {type(err).__name__}"
            return result
        raw = _read_capped(conn, deadline, MAX_HTTP_BYTES)
        result.http_status, result.server, result.title = parse_http(raw)
        result.body_hints = sorted({m.decode().lower() for m in _YEALINK_WORDS.findall(raw)})
        result.detail = f"HTTP {result.http_status}" if result.http_status else "no HTTP answer"
        return result
    finally:
        conn.close()


# --- banners ----------------------------------------------------------------------------------


def _read_line(sock: socket.socket, deadline: float, cap: int) -> bytes:
    """Read until the first line break, the cap, the deadline or the peer closing."""
    data = b""
    while b"\n" not in data and len(data) < cap:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(min(256, cap - len(data)))
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].rstrip(b"\r")


def probe_vcapi(host: str, port: int, timeout_s: float) -> ProbeResult:
    """Read the 6024 version banner (one connection): model and firmware."""
    deadline = time.monotonic() + timeout_s
    sock, state, why, latency_ms = _connect(host, port, timeout_s)
    if sock is None:
        return ProbeResult("vcapi", port, state, latency_ms, why)
    try:
        raw = _read_line(sock, deadline, 1024)
    finally:
        sock.close()
    try:
        banner = parse_banner(raw.decode("utf-8"), f"6024 {host}:{port}")
    except (UnicodeDecodeError, CollectorError) as err:
        why = f"open, no version banner ({type(err).__name__})"
        return ProbeResult("vcapi", port, "open", latency_ms, why)
    return ProbeResult(
        "vcapi", port, "open", latency_ms, f"{banner.model} {banner.firmware}",
        model=banner.model, firmware=banner.firmware, banner=raw.decode("utf-8")[:200],
    )  # fmt: skip


def probe_ssh(host: str, port: int, timeout_s: float) -> ProbeResult:
    """Read the SSH identification line (``SSH-2.0-dropbear_…``) and hang up."""
    deadline = time.monotonic() + timeout_s
    sock, state, why, latency_ms = _connect(host, port, timeout_s)
    if sock is None:
        return ProbeResult("ssh", port, state, latency_ms, why)
    try:
        raw = _read_line(sock, deadline, 256)
    finally:
        sock.close()
    line = raw.strip().decode("ascii", "replace")
    banner = line[:120] if line.startswith("SSH-") else ""
    return ProbeResult("ssh", port, "open", latency_ms, banner or "open, no SSH banner", banner=banner)


def probe_snmp(host: str, port: int, community: str, timeout_s: float) -> ProbeResult:
    """GET sysObjectID, sysDescr and sysName over SNMP v2c (no answer = ``filtered``)."""
    transport = SnmpTransport(host, port, community=community, timeout_s=timeout_s, retries=0)
    started = time.monotonic()
    try:
        got = transport.get([OID_SYS_OBJECT_ID, OID_SYS_DESCR, OID_SYS_NAME])
    except CollectorError as err:
        return ProbeResult("snmp", port, "filtered", None, str(err)[:120])
    finally:
        transport.close()
    facts = SnmpFacts(str(got[OID_SYS_OBJECT_ID]), str(got[OID_SYS_DESCR])[:200], str(got[OID_SYS_NAME])[:64])
    latency_ms = (time.monotonic() - started) * 1000
    return ProbeResult("snmp", port, "open", latency_ms, facts.sys_descr[:80], snmp=facts)


# --- the neighbour table ----------------------------------------------------------------------


def _norm_mac(text: str) -> str:
    return text.replace("-", ":").lower()


def parse_ip_neigh(text: str) -> dict[str, str]:
    """``ip neigh show`` lines (``192.0.2.1 dev eth0 lladdr 00:15:65:aa:bb:cc REACHABLE``)."""
    table: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and "lladdr" in parts:
            mac = parts[parts.index("lladdr") + 1]
            if _MAC.fullmatch(mac):
                table[parts[0]] = _norm_mac(mac)
    return table


def parse_proc_arp(text: str) -> dict[str, str]:
    """``/proc/net/arp`` (header line, then ``IP HWtype Flags MAC Mask Device``)."""
    table: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 4 and _MAC.fullmatch(parts[3]) and parts[3] != "00:00:00:00:00:00":
            table[parts[0]] = _norm_mac(parts[3])
    return table


def parse_arp_a(text: str) -> dict[str, str]:
    """Windows ``arp -a`` (``  192.168.1.20   00-15-65-aa-bb-cc   dynamic``)."""
    table: dict[str, str] = {}
    for line in text.splitlines():
        ip, mac = _IPV4.search(line), _MAC.search(line)
        if ip and mac and ip.start() < mac.start():
            table[ip.group(1)] = _norm_mac(mac.group(1))
    return table


def _command(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def read_neighbours() -> dict[str, str]:
    """IP → MAC from the system's neighbour table (empty when none can be read)."""
    if sys.platform == "win32":
        text = _command(["arp", "-a"])
        return parse_arp_a(text) if text else {}
    text = _command(["ip", "neigh", "show"])
    if text is not None:
        return parse_ip_neigh(text)
    try:
        return parse_proc_arp(Path("/proc/net/arp").read_text(encoding="ascii", errors="replace"))
    except OSError:
        return {}
