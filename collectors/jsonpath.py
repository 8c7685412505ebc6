"""Dotted paths into decoded JSON: ``data.call.state``, ``items.0.name``.

Profiles name where a value lives with such a path; list items are addressed by their index.
Pure functions, no dependencies, shared by the drivers and the simulator.
"""

from __future__ import annotations

from typing import Any


class PathMissing(KeyError):
    """A dotted path does not lead to a value; ``path`` is the whole path, ``at`` the failing part."""

    def __init__(self, path: str, at: str) -> None:
        super().__init__(path)
        self.path = path
        self.at = at

    def __str__(self) -> str:
        return f"missing {self.path}" if self.at == self.path else f"missing {self.path} (no {self.at})"


def _parts(dotted: str) -> list[str]:
    parts = dotted.split(".")
    if not dotted or any(not part for part in parts):
        raise ValueError(f"bad dotted path {dotted!r}")
    return parts


def get_path(data: Any, dotted: str) -> Any:
    """Return the value at ``dotted`` inside ``data`` (dicts by key, lists by index).

    Raises:
        PathMissing: (a KeyError) some part of the path is absent or leads into a non-container.
        ValueError: the path itself is empty or has an empty part.
    """
    current = data
    walked: list[str] = []
    for part in _parts(dotted):
        walked.append(part)
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise PathMissing(dotted, ".".join(walked))
    return current


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``value`` at ``dotted`` inside ``data``, creating intermediate dicts as needed.

    Raises:
        ValueError: the path is malformed or runs through a value that is not a dict.
    """
    *parents, last = _parts(dotted)
    current: Any = data
    for part in parents:
        nxt = current.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ValueError(f"cannot set {dotted}: {part} is not an object")
        current = nxt
    current[last] = value
