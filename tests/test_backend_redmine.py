"""The Redmine backend against a real Redmine 5 (Debian package) started on 127.0.0.1.

One private Redmine instance serves the whole session (see ``tests/peers/redmine.py``); each
test uses its own ticket keys, so the tests do not depend on each other's issues.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from peers.redmine import Redmine

from config.schema import Ticketing
from config.ticketing import RedmineSettings
from uploader.backends._rest import key_tag
from uploader.backends.redmine import KEY_LABEL, RedmineBackend
from uploader.base import BackendAuthError, BackendRejected
from uploader.models import Attachment, Priority, Ticket, TicketRef
from uploader.registry import build_backend

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "example.yaml"
MiB = 1024 * 1024

Factory = Callable[..., RedmineBackend]


@pytest.fixture(scope="session")
def redmine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redmine]:
    """The real Redmine, started once per test session and stopped at its end."""
    with Redmine(tmp_path_factory.mktemp("redmine")) as peer:
        yield peer


@pytest.fixture
def make(redmine: Redmine, tmp_path: Path) -> Iterator[Factory]:
    """Build backends bound to the test Redmine; each gets ``tmp_path``'s journal unless told."""
    built: list[RedmineBackend] = []

    def build(token: str | None = None, journal: Path | None = None, **overrides: Any) -> RedmineBackend:
        fields: dict[str, Any] = {
            "url": redmine.url,
            "token_env": "HEZO_REDMINE_API_KEY",
            "project": redmine.project,
        }
        settings = RedmineSettings.model_validate(fields | overrides)
        backend = RedmineBackend(
            settings,
            token or redmine.api_key,
            journal_path=journal or tmp_path / "redmine" / "journal.sqlite",
        )
        built.append(backend)
        return backend

    yield build
    for backend in built:
        backend.close()


def _key() -> str:
    return f"Biuro Główne/a30-sala-{secrets.token_hex(4)}/offline"


def _ticket(
    key: str, priority: Priority = Priority.CRITICAL, body: str = "Stopped at 09:00.\nNo ping.\n"
) -> Ticket:
    return Ticket(
        key=key,
        title='[P1] A30 "Sala Zarząd" offline',
        body=body,
        priority=priority,
        fields={"serial": "803123", "language": "en"},
    )


def _file(folder: Path, name: str, size: int) -> tuple[Attachment, bytes]:
    data = os.urandom(size)
    path = folder / name
    path.write_bytes(data)
    return Attachment(name=name, path=path, content_type="application/octet-stream"), data


def _tagged(redmine: Redmine, key: str) -> list[int]:
    """Ids of every issue (any status) whose description carries the key's tag."""
    resp = redmine.get(
        "/issues.json", project_id=redmine.project, status_id="*", description=f"~{key_tag(key)}"
    )
    resp.raise_for_status()
    return [int(i["id"]) for i in resp.json()["issues"]]


# --- open, attachments ---------------------------------------------------------------------


def test_open_creates_the_issue_with_a_2_mb_attachment_that_downloads_byte_exact(
    redmine: Redmine, make: Factory, tmp_path: Path
) -> None:
    key = _key()
    att, data = _file(tmp_path, "blackbox.bin", 2 * MiB + 123)
    backend = make()
    ref = backend.open(_ticket(key), [att])

    issue = redmine.issue(ref.id, "attachments")
    assert ref == TicketRef("redmine", str(issue["id"]), f"{redmine.url}/issues/{issue['id']}")
    assert issue["subject"] == '[P1] A30 "Sala Zarząd" offline'
    assert issue["priority"]["name"] == "Immediate" and issue["tracker"]["name"] == "Support"
    assert issue["status"]["name"] == "New"
    assert issue["description"].startswith("Stopped at 09:00.")
    assert issue["description"].rstrip().endswith(f"{KEY_LABEL} {key_tag(key)}")
    [attached] = issue["attachments"]
    assert (attached["filename"], attached["filesize"]) == ("blackbox.bin", len(data))
    assert hashlib.sha256(redmine.download(attached["content_url"])).digest() == hashlib.sha256(data).digest()
    assert backend.has_attachment(ref, "blackbox.bin", hashlib.sha256(data).hexdigest(), len(data)) is True
    assert backend.has_attachment(ref, "blackbox.bin", "0" * 64, len(data)) is False


