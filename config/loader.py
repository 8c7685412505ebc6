"""Load and cross-check the agent's YAML config and the device profiles it names.

Every problem becomes one line ``key.path[3].name: what is wrong / what to do`` collected
into a :class:`ConfigError`; the CLI prints them and exits with code 2.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from config.channels import ACCOUNT_CHANNELS
from config.messages import format_loc, validation_lines
from config.schema import AgentConfig, Credentials, Profile, validate_id
from config.ticketing import resolve_ticketing_paths

__all__ = [
    "BUILTIN_PROFILES",
    "DEFAULT_PROFILE",
    "ConfigError",
    "format_loc",
    "load_config",
    "load_profile",
    "profile_name",
    "resolve_password",
    "validation_lines",
]

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
        if len(self.lines) == 1:
            return f"config error in {self.source}: {self.lines[0]}"
        return f"config error in {self.source}:\n" + "\n".join(f"  {line}" for line in self.lines)


# --- YAML --------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML without the YAML 1.1 surprises that bite configs.

    ``16:00`` stays the text "16:00" (YAML 1.1 reads it as the base-60 number 960), dates stay
    text for the schema to parse with a readable error, and a key given twice is an error
    instead of the last one silently winning.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable key: the base class reports it
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given on line {first + 1}); keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if not tag.endswith((":int", ":float", ":timestamp"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def display_path(path: Path) -> str:
    """Show ``path`` relative to the working folder when it lies below it, else as given."""
    try:
        relative = Path(os.path.relpath(path))
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if relative.parts[:1] == ("..",) else relative.as_posix()


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    context_mark = getattr(err, "context_mark", None)
    if context and context_mark is not None and (mark is None or context_mark.line != mark.line):
        problem += f" ({context} that starts on line {context_mark.line + 1})"
    elif context:
        problem += f" ({context})"
    if "'\\t'" in problem:
        problem += "; indent with spaces, not tabs"
    return f"{where}not valid YAML: {problem}"


def _read_yaml(path: Path) -> Any:
    """Parse ``path`` with the strict loader.

    Raises:
        ConfigError: missing, unreadable, or not YAML (with line and column).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise ConfigError(str(path), ["file not found (give the path with -c FILE)"]) from err
    except IsADirectoryError as err:
        raise ConfigError(str(path), ["is a folder, not a YAML file"]) from err
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), [f"not UTF-8 text (byte {err.start}); save the file as UTF-8"]) from err
    except OSError as err:
        raise ConfigError(str(path), [f"cannot read the file ({err.strerror or err})"]) from err
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as err:
        raise ConfigError(str(path), [_yaml_problem(err)]) from None


# --- profiles ----------------------------------------------------------------------------


def _known_profiles(search: Sequence[Path]) -> list[str]:
    folders = [f for f in (*search, BUILTIN_PROFILES) if f.is_dir()]
    return sorted({p.stem for f in folders for p in f.glob("*.yaml")})


def load_profile(name: str, search: Sequence[Path] = ()) -> Profile:
    """Load the profile ``name`` from ``search`` folders, then the built-in ones.

    Raises:
        ConfigError: no such profile, or it does not validate.
    """
    try:
        validate_id(name)
    except ValueError as err:
        raise ConfigError(name, [f"not a valid profile name {name!r}: {err}"]) from None
    for folder in (*search, BUILTIN_PROFILES):
        path = folder / f"{name}.yaml"
        if path.is_file():
            shown = display_path(path)
            data = _read_yaml(path)
            if not isinstance(data, dict):
                raise ConfigError(shown, ["(top level): must be a mapping of keys (name, models, http, ...)"])
            try:
                profile = Profile.model_validate(data)
            except ValidationError as err:
                raise ConfigError(shown, validation_lines(err, Profile)) from err
            if profile.name != name:
                problem = f"name: is {profile.name!r} but the file is {name}.yaml; make them equal"
                raise ConfigError(shown, [problem])
            return _resolve_channel_paths(profile, path.resolve().parent)
    known = ", ".join(_known_profiles(search))
    raise ConfigError(name, [f"no profile named {name!r} (known: {known})"])


def _resolve_channel_paths(profile: Profile, base: Path) -> Profile:
    """Return ``profile`` with the paths of its channel settings (``key_file``, ``xml_file``, ...)
    made absolute: relative ones resolve beside the profile file, as the config's do beside it."""
    updates = {}
    for name, settings in profile.channels:
        if settings is None:
            continue
        paths = {key: _beside(base, value) for key, value in settings if isinstance(value, Path)}
        if paths:
            updates[name] = settings.model_copy(update=paths)
    if not updates:
        return profile
    return profile.model_copy(update={"channels": profile.channels.model_copy(update=updates)})


def profile_name(model: str, explicit: str | None) -> str:
    """Return the profile a device uses: its own, else the model's default."""
    return explicit or DEFAULT_PROFILE[model]


# --- config ------------------------------------------------------------------------------


