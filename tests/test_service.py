"""``install-service``: a systemd unit that ``systemd-analyze verify`` accepts, and the Windows service
with pywin32 faked."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import shutil
import stat
import subprocess
import sys
import threading
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.init import InitValues, complete_values, parse_device_spec, render_config
from agent.service import (
    DATA_DIR,
    ServiceError,
    SystemOps,
    UnitSpec,
    env_var_names,
    install_systemd,
    preflight,
    render_unit,
    systemd_quote,
    uninstall_systemd,
    unit_spec,
)
from config.loader import load_config
from config.schema import AgentConfig

EXECUTABLE = Path(sys.executable).parent / "hezo-agent"
#: an existing program outside the paths the sandbox hides, standing in for a system-wide install
#: (the checkout itself may live under /tmp, which preflight rightly rejects)
INSTALLED = Path("/usr/bin/true")


def _config(tmp_path: Path, extra: str = "", name: str = "hezo.yaml") -> tuple[AgentConfig, Path]:
    values = complete_values(InitValues(devices=(parse_device_spec("a30-1,A30,127.0.0.9"),)), None)
    path = tmp_path / name
    path.write_text(render_config(values) + extra, encoding="utf-8")
    return load_config(path), path


def verify(unit_text: str, folder: Path) -> list[str]:
    """What ``systemd-analyze verify`` says about the unit (empty: nothing). Works without systemd as
    PID 1: ``--man=no`` (no man pages needed) and ``--generators=no`` (no generators run)."""
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: install the Debian package systemd (make test-deps)"
    unit = folder / "hezo-agent.service"
    unit.write_text(unit_text, encoding="utf-8")
    done = subprocess.run(
        [tool, "verify", "--man=no", "--generators=no", str(unit)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
    if done.returncode != 0:
        return [f"exit {done.returncode}", *lines]
    return [ln for ln in lines if unit.name in ln]  # warnings about our unit (unknown keys, bad values)


def _spec(tmp_path: Path, extra: str = "") -> UnitSpec:
    config, path = _config(tmp_path, extra)
    return unit_spec(config, path, "hezo", executable=EXECUTABLE)


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


# --- the unit -------------------------------------------------------------------------------------


def test_generated_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    text = render_unit(_spec(tmp_path))

    assert verify(text, tmp_path) == []

    unit = _directives(text)
    assert unit["ExecStart"][0].startswith(
        f"{EXECUTABLE} run -c {tmp_path / 'hezo.yaml'} --data-dir {DATA_DIR}"
    )
    for key, value in {
        "User": "hezo", "Restart": "on-failure", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "ProtectHome": "yes", "PrivateTmp": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
        "StateDirectory": "hezo-agent", "LogsDirectory": "hezo-agent",
        "EnvironmentFile": "-/etc/hezo-agent/hezo-agent.env",
    }.items():  # fmt: skip
        assert unit[key] == [value], key
    assert unit["ReadWritePaths"] == ["/var/lib/hezo-agent /var/log/hezo-agent"]


def test_the_verify_check_fails_on_broken_units(tmp_path: Path) -> None:
    good = render_unit(_spec(tmp_path))
    broken = {
        "bad value": good.replace("Restart=on-failure", "Restart=sometimes"),
        "unknown key": good.replace("PrivateTmp=yes", "PrivateTmp=yes\nProtectEverything=yes"),
        "missing program": good.replace(str(EXECUTABLE), "/nonexistent/hezo-agent"),
    }
    for name, text in broken.items():
        assert verify(text, tmp_path), name


def test_syslog_below_1024_keeps_only_the_bind_capability(tmp_path: Path) -> None:
    spec = _spec(
        tmp_path, "syslog:\n  udp_port: 514\n  tcp_port: null\ntraps:\n  port: 162\n  community_env: C\n"
    )
    text = render_unit(spec)

    assert spec.low_ports == (162, 514)
    assert _directives(text)["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert _directives(text)["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert verify(text, tmp_path) == []
    assert spec.env_names == ("C", "HEZO_DEVICE_PASSWORD")


def test_a_configured_data_dir_with_spaces_is_writable_and_quoted(tmp_path: Path) -> None:
    config, path = _config(tmp_path, name="my config%.yaml")
    config = config.model_copy(
        update={"agent": config.agent.model_copy(update={"data_dir": Path("/srv/hezo data")})}
    )
    spec = unit_spec(config, path, "hezo-svc", executable=EXECUTABLE)
    text = render_unit(spec)

    assert "StateDirectory" not in text
    assert _directives(text)["ReadWritePaths"] == ['"/srv/hezo data" /var/log/hezo-agent']
    assert f'-c "{tmp_path}/my config%%.yaml"' in text
    assert verify(text, tmp_path) == []


def test_quoting_and_user_names() -> None:
    assert systemd_quote("/usr/bin/hezo-agent") == "/usr/bin/hezo-agent"
    assert systemd_quote('/a b/"c"$%') == '"/a b/\\"c\\"$$%%"'
    with pytest.raises(ServiceError, match="--user"):
        unit_spec(
            AgentConfig.model_validate(_minimal()), Path("/etc/hezo.yaml"), "Root; rm", executable=EXECUTABLE
        )


def _minimal() -> dict[str, Any]:
    site = {"name": "s", "address": "ul. X 1", "contact": {"name": "n", "phone": "123", "email": "a@b.pl"}}
    return {
        "sites": [site],
        "devices": [{"id": "d", "room": "r", "site": "s", "model": "A30", "host": "127.0.0.9"}],
    }


def test_preflight_names_paths_the_sandbox_hides(tmp_path: Path) -> None:
    spec = dataclasses.replace(
        _spec(tmp_path), config=Path("/home/anna/hezo.yaml"), data_dir=Path("/root/data"),
        executable=Path("/tmp/venv/bin/hezo-agent"),
    )  # fmt: skip
    problems = " | ".join(preflight(spec))
    assert "config /home/anna/hezo.yaml is under /home" in problems
    assert "data folder /root/data is under /root" in problems
    assert "executable /tmp/venv/bin/hezo-agent is under /tmp" in problems
    ok = dataclasses.replace(
        spec, config=Path("/etc/hezo-agent/hezo.yaml"), data_dir=DATA_DIR, executable=INSTALLED
    )
    assert preflight(ok) == []


def test_env_names_come_from_every_env_key(tmp_path: Path) -> None:
    config, _ = _config(tmp_path, "traps:\n  community_env: HEZO_TRAP_COMMUNITY\n")
    assert env_var_names(config) == ("HEZO_DEVICE_PASSWORD", "HEZO_TRAP_COMMUNITY")


# --- installing with the system calls faked -------------------------------------------------------


@dataclasses.dataclass
class FakeSystem:
    root: bool = True
    users: set[str] = dataclasses.field(default_factory=set)
    commands: list[list[str]] = dataclasses.field(default_factory=list)
    owned: list[tuple[Path, str]] = dataclasses.field(default_factory=list)

    def ops(self) -> SystemOps:
        def run(argv: Sequence[str]) -> None:
            self.commands.append(list(argv))
            if argv[0] == "useradd":
                self.users.add(argv[-1])

        return SystemOps(run=run, user_exists=self.users.__contains__, is_root=lambda: self.root,
                         chown=lambda p, u: self.owned.append((p, u)))  # fmt: skip


def _installable(tmp_path: Path) -> UnitSpec:
    spec = _spec(tmp_path)
    return dataclasses.replace(spec, config=Path("/etc/hezo-agent/hezo.yaml"), executable=INSTALLED,
                               environment_file=tmp_path / "etc" / "hezo-agent.env")  # fmt: skip


def test_install_creates_the_user_writes_unit_and_secret_file_then_enables(tmp_path: Path) -> None:
    system, units = FakeSystem(), tmp_path / "units"
    units.mkdir()
    spec = _installable(tmp_path)

    install_systemd(spec, unit_dir=units, ops=system.ops())

    assert system.commands[0][:2] == ["useradd", "--system"] and system.commands[0][-1] == "hezo"
    assert system.commands[1:] == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "hezo-agent.service"],
    ]
    assert (units / "hezo-agent.service").read_text(encoding="utf-8") == render_unit(spec)
    env = spec.environment_file
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert "#HEZO_DEVICE_PASSWORD=" in env.read_text(encoding="utf-8")

    env.write_text("HEZO_DEVICE_PASSWORD=kept\n", encoding="utf-8")
    system.commands.clear()
    install_systemd(spec, unit_dir=units, ops=system.ops())
    assert env.read_text(encoding="utf-8") == "HEZO_DEVICE_PASSWORD=kept\n"
    assert [c[0] for c in system.commands] == ["systemctl", "systemctl"]  # the user exists now


def test_install_refuses_without_root_and_with_hidden_paths(tmp_path: Path) -> None:
    spec = _installable(tmp_path)
    with pytest.raises(ServiceError, match="sudo"):
        install_systemd(spec, unit_dir=tmp_path, ops=FakeSystem(root=False).ops())
    system = FakeSystem()
    with pytest.raises(ServiceError, match="under /home"):
        install_systemd(
            dataclasses.replace(spec, config=Path("/home/a/h.yaml")), unit_dir=tmp_path, ops=system.ops()
        )
    assert system.commands == []


def test_install_owns_a_custom_data_dir_and_uninstall_keeps_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system, units = FakeSystem(users={"hezo"}), tmp_path / "units"
    units.mkdir()
    spec = dataclasses.replace(_installable(tmp_path), data_dir=tmp_path / "srv" / "data")
    with pytest.raises(ServiceError, match=r"data folder .* is under /tmp"):
        install_systemd(spec, unit_dir=units, ops=system.ops())
    monkeypatch.setattr("agent.service.HIDDEN_DIRS", ())  # as if pytest's tmp were /srv

    install_systemd(spec, unit_dir=units, ops=system.ops())

    assert spec.data_dir.is_dir() and system.owned == [(spec.data_dir, "hezo")]
    assert "StateDirectory" not in (units / "hezo-agent.service").read_text(encoding="utf-8")
    lines = uninstall_systemd(unit_dir=units, ops=system.ops())
    assert system.commands[-2:] == [
        ["systemctl", "disable", "--now", "hezo-agent.service"],
        ["systemctl", "daemon-reload"],
    ]
    assert not (units / "hezo-agent.service").exists() and spec.data_dir.is_dir()
    assert "kept" in lines[-1]
    with pytest.raises(ServiceError, match="not installed"):
        uninstall_systemd(unit_dir=units, ops=system.ops())


def test_cli_dry_run_prints_a_unit_that_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, path = _config(tmp_path)

    assert main(["install-service", "-c", str(path), "--dry-run", "--log-format", "json"]) == 0

    captured = capsys.readouterr()
    unit = captured.out[captured.out.index("[Unit]") :].split("\n# then:")[0]
    assert "--log-format json" in unit and "#HEZO_DEVICE_PASSWORD=" in captured.out
    assert verify(unit, tmp_path) == []
    assert "is under /tmp" in captured.err  # the config lies in pytest's tmp: warned


# --- Windows, with pywin32 faked ------------------------------------------------------------------


class FakeWin32:
    """win32serviceutil, win32service, win32event and servicemanager as fakes recording calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.options: dict[str, str] = {}
        self.messages: list[str] = []
        self.running = False

        record = self.record
        fake = self

        class ServiceFramework:
            def __init__(self, args: Any) -> None:
                self.args = args
                self.statuses: list[int] = []

            def ReportServiceStatus(self, status: int) -> None:
                self.statuses.append(status)

        def stop_service(name: str) -> None:
            if not fake.running:
                err = Exception("not active")
                err.winerror = 1062  # type: ignore[attr-defined]
                raise err
            record("StopService", name)

        util = types.ModuleType("win32serviceutil")
        util.ServiceFramework = ServiceFramework  # type: ignore[attr-defined]
        util.InstallService = lambda *a, **k: record("InstallService", (a, k))  # type: ignore[attr-defined]
        util.SetServiceCustomOption = lambda n, o, v: self.options.__setitem__(o, v)  # type: ignore[attr-defined]
        util.GetServiceCustomOption = lambda n, o, d=None: self.options.get(o, d)  # type: ignore[attr-defined]
        util.StartService = lambda n: record("StartService", n)  # type: ignore[attr-defined]
        util.StopService = stop_service  # type: ignore[attr-defined]
        util.RemoveService = lambda n: record("RemoveService", n)  # type: ignore[attr-defined]

        svc = types.ModuleType("win32service")
        constants = {
            "SERVICE_AUTO_START": 2,
            "SERVICE_STOP_PENDING": 3,
            "SC_MANAGER_ALL_ACCESS": 0xF003F,
            "SERVICE_ALL_ACCESS": 0xF01FF,
            "SERVICE_CONFIG_FAILURE_ACTIONS": 2,
            "SC_ACTION_RESTART": 1,
        }
        for name, value in constants.items():
            setattr(svc, name, value)
        svc.OpenSCManager = lambda *a: "scm"  # type: ignore[attr-defined]
        svc.OpenService = lambda scm, name, access: f"handle:{name}"  # type: ignore[attr-defined]
        svc.ChangeServiceConfig2 = lambda h, level, info: record("ChangeServiceConfig2", (h, level, info))  # type: ignore[attr-defined]
        svc.CloseServiceHandle = lambda h: record("CloseServiceHandle", h)  # type: ignore[attr-defined]

        event = types.ModuleType("win32event")
        event.INFINITE = -1  # type: ignore[attr-defined]
        event.CreateEvent = lambda *a: threading.Event()  # type: ignore[attr-defined]
        event.SetEvent = lambda e: e.set()  # type: ignore[attr-defined]
        event.WaitForSingleObject = lambda e, timeout: e.wait(10)  # type: ignore[attr-defined]

        manager = types.ModuleType("servicemanager")
        manager.LogInfoMsg = self.messages.append  # type: ignore[attr-defined]
        manager.LogErrorMsg = lambda m: self.messages.append(f"ERROR {m}")  # type: ignore[attr-defined]
        self.modules = {
            "win32serviceutil": util,
            "win32service": svc,
            "win32event": event,
            "servicemanager": manager,
        }

    def record(self, name: str, value: Any) -> None:
        self.calls.append((name, value))


