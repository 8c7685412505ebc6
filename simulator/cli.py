"""``hezo-sim``: run a simulated fleet, inject and clear faults through its control API."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import requests

from simulator.fleet import FAULT_KINDS, Fleet

DEFAULT_CONTROL_PORT = 8479
DEFAULT_CONTROL = f"http://127.0.0.1:{DEFAULT_CONTROL_PORT}"


class CliError(Exception):
    """A one-line error for the user; the CLI prints it and exits non-zero."""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every sub-command."""
    parser = argparse.ArgumentParser(
        prog="hezo-sim", description="Simulated Yealink A20/A30/MVC fleet on loopback."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start a fleet and serve until Ctrl+C")
    run.add_argument("--devices", type=int, default=12, help="number of devices (default 12)")
    run.add_argument("--seed", type=int, default=0, help="identity seed (default 0)")
    run.add_argument("--net", type=int, default=77, help="devices get 127.NET.x.y (default 77)")
    run.add_argument("--port", type=int, default=8443, help="HTTPS port of every device (default 8443)")
    run.add_argument(
        "--control-port", type=int, default=DEFAULT_CONTROL_PORT, help="control API port on 127.0.0.1"
    )
    run.add_argument("--log-bytes", type=int, default=100_000, help="uncompressed size of a log export")
    run.add_argument("--config-out", type=Path, help="write an agent config for this fleet to FILE")
    run.add_argument("--data-dir", type=Path, help="agent data dir to put in the written config")
    run.add_argument(
        "--syslog-to",
        type=_host_port,
        metavar="HOST:PORT",
        help="devices send RFC 5424 syslog over UDP to this loopback address; the config listens there",
    )
    run.add_argument(
        "--vcapi-port", type=int, default=6024, help="port of each device's 6024 API (0: ephemeral)"
    )
    run.add_argument(
        "--ssh-port",
        type=int,
        help="each device also serves SSH on this TCP port (0: ephemeral; default off)",
    )
    run.add_argument(
        "--snmp-port",
        type=int,
        help="each device also answers SNMP on this UDP port (0: ephemeral; default off)",
    )
    run.add_argument(
        "--ymcs", action="store_true", help="also start the mock YMCS cloud listing every device"
    )
    run.add_argument("--ymcs-port", type=int, help="port of the mock YMCS on 127.0.0.1 (implies --ymcs)")
    run.add_argument(
        "--cert-days",
        type=float,
        metavar="N",
        help="every device's TLS certificate expires N days from now (default: valid 20 years)",
    )
    fault = sub.add_parser("fault", help="inject a fault into a device of a running fleet")
    fault.add_argument("device")
    fault.add_argument("kind", help=", ".join(FAULT_KINDS))
    fault.add_argument(
        "arg",
        nargs="?",
        help="seconds for slow/reboot, SECONDS[,SILENT] for update, peripheral for unplug, channel "
        "(http, tcp6024, ssh, snmp) for offline/hang/malformed/endless/drip/garbage, SECONDS "
        "(negative: behind) for clock-skew, KEY=VALUE for config-set",
    )
    clear = sub.add_parser("clear", help="remove the faults of one device, or of all")
    clear.add_argument("device", nargs="?")
    listing = sub.add_parser("list", help="list the devices of a running fleet and their faults")
    for p in (fault, clear, listing):
        p.add_argument(
            "--control", default=DEFAULT_CONTROL, help=f"control API URL (default {DEFAULT_CONTROL})"
        )
    return parser


def _request(control: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call the control API at ``control`` and return its JSON.

    Raises:
        CliError: the fleet is not reachable, or the API answered with an error.
    """
    base = control.rstrip("/")
    session = requests.Session()
    session.trust_env = False  # the control API is local: never through a proxy
    try:
        resp = session.request(method, base + path, json=body, timeout=15)
    except requests.RequestException:
        raise CliError(f"cannot reach the fleet control API at {base} (is `hezo-sim run` running?)") from None
    finally:
        session.close()
    try:
        data = resp.json()
    except ValueError:
        raise CliError(
            f"{base} answered HTTP {resp.status_code} without JSON (not a hezo-sim control API?)"
        ) from None
    if resp.status_code >= 400:
        message = data.get("error") if isinstance(data, dict) else None
        raise CliError(str(message or f"HTTP {resp.status_code}"))
    return data


def _host_port(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` for --syslog-to; only loopback addresses are accepted."""
    host, sep, port = text.rpartition(":")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}") from None
    if not sep or not address.is_loopback or not 0 < number < 65536:
        raise argparse.ArgumentTypeError(
            f"expected a loopback HOST:PORT such as 127.0.0.1:5514, got {text!r}"
        )
    return str(address), number


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    fleet = Fleet(
        args.devices,
        seed=args.seed,
        net=args.net,
        port=args.port,
        control_port=args.control_port,
        log_bytes=args.log_bytes,
        vcapi_port=args.vcapi_port,
        syslog_to=args.syslog_to,
        ssh_port=args.ssh_port,
        snmp_port=args.snmp_port,
        ymcs=args.ymcs,
        ymcs_port=args.ymcs_port,
        cert_days=args.cert_days,
    )
    stop = threading.Event()
    fleet.start()
    restore = _on_sigterm(stop)
    try:
        _table(_device_rows(fleet), out)
        out.write(f"\n{len(fleet.devices)} devices up; control API {fleet.control_url}\n")
        _write_channels(fleet, out)
        if args.config_out is not None:
            data_dir = args.data_dir.resolve() if args.data_dir is not None else None  # relative to here
            path = fleet.write_agent_config(args.config_out, data_dir=data_dir)
            out.write(f"agent config written to {path} (password in {path.stem}.secret beside it)\n")
            for name, secret in fleet.write_channel_secrets(path).items():
                out.write(f"{name.replace('_', ' ')} written to {secret}\n")
            out.write(f"run the agent against it:  hezo-agent run -c {path}\n")
        hint = "" if fleet.control_url == DEFAULT_CONTROL else f" --control {fleet.control_url}"
        out.write(f"inject faults:  hezo-sim fault DEVICE KIND [ARG]{hint}   (Ctrl+C stops the fleet)\n")
        out.flush()
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        restore()
        fleet.stop()
    out.write("fleet stopped\n")
    return 0


def _device_rows(fleet: Fleet) -> list[list[str]]:
    """The table ``run`` prints: one row per device, SSH/SNMP ports when the fleet serves them."""
    extra = [name for name in ("ssh_port", "snmp_port") if getattr(fleet.devices[0], name) is not None]
    rows = [["ID", "MODEL", "ADDRESS", *(n.split("_")[0].upper() for n in extra), "SERIAL", "SITE", "ROOM"]]
    for d in fleet.devices:
        ports = [str(getattr(d, n)) for n in extra]
        rows.append([d.id, d.model, f"{d.host}:{d.port}", *ports, d.serial, d.site, d.room])
    return rows


def _write_channels(fleet: Fleet, out: TextIO) -> None:
    """Say how to use the optional channels (never their secrets: --config-out writes those to files)."""
    first = fleet.devices[0]
    if first.ssh_port is not None:
        out.write(f"ssh: user {first.username} with the admin password or the fleet's client key\n")
    if first.snmp_port is not None and fleet.snmp is not None:
        out.write(f"snmp: the fleet's v2c community, or v3 user {fleet.snmp.user!r} (authPriv SHA/AES)\n")
    if fleet.ymcs is not None:
        out.write(f"ymcs: {fleet.ymcs.base_url} client id {fleet.ymcs.client_id}, CA {fleet.ymcs.ca_path}\n")


def _on_sigterm(stop: threading.Event) -> Callable[[], None]:
    """Make SIGTERM stop the fleet cleanly where the platform allows; return the undo."""
    sigterm = getattr(signal, "SIGTERM", None)
    if sigterm is None:
        return lambda: None
    try:
        previous = signal.signal(sigterm, lambda signum, frame: stop.set())
    except (ValueError, OSError):  # not the main thread, or unsupported here
        return lambda: None

    def restore() -> None:
        with contextlib.suppress(ValueError, OSError, TypeError):
            signal.signal(sigterm, previous)

    return restore


def _cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    devices = _request(args.control, "GET", "/devices")
    rows = [["ID", "MODEL", "ADDRESS", "SERIAL", "FAULTS"]]
    for d in devices:
        rows.append(
            [d["id"], d["model"], f"{d['host']}:{d['port']}", d["serial"], ", ".join(d["faults"]) or "-"]
        )
    _table(rows, out)
    return 0


def _cmd_fault(args: argparse.Namespace, out: TextIO) -> int:
    path = f"/devices/{quote(args.device, safe='')}/fault"
    device = _request(args.control, "POST", path, {"kind": args.kind, "arg": args.arg})
    out.write(f"{device['id']}: {', '.join(device['faults'])}\n")
    return 0


def _cmd_clear(args: argparse.Namespace, out: TextIO) -> int:
    if args.device is None:
        result = _request(args.control, "POST", "/clear")
        out.write(f"cleared all faults on {result['cleared']} devices\n")
    else:
        device = _request(args.control, "POST", f"/devices/{quote(args.device, safe='')}/clear")
        out.write(f"{device['id']}: faults cleared\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``hezo-sim`` with ``argv`` (default: the process arguments); return the exit code."""
    args = build_parser().parse_args(argv)
    commands = {"run": _cmd_run, "list": _cmd_list, "fault": _cmd_fault, "clear": _cmd_clear}
    try:
        return commands[args.command](args, sys.stdout)
    except CliError as err:
        print(f"hezo-sim: {err}", file=sys.stderr)
        return 1
    except (OSError, ValueError, RuntimeError) as err:
        print(f"hezo-sim: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
