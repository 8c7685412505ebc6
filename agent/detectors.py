"""The detectors: one pure function per problem kind, from a :class:`FindingContext` to findings.

Each detector returns the findings of its kind active now, ``[]`` when it judged and found
nothing, or None when the context cannot tell (e.g. no sample: the device did not answer), so
that a finding already open neither raises again nor clears for lack of evidence.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from agent.finding_models import Finding, FindingContext, ProblemKind
from agent.redact import MASK, secret_key
from collectors.models import HealthSample, Peripheral
from config.incidents import (
    AppRestartsSettings,
    BootLoopSettings,
    CertExpirySettings,
    ChannelDownSettings,
    ClockSkewSettings,
    ConfigDriftSettings,
    ContractSettings,
    DetectorSettings,
    FirmwareSettings,
    IncidentSettings,
    LogErrorsSettings,
    MtrHeartbeatSettings,
    PeripheralSettings,
    SlowSettings,
)
from uploader.models import Priority

_PERIPHERAL_PL = {
    "camera": "kamera",
    "microphone": "mikrofon",
    "speaker": "głośnik",
    "touch_panel": "panel dotykowy",
}
_MAX_LISTED = 10
_MAX_VALUE = 60
_MISSING = object()
#: a setting absent from one side of a configuration comparison (see :func:`shown_value`)
ABSENT = _MISSING

#: a detector: the findings active now, or None when the context cannot tell
Detector = Callable[[FindingContext, IncidentSettings], "list[Finding] | None"]


def ignored_key(key: str, ignore: Iterable[str]) -> bool:
    """Whether ``key`` is one of ``ignore`` or lies under one of them (``network`` covers ``network.ntp``)."""
    return any(key == i or key.startswith(i + ".") for i in ignore)


def config_hash(config: Mapping[str, object], ignore: Iterable[str] = ()) -> str:
    """Return the SHA-256 of ``config`` as canonical JSON, leaving out the :func:`ignored_key` ones."""
    skip = tuple(ignore)
    kept = {str(k): v for k, v in config.items() if not ignored_key(str(k), skip)}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=4096)
def firmware_version(text: str) -> tuple[int, ...] | None:
    """Return ``133.15.0.42`` as ``(133, 15, 0, 42)``; None when it is not dotted numbers."""
    parts = text.strip().split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


@functools.lru_cache(maxsize=256)
def site_majority(firmwares: tuple[str, ...], min_devices: int) -> str | None:
    """Return the firmware more than half of ``firmwares`` run, if there are ``min_devices`` of them.

    Cached: every poll of a site asks about the same (rarely changing) tuple."""
    known = [f for f in firmwares if firmware_version(f) is not None]
    if len(known) < min_devices:
        return None
    version, count = Counter(known).most_common(1)[0]
    return version if count * 2 > len(known) else None


def channel_fields(sample: HealthSample | None, name: str) -> Mapping[str, object] | None:
    """The fields of channel ``name`` when it answered in ``sample``, else None."""
    if sample is None:
        return None
    return next((c.fields for c in sample.channels if c.channel == name and c.ok), None)


def parse_iso(value: object) -> datetime | None:
    """Parse an ISO 8601 string with an offset; None for anything else."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else None


def _make(
    kind: ProblemKind, block: DetectorSettings, en: str, pl: str, subject: str = "", **details: str
) -> Finding:
    return Finding(kind, Priority(block.priority), subject, en, pl, dict(details))


def _when(moment: datetime) -> str:
    return f"{moment.astimezone(ZoneInfo('UTC')):%Y-%m-%d %H:%M} UTC"


def _listed(items: Iterable[str]) -> str:
    values = list(items)
    more = len(values) - _MAX_LISTED
    return ", ".join(values[:_MAX_LISTED]) + (f" (+{more})" if more > 0 else "")


