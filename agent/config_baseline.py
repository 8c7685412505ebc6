"""Configuration drift inputs: the device's configuration, read rarely, against its saved baseline.

The configuration comes from the profile's ASSUMED ``config`` endpoint
(:meth:`collectors.base.Collector.collect_config`), read at most every
``incidents.config_drift.check_every_minutes``, never as part of a health poll. It is flattened
to dotted keys (``network.ntp_server``) so a ticket names the very setting that changed.

The baseline is one JSON file per device, ``<data_dir>/baselines/<device>.json`` (plain files,
not the SQLite store: an admin may read or delete one). The first configuration read becomes
the baseline automatically; ``hezo-agent baseline DEVICE`` accepts the current one after an
intended change. Values of secret-looking settings (:func:`agent.redact.secret_key`) are never
kept: they are replaced by a keyed hash (HMAC-SHA256 with a random per-agent key in the same
folder), so a changed SIP password still shows as drift while neither the file nor a ticket
holds it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from agent.detectors import ABSENT, ignored_key, shown_value
from agent.models import PollOutcome
from agent.redact import secret_key
from collectors.base import Collector
from collectors.errors import CollectorError

log = logging.getLogger("hezo.config_drift")

BASELINE_DIR = "baselines"
KEY_FILE = ".hmac-key"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")

#: a flattened configuration: dotted key -> JSON value (secret values as keyed hashes)
FlatConfig = dict[str, object]


def flatten(config: Mapping[str, Any], prefix: str = "") -> FlatConfig:
    """Nested objects become dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``); lists stay values."""
    flat: FlatConfig = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def diff_lines(
    baseline: Mapping[str, object], current: Mapping[str, object], ignore: tuple[str, ...] = ()
) -> list[str]:
    """What changed from ``baseline`` to ``current``, one line per setting, secrets masked.

    ``+ key: value`` was added, ``- key: value`` removed, ``~ key: old -> new`` changed; settings
    under ``ignore`` (``incidents.config_drift.ignore_keys``) are marked ``(ignored)``.
    """
    lines = []
    for key in sorted({*baseline, *current}):
        old, new = baseline.get(key, ABSENT), current.get(key, ABSENT)
        if old == new:
            continue
        if old is ABSENT:
            line = f"+ {key}: {shown_value(key, new)}"
        elif new is ABSENT:
            line = f"- {key}: {shown_value(key, old)}"
        else:
            line = f"~ {key}: {shown_value(key, old)} -> {shown_value(key, new)}"
        lines.append(line + (" (ignored)" if ignored_key(key, ignore) else ""))
    return lines


class BaselineStore:
    """The per-device baseline files in ``<data_dir>/baselines`` (thread-safe; re-read when changed)."""

    def __init__(self, data_dir: Path) -> None:
        self.folder = Path(data_dir) / BASELINE_DIR
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[int, int], FlatConfig]] = {}
        self._key: bytes | None = None

    def path(self, device_id: str) -> Path:
        """The baseline file of ``device_id`` (an id unfit for a file name gets a hashed one)."""
        if _SAFE_ID.match(device_id):
            return self.folder / f"{device_id}.json"
        digest = hashlib.sha256(device_id.encode("utf-8")).hexdigest()[:16]
        return self.folder / f"device-{digest}.json"

    def prepare(self, raw: Mapping[str, Any]) -> FlatConfig:
        """Flatten ``raw`` and replace every secret-looking setting's value by its keyed hash.

        Raises:
            OSError: the per-agent hash key cannot be read or created.
        """
        key = self._hash_key()
        flat = flatten(raw)
        for name, value in flat.items():
            if secret_key(name) and value not in (None, ""):
                text = json.dumps(value, sort_keys=True, default=str)
                flat[name] = (
                    "hmac-sha256:" + hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()[:32]
                )
        return flat

    def load(self, device_id: str) -> FlatConfig | None:
        """The saved baseline of ``device_id``, or None when there is none (or it is unreadable: logged)."""
        path = self.path(device_id)
        try:
            st = path.stat()
        except FileNotFoundError:
            with self._lock:
                self._cache.pop(device_id, None)
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._cache.get(device_id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            config = data["config"]
            if not isinstance(config, dict):
                raise ValueError("config is not an object")
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("event=config_baseline_unreadable device=%s path=%s error=%s", device_id, path, err)
            return None
        with self._lock:
            self._cache[device_id] = (stamp, config)
        return config

    def save(self, device_id: str, config: FlatConfig, at: datetime, *, by: str) -> Path:
        """Write ``config`` (from :meth:`prepare`) as the baseline of ``device_id``, atomically.

        Raises:
            OSError: the file cannot be written.
        """
        path = self.path(device_id)
        body = {"device_id": device_id, "accepted_at": at.isoformat(), "accepted_by": by, "config": config}
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".baseline-", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(body, fh, indent=2, sort_keys=True, default=str)
                fh.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with self._lock:
            self._cache.pop(device_id, None)
        return path

    def _hash_key(self) -> bytes:
        """The per-agent HMAC key for secret values, made (owner-only) on first use."""
        if self._key is not None:
            return self._key
        path = self.folder / KEY_FILE
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(secrets.token_hex(32) + "\n")
        key = bytes.fromhex(path.read_text(encoding="ascii").strip())
        if len(key) < 16:
            raise OSError(f"{path}: hash key too short (delete the file to make a new one)")
        self._key = key
        return key


class ConfigWatch:
    """Per device: the latest configuration read (refreshed every ``every``) and its baseline."""

    def __init__(
        self, store: BaselineStore, collector_for: Callable[[str], Collector], every: timedelta
    ) -> None:
        self.store = store
        self._collector_for = collector_for
        self._every = every
        self._lock = threading.Lock()
        self._read_at: dict[str, datetime] = {}
        self._current: dict[str, FlatConfig] = {}

    def inputs(self, outcome: PollOutcome) -> tuple[FlatConfig | None, FlatConfig | None]:
        """The (configuration, baseline) to judge after ``outcome``; (None, None) when unknown.

        Reads the device's configuration when none was read for ``every`` (a failed read is
        logged and retried then); saves the first one read as the baseline. A baseline accepted
        meanwhile (``hezo-agent baseline``) is picked up at once, without a new read.
        """
        device_id = outcome.device_id
        if not outcome.ok or outcome.sample is None:
            return None, None
        with self._lock:
            last = self._read_at.get(device_id)
            due = last is None or not last <= outcome.at < last + self._every
            if due:
                self._read_at[device_id] = outcome.at
        if due:
            self._read(device_id, outcome.at)
        with self._lock:
            current = self._current.get(device_id)
        if current is None:
            return None, None
        return current, self.store.load(device_id)

    def _read(self, device_id: str, at: datetime) -> None:
        try:
            raw = self._collector_for(device_id).collect_config()
            config = None if raw is None else self.store.prepare(raw)
        except CollectorError as err:
            log.warning("event=config_read_failed device=%s reason=%s detail=%s", device_id, err.reason, err)
            return
        except OSError as err:
            log.warning("event=config_read_failed device=%s reason=hash_key error=%s", device_id, err)
            return
        with self._lock:
            if config is None:
                self._current.pop(device_id, None)
                return
            self._current[device_id] = config
        if self.store.load(device_id) is None:
            try:
                path = self.store.save(device_id, config, at, by="agent (first configuration read)")
            except OSError as err:
                log.warning("event=config_baseline_unsaved device=%s error=%s", device_id, err)
                return
            log.info(
                "event=config_baseline_saved device=%s settings=%d path=%s", device_id, len(config), path
            )
