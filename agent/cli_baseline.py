"""``hezo-agent baseline DEVICE``: accept a device's current configuration as its drift baseline.

An admin who changed a device on purpose runs this once; the running agent picks the new file
up at its next poll and resolves the ``config_drift`` ticket. ``--show`` only prints what differs
(secret values masked), without accepting anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.config_baseline import BaselineStore, diff_lines
from collectors.base import Collector
from collectors.errors import CollectorError
from collectors.pins import PinStore
from collectors.registry import DRIVERS
from config.loader import load_profile, profile_name, resolve_password
from config.schema import AgentConfig

__all__ = ["add_baseline_parser", "run_baseline"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_baseline_parser(sub: Any, config_arg: Any) -> None:
    """Add ``baseline DEVICE [--show] [--json]``."""
    baseline = sub.add_parser(
        "baseline", help="accept a device's current configuration as its config_drift baseline"
    )
    baseline.add_argument("device", help="device id (see hezo-agent status)")
    config_arg(baseline)
    baseline.add_argument(
        "--show", action="store_true", help="only print how the device differs from its baseline"
    )
    baseline.add_argument("--json", action="store_true", help="print the result as JSON")


def _read_config(config: AgentConfig, device_id: str, data_dir: Path) -> dict[str, Any] | str:
    """The device's configuration over its profile's HTTP interface, or a one-line reason it failed."""
    index, device = next((i, d) for i, d in enumerate(config.devices) if d.id == device_id)
    search = [config.agent.profiles_dir] if config.agent.profiles_dir else []
    profile = load_profile(profile_name(device.model, device.profile), search)
    password = resolve_password(device.credentials, f"devices[{index}]") if device.credentials else None
    factory: Callable[..., Collector] = DRIVERS[profile.driver]
    collector = factory(
        device,
        profile,
        password=password,
        pins=PinStore(data_dir / "pins.json"),  # the agent's own pins: a changed certificate is refused
        timeout_s=config.agent.timeout_s,
        max_response_bytes=config.agent.max_response_bytes,
        max_log_bytes=config.agent.max_log_bytes,
    )
    try:
        raw = collector.collect_config()
    except CollectorError as err:
        return f"cannot read the configuration ({err.reason}): {err}"
    finally:
        collector.close()
    if raw is None:
        return f"profile {profile.name} maps no config endpoint (fields.config): nothing to compare"
    return dict(raw)


def run_baseline(args: argparse.Namespace, config: AgentConfig, data_dir: Path) -> int:
    """Show or accept ``args.device``'s configuration as its baseline; return the exit code.

    Raises:
        ConfigError: the device's password cannot be read.
    """
    if not any(d.id == args.device for d in config.devices):
        known = ", ".join(d.id for d in config.devices[:12])
        print(f"hezo-agent: unknown device {args.device!r} (known: {known})", file=sys.stderr)
        return EXIT_USAGE
    raw = _read_config(config, args.device, data_dir)
    if isinstance(raw, str):
        print(f"hezo-agent: {args.device}: {raw}", file=sys.stderr)
        return EXIT_FAIL
    store = BaselineStore(data_dir)
    current = store.prepare(raw)
    previous = store.load(args.device)
    changes = diff_lines(previous or {}, current, config.incidents.config_drift.ignore_keys)
    path = store.path(args.device)
    if not args.show:
        path = store.save(args.device, current, datetime.now(UTC), by="hezo-agent baseline")
    if args.json:
        result = {
            "device": args.device,
            "accepted": not args.show,
            "had_baseline": previous is not None,
            "settings": len(current),
            "changes": changes,
            "path": str(path),
        }
        print(json.dumps(result, indent=2))
        return EXIT_OK
    if previous is None:
        print(f"{args.device}: no baseline yet ({len(current)} settings read)")
    elif not changes:
        print(f"{args.device}: the configuration matches its baseline")
    else:
        print(f"{args.device}: {len(changes)} setting(s) differ from the baseline:")
        print("\n".join(f"  {line}" for line in changes))
    if not args.show:
        print(f"accepted as the new baseline: {path}")
    return EXIT_OK