def _mtr_heartbeat(ctx: FindingContext, s: MtrHeartbeatSettings) -> list[Finding] | None:
    fields = channel_fields(ctx.sample, "mtr")
    if fields is None:
        return None
    error = fields.get("mtr_heartbeat_ok") is False
    stale = s.stale_is_error and fields.get("mtr_heartbeat_stale") is True
    if not (error or stale):
        return []
    since = parse_iso(fields.get("mtr_heartbeat_since" if error else "mtr_heartbeat_at")) or ctx.now
    minutes = max(0.0, (ctx.now - since).total_seconds() / 60)
    if minutes < s.persist_minutes:
        return []
    what_en, what_pl = ("in error", "zgłasza błąd") if error else ("missing", "nie przychodzi")
    checks = fields.get("mtr_failing_checks")
    failing = _listed(str(c) for c in checks) if isinstance(checks, list) else ""
    return [
        _make(
            ProblemKind.MTR_HEARTBEAT,
            s,
            f"Teams Rooms heartbeat {what_en} since {_when(since)} ({minutes:.0f} min)",
            f"Heartbeat Teams Rooms {what_pl} od {_when(since)} ({minutes:.0f} min)",
            since=since.isoformat(),
            minutes=f"{minutes:.0f}",
            failing_checks=failing,
        )
    ]


def _boot_loop(ctx: FindingContext, s: BootLoopSettings) -> list[Finding] | None:
    floor = ctx.now - timedelta(minutes=s.window_minutes)
    boots = [b for b in ctx.history.boots if floor < b <= ctx.now]
    if len(boots) < s.reboots:
        return []
    window = f"{s.window_minutes:g}"
    return [
        _make(
            ProblemKind.BOOT_LOOP,
            s,
            f"{len(boots)} boots within {window} min (last at {_when(boots[-1])})",
            f"Liczba uruchomień w ciągu {window} min: {len(boots)} (ostatnie {_when(boots[-1])})",
            boots=str(len(boots)),
            window_minutes=window,
            last_boot=boots[-1].isoformat(),
        )
    ]


def _reported_peripherals(sample: HealthSample) -> list[Peripheral]:
    """The sample's peripherals, plus Teams Rooms components of kinds the sample does not list."""
    reported = list(sample.peripherals)
    kinds = {p.kind for p in reported}
    components = (channel_fields(sample, "mtr") or {}).get("mtr_components")
    if isinstance(components, dict):
        for kind, ok in components.items():
            if kind != "display" and kind not in kinds and isinstance(ok, bool):
                reported.append(Peripheral(str(kind), str(kind), ok))
    return reported


def _peripheral(ctx: FindingContext, s: PeripheralSettings) -> list[Finding] | None:
    if ctx.sample is None:
        return None
    reported = _reported_peripherals(ctx.sample)
    if not reported:
        return None  # nothing listed: the device (or this channel) does not say, so no judgement
    # "expected but not listed" is judged only against the device's own list: Teams Rooms
    # components name no touch panel, so they never make one "missing"
    expected = ctx.profile.peripherals.expected if ctx.profile and ctx.profile.peripherals else ()
    found: list[Finding] = []
    for kind in s.kinds:
        items = [p for p in reported if p.kind == kind]
        kind_pl = _PERIPHERAL_PL.get(kind, kind)
        if items:
            names = [p.name for p in items if not p.connected]
            if names:
                found.append(
                    _make(
                        ProblemKind.PERIPHERAL,
                        s,
                        f"{kind} disconnected: {_listed(names)}",
                        f"Odłączone urządzenie peryferyjne ({kind_pl}): {_listed(names)}",
                        subject=kind,
                        peripheral=kind,
                        names=_listed(names),
                    )
                )
        elif s.missing_expected and kind in expected and ctx.sample.peripherals:
            found.append(
                _make(
                    ProblemKind.PERIPHERAL,
                    s,
                    f"{kind} not reported by the device (the profile expects one)",
                    f"Urządzenie nie zgłasza peryferium ({kind_pl}), którego oczekuje profil",
                    subject=kind,
                    peripheral=kind,
                    names="",
                )
            )
    return found


