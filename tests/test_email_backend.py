"""The `email` backend against a real SMTP server (aiosmtpd) on 127.0.0.1, parsing what arrived."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers.smtp import LoopbackCa, SmtpPeer, free_port, make_loopback_ca
from pydantic import ValidationError

from agent.clock import FakeClock
from config.loader import ConfigError, load_config
from config.schema import Ticketing
from config.ticketing import EmailSettings
from uploader.backends.email import EmailBackend
from uploader.base import BackendAuthError, BackendError, BackendRejected
from uploader.models import Attachment, Priority, Ticket, TicketRef
from uploader.registry import build_backend
from uploader.sentlog import SentLog, hezo_id

USER, PASSWORD = "hezo-agent", "Zażółć-gęślą-jaźń-42"
POLISH = "Zażółć gęślą jaźń — Sala Zarząd, ul. Łódzka 5"


def make_ticket(key: str = "warszawa/a30-zarzad/offline", language: str = "pl") -> Ticket:
    return Ticket(
        key=key,
        title='[krytyczny] A30 "Sala Zarząd" offline — SN 803001',
        body=f"Priorytet: krytyczny\n{POLISH}\nUrządzenie nie odpowiada.\n",
        priority=Priority.CRITICAL,
        fields={"device": "a30-zarzad", "serial": "803001", "language": language},
    )


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LoopbackCa:
    return make_loopback_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def settings(port: int, ca: LoopbackCa | None, **over: object) -> EmailSettings:
    data: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "starttls",
        "ca_file": ca.ca_file if ca else None,
        "username": USER,
        "password_env": "HEZO_TEST_SMTP_PASSWORD",
        "from_address": "hezo@agent.example.pl",
        "to": ["serwis@helpdesk.example.pl"],
        "cc": ["kopia@helpdesk.example.pl"],
    }
    data.update(over)
    return EmailSettings.model_validate(data)


def backend(
    s: EmailSettings,
    tmp_path: Path,
    clock: FakeClock,
    password: str | None = PASSWORD,
    log_name: str = "sent.sqlite",
) -> EmailBackend:
    return EmailBackend(s, password, SentLog(tmp_path / log_name, clock=clock), clock=clock)


@pytest.fixture
def starttls_peer(ca: LoopbackCa) -> Iterator[SmtpPeer]:
    with SmtpPeer(mode="starttls", ca=ca, user=(USER, PASSWORD)) as peer:
        yield peer


@pytest.fixture
def mail(starttls_peer: SmtpPeer, ca: LoopbackCa, tmp_path: Path, clock: FakeClock) -> Iterator[EmailBackend]:
    b = backend(settings(starttls_peer.port, ca), tmp_path, clock)
    yield b
    b.close()


def attachments(tmp_path: Path) -> tuple[Attachment, Attachment]:
    log_file = tmp_path / "blackbox.log"
    log_file.write_text("".join(f"2026-01-05T09:{i % 60:02d} linia {i} żółć\n" for i in range(500)), "utf-8")
    gz = tmp_path / "bundle.tar.gz"
    gz.write_bytes(gzip.compress(os.urandom(20_000)))
    return (
        Attachment(name="blackbox.log", path=log_file, content_type="text/plain"),
        Attachment(name="bundle.tar.gz", path=gz, content_type="application/gzip"),
    )


# --- the opening message -----------------------------------------------------------------


def test_starttls_login_delivers_tagged_polish_message_with_exact_attachments(
    mail: EmailBackend, starttls_peer: SmtpPeer, tmp_path: Path
) -> None:
    log_att, gz_att = attachments(tmp_path)
    ref = mail.open(make_ticket(), [log_att, gz_att])

    short = hezo_id("warszawa/a30-zarzad/offline")
    assert ref == TicketRef("email", short, f"mid:{short.lower()}.open@agent.example.pl")
    [got] = starttls_peer.received
    assert got.tls and got.login == USER
    assert starttls_peer.logins == [(USER, True)]
    assert got.mail_from == "hezo@agent.example.pl"
    assert sorted(got.rcpt_tos) == ["kopia@helpdesk.example.pl", "serwis@helpdesk.example.pl"]
    msg = got.parsed()
    assert msg["Subject"] == f'[{short}] [krytyczny] A30 "Sala Zarząd" offline — SN 803001'
    assert msg["Message-ID"] == f"<{short.lower()}.open@agent.example.pl>"
    assert msg["X-Priority"].startswith("1") and msg["Importance"] == "high"
    assert msg["Content-Language"] == "pl" and msg["X-Hezo-Ticket"] == short
    assert msg["In-Reply-To"] is None
    body = msg.get_body(("plain",))
    assert body is not None and POLISH in body.get_content()
    parts = {part.get_filename(): part for part in msg.iter_attachments()}
    assert sorted(parts) == ["blackbox.log", "bundle.tar.gz"]
    assert parts["blackbox.log"].get_payload(decode=True) == log_att.path.read_bytes()
    assert parts["blackbox.log"].get_content() == log_att.path.read_text("utf-8")  # charset survives
    assert parts["bundle.tar.gz"].get_payload(decode=True) == gz_att.path.read_bytes()
    assert parts["bundle.tar.gz"].get_content_type() == "application/gzip"
    assert PASSWORD.encode() not in got.raw


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # aiosmtpd: SMTPS is TLS
def test_smtps_implicit_tls_delivers(ca: LoopbackCa, tmp_path: Path, clock: FakeClock) -> None:
    with SmtpPeer(mode="ssl", ca=ca, user=(USER, PASSWORD)) as peer:
        b = backend(settings(peer.port, ca, security="ssl"), tmp_path, clock)
        ref = b.open(make_ticket(language="en"))
        b.close()
        [got] = peer.received
    assert got.tls and got.login == USER
    assert got.parsed()["Subject"].startswith(f"[{ref.id}] ")


def test_open_once_per_key_and_find_survives_a_restart(
    starttls_peer: SmtpPeer, ca: LoopbackCa, tmp_path: Path, clock: FakeClock
) -> None:
    s = settings(starttls_peer.port, ca)
    first = backend(s, tmp_path, clock)
    ref = first.open(make_ticket())
    assert first.open(make_ticket()) == ref
    assert first.find("warszawa/a30-zarzad/offline") == ref
    assert first.find("warszawa/a20-hall/offline") is None
    first.close()
    again = backend(s, tmp_path, clock)
    assert again.find("warszawa/a30-zarzad/offline") == ref
    again.close()
    assert len(starttls_peer.received) == 1


def test_resend_after_lost_sent_log_carries_the_same_message_id(
    starttls_peer: SmtpPeer, ca: LoopbackCa, tmp_path: Path, clock: FakeClock
) -> None:
    """A crash between the server's 250 and the log write: the retry is the same message."""
    s = settings(starttls_peer.port, ca)
    a = backend(s, tmp_path, clock, log_name="a.sqlite")
    ref = a.open(make_ticket())
    a.close()
    shutil.copy(tmp_path / "a.sqlite", tmp_path / "b.sqlite")  # log state before the comment
    a = backend(s, tmp_path, clock, log_name="a.sqlite")
    b = backend(s, tmp_path, clock, log_name="b.sqlite")
    a.comment(ref, "Urządzenie nadal nie odpowiada.")
    b.comment(ref, "Urządzenie nadal nie odpowiada.")
    a.comment(ref, "Urządzenie nadal nie odpowiada.")  # recorded as sent: not sent again
    a.close()
    b.close()
    first, second = (m.parsed() for m in starttls_peer.received[1:])
    assert len(starttls_peer.received) == 3
    assert first["Message-ID"] == second["Message-ID"]
    assert first["In-Reply-To"] == second["In-Reply-To"] == f"<{ref.id.lower()}.open@agent.example.pl>"


