"""The ``webhook`` backend: every ticket change is a signed JSON event POSTed to one URL.

The event schema, headers and how to verify the signature are in ``docs/webhook.md``.

* Signature: ``X-Hezo-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`` (GitHub style)
  and ``X-Hezo-Signature-Timed: t=<unix>,sha256=<hex HMAC-SHA256(secret, "<t>." + raw body)>``
  (Stripe style, for replay protection); ``X-Hezo-Timestamp`` carries ``t``.
* Idempotency: ``Idempotency-Key`` (a quoted structured-field string, as in the IETF draft) is
  the event id. A retry of the same event sends the same key and a byte-identical body.
* ``find``: the receiver may answer ``ticket.opened`` with ``{"id": ..., "url": ...}``; that
  becomes the ticket ref. A local sent log (:mod:`uploader.sentlog`) remembers it.
* Status mapping: 2xx done; 401/403 → :class:`BackendAuthError`; 408, 409, 425, 429 and 5xx →
  retryable :class:`BackendError` with ``retry_after_s`` from ``Retry-After``; any other 3xx/4xx
  → :class:`BackendRejected` quoting the (bounded, redacted) answer.
* ``list_comments``: a webhook only sends; it returns ``[]``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from datetime import datetime
from email.utils import parsedate_to_datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
import urllib3

from agent.clock import Clock, SystemClock
from config.ticketing import WebhookSettings
from uploader.attachments import AttachmentPlan, plan_attachments
from uploader.base import BackendAuthError, BackendError, BackendRejected, TicketBackend
from uploader.models import Attachment, Comment, Priority, Ticket, TicketRef
from uploader.sentlog import SentLog, Thread, digest, hezo_id

log = logging.getLogger("hezo.backend.webhook")

SCHEMA = "hezo.ticket.v1"
_RETRY_STATUSES = {408, 409, 425, 429}
_QUOTE_CHARS = 300
_EVENTS = {
    "open": "ticket.opened",
    "comment": "ticket.commented",
    "attach": "ticket.attached",
    "set_priority": "ticket.priority_changed",
    "resolve": "ticket.resolved",
    "reopen": "ticket.reopened",
}


def _agent_version() -> str:
    try:
        return version("hezo-agent")
    except PackageNotFoundError:
        return "0"


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """Return the hex HMAC-SHA256 of ``body`` (or of ``"<timestamp>." + body``) under ``secret``."""
    message = body if timestamp is None else f"{timestamp}.".encode() + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Return the wait ``Retry-After`` asks for in seconds (delay-seconds or an HTTP date), if valid."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - now).total_seconds())


class WebhookBackend(TicketBackend):
    """Ticket events as signed JSON POSTs; see the module docstring and docs/webhook.md."""

    name = "webhook"

    def __init__(
        self,
        settings: WebhookSettings,
        secret: str,
        sent_log: SentLog,
        *,
        clock: Clock | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.settings = settings
        self._secret = secret
        self.sent_log = sent_log
        self._clock: Clock = clock or SystemClock()
        self._session = session or requests.Session()
        self._user_agent = f"hezo-agent/{_agent_version()}"

    @classmethod
    def from_settings(
        cls, settings: WebhookSettings, data_dir: Path, *, clock: Clock | None = None
    ) -> WebhookBackend:
        """Build the backend, reading the signing secret from its environment variable or file.

        Raises:
            ConfigError: the secret variable is unset or the file unreadable.
            BackendError: the sent log cannot be opened.
        """
        from config.loader import read_secret

        secret = read_secret(settings.secret_env, settings.secret_file, "ticketing.webhook.secret", "config")
        path = settings.sent_log or Path(data_dir) / "webhook" / "sent.sqlite"
        return cls(settings, secret, SentLog(path, clock=clock), clock=clock)

    # --- TicketBackend -------------------------------------------------------------------

    def find(self, key: str) -> TicketRef | None:
        """Return the ticket already opened for ``key`` (from the local sent log), if any."""
        thread = self.sent_log.thread_for_key(key)
        return TicketRef(self.name, thread.ref_id, thread.url) if thread else None

    def open(self, ticket: Ticket, attachments: Sequence[Attachment] = ()) -> TicketRef:
        """POST ``ticket.opened`` (once: a repeat returns the first ref).

        Raises:
            BackendAuthError: 401/403, or the receiver's TLS certificate is not trusted.
            BackendRejected: another 4xx (or a redirect), or an attachment file is missing.
            BackendError: unreachable, timed out, 408/409/425/429/5xx (``retry_after_s`` set when given).
        """
        known = self.find(ticket.key)
        if known is not None:
            return known
        thread_id = hezo_id(ticket.key)
        language = "pl" if ticket.fields.get("language") == "pl" else "en"
        plan = self._plan(attachments, language)
        event_id = f"{thread_id.lower()}.open"
        payload = {
            "schema": SCHEMA,
            "event": _EVENTS["open"],
            "event_id": event_id,
            "ticket": {
                "hezo_id": thread_id,
                "key": ticket.key,
                "ref": None,
                "url": None,
                "title": ticket.title,
                "priority": str(ticket.priority),
                "language": language,
                "body": plan.append_to(ticket.body),
                "fields": ticket.fields,
            },
            "attachments": _encode(plan),
            "attachment_notes": list(plan.notes),
        }
        answer = self._post(_EVENTS["open"], event_id, payload)
        ref_id, url = thread_id, None
        if isinstance(answer, dict) and answer.get("id") not in (None, ""):
            ref_id = str(answer["id"])
            url = str(answer["url"]) if answer.get("url") else None
        thread = Thread(thread_id, ticket.key, ref_id, url, ticket.title, language, str(ticket.priority))
        self.sent_log.record_open(thread, event_id, digest("open", ticket.key))
        log.info("event=webhook.opened ticket=%s ref=%s", thread_id, ref_id)
        return TicketRef(self.name, ref_id, url)

    def comment(self, ref: TicketRef, body: str) -> None:
        """POST ``ticket.commented``.

        Raises:
            BackendAuthError, BackendRejected, BackendError: as for :meth:`open`.
        """
        self._follow_up(ref, "comment", body)

    def attach(self, ref: TicketRef, attachment: Attachment) -> None:
        """POST ``ticket.attached`` with the file inline (base64), split or trimmed to the limits.

        Raises:
            BackendAuthError, BackendRejected, BackendError: as for :meth:`open`.
        """
        self._follow_up(ref, "attach", "", attachments=(attachment,))

    def set_priority(self, ref: TicketRef, priority: Priority, body: str) -> None:
        """POST ``ticket.priority_changed``.

        Raises:
            BackendAuthError, BackendRejected, BackendError: as for :meth:`open`.
        """
        self._follow_up(ref, "set_priority", body, priority=priority)

    def resolve(self, ref: TicketRef, body: str) -> None:
        """POST ``ticket.resolved``.

        Raises:
            BackendAuthError, BackendRejected, BackendError: as for :meth:`open`.
        """
        self._follow_up(ref, "resolve", body)

    def reopen(self, ref: TicketRef, body: str) -> None:
        """POST ``ticket.reopened``.

        Raises:
            BackendAuthError, BackendRejected, BackendError: as for :meth:`open`.
        """
        self._follow_up(ref, "reopen", body)

    def list_comments(self, ref: TicketRef) -> list[Comment]:
        """Return ``[]``: a webhook only sends events, it cannot read the helpdesk's comments."""
        return []

    def close(self) -> None:
        """Close the HTTP session and the sent log."""
        self._session.close()
        self.sent_log.close()

    # --- events --------------------------------------------------------------------------

    def _plan(self, attachments: Sequence[Attachment], language: str) -> AttachmentPlan:
        return plan_attachments(
            attachments,
            max_file_bytes=self.settings.max_attachment_bytes,
            max_total_bytes=self.settings.max_total_attachment_bytes,
            language=language,
        )

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
        thread_id = thread.thread_id if thread else ref.id
        language = thread.language if thread else "en"
        plan = self._plan(attachments, language)
        encoded = _encode(plan)
        message_digest = digest(kind, body, str(priority or ""), *(a["sha256"] for a in encoded))
        step = self.sent_log.next_follow_up(thread_id, kind, message_digest, f"{thread_id.lower()}.open")
        if step.sent_as is not None:
            log.info(
                "event=webhook.already_sent ticket=%s kind=%s event_id=%s", thread_id, kind, step.sent_as
            )
            return
        event_id = f"{thread_id.lower()}.{step.token}"
        payload: dict[str, Any] = {
            "schema": SCHEMA,
            "event": _EVENTS[kind],
            "event_id": event_id,
            "ticket": {
                "hezo_id": thread.thread_id if thread else None,
                "key": thread.key if thread else None,
                "ref": ref.id,
                "url": ref.url,
                "title": thread.title if thread else None,
                "priority": str(priority) if priority else (thread.priority if thread else None),
            },
            "comment": {"body": plan.append_to(body)} if body or plan.notes else None,
        }
        if kind == "set_priority":
            payload["priority"] = {"from": thread.priority if thread else None, "to": str(priority)}
        if kind == "attach":
            payload["attachments"] = encoded
            payload["attachment_notes"] = list(plan.notes)
        self._post(_EVENTS[kind], event_id, payload)
        self.sent_log.record(
            thread_id, kind, event_id, message_digest, priority=str(priority) if priority else None
        )
        log.info("event=webhook.sent ticket=%s kind=%s event_id=%s", thread_id, kind, event_id)

    # --- HTTP ----------------------------------------------------------------------------

    def _post(self, event: str, event_id: str, payload: dict[str, Any]) -> Any:
        """POST one event and return the receiver's JSON answer (``None`` if it sent none).

        Raises:
            BackendAuthError, BackendRejected, BackendError: see the module docstring.
        """
        s = self.settings
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")
        timestamp = int(self._clock.now().timestamp())
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Accept": "application/json",
            "User-Agent": self._user_agent,
            "X-Hezo-Event": event,
            "Idempotency-Key": f'"{event_id}"',
            "X-Hezo-Timestamp": str(timestamp),
            "X-Hezo-Signature": "sha256=" + sign(self._secret, body),
            "X-Hezo-Signature-Timed": f"t={timestamp},sha256={sign(self._secret, body, timestamp)}",
        }
        verify: bool | str = str(s.ca_file) if s.ca_file and s.tls_verify else s.tls_verify
        try:
            resp = self._session.post(
                s.url,
                data=body,
                headers=headers,
                timeout=(s.connect_timeout_s, s.read_timeout_s),
                stream=True,
                allow_redirects=False,
                verify=verify,
            )
        except requests.exceptions.SSLError as err:
            if "CERTIFICATE_VERIFY_FAILED" in str(err):
                raise BackendAuthError(
                    f"webhook {s.url}: TLS certificate not trusted (set ca_file)"
                ) from None
            raise BackendError(f"webhook {s.url}: TLS failed: {type(err).__name__}") from None
        except requests.exceptions.Timeout:
            raise BackendError(f"webhook {s.url}: timed out") from None
        except requests.exceptions.ConnectionError:
            raise BackendError(f"webhook {s.url}: connection failed (refused or unreachable)") from None
        except requests.RequestException as err:
            raise BackendError(f"webhook {s.url}: {type(err).__name__}") from None
        try:
            raw = resp.raw.read(s.max_response_bytes + 1, decode_content=True) or b""
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as err:
            raise BackendError(
                f"webhook {s.url}: answer {resp.status_code} unreadable: {type(err).__name__}"
            ) from None
        finally:
            resp.close()
        self._check(resp, raw[: s.max_response_bytes], event, event_id)
        if len(raw) > s.max_response_bytes or "json" not in resp.headers.get("Content-Type", ""):
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None

    def _check(self, resp: requests.Response, raw: bytes, event: str, event_id: str) -> None:
        """Map the status code to done or to the error the dispatcher acts on."""
        status = resp.status_code
        if 200 <= status < 300:
            return
        where = f"webhook {self.settings.url}: {event} {event_id} answered {status}"
        quote = self._quote(raw)
        if status in (401, 403):
            raise BackendAuthError(f"{where} (signature or credentials rejected): {quote}")
        if status in _RETRY_STATUSES or 500 <= status < 600:
            wait = parse_retry_after(resp.headers.get("Retry-After"), self._clock.now())
            raise BackendError(f"{where}: {quote}", retry_after_s=wait)
        if 300 <= status < 400:
            target = resp.headers.get("Location", "?")
            raise BackendRejected(
                f"{where} redirecting to {target}; set ticketing.webhook.url to the final URL"
            )
        if 400 <= status < 500:
            raise BackendRejected(f"{where}: {quote}")
        raise BackendError(f"{where}: {quote}")

    def _quote(self, raw: bytes) -> str:
        """Return the start of the receiver's answer, one line, without our secret."""
        text = " ".join(raw.decode("utf-8", "replace").split())
        if self._secret:  # as sent, and as a receiver may echo it: JSON-escaped or URL-encoded
            for form in {self._secret, json.dumps(self._secret)[1:-1], quote(self._secret, safe="")}:
                text = text.replace(form, "***")
        return (text[:_QUOTE_CHARS] + "…") if len(text) > _QUOTE_CHARS else (text or "(empty answer)")


def _encode(plan: AttachmentPlan) -> list[dict[str, Any]]:
    """Return the plan's pieces as the payload's ``attachments`` items (base64 inline)."""
    items = []
    for piece in plan.pieces:
        data = piece.read()
        items.append(
            {
                "name": piece.name,
                "source_name": piece.source_name,
                "part": piece.part,
                "parts": piece.parts,
                "offset": piece.offset,
                "content_type": piece.content_type,
                "size_bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "encoding": "base64",
                "data": base64.b64encode(data).decode("ascii"),
            }
        )
    return items