def _app_restarts(ctx: FindingContext, s: AppRestartsSettings) -> list[Finding] | None:
    floor = ctx.now - timedelta(minutes=s.window_minutes)
    restarts = [r for r in ctx.history.app_restarts if floor < r <= ctx.now]
    if len(restarts) < s.restarts:
        return []
    window = f"{s.window_minutes:g}"
    return [
        _make(
            ProblemKind.APP_RESTARTS,
            s,
            f"Application restarted {len(restarts)} times within {window} min",
            f"Liczba restartów aplikacji w ciągu {window} min: {len(restarts)}",
            restarts=str(len(restarts)),
            window_minutes=window,
            last_restart=restarts[-1].isoformat(),
        )
    ]


def _log_errors(ctx: FindingContext, s: LogErrorsSettings) -> list[Finding] | None:
    if ctx.log_lines is None:
        return None
    floor = ctx.now - timedelta(minutes=s.window_minutes)
    count = sum(
        1
        for line in ctx.log_lines
        if line.severity is not None and line.severity <= s.max_severity and floor < line.at <= ctx.now
    )
    if count < s.threshold:
        return []
    window = f"{s.window_minutes:g}"
    return [
        _make(
            ProblemKind.LOG_ERRORS,
            s,
            f"{count} error lines in the device's log within {window} min (threshold {s.threshold})",
            f"Liczba błędów w logu urządzenia w ciągu {window} min: {count} (próg {s.threshold})",
            errors=str(count),
            window_minutes=window,
            threshold=str(s.threshold),
        )
    ]


def _slow(ctx: FindingContext, s: SlowSettings) -> list[Finding] | None:
    if ctx.sample is None:
        return None
    latency_ms = ctx.sample.latency_ms or ctx.outcome.duration_s * 1000.0
    if latency_ms <= s.threshold_ms:
        return []
    return [
        _make(
            ProblemKind.SLOW,
            s,
            f"Responses take {latency_ms:.0f} ms (threshold {s.threshold_ms:g} ms)",
            f"Czas odpowiedzi {latency_ms:.0f} ms (próg {s.threshold_ms:g} ms)",
            latency_ms=f"{latency_ms:.0f}",
            threshold_ms=f"{s.threshold_ms:g}",
        )
    ]


def _identity_changed(ctx: FindingContext, s: DetectorSettings) -> list[Finding] | None:
    sample = ctx.sample
    channels = [c.channel for c in sample.channels if c.reason == "identity_changed"] if sample else []
    if ctx.outcome.reason != "identity_changed" and not channels:
        return [] if sample is not None else None
    where = _listed(channels) or "device"
    return [
        _make(
            ProblemKind.IDENTITY_CHANGED,
            s,
            f"The device's identity changed ({where}): its TLS certificate or SSH host key differs"
            " from the one pinned",
            f"Zmiana tożsamości urządzenia ({where}): certyfikat TLS lub klucz hosta SSH jest inny"
            " niż zapamiętany",
            channels=where,
            detail=ctx.outcome.detail,
        )
    ]


def _channel_down(ctx: FindingContext, s: ChannelDownSettings) -> list[Finding] | None:
    sample = ctx.sample
    if sample is None or not any(c.ok for c in sample.channels):
        return None
    return [
        _make(
            ProblemKind.CHANNEL_DOWN,
            s,
            f"Channel {c.channel} fails ({c.reason}) while the other channels answer",
            f"Kanał {c.channel} nie działa ({c.reason}), pozostałe kanały odpowiadają",
            subject=c.channel,
            channel=c.channel,
            reason=c.reason,
            detail=c.detail,
        )
        for c in sample.channels
        if not c.ok and not c.neutral and c.reason != "identity_changed"
    ]


def _older(version: tuple[int, ...], other: str | None) -> bool:
    """True when ``other`` parses, is of the same platform (first two numbers) and is newer."""
    ref = firmware_version(other) if other else None
    return ref is not None and ref[:2] == version[:2] and version < ref


