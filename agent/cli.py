"""The ``hezo-agent`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import platformdirs
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent.cli_install import INSTALL_COMMANDS
from config.loader import ConfigError, load_config
from config.schema import AgentConfig
from uploader.base import BackendError

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def default_config_path() -> Path:
    """Where the config is looked for without ``-c``: ``$HEZO_AGENT_CONFIG``, else the user config folder."""
    env = os.environ.get("HEZO_AGENT_CONFIG")
    if env:
        return Path(env)
    return Path(platformdirs.user_config_dir("hezo-agent", appauthor=False)) / "hezo-agent.yaml"


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", type=Path, default=default_config_path(),
        help="the agent's YAML config (default: $HEZO_AGENT_CONFIG, else %(default)s)",
    )
    parser.add_argument("--data-dir", type=Path, help="override agent.data_dir")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every sub-command."""
    parser = argparse.ArgumentParser(
        prog="hezo-agent", description="HEZO+ health agent for Yealink A20/A30 and MVC video bars"
    )
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run a simulated fleet and the agent end to end")
    demo.add_argument("--seconds", type=float, default=40.0, help="stop after this long (default 40)")
    demo.add_argument("--devices", type=int, default=12, help="simulated devices (default 12)")
    demo.add_argument("--json", action="store_true", help="print one JSON summary instead of the live table")

    run = sub.add_parser("run", help="run the agent until Ctrl+C or SIGTERM")
    _config_arg(run)
    run.add_argument("--log-file", type=Path, help="rotating log file (default: the user log folder)")
    run.add_argument("--log-format", choices=("text", "json"), default="text", help="json: one object a line")

    check = sub.add_parser("check", help="validate the config and probe every device once")
    _config_arg(check)
    check.add_argument("--json", action="store_true")

    status = sub.add_parser("status", help="show each device's state as the agent last saw it")
    _config_arg(status)
    status.add_argument("--json", action="store_true")

    tickets = sub.add_parser("tickets", help="list tickets of the local backend")
    _config_arg(tickets)
    tickets.add_argument("--json", action="store_true")
    tickets.add_argument("--open", action="store_true", help="only open tickets")

    outbox = sub.add_parser("outbox", help="show the ticket outbox; retry or drop an intent")
    _config_arg(outbox)
    outbox.add_argument("action", nargs="?", choices=("list", "retry", "drop"), default="list",
                        help="list (default); retry [ID]: release a held helpdesk and send now; drop ID")
    outbox.add_argument("id", nargs="?", help="intent id (or idempotency key); retry without it = all")
    outbox.add_argument("--json", action="store_true")

    from agent.cli_bundle import add_audit_parser, add_collect_parser

    add_collect_parser(sub, _config_arg)
    add_audit_parser(sub, _config_arg)

    from agent.cli_baseline import add_baseline_parser

    add_baseline_parser(sub, _config_arg)

    from agent.cli_api import add_api_parser

    add_api_parser(sub, _config_arg)

    from agent.cli_install import add_install_parsers

    add_install_parsers(sub)
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def _load(args: argparse.Namespace) -> AgentConfig:
    config = load_config(args.config)
    if args.data_dir is not None:
        config = config.model_copy(
            update={"agent": config.agent.model_copy(update={"data_dir": args.data_dir})}
        )
    return config


def _run_logging(args: argparse.Namespace, config: AgentConfig) -> Callable[[], None]:
    """Log of ``run``: stderr plus a file rotating by size, as text or JSON lines, secrets masked.

    Returns the function that removes the masking again (tests; ``run`` keeps it to the end).
    """
    from agent.known_secrets import redactor_for
    from agent.logsetup import default_log_file, setup_logging
    from agent.redact import install_log_redaction

    log_file = args.log_file or default_log_file()
    setup_logging(
        args.log_level or "INFO",
        fmt=args.log_format,
        log_file=log_file,
        max_bytes=config.agent.log_max_bytes,
        backups=config.agent.log_backups,
    )
    return install_log_redaction(redactor_for(config))


