"""Redaction: planted secrets in realistic device logs never leave, ordinary lines stay byte for byte.

``tests/fixtures/logs/`` holds an A30 system log, an app log, an MVC admin shell log and a key dump
with over twenty forms of secret planted (listed in ``planted-secrets.list``). They are pushed
through every way text leaves the agent: a file, a rendered ticket, a log line.
"""

from __future__ import annotations

import io
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agent.redact as redact_module
from agent.known_secrets import known_secrets, redactor_for
from agent.redact import MASK, RedactingFilter, Redactor, install_log_redaction
from agent.ticket_text import DownContext, render_down_ticket
from collectors.models import CheckResult, DeviceFacts
from config.loader import load_config
from config.schema import Device, Site
from simulator.logs import boot_lines, routine_lines

LOGS = Path(__file__).parent / "fixtures" / "logs"
DEVICE_PASSWORD = "Zq27devicePassword"
SITE_PATTERN = r"meetingPin=(\d{6})"


def planted() -> list[str]:
    lines = (LOGS / "planted-secrets.list").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def fixtures() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(LOGS.iterdir()) if p.suffix != ".list"}


@pytest.fixture
def redactor() -> Redactor:
    return Redactor(literals=[DEVICE_PASSWORD], patterns=[SITE_PATTERN])


def _secret_lines(text: str) -> set[str]:
    """Lines that hold a planted secret, or belong to a private key block."""
    out, in_key = set(), False
    for line in text.splitlines(keepends=True):
        in_key = in_key or "BEGIN OPENSSH PRIVATE KEY" in line
        if in_key or any(s in line for s in planted()):
            out.add(line)
        in_key = in_key and "END OPENSSH PRIVATE KEY" not in line
    return out


def test_the_fixtures_plant_at_least_twenty_forms_of_secret() -> None:
    secrets = planted()
    assert len(secrets) >= 20 and len(set(secrets)) == len(secrets)
    text = "".join(fixtures().values())
    assert all(s in text for s in secrets), "every listed secret is really in a fixture log"


def test_no_planted_secret_survives_and_ordinary_lines_are_byte_for_byte(redactor: Redactor) -> None:
    for name, text in fixtures().items():
        out = redactor.redact(text)
        for secret in planted():
            assert secret not in out, f"{secret} leaked from {name}"
        kept = out.splitlines(keepends=True)
        secret_lines = _secret_lines(text)
        for line in text.splitlines(keepends=True):
            if line not in secret_lines:
                assert line in kept, f"{name}: ordinary line changed: {line!r}"
        assert len(kept) == len(text.splitlines()) - (4 if name == "ssh-key-dump.txt" else 0)


def test_each_form_keeps_its_shape_so_the_log_stays_readable(redactor: Redactor) -> None:
    samples = {
        "fetching https://prov:Pr0v-Zq01@dm.example.pl/cfg": f"fetching https://prov:{MASK}@dm.example.pl/cfg",
        "Authorization: Basic YWRtaW46WnEwOGJhc2lj": f"Authorization: Basic {MASK}",
        'Authorization: Digest username="1001", response="6629"': f"Authorization: Digest {MASK}",
        '{"Authorization": "Bearer abc.def", "Ho": 1}': f'{{"Authorization": "Bearer {MASK}", "Ho": 1}}',
        "Cookie: JSESSIONID=Zq10sess; lang=pl": f"Cookie: JSESSIONID={MASK}; lang={MASK}",
        "Set-Cookie: sid=Zq11; Path=/; HttpOnly": f"Set-Cookie: sid={MASK}; Path=/; HttpOnly",
        "snmpwalk -v2c -c public 10.0.0.5": f"snmpwalk -v2c -c {MASK} 10.0.0.5",
        "rocommunity s3cr3t 10.0.0.0/8": f"rocommunity {MASK} 10.0.0.0/8",
        "account.1.password = 1234": f"account.1.password = {MASK}",
        "GET /x?api_key=abc&fmt=json": f"GET /x?api_key={MASK}&fmt=json",
        "X-Redmine-API-Key: 0123456789abcdef": f"X-Redmine-API-Key: {MASK}",
        '{"access_token": "t0k", "token_type": "bearer", "expires_in": 86400}': (
            f'{{"access_token": "{MASK}", "token_type": "bearer", "expires_in": 86400}}'
        ),
        "<password>x1</password>": f"<password>{MASK}</password>",
        "joined meetingPin=482913 room A": f"joined meetingPin={MASK} room A",
    }
    for before, after in samples.items():
        assert redactor.redact(before) == after


