"""``hezo-agent init``: write a starter config that validates, from flags or a few questions.

Nothing is asked when every value comes as a flag, or when stdin is not a terminal (an
installer script): missing site values then become clearly marked ``CHANGE ME`` placeholders
and a missing device list becomes one example device on a documentation address
(``192.0.2.10``, RFC 5737, never a real host). In a terminal the missing values are asked with
:mod:`rich.prompt`. Secrets are never written: each device names an environment variable
(``password_env``), with a comment saying where to set it. An existing file is only replaced
with ``--force``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Protocol

from config.loader import load_config
from config.schema import EMAIL_PATTERN, validate_host, validate_id

__all__ = [
    "DEFAULT_PASSWORD_ENV",
    "MODELS",
    "Asker",
    "DeviceEntry",
    "InitValues",
    "RichAsker",
    "complete_values",
    "parse_device_spec",
    "render_config",
    "write_config",
]

MODELS = ("A20", "A30", "MVC")
DEFAULT_PASSWORD_ENV = "HEZO_DEVICE_PASSWORD"
EXAMPLE_HOST = "192.0.2.10"  # RFC 5737 TEST-NET-1: documentation only, never a real device
MAX_PROMPTED_DEVICES = 500
MAX_TRIES = 5
PLACEHOLDER = {
    "site": "my-site",
    "address": "CHANGE ME: street, postcode, city",
    "contact_name": "CHANGE ME",
    "contact_phone": "+48 000 000 000",
    "contact_email": "it@example.com",
}


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    """One device line of the starter config."""

    id: str
    model: str
    host: str
    room: str
    placeholder: bool = False


@dataclass(frozen=True, slots=True)
class InitValues:
    """What the starter config is written from; ``placeholders`` names the values to change."""

    site: str | None = None
    address: str | None = None
    contact_name: str | None = None
    contact_phone: str | None = None
    contact_email: str | None = None
    devices: tuple[DeviceEntry, ...] = ()
    placeholders: frozenset[str] = field(default_factory=frozenset)


class Asker(Protocol):
    """How questions are asked (rich in a terminal; scripted answers in tests)."""

    def ask(self, question: str, default: str | None = None, choices: Sequence[str] | None = None) -> str:
        """Return the answer to ``question`` (``default`` when the answer is empty)."""
        ...

    def confirm(self, question: str, default: bool) -> bool:
        """Return a yes/no answer."""
        ...


class RichAsker:
    """Questions through :mod:`rich.prompt` (used only when stdin is a terminal)."""

    def ask(self, question: str, default: str | None = None, choices: Sequence[str] | None = None) -> str:
        """Ask with rich's :class:`~rich.prompt.Prompt`."""
        from rich.prompt import Prompt

        if default is None:
            return Prompt.ask(question, choices=list(choices) if choices else None)
        return Prompt.ask(question, default=default, choices=list(choices) if choices else None)

    def confirm(self, question: str, default: bool) -> bool:
        """Ask with rich's :class:`~rich.prompt.Confirm`."""
        from rich.prompt import Confirm

        return Confirm.ask(question, default=default)


# --- checking values --------------------------------------------------------------------------


def _check_text(min_len: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if len(value.strip()) < min_len:
            raise ValueError(f"give at least {min_len} characters")
        return value.strip()

    return check


def _check_email(value: str) -> str:
    if not re.match(EMAIL_PATTERN, value.strip()):
        raise ValueError("not an e-mail address")
    return value.strip()


def _check_model(value: str) -> str:
    model = value.strip().upper()
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}")
    return model


CHECKS: dict[str, Callable[[str], str]] = {
    "site": validate_id,
    "address": _check_text(5),
    "contact_name": _check_text(1),
    "contact_phone": _check_text(3),
    "contact_email": _check_email,
}
QUESTIONS = {
    "site": "Site name (letters, digits, '-', e.g. warszawa-hq)",
    "address": "Delivery address for replacements",
    "contact_name": "Site contact: name",
    "contact_phone": "Site contact: phone",
    "contact_email": "Site contact: e-mail",
}
FLAGS = {key: "--" + key.replace("_", "-") for key in CHECKS}


def parse_device_spec(text: str, default_room: str = "") -> DeviceEntry:
    """Parse ``ID,MODEL,HOST[,ROOM]`` (the ``--device`` flag).

    Raises:
        ValueError: wrong number of parts, or an invalid id, model or host.
    """
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (3, 4) or not all(parts):
        raise ValueError(f"--device {text!r}: give ID,MODEL,HOST or ID,MODEL,HOST,ROOM")
    try:
        dev_id, model, host = validate_id(parts[0]), _check_model(parts[1]), validate_host(parts[2])
    except ValueError as err:
        raise ValueError(f"--device {text!r}: {err}") from None
    room = parts[3] if len(parts) == 4 else (default_room or dev_id)
    return DeviceEntry(dev_id, model, host, room)


def _ask_valid(
    asker: Asker,
    question: str,
    check: Callable[[str], str],
    default: str | None = None,
    choices: Sequence[str] | None = None,
) -> str:
    """Ask until ``check`` accepts the answer (at most :data:`MAX_TRIES` times).

    Raises:
        ValueError: still invalid after the last try.
    """
    problem = ""
    for _ in range(MAX_TRIES):
        answer = asker.ask(question, default, choices)
        try:
            return check(answer)
        except ValueError as err:
            problem = str(err)
            print(f"  {problem}; try again")
    raise ValueError(f"{question}: {problem}")


