"""Thread-safe wake-ups and event fan-out that work across event loops.

A backend may be used from the event loop of a web app and from a sync caller's portal
loop at the same time, so these primitives never assume a single loop: waiters are woken
with ``call_soon_threadsafe`` on their own loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Generic, TypeVar

__all__ = ("Broadcaster", "Notifier", "Subscription")

T = TypeVar("T")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Notifier:
    """A versioned wake-up signal.

    Take a ``ticket()`` *before* checking for work, then ``wait(ticket, timeout)``: a
    ``notify()`` between the two is never lost, because the version has moved on.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def ticket(self) -> int:
        with self._lock:
            return self._version

    def notify(self) -> None:
        with self._lock:
            self._version += 1
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future)

    async def wait(self, ticket: int, timeout: float) -> bool:
        """Wait for a notify after ``ticket``; ``True`` if one came, ``False`` on timeout."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._version != ticket:
                return True
            self._waiters.append((loop, future))
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await future
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                try:
                    self._waiters.remove((loop, future))
                except ValueError:
                    pass


class _Subscriber(Generic[T]):
    __slots__ = ("dropped", "items", "loop", "wakeup")

    def __init__(self, loop: asyncio.AbstractEventLoop, maxlen: int) -> None:
        self.loop = loop
        self.items: deque[T | None] = deque(maxlen=maxlen)
        self.wakeup = Notifier()
        self.dropped = 0


class Broadcaster(Generic[T]):
    """Fan items out to every subscriber; a slow subscriber loses its oldest items.

    Publishing never blocks and never fails because of a subscriber.
    """

    def __init__(self, maxlen: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[_Subscriber[T]] = []
        self._maxlen = maxlen
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, item: T) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            if len(sub.items) == sub.items.maxlen:
                sub.dropped += 1
            sub.items.append(item)
            sub.wakeup.notify()

    def close(self) -> None:
        """End every subscription (each iterator returns after draining what it has)."""
        with self._lock:
            self._closed = True
            subscribers, self._subscribers = self._subscribers, []
        for sub in subscribers:
            sub.items.append(None)
            sub.wakeup.notify()

    def reopen(self) -> None:
        with self._lock:
            self._closed = False

    def subscribe(self) -> Subscription[T]:
        """Items published from now on (the subscription starts at once), until :meth:`close`."""
        sub: _Subscriber[T] = _Subscriber(asyncio.get_running_loop(), self._maxlen)
        with self._lock:
            closed = self._closed
            if not closed:
                self._subscribers.append(sub)
        if closed:
            sub.items.append(None)
        return Subscription(self, sub)

    def _remove(self, sub: _Subscriber[T]) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)


class Subscription(Generic[T]):
    """An async iterator over a broadcaster's items; ``aclose()`` unsubscribes."""

    def __init__(self, owner: Broadcaster[T], sub: _Subscriber[T]) -> None:
        self._owner = owner
        self._sub = sub
        self._done = False

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        sub = self._sub
        while not self._done:
            ticket = sub.wakeup.ticket()
            if sub.items:
                item = sub.items.popleft()
                if item is None:
                    break
                return item
            await sub.wakeup.wait(ticket, 3600.0)
        await self.aclose()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._done = True
        self._owner._remove(self._sub)
