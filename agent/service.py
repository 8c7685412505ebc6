"""``hezo-agent install-service`` / ``uninstall-service``: run the agent as a system service.

On Linux a systemd unit: a dedicated system user, the absolute path of the ``hezo-agent``
being run, restart on failure, and sandboxing (``NoNewPrivileges``, ``ProtectSystem=strict``,
``ProtectHome``, ``PrivateTmp``, an empty capability set, write access only to the data and log
folders). Secrets come from an ``EnvironmentFile`` (``/etc/hezo-agent/hezo-agent.env``, mode
0600) that names the config's ``*_env`` variables; it is created once, with the names only, and
never overwritten. Data goes to ``/var/lib/hezo-agent`` (``StateDirectory``) unless the config
sets ``agent.data_dir``; the log to ``/var/log/hezo-agent`` (``LogsDirectory``), rotated by size.
On Windows the same commands install a Windows service through pywin32
(:mod:`agent.service_windows`). Every system call goes through :class:`SystemOps`, so the
logic is tested without root and without systemd as PID 1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from config.schema import AgentConfig

__all__ = [
    "DATA_DIR",
    "ENV_DIR",
    "LOG_DIR",
    "SERVICE_NAME",
    "UNIT_DIR",
    "ServiceError",
    "SystemOps",
    "UnitSpec",
    "current_executable",
    "env_var_names",
    "install_systemd",
    "low_ports",
    "preflight",
    "render_env_file",
    "render_unit",
    "systemd_quote",
    "uninstall_systemd",
    "unit_spec",
]

SERVICE_NAME = "hezo-agent"
UNIT_DIR = Path("/etc/systemd/system")
ENV_DIR = Path("/etc/hezo-agent")
DATA_DIR = Path("/var/lib/hezo-agent")
LOG_DIR = Path("/var/log/hezo-agent")
#: folders the unit hides or replaces (ProtectHome, PrivateTmp): nothing the service needs may live there
HIDDEN_DIRS = (
    PurePosixPath("/home"),
    PurePosixPath("/root"),
    PurePosixPath("/run/user"),
    PurePosixPath("/tmp"),
    PurePosixPath("/var/tmp"),
)
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")


class ServiceError(Exception):
    """Installing or removing the service failed; the message says what to do."""


@dataclass(frozen=True, slots=True)
class UnitSpec:
    """Everything the systemd unit is written from."""

    executable: Path
    config: Path
    user: str
    data_dir: Path
    log_file: Path
    environment_file: Path
    low_ports: tuple[int, ...] = ()
    env_names: tuple[str, ...] = ()
    log_format: str = "text"

    @property
    def state_directory(self) -> bool:
        """True when the data folder is systemd's ``StateDirectory`` (created and owned by systemd)."""
        return self.data_dir == DATA_DIR

    @property
    def logs_directory(self) -> bool:
        """True when the log folder is systemd's ``LogsDirectory``."""
        return self.log_file.parent == LOG_DIR


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield str(key), inner
            yield from _walk(inner)
    elif isinstance(value, list | tuple):
        for inner in value:
            yield from _walk(inner)


def env_var_names(config: AgentConfig) -> tuple[str, ...]:
    """The environment variables the config reads secrets from (every ``*_env`` key), sorted."""
    names = {v for k, v in _walk(config.model_dump(mode="json")) if k.endswith("_env") and isinstance(v, str)}
    return tuple(sorted(names))


def low_ports(config: AgentConfig) -> tuple[int, ...]:
    """Ports below 1024 the agent listens on (syslog, traps): these need CAP_NET_BIND_SERVICE."""
    ports: list[int | None] = []
    if config.syslog is not None:
        ports += [config.syslog.udp_port, config.syslog.tcp_port]
    if config.traps is not None:
        ports.append(config.traps.port)
    return tuple(sorted({p for p in ports if p is not None and 0 < p < 1024}))


def current_executable() -> Path:
    """The absolute path of the ``hezo-agent`` being run (beside this Python, else on PATH).

    Raises:
        ServiceError: no ``hezo-agent`` executable can be found.
    """
    name = "hezo-agent.exe" if sys.platform == "win32" else "hezo-agent"
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside.absolute()
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name.startswith("hezo-agent") and argv0.is_file():
        return argv0.absolute()
    found = shutil.which("hezo-agent")
    if found:
        return Path(found).absolute()
    raise ServiceError("cannot find the hezo-agent executable; install the package (pip/pipx) first")