# --- the thread --------------------------------------------------------------------------


def test_every_follow_up_threads_under_the_opening_message(
    mail: EmailBackend, starttls_peer: SmtpPeer, tmp_path: Path, clock: FakeClock
) -> None:
    log_att, _ = attachments(tmp_path)
    ref = mail.open(make_ticket())
    mail.comment(ref, "Technik w drodze, ETA 2 h.")
    mail.set_priority(ref, Priority.MEDIUM, "")
    mail.attach(ref, log_att)
    mail.resolve(ref, "Urządzenie znów odpowiada; przerwa 2 h 5 min.")
    mail.reopen(ref, "Urządzenie znów nie odpowiada.")
    msgs = [m.parsed() for m in starttls_peer.received]
    assert len(msgs) == 6
    ids = [m["Message-ID"] for m in msgs]
    assert len(set(ids)) == 6 and all(i.endswith("@agent.example.pl>") for i in ids)
    for i, msg in enumerate(msgs[1:], start=1):
        assert msg["In-Reply-To"] == ids[i - 1]
        assert msg["References"].split() == ids[:i]
        assert msg["Subject"].startswith(f"Re: [{ref.id}] [")
    subjects = [m["Subject"] for m in msgs[1:]]
    core = 'A30 "Sala Zarząd" offline — SN 803001'
    assert subjects == [
        f"Re: [{ref.id}] [krytyczny] Komentarz: {core}",
        f"Re: [{ref.id}] [średni] Zmiana priorytetu na średni: {core}",
        f"Re: [{ref.id}] [średni] Załącznik: {core}",
        f"Re: [{ref.id}] [średni] Rozwiązane: {core}",
        f"Re: [{ref.id}] [średni] Ponownie otwarte: {core}",
    ]
    assert [m["X-Hezo-Event"] for m in msgs] == [
        "ticket.opened", "ticket.commented", "ticket.priority_changed", "ticket.attached",
        "ticket.resolved", "ticket.reopened",
    ]  # fmt: skip
    assert msgs[2]["X-Priority"].startswith("3")
    [attached] = list(msgs[3].iter_attachments())
    assert attached.get_content() == log_att.path.read_text("utf-8")
    body = msgs[4].get_body(("plain",))
    assert body is not None and "przerwa 2 h 5 min" in body.get_content()
    assert mail.list_comments(ref) == []


