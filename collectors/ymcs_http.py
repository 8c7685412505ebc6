"""HTTP plumbing of the YMCS client: TLS, deadlines, byte caps, backoff, error translation.

Every requests/urllib3/ssl/socket error is translated here, once, into
:mod:`collectors.errors`, without the URL's query (a download URL may carry a signature).
Each request runs under a :class:`~collectors.transports.http_pool.Deadline` whose watchdog
shuts the socket at ``timeout_s``, so a drip-feeding server cannot hold a poll; answers are
capped in bytes; 429/502/503/504 are retried with capped backoff (``Retry-After`` honoured)
through the injected ``sleep``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import ssl
from collections.abc import Callable, Iterator
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from collectors.errors import CollectorError, DeviceTimeout, DeviceUnreachable, UnexpectedResponse
from collectors.transports.http_pool import NO_VERIFY_CONTEXT, Deadline, SharedContextAdapter, verify_context

__all__ = ["RETRY_STATUSES", "YmcsHttp", "YmcsRateLimited", "error_text", "tls_context"]

CHUNK_BYTES = 64 * 1024
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class YmcsRateLimited(UnexpectedResponse):
    """YMCS kept answering 429 (or 502/503/504) for the bounded number of attempts."""


def tls_context(verify: bool | str | Path) -> ssl.SSLContext:
    """The shared CA-verifying context (True), a context trusting one CA file (path), or none (False).

    Raises:
        OSError, ssl.SSLError: the CA file cannot be read.
    """
    if verify is True:
        return verify_context()
    if verify is False:
        return NO_VERIFY_CONTEXT
    return ssl.create_default_context(cafile=str(verify))


class YmcsHttp:
    """Bounded HTTP(S) requests to the YMCS cloud (one session, pooled keep-alive connections)."""

    def __init__(
        self,
        *,
        verify: bool | str | Path,
        timeout_s: float,
        sleep: Callable[[float], None],
        now: Callable[[], datetime],
        max_attempts: int,
        max_backoff_s: float,
        max_json_bytes: int,
        session_factory: Callable[[], requests.Session],
    ) -> None:
        self.timeout_s = timeout_s
        self.max_attempts, self.max_backoff_s = max_attempts, max_backoff_s
        self.max_json_bytes = max_json_bytes
        self._sleep, self._now = sleep, now
        self._session = session_factory()
        self._session.trust_env = False  # no .netrc (it would replace our Authorization) nor env CA
        self._session.headers.update({"Accept-Encoding": "identity", "User-Agent": "hezo-agent"})
        adapter = SharedContextAdapter(tls_context(verify))
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)

    def send(
        self, method: str, url: str, body: Any, headers: Callable[[], dict[str, str]]
    ) -> tuple[int, bytes]:
        """Send (``headers`` is called per attempt); back off on 429/5xx; return (status, capped body).

        Raises:
            DeviceUnreachable, DeviceTimeout, UnexpectedResponse (over the byte cap),
            YmcsRateLimited (still 429/5xx after ``max_attempts``).
        """
        source = _source(method, url)
        for attempt in range(1, self.max_attempts + 1):
            with Deadline(self.timeout_s) as deadline:
                resp = self._open(method, url, body, headers(), deadline, source)
                try:
                    raw = b"".join(self._chunks(resp, deadline, source, self.max_json_bytes))
                except BaseException:
                    resp.close()
                    raise
                resp.raw.release_conn()
            if resp.status_code not in RETRY_STATUSES:
                return resp.status_code, raw
            if attempt == self.max_attempts:
                raise YmcsRateLimited(f"{source}: HTTP {resp.status_code} after {attempt} attempts")
            self._sleep(self.backoff_s(attempt, resp.headers.get("Retry-After")))
        raise AssertionError("unreachable")  # pragma: no cover

    def backoff_s(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before attempt ``attempt + 1``: Retry-After if given, else 1, 2, 4 …; capped."""
        wait_s = float(2 ** (attempt - 1))
        if retry_after:
            text = retry_after.strip()
            try:
                wait_s = float(text)
            except ValueError:
                with contextlib.suppress(TypeError, ValueError):
                    wait_s = (parsedate_to_datetime(text) - self._now()).total_seconds()
        return min(max(wait_s, 0.0), self.max_backoff_s)

    def download(
        self, url: str, dest: Path, headers: dict[str, str], *, max_bytes: int, timeout_s: float
    ) -> tuple[int, str]:
        """Stream ``url`` into ``dest``; return (size, sha256 hex). No partial file survives.

        Raises:
            DeviceUnreachable, DeviceTimeout, UnexpectedResponse (non-2xx, over ``max_bytes``),
            CollectorError (cannot write ``dest``).
        """
        source = _source("GET", url)
        tmp = dest.with_name(dest.name + ".part")
        digest, size = hashlib.sha256(), 0
        with Deadline(timeout_s) as deadline:
            resp = self._open("GET", url, None, headers, deadline, source)
            try:
                if not 200 <= resp.status_code < 300:
                    raise UnexpectedResponse(f"{source}: download answered HTTP {resp.status_code}")
                with tmp.open("wb") as fh:
                    for chunk in self._chunks(resp, deadline, source, max_bytes):
                        size += len(chunk)
                        digest.update(chunk)
                        fh.write(chunk)
                os.replace(tmp, dest)
            except BaseException as err:
                tmp.unlink(missing_ok=True)
                if isinstance(err, OSError):
                    raise CollectorError(f"{source}: cannot write {dest}: {err.strerror}") from None
                raise
            finally:
                resp.close()
        return size, digest.hexdigest()

    def close(self) -> None:
        """Release every connection."""
        self._session.close()

    def _open(
        self, method: str, url: str, body: Any, headers: dict[str, str], deadline: Deadline, source: str
    ) -> requests.Response:
        try:
            return self._session.request(
                method,
                url,
                json=body,
                headers=headers,
                timeout=(self.timeout_s, self.timeout_s),
                stream=True,
                allow_redirects=False,
            )
        except requests.RequestException as err:
            raise _translate(err, deadline, source, self.timeout_s) from None

    def _chunks(self, resp: requests.Response, deadline: Deadline, source: str, cap: int) -> Iterator[bytes]:
        """Yield body chunks, stopping at the deadline or past ``cap`` bytes."""
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap:
            raise UnexpectedResponse(f"{source}: answer of {declared} bytes exceeds the {cap}-byte cap")
        total = 0
        chunks = resp.iter_content(CHUNK_BYTES)
        while True:
            try:
                chunk = next(chunks, b"")
            except (requests.RequestException, OSError) as err:
                raise _translate(err, deadline, source, self.timeout_s) from None
            if deadline.expired() or (not chunk and deadline.fired):
                raise DeviceTimeout(f"{source}: answer not complete within {deadline.seconds:g} s")
            if not chunk:
                return
            total += len(chunk)
            if total > cap:
                raise UnexpectedResponse(f"{source}: answer exceeds the {cap}-byte cap")
            yield chunk


