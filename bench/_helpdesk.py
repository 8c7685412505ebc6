"""The fake helpdesk of the crash test (``tests/fake_helpdesk.py``), tuned for benchmarks.

Two bench-only changes to one server instance: Nagle's algorithm off on its connections (the
stdlib handler writes headers and body separately, so every answer otherwise waits ~40 ms for a
delayed ACK, which would measure the fake server rather than the outbox), and no traceback
printed when a killed client resets a connection mid-request (that is the point of the crash
benchmark, not an error).
"""

from __future__ import annotations

import sys
from typing import Any

from _common import ROOT

sys.path.insert(0, str(ROOT / "tests"))
from fake_helpdesk import MARKER, FakeHelpdesk, FakeHelpdeskBackend

__all__ = ["MARKER", "FakeHelpdesk", "FakeHelpdeskBackend", "fast_helpdesk"]


def fast_helpdesk(**kwargs: Any) -> FakeHelpdesk:
    """Start a :class:`FakeHelpdesk` with the two changes above."""
    desk = FakeHelpdesk(**kwargs)
    server = desk._server  # bench-only tuning of the test server
    server.RequestHandlerClass.disable_nagle_algorithm = True
    server.handle_error = lambda request, client_address: None
    return desk.start()
