"""``hezo-agent discover``: find Yealink devices on a network and print a config snippet for them.

The scan is polite and bounded: at most ``concurrency`` hosts at a time, at most ``rate``
connection attempts (or SNMP requests) per second across all of them (:class:`TokenBucket`,
clock and sleep injected so tests need no real time), one ``timeout_s`` per probe, at most
:data:`MAX_HOSTS` addresses. Only loopback targets are scanned unless the caller allows others
explicitly (``--allow-non-loopback``): a scan of someone else's network is a decision, never a
default. The probes themselves live in :mod:`collectors.discovery`; this module decides what
counts as a Yealink device and which model, and renders the result.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date

from agent.clock import Clock, SystemClock
from collectors.discovery import (
    YEALINK_OUI,
    ProbeResult,
    probe_http,
    probe_snmp,
    probe_ssh,
    probe_tcp,
    probe_vcapi,
    read_neighbours,
)
from collectors.transports.snmp import YEALINK_ENTERPRISE_OID
from config.schema import validate_id

__all__ = [
    "DEFAULT_PORTS",
    "MAX_HOSTS",
    "HostReport",
    "PortSpec",
    "ScanSettings",
    "Scanner",
    "TargetRefused",
    "TokenBucket",
    "config_model",
    "identify",
    "parse_ports",
    "parse_targets",
    "reports_json",
    "yaml_snippet",
]

DEFAULT_PORTS = "443,80,6024,22,161"
MAX_HOSTS = 65_536
KINDS = ("https", "http", "vcapi", "ssh", "snmp", "tcp")
WELL_KNOWN = {443: "https", 8443: "https", 80: "http", 8080: "http", 6024: "vcapi", 22: "ssh", 161: "snmp"}
_YEALINK = re.compile(r"yealink|meeting ?bar", re.IGNORECASE)
_FIRMWARE = re.compile(r"\b(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,4})\b")


class TargetRefused(ValueError):
    """The target is not loopback and non-loopback scanning was not allowed."""


# --- targets and ports ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One port to probe and the protocol to speak there."""

    kind: str
    port: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.port}"


def parse_ports(text: str) -> tuple[PortSpec, ...]:
    """Parse ``443,80,6024,22,161`` or ``https:8443,vcapi:16024,snmp:1161,tcp:9000``.

    A bare port speaks its usual protocol (443/8443 https, 80/8080 http, 6024 vcapi, 22 ssh,
    161 snmp over UDP); any other bare port gets a TCP connect only.

    Raises:
        ValueError: an unknown protocol, a port outside 1-65535, or an empty list.
    """
    specs: list[PortSpec] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        kind, sep, number = item.rpartition(":")
        if not number.isdigit() or not 1 <= int(number) <= 65535:
            raise ValueError(f"--ports: {item!r} is not a port (1-65535) or PROTOCOL:PORT")
        port = int(number)
        kind = kind.lower() if sep else WELL_KNOWN.get(port, "tcp")
        if kind not in KINDS:
            raise ValueError(f"--ports: unknown protocol {kind!r} in {item!r} (use {', '.join(KINDS)})")
        if PortSpec(kind, port) not in specs:
            specs.append(PortSpec(kind, port))
    if not specs:
        raise ValueError("--ports: give at least one port")
    return tuple(specs)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not an IP address (give a CIDR, range or address)") from None


def _addresses(text: str) -> Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    text = text.strip()
    if "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError as err:
            raise ValueError(f"{text!r}: {err}") from None
        if net.num_addresses > MAX_HOSTS:
            raise ValueError(f"{text!r} has {net.num_addresses} addresses; scan at most {MAX_HOSTS} at once")
        return [net.network_address] if net.num_addresses == 1 else net.hosts()
    if "-" in text:
        first_text, last_text = (part.strip() for part in text.split("-", 1))
        first = _address(first_text)
        if last_text.isdigit() and isinstance(first, ipaddress.IPv4Address):  # 127.0.0.1-20
            last_text = ".".join([*first_text.split(".")[:3], last_text])
        last = _address(last_text)
        if first.version != last.version or int(last) < int(first):
            raise ValueError(f"{text!r}: the range must go up, within one IP version")
        if int(last) - int(first) + 1 > MAX_HOSTS:
            raise ValueError(f"{text!r} has more than {MAX_HOSTS} addresses")
        return (ipaddress.ip_address(n) for n in range(int(first), int(last) + 1))
    return [_address(text)]


