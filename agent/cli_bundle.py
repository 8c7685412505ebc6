"""``hezo-agent collect`` (a log bundle with a progress bar) and ``hezo-agent audit`` (who pulled what)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from agent.audit import AuditLog
from agent.bundle import SOURCE_NAMES, BundleBuilder, BundleError, ProgressEvent, Requester
from agent.known_secrets import redactor_for
from agent.redact import install_log_redaction
from config.schema import AgentConfig

__all__ = ["add_audit_parser", "add_collect_parser", "run_audit", "run_collect"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
_STYLE = {"done": "green", "failed": "red", "skipped": "yellow", "start": "cyan", "packing": "cyan"}


def add_collect_parser(sub: Any, config_arg: Any) -> None:
    """Add ``collect DEVICE [-o FILE] [--since 30m] [--sources ...] [--json]``."""
    collect = sub.add_parser("collect", help="pull one device's logs into a redacted tar.gz bundle")
    collect.add_argument("device", help="device id (see hezo-agent status)")
    config_arg(collect)
    collect.add_argument(
        "-o", "--output", type=Path, help="bundle file (default: ./<device>-<UTC time>.tar.gz)"
    )
    collect.add_argument("--since", help="time range start: 30m, 2h, 1d or an ISO time (default from config)")
    collect.add_argument(
        "--sources", help=f"comma-separated, default all the device has: {','.join(SOURCE_NAMES)}"
    )
    collect.add_argument("--json", action="store_true", help="print the result and manifest as JSON")


def add_audit_parser(sub: Any, config_arg: Any) -> None:
    """Add ``audit [--device ID] [--limit N] [--json]``."""
    audit = sub.add_parser("audit", help="show the audit of log pulls (who, how, which device, outcome)")
    config_arg(audit)
    audit.add_argument("--device", help="only this device")
    audit.add_argument("--limit", type=int, default=200, help="newest N entries (default 200)")
    audit.add_argument("--json", action="store_true")


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    """A rich progress display on stderr: one line per source, plus an overall bar."""
    if not enabled:
        yield lambda _event: None
        return
    console = Console(stderr=True)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        overall = bar.add_task("bundle", total=None, state="")
        tasks: dict[str, TaskID] = {}

        def show(event: ProgressEvent) -> None:
            if event.source == "bundle":
                bar.update(overall, state=event.state)
                return
            if event.source not in tasks:
                tasks[event.source] = bar.add_task(event.source, total=1, state="")
                bar.update(overall, total=len(tasks))
            state = Text(
                event.state + (f": {event.detail[:70]}" if event.detail else ""),
                style=_STYLE.get(event.state, ""),
            )
            finished = event.state in ("done", "failed", "skipped")
            bar.update(tasks[event.source], state=state, completed=1 if finished else 0)
            if finished:
                bar.advance(overall)

        yield show


def run_collect(args: argparse.Namespace, config: AgentConfig, data_dir: Path) -> int:
    """Pull a bundle for ``args.device`` and report where it is, its size and SHA-256."""
    redactor = redactor_for(config)
    restore = install_log_redaction(redactor)
    builder = BundleBuilder.standalone(config, data_dir, redactor=redactor)
    try:
        dest = args.output or Path(f"{args.device}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.tar.gz")
        with _progress(not args.json) as show:
            result = builder.build(
                args.device,
                requester=Requester.cli(),
                since=args.since,
                sources=args.sources,
                dest=dest,
                progress=show,
            )
    except BundleError as err:
        print(f"hezo-agent: {err}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        builder.close()
        restore()
    if args.json:
        summary = {"path": str(result.path), "size_bytes": result.size_bytes, "sha256": result.sha256,
                   "outcome": result.outcome, "manifest": result.manifest}  # fmt: skip
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print(f"{result.path}  {result.size_bytes} bytes  sha256 {result.sha256}  ({result.outcome})")
        for failed in result.failed:
            print(f"  failed {failed['source']}: {failed['reason']}: {failed['error']}", file=sys.stderr)
    return EXIT_FAIL if result.outcome == "failed" else EXIT_OK


def run_audit(args: argparse.Namespace, data_dir: Path) -> int:
    """Print the audit of log pulls, newest first."""
    audit = AuditLog.open(data_dir)
    try:
        entries = audit.entries(device_id=args.device, limit=args.limit)
    finally:
        audit.close()
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=2, ensure_ascii=False))
        return EXIT_OK
    table = Table(title=Text("hezo-agent audit"))
    for column in (
        "id",
        "at (UTC)",
        "channel",
        "requester",
        "device",
        "since",
        "outcome",
        "size",
        "sha256",
        "detail",
    ):
        table.add_column(column)
    for e in entries:
        cells = (
            str(e.id), f"{e.at.astimezone(UTC):%Y-%m-%d %H:%M:%S}", e.channel,
            e.requester + (f" ({e.ref})" if e.ref else ""), e.device_id,
            f"{e.since.astimezone(UTC):%H:%M:%S}" if e.since else "-", e.outcome,
            str(e.size_bytes) if e.size_bytes is not None else "-", (e.sha256 or "-")[:16], e.detail or "-",
        )  # fmt: skip
        table.add_row(*(Text(c) for c in cells))
    Console().print(table)
    return EXIT_OK
