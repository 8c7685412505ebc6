"""Ticket text in Polish and English: what the HEZO+ verification step needs, in plain text.

Pure rendering: no I/O except reading the device's password environment variable, so that a
password that leaked into a collector's error detail is masked before it leaves the box.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from agent.ticket_words import (
    LABELS,
    PRIORITY_DEFINITIONS,
    PRIORITY_NAMES,
    REASONS,
    SLA_WORDS,
    WEEKDAY_NAMES,
)
from collectors.models import CheckResult, DeviceFacts
from config.schema import Contract, Device, Site
from uploader.models import Priority, Ticket

if TYPE_CHECKING:
    from agent.sla import SlaClocks

LANGUAGES = ("pl", "en")
PROBLEM_OFFLINE = "offline"
#: the structured facts every outage ticket carries for the verification step (the seed)
SEED_FIELDS = (
    "device",
    "model",
    "firmware",
    "serial",
    "mac",
    "contract",
    "contract_valid",
    "site",
    "address",
    "contact_name",
    "contact_phone",
    "contact_email",
    "problem",
    "priority",
    "last_seen",
    "room",
)
MASK = "***"
_MAX_DETAIL_CHARS = 160


class Observation(Protocol):
    """One poll as shown in a ticket's timeline (a PollOutcome or a stored outcome record)."""

    @property
    def at(self) -> datetime: ...
    @property
    def ok(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def detail(self) -> str: ...


@dataclass(frozen=True, slots=True)
class DownContext:
    """Everything known when a device is declared offline."""

    device: Device
    site: Site
    contract: Contract | None
    facts: DeviceFacts | None
    last_seen: datetime | None
    went_down_at: datetime
    first_failure_at: datetime
    failures: int
    reason: str
    now: datetime
    timeline: Sequence[Observation] = ()
    checks: Sequence[CheckResult] = ()
    attachment_name: str | None = None
    #: what the ticket is about (``offline``, ``flapping``, ``peripheral``, ...) and its priority
    problem: str = PROBLEM_OFFLINE
    priority: Priority = Priority.CRITICAL
    #: for problems other than offline: the title's words and the finding in one line, and its details
    headline: str | None = None
    summary: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)
    #: ready-made lines (SLA clocks) shown before the attachments
    sla_lines: Sequence[str] = ()


def incident_key(site: str, device_id: str, problem: str) -> str:
    """Return the dedup key of a problem: ``site/device/problem``."""
    return f"{site}/{device_id}/{problem}"


def _lang(language: str) -> dict[str, str]:
    if language not in LABELS:
        raise ValueError(f"unknown language {language!r} (use one of {', '.join(LANGUAGES)})")
    return LABELS[language]


def format_duration(seconds: float, language: str = "en") -> str:
    """Return ``seconds`` as ``"1 h 2 min 5 s"`` (largest unit first, no leading zero units)."""
    _lang(language)
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{value} {unit}" for value, unit in parts)


def format_utc(at: datetime) -> str:
    """Return ``at`` as ``2026-01-05 09:00:00 UTC``."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_local(at: datetime, timezone: str) -> str:
    """Return ``at`` in ``timezone`` as ``2026-01-05 10:00:00 +01:00 Europe/Warsaw``."""
    local = at.astimezone(ZoneInfo(timezone))
    offset = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M:%S} {offset[:3]}:{offset[3:]} {timezone}"


def format_when(at: datetime, timezone: str) -> str:
    """Return ``at`` in UTC and in the site's local time."""
    return f"{format_utc(at)} ({format_local(at, timezone)})"


def contract_valid(contract: Contract | None, on: date) -> bool:
    """Return True when ``contract`` covers the day ``on``."""
    return contract is not None and contract.start <= on <= contract.end


def device_secrets(device: Device) -> tuple[str, ...]:
    """Return the device's secret values that must never appear in a ticket."""
    creds = device.credentials
    if creds is None or creds.password_env is None:
        return ()
    value = os.environ.get(creds.password_env, "")
    return (value,) if value else ()


