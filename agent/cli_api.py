"""``hezo-agent api -c FILE``: where the local server answers and how to call it.

Prints the status page and ``/metrics`` URLs, the token file (creating it if the agent never
ran, owner-only) and a ``curl`` line that reads the token from the file, so the token itself
never has to be typed or shown. ``--json`` gives the same as one object.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.api_auth import TokenStore
from config.api import is_loopback_host
from config.schema import AgentConfig

__all__ = ["add_api_parser", "api_info", "run_api_info"]

EXIT_OK = 0


def add_api_parser(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``api [--json]``."""
    api = sub.add_parser("api", help="where the local API, status page and /metrics answer; the token file")
    config_arg(api)
    api.add_argument("--json", action="store_true")


def api_info(config: AgentConfig, data_dir: Path) -> dict[str, Any]:
    """The server's URLs and token file for ``config`` (the token file is made if missing).

    Raises:
        TokenFileError: the token file cannot be created or read.
    """
    settings = config.api
    token_file = settings.token_file or data_dir / "api-token"
    store = TokenStore(token_file)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base = f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"
    return {
        "enabled": settings.enabled,
        "status_page": base + "/",
        "metrics": base + "/metrics",
        "api": base + "/api/v1/",
        "openapi": base + "/api/v1/openapi.json",
        "token_file": str(store.path),
        "tokens": len(_token_lines(store.path)),
        "loopback_only": is_loopback_host(settings.host),
        "curl": f'curl -H "Authorization: Bearer $(head -n 1 {store.path})" {base}/api/v1/devices',
    }


def _token_lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def run_api_info(args: argparse.Namespace, config: AgentConfig, data_dir: Path) -> int:
    """Print :func:`api_info` (a short text, or JSON with ``--json``)."""
    info = api_info(config, data_dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    state = "on" if info["enabled"] else "off (api.enabled: false)"
    print(f"local server: {state}{'' if info['loopback_only'] else ' (listening beyond this PC)'}")
    print(f"status page:  {info['status_page']}")
    print(f"metrics:      {info['metrics']}")
    print(f"API:          {info['api']}  (document: {info['openapi']})")
    print(f"token file:   {info['token_file']}  ({info['tokens']} token(s), owner-only)")
    print(f"try:          {info['curl']}")
    return EXIT_OK