def _cross_check(cfg: AgentConfig) -> list[str]:
    """Checks that span several entries: unique names, references, one contract per serial."""
    lines: list[str] = []
    if not cfg.sites:
        lines.append("sites: list at least one site")
    if not cfg.devices:
        lines.append("devices: list at least one device")

    def dupes(kind: str, key: str, what: str, values: list[str]) -> None:
        first: dict[str, int] = {}
        for i, value in enumerate(values):
            if value in first:
                lines.append(
                    f"{kind}[{i}].{key}: duplicate {value!r}, already used by {kind}[{first[value]}]"
                    f" (each {what} must be unique)"
                )
            first.setdefault(value, i)

    dupes("sites", "name", "site name", [s.name for s in cfg.sites])
    dupes("contracts", "number", "contract number", [c.number for c in cfg.contracts])
    dupes("devices", "id", "device id", [d.id for d in cfg.devices])
    site_names = [s.name for s in cfg.sites]
    for i, dev in enumerate(cfg.devices):
        if dev.site not in site_names:
            defined = ", ".join(site_names) or "none"
            close = difflib.get_close_matches(dev.site, site_names, n=1, cutoff=0.6)
            guess = f", did you mean {close[0]!r}?" if close else ""
            lines.append(f"devices[{i}].site: unknown site {dev.site!r}{guess} (sites defined: {defined})")
    owner: dict[str, int] = {}
    for i, contract in enumerate(cfg.contracts):
        for j, serial in enumerate(contract.serials):
            if serial in owner:
                k = owner[serial]
                where = "earlier in this contract" if k == i else f"in contract {cfg.contracts[k].number}"
                lines.append(
                    f"contracts[{i}].serials[{j}]: serial {serial!r} is already listed {where}"
                    f" (contracts[{k}]); list each serial once"
                )
            owner.setdefault(serial, i)
    return lines


def _beside(base: Path, value: Path | None) -> Path | None:
    """Resolve a configured path: ``~`` expanded, relative ones against ``base``."""
    if value is None:
        return None
    value = value.expanduser()
    return value if value.is_absolute() else (base / value).resolve()


def _resolve_paths(cfg: AgentConfig, base: Path) -> AgentConfig:
    """Return ``cfg`` with data_dir, profiles_dir, ticketing paths and password files made absolute."""
    old = cfg.agent
    agent = old.model_copy(
        update={"data_dir": _beside(base, old.data_dir), "profiles_dir": _beside(base, old.profiles_dir)}
    )
    ticketing = resolve_ticketing_paths(cfg.ticketing, lambda p: _beside(base, p))
    devices = []
    for dev in cfg.devices:
        creds = dev.credentials
        if creds is not None and creds.password_file is not None:
            creds = creds.model_copy(update={"password_file": _beside(base, creds.password_file)})
            dev = dev.model_copy(update={"credentials": creds})
        devices.append(dev)
    traps = cfg.traps
    if traps is not None and traps.community_file is not None:
        traps = traps.model_copy(update={"community_file": _beside(base, traps.community_file)})
    ymcs = cfg.ymcs
    if ymcs is not None:
        files = {"client_secret_file": ymcs.client_secret_file, "ca_bundle": ymcs.ca_bundle}
        ymcs = ymcs.model_copy(update={key: _beside(base, value) for key, value in files.items()})
    api = cfg.api.model_copy(update={"token_file": _beside(base, cfg.api.token_file)})
    forwarding = cfg.forwarding
    if forwarding is not None:
        tls = forwarding.tls
        if tls is not None:
            tls_files = {"ca_file": tls.ca_file, "cert_file": tls.cert_file, "key_file": tls.key_file}
            tls = tls.model_copy(update={key: _beside(base, value) for key, value in tls_files.items()})
        forwarding = forwarding.model_copy(
            update={"buffer_dir": _beside(base, forwarding.buffer_dir), "tls": tls}
        )
    return cfg.model_copy(
        update={
            "agent": agent,
            "ticketing": ticketing,
            "devices": tuple(devices),
            "traps": traps,
            "ymcs": ymcs,
            "api": api,
            "forwarding": forwarding,
        }
    )


def _check_account_channels(cfg: AgentConfig) -> list[str]:
    """Account channels (ymcs) need their top-level section and take no port; others take no ymcs keys."""
    lines: list[str] = []
    for i, dev in enumerate(cfg.devices):
        for channel, choice in dev.channels.items():
            where = f"devices[{i}].channels.{channel}"
            if channel not in ACCOUNT_CHANNELS:
                lines.extend(
                    f"{where}.{key}: only the ymcs channel takes {key}; remove it"
                    for key in ("ymcs_id", "serial")
                    if getattr(choice, key) is not None
                )
                continue
            if getattr(cfg, channel) is None:
                lines.append(
                    f"{where}: needs the top-level {channel}: section (the account's cloud access);"
                    " add it (see config/example.yaml) or remove this channel"
                )
            if choice.port is not None:
                lines.append(f"{where}.port: a cloud channel has no device port; remove it")
    return lines