def test_follow_up_without_sent_log_still_threads_from_the_ref(
    mail: EmailBackend, starttls_peer: SmtpPeer, ca: LoopbackCa, tmp_path: Path, clock: FakeClock
) -> None:
    ref = mail.open(make_ticket())
    fresh = backend(settings(starttls_peer.port, ca), tmp_path, clock, log_name="lost.sqlite")
    fresh.resolve(ref, "")
    fresh.close()
    msg = starttls_peer.received[-1].parsed()
    assert msg["In-Reply-To"] == f"<{ref.id.lower()}.open@agent.example.pl>"
    assert msg["Subject"] == f"Re: [{ref.id}] Resolved"


def test_oversized_attachments_are_trimmed_oldest_first_and_the_body_says_so(
    starttls_peer: SmtpPeer, ca: LoopbackCa, tmp_path: Path, clock: FakeClock
) -> None:
    log_att, gz_att = attachments(tmp_path)
    os.utime(gz_att.path, (1_000, 1_000))  # the bundle is the oldest file: it goes first
    limit = log_att.path.stat().st_size - 2000
    s = settings(starttls_peer.port, ca, max_total_attachment_bytes=limit, max_attachment_bytes=4096)
    b = backend(s, tmp_path, clock)
    b.open(make_ticket(), [log_att, gz_att])
    b.close()
    msg = starttls_peer.received[0].parsed()
    parts = [(p.get_filename(), p.get_payload(decode=True)) for p in msg.iter_attachments()]
    assert all(name.startswith("blackbox.log.") for name, _ in parts)
    joined = b"".join(data for _, data in parts)
    assert log_att.path.read_bytes().endswith(joined) and joined.startswith(b"2026-01-05T09:")
    assert len(joined) <= limit
    body = msg.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "Załączniki:" in text and "bundle.tar.gz" in text and "pominięto" in text and "podzielono" in text


# --- errors ------------------------------------------------------------------------------


