"""The words of a ticket, in Polish and English: priority definitions from the HEZO+ seed,
error reasons and the labels of every line. Kept apart from the rendering logic."""

from __future__ import annotations

from typing import Any

from uploader.models import Priority

PRIORITY_NAMES = {
    "en": {Priority.CRITICAL: "critical", Priority.MEDIUM: "medium", Priority.LOW: "low"},
    "pl": {Priority.CRITICAL: "krytyczny", Priority.MEDIUM: "średni", Priority.LOW: "niski"},
}

#: The seed's definition of each priority: (situation, service window and reaction).
PRIORITY_DEFINITIONS = {
    "en": {
        Priority.CRITICAL: (
            "No access to the device — the device does not work.",
            "Service window 24x7 — guaranteed reaction within 1 h, then communication with the user with a"
            " reaction time of up to 1 h. If a device failure is confirmed: delivery to the failure site on"
            " the next business day (NBD), after confirming with the user.",
        ),
        Priority.MEDIUM: (
            "The device works unstably; a problem with how the solution works is suspected; it can still"
            " operate; no breach of the security level was found.",
            "Service window 8x5 — guaranteed reaction within 1 h, then communication with the user with a"
            " reaction time of up to 2 h. If a device failure is confirmed: delivery to the failure site on"
            " the next business day (NBD), after confirming with the user.",
        ),
        Priority.LOW: (
            "The ticket is not about an operational problem; it concerns configuration changes, explaining"
            " how something works, or technical consultation.",
            "Service window 8x5 — guaranteed reaction within 4 h, then communication with the user with a"
            " reaction time of up to 4 h.",
        ),
    },
    "pl": {
        Priority.CRITICAL: (
            "Brak dostępu do urządzenia - urządzenie nie działa.",
            "Wsparcie 24x7 - gwarantowany czas reakcji: 1h, następnie komunikacja z użytkownikiem, z czasem"
            " reakcji do 1h. W przypadku stwierdzenia awarii urządzenia - dostawa w miejsce awarii"
            " w następnym dniu roboczym, po potwierdzeniu z użytkownikiem.",
        ),
        Priority.MEDIUM: (
            "Urządzenie działa niestabilnie, podejrzenie problemu w funkcjonowaniu rozwiązania, zachowana"
            " zdolność działania, nie stwierdzono naruszenia poziomu bezpieczeństwa.",
            "Dostęp 8x5 - gwarantowany czas reakcji: 1h, następnie komunikacja z użytkownikiem, z czasem"
            " reakcji do 2h. W przypadku stwierdzenia awarii urządzenia - dostawa w miejsce awarii"
            " w następnym dniu roboczym, po potwierdzeniu z użytkownikiem.",
        ),
        Priority.LOW: (
            "Zgłoszenie nie jest związane z wystąpieniem problemu eksploatacyjnego, a dotyczy zmian w"
            " konfiguracji, wyjaśnienia działania lub konsultacji technicznych.",
            "Dostęp 8x5 - gwarantowany czas reakcji: 4h, następnie komunikacja z użytkownikiem z czasem"
            " reakcji do 4h.",
        ),
    },
}

REASONS = {
    "en": {
        "ok": "answered",
        "unreachable": "no connection",
        "timeout": "no answer in time",
        "auth_failed": "login refused",
        "identity_changed": "identity changed",
        "unexpected_response": "unexpected answer",
        "internal_error": "agent error",
    },
    "pl": {
        "ok": "odpowiada",
        "unreachable": "brak połączenia",
        "timeout": "brak odpowiedzi w czasie",
        "auth_failed": "logowanie odrzucone",
        "identity_changed": "zmiana tożsamości",
        "unexpected_response": "nieoczekiwana odpowiedź",
        "internal_error": "błąd agenta",
    },
}

