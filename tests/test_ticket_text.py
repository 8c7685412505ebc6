"""Ticket rendering: every field the HEZO+ verification needs, in Polish and English, no secrets."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from agent.store import OutcomeRecord
from agent.ticket_text import (
    SEED_FIELDS,
    DownContext,
    format_duration,
    format_local,
    render_down_ticket,
    render_recovery_comment,
    render_resolve_comment,
)
from collectors.models import CheckResult, DeviceFacts
from config.schema import AgentConfig
from uploader.models import Priority

PASSWORD = "S3cret-Pa55-xyz"
FACTS = DeviceFacts(model="A30", firmware="133.15.0.20", serial="803012345678", mac="00:15:65:12:34:56")
WINTER = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
SUMMER = datetime(2026, 7, 6, 9, 0, tzinfo=UTC)


def make_config(contract_end: str = "2027-12-31") -> AgentConfig:
    raw: dict[str, Any] = {
        "agent": {"language": "en"},
        "sites": [
            {
                "name": "warszawa-hq",
                "address": "ul. Prosta 20, 00-850 Warszawa",
                "contact": {
                    "name": "Anna Nowak",
                    "phone": "+48 600 100 200",
                    "email": "anna.nowak@example.com",
                },
                "timezone": "Europe/Warsaw",
            }
        ],
        "contracts": [
            {"number": "HZ-2025-0042", "start": "2025-01-01", "end": contract_end, "serials": [FACTS.serial]}
        ],
        "devices": [
            {
                "id": "a30-zarzad",
                "room": "Sala Zarząd",
                "site": "warszawa-hq",
                "model": "A30",
                "host": "127.0.0.1",
                "credentials": {"username": "admin", "password_env": "HEZO_TEST_A30_PASSWORD"},
            }
        ],
    }
    return AgentConfig.model_validate(raw)


def make_ctx(
    config: AgentConfig,
    at: datetime = WINTER,
    *,
    facts: DeviceFacts | None = FACTS,
    detail: str = "connection refused",
    attachment: str | None = "a30-zarzad-20260105.tar.gz",
) -> DownContext:
    device = config.devices[0]
    first = at - timedelta(seconds=20)
    timeline = [
        OutcomeRecord(device.id, first - timedelta(seconds=60), True, "ok", 0.21),
        OutcomeRecord(device.id, first, False, "unreachable", 1.0, detail),
        OutcomeRecord(device.id, first + timedelta(seconds=10), False, "timeout", 5.0, "no answer in 5 s"),
        OutcomeRecord(device.id, at, False, "unreachable", 1.0, detail),
    ]
    return DownContext(
        device=device,
        site=config.sites[0],
        contract=config.contract_for(facts.serial) if facts else None,
        facts=facts,
        last_seen=(first - timedelta(seconds=60)) if facts else None,
        went_down_at=at,
        first_failure_at=first,
        failures=3,
        reason="unreachable",
        now=at,
        timeline=timeline,
        checks=(
            CheckResult("https_api", False, 1000.0, "connection refused"),
            CheckResult("tcp_443", True, 0.8),
        ),
        attachment_name=attachment,
    )


@pytest.mark.parametrize("language", ["en", "pl"])
def test_every_required_field_is_present_and_in_the_body(language: str) -> None:
    config = make_config()
    ticket = render_down_ticket(make_ctx(config), language)
    assert ticket.priority is Priority.CRITICAL
    assert ticket.key == "warszawa-hq/a30-zarzad/offline"
    assert set(SEED_FIELDS) <= set(ticket.fields)
    f = ticket.fields
    assert (f["device"], f["model"], f["firmware"], f["serial"], f["mac"]) == (
        "a30-zarzad",
        "A30",
        "133.15.0.20",
        "803012345678",
        "00:15:65:12:34:56",
    )
    assert f["contract"] == "HZ-2025-0042" and f["contract_valid"] is True
    assert f["site"] == "warszawa-hq" and f["room"] == "Sala Zarząd"
    assert f["problem"] == "offline" and f["priority"] == "critical"
    assert f["last_seen"] == "2026-01-05T08:58:40+00:00"
    for value in (
        "a30-zarzad",
        "Sala Zarząd",
        "133.15.0.20",
        "803012345678",
        "00:15:65:12:34:56",
        "HZ-2025-0042",
        "2027-12-31",
        "ul. Prosta 20, 00-850 Warszawa",
        "Anna Nowak",
        "+48 600 100 200",
        "anna.nowak@example.com",
        "https_api",
        "tcp_443",
        "1000.0",
        "a30-zarzad-20260105.tar.gz",
        "24x7",
    ):
        assert value in ticket.body, value


def test_english_title_and_seed_definition() -> None:
    ticket = render_down_ticket(make_ctx(make_config()), "en")
    assert ticket.title == '[critical] A30 "Sala Zarząd" offline — SN 803012345678'
    assert "No access to the device — the device does not work." in ticket.body
    assert "reaction within 1 h" in ticket.body and "next business day" in ticket.body
    assert "last collected log is attached" in ticket.body


def test_polish_title_and_seed_definition() -> None:
    ticket = render_down_ticket(make_ctx(make_config()), "pl")
    assert ticket.title == '[krytyczny] A30 "Sala Zarząd" niedostępne — SN 803012345678'
    assert "Brak dostępu do urządzenia - urządzenie nie działa." in ticket.body
    assert "Wsparcie 24x7 - gwarantowany czas reakcji: 1h" in ticket.body
    assert "Numer seryjny: 803012345678" in ticket.body
    assert "Adres dostawy: ul. Prosta 20" in ticket.body
    assert "W załączniku ostatni zebrany log urządzenia" in ticket.body


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("en", "NOT COVERED by a HEZO+ contract — still monitored"),
        ("pl", "BRAK OBJĘCIA umową HEZO+ — urządzenie nadal monitorowane"),
    ],
)
def test_device_without_contract_says_so(language: str, expected: str) -> None:
    config = make_config()
    ctx = make_ctx(config)
    ticket = render_down_ticket(DownContext(**{**_as_dict(ctx), "contract": None}), language)
    assert expected in ticket.body
    assert ticket.fields["contract"] is None and ticket.fields["contract_valid"] is False


@pytest.mark.parametrize(
    ("language", "expected"),
    [("en", "NOT COVERED on 2026-01-05"), ("pl", "BRAK OBJĘCIA UMOWĄ w dniu 2026-01-05")],
)
def test_expired_contract_is_named_but_not_valid(language: str, expected: str) -> None:
    config = make_config(contract_end="2025-12-31")
    ticket = render_down_ticket(make_ctx(config), language)
    assert expected in ticket.body
    assert "HZ-2025-0042" in ticket.body
    assert ticket.fields["contract"] == "HZ-2025-0042" and ticket.fields["contract_valid"] is False


def test_contract_ending_today_in_warsaw_is_still_valid() -> None:
    config = make_config(contract_end="2026-01-05")
    # 22:30 UTC on Jan 5 is 23:30 in Warsaw (still covered); 23:30 UTC is already 00:30 on Jan 6.
    assert (
        render_down_ticket(make_ctx(config, datetime(2026, 1, 5, 22, 30, tzinfo=UTC)), "en").fields[
            "contract_valid"
        ]
        is True
    )
    assert (
        render_down_ticket(make_ctx(config, datetime(2026, 1, 5, 23, 30, tzinfo=UTC)), "en").fields[
            "contract_valid"
        ]
        is False
    )
    assert config.contracts[0].end == date(2026, 1, 5)


@pytest.mark.parametrize(
    ("at", "local"),
    [
        (WINTER, "2026-01-05 10:00:00 +01:00 Europe/Warsaw"),
        (SUMMER, "2026-07-06 11:00:00 +02:00 Europe/Warsaw"),
    ],
)
def test_local_time_follows_warsaw_winter_and_summer(at: datetime, local: str) -> None:
    assert format_local(at, "Europe/Warsaw") == local
    ticket = render_down_ticket(make_ctx(make_config(), at), "en")
    utc_text = at.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert f"Declared offline: {utc_text} ({local})" in ticket.body


@pytest.mark.parametrize("language", ["en", "pl"])
def test_unknown_facts_render_as_unknown(language: str) -> None:
    config = make_config()
    ticket = render_down_ticket(make_ctx(config, facts=None), language)
    word = {"en": "unknown", "pl": "nieznany"}[language]
    assert ticket.title.endswith(f"SN {word}")
    assert (
        ticket.fields["serial"] is None and ticket.fields["firmware"] is None and ticket.fields["mac"] is None
    )
    assert ticket.fields["model"] == "A30"  # from the configuration
    assert ticket.fields["last_seen"] is None
    assert f"MAC: {word}" in ticket.body


def test_missing_log_is_said_plainly() -> None:
    ticket = render_down_ticket(make_ctx(make_config(), attachment=None), "en")
    assert "No log could be collected" in ticket.body


def test_password_never_appears(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEZO_TEST_A30_PASSWORD", PASSWORD)
    config = make_config()
    leaky = f"login as admin:{PASSWORD} refused"
    for language in ("en", "pl"):
        ticket = render_down_ticket(make_ctx(config, detail=leaky), language)
        assert PASSWORD not in ticket.body and PASSWORD not in ticket.title
        assert all(PASSWORD not in str(v) for v in ticket.fields.values())
        assert "admin:*** refused" in ticket.body
        assert "HEZO_TEST_A30_PASSWORD" not in ticket.body
        for text in (
            render_recovery_comment(config.devices[0], 725, WINTER, config.sites[0], language),
            render_resolve_comment(config.devices[0], 725, WINTER, config.sites[0], language),
        ):
            assert PASSWORD not in text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (5.4, "5 s"), (725, "12 min 5 s"), (3600, "1 h 0 min 0 s"), (90061, "1 d 1 h 1 min 1 s")],
)
def test_downtime_is_human_readable(seconds: float, text: str) -> None:
    assert format_duration(seconds, "en") == text
    assert format_duration(seconds, "pl") == text


def test_recovery_and_resolve_comments_in_both_languages() -> None:
    config = make_config()
    dev, site = config.devices[0], config.sites[0]
    en = render_recovery_comment(dev, 725, WINTER, site, "en")
    assert "recovered" in en and "12 min 5 s" in en and "a30-zarzad" in en
    assert "2026-01-05 10:00:00 +01:00 Europe/Warsaw" in en
    pl = render_recovery_comment(dev, 725, WINTER, site, "pl")
    assert "znowu działa" in pl and "12 min 5 s" in pl
    assert "Resolved automatically" in render_resolve_comment(dev, 725, WINTER, site, "en")
    assert "Rozwiązane automatycznie" in render_resolve_comment(dev, 725, WINTER, site, "pl")


def test_unknown_language_is_an_error() -> None:
    with pytest.raises(ValueError, match="language"):
        render_down_ticket(make_ctx(make_config()), "de")


def _as_dict(ctx: DownContext) -> dict[str, Any]:
    return {name: getattr(ctx, name) for name in DownContext.__dataclass_fields__}
