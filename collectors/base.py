"""The contract every device driver fulfils.

A driver is built from a device's config entry and its profile; it is the only code that
talks to the device. Methods raise only :mod:`collectors.errors` exceptions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

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

    def close(self) -> None:
        """Release connections; the default has nothing to release."""
