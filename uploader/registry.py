"""One visible table of ticket backends: configured name → factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from config.schema import Ticketing
from uploader.backends.email import EmailBackend
from uploader.backends.freshdesk import FreshdeskBackend
from uploader.backends.jira import JiraBackend
from uploader.backends.local import LocalBackend
from uploader.backends.redmine import RedmineBackend
from uploader.backends.servicenow import ServiceNowBackend
from uploader.backends.webhook import WebhookBackend
from uploader.backends.zendesk import ZendeskBackend
from uploader.base import TicketBackend

BackendFactory = Callable[[Ticketing, Path], TicketBackend]


def _local(ticketing: Ticketing, data_dir: Path) -> TicketBackend:
    return LocalBackend(ticketing.local.path or Path(data_dir) / "tickets")


def _email(ticketing: Ticketing, data_dir: Path) -> TicketBackend:
    if ticketing.email is None:
        raise ValueError("ticketing.email: required when backend is email")
    return EmailBackend.from_settings(ticketing.email, Path(data_dir))


def _webhook(ticketing: Ticketing, data_dir: Path) -> TicketBackend:
    if ticketing.webhook is None:
        raise ValueError("ticketing.webhook: required when backend is webhook")
    return WebhookBackend.from_settings(ticketing.webhook, Path(data_dir))


def _jira(ticketing: Ticketing, data_dir: Path) -> TicketBackend:
    if ticketing.jira is None:
        raise ValueError("ticketing.jira: required when backend is jira")
    return JiraBackend.from_settings(ticketing.jira, Path(data_dir))


def _zendesk(ticketing: Ticketing, data_dir: Path) -> TicketBackend:
    if ticketing.zendesk is None:
        raise ValueError("ticketing.zendesk: required when backend is zendesk")
    return ZendeskBackend.from_settings(ticketing.zendesk, Path(data_dir))


def _servicenow(ticketing: Ticketing, data_dir: Path) -> TicketBackend:
    if ticketing.servicenow is None:
        raise ValueError("ticketing.servicenow: required when backend is servicenow")
    return ServiceNowBackend.from_settings(ticketing.servicenow, Path(data_dir))


def _freshdesk(ticketing: Ticketing, data_dir: Path) -> TicketBackend:
    if ticketing.freshdesk is None:
        raise ValueError("ticketing.freshdesk: required when backend is freshdesk")
    return FreshdeskBackend.from_settings(ticketing.freshdesk, Path(data_dir))


def _redmine(ticketing: Ticketing, data_dir: Path) -> TicketBackend:
    if ticketing.redmine is None:
        raise ValueError("ticketing.redmine: required when backend is redmine")
    return RedmineBackend.from_settings(ticketing.redmine, Path(data_dir))


BACKENDS: dict[str, BackendFactory] = {
    "local": _local,
    "email": _email,
    "webhook": _webhook,
    "jira": _jira,
    "zendesk": _zendesk,
    "servicenow": _servicenow,
    "freshdesk": _freshdesk,
    "redmine": _redmine,
}


def build_backend(ticketing: Ticketing, data_dir: Path) -> TicketBackend:
    """Build the backend ``ticketing.backend`` names.

    Raises:
        ValueError: unknown backend name, listing the supported ones.
        ConfigError: a secret the backend needs (``*_env``/``*_file``) cannot be read.
        BackendError: the backend could not be set up (e.g. its store is unusable).
    """
    factory = BACKENDS.get(ticketing.backend)
    if factory is None:
        supported = ", ".join(sorted(BACKENDS))
        raise ValueError(f"unknown ticket backend {ticketing.backend!r} (supported: {supported})")
    return factory(ticketing, data_dir)