def _source(method: str, url: str) -> str:
    parts = urlsplit(url)
    return f"ymcs {parts.netloc} {method} {parts.path}"  # never the query: it may hold a signature


def _text(value: Any) -> str:
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""


def error_text(raw: bytes) -> str:
    """``: <code> <message> (requestId …)`` from an error envelope, short, single-line; "" if none."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return ""
    if not isinstance(doc, dict):
        return ""
    code, message, request_id = _text(doc.get("code")), _text(doc.get("message")), _text(doc.get("requestId"))
    details = doc.get("details")
    if isinstance(details, list):
        items = [d for d in details[:3] if isinstance(d, dict)]
        fields = [f"{_text(d.get('field'))}: {_text(d.get('message'))}" for d in items]
        message = "; ".join([message, *fields]) if fields else message
    text = " ".join(x for x in (code, message[:200]) if x).replace("\n", " ").replace("\r", " ")
    return (f": {text}" if text else "") + (f" (requestId {request_id[:64]})" if request_id else "")


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException] = [err]
    while todo and len(seen) < 20:
        cur = todo.pop(0)
        if any(cur is s for s in seen):
            continue
        seen.append(cur)
        nxt: list[Any] = [cur.__cause__, cur.__context__, getattr(cur, "reason", None), *cur.args]
        todo.extend(x for x in nxt if isinstance(x, BaseException))
    return seen


def _translate(err: BaseException, deadline: Deadline, source: str, timeout_s: float) -> CollectorError:
    """Map a requests/urllib3/socket error to one collector error, without the URL or its query."""
    chain = _chain(err)
    if deadline.fired:
        return DeviceTimeout(f"{source}: answer not complete within {deadline.seconds:g} s")
    for exc in chain:
        if isinstance(exc, socket.gaierror):
            return DeviceUnreachable(f"{source}: DNS lookup failed")
        if isinstance(exc, ConnectionRefusedError):
            return DeviceUnreachable(f"{source}: connection refused")
        if isinstance(exc, ssl.SSLCertVerificationError):
            return DeviceUnreachable(f"{source}: TLS certificate not trusted ({exc.verify_message})")
    if isinstance(err, (requests.ConnectTimeout, requests.ReadTimeout)) or any(
        isinstance(e, TimeoutError) for e in chain
    ):
        return DeviceTimeout(f"{source}: no answer within {timeout_s:g} s")
    for exc in chain:
        if isinstance(exc, ssl.SSLError):
            return DeviceUnreachable(f"{source}: TLS failed ({exc.reason or type(exc).__name__})")
        if isinstance(exc, OSError) and exc.strerror:
            return DeviceUnreachable(f"{source}: {exc.strerror.lower()}")
    return DeviceUnreachable(f"{source}: {type(err).__name__}")