def parse_targets(text: str, *, allow_non_loopback: bool = False) -> list[str]:
    """The addresses of a CIDR (``127.0.0.0/29``), a range (``127.0.0.1-127.0.0.9``, ``127.0.0.1-9``)
    or one address; several may be given separated by commas.

    Raises:
        TargetRefused: an address is not loopback and ``allow_non_loopback`` is false.
        ValueError: not a network, range or address, or more than :data:`MAX_HOSTS` addresses.
    """
    hosts: dict[str, None] = {}
    for part in (p for p in text.split(",") if p.strip()):
        for addr in _addresses(part):
            if not addr.is_loopback and not allow_non_loopback:
                raise TargetRefused(
                    f"{part.strip()!r} includes {addr}, which is not a loopback address; scanning a real "
                    "network needs --allow-non-loopback (and the network owner's permission)"
                )
            hosts[str(addr)] = None
            if len(hosts) > MAX_HOSTS:
                raise ValueError(f"more than {MAX_HOSTS} addresses; scan a smaller network")
    if not hosts:
        raise ValueError("no address to scan")
    return list(hosts)


# --- rate limit -------------------------------------------------------------------------------


class TokenBucket:
    """At most ``rate`` acquisitions per second on average, bursts of at most ``burst``; thread-safe.

    A caller that finds the bucket empty reserves the next free slot and sleeps until it, so
    waiting callers are served in order and never exceed the rate together.
    """

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        *,
        clock: Clock | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        """Start full.

        Raises:
            ValueError: ``rate`` not positive or ``burst`` below 1.
        """
        if rate <= 0 or burst < 1:
            raise ValueError("need rate > 0 and burst >= 1")
        self.rate, self.burst = rate, burst
        self._clock = clock or SystemClock()
        self._sleep = sleep or time.sleep
        self._tokens = burst
        self._last = self._clock.monotonic()
        self._lock = threading.Lock()
        self.acquired = 0

    def acquire(self) -> float:
        """Take one token, sleeping until it is available; returns the seconds waited."""
        with self._lock:
            now = self._clock.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1
            self.acquired += 1
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


# --- identification ---------------------------------------------------------------------------


def config_model(text: str) -> str | None:
    """The config's model name (``A20``, ``A30``, ``MVC``) a text names, if any."""
    if re.search(r"\bA20\b", text, re.IGNORECASE):
        return "A20"
    if re.search(r"\bA30\b", text, re.IGNORECASE):
        return "A30"
    if re.search(r"\bMVC\s?\d*", text, re.IGNORECASE):
        return "MVC"
    return None


