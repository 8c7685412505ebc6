"""Debouncing findings: raise after ``raise_after`` evaluations, clear after ``clear_after``.

A pure function of (tracker state, findings active now, time, settings), one tracker per
device. A finding *raises* (its ticket opens) only once it has been active in ``raise_after``
consecutive evaluations, and a raised finding *clears* (its ticket gets a recovery note) only
once it has been missing from ``clear_after`` consecutive evaluations; a miss in between only
restarts the count. One raise is always followed by at most one clear, never by a second
raise. A raised finding whose priority changes while it stays open (the detector says so, or
its ``escalate`` rule applies because it has lasted long enough) is a :class:`PriorityChange`
of the same ticket. Kinds the caller says were not judged this time (no evidence either way)
keep their state untouched.

The state is kept across restarts as JSON (:func:`tracker_to_json`, saved by the store with
every poll) and brought back in line with the open tickets at start (:func:`reconcile`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, NamedTuple

from agent.finding_models import Finding, ProblemKind
from config.incidents import IncidentSettings
from uploader.models import Priority

log = logging.getLogger("hezo.findings")

_RANK = {Priority.LOW: 0, Priority.MEDIUM: 1, Priority.CRITICAL: 2}


@dataclass(frozen=True, slots=True)
class Track:
    """What the tracker remembers about one finding (by its :attr:`Finding.name`).

    ``streak`` counts consecutive evaluations with the finding, ``misses`` consecutive ones
    without it after it was raised; ``since`` is when the current run of it was first seen;
    ``priority`` is the priority of its open ticket (None until raised).
    """

    finding: Finding
    streak: int
    misses: int
    since: datetime
    raised_at: datetime | None = None
    priority: Priority | None = None

    @property
    def raised(self) -> bool:
        """True while the finding has an open ticket."""
        return self.raised_at is not None


@dataclass(frozen=True, slots=True)
class FindingTracker:
    """The debounce state of one device's findings."""

    tracks: Mapping[str, Track] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def initial(cls) -> FindingTracker:
        """Return the state of a device with no finding seen yet."""
        return cls()

    def open_findings(self) -> list[Finding]:
        """Return the raised findings, each with the priority of its open ticket."""
        return [
            replace(t.finding, priority=t.priority or t.finding.priority)
            for t in self.tracks.values()
            if t.raised
        ]

    def first_seen(self, name: str) -> datetime | None:
        """Return when the current run of finding ``name`` was first seen (None if not tracked)."""
        track_ = self.tracks.get(name)
        return track_.since if track_ else None


@dataclass(frozen=True, slots=True)
class PriorityChange:
    """An open finding's ticket moves from ``old`` to ``new`` (``finding.priority`` is ``new``)."""

    finding: Finding
    old: Priority
    new: Priority
    escalated: bool

    def why(self, language: str) -> str:
        """Return the reason for the ticket comment, in ``language`` (``pl`` or ``en``)."""
        if self.escalated:
            return (
                "problem utrzymuje się zbyt długo" if language == "pl" else "the problem has lasted too long"
            )
        return self.finding.summary(language)


class TrackResult(NamedTuple):
    """What :func:`track` returns: new state, and the findings raised, cleared, re-prioritised."""

    state: FindingTracker
    raised: list[Finding]
    cleared: list[Finding]
    changed: list[PriorityChange]


def _after(settings: IncidentSettings, kind: ProblemKind) -> tuple[int, int]:
    """``(raise_after, clear_after)`` of ``kind``; 1 and 1 for kinds without a detector block."""
    block = settings.detector(kind)
    return (block.raise_after, block.clear_after) if block is not None else (1, 1)


def effective_priority(
    finding: Finding, since: datetime, at: datetime, settings: IncidentSettings
) -> Priority:
    """The finding's priority, raised to its ``escalate.to`` once it has lasted ``after_hours``."""
    block = settings.detector(finding.kind)
    rule = block.escalate if block is not None else None
    if rule is None or at - since < timedelta(hours=rule.after_hours):
        return finding.priority
    target = Priority(rule.to)
    return target if _RANK[target] > _RANK[finding.priority] else finding.priority


def track(
    state: FindingTracker,
    active: Iterable[Finding],
    at: datetime,
    settings: IncidentSettings,
    judged: Collection[ProblemKind] | None = None,
) -> TrackResult:
    """Advance ``state`` by one evaluation whose active findings are ``active``.

    ``judged`` lists the kinds the evaluation could judge (:attr:`Assessment.judged`); a
    tracked finding of another kind is left as it is. None means every kind was judged.
    Raised and cleared findings carry the priority of their ticket.
    """
    now_active = {f.name: f for f in active}
    tracks: dict[str, Track] = {}
    raised: list[Finding] = []
    cleared: list[Finding] = []
    changed: list[PriorityChange] = []
    for name, finding in now_active.items():
        updated, event = _seen(state.tracks.get(name), finding, at, settings)
        tracks[name] = updated
        if isinstance(event, PriorityChange):
            changed.append(event)
        elif event is not None:
            raised.append(event)
    for name, old in state.tracks.items():
        if name in now_active:
            continue
        if judged is not None and old.finding.kind not in judged:
            tracks[name] = old
            continue
        if not old.raised:
            continue  # an unconfirmed run ends: forget it
        misses = old.misses + 1
        if misses >= _after(settings, old.finding.kind)[1]:
            cleared.append(replace(old.finding, priority=old.priority or old.finding.priority))
            continue
        tracks[name] = replace(old, streak=0, misses=misses)
    return TrackResult(FindingTracker(MappingProxyType(tracks)), raised, cleared, changed)


