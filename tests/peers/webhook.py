"""A real HTTP receiver on 127.0.0.1 (http.server in a thread) that records every request.

Answers are scripted: ``peer.replies`` is a queue of :class:`Reply`; when it is empty the
receiver answers ``default``. A reply with ``hold`` set waits (bounded) for that event before
answering, to make the client time out.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_MAX_BODY_BYTES = 64 * 1024 * 1024
_HOLD_LIMIT_S = 5.0


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up early (bounded read, timeout) is part of the tests, not an error."""


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    hold: threading.Event | None = None

    @classmethod
    def json(cls, status: int, data: Any, **headers: str) -> Reply:
        """Answer ``data`` as JSON with extra ``headers`` (underscores become dashes)."""
        extra = {k.replace("_", "-"): v for k, v in headers.items()}
        return cls(status, json.dumps(data).encode(), {"Content-Type": "application/json", **extra})


@dataclass(frozen=True)
class Request:
    """One request as received: path, headers (case-insensitive lookup via ``header``) and raw body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """Return a header by case-insensitive name."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    def json(self) -> Any:
        """Parse the body as JSON."""
        return json.loads(self.body.decode("utf-8"))


class WebhookPeer:
    """The receiver; use as a context manager, then read ``requests``."""

    def __init__(self, default: Reply | None = None) -> None:
        self.default = default or Reply()
        self.replies: deque[Reply] = deque()
        self._requests: list[Request] = []
        self._lock = threading.Lock()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), _MAX_BODY_BYTES)
                body = self.rfile.read(length)
                with peer._lock:
                    peer._requests.append(Request("POST", self.path, dict(self.headers.items()), body))
                    reply = peer.replies.popleft() if peer.replies else peer.default
                if reply.hold is not None:
                    reply.hold.wait(_HOLD_LIMIT_S)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/hooks/hezo"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def requests(self) -> list[Request]:
        """Requests received so far, in order."""
        with self._lock:
            return list(self._requests)

    def __enter__(self) -> WebhookPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