def _firmware(ctx: FindingContext, s: FirmwareSettings) -> list[Finding] | None:
    if ctx.sample is None:
        return None
    current = ctx.sample.facts.firmware
    version = firmware_version(current)
    if version is None:
        return None
    minimum = ctx.profile.min_firmware if ctx.profile and s.check_minimum else None
    majority = site_majority(ctx.site_firmwares, s.majority_min_devices) if s.check_site_majority else None
    en: list[str] = []
    pl: list[str] = []
    if _older(version, minimum):
        en.append(f"below the profile's minimum {minimum}")
        pl.append(f"starszy niż minimum profilu {minimum}")
    if _older(version, majority):
        en.append(f"behind the site's majority {majority}")
        pl.append(f"starszy niż większość urządzeń w lokalizacji ({majority})")
    if not en:
        return []
    return [
        _make(
            ProblemKind.FIRMWARE,
            s,
            f"Firmware {current} is " + " and ".join(en),
            f"Firmware {current} jest " + " i ".join(pl),
            firmware=current,
            min_firmware=minimum or "",
            site_majority=majority or "",
        )
    ]


def _firmware_update_stuck(ctx: FindingContext, s: DetectorSettings) -> list[Finding] | None:
    if not ctx.update_overdue:
        return []
    since = _when(ctx.updating_since) if ctx.updating_since else "?"
    return [
        _make(
            ProblemKind.FIRMWARE_UPDATE_STUCK,
            s,
            f"Firmware update running since {since}, longer than allowed",
            f"Aktualizacja firmware trwa od {since}, dłużej niż dozwolono",
            updating_since=ctx.updating_since.isoformat() if ctx.updating_since else "",
        )
    ]


def _config_drift(ctx: FindingContext, s: ConfigDriftSettings) -> list[Finding] | None:
    if ctx.config is None or ctx.config_baseline is None:
        return None
    current, baseline = (
        config_hash(ctx.config, s.ignore_keys),
        config_hash(ctx.config_baseline, s.ignore_keys),
    )
    if current == baseline:
        return []
    keys = sorted(
        k
        for k in {*map(str, ctx.config), *map(str, ctx.config_baseline)}
        if not ignored_key(k, s.ignore_keys)
        and ctx.config.get(k, _MISSING) != ctx.config_baseline.get(k, _MISSING)
    )
    changed = _listed(keys)
    before, after = ctx.config_baseline, ctx.config
    changes = _listed(
        f"{k}: {shown_value(k, before.get(k, _MISSING))} -> {shown_value(k, after.get(k, _MISSING))}"
        for k in keys
    )
    return [
        _make(
            ProblemKind.CONFIG_DRIFT,
            s,
            f"Configuration differs from the saved baseline (changed: {changed})",
            f"Konfiguracja różni się od zapisanej bazowej (zmienione: {changed})",
            changed_keys=changed,
            changes=changes,
            baseline_sha256=baseline[:16],
            current_sha256=current[:16],
        )
    ]


def shown_value(key: str, value: object) -> str:
    """A setting's value for a ticket or the CLI: masked when its name says it is a secret
    (:func:`agent.redact.secret_key`), JSON and at most 60 characters otherwise, ``(none)`` for
    :data:`ABSENT`."""
    if value is _MISSING:
        return "(none)"
    if secret_key(key):
        return MASK
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 1] + "…"


def _site_today(ctx: FindingContext) -> date:
    return ctx.now.astimezone(ZoneInfo(ctx.site_timezone)).date()


def _contract(ctx: FindingContext, s: ContractSettings) -> list[Finding] | None:
    contract = ctx.contract
    if contract is None:
        if not s.uncovered:
            return []
        if ctx.sample is None or ctx.sample.facts.serial in ("", "unknown"):
            return None
        serial = ctx.sample.facts.serial
        return [
            _make(
                ProblemKind.CONTRACT,
                s,
                f"The device (SN {serial}) is not covered by any HEZO+ contract",
                f"Urządzenie (SN {serial}) nie jest objęte żadną umową HEZO+",
                contract="",
                serial=serial,
            )
        ]
    days_left = (contract.end - _site_today(ctx)).days
    end = f"{contract.end:%Y-%m-%d}"
    if days_left < 0:
        en, pl = f"Contract {contract.number} ended on {end}", f"Umowa {contract.number} zakończyła się {end}"
    elif days_left <= s.warn_days:
        en = f"Contract {contract.number} ends on {end} ({days_left} days left)"
        pl = f"Umowa {contract.number} kończy się {end} (pozostało dni: {days_left})"
    else:
        return []
    return [
        _make(ProblemKind.CONTRACT, s, en, pl, contract=contract.number, end=end, days_left=str(days_left))
    ]


