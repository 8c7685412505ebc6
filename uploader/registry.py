"""One visible table of ticket backends: configured name → factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from config.schema import Ticketing
from uploader.backends.local import LocalBackend
from uploader.base import TicketBackend

BackendFactory = Callable[[Ticketing, Path], TicketBackend]


def _local(ticketing: Ticketing, data_dir: Path) -> TicketBackend:
    return LocalBackend(ticketing.local.path or Path(data_dir) / "tickets")


BACKENDS: dict[str, BackendFactory] = {
    "local": _local,
}


def build_backend(ticketing: Ticketing, data_dir: Path) -> TicketBackend:
    """Build the backend ``ticketing.backend`` names.

    Raises:
        ValueError: unknown backend name, listing the supported ones.
        BackendError: the backend could not be set up (e.g. its store is unusable).
    """
    factory = BACKENDS.get(ticketing.backend)
    if factory is None:
        supported = ", ".join(sorted(BACKENDS))
        raise ValueError(f"unknown ticket backend {ticketing.backend!r} (supported: {supported})")
    return factory(ticketing, data_dir)
