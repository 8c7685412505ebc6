"""Network vs device: judge each site from its devices and canaries, and hold device tickets meanwhile.

When a device goes down at a site that has canaries, the canaries are probed at once. While a
canary fails, device tickets of that site are *held* for a grace period: if every device and
every canary of the site fail together, one ``site_network`` incident is raised instead of one
ticket per device. If only some devices fail, the grace period runs out and their own tickets
open. When the agent itself lost the network (no uplink and nothing anywhere answers), nothing is
raised; held tickets are judged again when it returns.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from agent.incidents import IncidentManager
from agent.site_network import (
    CanaryResult,
    SiteObservation,
    SiteVerdict,
    judge_sites,
    probe_site,
    tcp_connect,
)
from config.schema import AgentConfig, Site

log = logging.getLogger("hezo.sites")

#: How long canary results are reused (several devices going down together probe once).
PROBE_REUSE = timedelta(seconds=2)


class SiteWatch:
    """Keeps each site's verdict and tells the poll pipeline when a device ticket must wait."""

    def __init__(
        self,
        config: AgentConfig,
        incidents: IncidentManager,
        *,
        uplink: Callable[[], bool],
        grace: timedelta,
        connect: Callable[[str, int, float], None] = tcp_connect,
    ) -> None:
        self._config = config
        self._incidents = incidents
        self._uplink = uplink
        self._grace = grace
        self._connect = connect
        self._lock = threading.Lock()
        self.verdicts: dict[str, SiteVerdict] = {s.name: SiteVerdict.NORMAL for s in config.sites}
        self.canaries: dict[str, dict[str, CanaryResult]] = {}
        self._probed_at: dict[str, datetime] = {}
        self._suspect_since: dict[str, datetime] = {}

    def hold_reason(self, site_name: str, at: datetime) -> str | None:
        """Why device tickets of ``site_name`` must wait now, or None."""
        verdict = self.verdicts.get(site_name, SiteVerdict.NORMAL)
        if verdict is SiteVerdict.AGENT_OFFLINE:
            return "the agent itself has no network"
        if verdict is SiteVerdict.SITE_NETWORK_DOWN:
            return "the site's network is down (one site incident)"
        since = self._suspect_since.get(site_name)
        if since is not None and at - since < self._grace:
            return "a canary of the site fails: judging network vs device"
        return None

    def judge(self, reachable: Mapping[str, bool | None], at: datetime, *, probe: bool = True) -> None:
        """Probe canaries (unless just probed), judge every site, raise or clear site incidents.

        ``reachable`` maps device ids to their latest liveness (None: not polled yet, or quiet).
        """
        with self._lock:
            if probe:
                for site in self._config.sites:
                    self._probe(site, at)
            observations = {
                site.name: SiteObservation(
                    devices={d.id: reachable.get(d.id) for d in self._config.devices if d.site == site.name},
                    canaries={name: res.ok for name, res in self.canaries.get(site.name, {}).items()},
                )
                for site in self._config.sites
            }
            verdicts = judge_sites(observations, self._uplink_ok(observations))
            for name, verdict in verdicts.items():
                self._transition(name, verdict, observations[name], at)

    def _uplink_ok(self, observations: Mapping[str, SiteObservation]) -> bool:
        if any(obs.any_answered() for obs in observations.values()):
            return True  # something answered: no need to ask the OS
        return self._uplink()

    def _probe(self, site: Site, at: datetime) -> None:
        if not site.canaries:
            return
        last = self._probed_at.get(site.name)
        if last is not None and at - last < PROBE_REUSE:
            return
        self.canaries[site.name] = probe_site(site, connect=self._connect)
        self._probed_at[site.name] = at
        if all(r.ok for r in self.canaries[site.name].values()):
            self._suspect_since.pop(site.name, None)
        else:
            self._suspect_since.setdefault(site.name, at)

    def _transition(self, name: str, verdict: SiteVerdict, obs: SiteObservation, at: datetime) -> None:
        before = self.verdicts.get(name, SiteVerdict.NORMAL)
        self.verdicts[name] = verdict
        if verdict == before:
            return
        log.info("event=site_verdict site=%s from=%s to=%s", name, before, verdict)
        if verdict is SiteVerdict.SITE_NETWORK_DOWN:
            down = [d for d, ok in obs.devices.items() if ok is False]
            canaries = [c for c, ok in obs.canaries.items() if ok is False]
            self._incidents.raise_site_network(name, at, down, canaries)
        elif before is SiteVerdict.SITE_NETWORK_DOWN and verdict is SiteVerdict.NORMAL:
            self._incidents.clear_site_network(name, at)