LABELS = {
    "en": {
        "offline": "offline",
        "site_network_down": "network outage",
        "n_devices": "{n} devices unreachable",
        "site_network_observed": "at {when} all {n} devices and every canary of the site stopped answering"
        " together: the site's network is down, not each device.",
        "site_network_hint": "One ticket stands for the whole site; no device tickets are opened while the"
        " site's network is down.",
        "canaries": "Canaries (gateway, switch, DNS)",
        "problem": "Problem",
        "first_seen": "First seen",
        "raised": "Ticket raised",
        "unknown": "unknown",
        "never": "never (the device has not answered yet)",
        "priority": "Priority",
        "device": "Device",
        "id": "Device ID",
        "room": "Room",
        "model": "Model",
        "firmware": "Firmware",
        "serial": "Serial number",
        "mac": "MAC",
        "host": "Address (host)",
        "contract": "HEZO+ contract",
        "site": "Site",
        "address": "Delivery address",
        "contact": "Contact",
        "observed": "What was observed",
        "last_seen": "Last seen working",
        "first_failure": "First failed poll",
        "went_down": "Declared offline",
        "after_polls": "after {n} consecutive failed polls",
        "reason": "Last error",
        "timeline": "Timeline of observations (oldest first)",
        "tests": "Service tests",
        "failed": "Failed checks",
        "none_failed": "none",
        "no_tests": "no service test results recorded",
        "col_utc": "UTC",
        "col_local": "local",
        "col_result": "result",
        "col_reason": "reason",
        "col_duration": "duration",
        "col_detail": "detail",
        "col_check": "check",
        "col_latency": "latency_ms",
        "pass": "OK",
        "fail": "FAIL",
        "attachments": "Attachments",
        "log_attached": "The device's last collected log is attached: {name}.",
        "no_log": "No log could be collected from this device before the failure.",
        "valid": "{number}, valid {start} – {end} (covered on {today})",
        "expired": "{number}, valid {start} – {end} — NOT COVERED on {today} ({why}) — still monitored",
        "ended": "the contract has ended",
        "not_started": "the contract has not started yet",
        "not_covered": "NOT COVERED by a HEZO+ contract — still monitored",
        "serial_unknown": " (serial number not known yet, so no contract could be matched)",
        "verify": "For verification: the service tests, the attached log, the serial number and the"
        " contract number are all given above.",
        "footer": "Opened automatically by hezo-agent at {now}.",
        "recovered": 'Device {device} ({model}, room "{room}", site {site}) has recovered: it answers again'
        " since {when}. Downtime: {downtime}.",
        "resolved": "Resolved automatically by hezo-agent at {when}: device {device} is back online"
        " (downtime {downtime}). If the problem comes back, a new ticket is opened.",
    },
    "pl": {
        "offline": "niedostępne",
        "site_network_down": "awaria sieci",
        "n_devices": "{n} urządzeń niedostępnych",
        "site_network_observed": "{when}: wszystkie urządzenia ({n}) i wszystkie punkty kontrolne sieci"
        " przestały odpowiadać jednocześnie: nie działa sieć lokalizacji, a nie każde urządzenie osobno.",
        "site_network_hint": "Jedno zgłoszenie dotyczy całej lokalizacji; nie są otwierane zgłoszenia"
        " urządzeń, dopóki sieć lokalizacji nie działa.",
        "canaries": "Punkty kontrolne (brama, przełącznik, DNS)",
        "problem": "Problem",
        "first_seen": "Pierwsza obserwacja",
        "raised": "Zgłoszenie otwarte",
        "unknown": "nieznany",
        "never": "nigdy (urządzenie jeszcze nie odpowiedziało)",
        "priority": "Priorytet",
        "device": "Urządzenie",
        "id": "ID urządzenia",
        "room": "Sala",
        "model": "Model",
        "firmware": "Firmware",
        "serial": "Numer seryjny",
        "mac": "MAC",
        "host": "Adres (host)",
        "contract": "Umowa HEZO+",
        "site": "Lokalizacja",
        "address": "Adres dostawy",
        "contact": "Kontakt",
        "observed": "Co zaobserwowano",
        "last_seen": "Ostatnio działało",
        "first_failure": "Pierwsza nieudana próba",
        "went_down": "Uznane za niedostępne",
        "after_polls": "po {n} kolejnych nieudanych próbach",
        "reason": "Ostatni błąd",
        "timeline": "Przebieg obserwacji (od najstarszej)",
        "tests": "Testy serwisowe",
        "failed": "Nieudane testy",
        "none_failed": "brak",
        "no_tests": "brak zapisanych wyników testów serwisowych",
        "col_utc": "UTC",
        "col_local": "czas lokalny",
        "col_result": "wynik",
        "col_reason": "przyczyna",
        "col_duration": "czas",
        "col_detail": "szczegóły",
        "col_check": "test",
        "col_latency": "latency_ms",
        "pass": "OK",
        "fail": "BŁĄD",
        "attachments": "Załączniki",
        "log_attached": "W załączniku ostatni zebrany log urządzenia: {name}.",
        "no_log": "Przed awarią nie udało się zebrać logu z tego urządzenia.",
        "valid": "{number}, ważna {start} – {end} (obowiązuje w dniu {today})",
        "expired": "{number}, ważna {start} – {end} — BRAK OBJĘCIA UMOWĄ w dniu {today} ({why})"
        " — urządzenie nadal monitorowane",
        "ended": "umowa wygasła",
        "not_started": "umowa jeszcze nie obowiązuje",
        "not_covered": "BRAK OBJĘCIA umową HEZO+ — urządzenie nadal monitorowane",
        "serial_unknown": " (numer seryjny jeszcze nieznany, nie można dopasować umowy)",
        "verify": "Do weryfikacji: testy serwisowe, log w załączniku, numer seryjny i numer umowy"
        " podano wyżej.",
        "footer": "Zgłoszenie otwarte automatycznie przez hezo-agent: {now}.",
        "recovered": 'Urządzenie {device} ({model}, sala "{room}", lokalizacja {site}) znowu działa:'
        " odpowiada od {when}. Czas niedostępności: {downtime}.",
        "resolved": "Rozwiązane automatycznie przez hezo-agent: {when}. Urządzenie {device} znowu działa"
        " (niedostępne przez {downtime}). Jeśli problem wróci, zostanie otwarte nowe zgłoszenie.",
    },
}