def unit_spec(
    config: AgentConfig,
    config_path: Path,
    user: str = "hezo",
    *,
    executable: Path | None = None,
    log_format: str = "text",
) -> UnitSpec:
    """Decide the unit's paths and options from the loaded config.

    Raises:
        ServiceError: the user name is not a valid system user name, or no executable is found.
    """
    if not _USER.match(user):
        raise ServiceError(f"--user {user!r}: use a system user name (lower-case letters, digits, '_', '-')")
    data_dir = Path(config.agent.data_dir) if config.agent.data_dir else DATA_DIR
    return UnitSpec(
        executable=(executable or current_executable()).absolute(),
        config=config_path.absolute(),
        user=user,
        data_dir=data_dir.absolute(),
        log_file=LOG_DIR / f"{SERVICE_NAME}.log",
        environment_file=ENV_DIR / f"{SERVICE_NAME}.env",
        low_ports=low_ports(config),
        env_names=env_var_names(config),
        log_format=log_format,
    )


def systemd_quote(arg: str) -> str:
    """Quote one word for a unit file: ``%`` and ``$`` escaped, spaces and quotes inside ``"…"``."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if not text or re.search(r'[\s"\'\\;]', text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _hidden(path: Path) -> PurePosixPath | None:
    posix = PurePosixPath(path.as_posix())
    return next((d for d in HIDDEN_DIRS if posix == d or d in posix.parents), None)


def preflight(spec: UnitSpec) -> list[str]:
    """Problems that would stop the sandboxed service from starting (empty list: none)."""
    problems: list[str] = []
    checks = (
        ("the hezo-agent executable", spec.executable, "install it system-wide (see docs/install.md: pipx)"),
        ("the config", spec.config, f"copy it to {ENV_DIR}/ and give that path"),
        ("the data folder", spec.data_dir, f"set agent.data_dir to e.g. {DATA_DIR}, or leave it out"),
    )
    for what, path, fix in checks:
        hidden = _hidden(path)
        if hidden is not None:
            problems.append(f"{what} {path} is under {hidden}, which the service cannot see; {fix}")
    if not spec.executable.is_file():
        problems.append(f"{spec.executable} does not exist")
    return problems


def render_unit(spec: UnitSpec) -> str:
    """The systemd unit text for ``spec``."""
    command = [
        str(spec.executable), "run", "-c", str(spec.config), "--data-dir", str(spec.data_dir),
        "--log-file", str(spec.log_file), "--log-format", spec.log_format,
    ]  # fmt: skip
    caps = "CAP_NET_BIND_SERVICE" if spec.low_ports else ""
    writable = [spec.data_dir, spec.log_file.parent]
    lines = [
        "# Written by `hezo-agent install-service`; remove with `hezo-agent uninstall-service`.",
        "[Unit]",
        "Description=HEZO+ health agent for Yealink video bars",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"User={spec.user}",
        "ExecStart=" + " ".join(systemd_quote(a) for a in command),
        f"EnvironmentFile=-{systemd_quote(str(spec.environment_file))}",
        "Restart=on-failure",
        "RestartSec=10",
        "TimeoutStopSec=30",
        "UMask=0027",
    ]
    if spec.state_directory:
        lines.append(f"StateDirectory={SERVICE_NAME}")
    if spec.logs_directory:
        lines.append(f"LogsDirectory={SERVICE_NAME}")
    lines += [
        "# sandbox: no privilege gain, a read-only system, no home folders, a private /tmp",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "ReadWritePaths=" + " ".join(systemd_quote(str(p)) for p in dict.fromkeys(writable)),
    ]
    if spec.low_ports:
        ports = ", ".join(str(p) for p in spec.low_ports)
        lines.append(f"# the config listens on port(s) {ports}, below 1024: only this capability is kept")
    else:
        lines.append("# no capabilities: the agent listens only on ports from 1024 up")
    lines += [f"CapabilityBoundingSet={caps}", f"AmbientCapabilities={caps}", "", "[Install]"]
    lines += ["WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def render_env_file(names: Sequence[str]) -> str:
    """The environment file template: the variable names the config reads, values left empty."""
    lines = [
        "# Secrets of the hezo-agent service, read by systemd (EnvironmentFile=). Keep this file",
        "# mode 0600, owned by root. One NAME=value per line; no quotes needed.",
        "# The config names these variables (its *_env keys):",
    ]
    lines += [f"#{name}=" for name in names] or ["# (none: the config uses *_file keys or no secrets)"]
    return "\n".join(lines) + "\n"


# --- doing it ---------------------------------------------------------------------------------


def _run(argv: Sequence[str]) -> None:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ServiceError(f"{argv[0]}: {err}") from err
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise ServiceError(f"{' '.join(argv)} failed: {why[-1] if why else f'exit {done.returncode}'}")


def _user_exists(name: str) -> bool:
    import pwd  # Unix only: this module's systemd half never runs on Windows

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _is_root() -> bool:
    geteuid: Callable[[], int] | None = getattr(os, "geteuid", None)
    return geteuid is not None and geteuid() == 0


def _chown(path: Path, user: str) -> None:
    shutil.chown(path, user, user)


@dataclass
class SystemOps:
    """The system calls install and uninstall make (replaced in tests)."""

    run: Callable[[Sequence[str]], None] = _run
    user_exists: Callable[[str], bool] = _user_exists
    is_root: Callable[[], bool] = _is_root
    chown: Callable[[Path, str], None] = _chown
    done: list[str] = field(default_factory=list)

    def do(self, argv: Sequence[str]) -> None:
        """Run ``argv`` and remember it."""
        self.run(argv)
        self.done.append(" ".join(argv))


def install_systemd(spec: UnitSpec, *, unit_dir: Path = UNIT_DIR, ops: SystemOps | None = None) -> list[str]:
    """Create the user, write the unit and the environment file, then enable and start the service.

    Returns what was done, one line each. The environment file is created only when missing.

    Raises:
        ServiceError: not root, a preflight problem, or a system command failing.
        OSError: a file cannot be written.
    """
    ops = ops or SystemOps()
    if not ops.is_root():
        raise ServiceError("installing a service needs root: run it with sudo (or try --dry-run)")
    problems = preflight(spec)
    if problems:
        raise ServiceError("; ".join(problems))
    if not ops.user_exists(spec.user):
        nologin = shutil.which("nologin") or "/usr/sbin/nologin"
        ops.do(["useradd", "--system", "--user-group", "--home-dir", str(DATA_DIR), "--no-create-home",
                "--shell", nologin, spec.user])  # fmt: skip
    if not spec.state_directory:
        spec.data_dir.mkdir(parents=True, exist_ok=True)
        ops.chown(spec.data_dir, spec.user)
        ops.done.append(f"data folder {spec.data_dir} owned by {spec.user}")
    env_file = spec.environment_file
    if not env_file.exists():
        env_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(render_env_file(spec.env_names))
        ops.done.append(f"wrote {env_file} (mode 0600): put the secrets there")
    unit = unit_dir / f"{SERVICE_NAME}.service"
    unit.write_text(render_unit(spec), encoding="utf-8")
    unit.chmod(0o644)
    ops.done.append(f"wrote {unit}")
    ops.do(["systemctl", "daemon-reload"])
    ops.do(["systemctl", "enable", "--now", f"{SERVICE_NAME}.service"])
    return ops.done


def uninstall_systemd(*, unit_dir: Path = UNIT_DIR, ops: SystemOps | None = None) -> list[str]:
    """Stop and disable the service and remove its unit; the user, data, logs and secrets stay.

    Raises:
        ServiceError: not root, no unit installed, or a system command failing.
    """
    ops = ops or SystemOps()
    if not ops.is_root():
        raise ServiceError("removing a service needs root: run it with sudo")
    unit = unit_dir / f"{SERVICE_NAME}.service"
    if not unit.exists():
        raise ServiceError(f"{unit} does not exist: the service is not installed")
    ops.do(["systemctl", "disable", "--now", f"{SERVICE_NAME}.service"])
    unit.unlink()
    ops.done.append(f"removed {unit}")
    ops.do(["systemctl", "daemon-reload"])
    ops.done.append(f"kept: user, {DATA_DIR} (or agent.data_dir), {LOG_DIR}, {ENV_DIR}")
    return ops.done
