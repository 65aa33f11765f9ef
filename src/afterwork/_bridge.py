"""Calling the async API from sync code, on the right event loop, never nesting loops."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Protocol, TypeVar

from ._settings import Settings

__all__ = ("Portal", "run_sync")

T = TypeVar("T")


class Bridged(Protocol):
    """The state of an ``Afterwork`` instance that sync callers need (not the facade)."""

    _loop: asyncio.AbstractEventLoop | None
    _portal: Portal | None

    @property
    def config(self) -> Settings: ...

    @property
    def is_open(self) -> bool: ...

    async def aclose(self) -> None: ...


class Portal:
    """An event loop in a daemon thread, for sync callers when no app loop is running."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="afterwork-portal", daemon=True
        )
        self._thread.start()

    def call(self, coro: Awaitable[T], timeout: float | None) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


async def _as_coroutine(func: Callable[[], Awaitable[T]]) -> T:
    return await func()


def run_sync(aw: Bridged, func: Callable[[], Awaitable[T]]) -> T:
    """Run ``func()`` for ``aw`` from sync code (see :meth:`Afterwork.run_sync`)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "enqueue_sync() was called from async code, on the event loop's own thread; "
            "blocking there would freeze every request. Use `await task.enqueue(...)` "
            "instead."
        )
    timeout = aw.config.sync_timeout
    loop = aw._loop
    if aw.is_open and loop is not None and loop.is_running() and not loop.is_closed():
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(func), loop)
        return future.result(timeout)
    if aw._portal is None:
        aw._portal = Portal()
        atexit.register(close_portal, aw)
    return aw._portal.call(_as_coroutine(func), timeout)


def close_portal(aw: Bridged) -> None:
    """Stop ``aw``'s private loop (at interpreter exit), closing the store it opened."""
    portal, aw._portal = aw._portal, None
    if portal is None:
        return
    if aw.is_open and aw._loop is portal.loop:
        with contextlib.suppress(Exception):
            portal.call(aw.aclose(), timeout=5)
    portal.close()
