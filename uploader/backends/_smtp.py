"""SMTP delivery for the ``email`` backend: connect, TLS, login, send, and one error mapping.

* ``security: starttls`` refuses to continue without STARTTLS (never sends in clear);
  ``ssl`` is implicit TLS (SMTPS); ``none`` is for a relay without login.
* A non-ASCII login (Polish passwords happen) is sent as AUTH PLAIN in UTF-8 (RFC 4616):
  smtplib's own ``login`` only encodes ASCII.
* Errors: 535/534/530/538 → :class:`BackendAuthError`; other 5xx → :class:`BackendRejected`;
  4xx, refused connections and timeouts → retryable :class:`BackendError`; an untrusted
  certificate or a missing STARTTLS → :class:`BackendAuthError` (a human must fix the setup).
  The password is never part of a message.
"""

from __future__ import annotations

import base64
import email.policy
import io
import smtplib
import socket
import ssl
from email.generator import BytesGenerator
from email.message import EmailMessage

from config.ticketing import EmailSettings
from uploader.base import BackendAuthError, BackendError, BackendRejected

_AUTH_CODES = {530, 534, 535, 538}


class SmtpSender:
    """Sends one message per connection with the configured security and login."""

    def __init__(self, settings: EmailSettings, password: str | None) -> None:
        self.settings = settings
        self._password = password

    def send(self, msg: EmailMessage) -> tuple[int, dict[str, str]]:
        """Deliver ``msg`` to every ``to``/``cc`` recipient; return its size and the refused recipients.

        Raises:
            BackendAuthError, BackendRejected, BackendError: see the module docstring.
        """
        s = self.settings
        raw = render(msg)
        try:
            with self._connect() as smtp:
                refused = smtp.sendmail(s.from_address, [*s.to, *s.cc], raw)
        except BackendError:
            raise
        except (smtplib.SMTPException, OSError) as err:
            raise _translate(err, s.host, s.effective_port) from None
        return len(raw), {address: f"{code} {_reply(reply)}" for address, (code, reply) in refused.items()}

    def _tls_context(self) -> ssl.SSLContext:
        s = self.settings
        ctx = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        if not s.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        helo = socket.gethostname() or "localhost"
        smtp: smtplib.SMTP
        if s.security == "ssl":
            smtp = smtplib.SMTP_SSL(
                s.host,
                s.effective_port,
                local_hostname=helo,
                timeout=s.timeout_s,
                context=self._tls_context(),
            )
        else:
            smtp = smtplib.SMTP(s.host, s.effective_port, local_hostname=helo, timeout=s.timeout_s)
        try:
            smtp.ehlo()
            if s.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise BackendAuthError(
                        f"SMTP {s.host}: the server offers no STARTTLS; not sending in clear"
                    )
                smtp.starttls(context=self._tls_context())
                smtp.ehlo()
            if s.username is not None:
                self._login(smtp, s.username, self._password or "")
        except BaseException:
            smtp.close()
            raise
        return smtp

    @staticmethod
    def _login(smtp: smtplib.SMTP, username: str, password: str) -> None:
        """Log in; smtplib only sends ASCII, so non-ASCII logins use AUTH PLAIN in UTF-8 (RFC 4616).

        Raises:
            smtplib.SMTPException: the server refused the login or offers no usable mechanism.
        """
        if (username + password).isascii():
            smtp.login(username, password)
            return
        if "plain" not in smtp.esmtp_features.get("auth", "").lower().split():
            raise smtplib.SMTPNotSupportedError("the server offers no AUTH PLAIN for a non-ASCII login")
        token = base64.b64encode(b"\0" + username.encode("utf-8") + b"\0" + password.encode("utf-8"))
        code, reply = smtp.docmd("AUTH", "PLAIN " + token.decode("ascii"))
        if code != 235:
            raise smtplib.SMTPAuthenticationError(code, reply)


def render(msg: EmailMessage) -> bytes:
    """Return the message as SMTP bytes (CRLF, ASCII headers).

    Headers are folded only past 998 characters: Python 3.11's folding can drop the space
    between two RFC 2047 encoded words (a Polish subject would read "priorytetuna"), and
    subjects are far shorter than that. Bodies are already encoded (quoted-printable/base64).
    """
    buf = io.BytesIO()
    BytesGenerator(buf, policy=email.policy.SMTP.clone(max_line_length=998)).flatten(msg)
    return buf.getvalue()


def _reply(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return " ".join(text.split())[:300]


def _translate(err: BaseException, host: str, port: int) -> BackendError:
    """Map an smtplib/socket failure to the backend error the dispatcher acts on."""
    where = f"SMTP {host}:{port}"
    if isinstance(err, smtplib.SMTPRecipientsRefused):
        codes = {address: code for address, (code, _) in err.recipients.items()}
        detail = ", ".join(f"{a} {c} {_reply(r)}" for a, (c, r) in err.recipients.items())
        if all(code >= 500 for code in codes.values()):
            return BackendRejected(f"{where}: every recipient refused: {detail}")
        return BackendError(f"{where}: recipients refused for now: {detail}")
    if isinstance(err, smtplib.SMTPResponseException):
        text = f"{where}: {err.smtp_code} {_reply(err.smtp_error)}"
        if isinstance(err, smtplib.SMTPAuthenticationError) or err.smtp_code in _AUTH_CODES:
            if err.smtp_code >= 500:
                return BackendAuthError(f"{text} (login rejected: check username and password)")
            return BackendError(f"{text} (login failed for now)")
        if 500 <= err.smtp_code < 600:
            return BackendRejected(text)
        return BackendError(text)
    if isinstance(err, smtplib.SMTPNotSupportedError):
        return BackendAuthError(f"{where}: {err} (the server offers no login here; check security and port)")
    if isinstance(err, ssl.SSLCertVerificationError):
        return BackendAuthError(f"{where}: TLS certificate not trusted: {err.verify_message} (set ca_file)")
    if isinstance(err, ConnectionRefusedError):
        return BackendError(f"{where}: connection refused")
    if isinstance(err, TimeoutError):
        return BackendError(f"{where}: timed out")
    return BackendError(f"{where}: {type(err).__name__}: {err}")
