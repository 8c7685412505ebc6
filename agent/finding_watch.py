"""After each poll: run the detectors, debounce them, and turn what changed into incident calls.

The glue between :mod:`agent.findings` (pure detectors and tracker) and
:class:`agent.incidents.IncidentManager`. It keeps, per device, the boot/restart history and the
tracker state, and per site the firmware each device last reported (for "behind the site's
majority").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from agent.findings import (
    DeviceHistory,
    FindingContext,
    FindingTracker,
    LogLine,
    assess,
    observe,
    parse_blackbox_lines,
    track,
)
from agent.incidents import IncidentManager
from agent.models import PollOutcome
from agent.quiet import QuietJudge
from collectors.blackbox import BlackBoxes
from config.schema import AgentConfig, Profile

log = logging.getLogger("hezo.findings")


class FindingWatch:
    """Runs the detectors of every device after its polls and reports raised/cleared problems."""

    def __init__(
        self,
        config: AgentConfig,
        profiles: dict[str, Profile],
        incidents: IncidentManager,
        quiet: QuietJudge,
        *,
        blackboxes: BlackBoxes | None = None,
        firmware_of: Callable[[str], str | None] = lambda _device_id: None,
    ) -> None:
        self._config = config
        self._profiles = profiles
        self._incidents = incidents
        self._quiet = quiet
        self._blackboxes = blackboxes
        self._lock = threading.Lock()
        self._history: dict[str, DeviceHistory] = {d.id: DeviceHistory() for d in config.devices}
        self._trackers: dict[str, FindingTracker] = {d.id: FindingTracker.initial() for d in config.devices}
        self._firmware: dict[str, str] = {}
        for dev in config.devices:
            known = firmware_of(dev.id)
            if known:
                self._firmware[dev.id] = known

    def after_poll(self, outcome: PollOutcome, *, updating_since: datetime | None = None) -> None:
        """Judge ``outcome``'s device and raise, clear or re-prioritise its problems."""
        settings = self._config.incidents
        device = self._config.device(outcome.device_id)
        site = self._config.site(device.site)
        sample = outcome.sample
        with self._lock:
            if sample is not None and sample.facts.firmware:
                self._firmware[device.id] = sample.facts.firmware
            history = self._history[device.id] = observe(self._history[device.id], outcome, settings)
            site_firmwares = tuple(
                fw
                for d in self._config.devices
                if d.site == device.site and d.model == device.model and (fw := self._firmware.get(d.id))
            )
        contract = self._config.contract_for(sample.facts.serial) if sample is not None else None
        ctx = FindingContext(
            device=device,
            outcome=outcome,
            now=outcome.at,
            profile=self._profiles.get(device.id),
            history=history,
            contract=contract,
            site_firmwares=site_firmwares,
            site_timezone=site.timezone,
            log_lines=self._log_lines(device.id, outcome.at),
            updating_since=updating_since,
            update_overdue=self._quiet.update_overdue(outcome.at, updating_since),
        )
        assessment = assess(ctx, settings)
        with self._lock:
            result = track(
                self._trackers[device.id], assessment.findings, outcome.at, settings, assessment.judged
            )
            self._trackers[device.id] = result.state
        language = self._config.agent.language
        for finding in result.raised:
            problem = finding.to_problem(language, result.state.first_seen(finding.name))
            log.info(
                "event=finding_raised device=%s problem=%s priority=%s",
                device.id,
                finding.name,
                finding.priority,
            )
            self._incidents.raise_problem(device.id, problem, outcome.at)
        for finding in result.cleared:
            log.info("event=finding_cleared device=%s problem=%s", device.id, finding.name)
            self._incidents.clear_problem(device.id, finding.name, outcome.at)
        for change in result.changed:
            self._incidents.change_priority(
                device.id, change.finding.name, change.new, outcome.at, change.why(language)
            )

    def open_findings(self, device_id: str) -> list[str]:
        """Names of the problems currently raised for ``device_id``."""
        with self._lock:
            return [f.name for f in self._trackers[device_id].open_findings()]

    def _log_lines(self, device_id: str, at: datetime) -> tuple[LogLine, ...] | None:
        if self._blackboxes is None:
            return None
        window = timedelta(minutes=self._config.incidents.log_errors.window_minutes)
        try:
            return parse_blackbox_lines(self._blackboxes.get(device_id).read_since(at - window))
        except OSError as err:
            log.warning("event=blackbox_read_failed device=%s error=%s", device_id, type(err).__name__)
            return None
