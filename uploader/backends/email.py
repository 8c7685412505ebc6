"""The ``email`` backend: each ticket is one mail thread sent over SMTP to the helpdesk's mailbox.

* Transport: SMTP with STARTTLS (port 587) or implicit TLS (SMTPS, port 465), optionally a
  login; the password comes from an environment variable or a file and is never logged.
* Threading: the opening message's ``Message-ID`` is derived from the ticket key, so a resend
  after a crash is the same message to the receiver; every follow-up (comment, attachment,
  priority change, resolve, reopen) carries ``In-Reply-To`` and ``References`` and a subject
  tagged ``[HEZO-<id>] [<priority>]``.
* ``find``: a mailbox cannot be queried, so a local sent log (:mod:`uploader.sentlog`) answers.
  Email has no server-side idempotency beyond ``Message-ID``: a helpdesk that ignores it may
  show a message twice if the agent crashed between the server's "250 OK" and the log write.
* ``list_comments``: plain SMTP cannot read replies; it returns ``[]`` (IMAP is out of scope).
* Errors (mapped once, in :mod:`uploader.backends._smtp`): 535/534/530 → :class:`BackendAuthError`;
  other 5xx → :class:`BackendRejected`; 4xx, refused connections and timeouts → retryable
  :class:`BackendError`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from pathlib import Path

from agent.clock import Clock, SystemClock
from agent.ticket_words import PRIORITY_NAMES
from config.ticketing import EmailSettings
from uploader.attachments import AttachmentPlan, human_size, plan_attachments
from uploader.backends._smtp import SmtpSender
from uploader.base import TicketBackend
from uploader.models import Attachment, Comment, Priority, Ticket, TicketRef
from uploader.sentlog import SentLog, Thread, digest, hezo_id

log = logging.getLogger("hezo.backend.email")

_MAX_REFERENCES = 12
_X_PRIORITY = {
    Priority.CRITICAL: ("1 (Highest)", "high"),
    Priority.MEDIUM: ("3 (Normal)", "normal"),
    Priority.LOW: ("5 (Lowest)", "low"),
}
_KINDS = {
    "en": {
        "comment": "Comment",
        "attach": "Attachment",
        "set_priority": "Priority changed to {p}",
        "resolve": "Resolved",
        "reopen": "Reopened",
        "attached": "Attached: {name} ({size})",
    },
    "pl": {
        "comment": "Komentarz",
        "attach": "Załącznik",
        "set_priority": "Zmiana priorytetu na {p}",
        "resolve": "Rozwiązane",
        "reopen": "Ponownie otwarte",
        "attached": "Dołączono: {name} ({size})",
    },
}


def _language(ticket: Ticket) -> str:
    lang = ticket.fields.get("language")
    return lang if lang in _KINDS else "en"


def _core_title(title: str) -> str:
    """Return ``title`` without a leading ``[priority]`` tag (the subject adds the current one)."""
    names = {n.lower() for words in PRIORITY_NAMES.values() for n in words.values()}
    if title.startswith("["):
        tag, _, rest = title[1:].partition("]")
        if tag.strip().lower() in names:
            return rest.strip()
    return title


class EmailBackend(TicketBackend):
    """Tickets as mail threads; see the module docstring for threading and idempotency."""

    name = "email"

    def __init__(
        self,
        settings: EmailSettings,
        password: str | None,
        sent_log: SentLog,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self._smtp = SmtpSender(settings, password)
        self.sent_log = sent_log
        self._clock: Clock = clock or SystemClock()
        self.domain = settings.from_address.rpartition("@")[2].lower()

    @classmethod
    def from_settings(
        cls, settings: EmailSettings, data_dir: Path, *, clock: Clock | None = None
    ) -> EmailBackend:
        """Build the backend, reading the SMTP password from its environment variable or file.

        Raises:
            ConfigError: the password variable is unset or the file unreadable.
            BackendError: the sent log cannot be opened.
        """
        from config.loader import read_secret

        password = None
        if settings.username is not None:
            password = read_secret(
                settings.password_env, settings.password_file, "ticketing.email.password", "config"
            )
        path = settings.sent_log or Path(data_dir) / "email" / "sent.sqlite"
        return cls(settings, password, SentLog(path, clock=clock), clock=clock)

    # --- TicketBackend -------------------------------------------------------------------

    def find(self, key: str) -> TicketRef | None:
        """Return the thread already opened for ``key`` (from the local sent log), if any."""
        thread = self.sent_log.thread_for_key(key)
        return self._ref(thread.thread_id) if thread else None

    def open(self, ticket: Ticket, attachments: Sequence[Attachment] = ()) -> TicketRef:
        """Send the opening message of the ticket's thread (once: a repeat returns the first ref).

        Raises:
            BackendAuthError: login rejected, or the server cannot be trusted (TLS).
            BackendRejected: the server refused the message for good (5xx), or a file is missing.
            BackendError: the server is unreachable or answered 4xx (try again).
        """
        known = self.find(ticket.key)
        if known is not None:
            return known
        thread_id = hezo_id(ticket.key)
        language = _language(ticket)
        core = _core_title(ticket.title)
        message_id = self._message_id(thread_id, "open")
        plan = self._plan(attachments, language)
        msg = self._message(thread_id, ticket.priority, language, core, plan.append_to(ticket.body), plan)
        msg["Message-ID"] = message_id
        msg["X-Hezo-Event"] = "ticket.opened"
        self._send(msg, thread_id, "open")
        self.sent_log.record_open(
            Thread(
                thread_id, ticket.key, thread_id, self._url(thread_id), core, language, str(ticket.priority)
            ),
            message_id,
            digest("open", ticket.key),
        )
        return self._ref(thread_id)

    def comment(self, ref: TicketRef, body: str) -> None:
        """Send a comment as a reply in the ticket's thread.

        Raises:
            BackendAuthError, BackendRejected, BackendError: as for :meth:`open`.
        """
        self._follow_up(ref, "comment", body)

    def attach(self, ref: TicketRef, attachment: Attachment) -> None:
        """Send one more file as a reply in the ticket's thread.

        Raises:
            BackendAuthError, BackendRejected, BackendError: as for :meth:`open`.
        """
        self._follow_up(ref, "attach", "", attachments=(attachment,))

    def set_priority(self, ref: TicketRef, priority: Priority, body: str) -> None:
        """Announce the new priority in the thread (subject and ``X-Priority`` carry it).

        Raises:
            BackendAuthError, BackendRejected, BackendError: as for :meth:`open`.
        """
        self._follow_up(ref, "set_priority", body, priority=priority)

    def resolve(self, ref: TicketRef, body: str) -> None:
        """Send the closing message of the thread.

        Raises:
            BackendAuthError, BackendRejected, BackendError: as for :meth:`open`.
        """
        self._follow_up(ref, "resolve", body)

    def reopen(self, ref: TicketRef, body: str) -> None:
        """Send a "reopened" message in the thread.

        Raises:
            BackendAuthError, BackendRejected, BackendError: as for :meth:`open`.
        """
        self._follow_up(ref, "reopen", body)

    def list_comments(self, ref: TicketRef) -> list[Comment]:
        """Return ``[]``: plain SMTP only sends, it cannot read the helpdesk's replies."""
        return []

    def close(self) -> None:
        """Close the sent log."""
        self.sent_log.close()

    # --- messages ------------------------------------------------------------------------

    def _ref(self, thread_id: str) -> TicketRef:
        return TicketRef(backend=self.name, id=thread_id, url=self._url(thread_id))

    def _url(self, thread_id: str) -> str:
        """Return the RFC 2392 ``mid:`` URL of the thread's opening message."""
        return "mid:" + self._message_id(thread_id, "open")[1:-1]

    def _message_id(self, thread_id: str, token: str) -> str:
        return f"<{thread_id.lower()}.{token}@{self.domain}>"

    def _first_id(self, ref: TicketRef) -> str:
        if ref.url and ref.url.startswith("mid:"):
            return f"<{ref.url[4:]}>"
        return self._message_id(ref.id, "open")

    def _plan(self, attachments: Sequence[Attachment], language: str) -> AttachmentPlan:
        return plan_attachments(
            attachments,
            max_file_bytes=self.settings.max_attachment_bytes,
            max_total_bytes=self.settings.max_total_attachment_bytes,
            language=language,
        )

    def _message(
        self,
        thread_id: str,
        priority: Priority | None,
        language: str,
        subject: str,
        body: str,
        plan: AttachmentPlan,
    ) -> EmailMessage:
        """Build a message with the common headers; the caller adds the thread headers."""
        s = self.settings
        msg = EmailMessage()
        msg["From"] = formataddr((s.from_name, s.from_address))
        msg["To"] = ", ".join(s.to)
        if s.cc:
            msg["Cc"] = ", ".join(s.cc)
        tag = f"[{thread_id}]"
        if priority is not None:
            tag += f" [{PRIORITY_NAMES[language][priority]}]"
            x_priority, importance = _X_PRIORITY[priority]
            msg["X-Priority"] = x_priority
            msg["Importance"] = importance
            msg["X-Hezo-Priority"] = str(priority)
        msg["Subject"] = f"{tag} {subject}".strip()
        msg["Date"] = format_datetime(self._clock.now())
        msg["X-Hezo-Ticket"] = thread_id
        msg.set_content(body if body.endswith("\n") else body + "\n", charset="utf-8", cte="quoted-printable")
        for piece in plan.pieces:
            maintype, _, subtype = piece.content_type.partition("/")
            if not maintype or not subtype:
                maintype, subtype = "application", "octet-stream"
            data = piece.read()
            params = {"charset": "utf-8"} if maintype == "text" and _is_utf8(data) else None
            msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=piece.name, params=params)
        msg["Content-Language"] = language  # after the parts: set_content drops Content-* headers
        return msg

    def _follow_up(
        self,
        ref: TicketRef,
        kind: str,
        body: str,
        *,
        priority: Priority | None = None,
        attachments: Sequence[Attachment] = (),
    ) -> None:
        thread = self.sent_log.thread_for_ref(ref.id)
        language = thread.language if thread else "en"
        words = _KINDS[language]
        plan = self._plan(attachments, language)
        current = priority or (Priority(thread.priority) if thread else None)
        if kind == "attach" and plan.pieces:
            body = "\n".join(
                words["attached"].format(name=p.name, size=human_size(p.length)) for p in plan.pieces
            )
        elif not body.strip():
            body = words[kind].format(p=PRIORITY_NAMES[language][priority] if priority else "")
        content_hashes = [p.sha256() for p in plan.pieces]
        message_digest = digest(kind, body, str(priority or ""), *content_hashes)
        step = self.sent_log.next_follow_up(ref.id, kind, message_digest, self._first_id(ref))
        if step.sent_as is not None:
            log.info("event=email.already_sent ticket=%s kind=%s message_id=%s", ref.id, kind, step.sent_as)
            return
        label = words[kind].format(p=PRIORITY_NAMES[language][priority] if priority else "")
        subject = f"{label}: {thread.title}" if thread else label
        msg = self._message(ref.id, current, language, subject, plan.append_to(body), plan)
        msg.replace_header("Subject", "Re: " + str(msg["Subject"]))
        message_id = self._message_id(ref.id, step.token)
        msg["Message-ID"] = message_id
        if step.parent:
            msg["In-Reply-To"] = step.parent
        history = step.history
        if len(history) > _MAX_REFERENCES:
            history = (history[0], *history[-(_MAX_REFERENCES - 1) :])
        if history:
            msg["References"] = " ".join(history)
        msg["X-Hezo-Event"] = f"ticket.{_EVENTS[kind]}"
        self._send(msg, ref.id, kind)
        self.sent_log.record(
            ref.id, kind, message_id, message_digest, priority=str(priority) if priority else None
        )

    def _send(self, msg: EmailMessage, thread_id: str, kind: str) -> None:
        """Deliver ``msg``; log refused recipients (the others got it: no resend).

        Raises:
            BackendAuthError, BackendRejected, BackendError: see the module docstring.
        """
        size_bytes, refused = self._smtp.send(msg)
        for address, reply in refused.items():
            log.warning("event=email.recipient_refused ticket=%s to=%s reply=%s", thread_id, address, reply)
        log.info(
            "event=email.sent ticket=%s kind=%s message_id=%s size_bytes=%d",
            thread_id,
            kind,
            msg["Message-ID"],
            size_bytes,
        )


_EVENTS = {
    "comment": "commented",
    "attach": "attached",
    "set_priority": "priority_changed",
    "resolve": "resolved",
    "reopen": "reopened",
}


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
