"""``hezo-agent check``: probe each configured device once and say what to fix."""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.daemon import default_data_dir
from agent.store import Store
from collectors.errors import CollectorError
from collectors.known_hosts import KnownHosts
from collectors.models import DeviceFacts
from collectors.pins import PinStore
from collectors.registry import build_collector
from collectors.ymcs_channel import YmcsAccount
from config.loader import ConfigError, load_profile, profile_name, resolve_password
from config.schema import AgentConfig, Device

HINTS = {
    "unreachable": "check the host/port, the cabling and that the device is powered on",
    "timeout": "the device accepted the connection but did not answer in time; raise agent.timeout_s "
    "or check the device's load",
    "auth_failed": "the device rejected the login: check credentials.username and the password source",
    "identity_changed": "the device's certificate differs from the pinned one; if the unit was replaced "
    "on purpose, remove its entry from pins.json in the data folder",
    "unexpected_response": "the device answered differently than its profile expects; check the profile "
    "(endpoints and field paths)",
}
#: what the per-channel table shows for a neutral channel result (it is neither ok nor failing)
NEUTRAL_RESULTS = {
    "cloud_unreachable": "cloud unreachable",
    "not_matched": "not matched",
    "status_unknown": "status unknown",
}


@dataclass(frozen=True, slots=True)
class CheckRow:
    """One device's check result."""

    device_id: str
    model: str
    address: str
    ok: bool
    result: str
    latency_ms: float | None
    firmware: str | None
    serial: str | None
    hint: str
    channels: tuple[dict[str, object], ...] = ()

    def to_json(self) -> dict[str, object]:
        """Return the row as a JSON-ready dict."""
        return asdict(self)


def _check_one(
    config: AgentConfig,
    index: int,
    device: Device,
    pins: PinStore,
    known_hosts: KnownHosts,
    ymcs: YmcsAccount | ConfigError | None = None,
) -> CheckRow:
    search = [config.agent.profiles_dir] if config.agent.profiles_dir else []
    profile = load_profile(profile_name(device.model, device.profile), search)
    port = device.port or profile.http.port
    address = f"{device.host}:{port}"

    def row(ok: bool, result: str, hint: str, **extra: object) -> CheckRow:
        values: dict[str, object] = {"latency_ms": None, "firmware": None, "serial": None, **extra}
        return CheckRow(device.id, device.model, address, ok, result, hint=hint, **values)  # type: ignore[arg-type]

    try:
        password = resolve_password(device.credentials, f"devices[{index}]") if device.credentials else None
    except ConfigError as err:
        return row(False, "no password", f"devices[{index}].{err.lines[0]}")
    if isinstance(ymcs, ConfigError) and "ymcs" in device.channels:
        return row(False, "no secret", f"{ymcs.source}: {ymcs.lines[0]}")
    try:
        collector = build_collector(
            device,
            profile,
            password=password,
            pins=pins,
            timeout_s=config.agent.timeout_s,
            max_response_bytes=config.agent.max_response_bytes,
            max_log_bytes=config.agent.max_log_bytes,
            known_hosts=known_hosts,
            ymcs=ymcs if isinstance(ymcs, YmcsAccount) else None,
        )
    except ConfigError as err:  # a channel secret (SSH key, SNMP community) cannot be read
        return row(False, "no secret", f"{err.source}: {err.lines[0]}")
    try:
        sample = collector.collect_health()
    except CollectorError as err:
        return row(False, err.reason, f"{HINTS.get(err.reason, '')} ({err})".strip())
    finally:
        collector.close()
    facts = sample.facts
    notes = []
    if facts.model != device.model:
        notes.append(f"device reports model {facts.model}, config says {device.model}")
    if config.contract_for(facts.serial) is None:
        notes.append("serial is in no HEZO+ contract (add it under contracts[].serials)")
    missing = [p.kind for p in sample.peripherals if not p.connected]
    if missing:
        notes.append("disconnected: " + ", ".join(missing))
    http_only = ({"channel": "http", "ok": True, "result": "ok", "latency_ms": round(sample.latency_ms, 1)},)
    channels = tuple(
        {
            "channel": c.channel,
            "ok": c.ok,
            "result": NEUTRAL_RESULTS.get(c.reason, c.reason) if c.neutral else c.reason,
            "latency_ms": round(c.latency_ms, 1),
            "detail": c.detail,
            "neutral": c.neutral,
        }
        for c in sample.channels
    ) or tuple({**c, "detail": "", "neutral": False} for c in http_only)
    failing = list(sample.failing_channels)
    if failing:
        notes.insert(0, f"degraded: {', '.join(failing)} not answering")
    notes.extend(f"{c['channel']}: {c['result']}, not counted" for c in channels if c["neutral"])
    return row(
        True,
        "degraded" if failing else "ok",
        "; ".join(notes) or "-",
        latency_ms=sample.latency_ms,
        firmware=facts.firmware,
        serial=facts.serial,
        channels=channels,
    )


@contextlib.contextmanager
def _ymcs_account(config: AgentConfig, folder: Path) -> Iterator[YmcsAccount | ConfigError | None]:
    """The account's YMCS access if a device uses it (matching devices by the agent's stored facts)."""
    if config.ymcs is None or not any("ymcs" in dev.channels for dev in config.devices):
        yield None
        return
    store = Store(folder / "agent.sqlite")
    try:

        def facts(device_id: str) -> DeviceFacts | None:
            found = store.facts(device_id)
            return found[0] if found is not None else None

        try:
            account = YmcsAccount.from_settings(config.ymcs, facts=facts)
        except ConfigError as err:
            yield err
            return
        try:
            yield account
        finally:
            account.close()
    finally:
        store.close()


def check_devices(config: AgentConfig, data_dir: Path | None = None) -> list[CheckRow]:
    """Probe every device once, in parallel, and return one row per device in config order."""
    folder = Path(data_dir or config.agent.data_dir or default_data_dir())
    folder.mkdir(parents=True, exist_ok=True)
    pins = PinStore(folder / "pins.json")
    known_hosts = KnownHosts(folder / "known_hosts")
    with (
        _ymcs_account(config, folder) as ymcs,
        concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(config.devices))) as pool,
    ):
        futures = [
            pool.submit(_check_one, config, i, dev, pins, known_hosts, ymcs)
            for i, dev in enumerate(config.devices)
        ]
        return [f.result() for f in futures]