def scrub(text: str, secrets: Sequence[str]) -> str:
    """Return ``text`` with every secret value replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _reason(reason: str, language: str) -> str:
    label = REASONS[language].get(reason)
    return f"{reason} ({label})" if label else reason


def _contract_line(ctx: DownContext, today: date, t: dict[str, str]) -> str:
    contract = ctx.contract
    if contract is None:
        return t["not_covered"] + ("" if ctx.facts else t["serial_unknown"])
    values = {
        "number": contract.number,
        "start": contract.start.isoformat(),
        "end": contract.end.isoformat(),
        "today": today.isoformat(),
    }
    if contract_valid(contract, today):
        return t["valid"].format(**values)
    why = t["ended"] if today > contract.end else t["not_started"]
    return t["expired"].format(why=why, **values)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [
        max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
        for i in range(len(header))
    ]
    lines = ["  " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  " + "-+-".join("-" * w for w in widths))
    for row in rows:
        lines.append("  " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_DETAIL_CHARS else flat[: _MAX_DETAIL_CHARS - 1] + "…"


def render_down_ticket(ctx: DownContext, language: str) -> Ticket:
    """Render the ticket for ``ctx`` in ``language`` (``pl`` or ``en``): "device offline" by default,
    or any other problem when ``ctx.problem``/``ctx.headline``/``ctx.summary`` say so.

    Raises:
        ValueError: unknown language.
    """
    t = _lang(language)
    dev, site, facts = ctx.device, ctx.site, ctx.facts
    tz = site.timezone
    unknown = t["unknown"]
    today = ctx.now.astimezone(ZoneInfo(tz)).date()
    priority = ctx.priority
    offline = ctx.problem == PROBLEM_OFFLINE
    prio_name = PRIORITY_NAMES[language][priority]
    situation, window = PRIORITY_DEFINITIONS[language][priority]
    model = facts.model if facts else dev.model
    serial = facts.serial if facts else None
    valid = contract_valid(ctx.contract, today)

    headline = t["offline"] if offline or not ctx.headline else ctx.headline
    title = f'[{prio_name}] {model} "{dev.room}" {headline} — SN {serial or unknown}'
    lines = [
        f"{t['priority']}: {prio_name}" + ("" if prio_name == priority.value else f" ({priority.value})"),
        f"  {situation}",
        f"  {window}",
        "",
        f"{t['device']}:",
        f"  {t['id']}: {dev.id}",
        f"  {t['room']}: {dev.room}",
        f"  {t['model']}: {model}",
        f"  {t['firmware']}: {facts.firmware if facts else unknown}",
        f"  {t['serial']}: {serial or unknown}",
        f"  {t['mac']}: {facts.mac if facts else unknown}",
        f"  {t['host']}: {dev.host}",
        "",
        f"{t['contract']}: {_contract_line(ctx, today, t)}",
        "",
        f"{t['site']}: {site.name}",
        f"  {t['address']}: {site.address}",
        f"  {t['contact']}: {site.contact.name}, {site.contact.phone}, {site.contact.email}",
        "",
        f"{t['observed']}:",
    ]
    if offline:
        lines += [
            f"  {t['last_seen']}: {format_when(ctx.last_seen, tz) if ctx.last_seen else t['never']}",
            f"  {t['first_failure']}: {format_when(ctx.first_failure_at, tz)}",
            f"  {t['went_down']}: {format_when(ctx.went_down_at, tz)}, "
            + t["after_polls"].format(n=ctx.failures),
            f"  {t['reason']}: {_reason(ctx.reason, language)}",
        ]
    else:
        lines += [
            f"  {t['problem']}: {ctx.problem}" + (f" — {ctx.summary}" if ctx.summary else ""),
            f"  {t['first_seen']}: {format_when(ctx.first_failure_at, tz)}",
            f"  {t['raised']}: {format_when(ctx.went_down_at, tz)}",
            *(f"  {name}: {_short(value)}" for name, value in sorted(ctx.details.items())),
            f"  {t['last_seen']}: {format_when(ctx.last_seen, tz) if ctx.last_seen else t['never']}",
        ]
    lines += ["", f"{t['timeline']}:"]
    timeline_rows = [
        (
            format_utc(o.at),
            format_local(o.at, tz),
            t["pass"] if o.ok else t["fail"],
            _reason(o.reason, language),
            f"{o.duration_s:.2f} s",
            _short(o.detail),
        )
        for o in sorted(ctx.timeline, key=lambda o: o.at)
    ]
    header = (
        t["col_utc"],
        f"{t['col_local']} ({tz})",
        t["col_result"],
        t["col_reason"],
        t["col_duration"],
        t["col_detail"],
    )
    lines += _table(header, timeline_rows) if timeline_rows else ["  —"]
    lines += ["", f"{t['tests']}:"]
    check_rows = [(c.check, t["pass"] if c.ok else t["fail"], f"{c.latency_ms:.1f}") for c in ctx.checks]
    lines += (
        _table((t["col_check"], t["col_result"], t["col_latency"]), check_rows)
        if check_rows
        else [f"  {t['no_tests']}"]
    )
    failed = [c for c in ctx.checks if not c.ok]
    lines += ["", f"{t['failed']}:"]
    lines += [f"  - {c.check}: {_short(c.detail) or t['fail']}" for c in failed] or [f"  {t['none_failed']}"]
    if ctx.sla_lines:
        lines += ["", *ctx.sla_lines]
    lines += ["", f"{t['attachments']}:"]
    attached = t["log_attached"].format(name=ctx.attachment_name) if ctx.attachment_name else t["no_log"]
    lines += [f"  {attached}", "", t["verify"], t["footer"].format(now=format_when(ctx.now, tz))]

    fields: dict[str, Any] = {
        "device": dev.id,
        "room": dev.room,
        "model": model,
        "firmware": facts.firmware if facts else None,
        "serial": serial,
        "mac": facts.mac if facts else None,
        "host": dev.host,
        "contract": ctx.contract.number if ctx.contract else None,
        "contract_valid": valid,
        "contract_end": ctx.contract.end.isoformat() if ctx.contract else None,
        "site": site.name,
        "address": site.address,
        "contact_name": site.contact.name,
        "contact_phone": site.contact.phone,
        "contact_email": site.contact.email,
        "problem": ctx.problem,
        "priority": priority.value,
        "last_seen": ctx.last_seen.astimezone(UTC).isoformat() if ctx.last_seen else None,
        "first_failure_at": ctx.first_failure_at.astimezone(UTC).isoformat(),
        "went_down_at": ctx.went_down_at.astimezone(UTC).isoformat(),
        "failures": ctx.failures,
        "reason": ctx.reason,
        "timezone": tz,
        "language": language,
    }
    secrets = device_secrets(dev)
    return Ticket(
        key=incident_key(site.name, dev.id, ctx.problem),
        title=scrub(title, secrets),
        body=scrub("\n".join(lines) + "\n", secrets),
        priority=priority,
        fields={k: scrub(v, secrets) if isinstance(v, str) else v for k, v in fields.items()},
    )


def render_recovery_comment(
    device: Device, downtime_s: float, at: datetime, site: Site, language: str
) -> str:
    """Render the comment that says the device answers again, with the downtime.

    Raises:
        ValueError: unknown language.
    """
    t = _lang(language)
    text = t["recovered"].format(
        device=device.id,
        model=device.model,
        room=device.room,
        site=site.name,
        when=format_when(at, site.timezone),
        downtime=format_duration(downtime_s, language),
    )
    return scrub(text, device_secrets(device))


def render_resolve_comment(device: Device, downtime_s: float, at: datetime, site: Site, language: str) -> str:
    """Render the closing comment of an auto-resolved offline ticket.

    Raises:
        ValueError: unknown language.
    """
    t = _lang(language)
    text = t["resolved"].format(
        device=device.id,
        when=format_when(at, site.timezone),
        downtime=format_duration(downtime_s, language),
    )
    return scrub(text, device_secrets(device))


@dataclass(frozen=True, slots=True)
class SiteContext:
    """Everything known when every device and canary of a site failed together."""

    site: Site
    at: datetime
    devices: Sequence[Device]
    canaries: Sequence[str]
    priority: Priority
    facts: Mapping[str, DeviceFacts]
    now: datetime
    sla_lines: Sequence[str] = ()


def render_site_ticket(ctx: SiteContext, language: str) -> Ticket:
    """Render the one "site network down" ticket that stands for every device of the site.

    Raises:
        ValueError: unknown language.
    """
    t = _lang(language)
    site, tz = ctx.site, ctx.site.timezone
    prio_name = PRIORITY_NAMES[language][ctx.priority]
    situation, window = PRIORITY_DEFINITIONS[language][ctx.priority]
    unknown = t["unknown"]
    title = f'[{prio_name}] {t["site"]} "{site.name}" {t["site_network_down"]} — ' + t["n_devices"].format(
        n=len(ctx.devices)
    )
    rows = [
        (d.id, d.room, d.model, ctx.facts[d.id].serial if d.id in ctx.facts else unknown, d.host)
        for d in ctx.devices
    ]
    lines = [
        f"{t['priority']}: {prio_name}"
        + ("" if prio_name == ctx.priority.value else f" ({ctx.priority.value})"),
        f"  {situation}",
        f"  {window}",
        "",
        f"{t['site']}: {site.name}",
        f"  {t['address']}: {site.address}",
        f"  {t['contact']}: {site.contact.name}, {site.contact.phone}, {site.contact.email}",
        "",
        f"{t['observed']}:",
        "  " + t["site_network_observed"].format(when=format_when(ctx.at, tz), n=len(ctx.devices)),
        f"  {t['canaries']}: {', '.join(ctx.canaries) or '—'}",
        "",
        f"{t['device']}:",
        *_table((t["id"], t["room"], t["model"], t["serial"], t["host"]), rows),
    ]
    if ctx.sla_lines:
        lines += ["", *ctx.sla_lines]
    lines += ["", t["site_network_hint"], t["footer"].format(now=format_when(ctx.now, tz))]
    fields: dict[str, Any] = {
        "site": site.name,
        "address": site.address,
        "contact_name": site.contact.name,
        "contact_phone": site.contact.phone,
        "contact_email": site.contact.email,
        "problem": "site_network",
        "priority": ctx.priority.value,
        "devices": [d.id for d in ctx.devices],
        "serials": [ctx.facts[d.id].serial for d in ctx.devices if d.id in ctx.facts],
        "canaries": list(ctx.canaries),
        "went_down_at": ctx.at.astimezone(UTC).isoformat(),
        "timezone": tz,
        "language": language,
    }
    return Ticket(
        key=incident_key(site.name, "_site", "site_network"),
        title=title,
        body="\n".join(lines) + "\n",
        priority=ctx.priority,
        fields=fields,
    )


def _every(span: timedelta) -> str:
    """Return a cadence as ``1 h``, ``1 h 30 min`` or ``45 min``."""
    hours, minutes = divmod(round(span.total_seconds() / 60), 60)
    if hours and minutes:
        return f"{hours} h {minutes} min"
    return f"{hours} h" if hours else f"{minutes} min"


def render_sla_block(clocks: SlaClocks, site_tz: str, language: str) -> list[str]:
    """Render a ticket's SLA clocks (from :class:`agent.sla.SlaClocks`) as lines of text.

    Every instant is shown in UTC and in the site's time zone, like the rest of the ticket;
    the delivery day is a site-local date with its weekday.

    Raises:
        ValueError: unknown language.
    """
    _lang(language)
    t = SLA_WORDS[language]
    lines = [
        t["title"].format(window=t[f"window_{clocks.window}"]) + ":",
        f"  {t['reaction']}: {format_when(clocks.reaction_due, site_tz)}",
        f"  {t['communication']}: {format_when(clocks.next_communication_due, site_tz)}, "
        + t["every"].format(every=_every(clocks.communication_every)),
    ]
    if clocks.delivery_date is not None:
        day = clocks.delivery_date
        confirmed = format_when(clocks.confirmed_at, site_tz) if clocks.confirmed_at else "—"
        when = t["delivery_date"].format(
            day=day.isoformat(), weekday=WEEKDAY_NAMES[language][day.weekday()], when=confirmed
        )
        lines.append(f"  {t['delivery']}: {when}")
    elif clocks.nbd_delivery:
        lines.append(f"  {t['delivery']}: {t['delivery_pending']}")
    if clocks.return_due is not None:
        swapped = ""
        if clocks.swapped_at is not None:
            swapped = ", " + t["swapped"].format(when=format_when(clocks.swapped_at, site_tz))
        lines.append(f"  {t['return']}: {format_when(clocks.return_due, site_tz)}{swapped}")
    if clocks.return_reminder_at is not None:
        lines.append(f"  {t['reminder']}: {format_when(clocks.return_reminder_at, site_tz)}")
    return lines
