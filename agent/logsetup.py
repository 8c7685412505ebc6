"""The agent's own log: text or JSON lines, to stderr and a file that rotates by size.

``hezo-agent run --log-format json`` writes one JSON object per line for log shippers
(Filebeat, Vector, Promtail, rsyslog's imfile): ``ts`` (ISO 8601, UTC), ``level``, ``logger``,
``msg`` and every ``key=value`` pair of the message as a field of its own, so
``event=device_down device=a30-01`` becomes ``"event": "device_down", "device": "a30-01"``.
The file rotates by size (:class:`logging.handlers.RotatingFileHandler`): ``agent.log_max_bytes``
and ``agent.log_backups`` in the config. Secrets are masked before any handler sees a record
(:func:`agent.redact.install_log_redaction` works on the record factory), so both formats are
covered.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TextIO

import platformdirs

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "LogFormat",
    "default_log_file",
    "parse_fields",
    "setup_logging",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
#: the ``LogRecord`` fields every record has: anything else came in through ``extra=``
_RECORD_KEYS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "", None, None))) | {
    "message",
    "asctime",
    "_hezo_redacted",
}
# key=value, key="quoted value" (backslash escapes allowed inside the quotes)
_PAIR = re.compile(r'(?<![^\s,;(\[])([A-Za-z_][A-Za-z0-9_.-]*)=("(?:[^"\\]|\\.)*"|[^\s,;]*)')
_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc", "stack"})


def default_log_file() -> Path:
    """The agent's log file in the platform's user log folder.

    Linux ``~/.local/state/hezo-agent/log/hezo-agent.log``, Windows
    ``%LOCALAPPDATA%\\hezo-agent\\Logs\\hezo-agent.log``.
    """
    return Path(platformdirs.user_log_dir("hezo-agent", appauthor=False)) / "hezo-agent.log"


def parse_fields(message: str) -> dict[str, str]:
    """Return the ``key=value`` pairs of a structured log message (first value of a key wins).

    Quoted values lose their quotes and escapes; a pair must start the message or follow a
    space, comma, semicolon or bracket, so ``url=http://x/?a=b`` yields only ``url``.
    """
    fields: dict[str, str] = {}
    for match in _PAIR.finditer(message):
        key, value = match.group(1), match.group(2)
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        fields.setdefault(key, value)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, then the message's fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a single line of JSON (never a line break inside)."""
        message = record.getMessage()
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": message,
        }
        for key, value in parse_fields(message).items():
            entry.setdefault(key if key not in _RESERVED else f"field_{key}", value)
        for key, value in vars(record).items():  # extra={...} given by the caller
            if key not in _RECORD_KEYS and not key.startswith("_"):
                entry.setdefault(key, value if isinstance(value, str | int | float | bool) else str(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _formatter(fmt: LogFormat) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def setup_logging(
    level: str = "INFO",
    *,
    fmt: LogFormat = "text",
    log_file: Path | None = None,
    max_bytes: int = 10_000_000,
    backups: int = 5,
    stream: TextIO | None = None,
    console: bool = True,
) -> list[logging.Handler]:
    """Replace the root logger's handlers: ``stream`` (default stderr) and, if given, a rotating file.

    ``console=False`` leaves the stream out (a Windows service has no stderr). ``log_file``'s
    folder is created. Returns the handlers installed (tests close them).

    Raises:
        ValueError: unknown ``level`` or ``fmt``, or a size/count out of range.
        OSError: the log folder or file cannot be created.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    if max_bytes < 1024 or backups < 1:
        raise ValueError("need max_bytes >= 1024 and backups >= 1")
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)] if console else []
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=False
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler.setFormatter(_formatter(fmt))
        root.addHandler(handler)
    root.setLevel(numeric)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return handlers
