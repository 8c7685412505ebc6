"""One redactor for everything that leaves the box: bundle files, ticket text, comments, log lines.

Built-in rules mask: passwords in URLs (``scheme://user:***@``), ``Authorization`` and
``Proxy-Authorization`` values (Basic, Bearer, Digest: the scheme stays), ``Cookie`` and
``Set-Cookie`` values, SNMP communities (``community=``, ``snmpwalk -c``, ``rocommunity``,
``com2sec``, trap sinks), SNMPv3 keys (``-A``/``-X``, ``createUser``, ``authKey=``), SIP account
passwords (``account.1.password = ...``, ``SIP password ...``), API tokens and keys (``api_key=``,
``token=``, ``X-Redmine-API-Key:``, ``client_secret``, ``"access_token": "..."``, ``<password>``
elements, free ``Bearer`` tokens, JWTs) and private key PEM blocks (also split over lines). On top
come the site's own regexes (``redaction.patterns``) and the literal secret values the agent
knows (device passwords, channel secrets, helpdesk tokens), matched wherever they appear.

Text is handled line by line, so a line without a secret comes out byte for byte as it went in
(undecodable bytes survive through ``surrogateescape``). Binary files are not pattern-redacted:
known literal secrets are overwritten in place (same length) and the caller lists them as binary.
"""

from __future__ import annotations

import codecs
import dataclasses
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import quote

from uploader.intents import Intent, TicketSink
from uploader.models import Ticket

__all__ = [
    "MASK",
    "FileRedaction",
    "RedactingFilter",
    "Redactor",
    "install_log_redaction",
    "secret_key",
]

MASK = "***"
PEM_MASK = "[private key redacted]"
#: literals shorter than this are ignored (masking "12" everywhere would wreck every log)
MIN_LITERAL = 4
#: literals shorter than this match only as a whole word, not inside longer text
WORD_LITERAL = 8
SNIFF_BYTES = 8192
#: a text file is read in blocks of about this many bytes (whole lines), each tested at once
BLOCK_BYTES = 256 * 1024
#: a span of this many lines or fewer that may hold a secret is masked line by line
FEW_LINES = 8

_KEYWORDS = (
    r"password|passwd|passphrase|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|secret[_-]?key"
    r"|auth[_-]?key|authkey|priv[_-]?key|privkey|private[_-]?key|community|credentials?"
    r"|session[_-]?id|sessionid|auth[_-]?pass|priv[_-]?pass"
)
_KEY = rf"(?<![A-Za-z0-9_.\-])(?P<key>[A-Za-z0-9_.\-\[\]]*?(?:{_KEYWORDS})|(?:[A-Za-z0-9_.\-]*[_.\-])?pass)"
_SECRET_KEY = re.compile(rf"(?i){_KEY}")
_QUOTED = r"(?P<q>[\"'])(?P<qv>(?:(?!(?P=q))[^\\\r\n]|\\.)*)(?P=q)"
_VALUE_STOP = r"\s,;&\"'<>(){}\[\]"
_NOT_SECRET = {"", MASK, "null", "none", "true", "false", "nil", "undefined"}
_COOKIE_ATTRS = {"path", "domain", "expires", "max-age", "samesite", "secure", "httponly", "priority"}
_SCHEMES = re.compile(r"(?i)^(basic|bearer|digest|negotiate|ntlm|token|apikey|hmac[\w-]*)(\s+)")

_PEM_BEGIN = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_ONE_LINE = re.compile(rf"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:{_PEM_END.pattern}|$)")
_PEM_BODY = re.compile(r"^\s*(?:[A-Za-z0-9+/=]{1,100}|Proc-Type:.*|DEK-Info:.*|Comment:.*)?\s*$")

#: a cheap test: a line that matches none of these words needs no built-in rule. It runs on the
#: casefolded line with a case-sensitive pattern: (?i) over this alternation cost ~60 µs a line,
#: this ~5 µs (redacting a 1,300-line log export spent most of its CPU here)
_TRIGGER = re.compile(
    rf"://|authoriz|cookie|snmp|communit|createuser|sink|bearer|eyJ|gh[pousr]_|xox[baprs]-|AKIA"
    rf"|sip|{_KEYWORDS}|pass".casefold()
)
assert "\\" not in _TRIGGER.pattern  # casefolding the pattern text is safe only without escapes


