"""Turn pydantic validation errors into lines a person can act on: ``key.path: what to do``.

Each line names the key path, says what is wrong and, where it helps, what to write instead.
Values under ``credentials`` are never echoed: a password typed in the wrong place must not
reach a log, an exception or a ticket.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from config.schema import EMAIL_PATTERN, ENV_VAR_PATTERN, FIRMWARE_PATTERN, FieldProblem

_PATTERN_HINTS = {
    EMAIL_PATTERN: "not a valid e-mail address",
    ENV_VAR_PATTERN: (
        "must be the NAME of an environment variable (letters, digits and _, not starting with a "
        "digit), e.g. HEZO_A30_PASSWORD; the password itself goes into that variable"
    ),
    FIRMWARE_PATTERN: "must be a firmware version of four numbers, e.g. 133.15.0.42",
    "^/": "must be a path starting with /",
}
_SECRET_PARENTS = {"credentials"}
_COUNTERS = {
    "greater_than": ("gt", "must be greater than"),
    "greater_than_equal": ("ge", "must be at least"),
    "less_than": ("lt", "must be less than"),
    "less_than_equal": ("le", "must be at most"),
}
_NUMBERS = {
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
}
_DATES = ("date_parsing", "date_from_datetime_parsing", "date_type", "date_from_datetime_inexact")
_TIMES = ("time_parsing", "time_type")


def format_loc(loc: Iterable[int | str]) -> str:
    """Turn a pydantic location tuple into ``devices[3].host``."""
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def describe(value: Any) -> str:
    """Name a YAML value for a message: ``-5``, ``'de'``, ``a list``, ``nothing``."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return repr(text)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """Follow ``loc`` through ``model``; return the model holding the last key and its field."""
    current: type[BaseModel] | None = model
    field: FieldInfo | None = None
    skip_key = False
    for i, part in enumerate(loc):
        if isinstance(part, int) or part == "[key]":
            continue
        if skip_key:
            skip_key = False
            continue
        if current is None:
            return None, None
        field = current.model_fields.get(str(part))
        if i == len(loc) - 1:
            return current, field
        if field is None:
            return None, None
        skip_key = _is_dict(field.annotation)
        current = _inner_model(field.annotation)
    return current, None


def _is_dict(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) is dict


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """Find the BaseModel inside ``X``, ``X | None``, ``tuple[X, ...]`` or ``dict[str, X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """List the keys allowed beside the last element of ``loc``."""
    holder, _ = _walk(model, loc)
    return list(holder.model_fields) if holder is not None else []


def _choices(expected: str) -> str:
    """``"'pl' or 'en'"`` → ``pl, en``."""
    return ", ".join(part.strip().strip("'") for part in expected.replace(" or ", ", ").split(","))


def _unknown_key(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    key = str(loc[-1])
    if key == "password" and len(loc) > 1 and loc[-2] in _SECRET_PARENTS:
        return (
            "passwords are never written in the config; use password_env (the name of an "
            "environment variable) or password_file (a file holding only the password)"
        )
    allowed = allowed_keys(model, loc)
    if not allowed:
        return "unknown key"
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    guess = f", did you mean {close[0]!r}?" if close else ""
    return f"unknown key{guess} (allowed here: {', '.join(allowed)})"


def _missing(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    if loc and loc[-1] == "status":
        return "required key is missing: say where this comes from, status: documented or status: assumed"
    _, field = _walk(model, loc)
    purpose = f" ({field.description})" if field is not None and field.description else ""
    return f"required key is missing{purpose}"


def message(err: Any, model: type[BaseModel]) -> str:
    """Return the text after ``key.path:`` for one pydantic error dict."""
    kind = str(err["type"])
    loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    secret = any(part in _SECRET_PARENTS for part in loc)
    value = err.get("input")
    got = "" if secret else f", got {describe(value)}"
    if kind == "extra_forbidden":
        return _unknown_key(model, loc)
    if kind == "missing":
        return _missing(model, loc)
    if kind in _COUNTERS:
        bound_key, text = _COUNTERS[kind]
        bound = ctx.get(bound_key)
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"{text} {bound}{got}"
    if kind in _NUMBERS:
        return _NUMBERS[kind] + got
    if kind == "literal_error":
        choices = _choices(str(ctx.get("expected", "")))
        if loc and loc[-1] == "[key]":
            return f"not an allowed key here (allowed: {choices})"
        same = [c for c in choices.split(", ") if isinstance(value, str) and c.lower() == value.lower()]
        hint = f" (did you mean {same[0]!r}?)" if same and not secret else ""
        return f"must be one of {choices}{got}{hint}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        hint = _PATTERN_HINTS.get(pattern, f"does not have the expected form ({pattern})")
        return hint if pattern == ENV_VAR_PATTERN else hint + got
    if kind == "string_type":
        if value is None:
            return "has no value (write one, or remove the key to use the default)"
        if isinstance(value, int | float) and not isinstance(value, bool):
            return f"must be text{got}; put the value in quotes so YAML keeps it as text"
        return f"must be text{got}"
    if kind == "string_too_short":
        size = ctx.get("min_length", 1)
        return "must not be empty" if size == 1 else f"must be at least {size} characters long{got}"
    if kind in _DATES:
        return f"not a valid date{got}; write YYYY-MM-DD, e.g. 2025-01-31"
    if kind in _TIMES:
        return f"not a valid time{got}; write HH:MM on the 24-hour clock, e.g. 08:00 or 16:30"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping of keys (indented key: value lines){got}"
    if kind in ("tuple_type", "list_type"):
        return f"must be a list (one '- ' item per line){got}"
    if kind == "too_short":
        size = ctx.get("min_length", 1)
        return f"list at least {size} item{'s' if size != 1 else ''}"
    if kind == "path_type":
        return f"must be a file or folder path{got}"
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg.replace("Input should be", "should be")


def validation_lines(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    """Render every pydantic error as ``key.path: message``, in file order, without repeats."""
    lines: list[str] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        text = message(err, model)
        path = format_loc(loc)
        if isinstance(cause, FieldProblem):
            path = f"{path}.{cause.key}" if path else cause.key
            text = cause.message
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        line = f"{path or '(top level)'}: {text}"
        if line not in lines:
            lines.append(line)
    return lines