def test_a_file_over_the_limit_is_split_into_parts_and_the_issue_says_so(
    redmine: Redmine, make: Factory, tmp_path: Path
) -> None:
    att, data = _file(tmp_path, "capture.pcap", int(2.5 * MiB))
    backend = make(max_attachment_bytes=MiB)
    ref = backend.open(_ticket(_key(), Priority.LOW), [att])

    issue = redmine.issue(ref.id, "attachments")
    parts = sorted(issue["attachments"], key=lambda a: a["filename"])
    assert [a["filename"] for a in parts] == ["capture.pcap.001", "capture.pcap.002", "capture.pcap.003"]
    assert b"".join(redmine.download(a["content_url"]) for a in parts) == data
    assert "capture.pcap (2.5 MiB) is split into 3 parts" in issue["description"]
    assert issue["priority"]["name"] == "Low"
    sha = hashlib.sha256(data).hexdigest()
    assert backend.has_attachment(ref, "capture.pcap", sha, len(data)) is True
    assert backend.has_attachment(ref, "capture.pcap", "0" * 64, len(data)) is False


def test_attach_adds_a_file_with_a_note_and_has_attachment_finds_it(
    redmine: Redmine, make: Factory, tmp_path: Path
) -> None:
    backend = make()
    ref = backend.open(_ticket(_key(), Priority.MEDIUM))
    att, data = _file(tmp_path, "device.log", 4096)
    sha = hashlib.sha256(data).hexdigest()
    assert backend.has_attachment(ref, "device.log", sha, len(data)) is False

    backend.attach(ref, att)

    issue = redmine.issue(ref.id, "attachments,journals")
    assert [(a["filename"], a["filesize"]) for a in issue["attachments"]] == [("device.log", 4096)]
    # a private note and a change are two journals in Redmine: the note, and "file added"
    assert [j["notes"] for j in issue["journals"] if j["notes"]] == ["Attached: device.log"]
    assert backend.has_attachment(ref, "device.log", sha, len(data)) is True
    assert backend.has_attachment(ref, "other.log", sha, len(data)) is False


def test_redmine_refuses_a_file_over_its_own_size_limit_and_the_error_quotes_it(
    make: Factory, tmp_path: Path
) -> None:
    att, _ = _file(tmp_path, "huge.bin", 6 * MiB)  # Redmine's attachment_max_size: 5120 KB
    backend = make(max_attachment_bytes=8 * MiB)
    with pytest.raises(BackendRejected) as err:
        backend.open(_ticket(_key()), [att])
    assert "HTTP 422" in str(err.value) and "maximum allowed file size" in str(err.value)


# --- updates and comments ------------------------------------------------------------------


def test_comment_priority_resolve_reopen_and_list_comments(redmine: Redmine, make: Factory) -> None:
    backend = make()
    ref = backend.open(_ticket(_key(), Priority.MEDIUM))
    assert redmine.issue(ref.id)["priority"]["name"] == "Normal"

    backend.comment(ref, "Pierwszy komentarz: urządzenie nie odpowiada.")
    backend.set_priority(ref, Priority.CRITICAL, "Escalated: the whole room is down.")
    assert redmine.issue(ref.id)["priority"]["name"] == "Immediate"
    backend.resolve(ref, "Back online at 10:05.")
    assert redmine.issue(ref.id)["status"]["name"] == "Resolved"
    backend.resolve(ref, "Still online.")  # already resolved: only the note
    assert redmine.issue(ref.id)["status"]["name"] == "Resolved"
    backend.reopen(ref, "Offline again at 11:00.")
    assert redmine.issue(ref.id)["status"]["name"] == "In Progress"

    comments = backend.list_comments(ref)
    assert [c.body for c in comments] == [
        "Pierwszy komentarz: urządzenie nie odpowiada.",
        "Escalated: the whole room is down.",
        "Back online at 10:05.",
        "Still online.",
        "Offline again at 11:00.",
    ]
    assert {c.author for c in comments} == {"Redmine Admin"}
    assert len({c.id for c in comments}) == 5 and all(c.created_at.tzinfo for c in comments)
    notes = [j for j in redmine.issue(ref.id, "journals")["journals"] if j["notes"]]
    assert len(notes) == 5 and all(j["private_notes"] for j in notes)  # public_comments is false by default


