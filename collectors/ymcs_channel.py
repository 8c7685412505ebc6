"""The ``ymcs`` poll channel: one YMCS account shared by every device that opts in.

YMCS is configured once per agent (the top-level ``ymcs:`` section), so one
:class:`YmcsAccount` holds one :class:`~collectors.ymcs.YmcsClient` (one token, one device
listing per ``cache_s``) and hands each device a :class:`YmcsProbe`. A device is found in the
cloud by the ``ymcs_id``/``serial`` its channel entry names, else by the serial and then the MAC
the agent last learned from the device itself (its stored facts).

What the channel says about a device:

* YMCS lists it ``online`` → ``ok``; its accessories (``listParts``) and active alarms (levels
  1-3) go into the result's ``fields``;
* ``offline`` → failing, reason ``device_unreachable``;
* the cloud itself unreachable, timing out, rejecting the credentials, answering 5xx or
  garbage → **neutral** ``cloud_unreachable``: the cloud's trouble is not the device's, so the
  device is neither degraded nor down for it (:data:`collectors.models.NEUTRAL_REASONS`);
  logged once per outage, and once more when the cloud is back;
* no serial/MAC known yet, or not listed → neutral ``not_matched``; ``pending`` or an unknown
  status → neutral ``status_unknown``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from agent.clock import Clock
from collectors.errors import CollectorError
from collectors.models import ChannelResult, DeviceFacts
from collectors.ymcs import YmcsClient, client_from_settings
from collectors.ymcs_models import YmcsKey
from config.loader import ConfigError
from config.ymcs import YmcsSettings

__all__ = ["CLOUD_UNREACHABLE", "NOT_MATCHED", "FactsLookup", "YmcsAccount", "YmcsProbe"]

log = logging.getLogger("hezo.ymcs")

CLOUD_UNREACHABLE = "cloud_unreachable"
NOT_MATCHED = "not_matched"
#: the agent's last known facts of a device (None when it never answered)
FactsLookup = Callable[[str], DeviceFacts | None]


def _no_facts(_device_id: str) -> DeviceFacts | None:
    return None


class YmcsAccount:
    """One enterprise's YMCS access, shared by every device's probe; notes cloud outages once."""

    def __init__(self, client: YmcsClient, *, facts: FactsLookup = _no_facts) -> None:
        """Share ``client``; ``facts`` gives a device's last known identity (serial, MAC)."""
        self.client = client
        self._facts = facts
        self._lock = threading.Lock()
        self._outage: str | None = None  # the reason of the ongoing cloud outage, if any
        self._unmatched: set[str] = set()

    @classmethod
    def from_settings(
        cls,
        settings: YmcsSettings,
        *,
        facts: FactsLookup = _no_facts,
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
        environ: Mapping[str, str] | None = None,
    ) -> YmcsAccount:
        """Build the account from the top-level ``ymcs:`` settings (reads the client secret).

        Raises:
            config.loader.ConfigError: the client secret or the ``ca_bundle`` file cannot be read.
        """
        try:
            client = client_from_settings(settings, clock=clock, sleep=sleep, environ=environ)
        except OSError as err:  # ssl.SSLError too: the CA file is missing or holds no certificate
            why = err.strerror or type(err).__name__
            line = f"ymcs.ca_bundle: cannot read {settings.ca_bundle} ({why})"
            raise ConfigError("config", [line]) from None
        return cls(client, facts=facts)

    @property
    def cloud_down(self) -> bool:
        """Whether the last call to the cloud failed."""
        with self._lock:
            return self._outage is not None

    def probe_for(
        self, device_id: str, *, ymcs_id: str | None = None, serial: str | None = None
    ) -> YmcsProbe:
        """The ``ymcs`` channel of ``device_id``; explicit ``ymcs_id``/``serial`` override its facts."""
        explicit: list[YmcsKey] = []
        if ymcs_id:
            explicit.append(("ymcs_id", ymcs_id))
        if serial:
            explicit.append(("serial", serial))
        return YmcsProbe(self, device_id, explicit)

    def keys_for(self, device_id: str) -> list[YmcsKey]:
        """The serial, then the MAC, the agent last learned from the device (none if unknown)."""
        facts = self._facts(device_id)
        if facts is None:
            return []
        keys: list[YmcsKey] = []
        if facts.serial and facts.serial != "unknown":
            keys.append(("serial", facts.serial))
        if facts.mac and facts.mac != "unknown":
            keys.append(("mac", facts.mac))
        return keys

    def probe(self, device_id: str, keys: Sequence[YmcsKey]) -> ChannelResult:
        """Look ``device_id`` up by ``keys``; never raises: the cloud's own failures are neutral."""
        started = time.perf_counter()
        if not keys:
            return self._not_matched(
                device_id,
                started,
                "no serial or MAC known yet: the agent learns them on the device's first answered "
                "poll (or set channels.ymcs.serial or ymcs_id)",
            )
        try:
            result = self.client.probe(keys)
        except CollectorError as err:
            self._cloud_failed(err)
            detail = f"cloud unreachable ({err.reason}): {err}"
            return ChannelResult("ymcs", False, CLOUD_UNREACHABLE, _ms(started), detail=detail)
        self._cloud_answered()
        if result.reason == NOT_MATCHED:
            return self._not_matched(device_id, started, result.detail, result.fields)
        with self._lock:
            self._unmatched.discard(device_id)
        return result

    def close(self) -> None:
        """Release the client's connections."""
        self.client.close()

    # --- outage bookkeeping: one log line per outage, not one per device and poll ---------------

    def _cloud_failed(self, err: CollectorError) -> None:
        with self._lock:
            first, self._outage = self._outage is None, err.reason
        if first:
            log.warning(
                "event=ymcs_cloud_unreachable cloud=%s reason=%s detail=%s "
                "effect=ymcs_channel_neutral_until_back",
                self.client.host,
                err.reason,
                err,
            )
        else:
            log.debug("event=ymcs_cloud_still_unreachable cloud=%s reason=%s", self.client.host, err.reason)

    def _cloud_answered(self) -> None:
        with self._lock:
            was, self._outage = self._outage, None
        if was is not None:
            log.info("event=ymcs_cloud_back cloud=%s after=%s", self.client.host, was)

    def _not_matched(
        self, device_id: str, started: float, detail: str, fields: dict[str, object] | None = None
    ) -> ChannelResult:
        with self._lock:
            first = device_id not in self._unmatched
            self._unmatched.add(device_id)
        if first:
            log.warning("event=ymcs_device_not_matched device=%s detail=%s", device_id, detail)
        return ChannelResult(
            "ymcs", False, NOT_MATCHED, _ms(started), detail=detail, fields=dict(fields or {})
        )


class YmcsProbe:
    """The ``ymcs`` channel of one device (a :class:`collectors.multi.ChannelProbe`)."""

    name = "ymcs"

    def __init__(self, account: YmcsAccount, device_id: str, explicit: Sequence[YmcsKey] = ()) -> None:
        """Probe ``device_id`` through ``account``; ``explicit`` keys replace the learned ones."""
        self.account = account
        self.device_id = device_id
        self.explicit = list(explicit)

    def keys(self) -> list[YmcsKey]:
        """The keys tried now: the explicit ones, else the device's last known serial and MAC."""
        return self.explicit or self.account.keys_for(self.device_id)

    def probe(self) -> ChannelResult:
        """Look the device up in YMCS (never raises: a cloud failure is a neutral result)."""
        return self.account.probe(self.device_id, self.keys())

    def close(self) -> None:
        """Nothing to release: the account (and its client) is shared by every device."""


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
