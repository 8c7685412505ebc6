"""After each poll: run the detectors, debounce them, and turn what changed into incident calls.

The glue between :mod:`agent.findings` (pure detectors and tracker) and
:class:`agent.incidents.IncidentManager`. It keeps, per device, the boot/restart history and the
tracker state, and per site the firmware each device last reported (for "behind the site's
majority"). The tracker state is the caller's to keep across restarts (``trackers=`` in,
:meth:`FindingWatch.tracker` out, :meth:`FindingWatch.reconcile` with the open tickets at start);
the agent saves it in the same transaction as the rest of the poll, between :meth:`FindingWatch.judge`
and :meth:`FindingWatch.act`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta

from agent.finding_tracker import OpenTicket, reconcile
from agent.findings import (
    DeviceHistory,
    FindingContext,
    FindingTracker,
    LogLine,
    TrackResult,
    assess,
    observe,
    parse_blackbox_lines,
    track,
)
from agent.incidents import IncidentManager
from agent.models import PollOutcome
from agent.quiet import QuietJudge
from agent.store import Incident
from collectors.blackbox import BlackBoxes
from config.schema import AgentConfig, Profile
from uploader.models import Priority

log = logging.getLogger("hezo.findings")

#: after a poll: the device's configuration and its saved baseline (None, None when not known)
ConfigInputs = Callable[[PollOutcome], "tuple[Mapping[str, object] | None, Mapping[str, object] | None]"]


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
        config_inputs: ConfigInputs | None = None,
        trackers: Mapping[str, FindingTracker] | None = None,
    ) -> None:
        """``config_inputs`` gives a poll's (device configuration, baseline) for ``config_drift``
        (see :class:`agent.config_baseline.ConfigWatch`); without it drift is not judged.
        ``trackers`` are the saved tracker states to continue from (by device id)."""
        self._config_inputs = config_inputs
        self._config = config
        self._profiles = profiles
        self._incidents = incidents
        self._quiet = quiet
        self._blackboxes = blackboxes
        self._lock = threading.Lock()
        self._history: dict[str, DeviceHistory] = {d.id: DeviceHistory() for d in config.devices}
        saved = trackers or {}
        self._trackers: dict[str, FindingTracker] = {
            d.id: saved.get(d.id) or FindingTracker.initial() for d in config.devices
        }
        self._firmware: dict[str, str] = {}
        for dev in config.devices:
            known = firmware_of(dev.id)
            if known:
                self._firmware[dev.id] = known
        # the firmware of every device of one model at one site, rebuilt only when one changes:
        # building it on every poll made a 1,000-device site cost O(n²) a round
        self._groups: dict[tuple[str, str], list[str]] = {}
        for dev in config.devices:
            self._groups.setdefault((dev.site, dev.model), []).append(dev.id)
        self._group_firmwares: dict[tuple[str, str], tuple[str, ...]] = {}

    def after_poll(self, outcome: PollOutcome, *, updating_since: datetime | None = None) -> None:
        """Judge ``outcome``'s device and raise, clear or re-prioritise its problems."""
        self.act(outcome.device_id, self.judge(outcome, updating_since=updating_since), outcome.at)

    def judge(self, outcome: PollOutcome, *, updating_since: datetime | None = None) -> TrackResult:
        """Run the detectors on ``outcome`` and compute its device's next tracker; change nothing yet.

        The new tracker is :attr:`TrackResult.state`; it takes effect in :meth:`act`, which the
        caller runs once it has saved it (a failed save leaves the tracker where it was).
        """
        settings = self._config.incidents
        device = self._config.device(outcome.device_id)
        site = self._config.site(device.site)
        sample = outcome.sample
        with self._lock:
            group = (device.site, device.model)
            if sample is not None and sample.facts.firmware:
                if self._firmware.get(device.id) != sample.facts.firmware:
                    self._group_firmwares.pop(group, None)
                self._firmware[device.id] = sample.facts.firmware
            history = self._history[device.id] = observe(self._history[device.id], outcome, settings)
            site_firmwares = self._group_firmwares.get(group)
            if site_firmwares is None:
                site_firmwares = self._group_firmwares[group] = tuple(
                    fw for d in self._groups.get(group, ()) if (fw := self._firmware.get(d))
                )
        contract = self._config.contract_for(sample.facts.serial) if sample is not None else None
        device_config, baseline = self._config_inputs(outcome) if self._config_inputs else (None, None)
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
            config=device_config,
            config_baseline=baseline,
            device_time=sample.device_time if sample is not None else None,
            cert_not_after=sample.cert_not_after if sample is not None else None,
        )
        assessment = assess(ctx, settings)
        with self._lock:
            return track(
                self._trackers[device.id], assessment.findings, outcome.at, settings, assessment.judged
            )

    def act(self, device_id: str, result: TrackResult, at: datetime) -> None:
        """Adopt :meth:`judge`'s tracker and raise, clear or re-prioritise the tickets it changed."""
        with self._lock:
            self._trackers[device_id] = result.state
        language = self._config.agent.language
        for finding in result.raised:
            problem = finding.to_problem(language, result.state.first_seen(finding.name))
            log.info(
                "event=finding_raised device=%s problem=%s priority=%s",
                device_id,
                finding.name,
                finding.priority,
            )
            self._incidents.raise_problem(device_id, problem, at)
        for finding in result.cleared:
            log.info("event=finding_cleared device=%s problem=%s", device_id, finding.name)
            self._incidents.clear_problem(device_id, finding.name, at)
        for change in result.changed:
            why = change.why(language)
            self._incidents.change_priority(device_id, change.finding.name, change.new, at, why)

    def tracker(self, device_id: str) -> FindingTracker:
        """The device's tracker state now (what the agent saves with each poll)."""
        with self._lock:
            return self._trackers[device_id]

    def reconcile(self, open_incidents: Iterable[Incident]) -> dict[str, FindingTracker]:
        """Bring every tracker in line with the open finding incidents (at start, after a restart).

        See :func:`agent.finding_tracker.reconcile`. Only incidents of finding kinds count (not
        offline, flapping or site_network, which have no detector block). Returns the trackers
        that changed, for the caller to save.
        """
        settings = self._config.incidents
        tickets: dict[str, list[OpenTicket]] = {}
        for incident in open_incidents:
            kind = incident.problem.partition(":")[0]
            if incident.device_id not in self._trackers or settings.detector(kind) is None:
                continue
            tickets.setdefault(incident.device_id, []).append(
                OpenTicket(incident.problem, Priority(incident.priority), incident.opened_at)
            )
        changed: dict[str, FindingTracker] = {}
        with self._lock:
            for device_id, old in self._trackers.items():
                new = reconcile(old, tickets.get(device_id, ()))
                if new != old:
                    self._trackers[device_id] = changed[device_id] = new
        return changed

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