@dataclass(slots=True)
class HostReport:
    """What one address answered, and whether it looks like a Yealink device."""

    host: str
    probes: list[ProbeResult]
    mac: str | None = None
    yealink: bool = False
    model: str | None = None
    model_source: str = ""
    firmware: str = ""
    name: str = ""
    https_port: int | None = None
    evidence: list[str] = field(default_factory=list)

    @property
    def answered(self) -> bool:
        """Any port open (or SNMP answering)."""
        return any(p.state == "open" for p in self.probes)

    @property
    def open_ports(self) -> list[str]:
        """``kind:port`` of every open port."""
        return [f"{p.kind}:{p.port}" for p in self.probes if p.state == "open"]

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (the probes included)."""
        data = asdict(self)
        data["open_ports"] = self.open_ports
        return data


def identify(host: str, probes: Sequence[ProbeResult], mac: str | None = None) -> HostReport:
    """Weigh the probes of one host: Yealink or not, model, firmware, name, evidence."""
    report = HostReport(host, list(probes), mac)
    models: list[tuple[int, str, str]] = []  # (rank, source, text): the lowest rank is trusted most
    names: list[str] = []
    for p in probes:
        if p.kind == "vcapi" and p.model:
            report.evidence.append(f"6024 banner ({p.model} {p.firmware})")
            models.append((0, "6024 banner", p.model))
            report.firmware = report.firmware or p.firmware
        if p.snmp is not None:
            oid = p.snmp.sys_object_id
            if oid == YEALINK_ENTERPRISE_OID or oid.startswith(YEALINK_ENTERPRISE_OID + "."):
                report.evidence.append(f"SNMP sysObjectID {oid}")
            if _YEALINK.search(p.snmp.sys_descr):
                report.evidence.append("SNMP sysDescr names Yealink")
            models.append((1, "SNMP sysDescr", p.snmp.sys_descr))
            found = _FIRMWARE.search(p.snmp.sys_descr)
            report.firmware = report.firmware or (found.group(1) if found else "")
            names.append(p.snmp.sys_name)
        if p.cert is not None:
            if _YEALINK.search(f"{p.cert.subject} {p.cert.issuer}"):
                report.evidence.append(f"TLS certificate ({p.cert.subject[:60]})")
            models.append((2, "TLS certificate", p.cert.common_name))
            names.append(p.cert.common_name)
        if p.kind in ("http", "https") and (_YEALINK.search(f"{p.server} {p.title}") or p.body_hints):
            report.evidence.append(f"{p.kind} page ({(p.title or p.server or ', '.join(p.body_hints))[:40]})")
            models.append((3, f"{p.kind} page", p.title))
        if p.kind == "https" and p.state == "open" and report.https_port is None and p.cert is not None:
            report.https_port = p.port
    if mac and mac.lower().startswith(YEALINK_OUI):
        report.evidence.append(f"MAC {mac} (Yealink OUI {YEALINK_OUI})")
    report.yealink = bool(report.evidence)
    for _rank, source, text in sorted(models):
        model = config_model(text)
        if model:
            report.model, report.model_source = model, source
            break
    report.name = next((n for n in names if n), "")
    return report


# --- scanning ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScanSettings:
    """How to scan: ports, per-probe timeout, parallel hosts, probes per second, SNMP community."""

    ports: tuple[PortSpec, ...]
    timeout_s: float = 1.0
    concurrency: int = 32
    rate: float = 50.0
    community: str | None = None

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or not 1 <= self.concurrency <= 1024 or self.rate <= 0:
            raise ValueError("need timeout > 0, concurrency 1-1024 and rate > 0")

    def __repr__(self) -> str:
        hidden = "<hidden>" if self.community else None
        return f"ScanSettings(ports={self.ports}, timeout_s={self.timeout_s}, community={hidden})"


class Scanner:
    """Scans hosts with bounded concurrency and rate; see the module docstring."""

    def __init__(
        self,
        settings: ScanSettings,
        *,
        limiter: TokenBucket | None = None,
        neighbours: Callable[[], dict[str, str]] = read_neighbours,
    ) -> None:
        self.settings = settings
        self.limiter = limiter or TokenBucket(settings.rate, burst=max(1.0, min(settings.rate, 10.0)))
        self._neighbours = neighbours

    def _probe(self, host: str, spec: PortSpec) -> ProbeResult | None:
        timeout = self.settings.timeout_s
        if spec.kind == "snmp" and not self.settings.community:
            return None
        self.limiter.acquire()
        if spec.kind in ("https", "http"):
            return probe_http(host, spec.port, timeout, tls=spec.kind == "https")
        if spec.kind == "vcapi":
            return probe_vcapi(host, spec.port, timeout)
        if spec.kind == "ssh":
            return probe_ssh(host, spec.port, timeout)
        if spec.kind == "snmp":
            assert self.settings.community is not None
            return probe_snmp(host, spec.port, self.settings.community, timeout)
        return probe_tcp(host, spec.port, timeout)

    def probe_host(self, host: str) -> list[ProbeResult]:
        """Every port of one host, one after the other."""
        return [r for spec in self.settings.ports if (r := self._probe(host, spec)) is not None]

    def scan(self, hosts: Sequence[str], progress: Callable[[int], None] | None = None) -> list[HostReport]:
        """Probe every host; returns the hosts that answered, in address order.

        ``progress`` is called with 1 after each host (for a progress bar).
        """
        results: dict[str, list[ProbeResult]] = {}
        lock = threading.Lock()

        def one(host: str) -> None:
            probes = self.probe_host(host)
            with lock:
                results[host] = probes
            if progress is not None:
                progress(1)

        with ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(hosts)) or 1) as pool:
            for future in [pool.submit(one, h) for h in hosts]:
                future.result()
        table = self._neighbours()
        reports = [identify(h, results[h], table.get(h)) for h in hosts]
        answered = [r for r in reports if r.answered or r.yealink]
        return sorted(answered, key=lambda r: ipaddress.ip_address(r.host))


# --- output -----------------------------------------------------------------------------------


def _device_id(report: HostReport, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", report.name).strip("-.").lower()[:48]
    if not base:
        base = f"{(report.model or 'yealink').lower()}-{re.sub(r'[.:]+', '-', report.host).strip('-')}"
    try:
        validate_id(base)
    except ValueError:
        base = "yealink-" + re.sub(r"[^0-9a-z]+", "-", report.host)[:40].strip("-")
    dev_id, n = base, 2
    while dev_id in taken:
        dev_id, n = f"{base}-{n}", n + 1
    taken.add(dev_id)
    return dev_id


def yaml_snippet(reports: Sequence[HostReport], site: str | None = None, today: date | None = None) -> str:
    """YAML list items for the Yealink devices found, ready to paste under ``devices:``."""
    found = [r for r in reports if r.yealink]
    when = (today or date.today()).isoformat()
    if not found:
        return f"# hezo-agent discover ({when}): no Yealink device found\n"
    lines = [
        f"# Found by `hezo-agent discover` on {when}: paste under `devices:` in your config, set",
        "# each room (and site), and add credentials (password_env) as for your other devices.",
    ]
    taken: set[str] = set()
    for r in found:
        lines.append(f"  # {r.host}: {'; '.join(r.evidence)}")
        lines += [
            f"  - id: {json.dumps(_device_id(r, taken))}",
            '    room: "CHANGE ME"            # the room the device stands in',
            f"    site: {json.dumps(site or 'my-site')}" + ("" if site else "   # CHANGE ME: from sites:"),
        ]
        if r.model:
            fw = f", firmware {r.firmware}" if r.firmware else ""
            lines.append(f"    model: {r.model}                  # from the {r.model_source}{fw}")
        else:
            lines.append("    model: CHANGE-ME            # not identified: A20, A30 or MVC")
        lines.append(f"    host: {json.dumps(r.host)}")
        if r.https_port is not None and r.https_port != 443:
            lines.append(f"    port: {r.https_port}                  # HTTPS is not on 443 here")
    return "\n".join(lines) + "\n"


def reports_json(reports: Sequence[HostReport], scanned: int, snippet: str) -> str:
    """The ``--json`` output: how many addresses were scanned, the answering hosts, the snippet."""
    payload = {
        "scanned": scanned,
        "answered": len(reports),
        "yealink": sum(1 for r in reports if r.yealink),
        "hosts": [r.to_json() for r in reports],
        "devices_yaml": snippet,
    }
    return json.dumps(payload, indent=2, ensure_ascii=False, default=str)