def _clock_skew(ctx: FindingContext, s: ClockSkewSettings) -> list[Finding] | None:
    if ctx.device_time is None:
        return None
    reference = ctx.sample.taken_at if ctx.sample is not None else ctx.outcome.at
    skew_s = (ctx.device_time - reference).total_seconds()
    if abs(skew_s) <= s.max_skew_s:
        return []
    return [
        _make(
            ProblemKind.CLOCK_SKEW,
            s,
            f"The device's clock is {skew_s:+.0f} s off the agent's (limit {s.max_skew_s:g} s)",
            f"Zegar urządzenia różni się od zegara agenta o {skew_s:+.0f} s (limit {s.max_skew_s:g} s)",
            skew_s=f"{skew_s:+.0f}",
            max_skew_s=f"{s.max_skew_s:g}",
        )
    ]


def _cert_expiry(ctx: FindingContext, s: CertExpirySettings) -> list[Finding] | None:
    not_after = ctx.cert_not_after
    if not_after is None:
        return None
    left = not_after - ctx.now
    if left > timedelta(days=s.warn_days):
        return []
    when = _when(not_after)
    if left <= timedelta(0):
        en, pl = f"The device's certificate expired on {when}", f"Certyfikat urządzenia wygasł {when}"
    else:
        en = f"The device's certificate expires on {when} ({left.days} days left)"
        pl = f"Certyfikat urządzenia wygasa {when} (pozostało dni: {left.days})"
    return [
        _make(ProblemKind.CERT_EXPIRY, s, en, pl, not_after=not_after.isoformat(), days_left=str(left.days))
    ]


#: every detector, by the kind it raises (offline, flapping and site_network are judged elsewhere)
DETECTORS: dict[ProblemKind, Detector] = {
    ProblemKind.MTR_HEARTBEAT: lambda c, i: _mtr_heartbeat(c, i.mtr_heartbeat),
    ProblemKind.BOOT_LOOP: lambda c, i: _boot_loop(c, i.boot_loop),
    ProblemKind.PERIPHERAL: lambda c, i: _peripheral(c, i.peripheral),
    ProblemKind.APP_RESTARTS: lambda c, i: _app_restarts(c, i.app_restarts),
    ProblemKind.LOG_ERRORS: lambda c, i: _log_errors(c, i.log_errors),
    ProblemKind.SLOW: lambda c, i: _slow(c, i.slow),
    ProblemKind.IDENTITY_CHANGED: lambda c, i: _identity_changed(c, i.identity_changed),
    ProblemKind.CHANNEL_DOWN: lambda c, i: _channel_down(c, i.channel_down),
    ProblemKind.FIRMWARE: lambda c, i: _firmware(c, i.firmware),
    ProblemKind.FIRMWARE_UPDATE_STUCK: lambda c, i: _firmware_update_stuck(c, i.firmware_update_stuck),
    ProblemKind.CONFIG_DRIFT: lambda c, i: _config_drift(c, i.config_drift),
    ProblemKind.CONTRACT: lambda c, i: _contract(c, i.contract),
    ProblemKind.CLOCK_SKEW: lambda c, i: _clock_skew(c, i.clock_skew),
    ProblemKind.CERT_EXPIRY: lambda c, i: _cert_expiry(c, i.cert_expiry),
}
#: the kinds this module's detectors raise
DETECTED_KINDS: tuple[ProblemKind, ...] = tuple(DETECTORS)
