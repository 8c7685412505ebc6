"""Make room for the sockets a fleet needs: the soft limit of open files, raised towards the hard one.

With connections kept between polls (``agent.keep_alive_s``) the agent holds one socket per
device; 1,000 devices and the default soft limit of many Linux services (1,024) do not fit. A
process may raise its own soft limit up to the hard one, which is what this does. Windows has no
such per-process limit on sockets (and no :mod:`resource` module): nothing to do there.
"""

from __future__ import annotations

import logging

__all__ = ["FD_RESERVE", "open_files_for", "raise_open_files_limit"]

log = logging.getLogger("hezo.agent")

#: files and sockets the agent holds besides the devices' kept connections (store, logs, API,
#: syslog, polls of the other channels, exports in progress)
FD_RESERVE = 256


def open_files_for(devices: int) -> int:
    """Open files the agent may need with every device's connection kept: one socket per device
    while idle, a second while a poll runs its other channels, and the reserve."""
    return FD_RESERVE + 2 * devices


def raise_open_files_limit(wanted: int) -> int | None:
    """Raise this process's soft limit of open files to ``wanted`` if it is lower, never past
    the hard limit; return the soft limit now, or None where there is no such limit (Windows)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as err:
        log.warning("event=open_files_limit_unchanged soft=%d wanted=%d error=%s", soft, wanted, err)
        return soft
    log.info("event=open_files_limit_raised from=%d to=%d", soft, target)
    return target
