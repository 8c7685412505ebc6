"""Where a log bundle's files come from: one small class per source, all with the same shape.

Each source writes its files into a fresh folder and returns a :class:`Fetched`, or raises a
:mod:`collectors.errors` exception (or ``OSError`` for a local problem) that the bundle builder
lists under ``failed``. Every source is bounded by the bundle's ``deadline`` (a
:func:`time.monotonic` value) besides its own byte caps. The sources:

* ``http``: the device's own log export (:meth:`collectors.base.Collector.collect_logs`);
* ``ssh``: the log files the device's profile lists (``channels.ssh.log_files``), over SFTP;
* ``blackbox``: the syslog the agent received from the device since a moment (read only);
* ``mtr``: the Teams Rooms event log (XML) of an MVC;
* ``mvc-zip``: the ZIP ``CollectSrsV2Logs.ps1`` writes (run through PowerShell on Windows, else
  the newest ZIP of a configured folder);
* ``ymcs``: the cloud's ``exportSyslog`` diagnosis of the device.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from collectors.base import Collector
from collectors.blackbox import BlackBoxes, format_time, safe_folder_name
from collectors.errors import CollectorError, DeviceTimeout, UnexpectedResponse
from collectors.mtr import MtrSource, Runner, run_capped
from collectors.safe_extract import archive_kind
from collectors.transports.ssh import SshLogFile, SshTransport
from collectors.ymcs import YmcsClient
from collectors.ymcs_models import YmcsKey, match_device
from config.bundles import DEFAULT_MVC_ZIP_DIR, MvcLogSettings

__all__ = [
    "SOURCE_NAMES",
    "BlackBoxSource",
    "Fetched",
    "HttpExportSource",
    "LogSource",
    "MtrEventsSource",
    "MvcZipSource",
    "SshFilesSource",
    "YmcsExportSource",
    "seconds_left",
]

#: every source a bundle may hold, in manifest order
SOURCE_NAMES = ("http", "ssh", "blackbox", "mtr", "mvc-zip", "ymcs")
_SEGMENT = re.compile(r"^\d{10}\.log$")
_TIME_LEN = len("2026-01-05T09:00:00.000000Z")
CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Fetched:
    """What a source delivered: notes for the manifest, and per-item errors that did not fail it."""

    notes: tuple[str, ...] = ()
    errors: tuple[str, ...] = field(default_factory=tuple)


class LogSource(Protocol):
    """One source of a bundle's files."""

    name: str

    def fetch(self, folder: Path, *, since: datetime, deadline: float) -> Fetched:
        """Write this source's files into ``folder`` (it exists and is empty).

        Raises:
            CollectorError: the source failed (any subclass; its ``reason`` goes to the manifest).
            OSError: a local file could not be written.
        """
        ...


def seconds_left(deadline: float, what: str) -> float:
    """Seconds until ``deadline``.

    Raises:
        DeviceTimeout: the deadline has passed.
    """
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeviceTimeout(f"{what}: no time left in the bundle's time cap")
    return left


class HttpExportSource:
    """The device's own log export over its web interface."""

    name = "http"

    def __init__(self, collector: Collector) -> None:
        """Use ``collector.collect_logs``."""
        self.collector = collector

    def fetch(self, folder: Path, *, since: datetime, deadline: float) -> Fetched:
        """Download the export into ``folder`` (the builder takes archives apart).

        Raises:
            CollectorError: as for :meth:`collectors.base.Collector.collect_logs`.
        """
        seconds_left(deadline, "http log export")
        bundle = self.collector.collect_logs(folder)
        if bundle.path.parent != folder:
            shutil.move(bundle.path, folder / bundle.path.name)
        return Fetched(notes=("the device's whole export: not cut to the time range",))


class SshFilesSource:
    """The log files a profile lists for SSH, fetched over SFTP with per-file byte caps."""

    name = "ssh"

    def __init__(
        self, connect: Callable[[], SshTransport], files: Sequence[SshLogFile], *, max_file_bytes: int
    ) -> None:
        """``connect`` builds the device's transport (one connection serves every file)."""
        self.connect = connect
        self.files = tuple(files)
        self.max_file_bytes = max_file_bytes

    def fetch(self, folder: Path, *, since: datetime, deadline: float) -> Fetched:
        """Fetch each file to ``folder/<remote path>``; a missing file is noted, not fatal.

        Raises:
            UnexpectedResponse: the profile lists no log files, or every file failed.
            CollectorError: connecting or logging in failed.
        """
        if not self.files:
            raise UnexpectedResponse("ssh: the profile lists no log_files")
        errors: list[str] = []
        with self.connect() as ssh:
            for item in self.files:
                dest = folder.joinpath(*_local_parts(item.path))
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    left = seconds_left(deadline, f"ssh {item.path}")
                    ssh.fetch(item.path, dest, timeout_s=left, max_bytes=self.max_file_bytes)
                except (DeviceTimeout, UnexpectedResponse) as err:
                    errors.append(f"{item.path}: {err}")
        if len(errors) == len(self.files):
            raise UnexpectedResponse("ssh: no log file could be fetched (" + "; ".join(errors) + ")")
        return Fetched(notes=("whole files: not cut to the time range",), errors=tuple(errors))


