"""Settings of the ticket backends other than ``local``: one model per helpdesk.

``config.schema.Ticketing`` holds one optional section per backend (``ticketing.email``,
``ticketing.webhook``, ...); the section of the backend named by ``ticketing.backend`` is
required. Secrets never live in the YAML: each one names an environment variable (``*_env``)
or a file holding only the secret (``*_file``), read by :func:`config.loader.read_secret`.
Relative paths in these sections are resolved beside the config file by
:func:`resolve_ticketing_paths`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator, model_validator

from config.base import ENV_VAR_PATTERN, Strict

MiB = 1024 * 1024
#: the same address pattern as ``config.schema.EMAIL_PATTERN`` (kept here to avoid an import cycle)
ADDRESS_PATTERN = r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$"
_ADDRESS = re.compile(ADDRESS_PATTERN)
SMTP_PORTS = {"starttls": 587, "ssl": 465, "none": 25}

M = TypeVar("M", bound=BaseModel)


def one_secret_source(env: str | None, file: Path | None, leaf: str, *, required: bool = True) -> None:
    """Check that at most one (exactly one when ``required``) of ``<leaf>_env``/``<leaf>_file`` is set.

    Raises:
        ValueError: both are given, or neither while ``required``.
    """
    if env is not None and file is not None:
        raise ValueError(f"give only one of {leaf}_env or {leaf}_file, not both")
    if required and env is None and file is None:
        raise ValueError(
            f"give {leaf}_env (the name of an environment variable) "
            f"or {leaf}_file (a file holding only the {leaf})"
        )


def _host(value: str) -> str:
    from config.schema import validate_host  # config.schema imports this module

    return validate_host(value)


class AttachmentLimits(Strict):
    """How much a backend may attach; see :func:`uploader.attachments.plan_attachments`.

    A file larger than ``max_attachment_bytes`` is split into numbered parts; when all files of
    one message or request exceed ``max_total_attachment_bytes``, the oldest are trimmed (text
    logs lose their oldest lines) or left out. The ticket text says what was done.
    """

    max_attachment_bytes: int = Field(default=7 * MiB, ge=1024, le=2048 * MiB)
    max_total_attachment_bytes: int = Field(default=7 * MiB, ge=1024, le=8192 * MiB)


class EmailSettings(AttachmentLimits):
    """The ``email`` backend: one mail thread per ticket, sent over SMTP with TLS and login."""

    model_config = Strict.model_config | {"hide_input_in_errors": True}

    host: str
    port: int | None = Field(default=None, ge=1, le=65535, description="default 587 / 465 / 25 by security")
    security: Literal["starttls", "ssl", "none"] = "starttls"
    tls_verify: bool = True
    ca_file: Path | None = Field(default=None, description="PEM file of the CA(s) to trust for the server")
    username: str | None = Field(default=None, min_length=1)
    password_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    password_file: Path | None = None
    from_address: str = Field(pattern=ADDRESS_PATTERN)
    from_name: str = "HEZO agent"
    to: tuple[str, ...] = Field(min_length=1)
    cc: tuple[str, ...] = ()
    timeout_s: float = Field(default=30.0, gt=0, le=300)
    sent_log: Path | None = Field(default=None, description="default <data_dir>/email/sent.sqlite")

    _host = field_validator("host")(classmethod(lambda cls, v: _host(v)))

    @field_validator("to", "cc")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, address in enumerate(value):
            if not _ADDRESS.match(address):
                raise ValueError(f"item {i + 1} ({address!r}) is not a valid e-mail address")
            if not address.isascii():
                raise ValueError(f"item {i + 1} ({address!r}): write the address in ASCII (punycode domain)")
        return value

    @field_validator("from_address")
    @classmethod
    def _ascii_sender(cls, value: str) -> str:
        if not value.isascii():
            raise ValueError(f"{value!r}: write the address in ASCII (punycode domain)")
        return value

    @model_validator(mode="after")
    def _login(self) -> EmailSettings:
        has_secret = self.password_env is not None or self.password_file is not None
        if self.username is None and has_secret:
            raise ValueError("password_env/password_file given without username; add username")
        if self.username is not None:
            one_secret_source(self.password_env, self.password_file, "password")
            if self.security == "none":
                raise ValueError(
                    "a login is never sent unencrypted: use security starttls or ssl, or drop username"
                )
        return self

    @property
    def effective_port(self) -> int:
        """The configured port, or the standard one for ``security``."""
        return self.port or SMTP_PORTS[self.security]


class WebhookSettings(AttachmentLimits):
    """The ``webhook`` backend: signed JSON events POSTed to one URL (schema in docs/webhook.md)."""

    model_config = Strict.model_config | {"hide_input_in_errors": True}

    url: str
    secret_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    secret_file: Path | None = None
    tls_verify: bool = True
    ca_file: Path | None = Field(default=None, description="PEM file of the CA(s) to trust for the receiver")
    connect_timeout_s: float = Field(default=10.0, gt=0, le=120)
    read_timeout_s: float = Field(default=30.0, gt=0, le=600)
    max_response_bytes: int = Field(default=65_536, ge=1024, le=16 * MiB)
    max_attachment_bytes: int = Field(default=5 * MiB, ge=1024, le=512 * MiB)
    max_total_attachment_bytes: int = Field(default=5 * MiB, ge=1024, le=512 * MiB)
    sent_log: Path | None = Field(default=None, description="default <data_dir>/webhook/sent.sqlite")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        if parts.username or parts.password:
            raise ValueError("must not contain a user or password; the receiver checks the signature instead")
        return value

    @model_validator(mode="after")
    def _secret(self) -> WebhookSettings:
        one_secret_source(self.secret_env, self.secret_file, "secret")
        return self


def resolve_ticketing_paths(ticketing: M, resolve: Callable[[Path | None], Path | None]) -> M:
    """Return ``ticketing`` with every ``Path`` setting of every backend section passed through ``resolve``.

    The loader uses it to read relative paths (``password_file``, ``ca_file``, ``sent_log``,
    ``local.path``...) beside the config file, for every backend without naming each key.
    """
    sections = {}
    for name, value in ticketing:
        if not isinstance(value, BaseModel):
            continue
        updates = {key: resolve(sub) for key, sub in value if isinstance(sub, Path)}
        if updates:
            sections[name] = value.model_copy(update=updates)
    return ticketing.model_copy(update=sections) if sections else ticketing


# --- REST helpdesks: Jira Service Management, Zendesk, ServiceNow, Freshdesk ---------------

MB = 1_000_000


def validate_helpdesk_url(value: str) -> str:
    """Accept ``https://host[:port][/path]`` (plain http only for a loopback test server).

    Raises:
        ValueError: with the message the user sees after the key path.
    """
    text = value.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be a web address such as https://example.atlassian.net")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("give only scheme, host and path (no ?query, #fragment or user@)")
    if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise ValueError("must use https:// (plain http is allowed only for 127.0.0.1 / localhost)")
    return text


class RestHelpdeskSettings(AttachmentLimits):
    """What every REST helpdesk needs: where it is, its API token, and how patient to be."""

    model_config = Strict.model_config | {"hide_input_in_errors": True}

    url: str
    token_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    token_file: Path | None = None
    timeout_s: float = Field(default=30.0, gt=0, le=300, description="per request (connect and read)")
    ca_file: Path | None = Field(default=None, description="PEM file of the CA(s) to trust for the helpdesk")
    public_comments: bool = Field(default=False, description="agent comments visible to the requester")

    _url = field_validator("url")(classmethod(lambda cls, v: validate_helpdesk_url(v)))

    @model_validator(mode="after")
    def _token(self) -> RestHelpdeskSettings:
        one_secret_source(self.token_env, self.token_file, "token")
        return self


class JiraPriorities(Strict):
    """Jira priority names per seed priority (``GET /rest/api/3/priority/search`` lists a site's)."""

    critical: str = Field(default="Highest", min_length=1)
    medium: str = Field(default="Medium", min_length=1)
    low: str = Field(default="Low", min_length=1)


class JiraSettings(RestHelpdeskSettings):
    """Jira Service Management Cloud: customer requests through the service desk API."""

    auth: Literal["basic", "bearer"] = "basic"
    email: str | None = Field(default=None, pattern=ADDRESS_PATTERN, description="the token's account")
    service_desk_id: str = Field(pattern=r"^\d+$")
    request_type_id: str = Field(pattern=r"^\d+$")
    raise_on_behalf_of: str | None = Field(default=None, description="accountId of the customer")
    priorities: JiraPriorities = JiraPriorities()
    priority_on_create: bool = Field(default=True, description="false: priority is set by an edit instead")
    fields: dict[str, str] = Field(
        default_factory=dict, description="ticket fact -> request field id, e.g. serial: customfield_10050"
    )
    resolve_transitions: tuple[str, ...] = ("Resolve this issue", "Resolve", "Resolved", "Done")
    reopen_transitions: tuple[str, ...] = ("Reopen", "Reopen issue", "Back to open", "Reopened")
    resolution: str | None = "Done"
    max_attachment_bytes: int = Field(default=100 * MB, ge=1024, le=2048 * MiB)
    max_total_attachment_bytes: int = Field(default=500 * MB, ge=1024, le=8192 * MiB)

    @model_validator(mode="after")
    def _email_for_basic(self) -> JiraSettings:
        if self.auth == "basic" and self.email is None:
            raise ValueError("give email (the Atlassian account of the API token) when auth is basic")
        return self


ZendeskPriority = Literal["urgent", "high", "normal", "low"]


class ZendeskPriorities(Strict):
    """Zendesk priority per seed priority."""

    critical: ZendeskPriority = "urgent"
    medium: ZendeskPriority = "normal"
    low: ZendeskPriority = "low"


class ZendeskSettings(RestHelpdeskSettings):
    """Zendesk Support: tickets with ``external_id``, uploads and comments."""

    auth: Literal["basic", "bearer"] = "basic"
    email: str | None = Field(default=None, pattern=ADDRESS_PATTERN, description="agent owning the token")
    priorities: ZendeskPriorities = ZendeskPriorities()
    tags: tuple[str, ...] = ("hezo",)
    custom_fields: dict[str, int] = Field(
        default_factory=dict, description="ticket fact -> ticket field id, e.g. serial: 360001234"
    )
    requester_email: str | None = Field(default=None, pattern=ADDRESS_PATTERN)
    requester_name: str | None = None
    max_attachment_bytes: int = Field(default=50 * MB, ge=1024, le=50 * MB)
    max_total_attachment_bytes: int = Field(default=250 * MB, ge=1024, le=8192 * MiB)

    @model_validator(mode="after")
    def _email_for_basic(self) -> ZendeskSettings:
        if self.auth == "basic" and self.email is None:
            raise ValueError("give email (the agent who owns the API token) when auth is basic")
        return self


class ImpactUrgency(Strict):
    """An incident's impact and urgency (1 high .. 3 low); ServiceNow derives the priority."""

    impact: int = Field(ge=1, le=3)
    urgency: int = Field(ge=1, le=3)


class ServiceNowPriorities(Strict):
    """Impact/urgency per seed priority (default lookup: 1/1 Critical, 2/2 Moderate, 3/3 Planning)."""

    critical: ImpactUrgency = ImpactUrgency(impact=1, urgency=1)
    medium: ImpactUrgency = ImpactUrgency(impact=2, urgency=2)
    low: ImpactUrgency = ImpactUrgency(impact=3, urgency=3)


class ServiceNowSettings(RestHelpdeskSettings):
    """ServiceNow: Table API incidents with ``correlation_id``, Attachment API, work notes."""

    auth: Literal["basic", "bearer", "apikey"] = "basic"
    username: str | None = Field(default=None, min_length=1, description="the integration user (basic)")
    priorities: ServiceNowPriorities = ServiceNowPriorities()
    caller_id: str | None = Field(default=None, description="sys_id of the sys_user reporting incidents")
    assignment_group: str | None = Field(default=None, description="sys_id of the assignment group")
    category: str | None = None
    fields: dict[str, str] = Field(
        default_factory=dict, description="ticket fact -> incident column, e.g. serial: u_serial"
    )
    close_code: str = Field(default="Solution provided", min_length=1)
    reopen_state: str = Field(default="2", pattern=r"^\d+$")
    max_attachment_bytes: int = Field(default=100 * MB, ge=1024, le=2048 * MiB)
    max_total_attachment_bytes: int = Field(default=500 * MB, ge=1024, le=8192 * MiB)

    @model_validator(mode="after")
    def _username_for_basic(self) -> ServiceNowSettings:
        if self.auth == "basic" and self.username is None:
            raise ValueError("give username (the integration user) when auth is basic")
        return self


class FreshdeskPriorities(Strict):
    """Freshdesk priority per seed priority: 1 Low, 2 Medium, 3 High, 4 Urgent."""

    critical: int = Field(default=4, ge=1, le=4)
    medium: int = Field(default=2, ge=1, le=4)
    low: int = Field(default=1, ge=1, le=4)


class FreshdeskSettings(RestHelpdeskSettings):
    """Freshdesk v2: tickets, notes and attachments; the API key is the Basic user."""

    requester_email: str = Field(pattern=ADDRESS_PATTERN, description="the tickets' requester (a contact)")
    priorities: FreshdeskPriorities = FreshdeskPriorities()
    tags: tuple[str, ...] = ("hezo",)
    custom_fields: dict[str, str] = Field(
        default_factory=dict, description="ticket fact -> custom field name, e.g. serial: cf_serial"
    )
    group_id: int | None = None
    max_attachment_bytes: int = Field(default=20 * MB, ge=1024, le=2048 * MiB)
    max_total_attachment_bytes: int = Field(default=20 * MB, ge=1024, le=8192 * MiB)


class RedminePriorities(Strict):
    """Redmine priority names per seed priority (``GET /enumerations/issue_priorities.json`` lists them)."""

    critical: str = Field(default="Immediate", min_length=1)
    medium: str = Field(default="Normal", min_length=1)
    low: str = Field(default="Low", min_length=1)


class RedmineSettings(RestHelpdeskSettings):
    """Redmine: issues in one project, uploads → tokens, journals (notes) and status changes.

    ``token_env``/``token_file`` hold the API key of the Redmine user the agent acts as
    (My account › API access key); an administrator must enable the REST API first.
    """

    project: str = Field(min_length=1, description="project identifier (or numeric id) for new issues")
    tracker: str | None = Field(default="Support", description="tracker name; null: the project's default")
    priorities: RedminePriorities = RedminePriorities()
    resolve_statuses: tuple[str, ...] = Field(
        default=("Resolved", "Closed"), min_length=1, description="first one the workflow allows is used"
    )
    reopen_statuses: tuple[str, ...] = Field(
        default=("In Progress", "New", "Feedback"), min_length=1, description="first one allowed is used"
    )
    key_field_id: int | None = Field(
        default=None, ge=1, description="id of a text custom field 'used as a filter' holding the hz-… key"
    )
    custom_fields: dict[str, int] = Field(
        default_factory=dict, description="ticket fact -> issue custom field id, e.g. serial: 3"
    )
    #: Redmine's own default ``attachment_max_size`` is 5120 KB
    max_attachment_bytes: int = Field(default=5 * MiB, ge=1024, le=2048 * MiB)
    max_total_attachment_bytes: int = Field(default=50 * MiB, ge=1024, le=8192 * MiB)
