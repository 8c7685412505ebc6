"""The contract every device driver fulfils.

A driver is built from a device's config entry and its profile; it is the only code that
talks to the device. Methods raise only :mod:`collectors.errors` exceptions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from collectors.models import DeviceFacts, HealthSample, LogBundle


class Collector(ABC):
    """One device's driver: identity, health and log collection."""

    device_id: str

    @abstractmethod
    def collect_facts(self) -> DeviceFacts:
        """Return the device's identity (model, firmware, serial, MAC).

        Raises:
            CollectorError: any subclass from :mod:`collectors.errors`.
        """

    @abstractmethod
    def collect_health(self) -> HealthSample:
        """Poll the device once and return what it reported.

        Raises:
            CollectorError: any subclass from :mod:`collectors.errors`.
        """

    @abstractmethod
    def collect_logs(self, dest_dir: Path) -> LogBundle:
        """Fetch the device's own log export into ``dest_dir`` and describe it.

        Raises:
            CollectorError: any subclass from :mod:`collectors.errors`.
        """

    def collect_config(self) -> Mapping[str, Any] | None:
        """Return the device's configuration as a JSON object, or None when the driver cannot read one.

        Called rarely (``incidents.config_drift.check_every_minutes``), never within a health poll.

        Raises:
            CollectorError: any subclass from :mod:`collectors.errors`.
        """
        return None

    def close(self) -> None:
        """Release connections; the default has nothing to release."""
