"""The status page: one server-rendered HTML page, Polish or English, with no external assets.

Devices grouped by site (state, open incident priority, last seen, latency, firmware, serial,
contract end), open tickets with their SLA clocks counting down, the outbox and held helpdesks,
the agent's own health and its latest events. Everything is in the page itself: the CSS and a
few lines of JavaScript are inline (room PCs may have no internet), the page reloads itself
every ``refresh_s`` seconds, and it reads well on a phone (the tables become cards).

The countdown is rendered by the server (remaining time at render) and kept running by the
inline script, which measures time from the server's clock given in ``data-now`` (so a wrong
clock in the browser does not skew it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from html import escape
from zoneinfo import ZoneInfo

from agent.views import AgentHealth, DeviceView, FleetView, OutboxView, TicketView

__all__ = ["LANGUAGES", "WORDS", "format_remaining", "pick_language", "render_status_page"]

LANGUAGES = ("pl", "en")
CONTRACT_WARN_DAYS = 60

WORDS: dict[str, dict[str, str]] = {
    "en": {
        "title": "HEZO+ agent — status",
        "lang_other": "Polski",
        "devices": "Devices",
        "site": "Site",
        "device": "Device",
        "state": "State",
        "priority": "Priority",
        "last_seen": "Last seen",
        "latency": "Latency",
        "firmware": "Model / firmware",
        "serial": "Serial",
        "contract_end": "Contract end",
        "tickets": "Open tickets",
        "no_tickets": "No open tickets.",
        "ticket": "Ticket",
        "problem": "Problem",
        "opened": "Opened",
        "reaction": "Reaction due in",
        "communication": "Next update due in",
        "helpdesk": "Helpdesk",
        "not_delivered": "waiting in the outbox",
        "outbox": "Outbox",
        "pending": "waiting",
        "oldest": "oldest",
        "rejected": "rejected",
        "held": "held helpdesk",
        "none_held": "no helpdesk held",
        "agent": "Agent",
        "health_ok": "OK",
        "health_degraded": "needs attention",
        "version": "version",
        "started": "running since",
        "last_poll": "last poll",
        "syslog": "syslog",
        "forwarding": "forwarding",
        "connected": "connected",
        "disconnected": "not connected",
        "received": "received",
        "dropped": "dropped",
        "events": "Latest events",
        "no_events": "Nothing happened yet.",
        "ago": "{} ago",
        "never": "never",
        "overdue": "overdue",
        "quiet": "quiet",
        "down_count": "down",
        "of": "of",
        "refresh": "This page reloads every {} s. Times are in the site's time zone.",
        "server_time": "agent time",
        "no_contract": "no contract",
        "not_running": "not running",
        "off": "off",
        "state_up": "up",
        "state_down": "down",
        "state_suspect": "failing",
        "state_recovering": "recovering",
        "state_unknown": "not polled yet",
        "prio_critical": "critical (P1)",
        "prio_medium": "medium (P2)",
        "prio_low": "low (P3)",
        "problem_no_recent_polls": "no recent polls",
        "problem_helpdesk_held": "helpdesk credentials rejected",
        "problem_tickets_rejected": "ticket changes rejected",
        "problem_syslog_receiver_down": "syslog receiver down",
        "problem_forwarding_backlog": "central syslog unreachable",
    },
    "pl": {
        "title": "Agent HEZO+ — stan",
        "lang_other": "English",
        "devices": "Urządzenia",
        "site": "Lokalizacja",
        "device": "Urządzenie",
        "state": "Stan",
        "priority": "Priorytet",
        "last_seen": "Ostatnio widziane",
        "latency": "Opóźnienie",
        "firmware": "Model / firmware",
        "serial": "Numer seryjny",
        "contract_end": "Koniec umowy",
        "tickets": "Otwarte zgłoszenia",
        "no_tickets": "Brak otwartych zgłoszeń.",
        "ticket": "Zgłoszenie",
        "problem": "Problem",
        "opened": "Otwarte",
        "reaction": "Reakcja za",
        "communication": "Następny kontakt za",
        "helpdesk": "Helpdesk",
        "not_delivered": "czeka w kolejce",
        "outbox": "Kolejka zgłoszeń",
        "pending": "czeka",
        "oldest": "najstarsze",
        "rejected": "odrzucone",
        "held": "wstrzymany helpdesk",
        "none_held": "żaden helpdesk nie jest wstrzymany",
        "agent": "Agent",
        "health_ok": "OK",
        "health_degraded": "wymaga uwagi",
        "version": "wersja",
        "started": "działa od",
        "last_poll": "ostatnie odpytanie",
        "syslog": "syslog",
        "forwarding": "przekazywanie logów",
        "connected": "połączony",
        "disconnected": "brak połączenia",
        "received": "odebrane",
        "dropped": "odrzucone",
        "events": "Ostatnie zdarzenia",
        "no_events": "Jeszcze nic się nie wydarzyło.",
        "ago": "{} temu",
        "never": "nigdy",
        "overdue": "po terminie",
        "quiet": "cisza",
        "down_count": "niedziałające",
        "of": "z",
        "refresh": "Strona odświeża się co {} s. Czas lokalny lokalizacji.",
        "server_time": "czas agenta",
        "no_contract": "brak umowy",
        "not_running": "nie działa",
        "off": "wyłączone",
        "state_up": "działa",
        "state_down": "nie działa",
        "state_suspect": "błędy",
        "state_recovering": "wraca",
        "state_unknown": "jeszcze nie odpytane",
        "prio_critical": "krytyczny (P1)",
        "prio_medium": "średni (P2)",
        "prio_low": "niski (P3)",
        "problem_no_recent_polls": "brak świeżych odpytań",
        "problem_helpdesk_held": "helpdesk odrzucił dane logowania",
        "problem_tickets_rejected": "zmiany zgłoszeń odrzucone",
        "problem_syslog_receiver_down": "odbiornik syslog nie działa",
        "problem_forwarding_backlog": "centralny syslog nieosiągalny",
    },
}

_CSS = """
:root{--ok:#2e7d32;--bad:#c62828;--warn:#ef6c00;--idle:#757575;--bg:#f6f7f9;--line:#dde1e6}
*{box-sizing:border-box}
body{margin:0;font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
 background:var(--bg);color:#1b1f24}
header{background:#1b2a3a;color:#fff;padding:12px 16px;display:flex;flex-wrap:wrap;gap:8px 16px;
 align-items:center}
header h1{font-size:18px;margin:0;flex:1 1 auto}
header a{color:#cfe3ff}
header .muted{color:#c2ccd6}
main{padding:12px 16px;max-width:1280px;margin:0 auto}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px;margin:0 0 14px}
h2{font-size:16px;margin:0 0 8px}
h3{font-size:15px;margin:12px 0 6px}
table{width:100%;border-collapse:collapse}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:13px;color:#4a5560;font-weight:600}
.badge{display:inline-block;padding:2px 8px;border-radius:10px;color:#fff;font-size:13px;white-space:nowrap}
.state-up .badge.state{background:var(--ok)}
.state-down .badge.state{background:var(--bad)}
.state-suspect .badge.state,.state-recovering .badge.state{background:var(--warn)}
.state-unknown .badge.state{background:var(--idle)}
tr.state-down{background:#fdecea}
.prio-critical{background:var(--bad)}.prio-medium{background:var(--warn)}.prio-low{background:#546e7a}
.health-ok{background:var(--ok)}.health-degraded{background:var(--bad)}
.overdue{color:var(--bad);font-weight:600}
.expiring{color:var(--warn);font-weight:600}.expired{color:var(--bad);font-weight:600}
.muted{color:#6b7580}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{flex:1 1 180px;border:1px solid var(--line);border-radius:8px;padding:8px 10px;background:#fff}
.card b{display:block;font-size:20px}
ul.events{list-style:none;margin:0;padding:0}
ul.events li{padding:4px 0;border-bottom:1px solid var(--line)}
code{font-size:13px}
@media (max-width:720px){
 table,thead,tbody,tr,th,td{display:block}
 thead{display:none}
 tr{border:1px solid var(--line);border-radius:8px;margin:0 0 10px;padding:4px 0;background:#fff}
 tr.state-down{background:#fdecea}
 td{border:0;padding:3px 10px}
 td[data-label]::before{content:attr(data-label) ": ";color:#4a5560;font-size:13px}
}
"""

_SCRIPT = """
(function(){
 var body=document.body,offset=Date.parse(body.getAttribute('data-now'))-Date.now();
 var overdue=body.getAttribute('data-overdue');
 function two(n){return (n<10?'0':'')+n;}
 function fmt(ms){var s=Math.floor(Math.abs(ms)/1000),d=Math.floor(s/86400),h=Math.floor(s%86400/3600),
  m=Math.floor(s%3600/60),t=two(h)+':'+two(m)+':'+two(s%60);return d>0?d+' d '+t:t;}
 function tick(){var now=Date.now()+offset,els=document.querySelectorAll('[data-due]');
  for(var i=0;i<els.length;i++){var el=els[i],left=Date.parse(el.getAttribute('data-due'))-now;
   el.textContent=left>=0?fmt(left):overdue+' '+fmt(left);
   if(left<0){el.classList.add('overdue');}}}
 tick();setInterval(tick,1000);
})();
"""


def pick_language(requested: str | None, default: str) -> str:
    """``requested`` (``?lang=``) when it is pl or en, else ``default`` (``agent.language``)."""
    if requested in LANGUAGES:
        return str(requested)
    return default if default in LANGUAGES else "en"


def format_remaining(delta: timedelta, overdue_word: str) -> str:
    """``1 d 02:03:04`` or ``00:59:12``; past due: ``<overdue_word> 00:05:00``."""
    seconds = int(abs(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    if days:
        text = f"{days} d {text}"
    return text if delta.total_seconds() >= 0 else f"{overdue_word} {text}"


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def _local(at: datetime, timezone: str) -> str:
    return at.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M")


class _Page:
    """Renders one page in one language (a small helper keeping the words and the clock)."""

    def __init__(self, view: FleetView, language: str, refresh_s: int, self_path: str) -> None:
        self.view = view
        self.lang = language
        self.w = WORDS[language]
        self.refresh_s = refresh_s
        self.self_path = self_path
        config = view.agent.config
        self.zones = {site.name: site.timezone for site in config.sites}
        self.default_zone = config.sites[0].timezone if config.sites else "UTC"

    def zone(self, site: str) -> str:
        return self.zones.get(site, self.default_zone)

    def render(self) -> str:
        devices = self.view.devices()
        tickets = self.view.tickets("open")
        outbox = self.view.outbox()
        health = self.view.health(devices, outbox)
        other = "en" if self.lang == "pl" else "pl"
        w = self.w
        parts = [
            "<!DOCTYPE html>",
            f'<html lang="{self.lang}"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<link rel="icon" href="data:,">',  # no favicon request
            f'<meta http-equiv="refresh" content="{self.refresh_s}">',
            f"<title>{escape(w['title'])}</title><style>{_CSS}</style></head>",
            f'<body data-now="{escape(health.now.isoformat())}" data-overdue="{escape(w["overdue"])}">',
            f"<header><h1>{escape(w['title'])}</h1>",
            f'<span id="agent-health" class="badge health-{health.status}">'
            f"{escape(w['health_' + health.status])}</span>",
            f'<span class="muted">{escape(w["server_time"])}: {_local(health.now, self.default_zone)}</span>',
            f'<a id="lang-switch" href="{escape(self.self_path)}?lang={other}">{escape(w["lang_other"])}</a>',
            "</header><main>",
            self._summary(devices, tickets, outbox, health),
            self._tickets(tickets, health.now),
            *self._sites(devices, health.now),
            self._agent(health, outbox),
            self._events(),
            f'<p class="muted">{escape(w["refresh"].format(self.refresh_s))} '
            '<a href="/api/v1/openapi.json">API</a> · <a href="/metrics">/metrics</a></p>',
            f"</main><script>{_SCRIPT}</script></body></html>",
        ]
        return "\n".join(parts)

    # --- sections ------------------------------------------------------------------------------

    def _summary(
        self,
        devices: Sequence[DeviceView],
        tickets: Sequence[TicketView],
        outbox: OutboxView,
        health: AgentHealth,
    ) -> str:
        w = self.w
        oldest = (
            f" ({w['oldest']} {_age(health.now - outbox.oldest_pending_at)})"
            if outbox.oldest_pending_at
            else ""
        )
        cards = [
            ("summary-devices", w["devices"], f"{len(devices)}", f"{health.devices_down} {w['down_count']}"),
            ("summary-tickets", w["tickets"], f"{len(tickets)}", ""),
            ("summary-outbox", w["outbox"], f"{outbox.pending}", f"{w['pending']}{oldest}"),
        ]
        body = "".join(
            f'<div class="card" id="{ident}">{escape(label)}<b>{escape(value)}</b>'
            f'<span class="muted">{escape(note)}</span></div>'
            for ident, label, value, note in cards
        )
        return f'<section class="cards">{body}</section>'

    def _sites(self, devices: Sequence[DeviceView], now: datetime) -> Iterable[str]:
        w = self.w
        sites = [s.name for s in self.view.agent.config.sites]
        heads = ("device", "state", "priority", "last_seen", "latency", "firmware", "serial", "contract_end")
        header = "".join(f"<th>{escape(w[h])}</th>" for h in heads)
        yield f"<section><h2>{escape(w['devices'])}</h2>"
        for site in sites:
            rows = [d for d in devices if d.site == site]
            if not rows:
                continue
            down = sum(1 for d in rows if d.health == "down")
            yield (
                f'<h3 id="site-{escape(site)}">{escape(w["site"])}: {escape(site)}'
                f' <span class="muted">({len(rows) - down} {escape(w["of"])} {len(rows)} ✓)</span></h3>'
            )
            yield f"<table><thead><tr>{header}</tr></thead><tbody>"
            yield from (self._device_row(d, now) for d in rows)
            yield "</tbody></table>"
        yield "</section>"

    def _device_row(self, d: DeviceView, now: datetime) -> str:
        w = self.w
        state_word = w.get(f"state_{d.health}", d.health)
        quiet = f' <span class="muted">({escape(w["quiet"])}: {escape(d.quiet)})</span>' if d.quiet else ""
        prio = (
            f'<span class="badge prio-{escape(d.priority)}">'
            f'{escape(w.get("prio_" + d.priority, d.priority))}</span>'
            if d.priority
            else "—"
        )
        if d.last_seen is not None:
            seen = (
                f'<span title="{_local(d.last_seen, self.zone(d.site))}">'
                f"{escape(w['ago'].format(_age(now - d.last_seen)))}</span>"
            )
        else:
            seen = f'<span class="muted">{escape(w["never"])}</span>'
        latency = f"{d.latency_ms:.0f} ms" if d.latency_ms is not None else "—"
        firmware = escape(d.model) + (f" / {escape(d.firmware)}" if d.firmware else "")
        cells = [
            ("device", f'<b>{escape(d.id)}</b><br><span class="muted">{escape(d.room)}</span>'),
            ("state", f'<span class="badge state">{escape(state_word)}</span>{quiet}'),
            ("priority", prio),
            ("last_seen", seen),
            ("latency", latency),
            ("firmware", firmware),
            ("serial", escape(d.serial) if d.serial else "—"),
            ("contract_end", self._contract(d.contract_end, d.contract, now.date())),
        ]
        tds = "".join(f'<td data-label="{escape(w[k])}">{v}</td>' for k, v in cells)
        state = escape(d.health)
        return f'<tr id="device-{escape(d.id)}" class="state-{state}" data-state="{state}">{tds}</tr>'

    def _contract(self, end: date | None, number: str | None, today: date) -> str:
        if end is None:
            return f'<span class="muted">{escape(self.w["no_contract"])}</span>'
        css = "expired" if end < today else ("expiring" if (end - today).days <= CONTRACT_WARN_DAYS else "")
        return f'<span class="{css}" title="{escape(number or "")}">{end.isoformat()}</span>'

    def _tickets(self, tickets: Sequence[TicketView], now: datetime) -> str:
        w = self.w
        if not tickets:
            return (
                f'<section id="tickets"><h2>{escape(w["tickets"])}</h2>'
                f'<p class="muted">{escape(w["no_tickets"])}</p></section>'
            )
        heads = ("priority", "ticket", "device", "problem", "opened", "reaction", "communication", "helpdesk")
        header = "".join(f"<th>{escape(w[h])}</th>" for h in heads)
        rows = []
        for t in tickets:
            zone = self.zone(t.site)
            where = (
                f"{escape(t.backend or '')} {escape(t.ref or '')}"
                if t.delivered
                else f'<span class="muted">{escape(w["not_delivered"])}</span>'
            )
            if t.url:
                where = f'<a href="{escape(t.url)}" rel="noreferrer">{where}</a>'
            cells = [
                ("priority", f'<span class="badge prio-{escape(t.priority)}">'
                             f'{escape(w.get("prio_" + t.priority, t.priority))}</span>'),
                ("ticket", f"<code>{escape(t.ticket_key)}</code>"),
                ("device", escape(t.device_id) + (f'<br><span class="muted">{escape(t.room)}</span>'
                                                  if t.room else "")),
                ("problem", escape(t.problem)),
                ("opened", _local(t.opened_at, zone)),
                ("reaction", self._countdown(t.sla.reaction_due if t.sla else None, now, zone)),
                ("communication",
                 self._countdown(t.sla.next_communication_due if t.sla else None, now, zone)),
                ("helpdesk", where),
            ]  # fmt: skip
            tds = "".join(f'<td data-label="{escape(w[k])}">{v}</td>' for k, v in cells)
            rows.append(
                f'<tr class="ticket" data-device="{escape(t.device_id)}"'
                f' data-priority="{escape(t.priority)}">{tds}</tr>'
            )
        return (
            f'<section id="tickets"><h2>{escape(w["tickets"])}</h2>'
            f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
        )

    def _countdown(self, due: datetime | None, now: datetime, zone: str) -> str:
        if due is None:
            return "—"
        left = due - now
        css = "countdown overdue" if left.total_seconds() < 0 else "countdown"
        return (
            f'<span class="{css}" data-due="{escape(due.isoformat())}">'
            f'{escape(format_remaining(left, self.w["overdue"]))}</span>'
            f'<br><span class="muted">{_local(due, zone)}</span>'
        )

    def _agent(self, health: AgentHealth, outbox: OutboxView) -> str:
        w = self.w
        problems = ", ".join(w.get(f"problem_{p}", p) for p in health.problems)
        items = [
            f'<span class="badge health-{health.status}">{escape(w["health_" + health.status])}</span>'
            + (f" {escape(problems)}" if problems else ""),
            f"{escape(w['version'])} {escape(health.version)}",
        ]
        if health.started_at is not None:
            items.append(f"{escape(w['started'])} {_local(health.started_at, self.default_zone)}")
        last_poll = _local(health.last_poll_at, self.default_zone) if health.last_poll_at else w["never"]
        items.append(f"{escape(w['last_poll'])}: {escape(last_poll)}")
        if health.syslog_running is None:
            items.append(f"{escape(w['syslog'])}: {escape(w['off'])}")
        else:
            state = "" if health.syslog_running else f" ({w['not_running']})"
            items.append(
                f"{escape(w['syslog'])}: {health.syslog_received} {escape(w['received'])}, "
                f"{health.syslog_dropped} {escape(w['dropped'])}{escape(state)}"
            )
        if health.forwarding_connected is None:
            items.append(f"{escape(w['forwarding'])}: {escape(w['off'])}")
        else:
            link = w["connected"] if health.forwarding_connected else w["disconnected"]
            items.append(
                f"{escape(w['forwarding'])}: {escape(link)}, "
                f"{health.forwarding_backlog} {escape(w['pending'])}"
            )
        oldest = (
            f", {w['oldest']} {_age(health.now - outbox.oldest_pending_at)}"
            if outbox.oldest_pending_at
            else ""
        )
        held = (
            "; ".join(f"{w['held']}: {name} ({reason or ''})" for name, reason, _since in outbox.held)
            or w["none_held"]
        )
        items.append(
            f'<span id="outbox">{escape(w["outbox"])}: '
            f'{outbox.pending} {escape(w["pending"])}{escape(oldest)}, '
            f"{outbox.rejected} {escape(w['rejected'])}; {escape(held)}</span>"
        )
        body = "".join(f"<li>{item}</li>" for item in items)
        return f'<section id="agent"><h2>{escape(w["agent"])}</h2><ul class="events">{body}</ul></section>'

    def _events(self) -> str:
        w = self.w
        events = list(self.view.agent.recent_events)[-10:][::-1]
        if not events:
            body = f'<p class="muted">{escape(w["no_events"])}</p>'
        else:
            body = (
                '<ul class="events">'
                + "".join(
                    f'<li><span class="muted">{_local(e.at, self.default_zone)}</span> '
                    f"<b>{escape(e.device_id)}</b> {escape(e.text)}</li>"
                    for e in events
                )
                + "</ul>"
            )
        return f'<section id="events"><h2>{escape(w["events"])}</h2>{body}</section>'


def render_status_page(view: FleetView, *, language: str, refresh_s: int = 30, self_path: str = "/") -> str:
    """Return the whole status page as HTML in ``language`` (``pl`` or ``en``).

    Raises:
        KeyError: ``language`` is neither pl nor en.
    """
    return _Page(view, language, refresh_s, self_path).render()
