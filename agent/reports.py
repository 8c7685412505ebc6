"""Read-only views for ``status`` and ``tickets``: what the agent recorded, without running it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.daemon import default_data_dir
from agent.store import Store
from config.schema import AgentConfig
from uploader.backends.local import LocalBackend
from uploader.registry import build_backend


def _data_dir(config: AgentConfig) -> Path:
    return Path(config.agent.data_dir or default_data_dir())


def device_status(config: AgentConfig) -> list[dict[str, Any]]:
    """Return one dict per configured device with its last recorded state and identity."""
    store = Store(_data_dir(config) / "agent.sqlite")
    try:
        rows = []
        for dev in config.devices:
            state = store.load_state(dev.id)
            known = store.facts(dev.id)
            recent = store.recent_outcomes(dev.id, 1)
            last = recent[0] if recent else None
            facts, seen_at = known if known else (None, None)
            rows.append(
                {
                    "device": dev.id,
                    "site": dev.site,
                    "room": dev.room,
                    "model": dev.model,
                    "host": dev.host,
                    "state": str(state.health) if state else "unknown",
                    "last_seen": seen_at.isoformat() if seen_at else None,
                    "last_reason": getattr(last, "reason", None),
                    "firmware": facts.firmware if facts else None,
                    "serial": facts.serial if facts else None,
                    "mac": facts.mac if facts else None,
                }
            )
        return rows
    finally:
        store.close()


def list_tickets(config: AgentConfig, *, open_only: bool = False) -> list[dict[str, Any]]:
    """Return the local backend's tickets as JSON-ready dicts.

    Raises:
        ValueError: the configured backend is not the local one (its tickets live in the helpdesk).
    """
    backend = build_backend(config.ticketing, _data_dir(config))
    try:
        if not isinstance(backend, LocalBackend):
            raise ValueError(f"tickets are in the {backend.name} helpdesk; this lists the local backend only")
        return [t.to_json() for t in backend.tickets(open_only=open_only)]
    finally:
        backend.close()