@pytest.fixture
def win32(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeWin32, types.ModuleType]]:
    fake = FakeWin32()
    for name, module in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "agent.service_windows", raising=False)
    module = importlib.import_module("agent.service_windows")
    root = logging.getLogger()
    handlers, level, factory = list(root.handlers), root.level, logging.getLogRecordFactory()
    yield fake, module
    sys.modules.pop("agent.service_windows", None)
    logging.setLogRecordFactory(factory)  # the real agent's service masks secrets process-wide
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_windows_install_registers_an_auto_start_service_that_restarts(
    win32: tuple[FakeWin32, types.ModuleType], tmp_path: Path
) -> None:
    fake, module = win32
    config = tmp_path / "hezo.yaml"

    module.install(config, data_dir=tmp_path / "data", log_file=tmp_path / "logs" / "hezo-agent.log")

    (args, kwargs) = fake.calls[0][1]
    assert fake.calls[0][0] == "InstallService"
    assert args == ("agent.service_windows.HezoAgentService", "hezo-agent", "HEZO+ health agent")
    assert kwargs["startType"] == 2 and kwargs["userName"] is None
    assert fake.options == {
        "config": str(config),
        "data_dir": str(tmp_path / "data"),
        "log_file": str(tmp_path / "logs" / "hezo-agent.log"),
        "log_format": "text",
    }
    change = next(v for n, v in fake.calls if n == "ChangeServiceConfig2")
    assert change[0] == "handle:hezo-agent" and change[2]["Actions"] == [(1, 60_000)] * 3
    assert fake.calls[-1] == ("StartService", "hezo-agent")
    assert (tmp_path / "data").is_dir() and (tmp_path / "logs").is_dir()


