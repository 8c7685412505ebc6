"""The Windows service (pywin32): the agent under the Service Control Manager.

Imported only on Windows (``hezo-agent install-service`` there), or in tests with the win32
modules faked. :class:`HezoAgentService` runs :meth:`agent.daemon.Agent.start` and waits for
the SCM's stop request; the config path, data folder and log file are stored as the service's
custom options (registry, ``HKLM\\SYSTEM\\CurrentControlSet\\Services\\hezo-agent\\Parameters``)
by :func:`install`. The service starts automatically at boot and the SCM restarts it when it
fails (60 s, three times, counter reset after a day). pywin32 hosts it in ``pythonservice.exe``;
see docs/install.md. Not exercised on a real Windows machine in this project's tests.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import servicemanager
import win32event
import win32service
import win32serviceutil

__all__ = [
    "CLASS_STRING",
    "DISPLAY_NAME",
    "SERVICE_NAME",
    "HezoAgentService",
    "install",
    "uninstall",
]

SERVICE_NAME = "hezo-agent"
DISPLAY_NAME = "HEZO+ health agent"
DESCRIPTION = "Polls Yealink video bars and opens HEZO+ service tickets (hezo-agent)."
CLASS_STRING = "agent.service_windows.HezoAgentService"
PASSWORD_ENV = "HEZO_SERVICE_PASSWORD"
RESTART_DELAY_MS = 60_000
RESET_PERIOD_S = 86_400
ERROR_SERVICE_NOT_ACTIVE = 1062
ERROR_SERVICE_DOES_NOT_EXIST = 1060


class _Runnable(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def _default_agent(config_path: Path, data_dir: Path | None) -> _Runnable:
    """The real agent, with every known secret masked in its log (as ``hezo-agent run`` does)."""
    from agent.daemon import Agent
    from agent.known_secrets import redactor_for
    from agent.redact import install_log_redaction
    from config.loader import load_config

    config = load_config(config_path)
    install_log_redaction(redactor_for(config))
    return Agent(config, data_dir=data_dir)


class HezoAgentService(win32serviceutil.ServiceFramework):
    """The ``hezo-agent`` Windows service."""

    _svc_name_ = SERVICE_NAME
    _svc_display_name_ = DISPLAY_NAME
    _svc_description_ = DESCRIPTION
    #: builds the agent from (config path, data folder); tests replace it
    agent_factory: Callable[[Path, Path | None], _Runnable] = staticmethod(_default_agent)

    def __init__(self, args: Any) -> None:
        """Called by the SCM host with the service's arguments."""
        super().__init__(args)
        self.stop_event = win32event.CreateEvent(None, 0, 0, None)
        self.started = threading.Event()

    def _option(self, name: str) -> str | None:
        value = win32serviceutil.GetServiceCustomOption(self._svc_name_, name, None)
        return str(value) if value else None

    def SvcStop(self) -> None:  # pywin32's name
        """The SCM asks the service to stop."""
        self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING)
        win32event.SetEvent(self.stop_event)

    def SvcDoRun(self) -> None:  # pywin32's name
        """Start the agent, wait for the stop request, stop the agent."""
        from agent.logsetup import setup_logging

        config = self._option("config")
        if config is None:
            servicemanager.LogErrorMsg(f"{SERVICE_NAME}: no config option; reinstall the service")
            return
        data_dir, log_file = self._option("data_dir"), self._option("log_file")
        setup_logging(
            "INFO",
            fmt="json" if self._option("log_format") == "json" else "text",
            log_file=Path(log_file) if log_file else None,
            console=False,
        )
        servicemanager.LogInfoMsg(f"{SERVICE_NAME}: starting with {config}")
        try:
            agent = type(self).agent_factory(Path(config), Path(data_dir) if data_dir else None)
            agent.start()
        except Exception as err:  # the SCM records the failure and restarts the service
            servicemanager.LogErrorMsg(f"{SERVICE_NAME}: cannot start: {err}")
            raise
        self.started.set()
        try:
            win32event.WaitForSingleObject(self.stop_event, win32event.INFINITE)
        finally:
            agent.stop()
            servicemanager.LogInfoMsg(f"{SERVICE_NAME}: stopped")


def _set_restart_on_failure() -> None:
    scm = win32service.OpenSCManager(None, None, win32service.SC_MANAGER_ALL_ACCESS)
    try:
        handle = win32service.OpenService(scm, SERVICE_NAME, win32service.SERVICE_ALL_ACCESS)
        try:
            actions = [(win32service.SC_ACTION_RESTART, RESTART_DELAY_MS)] * 3
            info = {"ResetPeriod": RESET_PERIOD_S, "RebootMsg": None, "Command": None, "Actions": actions}
            win32service.ChangeServiceConfig2(handle, win32service.SERVICE_CONFIG_FAILURE_ACTIONS, info)
        finally:
            win32service.CloseServiceHandle(handle)
    finally:
        win32service.CloseServiceHandle(scm)


def install(
    config: Path,
    *,
    data_dir: Path,
    log_file: Path,
    user: str | None = None,
    log_format: str = "text",
    start: bool = True,
) -> list[str]:
    """Install (and start) the service; returns what was done, one line each.

    ``user`` is an account such as ``NT AUTHORITY\\LocalService`` (default: LocalSystem); an
    account with a password takes it from the ``HEZO_SERVICE_PASSWORD`` environment variable.

    Raises:
        pywintypes.error: the SCM refused (not an administrator, the service already exists, ...).
    """
    done: list[str] = []
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    win32serviceutil.InstallService(
        CLASS_STRING,
        SERVICE_NAME,
        DISPLAY_NAME,
        startType=win32service.SERVICE_AUTO_START,
        userName=user,
        password=os.environ.get(PASSWORD_ENV) if user else None,
        description=DESCRIPTION,
    )
    account = user or "LocalSystem"
    done.append(f"installed service {SERVICE_NAME} ({CLASS_STRING}), automatic start, as {account}")
    options = {
        "config": str(config),
        "data_dir": str(data_dir),
        "log_file": str(log_file),
        "log_format": log_format,
    }
    for name, value in options.items():
        win32serviceutil.SetServiceCustomOption(SERVICE_NAME, name, value)
    done.append(f"config {config}, data {data_dir}, log {log_file}")
    _set_restart_on_failure()
    done.append(f"restart on failure after {RESTART_DELAY_MS // 1000} s")
    if start:
        win32serviceutil.StartService(SERVICE_NAME)
        done.append(f"started {SERVICE_NAME}")
    return done


def uninstall() -> list[str]:
    """Stop (if running) and remove the service; data and logs stay.

    Raises:
        pywintypes.error: the SCM refused, or the service does not exist.
    """
    done: list[str] = []
    try:
        win32serviceutil.StopService(SERVICE_NAME)
        done.append(f"stopped {SERVICE_NAME}")
    except Exception as err:  # pywintypes.error: already stopped is fine, anything else is not
        if getattr(err, "winerror", None) != ERROR_SERVICE_NOT_ACTIVE:
            raise
    win32serviceutil.RemoveService(SERVICE_NAME)
    done.append(f"removed service {SERVICE_NAME}; data and logs kept")
    return done