def test_ordinary_device_log_lines_from_the_simulator_pass_untouched(redactor: Redactor) -> None:
    peripherals = {"camera": "A30 Camera", "microphone": "CPW90", "touch_panel": "CTP18"}
    for model in ("A20", "A30", "MVC"):
        lines = boot_lines(model, "133.15.0.60", "8030324101000117", "00:15:65:a3:10:17", peripherals)
        lines += routine_lines(f"redact-{model}", model, 60_000)
        text = "".join(f"2026-01-05 09:00:00.000 {lvl:<5} {src}: {msg}\n" for _f, lvl, src, msg in lines)
        assert redactor.redact(text) == text


def test_literals_match_url_encoded_and_as_whole_words_only_when_short() -> None:
    redactor = Redactor(literals=["p@ss w/rd!", "0000", "ab"])
    assert redactor.redact("login p@ss w/rd! ok") == f"login {MASK} ok"
    assert redactor.redact("url user=x&pw=p%40ss%20w%2Frd%21") == f"url user=x&pw={MASK}"
    assert redactor.redact("rx_packets=100000 pin 0000 set") == f"rx_packets=100000 pin {MASK} set"
    assert redactor.redact("ab is too short to mask: tab, abc") == "ab is too short to mask: tab, abc"


def test_a_truncated_private_key_is_dropped_and_what_follows_is_kept(redactor: Redactor) -> None:
    text = "before\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nAbCd0123+/==\n2026-01-05 INFO next\n"
    assert redactor.redact(text) == "before\n[private key redacted]\n2026-01-05 INFO next\n"


def test_files_text_utf16_and_binary(tmp_path: Path, redactor: Redactor) -> None:
    text = tmp_path / "sys.log"
    text.write_bytes(b"ok \xff\xfe line\naccount.1.password = Zq02sipPass\n")
    done = redactor.redact_file(text, text)
    assert (done.kind, done.masked_lines) == ("text", 1)
    assert text.read_bytes() == b"ok \xff\xfe line\naccount.1.password = ***\n"  # undecodable bytes kept
    wide = tmp_path / "srs.log"
    wide.write_bytes("Heartbeat ok\r\ntoken=Zq09tokenabcdef\r\n".encode("utf-16"))
    assert redactor.redact_file(wide, wide).kind == "utf-16"
    assert wide.read_bytes().decode("utf-16") == "Heartbeat ok\r\ntoken=***\r\n"
    blob = tmp_path / "config.db"
    raw = b"SQLite\x00" + DEVICE_PASSWORD.encode() + b"\x00" + DEVICE_PASSWORD.encode("utf-16-le")
    done = redactor.redact_file(blob, tmp_path / "masked.db") if blob.write_bytes(raw) else None
    assert done is not None and done.kind == "binary"
    masked = (tmp_path / "masked.db").read_bytes()
    assert len(masked) == len(raw) and DEVICE_PASSWORD.encode() not in masked
    assert DEVICE_PASSWORD.encode("utf-16-le") not in masked


def _ticket_context(detail: str) -> DownContext:
    device = Device(id="a30-zarzad", room="Sala Zarząd", site="hq", model="A30", host="10.0.0.5")
    site = Site.model_validate(
        {"name": "hq", "address": "ul. Testowa 1, Warszawa",
         "contact": {"name": "Anna Nowak", "phone": "+48 600 100 200", "email": "anna@example.com"}}
    )  # fmt: skip
    at = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    return DownContext(
        device=device, site=site, contract=None,
        facts=DeviceFacts("A30", "133.15.0.60", "8030324101000117", "00:15:65:a3:10:17"),
        last_seen=at, went_down_at=at, first_failure_at=at, failures=3, reason="unreachable", now=at,
        checks=(CheckResult("https_api", False, 5000.0, detail),), summary=detail,
    )  # fmt: skip


def records() -> list[str]:
    """Every fixture line as one record, except a private key block, which stays one record."""
    out: list[str] = []
    for text in fixtures().values():
        block: list[str] = []
        for line in text.splitlines():
            if block or "BEGIN OPENSSH PRIVATE KEY" in line:
                block.append(line)
                if "END OPENSSH PRIVATE KEY" in line:
                    out.append("\n".join(block))
                    block = []
            elif line.strip():
                out.append(line)
    return out