def _check_profiles(cfg: AgentConfig) -> list[str]:
    """Load every profile the devices name; report each broken profile file once."""
    lines: list[str] = []
    search: list[Path] = []
    profiles_dir = cfg.agent.profiles_dir
    if profiles_dir is not None:
        if profiles_dir.is_dir():
            search.append(profiles_dir)
        else:
            lines.append(f"agent.profiles_dir: folder not found: {display_path(profiles_dir)}")
    loaded: dict[str, Profile | ConfigError] = {}
    for i, dev in enumerate(cfg.devices):
        name = profile_name(dev.model, dev.profile)
        first_use = name not in loaded
        if first_use:
            try:
                loaded[name] = load_profile(name, search)
            except ConfigError as err:
                loaded[name] = err
        profile = loaded[name]
        if isinstance(profile, ConfigError):
            if profile.source == name:  # not found / bad name: a mistake in this device entry
                lines.extend(f"devices[{i}].profile: {line}" for line in profile.lines)
            elif first_use:  # the profile file itself is broken: say it once
                head = f"devices[{i}].profile: profile {name!r} ({profile.source}) is invalid"
                lines.extend(f"{head}: {line}" for line in profile.lines)
        else:
            for channel in dev.channels:
                if channel not in ACCOUNT_CHANNELS and getattr(profile.channels, channel) is None:
                    offered = [n for n, v in profile.channels if v is not None]
                    lines.append(
                        f"devices[{i}].channels.{channel}: profile {name!r} offers no {channel} channel"
                        f" (it offers: {', '.join(offered) or 'none'})"
                    )
        if not isinstance(profile, ConfigError) and dev.model not in profile.models:
            hint = f"remove profile: to use the default {DEFAULT_PROFILE[dev.model]}"
            lines.append(
                f"devices[{i}].profile: profile {name!r} is for {', '.join(profile.models)},"
                f" not {dev.model} ({hint})"
            )
    return lines


def load_config(path: Path | str) -> AgentConfig:
    """Load, validate and cross-check the config at ``path``; relative paths resolve beside it.

    Password files are not read here (see :func:`resolve_password`).

    Raises:
        ConfigError: the file is missing, unreadable, not YAML, or invalid; every problem found
            is one line of ``ConfigError.lines``.
    """
    path = Path(path)
    data = _read_yaml(path)
    if data is None:
        raise ConfigError(str(path), ["(top level): the file is empty; start from config/example.yaml"])
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else "a single value"
        keys = ", ".join(AgentConfig.model_fields)
        raise ConfigError(str(path), [f"(top level): must be a mapping of keys ({keys}), got {kind}"])
    try:
        cfg = AgentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(str(path), validation_lines(err, AgentConfig)) from err
    cfg = _resolve_paths(cfg, path.resolve().parent)
    lines = _cross_check(cfg) + _check_profiles(cfg) + _check_account_channels(cfg)
    if lines:
        raise ConfigError(str(path), lines)
    return cfg


def read_secret(
    env: str | None,
    file: Path | None,
    key: str,
    where: str,
    *,
    env_hint: str = "",
    environ: Mapping[str, str] | None = None,
    keep_text: bool = False,
) -> str:
    """Read a secret from the environment variable ``env`` or the file ``file`` (exactly one given).

    ``key`` is the config key without its ``_env``/``_file`` suffix (``credentials.password``),
    used at the start of every error line; ``where`` is the error's source. A file is read as
    UTF-8 (a BOM is ignored) and trailing line breaks are dropped, unless ``keep_text`` (a key
    file is used as written). ``environ`` replaces :data:`os.environ` (tests). The secret is
    never shown.

    Raises:
        ConfigError: the variable is unset or empty, or the file is missing, unreadable or empty.
    """
    if env is not None:
        value = (os.environ if environ is None else environ).get(env)
        if value is None:
            raise ConfigError(where, [f"{key}_env: environment variable {env} is not set{env_hint}"])
        if not value:
            raise ConfigError(where, [f"{key}_env: environment variable {env} is empty"])
        return value
    if file is None:
        section, _, leaf = key.rpartition(".")
        raise ConfigError(where, [f"{section or leaf}: give {leaf}_env or {leaf}_file"])
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(where, [f"{key}_file: file not found: {file}"]) from None
    except IsADirectoryError:
        raise ConfigError(where, [f"{key}_file: {file} is a folder, not a file"]) from None
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ConfigError(where, [f"{key}_file: cannot read {file} ({reason})"]) from None
    if not text.strip():
        raise ConfigError(where, [f"{key}_file: {file} is empty"])
    return text if keep_text else text.rstrip("\r\n")


def resolve_password(creds: Credentials, where: str) -> str:
    """Read the password a credential points at (environment variable or file).

    ``where`` names the device for the error's source (e.g. ``devices[0]``); each error line
    starts with ``credentials.password_env`` or ``credentials.password_file``.

    Raises:
        ConfigError: the variable is unset or empty, or the file is missing, unreadable or empty.
    """
    hint = " (set it in the agent's service environment, or use password_file)"
    return read_secret(creds.password_env, creds.password_file, "credentials.password", where, env_hint=hint)