#: Comments and headlines of the incident life cycle beyond "offline".
INCIDENT_WORDS: dict[str, dict[str, Any]] = {
    "en": {
        "headline": {
            "flapping": "unstable (flapping)",
            "peripheral": "peripheral disconnected",
            "app_restarts": "application restarting repeatedly",
            "log_errors": "error spike in its log",
            "slow": "responding slowly",
            "identity_changed": "identity changed",
            "channel_down": "one channel down",
            "mtr_heartbeat": "Teams Rooms heartbeat error",
            "boot_loop": "boot loop",
            "firmware": "firmware out of date",
            "firmware_update_stuck": "firmware update not finishing",
            "config_drift": "configuration drift",
            "contract": "contract ending",
            "clock_skew": "clock skew",
            "cert_expiry": "certificate expiring",
        },
        "problem_cleared": "The problem {problem} is no longer observed since {when} (open for {duration}).",
        "priority_changed": "Priority changed from {old} to {new}: {why}.",
        "reopened": "The problem {problem} is back at {when} ({why}); it had been resolved at {since}."
        " Reopening this ticket.",
        "replaced": "Replacement detected at {when}: serial {old} was replaced by {new} in this place."
        " The failed unit {old} must be sent back within {days} days, by {due}.",
        "return_reminder": "Reminder: the failed unit {old} must be sent back by {due} (HEZO+: 7 days,"
        " prepaid waybill in this ticket).",
        "site_recovered": "The network of site {site} answers again since {when} (outage {duration}).",
    },
    "pl": {
        "headline": {
            "flapping": "działa niestabilnie (flapping)",
            "peripheral": "odłączone urządzenie peryferyjne",
            "app_restarts": "powtarzające się restarty aplikacji",
            "log_errors": "skok liczby błędów w logu",
            "slow": "wolne odpowiedzi",
            "identity_changed": "zmiana tożsamości",
            "channel_down": "jeden kanał nie działa",
            "mtr_heartbeat": "błąd heartbeat Teams Rooms",
            "boot_loop": "pętla restartów",
            "firmware": "nieaktualny firmware",
            "firmware_update_stuck": "aktualizacja firmware nie kończy się",
            "config_drift": "zmiana konfiguracji",
            "contract": "kończąca się umowa",
            "clock_skew": "rozbieżność zegara",
            "cert_expiry": "wygasający certyfikat",
        },
        "problem_cleared": "Problem {problem} nie występuje od {when} (otwarty przez {duration}).",
        "priority_changed": "Zmiana priorytetu z {old} na {new}: {why}.",
        "reopened": "Problem {problem} wrócił: {when} ({why}); został rozwiązany {since}."
        " Ponowne otwarcie zgłoszenia.",
        "replaced": "Wykryto wymianę urządzenia: {when}: numer seryjny {old} zastąpiony przez {new}."
        " Uszkodzone urządzenie {old} należy odesłać w ciągu {days} dni, do {due}.",
        "return_reminder": "Przypomnienie: uszkodzone urządzenie {old} należy odesłać do {due} (HEZO+:"
        " 7 dni, opłacony list przewozowy w tym zgłoszeniu).",
        "site_recovered": "Sieć lokalizacji {site} znowu odpowiada od {when} (awaria przez {duration}).",
    },
}


#: The SLA block of a ticket (see agent.sla and ticket_text.render_sla_block).
SLA_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "title": "SLA clocks (service window {window})",
        "window_24x7": "24x7 — every hour of every day",
        "window_8x5": "8x5 — business hours on business days, site time, public holidays excluded",
        "reaction": "Reaction due",
        "communication": "Next communication due",
        "every": "then every {every}",
        "delivery": "Next-business-day delivery",
        "delivery_date": "{day} ({weekday}), failure confirmed {when}",
        "delivery_pending": "set once the failure is confirmed (next business day after confirmation)",
        "delivery_if_now": "if the failure is confirmed now: delivery on {day} ({weekday})",
        "return": "Return of the failed unit due",
        "swapped": "swapped {when}",
        "reminder": "Return reminder",
    },
    "pl": {
        "title": "Terminy SLA (okno serwisowe {window})",
        "window_24x7": "24x7 — całą dobę, każdego dnia",
        "window_8x5": "8x5 — godziny pracy w dni robocze, czas lokalny, bez świąt państwowych",
        "reaction": "Reakcja do",
        "communication": "Następna komunikacja do",
        "every": "potem co {every}",
        "delivery": "Dostawa w następnym dniu roboczym",
        "delivery_date": "{day} ({weekday}), awaria potwierdzona {when}",
        "delivery_pending": "po potwierdzeniu awarii (następny dzień roboczy po potwierdzeniu)",
        "delivery_if_now": "przy potwierdzeniu awarii teraz: dostawa {day} ({weekday})",
        "return": "Zwrot uszkodzonego urządzenia do",
        "swapped": "wymiana {when}",
        "reminder": "Przypomnienie o zwrocie",
    },
}

#: Weekday names, Monday first (``date.weekday()`` order).
WEEKDAY_NAMES = {
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "pl": ("poniedziałek", "wtorek", "środa", "czwartek", "piątek", "sobota", "niedziela"),
}
