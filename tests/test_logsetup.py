"""The agent's own log: JSON lines with the message's key=value fields, and a file rotating by size."""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import _run_logging, build_parser
from agent.init import InitValues, complete_values, render_config
from agent.logsetup import JsonFormatter, default_log_file, parse_fields, setup_logging
from config.loader import ConfigError, load_config


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("hezo.agent", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_key_value_pairs_become_fields() -> None:
    assert parse_fields('event=device_down device=a30-01 reason="connection refused" latency_ms=12.5') == {
        "event": "device_down", "device": "a30-01", "reason": "connection refused", "latency_ms": "12.5",
    }  # fmt: skip
    assert parse_fields("fetch url=https://x/?a=b done") == {"url": "https://x/?a=b"}
    assert parse_fields('quoted note="say \\"hi\\"" n=1 n=2') == {"note": 'say "hi"', "n": "1"}
    assert parse_fields("no pairs here") == {}


def test_json_line_has_ts_level_logger_msg_and_fields() -> None:
    line = JsonFormatter().format(_record("event=%s device=%s msg=shadow", "device_down", "a30-01"))

    entry = json.loads(line)
    assert "\n" not in line
    assert entry["ts"].endswith("+00:00") and entry["ts"][:2] == "20"
    assert (entry["level"], entry["logger"]) == ("WARNING", "hezo.agent")
    assert entry["msg"] == "event=device_down device=a30-01 msg=shadow"
    assert (entry["event"], entry["device"], entry["field_msg"]) == ("device_down", "a30-01", "shadow")


def test_json_line_carries_the_exception_in_one_line() -> None:
    line = JsonFormatter().format(_record("event=crash", exc=True))
    entry = json.loads(line)
    assert "\n" not in line
    assert "RuntimeError: boom" in entry["exc"]


def test_file_rotates_by_size_and_keeps_the_configured_backups(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "hezo-agent.log"
    setup_logging("INFO", fmt="json", log_file=log_file, max_bytes=2048, backups=2, stream=io.StringIO())
    log = logging.getLogger("hezo.test")

    for n in range(200):
        log.info("event=tick n=%d padding=%s", n, "x" * 40)

    files = sorted(p.name for p in log_file.parent.iterdir())
    assert files == ["hezo-agent.log", "hezo-agent.log.1", "hezo-agent.log.2"]
    assert all(p.stat().st_size <= 2048 for p in log_file.parent.iterdir())
    last = [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines()]
    assert last[-1]["n"] == "199" and last[-1]["event"] == "tick"


def test_text_format_and_bad_settings() -> None:
    stream = io.StringIO()
    setup_logging("WARNING", fmt="text", stream=stream)
    logging.getLogger("hezo.test").info("event=hidden")
    logging.getLogger("hezo.test").warning("event=shown")
    assert stream.getvalue().rstrip().endswith("WARNING hezo.test event=shown")
    with pytest.raises(ValueError, match="log format"):
        setup_logging(fmt="xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log level"):
        setup_logging("LOUD")
    with pytest.raises(ValueError, match="backups >= 1"):
        setup_logging(backups=0)


def test_run_uses_the_log_file_flags_the_configs_rotation_and_masks_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "hezo.yaml"
    text = render_config(complete_values(InitValues(), None))
    cfg.write_text(text.replace("  language: pl", "  language: pl\n  log_max_bytes: 20000\n  log_backups: 3"))
    args = build_parser().parse_args(
        ["run", "-c", str(cfg), "--log-file", str(tmp_path / "agent.log"), "--log-format", "json"]
    )

    monkeypatch.setenv("HEZO_DEVICE_PASSWORD", "s3cret-Pa55")
    restore = _run_logging(args, load_config(cfg))
    try:
        logging.getLogger("hezo.test").warning("event=login_failed detail=%s", "password s3cret-Pa55 refused")
    finally:
        restore()

    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.handlers.RotatingFileHandler)]
    assert [(h.maxBytes, h.backupCount) for h in files] == [(20000, 3)]
    files[0].flush()
    lines = (tmp_path / "agent.log").read_text(encoding="utf-8").splitlines()
    entry = json.loads(lines[-1])
    assert (entry["level"], entry["logger"], entry["event"]) == ("WARNING", "hezo.test", "login_failed")
    assert "s3cret-Pa55" not in lines[-1]


def test_rotation_settings_are_validated_with_their_key_path(tmp_path: Path) -> None:
    cfg = tmp_path / "hezo.yaml"
    text = render_config(complete_values(InitValues(), None))
    cfg.write_text(text.replace("  language: pl", "  language: pl\n  log_backups: 0"))
    with pytest.raises(ConfigError, match=r"agent\.log_backups"):
        load_config(cfg)


def test_default_log_file_is_in_the_user_log_folder() -> None:
    path = default_log_file()
    assert path.name == "hezo-agent.log" and "hezo-agent" in path.parent.as_posix()