def test_windows_uninstall_stops_a_running_service_and_tolerates_a_stopped_one(
    win32: tuple[FakeWin32, types.ModuleType],
) -> None:
    fake, module = win32
    fake.running = True
    module.uninstall()
    assert [n for n, _ in fake.calls] == ["StopService", "RemoveService"]
    fake.running, fake.calls = False, []
    module.uninstall()
    assert [n for n, _ in fake.calls] == ["RemoveService"]


class FakeAgent:
    def __init__(self) -> None:
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True


def _run_service(module: types.ModuleType) -> tuple[Any, threading.Thread]:
    service = module.HezoAgentService(["hezo-agent"])
    thread = threading.Thread(target=service.SvcDoRun, daemon=True)
    thread.start()
    assert service.started.wait(10), "the service did not start the agent"
    return service, thread


def test_windows_service_runs_the_agent_until_the_scm_stops_it(
    win32: tuple[FakeWin32, types.ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, module = win32
    agent = FakeAgent()
    built: list[tuple[Path, Path | None]] = []

    def factory(config: Path, data_dir: Path | None) -> FakeAgent:
        built.append((config, data_dir))
        return agent

    monkeypatch.setattr(module.HezoAgentService, "agent_factory", staticmethod(factory))
    fake.options.update({"config": str(tmp_path / "h.yaml"), "data_dir": str(tmp_path / "d"),
                         "log_file": str(tmp_path / "log" / "a.log"), "log_format": "json"})  # fmt: skip

    service, thread = _run_service(module)
    assert agent.started and not agent.stopped
    service.SvcStop()
    thread.join(10)

    assert not thread.is_alive() and agent.stopped
    assert service.statuses == [3]
    assert built == [(tmp_path / "h.yaml", tmp_path / "d")]
    assert (tmp_path / "log" / "a.log").exists()
    assert fake.messages[-1] == "hezo-agent: stopped"


def test_windows_service_starts_the_real_agent_from_its_config(
    win32: tuple[FakeWin32, types.ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, module = win32
    _, config = _config(tmp_path, "api:\n  port: 0\n")  # any free port: tests run side by side
    monkeypatch.setenv("HEZO_DEVICE_PASSWORD", "not-used-nothing-listens")
    fake.options.update({"config": str(config), "data_dir": str(tmp_path / "data")})

    service, thread = _run_service(module)
    service.SvcStop()
    thread.join(30)

    assert not thread.is_alive()
    assert (tmp_path / "data" / "agent.sqlite").exists()
    assert not any(m.startswith("ERROR") for m in fake.messages)


def test_windows_service_without_a_config_option_logs_an_error(
    win32: tuple[FakeWin32, types.ModuleType],
) -> None:
    fake, module = win32
    module.HezoAgentService(["hezo-agent"]).SvcDoRun()
    assert fake.messages == ["ERROR hezo-agent: no config option; reinstall the service"]
