"""A simulated Yealink VC control API (TCP 6024) for one device, on the caller's asyncio loop.

It speaks the documented VC-family protocol: the ``version`` banner on connect, ``sysstatus
get``, ``\\r\\n`` framing. Anything else gets an ``error`` line (the real device's answer to an
unknown command is not documented: this is the simulator's choice). Faults: ``offline``
(connection refused), ``hang`` (accept, then send nothing), ``garbage`` (binary bytes, then
close). Usage from a coroutine on the fleet's loop::

    server = VcApiServer("127.0.1.5", 0, model="A30", firmware="133.15.0.60", ...)
    await server.start()
    ... server.port ...
    await server.apply("hang")
    await server.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

__all__ = ["VCAPI_FAULTS", "VcApiServer"]

log = logging.getLogger("hezo.simulator.vcapi")
VCAPI_FAULTS = ("offline", "hang", "garbage")
MAX_COMMAND_BYTES = 1024
CALL_STATES = ("sleeping", "idle", "outgoing", "ringing", "talking", "talking max")


def _quoted(key: str, value: str) -> str:
    if '"' in value or "\r" in value or "\n" in value:
        raise ValueError(f"{key}: a banner value cannot contain quotes or line breaks")
    return f'"{key}:{value}"'


class VcApiServer:
    """The 6024 control API of one simulated device, with per-channel faults."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        model: str,
        firmware: str,
        hardware: str,
        product_id: str,
        call_state_getter: Callable[[], str],
        cc_version: str = "1.0.0.1",
        seed: int = 0,
    ) -> None:
        """Prepare the server; nothing listens until :meth:`start`.

        Raises:
            ValueError: a banner value with quotes or line breaks, or a port out of range.
        """
        if not 0 <= port <= 65535:
            raise ValueError("port must be 0..65535")
        self.host = host
        self.port = port
        self.banner = "version " + " ".join(
            _quoted(k, v)
            for k, v in (
                ("model", model),
                ("firmware", firmware),
                ("hardware", hardware),
                ("productId", product_id),
                ("cc_version", cc_version),
            )
        )
        self._call_state = call_state_getter
        self._seed = seed
        self.faults: set[str] = set()
        self.commands_seen = 0
        self._listener: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._release = asyncio.Event()

    # --- lifecycle (event loop) ----------------------------------------------------------

    async def start(self) -> None:
        """Listen unless the ``offline`` fault is set; an ephemeral port is resolved here.

        Raises:
            OSError: the address or port cannot be bound.
        """
        self._release = asyncio.Event()  # bound to the running loop
        if "offline" not in self.faults:
            await self._listen()

    async def stop(self) -> None:
        """Close the listener and every connection, hung ones included."""
        self._unlisten()
        self._release.set()
        self._drop_connections()

    async def apply(self, fault: str) -> None:
        """Set one fault (``offline``, ``hang``, ``garbage``) and act on it.

        Raises:
            ValueError: an unknown fault.
        """
        if fault not in VCAPI_FAULTS:
            raise ValueError(f"unknown 6024 fault {fault!r}; known: {', '.join(VCAPI_FAULTS)}")
        self.faults.add(fault)
        if fault == "offline":
            self._unlisten()
            self._drop_connections()
        if fault == "hang" and self._release.is_set():
            self._release = asyncio.Event()
        log.info("vcapi=%s:%s fault=%s set", self.host, self.port, fault)

    async def clear(self) -> None:
        """Remove every fault: listen again, drop hung connections."""
        if "hang" in self.faults:
            self._release.set()
            self._drop_connections()
        self.faults.clear()
        try:
            await self._listen()
        except OSError as err:
            log.error("vcapi=%s:%s cannot listen: %s", self.host, self.port, err)

    async def _listen(self) -> None:
        if self._listener is not None:
            return
        self._listener = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_address=True, limit=MAX_COMMAND_BYTES * 2
        )
        if self.port == 0:
            self.port = self._listener.sockets[0].getsockname()[1]

    def _unlisten(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _drop_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    # --- protocol ------------------------------------------------------------------------

    def answer(self, line: str) -> str:
        """Return the answer line (without ``\\r\\n``) to one command line."""
        self.commands_seen += 1
        if line.strip() == "sysstatus get":
            state = self._call_state()
            if state not in CALL_STATES:
                state = "idle"
            if state in ("sleeping", "idle"):
                return f"sysstatus get {state}"
            return f'sysstatus get {state} "dialstr:sip:meeting@sim.invalid" "callid:1"'
        return f'error "unknown command:{line.strip()[:64].replace(chr(34), chr(39))}"'

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if "hang" in self.faults:
                await self._hang(reader)
                return
            if "garbage" in self.faults:
                rng = random.Random(self._seed)
                writer.write(b"\x00\xff\x1b" + rng.randbytes(509))
                await writer.drain()
                return
            writer.write(self.banner.encode("ascii") + b"\r\n")
            await writer.drain()
            while True:
                raw = await reader.readuntil(b"\n")
                if len(raw) > MAX_COMMAND_BYTES:
                    return
                text = raw.rstrip(b"\r\n").decode("ascii", "replace")
                writer.write(self.answer(text).encode("utf-8") + b"\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _hang(self, reader: asyncio.StreamReader) -> None:
        """Accept and say nothing until released (fault cleared, server stopped) or the peer leaves."""
        release = asyncio.ensure_future(self._release.wait())
        eof = asyncio.ensure_future(self._drain(reader))
        try:
            await asyncio.wait({release, eof}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (release, eof):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @staticmethod
    async def _drain(reader: asyncio.StreamReader) -> None:
        while await reader.read(4096):
            pass
