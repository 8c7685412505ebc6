"""Load and cross-check the agent's YAML config and the device profiles it names.

Every problem becomes one line ``key.path[3].name: what is wrong / what to do`` collected
into a :class:`ConfigError`; the CLI prints them and exits with code 2.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from config.schema import AgentConfig, Credentials, Profile

BUILTIN_PROFILES = Path(__file__).resolve().parent / "profiles"
DEFAULT_PROFILE = {"A20": "yealink-a20", "A30": "yealink-a30", "MVC": "yealink-mvc"}


class ConfigError(Exception):
    """The config (or a profile) is invalid; ``lines`` holds one message per problem."""

    def __init__(self, source: str, lines: Sequence[str]) -> None:
        self.source = source
        self.lines = list(lines)
        super().__init__(f"{source}: " + "; ".join(self.lines))

    def render(self) -> str:
        """Return the user-facing text: the file, then one line per problem."""
        head = f"config error in {self.source}:" if len(self.lines) > 1 else f"config error in {self.source}: "
        if len(self.lines) == 1:
            return head + self.lines[0]
        return head + "\n" + "\n".join(f"  {line}" for line in self.lines)


def format_loc(loc: Iterable[int | str]) -> str:
    """Turn a pydantic location tuple into ``devices[3].host``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Walk ``model`` along ``loc`` (minus the unknown key) and list the keys allowed there."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = _inner_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _inner_model(annotation: Any) -> Any:
    """Find the BaseModel inside ``X``, ``X | None`` or ``tuple[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _message(err: Any, model: type[BaseModel]) -> str:
    kind = err["type"]
    loc = tuple(err["loc"])
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc)
        hint = f" (allowed here: {', '.join(allowed)})" if allowed else ""
        return f"unknown key{hint}"
    if kind == "missing":
        return "required key is missing"
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"expected one of {expected.replace(' or ', ', ')}, got {err['input']!r}"
    return msg


def validation_lines(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    """Render every pydantic error as ``key.path: message``."""
    lines = []
    for err in exc.errors():
        path = format_loc(err["loc"])
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        lines.append(f"{path or '(top level)'}: {_message(err, model)}")
    return lines


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(str(path), ["file not found (give the path with -c FILE)"]) from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), [f"cannot read the file: {err}"]) from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(str(path), [f"{where}not valid YAML ({problem})"]) from err


def load_profile(name: str, search: Sequence[Path] = ()) -> Profile:
    """Load the profile ``name`` from ``search`` folders, then the built-in ones.

    Raises:
        ConfigError: no such profile, or it does not validate.
    """
    for folder in (*search, BUILTIN_PROFILES):
        path = folder / f"{name}.yaml"
        if path.is_file():
            data = _read_yaml(path)
            try:
                profile = Profile.model_validate(data)
            except ValidationError as err:
                raise ConfigError(str(path), validation_lines(err, Profile)) from err
            if profile.name != name:
                raise ConfigError(str(path), [f"name: is {profile.name!r} but the file is {name}.yaml"])
            return profile
    known = sorted({p.stem for f in (*search, BUILTIN_PROFILES) if f.is_dir() for p in f.glob("*.yaml")})
    raise ConfigError(name, [f"no profile named {name!r} (known: {', '.join(known)})"])


def _cross_check(cfg: AgentConfig) -> list[str]:
    lines: list[str] = []
    if not cfg.sites:
        lines.append("sites: list at least one site")
    if not cfg.devices:
        lines.append("devices: list at least one device")

    def dupes(kind: str, values: list[str]) -> None:
        seen: set[str] = set()
        for i, value in enumerate(values):
            if value in seen:
                lines.append(f"{kind}[{i}]: duplicate {value!r} (each must be unique)")
            seen.add(value)

    dupes("sites", [s.name for s in cfg.sites])
    dupes("contracts", [c.number for c in cfg.contracts])
    dupes("devices", [d.id for d in cfg.devices])
    site_names = {s.name for s in cfg.sites}
    for i, dev in enumerate(cfg.devices):
        if dev.site not in site_names:
            lines.append(f"devices[{i}].site: unknown site {dev.site!r} (defined: {', '.join(sorted(site_names))})")
    owner: dict[str, str] = {}
    for i, contract in enumerate(cfg.contracts):
        for j, serial in enumerate(contract.serials):
            if serial in owner and owner[serial] != contract.number:
                lines.append(
                    f"contracts[{i}].serials[{j}]: serial {serial!r} is already in contract {owner[serial]}"
                )
            owner.setdefault(serial, contract.number)
    return lines


def load_config(path: Path | str) -> AgentConfig:
    """Load, validate and cross-check the config at ``path``; relative paths resolve beside it.

    Raises:
        ConfigError: the file is missing, unreadable, not YAML, or invalid.
    """
    path = Path(path)
    data = _read_yaml(path)
    if data is None:
        raise ConfigError(str(path), ["the file is empty (start from config/example.yaml)"])
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["the top level must be a mapping with sites, devices, ..."])
    try:
        cfg = AgentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(str(path), validation_lines(err, AgentConfig)) from err
    lines = _cross_check(cfg)
    base = path.resolve().parent
    agent = cfg.agent
    updates: dict[str, Any] = {}
    if agent.data_dir is not None and not agent.data_dir.is_absolute():
        updates["data_dir"] = base / agent.data_dir
    if agent.profiles_dir is not None and not agent.profiles_dir.is_absolute():
        updates["profiles_dir"] = base / agent.profiles_dir
    if updates:
        cfg = cfg.model_copy(update={"agent": agent.model_copy(update=updates)})
    devices = []
    for dev in cfg.devices:
        creds = dev.credentials
        if creds is not None and creds.password_file is not None and not creds.password_file.is_absolute():
            creds = creds.model_copy(update={"password_file": base / creds.password_file})
            dev = dev.model_copy(update={"credentials": creds})
        devices.append(dev)
    cfg = cfg.model_copy(update={"devices": tuple(devices)})
    search = [cfg.agent.profiles_dir] if cfg.agent.profiles_dir else []
    for i, dev in enumerate(cfg.devices):
        try:
            profile = load_profile(profile_name(dev.model, dev.profile), search)
        except ConfigError as err:
            lines.extend(f"devices[{i}].profile: {line}" for line in err.lines)
            continue
        if dev.model not in profile.models:
            lines.append(
                f"devices[{i}].profile: profile {profile.name!r} is for {', '.join(profile.models)}, not {dev.model}"
            )
    if lines:
        raise ConfigError(str(path), lines)
    return cfg


def profile_name(model: str, explicit: str | None) -> str:
    """Return the profile a device uses: its own, else the model's default."""
    return explicit or DEFAULT_PROFILE[model]


def resolve_password(creds: Credentials, where: str) -> str:
    """Read the password a credential points at (environment variable or file).

    Raises:
        ConfigError: the variable is unset or the file cannot be read.
    """
    if creds.password_env is not None:
        value = os.environ.get(creds.password_env)
        if value is None:
            raise ConfigError(
                where, [f"credentials.password_env: environment variable {creds.password_env} is not set"]
            )
        return value
    assert creds.password_file is not None
    try:
        return creds.password_file.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ConfigError(
            where, [f"credentials.password_file: cannot read {creds.password_file} ({err.strerror})"]
        ) from err