def test_public_comments_are_public_notes(redmine: Redmine, make: Factory) -> None:
    backend = make(public_comments=True)
    ref = backend.open(_ticket(_key(), Priority.LOW))
    backend.comment(ref, "Visible to the customer.")
    [journal] = redmine.issue(ref.id, "journals")["journals"]
    assert journal["notes"] == "Visible to the customer." and journal["private_notes"] is False


def test_the_first_status_the_workflow_offers_is_used(redmine: Redmine, make: Factory) -> None:
    backend = make(resolve_statuses=["Done", "Closed"], reopen_statuses=["Reopened", "Feedback"])
    ref = backend.open(_ticket(_key(), Priority.LOW))
    backend.resolve(ref, "fixed")
    assert redmine.issue(ref.id)["status"]["name"] == "Closed"
    backend.reopen(ref, "offline again")
    assert redmine.issue(ref.id)["status"]["name"] == "Feedback"
    assert [c.body for c in backend.list_comments(ref)] == ["fixed", "offline again"]


def test_a_status_the_workflow_forbids_is_rejected_before_any_note_is_written(
    redmine: Redmine, make: Factory
) -> None:
    # The Reporter role's default workflow allows only -> Closed (and Resolved -> Feedback).
    reporter = make(token=redmine.reporter_key, resolve_statuses=["Resolved"])
    ref = reporter.open(_ticket(_key(), Priority.LOW))
    with pytest.raises(BackendRejected) as err:
        reporter.resolve(ref, "fixed")
    assert "'New'" in str(err.value) and "resolve_statuses" in str(err.value)
    assert redmine.issue(ref.id, "journals")["journals"] == []


def test_changes_redmine_drops_silently_are_rejected_and_leave_no_note(
    redmine: Redmine, make: Factory
) -> None:
    # A Reporter lacks "Edit issues": Redmine answers 204 to a status or priority change and
    # ignores it, although allowed_statuses offers Closed. Notes it may add.
    reporter = make(token=redmine.reporter_key)
    ref = reporter.open(_ticket(_key(), Priority.LOW))
    with pytest.raises(BackendRejected, match=r"kept status 'New'.*Edit issues"):
        reporter.resolve(ref, "fixed")
    with pytest.raises(BackendRejected, match=r"kept priority 'Low'.*priorities\.critical"):
        reporter.set_priority(ref, Priority.CRITICAL, "worse")
    issue = redmine.issue(ref.id, "journals")
    assert (issue["status"]["name"], issue["priority"]["name"], issue["journals"]) == ("New", "Low", [])

    reporter.comment(ref, "a note")
    [comment] = reporter.list_comments(ref)
    assert (comment.body, comment.author) == ("a note", "Hezo Reporter")


# --- find after a crash --------------------------------------------------------------------


class _Killed(BaseException):
    """The agent died right after Redmine answered, before the journal recorded the issue."""


@pytest.mark.parametrize("by_field", [False, True], ids=["description-tag", "custom-field"])
def test_after_a_crash_between_create_and_journal_find_returns_the_same_issue(
    redmine: Redmine, make: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by_field: bool
) -> None:
    options = {"key_field_id": redmine.key_field_id} if by_field else {}
    key, journal = _key(), tmp_path / "agent" / "journal.sqlite"
    first = make(journal=journal, **options)

    def die(*_args: object) -> None:
        raise _Killed

    monkeypatch.setattr(first.journal, "created", die)
    with pytest.raises(_Killed):
        first.open(_ticket(key))
    first.close()
    [created] = _tagged(redmine, key)

    restarted = make(journal=journal, **options)
    ref = restarted.find(key) or restarted.open(_ticket(key))  # what the outbox does

    assert ref.id == str(created)
    assert _tagged(redmine, key) == [created]
    assert restarted.find(_key()) is None
    if by_field:
        fields = redmine.issue(created)["custom_fields"]
        assert {"id": redmine.key_field_id, "value": key_tag(key)} in [
            {"id": f["id"], "value": f["value"]} for f in fields
        ]


