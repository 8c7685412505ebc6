"""The one asyncio event loop (in one daemon thread) that every SNMP transport and receiver shares.

Callers on other threads submit coroutines with :meth:`SnmpLoop.run` and block on the future
with a timeout, so many devices are polled without a thread each. pysnmp engines are costly
(~0.1 s and ~1 MB each), so the loop keeps one per credential set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Coroutine
from typing import Any, ClassVar, TypeVar

from pysnmp.hlapi.v3arch.asyncio import SnmpEngine

__all__ = ["SnmpLoop"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class SnmpLoop:
    """One asyncio event loop in one daemon thread, shared by every SNMP transport and receiver."""

    _shared: ClassVar[SnmpLoop | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str = "snmp-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._engines: dict[str, SnmpEngine] = {}
        self.errors = 0  # exceptions pysnmp raised inside loop callbacks (e.g. on garbage datagrams)
        self.loop.set_exception_handler(self._on_error)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @classmethod
    def shared(cls) -> SnmpLoop:
        """The process-wide loop, started on first use."""
        with cls._shared_lock:
            if cls._shared is None or not cls._shared.running:
                cls._shared = SnmpLoop()
            return cls._shared

    @property
    def running(self) -> bool:
        """Whether the loop thread is alive."""
        return self._thread.is_alive() and not self.loop.is_closed()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run ``coro`` on the loop and wait at most ``timeout_s`` for it (cancelled after that).

        Raises:
            TimeoutError: the coroutine did not finish in time.
            RuntimeError: called from the loop thread itself (it would deadlock).
        """
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("SnmpLoop.run called from its own thread")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def engine(self, key: str) -> SnmpEngine:
        """The SNMP engine for one credential set (call on the loop thread only).

        Engines are costly (~0.1 s, ~1 MB), so devices sharing credentials share one; v3
        users of the same name with different keys get separate engines.
        """
        engine = self._engines.get(key)
        if engine is None:
            engine = self._engines[key] = SnmpEngine()
        return engine

    def stop(self) -> None:
        """Close every engine and stop the loop thread (the shared loop restarts on next use)."""

        async def close() -> None:
            for engine in self._engines.values():
                engine.close_dispatcher()
            self._engines.clear()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.running:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close(), self.loop).result(5.0)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5.0)

    def _on_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """pysnmp lets some garbage datagrams raise inside its callbacks: count, one debug line."""
        self.errors += 1
        err = context.get("exception")
        log.debug("snmp loop: dropped error %s", type(err).__name__ if err else context.get("message"))