def _anchors(pattern: str) -> tuple[str, ...]:
    """For each alternative of ``pattern`` (plain text, ``[...]`` classes and ``?`` only), its
    longest run of plain text: every match of the alternative contains it. So a text without
    any of them holds no match, which ``in`` tells far faster than the regex."""
    found: list[str] = []
    for alt in pattern.split("|"):
        bare = re.sub(r"\[[^\]]*\]\??|.\?", " ", alt)  # what may be absent or vary becomes a gap
        if re.search(r"[][(){}*+.^$?]", bare):
            raise ValueError(f"cannot take a plain-text anchor from {alt!r}")
        found.append(max(bare.split(), key=len))
    # a text holding "password" holds "pass": keep only anchors that hold no other one
    return tuple(a for a in dict.fromkeys(found) if not any(b != a and b in a for b in found))


#: one plain-text piece of each trigger alternative (``in`` on a block before the regex)
_TRIGGER_ANCHORS = _anchors(_TRIGGER.pattern)


Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


@dataclass(slots=True)
class _PemState:
    """Whether a private key block is open: its body lines are dropped up to its end."""

    in_key: bool = False


#: what makes a site pattern's match depend on where a line starts or ends: such a pattern is
#: tried line by line only (lookarounds could see a neighbouring line, \A and \Z the block's ends)
_LINE_BOUND = re.compile(r"\(\?[=!<]|\\[AZ]")


def _block_patterns(extras: tuple[re.Pattern[str], ...]) -> tuple[re.Pattern[str] | None, ...]:
    """The site patterns as tests over many lines at once (``^`` and ``$`` at every line);
    None for a pattern that cannot be tested that way."""
    return tuple(
        None if _LINE_BOUND.search(p.pattern) else re.compile(p.pattern, p.flags | re.MULTILINE)
        for p in extras
    )


def _split_lines(text: str) -> list[str]:
    """``text`` cut after every newline, as a binary file's ``readlines`` cuts it."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def secret_key(name: str) -> bool:
    """Whether a setting named ``name`` holds a secret, by the key words ``key=value`` masking uses.

    ``sip.account1.password``, ``snmp.community``, ``api_key`` are; ``network.ntp_server`` is not.
    """
    return _SECRET_KEY.fullmatch(name) is not None


def _extra_match(m: re.Match[str]) -> str:
    """A configured pattern: its groups masked, or the whole match when it has none."""
    return _masked(m, *range(1, len(m.groups()) + 1)) if m.groups() else MASK


def _masked(match: re.Match[str], *groups: str | int) -> str:
    """The match's text with the spans of the named (or numbered) ``groups`` replaced by MASK."""
    spans = sorted(
        (match.span(g) for g in groups if match.group(g) not in (None, "") and match.group(g) != MASK),
        key=lambda s: s[0],
    )
    text, start = match.group(0), match.start(0)
    out, pos = [], 0
    for left, right in spans:
        out += [text[pos : left - start], MASK]
        pos = right - start
    out.append(text[pos:])
    return "".join(out)


def _keep_scheme(value: str) -> str:
    """``Bearer abc`` → ``Bearer ***``; ``Digest username="x", response="y"`` → ``Digest ***``."""
    found = _SCHEMES.match(value)
    if found:
        return found.group(0) + (MASK if value[found.end() :].strip() else "")
    return MASK if value.strip() else value


def _cookie_value(value: str) -> str:
    if "=" not in value:
        return MASK if value.strip() else value

    def pair(m: re.Match[str]) -> str:
        return m.group(0) if m.group(1).lower() in _COOKIE_ATTRS else f"{m.group(1)}={MASK}"

    return re.sub(r"([^\s=;,]+)=([^;\r\n]*?)(?=;|$)", pair, value)


def _header(names: str, mask_value: Callable[[str], str]) -> Rule:
    """A rule for a header-like key (``Name: value``, ``"Name": "value"``, ``name=value``)."""
    pattern = re.compile(
        rf"(?i)(?P<kq>[\"']?)\b(?P<key>{names})(?P=kq)(?P<sep>\s*[:=]\s*)(?:{_QUOTED}|(?P<v>[^\r\n]*))"
    )

    def replace(m: re.Match[str]) -> str:
        head = m.group("kq") + m.group("key") + m.group("kq") + m.group("sep")
        if m.group("q") is not None:
            return f"{head}{m.group('q')}{mask_value(m.group('qv'))}{m.group('q')}"
        return head + mask_value(m.group("v"))

    return pattern, replace