def test_no_planted_secret_leaves_in_a_rendered_ticket(redactor: Redactor) -> None:
    for line in records():
        ticket = redactor.ticket(render_down_ticket(_ticket_context(line), "en"))
        rendered = ticket.title + ticket.body + repr(ticket.fields)
        assert not [s for s in planted() if s in rendered], line


def test_no_planted_secret_leaves_in_a_log_line_or_traceback(redactor: Redactor) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    restore = install_log_redaction(redactor)
    try:
        for line in records():
            logging.getLogger("hezo.agent").warning("event=device_said line=%s", line)
            logging.getLogger("collectors.transports.ssh").error("event=x detail=%r", {"raw": line})
        try:
            raise RuntimeError("login failed: https://admin:Pr0v-Zq01@10.0.0.5/ and token=Zq09tokenabcdef")
        except RuntimeError:
            logging.getLogger("hezo.poller").exception("event=poll_crashed")
    finally:
        restore()
        root.removeHandler(handler)
    out = stream.getvalue()
    assert "event=device_said" in out and "Traceback" in out and "RuntimeError" in out
    assert not [s for s in planted() if s in out]


def test_the_filter_masks_records_on_a_handler(redactor: Redactor) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(redactor))
    logger = logging.getLogger("hezo.test_redact_filter")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("device %s answered %s", "a30", f"password={DEVICE_PASSWORD}")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == f"device a30 answered password={MASK}\n"


def test_the_agents_redactor_knows_every_configured_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bar.secret").write_text("Zq41fromFile\n")
    monkeypatch.setenv("HEZO_TEST_YMCS", "Zq42ymcsSecret")
    monkeypatch.setenv("HEZO_TEST_TRAPS", "Zq43trapComm")
    (tmp_path / "agent.yaml").write_text(
        """
sites:
  - {name: hq, address: "ul. Testowa 1", contact: {name: A N, phone: "+48 600", email: a@example.com}}
devices:
  - {id: a30, room: R1, site: hq, model: A30, host: 10.0.0.5, credentials: {password_file: bar.secret}}
traps: {community_env: HEZO_TEST_TRAPS}
ymcs: {region: eu, client_id: abc, client_secret_env: HEZO_TEST_YMCS}
redaction: {patterns: ['roomPin=(\\d+)']}
""",
        encoding="utf-8",
    )
    config = load_config(tmp_path / "agent.yaml")
    assert sorted(known_secrets(config)) == ["Zq41fromFile", "Zq42ymcsSecret", "Zq43trapComm"]
    redactor = redactor_for(config)
    assert (
        redactor.redact("Zq41fromFile Zq42ymcsSecret Zq43trapComm roomPin=1234")
        == f"{MASK} {MASK} {MASK} roomPin={MASK}"
    )


def test_a_key_block_anywhere_in_a_long_or_utf16_file_is_dropped(tmp_path: Path, redactor: Redactor) -> None:
    key = (LOGS / "ssh-key-dump.txt").read_text(encoding="utf-8")
    ordinary = "".join(f"2026-01-05 09:00:{i % 60:02d} INFO netd: eth0 rx_packets={i}\n" for i in range(4095))
    for name, encoding in (("long.log", "utf-8"), ("wide.log", "utf-16")):
        path = tmp_path / name
        path.write_bytes((ordinary + key + ordinary).encode(encoding))
        done = redactor.redact_file(path, path)
        text = path.read_bytes().decode(encoding)
        assert not [s for s in planted() if s in text]
        assert text == ordinary + redactor.redact(key) + ordinary
        assert done.masked_lines == 5  # BEGIN, three body lines, END


# Lines the block test must get right: secrets of every kind, key blocks, a casefold that grows
# (ß → ss), a site pattern with anchors, CRLF, undecodable bytes, and plenty of clean lines.
_MIXED_LINES = [
    b"2026-01-05 10:00:00.000 INFO  netd: eth0: rx_packets=1 tx_packets=2\n",
    b"2026-01-05 10:00:01.000 INFO  call: call started id=abc participants=3\n",
    b"Stra\xc3\x9fe caf\xc3\xa9 ok\n",
    b"account.1.password = Zq02sipPass\n",
    f"login with {DEVICE_PASSWORD} failed\n".encode(),
    b"meetingPin=123456 joined\n",
    b"Token abcdefgh1234 issued\n",
    b"-----BEGIN RSA PRIVATE KEY-----\n",
    b"MIIEowIBAAKCAQEAqVfA3b8Lx0a+/==\n",
    b"-----END RSA PRIVATE KEY-----\n",
    b"crlf line\r\n",
    b"bad \xff\xfe bytes\n",
    b"Authorization: Bearer abcdefghijklmnop\n",
    b"room code Zq55roomCode shown\n",  # a known literal and no trigger word
    b"SIP: Register Failed (Account 2)\n",  # a trigger word only once casefolded
]