def cmd_run(args: argparse.Namespace) -> int:
    """Run the agent until interrupted."""
    from agent.daemon import Agent

    config = _load(args)
    _run_logging(args, config)
    try:
        agent = Agent(config)
    except ConfigError as err:  # e.g. a password variable that is not set: name the config file
        raise ConfigError(str(args.config), err.lines) from err
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)  # defined on Windows too
    agent.start()
    print(f"hezo-agent: watching {len(config.devices)} devices; data in {agent.data_dir}; Ctrl+C stops")
    if agent.api is not None:
        api = agent.api
        print(f"hezo-agent: status page {api.url}/, metrics {api.url}/metrics, API token: {api.tokens.path}")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        agent.stop()
    print("hezo-agent: stopped")
    return EXIT_OK


def _print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str | Text]]) -> None:
    """Print a table; cell text is shown literally (device data may contain ``[...]``)."""
    table = Table(title=Text(title))
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in row))
    Console().print(table)


def cmd_check(args: argparse.Namespace) -> int:
    """Probe every device once and print what answered and what to fix."""
    from agent.check import check_devices

    config = _load(args)
    rows = check_devices(config)
    if args.json:
        print(json.dumps([row.to_json() for row in rows], indent=2, ensure_ascii=False))
    else:
        _print_table(
            f"hezo-agent check: {args.config}",
            ("device", "model", "address", "result", "latency", "firmware", "serial", "what to do"),
            [
                (
                    row.device_id,
                    row.model,
                    row.address,
                    Text(row.result, style="green" if row.ok else "red"),
                    f"{row.latency_ms:.0f} ms" if row.latency_ms is not None else "-",
                    row.firmware or "-",
                    row.serial or "-",
                    row.hint,
                )
                for row in rows
            ],
        )
        _print_table(
            "channels",
            ("device", "channel", "result", "latency", "detail"),
            [
                (
                    row.device_id,
                    str(c["channel"]),
                    Text(str(c["result"]), style=_channel_style(c)),
                    f"{c['latency_ms']:.0f} ms",
                    str(c["detail"]) or "-",
                )
                for row in rows
                for c in row.channels
            ],
        )
    failed = [row for row in rows if not row.ok]
    if failed:
        print(f"hezo-agent: {len(failed)} of {len(rows)} devices did not pass the check", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def _channel_style(channel: dict[str, object]) -> str:
    """Green for ok, yellow for a neutral result (e.g. the YMCS cloud unreachable), red for failing."""
    return "green" if channel["ok"] else "yellow" if channel.get("neutral") else "red"


def cmd_status(args: argparse.Namespace) -> int:
    """Print the state the agent last recorded for each device."""
    from agent.reports import device_status

    config = _load(args)
    rows = device_status(config)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return EXIT_OK
    _print_table(
        "hezo-agent status",
        ("device", "site", "room", "model", "state", "last seen", "last result", "serial"),
        [
            (
                r["device"],
                r["site"],
                r["room"],
                r["model"],
                r["state"],
                r["last_seen"] or "never",
                r["last_reason"] or "-",
                r["serial"] or "-",
            )
            for r in rows
        ],
    )
    return EXIT_OK


def cmd_tickets(args: argparse.Namespace) -> int:
    """List the tickets in the local backend."""
    from agent.reports import list_tickets

    config = _load(args)
    try:
        tickets = list_tickets(config, open_only=args.open)
    except ValueError as err:
        print(f"hezo-agent: {err}", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps(tickets, indent=2, ensure_ascii=False))
        return EXIT_OK
    _print_table(
        "hezo-agent tickets",
        ("id", "priority", "status", "device", "problem", "serial", "contract", "title"),
        [
            (
                t["id"],
                t["priority"],
                t["status"],
                t.get("device") or "-",
                t.get("problem") or "-",
                t.get("serial") or "-",
                t.get("contract") or "-",
                t["title"],
            )
            for t in tickets
        ],
    )
    return EXIT_OK


def cmd_outbox(args: argparse.Namespace) -> int:
    """Show the ticket outbox, or retry or drop one of its intents."""
    from agent.clock import SystemClock
    from agent.daemon import default_data_dir
    from uploader import outbox_admin

    config = _load(args)
    data_dir = Path(config.agent.data_dir or default_data_dir())
    with outbox_admin.opened(data_dir) as (store, spool):
        if args.action == "list":
            report = outbox_admin.report(store, config.ticketing.outbox.quota_mb * 1024 * 1024)
            if args.json:
                print(json.dumps(report, indent=2, ensure_ascii=False))
            else:
                _print_outbox(report)
            return EXIT_OK
        if args.action == "drop" and not args.id:
            print("hezo-agent: outbox drop needs an intent ID (see hezo-agent outbox)", file=sys.stderr)
            return EXIT_FAIL
        clock = SystemClock()
        try:
            if args.action == "retry":
                seqs = outbox_admin.retry_intents(store, args.id, clock.now().timestamp())
                print(f"hezo-agent: {len(seqs)} intent(s) due now; any held helpdesk released")
            else:
                gone = outbox_admin.drop_intent(store, spool, args.id, clock.now())
                print(f"hezo-agent: dropped intent {gone.seq} ({gone.kind} of {gone.ticket_key})")
        except KeyError:
            print(f"hezo-agent: no intent {args.id} in the outbox (see hezo-agent outbox)", file=sys.stderr)
            return EXIT_FAIL
    return EXIT_OK


def _print_outbox(report: dict[str, Any]) -> None:
    intents = [q for state in ("pending", "rejected", "quarantined") for q in report[state]]
    _print_table(
        "hezo-agent outbox",
        ("id", "state", "priority", "kind", "ticket", "attempts", "next attempt", "reason"),
        [
            (str(q["id"]), q["state"], q["priority"], q["kind"], q["ticket_key"], str(q["attempts"]),
             q["next_attempt_at"] if q["state"] == "pending" else "-", q["reason"] or "-")
            for q in intents
        ],
    )
    for held in report["held"]:
        print(f"HELD {held['backend']}: credentials rejected ({held['reason']}); "
              "fix them, then: hezo-agent outbox retry")
    if report["alerts"]:
        _print_table("alerts", ("at", "kind", "ticket", "message"),
                     [(a["at"], a["kind"], a["ticket_key"] or "-", a["message"]) for a in report["alerts"]])
    spool = report["spool"]
    print(f"spool: {spool['used_bytes'] / 1048576:.1f} of {spool['quota_bytes'] / 1048576:.0f} MiB")


def cmd_collect(args: argparse.Namespace) -> int:
    """Pull one device's logs into a redacted, audited bundle (see agent/cli_bundle.py)."""
    from agent.cli_bundle import run_collect
    from agent.daemon import default_data_dir

    config = _load(args)
    return run_collect(args, config, Path(config.agent.data_dir or default_data_dir()))


def cmd_audit(args: argparse.Namespace) -> int:
    """Show the audit of log pulls."""
    from agent.cli_bundle import run_audit
    from agent.daemon import default_data_dir

    config = _load(args)
    return run_audit(args, Path(config.agent.data_dir or default_data_dir()))


def cmd_api(args: argparse.Namespace) -> int:
    """Show where the local API, status page and /metrics answer (see agent/cli_api.py)."""
    from agent.cli_api import run_api_info
    from agent.daemon import default_data_dir

    config = _load(args)
    return run_api_info(args, config, Path(config.agent.data_dir or default_data_dir()))


def cmd_baseline(args: argparse.Namespace) -> int:
    """Accept (or ``--show``) a device's configuration as its drift baseline (see agent/cli_baseline.py)."""
    from agent.cli_baseline import run_baseline
    from agent.daemon import default_data_dir

    config = _load(args)
    return run_baseline(args, config, Path(config.agent.data_dir or default_data_dir()))


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the end-to-end demo on a simulated fleet."""
    from agent.demo import run_demo

    return run_demo(seconds=args.seconds, devices=args.devices, as_json=args.json)


COMMANDS = {
    "run": cmd_run,
    "check": cmd_check,
    "status": cmd_status,
    "tickets": cmd_tickets,
    "outbox": cmd_outbox,
    "demo": cmd_demo,
    "collect": cmd_collect,
    "audit": cmd_audit,
    "api": cmd_api,
    "baseline": cmd_baseline,
    **INSTALL_COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hezo-agent``; returns the exit code."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level or ("INFO" if args.command == "run" else "WARNING"))
    try:
        return COMMANDS[args.command](args)
    except ConfigError as err:
        print(err.render(), file=sys.stderr)
        return EXIT_CONFIG
    except BackendError as err:
        print(f"hezo-agent: ticket backend: {err}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except OSError as err:
        print(f"hezo-agent: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