def _ask_devices(asker: Asker) -> tuple[DeviceEntry, ...]:
    devices: list[DeviceEntry] = []
    print("Devices (hezo-agent discover NETWORK finds them); an empty id ends the list.")
    for n in range(1, MAX_PROMPTED_DEVICES + 1):
        dev_id = asker.ask(f"Device {n}: id (e.g. a30-sala-zarzad)", default="").strip()
        if not dev_id:
            break
        try:
            validate_id(dev_id)
        except ValueError as err:
            print(f"  {err}; try again")
            continue
        if any(d.id == dev_id for d in devices):
            print(f"  {dev_id} is already listed; try again")
            continue
        model = _ask_valid(asker, f"Device {n}: model", _check_model, choices=MODELS)
        host = _ask_valid(asker, f"Device {n}: IP address or host name", validate_host)
        room = _ask_valid(asker, f"Device {n}: room", _check_text(1), default=dev_id)
        devices.append(DeviceEntry(dev_id, model, host, room))
    return tuple(devices)


def complete_values(given: InitValues, asker: Asker | None) -> InitValues:
    """Fill what the flags left out: ask with ``asker``, or use placeholders when it is None.

    Raises:
        ValueError: a flag's value is invalid (the message names the flag), or an answer stayed
            invalid after :data:`MAX_TRIES` tries.
    """
    values: dict[str, str] = {}
    placeholders: set[str] = set()
    for key, check in CHECKS.items():
        value = getattr(given, key)
        if value is not None:
            try:
                values[key] = check(value)
            except ValueError as err:
                raise ValueError(f"{FLAGS[key]} {value!r}: {err}") from None
        elif asker is not None:
            default = PLACEHOLDER[key] if key == "site" else None
            values[key] = _ask_valid(asker, QUESTIONS[key], check, default=default)
        else:
            values[key] = PLACEHOLDER[key]
            if key != "site":
                placeholders.add(key)
    devices = given.devices
    if not devices and asker is not None:
        devices = _ask_devices(asker)
    if not devices:
        devices = (DeviceEntry("example-a30", "A30", EXAMPLE_HOST, "CHANGE ME", placeholder=True),)
        placeholders.add("devices")
    return InitValues(devices=devices, placeholders=frozenset(placeholders), **values)


# --- rendering --------------------------------------------------------------------------------


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value, ensure_ascii=False)


def _mark(values: InitValues, key: str) -> str:
    return "   # CHANGE ME" if key in values.placeholders else ""


def render_config(
    values: InitValues, password_env: str = DEFAULT_PASSWORD_ENV, today: date | None = None
) -> str:
    """Return the starter config's YAML text, commented; ``values`` must be complete."""
    assert values.site and values.address and values.contact_name
    assert values.contact_phone and values.contact_email
    when = (today or date.today()).isoformat()
    lines = [
        f"# hezo-agent configuration, written by `hezo-agent init` on {when}.",
        "# Check it:   hezo-agent check -c THIS_FILE",
        "# Every key is explained in config/example.yaml (installed with the package).",
        "# Passwords are NEVER written in this file: each device names an environment variable",
        f"# (password_env). Set {password_env} in the agent's environment; for the service that is",
        "# /etc/hezo-agent/hezo-agent.env on Linux (mode 0600), see docs/install.md.",
        "",
        "agent:",
        "  poll_interval_s: 60       # seconds between polls of a healthy device",
        "  language: pl              # ticket and status page language: pl or en",
        "  # data_dir: /var/lib/hezo-agent   # default: the platform's data folder",
        "",
        "sites:",
        f"  - name: {_q(values.site)}",
        f"    address: {_q(values.address)}{_mark(values, 'address')}",
        "    contact:",
        f"      name: {_q(values.contact_name)}{_mark(values, 'contact_name')}",
        f"      phone: {_q(values.contact_phone)}{_mark(values, 'contact_phone')}",
        f"      email: {_q(values.contact_email)}{_mark(values, 'contact_email')}",
        "    timezone: Europe/Warsaw",
        "",
        "devices:",
    ]
    for dev in values.devices:
        if dev.placeholder:
            lines.append("  # CHANGE ME: an example on a documentation address; replace it with your devices")
        lines += [
            f"  - id: {_q(dev.id)}",
            f"    room: {_q(dev.room)}",
            f"    site: {_q(values.site)}",
            f"    model: {dev.model}",
            f"    host: {_q(dev.host)}",
            "    credentials:",
            "      username: admin",
            "      # the password is read from this environment variable, never from this file",
            f"      password_env: {password_env}",
        ]
    lines += [
        "",
        "ticketing:",
        "  # local: tickets stay in the agent's data folder (hezo-agent tickets); see",
        "  # config/example.yaml for e-mail, webhook, Jira, Zendesk, ServiceNow, Freshdesk, Redmine.",
        "  backend: local",
        "",
    ]
    return "\n".join(lines)


def write_config(path: Path, text: str, *, force: bool) -> None:
    """Validate ``text`` as a config (beside ``path``), then write it to ``path``.

    Raises:
        FileExistsError: ``path`` exists and ``force`` is false.
        config.loader.ConfigError: ``text`` does not validate (a bug: the caller's values were
            checked before).
        OSError: the folder is not writable.
    """
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; give --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".yaml", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        tmp.chmod(0o644)  # no secrets inside; the service account must read it
        load_config(tmp)
        if not force and path.exists():
            raise FileExistsError(f"{path} exists; give --force to replace it")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