@settings(max_examples=150, deadline=None)
@given(
    picks=st.lists(st.integers(0, len(_MIXED_LINES) - 1), max_size=120),
    clean_run=st.integers(0, 400),
    block=st.sampled_from([1, 64, 4096, 256 * 1024]),
    last_newline=st.booleans(),
    line_bound=st.booleans(),
)
def test_a_file_redacted_in_blocks_equals_line_by_line(
    picks: list[int], clean_run: int, block: int, last_newline: bool, line_bound: bool
) -> None:
    """The whole-block tests may only skip lines the line-by-line rules would leave as they are:
    with a site pattern bound to line ends (blocks are halved), and without one (one pass over
    each block finds the lines to mask)."""
    patterns = [SITE_PATTERN, r"^Token \w+", *([r"\Acrlf"] if line_bound else [])]
    redactor = Redactor([DEVICE_PASSWORD, "Zq55roomCode"], patterns)
    lines = [_MIXED_LINES[0]] * clean_run + [_MIXED_LINES[i] for i in picks] + [_MIXED_LINES[1]] * clean_run
    data = b"".join(lines)
    if not last_newline and data.endswith(b"\n"):
        data = data[:-1]
    decoded = [raw.decode("utf-8", "surrogateescape") for raw in io.BytesIO(data)]
    pairs = list(redactor._pairs(decoded))
    expected = "".join(out for _, out in pairs).encode("utf-8", "surrogateescape")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "app.log"
        path.write_bytes(data)
        with mock.patch.object(redact_module, "BLOCK_BYTES", block):
            done = redactor.redact_file(path, path)
        assert path.read_bytes() == expected
        assert done.masked_lines == sum(1 for line, out in pairs if line != out)


def test_a_site_pattern_matching_across_lines_has_every_line_it_touches_masked_one_by_one(
    tmp_path: Path,
) -> None:
    """Over the joined lines the leftmost match runs from the first line into the second and
    swallows the second line's own match: the second line must still be masked, as line by line."""
    redactor = Redactor([], [r"Qq[^;]*;"])
    data = b"ok\nQq start\nQq; end\nok\n"
    path = tmp_path / "app.log"
    path.write_bytes(data)
    done = redactor.redact_file(path, path)
    assert path.read_bytes() == f"ok\nQq start\n{MASK} end\nok\n".encode()
    assert done.masked_lines == 1


def test_a_secret_written_in_capitals_is_found_in_a_file_of_clean_lines(tmp_path: Path) -> None:
    """The block test looks for trigger words in the casefolded text, as the line rules do."""
    redactor = Redactor([], [])
    secret_line = "AUTHORIZATION: BASIC QWxhZGRpbjpvcGVuU2VzYW1l\n"
    path = tmp_path / "app.log"
    path.write_text("INFO ok\n" + secret_line + "INFO ok\n", encoding="utf-8")
    assert redactor.redact_file(path, path).masked_lines == 1
    assert path.read_text(encoding="utf-8") == "INFO ok\n" + redactor.redact(secret_line) + "INFO ok\n"
    assert "QWxhZGRpbjpvcGVuU2VzYW1l" not in path.read_text(encoding="utf-8")


def test_trigger_anchors_are_plain_text_and_a_regex_they_cannot_cover_is_refused() -> None:
    assert redact_module._anchors("ab[_-]?cdef|x?yz|gh[pou]_|password|pass") == ("cdef", "yz", "gh", "pass")
    with pytest.raises(ValueError, match="plain-text anchor"):
        redact_module._anchors("a+b|c")


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_every_match_of_the_trigger_words_holds_one_of_their_anchors(data: st.DataObject) -> None:
    """A block without any anchor is skipped by the trigger regex: that is safe only if every
    string any alternative can match holds an anchor."""
    alternative = data.draw(st.sampled_from(redact_module._TRIGGER.pattern.split("|")))
    text = data.draw(st.from_regex(alternative, fullmatch=True))
    assert any(anchor in text for anchor in redact_module._TRIGGER_ANCHORS), (alternative, text)
