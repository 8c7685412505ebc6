"""Log bundles: one device's logs from every source it has, redacted, in one tar.gz, audited.

:meth:`BundleBuilder.build` is the one entry point of the three routes (``hezo-agent collect``,
the local API, a ``/logs`` ticket comment). It runs the device's sources in parallel within the
bundle's time cap (a late or failing source is listed under ``failed``, the others still
arrive), takes device archives apart safely, redacts every text file, caps the total size, and
writes ``<source>/...`` files plus ``manifest.json`` (device identity, time range, every file's
size and SHA-256, what failed and why). Every pull, refused ones included, is appended to the
audit table. The bundle appears complete or not at all.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.audit import AuditLog, Outcome
from agent.bundle_models import (
    BadRequest,
    BundleError,
    BundleResult,
    ProgressEvent,
    ProgressHook,
    Requester,
    UnknownDevice,
    parse_since,
    parse_sources,
)
from agent.bundle_pack import FileEntry, Packer, apply_cap, write_bundle
from agent.bundle_sources import BundleEnv, Unavailable
from agent.known_secrets import redactor_for
from agent.redact import Redactor
from collectors.log_sources import SOURCE_NAMES, Fetched, LogSource, describe_error
from collectors.safe_extract import ExtractLimits
from config.schema import AgentConfig, Device

if TYPE_CHECKING:
    from agent.daemon import Agent

__all__ = [
    "BUNDLE_FORMAT",
    "SOURCE_NAMES",
    "BadRequest",
    "BundleBuilder",
    "BundleError",
    "BundleResult",
    "ProgressEvent",
    "Requester",
    "UnknownDevice",
    "collect_bundle",
    "manifest_of",
    "parse_since",
    "parse_sources",
]

log = logging.getLogger("hezo.bundle")

BUNDLE_FORMAT = "hezo-log-bundle/1"
STALE_STAGING_S = 86_400.0


class BundleBuilder:
    """Builds, writes and audits log bundles; thread-safe (one build per call)."""

    def __init__(
        self, env: BundleEnv, *, redactor: Redactor, audit: AuditLog, out_dir: Path | None = None
    ) -> None:
        """Pull through ``env``; bundles without an explicit destination go to ``out_dir/<device>/``."""
        self.env = env
        self.config = env.config
        self.redactor = redactor
        self.audit = audit
        self.out_dir = Path(out_dir or env.data_dir / "bundles")
        self._owned: list[Callable[[], None]] = []

    @classmethod
    def for_agent(cls, agent: Agent, *, redactor: Redactor | None = None) -> BundleBuilder:
        """A builder borrowing the running agent's parts (its audit table is in the agent's store)."""
        redactor = redactor or redactor_for(agent.config, agent.profiles.values())
        builder = cls(
            BundleEnv.from_agent(agent),
            redactor=redactor,
            audit=AuditLog(agent.store.path, redactor=redactor),
        )
        builder._owned.append(builder.audit.close)
        return builder

    @classmethod
    def standalone(
        cls, config: AgentConfig, data_dir: Path, *, redactor: Redactor | None = None
    ) -> BundleBuilder:
        """A builder of its own on the agent's data folder (``hezo-agent collect``).

        Raises:
            sqlite3.Error: the store cannot be opened.
        """
        env = BundleEnv.standalone(config, data_dir)
        redactor = redactor or redactor_for(config)
        builder = cls(env, redactor=redactor, audit=AuditLog(env.store.path, redactor=redactor))
        builder._owned += [builder.audit.close, env.close]
        return builder

    def close(self) -> None:
        """Release what this builder opened."""
        for release in self._owned:
            release()
        self._owned.clear()

    # --- one pull ---------------------------------------------------------------------------------

    def build(
        self,
        device_id: str,
        *,
        requester: Requester,
        since: datetime | timedelta | str | None = None,
        sources: str | Sequence[str] | None = None,
        dest: Path | None = None,
        progress: ProgressHook | None = None,
    ) -> BundleResult:
        """Pull ``device_id``'s logs from ``sources`` (default: all it has) into one bundle.

        ``since`` is a moment, a span back from now, or text for :func:`parse_since` (default
        ``bundles.default_since_s``). Without ``dest`` the bundle goes to the data folder's
        ``bundles/<device>/`` (the newest ``keep_per_device`` are kept).

        Raises:
            UnknownDevice: no such device (audited as rejected).
            BadRequest: unknown source names or an unreadable time range (audited as rejected).
            OSError: the bundle cannot be written (audited as failed).
        """
        notify = progress or (lambda _event: None)
        now = self.env.clock.now()
        try:
            device = self._device(device_id)
            since_at = self._since(since, now)
            wanted = parse_sources(sources)
        except BundleError as err:
            self._audit(requester, device_id, now, outcome="rejected", detail=str(err))
            raise
        try:
            return self._build(device, requester, since_at, now, wanted, dest, notify)
        except Exception as err:
            self._audit(
                requester,
                device_id,
                now,
                since=since_at,
                outcome="failed",
                detail=f"{type(err).__name__}: {err}",
            )
            raise

    def _device(self, device_id: str) -> Device:
        try:
            return self.config.device(device_id)
        except KeyError:
            known = ", ".join(d.id for d in self.config.devices[:20])
            raise UnknownDevice(f"unknown device {device_id!r} (devices: {known})") from None

    def _since(self, since: datetime | timedelta | str | None, now: datetime) -> datetime:
        if since is None:
            return now - timedelta(seconds=self.config.bundles.default_since_s)
        if isinstance(since, str):
            return parse_since(since, now)
        if isinstance(since, timedelta):
            return parse_since(f"{since.total_seconds()}s", now)
        return parse_since((since if since.tzinfo else since.replace(tzinfo=UTC)).isoformat(), now)

    def _build(
        self,
        device: Device,
        requester: Requester,
        since: datetime,
        now: datetime,
        wanted: tuple[str, ...] | None,
        dest: Path | None,
        notify: ProgressHook,
    ) -> BundleResult:
        settings = self.config.bundles
        started = time.monotonic()
        plan = self.env.sources(device, timeout_s=settings.timeout_s)
        chosen: dict[str, LogSource] = {}
        failed: list[dict[str, str]] = []
        skipped: list[dict[str, str]] = []
        for name in wanted or SOURCE_NAMES:
            source = plan[name]
            if isinstance(source, Unavailable):
                (failed if wanted else skipped).append(
                    {"source": name, "reason": "not_available", "error": source.why}
                    if wanted
                    else {"source": name, "why": source.why}
                )
                notify(ProgressEvent(name, "skipped", source.why))
            else:
                chosen[name] = source
        staging = self._staging()
        try:
            results = self._run(chosen, staging, since, started + settings.timeout_s, notify)
            manifest, entries = self._pack(
                staging, device, requester, since, now, results, failed, skipped, notify
            )
            target = Path(dest) if dest is not None else self._default_dest(device.id, now)
            notify(ProgressEvent("bundle", "packing", str(target)))
            size, sha256 = write_bundle(target, manifest, entries, now)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        outcome: Outcome = (
            "failed" if not entries else ("partial" if manifest["failed"] or manifest["omitted"] else "ok")
        )
        audit_id = self._audit(
            requester, device.id, now, since=since, outcome=outcome, sources=list(chosen), size=size,
            sha256=sha256, bundle=target.name,
            detail="; ".join(f"{f['source']}: {f['reason']}" for f in manifest["failed"]),
        )  # fmt: skip
        if dest is None:
            self._prune(target.parent)
        notify(ProgressEvent("bundle", "written", f"{target} {size} bytes sha256 {sha256}"))
        log.info(
            "event=bundle_written device=%s channel=%s outcome=%s size=%d sha256=%s failed=%s",
            device.id, requester.channel, outcome, size, sha256,
            ",".join(f["source"] for f in manifest["failed"]) or "-",
        )  # fmt: skip
        return BundleResult(target, sha256, size, manifest, outcome, audit_id)

    def _run(
        self,
        chosen: dict[str, LogSource],
        staging: Path,
        since: datetime,
        deadline: float,
        notify: ProgressHook,
    ) -> dict[str, tuple[Fetched | BaseException, float]]:
        """Run every source in its own (daemon) thread; a source still running at the deadline fails."""
        done: queue.Queue[tuple[str, Fetched | BaseException, float]] = queue.Queue()

        def run(name: str, source: LogSource) -> None:
            begun = time.monotonic()
            try:
                result: Fetched | BaseException = source.fetch(staging / name, since=since, deadline=deadline)
            except BaseException as err:  # a source must never take the bundle down with it
                result = err
            done.put((name, result, time.monotonic() - begun))

        for name, source in chosen.items():
            (staging / name).mkdir()
            notify(ProgressEvent(name, "start"))
            threading.Thread(target=run, args=(name, source), name=f"hezo-bundle-{name}", daemon=True).start()
        results: dict[str, tuple[Fetched | BaseException, float]] = {}
        while len(results) < len(chosen):
            try:
                name, result, took = done.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            results[name] = (result, took)
            if isinstance(result, BaseException):
                notify(ProgressEvent(name, "failed", describe_error(result)[1]))
            else:
                notify(ProgressEvent(name, "done"))
        for name in chosen:
            if name not in results:
                timeout = TimeoutError(
                    f"{name}: not finished within the bundle's {self.config.bundles.timeout_s:g} s"
                )
                results[name] = (timeout, self.config.bundles.timeout_s)
                notify(ProgressEvent(name, "failed", str(timeout)))
        return results

    def _pack(
        self,
        staging: Path,
        device: Device,
        requester: Requester,
        since: datetime,
        now: datetime,
        results: dict[str, tuple[Fetched | BaseException, float]],
        failed: list[dict[str, str]],
        skipped: list[dict[str, str]],
        notify: ProgressHook,
    ) -> tuple[dict[str, Any], list[FileEntry]]:
        settings = self.config.bundles
        extract = settings.extract
        packer = Packer(
            self.redactor,
            ExtractLimits(extract.max_files, extract.max_bytes, extract.max_ratio, extract.timeout_s),
        )
        listed: list[dict[str, Any]] = []
        everything: list[FileEntry] = []
        for name in SOURCE_NAMES:
            if name not in results:
                continue
            result, took = results[name]
            if isinstance(result, BaseException):
                reason, message = (
                    ("timeout", str(result)) if isinstance(result, TimeoutError) else describe_error(result)
                )
                failed.append({"source": name, "reason": reason, "error": message})
                continue
            notify(ProgressEvent(name, "packing"))
            refused = len(packer.refused)
            entries, errors = packer.process(staging, name)
            if not entries:
                why = "; ".join([*result.errors, *errors]) or "the source delivered no file"
                reasons = packer.refused[refused:]
                failed.append({"source": name, "reason": reasons[0] if reasons else "no_files", "error": why})
                continue
            everything += entries
            listed.append({"name": name, "duration_s": round(took, 3), "notes": list(result.notes),
                           "errors": [*result.errors, *errors], "entries": entries})  # fmt: skip
        kept, omitted = apply_cap(everything, settings.max_bytes)
        keep = {e.path for e in kept}
        sources = [
            {**{k: v for k, v in item.items() if k != "entries"},
             "files": [e.to_json() for e in item["entries"] if e.path in keep]}
            for item in listed
        ]  # fmt: skip
        manifest = self.redactor.value(
            self._manifest(device, since, now, sources, failed, skipped, omitted, kept)
        )
        # who asked is an identity, not a secret: kept as given (``token:ops-1`` is a token's name)
        manifest["requested_by"] = {"channel": requester.channel, "who": requester.who, "ref": requester.ref}
        return manifest, kept

    def _manifest(
        self,
        device: Device,
        since: datetime,
        now: datetime,
        sources: list[dict[str, Any]],
        failed: list[dict[str, str]],
        skipped: list[dict[str, str]],
        omitted: list[dict[str, Any]],
        kept: list[FileEntry],
    ) -> dict[str, Any]:
        settings = self.config.bundles
        known = self.env.facts(device.id)
        facts, seen_at = known if known is not None else (None, None)
        contract = self.config.contract_for(facts.serial) if facts is not None else None
        return {
            "format": BUNDLE_FORMAT,
            "created_at": now.astimezone(UTC).isoformat(),
            "device": {
                "id": device.id, "model": device.model, "site": device.site, "room": device.room,
                "host": device.host, "profile": self.env.profiles(device.id).name,
                "serial": facts.serial if facts else None, "firmware": facts.firmware if facts else None,
                "mac": facts.mac if facts else None, "hostname": facts.hostname if facts else None,
                "identity_seen_at": seen_at, "contract": contract.number if contract else None,
            },
            "time_range": {
                "since": since.astimezone(UTC).isoformat(), "until": now.astimezone(UTC).isoformat(),
                "note": "the black box is cut to this range; device exports and files come whole",
            },
            "requested_by": {},
            "sources": sources,
            "failed": failed,
            "skipped": skipped,
            "omitted": omitted,
            "totals": {"files": len(kept), "size_bytes": sum(e.size_bytes for e in kept)},
            "limits": {"max_bytes": settings.max_bytes, "timeout_s": settings.timeout_s},
            "redaction": {"site_patterns": len(self.config.redaction.patterns),
                          "known_secrets": len(self.redactor.literals)},
        }  # fmt: skip

    # --- files and the audit ------------------------------------------------------------------------

    def _staging(self) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for old in self.out_dir.glob(".staging-*"):  # left by a source still running past a deadline
            try:
                if time.time() - old.stat().st_mtime > STALE_STAGING_S:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                continue
        staging = self.out_dir / f".staging-{secrets.token_hex(6)}"
        staging.mkdir()
        return staging

    def _default_dest(self, device_id: str, now: datetime) -> Path:
        return self.out_dir / device_id / f"{device_id}-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}.tar.gz"

    def _prune(self, folder: Path) -> None:
        bundles = sorted(folder.glob("*.tar.gz"), key=lambda p: (p.stat().st_mtime, p.name))
        for old in bundles[: -self.config.bundles.keep_per_device]:
            old.unlink(missing_ok=True)

    def _audit(
        self,
        requester: Requester,
        device_id: str,
        now: datetime,
        *,
        outcome: Outcome,
        since: datetime | None = None,
        sources: Sequence[str] = (),
        size: int | None = None,
        sha256: str | None = None,
        bundle: str | None = None,
        detail: str = "",
    ) -> int:
        return self.audit.record(
            at=now, channel=requester.channel, requester=requester.who, ref=requester.ref,
            device_id=device_id[:64], since=since, until=now if since else None, sources=sources,
            size_bytes=size, sha256=sha256, outcome=outcome, detail=detail, bundle=bundle,
        )  # fmt: skip


def collect_bundle(
    agent: Agent,
    device_id: str,
    *,
    requester: Requester,
    since: datetime | timedelta | str | None = None,
    sources: str | Sequence[str] | None = None,
    dest: Path | None = None,
    progress: ProgressHook | None = None,
) -> BundleResult:
    """Pull one bundle through the running ``agent`` (the local API's and ``/logs``' entry point).

    Raises:
        UnknownDevice, BadRequest: the pull was refused (audited as rejected).
        OSError: the bundle cannot be written (audited as failed).
    """
    builder = BundleBuilder.for_agent(agent)
    try:
        return builder.build(
            device_id, requester=requester, since=since, sources=sources, dest=dest, progress=progress
        )
    finally:
        builder.close()


def manifest_of(bundle: Path) -> dict[str, Any]:
    """Read ``manifest.json`` back from a bundle (for tests and the API).

    Raises:
        OSError, tarfile.TarError, KeyError: not a readable bundle.
    """
    import tarfile

    with tarfile.open(bundle, "r:gz") as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        data: dict[str, Any] = json.loads(member.read().decode("utf-8"))
        return data