def test_a_key_field_redmine_cannot_filter_on_is_rejected_not_mistaken(make: Factory) -> None:
    make().open(_ticket(_key()))  # the project is not empty
    with pytest.raises(BackendRejected, match="key_field_id"):
        make(key_field_id=999_999).find(_key())


# --- errors --------------------------------------------------------------------------------


def test_a_wrong_api_key_is_an_auth_error_everywhere_and_never_quoted(
    make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    ref = make().open(_ticket(_key(), Priority.LOW))
    wrong = secrets.token_hex(20)
    backend = make(token=wrong)
    caplog.set_level(logging.DEBUG)
    calls: list[Callable[[], object]] = [
        lambda: backend.find(_key()),
        lambda: backend.open(_ticket(_key())),
        lambda: backend.comment(ref, "hello"),
        lambda: backend.list_comments(ref),
    ]
    for call in calls:
        with pytest.raises(BackendAuthError) as err:
            call()
        assert "HTTP 401" in str(err.value) and wrong not in str(err.value)
    assert wrong not in caplog.text


def test_an_unknown_project_is_rejected_with_redmines_own_error_text(make: Factory) -> None:
    backend = make(project="no-such-project")
    with pytest.raises(BackendRejected) as err:
        backend.open(_ticket(_key()))
    assert "HTTP 422" in str(err.value) and "Project cannot be blank" in str(err.value)
    with pytest.raises(BackendRejected, match="HTTP 404"):
        backend.find(_key())


def test_an_unknown_priority_name_is_rejected_naming_the_instances_priorities(make: Factory) -> None:
    backend = make(priorities={"critical": "Blocker"})
    with pytest.raises(BackendRejected) as err:
        backend.open(_ticket(_key()))
    message = str(err.value)
    assert "'Blocker'" in message and "Immediate" in message and "priorities.critical" in message


def test_a_missing_issue_is_rejected(make: Factory) -> None:
    with pytest.raises(BackendRejected, match="HTTP 404"):
        make().list_comments(TicketRef("redmine", "987654"))


# --- configuration -------------------------------------------------------------------------


def test_the_commented_example_block_is_a_valid_redmine_section() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    block = re.search(r"^  # redmine:.*?\n((?:  #  .*\n)+)", text, re.M)
    assert block is not None
    section = yaml.safe_load("\n".join(line[5:] for line in block.group(1).splitlines()))
    settings = RedmineSettings.model_validate(section)
    assert settings.priorities.critical == "Immediate" and settings.reopen_statuses[0] == "In Progress"
    assert settings.key_field_id == 7 and settings.max_attachment_bytes == 5 * MiB


def test_the_registry_builds_the_backend_with_the_key_from_the_environment(
    redmine: Redmine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEZO_REDMINE_API_KEY", redmine.api_key)
    ticketing = Ticketing.model_validate(
        {
            "backend": "redmine",
            "redmine": {"url": redmine.url, "token_env": "HEZO_REDMINE_API_KEY", "project": redmine.project},
        }
    )
    backend = build_backend(ticketing, tmp_path)
    try:
        assert isinstance(backend, RedmineBackend)
        ref = backend.open(_ticket(_key(), Priority.LOW))
        assert redmine.issue(ref.id)["project"]["name"] == f"HEZO {redmine.project}"
        assert (tmp_path / "redmine" / "journal.sqlite").exists()
    finally:
        backend.close()


def test_a_redmine_section_is_required_when_chosen() -> None:
    with pytest.raises(ValueError, match=r"ticketing\.redmine"):
        Ticketing.model_validate({"backend": "redmine"})
