"""Which log sources a device has, and how to reach them, for the running agent or for the CLI.

:class:`BundleEnv` holds what the sources need (config, profiles, store, TLS pins, SSH
known_hosts, the YMCS account, the black boxes). :meth:`BundleEnv.from_agent` borrows the running
agent's parts (the live black boxes are read under their lock); :meth:`BundleEnv.standalone`
builds only what one pull needs, reading only the pulled device's secrets, so
``hezo-agent collect`` works beside a running agent without touching its outbox or rings.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.clock import Clock, SystemClock
from agent.store import Store
from collectors.base import Collector
from collectors.blackbox import BlackBoxes, safe_folder_name
from collectors.known_hosts import KnownHosts
from collectors.log_sources import (
    BlackBoxSource,
    Fetched,
    HttpExportSource,
    LogSource,
    MtrEventsSource,
    MvcZipSource,
    SshFilesSource,
    YmcsExportSource,
)
from collectors.models import DeviceFacts
from collectors.mtr import MtrSource
from collectors.pins import PinStore
from collectors.registry import DRIVERS
from collectors.transports.ssh import SshTransport, read_secrets
from collectors.ymcs_channel import YmcsAccount
from config.loader import load_profile, profile_name, resolve_password
from config.schema import AgentConfig, Device, Profile

if TYPE_CHECKING:
    from agent.daemon import Agent

__all__ = ["BundleEnv", "Unavailable"]


@dataclass(frozen=True, slots=True)
class Unavailable:
    """A source the device does not have, and why."""

    why: str


@dataclass
class BundleEnv:
    """Everything the sources of a bundle need; ``close`` releases what this env built itself."""

    config: AgentConfig
    data_dir: Path
    store: Store
    profiles: Callable[[str], Profile]
    password: Callable[[str], str | None]
    pins: PinStore
    known_hosts: KnownHosts
    ymcs: Callable[[], YmcsAccount | None]
    live_boxes: BlackBoxes | None = None
    collector_override: Callable[[str], Collector] | None = None
    clock: Clock = field(default_factory=SystemClock)
    platform: str = sys.platform
    _owned: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    def from_agent(cls, agent: Agent) -> BundleEnv:
        """Borrow the running agent's store, pins, known_hosts, YMCS account and black boxes."""
        factory = agent._collector_factory  # scripted devices (tests, benchmarks) stay scripted
        return cls(
            config=agent.config,
            data_dir=agent.data_dir,
            store=agent.store,
            profiles=lambda device_id: agent.profiles[device_id],
            password=lambda device_id: agent.passwords.get(device_id),
            pins=agent.pins,
            known_hosts=agent.known_hosts,
            ymcs=lambda: agent.ymcs,
            live_boxes=agent.blackboxes,
            collector_override=agent.collector if factory is not None else None,
            clock=agent.clock,
        )

    @classmethod
    def standalone(cls, config: AgentConfig, data_dir: Path, *, clock: Clock | None = None) -> BundleEnv:
        """Build only what a pull needs, from the agent's data folder (``hezo-agent collect``).

        Raises:
            sqlite3.Error: the store cannot be opened.
        """
        store = Store(Path(data_dir) / "agent.sqlite")
        search = [config.agent.profiles_dir] if config.agent.profiles_dir else []
        accounts: list[YmcsAccount] = []

        def ymcs() -> YmcsAccount | None:
            if config.ymcs is None:
                return None
            if not accounts:
                accounts.append(YmcsAccount.from_settings(config.ymcs, facts=_facts_of(store), clock=clock))
            return accounts[0]

        def password(device_id: str) -> str | None:
            index, device = next((i, d) for i, d in enumerate(config.devices) if d.id == device_id)
            creds = device.credentials
            return None if creds is None else resolve_password(creds, f"devices[{index}]")

        env = cls(
            config=config,
            data_dir=Path(data_dir),
            store=store,
            profiles=lambda device_id: load_profile(profile_name(*_model_profile(config, device_id)), search),
            password=password,
            pins=PinStore(Path(data_dir) / "pins.json"),
            known_hosts=KnownHosts(Path(data_dir) / "known_hosts"),
            ymcs=ymcs,
            clock=clock or SystemClock(),
        )

        def close_accounts() -> None:
            for account in accounts:
                account.close()

        env._owned += [store.close, close_accounts]
        return env

    def close(self) -> None:
        """Close what :meth:`standalone` opened (nothing of a borrowed agent)."""
        for release in self._owned:
            release()
        self._owned.clear()

    # --- the sources --------------------------------------------------------------------------

    def sources(self, device: Device, *, timeout_s: float) -> dict[str, LogSource | Unavailable]:
        """Every source name → its source for ``device``, or why the device does not have it.

        Raises:
            ConfigError: the device's profile cannot be loaded.
        """
        profile = self.profiles(device.id)
        out: dict[str, LogSource | Unavailable] = {
            "http": self._http(device, profile, timeout_s),
            "ssh": self._ssh(device, profile),
            "blackbox": self._blackbox(device),
            "mtr": self._mtr(device, profile),
            "mvc-zip": self._mvc(device),
            "ymcs": self._ymcs(device),
        }
        return out

    def _http(self, device: Device, profile: Profile, timeout_s: float) -> LogSource | Unavailable:
        if "logs" not in profile.endpoints:
            return Unavailable(f"profile {profile.name} has no logs endpoint")
        if self.collector_override is not None:
            return HttpExportSource(self.collector_override(device.id))
        return _LazyHttp(lambda: self._fresh_collector(device, profile, timeout_s))

    def _fresh_collector(self, device: Device, profile: Profile, timeout_s: float) -> Collector:
        """A collector of its own for this pull (the poller's is not shared across threads)."""
        factory: Callable[..., Collector] = DRIVERS[profile.driver]
        agent = self.config.agent
        options: dict[str, Any] = {
            "password": self.password(device.id),
            "pins": self.pins,
            "timeout_s": agent.timeout_s,
            "max_response_bytes": agent.max_response_bytes,
            "max_log_bytes": agent.max_log_bytes,
        }
        if "log_timeout_s" in inspect.signature(factory).parameters:
            options["log_timeout_s"] = timeout_s
        return factory(device, profile, **options)

    def _ssh(self, device: Device, profile: Profile) -> LogSource | Unavailable:
        settings = profile.channels.ssh
        choice = device.channels.get("ssh")
        if choice is None or settings is None:
            return Unavailable("the device does not use an ssh channel")
        if not settings.log_files:
            return Unavailable(f"profile {profile.name} lists no ssh log_files")
        if choice.port is not None:
            settings = settings.model_copy(update={"port": choice.port})
        where = f"device {device.id}, profile {profile.name}, channels"

        def connect() -> SshTransport:
            return SshTransport.from_settings(
                device.host, settings, read_secrets(settings, where), self.known_hosts
            )

        return SshFilesSource(connect, settings.log_files, max_file_bytes=settings.max_file_bytes)

    def _blackbox(self, device: Device) -> LogSource | Unavailable:
        root = self.data_dir / "blackbox"
        if self.config.syslog is None and not (root / safe_folder_name(device.id)).is_dir():
            return Unavailable("no syslog section: the agent keeps no black box")
        return BlackBoxSource(device.id, root=root, live=self.live_boxes)

    def _mtr(self, device: Device, profile: Profile) -> LogSource | Unavailable:
        settings = profile.channels.mtr
        if "mtr" not in device.channels or settings is None:
            return Unavailable("the device does not use the mtr channel")
        return MtrEventsSource(MtrSource(settings, platform=self.platform))

    def _mvc(self, device: Device) -> LogSource | Unavailable:
        if device.model != "MVC":
            return Unavailable("only an MVC has the Teams Rooms log ZIP")
        source = MvcZipSource(self.config.bundles.mvc, platform=self.platform)
        if source.folder is None:
            return Unavailable("no bundles.mvc.zip_dir set (the script runs on Windows only)")
        return source

    def _ymcs(self, device: Device) -> LogSource | Unavailable:
        choice = device.channels.get("ymcs")
        settings = self.config.ymcs
        if choice is None or settings is None:
            return Unavailable("the device does not use the ymcs channel")
        account = self.ymcs()
        assert account is not None  # settings is set
        probe = account.probe_for(device.id, ymcs_id=choice.ymcs_id, serial=choice.serial)
        return YmcsExportSource(
            account.client,
            probe.keys,
            poll_every_s=settings.export_poll_every_s,
            timeout_s=settings.export_timeout_s,
            max_bytes=settings.export_max_bytes,
        )

    def facts(self, device_id: str) -> tuple[DeviceFacts, str] | None:
        """The device's last known identity and when it was seen (ISO), or None."""
        found = self.store.facts(device_id)
        return None if found is None else (found[0], found[1].isoformat())


class _LazyHttp(HttpExportSource):
    """The http source with a collector built when the pull starts and closed after it."""

    def __init__(self, build: Callable[[], Collector]) -> None:
        self.build = build

    def fetch(self, folder: Path, *, since: datetime, deadline: float) -> Fetched:
        """Build the collector, fetch the export, close the collector.

        Raises:
            CollectorError: as for :meth:`collectors.base.Collector.collect_logs`.
        """
        self.collector = self.build()
        try:
            return super().fetch(folder, since=since, deadline=deadline)
        finally:
            self.collector.close()


def _model_profile(config: AgentConfig, device_id: str) -> tuple[str, str | None]:
    device = config.device(device_id)
    return device.model, device.profile


def _facts_of(store: Store) -> Callable[[str], DeviceFacts | None]:
    def facts(device_id: str) -> DeviceFacts | None:
        found = store.facts(device_id)
        return found[0] if found is not None else None

    return facts