def _groups(pattern: str, *groups: str) -> Rule:
    return re.compile(pattern), lambda m: _masked(m, *groups)


def _key_value(m: re.Match[str]) -> str:
    value = m.group("qv") if m.group("q") is not None else m.group("v")
    if value is None or value.strip().lower() in _NOT_SECRET:
        return m.group(0)
    return _masked(m, "qv" if m.group("q") is not None else "v")


#: net-snmp command-line flags that carry secrets: -c community, -A / -X v3 pass phrases
_SNMP_FLAGS = re.compile(r"(?-i:(?<=\s)-(?P<f>[cAX]))(?P<sp>\s*)(?P<s>\"[^\"]*\"|'[^']*'|[^\s\"']+)")

_BUILTIN: tuple[Rule, ...] = (
    # scheme://user:password@host (also sip:user:password@host)
    _groups(r"(?i)\b(?:[a-z][a-z0-9+.\-]{1,15}://|sips?:)[^\s:/@?#\"'<>]*:(?P<s>[^\s@/?#\"'<>]+)@", "s"),
    _header(r"(?:proxy-)?authorization", _keep_scheme),
    _header(r"set-cookie|cookie", _cookie_value),
    # net-snmp commands: -c community, -A auth pass phrase, -X priv pass phrase
    (
        re.compile(
            r"(?i)\bsnmp(?:walk|bulkwalk|get|getnext|bulkget|set|table|trap|inform|delta|df|netstat"
            r"|status|test|usm|vacm)\b[^\r\n]*"
        ),
        lambda m: _SNMP_FLAGS.sub(lambda f: f"-{f.group('f')}{f.group('sp')}{MASK}", m.group(0)),
    ),
    _groups(r"(?i)\b(?:ro|rw)community6?\s+(?P<s>\S+)", "s"),
    _groups(r"(?i)\bcom2sec6?\s+(?:-Cn\s+\S+\s+)?\S+\s+\S+\s+(?P<s>\S+)", "s"),
    _groups(r"(?i)\b(?:trap|trap2|inform)sink\s+\S+\s+(?P<s>[^\s#]+)", "s"),
    _groups(r"(?i)\btrapcommunity\s+(?P<s>\S+)", "s"),
    _groups(
        r"(?i)\bcreateUser\s+(?:-e\s+\S+\s+)?\S+\s+(?:MD5|SHA\S*)\s+(?P<a>\"[^\"]*\"|\S+)"
        r"(?:\s+(?:DES|AES\S*)\s+(?P<p>\"[^\"]*\"|\S+))?",
        "a",
        "p",
    ),
    # "SIP password for account 1: x", "sip account 2 password changed to x"
    _groups(
        r"(?i)\bsip\b[^\r\n]{0,40}?\bpassword\b[^\r\n:=]{0,40}?(?:[:=]|\bto\b|\bis\b)"
        r"\s*(?P<s>[^\s,;\"']+)",
        "s",
    ),
    (
        re.compile(
            rf"(?i)(?P<kq>[\"']?){_KEY}(?P=kq)(?![A-Za-z0-9_.\-])\s*(?:=>|:=|[:=])\s*"
            rf"(?:{_QUOTED}|(?P<v>[^{_VALUE_STOP}]+))"
        ),
        _key_value,
    ),
    # <password>x</password>, also cut short before its closing tag
    _groups(rf"(?i)<(?P<tag>[A-Za-z0-9_.:\-]*?(?:{_KEYWORDS}))(?:\s[^>]*)?>(?P<s>[^<\r\n]*)", "s"),
    _groups(r"(?i)\bbearer\s+(?P<s>[A-Za-z0-9\-._~+/]{8,}=*)", "s"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), lambda m: MASK),
    (
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|xox[baprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})\b"),
        lambda m: MASK,
    ),
)


@dataclass(frozen=True, slots=True)
class FileRedaction:
    """What :meth:`Redactor.redact_file` did: the file's kind and how many lines it masked."""

    kind: Literal["text", "utf-16", "binary"]
    masked_lines: int
    size_bytes: int