def _local_parts(remote: str) -> list[str]:
    """``/var/log/sys.log`` → ``["var", "log", "sys.log"]`` (no ``..``, no drive, no empty parts)."""
    parts = [p for p in re.split(r"[\\/]+", remote) if p not in ("", ".", "..")]
    return [re.sub(r'[<>:"|?*\x00-\x1f]', "_", p) for p in parts] or ["file"]


class BlackBoxSource:
    """The syslog the agent received from the device since ``since``, from its black box.

    With ``live`` (the running agent's :class:`BlackBoxes`) the box is read under its lock; else
    (``hezo-agent collect`` beside a running agent) the segment files under ``root`` are only
    read, never repaired or trimmed, so the agent's ring is left as it is.
    """

    name = "blackbox"

    def __init__(self, device_id: str, *, root: Path, live: BlackBoxes | None = None) -> None:
        """Read the box of ``device_id``."""
        self.device_id = device_id
        self.root = Path(root)
        self.live = live

    def fetch(self, folder: Path, *, since: datetime, deadline: float) -> Fetched:
        """Write ``folder/blackbox.log``.

        Nothing received in the time range is no failure of the source: it delivers no file and
        says so in ``errors``.

        Raises:
            OSError: the ring or the destination cannot be read or written.
        """
        dest = folder / "blackbox.log"
        if self.live is not None:
            size, _ = self.live.get(self.device_id).export(dest, since=since)
        else:
            size = self._export(dest, since, deadline)
        if size == 0:
            dest.unlink(missing_ok=True)
            return Fetched(errors=(f"no syslog received from {self.device_id} since {format_time(since)}",))
        return Fetched(notes=(f"syslog received since {format_time(since)}",))

    def _export(self, dest: Path, since: datetime, deadline: float) -> int:
        box = self.root / safe_folder_name(self.device_id)
        segments = sorted(p for p in box.glob("*.log") if _SEGMENT.match(p.name) and not p.is_symlink())
        floor = format_time(since)
        size = 0
        with dest.open("wb") as out:
            for segment in segments:
                seconds_left(deadline, "blackbox")
                try:
                    data = segment.read_bytes()
                except FileNotFoundError:
                    continue  # rotated away while reading
                for raw in data.split(b"\n"):
                    if _stamped_since(raw, floor):
                        out.write(raw + b"\n")
                        size += len(raw) + 1
        return size


def _stamped_since(raw: bytes, floor: str) -> bool:
    """Whether a black-box line starts with a receive time at or after ``floor``."""
    if len(raw) <= _TIME_LEN or raw[_TIME_LEN : _TIME_LEN + 1] != b" ":
        return False
    return raw[:_TIME_LEN].decode("ascii", "replace") >= floor


class MtrEventsSource:
    """The Teams Rooms event log of an MVC (``wevtutil`` on Windows, the configured XML file else)."""

    name = "mtr"

    def __init__(self, source: MtrSource) -> None:
        """Read through ``source`` (bounded by its own timeout and byte cap)."""
        self.source = source

    def fetch(self, folder: Path, *, since: datetime, deadline: float) -> Fetched:
        """Write ``folder/events.xml``.

        Raises:
            CollectorError: as for :meth:`collectors.mtr.MtrSource.read_xml`.
        """
        seconds_left(deadline, "mtr event log")
        (folder / "events.xml").write_bytes(self.source.read_xml())
        events = self.source.settings.max_events
        return Fetched(notes=(f"the newest {events} events of {self.source.settings.log_name!r}",))


