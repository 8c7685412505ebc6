"""The audit of log pulls is append-only, in code and in the database, and shown by ``hezo-agent audit``."""

from __future__ import annotations

import ast
import inspect
import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

import agent.audit
from agent.audit import AuditLog
from agent.cli import main
from agent.redact import Redactor
from agent.store import SCHEMA_VERSION, Store

AT = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _record(audit: AuditLog, **overrides: object) -> int:
    values: dict[str, object] = {
        "at": AT, "channel": "ticket", "requester": "jan.kowalski@hezo.pl", "ref": "HEZO-42 comment 9",
        "device_id": "a30-zarzad", "outcome": "ok", "since": AT - timedelta(minutes=60), "until": AT,
        "sources": ("http", "blackbox"), "size_bytes": 48_211, "sha256": "ab" * 32, "bundle": "a30.tar.gz",
    }  # fmt: skip
    values.update(overrides)
    return audit.record(**values)  # type: ignore[arg-type]


def test_every_pull_is_kept_with_who_how_what_and_outcome(tmp_path: Path) -> None:
    audit = AuditLog.open(tmp_path)
    first = _record(audit)
    second = _record(audit, channel="api", requester="token:ops", ref="job-3", outcome="partial",
                     detail="ssh: unreachable", at=AT + timedelta(minutes=1))  # fmt: skip
    refused = {"since": None, "until": None, "sources": (), "size_bytes": None, "sha256": None}
    third = _record(audit, channel="cli", requester="admin@pc", device_id="mvc-b", outcome="rejected",
                    bundle=None, **refused)  # fmt: skip
    assert first < second < third
    newest, middle, oldest = audit.entries()
    assert (newest.channel, newest.device_id, newest.outcome, newest.since, newest.size_bytes) == (
        "cli",
        "mvc-b",
        "rejected",
        None,
        None,
    )
    assert (middle.requester, middle.ref, middle.detail) == ("token:ops", "job-3", "ssh: unreachable")
    assert oldest.to_json() == {
        "id": first, "at": "2026-01-05T09:00:00+00:00", "channel": "ticket",
        "requester": "jan.kowalski@hezo.pl", "ref": "HEZO-42 comment 9", "device": "a30-zarzad",
        "since": "2026-01-05T08:00:00+00:00",
        "until": "2026-01-05T09:00:00+00:00", "sources": ["http", "blackbox"], "size_bytes": 48_211,
        "sha256": "ab" * 32, "outcome": "ok", "detail": "", "bundle": "a30.tar.gz",
    }  # fmt: skip
    assert [e.id for e in audit.entries(device_id="a30-zarzad", limit=1)] == [second]
    audit.close()


def test_the_database_refuses_update_and_delete_whoever_asks(tmp_path: Path) -> None:
    audit = AuditLog.open(tmp_path)
    entry_id = _record(audit)
    audit.close()
    db = sqlite3.connect(tmp_path / "agent.sqlite")
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(
                "UPDATE audit SET outcome = 'ok', requester = 'someone else' WHERE id = ?", (entry_id,)
            )
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM audit")
        assert db.execute("SELECT requester FROM audit").fetchall() == [("jan.kowalski@hezo.pl",)]
    finally:
        db.close()


def test_the_code_has_no_path_that_changes_or_removes_an_entry() -> None:
    statements = [
        ast.unparse(node.args[0]).upper()
        for node in ast.walk(ast.parse(inspect.getsource(agent.audit)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "execute"
    ]
    assert any(s.startswith("'INSERT INTO AUDIT") or "INSERT INTO AUDIT" in s for s in statements)
    assert not [s for s in statements if re.search(r"\b(UPDATE|DELETE|DROP|REPLACE|ALTER)\b", s)]
    assert [name for name in vars(AuditLog) if not name.startswith("_")] == [
        "open",
        "record",
        "entries",
        "close",
    ]


def test_bad_values_are_refused_and_free_text_is_redacted(tmp_path: Path) -> None:
    audit = AuditLog.open(tmp_path, redactor=Redactor(literals=["Zq27devicePassword"]))
    with pytest.raises(ValueError, match="channel must be one of cli, api, ticket"):
        _record(audit, channel="email")
    with pytest.raises(ValueError, match="outcome must be one of"):
        _record(audit, outcome="maybe")
    _record(audit, detail="http: login as admin with Zq27devicePassword rejected; url https://a:b0b@x/")
    [entry] = audit.entries()
    assert entry.detail == "http: login as admin with *** rejected; url https://a:***@x/"
    audit.close()


def test_an_older_store_gets_the_audit_table_on_open(tmp_path: Path) -> None:
    Store(tmp_path / "agent.sqlite").close()
    db = sqlite3.connect(tmp_path / "agent.sqlite")
    db.executescript(
        "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete; DROP TABLE audit;"
        " PRAGMA user_version = 2;"
    )
    db.close()
    with pytest.raises(sqlite3.DatabaseError, match="no audit table"):
        AuditLog(tmp_path / "agent.sqlite")
    audit = AuditLog.open(tmp_path)
    _record(audit)
    assert len(audit.entries()) == 1
    audit.close()
    db = sqlite3.connect(tmp_path / "agent.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    db.close()


def test_audit_command_prints_json_and_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    config = tmp_path / "agent.yaml"
    config.write_text(
        yaml.safe_dump(
            {"agent": {"data_dir": str(tmp_path / "data")},
             "sites": [{"name": "hq", "address": "ul. Testowa 1", "contact":
                        {"name": "A N", "phone": "+48 600", "email": "a@example.com"}}],
             "devices": [{"id": "a30-zarzad", "room": "R", "site": "hq", "model": "A30", "host": "10.0.0.5"}]}
        )
    )  # fmt: skip
    audit = AuditLog.open(tmp_path / "data")
    _record(audit)
    _record(audit, device_id="other", channel="api", requester="token:ci")
    audit.close()
    assert main(["audit", "-c", str(config), "--json", "--device", "a30-zarzad"]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["device"] == "a30-zarzad" and entry["channel"] == "ticket" and entry["sha256"] == "ab" * 32
    assert main(["audit", "-c", str(config)]) == 0
    table = capsys.readouterr().out
    assert "token:ci" in table and "jan.kowalski@hezo.pl" in table and "hezo-agent audit" in table