def test_wrong_password_is_an_auth_error_and_the_password_is_never_logged(
    starttls_peer: SmtpPeer,
    ca: LoopbackCa,
    tmp_path: Path,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Nie-To-Hasło-" + PASSWORD
    b = backend(settings(starttls_peer.port, ca), tmp_path, clock, password=wrong)
    with pytest.raises(BackendAuthError) as caught:
        b.open(make_ticket())
    assert "535" in str(caught.value)
    assert wrong not in str(caught.value) and wrong not in caplog.text and PASSWORD not in caplog.text
    assert starttls_peer.logins == [(USER, False)] and starttls_peer.received == []
    assert b.find("warszawa/a30-zarzad/offline") is None
    b.close()


@pytest.mark.parametrize(
    ("where", "reply", "error"),
    [
        ("rcpt", "550 5.1.1 no such mailbox", BackendRejected),
        ("data", "552 5.3.4 message too big", BackendRejected),
        ("rcpt", "451 4.3.0 try again later", BackendError),
        ("data", "421 4.7.0 closing, too busy", BackendError),
    ],
)
def test_permanent_5xx_is_rejected_and_4xx_is_retryable(
    starttls_peer: SmtpPeer, ca: LoopbackCa, tmp_path: Path, clock: FakeClock,
    where: str, reply: str, error: type[BackendError],
) -> None:  # fmt: skip
    setattr(starttls_peer.handler, f"reply_{where}", reply)
    b = backend(settings(starttls_peer.port, ca), tmp_path, clock)
    with pytest.raises(BackendError) as caught:
        b.open(make_ticket())
    assert type(caught.value) is error
    assert caught.value.retryable is (error is BackendError)
    assert reply.split()[0] in str(caught.value)
    assert b.find("warszawa/a30-zarzad/offline") is None
    b.close()


def test_refused_port_is_a_retryable_error(ca: LoopbackCa, tmp_path: Path, clock: FakeClock) -> None:
    b = backend(settings(free_port(), ca, timeout_s=2), tmp_path, clock)
    with pytest.raises(BackendError) as caught:
        b.open(make_ticket())
    assert type(caught.value) is BackendError and caught.value.retryable
    assert "refused" in str(caught.value)
    b.close()


def test_untrusted_certificate_and_missing_starttls_hold_the_backend(
    ca: LoopbackCa, tmp_path: Path, clock: FakeClock
) -> None:
    with SmtpPeer(mode="starttls", ca=ca) as peer:
        b = backend(settings(peer.port, None, username=None, password_env=None), tmp_path, clock)
        with pytest.raises(BackendAuthError, match="not trusted"):
            b.open(make_ticket())
        b.close()
    with SmtpPeer(mode="plain") as peer:
        b = backend(settings(peer.port, ca, username=None, password_env=None), tmp_path, clock)
        with pytest.raises(BackendAuthError, match="STARTTLS"):
            b.open(make_ticket())
        b.close()
        assert peer.received == []


def test_plain_relay_without_login_delivers(tmp_path: Path, clock: FakeClock) -> None:
    with SmtpPeer(mode="plain") as peer:
        s = settings(peer.port, None, security="none", username=None, password_env=None)
        b = backend(s, tmp_path, clock, password=None)
        b.open(make_ticket())
        b.close()
        [got] = peer.received
    assert not got.tls and got.login is None


# --- config ------------------------------------------------------------------------------


def test_settings_refuse_a_login_in_clear_and_half_given_logins() -> None:
    with pytest.raises(ValidationError, match="never sent unencrypted"):
        settings(25, None, security="none")
    with pytest.raises(ValidationError, match="give password_env"):
        settings(25, None, password_env=None)
    with pytest.raises(ValidationError, match="without username"):
        settings(25, None, username=None)
    with pytest.raises(ValidationError, match="not a valid e-mail address"):
        settings(25, None, to=["serwis(at)example.pl"])
    with pytest.raises(ValidationError, match="ASCII"):
        settings(25, None, to=["serwis@łódź.example.pl"])
    assert settings(None, None, security="ssl").effective_port == 465  # type: ignore[arg-type]
    assert settings(None, None).effective_port == 587  # type: ignore[arg-type]


def test_registry_builds_email_from_config_and_reads_the_password_from_env(
    starttls_peer: SmtpPeer, ca: LoopbackCa, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticketing = Ticketing(backend="email", email=settings(starttls_peer.port, ca))
    monkeypatch.delenv("HEZO_TEST_SMTP_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="HEZO_TEST_SMTP_PASSWORD is not set"):
        build_backend(ticketing, tmp_path)
    monkeypatch.setenv("HEZO_TEST_SMTP_PASSWORD", PASSWORD)
    b = build_backend(ticketing, tmp_path)
    assert isinstance(b, EmailBackend)
    b.open(make_ticket())
    b.close()
    assert (tmp_path / "email" / "sent.sqlite").is_file()
    assert len(starttls_peer.received) == 1


def test_config_file_names_the_missing_email_section_and_resolves_paths_beside_it(tmp_path: Path) -> None:
    base = """
sites:
  - name: warszawa
    address: "ul. Marszałkowska 142, 00-061 Warszawa"
    contact: {name: Anna Kowalska, phone: "+48 22 555 01 23", email: it@example.pl}
devices:
  - {id: a30-zarzad, room: Sala Zarząd, site: warszawa, model: A30, host: 127.0.0.1}
ticketing:
  backend: email
"""
    path = tmp_path / "agent.yaml"
    path.write_text(base, "utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.lines == [
        "ticketing.email: required when backend is email: add a ticketing.email section"
    ]
    path.write_text(
        base + "  email:\n    host: smtp.example.pl\n    username: hezo\n    password_file: secrets/smtp\n"
        "    ca_file: ca.pem\n    from_address: hezo@example.pl\n    to: [serwis@example.pl]\n",
        "utf-8",
    )
    email = load_config(path).ticketing.email
    assert email is not None
    assert email.password_file == tmp_path / "secrets" / "smtp" and email.ca_file == tmp_path / "ca.pem"