class MvcZipSource:
    """The ZIP ``CollectSrsV2Logs.ps1`` writes into ``C:\\Rigel`` (documented by Microsoft)."""

    name = "mvc-zip"

    def __init__(
        self,
        settings: MvcLogSettings,
        *,
        platform: str | None = None,
        runner: Runner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Run the script on Windows (``platform`` ``win32``), else read ``settings.zip_dir``."""
        self.settings = settings
        self.windows = (platform or sys.platform) == "win32"
        self.runner = runner or run_capped
        self.clock = clock

    @property
    def folder(self) -> Path | None:
        """Where the ZIPs are (None: not configured on a non-Windows machine)."""
        if self.settings.zip_dir is not None:
            return self.settings.zip_dir
        return Path(DEFAULT_MVC_ZIP_DIR) if self.windows else None

    def command(self) -> list[str]:
        """The PowerShell command line (a list: no shell)."""
        return ["powershell", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Unrestricted",
                "-File", self.settings.script, "CollectSrsV2Logs.ps1"]  # fmt: skip

    def fetch(self, folder: Path, *, since: datetime, deadline: float) -> Fetched:
        """Copy the (new, on Windows) newest ZIP into ``folder``.

        Raises:
            DeviceTimeout: the script did not finish in time.
            UnexpectedResponse: no folder configured, the script failed, no ZIP, or one over the cap.
        """
        where = self.folder
        if where is None:
            raise UnexpectedResponse("mvc-zip: no bundles.mvc.zip_dir set (the script is for Windows)")
        started = self.clock()
        notes: list[str] = []
        if self.windows:
            timeout = min(self.settings.timeout_s, seconds_left(deadline, "mvc-zip"))
            try:
                result = self.runner(self.command(), timeout, 1024 * 1024)
            except OSError as err:
                raise UnexpectedResponse(f"mvc-zip: cannot run PowerShell ({type(err).__name__})") from err
            if result.timed_out:
                raise DeviceTimeout(f"mvc-zip: CollectSrsV2Logs.ps1 did not finish within {timeout:g} s")
            if result.returncode != 0:
                first = (result.stderr.decode("utf-8", "replace").strip().splitlines() or [""])[0][:200]
                raise UnexpectedResponse(f"mvc-zip: CollectSrsV2Logs.ps1 exit {result.returncode}: {first}")
            notes.append("made now by CollectSrsV2Logs.ps1")
        newest = self._newest(where, started - 5 if self.windows else None)
        size = newest.stat().st_size
        if size > self.settings.max_zip_bytes:
            cap = self.settings.max_zip_bytes
            raise UnexpectedResponse(f"mvc-zip: {newest.name} is {size} bytes, over {cap}")
        _copy(newest, folder / newest.name, size, deadline)
        stamp = datetime.fromtimestamp(newest.stat().st_mtime).astimezone()
        notes.append(f"{newest.name}, written {stamp.isoformat(timespec='seconds')}")
        return Fetched(notes=tuple(notes))

    def _newest(self, where: Path, not_before: float | None) -> Path:
        try:
            zips = [p for p in where.iterdir() if p.suffix.lower() == ".zip" and not p.is_symlink()]
            zips = [p for p in zips if p.is_file()]
        except OSError as err:
            raise UnexpectedResponse(f"mvc-zip: cannot read {where}: {(err.strerror or '').lower()}") from err
        if not_before is not None:
            zips = [p for p in zips if p.stat().st_mtime >= not_before]
        if not zips:
            which = " written by this run" if not_before is not None else ""
            raise UnexpectedResponse(f"mvc-zip: no ZIP in {where}{which}")
        return max(zips, key=lambda p: (p.stat().st_mtime, p.name))


def _copy(src: Path, dest: Path, size: int, deadline: float) -> str:
    """Copy at most ``size`` bytes, checking the deadline; return the SHA-256."""
    digest = hashlib.sha256()
    copied = 0
    with src.open("rb") as fin, dest.open("wb") as fout:
        while copied < size and (chunk := fin.read(min(CHUNK, size - copied))):
            seconds_left(deadline, f"copying {src.name}")
            fout.write(chunk)
            digest.update(chunk)
            copied += len(chunk)
    return digest.hexdigest()


class YmcsExportSource:
    """The device's syslog through YMCS: ``exportSyslog`` → poll → download."""

    name = "ymcs"

    def __init__(
        self,
        client: YmcsClient,
        keys: Callable[[], Sequence[YmcsKey]],
        *,
        poll_every_s: float,
        timeout_s: float,
        max_bytes: int,
    ) -> None:
        """``keys`` names the device in the cloud (YMCS id, serial, MAC), tried in order."""
        self.client = client
        self.keys = keys
        self.poll_every_s = poll_every_s
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes

    def fetch(self, folder: Path, *, since: datetime, deadline: float) -> Fetched:
        """Find the device in YMCS and download its syslog export into ``folder``.

        Raises:
            UnexpectedResponse: the device is not listed in YMCS (or no key is known).
            CollectorError: as for :meth:`collectors.ymcs.YmcsClient.export_syslog`.
        """
        keys = list(self.keys())
        if not keys:
            raise UnexpectedResponse("ymcs: no YMCS id, serial or MAC known for the device yet")
        found = match_device(self.client.list_devices(), keys)
        if found is None:
            raise UnexpectedResponse("ymcs: the device is not listed in YMCS")
        dest = folder / "exportSyslog.part"
        timeout = min(self.timeout_s, seconds_left(deadline, "ymcs exportSyslog"))
        self.client.export_syslog(
            found.id, dest, poll_every_s=self.poll_every_s, timeout_s=timeout, max_bytes=self.max_bytes
        )
        kind = archive_kind(dest)
        suffix = f".{kind}" if kind is not None else ".log"
        dest.rename(folder / f"exportSyslog{suffix}")
        return Fetched(notes=(f"YMCS diagnosis export of device {found.id}",))


def describe_error(err: BaseException) -> tuple[str, str]:
    """(reason tag, message) of a source's failure for the manifest."""
    if isinstance(err, CollectorError):
        return err.reason, str(err)
    if isinstance(err, OSError):
        return "local_error", f"{err.strerror or type(err).__name__}: {err.filename or ''}".rstrip(": ")
    return "error", f"{type(err).__name__}: {err}"