def _seen(
    old: Track | None, finding: Finding, at: datetime, settings: IncidentSettings
) -> tuple[Track, Finding | PriorityChange | None]:
    """Count one evaluation with ``finding``; return its track and what it caused, if anything."""
    if old is None:
        old = Track(finding=finding, streak=0, misses=0, since=at)
    current = replace(old, finding=finding, streak=old.streak + 1, misses=0)
    priority = effective_priority(finding, current.since, at, settings)
    if not current.raised:
        if current.streak < _after(settings, finding.kind)[0]:
            return current, None
        return replace(current, raised_at=at, priority=priority), replace(finding, priority=priority)
    if priority == current.priority or current.priority is None:
        return current, None
    escalated = priority != finding.priority
    change = PriorityChange(replace(finding, priority=priority), current.priority, priority, escalated)
    return replace(current, priority=priority), change


# --- kept across restarts ------------------------------------------------------------------


def tracker_to_json(state: FindingTracker) -> str:
    """Return ``state`` as JSON text (read back by :func:`tracker_from_json`)."""
    return json.dumps({name: _track_dict(t) for name, t in state.tracks.items()}, separators=(",", ":"))


def tracker_from_json(text: str) -> FindingTracker:
    """Return the tracker saved as ``text``.

    A track that cannot be read (say, a kind a newer agent wrote) is dropped with a warning
    rather than stopping the agent: :func:`reconcile` then restores it from its open ticket.
    """
    try:
        raw = json.loads(text)
    except ValueError:
        log.warning("event=finding_tracks_unreadable action=forgotten")
        return FindingTracker.initial()
    tracks: dict[str, Track] = {}
    for name, item in raw.items() if isinstance(raw, dict) else ():
        try:
            tracks[name] = _track_of(item)
        except (KeyError, TypeError, ValueError):
            log.warning("event=finding_track_unreadable problem=%s action=forgotten", name)
    return FindingTracker(MappingProxyType(tracks))


def _track_dict(t: Track) -> dict[str, Any]:
    f = t.finding
    return {
        "kind": f.kind.value,
        "priority": f.priority.value,
        "subject": f.subject,
        "summary_en": f.summary_en,
        "summary_pl": f.summary_pl,
        "details": dict(f.details),
        "streak": t.streak,
        "misses": t.misses,
        "since": t.since.isoformat(),
        "raised_at": t.raised_at.isoformat() if t.raised_at else None,
        "ticket_priority": t.priority.value if t.priority else None,
    }


def _track_of(item: dict[str, Any]) -> Track:
    finding = Finding(
        kind=ProblemKind(item["kind"]),
        priority=Priority(item["priority"]),
        subject=str(item.get("subject", "")),
        summary_en=str(item.get("summary_en", "")),
        summary_pl=str(item.get("summary_pl", "")),
        details={str(k): str(v) for k, v in dict(item.get("details", {})).items()},
    )
    return Track(
        finding=finding,
        streak=int(item["streak"]),
        misses=int(item["misses"]),
        since=_aware(item["since"]),
        raised_at=_aware(item["raised_at"]) if item.get("raised_at") else None,
        priority=Priority(item["ticket_priority"]) if item.get("ticket_priority") else None,
    )


def _aware(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("naive time in a saved track")
    return value


@dataclass(frozen=True, slots=True)
class OpenTicket:
    """The open incident of one finding of a device, as the store knows it (for :func:`reconcile`).

    ``name`` is the finding's :attr:`Finding.name` (the problem part of the incident key).
    """

    name: str
    priority: Priority
    opened_at: datetime


def reconcile(state: FindingTracker, open_tickets: Iterable[OpenTicket]) -> FindingTracker:
    """Bring one device's tracker in line with its open finding tickets (after a restart).

    Modelled on :meth:`agent.incidents.IncidentManager.reconcile`: the tickets are the truth.

    * An open ticket without a raised track (the track was lost, or its raise was not saved)
      gets a raised track back, with the ticket's priority and ``since`` its opening: the next
      evaluations keep it (no second ticket, since it is already raised) or clear it after
      ``clear_after`` misses, exactly as if the agent had never stopped.
    * A raised track without an open ticket (its ticket did not open, or closed, before the
      stop) is lowered to a confirmed but unraised run: the next evaluation that still sees the
      finding raises it again (opening or reopening its ticket), one that does not forgets it.

    ``open_tickets`` must hold finding kinds only; a name no :class:`ProblemKind` knows is skipped.
    """
    tracks = dict(state.tracks)
    open_names = set()
    for ticket in open_tickets:
        kind_text, _, subject = ticket.name.partition(":")
        try:
            kind = ProblemKind(kind_text)
        except ValueError:
            log.warning("event=finding_ticket_unknown_kind problem=%s action=left_open", ticket.name)
            continue
        open_names.add(ticket.name)
        old = tracks.get(ticket.name)
        if old is not None and old.raised:
            continue
        finding = (
            old.finding if old is not None else Finding(kind=kind, priority=ticket.priority, subject=subject)
        )
        tracks[ticket.name] = Track(
            finding=finding,
            streak=old.streak if old is not None else 0,
            misses=0,
            since=min(old.since, ticket.opened_at) if old is not None else ticket.opened_at,
            raised_at=ticket.opened_at,
            priority=ticket.priority,
        )
        log.info("event=finding_track_restored problem=%s", ticket.name)
    for name, t in list(tracks.items()):
        if t.raised and name not in open_names:
            tracks[name] = replace(t, misses=0, raised_at=None, priority=None)
            log.info("event=finding_track_lowered problem=%s", name)
    return FindingTracker(MappingProxyType(tracks))