class Redactor:
    """Masks secrets in text; immutable once built, safe to share between threads."""

    def __init__(self, literals: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
        """Mask the built-in forms, the ``patterns`` (regexes) and the ``literals`` (exact values).

        Raises:
            re.error: a pattern does not compile (the config schema checks this first).
        """
        self.literals = self._literal_forms(literals)
        self._extra = tuple(re.compile(p) for p in patterns)
        long_ = sorted((s for s in self.literals if len(s) >= WORD_LITERAL), key=len, reverse=True)
        short = sorted((s for s in self.literals if len(s) < WORD_LITERAL), key=len, reverse=True)
        alternatives = [re.escape(s) for s in long_]
        alternatives += [rf"(?<![A-Za-z0-9]){re.escape(s)}(?![A-Za-z0-9])" for s in short]
        self._literal_re = re.compile("|".join(alternatives)) if alternatives else None
        self._extra_block = _block_patterns(self._extra)

    @staticmethod
    def _literal_forms(literals: Iterable[str]) -> frozenset[str]:
        forms: set[str] = set()
        for raw in literals:
            for value in (raw, raw.strip()):
                if len(value) >= MIN_LITERAL and "\n" not in value:
                    forms |= {value, quote(value, safe=""), quote(value, safe="@:/")}
        return frozenset(forms)

    def with_literals(self, literals: Iterable[str]) -> Redactor:
        """A redactor that also masks ``literals``."""
        clone = Redactor(self.literals | set(literals))
        clone._extra, clone._extra_block = self._extra, self._extra_block
        return clone

    # --- text ---------------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        """Return ``text`` with every secret masked; lines without one are unchanged."""
        if not text:
            return text
        return "".join(out for _, out in self._pairs(text.splitlines(keepends=True)))

    def redact_line(self, line: str) -> str:
        """Mask one line (no private-key state carried to the next line)."""
        return "".join(out for _, out in self._pairs([line]))

    def _pairs(self, lines: Iterable[str], pem: _PemState | None = None) -> Iterator[tuple[str, str]]:
        """Yield (line, masked line) per line; a PEM private key over lines is dropped up to its end."""
        pem = pem if pem is not None else _PemState()
        for line in lines:
            yield line, self._masked_line(line, pem)

    def _masked_line(self, line: str, pem: _PemState) -> str:
        """Mask one line of a run of lines; ``pem`` says whether a key block is open before it."""
        if pem.in_key:
            body = line.rstrip("\r\n")
            end = _PEM_END.search(body)
            if end is not None:
                pem.in_key = False
                rest = body[end.end() :]
                return self._line(rest) + line[len(body) :] if rest.strip() else ""
            if _PEM_BODY.match(body):
                return ""  # key material: dropped
            pem.in_key = False  # a truncated key: what follows is ordinary text again
        begin = _PEM_BEGIN.search(line)
        if begin is not None and _PEM_END.search(line, begin.end()) is None:
            body = line.rstrip("\r\n")
            pem.in_key = True
            return self._line(body[: begin.start()]) + PEM_MASK + line[len(body) :]
        return self._line(line)

    def _clean(self, text: str) -> bool:
        """Whether no line of ``text`` can change: no private key marker, no trigger word, no known
        literal, no site pattern. One test over many lines at once; it errs only towards "not
        clean" (a pattern may match across lines), and then the lines are taken one by one."""
        if "PRIVATE KEY" in text or _TRIGGER.search(text.casefold()):
            return False
        if self._literal_re is not None and self._literal_re.search(text):
            return False
        return not any(extra is None or extra.search(text) for extra in self._extra_block)

    def _line(self, line: str) -> str:
        if "PRIVATE KEY-----" in line:
            line = _PEM_ONE_LINE.sub(PEM_MASK, line)
        if self._literal_re is not None:
            line = self._literal_re.sub(MASK, line)
        if _TRIGGER.search(line.casefold()):
            for pattern, replace in _BUILTIN:
                line = pattern.sub(replace, line)
        for extra in self._extra:
            line = extra.sub(_extra_match, line)
        return line

    # --- bytes and files ----------------------------------------------------------------------

    def redact_bytes(self, data: bytes) -> bytes:
        """Mask UTF-8 text (undecodable bytes kept as they are)."""
        return self.redact(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")

    def mask_literals_bytes(self, data: bytes) -> bytes:
        """Overwrite known literal secrets (UTF-8 and UTF-16LE forms) with ``*`` of the same length."""
        for secret in self.literals:
            for form in (secret.encode("utf-8"), secret.encode("utf-16-le")):
                data = data.replace(form, b"*" * len(form))
        return data

    def redact_file(self, src: Path, dst: Path) -> FileRedaction:
        """Write ``src`` masked to ``dst`` (they may be the same path); report the file's kind.

        Raises:
            OSError: ``src`` cannot be read or ``dst`` written.
        """
        with Path(src).open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
        kind = sniff(head)
        if kind == "text":
            tmp = Path(dst).with_name(Path(dst).name + ".redacting")
            masked = 0
            pem = _PemState()  # one pass: a key block may span any length
            with Path(src).open("rb") as fin, tmp.open("wb") as fout:
                while block := fin.readlines(BLOCK_BYTES):
                    # whole lines: a UTF-8 sequence never spans a newline, so one decode equals
                    # decoding line by line
                    text = b"".join(block).decode("utf-8", "surrogateescape")
                    masked += self._write_block(text, pem, fout)
            tmp.replace(dst)
            return FileRedaction("text", masked, Path(dst).stat().st_size)
        data = Path(src).read_bytes()
        if kind == "utf-16":
            done = self._redact_utf16(data)
            if done is not None:
                masked, new = done
                Path(dst).write_bytes(new)
                return FileRedaction("utf-16", masked, len(new))
        new = self.mask_literals_bytes(data)
        Path(dst).write_bytes(new)
        return FileRedaction("binary", int(new != data), len(new))

    def _write_block(self, text: str, pem: _PemState, fout: BinaryIO) -> int:
        """Write a block of whole lines masked; return how many lines changed.

        One pass of each test over the whole block finds the lines that may hold a secret (those
        a match touches); only they are masked one by one, the text between is written as it
        is. Where that cannot be told from one pass (inside or at a private key marker, a site
        pattern bound to line ends, casefolding that changes the text's length), the block's
        lines are halved instead (:meth:`_write_spans`).
        """
        suspects = None if pem.in_key else self._suspect_lines(text)
        if suspects is None:
            lines = _split_lines(text)
            return self._write_spans(lines, 0, len(lines), pem, fout)
        changed, done = 0, 0
        for start, end in suspects:
            fout.write(text[done:start].encode("utf-8", "surrogateescape"))
            for line in _split_lines(text[start:end]):
                changed += self._write_line(line, pem, fout)
            done = end
        fout.write(text[done:].encode("utf-8", "surrogateescape"))
        return changed

    def _suspect_lines(self, text: str) -> list[tuple[int, int]] | None:
        """The runs of whole lines of ``text`` that a trigger word, known literal or site pattern
        touches, as sorted, disjoint (start, end) offsets (every other line is left as it is by
        :meth:`_line`); None when one pass over the block cannot tell (see :meth:`_write_block`).

        A match found over the block touches every line that holds a match of its own (leftmost
        matches are reported, and one that overlaps another shares its line), so no line that
        needs masking is missed; a match across lines marks them all.
        """
        if "PRIVATE KEY" in text or any(extra is None for extra in self._extra_block):
            return None
        folded = text.casefold()
        if len(folded) != len(text):  # ß → ss and the like: positions would not map back
            return None
        spans: list[tuple[int, int]] = []
        if any(anchor in folded for anchor in _TRIGGER_ANCHORS):
            spans += [m.span() for m in _TRIGGER.finditer(folded)]
        if self._literal_re is not None:
            spans += [m.span() for m in self._literal_re.finditer(text)]
        for extra in self._extra_block:
            assert extra is not None  # checked above
            spans += [m.span() for m in extra.finditer(text)]
        runs: list[tuple[int, int]] = []
        for a, b in sorted(spans):
            start = text.rfind("\n", 0, a) + 1
            newline = text.find("\n", max(a, b - 1))
            end = len(text) if newline < 0 else newline + 1
            if runs and start <= runs[-1][1]:
                runs[-1] = (runs[-1][0], max(runs[-1][1], end))
            else:
                runs.append((start, end))
        return runs

    def _write_spans(self, lines: list[str], lo: int, hi: int, pem: _PemState, fout: BinaryIO) -> int:
        """Write ``lines[lo:hi]`` masked; return how many lines changed.

        A span that is clean as a whole is written as it is; any other is halved until the few
        lines that may hold a secret are masked one by one (a log export of ~1,000 lines with
        none spent ~10 ms in the per-line tests, the whole-span test takes well under 1 ms).
        """
        changed = 0
        while lo < hi and pem.in_key:  # inside a key block: line by line until it ends
            changed += self._write_line(lines[lo], pem, fout)
            lo += 1
        if lo >= hi:
            return changed
        text = "".join(lines[lo:hi])
        if self._clean(text):
            fout.write(text.encode("utf-8", "surrogateescape"))
            return changed
        if hi - lo <= FEW_LINES:
            for line in lines[lo:hi]:
                changed += self._write_line(line, pem, fout)
            return changed
        mid = (lo + hi) // 2
        changed += self._write_spans(lines, lo, mid, pem, fout)
        return changed + self._write_spans(lines, mid, hi, pem, fout)

    def _write_line(self, line: str, pem: _PemState, fout: BinaryIO) -> int:
        out = self._masked_line(line, pem)
        fout.write(out.encode("utf-8", "surrogateescape"))
        return int(out != line)

    def _redact_utf16(self, data: bytes) -> tuple[int, bytes] | None:
        """Mask UTF-16 text, keeping its byte order mark; None when it does not decode."""
        bom = data[:2] if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else b""
        encoding = "utf-16-be" if bom == codecs.BOM_UTF16_BE else "utf-16-le"
        try:
            lines = data[len(bom) :].decode(encoding).splitlines(keepends=True)
        except UnicodeDecodeError:
            return None
        pairs = list(self._pairs(lines))
        masked = sum(1 for line, out in pairs if line != out)
        return masked, (bom + "".join(out for _, out in pairs).encode(encoding) if masked else data)

    # --- tickets --------------------------------------------------------------------------------

    def ticket(self, ticket: Ticket) -> Ticket:
        """Return ``ticket`` with its title, body and every text field masked."""
        return dataclasses.replace(
            ticket,
            title=self.redact(ticket.title),
            body=self.redact(ticket.body),
            fields={k: self.value(v) for k, v in ticket.fields.items()},
        )

    def value(self, value: Any) -> Any:
        """Mask strings inside ``value`` (lists, tuples and dicts walked); other values unchanged."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.value(v) for v in value)
        return value


def sniff(head: bytes) -> Literal["text", "utf-16", "binary"]:
    """Tell UTF-16 text (BOM, or every other byte NUL) and binary (other NULs) from text."""
    if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return "utf-16"
    if b"\x00" not in head:
        return "text"
    odd = head[1::2]
    if len(head) >= 4 and odd.count(0) >= 0.9 * len(odd) and head[0::2].count(0) <= 0.1 * len(odd):
        return "utf-16"
    return "binary"


# --- log lines ------------------------------------------------------------------------------------


class RedactingFilter(logging.Filter):
    """A logging filter that masks the message, its arguments and any exception text.

    Python applies a logger's filters only to records logged on that very logger, not to those
    of its children; put this filter on handlers, or use :func:`install_log_redaction`.
    """

    def __init__(self, redactor: Redactor) -> None:
        """Mask with ``redactor``."""
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` masked; never drops it."""
        redact_record(record, self.redactor)
        return True


def redact_record(record: logging.LogRecord, redactor: Redactor) -> None:
    """Mask a log record in place: message (with its arguments), exception and stack text."""
    if getattr(record, "_hezo_redacted", False):
        return
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        message = str(record.msg)
    record.msg, record.args = redactor.redact(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redactor.redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redactor.redact(record.stack_info)
    record._hezo_redacted = True


def install_log_redaction(redactor: Redactor) -> Callable[[], None]:
    """Mask every log record of the process as it is created (all loggers, all handlers).

    Returns a function that restores the previous record factory.
    """
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redact_record(record, redactor)
        return record

    logging.setLogRecordFactory(factory)

    def restore() -> None:
        logging.setLogRecordFactory(previous)

    return restore


class RedactingSink:
    """A ticket sink that masks secrets in every intent's ticket and body before passing it on."""

    def __init__(self, sink: TicketSink, redactor: Redactor) -> None:
        self._sink = sink
        self._redactor = redactor

    def submit(self, intent: Intent) -> None:
        """Redact ``intent`` (title, body, fields, comment) and submit it to the wrapped sink."""
        ticket = self._redactor.ticket(intent.ticket) if intent.ticket is not None else None
        body = self._redactor.redact(intent.body) if intent.body else intent.body
        self._sink.submit(dataclasses.replace(intent, ticket=ticket, body=body))
