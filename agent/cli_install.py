"""``hezo-agent init``, ``install-service``, ``uninstall-service`` and ``discover``: set-up commands.

The argument parsers and the command functions live here; :mod:`agent.cli` adds the parsers
(:func:`add_install_parsers`) and dispatches through :data:`INSTALL_COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "INSTALL_COMMANDS",
    "add_install_parsers",
    "run_discover",
    "run_init",
    "run_install",
    "run_uninstall",
]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_install_parsers(sub: Any) -> None:
    """Add ``init``, ``install-service``, ``uninstall-service`` and ``discover``."""
    from agent.discover import DEFAULT_PORTS

    init = sub.add_parser("init", help="write a starter config (asks in a terminal, else uses flags)")
    init.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("hezo-agent.yaml"),
        help="config file to write (default ./hezo-agent.yaml)",
    )
    init.add_argument("--site", help="site name (letters, digits, '-')")
    init.add_argument("--address", help="the site's delivery address for replacements")
    init.add_argument("--contact-name", help="whom the service desk calls at the site")
    init.add_argument("--contact-phone")
    init.add_argument("--contact-email")
    init.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="ID,MODEL,HOST[,ROOM]",
        help="a device (repeat for more); MODEL is A20, A30 or MVC",
    )
    init.add_argument("--force", action="store_true", help="replace an existing file")

    install = sub.add_parser("install-service", help="run the agent as a system service (systemd / Windows)")
    install.add_argument("-c", "--config", required=True, type=Path, help="the agent's YAML config")
    install.add_argument(
        "--user",
        default=None,
        help="service account (Linux default: hezo, created if missing; Windows: LocalSystem)",
    )
    install.add_argument("--log-format", choices=("text", "json"), default="text")
    install.add_argument("--dry-run", action="store_true", help="print what would be written and done")

    uninstall = sub.add_parser("uninstall-service", help="stop and remove the service (data and logs stay)")
    uninstall.add_argument("--dry-run", action="store_true")

    discover = sub.add_parser("discover", help="find Yealink devices on a network (loopback only by default)")
    discover.add_argument("network", help="CIDR (127.0.0.0/29), range (127.0.0.1-127.0.0.9) or address")
    discover.add_argument(
        "--ports",
        default=DEFAULT_PORTS,
        help=f"ports or PROTOCOL:PORT (https, http, vcapi, ssh, snmp, tcp); default {DEFAULT_PORTS}",
    )
    discover.add_argument("--concurrency", type=int, default=32, help="hosts probed at once (default 32)")
    discover.add_argument("--rate", type=float, default=50.0, help="connections per second (default 50)")
    discover.add_argument("--timeout", type=float, default=1.0, help="seconds per probe (default 1)")
    discover.add_argument(
        "--community-env",
        metavar="VAR",
        help="environment variable holding the SNMP v2c community (no SNMP without it)",
    )
    discover.add_argument("--site", help="site name to put in the YAML snippet")
    discover.add_argument("--json", action="store_true")
    discover.add_argument(
        "--allow-non-loopback",
        action="store_true",
        help="allow scanning real networks (only with the network owner's permission)",
    )


def _err(text: str) -> None:
    print(f"hezo-agent: {text}", file=sys.stderr)


# --- init -------------------------------------------------------------------------------------


def run_init(args: argparse.Namespace, *, interactive: bool | None = None, asker: Any = None) -> int:
    """Write the starter config; ask for missing values only in a terminal."""
    from agent.init import (
        InitValues,
        RichAsker,
        complete_values,
        parse_device_spec,
        render_config,
        write_config,
    )

    if interactive is None:
        interactive = sys.stdin.isatty()
    if args.output.exists() and not args.force:
        _err(f"{args.output} exists; give --force to replace it")
        return EXIT_FAIL
    try:
        devices = tuple(parse_device_spec(spec) for spec in args.device)
        given = InitValues(args.site, args.address, args.contact_name, args.contact_phone, args.contact_email,
                           devices=devices)  # fmt: skip
        values = complete_values(given, (asker or RichAsker()) if interactive else None)
    except ValueError as err:
        _err(str(err))
        return EXIT_USAGE
    ids = [d.id for d in values.devices]
    if len(set(ids)) != len(ids):
        _err("--device: each device id must be unique")
        return EXIT_USAGE
    try:
        write_config(args.output, render_config(values), force=args.force)
    except FileExistsError as err:
        _err(str(err))
        return EXIT_FAIL
    print(f"hezo-agent: wrote {args.output}")
    if values.placeholders:
        names = ", ".join(sorted(values.placeholders))
        print(
            f"hezo-agent: replace the CHANGE ME values ({names}) before starting the agent", file=sys.stderr
        )
    print(f"next: set HEZO_DEVICE_PASSWORD, then  hezo-agent check -c {args.output}")
    return EXIT_OK


# --- install-service / uninstall-service ------------------------------------------------------


def run_install(args: argparse.Namespace) -> int:
    """Install the service for this platform (or print what would be done)."""
    from config.loader import load_config

    config = load_config(args.config)
    if sys.platform == "win32":
        return _install_windows(args, config)
    if not sys.platform.startswith("linux"):
        _err(
            f"install-service supports Linux (systemd) and Windows, not {sys.platform}; use `hezo-agent run`"
        )
        return EXIT_FAIL
    from agent.service import (
        ServiceError,
        install_systemd,
        preflight,
        render_env_file,
        render_unit,
        unit_spec,
    )

    try:
        spec = unit_spec(config, args.config, args.user or "hezo", log_format=args.log_format)
        if args.dry_run:
            print(f"# {spec.environment_file} (created only if missing; mode 0600)")
            print(render_env_file(spec.env_names))
            print(f"# /etc/systemd/system/hezo-agent.service for user {spec.user}")
            print(render_unit(spec))
            for problem in preflight(spec):
                print(f"hezo-agent: warning: {problem}", file=sys.stderr)
            print("# then: systemctl daemon-reload && systemctl enable --now hezo-agent.service")
            return EXIT_OK
        for line in install_systemd(spec):
            print(f"hezo-agent: {line}")
    except ServiceError as err:
        _err(str(err))
        return EXIT_FAIL
    print("hezo-agent: running; see `systemctl status hezo-agent` and `journalctl -u hezo-agent`")
    if config.agent.data_dir is None:
        print(f"hezo-agent: its data is in {spec.data_dir}: give status, tickets and outbox "
              f"--data-dir {spec.data_dir}, or set agent.data_dir in the config")  # fmt: skip
    return EXIT_OK


def _install_windows(args: argparse.Namespace, config: Any) -> int:
    import platformdirs

    data_dir = Path(config.agent.data_dir or platformdirs.site_data_dir("hezo-agent", appauthor=False))
    log_file = Path(platformdirs.site_log_dir("hezo-agent", appauthor=False)) / "hezo-agent.log"
    if args.dry_run:
        print(
            f"would install Windows service hezo-agent: config {args.config.absolute()}, data {data_dir}, "
            f"log {log_file}, account {args.user or 'LocalSystem'}, automatic start, restart on failure"
        )
        return EXIT_OK
    from agent import service_windows

    for line in service_windows.install(
        args.config.absolute(),
        data_dir=data_dir,
        log_file=log_file,
        user=args.user,
        log_format=args.log_format,
    ):
        print(f"hezo-agent: {line}")
    return EXIT_OK


def run_uninstall(args: argparse.Namespace) -> int:
    """Remove the service for this platform."""
    if args.dry_run:
        print("would stop, disable and remove the hezo-agent service; data, logs and secrets stay")
        return EXIT_OK
    if sys.platform == "win32":
        from agent import service_windows

        lines = service_windows.uninstall()
    else:
        from agent.service import ServiceError, uninstall_systemd

        try:
            lines = uninstall_systemd()
        except ServiceError as err:
            _err(str(err))
            return EXIT_FAIL
    for line in lines:
        print(f"hezo-agent: {line}")
    return EXIT_OK


# --- discover ---------------------------------------------------------------------------------


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (nothing when stderr is not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield lambda _n: None
        return
    with Progress(TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:  # fmt: skip
        task = bar.add_task("scan", total=total)
        yield lambda n: bar.advance(task, n)


def run_discover(args: argparse.Namespace, *, neighbours: Callable[[], dict[str, str]] | None = None) -> int:
    """Scan, print the table (or JSON) and the YAML snippet."""
    from agent.discover import (
        Scanner,
        ScanSettings,
        TargetRefused,
        parse_ports,
        parse_targets,
        reports_json,
        yaml_snippet,
    )

    community = None
    if args.community_env:
        community = os.environ.get(args.community_env)
        if not community:
            _err(f"--community-env: environment variable {args.community_env} is not set or empty")
            return EXIT_USAGE
    try:
        hosts = parse_targets(args.network, allow_non_loopback=args.allow_non_loopback)
        settings = ScanSettings(parse_ports(args.ports), args.timeout, args.concurrency, args.rate, community)
    except TargetRefused as err:
        _err(f"refused: {err}")
        return EXIT_USAGE
    except ValueError as err:
        _err(str(err))
        return EXIT_USAGE
    if not community and any(p.kind == "snmp" for p in settings.ports):
        print("hezo-agent: SNMP skipped: no --community-env given", file=sys.stderr)
    scanner = Scanner(settings, neighbours=neighbours) if neighbours else Scanner(settings)
    with _progress(len(hosts), not args.json) as advance:
        reports = scanner.scan(hosts, advance)
    snippet = yaml_snippet(reports, args.site)
    if args.json:
        print(reports_json(reports, len(hosts), snippet))
        return EXIT_OK
    _print_reports(reports)
    print(
        f"scanned {len(hosts)} address(es): {len(reports)} answered, "
        f"{sum(1 for r in reports if r.yealink)} Yealink device(s)"
    )
    print(snippet, end="")
    return EXIT_OK


def _print_reports(reports: Any) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text("hezo-agent discover"))
    for col in ("host", "open ports", "Yealink", "model", "firmware", "name", "evidence"):
        table.add_column(col)
    for r in reports:
        cells = (r.host, " ".join(r.open_ports) or "-", "yes" if r.yealink else "no", r.model or "-",
                 r.firmware or "-", r.name or "-", "; ".join(r.evidence) or "-")  # fmt: skip
        table.add_row(*(Text(c) for c in cells))
    Console().print(table)


INSTALL_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "init": run_init,
    "install-service": run_install,
    "uninstall-service": run_uninstall,
    "discover": run_discover,
}
